"""The ACE-Step 1.5 diffusion transformer (``decoder.*`` in the released checkpoints).

Input: the noisy latent ``x_t`` and the context latents ``[src latents | chunk mask]``, time-major
``[B, T, 64]`` each at 25 Hz, concatenated to 192 channels and patched 2 -> 1 in time by a
Conv1d. Each layer: adaLN-modulated self-attention (even layers: bidirectional 128-token window,
odd layers: full), unmodulated cross-attention to the packed condition sequence, adaLN-modulated
SwiGLU MLP. Output: the flow velocity ``[B, T, 64]`` (ConvTranspose1d back to 25 Hz).

Reference: ComfyUI 0.20.1 ``comfy/ldm/ace/ace_step15.py`` (``TimestepEmbedding``, ``AceStepDiTLayer``,
``AceStepDiTModel``); official ``acestep/models/turbo/modeling_acestep_v15_turbo.py`` (``AceStepDiTModel``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as ops_module
from ..patching import BLOCK_NAME, BLOCK_TYPE, attention_replacement, block_replacements
from .config import DiTConfig
from .layers import Attention, SwiGLU, rms_norm, rotary_cos_sin, sliding_window_mask


def sinusoid(t: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(args), sin(args)]`` with ``args = scale * t * exp(-ln(max_period) * k / (dim/2))``,
    ``k = 0 .. dim/2-1``; float32 math, returned in ``t``'s dtype (ComfyUI uses
    ``comfy/ldm/flux/layers.py`` ``timestep_embedding(t, 256, time_factor=1000)``)."""
    t = scale * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding.to(t.dtype) if t.is_floating_point() else embedding


class TimestepEmbedding(nn.Module):
    """``temb = linear_2(silu(linear_1(sinusoid(1000 t))))`` ``[B, H]`` and the six modulation
    vectors ``time_proj(silu(temb))`` ``[B, 6, H]``."""

    def __init__(self, in_channels: int, hidden_size: int, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        self.in_channels = in_channels
        self.linear_1 = ops.Linear(in_channels, hidden_size, dtype=dtype, device=device)
        self.linear_2 = ops.Linear(hidden_size, hidden_size, dtype=dtype, device=device)
        self.time_proj = ops.Linear(hidden_size, hidden_size * 6, dtype=dtype, device=device)

    def forward(self, t: torch.Tensor, dtype: torch.dtype):
        temb = self.linear_2(F.silu(self.linear_1(sinusoid(t, self.in_channels).to(dtype))))
        modulation = self.time_proj(F.silu(temb)).view(-1, 6, temb.shape[-1])
        return temb, modulation


class DiTLayer(nn.Module):
    """One DiT block (ComfyUI ``AceStepDiTLayer.forward``):

    - ``x += self_attn(norm(x) * (1 + scale) + shift) * gate``
    - ``x += cross_attn(norm(x), condition)``          (no modulation)
    - ``x += mlp(norm(x) * (1 + c_scale) + c_shift) * c_gate``

    with ``(shift, scale, gate, c_shift, c_scale, c_gate) = scale_shift_table + time modulation``.
    """

    def __init__(self, config: DiTConfig, sliding_window: int | None, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = config
        self.self_attn_norm = ops.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.self_attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps,
                                   sliding_window, operations=operations, dtype=dtype, device=device)
        self.cross_attn_norm = ops.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.cross_attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps,
                                    None, operations=operations, dtype=dtype, device=device)
        self.mlp_norm = ops.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.mlp = SwiGLU(c.hidden_size, c.intermediate_size, operations=operations, dtype=dtype, device=device)
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, c.hidden_size, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, time_modulation: torch.Tensor, condition: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor], window_mask: torch.Tensor | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """``transformer_options`` (ComfyUI's, or None) may replace the self-attention
        (``patches_replace["attn1"]``) and the cross-attention (``"attn2"``) of the block named
        ``transformer_options["block"]`` (see :mod:`acestep_core.patching`); what a replacement
        receives: :meth:`~acestep_core.ace15.layers.Attention._replaced`."""
        self_replacement = attention_replacement(transformer_options, "attn1")
        cross_replacement = attention_replacement(transformer_options, "attn2")
        modulation = self.scale_shift_table.to(time_modulation) + time_modulation      # [B, 6, H]
        shift, scale, gate, c_shift, c_scale, c_gate = modulation.chunk(6, dim=1)      # each [B, 1, H]
        # (torch.addcmul(a, b, c) = a + b * c in one pass: the fast form of the lines below)

        # h = norm(x) * (1 + scale) + shift;  x = x + self_attn(h) * gate
        h = rms_norm(self.self_attn_norm, x, scale, shift)
        attended = self.self_attn(h, rotary=rotary, window_mask=window_mask, replacement=self_replacement,
                                  extra_options=transformer_options)
        del h
        x = torch.addcmul(x, attended, gate)          # a new tensor: the caller's x is left as it was
        del attended

        # x = x + cross_attn(norm(x), condition)    (in place from here on: x is this call's own)
        x += self.cross_attn(rms_norm(self.cross_attn_norm, x), context=condition, replacement=cross_replacement,
                             extra_options=transformer_options)

        # h = norm(x) * (1 + c_scale) + c_shift;  x = x + mlp(h) * c_gate
        h = rms_norm(self.mlp_norm, x, c_scale, c_shift)
        return x.addcmul_(self.mlp(h), c_gate)


