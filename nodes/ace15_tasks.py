"""ACE-Step 1.5 tasks as ComfyUI nodes around the stock samplers: cover, repaint, extend, lego,
extract and complete (retake: the v1 nodes AceStepRetake / AceStepRetakeModel, which mix seeds on
any latent, work on 1.5 latents as they are).

Each task node takes the MODEL (to check it can do the task and to read its silence latent), the
CLIP, the source song's LATENT (VAEEncodeAudio with the 1.5 VAE) and the prompt, and gives
``positive`` / ``negative`` CONDITIONING and the LATENT to sample, for KSampler or
SamplerCustomAdvanced at denoise 1.0. What the DiT gets is acestep_core.ace15.tasks
``build_task_conditioning`` (checked there against the official handler):

* the caption prompt is encoded with the task's ``# Instruction`` line (ComfyUI's text encoder
  always writes the cover one);
* ``acestep15_src_latents`` / ``acestep15_chunk_masks`` ``[B, 64, T]`` and ``acestep15_is_covers``
  ride on each conditioning entry; our MODEL's ``extra_conds`` (nodes/ace15_bridge.py) hands them
  to the DiT, and for a cover turns the source into the 5 Hz "LM hints" there;
* ``negative`` is ``positive`` zeroed as ConditioningZeroOut does (the null condition of the CFG
  pass), carrying the same task inputs, as the official CFG pass does;
* the LATENT is the source (padded to the official 128-frame minimum, or extended), with a
  ``noise_mask`` over the frames to generate for repaint and extend: KSampler's masked sampling
  keeps the other frames on the source's noising path at every step (upstream ACE-Step-1.5's
  "conservative" repaint injection), and AceStep15RestoreSource then writes them back bit for
  bit and cuts the padding off.

``audio_cover_strength`` < 1 (cover) is ComfyUI's timestep-range mechanism: the cover
conditioning has ``end_percent`` and a text2music conditioning (silence source, no cover flag,
the text2music instruction) ``start_percent`` at the same boundary (:func:`switch_percent`). The
official loop uses the cover conditioning on steps ``i < int(steps * strength)``. A percent alone
cannot say that for every step count (with 0.5: 1 of 3 steps, 2 of 4, 2 of 5), so: with the
node's ``sampler_steps`` set to the KSampler's steps and the ``simple`` scheduler the boundary is
put between the official last cover step and the first text2music step, exactly the official
switch; left at 0 it is the strength itself, which gives ``ceil(steps * strength)`` cover steps,
the same whenever ``steps * strength`` is whole (8 steps at 0.25 / 0.5 / 0.75), one step more
otherwise (and in 3 of the 10100 cases checked, where the simple scheduler's float rounding puts
a step's grid index one low, e.g. 38 steps at 0.5 -> 20 cover steps instead of 19). tests/comfyui/test_ace15_task_nodes.py checks both for steps 1-100 x strengths 0-1
by 0.01 on ComfyUI's own scheduler and range test. Other schedulers switch at the same noise
level, which may be another step.

The task inputs need our MODEL (LoadAceStepCheckpoint / LoadAceStep15Split): ComfyUI 0.20.1's own
1.5 model has no source-latent or chunk-mask input, so the nodes refuse it.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

from acestep_core.ace15 import tasks as t15
from acestep_core.ace15.text_encoder import CAPTION_TOKEN_LIMIT, caption_prompt, cut_to_limit

from .ace15_bridge import Ace15BaseModel, Ace15Tokenizer, _pairs
from .ace15_nodes import KEYSCALES, LANGUAGES, TIMESIGNATURES, text_encoder_kind
from .ace15_planner import AUDIO_CODES_TYPE
from .common import CATEGORY, node_errors, restored_output, source_for_each_item, split_task_latent
from .notices import warn_user

CATEGORY_15 = CATEGORY + "/1.5"
TASK15_KEY = "acestep15_task"               # LATENT key: what AceStep15RestoreSource needs
NOT_SET = "N/A"
# The stems in the order the issue and the app's UI list them (acestep/constants.py TRACK_NAMES reversed).
STEMS = tuple(reversed(t15.TRACK_NAMES))
# Half a step of the simple scheduler's 1000-entry time grid: see the module docstring.
SWITCH_OFFSET = 0.0005


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def model_variant(model) -> str | None:
    """"turbo", "base or sft" or None (unknown) for our 1.5 MODEL: the official download folder
    has the DiT's config.json beside the silence_latent.pt the loader found
    (:func:`acestep_core.ace15.tasks.variant_from_config`); single files say nothing."""
    silence_file = getattr(model.model, "silence_file", None)
    if silence_file is None:
        return None
    config = silence_file.parent / "config.json"
    try:
        return t15.variant_from_config(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def check_model(node: str, model, task: str) -> None:
    """Our 1.5 MODEL, able to do ``task``; else a ValueError before any sampling. Where the
    variant is unknown and the task needs the base model, a warning on the node."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, Ace15BaseModel):
        kind = type(inner).__name__ if inner is not None else type(model).__name__
        raise ValueError(f"{node}: this MODEL ({kind}) is not an ACE-Step 1.5 model loaded by this pack. Load the 1.5 "
                         "checkpoint with 'Load ACE-Step Checkpoint' (or 'Load ACE-Step 1.5 (split files)'): "
                         "ComfyUI's own 1.5 model has no input for the source song and the region to generate.")
    needs = t15.variants_for(task)
    if needs == t15.VARIANTS:
        return
    variant = model_variant(model)
    wanted = " or ".join(needs)
    if variant == "turbo":
        raise ValueError(f"{node}: the {task} task needs the ACE-Step 1.5 {wanted} model; this is the turbo model "
                         f"(its config.json says is_turbo), which was not trained for {task}. Load "
                         "acestep-v15-base instead.")
    if variant is None:
        warn_user(f"{node}: the {task} task needs the ACE-Step 1.5 {wanted} model, and this checkpoint does not say "
                  "which variant it is (only the official folder's config.json does). With turbo or sft the "
                  "result will not follow the task.")
    else:   # "base or sft": the official config cannot tell them apart
        warn_user(f"{node}: the {task} task needs the ACE-Step 1.5 {wanted} model; this checkpoint is base or sft "
                  "(its config.json cannot tell which). With sft the result will not follow the task.")


