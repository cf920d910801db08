"""llmcourse.data: verified fetch (mirror, cache, download, offline) and token batches."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcourse.data import (
    DATASETS,
    DataIntegrityError,
    DataUnavailableError,
    RandomBatches,
    fetch,
    get_batch,
    load_text,
    load_tokens,
    prepare_tokens,
    token_dtype,
    write_tokens,
)

MIRROR = Path(os.environ.get("LLMCOURSE_DATA_MIRROR", "/work/shared/data"))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No mirror, an empty cache in tmp_path."""
    monkeypatch.delenv("LLMCOURSE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("LLMCOURSE_OFFLINE", raising=False)
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path


class _Server:
    """A local HTTP server whose responses the test scripts (status codes, then the body)."""

    def __init__(self, body: bytes, failures: list[int]):
        self.body, self.failures, self.requests = body, list(failures), 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests += 1
                if server.failures:
                    self.send_error(server.failures.pop(0))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/input.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _point_at(monkeypatch, url: str) -> None:
    spec = dataclasses.replace(DATASETS["tinyshakespeare"], url=url)
    monkeypatch.setitem(DATASETS, "tinyshakespeare", spec)


def test_mirror_is_read_first_and_verified(monkeypatch):
    monkeypatch.setenv("LLMCOURSE_DATA_MIRROR", str(MIRROR))
    path = fetch("tinyshakespeare")
    assert path == MIRROR / "tinyshakespeare.txt"
    text = load_text("tinyshakespeare")
    assert len(text) == 1115394 and text.startswith("First Citizen:")
    assert fetch("gpt2_vocab").read_text().startswith("#version: 0.2")


def test_corrupt_mirror_file_is_rejected(isolated, monkeypatch):
    mirror = isolated / "mirror"
    mirror.mkdir()
    (mirror / "tinyshakespeare.txt").write_text("not shakespeare")
    monkeypatch.setenv("LLMCOURSE_DATA_MIRROR", str(mirror))
    with pytest.raises(DataIntegrityError, match="tinyshakespeare.txt.*expected 86c4e6aa"):
        fetch("tinyshakespeare")


def test_offline_flag_gives_clear_error(isolated, monkeypatch):
    monkeypatch.setenv("LLMCOURSE_OFFLINE", "1")
    with pytest.raises(DataUnavailableError) as err:
        fetch("tinyshakespeare")
    msg = str(err.value)
    for needle in (
        "tinyshakespeare.txt",
        DATASETS["tinyshakespeare"].url,
        "LLMCOURSE_DATA_MIRROR",
        str(isolated / "cache"),
    ):
        assert needle in msg


def test_network_failure_retries_then_explains(isolated, monkeypatch):
    calls = []

    def no_network(*args, **kwargs):
        calls.append(1)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(
        DataUnavailableError,
        match="after 3 attempt.*name resolution.*offline.*LLMCOURSE_DATA_MIRROR",
    ):
        fetch("tinyshakespeare", retries=3, backoff=0.0)
    assert len(calls) == 3


def test_download_retries_verifies_and_caches(isolated, monkeypatch):
    body = (MIRROR / "tinyshakespeare.txt").read_bytes()
    server = _Server(body, failures=[503, 500])
    _point_at(monkeypatch, server.url)
    try:
        path = fetch("tinyshakespeare", retries=3, backoff=0.0)
    finally:
        server.close()
    assert server.requests == 3
    assert path == isolated / "cache" / "tinyshakespeare.txt"
    assert path.read_bytes() == body
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]
    # The server is gone: the second call is served from the cache.
    assert fetch("tinyshakespeare", retries=1) == path


def test_http_404_is_not_retried(isolated, monkeypatch):
    server = _Server(b"", failures=[404, 404, 404])
    _point_at(monkeypatch, server.url)
    try:
        with pytest.raises(DataUnavailableError, match="after 1 attempt.*HTTP 404"):
            fetch("tinyshakespeare", retries=3, backoff=0.0)
    finally:
        server.close()
    assert server.requests == 1


def test_wrong_download_is_rejected_and_not_cached(isolated, monkeypatch):
    server = _Server(b"tampered content", failures=[])
    _point_at(monkeypatch, server.url)
    try:
        with pytest.raises(DataIntegrityError, match="sha256"):
            fetch("tinyshakespeare", retries=1)
    finally:
        server.close()
    cache = isolated / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupt_cache_is_replaced(isolated, monkeypatch):
    cache = isolated / "cache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_text("truncated")
    body = (MIRROR / "tinyshakespeare.txt").read_bytes()
    server = _Server(body, failures=[])
    _point_at(monkeypatch, server.url)
    try:
        assert fetch("tinyshakespeare", retries=1).read_bytes() == body
    finally:
        server.close()


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError, match="known names: gpt2_encoder, gpt2_vocab, tinyshakespeare"):
        fetch("tiny_shakespeare")


