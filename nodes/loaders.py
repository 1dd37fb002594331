"""LoadAceStepCheckpoint: one ACE-Step v1 checkpoint -> MODEL, CLIP, VAE.

Accepts both released layouts: ComfyUI's single file ``ace_step_v1_3.5b.safetensors`` (listed
from ComfyUI's ``checkpoints`` folders like any checkpoint) and the original repository's folder
with ``ace_step_transformer/``, ``music_dcae_f8c8/``, ``music_vocoder/`` and ``umt5-base/``
(listed by folder name, found under the ``checkpoints`` and ``diffusion_models`` folders).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

import comfy.model_management as mm
import folder_paths

from acestep_core.checkpoint import CheckpointError, is_folder_checkpoint, open_checkpoint, resolve_dtype
from acestep_core.codec import AudioCodec
from acestep_core.config import AceStepConfig
from acestep_core.loading import AceStepModels, infer_config

from .comfy_bridge import build_component, make_clip, make_model_patcher, make_vae

SEARCHED_FOLDERS = ("checkpoints", "diffusion_models")
FOLDER_SEARCH_DEPTH = 4          # enough for a Hugging Face cache: models--X/snapshots/<hash>/
WEIGHT_DTYPES = ["default", "fp32", "bf16", "fp16"]


# ---------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------
def _search_roots() -> list[Path]:
    roots: list[Path] = []
    for kind in SEARCHED_FOLDERS:
        try:
            paths = folder_paths.get_folder_paths(kind)
        except KeyError:  # a ComfyUI without this folder kind
            continue
        for p in paths:
            path = Path(p)
            if path.is_dir() and path not in roots:
                roots.append(path)
    return roots


def find_folder_checkpoints() -> dict[str, Path]:
    """Folders in the original ACE-Step layout, keyed by their path relative to the models
    folder they were found in (the name shown in the loader). The first folder of a name wins."""
    found: dict[str, Path] = {}
    for root in _search_roots():
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            if depth > 0 and is_folder_checkpoint(here):
                found.setdefault(here.relative_to(root).as_posix(), here)
                dirnames[:] = []          # its sub-folders are parts of this checkpoint
                continue
            if depth >= FOLDER_SEARCH_DEPTH:
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def list_checkpoint_names() -> list[str]:
    """Single files from ComfyUI's checkpoints list, then folder checkpoints; weight files that
    belong to a folder checkpoint are not listed on their own (they are not loadable alone)."""
    folders = find_folder_checkpoints()
    try:
        files = folder_paths.get_filename_list("checkpoints")
    except KeyError:
        files = []
    inside = tuple(name + "/" for name in folders)
    files = [f for f in files if not f.replace(os.sep, "/").startswith(inside)]
    return sorted(files) + sorted(folders)


def resolve_checkpoint(ckpt_name: str) -> Path:
    """The path of a name the loader lists: a file from ComfyUI's checkpoints list (looked up
    directly), else a folder checkpoint (only then are the model folders walked)."""
    try:
        full = folder_paths.get_full_path("checkpoints", ckpt_name)
    except KeyError:
        full = None
    if full is not None and Path(full).is_file():
        return Path(full)
    folders = find_folder_checkpoints()
    if ckpt_name in folders:
        return folders[ckpt_name]
    searched = ", ".join(str(r) for r in _search_roots()) or "(no model folders exist)"
    raise CheckpointError(
        f"Checkpoint '{ckpt_name}' was not found in ComfyUI's checkpoints or diffusion_models "
        f"folders ({searched}). Put ace_step_v1_3.5b.safetensors (or the original ACE-Step folder) "
        "in models/checkpoints, then refresh the node list (press R) and pick it again.")


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------
def choose_dtypes(weight_dtype: str, transformer_params: int = 0) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(transformer, text encoder, codec) dtypes.

    "default" asks ComfyUI, as its own loader does for ACE-Step (bf16 where the GPU supports
    it, else fp32; command-line flags such as --fp32-unet are honoured). The text encoder
    follows the transformer except that fp16 becomes fp32 (UMT5 is prone to fp16 overflow and
    small). The codec runs in fp32 unless --bf16-vae / --fp16-vae is given: it is small and
    the audio is sensitive to its precision."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    if weight_dtype in (None, "", "default"):
        device = mm.get_torch_device()
        unet = mm.unet_dtype(model_params=transformer_params, supported_dtypes=[bf16, fp32])
        if unet not in (bf16, fp16, fp32):          # fp8 / fp64 flags: not supported here
            unet = bf16 if mm.should_use_bf16(device) else fp32
        compute = mm.unet_manual_cast(unet, device, [bf16, fp32])
        if compute is not None:                     # the device cannot compute in `unet`
            unet = compute
    else:
        unet = resolve_dtype(weight_dtype)
    text = fp32 if unet == fp16 else unet
    from comfy.cli_args import args
    vae = bf16 if getattr(args, "bf16_vae", False) else fp16 if getattr(args, "fp16_vae", False) else fp32
    return unet, text, vae


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_ace_step(ckpt_name: str, weight_dtype: str = "default"):
    """-> (MODEL, CLIP, VAE). Any problem with the file raises CheckpointError naming it."""
    return load_ace_step_path(resolve_checkpoint(ckpt_name), weight_dtype)


def load_ace_step_path(path, weight_dtype: str = "default"):
    """``load_ace_step`` for a checkpoint file or folder given by its path."""
    source = open_checkpoint(path)          # validates layout and completeness before any weights
    source.require("transformer", "dcae", "vocoder", "text_encoder")
    params = sum(math.prod(shape) for shape in source.components["transformer"].shapes.values())
    unet_dtype, text_dtype, vae_dtype = choose_dtypes(weight_dtype, params)

    configs = {name: infer_config(part) for name, part in source.components.items()}
    models = AceStepModels(source, AceStepConfig(**configs))
    # Tokenizers are resolved first so that a missing tokenizer is reported before any weights load.
    tag_tokenizer, lyric_tokenizer = models.tag_tokenizer, models.lyric_tokenizer

    transformer = source.components["transformer"]
    model = make_model_patcher(transformer, held_dtype(unet_dtype, transformer.stored_float_dtype()), unet_dtype,
                               configs["transformer"])
    text_encoder = build_component(source.components["text_encoder"], text_dtype, config=configs["text_encoder"])
    clip = make_clip(text_encoder, tag_tokenizer, lyric_tokenizer, source.spiece_model, text_dtype)
    dcae, vocoder = source.components["dcae"], source.components["vocoder"]
    codec = AudioCodec(
        build_component(dcae, held_dtype(vae_dtype, dcae.stored_float_dtype()), vae_dtype, configs["dcae"]),
        build_component(vocoder, held_dtype(vae_dtype, vocoder.stored_float_dtype()), vae_dtype, configs["vocoder"]))
    vae = make_vae(codec, vae_dtype)
    return model, clip, vae


def held_dtype(compute: torch.dtype, stored: torch.dtype | None) -> torch.dtype:
    """How to hold weights stored in ``stored`` for a model computing in ``compute``: as stored
    when that is narrower (16-bit weights for a float32 compute: half the memory of upcasting
    them at load, and the same numbers, since ComfyUI's manual-cast layers upcast each weight at
    use), else in ``compute`` (a narrower compute dtype is applied once, at load)."""
    if stored is not None and stored.itemsize < compute.itemsize:
        return stored
    return compute


class LoadAceStepCheckpoint:
    """Load ACE-Step v1 (3.5B) from either released layout with acestep_core."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (list_checkpoint_names(), {
                    "tooltip": "The ACE-Step v1 checkpoint: ace_step_v1_3.5b.safetensors from "
                               "models/checkpoints, or a folder in the original layout "
                               "(ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, umt5-base/) "
                               "under models/checkpoints or models/diffusion_models."}),
            },
            "optional": {
                "weight_dtype": (WEIGHT_DTYPES, {
                    "default": "default",
                    "tooltip": "Precision of the diffusion transformer (and text encoder). default: "
                               "bf16 on GPUs that support it, else fp32. fp32 doubles memory; fp16 "
                               "is not used by ComfyUI's own ACE-Step support, pick it only when "
                               "bf16 is unavailable."}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The diffusion transformer, for KSampler and the other sampler nodes.",
                       "The text encoder and tokenizers: tags and lyrics -> conditioning.",
                       "The audio codec: latent <-> 44.1 kHz stereo audio (VAEDecodeAudio / VAEEncodeAudio).")
    FUNCTION = "load"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads an ACE-Step v1 music model (ComfyUI single file or the original folders) "
                   "and returns its diffusion model, text encoder and audio VAE.")

    def load(self, ckpt_name, weight_dtype="default"):
        return load_ace_step(ckpt_name, weight_dtype)


NODE_CLASS_MAPPINGS = {"LoadAceStepCheckpoint": LoadAceStepCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadAceStepCheckpoint": "Load ACE-Step Checkpoint"}
