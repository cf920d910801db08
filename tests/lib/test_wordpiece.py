"""WordPiece against the MiniLM tokenizer (transformers' BertTokenizerFast, offline)."""

from __future__ import annotations

import pytest
import torch

from llmcourse.models.bert import minilm_path
from llmcourse.tokenizers import WordPiece, basic_tokenize

SENTENCES = [
    "Hello",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you've heard it's DON'T, not don't.",
    "Tokenization splits unaffable words into pieces.",
    "supercalifragilisticexpialidocious",
    "naïve café résumé Zürich São Paulo Ångström",
    "ÉLÈVE À L'ÉCOLE",
    "Ελληνικά: ΟΔΥΣΣΕΥΣ και Σίσυφος",
    "Привет, мир! Как дела?",
    "中文字符和日本語の漢字、ひらがな、カタカナ。",
    "한국어 문장입니다.",
    "עברית ו العربية",
    "हिन्दी पाठ",
    "emoji 😀 👍🏽 🇫🇷 ❤️ are unknown",
    "numbers: 3.14159, 1,000,000 and 42nd 2024-01-01",
    "e-mail me at someone@example.com or visit https://example.org/a?b=c&d=e",
    "symbols $ % ^ & * ( ) _ + = [ ] { } | \\ ; : ' \" < > , . / ? ` ~",
    "tabs\tnewlines\nand\r\nreturns   and    spaces",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "zero\u200bwidth\ufeffmarks and soft\u00adhyphen",
    "control\x00chars\x07here\x1b[0m",
    "combining: cafe\u0301 n\u0303 a\u030a",
    "İstanbul ǅ ß ﬁ Ⅻ ①",
    "The capital of France is [MASK].",
    "[CLS] literal [SEP] special [PAD] tokens [UNK]",
    "lower [mask] is not special",
    "x" * 150,
    "a" * 99 + " " + "b" * 101,
    "",
    "   ",
    "Well... what?! No--way.",
    "co-operate, re-enter, state-of-the-art",
    "don't can't won't shouldn't y'all",
    "1st 2nd 3rd 4th",
    "C++ and C# and F# and .NET",
    "#hashtag @mention",
    "##notaprefix",
    "quotes “curly” and ‘single’ and «guillemets»",
    "math: x² + y³ = z⁴, ½ ¼ ∑ ∫ √",
]


@pytest.fixture(scope="module")
def ours() -> WordPiece:
    return WordPiece.from_vocab_file(minilm_path() / "vocab.txt")


@pytest.fixture(scope="module")
def ref():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(minilm_path()), local_files_only=True)


def test_hello_padded_to_four(ours) -> None:
    enc = ours("Hello", padding="max_length", max_length=4)
    assert enc["input_ids"] == [101, 7592, 102, 0]
    assert enc["attention_mask"] == [1, 1, 1, 0]
    assert enc["token_type_ids"] == [0, 0, 0, 0]


def test_vocabulary(ours) -> None:
    assert ours.vocab_size == 30522
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )


@pytest.mark.parametrize("text", SENTENCES)
def test_same_ids_as_minilm_tokenizer(ours, ref, text: str) -> None:
    assert ours.encode(text) == ref(text)["input_ids"], f"ids differ on {text!r}"
    assert ours.tokenize(text) == ref.tokenize(text)


def test_same_ids_on_unicode_blocks(ours, ref) -> None:
    """Latin to Hebrew, punctuation and symbols, CJK (edges of the ideograph ranges included),
    Hangul, full-width forms, emoji: every code point in a few contexts."""
    blocks = [
        (0x1, 0x600),
        (0x2000, 0x2C00),
        (0x3000, 0x3500),
        (0x4DB0, 0x4E10),
        (0x9FF0, 0xA000),
        (0xAC00, 0xAD00),
        (0xF8F0, 0x10000),
        (0x1F300, 0x1FA00),
        (0x2A6D0, 0x2A710),
        (0x2B700, 0x2B960),
        (0x2CEA0, 0x2CEC0),
    ]
    cps = [c for lo, hi in blocks for c in range(lo, hi)]
    texts = [f"a{chr(c)}b {chr(c).upper()}x{chr(c)}{chr(c)}" for c in cps]
    got, want = ours(texts)["input_ids"], ref(texts)["input_ids"]
    bad = [hex(c) for c, g, w in zip(cps, got, want, strict=True) if g != w]
    assert not bad, f"{len(bad)} code points differ, e.g. {bad[:10]}"


