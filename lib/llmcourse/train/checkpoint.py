"""Checkpoints in safetensors + JSON: model, optimizer, step, RNG states, config, tokenizer.

A checkpoint is a directory::

    model.safetensors   the model's weights (unwrapped: no ``module.`` / ``_orig_mod.``)
    state.safetensors   optimizer tensors and each rank's RNG / sampler tensors (for resuming)
    tokenizer.json      optional, the tokenizer's own ``save`` format
    checkpoint.json     step, configs, metrics, the non-tensor state, and the size and sha256
                        of every other file

Every file is written to a temporary name and renamed into place, ``checkpoint.json`` last, so
a crash never leaves a half-written file under a real name, and a checkpoint whose files do not
match its ``checkpoint.json`` is detected. Loading verifies sizes, hashes, tensor names, shapes
and the optimizer layout *before* touching the model, so a bad checkpoint raises
:class:`CheckpointError` and changes nothing. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llmcourse.data.download import temp_file_beside
from llmcourse.train.state import capture_rng_state, pack, restore_rng_state, unpack

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "load_model_weights",
    "load_checkpoint_tokenizer",
    "unwrap_model",
    "model_config_dict",
    "MODEL_FILE",
    "STATE_FILE",
    "META_FILE",
    "TOKENIZER_FILE",
]

FORMAT = "llmcourse-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the model / optimizer."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read (the model and optimizer are updated in place)."""

    directory: Path
    step: int
    config: dict[str, Any]
    model_config: dict[str, Any] | None
    metrics: dict[str, Any]
    extra: dict[str, Any]
    rank_states: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``module``)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """``model.config`` as a plain dict (``to_dict()``, a dataclass or a dict), else ``None``."""
    cfg = getattr(unwrap_model(model), "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg) if isinstance(cfg, Mapping) else None


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------ writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def _dedup_shared(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop tensors that are views of an earlier one (tied weights); return them as aliases."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        ident = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            t.shape,
            t.stride(),
            t.dtype,
        )
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    config: Mapping[str, Any] | None = None,
    tokenizer: Any | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rank_states: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring) and return its path.

    Args:
        directory: target folder (created if needed; an older checkpoint there is replaced).
        model: the model; wrappers (DDP, ``torch.compile``) are removed before saving.
        optimizer: saved when given (its full ``state_dict``).
        step: number of completed optimisation steps.
        config: the run's configuration (JSON-serialisable), stored verbatim.
        tokenizer: any object with ``save(path)`` and a ``load(path)`` classmethod.
        metrics: e.g. ``{"train_loss": 1.2, "val_loss": 1.4}``.
        extra: more JSON-serialisable data (the Trainer stores its history here).
        rank_states: per-rank state (RNG, samplers; tensors allowed), index = rank. Default:
            one entry holding this process's RNG states.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory; choose another path")
    directory.mkdir(parents=True, exist_ok=True)
    if rank_states is None:
        rank_states = [{"rng": capture_rng_state()}]
    raw = unwrap_model(model)
    weights, aliases = _dedup_shared(raw.state_dict())
    model_config = model_config_dict(raw)

    state_tensors: dict[str, Tensor] = {}
    optim_meta = None
    if optimizer is not None:
        optim_meta = {
            "class": type(optimizer).__name__,
            "state": pack(optimizer.state_dict(), "optimizer", state_tensors),
        }
    ranks = [pack(dict(s), f"rank{r}", state_tensors) for r, s in enumerate(rank_states)]

    temps: dict[str, Path] = {}
    try:
        temps[MODEL_FILE] = temp_file_beside(directory / MODEL_FILE)
        header = {"format": FORMAT, "model_config": json.dumps(model_config)}
        save_file(weights, str(temps[MODEL_FILE]), metadata=header)
        temps[STATE_FILE] = temp_file_beside(directory / STATE_FILE)
        save_file(state_tensors, str(temps[STATE_FILE]), metadata={"format": FORMAT})
        tokenizer_meta = None
        if tokenizer is not None:
            temps[TOKENIZER_FILE] = temp_file_beside(directory / TOKENIZER_FILE)
            tokenizer.save(temps[TOKENIZER_FILE])
            tokenizer_meta = {"class": _class_path(tokenizer), "file": TOKENIZER_FILE}
        files = {}
        for name, tmp in temps.items():
            _fsync(tmp)
            files[name] = {"bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "model_class": _class_path(raw),
            "model_config": model_config,
            "aliases": aliases,
            "config": dict(config or {}),
            "metrics": dict(metrics or {}),
            "extra": dict(extra or {}),
            "tokenizer": tokenizer_meta,
            "optimizer": optim_meta,
            "ranks": ranks,
            "files": files,
        }
        text = json.dumps(meta, indent=2, allow_nan=True)
        temps[META_FILE] = temp_file_beside(directory / META_FILE)
        temps[META_FILE].write_text(text, encoding="utf-8")
        _fsync(temps[META_FILE])
        for name in (*files, META_FILE):  # the JSON, which commits the checkpoint, goes last
            os.replace(temps.pop(name), directory / name)
        _fsync(directory)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    if tokenizer is None:
        (directory / TOKENIZER_FILE).unlink(missing_ok=True)
    return directory


