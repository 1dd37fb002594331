"""The lyric encoder: a Conformer-style stack (CosyVoice/WeNet lineage) over lyric token embeddings.

Per layer (pre-norm): ``h += RelPosSelfAttention(LayerNorm(h))`` then ``h += FFN(LayerNorm(h))``
with FFN = Linear -> SiLU -> Linear. No macaron FFN and no convolution module in this model.
Attention is Transformer-XL style: scores = ((q + u) . k + (q + v) . p(i - j)) / sqrt(d), where p
is a learned projection of a sinusoidal encoding of the relative distance i - j, and u, v are
learned per-head biases (``pos_bias_u`` / ``pos_bias_v``).

Parameter names follow the released checkpoint (``embed.out.0``, ``encoders.{j}.self_attn.*``, ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as layer_ops

from ..config import LyricEncoderConfig


def relative_position_table(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Sinusoids of the relative distances L-1, L-2, ..., -(L-1): [1, 2L-1, dim].

    Row r encodes distance ``L-1-r``; channels (2i, 2i+1) hold sin/cos of ``distance * w_i`` with
    ``w_i = 10000^(-2i/dim)`` (ESPnet's "rel_pos_espnet" encoding). Computed in float32, then
    rounded to the activation dtype as the reference does.
    """
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    distances = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    angles = distances[:, None] * freqs[None, :]                       # [2L-1, dim/2]
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return table[None].to(dtype)


def skew_relative_scores(scores: torch.Tensor) -> torch.Tensor:
    """[..., L, 2L-1] scores against distances (L-1 .. -(L-1)) -> [..., L, L] with entry (i, j)
    the score for distance i - j, i.e. column L-1-i+j of row i.

    Row i of the result starts at column L-1-i of row i of the input, and successive rows start
    one step further left: in the flat memory of a contiguous input that is stride 2L-2 per row,
    so the result is a view (no copy). Same values as the reference's pad-and-reshape "rel_shift".
    """
    scores = scores.contiguous()
    length = scores.shape[-2]
    *batch_strides, _, _ = scores.stride()
    return scores.as_strided(
        size=(*scores.shape[:-2], length, length),
        stride=(*batch_strides, 2 * length - 2, 1),
        storage_offset=scores.storage_offset() + length - 1,
    )


