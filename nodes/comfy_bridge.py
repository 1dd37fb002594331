"""Our ACE-Step modules dressed as ComfyUI's MODEL, CLIP and VAE.

ComfyUI's sampler, conditioning and audio nodes only talk to three objects:

  MODEL  a ``comfy.model_patcher.ModelPatcher`` around a ``comfy.model_base.BaseModel``;
  CLIP   a ``comfy.sd.CLIP`` (tokenizer + text model behind a ModelPatcher);
  VAE    a ``comfy.sd.VAE`` with ``encode([B, S, C])`` / ``decode(latent) -> [B, S, C]``.

We build each of them around the modules of ``acestep_core`` instead of ComfyUI's own ACE-Step
classes, so that KSampler, SamplerCustomAdvanced, ModelSamplingSD3, CFGGuider, LoRA loading, the
built-in TextEncodeAceStepAudio and VAEEncodeAudio / VAEDecodeAudio all work unchanged.

The modules are built the way ComfyUI builds its own models, so ComfyUI's memory manager and
every model patch (LoRA, EasyCache, attention replacements, wrappers from other packs) act on
them as on ComfyUI's:

* Layers come from ComfyUI's operations (``comfy.ops.pick_operations``: ``disable_weight_init``,
  or ``manual_cast`` when the weights are held in a narrower dtype than the model computes in,
  e.g. the released 16-bit weights with a float32 CPU compute), extended by
  ``acestep_cast_weight_bias`` for the core's fast paths. ModelPatcher's low-VRAM loading then
  offloads layers and applies patches on the fly; tensors a module owns directly are cast at
  their point of use by the core (``acestep_core.ops.cast_like``). No hooks, no class swaps.
* The MODEL is ``model_config.get_model`` -> ``BaseModel.__init__(unet_model=...)``, the
  transformer runs through the ``DIFFUSION_MODEL`` wrappers, and ``transformer_options`` reaches
  every block (``attn1`` / ``attn2`` / ``dit`` replacements, see acestep_core.models.transformer).
* Conditioning. ``extra_conds`` turns a CONDITIONING entry into the diffusion model's keyword
  arguments; ours follows ``comfy.model_base.ACEStep.extra_conds`` (see ``AceStepModel``).

ComfyUI internals this module relies on (tests/comfyui/test_comfy_internals.py checks each one
and names it when a ComfyUI release moves it):

  comfy.ops: pick_operations, cast_bias_weight, CastWeightBiasOp, run_every_op, the layer classes'
      comfy_cast_weights / weight_function / bias_function (and ``_v``, 0.20's dynamic VRAM);
  comfy.patcher_extension: WrapperExecutor.new_class_executor, get_all_wrappers, WrappersMP.DIFFUSION_MODEL;
  comfy.model_base: BaseModel.__init__(model_config, model_type, device, unet_model), ModelType.FLOW,
      BaseModel.extra_conds, ACEStep (LoRA key mapping in comfy/lora.py);
  comfy.supported_models_base.BASE (set_inference_dtype, manual_cast_dtype);
  comfy.model_patcher.ModelPatcher(model, load_device, offload_device);
  comfy.sd.CLIP(target, model_options={"dtype", "initial_device", "offload_device"}) and its patcher;
  comfy.sd.VAE: the attributes its methods and the audio nodes read, set by AceStepVAE.__init__
      (VAE.__init__ would build ComfyUI's own network), see AceStepVAE;
  comfy.conds.CONDRegular / CONDConstant; comfy.latent_formats.ACEAudio;
  comfy.model_management: get_torch_device, unet_offload_device, text_encoder_offload_device,
      vae_device, vae_offload_device, intermediate_device, get_free_memory, load_models_gpu,
      dtype_size, throw_exception_if_processing_interrupted;
  comfy.utils.ProgressBar;
  comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, mask=, skip_reshape=True,
      transformer_options=) (the cross-attention, see comfy_attention).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

import comfy.conds
import comfy.latent_formats
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.sd
import comfy.supported_models_base
import comfy.utils

from acestep_core import ops as layer_ops
from acestep_core.codec import (CPU_WINDOW_BUDGET, CUDA_FREE_MEMORY_SHARE, DECODE_BYTES_PER_FRAME,
                                DEFAULT_OVERLAP_FRAMES, window_frames_for_budget)
from acestep_core.constants import AUDIO_CHANNELS, LATENT_CHANNELS, LATENT_HEIGHT, SAMPLE_RATE, SAMPLES_PER_FRAME
from acestep_core.models.transformer import AceStepTransformer

from .notices import warn_user

from .common import check_latent, log

FLOW_SHIFT = 3.0                 # the released model's sampling shift (ComfyUI: sampling_settings)
MEMORY_USAGE_FACTOR = 0.5        # ComfyUI's value for ACE-Step's transformer (same architecture)


# =============================================================================================
# Layers: ComfyUI's operations
# =============================================================================================
_LAYER_NAMES = ("Linear", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "LayerNorm", "GroupNorm",
                "Embedding", "RMSNorm")
_OPERATIONS: dict[type, type] = {}
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)       # not a quantised / GGUF tensor subclass
_NARROW_WEIGHTS = (torch.bfloat16, torch.float16)


def _acestep_cast_weight_bias(layer, like: torch.Tensor, dtype: torch.dtype):
    """``acestep_core.ops.cast_weight_bias`` served by a ComfyUI layer: its weight and bias on
    ``like``'s device in ``dtype``, offloaded weights fetched and weight patches (LoRA under
    low-VRAM loading) applied, through ``comfy.ops.cast_bias_weight`` whenever ModelPatcher marked
    the layer for casting or the weight is elsewhere or in another dtype; else the parameters."""
    if layer.comfy_cast_weights or layer.weight_function or layer.bias_function \
            or layer.weight.device != like.device or layer.weight.dtype != dtype:
        return comfy.ops.cast_bias_weight(layer, like, dtype=dtype, device=like.device, bias_dtype=dtype)
    return layer.weight, getattr(layer, "bias", None)


def _upcasts_in_blocks(layer, x) -> bool:
    """Whether ``layer``'s manual-cast product on ``x`` may run as ``acestep_core.ops.linear_upcast``
    (the same numbers as ``comfy.ops.cast_bias_weight`` then ``F.linear``, without a float32 copy of
    the whole weight): on the CPU, a layer ComfyUI marked for casting whose plain 16-bit weight is
    already on ``x``'s device, narrower than ``x``, with nothing to apply on the way (no LoRA /
    weight patches pending in ``weight_function`` / ``bias_function``, no dynamic-VRAM buffer
    ``_v`` of ComfyUI 0.20's offloading). Anything else goes through ComfyUI's own path."""
    weight, bias = layer.weight, getattr(layer, "bias", None)
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.comfy_cast_weights and not layer.weight_function and not layer.bias_function
            and not hasattr(layer, "_v")
            and type(weight) in _PLAIN_TENSORS and weight.dtype in _NARROW_WEIGHTS and weight.device == x.device
            and (bias is None or (type(bias) in _PLAIN_TENSORS and bias.device == x.device)))



def _acestep_linear(layer, x: torch.Tensor) -> torch.Tensor:
    """``acestep_core.ops.linear``: ``F.linear(x, weight.flatten(1), bias)`` with the weight and
    bias as the layer's own forward would use them (a 1x1 or patch conv read as a matrix product)."""
    if _upcasts_in_blocks(layer, x):
        return layer_ops.linear_upcast(x, layer.weight.flatten(1), layer.bias)
    weight, bias = _acestep_cast_weight_bias(layer, x, x.dtype)
    return torch.nn.functional.linear(x, weight.flatten(1), bias)


