"""ACE-Step 1.5 nodes ComfyUI 0.20.1 has built in, for ComfyUI versions without them (0.3.75):
``TextEncodeAceStepAudio1.5``, ``EmptyAceStep1.5LatentAudio`` and ``ReferenceTimbreAudio``
("Reference Audio").

Ids, inputs, defaults, options and outputs are those of ComfyUI 0.20.1's
``comfy_extras/nodes_ace.py`` (``TextEncodeAceStepAudio15``, ``EmptyAceStep15LatentAudio``,
``ReferenceAudio``), so its official 1.5 templates keep their widget values. Where the running
ComfyUI already has a node of an id, this module does not register ours.

``TextEncodeAceStepAudio1.5`` runs with ``generate_audio_codes`` false on any ACE-Step 1.5 text
encoder; with it true it needs the 5 Hz planner, and without one it says so instead of silently
encoding without codes.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm

from acestep_core.ace15.pipeline import latent_frames

LANGUAGES = ['ar', 'az', 'bg', 'bn', 'ca', 'cs', 'da', 'de', 'el', 'en', 'es', 'fa', 'fi', 'fr', 'he', 'hi', 'hr',
             'ht', 'hu', 'id', 'is', 'it', 'ja', 'ko', 'la', 'lt', 'ms', 'ne', 'nl', 'no', 'pa', 'pl', 'pt', 'ro',
             'ru', 'sa', 'sk', 'sr', 'sv', 'sw', 'ta', 'te', 'th', 'tl', 'tr', 'uk', 'ur', 'vi', 'yue', 'zh',
             'unknown']
ROOTS = ["C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B"]
KEYSCALES = [f"{root} {quality}" for quality in ("major", "minor") for root in ROOTS]
TIMESIGNATURES = ['2', '3', '4', '6']
CODES_TOOLTIP = ("Enable the LLM that generates audio codes. This can be slow but will increase the quality of the "
                 "generated audio. Turn this off if you are giving the model an audio reference.")


class PlannerNotLoaded(RuntimeError):
    pass


def text_encoder_kind(clip) -> str:
    """``"ace15"``, ``"ace15+planner"`` or ``"other"`` for a CLIP: ComfyUI 0.20.1's own 1.5 text
    encoder (``ACE15TEModel``: a ``qwen3_06b`` model, and a planner when ``lm_model`` is set) or
    ours (``acestep_generation == "1.5"``, ``has_planner``)."""
    model = getattr(clip, "cond_stage_model", None)
    if getattr(model, "acestep_generation", None) == "1.5":
        return "ace15+planner" if getattr(model, "has_planner", False) else "ace15"
    if model is not None and hasattr(model, "qwen3_06b"):
        return "ace15+planner" if getattr(model, "lm_model", None) else "ace15"
    return "other"


class TextEncodeAceStepAudio15:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP",),
            "tags": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "lyrics": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "bpm": ("INT", {"default": 120, "min": 10, "max": 300}),
            "duration": ("FLOAT", {"default": 120.0, "min": 0.0, "max": 2000.0, "step": 0.1}),
            "timesignature": (TIMESIGNATURES,),
            "language": (LANGUAGES, {"default": "en"}),
            "keyscale": (KEYSCALES,),
            "generate_audio_codes": ("BOOLEAN", {"default": True, "tooltip": CODES_TOOLTIP, "advanced": True}),
            "cfg_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1, "advanced": True}),
            "temperature": ("FLOAT", {"default": 0.85, "min": 0.0, "max": 2.0, "step": 0.01, "advanced": True}),
            "top_p": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 2000.0, "step": 0.01, "advanced": True}),
            "top_k": ("INT", {"default": 0, "min": 0, "max": 100, "advanced": True}),
            "min_p": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "execute"
    CATEGORY = "conditioning"

    def execute(self, clip, tags, lyrics, seed, bpm, duration, timesignature, language, keyscale,
                generate_audio_codes, cfg_scale, temperature, top_p, top_k, min_p):
        kind = text_encoder_kind(clip)
        if kind == "other":
            raise ValueError("TextEncodeAceStepAudio1.5 needs an ACE-Step 1.5 text encoder (Qwen3-Embedding-0.6B); "
                             "this CLIP is another model (an ACE-Step v1 checkpoint gives a UMT5 text encoder: use "
                             "TextEncodeAceStepAudio with it).")
        if generate_audio_codes and kind != "ace15+planner":
            raise PlannerNotLoaded("generate_audio_codes is on, but the 5 Hz planner (the audio-code language model) "
                                   "is not loaded: set generate_audio_codes to false, or load a planner file "
                                   "(qwen_1.7b_ace15 / qwen_4b_ace15) with the text encoder.")
        tokens = clip.tokenize(tags, lyrics=lyrics, bpm=bpm, duration=duration, timesignature=int(timesignature),
                               language=language, keyscale=keyscale, seed=seed,
                               generate_audio_codes=generate_audio_codes, cfg_scale=cfg_scale,
                               temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
        return (clip.encode_from_tokens_scheduled(tokens),)


class EmptyAceStep15LatentAudio:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seconds": ("FLOAT", {"default": 120.0, "min": 1.0, "max": 1000.0, "step": 0.01}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "execute"
    CATEGORY = "latent/audio"

    def execute(self, seconds, batch_size):
        latent = torch.zeros([batch_size, 64, latent_frames(seconds)], device=mm.intermediate_device())
        return ({"samples": latent, "type": "audio"},)


class ReferenceAudio:
    EXPERIMENTAL = True
    DESCRIPTION = "This node sets the reference audio for ace step 1.5"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}, "optional": {"latent": ("LATENT",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "execute"
    CATEGORY = "advanced/conditioning/audio"

    def execute(self, conditioning, latent=None):
        if latent is None:
            return (conditioning,)
        out = []
        for cond, values in conditioning:
            values = dict(values)
            # Appended to the list, as node_helpers.conditioning_set_values(..., append=True) does;
            # the model reads the last entry.
            values["reference_audio_timbre_latents"] = list(values.get("reference_audio_timbre_latents", [])) + \
                [latent["samples"]]
            out.append([cond, values])
        return (out,)


_ALL = {
    "TextEncodeAceStepAudio1.5": (TextEncodeAceStepAudio15, None),
    "EmptyAceStep1.5LatentAudio": (EmptyAceStep15LatentAudio, "Empty Ace Step 1.5 Latent Audio"),
    "ReferenceTimbreAudio": (ReferenceAudio, "Reference Audio"),
}


def _built_in_ids() -> set:
    """Ids the running ComfyUI registered: its nodes.py module (imported, with the built-in extra
    nodes registered, before any custom node pack loads). Never imports anything itself."""
    import sys

    comfy_nodes = sys.modules.get("nodes")
    if comfy_nodes is None or not str(getattr(comfy_nodes, "__file__", "")).endswith("nodes.py"):
        return set()
    return set(getattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {}))


_present = _built_in_ids()
NODE_CLASS_MAPPINGS = {k: cls for k, (cls, _) in _ALL.items() if k not in _present}
NODE_DISPLAY_NAME_MAPPINGS = {k: name for k, (_, name) in _ALL.items() if name and k in NODE_CLASS_MAPPINGS}
