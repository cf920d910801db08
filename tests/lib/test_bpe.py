"""Byte-level BPE: GPT-2 compatibility (against transformers and tiktoken), streaming encode,
GPT-2 file format, and training (against Hugging Face tokenizers' BPE trainer)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmcourse.data import fetch, load_text
from llmcourse.tokenizers import ByteLevelBPE, PreTokenizer, bytes_to_unicode
from llmcourse.tokenizers.byte_level import token_bytes_to_str, token_str_to_bytes

EOT = "<|endoftext|>"

TRICKY = [
    "Hello world",
    " Hello  world ",
    "trailing spaces   ",
    "trailing newlines\n\n\n",
    "   leading",
    "tabs\tand\t\tnewlines\r\n\r\nmixed \n \n",
    "I'm you're they've we'll she'd it's DON'T Y'ALL 'S",
    "numbers 1 12 123 1234 3.14159 1,000,000 -42 1e10 ٣٤٥",
    "unicode: café naïve résumé Ελληνικά Русский 中文字符 日本語 한국어 עברית العربية",
    "combining: cafe\u0301 n\u0303 a\u030a\u0323 Z\u0351\u0352\u0353",
    "emoji: 😀 👍🏽 👩\u200d👩\u200d👧 🇫🇷 ❤️ 🏳️\u200d🌈",
    "odd spaces:\u00a0nbsp\u2009thin\u3000ideographic\u200bzero-width\u2028line\u0085nel\x0bvt",
    f"special{EOT}tokens {EOT} here{EOT}{EOT}\n{EOT}  x",
    "<|endoftext| almost <|endof",
    "symbols: @#$%^&*()_+-=[]{}|;':\",./<>?`~ \\ //",
    "code:\n    def f(x):\n        return x ** 2  # square\n",
    "",
    " ",
    "\n",
    "a" * 300 + " " + "ab" * 200,
    "     \n\n     \t\t\t     ",
]


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    return fetch("gpt2_encoder"), fetch("gpt2_vocab")


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> ByteLevelBPE:
    return ByteLevelBPE.from_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def hf_gpt2(gpt2_files):
    """transformers' GPT-2 tokenizer built offline from the same two files.

    transformers 5 takes ``vocab`` and ``merges`` (it ignores ``vocab_file``/``merges_file``).
    """
    from transformers import GPT2Tokenizer

    encoder_json, vocab_bpe = gpt2_files
    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    assert tok.encode("Hello world") == [15496, 995]  # guard: the files really were loaded
    return tok


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files, tmp_path_factory):
    """tiktoken's gpt2 encoding, offline: its cache files are named by the sha1 of their URL."""
    import os

    import tiktoken
    import tiktoken_ext.openai_public  # noqa: F401  (registers "gpt2")

    cache = tmp_path_factory.mktemp("tiktoken")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for src, name in zip(gpt2_files, ("encoder.json", "vocab.bpe"), strict=True):
        shutil.copy(src, cache / hashlib.sha1((base + name).encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


# ---------------------------------------------------------------------- byte alphabet
def test_byte_alphabet() -> None:
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    data = bytes(range(256))
    assert token_str_to_bytes(token_bytes_to_str(data)) == data
    with pytest.raises(ValueError, match="not in the GPT-2 byte alphabet"):
        token_str_to_bytes("a b")


# ---------------------------------------------------------------------- GPT-2 compatibility
def test_gpt2_vocabulary(gpt2: ByteLevelBPE) -> None:
    assert ByteLevelBPE.gpt2().merges == gpt2.merges  # the same files through llmcourse.data
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello world") == [18435, 995]


def test_same_ids_as_transformers_on_tiny_shakespeare(gpt2, hf_gpt2) -> None:
    text = load_text("tinyshakespeare")
    ours = gpt2.encode(text)
    assert len(ours) == 338_025
    assert ours == hf_gpt2.encode(text)
    assert gpt2.decode(ours) == text


@pytest.mark.parametrize("text", TRICKY)
def test_same_ids_as_transformers_on_tricky_text(gpt2, hf_gpt2, text: str) -> None:
    ours = gpt2.encode(text)
    assert ours == hf_gpt2.encode(text), f"ids differ on {text!r}"
    assert gpt2.decode(ours) == text


def test_same_ids_as_transformers_on_every_bmp_character(gpt2, hf_gpt2) -> None:
    """Each code point of the Basic Multilingual Plane, alone and next to letters and spaces."""
    chars = [chr(c) for c in range(1, 0x10000) if not 0xD800 <= c < 0xE000]
    text = "".join(f"a{c} {c}{c}1 " for c in chars)
    assert gpt2.encode(text) == hf_gpt2.encode(text)


def test_special_tokens_as_plain_text_match_tiktoken(gpt2, tiktoken_gpt2) -> None:
    text = "".join(TRICKY)
    assert gpt2.encode(text, allow_special=False) == tiktoken_gpt2.encode(
        text, disallowed_special=()
    )
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert 50256 not in gpt2.encode(EOT, allow_special=False)


def test_decode_partial_characters(gpt2) -> None:
    ids = gpt2.encode("😀")
    assert len(ids) > 1  # an emoji spans several byte-level tokens
    assert gpt2.decode_bytes(ids[:1]) + gpt2.decode_bytes(ids[1:]) == "😀".encode()
    assert "\ufffd" in gpt2.decode(ids[:1])  # half a character -> replacement character
    with pytest.raises(UnicodeDecodeError):
        gpt2.decode(ids[:1], errors="strict")


def test_decode_rejects_bad_ids(gpt2) -> None:
    with pytest.raises(ValueError, match=r"token id 50257 is outside the vocabulary 0\.\.50256"):
        gpt2.decode([1, 50257])
    with pytest.raises(ValueError, match="token id -1"):
        gpt2.decode([-1])
    with pytest.raises(TypeError, match="encode expects a str"):
        gpt2.encode(b"bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- streaming
def _stream_text() -> str:
    return "".join(TRICKY) * 2 + load_text("tinyshakespeare")[:30_000] + "".join(TRICKY)


def test_streaming_equals_whole_text_for_any_chunking(gpt2) -> None:
    text = _stream_text()
    whole = gpt2.encode(text)
    for size in (1, 2, 3, 7, 64, 1000):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        got = [i for ids in gpt2.iter_encode_chunks(chunks) for i in ids]
        assert got == whole, f"chunk size {size}"
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 500)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert [i for ids in gpt2.iter_encode_chunks(chunks) for i in ids] == whole


def test_pretokenizer_stream_equals_segments() -> None:
    pre = PreTokenizer([EOT, "<|a|>", "<|a|>b|>"])  # overlapping specials: longest wins
    text = "x<|a|>b|>y <|a|>z  <|a|>b|" + "".join(TRICKY)
    whole = list(pre.segments(text))
    for size in (1, 2, 5):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        streamed = list(pre.stream_segments(chunks))
        assert [p for ps, s in streamed for p in [*ps, s] if p] == [
            p for ps, s in whole for p in [*ps, s] if p
        ]


def test_encode_file_streams_to_disk(gpt2, tmp_path) -> None:
    text = _stream_text()
    src = tmp_path / "corpus.txt"
    src.write_text(text, encoding="utf-8", newline="")
    expected = gpt2.encode(text)
    got = [i for ids in gpt2.iter_encode_file(src, chunk_chars=97) for i in ids]
    assert got == expected
    n = gpt2.encode_file_to(src, tmp_path / "corpus.bin", chunk_chars=4096)
    assert n == len(expected)
    assert np.fromfile(tmp_path / "corpus.bin", dtype=np.uint16).tolist() == expected


# ---------------------------------------------------------------------- file format
def test_gpt2_files_round_trip(gpt2, gpt2_files, tmp_path) -> None:
    gpt2.save(tmp_path)
    encoder_json, vocab_bpe = gpt2_files
    assert (tmp_path / "vocab.bpe").read_bytes() == vocab_bpe.read_bytes()
    saved = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    assert saved == json.loads(encoder_json.read_text(encoding="utf-8"))
    loaded = ByteLevelBPE.load(tmp_path)
    text = "".join(TRICKY)
    assert loaded.encode(text) == gpt2.encode(text)


def test_bad_files_give_clear_errors(gpt2_files, tmp_path) -> None:
    encoder_json, vocab_bpe = gpt2_files
    with pytest.raises(FileNotFoundError, match="missing.json"):
        ByteLevelBPE.from_gpt2_files(tmp_path / "missing.json", vocab_bpe)
    bad_merges = tmp_path / "vocab.bpe"
    bad_merges.write_text("#version: 0.2\nĠ t\nthree parts here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.bpe:3: expected two tokens"):
        ByteLevelBPE.from_gpt2_files(encoder_json, bad_merges)
    bad_merges.write_text("#version: 0.2\nĠ t\nzzqq xxyy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merge 1 .* not in"):
        ByteLevelBPE.from_gpt2_files(encoder_json, bad_merges)
    bad_json = tmp_path / "encoder.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        ByteLevelBPE.from_gpt2_files(bad_json, vocab_bpe)
    with pytest.raises(FileNotFoundError, match="expects a folder"):
        ByteLevelBPE.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------- training
def _hf_train_merges(text: str, vocab_size: int) -> list[tuple[str, str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


@pytest.fixture(scope="module")
def shakespeare_bpe() -> ByteLevelBPE:
    return ByteLevelBPE.train(fetch("tinyshakespeare"), 1000, [EOT])


def test_training_matches_hf_tokenizers_trainer(shakespeare_bpe) -> None:
    """Same merges, in the same order, as Hugging Face's BPE trainer on all of Tiny Shakespeare."""
    text = load_text("tinyshakespeare")
    ours = [(token_bytes_to_str(a), token_bytes_to_str(b)) for a, b in shakespeare_bpe.merges]
    assert len(ours) == 1000 - 256 - 1
    assert ours == _hf_train_merges(text, 999)


def test_training_reuses_existing_tokens_like_hf() -> None:
    """A corpus where "ab"+"c" and "a"+"bc" both get merged: no duplicate vocabulary entry."""
    text = " ".join(["ab abc bc bcd abcd"] * 50 + ["xbc ab"] * 30)
    tok = ByteLevelBPE.train(text, 280)
    ours = [(token_bytes_to_str(a), token_bytes_to_str(b)) for a, b in tok.merges]
    assert ours == _hf_train_merges(text, 280)
    assert len({tok.token_bytes(i) for i in range(tok.vocab_size)}) == tok.vocab_size


def test_trained_tokenizer_round_trips(shakespeare_bpe, tmp_path) -> None:
    tok = shakespeare_bpe
    assert tok.vocab_size == 1000
    assert tok.special_tokens == {EOT: 999}
    text = load_text("tinyshakespeare")[:50_000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.5 * len(text.encode())  # merges compress the text
    for sample in TRICKY:
        assert tok.decode(tok.encode(sample)) == sample  # byte fallback: nothing is unknown
    tok.save(tmp_path)
    loaded = ByteLevelBPE.load(tmp_path)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.merges == tok.merges
    assert loaded.encode(text + EOT) == tok.encode(text + EOT)


def test_training_inputs_agree() -> None:
    text = load_text("tinyshakespeare")[:100_000]
    from_str = ByteLevelBPE.train(text, 400)
    chunks = [text[i : i + 777] for i in range(0, len(text), 777)]
    from_chunks = ByteLevelBPE.train(iter(chunks), 400)
    assert from_str.merges == from_chunks.merges


def test_special_tokens_are_not_merged_across() -> None:
    text = f"{EOT}".join(["The end of the text.", "Another document!", "  more  "] * 40)
    with_special = ByteLevelBPE.train(text, 300, [EOT])
    learned = [with_special.token_bytes(i) for i in range(256, with_special.vocab_size - 1)]
    assert not any(b"endof" in t for t in learned)
    assert with_special.encode(EOT) == [with_special.vocab_size - 1]  # specials come last
    # without declaring it special, the marker is frequent enough to be learned
    plain = ByteLevelBPE.train(text, 300)
    assert any(b"endof" in plain.token_bytes(i) for i in range(256, plain.vocab_size))


def test_training_validates_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least 258"):
        ByteLevelBPE.train("abc", 257, ["<a>", "<b>"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ByteLevelBPE.train(tmp_path / "missing.txt", 300)
    tok = ByteLevelBPE.train("ab ab ab", 10_000)  # stops when no pair is left
    assert tok.vocab_size < 10_000
    assert tok.decode(tok.encode("ab ab")) == "ab ab"