def _is_pointwise(conv) -> bool:
    """A 1x1 Conv1d with nothing but the channel mixing (the v1 feed-forward's inverted and point convs)."""
    return (tuple(conv.kernel_size) == (1,) and tuple(conv.stride) == (1,) and tuple(conv.dilation) == (1,)
            and conv.groups == 1 and conv.padding in ((0,), "valid"))


# layer class name -> (the acestep_core.ops block upcast its forward uses, which layers of it qualify)
_BLOCK_UPCASTS = {"Linear": ("linear_upcast", lambda layer: True),
                  "Conv1d": ("conv1d_pointwise_upcast", _is_pointwise)}


def _forward_with_block_upcast(base: type, upcast: str, qualifies) -> Callable:
    """``forward`` of a ComfyUI layer class that computes manual-cast products on the CPU through
    ``acestep_core.ops.<upcast>`` (``linear_upcast``; ``conv1d_pointwise_upcast`` for 1x1 convs:
    the same numbers as casting the whole weight, cast in blocks) when the layer ``qualifies`` and
    :func:`_upcasts_in_blocks` allows, else ``base.forward`` unchanged."""
    def forward(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and qualifies(self) and _upcasts_in_blocks(self, args[0]):
            comfy.ops.run_every_op()        # what base.forward does first (interrupt check)
            return getattr(layer_ops, upcast)(args[0], self.weight, self.bias)
        return base.forward(self, *args, **kwargs)
    return forward


def with_cast_weight_bias(operations: type) -> type:
    """``operations`` (a ``comfy.ops`` namespace class) with each layer class extended by
    ``acestep_cast_weight_bias`` and ``acestep_linear`` (the core's fast paths), and the forward
    of Linear and of 1x1 Conv1d by the CPU block upcast (:func:`_forward_with_block_upcast`): a
    subclass per layer, nothing else changed, cached so a class is made once per namespace. Namespaces from other
    packs (e.g. GGUF's ``custom_operations``) get the same: their layers' own casting is reached
    through ``comfy.ops.cast_bias_weight``, and their tensor subclasses never take the upcast."""
    cached = _OPERATIONS.get(operations)
    if cached is not None:
        return cached
    layers = {}
    for name in _LAYER_NAMES:
        base = getattr(operations, name, None)
        if base is None or not issubclass(base, comfy.ops.CastWeightBiasOp):
            continue
        members = {"acestep_cast_weight_bias": _acestep_cast_weight_bias, "acestep_linear": _acestep_linear,
                   "__module__": __name__, "__qualname__": f"{operations.__name__}.{name}"}
        if name in _BLOCK_UPCASTS:
            members["forward"] = _forward_with_block_upcast(base, *_BLOCK_UPCASTS[name])
        layers[name] = type(base.__name__, (base,), members)
    cached = type(operations.__name__, (operations,), dict(layers, __module__=__name__))
    _OPERATIONS[operations] = cached
    return cached


def pick_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype | None, load_device=None) -> type:
    """ComfyUI's choice of layer classes for weights held in ``weight_dtype`` and computed in
    ``compute_dtype`` (``comfy.ops.pick_operations``: disable_weight_init when they agree,
    manual_cast when each weight must be cast at use), with acestep_cast_weight_bias."""
    compute = None if compute_dtype == weight_dtype else compute_dtype
    return with_cast_weight_bias(comfy.ops.pick_operations(weight_dtype, compute, load_device=load_device))


