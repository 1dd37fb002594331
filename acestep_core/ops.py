"""The layer factory every ``acestep_core`` model is built from.

A model takes ``operations`` (a namespace of layer classes), ``dtype`` and ``device``, and builds
its layers as ``operations.Linear(in, out, bias=..., dtype=dtype, device=device)``, the way
ComfyUI's own models do (``comfy/ldm/*``: ``operations=comfy.ops.disable_weight_init``). Left at
``None`` it is :data:`torch_ops`, plain ``torch.nn``. Inside ComfyUI the pack passes ``comfy.ops``
(manual cast or disable_weight_init, whichever ComfyUI picks for the device and dtype), and a
third-party pack can pass its own (e.g. GGUF's ``custom_operations``): our code never needs to
know which.

Code that reads a layer's weight instead of calling the layer (a fast path) must get it through
:func:`cast_weight_bias`, so an offloaded, patched or quantised weight arrives exactly as the layer's
own forward would see it. A tensor a module owns directly (a modulation table, a layer scale, a
buffer) is brought to the input's device and dtype where it is used, with :func:`cast_like`: a
memory manager may leave it offloaded, and the weights may be stored in another dtype than the
one the model computes in (ComfyUI's ``comfy.model_management.cast_to`` plays this part for its
own models).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class _RMSNorm(nn.Module):
    """RMSNorm with an optional affine weight; ``torch.nn.RMSNorm`` where it exists."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape = shape
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype)) if elementwise_affine else None

    def forward(self, x):
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return torch.nn.functional.rms_norm(x, self.normalized_shape, weight, self.eps)


torch_ops = SimpleNamespace(
    Linear=nn.Linear,
    Conv1d=nn.Conv1d,
    Conv2d=nn.Conv2d,
    ConvTranspose1d=nn.ConvTranspose1d,
    ConvTranspose2d=nn.ConvTranspose2d,
    LayerNorm=nn.LayerNorm,
    GroupNorm=nn.GroupNorm,
    Embedding=nn.Embedding,
    RMSNorm=getattr(nn, "RMSNorm", _RMSNorm),
)
"""Plain PyTorch layers: the default ``operations``."""


def resolve(operations) -> object:
    """``operations`` or, when ``None``, :data:`torch_ops`."""
    return torch_ops if operations is None else operations


def cast_weight_bias(layer: nn.Module, like: torch.Tensor, dtype: torch.dtype | None = None):
    """``(weight, bias)`` of ``layer`` on ``like``'s device, in ``dtype`` (default: ``like``'s),
    as the layer's own forward would use them.

    A layer may serve this itself by defining ``acestep_cast_weight_bias(like, dtype)`` (the pack's
    ComfyUI operations do, with ``comfy.ops.cast_bias_weight`` semantics: offloaded weights brought
    to the device, LoRA / weight patches applied). Otherwise the parameters are moved and cast.
    """
    dtype = like.dtype if dtype is None else dtype
    served = getattr(layer, "acestep_cast_weight_bias", None)
    if served is not None:
        return served(like, dtype)
    weight = layer.weight.to(device=like.device, dtype=dtype)
    bias = getattr(layer, "bias", None)
    if bias is not None:
        bias = bias.to(device=like.device, dtype=dtype)
    return weight, bias


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight.flatten(1), bias)`` with ``layer``'s weight and bias as
    :func:`cast_weight_bias` gives them in ``x``'s dtype: a 1x1 or patch conv read as a matrix
    product. A layer may serve it itself (``acestep_linear(x)``, the pack's ComfyUI operations
    do); one that serves only ``acestep_cast_weight_bias`` is read through it; a plain layer's
    weight stored narrower than ``x`` goes through :func:`linear_upcast`."""
    served = getattr(layer, "acestep_linear", None)
    if served is not None:
        return served(x)
    if getattr(layer, "acestep_cast_weight_bias", None) is not None:
        weight, bias = cast_weight_bias(layer, x)
        return torch.nn.functional.linear(x, weight.flatten(1), bias)
    return linear_upcast(x, layer.weight.flatten(1), getattr(layer, "bias", None))


def cast_like(tensor: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``like``'s device in ``dtype`` (default: ``like``'s); the tensor itself, not a
    copy, when it is already there."""
    return tensor.to(device=like.device, dtype=like.dtype if dtype is None else dtype)