def source_latent(node: str, samples) -> torch.Tensor:
    if not isinstance(samples, dict) or "samples" not in samples:
        raise ValueError(f"{node}: expected a LATENT (a dict with 'samples'), got {type(samples).__name__}.")
    latent = samples["samples"]
    if not isinstance(latent, torch.Tensor) or latent.ndim != 3 or latent.shape[1] != 64:
        shape = list(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"{node}: this latent has shape {shape}; an ACE-Step 1.5 song latent is [batch, 64, frames] "
                         "(VAEEncodeAudio with the ACE-Step 1.5 VAE). A v1 latent is [batch, 8, 16, frames].")
    if latent.shape[-1] < 1:
        raise ValueError(f"{node}: the source latent is empty (0 frames).")
    if not torch.isfinite(latent).all():
        raise ValueError(f"{node}: the source latent has NaN or infinite values.")
    return latent.float().cpu()


def _silence(model):
    return lambda frames: model.model.silence(frames, "cpu").float()


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
def _meta(value):
    return None if value in (NOT_SET, None, "", 0) else value


def task_tokens(node: str, clip, tags: str, lyrics: str, language: str, bpm, timesignature, keyscale,
                duration: float, instruction: str) -> dict:
    """The CLIP's tokens for tags + lyrics + metadata, with the caption prompt carrying
    ``instruction``; no audio codes (the source is the task's audio)."""
    kind = text_encoder_kind(clip)
    if kind == "other":
        raise ValueError(f"{node}: this CLIP is not an ACE-Step 1.5 text encoder (Qwen3-Embedding-0.6B); use the "
                         "CLIP of the 1.5 checkpoint.")
    bpm, timesignature, keyscale = _meta(bpm), _meta(timesignature), _meta(keyscale)
    tokens = clip.tokenize(tags, lyrics=lyrics, bpm=bpm, duration=duration, timesignature=timesignature,
                           language=language, keyscale=keyscale, generate_audio_codes=False)
    text = caption_prompt(tags, bpm, timesignature, keyscale, duration, instruction=instruction)
    tokenizer = clip.tokenizer
    if isinstance(tokenizer, Ace15Tokenizer):
        ids, warning = cut_to_limit(tokenizer.tokenizer(text), CAPTION_TOKEN_LIMIT, "The caption (tags and metadata)")
        if warning:
            warn_user(f"{node}: {warning}")
        tokens["qwen3_06b"] = _pairs(ids)
    elif hasattr(tokenizer, "qwen3_06b"):         # ComfyUI 0.20.1's own ACE15Tokenizer
        tokens["qwen3_06b"] = tokenizer.qwen3_06b.tokenize_with_weights(text, False, disable_weights=True)
    else:
        raise ValueError(f"{node}: cannot put the task instruction into this CLIP's tokens "
                         f"({type(tokenizer).__name__}); use the CLIP of the 1.5 checkpoint.")
    return tokens


