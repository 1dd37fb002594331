"""Retake, repaint and extend as ComfyUI nodes around the stock samplers.

The math is acestep_core.tasks.repaint; these nodes only put it into ComfyUI's objects:

* ``AceStepRepaint``  LATENT -> LATENT with a ``noise_mask`` over [start, end) plus ``denoise``
  (= variance) for KSampler. ComfyUI's masked sampling is the original repaint loop: every
  model call sees the known frames put back on the source's noising path (sigma*noise +
  (1-sigma)*source) and the denoised estimate outside the mask is the source itself.
  KSampler with denoise = variance starts where the original starts, at step
  int(steps * (1 - variance)) of its schedule: KSampler runs ``steps`` steps over the last
  ``denoise`` fraction of an int(steps / denoise)-step schedule. The original's 60 steps at
  variance 0.2 (steps 48..59) are KSampler steps 12, denoise 0.2 (steps 48..59 of ComfyUI's
  60-step schedule); more steps at the same denoise sample the same range more finely.
* ``AceStepExtend``   LATENT -> a longer LATENT: new zero frames left/right with a
  ``noise_mask`` over them, the source in between. Sample with denoise 1.0 (the original
  starts extensions from pure noise).
* ``AceStepRestoreSource`` LATENT (after the sampler) -> LATENT: writes the untouched source
  frames back bit for bit (the sampler's last Euler step leaves float rounding, ~1e-7, there)
  and re-attaches source frames that did not fit into the 240 s extend window.
* ``AceStepRetake``   NOISE for SamplerCustomAdvanced: cos(phi)*noise(seed) +
  sin(phi)*noise(retake_seed), phi = variance*pi/2; inside a ``noise_mask`` only (repaint).
* ``AceStepRetakeModel`` MODEL for the stock KSampler: the same mix, with KSampler's own
  seed as the original seed (a latent cannot carry it: at sigma = 1 ComfyUI starts from
  sigma*noise + (1-sigma)*latent = noise, so only the noise itself can be changed).

A LATENT made by Repaint / Extend carries the source and the frame layout under
``acestep_task``; KSampler and SamplerCustomAdvanced copy unknown keys from their input latent
to their output, which is how AceStepRestoreSource finds them.
"""
from __future__ import annotations


import torch

import comfy.patcher_extension
import comfy.sample
import comfy.utils

from acestep_core.constants import LATENT_HEIGHT, MAX_SECONDS
from acestep_core.tasks import (MAX_EXTEND_FRAMES, ExtendPlan, check_variance, extend_assemble, extend_frames,
                                extend_latent, repaint_mask, repaint_noise, retake_noise)

from .common import (CATEGORY, check_latent, log, node_errors, restored_output, source_for_each_item, split_task_latent,
                     with_ui_text)
TASK_KEY = "acestep_task"                 # LATENT dict key holding what AceStepRestoreSource needs
RETAKE_WRAPPER_KEY = "acestep_retake"
SEED_MAX = 0xffffffffffffffff


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _source_latent(samples, node: str) -> torch.Tensor:
    """The [B, 8, 16, T] tensor of an ACE-Step LATENT, or a ValueError that says what is wrong."""
    if not isinstance(samples, dict) or "samples" not in samples:
        raise ValueError(f"{node}: expected a LATENT (a dict with 'samples'), got {type(samples).__name__}.")
    return check_latent(samples["samples"], node)


def _noise_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """[T] 0/1 mask -> ComfyUI's LATENT ``noise_mask`` [1, 1, 16, T]: the full latent height, so
    ComfyUI's resize to the latent (bilinear, same size) is the identity and 0/1 stay exact."""
    return frame_mask.to(torch.float32).reshape(1, 1, 1, -1).expand(1, 1, LATENT_HEIGHT, -1).contiguous()


def _warn(node: str, messages: list[str]) -> list[str]:
    for message in messages:
        log.warning("%s: %s", node, message)
    return [f"{node}: {m}" for m in messages]


def _output_latent(samples: dict, latent: torch.Tensor, mask: torch.Tensor, task: dict) -> dict:
    out = {k: v for k, v in samples.items() if k not in ("samples", "noise_mask", TASK_KEY)}
    out["samples"] = latent
    out["noise_mask"] = _noise_mask(mask)
    out[TASK_KEY] = task
    out.setdefault("type", "audio")
    return out


