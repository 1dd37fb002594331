"""The ACE-Step v1 diffusion transformer (Sana-style linear DiT over audio latents).

    latent x [B, 8, 16, T], timestep t in [0, 1000] (= 1000 sigma), context -> velocity [B, 8, 16, T]

``encode`` builds the cross-attention context ``[speaker (1), tags (L_text), lyrics (L_lyr)]``;
``decode`` runs the 24 blocks over the T latent frames (the 16 rows are one patch):

    h = PatchEmbed(x)                                   [B, T, 2560]
    per block, with (shift, scale, gate) x 2 from adaLN-single:
        h += gate1 * LinearSelfAttn(RMSNorm(h) * (1 + scale1) + shift1)
        h += CrossAttn(h, context)                      (no norm, no gate)
        h += gate2 * GLUConvFFN(RMSNorm(h) * (1 + scale2) + shift2)
    y = Linear(RMSNorm(h) * (1 + scale) + shift)        -> unpatchify

Parameter names are exactly those of the released checkpoint (ComfyUI's single file with the
``model.diffusion_model.`` prefix removed), so a module built on the meta device loads with
``load_state_dict(sd, strict=True, assign=True)``. Weights stay in the dtype they were built in;
activations are cast to that dtype on entry, and the attention math runs in float32.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as layer_ops
from ..config import ConfigError, LyricEncoderConfig, TransformerConfig
from ..patching import BLOCK_NAME, BLOCK_TYPE, attention_replacement
from .attention import CrossAttention, LinearSelfAttention, RopeCache
from .lyric_encoder import LyricEncoder

TIMESTEP_CHANNELS = 256
RMS_EPS = 1e-6
PATCH_HIDDEN_PER_CHANNEL = 256  # the patch conv widens in_channels to in_channels * 256
PATCH_NORM_GROUPS = 32
# Channel blocks of the feed-forward's depthwise conv: about this many elements per block, and
# never fewer channels than FF_MIN_BLOCK_CHANNELS. Small on the CPU (2 MiB float32 temporaries,
# cache-sized); on a GPU large enough that a 30 s song takes one block (kernel launches cost more
# there) while a 4 min one is split instead of holding float32 copies of the widest tensor.
FF_BLOCK_ELEMENTS_CPU = 1 << 19
FF_BLOCK_ELEMENTS_GPU = 1 << 23
FF_MIN_BLOCK_CHANNELS = 256


def timestep_sinusoid(t: torch.Tensor, channels: int = TIMESTEP_CHANNELS, max_period: float = 10000.0) -> torch.Tensor:
    """[B] -> [B, channels] float32: ``[cos(t f_k), sin(t f_k)]``, f_k = max_period^(-k/half)."""
    half = channels // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def _is_one(value) -> bool:
    return isinstance(value, (int, float)) and value == 1.0


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        self.linear_1 = ops.Linear(in_channels, dim, device=device, dtype=dtype)
        self.linear_2 = ops.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class GLUConvFeedForward(nn.Module):
    """Sana's GLUMBConv over the time axis: 1x1 conv -> SiLU -> depthwise conv (k=3) ->
    value * SiLU(gate) -> 1x1 conv. The depthwise conv mixes neighbouring frames.

    Two paths: :meth:`forward_reference_order`, the reference's own steps (chosen with
    ``reference_order``, which the ComfyUI bridge sets), and :meth:`forward_fast`, the default of
    the core: it works on [B, T, channels] throughout, the 1x1 convs as plain matrix products on
    the rows and the depthwise conv as three shifted multiply-adds along T in float32 (so bf16
    models do not round between the taps), on blocks of channels written straight into the
    half-width gated result, so the only full-width tensor is the expanded activation itself (a
    CPU depthwise conv would also copy it twice into a blocked layout).
    """

    def __init__(self, dim: int, hidden: int, device=None, dtype=None, operations=None, reference_order: bool = False):
        super().__init__()
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        self.reference_order = reference_order
        # ModuleDicts give the checkpoint names ``inverted_conv.conv.weight`` etc.
        self.inverted_conv = nn.ModuleDict({"conv": ops.Conv1d(dim, 2 * hidden, 1, bias=True, **kw)})
        self.depth_conv = nn.ModuleDict({"conv": ops.Conv1d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden,
                                                            bias=True, **kw)})
        self.point_conv = nn.ModuleDict({"conv": ops.Conv1d(hidden, dim, 1, bias=False, **kw)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference_order:
            return self.forward_reference_order(x)
        return self.forward_fast(x)

    def forward_reference_order(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's own steps (ComfyUI ``GLUMBConv.forward``, comfy/ldm/ace/attention.py;
        the upstream ``music_dcae`` Sana block): the three convs called as layers on ``[B, C, T]``,
        SiLU after the first, chunk, ``value * SiLU(gate)``. Float32 results are bit-equal to the
        reference's; on the CPU the 1x1 convs cost 2-3x the matrix products of :meth:`forward_fast`
        (measured at the released width, 3 s latent, batch 2), and the expanded activation is held
        whole."""
        h = F.silu(self.inverted_conv["conv"](x.transpose(1, 2)))
        value, gate = torch.chunk(self.depth_conv["conv"](h), 2, dim=1)
        return self.point_conv["conv"](value * F.silu(gate)).transpose(1, 2)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Fast alternative of :meth:`forward_reference_order` (see the class docstring): the same
        math, summed in another order (within 1e-6 relative of it in float32)."""
        inverted, depth, point = self.inverted_conv["conv"], self.depth_conv["conv"], self.point_conv["conv"]
        h = F.silu(layer_ops.linear(inverted, x), inplace=True)                           # [B, T, 2H]
        batch, frames, width = h.shape
        hidden = width // 2
        taps, bias = layer_ops.cast_weight_bias(depth, h, torch.float32)
        taps = taps.squeeze(1).t()                        # [3, 2H]: taps for t-1, t, t+1
        gated = h.new_empty(batch, frames, hidden)
        budget = FF_BLOCK_ELEMENTS_CPU if h.device.type == "cpu" else FF_BLOCK_ELEMENTS_GPU
        block = max(FF_MIN_BLOCK_CHANNELS, budget // (batch * frames))
        for start in range(0, hidden, block):
            stop = min(start + block, hidden)
            value, gate = (_depthwise3(h[..., c], taps[:, c], bias[c])
                           for c in (slice(start, stop), slice(hidden + start, hidden + stop)))
            gated[..., start:stop] = value.mul_(F.silu(gate, inplace=True))
            del value, gate     # before the next block's are made
        del h
        return layer_ops.linear(point, gated)                                               # [B, T, C]


def _depthwise3(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise conv along T, kernel 3, zero padding 1, in float32: x [B, T, C], taps [3, C],
    bias [C]. y[t] = taps0 x[t-1] + taps1 x[t] + taps2 x[t+1] + bias"""
    y = torch.addcmul(bias, x, taps[1])
    y[:, 1:].addcmul_(x[:, :-1], taps[0])
    y[:, :-1].addcmul_(x[:, 1:], taps[2])
    return y


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, device=None, dtype=None, operations=None,
                 attention_function=None, reference_order: bool = False):
        super().__init__()
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        kw = dict(device=device, dtype=dtype, operations=operations)
        self.attn = LinearSelfAttention(dim, heads, head_dim, **kw)
        self.cross_attn = CrossAttention(dim, dim, heads, head_dim, **kw, attention_function=attention_function)
        self.ff = GLUConvFeedForward(dim, config.mlp_hidden_dim, **kw, reference_order=reference_order)
        # Learned offsets of the six modulation vectors, added to the shared timestep projection.
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, device=device, dtype=dtype) / dim ** 0.5)

    def forward(self, h, temb, context, rope_x, rope_context, latent_mask=None, context_mask=None,
                transformer_options=None):
        """``transformer_options`` (ComfyUI's dict, or None) may carry ``patches_replace`` for the
        self-attention (``"attn1"``) and the cross-attention (``"attn2"``), keyed by the block
        this is (``transformer_options["block"]``), see :func:`attention_replacement`."""
        batch, _, dim = h.shape
        modulation = layer_ops.cast_like(self.scale_shift_table, temb) + temb.view(batch, 6, dim)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=1)  # [B, 1, C]

        # Products and sums unfused, in the reference's order (comfy/ldm/ace/attention.py,
        # LinearTransformerBlock.forward, t2i_modulate): a fused addcmul rounds once instead of
        # twice, and float32 results would differ from ComfyUI's in the last bit.
        n = F.rms_norm(h, (dim,), eps=RMS_EPS) * (1 + scale_msa) + shift_msa
        self_attention = lambda x, context=None, value=None: self.attn(x, rope_x, latent_mask)  # noqa: E731
        patch = attention_replacement(transformer_options, "attn1")
        if patch is None:
            attended = self_attention(n)
        else:
            attended = patch(n, n, n, _patch_options(transformer_options, self.attn, self_attention))
        h = gate_msa * attended + h

        def cross_attention(x, context=context, value=None):
            return self.cross_attn(x, context, rope_x, rope_context, context_mask, latent_mask, transformer_options)
        patch = attention_replacement(transformer_options, "attn2")
        if patch is None:
            h = h + cross_attention(h)
        else:
            h = h + patch(h, context, context, _patch_options(transformer_options, self.cross_attn, cross_attention))
        n = F.rms_norm(h, (dim,), eps=RMS_EPS) * (1 + scale_mlp) + shift_mlp
        return h + gate_mlp * self.ff(n)


