"""Download helper for the course's corpora: pinned URL, sha256 check, mirror folder, cache.

Where a file is looked for, in order:

1. ``$LLMCOURSE_DATA_MIRROR/<filename>`` (a local folder; CI points it at a read-only copy),
2. the cache, ``$LLMCOURSE_CACHE`` or ``~/.cache/llmcourse`` (``$XDG_CACHE_HOME`` respected),
3. the pinned public URL, downloaded with timeouts and retries into the cache.

Every file is verified against its pinned sha256 before it is returned. Without a network
(or with ``LLMCOURSE_OFFLINE=1``) and without a mirror, :class:`DataUnavailableError` explains
what to download, from where, and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataFile",
    "DATASETS",
    "DataUnavailableError",
    "DataIntegrityError",
    "cache_dir",
    "sha256_file",
    "fetch",
    "download",
    "temp_file_beside",
    "load_text",
]

MIRROR_ENV = "LLMCOURSE_DATA_MIRROR"
CACHE_ENV = "LLMCOURSE_CACHE"
OFFLINE_ENV = "LLMCOURSE_OFFLINE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """A file the course downloads: local file name, public URL and pinned sha256."""

    filename: str
    url: str
    sha256: str
    size: int | None = None
    description: str = ""


DATASETS: dict[str, DataFile] = {
    "tinyshakespeare": DataFile(
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        1115394,
        "Tiny Shakespeare: 40k lines of Shakespeare plays (public domain)",
    ),
    "gpt2_encoder": DataFile(
        "gpt2_encoder.json",
        "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        1042301,
        "GPT-2 byte-level BPE vocabulary (encoder.json, MIT licence)",
    ),
    "gpt2_vocab": DataFile(
        "gpt2_vocab.bpe",
        "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        456318,
        "GPT-2 BPE merges (vocab.bpe, MIT licence)",
    ),
}


class DataUnavailableError(RuntimeError):
    """The file is neither in the mirror nor in the cache, and it could not be downloaded."""


class DataIntegrityError(RuntimeError):
    """A file's sha256 differs from the pinned value (corrupt, truncated or a different file)."""


def cache_dir() -> Path:
    """The download cache folder (created on first use by :func:`fetch`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmcourse"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _spec(name: str) -> DataFile:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(f"unknown data file {name!r}; known names: {known}") from None


def _verified(path: Path, spec: DataFile, origin: str) -> Path:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise DataIntegrityError(
            f"{path} ({origin}) has sha256 {actual}, expected {spec.sha256} for {spec.filename}; "
            f"the file is corrupt, truncated or not the pinned version. Replace it with a fresh "
            f"copy of {spec.url}"
        )
    return path


def temp_file_beside(dest: str | Path, suffix: str = ".tmp") -> Path:
    """An empty, uniquely named hidden file next to ``dest`` for an atomic write + rename.

    Unlike a bare ``mkstemp`` file (mode 0600) it gets the usual permissions (0666 - umask),
    so the file keeps them after the rename.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def _download_once(url: str, dest: Path, sha256: str | None, timeout: float) -> None:
    """Stream ``url`` into a temp file next to ``dest``, verify it, then rename it."""
    request = urllib.request.Request(url, headers={"User-Agent": "llmcourse-data/1"})
    tmp = temp_file_beside(dest, ".part")
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, _CHUNK)
        if sha256 is not None and (actual := sha256_file(tmp)) != sha256:
            raise DataIntegrityError(
                f"the file downloaded from {url} has sha256 {actual}, expected {sha256}; it is "
                "truncated, altered or not the pinned version. Nothing was saved; try again later"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLError):
        return (
            f"{reason} (TLS certificate problem: update your CA certificates, e.g. "
            "`pip install --upgrade certifi`, or on macOS run 'Install Certificates.command')"
        )
    return f"{type(exc).__name__}: {reason}"


def fetch(name: str, *, retries: int = 3, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Return a local, sha256-verified path to the data file ``name`` (see :data:`DATASETS`).

    Args:
        name: registry key, e.g. ``"tinyshakespeare"``.
        retries: download attempts before giving up (HTTP 4xx errors are not retried).
        timeout: seconds each network operation may block.
        backoff: seconds before the second attempt; doubles after each failure.

    Raises:
        KeyError: unknown ``name``.
        DataIntegrityError: a mirror, cached or downloaded file has the wrong sha256.
        DataUnavailableError: offline (or ``LLMCOURSE_OFFLINE=1``) and no mirror/cached copy.
    """
    spec = _spec(name)
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidate = Path(mirror).expanduser() / spec.filename
        if candidate.is_file():
            return _verified(candidate, spec, f"from ${MIRROR_ENV}")
    cached = cache_dir() / spec.filename
    if cached.is_file():
        if sha256_file(cached) == spec.sha256:
            return cached
        cached.unlink()  # stale or partial: download again
    how_to_fix = (
        f"Download {spec.url} and save it as {cached} (sha256 {spec.sha256}), or put "
        f"{spec.filename} in a folder and set {MIRROR_ENV}=/path/to/that/folder."
    )
    if os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}:
        raise DataUnavailableError(
            f"{spec.filename} ({name!r}) is not available locally and {OFFLINE_ENV} forbids "
            f"downloading. {how_to_fix}"
        )
    try:
        return download(
            spec.url, cached, sha256=spec.sha256, retries=retries, timeout=timeout, backoff=backoff
        )
    except DataUnavailableError as err:
        raise DataUnavailableError(
            f"{spec.filename} ({name!r}): {err}. If you are offline or the URL is blocked: {how_to_fix}"
        ) from err.__cause__


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, with timeouts, retries and a sha256 check.

    HTTP 4xx answers are not retried. Raises :class:`DataIntegrityError` on a hash mismatch
    (nothing is written) and :class:`DataUnavailableError` when every attempt failed.
    """
    dest = Path(dest)
    last_error: BaseException | None = None
    attempts = 0
    for attempt in range(max(1, retries)):
        attempts += 1
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, dest, sha256, timeout)
            return dest
        except urllib.error.HTTPError as exc:
            last_error = exc
            if 400 <= exc.code < 500:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last_error = exc
    reason = _explain(last_error) if last_error else "unknown error"
    raise DataUnavailableError(
        f"could not download {url} after {attempts} attempt(s): {reason}"
    ) from last_error


def load_text(name: str) -> str:
    """The data file ``name`` decoded as UTF-8 text (e.g. ``load_text("tinyshakespeare")``)."""
    return fetch(name).read_text(encoding="utf-8")
