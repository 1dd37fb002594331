"""Music DCAE: the deep-compression autoencoder between a normalised stereo log-mel image
[B, 2, 128, F] and the raw latent [B, 8, 16, F / 8] (8x down on both mel axes).

Architecture (diffusers ``AutoencoderDC`` as configured by ACE-Step; ComfyUI
comfy/ldm/ace/vae/autoencoder_dc.py), released sizes:

    encoder: conv_in 3x3 (2 -> 128)
             stage 0..2: ResBlocks, then a stride-2 conv down block (with pixel-unshuffle shortcut)
             stage 3   : EfficientViT blocks (ReLU linear attention + GLU MBConv)
             conv_out 3x3 (1024 -> 8) + channel-group-mean shortcut
    decoder: conv_in 3x3 (8 -> 1024) + channel-repeat shortcut
             stage 3 .. 0, each [nearest-2x up block (not stage 3)] + blocks
             RMSNorm -> ReLU -> conv_out 3x3 (128 -> 2)

Every norm is an RMSNorm over channels with a learnt bias. State-dict keys are those of
ComfyUI's module: ``encoder.down_blocks.{stage}.{i}...``, ``decoder.up_blocks.{stage}.{i}...``.
``encode``/``decode`` here are the bare encoder/decoder: the diffusers ``scaling_factor`` is not
used by ACE-Step (its latent scaling lives in acestep_core.codec).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as layer_ops
from ..config import ConfigError, DCAEConfig

RMS_EPS = 1e-5
ATTN_EPS = 1e-15     # keeps the linear-attention normaliser away from zero
GLU_EXPAND = 4       # GLUMBConv hidden width = 4 x channels


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learnt scale *and* bias: x / rms(x) * w + b."""

    def __init__(self, dim: int, eps: float = RMS_EPS, device=None, dtype=None, operations=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = layer_ops.cast_like(self.weight, x), layer_ops.cast_like(self.bias, x)
        if x.is_cuda:   # one fused kernel there; the general path below trades that for memory
            return F.rms_norm(x, x.shape[-1:], weight, self.eps).add_(bias)
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        # normed is a fresh tensor, so the affine part can update it in place (these maps are the
        # decoder's largest; one temporary fewer lowers its peak)
        return normed.mul_(weight).add_(bias)


def channel_rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply an RMSNorm over the channel axis of an NCHW tensor."""
    return norm(x.movedim(1, -1)).movedim(-1, 1)


class ResBlock(nn.Module):
    """x + RMSNorm(conv2(SiLU(conv1(x)))), both convs 3x3, conv2 without bias."""

    def __init__(self, channels: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        self.conv1 = ops.Conv2d(channels, channels, 3, padding=1, **kw)
        self.conv2 = ops.Conv2d(channels, channels, 3, padding=1, bias=False, **kw)
        self.norm = RMSNorm(channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.conv1(x)))
        return channel_rms_norm(self.norm, h).add_(x)


class MultiscaleProjection(nn.Module):
    """Local aggregation of the concatenated q|k|v maps: depthwise k x k conv, then a grouped
    1x1 conv mixing channels within each head (3 * heads groups of head_dim channels)."""

    def __init__(self, channels: int, groups: int, kernel_size: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        self.proj_in = ops.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                 bias=False, **kw)
        self.proj_out = ops.Conv2d(channels, channels, 1, groups=groups, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention (EfficientViT / Sana), returning the residual update.

    q, k, v come from per-pixel linear maps; each multiscale branch adds a locally aggregated
    copy of q|k|v. The stacked maps are cut into "heads" of 3 * head_dim consecutive channels,
    each split into q, k, v of head_dim channels (this grouping is what the weights were trained
    with). With phi = ReLU, attention over the N = H * W positions is

        out[:, n] = sum_m v[:, m] (phi(k_m) . phi(q_n)) / sum_m (phi(k_m) . phi(q_n))

    evaluated as (v k^T) q in O(N) when N > head_dim (in float32), else as the N x N matrix.
    """

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        if channels % head_dim:
            raise ConfigError(f"DCAE attention: {channels} channels are not a multiple of head dim {head_dim}")
        self.head_dim = head_dim
        heads = channels // head_dim
        inner = heads * head_dim
        self.to_q = ops.Linear(channels, inner, bias=False, **kw)
        self.to_k = ops.Linear(channels, inner, bias=False, **kw)
        self.to_v = ops.Linear(channels, inner, bias=False, **kw)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiscaleProjection(3 * inner, 3 * heads, k, **kw, operations=operations) for k in kernel_sizes)
        self.to_out = ops.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False, **kw)
        self.norm_out = RMSNorm(channels, **kw)

    @property
    def radius(self) -> int:
        """Pixels of context the q/k/v maps need on each side (the multiscale convs)."""
        return max((b.proj_in.kernel_size[0] // 2 for b in self.to_qkv_multiscale), default=0)

    def qkv_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked q|k|v maps and their multiscale copies, [B, 3 * inner * (1 + scales), H, W]."""
        xl = x.movedim(1, -1)
        qkv = torch.cat([self.to_q(xl), self.to_k(xl), self.to_v(xl)], dim=-1).movedim(-1, 1)
        return torch.cat([qkv] + [branch(qkv) for branch in self.to_qkv_multiscale], dim=1)

    def split_heads(self, maps: torch.Tensor, linear: bool):
        """q, k, v as [B, heads, head_dim, H * W], phi = ReLU applied to q and k; float32 for
        the linear form."""
        batch, _, height, width = maps.shape
        if linear:
            maps = maps.float()
        q, k, v = maps.reshape(batch, -1, 3 * self.head_dim, height * width).chunk(3, dim=2)
        return F.relu(q), F.relu(k), v

    @staticmethod
    def kv_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sum_m [v_m; 1] phi(k_m)^T: [B, h, d + 1, d]. A sum over positions, so it can be
        accumulated over pieces of a long input."""
        return F.pad(v, (0, 0, 0, 1), value=1.0) @ k.transpose(-1, -2)

    def finish(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        out = out.reshape(out.shape[0], -1, height, width)
        return self.norm_out(self.to_out(out.movedim(1, -1))).movedim(-1, 1)

    def read_state(self, q: torch.Tensor, state: torch.Tensor, dtype, height: int, width: int) -> torch.Tensor:
        """Linear-attention output for queries q given the accumulated state; the last row of
        state @ q is the normaliser sum_m phi(k_m) . phi(q_n)."""
        out = state @ q                                          # [B, h, d + 1, N]
        out = (out[:, :, :-1] / (out[:, :, -1:] + ATTN_EPS)).to(dtype)
        return self.finish(out, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        linear = height * width > self.head_dim
        q, k, v = self.split_heads(self.qkv_maps(x), linear)
        if linear:  # O(N), in float32
            return self.read_state(q, self.kv_state(k, v), x.dtype, height, width)
        scores = (k.transpose(-1, -2) @ q).float()               # [B, h, N(keys), N(queries)]
        scores = scores / (scores.sum(dim=2, keepdim=True) + ATTN_EPS)
        return self.finish(v @ scores.to(v.dtype), height, width)


class GLUMBConv(nn.Module):
    """Inverted-bottleneck conv with a GLU: 1x1 expand (x2 for the gate) -> SiLU -> depthwise 3x3
    -> value * SiLU(gate) -> 1x1 project (no bias) -> RMSNorm. Returns the residual update."""

    def __init__(self, channels: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        hidden = GLU_EXPAND * channels
        self.conv_inverted = ops.Conv2d(channels, 2 * hidden, 1, **kw)
        self.conv_depth = ops.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, **kw)
        self.conv_point = ops.Conv2d(hidden, channels, 1, bias=False, **kw)
        self.norm = RMSNorm(channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_depth(F.silu(self.conv_inverted(x)))
        value, gate = h.chunk(2, dim=1)
        return channel_rms_norm(self.norm, self.conv_point(value * F.silu(gate)))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple, device=None, dtype=None, operations=None):
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, kernel_sizes, device=device, dtype=dtype, operations=operations)
        self.conv_out = GLUMBConv(channels, device=device, dtype=dtype, operations=operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.conv_out(x)


class DownBlock(nn.Module):
    """Stride-2 3x3 conv (c_in -> c_out) plus a parameter-free shortcut: pixel-unshuffle by 2
    (4 c_in channels) and average consecutive groups of 4 c_in / c_out channels."""

    def __init__(self, c_in: int, c_out: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        if (4 * c_in) % c_out:
            raise ConfigError(f"DCAE down block {c_in} -> {c_out}: 4 * {c_in} is not a multiple of {c_out}")
        self.group = 4 * c_in // c_out
        self.conv = ops.Conv2d(c_in, c_out, 3, stride=2, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pixel_unshuffle(x, 2).unflatten(1, (-1, self.group)).mean(dim=2)
        return self.conv(x) + shortcut


class UpBlock(nn.Module):
    """Nearest 2x upsample then 3x3 conv (c_in -> c_out), plus a parameter-free shortcut:
    repeat every channel 4 c_out / c_in times, then pixel-shuffle by 2."""

    def __init__(self, c_in: int, c_out: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        if (4 * c_out) % c_in:
            raise ConfigError(f"DCAE up block {c_in} -> {c_out}: 4 * {c_out} is not a multiple of {c_in}")
        self.repeats = 4 * c_out // c_in
        self.conv = ops.Conv2d(c_in, c_out, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The conv first, so its 4x larger upsampled input is freed before the shortcut exists.
        out = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return out.add_(F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2))


def _make_block(kind: str, channels: int, head_dim: int, kernel_sizes: tuple, device, dtype, operations) -> nn.Module:
    if kind == "ResBlock":
        return ResBlock(channels, device=device, dtype=dtype, operations=operations)
    if kind == "EfficientViTBlock":
        return EfficientViTBlock(channels, head_dim, tuple(kernel_sizes), device=device, dtype=dtype,
                                 operations=operations)
    raise ConfigError(f"unknown DCAE block type {kind!r} (expected ResBlock or EfficientViTBlock)")


# ---------------------------------------------------------------------------------------------
# Piecewise evaluation along time (the last axis), exact up to float reassociation
# ---------------------------------------------------------------------------------------------
def _pieces(width: int, chunk: int, radius: int):
    """(lo, hi, start, end): piece [start, end) of the time axis, read with `radius` columns of
    context on each side ([lo, hi), clipped to the tensor)."""
    for start in range(0, width, chunk):
        end = min(start + chunk, width)
        yield max(0, start - radius), min(width, end + radius), start, end


def map_local(fn, x: torch.Tensor, radius: int, chunk: int) -> torch.Tensor:
    """fn(x) computed piece by piece along time. fn must keep the width and see at most
    `radius` columns on each side of an output column (a stack of convs); the context columns
    absorb fn's zero padding at the piece edges and are cropped away, so the result equals
    fn(x)."""
    width = x.shape[-1]
    if width <= chunk:
        return fn(x)
    out = None
    for lo, hi, start, end in _pieces(width, chunk, radius):
        piece = fn(x[..., lo:hi])[..., start - lo:end - lo]
        if out is None:
            out = piece.new_empty(*piece.shape[:-1], width)
        out[..., start:end] = piece
    return out


def _vit_block_piecewise(block: EfficientViTBlock, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """An EfficientViT block over a long input without materialising its wide intermediates.
    Linear attention only couples positions through the [d + 1, d] state sum_m [v_m; 1] k_m^T,
    so a first pass accumulates the state piece by piece and a second applies it per piece."""
    attn = block.attn
    height, width = x.shape[-2:]
    if height * width <= attn.head_dim or width <= chunk:   # the quadratic form, or one piece
        return block(x)
    pieces = list(_pieces(width, chunk, attn.radius))
    state = 0
    for lo, hi, start, end in pieces:
        _, k, v = attn.split_heads(attn.qkv_maps(x[..., lo:hi])[..., start - lo:end - lo], linear=True)
        state = state + attn.kv_state(k, v)
    out = torch.empty_like(x)
    for lo, hi, start, end in pieces:
        q, _, _ = attn.split_heads(attn.qkv_maps(x[..., lo:hi])[..., start - lo:end - lo], linear=True)
        out[..., start:end] = x[..., start:end] + attn.read_state(q, state, x.dtype, height, end - start)
    x = out
    return map_local(lambda t: t + block.conv_out(t), x, 1, chunk)


def run_stage(stage: nn.Sequential, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Run a stage's blocks, piecewise along time when `chunk` is given (same result)."""
    if chunk is None:
        return stage(x)
    for block in stage:
        if isinstance(block, EfficientViTBlock):
            x = _vit_block_piecewise(block, x, chunk)
        elif isinstance(block, ResBlock):
            x = map_local(block, x, 2, chunk)
        else:
            raise TypeError(f"cannot run {type(block).__name__} piecewise")
    return x


# ---------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------
# Each is split at the latent resolution: `local_part` covers the higher-resolution stages
# (convolutions only in the ACE-Step layout, so a time window of it only needs a few latent
# frames of context), `latent_part` the deepest stage, whose linear attention sees the whole
# song; `latent_part(..., chunk=n)` evaluates it n frames at a time with the same result.
class Encoder(nn.Module):
    def __init__(self, config: DCAEConfig, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        chans = config.encoder_block_out_channels
        self.conv_in = ops.Conv2d(config.in_channels, chans[0], 3, padding=1, **kw)
        stages = []
        for i, (c, n) in enumerate(zip(chans, config.encoder_layers_per_block)):
            layers = [_make_block(config.encoder_block_types[i], c, config.attention_head_dim,
                                  config.encoder_qkv_multiscales[i], device, dtype, operations) for _ in range(n)]
            if i + 1 < len(chans):
                layers.append(DownBlock(c, chans[i + 1], **kw, operations=operations))
            stages.append(nn.Sequential(*layers))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = ops.Conv2d(chans[-1], config.latent_channels, 3, padding=1, **kw)
        if chans[-1] % config.latent_channels:
            raise ConfigError("DCAE: last encoder width is not a multiple of the latent channels")
        self.out_group = chans[-1] // config.latent_channels

    def local_part(self, mel: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        """mel [B, 2, 128, F] -> features at latent resolution [B, C, 16, F / 8]; ``check()``
        after every block (an exception it raises, e.g. an interrupt, stops the encoder)."""
        x = self.conv_in(mel)
        for stage in self.down_blocks[:-1]:
            x = _run_checked(stage, x, check)
        return x

    def latent_part(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        x = run_stage(self.down_blocks[-1], x, chunk)
        # Shortcut: mean of each group of consecutive channels, one group per latent channel.
        return self.conv_out(x) + x.unflatten(1, (-1, self.out_group)).mean(dim=2)

    def forward(self, mel: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        return self.latent_part(self.local_part(mel, check))


class Decoder(nn.Module):
    def __init__(self, config: DCAEConfig, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        chans = config.decoder_block_out_channels
        self.conv_in = ops.Conv2d(config.latent_channels, chans[-1], 3, padding=1, **kw)
        if chans[-1] % config.latent_channels:
            raise ConfigError("DCAE: last decoder width is not a multiple of the latent channels")
        self.in_repeats = chans[-1] // config.latent_channels
        stages = []
        for i, (c, n) in enumerate(zip(chans, config.decoder_layers_per_block)):
            layers = [UpBlock(chans[i + 1], c, **kw, operations=operations)] if i + 1 < len(chans) else []
            layers += [_make_block(config.decoder_block_types[i], c, config.attention_head_dim,
                                   config.decoder_qkv_multiscales[i], device, dtype, operations) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.up_blocks = nn.ModuleList(stages)   # indexed by stage; run from the deepest one
        self.norm_out = RMSNorm(chans[0], **kw)
        self.conv_out = ops.Conv2d(chans[0], config.in_channels, 3, padding=1, **kw)

    def latent_part(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """raw latent [B, 8, 16, T] -> deepest-stage features [B, C, 16, T]."""
        # Shortcut: every latent channel repeated over its group of feature channels.
        embed = lambda t: self.conv_in(t) + t.repeat_interleave(self.in_repeats, dim=1)  # noqa: E731
        x = embed(z) if chunk is None else map_local(embed, z, 1, chunk)
        return run_stage(self.up_blocks[-1], x, chunk)

    def local_part(self, x: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        """deepest-stage features [B, C, 16, T] -> normalised mel [B, 2, 128, 8 T]; ``check()``
        after every block, as in Encoder.local_part."""
        # Channels-last: the convolution kernels work on it natively (NCHW costs each conv a
        # blocked-layout copy of its input and output, the largest tensors of the decode) and
        # the channel RMSNorms read it without a transpose.
        x = x.contiguous(memory_format=torch.channels_last)
        for stage in reversed(self.up_blocks[:-1]):
            x = _run_checked(stage, x, check)
        return self.conv_out(F.relu(channel_rms_norm(self.norm_out, x)))

    def forward(self, z: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        return self.local_part(self.latent_part(z), check)


def _run_checked(stage: nn.Sequential, x: torch.Tensor, check) -> torch.Tensor:
    for block in stage:
        x = block(x)
        if check is not None:
            check()
    return x


class DCAE(nn.Module):
    """Normalised log-mel [B, 2, 128, F] <-> raw latent [B, 8, 16, F / 8]."""

    def __init__(self, config: DCAEConfig, device=None, dtype=None, operations=None):
        super().__init__()
        _check_config(config)
        self.config = config
        self.compute_dtype: torch.dtype | None = None   # see AceStepTransformer
        self.encoder = Encoder(config, device=device, dtype=dtype, operations=operations)
        self.decoder = Decoder(config, device=device, dtype=dtype, operations=operations)

    @property
    def downsample(self) -> int:
        """Compression of both mel axes (8)."""
        return 2 ** (len(self.config.encoder_block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype: ``compute_dtype`` if set, else the weights' dtype."""
        return self.compute_dtype or self.encoder.conv_in.weight.dtype

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)


def _check_config(config: DCAEConfig) -> None:
    for side in ("encoder", "decoder"):
        n = len(getattr(config, f"{side}_block_out_channels"))
        for field in ("block_types", "layers_per_block", "qkv_multiscales"):
            if len(getattr(config, f"{side}_{field}")) != n:
                raise ConfigError(f"DCAE config: {side}_{field} must have one entry per stage ({n})")
        if any(n_layers < 1 for n_layers in getattr(config, f"{side}_layers_per_block")):
            raise ConfigError(f"DCAE config: every {side} stage needs at least one block")


# ---------------------------------------------------------------------------------------------
# Config from tensor shapes
# ---------------------------------------------------------------------------------------------
def _stage_blocks(shapes, prefix: str) -> dict[int, dict[int, str]]:
    """{stage: {index: kind}} for keys under ``prefix`` ("encoder.down_blocks" ...), where kind
    is "ResBlock", "EfficientViTBlock" or "resample" (a down/up block)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(\d+)\.(conv1|attn|conv)\.")
    stages: dict[int, dict[int, str]] = {}
    for key in shapes:
        m = pattern.match(key)
        if m:
            kind = {"conv1": "ResBlock", "attn": "EfficientViTBlock", "conv": "resample"}[m.group(3)]
            stages.setdefault(int(m.group(1)), {})[int(m.group(2))] = kind
    return stages


def _read_side(shapes, side: str, base: DCAEConfig):
    container = "down_blocks" if side == "encoder" else "up_blocks"
    stages = _stage_blocks(shapes, f"{side}.{container}")
    if not stages or sorted(stages) != list(range(len(stages))):
        raise ConfigError(f"no contiguous {side}.{container}.<stage> keys (got stages {sorted(stages)})")
    base_scales = getattr(base, f"{side}_qkv_multiscales")
    kinds, layers, chans, scales, head_dims = [], [], [], [], set()
    for s in range(len(stages)):
        blocks = {i: k for i, k in stages[s].items() if k != "resample"}
        if not blocks:
            raise ConfigError(f"{side} stage {s} has no ResBlock or EfficientViT blocks")
        stage_kinds = set(blocks.values())
        if len(stage_kinds) > 1:
            raise ConfigError(f"{side} stage {s} mixes block types {sorted(stage_kinds)}")
        kind = stage_kinds.pop()
        first = min(blocks)
        p = f"{side}.{container}.{s}.{first}"
        if kind == "ResBlock":
            chans.append(shapes[f"{p}.conv1.weight"][0])
            # Multiscale kernels are unused by ResBlock stages; keep the base value if it fits.
            scales.append(tuple(base_scales[s]) if len(base_scales) == len(stages) else ())
        else:
            chans.append(shapes[f"{p}.attn.to_q.weight"][1])
            ks, m = [], 0
            while f"{p}.attn.to_qkv_multiscale.{m}.proj_in.weight" in shapes:
                ks.append(shapes[f"{p}.attn.to_qkv_multiscale.{m}.proj_in.weight"][-1])
                head_dims.add(shapes[f"{p}.attn.to_qkv_multiscale.{m}.proj_out.weight"][1])
                m += 1
            scales.append(tuple(ks))
        kinds.append(kind)
        layers.append(len(blocks))
    return tuple(kinds), tuple(layers), tuple(chans), tuple(scales), head_dims


def infer_dcae_config(shapes, json_config: dict | None = None) -> DCAEConfig:
    """DCAEConfig from state-dict shapes (keys ``encoder.*``/``decoder.*``), starting from the
    ``music_dcae_f8c8/config.json`` values when given."""
    base = DCAEConfig.from_json_dict(json_config) if json_config else DCAEConfig.released()
    for key in ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight",
                "decoder.conv_out.weight"):
        if key not in shapes:
            raise ConfigError(f"DCAE weights lack {key!r}")
    e_kinds, e_layers, e_chans, e_scales, e_heads = _read_side(shapes, "encoder", base)
    d_kinds, d_layers, d_chans, d_scales, d_heads = _read_side(shapes, "decoder", base)
    head_dims = e_heads | d_heads
    if len(head_dims) > 1:
        raise ConfigError(f"DCAE attention head sizes disagree: {sorted(head_dims)}")
    return dataclasses.replace(
        base,
        in_channels=shapes["encoder.conv_in.weight"][1],
        latent_channels=shapes["encoder.conv_out.weight"][0],
        attention_head_dim=head_dims.pop() if head_dims else base.attention_head_dim,
        encoder_block_types=e_kinds, decoder_block_types=d_kinds,
        encoder_block_out_channels=e_chans, decoder_block_out_channels=d_chans,
        encoder_layers_per_block=e_layers, decoder_layers_per_block=d_layers,
        encoder_qkv_multiscales=e_scales, decoder_qkv_multiscales=d_scales)
