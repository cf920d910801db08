"""Data parallel: 2 CPU processes (gloo, via torchrun) == 1 process on the combined batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.train import read_checkpoint_meta

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from llmcourse.models.gpt import GPT, GPTConfig
    from llmcourse.optim import SGD
    from llmcourse.train import Trainer, TrainerConfig, cleanup_distributed, init_distributed

    info = init_distributed("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32))
    ACCUM, ROWS = 2, 8  # every optimisation step uses 8 rows in total
    per_micro = ROWS // ACCUM // info.world_size
    calls = [0]

    def batches():
        step, micro = divmod(calls[0], ACCUM)
        calls[0] += 1
        g = torch.Generator().manual_seed(step)
        rows = torch.randint(0, 16, (ROWS, 9), generator=g)  # the combined batch of this step
        start = micro * (ROWS // ACCUM) + info.rank * per_micro
        mine = rows[start : start + per_micro]
        return mine[:, :-1], mine[:, 1:]

    cfg = TrainerConfig(max_steps=4, grad_accum_steps=ACCUM, grad_clip=0.5, progress=False, device="cpu")
    trainer = Trainer(model, SGD(model.parameters(), lr=0.5, momentum=0.9), batches, config=cfg, eval_sources={})
    history = trainer.fit()
    if info.is_main:
        out = sys.argv[1]
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
        json.dump({"loss": history.loss, "world": info.world_size}, open(out + ".json", "w"))
    cleanup_distributed()
    """
)


def _env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LLMCOURSE_DATA_MIRROR", "/work/shared/data")
    if cache is not None:
        env["LLMCOURSE_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]
    env = _env(cwd / "cache")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_combined_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun(str(script), str(tmp_path / "ddp"), cwd=tmp_path)

    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "ddp"))
    assert (one["world"], two["world"]) == (1, 2)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    a, b = (
        load_file(str(tmp_path / "single.safetensors")),
        load_file(str(tmp_path / "ddp.safetensors")),
    )
    assert a.keys() == b.keys()
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved < 1e-6, f"DDP weights differ from single-process weights by {moved:.3g}"
    # ...and training really changed the weights (so equality is not trivial).
    torch.manual_seed(0)
    init = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32)).state_dict()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-2


TINY_CONFIG = """
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
warmup_steps = 2
decay_steps = 10
[train]
eval_interval = 2
eval_batches = 2
device = "cpu"
"""


@pytest.mark.slow
def test_torchrun_cli_trains_and_resumes(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    out = tmp_path / "run"
    common = [
        "-m",
        "llmcourse.cli",
        "train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    _torchrun(*common, "--max-iters", "3", cwd=tmp_path)
    meta = read_checkpoint_meta(out)
    assert meta["step"] == 3 and len(meta["ranks"]) == 2
    assert meta["config"]["world_size"] == 2
    _torchrun(*common, "--max-iters", "5", "--resume", cwd=tmp_path)
    meta = read_checkpoint_meta(out)
    assert meta["step"] == 5 and meta["extra"]["history"]["steps"] == [1, 2, 3, 4, 5]
    assert "val" in meta["extra"]["history"]["eval_loss"]
