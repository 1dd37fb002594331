"""What every node module of the pack shares: the menu category, the logger, the error prefix that
tells the user which node failed, the check of an ACE-Step latent, and the LATENT handling that the
restore step after a task (AceStepRestoreSource, AceStep15RestoreSource) has in common."""
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


def with_ui_text(result: tuple, messages: list[str]):
    """A node's return value; its warnings also go to the node's UI output (shown by text widgets)."""
    if messages:
        return {"ui": {"text": messages}, "result": result}
    return result


# ---------------------------------------------------------------------------------------------
# After sampling a task node's latent: what the v1 and the 1.5 restore step share. What each puts
# back differs (v1: [B, 8, 16, T] latents and the 240 s extend window; 1.5: [B, 64, T] latents and
# the padding cut off), so that stays in nodes/tasks.py and nodes/ace15_tasks.py.
# ---------------------------------------------------------------------------------------------
def split_task_latent(samples: dict, key: str) -> tuple[dict, dict | None]:
    """A sampled LATENT -> (the LATENT without its noise_mask and its task data, the task data under
    ``key``, or None where no task node made the latent). The samplers copy both keys from their
    input latent to their output; neither belongs in the finished latent."""
    task = samples.get(key)
    out = {k: v for k, v in samples.items() if k not in ("noise_mask", key)}
    return out, task if isinstance(task, dict) else None


def source_for_each_item(node: str, source: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """A task's source latent on the sampled latent's device and dtype, one per sampled item (a
    source of one serves every item), or a ValueError when the batches do not match."""
    source = source.to(device=sampled.device, dtype=sampled.dtype)
    if source.shape[0] not in (1, sampled.shape[0]):
        raise ValueError(f"{node}: the sampled batch ({sampled.shape[0]}) does not match the source batch "
                         f"({source.shape[0]}).")
    return source.expand(sampled.shape[0], *source.shape[1:])


def restored_output(out: dict, messages: list[str]):
    """The restore step's return value: the finished LATENT, its warnings logged and shown."""
    for message in messages:
        log.warning(message)
    return with_ui_text((out,), messages)


def bool_input(default: bool, tooltip: str):
    """A BOOLEAN input spec."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def float_input(default: float, lo: float, hi: float, step: float, tooltip: str):
    """A FLOAT input spec."""
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})
