"""Move weights between these recurrent modules and their ``torch.nn`` twins.

Both sides use the same parameter names and shapes, so copying is a checked ``load_state_dict``.
``from_torch(torch.nn.LSTM(...))`` builds our :class:`~llmcourse.recurrent.LSTM` with the same
configuration and weights; ``to_torch(our_lstm)`` goes the other way.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcourse.recurrent.cells import GRUCell, LSTMCell, RNNCell
from llmcourse.recurrent.layers import GRU, LSTM, RNN, RecurrentLayer

__all__ = ["copy_weights", "from_torch", "to_torch"]

_PAIRS: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    (RNN, nn.RNN),
    (LSTM, nn.LSTM),
    (GRU, nn.GRU),
    (RNNCell, nn.RNNCell),
    (LSTMCell, nn.LSTMCell),
    (GRUCell, nn.GRUCell),
)


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copy every parameter of ``src`` into ``dst`` (same names and shapes); returns ``dst``.

    Works in both directions between our modules and ``torch.nn`` ones (and between two of
    ours). Raises ``ValueError`` naming missing, unexpected or mis-shaped parameters.
    """
    theirs = dict(src.named_parameters())
    ours = dict(dst.named_parameters())
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        raise ValueError(
            f"cannot copy {type(src).__name__} -> {type(dst).__name__}: parameters missing in "
            f"the source {missing}, unexpected in the source {extra}; build both with the same "
            "num_layers, bidirectional and bias (LSTM proj_size is not supported)"
        )
    bad = [
        f"{k}: source {tuple(v.shape)} vs destination {tuple(ours[k].shape)}"
        for k, v in theirs.items()
        if v.shape != ours[k].shape
    ]
    if bad:
        raise ValueError("parameter shapes differ: " + "; ".join(bad))
    for k, v in theirs.items():
        ours[k].copy_(v)
    return dst


def _config(module: nn.Module) -> dict:
    """Constructor arguments shared by our classes and ``torch.nn``'s."""
    if isinstance(module, RecurrentLayer | nn.RNNBase):
        if getattr(module, "proj_size", 0):
            raise ValueError("LSTM with proj_size > 0 has no counterpart here")
        cfg = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "num_layers": module.num_layers,
            "bias": module.bias,
            "batch_first": module.batch_first,
            "dropout": float(module.dropout),
            "bidirectional": module.bidirectional,
        }
    else:
        cfg = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "bias": module.bias,
        }
    if isinstance(module, RNN | RNNCell | nn.RNN | nn.RNNCell):
        cfg["nonlinearity"] = module.nonlinearity
    return cfg


def _counterpart(module: nn.Module, to_torch_side: bool) -> type[nn.Module]:
    for ours, theirs in _PAIRS:
        # exact type match: nn.RNN is also the base of nothing we pair, but be strict anyway
        if type(module) is (ours if to_torch_side else theirs):
            return theirs if to_torch_side else ours
    names = ", ".join((o if to_torch_side else t).__name__ for o, t in _PAIRS)
    raise TypeError(f"no counterpart for {type(module).__name__}; expected one of: {names}")


def from_torch(module: nn.Module) -> nn.Module:
    """Build our RNN/LSTM/GRU (layer or cell) with the configuration and weights of a torch.nn one."""
    cls = _counterpart(module, to_torch_side=False)
    ref = next(module.parameters())
    ours = cls(**_config(module)).to(device=ref.device, dtype=ref.dtype)
    return copy_weights(module, ours)


def to_torch(module: nn.Module) -> nn.Module:
    """Build the ``torch.nn`` twin of one of our recurrent modules, with the same weights."""
    cls = _counterpart(module, to_torch_side=True)
    ref = next(module.parameters())
    theirs = cls(**_config(module)).to(device=ref.device, dtype=ref.dtype)
    return copy_weights(module, theirs)
