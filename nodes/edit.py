"""``AceStepEdit``: a GUIDER for SamplerCustomAdvanced that runs the original's flow-edit loop
(ACE-Step acestep/pipeline_ace_step.py ``flowedit_diffusion_process``; acestep_core.tasks.edit)
between a source and a target conditioning on the latent given to the sampler.

On an ACE-Step 1.5 MODEL (latents [B, 64, T]) it runs the 1.5 app's flow-edit (ACE-Step-1.5
``acestep/models/common/flow_edit.py`` ``flowedit_sampling_loop``, added 2026-04 for issue 1156):
the same loop, with these 1.5 differences:
* APG norms and projections over time only (the reference's ``dims=[1]`` on [B, T, C]);
* one APG momentum update per step from the mean of the step's n_avg guidance differences
  (``snapshot_momentum`` / ``restore_and_advance_momentum``): every draw starts from the same
  momentum (``StepMomentumBuffer``); with n_avg = 1 this is the ordinary buffer;
* the audio context of both streams is the silence latent with is_covers 0 (text2music's), so
  planner audio codes on either conditioning are dropped; the unconditional is the null condition
  embedding (an all-zero conditioning, as ConditioningZeroOut gives);
* base / sft DiTs only (``dispatch_flow_edit_overlay`` refuses turbo); its app's window default is
  n_min 0, n_max 1 (mode "full")."""
from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.samplers

from acestep_core.sampling.guidance import MomentumBuffer, apg, cfg as cfg_combine, cfg_active, velocity_from_denoised
from acestep_core.tasks.edit import EDIT_PRESETS, edit_step_range, flowedit_sample

from .common import CATEGORY, float_input as _float, log, node_errors

