"""The original app's guidance as a MODEL patch (flow-edit, a GUIDER, is in nodes/edit.py).

``AceStepGuidance`` clones a MODEL and hooks ComfyUI's sampler (comfy/samplers.py) so that the
stock KSampler / SamplerCustomAdvanced guide like the original ACE-Step app
(ACE-Step acestep/pipeline_ace_step.py ``text2music_diffusion_process``, acestep/apg_guidance.py):

* ``sampler_calc_cond_batch_function`` chooses the model passes of each step: outside the
  guidance interval only the conditional one (as the original: no uncond pass, no momentum
  update); inside it the conditional and the unconditional one, the latter with ERG (scaled
  attention queries) and, for lyric ERG, with the positive's lyrics; for double-condition
  guidance a third "text only" pass with the lyric tokens zeroed (or ERG-weakened).
* ``sampler_post_cfg_function`` replaces ComfyUI's CFG result: the predictions are turned into
  velocities (v = (x - x0) / sigma), combined with acestep_core.sampling.guidance (APG with a
  momentum buffer, CFG-Zero*, CFG, double condition; scale decayed over the interval), the
  omega ("granularity") mean-preserving rescale is applied, and the result goes back to a
  denoised estimate x - sigma * v.
* a SAMPLER_SAMPLE wrapper gives every sampling run fresh state (momentum buffer) and tells
  the hooks the cfg scale, the schedule and whether a repaint mask is in use.

The guidance scale is KSampler's ``cfg`` (the original default is 15). With everything off the
patch installs nothing, so the model samples exactly as the unpatched one.

``AceStepErgNegative`` makes the negative conditioning that tag ERG needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import comfy.conds
import comfy.patcher_extension
import comfy.samplers

from acestep_core.sampling.guidance import (APG_ETA, APG_MOMENTUM, APG_NORM_THRESHOLD, ERG_DIFFUSION_BLOCKS,
                                            ERG_LYRIC_LAYERS, ERG_TAG_BLOCKS, ERG_TAU, MomentumBuffer, apg,
                                            cfg as cfg_combine, cfg_active, cfg_zero_star,
                                            denoised_from_velocity, double_condition_active,
                                            double_condition_guidance, erg_diffusion_modules, erg_lyric_modules,
                                            guidance_interval_active, guidance_scale_at, scaled_queries,
                                            step_index_from_sigma, velocity_from_denoised)
from acestep_core.sampling.flow import omega_rescale

from .common import CATEGORY, bool_input as _bool, float_input as _float, log, node_errors

STATE_KEY = "acestep_guidance_state"        # model_options key of the per-run state
WRAPPER_KEY = "acestep_guidance"
ERG_TEXT_KEY = "acestep_erg_text"           # conditioning option set by AceStepErgNegative
CFG_TYPES = ("apg", "cfg", "cfg_star")


# =============================================================================================
# Settings
# =============================================================================================
@dataclass(frozen=True)
class GuidanceSettings:
    """What AceStepGuidance does; the defaults are the original app's (acestep/pipeline_ace_step.py ``ACEStepPipeline.__call__``, acestep/ui/components.py)."""
    cfg_type: str = "apg"
    apg_momentum: float = APG_MOMENTUM
    apg_norm_threshold: float = APG_NORM_THRESHOLD
    apg_eta: float = APG_ETA
    cfg_star_zero_init: bool = True
    cfg_star_zero_steps: int = 1
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    use_erg_tag: bool = True
    use_erg_lyric: bool = False
    use_erg_diffusion: bool = True
    omega_scale: float = 10.0
    # Where ERG acts (the released model's blocks); tests point these at tiny models' blocks.
    erg_tau: float = ERG_TAU
    erg_diffusion_blocks: tuple = ERG_DIFFUSION_BLOCKS
    erg_lyric_layers: tuple = ERG_LYRIC_LAYERS

    def __post_init__(self):
        if self.cfg_type not in CFG_TYPES:
            raise ValueError(f"cfg_type must be one of {', '.join(CFG_TYPES)} (got {self.cfg_type!r})")
        if not 0.0 <= self.guidance_interval <= 1.0:
            raise ValueError(f"guidance_interval must be in [0, 1] (got {self.guidance_interval})")
        if not 0.0 <= self.guidance_interval_decay <= 1.0:
            raise ValueError(f"guidance_interval_decay must be in [0, 1] (got {self.guidance_interval_decay})")
        for name in ("apg_momentum", "apg_norm_threshold", "apg_eta", "min_guidance_scale", "guidance_scale_text",
                     "guidance_scale_lyric", "omega_scale", "erg_tau"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number (got {getattr(self, name)})")

    @property
    def double_condition(self) -> bool:
        return double_condition_active(self.guidance_scale_text, self.guidance_scale_lyric)

    @property
    def tag_erg(self) -> bool:
        # The original uses the ERG tag embedding only in the lyric-ERG unconditional context;
        # without lyric ERG its unconditional text is zeros whatever use_erg_tag says.
        return self.use_erg_tag and self.use_erg_lyric

    @property
    def is_identity(self) -> bool:
        """True when the patch would change nothing: then it installs nothing."""
        return (self.cfg_type == "cfg" and self.guidance_interval >= 1.0 and self.guidance_interval_decay == 0.0
                and not self.double_condition and not self.use_erg_lyric and not self.use_erg_diffusion
                and self.omega_scale == 0.0)


# =============================================================================================
# Per-run state and the hooks
# =============================================================================================
@dataclass
class StepInfo:
    sigma: float
    index: int
    total: int
    guided: bool
    text_only: torch.Tensor | None = None


class RunState:
    """State of one sampling run: created by the SAMPLER_SAMPLE wrapper, read by the hooks."""

    def __init__(self, settings: GuidanceSettings, cfg: float | None, sigmas: torch.Tensor | None, masked: bool):
        self.cfg = cfg
        self.sigmas = None if sigmas is None else sigmas.detach().float().cpu()
        self.masked = masked
        self.momentum = MomentumBuffer(settings.apg_momentum)
        self.current: StepInfo | None = None

    def locate(self, sigma, model_options) -> tuple[int, int]:
        """(step index, number of steps) of the evaluation at ``sigma``."""
        sigmas = self.sigmas
        if sigmas is None:
            sample_sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
            if sample_sigmas is None:
                return 0, 1
            sigmas = self.sigmas = sample_sigmas.detach().float().cpu()
        return step_index_from_sigma(sigma, sigmas), sigmas.numel() - 1


def _sigma_value(sigma) -> float:
    return float(torch.as_tensor(sigma).flatten()[0])


def _replace_model_cond(entry: dict, **changes) -> dict:
    """Copy of a processed conditioning entry with some ``model_conds`` replaced (None: removed)."""
    entry = entry.copy()
    model_conds = dict(entry["model_conds"])
    for key, value in changes.items():
        if value is None:
            model_conds.pop(key, None)
        else:
            model_conds[key] = value
    entry["model_conds"] = model_conds
    return entry


class GuidancePatch:
    """The hooks of one AceStepGuidance node (see the module docstring)."""

    def __init__(self, settings: GuidanceSettings):
        self.settings = settings
        self._warned: set[str] = set()

    # ---- installation -------------------------------------------------------------------------
    def apply(self, model):
        patched = model.clone()
        if self.settings.is_identity:
            return patched
        patched.set_model_sampler_calc_cond_batch_function(self.calc_cond_batch)
        patched.set_model_sampler_post_cfg_function(self.post_cfg)
        patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                     self.sampler_wrapper)
        return patched

    def sampler_wrapper(self, executor, guider, sigmas, extra_args, callback, noise, latent_image=None,
                        denoise_mask=None, disable_pbar=False):
        state = RunState(self.settings, getattr(guider, "cfg", None), sigmas, denoise_mask is not None)
        extra_args = dict(extra_args)
        model_options = dict(extra_args.get("model_options", {}))
        model_options[STATE_KEY] = state
        extra_args["model_options"] = model_options
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)

    def _state(self, model_options: dict) -> RunState:
        state = model_options.get(STATE_KEY)
        if state is None:     # a sampler path without SAMPLER_SAMPLE wrappers: one state per options dict
            state = model_options[STATE_KEY] = RunState(self.settings, None, None, False)
        return state

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("AceStepGuidance: %s", message)

    # ---- ERG ------------------------------------------------------------------------------
    def _transformer(self, model):
        return getattr(model, "diffusion_model", None)

    def _erg_modules(self, model, kind: str) -> list:
        s = self.settings
        transformer = self._transformer(model)
        try:
            if kind == "diffusion":
                modules = erg_diffusion_modules(transformer, s.erg_diffusion_blocks, strict=False)
            else:
                modules = erg_lyric_modules(transformer, s.erg_lyric_layers, strict=False)
        except AttributeError:
            self._warn_once("erg-model", "ERG needs the ACE-Step model from LoadAceStepCheckpoint (attention "
                                         "modules with query_scale); ERG is skipped for this model")
            return []
        if not modules:
            self._warn_once(f"erg-{kind}", f"the model has none of the {kind} ERG layers; {kind} ERG is skipped")
        return modules

    def _uncond_entries(self, cond: list, uncond: list) -> list:
        """The original's unconditional context from the given negative: with lyric ERG the
        positive's lyrics (encoded with weakened queries) and, with tag ERG, the ERG tag
        embedding that AceStepErgNegative stored."""
        s = self.settings
        if not s.use_erg_lyric:
            return uncond
        positive = cond[0]["model_conds"] if cond else {}
        lyrics = positive.get("lyric_token_idx")
        out = []
        for entry in uncond:
            changes = {}
            if lyrics is not None:
                changes["lyric_token_idx"] = lyrics
                changes["lyric_mask"] = positive.get("lyric_mask")
            erg_text = entry.get(ERG_TEXT_KEY)
            if s.tag_erg and erg_text is not None:
                current = entry["model_conds"].get("c_crossattn")
                device = current.cond.device if current is not None else erg_text.device
                dtype = current.cond.dtype if current is not None else erg_text.dtype
                changes["c_crossattn"] = comfy.conds.CONDRegular(erg_text.to(device=device, dtype=dtype))
            elif s.tag_erg:
                self._warn_once("erg-tag", "tag ERG needs the negative from AceStepErgNegative; using the "
                                           "negative's own text (zeros for ConditioningZeroOut, as the original "
                                           "without an ERG tag embedding)")
            out.append(_replace_model_cond(entry, **changes))
        return out

    def _text_only_entries(self, cond: list) -> list:
        """The "text only" context of double-condition guidance: the positive with its lyric
        tokens zeroed (the mask kept), or with lyric ERG its lyrics kept for weakened encoding."""
        if self.settings.use_erg_lyric:
            return cond
        out = []
        for entry in cond:
            lyrics = entry["model_conds"].get("lyric_token_idx")
            if lyrics is None:
                out.append(entry)
                continue
            out.append(_replace_model_cond(entry, lyric_token_idx=comfy.conds.CONDRegular(torch.zeros_like(lyrics.cond))))
        return out

    # ---- hook 1: which model passes run -----------------------------------------------------
    def calc_cond_batch(self, args):
        s = self.settings
        conds, x, sigma = args["conds"], args["input"], args["sigma"]
        model, model_options = args["model"], args["model_options"]
        state = self._state(model_options)
        cond = conds[0]
        uncond = conds[1] if len(conds) > 1 else None
        index, total = state.locate(sigma, model_options)
        scale_ok = state.cfg is None or cfg_active(float(state.cfg))
        guided = (uncond is not None and cond is not None and scale_ok
                  and guidance_interval_active(index, total, s.guidance_interval))
        info = StepInfo(_sigma_value(sigma), index, total, guided)
        state.current = info
        calc = comfy.samplers.calc_cond_batch
        # Extra conditionings of other patches (rare) are computed as ComfyUI would.
        rest = list(calc(model, list(conds[2:]), x, sigma, model_options)) if len(conds) > 2 else []
        if not guided:
            c = calc(model, [cond], x, sigma, model_options)[0]
            # uncond = cond makes ComfyUI's CFG equal cond exactly (c + (c - c) * scale).
            return [c, c] + rest

        uncond = self._uncond_entries(cond, uncond)
        erg_diffusion = self._erg_modules(model, "diffusion") if s.use_erg_diffusion else []
        erg_lyric = self._erg_modules(model, "lyric") if s.use_erg_lyric else []
        if not erg_diffusion and not erg_lyric:
            c, u = calc(model, [cond, uncond], x, sigma, model_options)     # batched, as ComfyUI does
        else:
            c = calc(model, [cond], x, sigma, model_options)[0]
            with scaled_queries([erg_diffusion, erg_lyric], s.erg_tau):
                u = calc(model, [uncond], x, sigma, model_options)[0]
        if s.double_condition:
            text_only = self._text_only_entries(cond)
            with scaled_queries([erg_lyric], s.erg_tau):
                info.text_only = calc(model, [text_only], x, sigma, model_options)[0]
        return [c, u] + rest

    # ---- hook 2: combine the predictions ----------------------------------------------------
    def guided_velocity(self, v_cond, v_uncond, v_text_only, scale: float, index: int, total: int, state: RunState):
        """The original's guidance of one step on velocities."""
        s = self.settings
        if s.double_condition and v_text_only is not None:
            return double_condition_guidance(v_cond, v_text_only, v_uncond, s.guidance_scale_text,
                                             s.guidance_scale_lyric)
        g = guidance_scale_at(index, total, scale, s.guidance_interval, s.guidance_interval_decay,
                              s.min_guidance_scale)
        if s.cfg_type == "apg":
            return apg(v_cond, v_uncond, g, state.momentum, eta=s.apg_eta, norm_threshold=s.apg_norm_threshold)
        if s.cfg_type == "cfg_star":
            return cfg_zero_star(v_cond, v_uncond, g, index, zero_steps=s.cfg_star_zero_steps,
                                 use_zero_init=s.cfg_star_zero_init)
        return cfg_combine(v_cond, v_uncond, g)

    def post_cfg(self, args):
        s = self.settings
        denoised = args["denoised"]
        x, sigma = args["input"], args["sigma"]
        state = self._state(args["model_options"])
        if float(torch.as_tensor(sigma).min()) <= 0.0:
            return denoised                   # sigma 0 is never evaluated by a flow sampler; nothing to guide
        info = state.current
        if info is None or not math.isclose(info.sigma, _sigma_value(sigma), rel_tol=0, abs_tol=1e-7):
            index, total = state.locate(sigma, args["model_options"])
            guided = args.get("uncond_denoised") is not None and cfg_active(float(args["cond_scale"])) and \
                guidance_interval_active(index, total, s.guidance_interval)
            info = StepInfo(_sigma_value(sigma), index, total, guided)
        use_omega = s.omega_scale != 0.0 and not state.masked
        if not info.guided and not use_omega:
            return denoised
        v = velocity_from_denoised(x, args["cond_denoised"], sigma)
        if info.guided:
            v_uncond = velocity_from_denoised(x, args["uncond_denoised"], sigma)
            v_text = None if info.text_only is None else velocity_from_denoised(x, info.text_only, sigma)
            v = self.guided_velocity(v, v_uncond, v_text, float(args["cond_scale"]), info.index, info.total, state)
        if use_omega:
            v = omega_rescale(v, s.omega_scale)
        return denoised_from_velocity(x, v, sigma).to(denoised.dtype)