def _patch_options(transformer_options, attention: nn.Module, default) -> dict:
    """``extra_options`` of an attention replacement, as ComfyUI builds them (the transformer
    options plus ``n_heads`` / ``dim_head``), with ``original_attention(x, context, value)``: the
    attention the patch replaces, for patches that wrap it."""
    extra = dict(transformer_options)
    extra.update(n_heads=attention.heads, dim_head=attention.head_dim, original_attention=default)
    return extra


class PatchEmbed(nn.Module):
    """Conv (patch, stride patch) -> GroupNorm -> 1x1 conv; [B, C, H, W] -> [B, H/ph * W/pw, dim]."""

    def __init__(self, in_channels: int, dim: int, patch_size, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        hidden = in_channels * PATCH_HIDDEN_PER_CHANNEL
        kw = dict(device=device, dtype=dtype)
        self.early_conv_layers = nn.Sequential(
            ops.Conv2d(in_channels, hidden, kernel_size=tuple(patch_size), stride=tuple(patch_size), bias=True, **kw),
            ops.GroupNorm(PATCH_NORM_GROUPS, hidden, eps=1e-6, affine=True, **kw),
            ops.Conv2d(hidden, dim, kernel_size=1, bias=True, **kw),
        )

    def forward(self, x):
        patchify, norm, project = self.early_conv_layers
        if x.device.type == "cpu" and x.dtype == torch.float32:
            # Float32 on the CPU: the convs as convs, the same operations on the same layout as
            # ComfyUI's own ACE model (comfy/ldm/ace/model.py, PatchEmbed.forward), so the same
            # sums; the matrix-product form below rounds differently in the last bits.
            weight, bias = layer_ops.cast_weight_bias(patchify, x)
            h = norm(F.conv2d(x, weight, bias, stride=patchify.stride))
            weight, bias = layer_ops.cast_weight_bias(project, h)
            return F.conv2d(h, weight, bias).flatten(2).transpose(1, 2)
        ph, pw = patchify.stride
        # The patch conv (kernel = stride) as a matrix product on the patches laid out as rows in
        # the weight's (channel, row, column) order: a CPU bf16 convolution with this kernel
        # allocates a scratch buffer a hundred times the size of its output (and elsewhere a
        # product is as good as a conv).
        patches = x.unfold(2, ph, ph).unfold(3, pw, pw)                       # [B, C, H/ph, W/pw, ph, pw]
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # [B, S, C * ph * pw]
        h = layer_ops.linear(patchify, patches)                               # [B, S, hidden]
        h = norm(h.transpose(1, 2)).transpose(1, 2)                           # GroupNorm wants channels first
        return layer_ops.linear(project, h)                                   # the 1x1 conv, on [B, S, .]


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size, out_channels: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        self.linear = ops.Linear(dim, patch_size[0] * patch_size[1] * out_channels, device=device, dtype=dtype)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim, device=device, dtype=dtype) / dim ** 0.5)

    def forward(self, h, embedded_timestep):
        """Modulated by the timestep embedding *before* ``t_block`` (as in the reference)."""
        table = layer_ops.cast_like(self.scale_shift_table, h)
        shift, scale = (table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        # Unfused, as the reference's t2i_modulate (see TransformerBlock.forward).
        return self.linear(F.rms_norm(h, (h.shape[-1],), eps=RMS_EPS) * (1 + scale) + shift)


def _match_statistics(hidden: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Give ``control`` the per-sample mean/std of ``hidden`` (the reference's ControlNet ``cross_norm``)."""
    dims = (1, 2)
    mean_h, std_h = hidden.mean(dim=dims, keepdim=True), hidden.std(dim=dims, keepdim=True)
    mean_c, std_c = control.mean(dim=dims, keepdim=True), control.std(dim=dims, keepdim=True)
    return (control - mean_c) * (std_h / (std_c + 1e-12)) + mean_h


class AceStepTransformer(nn.Module):
    """``operations`` (default: plain torch layers, see acestep_core.ops), ``dtype`` (how the
    weights are stored) and ``device`` as ComfyUI's models take them. ``compute_dtype``: the
    activation dtype when it differs from the weights' (the operations must then cast each
    weight at use, as ComfyUI's manual-cast operations do), else None. ``attention_function``:
    the softmax attention of the cross-attention layers (default ``F.scaled_dot_product_attention``;
    contract in :func:`acestep_core.models.attention.sdpa_attention`), e.g. ComfyUI's
    ``optimized_attention`` inside ComfyUI. ``reference_order``: run the feed-forward in the
    reference's own steps (:meth:`GLUConvFeedForward.forward_reference_order`) instead of its
    fast alternative, so that with ComfyUI's operations and attention every op matches ComfyUI's
    ACE model and float32 results are bit-equal to it (the bridge asks for this)."""

    def __init__(self, config: TransformerConfig, device=None, dtype=None, operations=None,
                 compute_dtype: torch.dtype | None = None, attention_function=None, reference_order: bool = False):
        super().__init__()
        if config.lyric_hidden_size != config.lyric_encoder.hidden_size:
            raise ConfigError(f"lyric embedding width {config.lyric_hidden_size} differs from the lyric encoder "
                              f"width {config.lyric_encoder.hidden_size}; ACE-Step uses one width for both")
        self.config = config
        self.compute_dtype = compute_dtype
        ops = layer_ops.resolve(operations)
        kw = dict(device=device, dtype=dtype)
        sub = dict(kw, operations=operations)
        dim = config.inner_dim

        self.transformer_blocks = nn.ModuleList(TransformerBlock(config, **sub, attention_function=attention_function,
                                                                 reference_order=reference_order)
                                                for _ in range(config.num_layers))
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim, **sub)
        self.t_block = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim, **kw))

        self.speaker_embedder = ops.Linear(config.speaker_embedding_dim, dim, **kw)
        self.genre_embedder = ops.Linear(config.text_embedding_dim, dim, **kw)
        self.lyric_embs = ops.Embedding(config.lyric_encoder_vocab_size, config.lyric_hidden_size, **kw)
        self.lyric_encoder = LyricEncoder(config.lyric_encoder, **sub)
        self.lyric_proj = ops.Linear(config.lyric_encoder.hidden_size, dim, **kw)

        # REPA heads (training only: they predict SSL features from a middle block). Unused at
        # inference, built so that the released weights load strictly.
        self.projectors = nn.ModuleList(
            nn.Sequential(ops.Linear(dim, 2 * dim, **kw), nn.SiLU(), ops.Linear(2 * dim, 2 * dim, **kw), nn.SiLU(),
                          ops.Linear(2 * dim, ssl_dim, **kw))
            for ssl_dim in config.ssl_latent_dims)

        self.proj_in = PatchEmbed(config.in_channels, dim, config.patch_size, **sub)
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels, **sub)
        self.rope = RopeCache(config.attention_head_dim, config.rope_theta)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype: ``compute_dtype`` if set, else the weights' dtype."""
        return self.compute_dtype or self.proj_in.early_conv_layers[0].weight.dtype

    # -- ERG hook points --------------------------------------------------------------------
    def attention_modules(self):
        """(self-attention, cross-attention) of every block, for setting ``query_scale``."""
        return [(block.attn, block.cross_attn) for block in self.transformer_blocks]

    # -- conditioning -----------------------------------------------------------------------
    def encode_lyrics(self, lyric_token_idx: torch.Tensor, lyric_mask: torch.Tensor | None = None,
                      device=None) -> torch.Tensor:
        """Token ids [B, L] -> [B, L, inner_dim], computed on ``device`` (default: the ids')."""
        ids = lyric_token_idx if device is None else lyric_token_idx.to(device)
        embeddings = self.lyric_embs(ids).to(self.dtype)   # a manual-cast Embedding keeps 16-bit weights' dtype
        return self.lyric_proj(self.lyric_encoder(embeddings, lyric_mask))

    def encode(self, text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor | None = None,
               speaker_embeds: torch.Tensor | None = None, lyric_token_idx: torch.Tensor | None = None,
               lyric_mask: torch.Tensor | None = None, lyrics_strength=1.0):
        """Cross-attention context [B, 1 + L_text + L_lyr, inner_dim] and its mask (bool, True = attend)
        or None when neither a text nor a lyric mask is given (then nothing is masked, as in ComfyUI).

        ``speaker_embeds`` None means zeros (the released model has no speaker conditioning: the
        token is the embedder's bias). ``lyric_token_idx`` None means no lyric tokens at all.
        Lyric inputs of batch 1 are encoded once and shared by a larger batch. When only one of
        the two masks is given the other part counts as all-real (ComfyUI would skip masking
        unless the text mask is given).
        """
        dtype = self.dtype
        text = self.genre_embedder(text_hidden_states.to(dtype))
        batch, device = text.shape[0], text.device

        if speaker_embeds is None:
            _, bias = layer_ops.cast_weight_bias(self.speaker_embedder, text)
            speaker = bias.expand(batch, 1, -1)                                   # Linear(0) == bias
        else:
            speaker = self.speaker_embedder(speaker_embeds.to(device, dtype)).unsqueeze(1).expand(batch, -1, -1)
        parts = [speaker, text]
        if lyric_token_idx is not None:
            lyrics = self.encode_lyrics(lyric_token_idx, lyric_mask, device)
            if not _is_one(lyrics_strength):
                lyrics = lyrics * lyrics_strength
            parts.append(lyrics.expand(batch, -1, -1))
        context = torch.cat(parts, dim=1)

        if text_attention_mask is None and lyric_mask is None:
            return context, None

        def keep(mask, length):
            if mask is None:
                return torch.ones(batch, length, dtype=torch.bool, device=device)
            return (mask.to(device) != 0).expand(batch, -1)

        masks = [torch.ones(batch, 1, dtype=torch.bool, device=device), keep(text_attention_mask, text.shape[1])]
        if lyric_token_idx is not None:
            masks.append(keep(lyric_mask, lyric_token_idx.shape[-1]))
        return context, torch.cat(masks, dim=1)

    # -- denoiser ---------------------------------------------------------------------------
    def unpatchify(self, y: torch.Tensor, width: int) -> torch.Tensor:
        """[B, S, ph*pw*C] (one patch row) -> [B, C, ph, S*pw], padded/cropped to ``width``."""
        (ph, pw), channels = self.config.patch_size, self.config.out_channels
        batch, seq, _ = y.shape
        out = y.view(batch, seq, ph, pw, channels).permute(0, 4, 2, 1, 3).reshape(batch, channels, ph, seq * pw)
        if out.shape[-1] < width:
            out = F.pad(out, (0, width - out.shape[-1]))
        return out[..., :width]

    def decode(self, x: torch.Tensor, timestep, context: torch.Tensor, context_mask: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None, output_length: int | None = None,
               controlnet_hidden_states: torch.Tensor | None = None, controlnet_scale=1.0,
               transformer_options: dict | None = None) -> torch.Tensor:
        """Velocity [B, C_out, 16, output_length] (default: x's width) in the activation dtype.

        ``timestep`` [B] (or a scalar) is 1000 * sigma; ``attention_mask`` [B, T] marks real frames.
        ``transformer_options`` (ComfyUI's) reaches every block, with ``block`` / ``block_index``
        set for it; ``patches_replace["dit"][("double_block", i)]`` replaces block i (called
        with ``{"img", "txt", "vec", "pe", "transformer_options"}`` and ``{"original_block"}``,
        returning ``{"img": ...}``, as ComfyUI's DiTs do).
        """
        dtype = self.dtype
        x = x.to(dtype)
        context = context.to(x.device, dtype)
        batch = x.shape[0]
        t = torch.as_tensor(timestep, device=x.device).float().reshape(-1).expand(batch)

        embedded_timestep = self.timestep_embedder(timestep_sinusoid(t).to(dtype))  # [B, C]
        temb = self.t_block(embedded_timestep)                                      # [B, 6C]

        h = self.proj_in(x)
        if controlnet_hidden_states is not None:
            h = h + _match_statistics(h, controlnet_hidden_states.to(dtype)) * controlnet_scale

        rope_x = self.rope(h.shape[1], h.device, dtype)
        rope_context = self.rope(context.shape[1], h.device, dtype)
        options = {} if transformer_options is None else transformer_options
        replacements = options.get("patches_replace", {}).get("dit", {})
        for index, block in enumerate(self.transformer_blocks):
            options["block"], options["block_index"], options["block_type"] = (BLOCK_NAME, index), index, BLOCK_TYPE
            replace = replacements.get((BLOCK_NAME, index))
            if replace is None:
                h = block(h, temb, context, rope_x, rope_context, attention_mask, context_mask, options)
                continue

            def original_block(args, block=block):
                img = block(args["img"], args["vec"], args["txt"], args["pe"], rope_context, attention_mask,
                            context_mask, args["transformer_options"])
                return {"img": img}
            h = replace({"img": h, "txt": context, "vec": temb, "pe": rope_x, "transformer_options": options},
                        {"original_block": original_block})["img"]
        for key in ("block", "block_index", "block_type"):
            options.pop(key, None)

        y = self.final_layer(h, embedded_timestep)
        return self.unpatchify(y, x.shape[-1] if output_length is None else output_length)

    def forward(self, x: torch.Tensor, timestep, attention_mask=None, context: torch.Tensor | None = None,
                text_attention_mask=None, speaker_embeds=None, lyric_token_idx=None, lyric_mask=None,
                block_controlnet_hidden_states=None, controlnet_scale=1.0, lyrics_strength=1.0,
                transformer_options: dict | None = None, **kwargs):
        """ComfyUI's call: ``context`` = UMT5 hidden states, ``transformer_options`` handed to
        every block (see ``decode``); other keywords (``control``, ...) are accepted and ignored."""
        return self._forward(x, timestep, attention_mask, context, text_attention_mask, speaker_embeds,
                             lyric_token_idx, lyric_mask, block_controlnet_hidden_states, controlnet_scale,
                             lyrics_strength, transformer_options)

    def _forward(self, x, timestep, attention_mask=None, context=None, text_attention_mask=None,
                 speaker_embeds=None, lyric_token_idx=None, lyric_mask=None, block_controlnet_hidden_states=None,
                 controlnet_scale=1.0, lyrics_strength=1.0, transformer_options=None, **ignored):
        """The model itself; ``forward`` calls it (the ComfyUI bridge runs it through ComfyUI's
        DIFFUSION_MODEL wrappers first). Other keywords ComfyUI passes (``control``) are ignored."""
        ctx, ctx_mask = self.encode(context, text_attention_mask, speaker_embeds, lyric_token_idx, lyric_mask,
                                    lyrics_strength)
        return self.decode(x, timestep, ctx, ctx_mask, attention_mask, x.shape[-1],
                           block_controlnet_hidden_states, controlnet_scale, transformer_options)