ACE15_CHANNELS = 64
# The 1.5 app's default edit window (ui flow_edit_n_min / n_max sliders: 0.0 and 1.0).
FULL_RANGE = (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Flow-edit guider
# ---------------------------------------------------------------------------------------------
def is_ace15(model_patcher) -> bool:
    """An ACE-Step 1.5 MODEL (ours or ComfyUI's own): 1-D latents of 64 channels."""
    fmt = getattr(getattr(model_patcher, "model", None), "latent_format", None)
    return getattr(fmt, "latent_channels", None) == ACE15_CHANNELS and getattr(fmt, "latent_dimensions", 2) == 1


def _lyrics_kind(conditioning) -> str | None:
    """"1.5" (lyric embeddings [B, L, D]), "v1" (lyric token ids [B, L]) or None (no lyrics)."""
    for _, options in conditioning:
        lyrics = options.get("conditioning_lyrics")
        if lyrics is not None:
            return "1.5" if lyrics.ndim == 3 else "v1"
    return None


def check_conditioning_matches(ace15: bool, **conditionings) -> None:
    for name, conditioning in conditionings.items():
        kind = _lyrics_kind(conditioning)
        if ace15 and kind == "v1":
            raise ValueError(f"the {name} conditioning comes from the ACE-Step v1 text encoder, but the MODEL is "
                             "ACE-Step 1.5. Encode it with TextEncodeAceStepAudio1.5 and the 1.5 checkpoint's CLIP.")
        if not ace15 and kind == "1.5":
            raise ValueError(f"the {name} conditioning comes from the ACE-Step 1.5 text encoder, but the MODEL is "
                             "ACE-Step v1. Encode it with TextEncodeAceStepAudio and the v1 checkpoint's CLIP, or "
                             "load the 1.5 model.")


def ace15_edit_conditioning(conditioning):
    """The reference's flow-edit context for one 1.5 stream: text2music's (silence, is_covers 0),
    so planner audio codes are dropped."""
    out = []
    for cond, options in conditioning:
        if "audio_codes" in options:
            options = {k: v for k, v in options.items() if k != "audio_codes"}
        out.append([cond, options])
    return out


def ace15_unconditional(conditioning):
    """The 1.5 reference's unconditional pass: the null condition embedding over the packed
    condition (``pack_for_cfg``), which an all-zero caption asks our and ComfyUI's 1.5 model for."""
    out = []
    for cond, options in conditioning:
        options = options.copy()
        if options.get("pooled_output") is not None:
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        out.append([torch.zeros_like(cond), options])
    return out


def check_ace15_variant(model_patcher) -> None:
    """The 1.5 reference runs flow-edit on base / sft DiTs only; refuse a checkpoint whose official
    config.json says turbo."""
    from .ace15_bridge import Ace15BaseModel
    if not isinstance(getattr(model_patcher, "model", None), Ace15BaseModel):
        return
    from .ace15_tasks import model_variant
    if model_variant(model_patcher) == "turbo":
        raise ValueError("this is the ACE-Step 1.5 turbo model (its config.json says is_turbo); the official 1.5 "
                         "flow-edit runs on the base or sft model only. Load acestep-v15-base (or sft) instead.")


class StepMomentumBuffer(MomentumBuffer):
    """APG momentum advanced once per sampling step, as the 1.5 reference's flow-edit does for
    n_avg draws (``flow_edit_helpers.snapshot_momentum`` / ``restore_and_advance_momentum``):
    every call at the same sigma starts from the momentum before that step, and the next step
    starts from the one update with the mean of the step's differences."""

    def __init__(self):
        super().__init__()
        self._sigma = None
        self._before = None
        self._deltas = []

    def begin(self, sigma: float) -> None:
        if sigma == self._sigma:
            return
        if self._deltas:
            self.running_average = self._before
            MomentumBuffer.update(self, sum(self._deltas) / len(self._deltas))
        self._sigma, self._before, self._deltas = sigma, self.running_average, []

    def update(self, delta: torch.Tensor) -> torch.Tensor:
        self._deltas.append(delta)
        self.running_average = self._before
        return MomentumBuffer.update(self, delta)


def edit_unconditional(conditioning):
    """The original flow-edit's unconditional context for one stream: zero text, zero lyric ids
    and a zero lyric mask (so the lyrics are masked out entirely)."""
    out = []
    for cond, options in conditioning:
        options = options.copy()
        lyrics = options.get("conditioning_lyrics")
        if lyrics is not None:
            options["conditioning_lyrics"] = torch.zeros_like(lyrics)
            options["conditioning_lyrics_mask"] = torch.zeros(lyrics.shape, dtype=torch.long)
        if options.get("pooled_output") is not None:
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        out.append([torch.zeros_like(cond), options])
    return out


def edit_range(mode: str, n_min: float, n_max: float) -> tuple[float, float]:
    if mode in EDIT_PRESETS:
        return EDIT_PRESETS[mode]
    if mode == "full":
        return FULL_RANGE
    if mode != "custom":
        raise ValueError(f"AceStepEdit: mode must be one of {', '.join(EDIT_MODES)} (got {mode!r})")
    return float(n_min), float(n_max)


EDIT_MODES = list(EDIT_PRESETS) + ["custom", "full"]


class FlowEditGuider(comfy.samplers.CFGGuider):
    """GUIDER running the original's flow-edit: the latent given to the sampler is the source;
    the result follows the target conditioning where it differs from the source's."""

    def __init__(self, model_patcher, source, target, negative=None, cfg: float = 15.0, n_min: float = 0.6,
                 n_max: float = 1.0, n_avg: int = 1, cfg_type: str = "apg"):
        super().__init__(model_patcher)
        edit_step_range(1, n_min, n_max)                   # validates the range
        if cfg_type not in ("apg", "cfg"):
            raise ValueError(f"AceStepEdit: cfg_type must be 'apg' or 'cfg' (got {cfg_type!r})")
        if int(n_avg) < 1:
            raise ValueError(f"AceStepEdit: n_avg must be at least 1 (got {n_avg})")
        self.set_cfg(cfg)
        self.n_min, self.n_max, self.n_avg, self.cfg_type = float(n_min), float(n_max), int(n_avg), cfg_type
        self.ace15 = is_ace15(model_patcher)
        check_conditioning_matches(self.ace15, source=source, target=target,
                                   **({"negative": negative} if negative is not None else {}))
        if self.ace15:
            check_ace15_variant(model_patcher)
            source, target = ace15_edit_conditioning(source), ace15_edit_conditioning(target)
            if negative is not None:
                negative = ace15_edit_conditioning(negative)
            unconditional = ace15_unconditional
        else:
            unconditional = edit_unconditional
        conds = {"positive": target, "source": source,
                 "negative": negative if negative is not None else unconditional(target),
                 "source_negative": negative if negative is not None else unconditional(source)}
        self.inner_set_conds(conds)

    def _velocity_fn(self, positive: str, negative: str, model_options: dict, buffer: MomentumBuffer):
        guided = cfg_active(float(self.cfg))

        def velocity(z: torch.Tensor, sigma: float) -> torch.Tensor:
            timestep = torch.full((z.shape[0],), sigma, device=z.device, dtype=torch.float32)
            if not guided:
                c = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[positive]], z, timestep, model_options)[0]
                return velocity_from_denoised(z, c, sigma)
            c, u = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[positive], self.conds[negative]], z,
                                                  timestep, model_options)
            v_c, v_u = velocity_from_denoised(z, c, sigma), velocity_from_denoised(z, u, sigma)
            if self.cfg_type == "apg":
                if self.ace15:
                    buffer.begin(sigma)
                    return apg(v_c, v_u, float(self.cfg), buffer, dims=(-1,))
                return apg(v_c, v_u, float(self.cfg), buffer)
            return cfg_combine(v_c, v_u, float(self.cfg))

        return velocity

    def _check_latent(self, latent: torch.Tensor) -> None:
        shape = list(latent.shape)
        if self.ace15 and (latent.ndim != 3 or latent.shape[1] != ACE15_CHANNELS):
            raise ValueError(f"AceStepEdit: the MODEL is ACE-Step 1.5, whose latents are [batch, 64, frames], but the "
                             f"latent is {shape} (an ACE-Step v1 latent is [batch, 8, 16, frames]). Encode the source "
                             "song with VAEEncodeAudio and the 1.5 checkpoint's VAE.")
        if not self.ace15 and latent.ndim == 3:
            raise ValueError(f"AceStepEdit: the MODEL is ACE-Step v1, whose latents are [batch, 8, 16, frames], but "
                             f"the latent is {shape} (an ACE-Step 1.5 latent). Encode the source song with the v1 "
                             "VAE, or load the 1.5 model.")

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     latent_shapes=None):
        if latent_image is None or torch.count_nonzero(latent_image) == 0:
            raise ValueError("AceStepEdit: the latent is empty. Give SamplerCustomAdvanced the source song's latent "
                             "(VAEEncodeAudio with the ACE-Step VAE), not an empty latent.")
        self._check_latent(latent_image)
        if denoise_mask is not None:
            log.warning("AceStepEdit: the latent's noise_mask is ignored; flow-edit edits the whole song")
        if getattr(getattr(sampler, "sampler_function", None), "__name__", "sample_euler") != "sample_euler":
            log.info("AceStepEdit: flow-edit runs its own Euler steps (as the original); the sampler is not used")
        latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = comfy.samplers.process_conds(self.inner_model, noise, self.conds, device, latent_image,
                                                  denoise_mask, seed, latent_shapes=latent_shapes)
        model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas

        x_src = latent_image.to(torch.float32)
        momentum = StepMomentumBuffer if self.ace15 else MomentumBuffer
        v_target = self._velocity_fn("positive", "negative", model_options, momentum())
        v_source = self._velocity_fn("source", "source_negative", model_options, momentum())

        # Fresh noise for every edited step: the first draw is the NOISE input's noise, the rest
        # continue the same seed's generator (all zeros if the NOISE input is DisableNoise).
        zero_noise = torch.count_nonzero(noise) == 0
        generator = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
        torch.randn(noise.shape, generator=generator)          # the draw that `noise` already is
        draws = [noise]

        def noise_fn():
            if draws:
                return draws.pop().to(device=x_src.device, dtype=torch.float32)
            if zero_noise:
                return torch.zeros_like(x_src)
            return torch.randn(x_src.shape, generator=generator).to(x_src.device)

        total = len(sigmas) - 1

        def on_step(i, state):
            if callback is not None:
                callback(i, state, state, total)

        result = flowedit_sample(v_target, v_source, x_src, [float(s) for s in sigmas], self.n_min, self.n_max,
                                 noise_fn, self.n_avg, on_step)
        return self.inner_model.process_latent_out(result.to(torch.float32))


