"""ACE-Step 1.5's audio VAE: the Oobleck autoencoder (48 kHz stereo <-> 64-channel latent at 25 Hz).

Architecture as ComfyUI 0.20.1 builds it (``comfy/ldm/audio/autoencoder.py``, ``AudioOobleckVAE``
with ``strides=[2, 4, 4, 6, 10]`` chosen in ``comfy/sd.py``, ``VAE.__init__``) and as diffusers'
``AutoencoderOobleck`` (the official code's class) computes it:

    encoder: WNConv(2 -> C, k7) -> blocks [3 residual units (dilation 1, 3, 9) -> Snake ->
             WNConv(k = 2s, stride s)] -> Snake -> WNConv(-> 2 * latent, k3)
    bottleneck: mean, scale = chunk(2); latent = mean + (softplus(scale) + 1e-4) * noise
    decoder: WNConv(latent -> C * 16, k7) -> blocks [Snake -> WNConvTranspose(k = 2s, stride s)
             -> 3 residual units] -> Snake -> WNConv(-> 2, k7, no bias); no tanh

Snake is SnakeBeta with log-scale parameters: ``x + sin(x * e^alpha)^2 / (e^beta + 1e-9)``.

Weight-norm convolutions are ``ops.Conv1d`` / ``ops.ConvTranspose1d`` under
``torch.nn.utils.parametrizations.weight_norm``, so the state dict has ComfyUI's key names
(``*.parametrizations.weight.original0`` = g, ``original1`` = v). :func:`canonical_vae_keys`
maps the other released spellings onto them: old-style ``weight_g`` / ``weight_v`` and the
official ``vae/`` folder's diffusers layout (``encoder.block.N.res_unitK.conv1`` ...).

Every size (channels, strides, latent width) is read from tensor shapes, so the released VAE and
tiny test VAEs go through one code path.

Windowing. The network is purely convolutional with a receptive field of a few latent frames
(measured by ``tests/test_ace15_vae.py``), so long audio is processed in overlapping windows of
latent frames and the peak activation memory is set by the window, not by the song. Decode
stitches windows with the v1 codec's centred cross-fade (``acestep_core.codec``); encode cuts
each overlap at its middle before the bottleneck, then samples the whole latent at once, so a
windowed encode draws exactly the noise of a one-piece encode.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import ops as ops_module
from ..codec import DEFAULT_OVERLAP_FRAMES, add_faded, plan_windows, seam_spans, window_frames_for_budget
from ..config import ConfigError

ProgressFn = Callable[[int, int], None]

SAMPLE_RATE = 48000
LATENT_CHANNELS = 64
AUDIO_CHANNELS = 2

# Peak activation memory of a one-piece decode per latent frame at the released sizes (float32):
# measured 3.9 MiB per frame on the CPU (slope of the peak RSS between 60 and 250 frames, 2-core,
# torch 2.9.1), on top of ~260 MiB that does not grow with length (the weight-normalised kernels of
# the widest layers). Rounded up for kernel workspaces; the encoder is assumed alike.
DECODE_BYTES_PER_FRAME = 6 << 20      # 6 MiB
ENCODE_BYTES_PER_FRAME = 6 << 20
CPU_WINDOW_BUDGET = 2 << 30           # 2 GiB of activations on the CPU: ~340 frames (13.6 s)
CUDA_FREE_MEMORY_SHARE = 0.5
OVERLAP_FRAMES = 32                   # receptive field: 9 frames each way (decoder), 7 (encoder)
_DEFAULT = object()


@dataclass(frozen=True)
class OobleckConfig:
    """Sizes of the Oobleck VAE; ``released()`` is ACE-Step 1.5's ``ace_1.5_vae``."""

    audio_channels: int = AUDIO_CHANNELS
    channels: int = 128
    c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 6, 10)
    latent_channels: int = LATENT_CHANNELS

    @property
    def hop(self) -> int:
        """Audio samples per latent frame (1920 for the released VAE)."""
        return math.prod(self.strides)

    @classmethod
    def released(cls) -> "OobleckConfig":
        return cls()


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class SnakeBeta(nn.Module):
    """``x + sin(x * e^alpha)^2 / (e^beta + 1e-9)`` per channel (alpha, beta stored as logs)."""

    def __init__(self, channels: int, dtype=None, device=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))
        self.beta = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(device=x.device, dtype=x.dtype).exp()[:, None]
        inv_beta = 1.0 / (self.beta.to(device=x.device, dtype=x.dtype).exp() + 1e-9)[:, None]
        # sin(x * a)^2 * (1 / b) + x, with one temporary the size of x.
        y = torch.mul(x, alpha)
        y.sin_().square_().mul_(inv_beta).add_(x)
        return y


