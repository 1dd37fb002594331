"""ACE-Step 1.5 / 1.5 XL as ComfyUI's MODEL, CLIP and VAE, built on acestep_core.ace15 the same
way nodes/comfy_bridge.py builds v1 (read its docstring first: operations, wrappers, the internals
relied on).

MODEL  ``model_config.get_model`` -> ``BaseModel.__init__(unet_model=Ace15DiffusionModel)``, flow
       matching with ComfyUI's 1.5 sampling settings (multiplier 1, shift 3), conditions turned into
       the DiT's arguments exactly as ComfyUI 0.20.1's ``comfy/model_base.py`` ``ACEStep15.extra_conds``
       does, so conditioning from ComfyUI's own 1.5 text encoder works on it and ours on ComfyUI's
       model. On ComfyUI versions that have ``comfy.model_base.ACEStep15`` the model is an instance of
       it (comfy/lora.py maps the official 1.5 LoRA key names by that class).
CLIP   a ``comfy.sd.CLIP`` over our Qwen3-Embedding text encoder, tokenised like ComfyUI's
       ``ACE15Tokenizer`` (same keys: ``qwen3_06b``, ``lyrics``, ``lm_prompt``, ``lm_prompt_negative``,
       ``lm_metadata``), so the stock ``TextEncodeAceStepAudio1.5`` of 0.20.1 and ours both drive it.
       When a planner is loaded with it, ``generate_audio_codes`` runs acestep_core's planner.
VAE    a ``comfy.sd.VAE`` (the v1 ``AceStepVAE`` machinery: windowed, progress, interrupt) over the
       48 kHz Oobleck VAE. ComfyUI 0.20's audio nodes read ``audio_sample_rate`` and resample to it;
       0.3.75's assume 44.1 kHz for every VAE, so there this VAE takes and gives 44.1 kHz and
       resamples to and from 48 kHz itself.

ComfyUI internals used beyond those of comfy_bridge: ``comfy.model_base.ACEStep15`` (optional),
``comfy.latent_formats.ACEAudio15`` (optional), and the source of ``comfy_extras.nodes_audio`` (whether
its VAE nodes read ``audio_sample_rate``); tests/comfyui/test_comfy_internals.py checks them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.sd
import comfy.supported_models_base
import comfy.utils

from acestep_core.ace15 import vae as vae15
from acestep_core.ace15.loading import Ace15Sources, _assign, build_text_encoder, build_vae, silence_latent
from acestep_core.ace15.model import Ace15Model
from acestep_core.ace15.text_encoder import (CAPTION_TOKEN_LIMIT, LYRIC_TOKEN_LIMIT, QwenTokenizer,
                                             caption_attention_mask, caption_prompt, cut_to_limit,
                                             find_qwen_tokenizer, lyrics_prompt)

from .comfy_bridge import (AceStepVAE, _ClipTarget, module_device, module_dtype, validated_audio,
                           with_cast_weight_bias)
from .notices import warn_user

SAMPLE_RATE = vae15.SAMPLE_RATE               # 48 kHz
LEGACY_AUDIO_RATE = 44100                     # what ComfyUI's audio nodes assume before 0.20
FRAME_SAMPLES = 1920
LATENT_CHANNELS = vae15.LATENT_CHANNELS
MEMORY_USAGE_FACTOR = 4.7                     # ComfyUI 0.20.1 supported_models.ACEStep15
AUDIO_CODE_REFERENCE_FRAMES = 750             # model_base.ACEStep15.extra_conds: refer_audio[:, :, :750]


# =============================================================================================
# MODEL
# =============================================================================================
def _latent_format_class():
    """ComfyUI's 1.5 latent format where it has one (0.20+), else an identical one."""
    cls = getattr(comfy.latent_formats, "ACEAudio15", None)
    if cls is not None:
        return cls

    class AceStep15AudioLatent(comfy.latent_formats.LatentFormat):
        latent_channels = LATENT_CHANNELS      # [B, 64, T] at 25 frames per second, no scale or shift
        latent_dimensions = 1

    return AceStep15AudioLatent


