"""Flow-edit (Kulikov et al. 2024, "FlowEdit") for ACE-Step as per-step functions.

Edits a source latent x_src (lyrics or style) without inverting it: on each edited step the
source is noised afresh, z_src = (1-s)*x_src + s*eps, the current edit is moved by the same
offset, z_tar = z_src + (z_edit - x_src), and z_edit follows the *difference* of the target's
and the source's guided velocities,

    V = mean over eps of [ v_target(z_tar, s) - v_source(z_src, s) ],   z_edit += (s' - s) * V.

Where source and target conditioning agree the difference is ~0 and the source survives; only
what the conditioning change asks for moves. Steps before ``start`` are skipped; steps from
``end`` on (only when edit_n_max < 1) are ordinary sampling of the target, started from the
edit noised back to the current sigma (``flowedit_target_start``): this lets the "remix"
preset re-generate the fine detail freely.

Checked against pipeline_ace_step.py ``flowedit_diffusion_process`` and ``calc_v``.
Differences, on purpose:
* z_tar is computed as z_src + (z_edit - x_src) rather than z_edit + z_src - x_src: the same
  number mathematically, but when z_edit == x_src it gives z_src bit for bit, so identical
  source and target conditioning return the source exactly;
* guidance state: the original's source APG uses a momentum buffer while its target APG, in the
  edit phase, uses none (``momentum_buffer_tar`` is only passed after n_max), so even identical
  conditionings drift apart. Give each velocity function its own ``MomentumBuffer`` and keep
  it across both phases;
* the original's "pingpong" edit phase never updates z_edit (``flowedit_diffusion_process``: its pingpong branch computes prev_sample and drops it); only Euler is offered.
The original always guides flow-edit with APG (``calc_v``'s default; ``cfg_type`` is never
passed) at one scale for both streams, with no guidance interval - the velocity functions
given here decide that.

A velocity function is ``v(z, sigma) -> guided velocity`` (same shape as z); ``sigma`` is a
Python float.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from ..sampling.flow import euler_step

__all__ = ["EDIT_PRESETS", "edit_step_range", "edit_phase", "flowedit_velocity", "flowedit_step",
           "flowedit_target_start", "flowedit_sample"]

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]

# The original UI's two edit types (acestep/ui/components.py): (edit_n_min, edit_n_max).
EDIT_PRESETS = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}


def edit_step_range(steps: int, n_min: float, n_max: float) -> tuple[int, int]:
    """[start, end) of the edited steps: (int(steps * n_min), int(steps * n_max)), as the
    original. 60 steps: only_lyrics -> (36, 60), remix -> (12, 24)."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    n_min, n_max = float(n_min), float(n_max)
    if not 0.0 <= n_min <= n_max <= 1.0:  # also rejects NaN
        raise ValueError(f"need 0 <= edit_n_min <= edit_n_max <= 1 (got {n_min}, {n_max})")
    return int(steps * n_min), int(steps * n_max)


def edit_phase(step_index: int, start: int, end: int) -> str:
    """'skip' before ``start``, 'edit' in [start, end), 'sample' from ``end`` on."""
    if step_index < start:
        return "skip"
    return "edit" if step_index < end else "sample"


def _offset(z_src: torch.Tensor, z_edit: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
    # z_src + (z_edit - x_src): exactly z_src while nothing has been edited yet.
    return (z_src.float() + (z_edit.float() - x_src.float())).to(z_edit.dtype)


def _noised(x_src: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    return ((1.0 - sigma) * x_src.float() + sigma * noise.float()).to(x_src.dtype)


def flowedit_velocity(v_target_fn: VelocityFn, v_source_fn: VelocityFn, z_edit: torch.Tensor,
                      x_src: torch.Tensor, sigma, noise_list: Sequence[torch.Tensor]) -> torch.Tensor:
    """The edit direction V at ``sigma`` (float32), averaged over the noises in ``noise_list``
    (the original's n_avg draws, default 1). For each noise: z_src = (1-s)*x_src + s*eps,
    z_tar = z_src + (z_edit - x_src), V += (v_target(z_tar) - v_source(z_src)) / n."""
    noise_list = list(noise_list)
    if not noise_list:
        raise ValueError("flow-edit needs at least one noise sample per step")
    sigma = float(sigma)
    total = torch.zeros(x_src.shape, dtype=torch.float32, device=x_src.device)
    for noise in noise_list:
        z_src = _noised(x_src, noise, sigma)
        z_tar = _offset(z_src, z_edit, x_src)
        total += v_target_fn(z_tar, sigma).float() - v_source_fn(z_src, sigma).float()
    return total / len(noise_list)


def flowedit_step(z_edit: torch.Tensor, velocity_delta: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """z_edit + (s' - s) * V in float32, returned in z_edit's dtype (plain Euler)."""
    return euler_step(z_edit, velocity_delta, float(sigma), float(sigma_next), omega=0.0)


def flowedit_target_start(z_edit: torch.Tensor, x_src: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """Start of the plain-sampling phase: the edit carried to ``sigma`` along a fresh noising of
    the source, (sigma*eps + (1-sigma)*x_src) + (z_edit - x_src)."""
    return _offset(_noised(x_src, noise, float(sigma)), z_edit, x_src)


def flowedit_sample(v_target_fn: VelocityFn, v_source_fn: VelocityFn, x_src: torch.Tensor,
                    sigmas: Iterable[float], n_min: float, n_max: float,
                    noise_fn: Callable[[], torch.Tensor], n_avg: int = 1,
                    on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The whole flow-edit loop over a schedule ``sigmas`` (N+1 values ending at 0).

    ``noise_fn()`` returns one fresh noise shaped like x_src each call (the original draws them
    from the retake seeds' generators: n_avg per edited step, one at the switch to sampling).
    Returns the edited latent (z_edit when n_max = 1, else the sampled target)."""
    sigmas = [float(s) for s in sigmas]
    steps = len(sigmas) - 1
    start, end = edit_step_range(steps, n_min, n_max)
    if int(n_avg) < 1:
        raise ValueError(f"n_avg must be at least 1 (got {n_avg})")
    z_edit = x_src.clone()
    x_tar = None
    for i in range(start, steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if i < end:
            noises = [noise_fn() for _ in range(int(n_avg))]
            delta = flowedit_velocity(v_target_fn, v_source_fn, z_edit, x_src, sigma, noises)
            z_edit = flowedit_step(z_edit, delta, sigma, sigma_next)
            state = z_edit
        else:
            if x_tar is None:
                x_tar = flowedit_target_start(z_edit, x_src, sigma, noise_fn())
            x_tar = euler_step(x_tar, v_target_fn(x_tar, sigma), sigma, sigma_next, omega=0.0)
            state = x_tar
        if on_step is not None:
            on_step(i, state)
    return z_edit if x_tar is None else x_tar
