"""Weight quantization: int8 absmax, affine uint8, NF4 4-bit with double quantization.

Three schemes, from simplest to the one QLoRA uses:

- **absmax int8** (symmetric): ``q = round(x * 127 / max|x|)``; one scale per tensor or per
  row. Zero maps to zero exactly; the error per element is at most ``max|x| / 254``.
- **affine uint8** (asymmetric, min-max): ``scale = (hi - lo) / 255``,
  ``zero_point = round(-lo / scale)``, ``q = clamp(round(x / scale) + zero_point, 0, 255)``.
  Quantizing 0.34567 on [-1, 1] gives 172, which dequantizes to
  ``(172 - 128) * 2 / 255 = 0.3451``.
- **NF4** (4-bit NormalFloat, Dettmers et al. 2023): weights are split into blocks of 64,
  each divided by its absmax, and mapped to the nearest of 16 code values placed at quantiles
  of a standard normal (:data:`NF4_CODE`). Two 4-bit codes are packed per byte. With *double
  quantization* the fp32 absmax constants (one per block) are themselves quantized to 8 bits
  in blocks of 256, cutting their cost from 32/64 = 0.5 to about 0.127 bits per weight.

Our double quantization centres the absmax constants on their mean and then applies linear
absmax int8 per block of 256. bitsandbytes uses an 8-bit *dynamic* (float-like) code for that
second step instead; the memory cost is the same, the rounding slightly different.

:class:`Linear8bit` and :class:`Linear4bit` store quantized weights in buffers and dequantize
them in every forward pass (computation happens in ``compute_dtype``), as QLoRA does. They are
frozen: the weights are not parameters and get no gradient; gradients still flow to the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.finetune.targets import LINEAR_TYPES, Pattern, find_modules, set_module
from llmcourse.utils import check_dtype

__all__ = [
    "NF4_CODE",
    "nf4_code_from_normal_quantiles",
    "Int8Quantized",
    "quantize_int8_absmax",
    "AffineQuantized",
    "affine_qparams",
    "quantize_affine_uint8",
    "pack_4bit",
    "unpack_4bit",
    "BlockwiseInt8",
    "quantize_blockwise_int8",
    "NF4Quantized",
    "nf4_codes",
    "quantize_nf4",
    "nf4_bits_per_param",
    "Linear8bit",
    "Linear4bit",
    "quantize_model",
]

# The 16 NF4 code values as published with QLoRA / bitsandbytes (sorted, in [-1, 1]).
NF4_CODE = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def nf4_code_from_normal_quantiles(offset: float = 0.9677083) -> Tensor:
    """Rebuild the NF4 code from quantiles of N(0, 1); returns float64 ``(16,)``.

    8 positive values at quantiles ``linspace(offset, 0.5, 9)[:-1]``, 7 negative ones at
    ``linspace(offset, 0.5, 8)[:-1]`` (mirrored), plus an exact zero, all divided by the
    largest magnitude so the code spans [-1, 1]. The asymmetry (8 vs 7) is what lets 16
    values include 0 exactly. ``offset`` is the outermost quantile QLoRA uses.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    code = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return code / code.abs().max()


# --------------------------------------------------------------------------- int8 absmax


@dataclass(frozen=True)
class Int8Quantized:
    """Symmetric int8 tensor: ``x ~= data * scale``.

    ``data``: int8, same shape as the input. ``scale``: float32 step size (``absmax / 127``),
    a scalar for per-tensor quantization or shape ``(rows, 1)`` for per-row.
    """

    data: Tensor
    scale: Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (self.data.to(torch.float32) * self.scale).to(dtype)


def _safe_step(absmax: Tensor, levels: int) -> Tensor:
    # An all-zero tensor/row has absmax 0; any step works then, use 1 to avoid 0/0.
    step = absmax.to(torch.float32) / levels
    return torch.where(step > 0, step, torch.ones_like(step))