class Ace15DiffusionModel(Ace15Model):
    """acestep_core's 1.5 model (DiT, condition encoder, audio tokenizer/detokenizer, null
    condition) as ComfyUI's ``diffusion_model``: built on the meta device by ``BaseModel.__init__``
    with the operations ComfyUI picked, weights assigned afterwards, run through the
    ``DIFFUSION_MODEL`` wrappers as ComfyUI's ``AceStepConditionGenerationModel`` is."""

    def __init__(self, ace15_config=None, dtype=None, device=None, operations=None, **unet_config):
        operations = with_cast_weight_bias(operations or comfy.ops.disable_weight_init)
        with torch.device("meta"):
            super().__init__(ace15_config, operations=operations, dtype=dtype)

    def forward(self, x, timestep, context=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timestep, context=context, transformer_options=transformer_options, **kwargs)

    def _forward(self, x, timestep, context=None, transformer_options={}, **kwargs):
        kwargs.pop("control", None)
        return Ace15Model.forward(self, x, timestep, context, transformer_options=transformer_options, **kwargs)


class Ace15ModelConfig(comfy.supported_models_base.BASE):
    """ComfyUI 0.20.1's ``supported_models.ACEStep15`` settings for our model."""

    unet_config = {"audio_model": "ace1.5"}
    unet_extra_config = {}
    sampling_settings = {"multiplier": 1.0, "shift": 3.0}
    latent_format = _latent_format_class()
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.bfloat16, torch.float32]
    vae_key_prefix = ["vae."]
    text_encoder_key_prefix = ["text_encoders."]

    def get_model(self, state_dict, prefix="", device=None):
        return Ace15BaseModel(self, device=device)

    def clip_target(self, state_dict={}):
        return None


_ACE15_BASE = getattr(comfy.model_base, "ACEStep15", comfy.model_base.BaseModel)