# --- float32 products on 16-bit weights without a float32 copy of the weight -------------------
UPCAST_BLOCK_BYTES = 4 << 20
"""Bytes of float32 weight rows cast at a time by :func:`linear_upcast`: a block that stays in the
CPU's caches between the cast and the product (measured on a 2-core EPYC: 2-4 MiB blocks ran a
[2, 2048] x [6144, 2048]^T product in about half the time of casting the whole weight first)."""
UPCAST_BLOCK_ROWS_MULTIPLE = 64
"""Blocks hold a multiple of this many weight rows: MKL's sums for a block of output columns then
match the whole product's (measured with torch 2.9 / MKL on this AVX-512 EPYC: 170- and 42-row
blocks of a K = 6144 weight differed in the last bit even with 8 input rows; multiples of 64 never
did, 350 shapes with K 768-9728 and 1-16 input rows)."""
UPCAST_MAX_ROWS_OF_INPUT = 256
"""Above this many input rows the product is bound by arithmetic, not by reading the weight, and
one whole cast costs little beside it: :func:`linear_upcast` then casts the weight whole."""

UPCAST_MIN_ROWS_OF_INPUT = 8
"""Below this many input rows MKL's matrix product takes a kernel whose sums depend on the number
of output columns (measured with torch 2.9 / MKL 2024.2 on an AVX2 EPYC, any thread count: 1, 2,
3, 5, 6 and 7 rows with K >= 768 differ from the whole product in the last bit, 4 and 8 or more
never): :func:`linear_upcast` then casts the weight whole, so it stays bit-equal. Such products
(timestep embeddings, a batch's single rows) read few weights."""

_upcast_scratch: dict = {}


def _scratch(numel: int, device, dtype) -> torch.Tensor:
    key = (torch.device(device), dtype)
    buf = _upcast_scratch.get(key)
    if buf is None or buf.numel() < numel:
        # a normal tensor even when first needed inside torch.inference_mode: an inference tensor
        # could not be written to by a later call outside it
        with torch.inference_mode(False):
            buf = torch.empty(numel, device=device, dtype=dtype)
        _upcast_scratch[key] = buf
    return buf[:numel]