def quantize_int8_absmax(x: Tensor, *, per_row: bool = False) -> Int8Quantized:
    """Absmax int8 quantization of a float tensor.

    ``per_row=True`` (needs ``x.dim() >= 2``) uses one scale per row, i.e. per slice along
    the first dimension (per output channel of a Linear weight), which tolerates rows of
    very different magnitude. Error bound: ``|x - dequantize| <= absmax / 254`` elementwise.
    """
    check_dtype(x, _FLOAT_DTYPES, "x")
    xf = x.detach().to(torch.float32)
    if per_row:
        if xf.dim() < 2:
            raise ValueError(
                f"per_row=True needs a tensor with >= 2 dims, got shape {tuple(x.shape)}"
            )
        absmax = xf.abs().reshape(xf.shape[0], -1).amax(dim=1)
        step = _safe_step(absmax, 127).reshape(-1, *([1] * (xf.dim() - 1)))
    else:
        step = _safe_step(xf.abs().amax(), 127)
    q = torch.clamp(torch.round(xf / step), -127, 127).to(torch.int8)
    return Int8Quantized(q, step)


# --------------------------------------------------------------------------- affine uint8


@dataclass(frozen=True)
class AffineQuantized:
    """Asymmetric uint8 tensor: ``x ~= (data - zero_point) * scale``."""

    data: Tensor
    scale: float
    zero_point: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return ((self.data.to(torch.float32) - self.zero_point) * self.scale).to(dtype)


def affine_qparams(lo: float, hi: float, qmin: int = 0, qmax: int = 255) -> tuple[float, int]:
    """``(scale, zero_point)`` mapping the float range [lo, hi] onto the integers [qmin, qmax].

    The range is first widened to contain 0 so that zero (padding, ReLU outputs) is exactly
    representable; the zero point is computed in float64 so [-1, 1] gives 128, not 127.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"affine_qparams: need finite lo <= hi, got lo={lo}, hi={hi}")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi == lo:  # all zeros
        return 1.0, qmin
    scale = (hi - lo) / (qmax - qmin)
    zero_point = qmin + round(-lo / (hi - lo) * (qmax - qmin))
    return scale, int(min(max(zero_point, qmin), qmax))


def quantize_affine_uint8(
    x: Tensor, lo: float | None = None, hi: float | None = None
) -> AffineQuantized:
    """Min-max (asymmetric) quantization to 0..255 over [lo, hi] (default: x's own range).

    Example: ``quantize_affine_uint8(torch.tensor([0.34567]), -1, 1)`` stores 172, and
    ``.dequantize()`` returns 0.3451 (error 0.0006, below half a step = 1/255).
    """
    check_dtype(x, _FLOAT_DTYPES, "x")
    xf = x.detach().to(torch.float32)
    lo = float(xf.min()) if lo is None else lo
    hi = float(xf.max()) if hi is None else hi
    scale, zero_point = affine_qparams(lo, hi)
    q = torch.clamp(torch.round(xf / scale) + zero_point, 0, 255).to(torch.uint8)
    return AffineQuantized(q, scale, zero_point)


# --------------------------------------------------------------------------- 4-bit packing


def pack_4bit(codes: Tensor) -> Tensor:
    """Pack 4-bit codes (uint8 values 0..15, any shape) two per byte: ``(ceil(N/2),)`` uint8.

    Element ``2i`` goes to the high nibble of byte ``i``, element ``2i + 1`` to the low
    nibble; an odd count is padded with a zero code. :func:`unpack_4bit` inverts this.
    """
    check_dtype(codes, (torch.uint8,), "codes")
    flat = codes.reshape(-1)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError(f"pack_4bit: codes must be in 0..15, got max {int(flat.max())}")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_4bit`: the first ``n`` codes as ``(n,)`` uint8."""
    check_dtype(packed, (torch.uint8,), "packed")
    if not 0 <= n <= 2 * packed.numel():
        raise ValueError(f"unpack_4bit: n={n} codes do not fit in {packed.numel()} bytes")
    both = torch.stack([packed >> 4, packed & 0x0F], dim=1)  # (bytes, 2)
    return both.reshape(-1)[:n]


# --------------------------------------------------------------------------- blockwise int8


def _to_blocks(flat: Tensor, block_size: int) -> Tensor:
    """Zero-pad a 1-D tensor to a multiple of ``block_size`` and view it as (n_blocks, block)."""
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, block_size)