def _with_task(conditioning, cond: t15.TaskConditioning, values: dict | None = None) -> list:
    out = []
    for embedding, options in conditioning:
        options = dict(options)
        options.update({"acestep15_task": cond.task, "acestep15_src_latents": cond.src_latents,
                        "acestep15_chunk_masks": cond.chunk_masks, "acestep15_is_covers": bool(cond.is_covers)})
        options.pop("audio_codes", None)
        options.update(values or {})
        out.append([embedding, options])
    return out


def zero_out(conditioning) -> list:
    """ComfyUI's ConditioningZeroOut (caption, pooled output and lyrics zeroed, the rest kept)."""
    out = []
    for embedding, options in conditioning:
        options = dict(options)
        for key in ("pooled_output", "conditioning_lyrics"):
            if options.get(key) is not None:
                options[key] = torch.zeros_like(options[key])
        out.append([torch.zeros_like(embedding), options])
    return out


def switch_percent(strength: float, steps: int = 0, model_sampling=None) -> float | None:
    """Where the cover conditioning gives way to text2music, as ComfyUI's start / end percent:
    None = no switch (strength 1, or ``steps`` given and every step is a cover step); 0.0 = no
    cover step at all.

    ``steps`` 0 (unknown): ``strength - 0.0005``, half a step of the simple scheduler's
    1000-entry time grid below the strength, so that grid point (a step's start) belongs to
    text2music: the cover conditioning then runs on the steps that start before ``strength`` of
    the schedule, ``ceil(steps * strength)`` of them, where the official loop runs
    ``int(steps * strength)``: the same whenever ``steps * strength`` is whole.
    ``steps`` = the sampler's steps (simple scheduler): halfway between the grid entries of steps
    ``k - 1`` and ``k``, ``k = int(steps * strength)``, computed as ComfyUI's simple_scheduler
    indexes ``model_sampling.sigmas``; exactly the official switch."""
    if strength >= 1.0:
        return None
    if strength <= 0.0:
        return 0.0
    if not steps:
        return strength - SWITCH_OFFSET
    k = t15.cover_steps(int(steps), strength)
    if k >= steps:
        return None
    if k == 0:
        return 0.0
    grid = len(model_sampling.sigmas)
    index = int(k * (grid / steps))                 # comfy.samplers.simple_scheduler's index of step k
    return (index - 0.5) / grid