def _weight_norm(layer: nn.Module) -> nn.Module:
    # torch's parametrization keeps g and v as parameters and recomputes g * v / |v| when the
    # layer (or anything else) reads .weight, so ops classes that read their weight in forward
    # (ComfyUI's cast_bias_weight included) see the normalised weight.
    return torch.nn.utils.parametrizations.weight_norm(layer)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, ops, dtype=None, device=None):
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(channels, dtype=dtype, device=device),
            _weight_norm(ops.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation,
                                    dtype=dtype, device=device)),
            SnakeBeta(channels, dtype=dtype, device=device),
            _weight_norm(ops.Conv1d(channels, channels, kernel_size=1, dtype=dtype, device=device)),
        )

    def forward(self, x):
        return self.layers(x) + x


def _blocks_dilations():
    return (1, 3, 9)


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, ops, dtype=None, device=None):
        super().__init__()
        self.layers = nn.Sequential(
            *[ResidualUnit(in_channels, d, ops, dtype, device) for d in _blocks_dilations()],
            SnakeBeta(in_channels, dtype=dtype, device=device),
            _weight_norm(ops.Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                                    padding=math.ceil(stride / 2), dtype=dtype, device=device)),
        )

    def forward(self, x):
        return self.layers(x)


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, ops, dtype=None, device=None):
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(in_channels, dtype=dtype, device=device),
            _weight_norm(ops.ConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride,
                                             padding=math.ceil(stride / 2), dtype=dtype, device=device)),
            *[ResidualUnit(out_channels, d, ops, dtype, device) for d in _blocks_dilations()],
        )

    def forward(self, x):
        return self.layers(x)


def run_layers(stack: nn.Module, x: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
    """``stack.layers`` in order, calling ``check()`` after each (a ComfyUI interrupt check raises
    there, so Cancel stops inside a long window)."""
    for layer in stack.layers:
        x = layer(x)
        if check is not None:
            check()
    return x


class OobleckEncoder(nn.Module):
    def __init__(self, config: OobleckConfig, ops, dtype=None, device=None):
        super().__init__()
        widths = [config.channels * m for m in (1,) + tuple(config.c_mults)]
        layers = [_weight_norm(ops.Conv1d(config.audio_channels, widths[0], kernel_size=7, padding=3,
                                          dtype=dtype, device=device))]
        for i, stride in enumerate(config.strides):
            layers.append(EncoderBlock(widths[i], widths[i + 1], stride, ops, dtype, device))
        layers += [SnakeBeta(widths[-1], dtype=dtype, device=device),
                   _weight_norm(ops.Conv1d(widths[-1], 2 * config.latent_channels, kernel_size=3, padding=1,
                                           dtype=dtype, device=device))]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class OobleckDecoder(nn.Module):
    def __init__(self, config: OobleckConfig, ops, dtype=None, device=None):
        super().__init__()
        widths = [config.channels * m for m in (1,) + tuple(config.c_mults)]
        layers = [_weight_norm(ops.Conv1d(config.latent_channels, widths[-1], kernel_size=7, padding=3,
                                          dtype=dtype, device=device))]
        for i in range(len(config.strides), 0, -1):
            layers.append(DecoderBlock(widths[i], widths[i - 1], config.strides[i - 1], ops, dtype, device))
        layers += [SnakeBeta(widths[0], dtype=dtype, device=device),
                   _weight_norm(ops.Conv1d(widths[0], config.audio_channels, kernel_size=7, padding=3, bias=False,
                                           dtype=dtype, device=device))]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class OobleckVAE(nn.Module):
    """The network: ``encoder`` (audio -> mean ‖ scale) and ``decoder`` (latent -> audio).
    :class:`AudioCodec15` wraps it with the bottleneck, windowing and progress."""

    def __init__(self, config: OobleckConfig | None = None, operations=None, dtype=None, device=None):
        super().__init__()
        self.config = config or OobleckConfig.released()
        ops = ops_module.resolve(operations)
        self.encoder = OobleckEncoder(self.config, ops, dtype, device)
        self.decoder = OobleckDecoder(self.config, ops, dtype, device)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.layers[0].parametrizations.weight.original1.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.layers[0].parametrizations.weight.original1.device


def sample_latent(moments: torch.Tensor, generator: torch.Generator | None = None,
                  sample: bool = True) -> torch.Tensor:
    """The bottleneck: ``moments`` [B, 2 * C, T] = mean ‖ scale -> mean + (softplus(scale) + 1e-4)
    * N(0, 1) (ComfyUI ``vae_sample``, diffusers ``OobleckDiagonalGaussianDistribution.sample``),
    or the mean when ``sample`` is False. Noise is drawn on the CPU from ``generator`` (the global
    one when None) in float32, so a seed gives the same latent on every device."""
    mean, scale = moments.float().chunk(2, dim=1)
    if not sample:
        return mean
    std = torch.nn.functional.softplus(scale) + 1e-4
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return noise.to(mean.device) * std + mean


# ---------------------------------------------------------------------------------------------
# Key layouts and config inference
# ---------------------------------------------------------------------------------------------
_WN = re.compile(r"\.weight_([gv])$")
_DIFFUSERS_RES = re.compile(r"res_unit([123])\.")
_DIFFUSERS_IN_RES = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}