@dataclass(frozen=True)
class BlockwiseInt8:
    """A 1-D float tensor quantized to int8 in blocks: ``x ~= data * scale[block] + offset``.

    ``data``: int8 ``(n,)``; ``scale``: float32 ``(ceil(n / block_size),)``; ``offset``:
    float32 scalar (the mean that was subtracted before quantizing, 0 if not centred).
    """

    data: Tensor
    scale: Tensor
    offset: Tensor
    block_size: int

    def dequantize(self) -> Tensor:
        n = self.data.numel()
        blocks = _to_blocks(self.data.to(torch.float32), self.block_size)
        return (blocks * self.scale[:, None]).reshape(-1)[:n] + self.offset

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.offset))


def quantize_blockwise_int8(
    x: Tensor, block_size: int = 256, *, center: bool = True
) -> BlockwiseInt8:
    """Absmax int8 quantization of a 1-D float tensor, one scale per block of ``block_size``.

    ``center=True`` subtracts the mean first: used for NF4's absmax constants, which are all
    positive, so centring doubles the resolution.
    """
    check_dtype(x, _FLOAT_DTYPES, "x")
    if x.dim() != 1:
        raise ValueError(
            f"quantize_blockwise_int8: expected a 1-D tensor, got shape {tuple(x.shape)}"
        )
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    xf = x.detach().to(torch.float32)
    offset = xf.mean() if center and xf.numel() else xf.new_zeros(())
    blocks = _to_blocks(xf - offset, block_size)
    step = _safe_step(blocks.abs().amax(dim=1), 127)
    q = torch.clamp(torch.round(blocks / step[:, None]), -127, 127).to(torch.int8)
    return BlockwiseInt8(q.reshape(-1)[: xf.numel()], step, offset, block_size)


# --------------------------------------------------------------------------- NF4


@dataclass(frozen=True)
class NF4Quantized:
    """A tensor in NF4: packed 4-bit codes plus one absmax per block.

    ``packed``: uint8 ``(n_blocks * block_size / 2,)``; ``absmax``: float32 ``(n_blocks,)``
    or a :class:`BlockwiseInt8` when double-quantized; ``shape``: the original shape.
    """

    packed: Tensor
    absmax: Tensor | BlockwiseInt8
    shape: torch.Size
    block_size: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def absmax_values(self) -> Tensor:
        """The per-block absmax constants as float32 ``(n_blocks,)`` (dequantized if needed)."""
        if isinstance(self.absmax, BlockwiseInt8):
            return self.absmax.dequantize()
        return self.absmax

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        n_padded = 2 * self.packed.numel()
        codes = unpack_4bit(self.packed, n_padded).to(torch.long)
        code = NF4_CODE.to(self.packed.device)
        blocks = code[codes].reshape(-1, self.block_size) * self.absmax_values()[:, None]
        return blocks.reshape(-1)[: self.numel].reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        absmax = self.absmax
        scales = absmax.nbytes if isinstance(absmax, BlockwiseInt8) else absmax.numel() * 4
        return self.packed.numel() + scales


def nf4_codes(normalized: Tensor) -> Tensor:
    """Index (0..15, uint8) of the nearest NF4 code value for inputs in [-1, 1]."""
    code = NF4_CODE.to(normalized.device)
    midpoints = (code[1:] + code[:-1]) / 2
    return torch.bucketize(normalized.contiguous(), midpoints).to(torch.uint8)


def quantize_nf4(
    x: Tensor,
    block_size: int = 64,
    *,
    double_quant: bool = True,
    dq_block_size: int = 256,
) -> NF4Quantized:
    """Blockwise NF4 quantization of a float tensor of any shape (flattened row-major).

    Each block of ``block_size`` values is divided by its absmax and every value replaced by
    the index of the nearest code in :data:`NF4_CODE`. ``block_size`` must be even (two
    codes per byte). With ``double_quant`` the absmax constants are stored as int8 in
    blocks of ``dq_block_size`` (see the module docstring).
    """
    check_dtype(x, _FLOAT_DTYPES, "x")
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be even and >= 2 (two codes per byte), got {block_size}")
    if x.numel() == 0:
        raise ValueError("quantize_nf4: cannot quantize an empty tensor")
    blocks = _to_blocks(x.detach().to(torch.float32).reshape(-1), block_size)  # (n_blocks, bs)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    packed = pack_4bit(nf4_codes(blocks / scale[:, None]))
    stored: Tensor | BlockwiseInt8 = absmax
    if double_quant:
        stored = quantize_blockwise_int8(absmax, dq_block_size, center=True)
    return NF4Quantized(packed, stored, x.shape, block_size)


