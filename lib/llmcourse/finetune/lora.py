"""LoRA: low-rank adapters on frozen Linear layers (Hu et al., 2021).

A frozen weight ``W`` (out, in) is adapted as ``W' = W + (alpha / r) * B @ A`` with
``A`` (r, in) and ``B`` (out, r). ``A`` starts like a Linear weight (Kaiming-uniform) and
``B`` at zero, so the adapted model starts *exactly* equal to the base model and only the
``r * (in + out)`` adapter numbers are trained: 65,536 for a 4096 x 4096 matrix at r = 8.
The ``alpha / r`` scaling keeps the update size comparable when ``r`` changes.

Typical use::

    names = apply_lora(model, ["c_attn", "c_proj"], r=8, alpha=16)   # freezes the rest
    ...train...
    save_adapter(model, "adapter/")        # only the LoRA tensors (+ a JSON config)
    load_adapter(fresh_model, "adapter/")  # wraps the same modules and loads them
    merge_lora(model)                       # fold B @ A into W for inference
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llmcourse.finetune.quantization import Linear4bit, Linear8bit
from llmcourse.finetune.targets import LINEAR_TYPES, Pattern, find_modules, set_module

__all__ = [
    "LoRALinear",
    "apply_lora",
    "mark_only_lora_trainable",
    "lora_modules",
    "merge_lora",
    "unmerge_lora",
    "unload_lora",
    "ParamCount",
    "count_trainable",
    "lora_param_count",
    "save_adapter",
    "load_adapter",
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_FORMAT = "llmcourse-lora"
_FORMAT_VERSION = 1

# Base layers LoRA can wrap: anything with a weight of shape (out, in) used as x @ W^T.
_WRAPPABLE = (*LINEAR_TYPES, Linear4bit, Linear8bit)


def _reference_tensor(module: nn.Module) -> Tensor:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to take a device from")


class LoRALinear(nn.Module):
    """A frozen base Linear plus a trainable low-rank update.

    ``forward(x) = base(x) + (alpha / r) * dropout(x) @ A^T @ B^T``; x: (..., in) -> (..., out).

    ``base`` may be an ``nn.Linear``, an ``llmcourse.nn.Linear``, or a quantized
    :class:`Linear4bit` / :class:`Linear8bit` (which makes it QLoRA); its parameters are
    frozen here. ``merge()`` adds the update into ``base.weight`` (full-precision bases only)
    so inference costs nothing extra; ``unmerge()`` subtracts it again (equal up to float
    rounding, about 1e-7 relative in float32).
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, _WRAPPABLE):
            allowed = ", ".join(t.__name__ for t in _WRAPPABLE)
            raise TypeError(f"LoRALinear wraps one of ({allowed}), got {type(base).__name__}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRA rank r must be an int >= 1, got {r!r}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.dropout_p = float(dropout)
        ref = _reference_tensor(base)
        # Quantized bases compute in their compute_dtype; the adapters use the same dtype.
        dtype = getattr(base, "compute_dtype", None) or base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=ref.device, dtype=dtype))
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, r, device=ref.device, dtype=dtype)
        )
        # Same init as nn.Linear's weight: U(-1/sqrt(in), 1/sqrt(in)).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> Tensor:
        """The update ``(alpha / r) * B @ A``: (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @property
    def weight(self) -> Tensor:
        """The effective weight ``W + (alpha / r) B A`` (out, in); differentiable in A and B.

        For code that uses ``layer.weight`` instead of calling the layer (the course GPT's
        untied output layer does).
        """
        base = self.base.weight
        if self.merged:
            return base
        return base + self.delta_weight().to(base.dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        h = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()  # (..., r)
        return y + (h @ self.lora_B.t() * self.scaling).to(y.dtype)

    def _check_mergeable(self) -> nn.Module:
        if not isinstance(self.base, LINEAR_TYPES):
            raise TypeError(
                f"cannot merge LoRA into a {type(self.base).__name__}: folding the update into "
                "quantized weights would re-quantize them (lossy). Keep the adapter separate, "
                "or dequantize the base into a Linear first."
            )
        return self.base

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight``; forward then skips the LoRA path."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge(): already merged")
        base = self._check_mergeable()
        base.weight += self.delta_weight().to(base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from ``base.weight`` again (undo :meth:`merge`)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge(): not merged")
        base = self._check_mergeable()
        base.weight -= self.delta_weight().to(base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, dropout={self.dropout_p:g}, merged={self.merged}"
        )


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """All :class:`LoRALinear` sub-modules of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _inside_lora(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), LoRALinear):
            return True
    return False