# The input of the nodes that start a task from a song (repaint, extend).
SOURCE_SAMPLES_INPUT = ("LATENT", {"tooltip": "The source song's latent (VAEEncodeAudio with the ACE-Step VAE, "
                                              "or a generated latent)."})


# ---------------------------------------------------------------------------------------------
# Repaint
# ---------------------------------------------------------------------------------------------
class AceStepRepaint:
    DESCRIPTION = ("Regenerate one time range of a song. Wire LATENT and denoise into a KSampler "
                   "(denoise = variance); frames outside the range are kept (exactly, after "
                   "AceStepRestoreSource).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": SOURCE_SAMPLES_INPUT,
                "start_seconds": ("FLOAT", {
                    "default": 0.0, "min": -10000.0, "max": 10000.0, "step": 0.01,
                    "tooltip": "Start of the part to regenerate, in seconds from the beginning of the song "
                               "(rounded down to a latent frame of 4096/44100 s = 92.9 ms). Before 0 is "
                               "clamped to 0 with a warning."}),
                "end_seconds": ("FLOAT", {
                    "default": 10.0, "min": -10000.0, "max": 10000.0, "step": 0.01,
                    "tooltip": "End of the part to regenerate (exclusive, rounded down to a frame). Past the "
                               "end of the song is clamped to the end with a warning."}),
                "variance": ("FLOAT", {
                    "default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "How much the painted part may change (the original app's repaint variance, "
                               "default 0.2): sampling starts at step int(steps * (1 - variance)). Sent out "
                               "as 'denoise' for the KSampler; 1.0 regenerates the part from pure noise."}),
            }
        }

    RETURN_TYPES = ("LATENT", "FLOAT")
    RETURN_NAMES = ("LATENT", "denoise")
    OUTPUT_TOOLTIPS = ("The source latent with a noise_mask over the painted frames: give it to KSampler "
                       "(or SamplerCustomAdvanced).",
                       "The variance, to connect to KSampler's denoise input.")
    FUNCTION = "repaint"
    CATEGORY = CATEGORY

    def repaint(self, samples, start_seconds, end_seconds, variance):
        node = "AceStepRepaint"
        source = _source_latent(samples, node)
        variance = _check_variance(node, variance)
        with node_errors(node):
            mask, start, end, warnings = repaint_mask(source.shape[-1], start_seconds, end_seconds)
        messages = _warn(node, warnings)
        task = {"kind": "repaint", "source": source, "mask": mask, "start_frame": start, "end_frame": end,
                "variance": variance}
        return with_ui_text((_output_latent(samples, source, mask, task), variance), messages)