# =============================================================================================
# Nodes
# =============================================================================================
class AceStepGuidance:
    DESCRIPTION = ("The original ACE-Step app's guidance for the stock KSampler: APG, CFG-Zero*, guidance "
                   "interval and decay, separate tag / lyric scales, ERG and omega. The guidance scale is "
                   "KSampler's cfg (the original's default is 15). Everything off = the unpatched model.")

    @classmethod
    def INPUT_TYPES(cls):
        d = GuidanceSettings()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The ACE-Step model (LoadAceStepCheckpoint) to patch."}),
                "cfg_type": (list(CFG_TYPES), {
                    "default": d.cfg_type,
                    "tooltip": "apg: adaptive projected guidance (the original's default, tames high cfg); "
                               "cfg: plain classifier-free guidance (APG off); cfg_star: CFG-Zero* (per-item "
                               "rescaled uncond, zero velocity on the first steps)."}),
                "apg_momentum": _float(d.apg_momentum, -1.0, 1.0, 0.01,
                                       "APG momentum: running average of the guidance direction across steps "
                                       "(the original's -0.75 damps oscillation; 0 = none)."),
                "apg_norm_threshold": _float(d.apg_norm_threshold, 0.0, 100.0, 0.1,
                                             "APG: the guidance direction is clipped to this L2 norm per channel "
                                             "(original 2.5; 0 = no clipping)."),
                "apg_eta": _float(d.apg_eta, -10.0, 10.0, 0.01,
                                  "APG: weight of the guidance part parallel to the conditional prediction "
                                  "(original 0 = only the orthogonal part; 1 = plain CFG direction)."),
                "cfg_star_zero_init": _bool(d.cfg_star_zero_init,
                                            "CFG-Zero*: zero velocity on steps 0 and 1 of the schedule (counted "
                                            "over all steps, as the original; needs a guidance interval that "
                                            "starts at step 0 to take effect)."),
                "guidance_interval": _float(d.guidance_interval, 0.0, 1.0, 0.01,
                                            "Fraction of the steps, centred in the schedule, that get guidance "
                                            "(original 0.5: the middle half). Other steps use the conditional "
                                            "prediction alone (one model call). 1.0 = every step."),
                "guidance_interval_decay": _float(d.guidance_interval_decay, 0.0, 1.0, 0.01,
                                                  "Linear decay of the scale across the interval towards "
                                                  "min_guidance_scale (original 0 = off)."),
                "min_guidance_scale": _float(d.min_guidance_scale, 0.0, 100.0, 0.1,
                                             "Scale reached at the end of the interval when decay is 1 (original 3)."),
                "guidance_scale_text": _float(d.guidance_scale_text, 0.0, 100.0, 0.1,
                                              "Tag (text) guidance scale. When both this and guidance_scale_lyric "
                                              "are above 1, double-condition guidance replaces cfg_type (a third "
                                              "model call without lyrics). 0 = off (original default)."),
                "guidance_scale_lyric": _float(d.guidance_scale_lyric, 0.0, 100.0, 0.1,
                                               "Lyric guidance scale for double-condition guidance (see "
                                               "guidance_scale_text). 0 = off (original default)."),
                "use_erg_tag": _bool(d.use_erg_tag,
                                     "Tag ERG: the unconditional text is the tags encoded with weakened attention "
                                     "(needs the negative from AceStepErgNegative). As in the original it only "
                                     "takes effect together with use_erg_lyric."),
                "use_erg_lyric": _bool(d.use_erg_lyric,
                                       "Lyric ERG: the unconditional pass sees the real lyrics with weakened lyric-"
                                       "encoder attention instead of no lyrics (original UI default: off)."),
                "use_erg_diffusion": _bool(d.use_erg_diffusion,
                                           "Diffusion ERG: the unconditional pass runs with the attention queries "
                                           "of transformer blocks 15-19 scaled by 0.01 (original default: on)."),
                "omega_scale": _float(d.omega_scale, -100.0, 100.0, 0.1,
                                      "Granularity scale: each step's update is rescaled around its mean by "
                                      "0.9 + 0.2 / (1 + exp(-0.1 * omega)) (original 10 -> 1.046; 0 = off). "
                                      "Not applied when repainting / extending (as the original)."),
            }
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The patched model for KSampler / CFGGuider; set cfg to the guidance scale (original 15).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model, **settings):
        with node_errors("AceStepGuidance", (TypeError, ValueError)):
            guidance = GuidanceSettings(**settings)
        return (GuidancePatch(guidance).apply(model),)