def nf4_bits_per_param(
    block_size: int = 64, *, double_quant: bool = True, dq_block_size: int = 256
) -> float:
    """Storage bits per weight of NF4, ignoring padding and the one fp32 mean.

    Without double quantization: ``4 + 32 / 64 = 4.5``; with it:
    ``4 + 8 / 64 + 32 / (64 * 256) = 4.127`` (QLoRA's figure).
    """
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * dq_block_size)


# --------------------------------------------------------------------------- modules


def _check_linear(linear: nn.Module) -> None:
    if not isinstance(linear, LINEAR_TYPES):
        allowed = ", ".join(f"{t.__module__}.{t.__name__}" for t in LINEAR_TYPES)
        raise TypeError(f"expected a Linear layer ({allowed}), got {type(linear).__name__}")


class _QuantizedLinearBase(nn.Module):
    """Shared parts of the quantized Linear layers: shape attributes, bias, compute dtype."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, device
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in/out features must be >= 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        if bias:
            # The base layer is frozen in QLoRA; the bias stays in full precision.
            self.bias = nn.Parameter(
                torch.zeros(out_features, device=device, dtype=torch.float32), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    def dequantized_weight(self) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def weight(self) -> Tensor:
        """The dequantized weight (out, in) in ``compute_dtype``, rebuilt on every access.

        Lets code that reads ``layer.weight`` directly (e.g. an untied GPT output layer)
        work with a quantized layer; it is not a parameter and receives no gradient.
        """
        return self.dequantized_weight().to(self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (..., in_features) -> (..., out_features), computed in ``compute_dtype``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: expected input (..., {self.in_features}), "
                f"got shape {tuple(x.shape)}"
            )
        cd = self.compute_dtype
        bias = None if self.bias is None else self.bias.to(cd)
        return F.linear(x.to(cd), self.dequantized_weight().to(cd), bias).to(x.dtype)

    def _copy_bias(self, linear: nn.Module) -> None:
        if (linear.bias is None) != (self.bias is None):
            raise ValueError("bias mismatch between the Linear and the quantized layer")
        if linear.bias is not None:
            self.bias.data.copy_(linear.bias.detach().to(torch.float32))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}"
        )


class Linear8bit(_QuantizedLinearBase):
    """A frozen Linear whose weight is stored as int8 with one absmax scale per output row.

    Buffers: ``weight_int8`` (out, in) int8 and ``weight_scale`` (out, 1) float32. (LLM.int8()
    additionally keeps outlier input columns in 16 bits; that decomposition is not done here.)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device)
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Module, *, compute_dtype: torch.dtype = torch.float32
    ) -> Linear8bit:
        """Quantize a full-precision Linear (per-row absmax int8)."""
        _check_linear(linear)
        q = quantize_int8_absmax(linear.weight, per_row=True)
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            compute_dtype=compute_dtype,
            device=linear.weight.device,
        )
        layer.weight_int8.copy_(q.data)
        layer.weight_scale.copy_(q.scale)
        layer._copy_bias(linear)
        return layer

    def dequantized_weight(self) -> Tensor:
        """The weight as float32 (out, in)."""
        return Int8Quantized(self.weight_int8, self.weight_scale).dequantize()