# ---------------------------------------------------------------------------------------------
# Extend
# ---------------------------------------------------------------------------------------------
class AceStepExtend:
    DESCRIPTION = ("Add new music before and/or after a song. Sample the LATENT with KSampler at denoise "
                   "1.0, then AceStepRestoreSource, then VAEDecodeAudio.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": SOURCE_SAMPLES_INPUT,
                "left_seconds": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": MAX_SECONDS, "step": 0.1,
                    "tooltip": "Seconds of new music before the song (counted like a duration: "
                               "int(seconds * 44100 / 4096) frames)."}),
                "right_seconds": ("FLOAT", {
                    "default": 30.0, "min": 0.0, "max": MAX_SECONDS, "step": 0.1,
                    "tooltip": "Seconds of new music after the song. The sampled window is at most 240 s "
                               "(the original's limit): source frames that do not fit are left out of "
                               "sampling and put back by AceStepRestoreSource."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The window to sample: new (zero) frames with a noise_mask over them and the source "
                       "between them. Sample with denoise 1.0.",)
    FUNCTION = "extend"
    CATEGORY = CATEGORY

    def extend(self, samples, left_seconds, right_seconds):
        node = "AceStepExtend"
        source = _source_latent(samples, node)
        with node_errors(node):
            left, right = extend_frames(left_seconds, right_seconds)
        total = source.shape[-1]
        if left == 0 and right == 0:
            messages = _warn(node, [f"both extensions are shorter than one frame ({left_seconds:g} s, "
                                    f"{right_seconds:g} s): nothing is added, the latent passes through"])
            plan = ExtendPlan(0, 0, total, 0, total)
            task = {"kind": "extend", "source": source, "plan": plan, "mask": torch.zeros(total)}
            return with_ui_text((_output_latent(samples, source, torch.zeros(total), task),), messages)
        with node_errors(node):
            window, mask, plan = extend_latent(source, left, right, MAX_EXTEND_FRAMES)
        warnings = []
        if plan.kept_frames < total:
            cut = total - plan.kept_frames
            side = "end" if plan.kept_start == 0 else "beginning"
            warnings.append(f"source + extension exceed the 240 s window: the {cut} source frames at the {side} "
                            "are not sampled with the new part; AceStepRestoreSource puts them back")
        task = {"kind": "extend", "source": source, "plan": plan, "mask": mask}
        return with_ui_text((_output_latent(samples, window, mask, task),), _warn(node, warnings))


# ---------------------------------------------------------------------------------------------
# Restore the source after sampling
# ---------------------------------------------------------------------------------------------
def restore_source(samples: dict) -> tuple[dict, list[str]]:
    """LATENT sampled from a Repaint / Extend latent -> final LATENT (no mask, no task data)."""
    node = "AceStepRestoreSource"
    sampled = _source_latent(samples, node)
    out, task = split_task_latent(samples, TASK_KEY)
    if task is None:
        return out, [f"{node}: this latent does not come from AceStepRepaint or AceStepExtend; passed through"]
    source = source_for_each_item(node, task["source"], sampled)
    mask = task["mask"].to(sampled.device)
    if sampled.shape[-1] != mask.shape[-1]:
        raise ValueError(f"{node}: the latent has {sampled.shape[-1]} frames but the task was made for "
                         f"{mask.shape[-1]}; connect the sampler that sampled the AceStepRepaint / "
                         "AceStepExtend latent directly.")
    painted = mask > 0.5
    if task["kind"] == "repaint":
        out["samples"] = torch.where(painted, sampled, source)
        return out, []
    plan: ExtendPlan = task["plan"]
    # The window's kept frames are the source's [kept_start, kept_end): put them back exactly,
    # then re-attach what was left out of the window.
    kept = torch.zeros_like(sampled)
    kept[..., plan.left_frames:plan.left_frames + plan.kept_frames] = source[..., plan.kept_slice]
    window = torch.where(painted, sampled, kept)
    out["samples"] = extend_assemble(window, source, plan)
    return out, []


class AceStepRestoreSource:
    DESCRIPTION = ("After sampling a Repaint or Extend latent: the kept source frames exactly as they were, "
                   "and for extensions longer than the 240 s window the source frames that were left out.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The sampler's output for a latent made by AceStepRepaint or "
                                                  "AceStepExtend (other latents pass through unchanged)."}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The finished latent, for VAEDecodeAudio.",)
    FUNCTION = "restore"
    CATEGORY = CATEGORY

    def restore(self, samples):
        return restored_output(*restore_source(samples))


# ---------------------------------------------------------------------------------------------
# Retake
# ---------------------------------------------------------------------------------------------
def _check_variance(node: str, variance: float) -> float:
    with node_errors(node):
        return check_variance(variance)


def mix_retake(noise: torch.Tensor, retake: torch.Tensor, variance: float, mask: torch.Tensor | None = None):
    """The original's retake mix, over the whole latent or (repaint) only where ``mask`` > 0.5."""
    if mask is None:
        return retake_noise(noise, retake, variance)
    return repaint_noise(noise, retake, mask, variance)


class RetakeNoise:
    """ComfyUI NOISE (``seed`` + ``generate_noise(input_latent)``): cos(phi) * noise(seed) +
    sin(phi) * noise(retake_seed), phi = variance * pi / 2, each noise drawn exactly as
    RandomNoise draws it. With a ``noise_mask`` in the latent, only the masked frames are
    mixed (the original repaint's z0); elsewhere the noise is the original seed's."""

    def __init__(self, seed: int, retake_seed: int, variance: float):
        self.original_seed = int(seed)
        self.retake_seed = int(retake_seed)
        self.variance = float(variance)
        # The seed samplers use for their own extra noise (ancestral / SDE samplers): the
        # original's at variance 0, the retake's otherwise.
        self.seed = self.original_seed if self.variance == 0.0 else self.retake_seed

    def generate_noise(self, input_latent):
        latent = input_latent["samples"]
        batch_index = input_latent.get("batch_index")
        noise = comfy.sample.prepare_noise(latent, self.original_seed, batch_index)
        if self.variance == 0.0:
            return noise
        retake = comfy.sample.prepare_noise(latent, self.retake_seed, batch_index)
        mask = input_latent.get("noise_mask")
        if mask is not None:
            mask = comfy.utils.reshape_mask(mask, noise.shape)
        return mix_retake(noise, retake, self.variance, mask)


def _retake_inputs(with_seed: bool):
    inputs = {}
    if with_seed:
        inputs["seed"] = ("INT", {
            "default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": False,
            "tooltip": "The seed of the song to vary (the seed it was generated with)."})
    inputs["retake_seed"] = ("INT", {
        "default": 1, "min": 0, "max": SEED_MAX, "control_after_generate": True,
        "tooltip": "The seed of the new variation; change it for another retake."})
    inputs["variance"] = ("FLOAT", {
        "default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
        "tooltip": "How far the retake moves from the original (the original app's retake variance, UI "
                   "default 0.2): noise = cos(v*pi/2)*original + sin(v*pi/2)*retake. 0 reproduces the "
                   "original seed exactly, 1 is the retake seed's own song."})
    return inputs


class AceStepRetake:
    DESCRIPTION = ("Retake noise for SamplerCustomAdvanced: the original seed's noise mixed with a retake seed's "
                   "by variance (with a repaint latent, only inside the painted range).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _retake_inputs(with_seed=True)}

    RETURN_TYPES = ("NOISE",)
    OUTPUT_TOOLTIPS = ("Noise for SamplerCustomAdvanced's noise input.",)
    FUNCTION = "get_noise"
    CATEGORY = CATEGORY

    def get_noise(self, seed, retake_seed, variance):
        return (RetakeNoise(seed, retake_seed, _check_variance("AceStepRetake", variance)),)


def retake_sampler_wrapper(retake_seed: int, variance: float):
    """SAMPLER_SAMPLE wrapper: replaces the sampler's initial noise (KSampler's seed noise) by
    its retake mix before the sampler scales it; honours a repaint mask (``denoise_mask``)."""

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                disable_pbar=False):
        if variance != 0.0:
            retake = comfy.sample.prepare_noise(noise.cpu(), retake_seed).to(device=noise.device, dtype=noise.dtype)
            mask = None
            if denoise_mask is not None:
                mask = denoise_mask if denoise_mask.shape == noise.shape else \
                    comfy.utils.reshape_mask(denoise_mask, noise.shape)
            noise = mix_retake(noise, retake, variance, mask)
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)

    return wrapper