# ---------------------------------------------------------------------------------------------
# Config from tensor shapes
# ---------------------------------------------------------------------------------------------
def _require(shapes: Mapping[str, tuple], key: str, what: str) -> tuple:
    if key not in shapes:
        raise ConfigError(f"missing '{key}' ({what}); this is not an ACE-Step v1 transformer state dict")
    return tuple(shapes[key])


def _indices(shapes: Mapping[str, tuple], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in shapes if (m := pattern.match(key))})


def _count_layers(shapes, prefix: str, what: str) -> int:
    found = _indices(shapes, prefix)
    if not found:
        raise ConfigError(f"no '{prefix}N.*' keys ({what}); this is not an ACE-Step v1 transformer state dict")
    if found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        raise ConfigError(f"{what}: '{prefix}N' numbering has gaps (missing {missing[:5]}); the file is incomplete")
    return len(found)


def infer_lyric_encoder_config(shapes: Mapping[str, tuple], prefix: str = "lyric_encoder.") -> LyricEncoderConfig:
    hidden = _require(shapes, prefix + "after_norm.weight", "lyric encoder output norm")[0]
    heads, head_dim = _require(shapes, prefix + "encoders.0.self_attn.pos_bias_u", "lyric attention bias")
    ffn = _require(shapes, prefix + "encoders.0.feed_forward.w_1.weight", "lyric feed-forward")[0]
    if heads * head_dim != hidden:
        raise ConfigError(f"lyric encoder: {heads} heads x {head_dim} != width {hidden}")
    layers = _count_layers(shapes, prefix + "encoders.", "lyric encoder layers")
    return dataclasses.replace(LyricEncoderConfig(), hidden_size=hidden, num_heads=heads, ffn_size=ffn,
                               num_layers=layers)


