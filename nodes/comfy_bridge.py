"""Our ACE-Step modules dressed as ComfyUI's MODEL, CLIP and VAE.

ComfyUI's sampler, conditioning and audio nodes only talk to three objects:

  MODEL  a ``comfy.model_patcher.ModelPatcher`` around a ``comfy.model_base.BaseModel``;
  CLIP   a ``comfy.sd.CLIP`` (tokenizer + text model behind a ModelPatcher);
  VAE    a ``comfy.sd.VAE`` with ``encode([B, S, C])`` / ``decode(latent) -> [B, S, C]``.

We build each of them around the modules of ``acestep_core`` instead of ComfyUI's own ACE-Step
classes, so that KSampler, SamplerCustomAdvanced, ModelSamplingSD3, CFGGuider, LoRA loading, the
built-in TextEncodeAceStepAudio and VAEEncodeAudio / VAEDecodeAudio all work unchanged.

Two ComfyUI mechanisms shape the code below:

* Memory management. ``ModelPatcher.load`` only moves *leaf modules that own parameters* to the GPU
  unless it does a "full load"; with the default (NORMAL_VRAM) state it does a partial load, and
  lower-VRAM GPUs offload whole layers. ComfyUI's own networks cope because their layers are
  ``comfy.ops`` classes (which cast weights to the input's device on the fly) and because they
  ``cast_to`` any loose parameter at its point of use. Our modules are plain PyTorch, so
  ``make_comfy_managed`` (1) turns standard layers into the equivalent ``comfy.ops`` classes
  (same parameters, same math when not offloaded), (2) gives every other module that holds
  tensors directly a pre-forward hook that moves them to the device of its input, and (3) lets
  modules that read a layer's weight instead of calling the layer (our feed-forward's 1x1
  convs, the lyric embedding's device) see that weight on the input's device, patched.
* Conditioning. ``extra_conds`` turns a CONDITIONING entry into the diffusion model's keyword
  arguments; ours follows ``comfy.model_base.ACEStep.extra_conds`` (see ``AceStepModel``).
"""
from __future__ import annotations

import logging
import math
from typing import Iterable

import torch
from torch import nn

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models_base
import comfy.utils

from acestep_core.codec import CPU_WINDOW_BUDGET, DEFAULT_OVERLAP_FRAMES, window_frames_for_budget
from acestep_core.constants import AUDIO_CHANNELS, LATENT_CHANNELS, LATENT_HEIGHT, SAMPLES_PER_FRAME

from .notices import warn_user

log = logging.getLogger("comfyui-acestep")

FLOW_SHIFT = 3.0                 # the released model's sampling shift (ComfyUI: sampling_settings)
MEMORY_USAGE_FACTOR = 0.5        # ComfyUI's value for ACE-Step's transformer (same architecture)


# =============================================================================================
# Letting ComfyUI's memory manager move our modules
# =============================================================================================
def _comfy_op_classes() -> dict[type, type]:
    """Plain torch layer -> the comfy.ops class with identical parameters and forward."""
    ops = comfy.ops.disable_weight_init
    names = ("Linear", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "LayerNorm",
             "GroupNorm", "Embedding")
    return {getattr(nn, n): getattr(ops, n) for n in names if hasattr(ops, n) and hasattr(nn, n)}


