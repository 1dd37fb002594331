"""The ACE-Step 1.5 audio tokenizer (25 Hz latents -> 5 Hz FSQ codes, ``tokenizer.*``) and
detokenizer (5 Hz codes -> 25 Hz "LM hints", ``detokenizer.*``).

Tokenizer: ``audio_acoustic_proj`` (64 -> H) on each latent frame, an attention pooler over each
group of 5 frames (a learned token prepended, its output kept), then a residual FSQ with a 6-d
codebook (levels 8,8,8,5,5,5: 64000 codes). Detokenizer: each 5 Hz vector repeated 5 times plus
5 learned per-position tokens, two encoder layers per group, ``proj_out`` back to 64 channels.

Reference: ComfyUI 0.20.1 ``comfy/ldm/ace/ace_step15.py`` (``AttentionPooler``, ``FSQ``,
``ResidualFSQ``, ``AceStepAudioTokenizer``, ``AudioTokenDetokenizer``); the official model uses
``vector_quantize_pytorch.ResidualFSQ`` (``modeling_acestep_v15_turbo.py``, ``AceStepAudioTokenizer``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as ops_module
from .config import AudioTokenizerConfig
from .layers import EncoderLayer, rotary_cos_sin


class ResidualFSQ(nn.Module):
    """Finite scalar quantisation, residual over ``num_quantizers`` stages (``tokenizer.quantizer``).

    Only ``project_in`` (H -> len(levels)) and ``project_out`` (len(levels) -> H) have weights;
    the codebook is implicit: per dimension d with L_d levels, a value z maps to the integer
    ``q_d = floor((L_d - 1) * (tanh(z) + 1) / 2 + 0.5)`` in ``0 .. L_d-1`` and to the code value
    ``q_d * 2 / (L_d - 1) - 1`` in [-1, 1]; the index is ``sum_d q_d * basis_d`` with
    ``basis = cumprod([1, L_0, L_1, ...])``. Stage i works on the residual scaled by ``L^-i``.
    """

    def __init__(self, hidden_size: int, levels, num_quantizers: int = 1, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        self.levels = tuple(int(level) for level in levels)
        self.num_quantizers = num_quantizers
        basis, step = [], 1
        for level in self.levels:
            basis.append(step)
            step *= level
        self.basis = tuple(basis)
        self.project_in = ops.Linear(hidden_size, len(self.levels), dtype=dtype, device=device)
        self.project_out = ops.Linear(len(self.levels), hidden_size, dtype=dtype, device=device)

    def _levels(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=like.dtype, device=like.device)

    def _stage_scale(self, stage: int, like: torch.Tensor) -> torch.Tensor:
        # ComfyUI ``ResidualFSQ.scales``: levels.float() ** -stage, then cast
        return (torch.tensor(self.levels, dtype=torch.float32, device=like.device) ** -stage).to(like.dtype)

    def quantize_stage(self, z: torch.Tensor):
        """One FSQ stage: ``(code values in [-1, 1], integer index)`` (ComfyUI ``FSQ.bound``,
        ``FSQ.codes_to_indices``). The index is summed in integers, so it is exact in any dtype."""
        levels_minus_1 = self._levels(z) - 1
        bracket = levels_minus_1 * (torch.tanh(z) + 1) / 2.0 + 0.5
        level_index = bracket.floor()
        codes = (2.0 / levels_minus_1) * level_index - 1.0
        basis = torch.tensor(self.basis, dtype=torch.int64, device=z.device)
        indices = (level_index.to(torch.int64) * basis).sum(dim=-1).to(torch.int32)
        return codes, indices

    def forward(self, x: torch.Tensor):
        """``x [..., H]`` -> ``(quantized [..., H], indices [..., num_quantizers] int32)``."""
        x = self.project_in(x)
        # soft clamp to (-c, c), c = 1 + 1/(L-1): tanh(x / c) * c  (ComfyUI ``bound_hard_clamp``)
        levels = torch.tensor(self.levels, dtype=torch.float32, device=x.device)
        clamp = (1 + 1 / (levels - 1)).to(x.dtype)
        x = torch.tanh(x / clamp) * clamp
        quantized = torch.zeros_like(x)
        residual = x
        all_indices = []
        for stage in range(self.num_quantizers):
            scale = self._stage_scale(stage, x)
            codes, indices = self.quantize_stage(residual / scale)
            stage_out = codes * scale
            residual = residual - stage_out
            quantized = quantized + stage_out
            all_indices.append(indices)
        return self.project_out(quantized), torch.stack(all_indices, dim=-1)

    def codes_from_indices(self, indices: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """The summed code values (before ``project_out``) of ``indices [..., num_quantizers]``
        (or ``[B, T]`` for one quantizer)."""
        if indices.dim() == 2:
            indices = indices.unsqueeze(-1)
        levels = torch.tensor(self.levels, dtype=torch.int64, device=indices.device)
        basis = torch.tensor(self.basis, dtype=torch.int64, device=indices.device)
        total = None
        for stage in range(self.num_quantizers):
            index = indices[..., stage].long().unsqueeze(-1)
            level_index = (index // basis) % levels
            # ComfyUI's implicit codebook: computed in float32, then cast
            codes = (level_index.float() * (2.0 / (levels.float() - 1)) - 1.0).to(dtype)
            codes = codes * self._stage_scale(stage, codes)
            total = codes if total is None else total + codes
        return total

    def get_output_from_indices(self, indices: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Decode code indices (e.g. the 5 Hz LM's audio codes) to ``[..., H]``; the method name
        is the official / ComfyUI one."""
        return self.project_out(self.codes_from_indices(indices, dtype))


