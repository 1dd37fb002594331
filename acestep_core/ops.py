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


def cast_like(tensor: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``like``'s device in ``dtype`` (default: ``like``'s); the tensor itself, not a
    copy, when it is already there."""
    return tensor.to(device=like.device, dtype=like.dtype if dtype is None else dtype)