def encode_task(node: str, clip, cond: t15.TaskConditioning, text: dict, boundary: float | None = None):
    """(positive, negative) for ``cond``; with a ``boundary`` (:func:`switch_percent`) the cover
    entry ends there and the text2music entry (``cond.after_switch``) starts there."""
    def encode(c: t15.TaskConditioning):
        tokens = task_tokens(node, clip, instruction=c.instruction, **text)
        return clip.encode_from_tokens_scheduled(tokens)

    if cond.after_switch is None or boundary is None:
        positive = _with_task(encode(cond), cond)
    elif boundary <= 0.0:
        positive = _with_task(encode(cond.after_switch), cond.after_switch)
    else:
        positive = (_with_task(encode(cond), cond, {"start_percent": 0.0, "end_percent": boundary})
                    + _with_task(encode(cond.after_switch), cond.after_switch,
                                 {"start_percent": boundary, "end_percent": 1.0}))
    return positive, zero_out(positive)


# ---------------------------------------------------------------------------------------------
# LATENT
# ---------------------------------------------------------------------------------------------
def _noise_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """[T] 0/1 -> LATENT ``noise_mask`` [1, 1, T]: ComfyUI's resize to a [B, 64, T] latent is then
    linear interpolation to the same length, the identity, so 0 and 1 stay exact."""
    return frame_mask.to(torch.float32).reshape(1, 1, -1).contiguous()


def task_latent(samples: dict, cond: t15.TaskConditioning, keep_outside: bool) -> dict:
    """The LATENT to sample: the source on the task's frames (the DiT starts from noise at
    denoise 1.0; below 1.0 from the noised source). ``keep_outside``: a ``noise_mask`` keeps the
    frames the chunk mask does not generate."""
    out = {k: v for k, v in samples.items() if k not in ("samples", "noise_mask", TASK15_KEY)}
    out["samples"] = cond.target_latents.clone()
    out["type"] = "audio"
    generate = cond.chunk_masks[0, 0] > 0.5
    if keep_outside:
        out["noise_mask"] = _noise_mask(generate)
    out[TASK15_KEY] = {"task": cond.task, "target": cond.target_latents, "generate": generate if keep_outside else None,
                       "valid_frames": cond.valid_frames, "left_pad_frames": cond.left_pad_frames}
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _common_inputs():
    return {
        "model": ("MODEL", {"tooltip": "The ACE-Step 1.5 model (Load ACE-Step Checkpoint): checked for the task, and "
                                       "its silence latent fills what the DiT must not see."}),
        "clip": ("CLIP", {"tooltip": "The ACE-Step 1.5 text encoder; the prompt is encoded with this task's "
                                     "instruction."}),
        "samples": ("LATENT", {"tooltip": "The source song: VAEEncodeAudio with the ACE-Step 1.5 VAE (or a generated "
                                          "1.5 latent)."}),
        "tags": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                            "tooltip": "Caption / tags of the result."}),
        "lyrics": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                              "tooltip": "Lyrics of the result ([Instrumental] or empty for none)."}),
    }


def _metadata_inputs():
    return {
        "language": (LANGUAGES, {"default": "en"}),
        "bpm": ("INT", {"default": 0, "min": 0, "max": 300, "tooltip": "0 = not given (N/A in the prompt)."}),
        "timesignature": ([NOT_SET] + TIMESIGNATURES, {"default": NOT_SET}),
        "keyscale": ([NOT_SET] + KEYSCALES, {"default": NOT_SET}),
    }


def _inputs(*extra: dict) -> dict:
    required = _common_inputs()
    for part in extra:
        required.update(part)
    required.update(_metadata_inputs())
    return {"required": required}


RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
RETURN_NAMES = ("positive", "negative", "latent")
OUTPUT_TOOLTIPS = ("For the sampler's positive input.",
                   "For the sampler's negative input (the null condition with the same task inputs; only read at "
                   "cfg > 1).",
                   "The latent to sample at denoise 1.0; then AceStep15RestoreSource and VAEDecodeAudio.")


class _TaskNode:
    RETURN_TYPES = RETURN_TYPES
    RETURN_NAMES = RETURN_NAMES
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS
    FUNCTION = "execute"
    CATEGORY = CATEGORY_15
    TASK = ""
    KEEP_OUTSIDE = False

    def run(self, node: str, model, clip, samples, text: dict, **build) -> tuple:
        check_model(node, model, self.TASK)
        source = source_latent(node, samples)
        with node_errors(node):
            cond = t15.build_task_conditioning(self.TASK, _silence(model), source, **build)
            text = dict(text, duration=int(t15.frames_to_seconds(source.shape[-1])))
            positive, negative = encode_task(node, clip, cond, text)
        return positive, negative, task_latent(samples, cond, self.KEEP_OUTSIDE)


