"""Loaders: an ACE-Step checkpoint of either generation -> MODEL, CLIP, VAE.

``LoadAceStepCheckpoint`` takes one file or folder and tells v1 from 1.5 by its keys:

* v1: ComfyUI's single file ``ace_step_v1_3.5b.safetensors`` (listed from ComfyUI's ``checkpoints``
  folders like any checkpoint) or the original repository's folder with ``ace_step_transformer/``,
  ``music_dcae_f8c8/``, ``music_vocoder/`` and ``umt5-base/``;
* 1.5 / 1.5 XL: Comfy-Org's all-in-one file (``ace_step_1.5_turbo_aio.safetensors``) or the official
  Hugging Face download (a folder holding ``acestep-v15-*/``, ``vae/``, ``Qwen3-Embedding-0.6B/`` and
  optionally ``acestep-5Hz-lm-*/``).

Folders are listed by name, found under the ``checkpoints`` and ``diffusion_models`` folders.
``LoadAceStep15Split`` takes Comfy-Org's split 1.5 files from ``diffusion_models``, ``text_encoders``
and ``vae`` (what UNETLoader + DualCLIPLoader + VAELoader take in ComfyUI's own templates).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

import comfy.model_management as mm
import folder_paths

from acestep_core.ace15.loading import SILENCE_FILE, detect_generation, resolve_sources
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


def is_ace15_download(folder: Path) -> bool:
    """The official ACE-Step 1.5 Hugging Face download: a folder with a DiT sub-folder, which is
    the one that ships ``silence_latent.pt`` beside its weights (what the folder holds is checked
    from the keys when it is loaded)."""
    try:
        return any(sub.is_dir() and (sub / SILENCE_FILE).is_file() for sub in folder.iterdir())
    except OSError:
        return False


def find_folder_checkpoints() -> dict[str, Path]:
    """Folders in the original ACE-Step layout (v1) or the official 1.5 download, keyed by their
    path relative to the models folder they were found in (the name shown in the loader). The
    first folder of a name wins."""
    found: dict[str, Path] = {}
    for root in _search_roots():
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            if depth > 0 and (is_folder_checkpoint(here) or is_ace15_download(here)):
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
        f"folders ({searched}). Put the checkpoint (ace_step_v1_3.5b.safetensors, "
        "ace_step_1.5_turbo_aio.safetensors, or an original ACE-Step folder) in models/checkpoints, then refresh the node list (press R) and pick it again.")


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
    """``load_ace_step`` for a checkpoint file or folder given by its path (v1 or 1.5)."""
    try:
        generation = detect_generation(path)
    except CheckpointError:
        generation = None       # neither: the v1 checks below say what the file is instead
    if generation == "1.5":
        return load_ace15_paths([path], weight_dtype)
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


def load_ace15_paths(paths, weight_dtype: str = "default", single_files: bool = False):
    """ACE-Step 1.5 (MODEL, CLIP, VAE) from one or more paths in any released layout; a wrong mix
    raises one CheckpointError naming each file and what it is, before any weight is read."""
    from .ace15_bridge import load_from_sources
    sources = resolve_sources(paths, single_files=single_files)
    params = sum(math.prod(shape) for shape in sources.dit.source.shapes.values())
    unet_dtype, text_dtype, vae_dtype = choose_dtypes(weight_dtype, params)
    return load_from_sources(sources, unet_dtype, text_dtype, vae_dtype, held_dtype)


def held_dtype(compute: torch.dtype, stored: torch.dtype | None) -> torch.dtype:
    """How to hold weights stored in ``stored`` for a model computing in ``compute``: as stored
    when that is narrower (16-bit weights for a float32 compute: half the memory of upcasting
    them at load, and the same numbers, since ComfyUI's manual-cast layers upcast each weight at
    use), else in ``compute`` (a narrower compute dtype is applied once, at load)."""
    if stored is not None and stored.itemsize < compute.itemsize:
        return stored
    return compute


class LoadAceStepCheckpoint:
    """Load ACE-Step v1 (3.5B) or 1.5 / 1.5 XL from any released single file or folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (list_checkpoint_names(), {
                    "tooltip": "The ACE-Step checkpoint. v1: ace_step_v1_3.5b.safetensors, or a folder in "
                               "the original layout (ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, "
                               "umt5-base/). 1.5: ace_step_1.5_turbo_aio.safetensors (or another all-in-one "
                               "file), or the official download folder (acestep-v15-*/, vae/, "
                               "Qwen3-Embedding-0.6B/, optionally acestep-5Hz-lm-*/). Files from "
                               "models/checkpoints; folders under models/checkpoints or models/diffusion_models."}),
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
                       "The text encoder and tokenizers (and the 1.5 planner when the checkpoint has one): "
                       "tags and lyrics -> conditioning.",
                       "The audio VAE: latent <-> audio (v1: 44.1 kHz, 1.5: 48 kHz) for VAEDecodeAudio / "
                       "VAEEncodeAudio.")
    FUNCTION = "load"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads an ACE-Step music model, v1 or 1.5 (ComfyUI single file or the official folders; "
                   "the generation is told from the weights), and returns its diffusion model, text encoder "
                   "and audio VAE.")

    def load(self, ckpt_name, weight_dtype="default"):
        return load_ace_step(ckpt_name, weight_dtype)


