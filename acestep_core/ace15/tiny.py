"""Tiny ACE-Step 1.5 I/O components (VAE, text encoder) with random, reproducible weights.

Tests and ``scripts/make_ace15_io_golden.py`` build the same weights from the same seed (the
golden file records a checksum of them), so ComfyUI 0.20.1's code and ours are compared on
identical weights without storing megabytes in the repository. The tiny text encoder keeps the
real vocabulary (151669) so real prompts tokenise into valid ids; everything else is small.
"""
from __future__ import annotations

import math

import torch

from .text_encoder import Qwen3EncoderConfig, Qwen3TextEncoder
from .vae import OobleckConfig, OobleckVAE

# Real strides and latent width (so hop 1920 and 64 channels are exercised), narrow convolutions.
TINY_VAE_CONFIG = OobleckConfig(channels=4, c_mults=(1, 2, 2, 2, 4), strides=(2, 4, 4, 6, 10), latent_channels=64)
# Width 24 = the tiny condition encoder's text_hidden_dim (acestep_core.ace15.config.tiny_config).
TINY_TEXT_CONFIG = Qwen3EncoderConfig(vocab_size=151669, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def randomize_(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fill every floating tensor in key order from one seeded generator: matrices and kernels
    ~ N(0, 1/fan_in), weight-norm magnitudes (``original0``) in [0.5, 1.5), norm weights ~ 1 +
    N(0, 0.1), other vectors (biases, log-scale Snake parameters) ~ N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point():
            continue
        shape = tensor.shape
        if key.endswith("original0"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif tensor.ndim >= 2:
            value = torch.randn(shape, generator=generator) / math.sqrt(max(math.prod(shape[1:]), 1))
        elif key.endswith("norm.weight") or key.endswith("layernorm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value.to(tensor.dtype).contiguous()
    return state


def random_vae_state(config: OobleckConfig = TINY_VAE_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-keyed state dict of a VAE with random weights."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in OobleckVAE(config).state_dict().items()}
    return randomize_({k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}, seed)


def random_text_encoder_state(config: Qwen3EncoderConfig = TINY_TEXT_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3Model-keyed state dict of a text encoder with random weights."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in Qwen3TextEncoder(config).state_dict().items()}
    return randomize_({k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}, seed)


def checksum(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """[sum, sum of squares, sum of index-weighted values] over all tensors in key order, float64:
    detects a change of the generator or the fill rule."""
    total = torch.zeros(3, dtype=torch.float64)
    for key in sorted(state):
        t = state[key].double().flatten()
        total += torch.stack([t.sum(), (t * t).sum(), (t * torch.arange(t.numel(), dtype=torch.float64)).sum() / max(t.numel(), 1)])
    return total


__all__ = ["TINY_VAE_CONFIG", "TINY_TEXT_CONFIG", "randomize_", "random_vae_state", "random_text_encoder_state",
           "checksum"]