class AceStepEdit:
    DESCRIPTION = ("Flow-edit (the original app's 'edit' task) as a GUIDER for SamplerCustomAdvanced: changes a "
                   "song's lyrics (only_lyrics) or style (remix) while keeping the rest. The sampler's latent is "
                   "the source song; sigmas from BasicScheduler (simple, 60 steps as the original).")

    @classmethod
    def INPUT_TYPES(cls):
        lo, hi = EDIT_PRESETS["only_lyrics"]
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The ACE-Step model (v1, or 1.5 base / sft)."}),
                "source_conditioning": ("CONDITIONING", {
                    "tooltip": "What the source song is: its tags and lyrics (TextEncodeAceStepAudio)."}),
                "target_conditioning": ("CONDITIONING", {
                    "tooltip": "What it should become: the edited lyrics (only_lyrics) or tags (remix)."}),
                "mode": (EDIT_MODES, {
                    "default": "only_lyrics",
                    "tooltip": "only_lyrics: edit steps 60%-100% of the schedule (keeps the music, changes the "
                               "words); remix: edit 20%-40%, then sample the rest freely for the target; custom: "
                               "use n_min / n_max below; full: edit every step (the ACE-Step 1.5 app's "
                               "default)."}),
                "cfg": ("FLOAT", {"default": 15.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale of both streams (original 15; 0 or 1 = no guidance)."}),
                "n_min": _float(lo, 0.0, 1.0, 0.01, "custom mode: first edited step as a fraction of the steps "
                                                   "(steps before it are skipped: the source survives them)."),
                "n_max": _float(hi, 0.0, 1.0, 0.01, "custom mode: end of the edited steps as a fraction; from there "
                                                   "on the target is sampled freely (1.0 = edit to the end)."),
                "n_avg": ("INT", {"default": 1, "min": 1, "max": 16,
                                  "tooltip": "Noise draws averaged per edited step (original 1; more = smoother, "
                                             "slower)."}),
                "cfg_type": (["apg", "cfg"], {"default": "apg",
                                              "tooltip": "apg as the original (separate momentum per stream), or cfg."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {
                    "tooltip": "Optional negative for both streams. Unconnected: the original's (zero tags, lyrics "
                               "masked out), built per stream."}),
            },
        }

    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("Guider for SamplerCustomAdvanced (its latent_image = the source song's latent).",)
    FUNCTION = "get_guider"
    CATEGORY = CATEGORY

    def get_guider(self, model, source_conditioning, target_conditioning, mode, cfg, n_min, n_max, n_avg, cfg_type,
                   negative=None):
        lo, hi = edit_range(mode, n_min, n_max)
        with node_errors("AceStepEdit"):
            guider = FlowEditGuider(model, source_conditioning, target_conditioning, negative, cfg, lo, hi, n_avg,
                                    cfg_type)
        return (guider,)


NODE_CLASS_MAPPINGS = {"AceStepEdit": AceStepEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"AceStepEdit": "ACE-Step Edit (flow-edit guider)"}