def _block_rows(n_out: int, k: int, compute: torch.dtype) -> int:
    """Weight rows (output channels) cast at a time: :data:`UPCAST_BLOCK_BYTES` of ``compute``
    values in a multiple of :data:`UPCAST_BLOCK_ROWS_MULTIPLE` rows, at least one multiple."""
    return min(n_out, max(UPCAST_BLOCK_ROWS_MULTIPLE, UPCAST_BLOCK_BYTES // (k * torch.finfo(compute).bits // 8)
                          // UPCAST_BLOCK_ROWS_MULTIPLE * UPCAST_BLOCK_ROWS_MULTIPLE))


def linear_upcast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  exact_small_rows: int | None = None) -> torch.Tensor:
    """``F.linear(x, weight.to(x.dtype), bias.to(x.dtype))``, the same numbers, for a weight
    stored narrower than ``x`` (bf16 / fp16 weights, float32 products: what ComfyUI's manual-cast
    layers compute on the CPU, ``comfy.ops.cast_bias_weight`` then ``F.linear``).

    The reading path is that one line. This is its fast alternative for few input rows on the
    CPU (a decoding language model, a short song's DiT step), where the product only streams the
    weight once and casting it whole first triples the memory traffic (read 16-bit, write and
    read back 32-bit) and allocates a float32 copy: the weight is cast in blocks of output rows
    into one reused scratch buffer and each block's product is written into its columns of the
    result. Each output element is the same dot product over the same ``K`` as the whole
    product's (``tests/test_ops.py`` checks bit equality), only the rows are visited in blocks.

    Fewer input rows than :data:`UPCAST_MIN_ROWS_OF_INPUT` take the whole cast, except exactly
    ``exact_small_rows`` rows: a caller that checked on this machine that blocks give the whole
    product's sums for its weight shapes and that row count (:func:`small_rows_blocks_exact`).
    """
    compute = x.dtype
    rows_of_input = x.numel() // max(1, x.shape[-1])
    # A strided x (a transposed activation) would be copied here, while F.linear hands its
    # strides to a product kernel that sums in another order: the whole cast keeps the numbers.
    if (weight.dtype == compute or x.device.type != "cpu" or weight.device != x.device or not x.is_contiguous()
            or rows_of_input > UPCAST_MAX_ROWS_OF_INPUT
            or (rows_of_input < UPCAST_MIN_ROWS_OF_INPUT and rows_of_input != exact_small_rows)):
        w = weight.to(device=x.device, dtype=compute)
        b = None if bias is None else bias.to(device=x.device, dtype=compute)
        return torch.nn.functional.linear(x, w, b)
    n_out, k = weight.shape
    rows = _block_rows(n_out, k, compute)
    x2 = x.reshape(-1, k)
    out = torch.empty(x2.shape[0], n_out, device=x.device, dtype=compute)
    scratch = _scratch(rows * k, x.device, compute)
    b = None if bias is None else bias.to(dtype=compute)
    for start in range(0, n_out, rows):
        end = min(n_out, start + rows)
        block = scratch[:(end - start) * k].view(end - start, k)
        block.copy_(weight[start:end])
        if b is None:
            out[:, start:end] = torch.mm(x2, block.t())
        else:
            out[:, start:end] = torch.addmm(b[start:end], x2, block.t())
    return out.view(*x.shape[:-1], n_out)


def conv1d_pointwise_upcast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv1d(x, weight.to(x.dtype), bias.to(x.dtype))`` for a 1x1 conv (``weight``
    ``[out, in, 1]``, no padding, stride, dilation or groups) whose weight is stored narrower than
    ``x`` ``[B, in, T]``: the same numbers (the reference model runs these convs, and a matrix
    product sums in another order), the weight cast in blocks of output channels into the scratch
    buffer of :func:`linear_upcast` and each block's conv written into its channels of the result.
    Each output channel is the same conv over the same input channels (bit-equal to the whole
    cast on the CPU, checked in the tests at the released widths). More than
    :data:`UPCAST_MAX_ROWS_OF_INPUT` frames in all, or anything but a plain CPU float32 ``x``,
    takes the whole cast (the conv is then bound by arithmetic, and a block of channels at many
    frames ran several times slower than the whole conv)."""
    compute = x.dtype
    n_out, k = weight.shape[0], weight.shape[1]
    frames = x.shape[0] * x.shape[-1]
    if (weight.dtype == compute or x.device.type != "cpu" or weight.device != x.device
            or frames > UPCAST_MAX_ROWS_OF_INPUT or weight.shape[-1] != 1):
        b = None if bias is None else bias.to(device=x.device, dtype=compute)
        return torch.nn.functional.conv1d(x, weight.to(device=x.device, dtype=compute), b)
    rows = _block_rows(n_out, k, compute)
    out = torch.empty(x.shape[0], n_out, x.shape[-1], device=x.device, dtype=compute)
    scratch = _scratch(rows * k, x.device, compute)
    b = None if bias is None else bias.to(dtype=compute)
    for start in range(0, n_out, rows):
        end = min(n_out, start + rows)
        block = scratch[:(end - start) * k].view(end - start, k, 1)
        block.copy_(weight[start:end])
        out[:, start:end] = torch.nn.functional.conv1d(x, block, None if b is None else b[start:end])
    return out


def small_rows_blocks_exact(shapes, rows_of_input: int, device="cpu", dtype=torch.float32) -> bool:
    """Whether :func:`linear_upcast` with ``rows_of_input`` rows (below
    :data:`UPCAST_MIN_ROWS_OF_INPUT`) gives ``F.linear``'s numbers on the whole cast weight, bit for
    bit, for every weight shape ``(n_out, k)`` in ``shapes``, on this machine: checked once on random
    values (the matrix-product library picks its small-row kernel by CPU; on some, the sums of a
    block of output columns differ from the whole product's in the last bit)."""
    g = torch.Generator().manual_seed(0)
    for n_out, k in sorted(set(shapes)):
        weight = torch.randn(n_out, k, generator=g).to(torch.bfloat16)
        x = torch.randn(rows_of_input, k, generator=g).to(device=device, dtype=dtype)
        weight = weight.to(device)
        if not torch.equal(linear_upcast(x, weight, exact_small_rows=rows_of_input),
                           torch.nn.functional.linear(x, weight.to(dtype))):
            return False
    return True
