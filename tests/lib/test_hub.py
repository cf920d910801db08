"""llmcourse.hub: repository URL from _config.yml, local checkpoints, verified downloads."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from llmcourse import hub
from llmcourse.cli import main as cli
from llmcourse.data import DataIntegrityError
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.tokenizers import CharTokenizer
from llmcourse.train import CheckpointError, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A fake clone: tmp/checkpoints/tiny (+ manifest), hub pointed at it, an empty cache."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(
        tmp_path / "checkpoints" / "tiny", model, tokenizer=CharTokenizer.ascii(), step=7
    )
    assert cli(["publish", "--checkpoint", str(tmp_path / "checkpoints" / "tiny")]) == 0
    monkeypatch.setattr(hub, "_REPO_ROOT", tmp_path)
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMCOURSE_HUB_URL", raising=False)
    return tmp_path, model


def test_repository_config_is_read_from_config_yml(tmp_path):
    url, branch = hub.read_repository_config(ROOT / "_config.yml")
    assert url.startswith("https://github.com/") and branch
    yml = tmp_path / "_config.yml"
    yml.write_text(
        'title: "x"\nlaunch_buttons:\n  url: https://wrong.example\n'
        "repository:\n  # a comment\n  url: 'https://github.com/me/fork.git'  # mine\n"
        '  branch: "dev"\n  path_to_book: ""\nexecute:\n  branch: wrong\n'
    )
    assert hub.read_repository_config(yml) == ("https://github.com/me/fork.git", "dev")
    assert hub.read_repository_config(tmp_path / "missing.yml") == hub.DEFAULT_REPOSITORY


def test_raw_base_url(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMCOURSE_HUB_URL", raising=False)
    (tmp_path / "_config.yml").write_text(
        "repository:\n  url: https://github.com/me/fork.git\n  branch: dev\n"
    )
    monkeypatch.setattr(hub, "_REPO_ROOT", tmp_path)
    assert hub.repository_raw_base() == "https://raw.githubusercontent.com/me/fork/dev/checkpoints/"
    monkeypatch.setenv("LLMCOURSE_HUB_URL", "http://mirror.local/ck")
    assert hub.repository_raw_base() == "http://mirror.local/ck/"
    monkeypatch.delenv("LLMCOURSE_HUB_URL")
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://gitlab.com/me/fork\n")
    with pytest.raises(ValueError, match="LLMCOURSE_HUB_URL"):
        hub.repository_raw_base()


def test_load_from_local_clone(repo):
    root, model = repo
    loaded, tok = hub.load_pretrained("tiny")
    assert not loaded.training and tok == CharTokenizer.ascii()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert hub.list_pretrained() == ["tiny"]
    with pytest.raises(KeyError, match=r"unknown pretrained checkpoint 'big'.*\['tiny'\]"):
        hub.load_pretrained("big")


def test_local_file_not_matching_manifest(repo):
    root, _ = repo
    target = root / "checkpoints" / "tiny" / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="does not match its sha256 in .*manifest.json"):
        hub.load_pretrained("tiny")


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def test_download_verify_cache_then_offline(repo, monkeypatch):
    root, model = repo
    served = root / "served"
    (root / "checkpoints").rename(served)  # no local clone any more
    httpd, url = _serve(served)
    monkeypatch.setenv("LLMCOURSE_HUB_URL", url)
    try:
        loaded, tok = hub.load_pretrained("tiny", timeout=10)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight) and tok.vocab_size == 97
    assert (root / "cache" / "checkpoints" / "tiny" / "model.safetensors").is_file()
    again, _ = hub.load_pretrained("tiny", timeout=2)  # server gone: cached manifest and files
    assert torch.equal(again.tok_emb.weight, model.tok_emb.weight)


def test_download_of_a_corrupt_file_is_rejected(repo, monkeypatch):
    root, _ = repo
    served = root / "served"
    (root / "checkpoints").rename(served)
    manifest = json.loads((served / "manifest.json").read_text())
    manifest["tiny"]["files"]["model.safetensors"]["sha256"] = "0" * 64
    (served / "manifest.json").write_text(json.dumps(manifest))
    httpd, url = _serve(served)
    monkeypatch.setenv("LLMCOURSE_HUB_URL", url)
    try:
        with pytest.raises(DataIntegrityError, match="sha256"):
            hub.load_pretrained("tiny", timeout=10)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (root / "cache" / "checkpoints" / "tiny" / "model.safetensors").exists()


def test_course_base_model_is_published_and_loads(monkeypatch):
    """The committed base model matches its manifest entry, its config and its recorded loss."""
    from llmcourse.data import get_batch, load_text
    from llmcourse.generation import generate

    entry = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["gpt-shakespeare-char"]
    assert entry["command"].startswith("llmcourse train --config configs/gpt_shakespeare_char.toml")
    assert sum(f["bytes"] for f in entry["files"].values()) < 8 * 2**20, (
        "the published files should be a few MB"
    )
    model, tok = hub.load_pretrained("gpt-shakespeare-char")
    assert tok == CharTokenizer.ascii() and model.config.block_size >= 256
    text = load_text("tinyshakespeare")
    val = torch.tensor(tok.encode(text[int(0.9 * len(text)) :]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        losses = [model(*get_batch(val, 128, 8, g)).loss.item() for _ in range(5)]
    assert sum(losses) / 5 < entry["final_val_loss"] + 0.15 < 2.0
    out = generate(model, torch.tensor([tok.encode("ROMEO:\n")]), 40, temperature=0.0)
    assert tok.decode(out[0].tolist()).startswith("ROMEO:\n")


def test_load_hf_gpt2_offline_returns_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, reason = hub.load_hf_gpt2()
    assert model is None and "HF_HUB_OFFLINE" in reason


def test_load_hf_gpt2_unreachable_hub_returns_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", unreachable)
    model, reason = hub.load_hf_gpt2(timeout=0.1)
    assert model is None and "not reachable" in reason and "unreachable" in reason


def test_load_hf_gpt2_prefers_the_local_cache(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
    calls = []

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return tiny

    monkeypatch.setattr(GPT2LMHeadModel, "from_pretrained", from_pretrained)
    model, reason = hub.load_hf_gpt2("gpt2")
    assert model is tiny and reason is None and calls == [("gpt2", {"local_files_only": True})]


def test_pretrained_metadata_matches_the_manifest():
    meta = hub.pretrained_metadata("gpt-shakespeare-char")
    entry = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["gpt-shakespeare-char"]
    assert meta["step"] == entry["step"] == 2000
    assert meta["model_config"] == entry["model_config"]
    assert meta["config"]["optim"] == entry["config"]["optim"]
    with pytest.raises(KeyError, match="unknown pretrained checkpoint 'nope'"):
        hub.pretrained_metadata("nope")