def _text(tags, lyrics, language, bpm, timesignature, keyscale) -> dict:
    return {"tags": tags, "lyrics": lyrics, "language": language, "bpm": bpm, "timesignature": timesignature,
            "keyscale": keyscale}


# ---------------------------------------------------------------------------------------------
# The task nodes
# ---------------------------------------------------------------------------------------------
class AceStep15Cover(_TaskNode):
    DESCRIPTION = ("A new song over the structure of the source song (ACE-Step 1.5 cover): the source is turned into "
                   "5 Hz semantic hints the DiT follows; tags and lyrics say what the new song is.")
    TASK = "cover"

    @classmethod
    def INPUT_TYPES(cls):
        spec = _inputs({
            "audio_cover_strength": ("FLOAT", {
                "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                "tooltip": "Share of the sampling steps that follow the source (the official audio_cover_strength): "
                           "the first steps use the cover conditioning, the rest plain text2music. 1 = every step."}),
            "sampler_steps": ("INT", {
                "default": 0, "min": 0, "max": 10000,
                "tooltip": "The KSampler's steps, for the official switch step int(steps * strength) with the simple "
                           "scheduler. 0: switch at 'strength' of the noise schedule, which runs ceil(steps * "
                           "strength) cover steps (the same when steps * strength is whole)."}),
        })
        # Either source: the song's latent, or the planner's codes (AceStepPlanner) in its place.
        spec["optional"] = {"samples": spec["required"].pop("samples"), "audio_codes": (AUDIO_CODES_TYPE, {
            "tooltip": "Cover from 5 Hz audio codes instead of a song: AceStepPlanner's audio_codes. The codes are "
                       "decoded to the DiT's hints as the official app does with given codes; a connected "
                       "'samples' is then not used."})}
        return spec

    def execute(self, model, clip, samples=None, tags="", lyrics="", audio_cover_strength=1.0, sampler_steps=0,
                language="en", bpm=0, timesignature=NOT_SET, keyscale=NOT_SET, audio_codes=None):
        node = "AceStep15Cover"
        check_model(node, model, self.TASK)
        strength = float(audio_cover_strength)
        hints = None
        if audio_codes is not None:
            if samples is not None:
                warn_user(f"{node}: both a source latent and audio codes are connected; covering the audio codes "
                          "(the official app also ignores the source audio when codes are given)")
            source = hints = codes_to_hints(node, model, audio_codes)
            samples = {"samples": hints, "type": "audio"}
        elif samples is None:
            raise ValueError(f"{node}: connect the source song ('samples': VAEEncodeAudio with the ACE-Step 1.5 VAE) "
                             "or the planner's 'audio_codes' (AceStepPlanner).")
        else:
            source = source_latent(node, samples)
        with node_errors(node):
            cond = t15.build_task_conditioning("cover", _silence(model), source, audio_cover_strength=strength,
                                               from_codes=hints is not None)
            boundary = switch_percent(strength, int(sampler_steps), model.get_model_object("model_sampling"))
            text = dict(_text(tags, lyrics, language, bpm, timesignature, keyscale),
                        duration=int(t15.frames_to_seconds(source.shape[-1])))
            positive, negative = encode_task(node, clip, cond, text, boundary)
            if hints is not None:
                # The DiT's 25 Hz hints: the decoded codes padded with the silence latent's first frames
                # (handler.py _prepare_batch, precomputed_lm_hints_25Hz); only the cover entry reads them.
                lm_hints = t15.fit_hints(hints, cond.frames, _silence(model))
                positive = [[e, dict(o, acestep15_lm_hints=lm_hints) if o.get("acestep15_is_covers") else o]
                            for e, o in positive]
                negative = [[e, dict(o, acestep15_lm_hints=lm_hints) if o.get("acestep15_is_covers") else o]
                            for e, o in negative]
        return positive, negative, task_latent(samples, cond, False)


