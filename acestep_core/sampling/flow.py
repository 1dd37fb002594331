"""Rectified-flow sampling math for ACE-Step, as pure tensor functions.

Convention (acestep/schedulers/scheduling_flow_match_euler_discrete.py, ComfyUI ModelType.FLOW): x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1]; the model
gets t = 1000 * sigma and predicts the velocity v = noise - x0. So x0 = x_sigma - sigma * v and an
Euler step from sigma to sigma' is x + (sigma' - sigma) * v.
"""
from __future__ import annotations

import math

import torch

TIMESTEP_MULTIPLIER = 1000.0
DEFAULT_SHIFT = 3.0


def shift_sigma(sigma, shift: float = DEFAULT_SHIFT):
    """Time shift that spends more steps at high noise: shift*s / (1 + (shift - 1)*s)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def simple_sigmas(steps: int, shift: float = DEFAULT_SHIFT, table_size: int = 1000) -> torch.Tensor:
    """steps+1 sigmas from 1 to 0 as ComfyUI's 'simple' scheduler gives them for a flow model:
    it reads a table of shift(k / table_size), k = 1..table_size, at evenly spaced indices counted
    down from the top (index table_size - floor(i * table_size / steps)), then appends 0."""
    _check_steps(steps)
    i = torch.arange(steps, dtype=torch.float64)
    k = table_size - torch.floor(i * table_size / steps)
    sigmas = shift_sigma(k / table_size, shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def original_sigmas(steps: int, shift: float = DEFAULT_SHIFT, sigma_max: float = 1.0) -> torch.Tensor:
    """The original app's Euler schedule (scheduling_flow_match_euler_discrete.py ``FlowMatchEulerDiscreteScheduler.set_timesteps``), reproduced with its double shift: the
    end points are shifted once when the scheduler is built, and every point is shifted again in
    set_timesteps, so the last non-zero sigma is shift(shift(0.001)) ~= 0.00893 rather than 0.003.
    A final 0 is appended."""
    _check_steps(steps)
    top = shift_sigma(torch.tensor(sigma_max, dtype=torch.float64), shift)
    bottom = shift_sigma(torch.tensor(0.001, dtype=torch.float64), shift)
    grid = torch.linspace(float(top), float(bottom), steps, dtype=torch.float64)
    sigmas = shift_sigma(grid, shift)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def _check_steps(steps: int) -> None:
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")


def omega_factor(omega: float) -> float:
    """The original's 'granularity' rescale of each Euler update: a logistic squash of omega
    into (0.9, 1.1); omega 0 gives exactly 1.0 (``FlowMatchEulerDiscreteScheduler.step``)."""
    return 0.9 + 0.2 / (1 + math.exp(-0.1 * omega))


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float,
               omega: float = 0.0) -> torch.Tensor:
    """One Euler step in float32. With omega != 0 the update's deviation from its mean is scaled
    by omega_factor(omega) (the original's mean-preserving rescale); omega 0 is plain Euler."""
    dx = (sigma_next - sigma) * velocity.float()
    if omega != 0.0:
        dx = omega_rescale(dx, omega)
    return (x.float() + dx).to(x.dtype)


def omega_rescale(update: torch.Tensor, omega: float) -> torch.Tensor:
    """The original's mean-preserving "granularity" rescale, in float32: the deviation of
    ``update`` from its mean (over the whole tensor, every batch item) scaled by
    omega_factor(omega). Linear, so it may be applied to an Euler step's dx (euler_step) or to the
    velocity before the step (the guidance node): x + dt * rescaled(v) is the original's
    x + (dx - mean(dx)) * w + mean(dx)."""
    update = update.float()
    mean = update.mean()
    return (update - mean) * omega_factor(omega) + mean


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def noise_like_latent(shape, seeds, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise with one generator per batch item, as the original draws it, so item i
    depends only on seeds[i] (a shorter list repeats its last seed)."""
    if isinstance(seeds, int):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    batch = shape[0]
    items = []
    for i in range(batch):
        gen = torch.Generator(device="cpu").manual_seed(int(seeds[min(i, len(seeds) - 1)]))
        items.append(torch.randn(tuple(shape[1:]), generator=gen, dtype=torch.float32))
    return torch.stack(items).to(device=device, dtype=dtype)
