"""ACE-Step 1.5 text2music without the planner, as ComfyUI 0.20.1's official turbo template runs it:
``TextEncodeAceStepAudio1.5`` (generate_audio_codes false) -> ``EmptyAceStep1.5LatentAudio`` ->
``ModelSamplingAuraFlow(shift 3)`` -> ``KSampler(euler, simple, 8 steps, cfg 1)`` -> ``VAEDecodeAudio``.

The DiT gets the silence latent as its source and timbre reference (``is_covers`` False), as
``comfy/model_base.py`` ``ACEStep15.extra_conds`` does without a reference audio. With cfg > 1 the
unconditional pass replaces the packed condition with the null embedding (what a
``ConditioningZeroOut`` negative does there).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..sampling.flow import cfg as apply_cfg
from ..sampling.flow import euler_step, noise_like_latent, simple_sigmas
from .text_encoder import encode_text
from .vae import SAMPLE_RATE

ProgressFn = Callable[[int, int], None]
TURBO_STEPS, TURBO_CFG, TURBO_SHIFT = 8, 1.0, 3.0
FRAMES_PER_SECOND = SAMPLE_RATE / 1920


def latent_frames(seconds: float) -> int:
    """``EmptyAceStep1.5LatentAudio``: round(seconds * 48000 / 1920) frames."""
    return max(1, round(seconds * FRAMES_PER_SECOND))


@torch.no_grad()
def sample(models, tags: str, lyrics: str = "", seconds: float = 30.0, steps: int = TURBO_STEPS,
           cfg_scale: float = TURBO_CFG, shift: float = TURBO_SHIFT, seed: int = 0, language: str = "en",
           bpm=None, timesignature=None, keyscale=None, on_step: ProgressFn | None = None) -> torch.Tensor:
    """Tags + lyrics -> latent [1, 64, T] (models: ``acestep_core.ace15.loading.Ace15Models``)."""
    model = models.model
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    cond = encode_text(models.text_encoder, models.tokenizer, tags, lyrics, language=language, bpm=bpm,
                       timesignature=timesignature, keyscale=keyscale, duration=seconds)
    frames = latent_frames(seconds)
    caption, lyric = cond.caption.to(device, dtype), cond.lyrics.to(device, dtype)
    silence = models.silence(frames).to(device, dtype)
    sigmas = simple_sigmas(steps, shift).tolist()
    x = noise_like_latent((1, 64, frames), seed, device=device) * sigmas[0]

    def velocity(x_t, sigma, null):
        t = torch.full((1,), sigma, device=device, dtype=dtype)
        return model(x_t.to(dtype), t, caption, lyric_embed=lyric, refer_audio=silence, is_covers=False,
                     replace_with_null_embeds=null).float()

    for i in range(steps):
        v = velocity(x, sigmas[i], False)
        if cfg_scale != 1.0:
            v = apply_cfg(v, velocity(x, sigmas[i], True), cfg_scale)
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        if on_step is not None:
            on_step(i + 1, steps)
    return x.float()


def normalize_like_comfyui(waveform: torch.Tensor) -> torch.Tensor:
    """``VAEDecodeAudio`` (comfy_extras/nodes_audio.py): each item divided by max(1, 5 * std)."""
    std = waveform.flatten(1).std(dim=1).clamp_min(0) * 5.0
    return waveform / torch.clamp(std, min=1.0)[:, None, None]


def generate(models, tags: str, lyrics: str = "", seconds: float = 30.0, steps: int = TURBO_STEPS,
             cfg_scale: float = TURBO_CFG, shift: float = TURBO_SHIFT, seed: int = 0, language: str = "en",
             bpm=None, timesignature=None, keyscale=None, on_step: ProgressFn | None = None,
             on_decode: ProgressFn | None = None) -> torch.Tensor:
    """Tags + lyrics -> stereo waveform [2, samples] at 48 kHz."""
    latent = sample(models, tags, lyrics, seconds, steps, cfg_scale, shift, seed, language, bpm, timesignature,
                    keyscale, on_step)
    audio = models.codec.decode(latent, on_progress=on_decode)
    return normalize_like_comfyui(audio)[0]


__all__ = ["generate", "sample", "latent_frames", "normalize_like_comfyui", "TURBO_STEPS", "TURBO_CFG", "TURBO_SHIFT"]