class AceStepRetakeModel:
    DESCRIPTION = ("Retake for the stock KSampler: KSampler's seed is the original song's seed; this patch mixes "
                   "its noise with the retake seed's by variance (only inside a repaint range, if any).")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"model": ("MODEL", {"tooltip": "The ACE-Step model to sample the retake with."})}
        inputs.update(_retake_inputs(with_seed=False))
        return {"required": inputs}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model for KSampler; set KSampler's seed to the original song's seed.",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, retake_seed, variance):
        variance = _check_variance("AceStepRetakeModel", variance)
        patched = model.clone()
        patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, RETAKE_WRAPPER_KEY)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, RETAKE_WRAPPER_KEY,
                                     retake_sampler_wrapper(int(retake_seed), variance))
        return (patched,)


NODE_CLASS_MAPPINGS = {
    "AceStepRepaint": AceStepRepaint,
    "AceStepExtend": AceStepExtend,
    "AceStepRestoreSource": AceStepRestoreSource,
    "AceStepRetake": AceStepRetake,
    "AceStepRetakeModel": AceStepRetakeModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AceStepRepaint": "ACE-Step Repaint",
    "AceStepExtend": "ACE-Step Extend",
    "AceStepRestoreSource": "ACE-Step Restore Source (after repaint / extend)",
    "AceStepRetake": "ACE-Step Retake Noise",
    "AceStepRetakeModel": "ACE-Step Retake (KSampler)",
}
