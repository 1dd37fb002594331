"""The ACE-Step 1.5 planner (the 5 Hz language model) as nodes of its own, so a graph can plan once
and sample many times, or read and change the metadata between planning and sampling.

``AceStepPlanner``            CLIP (with a planner) + caption, lyrics, metadata (each field may be
                              "auto": the planner writes it) -> ACESTEP_AUDIO_CODES (the plan: audio
                              codes, full metadata, caption, lyrics), the metadata as text (also shown
                              on the node), the duration (for EmptyAceStep1.5LatentAudio's seconds).
``AceStepApplyAudioCodes``    CONDITIONING + plan -> the conditioning with the plan's codes, as
                              ComfyUI's 1.5 text encoder attaches them (``audio_codes``: ``[codes]``).
``AceStepPlanTextEncode``     CLIP + plan -> the conditioning TextEncodeAceStepAudio1.5 gives for the
                              plan's caption, lyrics and metadata, with the plan's codes attached.

The planner runs on the CLIP's weights, loaded by ComfyUI's memory manager like every model
(``load_models_gpu`` on the CLIP's patcher, as ``CLIP.encode`` does), so sampling afterwards can
offload it. ComfyUI's progress bar counts the tokens the planner samples, Cancel stops it within
one token. Its matrix products are float32 on the CPU by default (``matrix_products`` auto: ComfyUI's
arithmetic, so the codes are the ones TextEncodeAceStepAudio1.5 draws for the same seed); the
weights' own bf16 is the faster alternative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.utils
import node_helpers
from acestep_core.ace15.planner import PRODUCTS

from .ace15_nodes import KEYSCALES, LANGUAGES, TIMESIGNATURES, text_encoder_kind
from .notices import log, running_node_id

AUTO = "auto"
AUDIO_CODES_TYPE = "ACESTEP_AUDIO_CODES"
CATEGORY = "conditioning/ACE-Step 1.5"
CODES_PER_SECOND = 5
PLANNER_FILES = ("qwen_1.7b_ace15.safetensors / qwen_4b_ace15.safetensors in models/text_encoders (planner slot of "
                 "LoadAceStep15Split), Comfy-Org's all-in-one ace_step_1.5 checkpoint that includes one, or an "
                 "official acestep-5Hz-lm-* folder")
METADATA_ORDER = ("bpm", "duration", "keyscale", "language", "timesignature")
DEFAULT_LANGUAGE = "unknown"   # the official app's vocal_language when nobody sets or plans one


@dataclass(frozen=True)
class AudioCodesPlan:
    """What ``AceStepPlanner`` passes on (the ACESTEP_AUDIO_CODES type): the 5 Hz audio codes
    (0..63999; empty when generate_audio_codes was off), the complete metadata (the user's fields
    unchanged, the planner's in ``generated``), and the caption and lyrics they were planned for."""
    codes: tuple[int, ...]
    metadata: dict
    caption: str
    lyrics: str
    generated: tuple[str, ...] = ()
    seed: int = 0
    thinking: str = ""
    sources: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return float(self.metadata["duration"])

    def text(self) -> str:
        lines = [f"{key}: {self.metadata[key]} ({self.sources.get(key, 'user')})"
                 for key in METADATA_ORDER if key in self.metadata]
        if self.codes:
            lines.append(f"audio codes: {len(self.codes)} ({len(self.codes) / CODES_PER_SECOND:g} s at 5 per second)")
        else:
            lines.append("audio codes: none (generate_audio_codes off)")
        return "\n".join(lines)


def planner_of(clip, node: str):
    """(core Planner, PlannerTokenizer) of a CLIP, or an error that says which CLIP is needed."""
    kind = text_encoder_kind(clip)
    if kind == "other":
        raise ValueError(f"{node}: this CLIP is not an ACE-Step 1.5 text encoder (an ACE-Step v1 checkpoint gives a "
                         "UMT5 text encoder, which has no planner). Load an ACE-Step 1.5 checkpoint with "
                         "LoadAceStepCheckpoint or LoadAceStep15Split.")
    model = clip.cond_stage_model
    if getattr(model, "acestep_generation", None) != "1.5":
        raise ValueError(f"{node}: this is ComfyUI's own ACE-Step 1.5 text encoder; its planner only runs inside "
                         "TextEncodeAceStepAudio1.5. Load the checkpoint with this pack's LoadAceStepCheckpoint or "
                         "LoadAceStep15Split to use the planner nodes.")
    planner = getattr(model, "planner", None)
    tokenizer = getattr(getattr(clip, "tokenizer", None), "planner_tokenizer", None)
    if planner is None or tokenizer is None:
        raise ValueError(f"{node}: this CLIP has no 5 Hz planner (the language model that writes metadata and audio "
                         f"codes); it only has the 0.6B text encoder. Load a planner with it: {PLANNER_FILES}.")
    return planner, tokenizer


def user_metadata(bpm, duration, keyscale, timesignature, language) -> dict:
    """The fields the user set; "auto" (0 for bpm and duration) leaves a field to the planner."""
    out = {}
    if bpm:
        if not 10 <= int(bpm) <= 300:
            raise ValueError(f"AceStepPlanner: bpm {bpm} is out of range: 0 (auto) or 10..300.")
        out["bpm"] = int(bpm)
    if duration:
        if not duration > 0:
            raise ValueError(f"AceStepPlanner: duration {duration} must be 0 (auto) or positive (seconds).")
        out["duration"] = int(duration) if float(duration) == int(duration) else float(duration)
    for key, value in (("keyscale", keyscale), ("timesignature", timesignature), ("language", language)):
        if value != AUTO:
            out[key] = value
    return out


class _TokenProgress:
    """ComfyUI's progress bar over the tokens the planner samples: the metadata pass's tokens
    (at most ``metadata_bound``) and then the codes. The total is exact once the codes start."""

    def __init__(self, metadata_bound: int, codes_estimate: int):
        self.metadata_bound = metadata_bound
        self.codes_estimate = codes_estimate
        self.metadata_steps = 0
        self.bar = comfy.utils.ProgressBar(metadata_bound + codes_estimate)

    def __call__(self, done: int, total: int | None) -> None:
        if total is None:                     # metadata pass: done counts its sampled tokens
            self.metadata_steps = done
            self.bar.update_absolute(done, self.metadata_bound + self.codes_estimate)
        else:                                 # codes pass: done of total codes
            self.bar.update_absolute(self.metadata_steps + done, self.metadata_steps + total)


class AceStepPlanner:
    DESCRIPTION = ("Runs the ACE-Step 1.5 planner (5 Hz language model) once: writes the metadata left on auto and "
                   "the song's audio codes (5 per second). Connect audio_codes to AceStepPlanTextEncode or "
                   "AceStepApplyAudioCodes, and duration to EmptyAceStep1.5LatentAudio's seconds; sample as often as "
                   "you like without planning again.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "An ACE-Step 1.5 CLIP loaded with its planner (" + PLANNER_FILES + ")."}),
            "tags": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "lyrics": ("STRING", {"multiline": True, "dynamicPrompts": True}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "bpm": ("INT", {"default": 0, "min": 0, "max": 300, "tooltip": "0 = auto: the planner writes it."}),
            "duration": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 2000.0, "step": 0.1,
                                   "tooltip": "Seconds; 0 = auto: the planner writes it (10-600 s)."}),
            "timesignature": ([AUTO] + TIMESIGNATURES, {"default": AUTO}),
            "language": ([AUTO] + LANGUAGES, {"default": AUTO}),
            "keyscale": ([AUTO] + KEYSCALES, {"default": AUTO}),
            "generate_audio_codes": ("BOOLEAN", {"default": True, "tooltip": "Off: only the metadata is planned."}),
            "cfg_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 100.0, "step": 0.1, "advanced": True}),
            "temperature": ("FLOAT", {"default": 0.85, "min": 0.0, "max": 2.0, "step": 0.01, "advanced": True}),
            "top_p": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 2000.0, "step": 0.01, "advanced": True}),
            "top_k": ("INT", {"default": 0, "min": 0, "max": 100, "advanced": True}),
            "min_p": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True}),
        }, "optional": {
            "matrix_products": (list(PRODUCTS), {
                "default": "auto", "advanced": True,
                "tooltip": "How the planner multiplies by its weights. auto: float32 on the CPU (ComfyUI's "
                           "arithmetic: the same codes as TextEncodeAceStepAudio1.5 for the same seed), the weights' "
                           "own dtype on a GPU. weight_dtype: in the weights' bf16, several times faster on a CPU "
                           "with bf16 instructions, but the codes drift from ComfyUI's after a few dozen tokens."}),
        }}

    RETURN_TYPES = (AUDIO_CODES_TYPE, "STRING", "FLOAT")
    RETURN_NAMES = ("audio_codes", "metadata", "duration")
    OUTPUT_TOOLTIPS = ("The plan: audio codes, the full metadata, the caption and lyrics.",
                       "The metadata, each field marked (user) or (planner).",
                       "The song's duration in seconds, for EmptyAceStep1.5LatentAudio.")
    FUNCTION = "plan"
    CATEGORY = CATEGORY

    def plan(self, clip, tags, lyrics, seed, bpm, duration, timesignature, language, keyscale, generate_audio_codes,
             cfg_scale, temperature, top_p, top_k, min_p, matrix_products="auto"):
        from acestep_core.ace15.planner_grammar import METADATA_FIELDS, codes_for_duration

        planner, tokenizer = planner_of(clip, "AceStepPlanner")
        user = user_metadata(bpm, duration, keyscale, timesignature, language)
        # The planner's weights are part of the CLIP's model: ComfyUI's memory manager loads them (and
        # may offload them when sampling needs the memory). Fully: the planner's layers are plain
        # torch modules that cannot run partly on the offload device.
        mm.load_models_gpu([clip.patcher], force_full_load=True)

        needs_metadata = not all(k in user for k in ("bpm", "duration", "keyscale", "timesignature"))
        grammar = planner.grammar(tokenizer)
        metadata_bound = sum(grammar.fields[k].depth for k in METADATA_FIELDS if k not in user) if needs_metadata else 0
        codes_estimate = codes_for_duration(user.get("duration", 120)) if generate_audio_codes else 0
        progress = _TokenProgress(metadata_bound, codes_estimate)
        result = planner.plan(tokenizer, tags, lyrics, user, seed=seed, cfg_scale=cfg_scale, temperature=temperature,
                              top_p=top_p, top_k=top_k, min_p=min_p, generate_codes=bool(generate_audio_codes),
                              progress=progress, interrupt=mm.throw_exception_if_processing_interrupted,
                              products=matrix_products)
        metadata = dict(result.metadata)
        sources = {k: ("planner" if k in result.generated else "user") for k in metadata}
        if "language" not in metadata:
            # The metadata pass (and with it the language) only runs when bpm, duration, key or time
            # signature is left to the planner; as the official app, no language is then "unknown".
            metadata["language"] = DEFAULT_LANGUAGE
            sources["language"] = "not planned: bpm, duration, key and time signature were all set"
        plan = AudioCodesPlan(codes=tuple(result.codes), metadata=metadata, caption=tags, lyrics=lyrics,
                              generated=tuple(result.generated), seed=int(seed), thinking=result.thinking,
                              sources=sources)
        text = plan.text()
        show_on_node(text)
        return {"ui": {"text": [text]}, "result": (plan, text, plan.duration)}