def _first_tensor_device(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _follow_input_device(module: nn.Module, args, kwargs):
    """Forward pre-hook: bring this module's own (non-recursive) tensors to the input's device.

    ModelPatcher's partial load skips modules that own a tensor *and* have children with
    parameters (e.g. a block's ``scale_shift_table``) and modules holding only buffers; this is
    how those tensors reach the GPU. A no-op once they are there."""
    device = _first_tensor_device(args, kwargs)
    if device is None:
        return None
    for tensors in (module._parameters, module._buffers):
        for name, tensor in tensors.items():
            if tensor is not None and tensor.device != device:
                tensor.data = tensor.data.to(device)
    return None


_CONTAINERS = (nn.ModuleDict, nn.Sequential)


def _held_layers(owner: nn.Module) -> list[nn.Module]:
    """comfy.ops layers that ``owner`` holds directly or inside ModuleDict / Sequential
    containers: the layers whose weights its forward may read directly (``F.linear(x,
    layer.weight)``, ``ids.to(layer.weight.device)``) instead of calling them. Layers in a
    ModuleList belong to modules of their own (blocks) or are not run at all (REPA heads)."""
    held = []
    for child in owner.children():
        if isinstance(child, comfy.ops.CastWeightBiasOp):
            held.append(child)
        elif type(child) in _CONTAINERS:
            held += _held_layers(child)
    return held


def _needs_cast(layer: nn.Module, device: torch.device) -> bool:
    return bool(layer.comfy_cast_weights or layer.weight_function or layer.bias_function) or \
        layer.weight.device != device


def _bring_held_weights(owner: nn.Module, args, kwargs):
    """Forward pre-hook: give the held layers that ModelPatcher left offloaded (or patches as
    weight functions) their weights on the input's device, patched, for this forward only.

    While swapped in, a layer behaves as a plain loaded layer (its casting flags are cleared),
    so calling it does not apply a LoRA patch a second time. ``_restore_held_weights`` undoes
    it, also when the forward raises (always_call)."""
    _restore_held_weights(owner)
    device = _first_tensor_device(args, kwargs)
    if device is None:
        return None
    swapped = []
    for layer in owner._acestep_held:
        if getattr(layer, "weight", None) is None or not _needs_cast(layer, device):
            continue
        dtype = layer.weight.dtype
        bias_dtype = layer.bias.dtype if getattr(layer, "bias", None) is not None else None
        weight, bias = comfy.ops.cast_bias_weight(layer, None, dtype, device, bias_dtype)
        saved = ({k: layer._parameters.get(k) for k in ("weight", "bias") if k in layer._parameters},
                 {k: layer.__dict__[k] for k in ("comfy_cast_weights", "weight_function", "bias_function")
                  if k in layer.__dict__})
        layer._parameters["weight"] = weight
        if bias is not None and "bias" in layer._parameters:
            layer._parameters["bias"] = bias
        layer.comfy_cast_weights, layer.weight_function, layer.bias_function = False, [], []
        swapped.append((layer, saved))
    owner._acestep_swapped = swapped
    return None


def _restore_held_weights(owner: nn.Module, *unused):
    swapped = owner.__dict__.pop("_acestep_swapped", None) or []
    for layer, (params, flags) in reversed(swapped):
        layer._parameters.update(params)
        for key in ("comfy_cast_weights", "weight_function", "bias_function"):
            layer.__dict__.pop(key, None)
        layer.__dict__.update(flags)
    return None


def make_comfy_managed(module: nn.Module) -> nn.Module:
    """Prepare a plain PyTorch module for ComfyUI's partial / low-VRAM loading (in place).

    1. Standard layers change class to their ``comfy.ops`` twin: a subclass with the same
       parameters whose forward is the parent's unless ModelPatcher asks it to cast offloaded
       weights (``comfy_cast_weights``) or to apply patches on the fly (``weight_function``).
    2. Every other module that owns tensors directly gets ``_follow_input_device``.
    3. Modules that hold such layers (directly or in ModuleDict / Sequential) get
       ``_bring_held_weights``, for forwards that read a layer's weight instead of calling it.
    Hooks only act when a tensor is on another device or a layer is marked for casting, so a
    fully loaded model runs exactly as before. Idempotent."""
    swaps = _comfy_op_classes()
    for sub in module.modules():
        target = swaps.get(type(sub))
        if target is not None:
            sub.__class__ = target
            if isinstance(sub, nn.Embedding) and not hasattr(sub, "bias"):
                sub.bias = None  # comfy's cast helper reads .bias; its Embedding sets it in reset_parameters
    for sub in module.modules():
        if isinstance(sub, comfy.ops.CastWeightBiasOp) or type(sub) in _CONTAINERS \
                or getattr(sub, "_acestep_managed", False):
            continue
        sub._acestep_managed = True
        owns_tensors = any(t is not None for t in sub._parameters.values()) or \
            any(t is not None for t in sub._buffers.values())
        if owns_tensors:
            sub.register_forward_pre_hook(_follow_input_device, with_kwargs=True)
        held = _held_layers(sub)
        if held:
            sub._acestep_held = held
            sub.register_forward_pre_hook(_bring_held_weights, with_kwargs=True)
            sub.register_forward_hook(_restore_held_weights, always_call=True)
    return module


def module_dtype(module: nn.Module, default=torch.float32) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


# =============================================================================================
# MODEL
# =============================================================================================
def _latent_format_class():
    """ComfyUI's ACE-Step latent format when it has one, else an identical one of ours."""
    cls = getattr(comfy.latent_formats, "ACEAudio", None)
    if cls is not None:
        return cls

    class AceStepAudioLatent(comfy.latent_formats.LatentFormat):
        # 8 channels x 16 mel rows x T frames; the DCAE already normalises (scale 1, no shift).
        latent_channels = LATENT_CHANNELS
        latent_dimensions = 2

    return AceStepAudioLatent


class AceStepModelConfig(comfy.supported_models_base.BASE):
    """What ComfyUI reads from ``model.model_config``: sampling shift, latent format, memory
    factor and the state-dict prefixes used when a workflow saves a checkpoint."""

    unet_config = {"audio_model": "ace"}
    unet_extra_config = {}
    sampling_settings = {"shift": FLOW_SHIFT}
    latent_format = _latent_format_class()
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.bfloat16, torch.float32, torch.float16]
    vae_key_prefix = ["vae."]
    text_encoder_key_prefix = ["text_encoders."]

    def get_model(self, state_dict, prefix="", device=None):
        raise NotImplementedError("AceStepModel is built by nodes.comfy_bridge.make_model_patcher")

    def clip_target(self, state_dict={}):
        return None