class AttentionPooler(nn.Module):
    """Summarises each group of ``P`` frames ``[B, T5, P, H]`` into one vector ``[B, T5, H]``:
    ``embed_tokens``, prepend ``special_token``, encoder layers (RoPE over the P+1 positions),
    ``norm``, keep position 0."""

    def __init__(self, config: AudioTokenizerConfig, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = self.config = config
        self.embed_tokens = ops.Linear(c.hidden_size, c.hidden_size, dtype=dtype, device=device)
        self.norm = ops.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.special_token = nn.Parameter(torch.empty(1, 1, c.hidden_size, dtype=dtype, device=device))
        self.layers = nn.ModuleList(
            EncoderLayer(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.rms_norm_eps,
                         operations=operations, dtype=dtype, device=device)
            for _ in range(c.num_pooler_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, size, width = x.shape
        x = self.embed_tokens(x)
        special = self.special_token.to(x).expand(batch, groups, 1, width)
        x = torch.cat([special, x], dim=2).reshape(batch * groups, size + 1, width)
        rotary = rotary_cos_sin(size + 1, self.config.head_dim, self.config.rope_theta, x)
        for layer in self.layers:
            x = layer(x, rotary)
        return self.norm(x)[:, 0, :].reshape(batch, groups, width)


class AudioTokenizer(nn.Module):
    """``tokenizer``: 25 Hz latents ``[B, T, 64]`` -> 5 Hz quantized vectors and FSQ indices."""

    def __init__(self, config: AudioTokenizerConfig, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = self.config = config
        self.audio_acoustic_proj = ops.Linear(c.audio_channels, c.hidden_size, dtype=dtype, device=device)
        self.attention_pooler = AttentionPooler(c, operations=operations, dtype=dtype, device=device)
        self.quantizer = ResidualFSQ(c.hidden_size, c.fsq_levels, c.num_quantizers,
                                     operations=operations, dtype=dtype, device=device)

    def forward(self, grouped: torch.Tensor):
        """``grouped [B, T5, P, 64]`` -> ``(quantized [B, T5, H], indices [B, T5, num_quantizers])``."""
        return self.quantizer(self.attention_pooler(self.audio_acoustic_proj(grouped)))

    def tokenize(self, latents: torch.Tensor):
        """``latents [B, T, 64]``; T is zero-padded to a multiple of the pool window (ComfyUI
        ``AceStepAudioTokenizer.tokenize``; the official code pads with silence-latent frames)."""
        batch, frames, channels = latents.shape
        window = self.config.pool_window_size
        if frames % window:
            latents = F.pad(latents, (0, 0, 0, window - frames % window))
        return self.forward(latents.reshape(batch, -1, window, channels))


class AudioDetokenizer(nn.Module):
    """``detokenizer``: 5 Hz vectors ``[B, T5, H]`` -> 25 Hz latents ``[B, 5*T5, 64]``."""

    def __init__(self, config: AudioTokenizerConfig, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = self.config = config
        self.embed_tokens = ops.Linear(c.hidden_size, c.hidden_size, dtype=dtype, device=device)
        self.special_tokens = nn.Parameter(torch.empty(1, c.pool_window_size, c.hidden_size, dtype=dtype, device=device))
        self.layers = nn.ModuleList(
            EncoderLayer(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, 1e-6,
                         operations=operations, dtype=dtype, device=device)
            for _ in range(c.num_detokenizer_layers))
        self.norm = ops.RMSNorm(c.hidden_size, eps=c.detokenizer_norm_eps, dtype=dtype, device=device)
        self.proj_out = ops.Linear(c.hidden_size, c.audio_channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, width = x.shape
        window = self.config.pool_window_size
        x = self.embed_tokens(x)
        x = x.unsqueeze(2).expand(batch, groups, window, width) + self.special_tokens.to(x).unsqueeze(0)
        x = x.reshape(batch * groups, window, width)
        rotary = rotary_cos_sin(window, self.config.head_dim, self.config.rope_theta, x)
        for layer in self.layers:
            x = layer(x, rotary)
        x = self.proj_out(self.norm(x))
        return x.reshape(batch, groups * window, -1)
