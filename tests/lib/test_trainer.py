"""Trainer: learning, exact resume, accumulation, NaN detection, bf16, schedule, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from llmcourse.data import RandomBatches
from llmcourse.models.gpt import GPT, GPTConfig
from llmcourse.optim import SGD, AdamW, WarmupCosine, lr_at
from llmcourse.train import NonFiniteLossError, Trainer, TrainerConfig, TrainHistory

VOCAB, BLOCK = 12, 16
# A learnable corpus: a fixed random sequence of length 37 repeated (period 37 > block size).
TOKENS = np.tile(np.random.default_rng(0).integers(0, VOCAB, 37), 60).astype(np.uint16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine extra threads thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gpt(dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(
            vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=dropout
        )
    )


def _trainer(
    tmp_path=None, *, dropout=0.1, accum=2, seed=0, lr=3e-3, schedule=True, **cfg
) -> Trainer:
    model = _gpt(dropout, seed)
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    config = TrainerConfig(
        max_steps=12,
        grad_accum_steps=accum,
        eval_interval=3,
        eval_batches=2,
        progress=False,
        device="cpu",
        checkpoint_dir=str(tmp_path) if tmp_path else None,
        **cfg,
    )
    return Trainer(
        model,
        opt,
        RandomBatches(TOKENS, BLOCK, 4, seed=1),
        RandomBatches(TOKENS, BLOCK, 4, seed=2),
        config=config,
        schedule=WarmupCosine(max_lr=lr, min_lr=lr / 10, warmup_steps=3, decay_steps=12)
        if schedule
        else None,
        run_config={"name": "test"},
    )


def test_training_reduces_the_loss():
    trainer = _trainer(dropout=0.0, accum=1, lr=1e-2, schedule=False)
    history = trainer.fit(max_steps=30)
    assert len(history.loss) == 30 and history.steps[-1] == 30 == trainer.step
    assert np.mean(history.loss[-5:]) < 0.75 * np.mean(history.loss[:5])
    assert (
        history.eval_steps[-1] == 30 and history.eval_loss["val"][-1] < history.eval_loss["val"][0]
    )


def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path):
    full = _trainer()
    full.fit()

    first = _trainer(tmp_path / "ck")
    first.fit(max_steps=5)  # also evaluates at 3 and 5, and saves at 5
    del first
    resumed = _trainer(seed=99)  # different init: everything must come from the checkpoint
    ck = resumed.resume(tmp_path / "ck")
    assert ck.step == resumed.step == 5
    resumed.fit()

    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert resumed.history.loss == full.history.loss
    assert resumed.history.lr == full.history.lr
    assert resumed.history.eval_loss["val"][-1] == full.history.eval_loss["val"][-1]
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(
            full.optimizer.state[p]["exp_avg_sq"], resumed.optimizer.state[q]["exp_avg_sq"]
        )


def test_gradient_accumulation_equals_one_big_batch():
    rows = torch.from_numpy(TOKENS[: 8 * (BLOCK + 1)].astype(np.int64)).view(8, BLOCK + 1)
    halves = iter([rows[:4], rows[4:]] * 3)

    def small():
        r = next(halves)
        return r[:, :-1], r[:, 1:]

    def big():
        return rows[:, :-1], rows[:, 1:]

    results = []
    for source, accum in ((small, 2), (big, 1)):
        model = _gpt()
        cfg = TrainerConfig(
            max_steps=3, grad_accum_steps=accum, grad_clip=None, progress=False, device="cpu"
        )
        Trainer(model, SGD(model.parameters(), lr=0.1), source, config=cfg, eval_sources={}).fit()
        results.append(model)
    for a, b in zip(results[0].parameters(), results[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


class _Blowup(nn.Module):
    """Linear regression whose loss turns into NaN on the 3rd forward pass."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.calls = 0

    def forward(self, x, targets=None):
        self.calls += 1
        loss = ((x @ self.w - targets) ** 2).mean()
        return loss * float("nan") if self.calls == 3 else loss


def test_nan_loss_fails_loudly_naming_the_step_and_keeps_weights():
    model = _Blowup()
    source = lambda: (torch.ones(2, 3), torch.zeros(2))
    trainer = Trainer(
        model,
        SGD(model.parameters(), lr=0.01),
        source,
        config=TrainerConfig(progress=False, device="cpu"),
        eval_sources={},
    )
    trainer.fit(max_steps=2)
    before = model.w.detach().clone()
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at step 3 \(micro-batch 1 of 1\).*last finite loss"
    ):
        trainer.train_step()
    assert torch.equal(model.w, before) and model.w.grad is None and trainer.step == 2


