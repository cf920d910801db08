"""Pretrained checkpoints of the course: ``load_pretrained("gpt-shakespeare-char")``.

The course's trained models live in the repository's ``checkpoints/`` folder, listed in
``checkpoints/manifest.json`` (files, sizes, sha256, config, the command that trained them).
:func:`load_pretrained` reads them from there when running inside a clone; otherwise (e.g. in
Colab with only the package installed) it downloads them from the repository's raw-file URL,
which derives from ``repository.url`` and ``repository.branch`` in ``_config.yml`` (the one
place the course's repository is set), into the cache. Every file is checked against the
manifest's sha256 before it is loaded, and loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmcourse.data.download import DataUnavailableError, cache_dir, download, sha256_file
from llmcourse.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_checkpoint_tokenizer,
    read_checkpoint_meta,
)
from llmcourse.utils import resolve_device

__all__ = [
    "load_pretrained",
    "load_hf_gpt2",
    "pretrained_metadata",
    "load_from_directory",
    "build_model",
    "list_pretrained",
    "repo_checkpoints_dir",
    "repository_raw_base",
    "read_repository_config",
]

MANIFEST = "manifest.json"
HUB_URL_ENV = "LLMCOURSE_HUB_URL"
_REPO_ROOT = Path(__file__).resolve().parents[2]  # lib/llmcourse/hub.py -> repository root
DEFAULT_REPOSITORY = ("https://github.com/llmcourse/rnn-to-rlhf", "main")


def read_repository_config(config_file: str | Path | None = None) -> tuple[str, str]:
    """``(repository.url, repository.branch)`` from the book's ``_config.yml``.

    A deliberately tiny reader for these two keys (no YAML library needed); falls back to the
    course's default repository when the file is absent (an installed package, not a clone).
    """
    path = Path(config_file) if config_file else _REPO_ROOT / "_config.yml"
    url, branch = DEFAULT_REPOSITORY
    if not path.is_file():
        return url, branch
    in_repository = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():  # a top-level key
            in_repository = line.strip() == "repository:"
            continue
        if in_repository:
            m = re.match(r"\s+(url|branch)\s*:\s*(.*)$", line)
            if m:
                value = m.group(2).strip().strip("'\"")
                if m.group(1) == "url":
                    url = value
                else:
                    branch = value
    return url, branch


def repository_raw_base() -> str:
    """Base URL of the raw ``checkpoints/`` folder (``$LLMCOURSE_HUB_URL`` overrides it)."""
    if os.environ.get(HUB_URL_ENV):
        return os.environ[HUB_URL_ENV].rstrip("/") + "/"
    url, branch = read_repository_config()
    m = re.match(r"https?://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?$", url)
    if not m:
        raise ValueError(
            f"repository.url {url!r} in _config.yml is not a GitHub repository URL; set "
            f"{HUB_URL_ENV} to the URL of the folder holding manifest.json"
        )
    return f"https://raw.githubusercontent.com/{m.group(1)}/{m.group(2)}/{branch}/checkpoints/"


def repo_checkpoints_dir() -> Path | None:
    """The clone's ``checkpoints/`` folder when it has a manifest, else ``None``."""
    folder = _REPO_ROOT / "checkpoints"
    return folder if (folder / MANIFEST).is_file() else None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} must hold a JSON object of checkpoints")
    return manifest


def list_pretrained() -> list[str]:
    """Names of the checkpoints listed in the local manifest (empty outside a clone)."""
    folder = repo_checkpoints_dir()
    return sorted(_read_manifest(folder / MANIFEST)) if folder else []


def _build_gpt(model_config: dict[str, Any]) -> nn.Module:
    from llmcourse.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig.from_dict(model_config))


_BUILDERS = {"llmcourse.models.gpt.GPT": _build_gpt}


def build_model(model_class: str, model_config: dict[str, Any]) -> nn.Module:
    """Instantiate a model of the library from the class path and config stored in a checkpoint."""
    if model_class not in _BUILDERS:
        raise CheckpointError(
            f"no builder for model class {model_class!r}; known: {sorted(_BUILDERS)}"
        )
    return _BUILDERS[model_class](model_config)


