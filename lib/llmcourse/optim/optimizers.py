"""First-order optimizers written out step by step: SGD, RMSProp, Adam, AdamW.

Each class is a :class:`torch.optim.Optimizer`, so it works with schedulers, ``state_dict`` and
checkpoints exactly like the built-in ones. The update rules follow the papers (and produce the
same numbers as ``torch.optim``'s single-tensor code path, which the tests check):

* SGD with momentum ``mu`` and dampening ``d``: ``b <- mu * b + (1 - d) * g``; the step uses
  ``b`` (heavy ball) or ``g + mu * b`` (Nesterov).
* RMSProp: ``s <- alpha * s + (1 - alpha) * g^2``; ``p <- p - lr * g / (sqrt(s) + eps)``.
* Adam: ``m <- beta1 * m + (1 - beta1) * g``; ``v <- beta2 * v + (1 - beta2) * g^2``;
  ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
  ``m_hat = m / (1 - beta1^t)`` and ``v_hat = v / (1 - beta2^t)``. Weight decay is added to the
  gradient (L2 regularisation, coupled with the adaptive scaling).
* AdamW: Adam with *decoupled* weight decay ``p <- p * (1 - lr * wd)`` applied before the update.

Every optimizer has two interchangeable code paths: a readable loop over parameters
(``foreach=False``) and a batched one built on ``torch._foreach_*`` kernels (``foreach=True``,
the default), which does the same element-wise arithmetic with far less Python overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["SGD", "RMSProp", "Adam", "AdamW"]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class _WrittenOutOptimizer(torch.optim.Optimizer):
    """Shared plumbing: closure handling and collecting the parameters that have gradients."""

    def _params_with_grad(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "use dense embeddings (sparse=False)"
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
        if not group["foreach"] or not params:
            return False
        first = (params[0].device, params[0].dtype)
        return all((p.device, p.dtype) == first for p in params)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one optimisation step; ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if params:
                self._update_group(group, params, grads)
        return loss

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        raise NotImplementedError


class SGD(_WrittenOutOptimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        momentum: momentum factor ``mu`` (0 disables the velocity buffer).
        dampening: scales the new gradient inside the buffer by ``1 - dampening``.
        weight_decay: L2 penalty, added to the gradient as ``wd * p``.
        nesterov: look-ahead momentum (needs ``momentum > 0`` and ``dampening == 0``).
        foreach: use batched ``torch._foreach_*`` kernels (same numbers, faster).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        foreach: bool = True,
    ) -> None:
        _check_non_negative("lr", lr)
        _check_non_negative("momentum", momentum)
        _check_non_negative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"Nesterov momentum needs momentum > 0 and dampening = 0, "
                f"got momentum={momentum}, dampening={dampening}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        damp, nesterov = group["dampening"], group["nesterov"]
        if self._use_foreach(group, params):
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if mu != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                fresh = [i for i, b in enumerate(bufs) if b is None]
                old = [i for i, b in enumerate(bufs) if b is not None]
                for i in fresh:  # first step: the buffer starts as the gradient itself
                    bufs[i] = grads[i].clone().detach()
                    self.state[params[i]]["momentum_buffer"] = bufs[i]
                if old:
                    old_bufs = [bufs[i] for i in old]
                    torch._foreach_mul_(old_bufs, mu)
                    torch._foreach_add_(old_bufs, [grads[i] for i in old], alpha=1 - damp)
                if nesterov:
                    grads = torch._foreach_add(grads, bufs, alpha=mu)
                else:
                    grads = bufs  # type: ignore[assignment]
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        for p, g in zip(params, grads, strict=True):
            if wd != 0:
                g = g.add(p, alpha=wd)
            if mu != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone().detach()
                else:
                    buf.mul_(mu).add_(g, alpha=1 - damp)
                g = g.add(buf, alpha=mu) if nesterov else buf
            p.add_(g, alpha=-lr)


class RMSProp(_WrittenOutOptimizer):
    """RMSProp: divide the gradient by a running root-mean-square of recent gradients.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        alpha: smoothing constant of the squared-gradient average.
        eps: added to the root mean square for numerical stability.
        weight_decay: L2 penalty added to the gradient.
        momentum: momentum on the scaled step (0 disables it).
        centered: normalise by the variance estimate ``E[g^2] - E[g]^2`` instead of ``E[g^2]``.
        foreach: use batched ``torch._foreach_*`` kernels (same numbers, faster).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        foreach: bool = True,
    ) -> None:
        _check_non_negative("lr", lr)
        _check_non_negative("eps", eps)
        _check_unit_interval("alpha", alpha)
        _check_non_negative("weight_decay", weight_decay)
        _check_non_negative("momentum", momentum)
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _states(self, group: dict[str, Any], params: list[Tensor]) -> list[dict[str, Any]]:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                if group["centered"]:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            states.append(state)
        return states

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        wd, mu, centered = group["weight_decay"], group["momentum"], group["centered"]
        states = self._states(group, params)
        if self._use_foreach(group, params):
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            sq = [s["square_avg"] for s in states]
            torch._foreach_mul_(sq, alpha)
            torch._foreach_addcmul_(sq, grads, grads, value=1 - alpha)
            if centered:
                ga = [s["grad_avg"] for s in states]
                torch._foreach_lerp_(ga, grads, 1 - alpha)
                rms = torch._foreach_addcmul(sq, ga, ga, value=-1)
                torch._foreach_sqrt_(rms)
            else:
                rms = torch._foreach_sqrt(sq)
            torch._foreach_add_(rms, eps)
            if mu > 0:
                bufs = [s["momentum_buffer"] for s in states]
                torch._foreach_mul_(bufs, mu)
                torch._foreach_addcdiv_(bufs, grads, rms)
                torch._foreach_add_(params, bufs, alpha=-lr)
            else:
                torch._foreach_addcdiv_(params, grads, rms, value=-lr)
            return
        for p, g, state in zip(params, grads, states, strict=True):
            if wd != 0:
                g = g.add(p, alpha=wd)
            sq = state["square_avg"]
            sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            if centered:
                ga = state["grad_avg"]
                ga.lerp_(g, 1 - alpha)
                rms = sq.addcmul(ga, ga, value=-1).sqrt_()
            else:
                rms = sq.sqrt()
            rms.add_(eps)
            if mu > 0:
                buf = state["momentum_buffer"]
                buf.mul_(mu).addcdiv_(g, rms)
                p.add_(buf, alpha=-lr)
            else:
                p.addcdiv_(g, rms, value=-lr)