def show_on_node(text: str) -> None:
    """Text on the running node (ComfyUI's ``progress_text`` message, which the frontend draws on
    the node); the ``ui`` output carries it too, for the history and extensions."""
    node_id = running_node_id()
    if node_id is None:
        return
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(text, node_id)
    except Exception as err:   # showing it is a courtesy: never fail a run over it
        log.debug("could not show the plan on node %s: %s", node_id, err)


def _check_plan(plan, node: str) -> AudioCodesPlan:
    if not isinstance(plan, AudioCodesPlan):
        raise ValueError(f"{node}: audio_codes must come from AceStepPlanner, got {type(plan).__name__}.")
    return plan


def attach_codes(conditioning, plan: AudioCodesPlan, node: str):
    """The conditioning with the plan's codes as ComfyUI's 1.5 text encoder attaches them."""
    if not plan.codes:
        raise ValueError(f"{node}: this plan has no audio codes: AceStepPlanner ran with generate_audio_codes off. "
                         "Turn it on there, or leave this node out to sample without codes.")
    return node_helpers.conditioning_set_values(conditioning, {"audio_codes": [list(plan.codes)]})


class AceStepApplyAudioCodes:
    DESCRIPTION = ("Attaches the planner's audio codes to ACE-Step 1.5 conditioning (from TextEncodeAceStepAudio1.5 "
                   "with generate_audio_codes off), replacing any codes it had.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "audio_codes": (AUDIO_CODES_TYPE,)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, conditioning, audio_codes):
        plan = _check_plan(audio_codes, "AceStepApplyAudioCodes")
        return (attach_codes(conditioning, plan, "AceStepApplyAudioCodes"),)


class AceStepPlanTextEncode:
    DESCRIPTION = ("TextEncodeAceStepAudio1.5 for a plan: encodes the plan's tags, lyrics and metadata (the planner's "
                   "where it wrote them) and attaches its audio codes. The planner does not run again.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP",),
            "audio_codes": (AUDIO_CODES_TYPE,),
            "use_audio_codes": ("BOOLEAN", {"default": True,
                                            "tooltip": "Off: only the metadata is used, the DiT runs without hints."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, clip, audio_codes, use_audio_codes):
        plan = _check_plan(audio_codes, "AceStepPlanTextEncode")
        if text_encoder_kind(clip) == "other":
            raise ValueError("AceStepPlanTextEncode needs an ACE-Step 1.5 text encoder; this CLIP is another model "
                             "(an ACE-Step v1 checkpoint gives a UMT5 text encoder).")
        meta = plan.metadata
        tokens = clip.tokenize(plan.caption, lyrics=plan.lyrics, bpm=int(meta["bpm"]), duration=plan.duration,
                               timesignature=int(meta["timesignature"]), language=meta["language"],
                               keyscale=meta["keyscale"], seed=plan.seed, generate_audio_codes=False)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        if use_audio_codes:
            conditioning = attach_codes(conditioning, plan, "AceStepPlanTextEncode")
        return (conditioning,)


NODE_CLASS_MAPPINGS = {
    "AceStepPlanner": AceStepPlanner,
    "AceStepApplyAudioCodes": AceStepApplyAudioCodes,
    "AceStepPlanTextEncode": AceStepPlanTextEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AceStepPlanner": "ACE-Step 1.5 Planner",
    "AceStepApplyAudioCodes": "ACE-Step 1.5 Apply Audio Codes",
    "AceStepPlanTextEncode": "TextEncodeAceStepAudio1.5 (from plan)",
}