NONE = "none"


def _files(kind: str) -> list[str]:
    try:
        return folder_paths.get_filename_list(kind)
    except KeyError:
        return []


def _full_path(kind: str, name: str) -> Path:
    try:
        path = folder_paths.get_full_path(kind, name)
    except KeyError:
        path = None
    if path is None:
        raise CheckpointError(f"'{name}' was not found in ComfyUI's {kind} folder; put the file there, refresh "
                              "the node list (press R) and pick it again.")
    return Path(path)


class LoadAceStep15Split:
    """ACE-Step 1.5 from Comfy-Org's split files: the DiT, the Qwen3-Embedding text encoder (with an
    optional planner) and the 48 kHz VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        text_encoders = _files("text_encoders")
        return {
            "required": {
                "unet_name": (_files("diffusion_models"), {
                    "tooltip": "The 1.5 DiT, e.g. acestep_v1.5_turbo.safetensors (models/diffusion_models)."}),
                "text_encoder_name": (text_encoders, {
                    "tooltip": "The 1.5 text encoder, qwen_0.6b_ace15.safetensors (models/text_encoders)."}),
                "vae_name": (_files("vae"), {"tooltip": "The 1.5 VAE, ace_1.5_vae.safetensors (models/vae)."}),
            },
            "optional": {
                "planner_name": ([NONE] + text_encoders, {
                    "default": NONE,
                    "tooltip": "The 5 Hz planner (qwen_1.7b_ace15 / qwen_4b_ace15), needed for "
                               "generate_audio_codes; none: the DiT runs without audio-code hints."}),
                "weight_dtype": (WEIGHT_DTYPES, {"default": "default",
                                                 "tooltip": "Precision of the DiT and text encoder (see "
                                                            "Load ACE-Step Checkpoint)."}),
            },
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads ACE-Step 1.5 from its split files (diffusion model, text encoder, optional planner, "
                   "VAE); a wrong mix is reported with what each file is.")

    def load(self, unet_name, text_encoder_name, vae_name, planner_name=NONE, weight_dtype="default"):
        paths = [_full_path("diffusion_models", unet_name), _full_path("text_encoders", text_encoder_name),
                 _full_path("vae", vae_name)]
        if planner_name and planner_name != NONE:
            paths.append(_full_path("text_encoders", planner_name))
        return load_ace15_paths(paths, weight_dtype, single_files=True)


NODE_CLASS_MAPPINGS = {"LoadAceStepCheckpoint": LoadAceStepCheckpoint, "LoadAceStep15Split": LoadAceStep15Split}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadAceStepCheckpoint": "Load ACE-Step Checkpoint",
                              "LoadAceStep15Split": "Load ACE-Step 1.5 (split files)"}