# ----------------------------------------------------------------- token files and batches


def test_token_dtype():
    assert token_dtype(65) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


@pytest.mark.parametrize("vocab", [100, 70_000])
def test_write_and_memmap_round_trip(tmp_path, vocab):
    ids = np.random.default_rng(0).integers(0, vocab, size=1000)
    path = write_tokens(ids, tmp_path / "t.bin", vocab_size=vocab, note="x")
    arr = load_tokens(path)
    assert isinstance(arr, np.memmap) and arr.dtype == token_dtype(vocab)
    np.testing.assert_array_equal(arr, ids)
    assert path.stat().st_size == 1000 * arr.dtype.itemsize
    assert json.loads((tmp_path / "t.bin.json").read_text())["note"] == "x"


def test_bad_token_files(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 10\).*max 10"):
        write_tokens([1, 10], tmp_path / "a.bin", vocab_size=10)
    path = write_tokens(list(range(10)), tmp_path / "b.bin", vocab_size=10)
    with open(path, "r+b") as f:
        f.truncate(15)
    with pytest.raises(ValueError, match="15 bytes.*exactly 20.*truncated"):
        load_tokens(path)
    (tmp_path / "raw.bin").write_bytes(b"\x00" * 8)
    with pytest.raises(ValueError, match="pass dtype"):
        load_tokens(tmp_path / "raw.bin")
    assert load_tokens(tmp_path / "raw.bin", dtype="uint16").shape == (4,)
    with pytest.raises(FileNotFoundError, match="prepare_tokens"):
        load_tokens(tmp_path / "missing.bin")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_get_batch_windows_are_shifted_by_one(as_tensor):
    tokens = np.arange(500, dtype=np.uint16)
    source = torch.from_numpy(tokens.astype(np.int64)) if as_tensor else tokens
    x, y = get_batch(
        source, block_size=16, batch_size=8, generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.long))


def test_get_batch_is_reproducible_and_matches_nanogpt_sampling():
    tokens = np.random.default_rng(1).integers(0, 65, 2000).astype(np.uint16)
    x1, _ = get_batch(tokens, 64, 12, torch.Generator().manual_seed(3))
    x2, _ = get_batch(tokens, 64, 12, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2)
    ix = torch.randint(len(tokens) - 64, (12,), generator=torch.Generator().manual_seed(3))
    ref = torch.stack([torch.from_numpy(tokens[i : i + 64].astype(np.int64)) for i in ix])
    assert torch.equal(x1, ref)


def test_get_batch_bad_input():
    with pytest.raises(ValueError, match="10 tokens but a window needs block_size \\+ 1 = 17"):
        get_batch(np.arange(10), 16, 2)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 40)), 8, 2)


def test_random_batches_resume_from_state():
    tokens = np.arange(1000, dtype=np.uint16)
    a = RandomBatches(tokens, 8, 4, seed=5)
    a()
    state = a.state_dict()
    expected = [a()[0] for _ in range(3)]
    b = RandomBatches(tokens, 8, 4, seed=123)
    b.load_state_dict(state)
    assert all(torch.equal(e, b()[0]) for e in expected)


class _Chars:
    """Minimal tokenizer (encode + save) so this file does not depend on llmcourse.tokenizers."""

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars)

    def encode(self, text: str) -> list[int]:
        return [self.chars.index(c) for c in text]

    def save(self, path):
        Path(path).write_text(json.dumps(self.chars))


def test_prepare_tokens_once(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcab" * 100)
    tok = _Chars("abc")
    splits = prepare_tokens(corpus, tok, tmp_path / "out", val_fraction=0.2)
    train, val = load_tokens(splits.train), load_tokens(splits.val)
    assert len(train) == 400 and len(val) == 100 and splits.vocab_size == 3
    np.testing.assert_array_equal(train[:5], [0, 1, 2, 0, 1])
    stamp = splits.train.stat().st_mtime_ns
    prepare_tokens(corpus, tok, tmp_path / "out", val_fraction=0.2)
    assert splits.train.stat().st_mtime_ns == stamp, "re-tokenised although nothing changed"
    prepare_tokens(corpus, _Chars("cba"), tmp_path / "out", val_fraction=0.2)
    assert load_tokens(splits.train)[0] == 2, "a different tokenizer must re-tokenise"


def test_prepare_tokens_from_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOURSE_DATA_MIRROR", str(MIRROR))
    text = (MIRROR / "tinyshakespeare.txt").read_text()
    tok = _Chars("".join(sorted(set(text))))
    splits = prepare_tokens("tinyshakespeare", tok, tmp_path)
    assert len(load_tokens(splits.train)) + len(load_tokens(splits.val)) == len(text)
    assert tok.vocab_size == 65
    shutil.rmtree(tmp_path)