class Linear4bit(_QuantizedLinearBase):
    """A frozen Linear whose weight is stored in NF4 and dequantized in every forward pass.

    Buffers: ``weight_packed`` uint8 (two codes per byte); with double quantization
    ``absmax_int8`` int8 (n_blocks,), ``absmax_scale`` float32 (n_dq_blocks,) and
    ``absmax_offset`` float32 (); otherwise ``absmax`` float32 (n_blocks,). Sizes depend only
    on the constructor arguments, so ``load_state_dict`` works on a freshly built layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        block_size: int = 64,
        double_quant: bool = True,
        dq_block_size: int = 256,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        if block_size < 2 or block_size % 2:
            raise ValueError(f"block_size must be even and >= 2, got {block_size}")
        self.block_size = block_size
        self.double_quant = double_quant
        self.dq_block_size = dq_block_size
        n_blocks = math.ceil(in_features * out_features / block_size)
        self.register_buffer(
            "weight_packed",
            torch.zeros(n_blocks * block_size // 2, dtype=torch.uint8, device=device),
        )
        if double_quant:
            n_dq = math.ceil(n_blocks / dq_block_size)
            self.register_buffer(
                "absmax_int8", torch.zeros(n_blocks, dtype=torch.int8, device=device)
            )
            self.register_buffer(
                "absmax_scale", torch.ones(n_dq, dtype=torch.float32, device=device)
            )
            self.register_buffer(
                "absmax_offset", torch.zeros((), dtype=torch.float32, device=device)
            )
        else:
            self.register_buffer("absmax", torch.ones(n_blocks, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        *,
        block_size: int = 64,
        double_quant: bool = True,
        dq_block_size: int = 256,
        compute_dtype: torch.dtype = torch.float32,
    ) -> Linear4bit:
        """Quantize a full-precision Linear to NF4."""
        _check_linear(linear)
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            block_size=block_size,
            double_quant=double_quant,
            dq_block_size=dq_block_size,
            compute_dtype=compute_dtype,
            device=linear.weight.device,
        )
        q = quantize_nf4(
            linear.weight, block_size, double_quant=double_quant, dq_block_size=dq_block_size
        )
        layer.weight_packed.copy_(q.packed)
        if isinstance(q.absmax, BlockwiseInt8):
            layer.absmax_int8.copy_(q.absmax.data)
            layer.absmax_scale.copy_(q.absmax.scale)
            layer.absmax_offset.copy_(q.absmax.offset)
        else:
            layer.absmax.copy_(q.absmax)
        layer._copy_bias(linear)
        return layer

    def quantized(self) -> NF4Quantized:
        """The stored weight as an :class:`NF4Quantized` (views of the buffers)."""
        absmax: Tensor | BlockwiseInt8
        if self.double_quant:
            absmax = BlockwiseInt8(
                self.absmax_int8, self.absmax_scale, self.absmax_offset, self.dq_block_size
            )
        else:
            absmax = self.absmax
        shape = torch.Size((self.out_features, self.in_features))
        return NF4Quantized(self.weight_packed, absmax, shape, self.block_size)

    def dequantized_weight(self) -> Tensor:
        """The weight as float32 (out, in)."""
        return self.quantized().dequantize()

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", block_size={self.block_size}, double_quant={self.double_quant}"
        )


QuantKind = Literal["nf4", "int8"]


def _tied_weight_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def quantize_model(
    model: nn.Module,
    patterns: Pattern | list[Pattern],
    kind: QuantKind = "nf4",
    *,
    compute_dtype: torch.dtype = torch.float32,
    block_size: int = 64,
    double_quant: bool = True,
    dq_block_size: int = 256,
) -> list[str]:
    """Replace the Linear layers matching ``patterns`` by quantized copies, in place.

    ``kind="nf4"`` uses :class:`Linear4bit` (the remaining keyword arguments apply),
    ``kind="int8"`` :class:`Linear8bit`. Pattern rules: :mod:`llmcourse.finetune.targets`.
    Returns the names of the replaced modules. A Linear whose weight is tied to another
    module (e.g. a GPT ``lm_head`` sharing the token embedding) is refused, because
    quantizing it would silently untie the two.
    """
    if kind not in ("nf4", "int8"):
        raise ValueError(f"kind must be 'nf4' or 'int8', got {kind!r}")
    names = find_modules(model, patterns, LINEAR_TYPES)
    tied = _tied_weight_names(model)
    for name in names:
        linear = model.get_submodule(name)
        shared = tied[id(linear.weight)]
        if len(shared) > 1:
            others = [n for n in shared if n != f"{name}.weight"]
            raise ValueError(
                f"cannot quantize {name!r}: its weight is tied to {others}; "
                "leave it out of the patterns (or untie the weights first)"
            )
    for name in names:
        linear = model.get_submodule(name)
        if kind == "nf4":
            new: nn.Module = Linear4bit.from_linear(
                linear,
                block_size=block_size,
                double_quant=double_quant,
                dq_block_size=dq_block_size,
                compute_dtype=compute_dtype,
            )
        else:
            new = Linear8bit.from_linear(linear, compute_dtype=compute_dtype)
        set_module(model, name, new)
    return names
