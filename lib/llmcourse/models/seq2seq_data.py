"""A seeded synthetic seq2seq task: normalise dates written many ways to ISO ``YYYY-MM-DD``.

    "3 March 2021", "March 3, 2021", "03/03/21", "the 3rd of March 2021"  ->  "2021-03-03"

Nothing is downloaded; the same seed gives the same data everywhere. Dates lie in 1950-2049;
two-digit years follow a fixed pivot (50-99 -> 19xx, 00-49 -> 20xx) and numeric dates are
day first (dd/mm/yy). The validation and test splits use dates that never occur in training.

Long inputs for the bottleneck experiment: ``filler=(lo, hi)`` wraps the date in that many
distractor words ("note that the meeting on 3 March 2021 moved to a later slot"), and
``n_dates=(lo, hi)`` lists several dates ("3 March 2021; 12/05/98") whose ISO forms the target
joins with ";".
"""

from __future__ import annotations

import datetime as dt
import random
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmcourse.recurrent import Seq2Seq

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "CharVocab",
    "DatePair",
    "DateTask",
    "DATE_FORMATS",
    "format_date",
    "generate_date_pairs",
    "make_date_task",
    "Seq2SeqBatch",
    "collate",
    "iterate_batches",
    "translate",
    "exact_match",
]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
FILLER_WORDS = (
    "note that the meeting on was moved to a later slot please confirm by email before "
    "we agreed invoice dated payment due shipped order report from until after since"
).split()
FIRST_DAY, LAST_DAY = dt.date(1950, 1, 1), dt.date(2049, 12, 31)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


DATE_FORMATS: dict[str, Callable[[dt.date], str]] = {
    "d_month_yyyy": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "month_d_yyyy": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "dd/mm/yy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}",
    "d_mon_yyyy": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    "weekday_d_month_yyyy": lambda d: (
        f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}"
    ),
    "ordinal_of_month": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    "dd-mm-yyyy": lambda d: f"{d.day:02d}-{d.month:02d}-{d.year}",
    "mon_d_yy_lower": lambda d: f"{MONTHS[d.month - 1][:3].lower()} {d.day} '{d.year % 100:02d}",
    "d.m.yyyy": lambda d: f"{d.day}.{d.month}.{d.year}",
    "MONTH_D_YYYY": lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
}
"""Input formats by name; each maps a date to its surface string."""


def format_date(date: dt.date, fmt: str) -> str:
    """Render ``date`` in the named input format (a key of :data:`DATE_FORMATS`)."""
    if fmt not in DATE_FORMATS:
        raise ValueError(f"unknown date format {fmt!r}; choose from {sorted(DATE_FORMATS)}")
    return DATE_FORMATS[fmt](date)