class Ace15BaseModel(_ACE15_BASE):
    """``comfy.model_base.BaseModel`` around acestep_core's 1.5 model (ModelType.FLOW: velocity
    prediction, timestep = sigma). ``ACEStep15.__init__`` is skipped: it names ComfyUI's network."""

    def __init__(self, model_config: Ace15ModelConfig, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW,
                                            device=device, unet_model=Ace15DiffusionModel)
        self.silence_file: Path | None = model_config.unet_config.get("silence_file")

    def get_dtype(self):
        return module_dtype(self.diffusion_model.decoder)

    def silence(self, frames: int, device) -> torch.Tensor:
        """[1, 64, frames]: the official ``silence_latent.pt`` beside the DiT when there is one,
        else ComfyUI's values (acestep_core.ace15.loading.silence_latent)."""
        return silence_latent(frames, self.silence_file).to(device)

    def extra_conds(self, **kwargs):
        """One conditioning entry -> the DiT's keyword arguments, as ComfyUI 0.20.1's
        ``ACEStep15.extra_conds``: ``c_crossattn`` (caption hidden states; an all-zero one, what
        ConditioningZeroOut gives, asks for the null condition), ``lyric_embed``, ``refer_audio``
        (the last reference timbre latent cut to the noise length, else the silence latent),
        ``audio_codes`` from the planner (then the silence reference is cut to 750 frames, and
        padded back with silence), ``is_covers`` True with a reference, False with neither
        reference nor codes."""
        out = comfy.model_base.BaseModel.extra_conds(self, **kwargs)
        device, noise = kwargs["device"], kwargs["noise"]
        frames = noise.shape[2]
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            lyrics = kwargs.get("conditioning_lyrics", None)
            if lyrics is None or lyrics.ndim != 3:
                raise ValueError("ACE-Step 1.5: this conditioning has no lyric embeddings; it does not come from an "
                                 "ACE-Step 1.5 text encoder. Encode the prompt with TextEncodeAceStepAudio1.5 and "
                                 "the CLIP of the same 1.5 checkpoint (a v1 CLIP gives TextEncodeAceStepAudio "
                                 "conditioning, which 1.5 cannot read).")
            if torch.count_nonzero(cross_attn) == 0:
                out["replace_with_null_embeds"] = comfy.conds.CONDConstant(True)
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            out["lyric_embed"] = comfy.conds.CONDRegular(lyrics)

        references = kwargs.get("reference_audio_timbre_latents", None)
        if references:
            refer_audio = references[-1]
            if refer_audio.ndim != 3 or refer_audio.shape[1] != LATENT_CHANNELS:
                raise ValueError(f"ACE-Step 1.5: the reference audio latent has shape {list(refer_audio.shape)}; "
                                 f"expected [1, {LATENT_CHANNELS}, frames] from VAEEncodeAudio with the 1.5 VAE.")
            refer_audio = refer_audio[:, :, :frames]
            out["is_covers"] = comfy.conds.CONDConstant(True)
        else:
            refer_audio = self.silence(frames, device)
            codes = kwargs.get("audio_codes", None)
            if codes is not None:
                out["audio_codes"] = comfy.conds.CONDRegular(torch.tensor(codes, device=device))
                refer_audio = refer_audio[:, :, :AUDIO_CODE_REFERENCE_FRAMES]
            else:
                out["is_covers"] = comfy.conds.CONDConstant(False)
        if refer_audio.shape[2] < frames:
            pad = self.silence(frames, device)
            refer_audio = torch.cat([refer_audio.to(pad), pad[:, :, refer_audio.shape[2]:]], dim=2)
        out["refer_audio"] = comfy.conds.CONDRegular(refer_audio)
        out.update(self._task_conds(kwargs, frames, device))
        return out

    def _task_conds(self, kwargs, frames: int, device) -> dict:
        """The task inputs the ACE-Step 1.5 task nodes (nodes/ace15_tasks.py) put on a conditioning
        entry -> the DiT's ``src_latents`` / ``chunk_masks`` ``[B, 64, T]``, ``is_covers`` and, for a
        cover, ``precomputed_lm_hints_25Hz`` (time-major; given as ``acestep15_lm_hints`` or computed
        here from the source, as the official ``prepare_condition`` tokenizes it). Nothing without
        the keys."""
        src = kwargs.get("acestep15_src_latents", None)
        if src is None:
            return {}
        from acestep_core.ace15.tasks import cover_hints
        chunk = kwargs.get("acestep15_chunk_masks", None)
        for name, value in (("source latents", src), ("chunk masks", chunk)):
            if value is None or value.ndim != 3 or value.shape[1] != LATENT_CHANNELS or value.shape[2] != frames:
                shape = None if value is None else list(value.shape)
                raise ValueError(f"ACE-Step 1.5 task: the {name} of this conditioning have shape {shape}, but the "
                                 f"latent being sampled has {frames} frames; sample the LATENT output of the same "
                                 "ACE-Step 1.5 task node that made the conditioning.")
        out = {"src_latents": comfy.conds.CONDRegular(src), "chunk_masks": comfy.conds.CONDRegular(chunk)}
        is_covers = bool(kwargs.get("acestep15_is_covers", False))
        out["is_covers"] = comfy.conds.CONDConstant(is_covers)
        if is_covers:
            hints = kwargs.get("acestep15_lm_hints", None)
            if hints is None:
                diffusion_model = self.diffusion_model
                dtype = getattr(self, "manual_cast_dtype", None) or self.get_dtype()
                with torch.no_grad():
                    hints = cover_hints(diffusion_model, src.to(device=device, dtype=dtype),
                                        lambda n: self.silence(n, device).to(dtype))
            else:
                hints = hints.movedim(-1, -2)
            out["precomputed_lm_hints_25Hz"] = comfy.conds.CONDRegular(hints)
        return out


def make_model_patcher(part, weight_dtype: torch.dtype, compute_dtype: torch.dtype | None = None,
                       silence_file: Path | None = None) -> comfy.model_patcher.ModelPatcher:
    """MODEL from a 1.5 DiT (``part``: an acestep_core.ace15.loading Part) whose weights are held in
    ``weight_dtype`` and computed in ``compute_dtype`` (ComfyUI's manual cast when they differ)."""
    from acestep_core.ace15.config import config_from_state_dict_shapes
    config = config_from_state_dict_shapes(part.source.shapes)
    compute = None if compute_dtype in (None, weight_dtype) else compute_dtype
    model_config = Ace15ModelConfig({"audio_model": "ace1.5", "ace15_config": config, "silence_file": silence_file})
    model_config.set_inference_dtype(weight_dtype, compute)
    offload = mm.unet_offload_device()
    model = model_config.get_model({}, device=offload)
    _assign(model.diffusion_model, part.source.state_dict(dtype=weight_dtype, device="cpu"), part)
    model.diffusion_model.requires_grad_(False)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, REUSE_WRAPPER_KEY,
                                 reuse_conditions_during_sampling)
    return patcher


