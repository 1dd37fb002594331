"""What ACE-Step 1.5's DiT is given for each task of the official app: text2music, cover, repaint,
extend (repaint past the ends of the source), lego (add one stem), extract (separate one stem) and
complete (accompany a single stem).

Every task runs the same DiT; only its inputs change (official ACE-Step-1.5, git f30aee4,
``acestep/handler.py`` ``AceStepHandler``: ``generate_music``, ``prepare_padding_info`` and
``_prepare_batch``; the per-task instruction strings in ``acestep/constants.py``):

* the ``# Instruction`` line of the caption prompt, per task (:func:`task_instruction`);
* ``src_latents`` (the first 64 input channels): silence, the source latents, or the source with the
  region to generate replaced by silence;
* ``chunk_masks`` (the next 64 channels): 1 on frames the DiT generates, 0 on frames it keeps;
* ``is_covers``: True for cover, whose source is turned into "LM hints" (tokenised to 5 Hz audio
  codes and decoded back, :func:`cover_hints`) instead of being given as is;
* with ``audio_cover_strength`` < 1, after ``int(steps * strength)`` steps the sampler switches to a
  text2music conditioning (silence source, ``is_covers`` False, the text2music instruction)
  (official ``acestep/models/*/modeling_acestep_v15_*.py``, ``generate_audio``; upstream 783bb36).

Upstream ACE-Step-1.5 (783bb36, March 2026) adds repaint-while-sampling: the kept frames are
reset to the noised source after the first steps and the result is cross-faded into the source at
the region's edges (:func:`repaint_settings`, :func:`repaint_step_injection`,
:func:`repaint_boundary_blend`); f30aee4 has neither.

Everything here is plain torch on latents, channels first ``[B, 64, T]`` as ComfyUI's LATENT and
:meth:`acestep_core.ace15.model.Ace15Model.forward` take them; the source audio is encoded by the
VAE beforehand. Latents run at 25 Hz: one frame per 1920 samples at 48 kHz.

Length rules of the official handler: a latent shorter than 128 frames (5.12 s) is padded at the end
with the first frames of the silence latent (the padding is generated on full-song tasks, kept on
repaint); at most 15000 frames (600 s, the length of the official ``silence_latent.pt``).
An odd length needs nothing here: the DiT pads one frame itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Union

import torch

SAMPLE_RATE = 48000
SAMPLES_PER_FRAME = 1920                       # the VAE's hop: 25 latent frames per second
MIN_FRAMES = 128                               # handler.py _prepare_batch: max(128, longest latent)
MAX_FRAMES = 15000                             # silence_latent.pt is [1, 64, 15000]: 600 s
CODE_WINDOW = 5                                # 25 Hz frames per 5 Hz audio code

TASKS = ("text2music", "cover", "repaint", "extend", "lego", "extract", "complete")

# acestep/constants.py TRACK_NAMES, in its order.
TRACK_NAMES = ("woodwinds", "brass", "fx", "synth", "strings", "percussion",
               "keyboard", "guitar", "bass", "drums", "backing_vocals", "vocals")

# acestep/constants.py TASK_INSTRUCTIONS (DEFAULT_DIT_INSTRUCTION = the text2music one).
TEXT2MUSIC_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
COVER_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
REPAINT_INSTRUCTION = "Repaint the mask area based on the given conditions:"
_STEM_INSTRUCTIONS = {   # task: (with a track, without one)
    "extract": ("Extract the {TRACK_NAME} track from the audio:", "Extract the track from the audio:"),
    "lego": ("Generate the {TRACK_NAME} track based on the audio context:",
             "Generate the track based on the audio context:"),
    "complete": ("Complete the input track with {TRACK_CLASSES}:", "Complete the input track:"),
}

# Which released DiT variants do which task: README.md's model table (base: all six; sft and
# turbo: text2music, cover, repaint) and constants.py TASK_TYPES_TURBO / TASK_TYPES_BASE. The app's
# UI only knows "turbo" (config.json is_turbo true) and "not turbo", and offers every task to sft.
VARIANTS = ("turbo", "sft", "base")
_ALL_VARIANTS = VARIANTS
TASK_VARIANTS = {"text2music": _ALL_VARIANTS, "cover": _ALL_VARIANTS, "repaint": _ALL_VARIANTS,
                 "extend": _ALL_VARIANTS, "lego": ("base",), "extract": ("base",), "complete": ("base",)}

Silence = Union[torch.Tensor, Callable[[int], torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# Names, instructions, prompt text
# ---------------------------------------------------------------------------------------------
def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown ACE-Step 1.5 task {task!r}; the tasks are: {', '.join(TASKS)}")
    return task


def _check_track(track: str) -> str:
    if track not in TRACK_NAMES:
        raise ValueError(f"unknown stem {track!r}; ACE-Step 1.5 knows these tracks: {', '.join(TRACK_NAMES)}")
    return track


def task_instruction(task: str, track: str | None = None, tracks=None) -> str:
    """The ``# Instruction`` line of the caption prompt for ``task`` (official
    ``AceStepHandler.generate_instruction``). ``track``: the stem for lego / extract (upper-cased
    into the text); ``tracks``: the stems to add for complete (upper-cased, joined by ``" | "``).
    Without them the generic variant is used, as the app does. extend is repaint."""
    _check_task(task)
    if task in ("text2music", "cover"):
        return TEXT2MUSIC_INSTRUCTION if task == "text2music" else COVER_INSTRUCTION
    if task in ("repaint", "extend"):
        return REPAINT_INSTRUCTION
    named, generic = _STEM_INSTRUCTIONS[task]
    if task == "complete":
        if tracks is None and track is not None:
            tracks = [track]
        if not tracks:
            return generic
        return named.format(TRACK_CLASSES=" | ".join(_check_track(t).upper() for t in tracks))
    if tracks is not None:
        raise ValueError(f"{task} takes one stem (track=...); tracks=[...] is for complete")
    return named.format(TRACK_NAME=_check_track(track).upper()) if track else generic


def format_instruction(instruction: str) -> str:
    """The app appends a ``:`` to an instruction that lacks one (``_format_instruction``)."""
    return instruction if instruction.endswith(":") else instruction + ":"


def official_metas(bpm=None, keyscale: str = "", timesignature: str = "", duration=None) -> str:
    """The ``# Metas`` block as the app writes it (``_build_metadata_dict`` then
    ``_dict_to_meta_string``): empty values are ``N/A``, the duration is ``int(seconds)`` and 30
    seconds when unknown; each line ends with a newline. For tasks with a source the app passes the
    source's own duration (before any extend padding)."""
    bpm = bpm if bpm else "N/A"
    keyscale = keyscale if keyscale and keyscale.strip() else "N/A"
    timesignature = timesignature if timesignature and timesignature.strip() and timesignature != "N/A" else "N/A"
    seconds = f"{int(duration)} seconds" if duration is not None else "30 seconds"
    return f"- bpm: {bpm}\n- timesignature: {timesignature}\n- keyscale: {keyscale}\n- duration: {seconds}\n"