def codes_to_hints(node: str, model, plan) -> torch.Tensor:
    """AceStepPlanner's plan -> the 25 Hz hints ``[1, 64, 5 * codes]`` its codes decode to with
    the model's own FSQ quantizer and detokenizer (handler.py ``_decode_audio_codes_to_latents``:
    ``detokenizer(quantizer.get_output_from_indices(codes))``), float32 on the CPU."""
    codes = getattr(plan, "codes", None)
    if codes is None:
        raise ValueError(f"{node}: audio_codes must come from AceStepPlanner, got {type(plan).__name__}.")
    if not codes:
        raise ValueError(f"{node}: this plan has no audio codes: AceStepPlanner ran with generate_audio_codes off. "
                         "Turn it on there, or connect the source song to 'samples' instead.")
    frames = t15.CODE_WINDOW * len(codes)
    if frames > t15.MAX_FRAMES:
        raise ValueError(f"{node}: {len(codes)} audio codes are {frames / 25:g} s; ACE-Step 1.5 covers at most "
                         f"{t15.MAX_FRAMES // 25} s ({t15.MAX_FRAMES // t15.CODE_WINDOW} codes).")
    dit = model.model.diffusion_model
    weight = next(dit.detokenizer.parameters())
    indices = torch.tensor([list(codes)], dtype=torch.long, device=weight.device).clamp_(0, 63999)
    with torch.no_grad():
        hints = dit.hints_from_audio_codes(indices, frames, weight.dtype)
    return hints.movedim(-1, -2).float().cpu().contiguous()


class AceStep15Repaint(_TaskNode):
    DESCRIPTION = ("Regenerate start_seconds-end_seconds of a song (ACE-Step 1.5 repaint); every other frame is kept "
                   "exactly after AceStep15RestoreSource. A region ending after the song is repainted up to its end "
                   "(with a warning); one starting at or after the end is an error.")
    TASK = "repaint"
    KEEP_OUTSIDE = True

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs({
            "start_seconds": ("FLOAT", {"default": 0.0, "min": -10000.0, "max": 10000.0, "step": 0.01,
                                        "tooltip": "Start of the part to regenerate, seconds from the song's start "
                                                   "(rounded down to a 40 ms latent frame)."}),
            "end_seconds": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 10000.0, "step": 0.01,
                                      "tooltip": "End of the part to regenerate (exclusive, rounded down to a frame)."}),
        })

    def execute(self, model, clip, samples, tags, lyrics, start_seconds, end_seconds, language, bpm, timesignature,
                keyscale):
        node = "AceStep15Repaint"
        start, end = float(start_seconds), float(end_seconds)
        song = t15.frames_to_seconds(source_latent(node, samples).shape[-1])
        if start < song < end:
            # As v1's repaint and the region picker (which shows this as a warning): up to the end.
            warn_user(f"{node}: the region ends at {end:g} s, after the song ({song:g} s); repainting up to its end "
                      "(to add music after the song, use AceStep15Extend)")
            end = song
        return self.run(node, model, clip, samples, _text(tags, lyrics, language, bpm, timesignature, keyscale),
                        start_s=start, end_s=end)


