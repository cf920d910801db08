"""Fact cards about invented creatures: a reading task no pretrained model can answer from memory.

Every creature has a made-up name, a colour, a made-up home town and a food. Each fact is one
short *card*, and each card answers one question::

    The zorblat is teal.            What colour is the zorblat?   -> teal
    The zorblat lives in Varnholt.  Where does the zorblat live?  -> Varnholt
    The zorblat eats figs.          What does the zorblat eat?    -> figs

The names never occur in any training text, so a model answers correctly only by *reading*
a card it is given: the setting in which chapter 10 compares closed-book answers with
retrieval-augmented ones. Worlds are generated from a seed; two seeds give disjoint names when
the second call excludes the first world's names.

:func:`reader_prompt` fixes the prompt format of the course's reader model: the context cards
on one line, then ``Q: question`` and ``A: ``; the answer ends with a newline. It is kept
short on purpose: the character-level GPT of chapter 07 sees at most 128 characters.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "RELATIONS",
    "COLOURS",
    "FOODS",
    "Creature",
    "FactCard",
    "FactQuestion",
    "make_creatures",
    "fact_cards",
    "fact_questions",
    "reader_prompt",
    "reader_example",
    "reader_worlds",
]

COLOURS = ("teal", "amber", "crimson", "violet", "ochre", "silver", "indigo", "scarlet",
           "olive", "maroon", "coral", "ivory")  # fmt: skip
FOODS = ("figs", "moss", "pebbles", "honey", "acorns", "kelp", "beetles", "clover", "plums",
         "seeds", "mushrooms", "reeds")  # fmt: skip

#: relation -> (card template, question template); fields: name, colour, home, food.
RELATIONS: dict[str, tuple[str, str]] = {
    "colour": ("The {name} is {colour}.", "What colour is the {name}?"),
    "home": ("The {name} lives in {home}.", "Where does the {name} live?"),
    "food": ("The {name} eats {food}.", "What does the {name} eat?"),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "fl", "gr", "kl", "pr", "sk", "sn", "tr", "zh")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "oo", "ou")
_CODAS = ("", "n", "r", "l", "m", "k", "x", "sh", "t", "nd", "rk")


@dataclass(frozen=True)
class Creature:
    """An invented creature and its three facts."""

    name: str
    colour: str
    home: str
    food: str

    def fact(self, relation: str) -> str:
        """The value of ``relation`` ("colour", "home" or "food")."""
        if relation not in RELATIONS:
            raise KeyError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")
        return getattr(self, relation)


@dataclass(frozen=True)
class FactCard:
    """One card: its text, the creature it is about (index) and the relation it states."""

    text: str
    creature: int
    relation: str


@dataclass(frozen=True)
class FactQuestion:
    """A question, its answer, and the creature (index) and relation it asks about."""

    question: str
    answer: str
    creature: int
    relation: str


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
    )


def make_creatures(
    n: int, seed: int, exclude: Iterable[Creature] = (), max_name: int = 8
) -> list[Creature]:
    """``n`` creatures with distinct two-syllable names and homes (at most ``max_name`` letters).

    Names and homes of ``exclude`` (e.g. a training world) are never reused, so a test world
    shares no creature with it. Deterministic for a given ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    taken_names = {c.name for c in exclude}
    taken_homes = {c.home for c in exclude}
    out: list[Creature] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not invent {n} distinct names of <= {max_name} letters")
        name, home = _word(rng, 2), _word(rng, 2).capitalize()
        colour, food = rng.choice(COLOURS), rng.choice(FOODS)
        if len(name) > max_name or len(home) > max_name + 1:
            continue
        if name in taken_names or home in taken_homes or name == home.lower():
            continue
        taken_names.add(name)
        taken_homes.add(home)
        out.append(Creature(name, colour, home, food))
    return out


def fact_cards(creatures: Sequence[Creature]) -> list[FactCard]:
    """Three cards per creature, in creature order (colour, home, food)."""
    return [
        FactCard(card.format(**vars(c)), i, rel)
        for i, c in enumerate(creatures)
        for rel, (card, _) in RELATIONS.items()
    ]


def fact_questions(creatures: Sequence[Creature]) -> list[FactQuestion]:
    """Three questions per creature, aligned with :func:`fact_cards` (same order)."""
    return [
        FactQuestion(question.format(**vars(c)), c.fact(rel), i, rel)
        for i, c in enumerate(creatures)
        for rel, (_, question) in RELATIONS.items()
    ]


def reader_prompt(context: Sequence[str], question: str) -> str:
    """The reader's prompt: ``"<cards>\\nQ: <question>\\nA: "``; no context line when empty.

    The model's answer follows and ends with ``"\\n"``.
    """
    if isinstance(context, str):
        raise TypeError("context must be a sequence of card texts, not one string")
    head = " ".join(context)
    return (f"{head}\n" if head else "") + f"Q: {question}\nA: "


def reader_example(
    creatures: Sequence[Creature],
    rng: random.Random,
    *,
    closed_book: float = 0.1,
    distractor: float = 0.7,
    same_creature: float = 0.7,
) -> tuple[str, str]:
    """One training example ``(prompt, answer + "\\n")`` for a reader model.

    A random question about a random creature. With probability ``closed_book`` the prompt
    has no context; otherwise it holds the card that answers the question and, with
    probability ``distractor``, one more card in random order: another fact about the same
    creature (probability ``same_creature``) or a card about another creature. Training on
    distractors teaches the model to pick the card that matches the question, not just to copy
    the last word it sees. Prompts stay under 128 characters.
    """
    if len(creatures) < 2:
        raise ValueError("reader_example needs at least two creatures (for distractors)")
    i = rng.randrange(len(creatures))
    creature = creatures[i]
    relation = rng.choice(list(RELATIONS))
    card, question = (t.format(**vars(creature)) for t in RELATIONS[relation])
    context: list[str] = []
    if rng.random() >= closed_book:
        context = [card]
        if rng.random() < distractor:
            if rng.random() < same_creature:
                other_rel = rng.choice([r for r in RELATIONS if r != relation])
                context.append(RELATIONS[other_rel][0].format(**vars(creature)))
            else:
                other = creatures[(i + 1 + rng.randrange(len(creatures) - 1)) % len(creatures)]
                context.append(rng.choice(list(RELATIONS.values()))[0].format(**vars(other)))
            rng.shuffle(context)
    return reader_prompt(context, question), creature.fact(relation) + "\n"


def reader_worlds(
    n_train: int = 600, n_val: int = 40, n_test: int = 40, seed: int = 0
) -> tuple[list[Creature], list[Creature], list[Creature]]:
    """The three disjoint worlds of the course's reader: ``(train, validation, test)``.

    The reader model is fine-tuned on questions about the training world only; chapter 10
    evaluates it on the test world, whose names it has never seen.
    """
    train = make_creatures(n_train, seed)
    val = make_creatures(n_val, seed + 1, exclude=train)
    test = make_creatures(n_test, seed + 2, exclude=train + val)
    return train, val, test