def official_caption_prompt(instruction: str, caption: str, metas: str) -> str:
    """The DiT caption prompt of the app (``constants.SFT_GEN_PROMPT``); the tokenizer then cuts it
    at 256 tokens."""
    return (f"# Instruction\n{format_instruction(instruction)}\n\n# Caption\n{caption}\n\n"
            f"# Metas\n{metas}<|endoftext|>\n")


def official_lyrics_prompt(lyrics: str, language: str) -> str:
    """The lyric prompt of the app (``_format_lyrics``)."""
    return f"# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"


_INSTRUCTION_LINE = re.compile(r"(# Instruction\n)[^\n]*")


def with_instruction(caption_prompt: str, instruction: str) -> str:
    """``caption_prompt`` (the app's or ComfyUI's layout, e.g. from
    :func:`acestep_core.ace15.text_encoder.caption_prompt`, which always says the cover
    instruction) with its instruction line replaced."""
    if not _INSTRUCTION_LINE.search(caption_prompt):
        raise ValueError("the caption prompt has no '# Instruction' line to replace")
    return _INSTRUCTION_LINE.sub(lambda m: m.group(1) + format_instruction(instruction), caption_prompt, count=1)


# ---------------------------------------------------------------------------------------------
# Model variants
# ---------------------------------------------------------------------------------------------
def variants_for(task: str) -> tuple[str, ...]:
    """The released DiT variants that do ``task``: lego, extract and complete need the base model."""
    return TASK_VARIANTS[_check_task(task)]