# ---------------------------------------------------------------------------------------------
# ERG negative (tag ERG)
# ---------------------------------------------------------------------------------------------
def _text_encoder(clip):
    model = getattr(clip, "cond_stage_model", None)
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "scaled_queries"):
        raise ValueError("AceStepErgNegative: this CLIP is not ACE-Step's text encoder from LoadAceStepCheckpoint "
                         "(tag ERG needs to weaken its attention).")
    return encoder


def erg_tag_embedding(clip, tags: str, blocks=ERG_TAG_BLOCKS, tau: float = ERG_TAU) -> torch.Tensor | None:
    """The tags encoded with the query projections of UMT5 blocks ``blocks`` scaled by ``tau``
    (the original's ``get_text_embeddings_null``): [1, L, 768]. None (with a warning) for a text
    encoder without those blocks (a tiny test model)."""
    encoder = _text_encoder(clip)
    scales = {int(b): float(tau) for b in blocks if 0 <= int(b) < len(encoder.blocks)}
    if not scales:
        log.warning("AceStepErgNegative: the text encoder has %d blocks, none of the ERG blocks %s; the negative "
                    "is a plain ConditioningZeroOut", len(encoder.blocks), tuple(blocks))
        return None
    tokens = clip.tokenize(tags or "", lyrics="")
    with encoder.scaled_queries(scales):
        conditioning = clip.encode_from_tokens_scheduled(tokens)
    return conditioning[0][0]