def module_dtype(module: nn.Module, default=torch.float32) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def build_component(source, weight_dtype: torch.dtype, compute_dtype: torch.dtype | None = None, config=None,
                    load_device=None):
    """An acestep_core component built on ComfyUI's operations for these dtypes, its weights
    assigned from ``source`` (kept in the stored dtype where that is narrower)."""
    from acestep_core.loading import build_component as core_build
    operations = pick_operations(weight_dtype, compute_dtype, load_device)
    return core_build(source, weight_dtype, "cpu", config, operations=operations, compute_dtype=compute_dtype)


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


def comfy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    transformer_options: dict | None = None) -> torch.Tensor:
    """The core's cross-attention function (contract: ``acestep_core.models.attention.sdpa_attention``)
    served by ComfyUI's ``optimized_attention``, called as ComfyUI's own ACE-Step model calls it
    (comfy/ldm/ace/attention.py, ``CustomerAttnProcessor2_0.__call__``): the backend ComfyUI chose
    at start (sage / flash / xformers / PyTorch on GPUs, sub-quadratic on the CPU unless told
    otherwise) and an ``optimized_attention_override`` in the transformer options. Looked up at
    each call, so a pack that swaps it in is seen."""
    return comfy.ldm.modules.attention.optimized_attention(
        q, k, v, heads=q.shape[1], mask=mask, skip_reshape=True,
        transformer_options={} if transformer_options is None else transformer_options)


