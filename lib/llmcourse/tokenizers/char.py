"""Character-level tokenizer: one id per character."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CharTokenizer"]

_FORMAT = "llmcourse.CharTokenizer"


class CharTokenizer:
    """Map each character of a fixed alphabet to an id (its position in ``chars``).

    Args:
        chars: the alphabet, each character once; ids follow this order.
        unk: what to do with a character outside the alphabet. ``None`` (default) raises
            ``ValueError`` naming the character and its position, so silent data loss is
            impossible. A character of the alphabet (e.g. ``"?"``) maps every unknown
            character to that one instead; decoding then cannot restore the original text.

    Example:
        >>> tok = CharTokenizer.from_text("hello")
        >>> tok.encode("hole")
        [1, 3, 2, 0]
    """

    def __init__(self, chars: Iterable[str], unk: str | None = None) -> None:
        alphabet = list(chars)
        for ch in alphabet:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"each entry of chars must be a single character, got {ch!r}")
        if len(set(alphabet)) != len(alphabet):
            dupes = sorted({c for c in alphabet if alphabet.count(c) > 1})
            raise ValueError(f"chars must not repeat a character; repeated: {dupes!r}")
        if not alphabet:
            raise ValueError("chars is empty; a tokenizer needs at least one character")
        self.chars: list[str] = alphabet
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
        if unk is not None and unk not in self.stoi:
            raise ValueError(f"unk={unk!r} must be one of the characters of the vocabulary")
        self.unk = unk

    @classmethod
    def from_text(cls, text: str, unk: str | None = None) -> CharTokenizer:
        """Alphabet = the distinct characters of ``text``, sorted by code point."""
        return cls(sorted(set(text)), unk=unk)

    @classmethod
    def ascii(cls, unk: str | None = None) -> CharTokenizer:
        """The fixed 97-character alphabet: tab, newline, then printable ASCII (space .. ``~``).

        Every model trained with it shares one vocabulary, so any such text (Tiny Shakespeare
        included) encodes without building an alphabet first. Ids: ``"\\t"`` 0, ``"\\n"`` 1,
        ``" "`` 2, ..., ``"~"`` 96.
        """
        printable = [c for c in string.printable if " " <= c <= "~"]
        return cls(["\t", "\n", *sorted(printable)], unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``."""
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pass
        if self.unk is not None:
            unk_id = stoi[self.unk]
            return [stoi.get(ch, unk_id) for ch in text]
        pos, ch = next((i, c) for i, c in enumerate(text) if c not in stoi)
        raise ValueError(
            f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the vocabulary of "
            f"{self.vocab_size} characters; build the tokenizer from text that contains it, "
            f"or pass unk=<a vocabulary character> to map unknown characters to it"
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, NumPy array or 1-D tensor)."""
        tolist = getattr(ids, "tolist", None)
        values = tolist() if callable(tolist) else list(ids)
        n = len(self.chars)
        bad = next((i for i in values if not isinstance(i, int) or not 0 <= i < n), None)
        if bad is not None:
            raise ValueError(f"id {bad!r} is not a token id; expected an int in 0..{n - 1}")
        chars = self.chars
        return "".join([chars[i] for i in values])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the alphabet and ``unk`` to a JSON file."""
        data = {"format": _FORMAT, "chars": "".join(self.chars), "unk": self.unk}
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a CharTokenizer JSON file: {err}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a CharTokenizer file (missing format={_FORMAT!r})")
        return cls(data["chars"], unk=data.get("unk"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and (self.chars, self.unk) == (
            other.chars,
            other.unk,
        )

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r})"