# ------------------------------------------------------------------------------ reading


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``checkpoint.json`` of a checkpoint directory."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        hint = " (pass the checkpoint's directory, not a file in it)" if directory.is_file() else ""
        raise CheckpointError(f"checkpoint directory {directory} does not exist{hint}")
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory} is not a checkpoint: {META_FILE} is missing (was saving interrupted?)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path} is corrupt or truncated: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an llmcourse checkpoint (format != {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{meta_path} has checkpoint version {meta.get('version')}, this library reads {VERSION}"
        )
    return meta


def _verified_file(directory: Path, meta: dict[str, Any], name: str) -> Path:
    info = meta["files"].get(name)
    path = directory / name
    if info is None:
        raise CheckpointError(f"checkpoint {directory} has no {name}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (listed in {META_FILE})")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise CheckpointError(
            f"{path} is {size} bytes but {META_FILE} records {info['bytes']}: the file is "
            "truncated or was replaced; restore it or use another checkpoint"
        )
    if _sha256(path) != info["sha256"]:
        raise CheckpointError(
            f"{path} is corrupt: its sha256 differs from the one recorded in {META_FILE}"
        )
    return path


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None


def load_model_weights(
    directory: str | Path, meta: dict[str, Any] | None = None
) -> dict[str, Tensor]:
    """The verified model state dict of a checkpoint (tied weights restored)."""
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    weights = _read_tensors(_verified_file(directory, meta, MODEL_FILE))
    for alias, target in meta.get("aliases", {}).items():
        weights[alias] = weights[target]
    return weights


def _config_diff(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> str:
    if not saved or not current:
        return ""
    keys = sorted(set(saved) | set(current))
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, model {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return ("; configs differ in " + ", ".join(diffs)) if diffs else ""


def _check_weights(
    model: nn.Module, weights: dict[str, Tensor], meta: dict[str, Any], directory: Path
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in weights and weights[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(
                "shape mismatch for " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else "")
            )
        if missing:
            parts.append(
                f"missing from the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        if unexpected:
            parts.append(
                f"not in the model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        diff = _config_diff(meta.get("model_config"), model_config_dict(model))
        raise CheckpointError(
            f"checkpoint {directory} ({meta.get('model_class')}) does not fit this model "
            f"({_class_path(model)}): "
            + ". ".join(parts)
            + diff
            + ". Build the model with the checkpoint's model_config."
        )
    for k, t in weights.items():
        if not t.is_floating_point() and expected[k].is_floating_point():
            raise CheckpointError(
                f"{directory}: {k} is {t.dtype} in the checkpoint, model expects {expected[k].dtype}"
            )


def _check_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], cls: str, where: Path
) -> None:
    if cls != type(optimizer).__name__:
        raise CheckpointError(
            f"{where} holds {cls} state; cannot load it into {type(optimizer).__name__}"
        )
    groups, saved_groups = optimizer.param_groups, saved.get("param_groups", [])
    sizes = [len(g["params"]) for g in groups]
    saved_sizes = [len(g["params"]) for g in saved_groups]
    if sizes != saved_sizes:
        raise CheckpointError(
            f"{where}: the optimizer has parameter groups of sizes {sizes}, the checkpoint {saved_sizes}"
        )
    params = {
        i: p
        for g, sg in zip(groups, saved_groups, strict=True)
        for i, p in zip(sg["params"], g["params"], strict=True)
    }
    for idx, pstate in saved.get("state", {}).items():
        if idx not in params:
            raise CheckpointError(f"{where}: optimizer state for unknown parameter index {idx}")
        for key, value in pstate.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != params[idx].shape:
                raise CheckpointError(
                    f"{where}: optimizer state {key!r} of parameter {idx} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(params[idx].shape)}"
                )


def load_checkpoint(
    directory: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = False,
    rank: int = 0,
) -> Checkpoint:
    """Verify a checkpoint, then load it into ``model`` / ``optimizer`` (in place).

    Args:
        directory: a directory written by :func:`save_checkpoint`.
        model: receives the weights (wrappers are removed first); ``None`` skips them.
        optimizer: receives the optimizer state; the checkpoint must hold one of the same class
            and parameter layout.
        restore_rng: also restore the global RNGs saved for ``rank``.
        rank: which rank's state to restore with ``restore_rng``.

    Raises:
        CheckpointError: missing, truncated or corrupt files, or a checkpoint of another
            configuration. In every such case nothing has been modified.
    """
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    weights = None
    target = unwrap_model(model) if model is not None else None
    if target is not None:
        weights = load_model_weights(directory, meta)
        _check_weights(target, weights, meta, directory)
    saved_optim = None
    rank_states: list[dict[str, Any]] = []
    if optimizer is not None or restore_rng:
        if STATE_FILE not in meta["files"]:
            raise CheckpointError(f"{directory} has no {STATE_FILE}; it holds weights only")
        tensors = _read_tensors(_verified_file(directory, meta, STATE_FILE))
        try:
            rank_states = [unpack(s, tensors) for s in meta.get("ranks", [])]
            if optimizer is not None:
                if meta.get("optimizer") is None:
                    raise CheckpointError(f"{directory} holds no optimizer state")
                saved_optim = unpack(meta["optimizer"]["state"], tensors)
                _check_optimizer(optimizer, saved_optim, meta["optimizer"]["class"], directory)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{directory} is inconsistent: {err}") from None
    if restore_rng and not 0 <= rank < len(rank_states):
        raise CheckpointError(
            f"{directory} holds RNG states for {len(rank_states)} rank(s), not for rank {rank}"
        )

    # Everything is verified: apply.
    if target is not None and weights is not None:
        target.load_state_dict(weights, strict=True)
    if optimizer is not None and saved_optim is not None:
        optimizer.load_state_dict(saved_optim)
    if restore_rng:
        restore_rng_state(rank_states[rank]["rng"])
    return Checkpoint(
        directory=directory,
        step=int(meta["step"]),
        config=meta.get("config", {}),
        model_config=meta.get("model_config"),
        metrics=meta.get("metrics", {}),
        extra=meta.get("extra", {}),
        rank_states=rank_states,
        meta=meta,
    )


def load_checkpoint_tokenizer(
    directory: str | Path, meta: dict[str, Any] | None = None
) -> Any | None:
    """The tokenizer saved with a checkpoint (only classes of ``llmcourse`` are loaded)."""
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    info = meta.get("tokenizer")
    if not info:
        return None
    module_name, _, cls_name = info["class"].rpartition(".")
    if not module_name.startswith("llmcourse."):
        raise CheckpointError(
            f"{directory}: refusing to import tokenizer class {info['class']!r} (not part of llmcourse)"
        )
    loader: Callable[[Path], Any] = getattr(importlib.import_module(module_name), cls_name).load
    return loader(_verified_file(directory, meta, info["file"]))
