"""Reference code the tests compare the shipped paths with: the original app's loops and helpers
written out in the core's terms, kept here (not in acestep_core) because nothing shipped calls them.

* the original's repaint loop (ACE-Step acestep/pipeline_ace_step.py ``text2music_diffusion_process``,
  repaint branch): repaint_initial_latent, reimpose_known, repaint_step. The shipped repaint is
  ComfyUI's sampler with a noise mask (nodes/tasks.py), checked against this loop;
* the guidance schedule looked up from a sigma (guidance_*_for_sigma);
* merging a LoRA into a state dict (apply_lora_), against which the patches ComfyUI applies are
  checked;
* read_wav, the inverse of acestep_core.pipeline.write_wav.
"""
from __future__ import annotations

import wave
from typing import Mapping

import numpy as np
import torch

from acestep_core.lora import LoraError, _check_fits, lora_delta
from acestep_core.sampling.flow import euler_step
from acestep_core.sampling.guidance import guidance_interval_active, guidance_scale_at, step_index_from_sigma


def repaint_initial_latent(x0: torch.Tensor, z0: torch.Tensor, sigma) -> torch.Tensor:
    """The state at the first repaint step: x0 noised to ``sigma`` with z0, (1-s)*x0 + s*z0."""
    sigma = float(sigma)
    return ((1.0 - sigma) * x0.float() + sigma * z0.float()).to(x0.dtype)


def reimpose_known(x: torch.Tensor, x0: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor,
                   sigma_next) -> torch.Tensor:
    """Keep the sampled ``x`` where mask = 1 and put the known region back on the source's
    noising path, (1 - s')*x0 + s'*z0, where mask = 0 (the same z0 every step, so at s' = 0
    it is exactly x0). Fractional masks blend linearly; 0/1 masks are exact."""
    sigma_next = float(sigma_next)
    known = (1.0 - sigma_next) * x0.float() + sigma_next * z0.float()
    m = mask.to(device=x.device, dtype=torch.float32)
    return (m * x.float() + (1.0 - m) * known).to(x.dtype)


def repaint_step(x: torch.Tensor, velocity: torch.Tensor, x0: torch.Tensor, z0: torch.Tensor,
                 mask: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One repaint step: a plain Euler step in float32 (no omega rescale, as the original's
    repaint loop) then ``reimpose_known`` at ``sigma_next``."""
    stepped = euler_step(x, velocity, float(sigma), float(sigma_next), omega=0.0)
    return reimpose_known(stepped, x0, z0, mask, sigma_next)


def guidance_interval_active_for_sigma(sigma, sigmas, interval: float) -> bool:
    """``guidance_interval_active`` when only the current sigma and the schedule are known."""
    total = torch.as_tensor(sigmas).numel() - 1
    return guidance_interval_active(step_index_from_sigma(sigma, sigmas), total, interval)


def guidance_scale_for_sigma(sigma, sigmas, scale: float, interval: float = 0.5, decay: float = 0.0,
                             min_scale: float = 3.0) -> float | None:
    """``guidance_scale_at`` when only the current sigma and the schedule are known."""
    total = torch.as_tensor(sigmas).numel() - 1
    return guidance_scale_at(step_index_from_sigma(sigma, sigmas), total, scale, interval, decay, min_scale)


def apply_lora_(state_dict: dict, lora: Mapping, strength: float = 1.0) -> dict:
    """Add ``strength * scale * B @ A`` to each targeted weight of ``state_dict`` and return it.

    The dict is updated in place with new tensors (the old ones are not written to, so
    memory-mapped or shared weights are safe); each sum is formed in at least float32 and cast
    back to the weight's dtype. Strength 0 leaves everything as it was. Call once per LoRA to
    stack several."""
    if float(strength) == 0.0:
        return state_dict
    missing = [k for k in lora if k not in state_dict]
    if missing:
        raise LoraError(f"the state dict has no weight {missing[0]} that this LoRA adapts "
                        f"({len(missing)} missing in all)")
    for key, patch in lora.items():
        A, B, scale = patch
        weight = state_dict[key]
        _check_fits("LoRA", key[:-len(".weight")] if key.endswith(".weight") else key, A, B, tuple(weight.shape))
        work_dtype = torch.promote_types(weight.dtype, torch.float32)
        delta = lora_delta(A.to(weight.device), B.to(weight.device), scale, strength, tuple(weight.shape))
        state_dict[key] = (weight.to(work_dtype) + delta.to(work_dtype)).to(weight.dtype)
    return state_dict


def read_wav(path) -> tuple[torch.Tensor, int]:
    """Read a 16-bit PCM WAV written by write_wav: ([channels, samples] float, sample_rate)."""
    with wave.open(str(path), "rb") as f:
        channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
        if width != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported here")
        data = np.frombuffer(f.readframes(n), dtype=np.int16).reshape(-1, channels)
    return torch.from_numpy(data.T.astype(np.float32) / 32767.0), rate