def check_variant(task: str, variant: str | None) -> None:
    """Raise if ``variant`` ("turbo", "sft", "base"; None = unknown, accepted) cannot do ``task``."""
    if variant is None:
        return
    if variant not in VARIANTS:
        raise ValueError(f"unknown ACE-Step 1.5 variant {variant!r}; the variants are: {', '.join(VARIANTS)}")
    allowed = variants_for(task)
    if variant not in allowed:
        raise ValueError(f"the {task} task needs the ACE-Step 1.5 {' or '.join(allowed)} model; "
                         f"this is the {variant} model (it was not trained for {task})")


def variant_from_config(config: dict | None) -> str | None:
    """What a DiT folder's ``config.json`` says about its variant: ``is_turbo`` true -> "turbo",
    false -> "base or sft" (the official code reads nothing else: ``AceStepHandler.is_turbo_model``;
    base and sft share one config class and one modeling file, and their weights have the same
    shapes), absent (e.g. a single-file checkpoint) -> None."""
    if not config or "is_turbo" not in config:
        return None
    return "turbo" if config["is_turbo"] else "base or sft"


# ---------------------------------------------------------------------------------------------
# Seconds <-> frames
# ---------------------------------------------------------------------------------------------
def seconds_to_frame(seconds: float) -> int:
    """A time in seconds -> latent frame index, as the app maps repaint bounds:
    ``int(seconds * 48000 // 1920)`` (floor)."""
    return int(seconds * SAMPLE_RATE // SAMPLES_PER_FRAME)


def frames_to_seconds(frames: int) -> float:
    return frames * SAMPLES_PER_FRAME / float(SAMPLE_RATE)


def text2music_frames(duration_s: float) -> int:
    """The app's latent length for a text2music duration (``create_target_wavs``: the duration
    rounded to 0.1 s, at least 0.1 s, as whole samples; then whole frames), before the 128-frame
    minimum. (ComfyUI's empty latent uses ``round(seconds * 25)``.)"""
    seconds = max(0.1, round(float(duration_s), 1))
    return int(seconds * SAMPLE_RATE) // SAMPLES_PER_FRAME


def cover_steps(steps: int, audio_cover_strength: float) -> int:
    """How many of ``steps`` sampling steps use the cover conditioning: ``int(steps * strength)``;
    the remaining ones use :attr:`TaskConditioning.after_switch` (official ``generate_audio``,
    turbo and base, with ``steps`` the number of steps actually run)."""
    return int(steps * audio_cover_strength)


def cover_noise_start(schedule, cover_noise_strength: float) -> int:
    """Upstream 783bb36's ``cover_noise_strength`` (turbo and base ``generate_audio``): sampling
    starts at the entry of ``schedule`` (the step times, without the final 0) nearest to
    ``1 - cover_noise_strength`` (the first one on a tie), from ``t * noise + (1 - t) * source``
    with the source latents as given (not the cover hints); the earlier steps are skipped and
    :func:`cover_steps` counts the remaining ones. Returns that index (0: strength 0, pure noise)."""
    if not 0.0 <= cover_noise_strength <= 1.0:
        raise ValueError(f"cover_noise_strength is {cover_noise_strength}; it must be between 0 and 1")
    if cover_noise_strength == 0.0:
        return 0
    times = [float(t) for t in schedule]
    target = 1.0 - cover_noise_strength
    return times.index(min(times, key=lambda t: abs(t - target)))


def _check_length(frames: int, what: str) -> None:
    if frames > MAX_FRAMES:
        raise ValueError(f"{what}: {frames} latent frames ({frames_to_seconds(frames):.2f} s); ACE-Step 1.5 "
                         f"handles at most {MAX_FRAMES} frames ({frames_to_seconds(MAX_FRAMES):.0f} s). "
                         "Use a shorter source or region.")


def repaint_chunk_mask(frames: int, start_s: float, end_s: float) -> torch.Tensor:
    """``[frames]`` float mask, 1 on the frames to generate: ``[seconds_to_frame(start_s),
    seconds_to_frame(end_s))``, clamped to the latent as the app clamps it (at least one frame).
    ``frames`` is the whole latent, padding included; seconds count from its first frame."""
    if end_s <= start_s:
        raise ValueError(f"the region to generate ends ({end_s} s) before it starts ({start_s} s)")
    if start_s < 0:
        raise ValueError(f"the region starts at {start_s} s, before the latent; use the extend task to generate "
                         "before the source")
    start = max(0, min(seconds_to_frame(start_s), frames - 1))
    end = max(start + 1, min(seconds_to_frame(end_s), frames))
    mask = torch.zeros(frames)
    mask[start:end] = 1.0
    return mask


# ---------------------------------------------------------------------------------------------
# The conditioning
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskConditioning:
    """What the DiT's forward needs for one task. Tensors are channels first, like ComfyUI latents.

    ``src_latents`` / ``chunk_masks`` ``[B, 64, T]`` go to ``Ace15Model.forward`` (``src_latents``,
    ``chunk_masks``) with ``is_covers``; for a cover the source must first become LM hints
    (``precomputed_lm_hints_25Hz = cover_hints(model, cond.src_latents, silence)``), which is what
    the official ``prepare_condition`` does with ``is_covers`` true. ``instruction`` goes into the
    caption prompt. ``target_latents`` is the clean source on the same ``T`` frames (what the app
    keeps for the output / repaint blending); ``latent_mask`` 1 on frames that are the song (the app's
    ``latent_masks``), 0 on the padding up to 128 frames. ``region`` = frames ``[start, end)`` the
    DiT generates, None when it generates all. ``left_pad_frames``: frames added before the source
    (extend), so source frame ``i`` is latent frame ``i + left_pad_frames``. ``source_seconds``: the
    source's duration, what the app writes into the metas. ``after_switch``: with
    ``audio_cover_strength`` < 1, the conditioning for the steps from :meth:`switch_step` on."""
    task: str
    instruction: str
    src_latents: torch.Tensor
    chunk_masks: torch.Tensor
    is_covers: bool
    target_latents: torch.Tensor
    latent_mask: torch.Tensor
    region: tuple[int, int] | None = None
    left_pad_frames: int = 0
    source_seconds: float | None = None
    audio_cover_strength: float = 1.0
    after_switch: "TaskConditioning | None" = None
    from_codes: bool = False

    @property
    def needs_cover_hints(self) -> bool:
        """A cover of audio: the forward needs ``precomputed_lm_hints_25Hz = cover_hints(model,
        src_latents, silence)``. (From codes, ``src_latents`` already are the hints: pass them
        time-major, ``src_latents.movedim(-1, -2)``.)"""
        return self.is_covers and not self.from_codes

    @property
    def frames(self) -> int:
        return self.src_latents.shape[-1]

    @property
    def region_mask(self) -> torch.Tensor | None:
        """``[B, T]`` bool, True on the generated region (upstream's ``repaint_mask``, for
        :func:`repaint_step_injection` / :func:`repaint_boundary_blend`); None without a region."""
        return None if self.region is None else self.chunk_masks[:, 0] > 0

    @property
    def valid_frames(self) -> int:
        return int(self.latent_mask.sum().item())

    def switch_step(self, steps: int) -> int:
        """The first step index that uses :attr:`after_switch` (``steps`` when none does)."""
        return steps if self.after_switch is None else cover_steps(steps, self.audio_cover_strength)

    def at_step(self, step: int, steps: int) -> "TaskConditioning":
        """The conditioning of step ``step`` (0-based) out of ``steps``."""
        return self if step < self.switch_step(steps) else self.after_switch


def _as_batch(latents: torch.Tensor, what: str) -> torch.Tensor:
    if latents.ndim == 2:
        latents = latents.unsqueeze(0)
    if latents.ndim != 3 or latents.shape[1] != 64:
        raise ValueError(f"{what}: expected ACE-Step 1.5 latents [B, 64, T] or [64, T], got {tuple(latents.shape)}"
                         " (a v1 latent or audio instead of a 1.5 latent?)")
    if latents.shape[-1] < 1:
        raise ValueError(f"{what} is empty (0 latent frames)")
    return latents


def _silence_frames(silence: Silence, frames: int, like: torch.Tensor) -> torch.Tensor:
    """``[1, 64, frames]``: the first ``frames`` frames of the silence latent."""
    if callable(silence):
        out = silence(frames)
    else:
        out = silence
    out = _as_batch(out, "the silence latent")[:1]
    if out.shape[-1] < frames:
        raise ValueError(f"the silence latent has {out.shape[-1]} frames; {frames} are needed "
                         f"(the official silence_latent.pt has {MAX_FRAMES})")
    return out[..., :frames].to(device=like.device, dtype=like.dtype)


def _pad_to_minimum(latents: torch.Tensor, silence: Silence) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to 128 frames with the *first* frames of the silence latent (``_prepare_batch``:
    ``cat([latent, silence_latent[0, :pad_length]])``) and the mask of real frames."""
    valid = latents.shape[-1]
    mask = torch.ones(valid)
    if valid >= MIN_FRAMES:
        return latents, mask
    pad = _silence_frames(silence, MIN_FRAMES - valid, latents).expand(latents.shape[0], -1, -1)
    return torch.cat([latents, pad], dim=-1), torch.cat([mask, torch.zeros(MIN_FRAMES - valid)])


def _full(latents_b: int, frames: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(latents_b, 64, frames, dtype=like.dtype, device=like.device)


def _outpaint_layout(source_frames: int, start_s: float | None, end_s: float | None):
    """The app's extend padding (``prepare_padding_info``) in whole frames: ``(left_frames,
    right_frames, start_s, end_s)`` with the region moved onto the padded latent. The app pads the
    waveform with ``int(seconds * 48000)`` zero samples; here the left padding is rounded to whole
    frames (exact when it is a multiple of 0.04 s)."""
    source_s = frames_to_seconds(source_frames)
    start_s = 0.0 if start_s is None else float(start_s)
    end_s = source_s if end_s is None or end_s < 0 else float(end_s)
    left_s = max(0.0, -start_s)
    right_s = max(0.0, end_s - source_s)
    left_samples, right_samples = int(left_s * SAMPLE_RATE), int(right_s * SAMPLE_RATE)
    total = (source_frames * SAMPLES_PER_FRAME + left_samples + right_samples) // SAMPLES_PER_FRAME
    left = round(left_samples / SAMPLES_PER_FRAME)
    right = max(0, total - source_frames - left)
    return left, right, start_s + left_s, end_s + left_s


def build_task_conditioning(task: str, silence: Silence, source: torch.Tensor | None = None, *,
                            frames: int | None = None, duration_s: float | None = None,
                            start_s: float | None = None, end_s: float | None = None,
                            track: str | None = None, tracks=None, audio_cover_strength: float = 1.0,
                            from_codes: bool = False, lego_keeps_source: bool = True,
                            variant: str | None = None) -> TaskConditioning:
    """The DiT inputs of one task, as the official app builds them.

    ``silence``: the silence latent ``[1, 64, S]`` (S at least the latent length) or a function
    ``frames -> [1, 64, frames]`` (``Ace15Models.silence``). ``source``: the VAE latents of the
    source audio ``[B, 64, T]`` (cover, repaint, extend, lego, extract, complete); with
    ``from_codes`` the 25 Hz hints decoded from 5 Hz audio codes instead (cover, or text2music with
    the planner's codes, which the app turns into a cover). text2music without codes takes the
    latent length ``frames`` or ``duration_s`` (:func:`text2music_frames`).

    ``start_s`` / ``end_s`` (seconds from the source's start; None / negative end = the source's end):
    the region to generate for repaint (inside the source), extend (may start before 0 and / or end
    after the source: the latent grows by the outside part) and lego (default: the whole source).
    ``track``: the stem for lego / extract; ``tracks``: the stems for complete.
    ``lego_keeps_source``: lego gives the DiT the source unchanged inside the region, as upstream
    ACE-Step-1.5 does since March 2026 (``core/generation/handler/conditioning_masks.py``, 783bb36);
    False reproduces f30aee4, where lego silenced the region like repaint (with the default region,
    the whole backing track). ``audio_cover_strength`` in [0, 1]: below 1 the conditioning carries
    :attr:`TaskConditioning.after_switch`. ``variant``: if known, checked with :func:`check_variant`.
    """
    _check_task(task)
    check_variant(task, variant)
    if not 0.0 <= audio_cover_strength <= 1.0:
        raise ValueError(f"audio_cover_strength is {audio_cover_strength}; it must be between 0 and 1 "
                         "(1 = cover conditioning on every step)")
    if (start_s is not None or end_s is not None) and task not in ("repaint", "extend", "lego"):
        raise ValueError(f"start_s / end_s set a region for repaint, extend and lego; {task} generates the whole "
                         "latent")
    if (track is not None or tracks is not None) and task not in ("lego", "extract", "complete"):
        raise ValueError(f"track / tracks name stems for lego, extract and complete; {task} has none")
    if from_codes and task not in ("text2music", "cover"):
        raise ValueError(f"audio codes are a source for text2music and cover, not for {task}")
    instruction = task_instruction(task, track, tracks)
    if task == "text2music" and from_codes:
        # generate_music: text2music with audio codes becomes a cover, with the cover instruction.
        instruction = COVER_INSTRUCTION

    if task == "text2music" and not from_codes:
        if source is not None:
            raise ValueError("text2music takes no source latents; give frames= or duration_s= (or use cover)")
        if frames is None:
            if duration_s is None:
                raise ValueError("text2music needs the latent length: frames=... or duration_s=...")
            frames = text2music_frames(duration_s)
        if frames < 1:
            raise ValueError(f"text2music needs at least one latent frame, got frames={frames}")
        _check_length(frames, "the requested length")
        padded = max(MIN_FRAMES, frames)
        sil = _silence_frames(silence, padded, silence if torch.is_tensor(silence) else torch.zeros(1))
        src = sil.clone()
        # The app's target: the silence of the requested length, then its 128-frame padding.
        target, latent_mask = _pad_to_minimum(sil[..., :frames], silence)
        cond = TaskConditioning(task, instruction, src, _full(1, padded, src), False, target, latent_mask,
                                source_seconds=None if duration_s is None else float(duration_s))
        return _with_switch(cond, silence, audio_cover_strength)

    if source is None:
        raise ValueError(f"{task} needs the source: its VAE latents [B, 64, T]"
                         + (" (or the hints decoded from audio codes)" if task == "cover" else ""))
    if frames is not None or duration_s is not None:
        raise ValueError(f"{task} takes its length from the source; frames= / duration_s= are for text2music")
    source = _as_batch(source, f"the {task} source")
    source_frames = source.shape[-1]
    source_seconds = frames_to_seconds(source_frames)
    _check_length(source_frames, f"the {task} source")

    if task in ("repaint", "extend", "lego"):
        start = 0.0 if start_s is None else float(start_s)
        end = source_seconds if end_s is None or end_s < 0 else float(end_s)
        if task == "repaint" and (start < 0 or end > source_seconds + 1e-9):
            raise ValueError(f"the repaint region {start:g}-{end:g} s is outside the source "
                             f"(0-{source_seconds:g} s); use the extend task to generate before or after it")
        if end <= start:
            raise ValueError(f"the region to generate ends at {end:g} s, not after its start {start:g} s")
        left, right, start_on_latent, end_on_latent = _outpaint_layout(source_frames, start_s, end_s)
        _check_length(left + source_frames + right, f"the {task} latent (source plus extension)")
        target = source
        if left or right:
            # The app VAE-encodes the zero-padded waveform; here the added frames are silence
            # latents at the same positions. They always lie inside the generated region, where
            # repaint / extend put silence anyway; only lego with lego_keeps_source sees them.
            padded_len = left + source_frames + right
            sil = _silence_frames(silence, padded_len, source).expand(source.shape[0], -1, -1)
            target = torch.cat([sil[..., :left], source, sil[..., left + source_frames:]], dim=-1)
        target, latent_mask = _pad_to_minimum(target, silence)
        total = target.shape[-1]
        mask = repaint_chunk_mask(total, start_on_latent, end_on_latent)
        nz = mask.nonzero()
        region = (int(nz[0]), int(nz[-1]) + 1)
        src = target.clone()
        if not (task == "lego" and lego_keeps_source):
            src[..., region[0]:region[1]] = _silence_frames(silence, total, target)[..., region[0]:region[1]]
        chunk = mask.to(target)[None, None, :].expand(target.shape[0], 64, -1).clone()
        cond = TaskConditioning(task, instruction, src, chunk, False, target, latent_mask, region, left,
                                source_seconds)
        return _with_switch(cond, silence, audio_cover_strength)

    # cover, text2music from codes, extract, complete: the whole latent is generated from the source.
    target, latent_mask = _pad_to_minimum(source, silence)
    is_covers = task in ("cover", "text2music")
    cond = TaskConditioning(task, instruction, target.clone(), _full(target.shape[0], target.shape[-1], target),
                            is_covers, target, latent_mask, None, 0, source_seconds, from_codes=from_codes)
    return _with_switch(cond, silence, audio_cover_strength)


def _with_switch(cond: TaskConditioning, silence: Silence, strength: float) -> TaskConditioning:
    """Attach the text2music conditioning used after ``int(steps * strength)`` steps: the silence
    latent as source, ``is_covers`` False, the text2music instruction, the same chunk masks
    (``_prepare_batch``'s non-cover caption and ``generate_audio``'s second ``prepare_condition``).
    The lyrics and the timbre reference stay as they are."""
    if strength >= 1.0:
        return cond
    sil = _silence_frames(silence, cond.frames, cond.src_latents).expand(cond.src_latents.shape[0], -1, -1).clone()
    after = replace(cond, task="text2music", instruction=TEXT2MUSIC_INSTRUCTION, src_latents=sil, is_covers=False,
                    audio_cover_strength=1.0, after_switch=None, from_codes=False)
    return replace(cond, audio_cover_strength=float(strength), after_switch=after)


# ---------------------------------------------------------------------------------------------
# LM hints for cover
# ---------------------------------------------------------------------------------------------
def pad_to_code_frames(latents: torch.Tensor, silence: Silence) -> torch.Tensor:
    """``[B, 64, T]`` padded at the end to a multiple of 5 frames with the first frames of the
    silence latent, as the official ``AceStepConditionGenerationModel.tokenize`` pads before
    pooling 5 frames into one audio code (ComfyUI pads with zeros)."""
    latents = _as_batch(latents, "the latents to tokenize")
    extra = -latents.shape[-1] % CODE_WINDOW
    if not extra:
        return latents
    pad = _silence_frames(silence, extra, latents).expand(latents.shape[0], -1, -1)
    return torch.cat([latents, pad], dim=-1)


def fit_hints(hints: torch.Tensor, frames: int, silence: Silence) -> torch.Tensor:
    """Hints decoded from audio codes ``[B, 64, T']`` cut or padded to ``frames`` (padding: the
    first frames of the silence latent; ``_prepare_batch`` for ``precomputed_lm_hints_25Hz``)."""
    hints = _as_batch(hints, "the audio-code hints")
    if hints.shape[-1] >= frames:
        return hints[..., :frames]
    pad = _silence_frames(silence, frames - hints.shape[-1], hints).expand(hints.shape[0], -1, -1)
    return torch.cat([hints, pad], dim=-1)


@torch.no_grad()
def cover_hints(model, src_latents: torch.Tensor, silence: Silence) -> torch.Tensor:
    """The cover's LM hints: ``src_latents [B, 64, T]`` tokenised to 5 Hz codes by ``model``'s FSQ
    tokenizer and decoded back to 25 Hz, cut to ``T``; returned **time-major** ``[B, T, 64]``, the
    layout ``Ace15Model.forward`` takes as ``precomputed_lm_hints_25Hz``. ``model``: an
    :class:`~acestep_core.ace15.model.Ace15Model` (its ``hints_from_latents``)."""
    frames = src_latents.shape[-1]
    padded = pad_to_code_frames(src_latents, silence)
    return model.hints_from_latents(padded.movedim(-1, -2))[:, :frames, :]


# ---------------------------------------------------------------------------------------------
# Repaint while sampling (upstream ACE-Step-1.5 783bb36; not in f30aee4)
# ---------------------------------------------------------------------------------------------
REPAINT_MODES = ("conservative", "balanced", "aggressive")


def repaint_settings(mode: str = "balanced", strength: float = 0.5) -> tuple[float, int, float]:
    """Upstream's ``repaint_mode`` / ``repaint_strength`` -> ``(injection_ratio, crossfade_frames,
    wav_crossfade_seconds)`` (``core/generation/handler/generate_music.py``,
    ``_resolve_repaint_config``): conservative (1, 25, 0.05), aggressive (0, 0, 0), balanced with
    ``s`` = strength clamped to [0, 1]: (1 - s, round(25 (1 - s)), 0.05 (1 - s)). The default
    (balanced, 0.5) gives (0.5, 12, 0.025)."""
    if mode not in REPAINT_MODES:
        raise ValueError(f"unknown repaint mode {mode!r}; the modes are: {', '.join(REPAINT_MODES)}")
    strength = max(0.0, min(1.0, strength))
    if mode == "aggressive":
        return 0.0, 0, 0.0
    if mode == "conservative":
        return 1.0, 25, 0.05
    inv = 1.0 - strength
    return inv, round(25 * inv), 0.05 * inv


def injection_steps(steps: int, injection_ratio: float) -> int:
    """After how many of ``steps`` sampling steps the kept frames stop being reset:
    ``round(ratio * steps)``; the reset follows steps ``0 .. n-1`` (``generate_audio``; the turbo
    loop's last step returns x0 before any reset)."""
    return round(injection_ratio * steps)


def repaint_step_injection(x: torch.Tensor, clean: torch.Tensor, region_mask: torch.Tensor, t_next: float,
                           noise: torch.Tensor) -> torch.Tensor:
    """Reset the kept frames of ``x [B, 64, T]`` to the source noised to ``t_next``:
    ``t_next * noise + (1 - t_next) * clean``, with ``noise`` the initial noise of the run
    (upstream ``_repaint_step_injection``). ``region_mask [B, T]``: True where the DiT generates."""
    noised = t_next * noise + (1.0 - t_next) * clean
    return torch.where(region_mask.unsqueeze(1).expand_as(x), x, noised)


def repaint_soft_mask(region_mask: torch.Tensor, crossfade_frames: int) -> torch.Tensor:
    """``[B, T]`` float: 1 in the region, 0 outside, with linear ramps of ``crossfade_frames``
    frames outside each edge (the ramp excludes its 0 and 1 ends; upstream
    ``_repaint_boundary_blend``). Rows that are all or nothing region are left as they are."""
    soft = region_mask.float().clone()
    if crossfade_frames <= 0:
        return soft
    frames = region_mask.shape[1]
    for b, row in enumerate(region_mask):
        if row.all() or not row.any():
            continue
        idx = torch.nonzero(row, as_tuple=False).squeeze(-1)
        left, right = idx[0].item(), idx[-1].item() + 1
        start = max(left - crossfade_frames, 0)
        if left - start > 0:
            soft[b, start:left] = torch.linspace(0, 1, left - start + 2, device=soft.device)[1:-1]
        end = min(right + crossfade_frames, frames)
        if end - right > 0:
            soft[b, right:end] = torch.linspace(1, 0, end - right + 2, device=soft.device)[1:-1]
    return soft


def repaint_boundary_blend(x: torch.Tensor, clean: torch.Tensor, region_mask: torch.Tensor,
                           crossfade_frames: int) -> torch.Tensor:
    """The sampled latent ``x [B, 64, T]`` blended into the clean source across
    :func:`repaint_soft_mask` (upstream applies it after the last step when crossfade_frames > 0)."""
    m = repaint_soft_mask(region_mask, crossfade_frames).unsqueeze(1).expand_as(x)
    return m * x + (1.0 - m) * clean


__all__ = ["TASKS", "TRACK_NAMES", "VARIANTS", "TASK_VARIANTS", "MIN_FRAMES", "MAX_FRAMES", "SAMPLE_RATE",
           "SAMPLES_PER_FRAME", "TEXT2MUSIC_INSTRUCTION", "COVER_INSTRUCTION", "REPAINT_INSTRUCTION",
           "TaskConditioning", "build_task_conditioning", "task_instruction", "format_instruction",
           "official_metas", "official_caption_prompt", "official_lyrics_prompt", "with_instruction",
           "variants_for", "check_variant", "variant_from_config", "seconds_to_frame", "frames_to_seconds",
           "text2music_frames", "cover_steps", "cover_noise_start", "repaint_chunk_mask", "pad_to_code_frames", "fit_hints",
           "cover_hints", "REPAINT_MODES", "repaint_settings", "injection_steps", "repaint_step_injection",
           "repaint_soft_mask", "repaint_boundary_blend"]