def apply_lora(
    model: nn.Module,
    target_patterns: Pattern | Iterable[Pattern],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    *,
    freeze_base: bool = True,
) -> list[str]:
    """Wrap every Linear whose name matches ``target_patterns`` in a :class:`LoRALinear`.

    Patterns: a plain name matches a module or its suffix (``"c_attn"``), a glob the whole
    dotted name (``"blocks.*.attn.*"``), a compiled regex must ``fullmatch`` it (details in
    :mod:`llmcourse.finetune.targets`). Modules already inside a LoRA layer are skipped.
    The wrapped layers' own weights are always frozen; with ``freeze_base`` (default) every
    other non-LoRA parameter (embeddings, norms, other layers) is frozen as well.
    Returns the names of the wrapped modules.
    """
    matched = find_modules(model, target_patterns, (LoRALinear, *_WRAPPABLE))
    names = [
        n
        for n in matched
        if not isinstance(model.get_submodule(n), LoRALinear) and not _inside_lora(model, n)
    ]
    if not names:
        raise ValueError("apply_lora: every matching module already carries a LoRA adapter")
    for name in names:
        set_module(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    if freeze_base:
        mark_only_lora_trainable(model)
    return names


def _is_lora_param(name: str) -> bool:
    return name.endswith(".lora_A") or name.endswith(".lora_B") or name in ("lora_A", "lora_B")


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Set ``requires_grad`` True on LoRA A/B parameters and False on all others.

    Returns the number of trainable parameters. Raises if the model has no LoRA layers.
    """
    if not lora_modules(model):
        raise ValueError("model has no LoRA layers; call apply_lora first")
    for name, p in model.named_parameters():
        p.requires_grad_(_is_lora_param(name))
    return count_trainable(model).trainable


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every (unmerged) LoRA layer into its base weight; returns their names."""
    names = [n for n, m in lora_modules(model).items() if not m.merged]
    for n in names:
        model.get_submodule(n).merge()
    return names


def unmerge_lora(model: nn.Module) -> list[str]:
    """Undo :func:`merge_lora` on every merged LoRA layer; returns their names."""
    names = [n for n, m in lora_modules(model).items() if m.merged]
    for n in names:
        model.get_submodule(n).unmerge()
    return names


def unload_lora(model: nn.Module) -> list[str]:
    """Merge every LoRA layer and put the plain base Linear back in its place."""
    names = list(lora_modules(model))
    for n in names:
        layer = model.get_submodule(n)
        if not layer.merged:
            layer.merge()
        set_module(model, n, layer.base)
    return names


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameter counts (shared/tied tensors counted once)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """Share of parameters that are trainable (0 for an empty model)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({100 * self.fraction:.3f}%)"


def count_trainable(model: nn.Module) -> ParamCount:
    """Count parameters with ``requires_grad`` and all parameters of ``model``."""
    params = list(model.parameters())  # deduplicates tied parameters
    return ParamCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def lora_param_count(in_features: int, out_features: int, r: int) -> int:
    """Adapter size of one matrix: ``r * (in + out)``; 65,536 for 4096 x 4096 at r = 8."""
    return r * (in_features + out_features)


# --------------------------------------------------------------------------- save / load


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Save only the LoRA weights of ``model`` into the folder ``path``.

    Writes ``adapter_model.safetensors`` (tensors ``<module>.lora_A`` / ``<module>.lora_B``)
    and ``adapter_config.json`` (rank, alpha, dropout and shape of every adapted module).
    Returns the folder. The base weights are not saved: a few hundred KB instead of the model.
    """
    layers = lora_modules(model)
    if not layers:
        raise ValueError("save_adapter: model has no LoRA layers; call apply_lora first")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    modules: dict[str, dict[str, float | int]] = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
        modules[name] = {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "r": layer.r,
            "alpha": layer.alpha,
            "dropout": layer.dropout_p,
        }
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": _FORMAT})
    config = {"format": _FORMAT, "version": _FORMAT_VERSION, "modules": modules}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _read_adapter(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"adapter file {p} not found; save it with save_adapter()")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != _FORMAT or config.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: not an llmcourse LoRA adapter (format={config.get('format')!r}, "
            f"version={config.get('version')!r}; expected {_FORMAT!r} version {_FORMAT_VERSION})"
        )
    return config, load_file(str(w_path))


def load_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Load an adapter saved by :func:`save_adapter` into ``model``; returns module names.

    Modules that are still plain (or quantized) Linear layers are wrapped with the saved
    rank/alpha/dropout; modules that already carry LoRA must have the same rank. Everything
    is checked before any weight changes: a module the model lacks, a different layer shape
    or rank, or a tensor missing from the file raises ``ValueError`` naming the module, both
    shapes and the file. Afterwards only LoRA parameters are trainable.
    """
    folder = Path(path)
    config, tensors = _read_adapter(folder)
    modules: dict[str, dict] = config["modules"]
    known = dict(model.named_modules())
    where = f"adapter {folder}"
    for name, spec in modules.items():
        if name not in known:
            raise ValueError(
                f"{where} targets module {name!r}, which this model does not have; "
                "was the adapter saved from a different architecture?"
            )
        module = known[name]
        if not isinstance(module, (LoRALinear, *_WRAPPABLE)):
            raise ValueError(f"{where}: module {name!r} is a {type(module).__name__}, not a Linear")
        expected = (spec["out_features"], spec["in_features"])
        actual = (module.out_features, module.in_features)
        if expected != actual:
            raise ValueError(
                f"{where}: module {name!r} has shape (out, in) = {actual} but the adapter "
                f"was trained for {expected}; it does not fit this model"
            )
        if isinstance(module, LoRALinear):
            if module.r != spec["r"]:
                raise ValueError(
                    f"{where}: module {name!r} already has LoRA rank {module.r}, adapter has "
                    f"rank {spec['r']}; load into a model without LoRA layers instead"
                )
            if module.merged:
                raise ValueError(f"{where}: module {name!r} is merged; call unmerge_lora first")
        for part, shape in (
            ("lora_A", (spec["r"], spec["in_features"])),
            ("lora_B", (spec["out_features"], spec["r"])),
        ):
            key = f"{name}.{part}"
            if key not in tensors:
                raise ValueError(f"{where}: tensor {key!r} missing from {ADAPTER_WEIGHTS}")
            if tuple(tensors[key].shape) != shape:
                raise ValueError(
                    f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                    f"expected {shape} from {ADAPTER_CONFIG}"
                )
    extra = set(tensors) - {f"{n}.{p}" for n in modules for p in ("lora_A", "lora_B")}
    if extra:
        raise ValueError(
            f"{where}: unexpected tensors not listed in {ADAPTER_CONFIG}: {sorted(extra)}"
        )

    for name, spec in modules.items():
        module = model.get_submodule(name)
        if not isinstance(module, LoRALinear):
            module = LoRALinear(module, spec["r"], spec["alpha"], spec["dropout"])
            set_module(model, name, module)
        module.alpha = float(spec["alpha"])
        module.scaling = module.alpha / module.r
        with torch.no_grad():
            module.lora_A.copy_(tensors[f"{name}.lora_A"])
            module.lora_B.copy_(tensors[f"{name}.lora_B"])
    mark_only_lora_trainable(model)
    return list(modules)
