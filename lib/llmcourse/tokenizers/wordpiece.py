"""WordPiece, BERT's tokenizer: basic text clean-up and splitting, then greedy sub-words.

Pipeline (the same steps, in the same order, as Hugging Face's ``BertTokenizerFast``):

1. cut out special tokens written literally in the text (``"[MASK]"``);
2. normalise: drop control characters, turn every whitespace character into a space, put
   spaces around CJK ideographs, then (uncased models) strip accents (NFD, drop combining
   marks) and lowercase;
3. split on whitespace and around every punctuation character;
4. split each word greedily into the longest vocabulary entries, left to right, later pieces
   written with the ``##`` prefix; a word that cannot be split (or is longer than 100
   characters) becomes ``[UNK]``.

Character classes (punctuation, control, combining mark) come from Python's ``unicodedata``.
The Rust ``tokenizers`` library uses older Unicode tables, so about 500 rare characters added
or re-classified since Unicode 10 (e.g. new Arabic marks, U+2E43-U+2E5D) may tokenize
differently; all other characters give the same ids.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import regex
import torch

__all__ = ["WordPiece", "Encoding", "basic_tokenize"]

PathLike = str | os.PathLike[str]

# Unicode's White_Space property (what Rust's char::is_whitespace tests).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# CJK ideograph blocks. Hugging Face tokenizers starts the Extension E range at 0x2B920
# (Google's original BERT: 0x2B820); we follow Hugging Face, whose tokenizer the models ship.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols (``$``, ``+``, ``^`` ... count too) or any Unicode punctuation (P*)."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _clean_char(ch: str) -> str:
    """The normalised form of one character before accent stripping (may be ``""``).

    Control, format and private-use characters are dropped (so are the vertical tab, form
    feed and U+0085, which are also whitespace); tab, newline, carriage return and the other
    whitespace characters become a space; CJK ideographs get a space on each side.
    """
    if ch in "\t\n\r":
        return " "
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf", "Co"):
        return ""
    if ch in _WHITESPACE:
        return " "
    if _is_cjk(cp):
        return f" {ch} "
    return ch


def normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> str:
    """BERT's normaliser: clean-up, CJK spacing, optional accent stripping and lowercasing.

    ``strip_accents=None`` follows ``lowercase`` (uncased BERT strips accents).
    """
    text = "".join([_clean_char(ch) for ch in text])
    if strip_accents is None:
        strip_accents = lowercase
    if strip_accents:
        text = "".join(
            [c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"]
        )
    if lowercase:
        # Character by character: str.lower() on a whole string would apply the Greek
        # final-sigma rule, which BERT's tokenizer does not.
        text = "".join([c.lower() for c in text])
    return text


def basic_tokenize(
    text: str, lowercase: bool = True, strip_accents: bool | None = None
) -> list[str]:
    """Normalise, then split on whitespace and around each punctuation character.

    >>> basic_tokenize("Héllo, WORLD!")
    ['hello', ',', 'world', '!']
    """
    words: list[str] = []
    for chunk in normalize(text, lowercase, strip_accents).split(" "):
        if not chunk:
            continue
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


@dataclass
class Encoding:
    """One encoded sequence (or pair), ready for a BERT model.

    ``input_ids``, ``token_type_ids`` (0 for the first segment, 1 for the second) and
    ``attention_mask`` (1 = real token, 0 = padding) all have the same length.
    """

    input_ids: list[int]
    token_type_ids: list[int] = field(default_factory=list)
    attention_mask: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


class WordPiece:
    """BERT's WordPiece tokenizer over a ``vocab.txt`` vocabulary (one token per line, id =
    line number).

    Args:
        vocab: the tokens in id order.
        lowercase: lowercase the text (uncased models); also strips accents unless
            ``strip_accents`` says otherwise.
        strip_accents: ``None`` follows ``lowercase``.
        max_input_chars_per_word: longer words become ``[UNK]`` without being split.
        pad_token, unk_token, cls_token, sep_token, mask_token: the special tokens (must be
            in the vocabulary).

    Encoding methods: :meth:`encode` (ids of one text), :meth:`encode_pair` (two segments)
    and :meth:`__call__` (a batch with padding, truncation and tensors).
    """

    def __init__(
        self,
        vocab: Sequence[str],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        *,
        max_input_chars_per_word: int = 100,
        pad_token: str = "[PAD]",
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        mask_token: str = "[MASK]",
    ) -> None:
        self.vocab: list[str] = list(vocab)
        self.token_to_id: dict[str, int] = {}
        for i, tok in enumerate(self.vocab):
            self.token_to_id.setdefault(tok, i)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_input_chars_per_word = max_input_chars_per_word
        names = dict(
            zip(
                _SPECIAL_NAMES,
                (pad_token, unk_token, cls_token, sep_token, mask_token),
                strict=True,
            )
        )
        missing = [tok for tok in names.values() if tok not in self.token_to_id]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.special_tokens: dict[str, str] = names
        self.pad_id = self.token_to_id[pad_token]
        self.unk_id = self.token_to_id[unk_token]
        self.cls_id = self.token_to_id[cls_token]
        self.sep_id = self.token_to_id[sep_token]
        self.mask_id = self.token_to_id[mask_token]
        by_length = sorted(names.values(), key=len, reverse=True)
        self._special_re = regex.compile("|".join(regex.escape(t) for t in by_length))
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vocab_file(cls, path: PathLike, lowercase: bool = True, **kwargs: object) -> WordPiece:
        """Read a ``vocab.txt`` file (e.g. the MiniLM model's) or a folder containing one."""
        file = Path(path)
        if file.is_dir():
            file = file / "vocab.txt"
        if not file.is_file():
            raise FileNotFoundError(f"WordPiece vocabulary not found: {file}")
        lines = file.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls([line.rstrip("\r") for line in lines], lowercase, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: PathLike) -> WordPiece:
        """Same as :meth:`from_vocab_file` with default options (see :meth:`save`)."""
        return cls.from_vocab_file(path)

    def save(self, path: PathLike) -> None:
        """Write ``vocab.txt`` into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> list[int]:
        """Ids of [PAD], [UNK], [CLS], [SEP], [MASK] (never masked or predicted in MLM)."""
        return [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]

    # ------------------------------------------------------------------ tokenisation
    def _word_ids(self, word: str) -> list[int]:
        """Greedy longest-match-first split of one word (cached)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids: list[int] = []
        if len(word) > self.max_input_chars_per_word:
            ids = [self.unk_id]
        else:
            start, n = 0, len(word)
            while start < n:
                end = n
                found = None
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = self.token_to_id.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def tokenize_ids(self, text: str) -> list[int]:
        """Ids of ``text`` without [CLS]/[SEP]; special tokens written in it are kept whole."""
        ids: list[int] = []
        start = 0
        for match in self._special_re.finditer(text):
            for word in basic_tokenize(
                text[start : match.start()], self.lowercase, self.strip_accents
            ):
                ids.extend(self._word_ids(word))
            ids.append(self.token_to_id[match.group()])
            start = match.end()
        for word in basic_tokenize(text[start:], self.lowercase, self.strip_accents):
            ids.extend(self._word_ids(word))
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece strings of ``text``, e.g. ``['token', '##ization']``."""
        return [self.vocab[i] for i in self.tokenize_ids(text)]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``[CLS] text [SEP]`` as ids (without the two markers if ``add_special_tokens=False``)."""
        ids = self.tokenize_ids(text)
        return [self.cls_id, *ids, self.sep_id] if add_special_tokens else ids

    def encode_pair(self, text_a: str, text_b: str, *, max_length: int | None = None) -> Encoding:
        """``[CLS] a [SEP] b [SEP]`` with token types 0 for ``[CLS] a [SEP]`` and 1 after.

        With ``max_length``, tokens are removed from the end of the longer segment first
        (BERT's "longest first" truncation) until the whole fits.
        """
        return self._build(self.tokenize_ids(text_a), self.tokenize_ids(text_b), max_length)

    def _build(self, a: list[int], b: list[int] | None, max_length: int | None) -> Encoding:
        """Truncate, add [CLS]/[SEP] and token types (no padding)."""
        if max_length is not None:
            budget = max_length - (2 if b is None else 3)
            if budget < 0:
                raise ValueError(f"max_length={max_length} is too short for the special tokens")
            if b is None:
                a = a[:budget]
            else:
                na, nb = _longest_first(len(a), len(b), budget)
                a, b = a[:na], b[:nb]
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return Encoding(ids, types, [1] * len(ids))

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, list[int] | list[list[int]] | torch.Tensor]:
        """Encode one text or a batch, like ``transformers`` tokenizers.

        Args:
            text: a string or a list of strings.
            text_pair: second segments (same count as ``text``), or ``None``.
            padding: ``False`` (none), ``True``/``"longest"`` (to the longest in the batch) or
                ``"max_length"`` (to ``max_length``). Padding goes on the right.
            truncation: cut sequences to ``max_length`` (longest-first for pairs).
            max_length: the length limit, counting [CLS] and [SEP].
            return_tensors: ``"pt"`` for ``torch.long`` tensors of shape (B, T) (needs equal
                lengths: pad), ``None`` for lists.

        Returns:
            A dict with ``input_ids``, ``token_type_ids`` and ``attention_mask``; a single
            string gives flat lists (or tensors of shape (1, T)).

        Example: ``tok("Hello", padding="max_length", max_length=4)["input_ids"]`` is
        ``[101, 7592, 102, 0]`` with attention mask ``[1, 1, 1, 0]``.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is None:
            pairs: list[str | None] = [None] * len(texts)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding={padding!r}; use False, True, 'longest' or 'max_length'")
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("truncation=True and padding='max_length' need max_length")
        limit = max_length if truncation else None
        encodings = [
            self._build(self.tokenize_ids(a), None if b is None else self.tokenize_ids(b), limit)
            for a, b in zip(texts, pairs, strict=True)
        ]
        if padding in (True, "longest"):
            target = max((len(e) for e in encodings), default=0)
        elif padding == "max_length":
            target = max_length
        else:
            target = None
        if target is not None:
            for e in encodings:
                extra = target - len(e)
                if extra > 0:
                    e.input_ids += [self.pad_id] * extra
                    e.token_type_ids += [0] * extra
                    e.attention_mask += [0] * extra
        keys = ("input_ids", "token_type_ids", "attention_mask")
        out: dict[str, list[int] | list[list[int]] | torch.Tensor] = {}
        for key in keys:
            rows = [getattr(e, key) for e in encodings]
            if return_tensors == "pt":
                lengths = {len(r) for r in rows}
                if len(lengths) > 1:
                    raise ValueError(
                        f"sequences have different lengths {sorted(lengths)}; "
                        "pass padding=True to build a tensor"
                    )
                out[key] = torch.tensor(rows, dtype=torch.long)
            elif return_tensors is None:
                out[key] = rows[0] if single else rows
            else:
                raise ValueError(f"return_tensors={return_tensors!r}; use 'pt' or None")
        return out

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Join WordPieces back into text, as Hugging Face's WordPiece decoder does.

        ``##`` pieces attach to the previous piece, other pieces get a leading space, and a
        space before ``.``, ``?``, ``!`` or ``,`` is dropped. Lowercasing, removed accents and
        spaces around other punctuation are not undone (``"i ' m"``).
        """
        tolist = getattr(ids, "tolist", None)
        values = tolist() if callable(tolist) else list(ids)
        n = len(self.vocab)
        skip = set(self.special_ids) if skip_special_tokens else set()
        parts: list[str] = []
        for i in values:
            if not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"id {i!r} is not a token id; expected an int in 0..{n - 1}")
            if i in skip:
                continue
            token = self.vocab[i]
            if parts:
                token = token[2:] if token.startswith("##") else " " + token
            parts.append(_cleanup(token))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"WordPiece(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


def _cleanup(piece: str) -> str:
    """Remove the space before closing punctuation and English contractions in one piece."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        piece = piece.replace(before, after)
    return piece


def _longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Segment lengths after "longest first" truncation to ``len_a + len_b <= budget``.

    Tokens come off the longer segment until both are equally long, then off both in turn:
    the shorter segment keeps ``min(its length, budget // 2)`` and the longer one the rest
    (on a tie the second segment counts as the longer), as in Hugging Face tokenizers.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a > len_b:
        keep_b = min(len_b, budget // 2)
        return budget - keep_b, keep_b
    keep_a = min(len_a, budget // 2)
    return keep_a, budget - keep_a
