"""The llmcourse command: train from a TOML config, resume, sample, publish to the manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from llmcourse.cli import main
from llmcourse.train import read_checkpoint_meta
from llmcourse.train.run import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[2]

TINY = """
seed = 3
[data]
dataset = "tinyshakespeare"
tokenizer = "char-ascii"
block_size = 16
batch_size = 4
[model]
n_layer = 1
n_head = 2
n_embd = 16
[optim]
lr = 3e-3
warmup_steps = 2
decay_steps = 10
[train]
eval_interval = 2
eval_batches = 2
device = "cpu"
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCOURSE_DATA_MIRROR", "/work/shared/data")
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_train_resume_sample_publish(tmp_path, config, capsys):
    out = tmp_path / "run"
    base = ["train", "--config", str(config), "--out", str(out), "--no-progress"]
    assert main([*base, "--max-iters", "4"]) == 0
    meta = read_checkpoint_meta(out)
    assert meta["step"] == 4 and meta["config"]["command"].startswith("llmcourse train --config")
    assert meta["model_config"]["vocab_size"] == 97  # CharTokenizer.ascii()
    assert main([*base, "--max-iters", "6"]) == 2  # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--max-iters", "6", "--resume"]) == 0
    assert read_checkpoint_meta(out)["extra"]["history"]["steps"] == list(range(1, 7))

    capsys.readouterr()
    args = [
        "sample",
        "--checkpoint",
        str(out),
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "20",
        "--top-k",
        "5",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first.rstrip("\n")) >= len("ROMEO:") + 15
    assert main(args) == 0 and capsys.readouterr().out == first  # seeded: reproducible

    manifest = tmp_path / "manifest.json"
    assert (
        main(["publish", "--checkpoint", str(out), "--name", "tiny", "--manifest", str(manifest)])
        == 0
    )
    entry = json.loads(manifest.read_text())["tiny"]
    assert set(entry["files"]) == {"model.safetensors", "checkpoint.json", "tokenizer.json"}
    assert entry["step"] == 6 and entry["command"].startswith("llmcourse train")
    assert isinstance(entry["final_val_loss"], float)


def test_resume_without_checkpoint_is_an_error(tmp_path, config, capsys):
    rc = main(
        [
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "none"),
            "--resume",
            "--max-iters",
            "1",
        ]
    )
    assert rc == 2 and "holds no checkpoint" in capsys.readouterr().err


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("n_embd = 16", "n_embd = 16\n[trian]\nx = 1"))
    with pytest.raises(ValueError, match=r"unknown top-level keys \['trian'\]"):
        load_run_config(bad)
    bad.write_text(TINY.replace("eval_batches = 2", "eval_batchs = 2"))
    with pytest.raises(ValueError, match=r"unknown keys \['eval_batchs'\] in \[train\]"):
        load_run_config(bad)
    bad.write_text("seed = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_run_config(bad)
    with pytest.raises(FileNotFoundError):
        load_run_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "name", ["gpt_shakespeare_char", "nanogpt_cpu_bench", "nanogpt_cpu_bench_tuned"]
)
def test_shipped_configs_are_valid(name):
    cfg = load_run_config(ROOT / "configs" / f"{name}.toml")
    assert isinstance(cfg, RunConfig) and cfg.train.max_steps >= 2000
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_nanogpt_config_is_the_published_one():
    cfg = load_run_config(ROOT / "configs" / "nanogpt_cpu_bench.toml")
    assert (
        cfg.model["n_layer"],
        cfg.model["n_head"],
        cfg.model["n_embd"],
        cfg.model["dropout"],
    ) == (4, 4, 128, 0.0)
    assert (cfg.model["bias"], cfg.model["mlp"]) == (False, "gelu_exact")  # nanoGPT: nn.GELU()
    assert (
        cfg.data.block_size,
        cfg.data.batch_size,
        cfg.train.max_steps,
        cfg.optim.decay_steps,
    ) == (64, 12, 2000, 2000)


def test_tuned_benchmark_config_changes_only_the_learning_rate():
    """The tuned benchmark config is nanoGPT's, except for the peak and final learning rate."""
    plain = load_run_config(ROOT / "configs" / "nanogpt_cpu_bench.toml")
    tuned = load_run_config(ROOT / "configs" / "nanogpt_cpu_bench_tuned.toml")
    assert (tuned.optim.lr, tuned.optim.min_lr) == (3e-3, 3e-4)
    same_lr = dataclasses.replace(tuned.optim, lr=plain.optim.lr, min_lr=plain.optim.min_lr)
    assert dataclasses.replace(tuned, optim=same_lr) == plain
