"""Standalone text2music: tags + lyrics -> waveform, built from the core pieces.

This is the CLI's engine and a reference path for tests; inside ComfyUI the same pieces are driven
by the stock sampler nodes instead.
"""
from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .constants import AUDIO_CHANNELS, LATENT_CHANNELS, LATENT_HEIGHT, SAMPLE_RATE, frames_for_seconds
from .loading import AceStepModels
from .sampling.flow import (DEFAULT_SHIFT, TIMESTEP_MULTIPLIER, cfg, euler_step, noise_like_latent,
                            original_sigmas, simple_sigmas)

ProgressFn = Callable[[int, int], None]


@dataclass
class Conditioning:
    """Everything the transformer's encoder needs for one prompt (batch 1)."""

    text_hidden: torch.Tensor        # [1, L_text, d_text]
    text_mask: torch.Tensor          # [1, L_text]
    lyric_ids: torch.Tensor          # [1, L_lyr] long
    lyric_mask: torch.Tensor         # [1, L_lyr]

    def unconditional(self) -> "Conditioning":
        """The original app's negative: zero text embedding and zero lyric ids, masks kept."""
        return Conditioning(torch.zeros_like(self.text_hidden), self.text_mask,
                            torch.zeros_like(self.lyric_ids), self.lyric_mask)


@torch.no_grad()
def encode_text(models: AceStepModels, tags: str, lyrics: str) -> Conditioning:
    if models.text_encoder is None:
        raise ValueError("the text encoder was not loaded; load the checkpoint with components "
                         "including 'text_encoder'")
    device = next(models.text_encoder.parameters()).device
    tag_ids = torch.tensor([models.tag_tokenizer.encode(tags)], dtype=torch.long, device=device)
    text_mask = torch.ones_like(tag_ids)
    text_hidden = models.text_encoder(tag_ids, attention_mask=text_mask)
    lyric_ids, lyric_mask = models.lyric_tokenizer.encode_with_mask(lyrics)
    lyric_ids = torch.tensor([lyric_ids], dtype=torch.long, device=device)
    lyric_mask = torch.tensor([lyric_mask], dtype=torch.long, device=device)
    return Conditioning(text_hidden, text_mask, lyric_ids, lyric_mask)


def _context(transformer, cond: Conditioning, batch: int, dtype):
    def rep(t):
        return t.expand(batch, *t.shape[1:])
    speaker = torch.zeros(batch, transformer.config.speaker_embedding_dim, device=cond.text_hidden.device,
                          dtype=dtype)
    return transformer.encode(rep(cond.text_hidden).to(dtype), rep(cond.text_mask), speaker,
                              rep(cond.lyric_ids), rep(cond.lyric_mask))


@torch.no_grad()
def sample(models: AceStepModels, cond: Conditioning, seconds: float, steps: int = 27, cfg_scale: float = 5.0,
           seed: int | list[int] = 1, shift: float = DEFAULT_SHIFT, schedule: str = "original",
           omega: float = 0.0, batch: int = 1, on_step: ProgressFn | None = None) -> torch.Tensor:
    """Flow-matching Euler from noise to a latent [batch, 8, 16, T], with classic CFG."""
    transformer = models.transformer
    if transformer is None:
        raise ValueError("the transformer was not loaded")
    frames = frames_for_seconds(seconds)
    if frames < 1:
        raise ValueError(f"{seconds} s is shorter than one latent frame (~0.093 s); ask for more seconds")
    param = next(transformer.parameters())
    dtype, device = param.dtype, param.device
    sigmas = {"original": original_sigmas, "simple": simple_sigmas}[schedule](steps, shift)
    seeds = [seed + i for i in range(batch)] if isinstance(seed, int) else seed
    x = noise_like_latent((batch, LATENT_CHANNELS, LATENT_HEIGHT, frames), seeds, device, torch.float32)

    guided = cfg_scale not in (0.0, 1.0)
    ctx_c, mask_c = _context(transformer, cond, batch, dtype)
    if guided:
        ctx_u, mask_u = _context(transformer, cond.unconditional(), batch, dtype)
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # float32 timesteps: in bf16, 999 would round to 1000 (ComfyUI passes float32 too)
        t = torch.full((batch,), sigma * TIMESTEP_MULTIPLIER, device=device, dtype=torch.float32)
        xin = x.to(dtype)
        v = transformer.decode(xin, t, ctx_c, mask_c).float()
        if guided:
            v = cfg(v, transformer.decode(xin, t, ctx_u, mask_u).float(), cfg_scale)
        x = euler_step(x, v, sigma, sigma_next, omega)
        if on_step is not None:
            on_step(i + 1, total)
    return x


@torch.no_grad()
def decode(models: AceStepModels, latent: torch.Tensor, on_progress: ProgressFn | None = None) -> torch.Tensor:
    if models.codec is None:
        raise ValueError("the VAE was not loaded")
    return models.codec.decode(latent, on_progress=on_progress)


def generate(models: AceStepModels, tags: str, lyrics: str, seconds: float = 30.0, steps: int = 27,
             cfg_scale: float = 5.0, seed: int = 1, shift: float = DEFAULT_SHIFT, schedule: str = "original",
             on_step: ProgressFn | None = None, on_decode: ProgressFn | None = None) -> torch.Tensor:
    """tags + lyrics -> stereo waveform [2, samples] at 44.1 kHz."""
    cond = encode_text(models, tags, lyrics)
    latent = sample(models, cond, seconds, steps, cfg_scale, seed, shift, schedule, on_step=on_step)
    return decode(models, latent, on_decode)[0]


def write_wav(path, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM WAV with the stdlib (no audio backend needed). waveform: [channels, samples]."""
    path = Path(path)
    audio = waveform.detach().float().cpu().clamp(-1, 1)
    if audio.ndim == 1:
        audio = audio[None]
    if not torch.isfinite(audio).all():
        raise ValueError("the waveform contains NaN or infinite values; nothing was written")
    pcm = (audio.numpy().T * 32767.0).round().astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(audio.shape[0])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


__all__ = ["Conditioning", "encode_text", "sample", "decode", "generate", "write_wav",
           "AUDIO_CHANNELS"]