REUSE_WRAPPER_KEY = "acestep15_reuse_conditions"


def reuse_conditions_during_sampling(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: one sampling run (all its steps) inside ``Ace15Model.reuse_conditions``,
    so the condition encoder and the audio-code hints run once per distinct conditioning instead
    of at every step (they do not depend on the noisy latent or the timestep; ComfyUI's own model
    recomputes them each step). Nothing is kept after the run."""
    guider = executor.class_obj
    diffusion_model = getattr(getattr(guider.model_patcher, "model", None), "diffusion_model", None)
    if not isinstance(diffusion_model, Ace15Model):
        return executor(*args, **kwargs)
    with diffusion_model.reuse_conditions():
        return executor(*args, **kwargs)


# =============================================================================================
# CLIP
# =============================================================================================
def _pairs(ids, return_word_ids: bool = False):
    if return_word_ids:
        return [[(int(i), 1.0, 0) for i in ids]]
    return [[(int(i), 1.0) for i in ids]]


def _ids(section) -> list[int]:
    return [int(p[0]) for part in section for p in part]


class Ace15Tokenizer:
    """ComfyUI's tokenizer interface with the keys of 0.20.1's ``ACE15Tokenizer``: ``qwen3_06b`` (the
    caption prompt with the metadata), ``lyrics`` (the language + lyrics prompt) and ``lm_metadata``
    (the planner's settings); ``lm_prompt`` / ``lm_prompt_negative`` only when the planner will run.
    The caption is cut at 256 tokens and the lyrics at 2048, as the official pipeline reads them,
    with a warning on the node (ComfyUI 0.20.1 does not cut)."""

    def __init__(self, tokenizer: QwenTokenizer, planner_tokenizer=None):
        self.tokenizer = tokenizer
        self.planner_tokenizer = planner_tokenizer

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        from acestep_core.ace15.planner_grammar import codes_for_duration, codes_prompts
        tags = (text or "").strip()
        lyrics = kwargs.get("lyrics", "") or ""
        duration = kwargs.get("duration", 120)
        if isinstance(duration, str):
            duration = float(duration.split(None, 1)[0])
        bpm, keyscale, timesignature = kwargs.get("bpm"), kwargs.get("keyscale"), kwargs.get("timesignature")
        caption_ids, caption_cut = cut_to_limit(
            self.tokenizer(caption_prompt(tags, bpm, timesignature, keyscale, duration)), CAPTION_TOKEN_LIMIT,
            "The caption (tags and metadata)")
        lyric_ids, lyrics_cut = cut_to_limit(self.tokenizer(lyrics_prompt(lyrics, kwargs.get("language"))),
                                             LYRIC_TOKEN_LIMIT, "The lyrics")
        for warning in (caption_cut, lyrics_cut):
            if warning:
                warn_user(warning)
        generate = bool(kwargs.get("generate_audio_codes", True))
        out = {"qwen3_06b": _pairs(caption_ids, return_word_ids), "lyrics": _pairs(lyric_ids)}
        out["lm_metadata"] = {
            "min_tokens": int(kwargs.get("min_tokens", codes_for_duration(duration))),
            "seed": int(kwargs.get("seed", 0)), "generate_audio_codes": generate,
            "cfg_scale": float(kwargs.get("cfg_scale", 2.0)), "temperature": float(kwargs.get("temperature", 0.85)),
            "top_p": float(kwargs.get("top_p", 0.9)), "top_k": int(kwargs.get("top_k", 0)),
            "min_p": float(kwargs.get("min_p", 0.0))}
        if generate and self.planner_tokenizer is not None:
            metadata = {"bpm": bpm, "duration": duration, "keyscale": keyscale, "timesignature": timesignature}
            cond, uncond = codes_prompts(tags, lyrics, {k: v for k, v in metadata.items() if v is not None})
            out["lm_prompt"] = _pairs(self.planner_tokenizer.encode(cond))
            out["lm_prompt_negative"] = _pairs(self.planner_tokenizer.encode(uncond))
        return out

    def untokenize(self, token_weight_pair):
        decode = self.tokenizer._tokenizer.decode
        return [(pair, decode([pair[0]])) for pair in token_weight_pair]

    def state_dict(self):
        return {}


class Ace15TextModel(nn.Module):
    """ComfyUI's text-model interface (``cond_stage_model``) over the Qwen3-Embedding encoder and,
    when loaded, the 5 Hz planner. Submodule names are ComfyUI's (``qwen3_06b.transformer``;
    ``qwen3_2b`` / ``qwen3_4b`` for the planner), so a saved checkpoint has the released layout."""

    acestep_generation = "1.5"

    def __init__(self, text_encoder: nn.Module, dtype: torch.dtype, planner=None):
        super().__init__()
        self.qwen3_06b = nn.Module()
        self.qwen3_06b.transformer = text_encoder
        self.planner = planner
        if planner is not None:
            setattr(self, "qwen3_4b" if planner.config.hidden_size >= 2560 else "qwen3_2b", nn.Module())
            getattr(self, self.planner_name).transformer = planner.lm
        self.dtypes = {dtype} | ({planner.weight_dtype} if planner is not None else set())

    @property
    def planner_name(self) -> str | None:
        if self.planner is None:
            return None
        return "qwen3_4b" if hasattr(self, "qwen3_4b") else "qwen3_2b"

    @property
    def has_planner(self) -> bool:
        return self.planner is not None

    @property
    def encoder(self) -> nn.Module:
        return self.qwen3_06b.transformer

    def set_clip_options(self, options):
        pass

    def reset_clip_options(self):
        pass

    def _device(self):
        return getattr(self, "load_device", None) or module_device(self.encoder)

    def _fully_loaded(self) -> None:
        """The Qwen3 encoder and the planner are ``transformers`` modules, which ModelPatcher cannot
        run partly offloaded (low-VRAM loading leaves such layers on the offload device): ask
        ComfyUI's memory manager for a full load (a no-op when already loaded; it still frees
        other models as needed, and offloads this one later like any model)."""
        patcher = getattr(self, "patcher", None)
        if patcher is not None:
            mm.load_models_gpu([patcher], force_full_load=True)

    @torch.no_grad()
    def encode_token_weights(self, token_weight_pairs):
        """-> (caption hidden [1, S, 1024] float32, None, {"conditioning_lyrics": [1, L, 1024],
        "audio_codes": [codes] when the planner ran}), as ComfyUI's ``ACE15TEModel``."""
        self._fully_loaded()
        device = self._device()
        caption_ids = _ids(token_weight_pairs["qwen3_06b"])
        lyric_ids = _ids(token_weight_pairs["lyrics"])
        mask = torch.tensor([caption_attention_mask(caption_ids)], dtype=torch.long, device=device)
        caption = self.encoder.encode_caption(torch.tensor([caption_ids], device=device), mask)
        lyrics = self.encoder.embed_lyrics(torch.tensor([lyric_ids], device=device))
        out = {"conditioning_lyrics": lyrics.to(mm.intermediate_device()).float()}
        settings = token_weight_pairs.get("lm_metadata", {})
        if settings.get("generate_audio_codes"):
            if self.planner is None or "lm_prompt" not in token_weight_pairs:
                raise RuntimeError("generate_audio_codes is on, but this CLIP has no 5 Hz planner: set "
                                   "generate_audio_codes to false, or load a planner with the text encoder "
                                   "(qwen_1.7b_ace15 / qwen_4b_ace15, or an acestep-5Hz-lm folder).")
            out["audio_codes"] = [self.plan_codes(token_weight_pairs)]
        return caption.to(mm.intermediate_device()).float(), None, out

    def plan_codes(self, token_weight_pairs) -> list[int]:
        """The planner's audio codes for the prompts the tokenizer wrote, with ComfyUI's progress
        bar counting codes and Cancel checked before every token."""
        settings = token_weight_pairs["lm_metadata"]
        count = settings["min_tokens"]
        bar = comfy.utils.ProgressBar(count)
        return self.planner.generate_codes(
            _ids(token_weight_pairs["lm_prompt"]), _ids(token_weight_pairs["lm_prompt_negative"]), count,
            seed=settings["seed"], cfg_scale=settings["cfg_scale"], temperature=settings["temperature"],
            top_p=settings["top_p"], top_k=settings["top_k"], min_p=settings["min_p"],
            progress=lambda done, total: bar.update_absolute(done, total),
            interrupt=mm.throw_exception_if_processing_interrupted)

    def load_sd(self, sd):
        return self.encoder.load_state_dict(sd, strict=False)