def _from_diffusers(key: str, n_blocks: int) -> str:
    """Official ``vae/`` (diffusers ``AutoencoderOobleck``) key -> stable-audio-tools key. The two
    module trees correspond one to one (diffusers ``OobleckEncoder`` / ``OobleckDecoder`` against
    ComfyUI ``OobleckEncoder`` / ``OobleckDecoder``): conv1 = layers.0, block.i = layers.(i+1),
    final snake1 = layers.(n+1), conv2 = layers.(n+2); inside an encoder block res_unitK =
    layers.(K-1), snake1 = layers.3, conv1 = layers.4; inside a decoder block snake1 = layers.0,
    conv_t1 = layers.1, res_unitK = layers.(K+1); inside a residual unit snake1/conv1/snake2/conv2
    = layers.0/1/2/3."""
    parts = key.split(".")
    side = parts[0]
    if parts[1] == "conv1":
        return ".".join([side, "layers", "0"] + parts[2:])
    if parts[1] == "snake1":
        return ".".join([side, "layers", str(n_blocks + 1)] + parts[2:])
    if parts[1] == "conv2":
        return ".".join([side, "layers", str(n_blocks + 2)] + parts[2:])
    if parts[1] != "block":
        return key
    out = [side, "layers", str(int(parts[2]) + 1), "layers"]
    rest = parts[3:]
    unit = _DIFFUSERS_RES.match(rest[0] + ".")
    if unit:
        k = int(unit.group(1))
        out.append(str(k - 1 if side == "encoder" else k + 1))
        out += ["layers", _DIFFUSERS_IN_RES[rest[1]]] + rest[2:]
    elif side == "encoder":
        out.append({"snake1": "3", "conv1": "4"}[rest[0]])
        out += rest[1:]
    else:
        out.append({"snake1": "0", "conv_t1": "1"}[rest[0]])
        out += rest[1:]
    return ".".join(out)


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("decoder.block.") or k == "decoder.conv1.weight_g" for k in keys)


def canonical_vae_keys(state: dict) -> dict:
    """Any released spelling of the VAE's keys -> ComfyUI 0.20.1's (parametrized weight norm,
    snake parameters of shape [C]). Works on a tensor dict or a shape dict."""
    keys = list(state)
    diffusers = is_diffusers_layout(keys)
    n_blocks = 0
    if diffusers:
        n_blocks = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("decoder.block."))
    out = {}
    for key, value in state.items():
        new = _from_diffusers(key, n_blocks) if diffusers else key
        new = _WN.sub(lambda m: ".parametrizations.weight." + ("original0" if m.group(1) == "g" else "original1"), new)
        if new.endswith((".alpha", ".beta")):
            if isinstance(value, torch.Tensor):
                value = value.reshape(-1)
            else:
                value = (math.prod(value),)
        out[new] = value
    return out


def _v(shapes, prefix):
    key = prefix + ".parametrizations.weight.original1"
    if key not in shapes:
        raise ConfigError(f"'{key}' is missing")
    return shapes[key]