class Ace15DiT(nn.Module):
    """``decoder``: ComfyUI ``AceStepDiTModel``. Inputs are time-major ``[B, T, C]``."""

    def __init__(self, config: DiTConfig, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = self.config = config
        # The Sequential's index 0 is a placeholder so the weights are named proj_in.1.* /
        # proj_out.1.* as in the checkpoints (the official module has a transpose there).
        self.proj_in = nn.Sequential(nn.Identity(), ops.Conv1d(
            c.in_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size, dtype=dtype, device=device))
        self.time_embed = TimestepEmbedding(c.timestep_dim, c.hidden_size, operations, dtype, device)
        self.time_embed_r = TimestepEmbedding(c.timestep_dim, c.hidden_size, operations, dtype, device)
        self.condition_embedder = ops.Linear(c.condition_size, c.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            DiTLayer(c, c.sliding_window if c.layer_uses_sliding_window(i) else None, operations, dtype, device)
            for i in range(c.num_layers))
        self.norm_out = ops.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.proj_out = nn.Sequential(nn.Identity(), ops.ConvTranspose1d(
            c.hidden_size, c.audio_channels, kernel_size=c.patch_size, stride=c.patch_size, dtype=dtype, device=device))
        self.scale_shift_table = nn.Parameter(torch.empty(1, 2, c.hidden_size, dtype=dtype, device=device))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, timestep_r: torch.Tensor,
                encoder_hidden_states: torch.Tensor, context_latents: torch.Tensor,
                transformer_options: dict | None = None) -> torch.Tensor:
        """``hidden_states`` x_t ``[B, T, 64]``; ``context_latents`` ``[B, T, 128]``
        (src latents | chunk mask); ``encoder_hidden_states`` the packed condition ``[B, S, Henc]``;
        ``timestep`` and ``timestep_r`` ``[B]`` in [0, 1] (inference: ``timestep_r = timestep``).
        Returns the velocity ``[B, T, 64]``.

        ``transformer_options`` (ComfyUI's; ComfyUI 0.20.1's own ``AceStepDiTModel`` takes none)
        reaches every layer as a copy made once per call, with ``block = ("double_block", i)``,
        ``block_index = i``, ``total_blocks`` and ``block_type = "double"`` set for layer i, as
        ComfyUI's DiTs set them (see :mod:`acestep_core.patching`).
        ``patches_replace["dit"][("double_block", i)]`` replaces layer i: it is called with
        ``{"img": x [B, T/2, H], "txt": the embedded condition [B, S, H], "vec": the time
        modulation [B, 6, H], "pe": the rotary (cos, sin), "transformer_options"}`` and
        ``{"original_block": fn}`` (fn takes such a dict and returns ``{"img": ...}``) and returns
        ``{"img": ...}``.
        """
        dtype = hidden_states.dtype
        temb_t, mod_t = self.time_embed(timestep, dtype)
        temb_r, mod_r = self.time_embed_r(timestep - timestep_r, dtype)
        temb = temb_t + temb_r
        time_modulation = mod_t + mod_r

        x = torch.cat([context_latents, hidden_states], dim=-1)
        frames = x.shape[1]
        remainder = frames % self.config.patch_size
        if remainder:  # zero-pad the time axis to whole patches; cropped again at the end
            x = F.pad(x, (0, 0, 0, self.config.patch_size - remainder))
        # [B, T/2, H], made contiguous once: as a transposed view of the convolution's output the
        # residual stream would keep channel-first strides through every layer (element-wise ops
        # keep their input's layout), and each projection of it would copy its weight for a bmm
        x = self.proj_in(x.transpose(1, 2)).transpose(1, 2).contiguous()

        condition = self.condition_embedder(encoder_hidden_states)
        rotary = rotary_cos_sin(x.shape[1], self.config.head_dim, self.config.rope_theta, x)
        window_mask = None
        if x.shape[1] > self.config.sliding_window + 1:   # one window mask for all sliding layers
            window_mask = sliding_window_mask(x.shape[1], self.config.sliding_window, x.device)
        if transformer_options:
            x = self._patched_layers(x, time_modulation, condition, rotary, window_mask, transformer_options)
        else:
            for layer in self.layers:
                x = layer(x, time_modulation, condition, rotary, window_mask)

        # The output modulation uses temb ([B, H], after linear_2), not the six-way projection.
        shift, scale = (self.scale_shift_table.to(temb) + temb.unsqueeze(1)).chunk(2, dim=1)
        x = rms_norm(self.norm_out, x, scale, shift)         # norm_out(x) * (1 + scale) + shift
        x = self.proj_out(x.transpose(1, 2)).transpose(1, 2)
        return x[:, :frames]

    def _patched_layers(self, x, time_modulation, condition, rotary, window_mask, transformer_options):
        """The layers with ComfyUI's transformer options (see :meth:`forward`)."""
        options = dict(transformer_options)      # the caller's dict is left as it was
        options["total_blocks"] = len(self.layers)
        options["block_type"] = BLOCK_TYPE
        replacements = block_replacements(options)
        for index, layer in enumerate(self.layers):
            options["block"], options["block_index"] = (BLOCK_NAME, index), index
            replace = replacements.get((BLOCK_NAME, index))
            if replace is None:
                x = layer(x, time_modulation, condition, rotary, window_mask, options)
                continue

            def original_block(args, layer=layer):
                return {"img": layer(args["img"], args["vec"], args["txt"], args["pe"], window_mask,
                                     args["transformer_options"])}
            x = replace({"img": x, "txt": condition, "vec": time_modulation, "pe": rotary,
                         "transformer_options": options}, {"original_block": original_block})["img"]
        return x
