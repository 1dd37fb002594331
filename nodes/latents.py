"""EmptyAceStepLatentAudio and LatentOperationTonemapReinhard, for ComfyUI versions without them.

Same ids, inputs, defaults and outputs as ComfyUI's built-ins (comfy_extras/nodes_ace.py and
comfy_extras/nodes_latent.py in 0.3.75), and the same results; where the built-ins exist ComfyUI
keeps them and ignores these.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm

from acestep_core.constants import LATENT_CHANNELS, LATENT_HEIGHT, frames_for_seconds


class EmptyAceStepLatentAudio:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seconds": ("FLOAT", {
                    "default": 120.0, "min": 1.0, "max": 1000.0, "step": 0.1,
                    "tooltip": "Length of the music to generate, in seconds (the model was trained "
                               "on songs up to 240 s)."}),
                "batch_size": ("INT", {
                    "default": 1, "min": 1, "max": 4096,
                    "tooltip": "The number of latent images in the batch."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent/audio"

    def generate(self, seconds, batch_size):
        # int(seconds * 44100 / 512 / 8) frames: 10.77 latent frames per second.
        frames = frames_for_seconds(seconds)
        latent = torch.zeros([batch_size, LATENT_CHANNELS, LATENT_HEIGHT, frames], device=mm.intermediate_device())
        return ({"samples": latent, "type": "audio"},)


def tonemap_reinhard(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Compress large latent vectors with Reinhard's curve m / (1 + m), per position.

    m = the length of the vector across channels at each position; the curve is applied to
    m / top with top = (mean(m) + 5 std(m)) * multiplier over each sample, so typical vectors
    shrink slightly and outliers are squashed hardest; directions are kept."""
    magnitude = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]      # [B, 1, ...]
    direction = latent / magnitude
    # Statistics over dims 1-3, as ComfyUI (all non-batch dims of an audio or image latent).
    dims = (1, 2, 3) if magnitude.ndim >= 4 else tuple(range(1, magnitude.ndim))
    top = (magnitude.std(dim=dims, keepdim=True) * 5 + magnitude.mean(dim=dims, keepdim=True)) * multiplier
    scaled = magnitude * (1.0 / top)        # same operation order as ComfyUI: bit-identical results
    return direction * (scaled / (scaled + 1.0) * top)


class LatentOperationTonemapReinhard:
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "multiplier": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01,
                    "tooltip": "Where compression starts, as a multiple of mean + 5 std of the "
                               "latent's vector lengths; lower compresses more."}),
            }
        }

    RETURN_TYPES = ("LATENT_OPERATION",)
    FUNCTION = "op"
    CATEGORY = "latent/advanced/operations"

    def op(self, multiplier):
        def operation(latent, **kwargs):
            return tonemap_reinhard(latent, multiplier)
        return (operation,)


NODE_CLASS_MAPPINGS = {
    "EmptyAceStepLatentAudio": EmptyAceStepLatentAudio,
    "LatentOperationTonemapReinhard": LatentOperationTonemapReinhard,
}
# No display names: the built-ins have none, and a mapping here would rename them.
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