def unet_config_for(config, dtype: torch.dtype) -> dict:
    """ComfyUI-style unet_config describing our transformer. ``disable_unet_model_creation`` makes
    BaseModel skip building a network: we attach ours afterwards."""
    return {
        "audio_model": "ace",
        "disable_unet_model_creation": True,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.attention_head_dim,
        "inner_dim": config.inner_dim,
        "mlp_ratio": config.mlp_ratio,
        "patch_size": list(config.patch_size),
        "max_height": config.max_height,
        "max_position": config.max_position,
        "text_embedding_dim": config.text_embedding_dim,
        "lyric_hidden_size": config.lyric_hidden_size,
        "dtype": dtype,
    }


# Being an instance of ComfyUI's ACEStep class lets ComfyUI code that checks for it (comfy/lora.py
# maps "official" ACE-Step LoRA keys that way) treat our model as ACE-Step.
_ACE_BASE = getattr(comfy.model_base, "ACEStep", comfy.model_base.BaseModel)


class AceStepModel(_ACE_BASE):
    """``comfy.model_base.BaseModel`` whose ``diffusion_model`` is acestep_core's transformer.

    Flow matching (ModelType.FLOW: the network predicts the velocity, x0 = x - sigma * v), timestep
    = 1000 * sigma, shift 3 by default (ModelSamplingSD3 replaces it)."""

    def __init__(self, model_config: AceStepModelConfig, transformer: nn.Module, device=None):
        # BaseModel.__init__ directly, not ACEStep.__init__: with disable_unet_model_creation it
        # builds no network, and we do not depend on what ACEStep's constructor may add later.
        comfy.model_base.BaseModel.__init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW,
                                            device=device)
        self.diffusion_model = transformer
        self.speaker_embedding_dim = int(getattr(getattr(transformer, "config", None),
                                                 "speaker_embedding_dim", 512))

    def get_dtype(self):
        return module_dtype(self.diffusion_model)

    def extra_conds(self, **kwargs):
        """Keyword arguments of the transformer from one conditioning entry, as ComfyUI's ACEStep:

        c_crossattn -> ``context``: UMT5 hidden states [1, L, 768] (CONDRegular: cond and uncond
            batch together only when their lengths agree, as in ComfyUI);
        conditioning_lyrics -> ``lyric_token_idx`` [1, L_lyr] (long);
        ``speaker_embeds``: zeros [B, 512] (ACE-Step v1 is used without a speaker embedding);
        ``lyrics_strength``: a constant scale on the lyric context, default 1.0.

        One addition: when our CLIP produced a lyric mask with padding in it (empty lyrics: the
        original encodes them as one *masked* token), it is passed as ``lyric_mask``. ComfyUI's
        conditionings never carry one, and an all-ones mask is left out, so for every other
        prompt the arguments are exactly ComfyUI's."""
        out = comfy.model_base.BaseModel.extra_conds(self, **kwargs)
        noise = kwargs.get("noise", None)
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            lyrics = kwargs.get("conditioning_lyrics", None)
            if lyrics is not None:
                out["lyric_token_idx"] = comfy.conds.CONDRegular(lyrics)
                lyric_mask = kwargs.get("conditioning_lyrics_mask", None)
                if lyric_mask is not None and lyric_mask.shape == lyrics.shape and not bool(lyric_mask.all()):
                    out["lyric_mask"] = comfy.conds.CONDRegular(lyric_mask)
        if noise is not None:
            out["speaker_embeds"] = comfy.conds.CONDRegular(
                torch.zeros(noise.shape[0], self.speaker_embedding_dim, device=noise.device, dtype=noise.dtype))
        out["lyrics_strength"] = comfy.conds.CONDConstant(kwargs.get("lyrics_strength", 1.0))
        return out


