"""Byte-pair-encoding training over word frequencies with incremental pair counts.

The textbook loop ("count every adjacent pair in the corpus, merge the most frequent one,
repeat") rescans the whole corpus once per merge. Two observations make it fast:

1. BPE never merges across pre-tokens, so the corpus is summarised once as a table of unique
   pre-tokens ("words") and their frequencies. Tiny Shakespeare's 300k pre-tokens are about
   14k unique words.
2. A merge only changes the words that contain the merged pair. An index pair -> words lets
   us visit only those, subtract their old pair counts and add their new ones. A heap with
   lazy deletion then finds the next most frequent pair without scanning all pairs.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from itertools import pairwise

from llmcourse.tokenizers.byte_level import bytes_to_unicode

__all__ = ["train_bpe_merges", "merge_pair"]

Pair = tuple[int, int]


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids``, left to right."""
    first, second = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe_merges(
    word_counts: Mapping[bytes, int], num_tokens: int
) -> tuple[list[bytes], list[tuple[Pair, int]]]:
    """Learn merges until the vocabulary holds ``num_tokens`` byte strings.

    Args:
        word_counts: each pre-token as UTF-8 bytes, with how often it occurs.
        num_tokens: the vocabulary size to reach, counting the 256 single bytes.

    Returns:
        ``(vocab, merges)``: ``vocab[i]`` is the byte string of token ``i`` (ids 0-255 are the
        single bytes), and ``merges`` lists ``((left, right), result)`` in the order learned.

    Tie-breaking is deterministic and the same as Hugging Face ``tokenizers``' BPE trainer:
    among pairs with the same count, the smallest ``(rank(left), rank(right))`` wins, where
    single bytes rank by their character in the GPT-2 alphabet and merged tokens come after
    them in creation order. When a merge produces a byte string that
    is already a token (``"ab" + "c"`` after ``"a" + "bc"``), the existing id is reused, so
    there can be more merges than new tokens. Training stops early when no pair is left.
    """
    if num_tokens < 256:
        raise ValueError(f"num_tokens must be at least 256 (the single bytes), got {num_tokens}")
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    token_id: dict[bytes, int] = {tok: i for i, tok in enumerate(vocab)}

    words: list[list[int]] = []
    freqs: list[int] = []
    for word, count in word_counts.items():
        if count > 0 and len(word) > 1:
            words.append(list(word))
            freqs.append(count)

    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        freq = freqs[wi]
        for pair in pairwise(word):
            pair_counts[pair] += freq
            where[pair].add(wi)

    # Tie-break order of tokens: the single bytes by their GPT-2 alphabet character, then the
    # merged tokens in the order they were created (the order Hugging Face tokenizers uses).
    alphabet = bytes_to_unicode()
    order = [0] * 256
    for rank, b in enumerate(sorted(range(256), key=lambda b: alphabet[b])):
        order[b] = rank

    def tie_rank(idx: int) -> int:
        return order[idx] if idx < 256 else idx

    def entry(pair: Pair, count: int) -> tuple[int, int, int, Pair]:
        return (-count, tie_rank(pair[0]), tie_rank(pair[1]), pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[Pair, int]] = []

    while len(vocab) < num_tokens and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale entry: the count changed after it was pushed
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = token_id.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            token_id[merged] = new_id
        merges.append((pair, new_id))

        changed: set[Pair] = set()
        for wi in where.pop(pair):
            old = words[wi]
            new = merge_pair(old, pair, new_id)
            freq = freqs[wi]
            old_pairs = list(pairwise(old))
            new_pairs = list(pairwise(new))
            for p in old_pairs:
                pair_counts[p] -= freq
            for p in new_pairs:
                pair_counts[p] += freq
            changed.update(old_pairs)
            changed.update(new_pairs)
            new_set = set(new_pairs)
            for p in set(old_pairs) - new_set:
                if p != pair:
                    where[p].discard(wi)
            for p in new_set:
                where[p].add(wi)
            words[wi] = new
        for p in changed:
            count = pair_counts[p]
            if count > 0:
                heapq.heappush(heap, entry(p, count))
            else:
                del pair_counts[p]
                where.pop(p, None)
    return vocab, merges