class AceStepDiffusionModel(AceStepTransformer):
    """acestep_core's transformer as ComfyUI's ``diffusion_model``: built by ``BaseModel.__init__``
    from the unet_config with the operations ComfyUI picks, on the meta device (the weights are
    assigned afterwards), and run through ComfyUI's ``DIFFUSION_MODEL`` wrappers
    (``comfy.patcher_extension``) as ComfyUI's own models are (comfy/ldm/ace/model.py,
    ``ACEStepTransformer2DModel.forward``)."""

    def __init__(self, acestep_config=None, dtype=None, device=None, operations=None, **unet_config):
        # Whatever operations ComfyUI picked (or a pack put in model_config.custom_operations),
        # extended so the core's fast paths read weights the way the layers' own forward does.
        operations = with_cast_weight_bias(operations or comfy.ops.disable_weight_init)
        with torch.device("meta"):
            # reference_order: the feed-forward in ComfyUI's own steps, so that our MODEL computes what
            # ComfyUI's ACE model computes, bit for bit in float32 (its 1x1 convs are slower on the
            # CPU than the core's matrix-product alternative; the same speed on a GPU)
            super().__init__(acestep_config, dtype=dtype, operations=operations, attention_function=comfy_attention,
                             reference_order=True)

    def forward(self, x, timestep, context=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timestep, context=context, transformer_options=transformer_options, **kwargs)


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
        return AceStepModel(self, device=device)

    def clip_target(self, state_dict={}):
        return None


# Being an instance of ComfyUI's ACEStep class lets ComfyUI code that checks for it (comfy/lora.py
# maps "official" ACE-Step LoRA keys that way) treat our model as ACE-Step.
_ACE_BASE = getattr(comfy.model_base, "ACEStep", comfy.model_base.BaseModel)


class AceStepModel(_ACE_BASE):
    """``comfy.model_base.BaseModel`` whose ``diffusion_model`` is acestep_core's transformer.

    Flow matching (ModelType.FLOW: the network predicts the velocity, x0 = x - sigma * v), timestep
    = 1000 * sigma, shift 3 by default (ModelSamplingSD3 replaces it)."""

    def __init__(self, model_config: AceStepModelConfig, device=None):
        # BaseModel.__init__ builds the network: unet_model(**unet_config, device, operations) with
        # the operations it picks from the unet_config's dtype and the manual-cast dtype (or the
        # config's custom_operations). ACEStep.__init__ is skipped because it names ComfyUI's own
        # network as unet_model.
        comfy.model_base.BaseModel.__init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW,
                                            device=device, unet_model=AceStepDiffusionModel)
        self.diffusion_model.compute_dtype = self.manual_cast_dtype
        self.speaker_embedding_dim = self.diffusion_model.config.speaker_embedding_dim

    def get_dtype(self):
        """The weights' dtype (the compute dtype is ``manual_cast_dtype`` when it differs)."""
        return self.diffusion_model.proj_in.early_conv_layers[0].weight.dtype

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


