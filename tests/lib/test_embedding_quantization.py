"""Binary and int8 embedding quantization, Hamming search with rescoring, memory accounting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcourse.retrieval import (
    BinaryIndex,
    ExactIndex,
    Int8Quantizer,
    binarize,
    embedding_bytes,
    hamming_distance,
    knn_recall,
    memory_footprint,
    pack_bits,
    popcount,
    unpack_bits,
)
from llmcourse.utils import ShapeError


def bits(s: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in s]], dtype=torch.uint8)


def test_binarize_course_example():
    x = torch.tensor([12, 1, -100, 0.003, -0.001, 128, -1000, 0.0001])
    assert binarize(x).tolist() == [1, 1, 0, 1, 0, 1, 0, 1]
    assert binarize(torch.tensor([0.0, -0.0])).tolist() == [0, 0]  # zero is not positive
    with pytest.raises(TypeError, match="float"):
        binarize(torch.tensor([1, -1]))


def test_pack_unpack_roundtrip_msb_first():
    packed = pack_bits(bits("11010101"))
    assert packed.tolist() == [[0b11010101]] == [[213]]
    g = torch.Generator().manual_seed(0)
    b = torch.randint(0, 2, (5, 21), generator=g, dtype=torch.uint8)  # 21 bits -> 3 bytes
    p = pack_bits(b)
    assert p.shape == (5, 3) and p.dtype == torch.uint8
    assert torch.equal(unpack_bits(p, 21), b)
    with pytest.raises(ValueError, match="0 or 1"):
        pack_bits(torch.tensor([[2]], dtype=torch.uint8))
    with pytest.raises(ShapeError, match="last dim"):
        unpack_bits(p, 30)


def test_hamming_course_example_and_brute_force():
    a, b = pack_bits(bits("11010101")), pack_bits(bits("11001101"))
    assert hamming_distance(a, b).tolist() == [[2]]
    assert popcount(torch.tensor([0, 1, 255, 0b1011], dtype=torch.uint8)).tolist() == [0, 1, 8, 3]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (7, 100), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 2, (9, 100), generator=g, dtype=torch.uint8)
    expected = (x[:, None, :] != y[None, :, :]).sum(-1)
    for method in ("popcount", "matmul", "auto"):
        got = hamming_distance(pack_bits(x), pack_bits(y), method=method)
        assert torch.equal(got, expected.to(torch.int32)), method
    # all 64 bits of a word set, including the sign bit of the int64 view
    ones, zeros = torch.full((1, 8), 255, dtype=torch.uint8), torch.zeros(1, 8, dtype=torch.uint8)
    assert hamming_distance(ones, zeros, method="popcount").item() == 64


def test_int8_quantizer_error_bound():
    g = torch.Generator().manual_seed(2)
    calib = torch.randn(500, 16, generator=g)
    quant = Int8Quantizer().fit(calib)
    q = quant.quantize(calib)
    assert q.dtype == torch.int8 and q.min() == -128 and q.max() == 127
    err = (quant.dequantize(q) - calib).abs()
    assert (err <= quant.scale / 2 + 1e-6).all()  # half a level inside the calibrated range
    outside = quant.quantize(calib.max(0).values[None] + 10)  # clamps, does not wrap around
    assert (outside == 127).all()
    state = quant.state_dict()
    assert torch.equal(Int8Quantizer().load_state_dict(state).quantize(calib), q)
    with pytest.raises(RuntimeError, match="fit"):
        Int8Quantizer().quantize(calib)


def test_int8_clip_ignores_outliers():
    x = torch.cat([torch.linspace(-1, 1, 999), torch.tensor([100.0])])[:, None]
    assert Int8Quantizer(clip=0.01).fit(x).scale.item() < Int8Quantizer().fit(x).scale.item() / 10


def test_memory_accounting():
    assert embedding_bytes(768, "float32") == 3072
    assert embedding_bytes(768, "int8") == 768
    assert embedding_bytes(768, "binary") == 96
    assert embedding_bytes(384, "float16") == 768
    assert embedding_bytes(10, "binary") == 2  # rounds up to whole bytes
    fp = memory_footprint(1_000_000, 768)
    assert fp["float32"]["bytes"] == 3_072_000_000 and fp["binary"]["vs_float32"] == 32
    with pytest.raises(ValueError, match="precision"):
        embedding_bytes(8, "int4")  # type: ignore[arg-type]


def low_rank(n: int, d: int, seed: int) -> torch.Tensor:
    """Unit vectors near a 16-dim subspace plus noise: like real sentence embeddings, the
    variance sits in a few directions (isotropic Gaussians make every method look bad)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=torch.Generator().manual_seed(0))
    return F.normalize(
        torch.randn(n, 16, generator=g) @ basis + torch.randn(n, d, generator=g), dim=1
    )


def test_binary_index_rescoring_improves_recall():
    d = 128
    x, q = low_rank(3000, d, 3), low_rank(100, d, 4)
    exact = ExactIndex(d, "ip")
    exact.add(x)
    truth = exact.search(q, 10).ids
    recall = {}
    for mode in (None, "binary", "int8", "float"):
        index = BinaryIndex(d, rescore=mode, rescore_multiplier=10)
        index.add(x)
        recall[mode] = knn_recall(index.search(q, 10).ids, truth)
    # Hamming order alone loses neighbours; rescoring 100 candidates recovers most of them.
    assert recall[None] < recall["binary"] < recall["int8"] <= recall["float"] + 0.01, recall
    assert recall["int8"] > 0.95 and recall["float"] > 0.95, recall
    index = BinaryIndex(d, rescore="int8")
    index.add(x)
    assert index.memory_bytes() == {"codes": 3000 * 16, "rescore": 3000 * 128}


def test_binary_index_hamming_order_without_rescoring():
    x = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    index = BinaryIndex(4, rescore=None)
    index.add(x)
    hits = index.search(torch.tensor([[1.0, 1, 1, -1]]), k=3)
    assert hits.ids.tolist() == [[0, 1, 2]]
    assert hits.scores.tolist() == [[-1.0, -1.0, -3.0]]
    with pytest.raises(ShapeError):
        index.search(torch.ones(1, 5))
