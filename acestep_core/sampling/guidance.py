"""Guidance for ACE-Step's velocity predictions, as pure per-step functions.

All functions take the model's *velocity* predictions (v = noise - x0, as acestep/pipeline_ace_step.py's schedulers use it) for the
conditional pass ``cond`` and the unconditional pass ``uncond``, shaped [B, 8, 16, T]. ComfyUI's
sampler hooks hand over denoised estimates instead; ``velocity_from_denoised`` converts. APG's
norm threshold is an absolute size, so it only means what the original meant on velocities.

What lives here (checked against acestep/apg_guidance.py and
pipeline_ace_step.py ``text2music_diffusion_process``):

* ``apg`` with ``MomentumBuffer`` - adaptive projected guidance (the original's default).
* ``cfg_zero_star`` - CFG with a per-item optimised unconditional scale and zero-init.
* ``double_condition_guidance`` - separate text and lyric scales from a third "text only" pass.
* guidance interval and linear decay of the scale, by step index or by sigma.
* ERG: the constants saying which query projections the "energy" guidance weakens, and
  ``scaled_queries``, a context manager that sets ``query_scale`` on our attention modules.

Plain CFG is ``acestep_core.sampling.flow.cfg``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, Sequence

import torch

from .flow import cfg

__all__ = [
    "MomentumBuffer", "apg", "project", "cfg", "cfg_zero_star", "optimized_scale",
    "double_condition_guidance", "double_condition_active", "cfg_active",
    "guidance_interval_bounds", "guidance_interval_active", "guidance_scale_at",
    "step_index_from_sigma",
    "velocity_from_denoised", "denoised_from_velocity",
    "ERG_TAU", "ERG_DIFFUSION_BLOCKS", "ERG_LYRIC_LAYERS", "ERG_TAG_BLOCKS",
    "erg_diffusion_modules", "erg_lyric_modules", "scaled_queries",
    "APG_MOMENTUM", "APG_NORM_THRESHOLD", "APG_ETA", "APG_DIMS",
]

# Defaults of the original's apg_forward / MomentumBuffer.
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0
APG_DIMS = (-2, -1)  # (16, T): one norm per batch item and latent channel


# ---------------------------------------------------------------------------------------------
# APG (adaptive projected guidance)
# ---------------------------------------------------------------------------------------------
class MomentumBuffer:
    """Running average of the guidance difference across sampling steps: avg <- delta + m*avg.

    With the default m = -0.75 each step's difference is partly *cancelled* by the previous
    ones, which damps oscillation. One buffer per generation (and per guided stream: flow-edit
    keeps one for its source and one for its target); ``reset`` starts a new generation.
    """

    def __init__(self, momentum: float = APG_MOMENTUM):
        self.momentum = float(momentum)
        self.running_average: torch.Tensor | None = None

    def update(self, delta: torch.Tensor) -> torch.Tensor:
        """Fold in this step's difference and return the new running average."""
        if self.running_average is None:  # the original starts from 0, so the first average is delta
            self.running_average = delta
        else:
            self.running_average = delta + self.momentum * self.running_average
        return self.running_average

    def reset(self) -> None:
        self.running_average = None


def project(v: torch.Tensor, onto: torch.Tensor, dims: Sequence[int] = APG_DIMS):
    """Split ``v`` into its parts parallel and orthogonal to ``onto``, one projection per slice
    over ``dims``. Done in float64: the parallel part is subtracted from a nearly equal vector,
    so float32/bf16 would lose the small orthogonal remainder."""
    v64, onto64 = v.double(), onto.double()
    dims = tuple(dims)
    unit = onto64 / onto64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)  # == F.normalize
    parallel = (v64 * unit).sum(dim=dims, keepdim=True) * unit
    return parallel, v64 - parallel


def apg(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
        momentum_buffer: MomentumBuffer | None = None, eta: float = APG_ETA,
        norm_threshold: float = APG_NORM_THRESHOLD, dims: Sequence[int] = APG_DIMS) -> torch.Tensor:
    """Adaptive projected guidance (Sadat et al. 2024) as ACE-Step uses it.

        delta = cond - uncond, replaced by the momentum running average if a buffer is given
        delta = delta * min(1, norm_threshold / ||delta||)         (norms over ``dims``)
        delta = delta_orthogonal_to_cond + eta * delta_parallel_to_cond
        out   = cond + (scale - 1) * delta

    With eta = 0 the guidance never pushes along the conditional prediction itself, which is
    what keeps high scales (the original's default is 15) from over-saturating. The buffer keeps
    the un-clipped average, as the original does. Returns the dtype of ``cond``.
    """
    delta = cond.float() - uncond.float()
    if momentum_buffer is not None:
        delta = momentum_buffer.update(delta)
    if norm_threshold > 0:
        norm = delta.norm(p=2, dim=tuple(dims), keepdim=True)
        # norm 0 gives inf here and min() picks 1: a zero difference stays zero.
        delta = delta * torch.clamp(norm_threshold / norm, max=1.0)
    parallel, orthogonal = project(delta, cond, dims)
    update = orthogonal + eta * parallel
    return (cond.double() + (scale - 1.0) * update).to(cond.dtype)