class Adam(_WrittenOutOptimizer):
    """Adam (Kingma & Ba, 2015) with bias-corrected first and second moment estimates.

    ``weight_decay`` here is classic L2 regularisation: ``wd * p`` is added to the gradient, so
    it is rescaled by the adaptive denominator. Use :class:`AdamW` for decoupled decay.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: decay rates ``(beta1, beta2)`` of the first and second moment averages.
        eps: added to ``sqrt(v_hat)`` for numerical stability.
        weight_decay: L2 penalty coefficient.
        foreach: use batched ``torch._foreach_*`` kernels (same numbers, faster).
    """

    _decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool = True,
    ) -> None:
        _check_non_negative("lr", lr)
        _check_non_negative("eps", eps)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_unit_interval("betas[0]", betas[0])
        _check_unit_interval("betas[1]", betas[1])
        _check_non_negative("weight_decay", weight_decay)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach
        )
        super().__init__(params, defaults)

    def _states(self, params: list[Tensor]) -> list[dict[str, Any]]:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            states.append(state)
        return states

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        states = self._states(params)
        # Bias corrections (python floats: one per parameter, since steps may differ).
        step_sizes = [-lr / (1 - beta1 ** s["step"]) for s in states]
        bc2_sqrt = [(1 - beta2 ** s["step"]) ** 0.5 for s in states]
        if self._use_foreach(group, params):
            if wd != 0:
                if self._decoupled:
                    torch._foreach_mul_(params, 1 - lr * wd)
                else:
                    grads = torch._foreach_add(grads, params, alpha=wd)
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(m, grads, 1 - beta1)  # m <- beta1 m + (1 - beta1) g
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(
                v, grads, grads, value=1 - beta2
            )  # v <- beta2 v + (1-beta2) g^2
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bc2_sqrt)  # sqrt(v_hat)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, m, denom, step_sizes)
            return
        for p, g, state, step_size, bc2 in zip(
            params, grads, states, step_sizes, bc2_sqrt, strict=True
        ):
            if wd != 0:
                if self._decoupled:
                    p.mul_(1 - lr * wd)
                else:
                    g = g.add(p, alpha=wd)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bc2).add_(eps)
            p.addcdiv_(m, denom, value=step_size)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    Before the Adam update every parameter shrinks by ``p <- p * (1 - lr * weight_decay)``,
    independently of the gradient statistics. Same arguments as :class:`Adam`; the default
    ``weight_decay`` is 0.01 as in ``torch.optim.AdamW``.
    """

    _decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        foreach: bool = True,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, foreach=foreach)
