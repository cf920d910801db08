"""The dispatch layer (LLMCOURSE_KERNELS, auto on CPU, forced Triton) and the input checks of
the public functions. Runs in the main test process; no kernel is executed by Triton here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernels_testing import TOLERANCES, assert_close

import llmcourse.kernels as kernels
from llmcourse.kernels import backend, reference
from llmcourse.utils import ShapeError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(kernels.BACKEND_ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


# ----------------------------------------------------------------------------- backend choice


def test_backend_defaults_to_auto_and_rejects_unknown_values(monkeypatch):
    assert kernels.requested_backend() == "auto"
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, " Reference ")
    assert kernels.requested_backend() == "reference"
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="use one of: auto, triton, reference"):
        kernels.requested_backend()


def test_auto_uses_reference_on_cpu_and_triton_on_supported_cuda_input(monkeypatch):
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    assert backend.choose_backend("attention", CPU, None) == "reference"
    assert backend.choose_backend("attention", CUDA, None) == "triton"
    assert backend.choose_backend("attention", CUDA, "head dim 8") == "reference"
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert backend.choose_backend("attention", CUDA, None) == "reference"


def test_forced_reference_never_uses_triton(monkeypatch):
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "reference")
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    assert backend.choose_backend("attention", CUDA, None) == "reference"


def test_forced_triton_explains_why_it_cannot_run(monkeypatch):
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "triton")
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        backend.choose_backend("rms_norm", CUDA, None)
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        backend.choose_backend("rms_norm", CPU, None)
    with pytest.raises(ValueError, match="does not support this input: head dim 256"):
        backend.choose_backend("attention", CUDA, "head dim 256 (supported: 16 to 128)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.choose_backend("rms_norm", CPU, None) == "triton"


def test_forced_triton_on_cpu_tensor_raises_from_public_function(monkeypatch):
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, "triton")
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="layer_norm: LLMCOURSE_KERNELS=triton needs CUDA"):
        kernels.layer_norm(x, None, None)


@pytest.mark.parametrize("setting", ["auto", "reference"])
def test_public_functions_on_cpu_match_torch(monkeypatch, setting):
    monkeypatch.setenv(kernels.BACKEND_ENV_VAR, setting)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 16, generator=gen) for _ in range(3))
    assert_close(
        kernels.attention(q, k, v, causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        torch.float32,
        "attention",
    )
    x, w, b = torch.randn(3, 10, generator=gen), torch.randn(10), torch.randn(10)
    assert_close(kernels.layer_norm(x, w, b), F.layer_norm(x, (10,), w, b), torch.float32, "ln")
    assert_close(kernels.rms_norm(x, w), F.rms_norm(x, (10,), w, 1e-6), torch.float32, "rms")
    logits, targets = torch.randn(4, 9, generator=gen), torch.tensor([0, 8, -100, 3])
    assert_close(
        kernels.cross_entropy(logits, targets), F.cross_entropy(logits, targets),
        torch.float32, "ce",
    )  # fmt: skip
    h, c = kernels.lstm_cell(torch.randn(2, 12, generator=gen), torch.randn(2, 3, generator=gen))
    assert h.shape == c.shape == (2, 3)
    cos, sin = kernels.rope_cos_sin(torch.arange(6), 16)
    assert kernels.apply_rope(q, cos, sin).shape == q.shape


def test_float64_runs_on_reference_under_auto():
    q = torch.randn(1, 1, 5, 8, dtype=torch.float64, requires_grad=True)
    out = kernels.attention(q, q, q)
    assert out.dtype == torch.float64
    out.sum().backward()


def test_importing_kernels_does_not_need_triton():
    """Triton is optional: with it hidden, the package imports, auto works, triton explains."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton hidden for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import os, torch, llmcourse.kernels as K\n"
        "assert 'triton' not in sys.modules\n"
        "x = torch.randn(2, 4)\n"
        "K.rms_norm(x, None)\n"
        "os.environ['LLMCOURSE_KERNELS'] = 'triton'\n"
        "try:\n"
        "    K.rms_norm(x, None)\n"
        "except RuntimeError as err:\n"
        "    assert 'not installed' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('forced triton without triton must raise')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# ----------------------------------------------------------------------------- bad input


