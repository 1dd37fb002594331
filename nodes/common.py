"""What every node module of the pack shares: the menu category, the logger, the error prefix that
tells the user which node failed, and the check of an ACE-Step latent."""
from __future__ import annotations

import contextlib
import logging

import torch

from acestep_core.constants import LATENT_CHANNELS, LATENT_HEIGHT

CATEGORY = "audio/acestep"
log = logging.getLogger("comfyui-acestep")


@contextlib.contextmanager
def node_errors(node: str, catch: tuple[type[BaseException], ...] = (ValueError,)):
    """Re-raise ``catch`` exceptions from the block as a ValueError whose message starts with the
    node's name (once), which is what ComfyUI shows the user."""
    try:
        yield
    except catch as e:
        message = str(e)
        raise ValueError(message if message.startswith(node) else f"{node}: {message}") from None


def check_latent(latent, who: str, source: str = "VAEEncodeAudio with the ACE-Step VAE, or "
                 "EmptyAceStepLatentAudio") -> torch.Tensor:
    """``latent`` as an ACE-Step audio latent [B, 8, 16, T >= 1] (a [B, 128, T] one, as some nodes
    flatten it, is reshaped), or a ValueError from ``who`` saying what is wrong."""
    if not isinstance(latent, torch.Tensor) or getattr(latent, "is_nested", False):
        raise ValueError(f"{who}: expected a latent tensor, got {type(latent).__name__}; ACE-Step audio "
                         f"latents are [batch, {LATENT_CHANNELS}, {LATENT_HEIGHT}, frames].")
    if latent.ndim == 3 and latent.shape[1] == LATENT_CHANNELS * LATENT_HEIGHT:
        latent = latent.reshape(latent.shape[0], LATENT_CHANNELS, LATENT_HEIGHT, latent.shape[-1])
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS or latent.shape[2] != LATENT_HEIGHT:
        raise ValueError(f"{who}: this latent has shape {list(latent.shape)}, but ACE-Step audio latents are "
                         f"[batch, {LATENT_CHANNELS}, {LATENT_HEIGHT}, frames] ({source}). Was the latent "
                         "made for another model?")
    if latent.shape[-1] < 1:
        raise ValueError(f"{who}: the latent has 0 frames; there is no audio in it.")
    return latent


def bool_input(default: bool, tooltip: str):
    """A BOOLEAN input spec."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def float_input(default: float, lo: float, hi: float, step: float, tooltip: str):
    """A FLOAT input spec."""
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})