class RelPositionSelfAttention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        if hidden_size % heads:
            raise ValueError(f"lyric encoder width {hidden_size} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.linear_q = ops.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.linear_k = ops.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.linear_v = ops.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.linear_out = ops.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.linear_pos = ops.Linear(hidden_size, hidden_size, bias=False, device=device, dtype=dtype)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim, device=device, dtype=dtype))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim, device=device, dtype=dtype))
        # Multiplies the linear_q output (ERG's "weakened lyrics" condition uses 0.01); 1.0 = off.
        self.query_scale: float = 1.0

    def forward(self, x: torch.Tensor, pos_table: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C]; pos_table [1, 2L-1, C]; key_mask [B, L] bool (True = real token) or None."""
        heads = (self.heads, self.head_dim)
        q = self.linear_q(x)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        q = q.unflatten(-1, heads)                                  # [B, L, H, D]
        k = self.linear_k(x).unflatten(-1, heads).transpose(1, 2)   # [B, H, L, D]
        v = self.linear_v(x).unflatten(-1, heads).transpose(1, 2)
        p = self.linear_pos(pos_table).unflatten(-1, heads).transpose(1, 2)  # [1, H, 2L-1, D]

        q_u = (q + layer_ops.cast_like(self.pos_bias_u, q)).transpose(1, 2)   # content term query
        q_v = (q + layer_ops.cast_like(self.pos_bias_v, q)).transpose(1, 2)   # position term query
        # Scores, softmax and weighted sum written out in the reference's order
        # (comfy/ldm/ace/lyric_encoder.py, RelPositionMultiHeadedAttention.forward and
        # forward_attention), so that the float32 result is the same to the bit. At lyric lengths
        # a fused attention kernel saves little: the same time at 80 tokens, ~4% of the encoder
        # at 400 (which itself is small beside the 24 transformer blocks of a model call).
        content = torch.matmul(q_u, k.transpose(-2, -1))                               # [B, H, L, L]
        position = skew_relative_scores(torch.matmul(q_v, p.transpose(-2, -1)))       # [B, H, L, L]
        scores = content.add_(position).div_(math.sqrt(self.head_dim))   # in place: same sums, less memory
        if key_mask is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            # Padded keys get weight 0; a sequence with no real token at all gets weight 0
            # everywhere (its softmax row is NaN before the fill), so its output is 0, never NaN.
            padded = ~key_mask[:, None, None, :]
            weights = torch.softmax(scores.masked_fill_(padded, float("-inf")), dim=-1).masked_fill(padded, 0.0)
        out = torch.matmul(weights, v)                                                  # [B, H, L, D]
        return self.linear_out(out.transpose(1, 2).flatten(-2))


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, ffn_size: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        self.w_1 = ops.Linear(hidden_size, ffn_size, device=device, dtype=dtype)
        self.w_2 = ops.Linear(ffn_size, hidden_size, device=device, dtype=dtype)

    def forward(self, x):
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    def __init__(self, config: LyricEncoderConfig, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        size, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = RelPositionSelfAttention(size, config.num_heads, device=device, dtype=dtype, operations=operations)
        self.feed_forward = FeedForward(size, config.ffn_size, device=device, dtype=dtype, operations=operations)
        self.norm_ff = ops.LayerNorm(size, eps=eps, device=device, dtype=dtype)
        self.norm_mha = ops.LayerNorm(size, eps=eps, device=device, dtype=dtype)

    def forward(self, x, pos_table, key_mask):
        x = x + self.self_attn(self.norm_mha(x), pos_table, key_mask)
        return x + self.feed_forward(self.norm_ff(x))


class _InputProjection(nn.Module):
    """``embed.out``: Linear -> LayerNorm (the reference's dropout slot 2 has no weights)."""

    def __init__(self, input_size: int, hidden_size: int, eps: float, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        self.out = nn.Sequential(ops.Linear(input_size, hidden_size, device=device, dtype=dtype),
                                 ops.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype))

    def forward(self, x):
        return self.out(x)


class LyricEncoder(nn.Module):
    """Lyric token embeddings [B, L, hidden] (+ padding mask [B, L]) -> encodings [B, L, hidden].

    The input width equals ``config.hidden_size`` (the released model: 1024 in and out).
    Attention is bidirectional over the real tokens; padded tokens are never attended to but are
    still encoded (their rows are not zeroed), as in the reference.
    """

    def __init__(self, config: LyricEncoderConfig, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        self.config = config
        size, eps = config.hidden_size, config.layer_norm_eps
        self.embed = _InputProjection(size, size, eps, device=device, dtype=dtype, operations=operations)
        self.encoders = nn.ModuleList(ConformerLayer(config, device=device, dtype=dtype, operations=operations)
                                      for _ in range(config.num_layers))
        self.after_norm = ops.LayerNorm(size, eps=eps, device=device, dtype=dtype)
        self._pos_cache: tuple | None = None  # (key, table): the last length used

    def position_table(self, length: int, device, dtype) -> torch.Tensor:
        key = (length, torch.device(device), dtype, torch.is_inference_mode_enabled())
        if self._pos_cache is None or self._pos_cache[0] != key:
            self._pos_cache = (key, relative_position_table(length, self.config.hidden_size, device, dtype))
        return self._pos_cache[1]

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(embeddings)
        if x.shape[1] == 0:  # no tokens: nothing to attend over
            return x
        x = x * math.sqrt(self.config.hidden_size)
        pos_table = self.position_table(x.shape[1], x.device, x.dtype)
        key_mask = None if mask is None else (mask.to(x.device) != 0)
        for layer in self.encoders:
            x = layer(x, pos_table, key_mask)
        return self.after_norm(x)
