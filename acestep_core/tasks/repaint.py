"""Retake, repaint and extend: masks, noise and per-step updates on latents [B, 8, 16, T].

How the original app does these (ACE-Step acestep/pipeline_ace_step.py
``text2music_diffusion_process``), and how this module is used for each:

* retake - fresh variation of a generation: start from ``retake_noise(eps1, eps2, variance)``
  instead of eps1 and sample normally from step 0.
* repaint - regenerate the frames [a, b) of a source latent x0 and keep the rest:
    mask, a, b, warnings = repaint_mask(T, start_s, end_s)
    z0 = repaint_noise(eps1, eps2, mask, variance)
    n = repaint_start_step(steps, variance); x = (1 - s_n) x0 + s_n z0
    each step from n: a plain Euler step (no omega rescale), then outside the mask the latent is
    put back on the source's own noising path (1 - s') x0 + s' z0, so at sigma 0 it is x0.
  The shipped nodes run this through ComfyUI's sampler with a noise mask (nodes/tasks.py); the
  loop itself is written out in tests/reference.py, which the tests compare them with.
* extend - add new frames before and/or after a source: ``extend_latent`` builds the sampling
  window (at most 240 s), ``extend_noise`` its z0, the repaint loop above runs with the
  extension mask (the original starts it at step 0: its UI uses variance 1), and
  ``extend_assemble`` puts back source frames that did not fit in the window.

Fixes relative to the original (found while checking ``text2music_diffusion_process``):
* seconds -> frames floors negative times too (the original's int() truncation maps -0.5 s and
  +0.5 s to the same frame, so left extensions were counted differently from right ones);
* out-of-range repaint times are clamped to the song with a warning instead of failing later;
* a repaint with variance 0 returns the source (the original skips every step and returns pure
  noise, since its loop only starts writing the latent at step n = steps);
* extend: the trimmed head is re-attached on the time axis (the original concatenated the wrong
  variable on the batch axis), the re-attached frames are the ones actually cut off (the
  original sliced them from the already-trimmed window), both-sided extension pads the right
  side by the requested amount (the original measured it against the left-padded length), and
  extensions longer than the source work (the original sliced new-region noise from a tensor
  only as long as the source).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..constants import MAX_SECONDS, frames_for_seconds, seconds_for_frames, seconds_to_frame

__all__ = [
    "MAX_EXTEND_FRAMES", "seconds_to_frame", "check_variance", "repaint_mask", "retake_noise", "repaint_noise",
    "repaint_start_step",
    "ExtendPlan", "extend_frames", "extend_latent", "extend_noise", "extend_assemble",
]

# The longest window the original samples when extending: int(240 * 44100 / 512 / 8) = 2583.
MAX_EXTEND_FRAMES = frames_for_seconds(MAX_SECONDS)


# ---------------------------------------------------------------------------------------------
# Time <-> frames and the repaint mask
# ---------------------------------------------------------------------------------------------
def repaint_mask(total_frames: int, start_seconds: float, end_seconds: float):
    """Mask of the frames to regenerate, for a source of ``total_frames`` frames.

    Returns ``(mask, start_frame, end_frame, warnings)``: mask is float32 [T], 1 on
    [start_frame, end_frame) and 0 elsewhere (broadcasts against [B, 8, 16, T]); warnings is a
    list of messages about clamping. Times outside the song are clamped to it (an infinite end
    means "to the end"). Raises ValueError for NaN, for start after end, and for a region that
    is empty once clamped.
    """
    total_frames = int(total_frames)
    if total_frames <= 0:
        raise ValueError(f"the source latent has no frames (T = {total_frames})")
    start_seconds, end_seconds = float(start_seconds), float(end_seconds)
    if math.isnan(start_seconds) or math.isnan(end_seconds):
        raise ValueError(f"repaint start/end must be numbers (got {start_seconds}, {end_seconds})")
    if start_seconds >= end_seconds:
        raise ValueError(f"repaint start ({start_seconds:g} s) must be before the end ({end_seconds:g} s)")

    song = seconds_for_frames(total_frames)
    warnings = []

    def clamp(seconds: float, name: str) -> int:
        if seconds < 0:
            warnings.append(f"repaint {name} {seconds:g} s is before the start of the song; using 0 s")
            return 0
        frame = total_frames if math.isinf(seconds) else seconds_to_frame(seconds)
        if frame > total_frames:
            warnings.append(f"repaint {name} {seconds:g} s is past the end of the song ({song:.2f} s); "
                            "using the end")
            return total_frames
        return frame

    start, end = clamp(start_seconds, "start"), clamp(end_seconds, "end")
    if start >= end:
        where = (f"starts past the end of the song ({song:.2f} s)" if start >= total_frames
                 else f"covers no frame of the {song:.2f} s song")
        raise ValueError(f"repaint region {start_seconds:g}-{end_seconds:g} s {where}; choose times inside "
                         f"0-{song:.2f} s that are at least one frame (~0.093 s) apart")
    mask = torch.zeros(total_frames, dtype=torch.float32)
    mask[start:end] = 1.0
    return mask, start, end, warnings


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------
def check_variance(variance: float) -> float:
    """The retake / repaint variance as a float in [0, 1], else a ValueError saying so."""
    variance = float(variance)
    if not 0.0 <= variance <= 1.0:  # also rejects NaN
        raise ValueError(f"variance must be between 0 and 1 (got {variance}).")
    return variance


def _mix_weights(variance: float) -> tuple[float, float]:
    """(cos phi, sin phi) with phi = variance * pi / 2, exact at the ends."""
    if variance == 0.0:
        return 1.0, 0.0
    if variance == 1.0:
        return 0.0, 1.0
    phi = variance * math.pi / 2
    return math.cos(phi), math.sin(phi)


def retake_noise(noise: torch.Tensor, retake_noise: torch.Tensor, variance: float) -> torch.Tensor:
    """cos(phi) * noise + sin(phi) * retake_noise with phi = variance * pi / 2.

    cos^2 + sin^2 = 1, so two independent unit Gaussians mix into a unit Gaussian: variance 0
    gives ``noise`` (the original seed's song), 1 gives ``retake_noise`` (a new one), values in
    between a song correlated with the original by cos(phi). Endpoints are exact."""
    c, s = _mix_weights(check_variance(variance))
    if s == 0.0:
        return noise.clone()
    if c == 0.0:
        return retake_noise.clone()
    return (c * noise.float() + s * retake_noise.float()).to(noise.dtype)


def repaint_noise(noise: torch.Tensor, retake: torch.Tensor, mask: torch.Tensor, variance: float) -> torch.Tensor:
    """z0 of a repaint: ``retake_noise(noise, retake, variance)`` where mask > 0.5, ``noise``
    elsewhere (the known region keeps the original seed's noise)."""
    mixed = retake_noise(noise, retake, variance)
    return torch.where(mask.to(noise.device) > 0.5, mixed, noise)


# ---------------------------------------------------------------------------------------------
# The repaint loop
# ---------------------------------------------------------------------------------------------
def repaint_start_step(steps: int, variance: float) -> int:
    """First step of a repaint: int(steps * (1 - variance)), the original's expression and float
    rounding (60 steps, 0.2 -> 48; 0.8 -> 11 because 1 - 0.8 = 0.19999...). Steps before it are
    skipped; ``steps`` itself (variance 0) means nothing is sampled and the result is x0."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    return int(steps * (1 - check_variance(variance)))


# ---------------------------------------------------------------------------------------------
# Extend
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtendPlan:
    """Where things sit in an extension. The sampling window is
    [left new frames][source[kept_start:kept_end]][right new frames]; the final latent is
    [left new][whole source][right new], ``output_frames`` = left + source + right long."""
    left_frames: int
    right_frames: int
    source_frames: int
    kept_start: int
    kept_end: int

    @property
    def kept_slice(self) -> slice:
        return slice(self.kept_start, self.kept_end)

    @property
    def kept_frames(self) -> int:
        return self.kept_end - self.kept_start

    @property
    def window_frames(self) -> int:
        return self.left_frames + self.kept_frames + self.right_frames

    @property
    def output_frames(self) -> int:
        return self.left_frames + self.source_frames + self.right_frames

    @property
    def retake_noise_frames(self) -> int:
        """Frames ``extend_noise`` needs in its retake noise: the source length (what the
        original draws), or more when an extension is longer than the source."""
        return max(self.source_frames, self.left_frames, self.right_frames)


def extend_frames(left_seconds: float, right_seconds: float) -> tuple[int, int]:
    """Frames to add on each side, each counted like a duration (``frames_for_seconds``), so
    equal lengths give equal frame counts on both sides."""
    out = []
    for name, seconds in (("left", left_seconds), ("right", right_seconds)):
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"{name} extension must be a finite number of seconds >= 0 (got {seconds})")
        out.append(frames_for_seconds(seconds))
    return out[0], out[1]


def extend_latent(source: torch.Tensor, left_frames: int, right_frames: int,
                  max_frames: int = MAX_EXTEND_FRAMES):
    """The sampling window for an extension of ``source`` [B, C, H, T].

    Returns ``(window, mask, plan)``: window [B, C, H, W] holds zeros on the new frames and the
    kept source frames; mask float32 [W] is 1 on the new frames; ``plan`` (ExtendPlan) records
    the layout for ``extend_noise`` and ``extend_assemble``.

    The window is at most ``max_frames`` long (240 s, as the original). New frames are always
    sampled in full; if the source does not fit beside them, the source frames farthest from the
    new region are left out of the window (the tail for a left extension, the head for a right
    one) and re-attached by ``extend_assemble``. A two-sided extension that does not fit raises
    ValueError (whichever end were cut, one new region would no longer border the frames it was
    generated next to): extend one side at a time.
    """
    left, right = int(left_frames), int(right_frames)
    if left < 0 or right < 0:
        raise ValueError(f"extension lengths must be >= 0 frames (got left={left}, right={right})")
    if left == 0 and right == 0:
        raise ValueError("nothing to extend: both extension lengths are 0")
    if source.ndim != 4:
        raise ValueError(f"source latent must be [B, C, H, T] (got shape {tuple(source.shape)})")
    total = source.shape[-1]
    if total < 1:
        raise ValueError("the source latent has no frames")
    new = left + right
    if new >= max_frames:
        raise ValueError(f"an extension of {new} frames leaves no room for the source in the "
                         f"{max_frames}-frame window ({seconds_for_frames(max_frames):.1f} s); use a shorter one")
    kept = min(total, max_frames - new)
    if kept < total and left > 0 and right > 0:
        raise ValueError(f"extending both sides ({left} + {right} frames) of a {total}-frame source "
                         f"exceeds the {max_frames}-frame window; extend one side at a time")
    kept_start, kept_end = (0, kept) if left > 0 else (total - kept, total)
    plan = ExtendPlan(left, right, total, kept_start, kept_end)

    pad_shape = source.shape[:-1]
    parts = [source.new_zeros(*pad_shape, left), source[..., kept_start:kept_end],
             source.new_zeros(*pad_shape, right)]
    window = torch.cat(parts, dim=-1)
    mask = torch.cat([torch.ones(left), torch.zeros(kept), torch.ones(right)]).to(torch.float32)
    return window, mask, plan


def extend_noise(noise: torch.Tensor, retake_noise: torch.Tensor, plan: ExtendPlan) -> torch.Tensor:
    """z0 for the extension window: retake noise on the new frames, the main noise on the kept
    source frames (the main noise is in source coordinates, ``plan.source_frames`` long).

    The left region takes the first ``left_frames`` of ``retake_noise`` and the right region its
    last ``right_frames``; with a retake noise as long as the source this is the original's
    choice. ``retake_noise`` must be at least ``plan.retake_noise_frames`` long.
    """
    if noise.shape[-1] != plan.source_frames:
        raise ValueError(f"main noise must cover the source: {plan.source_frames} frames "
                         f"(got {noise.shape[-1]})")
    need = max(plan.left_frames, plan.right_frames)
    if retake_noise.shape[-1] < need:
        raise ValueError(f"retake noise must be at least {need} frames long (got {retake_noise.shape[-1]})")
    width = retake_noise.shape[-1]
    parts = [retake_noise[..., :plan.left_frames].to(noise.dtype), noise[..., plan.kept_slice],
             retake_noise[..., width - plan.right_frames:].to(noise.dtype)]
    return torch.cat(parts, dim=-1)


def extend_assemble(window: torch.Tensor, source: torch.Tensor, plan: ExtendPlan) -> torch.Tensor:
    """The finished extension: the sampled window with the source frames that were left out of
    it put back beside the kept ones. Output length ``plan.output_frames`` = left + T + right."""
    if window.shape[-1] != plan.window_frames:
        raise ValueError(f"window must have {plan.window_frames} frames (got {window.shape[-1]})")
    left, kept = plan.left_frames, plan.kept_frames
    source = source.to(device=window.device, dtype=window.dtype)
    if source.shape[0] != window.shape[0]:
        source = source.expand(window.shape[0], *source.shape[1:])
    parts = [window[..., :left], source[..., :plan.kept_start], window[..., left:left + kept],
             source[..., plan.kept_end:], window[..., left + kept:]]
    return torch.cat(parts, dim=-1)