def make_clip(text_encoder: nn.Module, tokenizer: QwenTokenizer, dtype: torch.dtype | None = None,
              planner=None, planner_tokenizer=None) -> comfy.sd.CLIP:
    dtype = dtype or module_dtype(text_encoder)
    text_model = Ace15TextModel(text_encoder, dtype, planner).eval()
    offload = mm.text_encoder_offload_device()
    options = {"dtype": dtype, "initial_device": module_device(text_encoder)}
    if module_device(text_encoder) != offload:
        options["offload_device"] = module_device(text_encoder)
    clip = comfy.sd.CLIP(_ClipTarget(Ace15Tokenizer(tokenizer, planner_tokenizer), text_model),
                         model_options=options)
    text_model.load_device = clip.patcher.load_device
    text_model.__dict__["patcher"] = clip.patcher     # not a submodule: ModelPatcher is no nn.Module
    return clip


# =============================================================================================
# VAE
# =============================================================================================
def audio_nodes_read_vae_sample_rate() -> bool:
    """Whether the running ComfyUI's VAEEncodeAudio / VAEDecodeAudio resample to
    ``vae.audio_sample_rate`` (0.20+) or assume 44.1 kHz for every VAE (0.3.75): read from the
    source of ``comfy_extras/nodes_audio.py`` (found, not imported). Unknown: assume the newer."""
    import importlib.util
    import re
    try:
        spec = importlib.util.find_spec("comfy_extras.nodes_audio")
        source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else None
    except (ImportError, OSError, ValueError):
        source = None
    return source is None or re.search(r"""[."']audio_sample_rate\b""", source) is not None


