"""Attention layers of the ACE-Step diffusion transformer: rotary position tables, the ReLU linear
self-attention (Sana's "LiteLA") and the softmax cross-attention to the text/lyric context.

Tensor layout inside these layers is [batch, sequence, heads, head_dim] (B, S, H, D): it is what a
Linear gives after a free ``unflatten``, and it turns back into [B, S, H*D] for ``to_out`` without a
copy. Parameter names follow the released checkpoint (``to_q``, ``to_out.0``, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as layer_ops

# Added to the linear-attention denominator, as in the reference (it only matters for all-zero
# rows, e.g. masked positions, where it turns 0/0 into 0).
LINEAR_ATTENTION_EPS = 1e-15


# ---------------------------------------------------------------------------------------------
# Rotary position embedding, with the released model's pairing quirk
# ---------------------------------------------------------------------------------------------
def rope_tables(length: int, head_dim: int, theta: float, device=None, dtype=torch.float32):
    """``(cos, sin_signed)``, each float32 [length, 1, head_dim], for ``apply_rope``.

    Frequencies are ``theta ** (-2k / head_dim)``, k < head_dim / 2, laid out "half split": column
    c of the table uses frequency index ``c mod head_dim/2``. The rotation in ``apply_rope`` pairs
    neighbouring columns (2m, 2m+1) instead, so column pairs do not share one frequency. The model
    was trained this way; it is kept on purpose.

    The tables are rounded to the activation ``dtype`` (the reference casts them before use, so a
    bf16 model sees bf16-rounded cos/sin) and returned in float32 because the rotation is
    computed in float32.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(length, device=device, dtype=torch.int64).float()
    angles = torch.outer(positions, inv_freq)          # [S, D/2]
    angles = torch.cat((angles, angles), dim=-1)        # [S, D], column c -> frequency c mod D/2
    cos = angles.cos().to(dtype).float()
    sin = angles.sin().to(dtype).float()
    # rotate_pairs(x)[2m] = -x[2m+1] and [2m+1] = +x[2m]; apply_rope uses swap_pairs(x), so the
    # minus sign of the even columns is folded into the sine table.
    sign = torch.tensor([-1.0, 1.0], device=device).repeat(head_dim // 2)
    return cos[:, None, :], (sin * sign)[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., S, H, D] (tables [S, 1, D]) or [..., S, D] (tables ``[:, 0]``, [S, D]) by
    position; float32 result.

    out[2m]   = x[2m]   cos[2m]   - x[2m+1] sin[2m]
    out[2m+1] = x[2m+1] cos[2m+1] + x[2m]   sin[2m+1]

    Two products and a sum, as in the reference (comfy/ldm/ace/attention.py,
    ``apply_rotary_emb``): a fused ``addcmul`` rounds once instead of twice and differs in the
    last bit.
    """
    x = x.float()
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2m+1], x[2m]) at (2m, 2m+1)
    return x * cos + swapped * sin_signed


class RopeCache:
    """Rotary tables by (length, device, dtype); a few entries, since a sampling run only ever
    sees the latent length and one or two context lengths."""

    def __init__(self, head_dim: int, theta: float, max_entries: int = 8):
        self.head_dim = head_dim
        self.theta = theta
        self.max_entries = max_entries
        self._tables: dict = {}

    def __call__(self, length: int, device, dtype):
        # Inference-mode tensors cannot enter autograd later, so they are cached separately.
        key = (length, torch.device(device), dtype, torch.is_inference_mode_enabled())
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= self.max_entries:
                self._tables.pop(next(iter(self._tables)))
            tables = rope_tables(length, self.head_dim, self.theta, device, dtype)
            self._tables[key] = tables
        return tables


# ---------------------------------------------------------------------------------------------
# Self-attention: ReLU linear attention
# ---------------------------------------------------------------------------------------------
class LinearSelfAttention(nn.Module):
    """o_t = sum_s v_s (k_s . q_t) / (sum_s k_s . q_t + eps) with q, k = ReLU(RoPE(.)).

    Cost is linear in the sequence length: the keys are summed into a D x D matrix per head once.
    No 1/sqrt(D) scale and no softmax. The attention math runs in float32 whatever the weights.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, device=None, dtype=None, operations=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = ops.Linear(dim, inner, bias=True, device=device, dtype=dtype)
        self.to_k = ops.Linear(dim, inner, bias=True, device=device, dtype=dtype)
        self.to_v = ops.Linear(dim, inner, bias=True, device=device, dtype=dtype)
        self.to_out = nn.ModuleList([ops.Linear(inner, dim, bias=True, device=device, dtype=dtype)])
        # Multiplies the query projection (ERG guidance weakens some blocks this way); 1.0 = off.
        self.query_scale: float = 1.0

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, dim]; rope = (cos, sin_signed) for T positions; mask [B, T], 1 = real frame.

        The operations, their order and the tensor layouts are those of ComfyUI's ACE-Step model
        (comfy/ldm/ace/attention.py, ``CustomLiteLAProcessor2_0.__call__``), so that in float32 the
        result is the same to the bit: heads laid out [B, H, D, T] (q, v) and [B, H, T, D] (k), the
        values padded with a row of ones so that one product ``(v; 1) k`` gives the numerator and
        the denominator sums together, then ``((v; 1) k) q`` and a division by its last row.
        """
        batch, frames, _ = x.shape
        heads, head_dim = self.heads, self.head_dim
        q = self.to_q(x)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        k = self.to_k(x)
        v = self.to_v(x)
        q = q.transpose(1, 2).reshape(batch, heads, head_dim, frames)                    # [B, H, D, T]
        k = k.transpose(1, 2).reshape(batch, heads, head_dim, frames).transpose(-1, -2)  # [B, H, T, D]
        v = v.transpose(1, 2).reshape(batch, heads, head_dim, frames)                    # [B, H, D, T]
        cos, sin_signed = rope[0][:, 0], rope[1][:, 0]                                   # [T, D]
        # Rotated in float32 and rounded back to the activation dtype (a no-op in float32), as there.
        q = apply_rope(q.transpose(-1, -2), cos, sin_signed).to(x.dtype).transpose(-1, -2)
        k = apply_rope(k, cos, sin_signed).to(x.dtype)
        if mask is not None:
            # A padded frame neither attends (q = 0 gives output 0) nor is attended (k = v = 0).
            m = mask.to(device=x.device, dtype=k.dtype)[:, None, :, None]                 # [B, 1, T, 1]
            q = q * m.transpose(-1, -2)
            k = k * m
            v = v * m.transpose(-1, -2)
        q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)    # [B, H, D+1, T]: last row ones
        vk = torch.matmul(v, k)                                     # [B, H, D+1, D]: sum_s (v_s; 1) k_s^T
        out = torch.matmul(vk, q)                                   # [B, H, D+1, T]
        out = out[:, :, :-1] / (out[:, :, -1:] + LINEAR_ATTENTION_EPS)
        out = out.view(batch, heads * head_dim, frames).permute(0, 2, 1)                 # [B, T, H*D]
        return self.to_out[0](out.to(x.dtype))


# ---------------------------------------------------------------------------------------------
# Cross-attention: softmax attention from the latent frames to the context tokens
# ---------------------------------------------------------------------------------------------
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                   transformer_options: dict | None = None) -> torch.Tensor:
    """The default ``attention_function`` of :class:`CrossAttention`: softmax(q k^T / sqrt(D) + mask) v.

    q [B, H, T, D], k and v [B, H, S, D]; ``mask`` None or an additive float mask (0 = attend,
    -inf = not) that broadcasts to [B, H, T, S]; ``transformer_options`` is ComfyUI's dict (or
    None), ignored here. Returns [B, T, H*D], heads side by side.

    This is the contract of ComfyUI's ``optimized_attention(q, k, v, heads, mask=...,
    skip_reshape=True)``, so a caller can hand that in instead (the pack's ComfyUI bridge does:
    ComfyUI's chosen backend, as for its own ACE-Step model).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(-2)


class CrossAttention(nn.Module):
    """Scaled dot-product attention; q gets the latent RoPE, k the context RoPE, v none.

    ``attention_function`` (default :func:`sdpa_attention`, see there for the contract) computes the
    attention itself from the rotated heads. ``add_q_proj``, ``add_k_proj``, ``add_v_proj`` and
    ``to_add_out`` exist in the released weights but no implementation uses them; they are kept
    only so the checkpoint loads strictly.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, device=None, dtype=None,
                 operations=None, attention_function=None):
        super().__init__()
        ops = layer_ops.resolve(operations)
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.attention_function = attention_function or sdpa_attention
        self.to_q = ops.Linear(dim, inner, bias=True, device=device, dtype=dtype)
        self.to_k = ops.Linear(context_dim, inner, bias=True, device=device, dtype=dtype)
        self.to_v = ops.Linear(context_dim, inner, bias=True, device=device, dtype=dtype)
        self.add_k_proj = ops.Linear(context_dim, inner, bias=True, device=device, dtype=dtype)
        self.add_v_proj = ops.Linear(context_dim, inner, bias=True, device=device, dtype=dtype)
        self.add_q_proj = ops.Linear(context_dim, inner, bias=True, device=device, dtype=dtype)
        self.to_out = nn.ModuleList([ops.Linear(inner, dim, bias=True, device=device, dtype=dtype)])
        self.to_add_out = ops.Linear(inner, dim, bias=True, device=device, dtype=dtype)
        self.query_scale: float = 1.0

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope_x, rope_context,
                context_mask: torch.Tensor | None = None, latent_mask: torch.Tensor | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """x [B, T, dim], context [B, S, context_dim]; masks [B, S] / [B, T] with 1 = keep;
        ``transformer_options`` is handed to the attention function.

        A padded latent frame (latent mask 0), or a frame whose context is fully masked, gets a
        zero attention output: the reference builds an all -inf score row there, which
        PyTorch's softmax attention turns into 0 (other backends into NaN). (With a latent mask
        but no context mask the reference hands the [B, T] mask to SDPA as if it were a score
        mask and fails; here the padded frames are simply zeroed the same way.)
        """
        shape = (self.heads, self.head_dim)
        q = self.to_q(x)
        if self.query_scale != 1.0:
            q = q * self.query_scale
        q = apply_rope(q.unflatten(-1, shape), *rope_x).to(x.dtype)
        k = apply_rope(self.to_k(context).unflatten(-1, shape), *rope_context).to(x.dtype)
        v = self.to_v(context).unflatten(-1, shape)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, D] views

        score_mask = keep_row = None
        if context_mask is not None:
            keep_key = (context_mask != 0).to(x.device)                      # [B, S]
            keep_row = keep_key.any(dim=-1, keepdim=True)                    # [B, 1]
            # Additive, as the reference builds it (0 where kept, -inf elsewhere); one row for
            # every frame and head.
            score_mask = torch.zeros(keep_key.shape, device=x.device, dtype=q.dtype)
            score_mask = score_mask.masked_fill_(~keep_key, float("-inf"))[:, None, None, :]  # [B, 1, 1, S]
        if latent_mask is not None:
            keep_frame = (latent_mask != 0).to(x.device)                     # [B, T]
            keep_row = keep_frame if keep_row is None else keep_row & keep_frame
        out = self.attention_function(q, k, v, score_mask, transformer_options=transformer_options)
        out = out.to(x.dtype)                                                 # [B, T, H*D]
        if keep_row is not None:
            out = torch.where(keep_row[:, :, None], out, 0.0)                 # also clears NaN rows
        return self.to_out[0](out)