def infer_transformer_config(shapes: Mapping[str, tuple], json_config: dict | None = None) -> TransformerConfig:
    """Sizes from the tensor shapes (canonical keys, no prefix). The attention head size is not
    visible in any shape: it comes from ``json_config`` (``attention_head_dim``) or is the
    released 128, and the number of heads follows from the width."""
    base = TransformerConfig.from_json_dict(json_config) if json_config else TransformerConfig.released()

    inner = _require(shapes, "transformer_blocks.0.attn.to_q.weight", "first block's query projection")[0]
    head_dim = base.attention_head_dim
    if head_dim <= 0 or inner % head_dim:
        raise ConfigError(f"transformer width {inner} is not a multiple of the attention head size {head_dim} "
                          "(the head size cannot be read from the weights; give it in the config)")

    ff_in = _require(shapes, "transformer_blocks.0.ff.inverted_conv.conv.weight", "first block's feed-forward")
    mlp_hidden = ff_in[0] // 2
    mlp_ratio = base.mlp_ratio
    if int(inner * mlp_ratio) != mlp_hidden:
        mlp_ratio = mlp_hidden / inner
        if int(inner * mlp_ratio) != mlp_hidden:  # float rounding landed just below the integer
            mlp_ratio = (mlp_hidden + 0.5) / inner

    patch_w = _require(shapes, "proj_in.early_conv_layers.0.weight", "patch embedding")
    in_channels, patch = patch_w[1], (patch_w[2], patch_w[3])
    out_features = _require(shapes, "final_layer.linear.weight", "output projection")[0]
    if out_features % (patch[0] * patch[1]):
        raise ConfigError(f"output projection width {out_features} is not a multiple of the patch {patch}")

    vocab, lyric_hidden = _require(shapes, "lyric_embs.weight", "lyric token embedding")
    ssl_dims = tuple(_require(shapes, f"projectors.{i}.4.weight", "REPA projector")[0]
                     for i in _indices(shapes, "projectors."))

    return dataclasses.replace(
        base,
        in_channels=in_channels,
        out_channels=out_features // (patch[0] * patch[1]),
        num_layers=_count_layers(shapes, "transformer_blocks.", "transformer blocks"),
        num_attention_heads=inner // head_dim,
        attention_head_dim=head_dim,
        mlp_ratio=mlp_ratio,
        patch_size=patch,
        speaker_embedding_dim=_require(shapes, "speaker_embedder.weight", "speaker embedder")[1],
        text_embedding_dim=_require(shapes, "genre_embedder.weight", "text (genre) embedder")[1],
        ssl_latent_dims=ssl_dims,
        lyric_encoder_vocab_size=vocab,
        lyric_hidden_size=lyric_hidden,
        lyric_encoder=infer_lyric_encoder_config(shapes),
    )