def test_infinite_gradient_is_caught():
    model = nn.Linear(2, 1)
    loss_fn = lambda m, batch: (
        (m.weight * torch.tensor([[float("inf"), 0.0]])).sum() * 0 + m.weight.sum() * 1e39
    )
    cfg = TrainerConfig(progress=False, device="cpu", grad_clip=1.0)
    trainer = Trainer(
        model,
        SGD(model.parameters(), lr=0.1),
        lambda: None,
        config=cfg,
        loss_fn=loss_fn,
        eval_sources={},
    )
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        trainer.train_step()


def test_bfloat16_autocast_runs_matmuls_in_bf16():
    trainer = _trainer(dropout=0.0, accum=1, lr=1e-2, schedule=False, precision="bfloat16")
    seen = []
    handle = trainer.model.blocks[0].attn.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    history = trainer.fit(max_steps=15)
    handle.remove()
    assert torch.bfloat16 in seen
    assert all(math.isfinite(v) for v in history.loss) and history.loss[-1] < history.loss[0]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_schedule_sets_lr_each_step_and_respects_group_ratios():
    model = _gpt()
    params = list(model.parameters())
    opt = AdamW([{"params": params[:2], "lr": 1e-3}, {"params": params[2:], "lr": 1e-4}])
    sched = WarmupCosine(max_lr=1e-3, min_lr=1e-4, warmup_steps=2, decay_steps=8)
    cfg = TrainerConfig(max_steps=10, progress=False, device="cpu")
    trainer = Trainer(
        model, opt, RandomBatches(TOKENS, BLOCK, 2), config=cfg, schedule=sched, eval_sources={}
    )
    history = trainer.fit()
    expected = [
        lr_at(t, max_lr=1e-3, min_lr=1e-4, warmup_steps=2, decay_steps=8) for t in range(10)
    ]
    assert history.lr == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(expected[-1] / 10)


def test_evaluation_is_repeatable_and_does_not_disturb_training():
    a, b = _trainer(accum=1), _trainer(accum=1)
    first = a.evaluate()
    assert a.evaluate() == first and set(first) == {"train", "val"}
    torch.manual_seed(5)  # the same dropout masks for both
    a.train_step()
    torch.manual_seed(5)
    b.train_step()
    assert a.history.loss == b.history.loss


def test_checkpoints_written_at_interval_and_end(tmp_path):
    trainer = _trainer(tmp_path / "ck", checkpoint_interval=4)
    saves = []
    real_save = trainer.save
    trainer.save = lambda d=None: saves.append(trainer.step) or real_save(d)
    trainer.fit(max_steps=10)
    assert saves == [4, 8, 10]
    assert (tmp_path / "ck" / "checkpoint.json").is_file()


def test_history_round_trip():
    h = TrainHistory(
        steps=[1],
        loss=[2.0],
        lr=[0.1],
        grad_norm=[float("nan")],
        eval_steps=[1],
        eval_loss={"val": [2.5]},
    )
    assert TrainHistory.from_dict(h.to_dict()).eval_loss == {"val": [2.5]}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_steps=0), "max_steps must be >= 1"),
        (dict(grad_accum_steps=0), "grad_accum_steps"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(precision="float16"), "use bfloat16"),
        (dict(eval_interval=-1), "eval_interval"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainerConfig(**kwargs)


def test_loss_fn_must_return_a_scalar():
    model = nn.Linear(2, 2)
    cfg = TrainerConfig(progress=False, device="cpu")
    trainer = Trainer(
        model,
        SGD(model.parameters(), lr=0.1),
        lambda: torch.ones(3, 2),
        config=cfg,
        loss_fn=lambda m, b: m(b),
        eval_sources={},
    )
    with pytest.raises(TypeError, match=r"scalar tensor \(shape \(\)\), got \(3, 2\)"):
        trainer.train_step()


def test_fit_in_chunks_equals_one_call():
    whole, chunked = _trainer(), _trainer()
    torch.manual_seed(11)  # the same dropout masks for both runs
    whole.fit()
    torch.manual_seed(11)
    for target in (4, 8):
        chunked.fit(target, finish=False)
    assert chunked.history.eval_steps == [3, 6]  # no extra evaluations at the chunk ends
    chunked.fit()
    assert chunked.history.loss == whole.history.loss
    assert chunked.history.eval_loss == whole.history.eval_loss
    for a, b in zip(whole.model.parameters(), chunked.model.parameters(), strict=True):
        assert torch.equal(a, b)