def test_word_pieces_and_unknown_words(ours) -> None:
    assert ours.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    assert ours.tokenize("x" * 101) == ["[UNK]"]  # longer than 100 characters
    assert ours.tokenize("x" * 100) != ["[UNK]"]
    assert ours.tokenize("😀") == ["[UNK]"]
    assert ours.encode("Hello", add_special_tokens=False) == [7592]


def test_basic_tokenize() -> None:
    assert basic_tokenize("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo", lowercase=False) == ["Héllo"]
    assert basic_tokenize("中文") == ["中", "文"]
    assert basic_tokenize("a$b^c") == ["a", "$", "b", "^", "c"]


def test_pairs_and_token_types(ours, ref) -> None:
    a, b = "How old are you?", "I am six years old, nearly seven."
    enc = ours.encode_pair(a, b)
    want = ref(a, b)
    assert enc.input_ids == want["input_ids"]
    assert enc.token_type_ids == want["token_type_ids"]
    assert enc.attention_mask == [1] * len(enc)
    n_a = len(ours.encode(a))
    assert enc.token_type_ids == [0] * n_a + [1] * (len(enc) - n_a)


def test_longest_first_truncation_matches(ours, ref) -> None:
    for n_a in range(1, 8):
        for n_b in range(1, 8):
            a, b = " ".join(["dog"] * n_a), " ".join(["cat"] * n_b)
            for max_length in range(3, 14):
                got = ours(a, b, truncation=True, max_length=max_length)
                want = ref(a, b, truncation=True, max_length=max_length)
                assert got["input_ids"] == want["input_ids"], (n_a, n_b, max_length)
                assert got["token_type_ids"] == want["token_type_ids"]
    enc = ours.encode_pair("one two three four", "five six", max_length=7)
    assert len(enc) == 7


def test_batches_with_padding_and_truncation(ours, ref) -> None:
    texts = SENTENCES[:12]
    pairs = SENTENCES[12:24]
    for kwargs in (
        dict(padding=True),
        dict(padding="longest", truncation=True, max_length=10),
        dict(padding="max_length", truncation=True, max_length=16),
    ):
        got = ours(texts, pairs, **kwargs)
        want = ref(texts, pairs, **kwargs)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert got[key] == want[key], (kwargs, key)
    tensors = ours(texts, padding=True, return_tensors="pt")
    assert tensors["input_ids"].dtype == torch.long
    assert tensors["input_ids"].shape == tensors["attention_mask"].shape
    assert torch.equal(
        tensors["input_ids"], ref(texts, padding=True, return_tensors="pt")["input_ids"]
    )


def test_decode_matches(ours, ref) -> None:
    for text in SENTENCES[:30]:
        ids = ref(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            )


def test_bad_arguments(ours, tmp_path) -> None:
    with pytest.raises(ValueError, match="need max_length"):
        ours("hi", padding="max_length")
    with pytest.raises(ValueError, match="padding=True"):
        ours(["hi", "hello there"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding="):
        ours("hi", padding="left")
    with pytest.raises(ValueError, match="2 texts but 1 text pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="too short"):
        ours.encode_pair("a", "b", max_length=2)
    with pytest.raises(ValueError, match="id 30522"):
        ours.decode([101, 30522])
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPiece.from_vocab_file(tmp_path)
    with pytest.raises(ValueError, match=r"\['\[MASK\]'\] are not in the vocabulary"):
        WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])


def test_save_load_round_trip(ours, tmp_path) -> None:
    ours.save(tmp_path)
    loaded = WordPiece.load(tmp_path)
    assert loaded.vocab == ours.vocab
    text = " ".join(SENTENCES)
    assert loaded.encode(text) == ours.encode(text)
