"""A sparse mixture-of-experts (MoE) feed-forward layer: top-k softmax routing over N FFNs.

Each token is sent to ``k`` of ``n_experts`` independent feed-forward networks (the experts)
and their outputs are mixed with the router's gate weights. Only the chosen experts run for a
token, so the layer holds ``n_experts`` FFNs' worth of parameters but spends about ``k`` FFNs'
worth of compute per token (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2022, k=1;
GShard and Mixtral, k=2). For a token x (C,) with router logits r = x W_r^T (E,):

    p = softmax(r)                        (E,)  router probabilities
    S = indices of the k largest p_e      (k,)  most probable first
    g_e = p_e / sum_{j in S} p_j          (k,)  renormalised gate weights, they sum to 1
    y = sum_{e in S} g_e * FFN_e(x)       (C,)

A load-balancing loss (:func:`load_balancing_loss`) keeps the router from sending every token
to the same few experts. There is no expert capacity limit: no token is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmcourse.nn.feedforward import FeedForward
from llmcourse.nn.layers import Linear
from llmcourse.utils import ShapeError

__all__ = ["Routing", "top_k_gating", "load_balancing_loss", "MoEFeedForward"]


@dataclass
class Routing:
    """The router's decision for N tokens over E experts.

    probs: (N, E) softmax of the router logits (every expert, before the top-k selection);
    weights: (N, k) renormalised gate weights of the chosen experts (each row sums to 1);
    indices: (N, k) long, the chosen experts, most probable first.
    """

    probs: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor


def _check_k(k: int, n_experts: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_experts:
        raise ValueError(f"top_k must be an int in [1, n_experts={n_experts}], got {k!r}")


def top_k_gating(router_logits: torch.Tensor, k: int) -> Routing:
    """Top-k softmax routing: router_logits (N, E) -> :class:`Routing`.

    The softmax runs over all E experts (at least in float32), the k most probable are
    kept and their probabilities renormalised to sum to 1 (Mixtral's router). With k = E every
    expert is used with weight p_e; with k = 1 the single expert gets weight 1, and the router
    then learns only through the load-balancing loss (Switch multiplies by p_e instead).
    """
    if router_logits.dim() != 2:
        raise ShapeError(
            f"top_k_gating: router_logits must have shape (N, E), got {tuple(router_logits.shape)}"
        )
    _check_k(k, router_logits.shape[-1])
    if router_logits.dtype not in (torch.float32, torch.float64):
        router_logits = router_logits.float()  # half precision: route in float32
    probs = torch.softmax(router_logits, dim=-1)  # (N, E)
    top_p, indices = torch.topk(probs, k, dim=-1)  # (N, k) each, sorted
    weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (N, k)
    return Routing(probs=probs, weights=weights, indices=indices)


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch/GShard auxiliary loss ``E * sum_e f_e * P_e`` (a scalar; 1.0 when balanced).

    probs: (N, E) router probabilities; indices: (N, k) chosen experts.
    ``f_e`` = share of the N*k token-to-expert assignments that went to expert e (no gradient;
    sum_e f_e = 1), ``P_e`` = mean router probability of expert e (differentiable). The loss is
    1 when both are uniform (1/E) and grows to E when every token goes to one expert with
    probability 1; its gradient pushes probability away from over-used experts. For k = 1 this
    is the Switch Transformer loss; Hugging Face's Mixtral ``load_balancing_loss_func``
    counts assignments per token instead of per assignment, which is k times this value.
    Multiply by a small coefficient (0.01 in Switch, 0.02 in Mixtral) before adding it to the
    language-model loss.
    """
    if probs.dim() != 2 or indices.dim() != 2 or indices.shape[0] != probs.shape[0]:
        raise ShapeError(
            "load_balancing_loss: expected probs (N, E) and indices (N, k) with the same N, got "
            f"{tuple(probs.shape)} and {tuple(indices.shape)}"
        )
    n_experts = probs.shape[-1]
    counts = torch.zeros(n_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(
        0, indices.reshape(-1), torch.ones_like(indices.reshape(-1), dtype=probs.dtype)
    )
    fraction = counts / indices.numel()  # (E,) f_e, sums to 1
    mean_prob = probs.mean(dim=0)  # (E,) P_e
    return n_experts * (fraction * mean_prob).sum()


class MoEFeedForward(nn.Module):
    """Sparse MoE replacement for a Transformer block's FFN: (*, dim) -> (*, dim).

    ``n_experts`` :class:`~llmcourse.nn.FeedForward` experts (``activation`` as there, e.g.
    ``"gelu_tanh"`` or ``"swiglu"``), a bias-free linear router, and top-``top_k`` gating
    (:func:`top_k_gating`). After every forward, ``self.aux_loss`` holds the
    :func:`load_balancing_loss` of that batch (a scalar tensor in the autograd graph) and
    ``self.last_routing`` the :class:`Routing` (for inspection and plots).

    State dict: ``router.weight`` (n_experts, dim); ``experts.E.fc1.weight``, ... as in
    FeedForward. With ``activation="swiglu", bias=False`` the layout is Mixtral's:
    ``experts.E.fc1.weight`` = ``gate_up_proj[E]`` (gate rows first), ``experts.E.fc2.weight``
    = ``down_proj[E]``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int = 8,
        top_k: int = 2,
        activation: str = "gelu",
        *,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"MoEFeedForward: n_experts must be a positive int, got {n_experts!r}")
        _check_k(top_k, n_experts)
        self.dim = dim
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(
            FeedForward(dim, hidden, activation, bias=bias, dropout=dropout)
            for _ in range(n_experts)
        )
        self.aux_loss: torch.Tensor | None = None
        self.last_routing: Routing | None = None

    def route(self, x: torch.Tensor) -> Routing:
        """Routing of the tokens x (N, dim): :class:`Routing` with (N, E) and (N, k) tensors."""
        return top_k_gating(self.router(x), self.top_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ShapeError(
                f"MoEFeedForward: x must have shape (*, {self.dim}), got {tuple(x.shape)}"
            )
        tokens = x.reshape(-1, self.dim)  # (N, C)
        routing = self.route(tokens)
        out = torch.zeros_like(tokens)  # (N, C)
        weights = routing.weights.to(tokens.dtype)  # (N, k)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(routing.indices == e)  # (n_e,) each
            if token_idx.numel() == 0:
                continue  # an unused expert does no work (and gets no gradient)
            y = expert(tokens[token_idx])  # (n_e, C)
            out.index_add_(0, token_idx, y * weights[token_idx, slot, None])
        self.last_routing = routing
        self.aux_loss = load_balancing_loss(routing.probs, routing.indices)
        return out.reshape(x.shape)

    def parameter_counts(self) -> tuple[int, int]:
        """``(total, active)``: all parameters, and those one token uses (router + k experts)."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        router = self.router.weight.numel()
        return router + self.n_experts * per_expert, router + self.top_k * per_expert

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_experts={self.n_experts}, top_k={self.top_k}"
