"""4-bit weights: NF4 (QLoRA), FP4 and Int4 blockwise quantization, double quantization.

QLoRA (Dettmers et al. 2023) keeps a frozen base model in 4 bits and trains LoRA on top.
A weight is cut into blocks of ``blocksize`` values (64 by default); each block is scaled
by its largest magnitude (its *absmax*) into [-1, 1], and every value is replaced by the
index of the nearest of 16 levels, two indices per byte. NF4's levels are quantiles of the
normal distribution, since trained weights are close to normal: each level then stands
for about the same share of the values. *Double quantization* then stores the per-block
absmax values themselves in 8 bits, which brings the cost from 4.5 to about 4.127 bits
per weight.

Everything here gives bitsandbytes' bytes exactly (the tests compare with it): its NF4
table, its packing (the first value in the high nibble), and the arithmetic of its CPU
backend, quirks included, so that a file saved here loads there and the other way round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import LoRAConfig
from .lora import ALL_LINEAR, target_paths

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes accepts."""
NESTED_BLOCKSIZE = 256
"""Double quantization stores the absmax values in 8 bits, in blocks of this many."""

NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32)
"""bitsandbytes' NF4 levels, exactly (``nf4_levels`` derives them)."""

FP4_CODE = torch.tensor(
    [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
     -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
    dtype=torch.float32,
) / 12.0
"""bitsandbytes' FP4: code ``s e1 e0 m`` (sign, 2 exponent bits, 1 mantissa bit) in code
order, not sorted; its exponent bias gives the magnitudes {0, 1/16, 2, 3, 4, 6, 8, 12},
divided by 12 to end at 1."""

INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7
"""Plain absmax Int4: 15 evenly spaced levels (symmetric, so zero is exact)."""

CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE, "int4": INT4_CODE}

