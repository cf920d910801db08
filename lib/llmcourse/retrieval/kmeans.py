"""k-means clustering in PyTorch (k-means++ seeding, Lloyd iterations), for IVF indexes."""

from __future__ import annotations

import torch

from ..utils import check_dtype, check_shape

__all__ = ["kmeans", "assign"]


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances: x (N, d), c (K, d) -> (N, K)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) of every row: x (N, d) -> (N,) int64."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], batch_size):
        out[s : s + batch_size] = _sq_dists(x[s : s + batch_size], centroids).argmin(1)
    return out


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Cluster the rows of ``x`` into ``k`` groups; returns the centroids (k, d).

    Seeding is k-means++ (each next seed drawn with probability proportional to its squared
    distance from the nearest seed so far); then up to ``n_iter`` Lloyd steps (assign each
    point to its nearest centroid, move each centroid to its points' mean), stopping early
    when the mean squared error improves by less than ``tol`` (relative). A cluster that
    loses all its points is re-seeded at the point farthest from its centroid.
    Deterministic for a given ``seed``.
    """
    check_shape(x, ("N", "d"), "x")
    check_dtype(x, (torch.float32, torch.float64), "x")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points; got k={k}, N={n}")
    gen = torch.Generator(device="cpu").manual_seed(seed)

    x_sq = x.pow(2).sum(1)  # (N,)

    def dist_to(point: torch.Tensor) -> torch.Tensor:  # (d,) -> (N,) squared distances
        return (x_sq - 2 * (x @ point) + point.pow(2).sum()).clamp_min_(0)

    # k-means++ seeding.
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = dist_to(x[first])  # (N,)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: pick any unused point
            probs = torch.ones(n)
        else:
            probs = (closest / total).cpu()
        nxt = int(torch.multinomial(probs.double(), 1, generator=gen))
        centroids.append(x[nxt])
        closest = torch.minimum(closest, dist_to(x[nxt]))
    c = torch.stack(centroids)  # (k, d)

    prev = float("inf")
    for _ in range(n_iter):
        # ||x||^2 is the same for every centroid: add it after the argmin.
        partial, labels = (c.pow(2).sum(1) - 2 * x @ c.T).min(1)  # (N,)
        dist = (partial + x_sq).clamp_min_(0)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        if empty.any():  # re-seed empty clusters at the worst-served points
            far = dist.topk(int(empty.sum())).indices
            c[empty] = x[far]
        mse = float(dist.mean())
        if prev - mse <= tol * max(prev, 1e-30):
            break
        prev = mse
    return c
