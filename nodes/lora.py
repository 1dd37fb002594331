"""AceStepLoraLoader: ACE-Step LoRA files as ComfyUI weight patches.

acestep_core.lora reads the file (the released lyric2vocal / RapMachine layout and the other
common key layouts), checks every A/B pair against the transformer's weight shapes and resolves
the scale from the LoRA's own config: ``.alpha`` tensors, embedded adapter metadata or
``adapter_config.json`` beside the file, else the released training config (r = 256,
alpha = 32, rsLoRA: scale alpha / sqrt(r) = 2.0). ComfyUI's own LoRA loader would apply such a
file with scale 1.0.

Each adapted weight becomes one ComfyUI "lora" patch on a clone of the MODEL (ModelPatcher.
add_patches), so the usual ComfyUI behaviour holds: several loaders stack, low-VRAM mode applies
the patch on the fly, and a sampler fed the unpatched MODEL runs on the original weights.
The patch computes W + strength * (alpha' / r) * B @ A with alpha' = scale * r, so the added
term is strength * scale * B @ A in float32, exactly ``acestep_core.lora.lora_delta``.
"""
from __future__ import annotations

import math

import folder_paths
from comfy.weight_adapter.lora import LoRAAdapter

from acestep_core.lora import LoraError, load_lora

from .common import CATEGORY, log, node_errors
MODEL_PREFIX = "diffusion_model."         # ModelPatcher keys of the transformer's weights


def _alpha_for_scale(scale: float, rank: int) -> float:
    """An alpha with alpha / rank == scale exactly in float64, as ComfyUI divides it (it then
    multiplies by strength: strength * (alpha / rank) must be strength * scale bit for bit)."""
    alpha = scale * rank
    for _ in range(8):
        ratio = alpha / rank
        if ratio == scale:
            return alpha
        alpha = math.nextafter(alpha, math.inf if ratio < scale else -math.inf)
    return scale * rank   # not reachable for finite values; the difference would be one ulp


def transformer_shapes(model) -> dict[str, tuple]:
    """Canonical transformer key -> weight shape of a MODEL whose diffusion_model is ACE-Step's."""
    state = model.model_state_dict(filter_prefix=MODEL_PREFIX)
    return {k[len(MODEL_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def lora_patches(lora) -> dict[str, LoRAAdapter]:
    """ModelPatcher patches for a LoraWeights: one LoRAAdapter per adapted weight."""
    patches = {}
    for key, patch in lora.items():
        rank = patch.A.shape[0]
        alpha = _alpha_for_scale(float(patch.scale), rank)
        # LoRAAdapter weights: (up = B, down = A, alpha, mid, dora_scale, reshape).
        patches[MODEL_PREFIX + key] = LoRAAdapter(set(), (patch.B, patch.A, alpha, None, None, None))
    return patches


def apply_lora(model, path, strength: float):
    """MODEL clone with the LoRA at ``path`` added as weight patches. Returns (model, lora)."""
    shapes = transformer_shapes(model)
    if not shapes:
        raise LoraError("the MODEL has no diffusion_model weights; connect the ACE-Step model")
    lora = load_lora(path, shapes)
    patched = model.clone()
    if float(strength) != 0.0:
        applied = patched.add_patches(lora_patches(lora), float(strength))
        if len(applied) != len(lora):
            missing = sorted(set(MODEL_PREFIX + k for k in lora) - set(applied))
            raise LoraError(f"{len(missing)} LoRA weights were not found in the model, e.g. {missing[0]}")
    for warning in lora.warnings:
        log.warning("AceStepLoraLoader: %s: %s", getattr(path, "name", path), warning)
    return patched, lora


class AceStepLoraLoader:
    DESCRIPTION = ("Apply an ACE-Step LoRA (e.g. the released lyric2vocal or RapMachine LoRAs) to the model with "
                   "the scale it was trained with. Chain several to stack them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The ACE-Step model (LoadAceStepCheckpoint or another LoRA loader)."}),
                "lora_name": (folder_paths.get_filename_list("loras"), {
                    "tooltip": "A LoRA .safetensors file from models/loras (diffusers/PEFT layout: "
                               "'<module>.lora_A.weight' / '.lora_B.weight'). Its alpha / rank / rsLoRA come from "
                               "the file's metadata, .alpha tensors or adapter_config.json beside it; otherwise the "
                               "released ACE-Step LoRA config (r 256, alpha 32, rsLoRA: scale 2.0)."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                    "tooltip": "LoRA weight (the original app's range is -3..3, default 1). 0 = the model "
                               "unchanged. Note: ComfyUI's LoraLoader applies the released files at half this "
                               "scale (it ignores rsLoRA)."}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied (the input model is left unchanged).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, lora_name, strength):
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ValueError(f"AceStepLoraLoader: LoRA '{lora_name}' was not found in the loras folders "
                             f"({', '.join(folder_paths.get_folder_paths('loras'))}).")
        with node_errors("AceStepLoraLoader", (LoraError, FileNotFoundError, ValueError)):
            patched, _ = apply_lora(model, path, strength)
        return (patched,)


NODE_CLASS_MAPPINGS = {"AceStepLoraLoader": AceStepLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"AceStepLoraLoader": "ACE-Step LoRA Loader"}