class AceStep15Extend(_TaskNode):
    DESCRIPTION = ("More song before and/or after the source (ACE-Step 1.5 extend: repaint past the ends); the "
                   "source frames are kept exactly after AceStep15RestoreSource. At most 600 s in all.")
    TASK = "extend"
    KEEP_OUTSIDE = True

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs({
            "left_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0, "step": 0.1,
                                       "tooltip": "Seconds of new music before the song (whole 40 ms frames)."}),
            "right_seconds": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 600.0, "step": 0.1,
                                        "tooltip": "Seconds of new music after the song."}),
        })

    def execute(self, model, clip, samples, tags, lyrics, left_seconds, right_seconds, language, bpm, timesignature,
                keyscale):
        node = "AceStep15Extend"
        left, right = float(left_seconds), float(right_seconds)
        if not (math.isfinite(left) and math.isfinite(right) and left >= 0 and right >= 0):
            raise ValueError(f"{node}: left_seconds and right_seconds are seconds to add, 0 or more "
                             f"(got {left_seconds}, {right_seconds}).")
        if left == 0 and right == 0:
            raise ValueError(f"{node}: nothing to add: set left_seconds and/or right_seconds above 0 "
                             "(to regenerate part of the song, use AceStep15Repaint).")
        source = source_latent(node, samples)
        return self._masked(node, model, clip, samples, _text(tags, lyrics, language, bpm, timesignature, keyscale),
                            source, left, right)

    def _masked(self, node, model, clip, samples, text, source, left, right):
        """The official extend layout of the region -left .. end + right (the source padded with
        silence latents on each side, then to the 128-frame minimum), generating only the new frames:
        the source frames stay in the DiT's source latents and are kept. For one side this is the
        official extend (a region from the source's end, or up to its start); both sides at once is
        one run here where the app needs two. Source frames are never in the region, also where
        float rounding of the region's seconds would put the first or last one there."""
        check_model(node, model, self.TASK)
        seconds = t15.frames_to_seconds(source.shape[-1])
        with node_errors(node):
            whole = t15.build_task_conditioning("extend", _silence(model), source, start_s=-left,
                                                end_s=seconds + right)
            start, end = whole.left_pad_frames, whole.left_pad_frames + source.shape[-1]
            chunk = whole.chunk_masks.clone()
            chunk[..., start:end] = 0.0
            src = whole.src_latents.clone()
            src[..., start:end] = whole.target_latents[..., start:end]
            generate = chunk[0, 0] > 0.5
            if not generate.any():
                raise ValueError(f"the extension ({left:g} s before, {right:g} s after) is shorter than one latent "
                                 "frame (0.04 s); add more")
            nz = generate.nonzero()
            cond = replace(whole, src_latents=src, chunk_masks=chunk,
                               region=(int(nz[0]), int(nz[-1]) + 1))
            text = dict(text, duration=int(seconds))
            positive, negative = encode_task(node, clip, cond, text)
        return positive, negative, task_latent(samples, cond, True)


class AceStep15Lego(_TaskNode):
    DESCRIPTION = ("Generate one stem in the context of the rest of the song (ACE-Step 1.5 lego; needs the base "
                   "model).")
    TASK = "lego"

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs({
            "stem": (list(STEMS), {"default": "vocals", "tooltip": "The track to generate."}),
            "start_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10000.0, "step": 0.01,
                                        "tooltip": "Where the stem starts (seconds)."}),
            "end_seconds": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10000.0, "step": 0.01,
                                      "tooltip": "Where it ends; -1 = the song's end."}),
        })

    def execute(self, model, clip, samples, tags, lyrics, stem, start_seconds, end_seconds, language, bpm,
                timesignature, keyscale):
        node = "AceStep15Lego"
        check_stem(node, stem)
        return self.run(node, model, clip, samples, _text(tags, lyrics, language, bpm, timesignature, keyscale),
                        track=stem, start_s=float(start_seconds), end_s=float(end_seconds))


class AceStep15Extract(_TaskNode):
    DESCRIPTION = "Separate one stem from a mix (ACE-Step 1.5 extract; needs the base model)."
    TASK = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs({"stem": (list(STEMS), {"default": "vocals", "tooltip": "The track to take out of the mix."})})

    def execute(self, model, clip, samples, tags, lyrics, stem, language, bpm, timesignature, keyscale):
        node = "AceStep15Extract"
        check_stem(node, stem)
        return self.run(node, model, clip, samples, _text(tags, lyrics, language, bpm, timesignature, keyscale),
                        track=stem)


def check_stem(node: str, stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"{node}: unknown stem {stem!r}; ACE-Step 1.5 knows these tracks: {', '.join(STEMS)}")