NF4_OFFSET = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2
"""The outermost quantile NF4 uses: the average of the half-bin offsets of 15 and 16 bins
(0.9677083), since the normal's infinite tails have no finite 0th and 100th percentile."""


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Derive NF4 from the normal distribution, as the QLoRA paper builds it.

    Zero must be exact (padding and many weights are zero), so the two halves are made
    separately: 8 positive levels from 9 evenly spaced quantiles between ``offset`` and the
    median, 7 negative levels from 8, plus 0; then everything is divided by the largest,
    so the levels span [-1, 1]. In float64 this lands within 2e-7 of ``NF4_CODE``
    (whose quantiles were spaced in float32).
    """
    inverse_cdf = torch.special.ndtri
    positive = inverse_cdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -inverse_cdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return levels / levels.max()


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map(signed=True)``).

    Dettmers' dynamic type: the leading zero bits of a code say the power of ten
    (1e-6 ... 1), the remaining bits a linear fraction between 0.1 and 1 of it, so small
    numbers keep relative precision. Code by code: the power ``10**(i-6)`` for i = 0..6
    carries ``2**i`` fractions (the midpoints of ``2**i`` equal steps from 0.1 to 1), each
    with both signs, plus 0 and 1: 256 sorted values.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        for sign in (1, -1):
            values += (sign * 10 ** (i - 6) * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


DYNAMIC_MAP = dynamic_map()
"""The 8-bit map double quantization uses. Like the 4-bit tables in ``CODES``, every
quantized weight refers to this one tensor rather than a copy, so a model stores each
table once (``bits_per_parameter`` counts it once)."""


# ----------------------------------------------------------------------------- quantizing


@dataclass
class QuantizedTensor:
    """A weight in 4 bits and what it takes to get it back (``dequantize``).

    ``packed`` holds two 4-bit codes per byte, the first value in the high nibble, as a
    ``[numel / 2, 1]`` uint8 column (bitsandbytes' layout). With double quantization
    ``absmax`` is uint8 codes of ``absmax - offset`` in ``nested_code``, blocks of
    ``NESTED_BLOCKSIZE`` scaled by ``nested_absmax``; without it, the float32 absmax itself.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    code: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    quant_type: str
    offset: torch.Tensor | None = None
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor this weight is stored as (what ``bits_per_parameter`` counts)."""
        parts = {"packed": self.packed, "absmax": self.absmax, "code": self.code}
        if self.double_quant:
            parts.update(offset=self.offset, nested_absmax=self.nested_absmax,
                         nested_code=self.nested_code)
        return parts


def _blocks(values: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat float32 ``values`` as rows of ``blocksize`` (the last one zero-padded), and
    each row's absmax."""
    flat = values.reshape(-1).float()
    padded = F.pad(flat, (0, -flat.numel() % blocksize))
    rows = padded.view(-1, blocksize)
    return rows, rows.abs().amax(dim=1)


def nearest_level(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The code index of the level nearest to each value of ``scaled`` (in [-1, 1]).

    The levels are sorted (FP4's codes are not in value order, so sort them and map
    back); a value exactly half-way between two levels takes the lower one, as
    bitsandbytes does (its ``bucketize`` on the float32 midpoints).
    """
    levels, order = code.sort(stable=True)
    midpoints = (levels[:-1] + levels[1:]) / 2
    return order[torch.bucketize(scaled, midpoints)]


def _check_weight(weight: torch.Tensor, blocksize: int, quant_type: str, name: str) -> None:
    if quant_type not in CODES:
        raise ValueError(f"{name}: quant_type must be one of {sorted(CODES)}, got {quant_type!r}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"{name}: blocksize must be one of {list(BLOCKSIZES)}, got {blocksize}")
    if not weight.is_floating_point():
        raise ValueError(
            f"{name}: only a floating-point tensor can be quantized, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] % blocksize:
        raise ValueError(
            f"{name}: blocksize {blocksize} must divide the row length, so that no block "
            f"spans two rows; got a tensor of shape {list(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name}: the tensor holds inf or nan")


def _quantize_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: ``absmax - mean`` in 8 bits, blocks of ``NESTED_BLOCKSIZE``.

    Subtracting the mean centres the (all-positive) values, so the signed dynamic map's
    two halves are both used. bitsandbytes' CPU kernel finds each level by a lookup table:
    the scaled value is first rounded to one of 65,536 evenly spaced points of [-1, 1]
    and takes the level nearest to that point; we do the same, so the codes match.
    """
    offset = absmax.mean()
    rows, nested_absmax = _blocks(absmax - offset, NESTED_BLOCKSIZE)
    scaled = (rows * (1.0 / nested_absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    steps = 65535.0
    grid = -1.0 + (2.0 * torch.floor((scaled + 1.0) * 0.5 * steps + 0.5)) / steps
    codes = torch.bucketize(grid, (DYNAMIC_MAP[:-1] + DYNAMIC_MAP[1:]) * 0.5).to(torch.uint8)
    return codes.reshape(-1)[: absmax.numel()], offset, nested_absmax


def quantize_4bit(
    weight: torch.Tensor, blocksize: int = 64, double_quant: bool = True,
    quant_type: str = "nf4", name: str = "weight",
) -> QuantizedTensor:
    """Quantize a ``[out, in]`` weight to 4-bit codes, block by block (``quant_type``
    ``"nf4"``, ``"fp4"`` or ``"int4"``). ``name`` is what errors call the tensor."""
    _check_weight(weight, blocksize, quant_type, name)
    code = CODES[quant_type]
    rows, absmax = _blocks(weight, blocksize)
    # bitsandbytes multiplies by the reciprocal (an all-zero block stays zero).
    scaled = (rows * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    codes = nearest_level(scaled.reshape(-1), code).to(torch.uint8)
    packed = ((codes[0::2] << 4) | codes[1::2]).unsqueeze(1)
    quantized = QuantizedTensor(packed, absmax, code, weight.shape, weight.dtype,
                                blocksize, quant_type)
    if double_quant:
        quantized.absmax, quantized.offset, quantized.nested_absmax = _quantize_absmax(absmax)
        quantized.nested_code = DYNAMIC_MAP
    return quantized


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64, double_quant: bool = True,
                 name: str = "weight") -> QuantizedTensor:
    """QLoRA's storage: NF4 codes, with the absmax values double-quantized by default."""
    return quantize_4bit(weight, blocksize, double_quant, "nf4", name)


def block_absmax(q: QuantizedTensor) -> torch.Tensor:
    """The float32 absmax of every block (undoing double quantization)."""
    if not q.double_quant:
        return q.absmax
    scales = q.nested_absmax.repeat_interleave(NESTED_BLOCKSIZE)[: q.absmax.numel()]
    return torch.index_select(q.nested_code, 0, q.absmax.int()) * scales + q.offset


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes of a packed column, in order (high nibble first)."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)


def byte_levels(code: torch.Tensor) -> torch.Tensor:
    """For each of the 256 byte values, the two levels its nibbles stand for, high first,
    as one 8-byte element: 256 float32 pairs seen as int64. (Int4 has 15 levels; its
    unused code 15 reads 0.)

    A byte holds two codes, so one lookup per byte gives two weights. Seeing each pair
    as a single int64 makes that lookup a gather of single elements, which PyTorch does
    about twice as fast as a gather of rows; no arithmetic touches the bits on the way,
    and seen as float32 again they are the levels exactly.
    """
    levels = F.pad(code, (0, 16 - code.numel()))
    pairs = levels[unpack_codes(torch.arange(256, dtype=torch.uint8, device=code.device)).long()]
    return pairs.view(256, 2).view(torch.int64).view(256)


def dequantize(q: QuantizedTensor, pair_table: torch.Tensor | None = None) -> torch.Tensor:
    """The weight ``q`` stands for: level times its block's absmax, in ``q.dtype``.

    This runs for every layer in every forward and backward pass of QLoRA, so it is
    written for speed: one gather of level pairs per byte (``byte_levels``, or its
    ``pair_table`` when the caller keeps one) and one in-place multiply by the block
    scales, two passes over the weight.
    """
    if pair_table is None:
        pair_table = byte_levels(q.code)
    pairs = torch.index_select(pair_table, 0, q.packed.view(-1).int())
    levels = pairs.view(torch.float32).view(-1, q.blocksize)
    return levels.mul_(block_absmax(q)[:, None]).view(q.shape).to(q.dtype)


def bits_per_parameter(*weights: QuantizedTensor) -> float:
    """Storage bits per weight of ``weights`` (one, or a whole model's), from the tensors.

    Every tensor is counted once, however many weights share it: the level tables
    (``CODES``, ``DYNAMIC_MAP``) are shared, so they weigh 8,704 bits per model, not per
    layer (on a small layer such as SmolLM2's ``k_proj``, 576 x 192, a copy of its own
    would add 0.08 bits per weight).
    """
    stored = {t.data_ptr(): t for q in weights for t in q.tensors().values()}
    bits = sum(t.numel() * t.element_size() * 8 for t in stored.values())
    return bits / sum(math.prod(q.shape) for q in weights)


# ----------------------------------------------------------------------------- layers


class _Dequantized4bitLinear(torch.autograd.Function):
    """``x @ W.T`` with ``W`` rebuilt from 4 bits in forward *and again* in backward.

    Autograd would otherwise keep the dequantized ``W`` alive from forward to backward
    for every layer at once, a full-precision copy of the model: the memory QLoRA saves.
    Only ``x``'s gradient is computed; the 4-bit weight is frozen.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Linear4bit) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dense_weight().to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out @ ctx.layer.dense_weight().to(grad_out.dtype), None


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is stored in 4 bits (as buffers, no parameter).

    It dequantizes its weight on every forward pass, one layer at a time, so the whole
    model is never held in full precision. It has ``in_features``, ``out_features`` and
    ``dense_weight()``, which makes it a ``lora.BaseLinear``: ``apply_lora`` adapts it.
    """

    def __init__(self, q: QuantizedTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.quant_type, self.blocksize, self.dtype = q.quant_type, q.blocksize, q.dtype
        for name, tensor in q.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # Built once, not at every dequantization; derived from `code`, so not saved.
        self.register_buffer("pair_table", byte_levels(q.code), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True,
                    quant_type: str = "nf4", name: str = "weight") -> Linear4bit:
        q = quantize_4bit(linear.weight.detach(), blocksize, double_quant, quant_type, name)
        return cls(q, linear.bias)

    def quantized(self) -> QuantizedTensor:
        """The layer's weight as a ``QuantizedTensor`` (sharing the buffers)."""
        nested = {name: getattr(self, name, None)
                  for name in ("offset", "nested_absmax", "nested_code")}
        return QuantizedTensor(self.packed, self.absmax, self.code,
                               torch.Size((self.out_features, self.in_features)), self.dtype,
                               self.blocksize, self.quant_type, **nested)

    def dense_weight(self) -> torch.Tensor:
        """The ``[out, in]`` weight this layer computes with, freshly dequantized."""
        return dequantize(self.quantized(), self.pair_table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Dequantized4bitLinear.apply(x, self)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.quant_type}, blocksize={self.blocksize}, "
                f"double_quant={hasattr(self, 'nested_absmax')}")


def linear4bit_layers(model: nn.Module) -> list[tuple[str, Linear4bit]]:
    """Every 4-bit layer of ``model`` with its module path (LoRA's bases included)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Linear4bit)]


def quantize_model(
    model: nn.Module, targets: tuple[str, ...] | str = ALL_LINEAR, blocksize: int = 64,
    double_quant: bool = True, quant_type: str = "nf4",
) -> nn.Module:
    """Replace the linear layers ``targets`` selects (LoRA's selection: ``"all-linear"``
    is every one but ``lm_head``) by ``Linear4bit``, in place; the model is returned."""
    for path in target_paths(model, LoRAConfig(target_modules=targets)):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        linear = getattr(parent, name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"quantize_model: {path} is a {type(linear).__name__}, not an "
                             "nn.Linear (already quantized?)")
        setattr(parent, name, Linear4bit.from_linear(
            linear, blocksize, double_quant, quant_type, name=f"{path}.weight"))
    return model
