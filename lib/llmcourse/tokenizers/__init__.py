"""Tokenizers: characters, byte-level BPE (GPT-2) and WordPiece (BERT).

All share one protocol: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``save(path)`` and the class method ``load(path)``.

- :class:`CharTokenizer`: one id per character (``from_text``, ``ascii``).
- :class:`ByteLevelBPE`: byte-level BPE (``train``, ``from_gpt2_files``, streaming
  ``iter_encode_file``); gives the same ids as ``transformers``' GPT-2 tokenizer.
- :class:`WordPiece`: BERT's tokenizer (``from_vocab_file``, ``encode_pair``, batches with
  padding and truncation through ``__call__``); gives the same ids as the MiniLM tokenizer.
"""

from llmcourse.tokenizers.bpe import ByteLevelBPE
from llmcourse.tokenizers.byte_level import GPT2_SPLIT_PATTERN, PreTokenizer, bytes_to_unicode
from llmcourse.tokenizers.char import CharTokenizer
from llmcourse.tokenizers.wordpiece import Encoding, WordPiece, basic_tokenize

__all__ = [
    "CharTokenizer",
    "ByteLevelBPE",
    "WordPiece",
    "Encoding",
    "PreTokenizer",
    "GPT2_SPLIT_PATTERN",
    "bytes_to_unicode",
    "basic_tokenize",
]