def load_from_directory(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """``(model in eval mode, tokenizer)`` from a checkpoint directory."""
    meta = read_checkpoint_meta(directory)
    if meta.get("model_config") is None:
        raise CheckpointError(
            f"{directory}: the checkpoint records no model_config to build the model from"
        )
    model = build_model(meta["model_class"], meta["model_config"])
    load_checkpoint(directory, model)
    tokenizer = load_checkpoint_tokenizer(directory, meta)
    return model.to(resolve_device(device)).eval(), tokenizer


def _entry(manifest: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    if name not in manifest:
        raise KeyError(f"unknown pretrained checkpoint {name!r}; {where} lists: {sorted(manifest)}")
    return manifest[name]


def _check_local(folder: Path, entry: dict[str, Any], name: str) -> Path:
    directory = folder / entry.get("path", name)
    for fname, info in entry["files"].items():
        path = directory / fname
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {folder / MANIFEST})")
        if sha256_file(path) != info["sha256"]:
            raise CheckpointError(
                f"{path} does not match its sha256 in {folder / MANIFEST} (a Git LFS pointer, a "
                "partial checkout or a retrained model?); re-run the command in the manifest or "
                "update the manifest with `llmcourse publish`"
            )
    return directory


def _download_entry(name: str, timeout: float) -> Path:
    base = repository_raw_base()
    target = cache_dir() / "checkpoints"
    manifest_path = target / MANIFEST
    try:
        download(base + MANIFEST, manifest_path, retries=2, timeout=timeout)
    except DataUnavailableError as err:
        if not manifest_path.is_file():
            raise DataUnavailableError(
                f"pretrained checkpoint {name!r} is not in a local clone and the manifest could "
                f"not be downloaded: {err}. Clone the course repository (its checkpoints/ folder "
                f"is used directly) or set {HUB_URL_ENV} to a reachable copy"
            ) from err
    entry = _entry(_read_manifest(manifest_path), name, base + MANIFEST)
    directory = target / entry.get("path", name)
    for fname, info in entry["files"].items():
        dest = directory / fname
        if dest.is_file() and sha256_file(dest) == info["sha256"]:
            continue
        url = f"{base}{entry.get('path', name)}/{fname}"
        download(url, dest, sha256=info["sha256"], retries=3, timeout=timeout)
    return directory


def load_pretrained(
    name: str, *, device: str | torch.device = "cpu", timeout: float = 60.0
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of the course checkpoint ``name`` (e.g. ``"gpt-shakespeare-char"``).

    Uses the clone's ``checkpoints/`` folder when present, otherwise downloads the files from
    the repository (verified by sha256) into the cache. The model is in eval mode on ``device``.
    """
    return load_from_directory(_locate(name, timeout), device)


def pretrained_metadata(name: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """The metadata of the course checkpoint ``name``: step, config, training command, losses.

    Found (and verified) exactly as :func:`load_pretrained` finds the weights.
    """
    return read_checkpoint_meta(_locate(name, timeout))


def _locate(name: str, timeout: float) -> Path:
    """The verified local directory of checkpoint ``name`` (the clone's, else downloaded)."""
    folder = repo_checkpoints_dir()
    if folder is not None:  # a clone: its manifest is authoritative (git pull for newer ones)
        manifest = _read_manifest(folder / MANIFEST)
        return _check_local(folder, _entry(manifest, name, str(folder / MANIFEST)), name)
    return _download_entry(name, timeout)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def load_hf_gpt2(
    name: str = "gpt2", *, timeout: float = 3.0
) -> tuple[nn.Module | None, str | None]:
    """Real GPT-2 weights from Hugging Face, for the chapters' optional "same on GPT-2" cells.

    Returns ``(GPT2LMHeadModel, None)`` from the local Hugging Face cache, else from the Hub
    (``name`` is a Hub id such as ``"gpt2"``, about 500 MB); or ``(None, reason)`` when
    ``transformers`` is missing, ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, the Hub
    cannot be reached within ``timeout`` seconds, or the download fails. It never raises for
    these, so a notebook cell can print the reason and move on offline. Convert with
    :meth:`llmcourse.models.gpt.GPT.from_hf_gpt2`.
    """
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None, "transformers is not installed (pip install transformers)"
    try:
        return GPT2LMHeadModel.from_pretrained(name, local_files_only=True), None
    except (OSError, ValueError):
        pass
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return None, f"HF_HUB_OFFLINE is set and {name} is not in the local Hugging Face cache"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as err:
        return None, f"huggingface.co is not reachable ({err})"
    try:
        return GPT2LMHeadModel.from_pretrained(name), None
    except (OSError, ValueError) as err:
        return None, f"downloading {name} failed ({err})"