def test_attention_rejects_bad_shapes_dtypes_and_masks():
    q = torch.randn(2, 3, 5, 16)
    with pytest.raises(ShapeError, match=r"q: expected 4 dims"):
        kernels.attention(q[0], q[0], q[0])
    with pytest.raises(ShapeError, match=r"k: expected \(2, 3, \*, 16\), got shape \(2, 3, 5, 8\)"):
        kernels.attention(q, q[..., :8], q)
    with pytest.raises(ShapeError, match="v: expected"):
        kernels.attention(q, q, q[:, :, :4])
    with pytest.raises(TypeError, match="share one dtype"):
        kernels.attention(q, q.half(), q)
    with pytest.raises(TypeError, match="dtype int64 is not supported; use one of: float16"):
        kernels.attention(q.long(), q.long(), q.long())
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        kernels.attention(q, q, q, key_padding_mask=torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"key_padding_mask \(B, Tk\): expected \(2, 5\)"):
        kernels.attention(q, q, q, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scale must be a positive number"):
        kernels.attention(q, q, q, scale=0.0)
    with pytest.raises(ValueError, match="one device.*q on cpu, k on meta"):
        kernels.attention(q, q.to("meta"), q)


def test_norms_reject_bad_parameters():
    x = torch.randn(4, 10)
    with pytest.raises(ShapeError, match=r"weight \(C,\): expected \(10\), got shape \(9,\)"):
        kernels.layer_norm(x, torch.ones(9), None)
    with pytest.raises(ShapeError, match=r"bias \(C,\)"):
        kernels.layer_norm(x, None, torch.ones(10, 1))
    with pytest.raises(TypeError, match="x: dtype int64"):
        kernels.rms_norm(torch.ones(3, 4, dtype=torch.long), None)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        kernels.rms_norm(x, None, eps=-1.0)


def test_cross_entropy_rejects_bad_input():
    logits = torch.randn(4, 7)
    with pytest.raises(ShapeError, match=r"logits \(N, V\): expected 2 dims"):
        kernels.cross_entropy(logits[None], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"targets \(N,\): expected \(4\)"):
        kernels.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    with pytest.raises(
        TypeError, match="targets: dtype float32 is not supported; use one of: int64"
    ):
        kernels.cross_entropy(logits, torch.zeros(4))
    with pytest.raises(ValueError, match="reduction='avg' is not supported"):
        kernels.cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="avg")


def test_lstm_cell_and_rope_reject_bad_shapes():
    with pytest.raises(
        ShapeError, match=r"gates \(B, 4H\): expected \(2, 12\), got shape \(2, 10\)"
    ):
        kernels.lstm_cell(torch.randn(2, 10), torch.randn(2, 3))
    x = torch.randn(1, 2, 5, 7)
    cos, sin = kernels.rope_cos_sin(torch.arange(5), 8)
    with pytest.raises(ShapeError, match="even head dim D, got D=7"):
        kernels.apply_rope(x, cos, sin)
    x = torch.randn(1, 2, 5, 8)
    with pytest.raises(ShapeError, match=r"cos \(T, D/2\): expected \(5, 4\), got shape \(4, 4\)"):
        kernels.apply_rope(x, cos[:4], sin[:4])
    with pytest.raises(ShapeError, match="sin: expected the shape of cos"):
        kernels.apply_rope(x, cos, sin[:, :2])
    with pytest.raises(ValueError, match="head_dim must be a positive even number"):
        kernels.rope_cos_sin(torch.arange(5), 7)
    with pytest.raises(ValueError, match="integer tensor"):
        kernels.rope_cos_sin(torch.arange(5.0), 8)


def test_triton_support_reasons_list_what_is_supported():
    from llmcourse.kernels import checks

    assert checks.triton_attention_unsupported(torch.empty(1, 1, 1, 64)) is None
    assert "supported: 16 to 128" in checks.triton_attention_unsupported(torch.empty(1, 1, 1, 256))
    reason = checks.triton_dtype_unsupported(torch.empty(2, dtype=torch.float64))
    assert reason == "dtype float64 (supported: float16, bfloat16, float32)"
    assert "up to 16384" in checks.triton_norm_unsupported(torch.empty(1, 20000))


# ----------------------------------------------------------------------------- documentation


def test_book_page_quotes_the_test_tolerances():
    """book/kernels_on_gpu.md documents the tolerances: keep it in step with kernels_testing."""
    page = Path(__file__).resolve().parents[2] / "book" / "kernels_on_gpu.md"
    text = page.read_text(encoding="utf-8")
    for dtype, name in [
        (torch.float32, "float32"),
        (torch.float16, "float16"),
        (torch.bfloat16, "bfloat16"),
    ]:
        tol = TOLERANCES[dtype]
        row = re.search(rf"^\|\s*`?{name}`?\s*\|([^\n]*)$", text, flags=re.MULTILINE)
        assert row, f"no table row for {name} in {page}"
        numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?e-\d+", row.group(1))]
        assert numbers[:2] == [tol["atol"], tol["rtol"]], f"{name}: page says {numbers[:2]}"


def test_reference_module_is_what_auto_runs_on_cpu_when_no_builtin_fits(monkeypatch):
    called = []
    monkeypatch.setattr(reference, "rms_norm", lambda *a, **k: called.append(1) or a[0])
    kernels.rms_norm(torch.randn(2, 3, dtype=torch.float16), None)  # no fused fp16 path on CPU
    assert called == [1]