def erg_negative(positive, erg_text: torch.Tensor | None):
    """ConditioningZeroOut(positive) carrying the ERG tag embedding for AceStepGuidance."""
    out = []
    for cond, options in positive:
        options = options.copy()
        if options.get("pooled_output") is not None:
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        if options.get("conditioning_lyrics") is not None:
            options["conditioning_lyrics"] = torch.zeros_like(options["conditioning_lyrics"])
        options.pop(ERG_TEXT_KEY, None)
        if erg_text is not None:
            options[ERG_TEXT_KEY] = erg_text
        out.append([torch.zeros_like(cond), options])
    return out


class AceStepErgNegative:
    DESCRIPTION = ("Negative conditioning for AceStepGuidance's tag ERG: the same as ConditioningZeroOut of the "
                   "positive (so without the patch nothing changes), plus the tags encoded with weakened "
                   "attention, which the patch uses when use_erg_tag and use_erg_lyric are both on.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The ACE-Step text encoder (CLIP output of LoadAceStepCheckpoint)."}),
                "positive": ("CONDITIONING", {"tooltip": "The positive conditioning (TextEncodeAceStepAudio)."}),
                "tags": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                    "tooltip": "The same tags as the positive conditioning."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Negative conditioning for KSampler with an AceStepGuidance model.",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, clip, positive, tags):
        return (erg_negative(positive, erg_tag_embedding(clip, tags)),)


NODE_CLASS_MAPPINGS = {
    "AceStepGuidance": AceStepGuidance,
    "AceStepErgNegative": AceStepErgNegative,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AceStepGuidance": "ACE-Step Guidance (APG, ERG, interval)",
    "AceStepErgNegative": "ACE-Step ERG Negative (tag ERG)",
}