def make_model_patcher(transformer: nn.Module, dtype: torch.dtype | None = None) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI: our transformer inside an AceStepModel inside a ModelPatcher.

    The weights stay where they are (normally the CPU); ComfyUI moves them to the GPU when a
    sampler needs them and back when memory is needed elsewhere."""
    dtype = dtype or module_dtype(transformer)
    make_comfy_managed(transformer)
    model_config = AceStepModelConfig(unet_config_for(transformer.config, dtype))
    model_config.set_inference_dtype(dtype, None)  # weights are stored in the compute dtype
    model = AceStepModel(model_config, transformer, device=module_device(transformer))
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


# =============================================================================================
# CLIP
# =============================================================================================
class AceStepTokenizer:
    """ComfyUI tokenizer interface over acestep_core's tag and lyric tokenizers.

    ``tokenize_with_weights(tags, lyrics=...)`` returns the same keys as ComfyUI's AceT5Tokenizer:
    ``umt5base`` (tag token ids) and ``lyrics`` (lyric token ids), each a list holding one list of
    (id, weight) pairs; plus ``lyrics_mask`` (1 = real token), which only our text model reads.
    Neither text goes through ComfyUI's "(word:1.2)" weight syntax: lyrics keep their
    parentheses, as in the original ACE-Step, and all weights are 1.0."""

    def __init__(self, tag_tokenizer, lyric_tokenizer, spiece_model: bytes | None = None):
        self.tag_tokenizer = tag_tokenizer
        self.lyric_tokenizer = lyric_tokenizer
        self.spiece_model = spiece_model

    @staticmethod
    def _pairs(ids: Iterable[int], return_word_ids: bool):
        if return_word_ids:
            return [[(int(i), 1.0, 0) for i in ids]]
        return [[(int(i), 1.0) for i in ids]]

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, lyrics: str = "", **kwargs):
        # Both texts are cut at the model's limits (tags: 256 tokens, lyrics: 4096), saying so on
        # the node and in the log: the lyric encoder's memory grows with the square of the length.
        counted = getattr(self.tag_tokenizer, "encode_counted", None)
        tag_ids, tags_cut = counted(text or "") if counted else (self.tag_tokenizer.encode(text or ""), 0)
        lyric_encoding = self.lyric_tokenizer.encode_limited(lyrics or "")
        warnings = [lyric_encoding.warning()]
        if tags_cut:
            warnings.append(self.tag_tokenizer.cut_warning(tags_cut, len(tag_ids) + tags_cut))
        if any(warnings):
            warn_user("\n".join(w for w in warnings if w))
        tag_ids = list(tag_ids)
        lyric_ids, lyric_mask = list(lyric_encoding.ids), [int(m) for m in lyric_encoding.mask]
        return {
            "umt5base": self._pairs(tag_ids, return_word_ids),
            "lyrics": self._pairs(lyric_ids, return_word_ids),
            "lyrics_mask": self._pairs(lyric_mask, return_word_ids),
        }

    def untokenize(self, token_weight_pair):
        decode = getattr(self.tag_tokenizer, "decode", None)
        out = []
        for pair in token_weight_pair:
            try:
                word = decode([pair[0]]) if decode is not None else str(pair[0])
            except Exception:
                word = str(pair[0])
            out.append((pair, word))
        return out

    def state_dict(self):
        # ComfyUI stores the SentencePiece model as a uint8 tensor next to the text encoder
        # (``text_encoders.spiece_model``) when it saves a checkpoint.
        if self.spiece_model is None:
            return {}
        return {"spiece_model": torch.frombuffer(bytearray(self.spiece_model), dtype=torch.uint8)}


class AceStepTextModel(nn.Module):
    """ComfyUI text-model interface (``cond_stage_model``) over acestep_core's UMT5 encoder.

    The encoder sits at ``umt5base.transformer`` so that ``state_dict()`` keys are ComfyUI's
    (``umt5base.transformer.encoder.block.0...``): saving a checkpoint from a workflow writes the
    same layout as the released file."""

    def __init__(self, text_encoder: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.umt5base = nn.Module()
        self.umt5base.transformer = text_encoder
        self.dtypes = {dtype}

    @property
    def encoder(self) -> nn.Module:
        return self.umt5base.transformer

    def set_clip_options(self, options):
        pass  # ACE-Step always uses the final hidden states; no layer / projection options

    def reset_clip_options(self):
        pass

    @torch.no_grad()
    def _encode_ids(self, ids: list[int]) -> torch.Tensor:
        # The CLIP's load device (set by make_clip), not a weight's: under partial loading some
        # weights stay offloaded and are brought to the input's device as they are used.
        device = getattr(self, "load_device", None) or module_device(self.encoder)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        return self.encoder(input_ids, attention_mask=torch.ones_like(input_ids))

    def encode_token_weights(self, token_weight_pairs):
        """-> (hidden [1, L, 768] float32, None, {"conditioning_lyrics": [1, L_lyr] long, ...})."""
        sections = [[p[0] for p in section] for section in token_weight_pairs["umt5base"]]
        sections = [s for s in sections if s] or [[1]]  # never encode nothing: "</s>" alone
        hidden = torch.cat([self._encode_ids(s) for s in sections], dim=1)
        hidden = hidden.to(mm.intermediate_device()).float()

        lyric_ids = [p[0] for p in token_weight_pairs["lyrics"][0]]
        extra = {"conditioning_lyrics": torch.tensor([lyric_ids], dtype=torch.long)}
        mask_pairs = token_weight_pairs.get("lyrics_mask")
        if mask_pairs:
            mask = [int(p[0]) for p in mask_pairs[0]]
            if len(mask) == len(lyric_ids) and not all(mask):
                extra["conditioning_lyrics_mask"] = torch.tensor([mask], dtype=torch.long)
        return hidden, None, extra

    def load_sd(self, sd):
        return self.encoder.load_state_dict(sd, strict=False)


class _ClipTarget:
    """``comfy.supported_models_base.ClipTarget`` equivalent: CLIP calls ``tokenizer(...)`` and
    ``clip(**params)``; ours hand back the already loaded objects."""

    def __init__(self, tokenizer: AceStepTokenizer, text_model: AceStepTextModel):
        self.tokenizer = lambda embedding_directory=None, tokenizer_data={}, **kw: tokenizer
        self.clip = lambda **params: text_model
        self.params = {}


def make_clip(text_encoder: nn.Module, tag_tokenizer, lyric_tokenizer, spiece_model: bytes | None = None,
              dtype: torch.dtype | None = None) -> comfy.sd.CLIP:
    """CLIP for ComfyUI around our text encoder and tokenizers."""
    dtype = dtype or module_dtype(text_encoder)
    make_comfy_managed(text_encoder)
    text_model = AceStepTextModel(text_encoder, dtype).eval()
    tokenizer = AceStepTokenizer(tag_tokenizer, lyric_tokenizer, spiece_model)
    offload = mm.text_encoder_offload_device()
    # initial_device = where the weights already are: CLIP then does not load them eagerly.
    options = {"dtype": dtype, "initial_device": module_device(text_encoder)}
    if module_device(text_encoder) != offload:
        options["offload_device"] = module_device(text_encoder)
    clip = comfy.sd.CLIP(_ClipTarget(tokenizer, text_model), model_options=options)
    text_model.load_device = clip.patcher.load_device
    return clip


# =============================================================================================
# VAE
# =============================================================================================
class _CodecModules(nn.Module):
    """The codec's networks under ComfyUI's VAE names (``dcae.*``, ``vocoder.*``: the checkpoint's
    keys without ``vae.``), as the module that the VAE's ModelPatcher moves between devices.
    (AudioCodec itself cannot be given to ModelPatcher: its ``device`` is a read-only property
    derived from its weights, and ModelPatcher assigns ``model.device``.)"""

    def __init__(self, dcae: nn.Module, vocoder: nn.Module):
        super().__init__()
        self.dcae = dcae
        self.vocoder = vocoder


class AceStepVAE(comfy.sd.VAE):
    """``comfy.sd.VAE`` around acestep_core's AudioCodec (music DCAE + vocoder).

    VAE.__init__ is not called (it would build ComfyUI's own MusicDCAE); we set the attributes
    its methods and the audio nodes read, with the values ComfyUI uses for ACE-Step, and replace
    ``encode`` / ``decode``:

      encode(audio [B, S, C] at 44.1 kHz) -> latent [B, 8, 16, ceil(S / 4096)]
      decode(latent [B, 8, 16, T])        -> audio [B, T * 4096, 2]

    Long songs are decoded in overlapping windows of latent frames (the codec's), as long as
    the memory free on the VAE device allows (usually the whole song in one piece on a GPU),
    with progress / Cancel between windows."""

    def __init__(self, codec, dtype: torch.dtype | None = None):
        self.codec = codec
        self.first_stage_model = _CodecModules(codec.dcae, codec.vocoder).eval()
        # Decode / encode window in latent frames (None: the longest that fits in the memory
        # free on the VAE device at each call) and the frames shared by adjacent windows.
        self.window_frames: int | None = None
        self.overlap_frames = DEFAULT_OVERLAP_FRAMES
        self.latent_channels = LATENT_CHANNELS
        self.latent_dim = 2
        self.output_channels = AUDIO_CHANNELS
        self.upscale_ratio = SAMPLES_PER_FRAME
        self.downscale_ratio = SAMPLES_PER_FRAME
        self.extra_1d_channel = LATENT_HEIGHT
        self.upscale_index_formula = None
        self.downscale_index_formula = None
        self.process_input = lambda audio: audio
        self.process_output = lambda audio: audio
        self.working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
        self.disable_offload = True
        self.not_video = False
        self.crop_input = False       # we pad to whole latent frames instead of cropping
        self.size = None
        # Working-memory estimates: ComfyUI's figures for ACE-Step's codec (encode: per audio
        # sample; decode: per latent cell), for at most a CPU-budget window: what ComfyUI frees
        # before the call. The window itself is then sized from what is actually free.
        self.memory_used_encode = lambda shape, dtype: (
            min(shape[-1], self._request_frames(dtype) * SAMPLES_PER_FRAME) * 330 * mm.dtype_size(dtype))
        self.memory_used_decode = lambda shape, dtype: (
            LATENT_HEIGHT * min(shape[-1], self._request_frames(dtype)) * 87000 * mm.dtype_size(dtype))
        self.device = mm.vae_device()
        self.vae_dtype = dtype or module_dtype(codec.dcae)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=mm.vae_offload_device())
        self.model_size()

    # ---- sizes -------------------------------------------------------------------------------
    def _request_frames(self, dtype) -> int:
        return self.window_frames or window_frames_for_budget(CPU_WINDOW_BUDGET, dtype, self.overlap_frames)

    def _window(self) -> int:
        """Latent frames processed at once: as set, else what the free memory allows."""
        if self.window_frames:
            return self.window_frames
        free = mm.get_free_memory(self.device)
        return window_frames_for_budget(free * 0.8, self.vae_dtype, self.overlap_frames)

    def _load(self, memory_required: float):
        mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, samples_in, vae_options={}):
        latent = _check_latent(samples_in)
        self._load(self.memory_used_decode(latent.shape, self.vae_dtype))
        return self._per_item(latent, lambda one, on_progress: self.codec.decode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress).movedim(1, -1))                       # [1, S, 2]

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.decode(samples)  # decoding is always chunked along time

    # ---- encode ------------------------------------------------------------------------------
    def encode(self, pixel_samples):
        audio = _check_audio(pixel_samples)                                 # [B, 2, S], S % 4096 == 0
        self._load(self.memory_used_encode(audio.shape, self.vae_dtype))
        return self._per_item(audio, lambda one, on_progress: self.codec.encode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress))                                      # [1, 8, 16, T]

    def _per_item(self, batch_in: torch.Tensor, run) -> torch.Tensor:
        """run(one item [1, ...] on the VAE device, on_progress) for each batch item, with one
        ComfyUI progress bar over all items' chunks and interrupt checks between chunks; results
        gathered as float32 on the output device."""
        batch = batch_in.shape[0]
        pbar = comfy.utils.ProgressBar(batch)
        out = None
        for b in range(batch):
            def on_progress(done, total, b=b):
                mm.throw_exception_if_processing_interrupted()
                pbar.update_absolute(b * total + done, batch * total)

            mm.throw_exception_if_processing_interrupted()
            one = batch_in[b:b + 1].to(device=self.device)   # the codec casts to its own dtype
            with torch.no_grad():
                result = run(one, on_progress).to(self.output_device).float()
            if out is None:
                out = torch.empty((batch,) + tuple(result.shape[1:]), device=self.output_device)
            out[b:b + 1] = result
        return out

    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.encode(pixel_samples)

    def temporal_compression_decode(self):
        return None


def _check_latent(samples) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"ACE-Step VAE: expected a latent tensor, got {type(samples).__name__}.")
    if samples.ndim == 3 and samples.shape[1] == LATENT_CHANNELS * LATENT_HEIGHT:
        samples = samples.reshape(samples.shape[0], LATENT_CHANNELS, LATENT_HEIGHT, samples.shape[-1])
    if samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS or samples.shape[2] != LATENT_HEIGHT:
        raise ValueError(
            f"ACE-Step VAE: this latent has shape {list(samples.shape)}, but ACE-Step audio latents are "
            f"[batch, {LATENT_CHANNELS}, {LATENT_HEIGHT}, frames] (from EmptyAceStepLatentAudio or "
            "VAEEncodeAudio with this VAE). Was the latent made for another model?")
    if samples.shape[-1] == 0:
        raise ValueError("ACE-Step VAE: the latent has 0 frames; there is no audio to decode.")
    if not torch.isfinite(samples).all():
        raise ValueError("ACE-Step VAE: the latent contains NaN or infinite values (the sampling "
                         "diverged); try bf16/fp32 weights or fewer extreme settings.")
    return samples


def _check_audio(pixel_samples) -> torch.Tensor:
    """[B, S, C] waveform at 44.1 kHz -> [B, 2, S'] float32 with S' a multiple of 4096.

    Mono is duplicated to both channels; with more than two channels the first two (front
    left / right in the usual layouts) are used. The end is zero-padded to whole latent frames,
    as the original ACE-Step does (ComfyUI's own VAE crops instead), so nothing is lost and audio
    shorter than one frame (4096 samples, 93 ms) still encodes to one frame."""
    if not isinstance(pixel_samples, torch.Tensor):
        raise TypeError(f"ACE-Step VAE: expected an audio tensor, got {type(pixel_samples).__name__}.")
    audio = pixel_samples
    if audio.ndim == 2:                       # [B, S]: a batch of mono signals
        audio = audio.unsqueeze(-1)
    if audio.ndim != 3:
        raise ValueError(f"ACE-Step VAE: expected audio shaped [batch, samples, channels], got "
                         f"{list(audio.shape)}.")
    if audio.shape[0] == 0 or audio.shape[1] == 0 or audio.shape[2] == 0:
        raise ValueError(f"ACE-Step VAE: the audio is empty (shape [batch, samples, channels] = "
                         f"{list(audio.shape)}).")
    if not audio.is_floating_point():
        audio = audio.float()
    if not torch.isfinite(audio).all():
        raise ValueError("ACE-Step VAE: the audio contains NaN or infinite samples; fix or "
                         "re-export the input file.")
    channels = audio.shape[2]
    if channels == 1:
        audio = audio.expand(-1, -1, AUDIO_CHANNELS)
    elif channels > AUDIO_CHANNELS:
        log.warning("ACE-Step VAE: the audio has %d channels; encoding the first two.", channels)
        audio = audio[:, :, :AUDIO_CHANNELS]
    audio = audio.movedim(-1, 1).float()      # [B, 2, S]
    samples = audio.shape[-1]
    padded = math.ceil(samples / SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME
    if padded != samples:
        audio = torch.nn.functional.pad(audio, (0, padded - samples))
    return audio.contiguous()


def make_vae(codec, dtype: torch.dtype | None = None) -> AceStepVAE:
    return AceStepVAE(codec, dtype)


__all__ = ["AceStepModel", "AceStepModelConfig", "AceStepTokenizer", "AceStepTextModel", "AceStepVAE",
           "make_model_patcher", "make_clip", "make_vae", "make_comfy_managed"]