# ---------------------------------------------------------------------------------------------
# CFG-Zero* and double-condition guidance
# ---------------------------------------------------------------------------------------------
def optimized_scale(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Per batch item, the s minimising ||cond - s*uncond||^2: <cond, uncond> / ||uncond||^2
    (1e-8 keeps an all-zero uncond finite). Shape [B, 1, 1, ...] for broadcasting."""
    c = cond.float().reshape(cond.shape[0], -1)
    u = uncond.float().reshape(uncond.shape[0], -1)
    alpha = (c * u).sum(dim=1) / ((u * u).sum(dim=1) + 1e-8)
    return alpha.reshape((cond.shape[0],) + (1,) * (cond.ndim - 1))


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float, step_index: int,
                  zero_steps: int = 1, use_zero_init: bool = True) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): out = alpha*u + scale*(c - alpha*u), alpha = optimized_scale.

    Zero-init: for ``step_index <= zero_steps`` (inclusive, so the default zero_steps=1 zeroes
    steps 0 and 1, as the paper's code and the original do) the velocity is 0, i.e. the first
    Euler steps leave the noise untouched, because the earliest velocity estimates are poor.

    ``step_index`` is the index in the whole sampling schedule, not within the guidance interval:
    zero-init is about the first steps of sampling. This matches the original (pipeline_ace_step.py passes the global step index to apg_guidance.py ``cfg_zero_star``);
    the consequence there - with a guidance interval that starts after step ``zero_steps`` the
    unguided conditional pass runs on those steps and zero-init never happens - is kept, since
    zeroing the first *guided* steps in the middle of sampling would freeze the latent there,
    which is not what the method is for.
    """
    if use_zero_init and step_index <= zero_steps:
        return torch.zeros_like(cond)
    alpha = optimized_scale(cond, uncond)
    u = uncond.float() * alpha
    return (u + scale * (cond.float() - u)).to(cond.dtype)


def double_condition_guidance(cond: torch.Tensor, cond_text_only: torch.Tensor, uncond: torch.Tensor,
                              text_scale: float, lyric_scale: float) -> torch.Tensor:
    """Two-scale guidance from three passes: full condition c, text-only condition c_t (lyrics
    removed or ERG-weakened) and unconditional u:

        out = u + text_scale*(c_t - u) + lyric_scale*(c - c_t)
            = (1 - text_scale)*u + (text_scale - lyric_scale)*c_t + lyric_scale*c

    The original uses it instead of cfg/apg/cfg_star whenever ``double_condition_active`` and
    with the undecayed scales."""
    return (1.0 - text_scale) * uncond + (text_scale - lyric_scale) * cond_text_only + lyric_scale * cond


def double_condition_active(text_scale: float | None, lyric_scale: float | None) -> bool:
    """The original switches to double-condition guidance only when both scales exceed 1."""
    return text_scale is not None and lyric_scale is not None and text_scale > 1.0 and lyric_scale > 1.0


def cfg_active(scale: float) -> bool:
    """Guidance (and the extra unconditional pass) is skipped for scale 0 or 1, as in the original."""
    return scale not in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Guidance interval and decay
# ---------------------------------------------------------------------------------------------
def guidance_interval_bounds(total_steps: int, interval: float) -> tuple[int, int]:
    """[start, end) of the guided steps: the middle ``interval`` fraction of the schedule.

    ``total_steps`` counts model evaluations in the original's loop (heun: 2N - 1). The
    expressions keep the original's operation order, so float truncation matches it
    (60 steps, 0.5 -> steps 15..44)."""
    start = int(total_steps * ((1 - interval) / 2))
    end = int(total_steps * (interval / 2 + 0.5))
    return start, end


def guidance_interval_active(step_index: int, total_steps: int, interval: float) -> bool:
    start, end = guidance_interval_bounds(total_steps, interval)
    return start <= step_index < end


def guidance_scale_at(step_index: int, total_steps: int, scale: float, interval: float = 0.5,
                      decay: float = 0.0, min_scale: float = 3.0) -> float | None:
    """The guidance scale for one step, or None outside the guidance interval (then the
    original runs the conditional pass alone: no guidance and no momentum update).

    With ``decay > 0`` the scale falls linearly across the interval from ``scale`` towards
    ``min_scale``: scale - (scale - min_scale) * progress * decay, progress = 0 on the first
    guided step and 1 on the last. The original divides by (end - start - 1), which is zero
    when the interval holds a single step (in ``text2music_diffusion_process`` (end - start - 1) is then 0 and the original divides by it); that step gets progress 0 here.
    """
    start, end = guidance_interval_bounds(total_steps, interval)
    if not start <= step_index < end:
        return None
    if decay <= 0:
        return float(scale)
    span = end - start - 1
    progress = (step_index - start) / span if span > 0 else 0.0
    return float(scale - (scale - min_scale) * progress * decay)


def step_index_from_sigma(sigma, sigmas) -> int:
    """Index of the step evaluated at ``sigma`` in a schedule ``sigmas`` (N+1 values ending
    with the final sigma, usually 0), for hooks that see only the current sigma - e.g. ComfyUI
    model patches with ``transformer_options["sample_sigmas"]``. The nearest of the N evaluated
    sigmas wins, so float noise in the hook's sigma does not matter. A batch of sigmas (ComfyUI
    passes one per item) must agree; the first is used."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError("a sigma schedule needs at least two values (start and end)")
    value = float(torch.as_tensor(sigma, dtype=torch.float64).flatten()[0])
    if math.isnan(value):
        raise ValueError("sigma is NaN")
    return int(torch.argmin((s[:-1] - value).abs()))


# ---------------------------------------------------------------------------------------------
# Converting ComfyUI's denoised estimates (flow convention: x0 = x - sigma * v)
# ---------------------------------------------------------------------------------------------
def _per_item(sigma, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=like.device, dtype=torch.float32)
    return s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim > 0 else s


def velocity_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """v = (x - x0) / sigma; ``sigma`` a float or one value per batch item (must be > 0)."""
    return (x.float() - denoised.float()) / _per_item(sigma, x)


def denoised_from_velocity(x: torch.Tensor, velocity: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x - sigma * v."""
    return x.float() - _per_item(sigma, x) * velocity.float()


# ---------------------------------------------------------------------------------------------
# ERG ("energy" guidance): weakened queries make the unconditional branch
# ---------------------------------------------------------------------------------------------
# The original builds its unconditional predictions with some attention queries multiplied by
# tau = 0.01 (forward hooks on the query projections, pipeline_ace_step.py):
#   * diffusion ERG: the unconditional transformer pass, attn.to_q and cross_attn.to_q of
#     transformer blocks 15..19;
#   * lyric ERG: the unconditional (and "text only") context, lyric_encoder.encoders[4] and [5]
#     self_attn.linear_q;
#   * tag ERG: the unconditional text embedding, UMT5 encoder blocks 8 and 9 SelfAttention.q
#     (``TextEncoder.encode(..., query_scale_blocks=ERG_TAG_QUERY_SCALES)`` does that one).
ERG_TAU = 0.01
ERG_DIFFUSION_BLOCKS = (15, 16, 17, 18, 19)
ERG_LYRIC_LAYERS = (4, 5)
ERG_TAG_BLOCKS = (8, 9)


def _pick(sequence, indices, what: str, strict: bool):
    out = []
    for i in indices:
        if 0 <= i < len(sequence):
            out.append(sequence[i])
        elif strict:
            raise IndexError(f"ERG needs {what} {i}, but the model has only {len(sequence)}; "
                             "pass strict=False to use the ones that exist (e.g. for tiny test models)")
    return out


def erg_diffusion_modules(transformer, blocks: Iterable[int] = ERG_DIFFUSION_BLOCKS, strict: bool = True) -> list:
    """The self- and cross-attention modules whose queries diffusion ERG scales, from any
    object with ``transformer_blocks[i].attn`` / ``.cross_attn`` (our AceStepTransformer)."""
    picked = _pick(transformer.transformer_blocks, list(blocks), "transformer block", strict)
    return [m for block in picked for m in (block.attn, block.cross_attn)]


def erg_lyric_modules(transformer, layers: Iterable[int] = ERG_LYRIC_LAYERS, strict: bool = True) -> list:
    """The lyric-encoder self-attention modules whose queries lyric ERG scales
    (``transformer.lyric_encoder.encoders[i].self_attn``)."""
    picked = _pick(transformer.lyric_encoder.encoders, list(layers), "lyric encoder layer", strict)
    return [layer.self_attn for layer in picked]


def _flatten_modules(modules) -> list:
    flat, seen = [], set()
    stack = [modules]
    while stack:
        item = stack.pop()
        if not hasattr(item, "query_scale"):
            if isinstance(item, (str, bytes, torch.Tensor)) or not hasattr(item, "__iter__"):
                raise TypeError(f"{type(item).__name__} has no 'query_scale' attribute to scale")
            stack.extend(reversed(list(item)))  # list, tuple, pair, generator, nn.ModuleList
            continue
        if id(item) not in seen:  # a module listed twice is still scaled once
            seen.add(id(item))
            flat.append(item)
    return flat


@contextlib.contextmanager
def scaled_queries(modules, tau: float = ERG_TAU) -> Iterator[list]:
    """Within the block, every given module's ``query_scale`` is multiplied by ``tau``; the
    previous values come back on exit, also after an exception.

    ``modules``: any object with a ``query_scale`` attribute, or lists / tuples / (attn,
    cross_attn) pairs of them, e.g. ``erg_diffusion_modules(transformer)`` or
    ``transformer.attention_modules()[15:20]``. Multiplying rather than overwriting lets
    blocks nest. Yields the flat module list.
    """
    flat = _flatten_modules(modules)
    saved = [m.query_scale for m in flat]
    try:
        for m, old in zip(flat, saved):
            m.query_scale = old * tau
        yield flat
    finally:
        for m, old in zip(flat, saved):
            m.query_scale = old