class CharVocab:
    """Character vocabulary with ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3.

    The default alphabet covers every character the date generator emits, so one vocabulary
    serves source and target.
    """

    def __init__(self, chars: Iterable[str] | None = None) -> None:
        if chars is None:
            chars = string.ascii_letters + string.digits + " ,./-';"
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharVocab takes single characters")
        self.itos: list[str] = list(SPECIALS) + chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Characters to ids; unknown characters map to ``<unk>``."""
        ids = [self.stoi.get(c, UNK_ID) for c in text]
        return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Ids to text: stops at the first ``<eos>``, skips ``<pad>``/``<bos>``, unk -> "?"."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append("?" if i == UNK_ID or not 0 <= i < len(self.itos) else self.itos[i])
        return "".join(out)


@dataclass(frozen=True)
class DatePair:
    """One example: source text, ISO target, and the input format(s) used."""

    source: str
    target: str
    formats: tuple[str, ...]


@dataclass
class DateTask:
    """Train / validation / test splits and the shared vocabulary."""

    train: list[DatePair]
    val: list[DatePair]
    test: list[DatePair]
    vocab: CharVocab


def _as_range(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else value
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} must be an int >= 0 or a range (lo, hi) with lo <= hi")
    return lo, hi


def _make_pair(
    rng: random.Random,
    days: Sequence[int],
    formats: Sequence[str],
    n_dates: tuple[int, int],
    filler: tuple[int, int],
) -> DatePair:
    dates = [FIRST_DAY + dt.timedelta(days=rng.choice(days)) for _ in range(rng.randint(*n_dates))]
    fmts = tuple(rng.choice(formats) for _ in dates)
    source = "; ".join(format_date(d, f) for d, f in zip(dates, fmts, strict=True))
    n_fill = rng.randint(*filler)
    if n_fill:
        words = [rng.choice(FILLER_WORDS) for _ in range(n_fill)]
        cut = rng.randint(0, n_fill)
        source = " ".join(words[:cut] + [source] + words[cut:])
    return DatePair(source, ";".join(d.isoformat() for d in dates), fmts)


def generate_date_pairs(
    n: int,
    seed: int = 0,
    formats: Sequence[str] | None = None,
    n_dates: int | tuple[int, int] = 1,
    filler: int | tuple[int, int] = 0,
    days: Sequence[int] | None = None,
) -> list[DatePair]:
    """``n`` seeded examples. ``days`` restricts dates to these offsets from 1950-01-01."""
    formats = list(DATE_FORMATS) if formats is None else list(formats)
    for f in formats:
        format_date(FIRST_DAY, f)  # raises a clear error for unknown names
    if not formats:
        raise ValueError("formats must name at least one format")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    nd = _as_range(n_dates, "n_dates")
    if nd[0] < 1:
        raise ValueError("n_dates must be at least 1")
    fill = _as_range(filler, "filler")
    days = range((LAST_DAY - FIRST_DAY).days + 1) if days is None else days
    rng = random.Random(seed)
    return [_make_pair(rng, days, formats, nd, fill) for _ in range(n)]


def make_date_task(
    n_train: int = 10_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    seed: int = 0,
    formats: Sequence[str] | None = None,
    n_dates: int | tuple[int, int] = 1,
    filler: int | tuple[int, int] = 0,
) -> DateTask:
    """Seeded splits of the date task; val and test dates are held out of training.

    The 36,525 days of 1950-2049 are shuffled and cut into three disjoint pools, sized in
    proportion to the splits; each split draws its dates from its own pool.
    """
    sizes = (n_train, n_val, n_test)
    if min(sizes) < 0 or sum(sizes) == 0:
        raise ValueError(f"split sizes must be >= 0 and not all zero, got {sizes}")
    all_days = list(range((LAST_DAY - FIRST_DAY).days + 1))
    random.Random(seed).shuffle(all_days)
    total = sum(sizes)
    n_val_days = max(1, len(all_days) * n_val // total) if n_val else 0
    n_test_days = max(1, len(all_days) * n_test // total) if n_test else 0
    pools = (
        all_days[n_val_days + n_test_days :],
        all_days[:n_val_days],
        all_days[n_val_days : n_val_days + n_test_days],
    )
    splits = [
        generate_date_pairs(size, seed * 3 + i + 1, formats, n_dates, filler, pool) if size else []
        for i, (size, pool) in enumerate(zip(sizes, pools, strict=True))
    ]
    return DateTask(*splits, vocab=CharVocab())


@dataclass
class Seq2SeqBatch:
    """src (B, S) long, src_mask (B, S) bool (True = real), tgt (B, T) long = [bos, ..., eos, pad]."""

    src: Tensor
    src_mask: Tensor
    tgt: Tensor
    sources: list[str]
    targets: list[str]


def _pad(rows: list[list[int]], device: torch.device | str | None) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device) if device is not None else out


def collate(
    pairs: Sequence[DatePair], vocab: CharVocab, device: torch.device | str | None = None
) -> Seq2SeqBatch:
    """Encode and right-pad a list of pairs into one batch."""
    if not pairs:
        raise ValueError("collate needs at least one pair")
    src = _pad([vocab.encode(p.source) or [UNK_ID] for p in pairs], device)
    tgt = _pad([vocab.encode(p.target, add_bos=True, add_eos=True) for p in pairs], device)
    return Seq2SeqBatch(
        src, src != PAD_ID, tgt, [p.source for p in pairs], [p.target for p in pairs]
    )


def iterate_batches(
    pairs: Sequence[DatePair],
    vocab: CharVocab,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[Seq2SeqBatch]:
    """One pass over ``pairs`` in batches (the last may be smaller); shuffled by ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(pairs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([pairs[i] for i in order[start : start + batch_size]], vocab, device)


@torch.no_grad()
def translate(
    model: Seq2Seq,
    sources: Sequence[str],
    vocab: CharVocab,
    beam_size: int = 1,
    max_len: int | None = None,
    batch_size: int = 256,
    length_penalty: float = 1.0,
) -> list[str]:
    """Decode source strings (greedy when ``beam_size == 1``) in eval mode, then restore the mode.

    ``max_len`` defaults to the longest ISO output the sources could need (11 per date).
    """
    was_training = model.training
    model.eval()
    try:
        return _translate(model, sources, vocab, beam_size, max_len, batch_size, length_penalty)
    finally:
        model.train(was_training)


def _translate(
    model: Seq2Seq,
    sources: Sequence[str],
    vocab: CharVocab,
    beam_size: int,
    max_len: int | None,
    batch_size: int,
    length_penalty: float,
) -> list[str]:
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = list(sources[start : start + batch_size])
        src = _pad([vocab.encode(s) or [UNK_ID] for s in chunk], device)
        limit = max_len or 11 * (1 + max(s.count(";") for s in chunk))
        if beam_size == 1:
            result = model.greedy_decode(src, max_len=limit)
        else:
            result = model.beam_search(
                src, beam_size=beam_size, max_len=limit, length_penalty=length_penalty
            )
        out.extend(vocab.decode(row) for row in result.tokens)
    return out


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target string."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("exact_match needs at least one target")
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(targets)
