"""Run each kernel alone at the shapes a small GPT uses (CUDA_LAUNCH_BLOCKING=1) to find which
one fails on the GPU."""

import os
import traceback

os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
os.environ["LLMCOURSE_KERNELS"] = "triton"
import torch

import llmcourse.kernels as K

dev = "cuda"


def attempt(name, fn):
    try:
        fn()
        torch.cuda.synchronize()
        print(f"{name}: ok")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
        traceback.print_exc(limit=3)
        raise SystemExit(1) from exc


def attn(T=64, D=32, causal=True):
    q, k, v = (torch.randn(8, 4, T, D, device=dev, requires_grad=True) for _ in range(3))
    K.attention(q, k, v, causal=causal).sum().backward()


def ln(C=128):
    x = torch.randn(8, 64, C, device=dev, requires_grad=True)
    w = torch.ones(C, device=dev, requires_grad=True)
    b = torch.zeros(C, device=dev, requires_grad=True)
    K.layer_norm(x, w, b).sum().backward()


def ce(V=97):
    x = torch.randn(512, V, device=dev, requires_grad=True)
    t = torch.randint(0, V, (512,), device=dev)
    K.cross_entropy(x, t).backward()


CASES = [("layer_norm C=128", ln), ("cross_entropy V=97", ce), ("cross_entropy V=50304", lambda: ce(50304)),
                 ("attention T=64 D=32 causal", attn), ("attention T=64 D=32", lambda: attn(causal=False)),
                 ("attention T=64 D=64", lambda: attn(D=64))]


def gpt_with_only(name: str) -> None:
    """GPT forward+backward on CUDA with only kernel ``name`` on Triton, the rest reference."""
    from llmcourse.kernels import reference
    from llmcourse.models.gpt import GPT, GPTConfig

    saved = {n: getattr(K, n) for n in ("attention", "layer_norm", "cross_entropy")}
    os.environ["LLMCOURSE_KERNELS"] = "auto"
    for other in saved:
        if other != name:
            setattr(K, other, getattr(reference, other))
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=128)).to(dev)
        batch = torch.randint(0, 97, (8, 65), device=dev)
        model(batch[:, :-1], batch[:, 1:]).loss.backward()
    finally:
        for n, f in saved.items():
            setattr(K, n, f)


def gpt_backend(backend: str, steps: int = 3) -> None:
    from llmcourse.models.gpt import GPT, GPTConfig

    os.environ["LLMCOURSE_KERNELS"] = backend
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=128)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = torch.randint(0, 97, (8, 65), device=dev)
        loss = model(batch[:, :-1], batch[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        print(f"  {backend} step {step}: loss {loss.item():.4f}", flush=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2:
        attempt(f"GPT on backend {sys.argv[2]}", lambda: gpt_backend(sys.argv[2]))
    elif len(sys.argv) > 1:
        attempt(f"GPT with only {sys.argv[1]} on Triton", lambda: gpt_with_only(sys.argv[1]))
    else:
        for case_name, fn in CASES:
            attempt(case_name, fn)