def infer_vae_config(shapes: dict, json_config: dict | None = None) -> OobleckConfig:
    """OobleckConfig from canonical-key shapes: widths from the convolutions, each stride from its
    strided convolution's kernel (2 * stride), the latent width from the decoder's input."""
    first = _v(shapes, "encoder.layers.0")
    channels, audio_channels = first[0], first[1]
    strides, widths = [], [channels]
    i = 1
    while f"encoder.layers.{i}.layers.4.parametrizations.weight.original1" in shapes:
        conv = shapes[f"encoder.layers.{i}.layers.4.parametrizations.weight.original1"]
        if conv[2] % 2:
            raise ConfigError(f"encoder block {i} has an odd kernel {conv[2]}")
        strides.append(conv[2] // 2)
        widths.append(conv[0])
        i += 1
    if not strides:
        raise ConfigError("no encoder blocks (encoder.layers.1.layers.4)")
    if any(w % channels for w in widths):
        raise ConfigError(f"block widths {widths} are not multiples of {channels}")
    latent_in = _v(shapes, "decoder.layers.0")
    out_conv = _v(shapes, f"decoder.layers.{len(strides) + 2}")
    enc_out = _v(shapes, f"encoder.layers.{len(strides) + 2}")
    if enc_out[0] != 2 * latent_in[1] or latent_in[0] != widths[-1] or out_conv[1] != channels:
        raise ConfigError(f"encoder output {enc_out[0]} / decoder input {tuple(latent_in)} / decoder output "
                          f"{tuple(out_conv)} do not fit one autoencoder")
    return OobleckConfig(audio_channels=audio_channels, channels=channels,
                         c_mults=tuple(w // channels for w in widths[1:]), strides=tuple(strides),
                         latent_channels=latent_in[1])


def is_ace15_vae(shapes: dict) -> bool:
    """An Oobleck VAE with the 1920x (48 kHz) strides: ComfyUI tells it from Stable Audio's VAE
    by the stride-6 block's transposed-conv kernel of 12 (``comfy/sd.py``, ``VAE.__init__``)."""
    try:
        return infer_vae_config(canonical_vae_keys(shapes)).hop == 1920
    except (ConfigError, KeyError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# The codec: waveform <-> latent with windows, progress and interrupts
# ---------------------------------------------------------------------------------------------
def window_frames(device, dtype=torch.float32, bytes_per_frame=DECODE_BYTES_PER_FRAME,
                  overlap=OVERLAP_FRAMES) -> int:
    """Window length (latent frames) for ``device``: half the free memory on CUDA, a fixed budget
    elsewhere (``acestep_core.codec.window_frames_for_budget`` does the arithmetic)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * CUDA_FREE_MEMORY_SHARE
    else:
        budget = CPU_WINDOW_BUDGET
    return window_frames_for_budget(budget, dtype, overlap, bytes_per_frame=bytes_per_frame)


class AudioCodec15(nn.Module):
    """48 kHz stereo waveform <-> ACE-Step 1.5 latent [B, 64, T], T = samples / 1920.

    Same interface as the v1 ``acestep_core.codec.AudioCodec`` (``encode``, ``decode``,
    ``sample_rate``, ``frame_samples``, ``channels``, ``device``)."""

    latent_channels_first = True

    def __init__(self, vae: OobleckVAE):
        super().__init__()
        self.vae = vae
        self.sample_rate = SAMPLE_RATE
        self.frame_samples = vae.config.hop
        self.channels = vae.config.audio_channels
        self.latent_channels = vae.config.latent_channels

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    # -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk_frames: int | None = _DEFAULT,
               overlap_frames: int = OVERLAP_FRAMES, on_progress: ProgressFn | None = None,
               check: Callable[[], None] | None = None) -> torch.Tensor:
        """latent [B, 64, T] -> waveform [B, 2, T * 1920], float32, on the latent's device.

        chunk_frames: window length in latent frames (default: from a memory budget, see
        :func:`window_frames`); None decodes in one piece. on_progress(done, total) is called after
        every window of every item, check() after every block inside a window; an exception raised
        in either (an interrupt) stops the decode."""
        if latent.ndim != 3 or latent.shape[1] != self.latent_channels or latent.shape[-1] == 0:
            raise ValueError(f"expected an ACE-Step 1.5 latent [B, {self.latent_channels}, T >= 1], got shape "
                             f"{tuple(latent.shape)}")
        decoder, dtype, hop = self.vae.decoder, self.dtype, self.frame_samples
        chunk = window_frames(self.device, dtype, overlap=overlap_frames) if chunk_frames is _DEFAULT else chunk_frames
        batch, frames = latent.shape[0], latent.shape[-1]
        windows = plan_windows(frames, chunk, overlap_frames)
        seams = seam_spans(windows, overlap_frames // 4, hop)
        total, done = batch * len(windows), 0
        out = torch.zeros(batch, self.channels, frames * hop, device=self.device)
        for b in range(batch):
            for k, (start, end) in enumerate(windows):
                z = latent[b:b + 1, :, start:end].to(device=self.device, dtype=dtype)
                piece = run_layers(decoder, z, check)[0].float()
                if len(windows) == 1:
                    out[b] = piece
                else:
                    add_faded(out[b], piece, start * hop, seams[k - 1] if k > 0 else None,
                              seams[k] if k < len(seams) else None)
                del piece
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        return out.to(latent.device)

    # -----------------------------------------------------------------------------------------
    def prepare_waveform(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, C, S] -> [B, 2, S'] as ComfyUI's ``VAE.vae_encode_crop_pixels`` does for this VAE:
        mono replicated to stereo, extra channels dropped, and the length cropped to a multiple of
        1920 keeping the centre (offset (S mod 1920) // 2)."""
        if waveform.ndim != 3 or waveform.shape[1] < 1:
            raise ValueError(f"expected a waveform [B, channels, samples], got shape {tuple(waveform.shape)}")
        hop = self.frame_samples
        if waveform.shape[-1] < hop:
            raise ValueError(f"the audio is {waveform.shape[-1]} samples long; ACE-Step 1.5 encodes whole "
                             f"{hop}-sample frames ({hop / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz): "
                             "give at least one frame")
        if waveform.shape[1] > self.channels:
            waveform = waveform[:, :self.channels]
        elif waveform.shape[1] < self.channels:
            pad = waveform[:, -1:].expand(-1, self.channels - waveform.shape[1], -1)
            waveform = torch.cat([waveform, pad], dim=1)
        length = waveform.shape[-1] // hop * hop
        offset = (waveform.shape[-1] % hop) // 2
        return waveform[..., offset:offset + length]

    @torch.no_grad()
    def encode_moments(self, waveform: torch.Tensor, chunk_frames: int | None = _DEFAULT,
                       overlap_frames: int = OVERLAP_FRAMES, on_progress: ProgressFn | None = None,
                       check: Callable[[], None] | None = None) -> torch.Tensor:
        """waveform [B, C, S] at 48 kHz -> the encoder's mean ‖ scale [B, 128, S // 1920]
        (float32, on the waveform's device), windowed like :meth:`decode`."""
        wave = self.prepare_waveform(waveform)
        encoder, dtype, hop = self.vae.encoder, self.dtype, self.frame_samples
        chunk = (window_frames(self.device, dtype, ENCODE_BYTES_PER_FRAME, overlap_frames)
                 if chunk_frames is _DEFAULT else chunk_frames)
        batch, frames = wave.shape[0], wave.shape[-1] // hop
        windows = plan_windows(frames, chunk, overlap_frames)
        cuts = [0] + [(windows[k + 1][0] + windows[k][1]) // 2 for k in range(len(windows) - 1)] + [frames]
        total, done = batch * len(windows), 0
        out = torch.empty(batch, 2 * self.latent_channels, frames, device=self.device)
        for b in range(batch):
            for k, (start, end) in enumerate(windows):
                piece = wave[b:b + 1, :, start * hop:end * hop].to(device=self.device, dtype=dtype)
                moments = run_layers(encoder, piece, check)[0].float()
                out[b, :, cuts[k]:cuts[k + 1]] = moments[:, cuts[k] - start:cuts[k + 1] - start]
                del moments
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        return out.to(waveform.device)

    def encode(self, waveform: torch.Tensor, chunk_frames: int | None = _DEFAULT,
               overlap_frames: int = OVERLAP_FRAMES, on_progress: ProgressFn | None = None,
               generator: torch.Generator | None = None, sample: bool = True,
               check: Callable[[], None] | None = None) -> torch.Tensor:
        """waveform [B, C, S] at 48 kHz -> latent [B, 64, S // 1920], float32, on the waveform's
        device. Like ComfyUI and the official code the latent is a sample of the posterior
        (``sample=False`` gives its mean); ``generator`` fixes the noise."""
        moments = self.encode_moments(waveform, chunk_frames, overlap_frames, on_progress, check)
        return sample_latent(moments, generator, sample)