def make_model_patcher(source, weight_dtype: torch.dtype, compute_dtype: torch.dtype | None = None,
                       config=None) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI from the transformer weights of a checkpoint (``source``: an
    acestep_core ComponentSource).

    ``weight_dtype`` is how the weights are held, ``compute_dtype`` what the model computes in
    when that differs (ComfyUI's manual cast: each layer casts its weight at use). The model is
    built the way ComfyUI builds its own (model_config.get_model -> BaseModel.__init__ ->
    unet_model(**unet_config, operations)), then given the weights; they stay on the offload
    device until a sampler needs them."""
    from acestep_core.loading import assign_weights, infer_config
    config = config or infer_config(source)
    compute = None if compute_dtype in (None, weight_dtype) else compute_dtype
    model_config = AceStepModelConfig({"audio_model": "ace", "acestep_config": config})
    model_config.set_inference_dtype(weight_dtype, compute)
    offload = mm.unet_offload_device()
    model = model_config.get_model({}, device=offload)
    assign_weights(model.diffusion_model, source, weight_dtype, "cpu")
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)

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

    bytes_per_frame = DECODE_BYTES_PER_FRAME   # activations per latent frame (float32), for the window size

    def __init__(self, codec, dtype: torch.dtype | None = None):
        self.codec = codec
        self.first_stage_model = self._first_stage_model(codec).eval()
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
        self.pad_channel_value = None
        self.audio_sample_rate = SAMPLE_RATE   # what ComfyUI >= 0.20's audio nodes read
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

    @staticmethod
    def _first_stage_model(codec) -> nn.Module:
        """The module the VAE's ModelPatcher moves between devices."""
        return _CodecModules(codec.dcae, codec.vocoder)

    # ---- sizes -------------------------------------------------------------------------------
    def _request_frames(self, dtype) -> int:
        return self.window_frames or window_frames_for_budget(CPU_WINDOW_BUDGET, dtype, self.overlap_frames,
                                                              self.bytes_per_frame)

    def _window(self) -> int:
        """Latent frames processed at once: as set, else what a share of the free memory allows,
        on the CPU at most CPU_WINDOW_BUDGET (RAM that looks free is shared with everything else,
        and a bounded window keeps an encode's or decode's peak flat in the song's length and
        the time to react to Cancel short)."""
        if self.window_frames:
            return self.window_frames
        budget = mm.get_free_memory(self.device) * CUDA_FREE_MEMORY_SHARE
        if torch.device(self.device).type != "cuda":
            budget = min(budget, CPU_WINDOW_BUDGET)
        return window_frames_for_budget(budget, self.vae_dtype, self.overlap_frames, self.bytes_per_frame)

    def _load(self, memory_required: float):
        mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)

    # ---- decode ------------------------------------------------------------------------------
    def decode(self, samples_in, vae_options={}):
        latent = _check_latent(samples_in)
        self._load(self.memory_used_decode(latent.shape, self.vae_dtype))
        return self._per_item(latent, lambda one, on_progress: self.codec.decode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress, check=mm.throw_exception_if_processing_interrupted,
        ).movedim(1, -1))                                                  # [1, S, 2]

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.decode(samples)  # decoding is always chunked along time

    # ---- encode ------------------------------------------------------------------------------
    def encode(self, pixel_samples):
        audio = _check_audio(pixel_samples)                                 # [B, 2, S], S % 4096 == 0
        self._load(self.memory_used_encode(audio.shape, self.vae_dtype))
        return self._per_item(audio, lambda one, on_progress: self.codec.encode(
            one, chunk_frames=self._window(), overlap_frames=self.overlap_frames,
            on_progress=on_progress, check=mm.throw_exception_if_processing_interrupted))  # [1, 8, 16, T]

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
    latent = check_latent(samples, "ACE-Step VAE", "from EmptyAceStepLatentAudio or VAEEncodeAudio with this VAE")
    if not torch.isfinite(latent).all():
        raise ValueError("ACE-Step VAE: the latent contains NaN or infinite values (the sampling "
                         "diverged); try bf16/fp32 weights or fewer extreme settings.")
    return latent


def validated_audio(pixel_samples, who: str = "ACE-Step VAE") -> torch.Tensor:
    """An audio tensor as the audio nodes hand it to ``VAE.encode``: [B, S, C] ([B, S] is a batch of
    mono signals), float, finite and not empty; anything else raises an error naming the problem."""
    if not isinstance(pixel_samples, torch.Tensor):
        raise TypeError(f"{who}: expected an audio tensor, got {type(pixel_samples).__name__}.")
    audio = pixel_samples
    if audio.ndim == 2:                       # [B, S]: a batch of mono signals
        audio = audio.unsqueeze(-1)
    if audio.ndim != 3:
        raise ValueError(f"{who}: expected audio shaped [batch, samples, channels], got {list(audio.shape)}.")
    if audio.shape[0] == 0 or audio.shape[1] == 0 or audio.shape[2] == 0:
        raise ValueError(f"{who}: the audio is empty (shape [batch, samples, channels] = {list(audio.shape)}).")
    if not audio.is_floating_point():
        audio = audio.float()
    if not torch.isfinite(audio).all():
        raise ValueError(f"{who}: the audio contains NaN or infinite samples; fix or re-export the input file.")
    return audio


def _check_audio(pixel_samples) -> torch.Tensor:
    """[B, S, C] waveform at 44.1 kHz -> [B, 2, S'] float32 with S' a multiple of 4096.

    Mono is duplicated to both channels; with more than two channels the first two (front
    left / right in the usual layouts) are used. The end is zero-padded to whole latent frames,
    as the original ACE-Step does (ComfyUI's own VAE crops instead), so nothing is lost and audio
    shorter than one frame (4096 samples, 93 ms) still encodes to one frame."""
    audio = validated_audio(pixel_samples)
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
           "make_model_patcher", "make_clip", "make_vae", "build_component", "pick_operations"]
