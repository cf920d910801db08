"""CharTokenizer: alphabets, round trips, unknown characters, save/load."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from llmcourse.data import load_text
from llmcourse.tokenizers import CharTokenizer


def test_from_text_sorts_distinct_characters() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hole") == [tok.stoi[c] for c in "hole"]
    assert tok.encode("lo") == [4, 5]  # " ", d, e, h, l, o, r, w -> l=4, o=5
    assert tok.decode(tok.encode("world hello")) == "world hello"


def test_ascii_vocabulary_is_fixed() -> None:
    tok = CharTokenizer.ascii()
    assert tok.vocab_size == 97
    assert tok.encode("\t\n ~") == [0, 1, 2, 96]
    assert tok.encode("A") == [2 + ord("A") - ord(" ")]
    assert set(tok.chars) == set(string.printable) - {"\r", "\x0b", "\x0c"}
    assert CharTokenizer.ascii() == tok  # same vocabulary every time


def test_ascii_round_trips_tiny_shakespeare() -> None:
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.ascii()
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == text
    # the alphabet built from the text itself is a subset of the ASCII one
    assert set(CharTokenizer.from_text(text).chars) <= set(tok.chars)


def test_decode_accepts_arrays_and_tensors() -> None:
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array([2, 1, 0])) == "cba"
    assert tok.decode(torch.tensor([0, 0, 2])) == "aac"


def test_unknown_character_raises_naming_it() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 2"):
        tok.encode("abé")
    with pytest.raises(ValueError, match="unk="):
        CharTokenizer.ascii().encode("naïve")


def test_unknown_character_fallback() -> None:
    tok = CharTokenizer.ascii(unk="?")
    assert tok.decode(tok.encode("naïve – ok")) == "na?ve ? ok"
    with pytest.raises(ValueError, match="unk"):
        CharTokenizer.from_text("abc", unk="?")  # "?" is not in the vocabulary


def test_bad_ids_raise() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"id 3 .* 0\.\.2"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode([-1])


def test_bad_alphabets_raise() -> None:
    with pytest.raises(ValueError, match="repeat"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="single character"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer([])


def test_save_load_round_trip(tmp_path) -> None:
    tok = CharTokenizer.from_text("To be, or not to be?\n\tthat is the question: é 😀", unk="?")
    path = tmp_path / "chars.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded == tok
    assert loaded.encode("to be 😀") == tok.encode("to be 😀")


def test_load_rejects_other_files(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a CharTokenizer file"):
        CharTokenizer.load(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a CharTokenizer JSON file"):
        CharTokenizer.load(bad)
