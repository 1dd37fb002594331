"""ACE-Step vocoder ("ADaMoS HiFi-GAN V1"): log-mel [N, 128, F] -> waveform [N, 1, 512 F] at 44.1 kHz.

    backbone: ConvNeXt-1D encoder over mel frames (4 stages, widths 128/256/384/512)
    head:     HiFi-GAN generator: conv_pre, 7 transposed-conv upsamplings (x4 x4 x2 x2 x2 x2 x2 =
              512 = hop), each followed by the mean of 4 multi-dilation residual blocks; SiLU
              activations throughout; conv_post -> tanh
    mel_transform: the log-mel front end used to encode audio (acestep_core.models.mel)

References: ACE-Step music_vocoder.py, ComfyUI comfy/ldm/ace/vae/music_vocoder.py.

Every HiFi-GAN conv is weight-normalised and stored as ``<conv>.weight_g`` (magnitude) and
``<conv>.weight_v`` (direction) with ``W = g * v / ||v||``, the norm over every axis but 0. For a
ConvTranspose1d axis 0 is the *input* channel axis, so its g is [in, 1, 1].
``canonical_vocoder_keys`` maps PyTorch's parametrization spelling to these names.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as layer_ops
from ..config import ConfigError, VocoderConfig
from .mel import LogMelSpectrogram

LN_EPS = 1e-6
CONVNEXT_MLP_RATIO = 4


# ---------------------------------------------------------------------------------------------
# ConvNeXt backbone
# ---------------------------------------------------------------------------------------------
class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over axis 1 of [N, C, L]: (x - mean) / sqrt(var + eps) * w + b."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + LN_EPS)
        return layer_ops.cast_like(self.weight, x)[:, None] * x + layer_ops.cast_like(self.bias, x)[:, None]


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LayerNorm(depthwise_conv(x))), the MLP acting per frame on channels."""

    def __init__(self, dim: int, kernel_size: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        self.dwconv = ops.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim, **kw)
        self.norm = ops.LayerNorm(dim, eps=LN_EPS, **kw)
        self.pwconv1 = ops.Linear(dim, CONVNEXT_MLP_RATIO * dim, **kw)
        self.pwconv2 = ops.Linear(CONVNEXT_MLP_RATIO * dim, dim, **kw)
        self.gamma = nn.Parameter(torch.empty(dim, **kw))   # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)                     # [N, L, C]
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (layer_ops.cast_like(self.gamma, h) * h).transpose(1, 2)