class _OobleckModules(nn.Module):
    """The VAE's networks under ComfyUI's names (``encoder.*``, ``decoder.*``) for its ModelPatcher
    (OobleckVAE's ``device`` is a read-only property; ModelPatcher assigns ``model.device``)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.decoder = vae.decoder


class Ace15VAE(AceStepVAE):
    """``comfy.sd.VAE`` around acestep_core's 1.5 codec (``AudioCodec15``):

      encode(audio [B, S, C] at ``audio_sample_rate``) -> latent [B, 64, S' // 1920]
      decode(latent [B, 64, T])                        -> audio [B, T * 1920 (at 48 kHz), 2]

    Encoding crops to whole 1920-sample frames keeping the centre, as ComfyUI's 1.5 VAE does."""

    bytes_per_frame = vae15.DECODE_BYTES_PER_FRAME

    def __init__(self, codec, dtype: torch.dtype | None = None, io_sample_rate: int | None = None):
        super().__init__(codec, dtype or codec.dtype)
        self.overlap_frames = vae15.OVERLAP_FRAMES
        self.latent_channels = LATENT_CHANNELS
        self.latent_dim = 1
        self.upscale_ratio = FRAME_SAMPLES
        self.downscale_ratio = FRAME_SAMPLES
        self.extra_1d_channel = None
        if io_sample_rate is None:
            io_sample_rate = SAMPLE_RATE if audio_nodes_read_vae_sample_rate() else LEGACY_AUDIO_RATE
        self.audio_sample_rate = io_sample_rate
        # ComfyUI 0.20.1's estimates for this VAE (comfy/sd.py), for at most one window.
        self.memory_used_encode = lambda shape, dtype: (
            1000 * min(shape[-1], self._request_frames(dtype) * FRAME_SAMPLES) * mm.dtype_size(dtype))
        self.memory_used_decode = lambda shape, dtype: (
            1000 * min(shape[-1], self._request_frames(dtype)) * 2048 * mm.dtype_size(dtype))

    @staticmethod
    def _first_stage_model(codec) -> nn.Module:
        return _OobleckModules(codec.vae)

    def _resample(self, audio: torch.Tensor, source: int, target: int) -> torch.Tensor:
        if source == target:
            return audio
        import torchaudio
        return torchaudio.functional.resample(audio, source, target)

    def decode(self, samples_in, vae_options={}):
        latent = _check_latent(samples_in)
        self._load(self.memory_used_decode(latent.shape, self.vae_dtype))
        return self._per_item(latent, lambda one, on_progress: self._resample(self.codec.decode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress, check=mm.throw_exception_if_processing_interrupted,
        ), SAMPLE_RATE, self.audio_sample_rate).movedim(1, -1))

    def encode(self, pixel_samples):
        audio = validated_audio(pixel_samples, "ACE-Step 1.5 VAE").movedim(-1, 1)    # [B, C, S]
        audio = self._resample(audio.float(), self.audio_sample_rate, SAMPLE_RATE)
        if audio.shape[-1] < FRAME_SAMPLES:
            raise ValueError(f"ACE-Step 1.5 VAE: the audio is {audio.shape[-1]} samples long at {SAMPLE_RATE} Hz; "
                             f"it encodes whole {FRAME_SAMPLES}-sample frames (40 ms): give a longer clip.")
        self._load(self.memory_used_encode(audio.shape, self.vae_dtype))
        return self._per_item(audio, lambda one, on_progress: self.codec.encode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress, check=mm.throw_exception_if_processing_interrupted))


