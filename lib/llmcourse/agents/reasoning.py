"""Chain-of-thought answer extraction and self-consistency (majority voting over samples).

Chain-of-thought prompting asks the model to reason before answering ("Let's think step by
step"); the final answer then has to be found inside free text. Self-consistency samples
several reasoning paths (temperature > 0) and returns the most common final answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from .models import ChatModel, as_chat_model

__all__ = [
    "COT_SUFFIX",
    "extract_answer",
    "normalize_answer",
    "majority_vote",
    "VoteResult",
    "self_consistency",
]

COT_SUFFIX = "Let's think step by step."

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_MARKERS = [
    re.compile(r"####[ \t]*"),  # GSM8K style
    re.compile(r"final answer[ \t]*(?:is|:)[ \t]*", re.IGNORECASE),
    re.compile(r"\bthe answer is[ \t]*:?[ \t]*", re.IGNORECASE),
    re.compile(r"^[ \t]*answer[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE),
]


def _clean(answer: str) -> str:
    answer = answer.strip().splitlines()[0].strip() if answer.strip() else ""
    answer = re.split(r"[.!?]\s", answer, maxsplit=1)[0]  # the first sentence only
    answer = re.sub(r"^\\boxed\{(.*)\}$", r"\1", answer)
    return answer.strip().rstrip(".").strip().strip("*").strip()


def extract_answer(text: str, numeric: bool = False) -> str | None:
    """The final answer stated in a chain-of-thought ``text``, or None.

    Looks, in order, for ``#### X``, ``Final answer: X`` / ``final answer is X``,
    ``The answer is X`` and a line ``Answer: X``, taking the *last* occurrence of the first
    marker found (the model may restate its answer). ``X`` is the rest of that sentence
    (up to ``. ``, ``! ``, ``? `` or the end of the line), without a trailing period. With ``numeric=True`` only a number is returned (the first inside the
    marked answer, else the last number in the text); commas are removed (``1,024`` -> ``1024``).
    """
    found: str | None = None
    for pattern in _MARKERS:
        ends = [m.end() for m in pattern.finditer(text)]
        if ends:
            found = _clean(text[ends[-1] :])
            break
    if not numeric:
        return found or None
    in_marked = re.findall(_NUMBER, found) if found else []
    numbers = in_marked[:1] or re.findall(_NUMBER, text)[-1:]
    return numbers[0].replace(",", "").lstrip("+") if numbers else None


def normalize_answer(answer: str) -> str:
    """Canonical form for voting: lowercase, single spaces, no surrounding punctuation;
    numbers as numbers (``"12.0"`` and ``"12"`` agree)."""
    a = re.sub(r"\s+", " ", answer.strip().lower()).strip(" .,;:!?\"'")
    try:
        value = float(a.replace(",", ""))
    except ValueError:
        return a
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class VoteResult:
    """Outcome of a majority vote.

    Attributes:
        answer: the winning answer (None when no sample had one).
        count: votes for it; ``total``: answers that were not None.
        votes: answer -> votes, in order of first appearance.
        samples: the raw model outputs (self-consistency) or the answers voted on.
    """

    answer: Hashable | None
    count: int
    total: int
    votes: dict[Hashable, int]
    samples: tuple[str, ...] = ()

    @property
    def agreement(self) -> float:
        """Share of the valid answers that agree with the winner (0 when there were none)."""
        return self.count / self.total if self.total else 0.0


def majority_vote(answers: Sequence[Hashable | None]) -> VoteResult:
    """The most frequent non-None answer; a tie goes to the answer that appeared first."""
    valid = [a for a in answers if a is not None]
    votes = dict(Counter(valid))  # Counter keeps first-appearance order
    if not votes:
        return VoteResult(None, 0, 0, {})
    best = max(votes.values())
    winner = next(a for a in votes if votes[a] == best)
    return VoteResult(winner, best, len(valid), votes)


def self_consistency(
    model: ChatModel | Callable[[str], str],
    prompt: str,
    n: int = 5,
    *,
    extract: Callable[[str], str | None] = extract_answer,
    normalize: Callable[[str], Hashable] | None = normalize_answer,
) -> VoteResult:
    """Sample ``n`` completions of ``prompt``, extract each answer, return the majority.

    The model must sample (temperature > 0); a greedy model returns ``n`` identical paths and
    the vote adds nothing. Answers are compared after ``normalize`` (None: as extracted).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chat = as_chat_model(model)
    samples = [chat.complete(prompt) for _ in range(n)]
    answers: list[Hashable | None] = []
    for s in samples:
        a = extract(s)
        answers.append(None if a is None else (normalize(a) if normalize else a))
    vote = majority_vote(answers)
    return VoteResult(vote.answer, vote.count, vote.total, vote.votes, tuple(samples))