class ConvNeXtEncoder(nn.Module):
    def __init__(self, config: VocoderConfig, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        dims = config.dims
        # channel_layers[s] changes the width before stage s: a stem conv for s = 0, then
        # LayerNorm + 1x1 conv between stages.
        stem = nn.Sequential(
            ops.Conv1d(config.input_channels, dims[0], 7, padding=3, padding_mode="replicate", **kw),
            ChannelsFirstLayerNorm(dims[0], **kw))
        transitions = [nn.Sequential(ChannelsFirstLayerNorm(dims[s - 1], **kw), ops.Conv1d(dims[s - 1], dims[s], 1, **kw))
                       for s in range(1, len(dims))]
        self.channel_layers = nn.ModuleList([stem] + transitions)
        (kernel,) = config.kernel_sizes
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(d, kernel, **kw, operations=operations) for _ in range(depth)])
            for d, depth in zip(dims, config.depths))
        self.norm = ChannelsFirstLayerNorm(dims[-1], **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for widen, stage in zip(self.channel_layers, self.stages):
            x = stage(widen(x))
        return self.norm(x)


# ---------------------------------------------------------------------------------------------
# Weight-normalised convolutions (legacy weight_g / weight_v parameters)
# ---------------------------------------------------------------------------------------------
def weight_norm_weight(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W = g * v / ||v||, the norm of v taken over every axis except 0 (per slice v[i])."""
    norm = torch.linalg.vector_norm(v.float(), dim=tuple(range(1, v.ndim)), keepdim=True)
    return v.float() * (g.float() / norm)


class WNConv1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.dilation = dilation
        self.padding = dilation * (kernel_size - 1) // 2      # "same" length
        self.weight_g = nn.Parameter(torch.empty(c_out, 1, 1, **kw))
        self.weight_v = nn.Parameter(torch.empty(c_out, c_in, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(c_out, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = layer_ops.cast_like(weight_norm_weight(self.weight_g, self.weight_v), x)
        return F.conv1d(x, w, layer_ops.cast_like(self.bias, x), padding=self.padding, dilation=self.dilation)


class WNConvTranspose1d(nn.Module):
    """Upsamples length by ``stride`` exactly (padding (k - stride) / 2, k - stride even)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.stride = stride
        self.padding = (kernel_size - stride) // 2
        self.weight_g = nn.Parameter(torch.empty(c_in, 1, 1, **kw))   # axis 0 of [in, out, k]
        self.weight_v = nn.Parameter(torch.empty(c_in, c_out, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(c_out, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = layer_ops.cast_like(weight_norm_weight(self.weight_g, self.weight_v), x)
        return F.conv_transpose1d(x, w, layer_ops.cast_like(self.bias, x), stride=self.stride, padding=self.padding)


# ---------------------------------------------------------------------------------------------
# HiFi-GAN head
# ---------------------------------------------------------------------------------------------
class ResBlock1(nn.Module):
    """For each dilation d: x = x + conv2(SiLU(conv1_d(SiLU(x)))), conv2 undilated."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, kernel_size, d, **kw) for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel_size, 1, **kw) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.silu(conv1(F.silu(x))))
        return x


class HiFiGANHead(nn.Module):
    def __init__(self, config: VocoderConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        c0 = config.upsample_initial_channel
        self.conv_pre = WNConv1d(config.num_mels, c0, config.pre_conv_kernel_size, **kw)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, r, **kw)
            for i, (r, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)))
        # resblocks[i * n_kernels + j]: kernel j after upsampling i
        self.n_kernels = len(config.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            ResBlock1(c0 // 2 ** (i + 1), k, tuple(d), **kw)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        self.conv_post = WNConv1d(c0 // 2 ** len(self.ups), 1, config.post_conv_kernel_size, **kw)

    def forward(self, x: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        """``check()`` is called after every upsampling and residual block (the long steps of a
        long window); an exception it raises (an interrupt) stops the vocoder there."""
        check = check or _nothing
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            check()
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            total = blocks[0](x)
            check()
            for block in blocks[1:]:
                total = total + block(x)
                check()
            x = total / self.n_kernels
        return torch.tanh(self.conv_post(F.silu(x)))


def _nothing() -> None:
    pass


# ---------------------------------------------------------------------------------------------
# The vocoder
# ---------------------------------------------------------------------------------------------
class Vocoder(nn.Module):
    # Buffers that are functions of the config: a checkpoint may omit them.
    recomputable_buffers = ("mel_transform.spectrogram.window", "mel_transform.mel_scale.fb")

    def __init__(self, config: VocoderConfig, device=None, dtype=None, operations=None):
        super().__init__()
        if math.prod(config.upsample_rates) != config.hop_length:
            raise ConfigError(f"vocoder upsample rates {config.upsample_rates} do not multiply to the hop "
                              f"length {config.hop_length}")
        if config.dims[-1] != config.num_mels:
            raise ConfigError(f"vocoder: backbone width {config.dims[-1]} != head input {config.num_mels}")
        self.config = config
        self.compute_dtype: torch.dtype | None = None   # see AceStepTransformer
        self.backbone = ConvNeXtEncoder(config, device=device, dtype=dtype, operations=operations)
        self.head = HiFiGANHead(config, device=device, dtype=dtype)
        # The front end always keeps its buffers in float32 (dtype is not passed on).
        self.mel_transform = LogMelSpectrogram(config.sampling_rate, config.n_fft, config.win_length,
                                               config.hop_length, config.n_mels, config.f_min, config.f_max,
                                               device=device)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype: ``compute_dtype`` if set, else the weights' dtype."""
        return self.compute_dtype or self.head.conv_pre.weight_v.dtype

    def materialize_buffers(self, device=None) -> None:
        """(Re)compute the window and filterbank in float32 when they are missing (still on the
        meta device after loading) or were loaded in a reduced precision."""
        for module in (self.mel_transform.spectrogram, self.mel_transform.mel_scale):
            buf = module.window if hasattr(module, "window") else module.fb
            if buf.is_meta or buf.dtype != torch.float32:
                module.materialize_(device if buf.is_meta else buf.device)

    def decode(self, mel: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        """log-mel [N, n_mels, F] -> waveform [N, 1, F * hop] in the module dtype; ``check`` as
        in HiFiGANHead.forward."""
        return self.head(self.backbone(mel.to(self.dtype)), check)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """waveform [N, S] -> log-mel [N, n_mels, S // hop], float32."""
        return self.mel_transform(wave)

    forward = decode


_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")


def canonical_vocoder_keys(state_dict: dict) -> dict:
    """Rename ``<conv>.parametrizations.weight.original0/1`` (torch parametrized weight norm) to
    ``<conv>.weight_g/weight_v``; other keys pass through. Works on tensors or shape tuples."""
    out = {}
    for key, value in state_dict.items():
        m = _PARAMETRIZED.match(key)
        if m:
            key = f"{m.group(1)}.weight_{'g' if m.group(2) == '0' else 'v'}"
        out[key] = value
    return out


def _count(shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def infer_vocoder_config(shapes, json_config: dict | None = None) -> VocoderConfig:
    """VocoderConfig from state-dict shapes (canonical keys; the parametrization spelling is
    accepted too), starting from ``music_vocoder/config.json`` values when given. Strides and
    dilations are not visible in shapes: they keep the base values when the layer counts agree."""
    shapes = canonical_vocoder_keys(dict(shapes))
    base = VocoderConfig.from_json_dict(json_config) if json_config else VocoderConfig.released()
    for key in ("backbone.channel_layers.0.0.weight", "head.conv_pre.weight_v", "head.conv_post.weight_v",
                "head.ups.0.weight_v", "head.resblocks.0.convs1.0.weight_v"):
        if key not in shapes:
            raise ConfigError(f"vocoder weights lack {key!r}")
    if any(".blocks." in k for k in shapes if k.startswith("backbone.stages.")):
        raise ConfigError("vocoder backbone with parallel ConvNeXt kernels is not supported")

    n_stages = _count(shapes, r"^backbone\.channel_layers\.(\d+)\.")
    stem = shapes["backbone.channel_layers.0.0.weight"]
    dims = (stem[0],) + tuple(shapes[f"backbone.channel_layers.{s}.1.weight"][0] for s in range(1, n_stages))
    depths = tuple(_count(shapes, rf"^backbone\.stages\.{s}\.(\d+)\.") for s in range(n_stages))
    if any(d == 0 for d in depths):
        raise ConfigError(f"vocoder backbone stage without blocks (depths {depths})")

    pre = shapes["head.conv_pre.weight_v"]
    n_ups = _count(shapes, r"^head\.ups\.(\d+)\.")
    up_kernels = tuple(shapes[f"head.ups.{u}.weight_v"][2] for u in range(n_ups))
    if len(base.upsample_rates) == n_ups:
        rates = tuple(base.upsample_rates)
    else:  # the usual HiFi-GAN choice kernel = 2 x stride
        rates = tuple(k // 2 for k in up_kernels)
    n_res = _count(shapes, r"^head\.resblocks\.(\d+)\.")
    if n_res % n_ups:
        raise ConfigError(f"vocoder: {n_res} resblocks do not divide into {n_ups} upsampling stages")
    n_kernels = n_res // n_ups
    res_kernels = tuple(shapes[f"head.resblocks.{j}.convs1.0.weight_v"][2] for j in range(n_kernels))
    dilations = []
    for j in range(n_kernels):
        n_dil = _count(shapes, rf"^head\.resblocks\.{j}\.convs1\.(\d+)\.")
        if j < len(base.resblock_dilation_sizes) and len(base.resblock_dilation_sizes[j]) == n_dil:
            dilations.append(tuple(base.resblock_dilation_sizes[j]))
        else:
            dilations.append(tuple(2 * i + 1 for i in range(n_dil)))   # 1, 3, 5, ...

    updates = dict(
        input_channels=stem[1], dims=dims, depths=depths,
        kernel_sizes=(shapes["backbone.stages.0.0.dwconv.weight"][-1],),
        num_mels=pre[1], upsample_initial_channel=pre[0], pre_conv_kernel_size=pre[2],
        upsample_rates=rates, upsample_kernel_sizes=up_kernels,
        resblock_kernel_sizes=res_kernels, resblock_dilation_sizes=tuple(dilations),
        post_conv_kernel_size=shapes["head.conv_post.weight_v"][2])
    if "mel_transform.mel_scale.fb" in shapes:
        n_freqs, n_mels = shapes["mel_transform.mel_scale.fb"]
        updates.update(n_mels=n_mels, n_fft=2 * (n_freqs - 1))
    if "mel_transform.spectrogram.window" in shapes:
        updates["win_length"] = shapes["mel_transform.spectrogram.window"][0]
    if math.prod(rates) != base.hop_length:
        raise ConfigError(f"vocoder upsample rates {rates} do not multiply to the hop length {base.hop_length}")
    return dataclasses.replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in updates.items()})