def _check_latent(samples) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"ACE-Step 1.5 VAE: expected a latent tensor, got {type(samples).__name__}.")
    if samples.ndim != 3 or samples.shape[1] != LATENT_CHANNELS or samples.shape[-1] < 1:
        raise ValueError(f"ACE-Step 1.5 VAE: this latent has shape {list(samples.shape)}, but ACE-Step 1.5 latents "
                         f"are [batch, {LATENT_CHANNELS}, frames] (EmptyAceStep1.5LatentAudio, or VAEEncodeAudio "
                         "with this VAE). An ACE-Step v1 latent needs the v1 VAE.")
    if not torch.isfinite(samples).all():
        raise ValueError("ACE-Step 1.5 VAE: the latent contains NaN or infinite values (the sampling diverged).")
    return samples


def make_vae(codec, dtype: torch.dtype | None = None, io_sample_rate: int | None = None) -> Ace15VAE:
    return Ace15VAE(codec, dtype, io_sample_rate)


# =============================================================================================
# Everything from resolved sources
# =============================================================================================
def load_from_sources(sources: Ace15Sources, unet_dtype: torch.dtype, text_dtype: torch.dtype,
                      vae_dtype: torch.dtype, held_dtype):
    """(MODEL, CLIP, VAE) from :class:`Ace15Sources`. The tokenizers are found before any weight is
    read, so a missing tokenizer is reported first. ``held_dtype(compute, stored)``: how to hold
    weights (see nodes/loaders.py)."""
    from acestep_core.ace15.planner import load_planner
    from acestep_core.ace15.planner_grammar import PlannerTokenizer
    near = [p.source.file for p in (sources.text_encoder, sources.dit) if p is not None] + list(sources.paths)
    tokenizer_dir = find_qwen_tokenizer(near)
    tokenizer = QwenTokenizer(tokenizer_dir)
    planner_tokenizer = PlannerTokenizer.load(tokenizer_dir) if sources.planner is not None else None

    dit = sources.dit
    model = make_model_patcher(dit, held_dtype(unet_dtype, dit.source.stored_float_dtype()), unet_dtype,
                               sources.silence_file)
    text_encoder = build_text_encoder(sources.text_encoder, text_dtype)
    planner = load_planner(sources.planner.source.state_dict()) if sources.planner is not None else None
    clip = make_clip(text_encoder, tokenizer, text_dtype, planner, planner_tokenizer)
    vae = make_vae(build_vae(sources.vae, vae_dtype), vae_dtype)
    return model, clip, vae


__all__ = ["Ace15BaseModel", "Ace15DiffusionModel", "Ace15ModelConfig", "Ace15TextModel", "Ace15Tokenizer",
           "Ace15VAE", "audio_nodes_read_vae_sample_rate", "load_from_sources", "make_clip", "make_model_patcher",
           "make_vae"]