def parse_stems(text: str) -> list[str]:
    """"drums, bass" -> ["drums", "bass"] (commas, "|" or spaces; case-insensitive)."""
    names = [n.strip().lower() for n in text.replace("|", ",").replace(" ", ",").split(",")]
    names = [n for n in names if n]
    for name in names:
        if name not in t15.TRACK_NAMES:
            raise ValueError(f"unknown stem {name!r}; ACE-Step 1.5 knows these tracks: {', '.join(STEMS)}")
    return names


class AceStep15Complete(_TaskNode):
    DESCRIPTION = ("Accompany a single stem with the stems listed (ACE-Step 1.5 complete; needs the base model).")
    TASK = "complete"

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs({"stems": ("STRING", {
            "default": "drums, bass", "multiline": False,
            "tooltip": "The tracks to add, separated by commas (empty: let the model choose). Known: "
                       + ", ".join(STEMS) + "."})})

    def execute(self, model, clip, samples, tags, lyrics, stems, language, bpm, timesignature, keyscale):
        node = "AceStep15Complete"
        with node_errors(node):
            names = parse_stems(stems)
        return self.run(node, model, clip, samples, _text(tags, lyrics, language, bpm, timesignature, keyscale),
                        tracks=names or None)


# ---------------------------------------------------------------------------------------------
# After sampling
# ---------------------------------------------------------------------------------------------
def restore_source(samples: dict) -> tuple[dict, list[str]]:
    node = "AceStep15RestoreSource"
    if not isinstance(samples, dict) or "samples" not in samples:
        raise ValueError(f"{node}: expected a LATENT (a dict with 'samples'), got {type(samples).__name__}.")
    sampled = samples["samples"]
    out, task = split_task_latent(samples, TASK15_KEY)
    if task is None:
        return out, [f"{node}: this latent does not come from an ACE-Step 1.5 task node; passed through"]
    target = task["target"]
    if sampled.ndim != 3 or sampled.shape[1:] != target.shape[1:]:
        raise ValueError(f"{node}: the latent has shape {list(sampled.shape)}, but the task was made for "
                         f"{list(target.shape)}; connect the sampler that sampled the task node's latent directly.")
    target = source_for_each_item(node, target, sampled)
    if task["generate"] is not None:
        generate = task["generate"].to(sampled.device)
        sampled = torch.where(generate, sampled, target)
    out["samples"] = sampled[..., :task["valid_frames"]].contiguous()
    return out, []


class AceStep15RestoreSource:
    DESCRIPTION = ("After sampling a latent from an ACE-Step 1.5 task node: the kept source frames exactly as they "
                   "were (repaint, extend), and the padding to the 5.12 s minimum cut off (every task).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT", {"tooltip": "The sampler's output for a 1.5 task node's latent."})}}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The finished latent, for VAEDecodeAudio.",)
    FUNCTION = "restore"
    CATEGORY = CATEGORY_15

    def restore(self, samples):
        return restored_output(*restore_source(samples))


NODE_CLASS_MAPPINGS = {
    "AceStep15Cover": AceStep15Cover,
    "AceStep15Repaint": AceStep15Repaint,
    "AceStep15Extend": AceStep15Extend,
    "AceStep15Lego": AceStep15Lego,
    "AceStep15Extract": AceStep15Extract,
    "AceStep15Complete": AceStep15Complete,
    "AceStep15RestoreSource": AceStep15RestoreSource,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AceStep15Cover": "ACE-Step 1.5 Cover",
    "AceStep15Repaint": "ACE-Step 1.5 Repaint",
    "AceStep15Extend": "ACE-Step 1.5 Extend",
    "AceStep15Lego": "ACE-Step 1.5 Lego (add a stem, base model)",
    "AceStep15Extract": "ACE-Step 1.5 Extract (separate a stem, base model)",
    "AceStep15Complete": "ACE-Step 1.5 Complete (accompany a stem, base model)",
    "AceStep15RestoreSource": "ACE-Step 1.5 Restore Source (after a 1.5 task)",
}
