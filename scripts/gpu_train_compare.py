"""Train a small GPT for a few steps on CUDA twice, with the Triton kernels and with the
reference path, from the same seed; the losses must agree and stay finite."""

from __future__ import annotations

import os

import torch

from llmcourse.models.gpt import GPT, GPTConfig


def run(backend: str, steps: int = 30) -> list[float]:
    os.environ["LLMCOURSE_KERNELS"] = backend
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=128)
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 97, (steps, 8, 65), generator=torch.Generator().manual_seed(1)).cuda()
    losses = []
    for batch in data:
        out = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


if __name__ == "__main__":
    tri, ref = run("triton"), run("reference")
    for i in (0, 1, 5, 10, 29):
        print(f"step {i:2d}: triton {tri[i]:.5f}  reference {ref[i]:.5f}")
    finite = all(torch.isfinite(torch.tensor(tri)))
    drift = max(abs(a - b) for a, b in zip(tri, ref, strict=True))
    print(f"finite: {finite}; max |loss difference| over 30 steps: {drift:.2e}")
    raise SystemExit(0 if finite and drift < 1e-2 else 1)
