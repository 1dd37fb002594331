"""Building blocks shared by every ACE-Step 1.5 transformer: the Qwen3-style attention (per-head
RMSNorm on queries and keys, rotary positions, grouped KV heads, optional bidirectional sliding
window), the SwiGLU MLP and the pre-norm encoder layer used by the lyric / timbre encoders, the
tokenizer's attention pooler and the detokenizer.

Reference: ComfyUI 0.20.1 ``comfy/ldm/ace/ace_step15.py`` (``RotaryEmbedding``, ``apply_rotary_pos_emb``,
``MLP``, ``AceStepAttention``, ``AceStepEncoderLayer``); the official model is
``acestep/models/*/modeling_acestep_v15_*.py`` (Qwen3 attention from ``transformers``).
Module and parameter names equal the released checkpoints' keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as ops_module


# ---------------------------------------------------------------------------------------------
# Rotary position embedding ("rotate half", as Qwen3 / HF Llama)
# ---------------------------------------------------------------------------------------------
def rotary_cos_sin(length: int, head_dim: int, theta: float, like: torch.Tensor):
    """``(cos, sin)`` of shape ``[length, head_dim]`` for positions ``0 .. length-1``, computed in
    float32 and returned in ``like``'s dtype (ComfyUI ``RotaryEmbedding._set_cos_sin_cache``)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=like.device) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    positions = torch.arange(length, dtype=torch.float32, device=like.device)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(like.dtype), angles.sin().to(like.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` is ``[B, heads, L, head_dim]``; cos/sin ``[L, head_dim]``."""
    return x * cos + rotate_half(x) * sin


def _apply_rotary_in_place(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` written into ``x`` (a float32 tensor the caller owns), without building
    ``rotate_half(x)`` and holding a copy of the first half only: ``x1 <- x1 cos1 - x2 sin1``, then
    ``x2 <- x2 cos2 + x1_old sin2`` (cos and sin broadcast against x)."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    first_old = first.clone()
    first.mul_(cos[..., :half]).addcmul_(second, sin[..., :half], value=-1)
    second.mul_(cos[..., half:]).addcmul_(first_old, sin[..., half:])
    return x


# ---------------------------------------------------------------------------------------------
# CPU fast alternatives for the element-wise work around the matrix products
# ---------------------------------------------------------------------------------------------
# A DiT step on the CPU runs the same matrix products as ComfyUI's; what else it costs is the
# element-wise passes around them. There ``F.rms_norm`` is composite (cast up, pow, mean, mul,
# cast back, mul by the weight: one pass over the tensor each) and rotate-half RoPE copies
# (neg, cat). The functions below each state their plain math, which is the reading path (and
# what runs off the CPU, where torch fuses the norm); the fast alternative computes the same
# math in float32 with fewer passes and rounds once at the end (float32: equal to the plain
# path up to summation order; bfloat16: one rounding instead of one per operation).
CPU_FAST_PATHS = True
"""Switch for the fast alternatives below (tests turn it off to compare with the plain math)."""

_PLAIN_RMS_NORMS = tuple(cls for cls in (getattr(nn, "RMSNorm", None), ops_module._RMSNorm) if cls is not None)


def _fast_norm(norm: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``norm`` may be computed by the fast alternative: a plain RMSNorm (torch's, ours or
    a ComfyUI operations subclass of torch's, whose weight arrives through ``cast_weight_bias``)
    on a CPU tensor."""
    return (CPU_FAST_PATHS and x.device.type == "cpu" and isinstance(norm, _PLAIN_RMS_NORMS)
            and norm.eps is not None and len(norm.normalized_shape) == 1)


def _normalized_float32(norm: nn.Module, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps)`` over the last dimension, in float32 (``in_place``: into
    ``x`` itself, allowed for a float32 ``x`` the caller owns)."""
    if x.dtype != torch.float32:      # one cast up (torch's reductions on bfloat16 are slow), then in place
        x, in_place = x.to(torch.float32), True
    squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()
    inverse_rms = squares.div_(x.shape[-1]).add_(norm.eps).rsqrt_()
    return x.mul_(inverse_rms) if in_place else x * inverse_rms


def _norm_weight_float32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    if getattr(norm, "weight", None) is None:
        return None
    weight, _ = ops_module.cast_weight_bias(norm, x, torch.float32)
    return weight


def rms_norm(norm: nn.Module, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None) -> torch.Tensor:
    """``norm(x)``, or with ``scale`` and ``shift`` (``[B, 1, H]``, adaLN) ``norm(x) * (1 + scale) + shift``."""
    if not _fast_norm(norm, x):
        out = norm(x)
        return out if scale is None else torch.addcmul(shift, out, 1 + scale)
    # fast alternative: x * rsqrt(mean(x^2) + eps) * (weight * (1 + scale)) + shift in float32,
    # the weight and the modulation folded into one [B, 1, H] factor, one rounding at the end
    h = _normalized_float32(norm, x)
    factor = _norm_weight_float32(norm, x)
    if scale is not None:
        factor = 1 + scale.float() if factor is None else factor * (1 + scale.float())
    if factor is not None and shift is None:
        h = h.mul_(factor)
    elif factor is not None:        # into h itself unless autograd records (out= is not differentiable)
        h = torch.addcmul(shift.float(), h, factor, **({} if torch.is_grad_enabled() else {"out": h}))
    elif shift is not None:
        h = h.add_(shift.float())
    return h.to(x.dtype)


def _sdpa_groups_kv_heads() -> bool:
    """Whether this torch's SDPA reads grouped KV heads itself (``enable_gqa``, torch >= 2.5)."""
    try:
        q, kv = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


SDPA_GROUPS_KV_HEADS = _sdpa_groups_kv_heads()


def sliding_window_mask(length: int, window: int, device) -> torch.Tensor:
    """Boolean ``[L, L]``: True where key j is visible to query i, i.e. ``|i - j| <= window``
    (bidirectional; ComfyUI ``AceStepAttention.forward`` builds the same as an additive bias with
    ``finfo.min`` outside the window, official ``create_4d_mask``)."""
    index = torch.arange(length, device=device)
    return (index[:, None] - index[None, :]).abs() <= window


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, no biases (ComfyUI ``MLP``; official ``Qwen3MLP``).

    Memory path: long inputs go through in blocks of :attr:`rows_per_block` tokens, so the two
    ``[tokens, intermediate]`` temporaries stay small (the MLP acts on each token independently,
    so the result is the same). 192 rows: a 30 s song's 375 DiT tokens in two blocks; measured on
    the 2-core CPU at the real widths, the DiT's activation peak fell from 29 to 23 MiB (float32)
    for no measurable time (the matrix products stay large).
    """

    rows_per_block = 192

    def __init__(self, hidden_size: int, intermediate_size: int, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        self.gate_proj = ops.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype, device=device)
        self.up_proj = ops.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype, device=device)
        self.down_proj = ops.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype, device=device)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        # down(silu(gate(x)) * up(x)), the activation and the product written into gate(x)
        # (a fresh tensor) instead of two more [tokens, intermediate] temporaries
        gated = F.silu(self.gate_proj(x), inplace=True)
        return self.down_proj(gated.mul_(self.up_proj(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= self.rows_per_block:
            return self._mlp(x)
        out = None
        for start in range(0, rows.shape[0], self.rows_per_block):
            block = self._mlp(rows[start:start + self.rows_per_block])
            if out is None:
                out = block.new_empty(rows.shape[0], block.shape[-1])
            out[start:start + block.shape[0]] = block
        return out.reshape(*x.shape[:-1], out.shape[-1])


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads and per-head RMSNorm on q and k.

    Self-attention (``context`` None) applies the rotary embedding to q and k and, when
    ``sliding_window`` is set, lets query i see only keys with ``|i - j| <= sliding_window``.
    Cross-attention (``context`` given) uses no positions and no mask: neither the official DiT
    nor ComfyUI masks the packed condition sequence.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rms_norm_eps: float = 1e-6, sliding_window: int | None = None,
                 operations=None, dtype=None, device=None):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads do not split into groups of {num_kv_heads} KV heads")
        ops = ops_module.resolve(operations)
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.sliding_window = sliding_window
        self.q_proj = ops.Linear(hidden_size, num_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.k_proj = ops.Linear(hidden_size, num_kv_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.v_proj = ops.Linear(hidden_size, num_kv_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.o_proj = ops.Linear(num_heads * head_dim, hidden_size, bias=False, dtype=dtype, device=device)
        self.q_norm = ops.RMSNorm(head_dim, eps=rms_norm_eps, dtype=dtype, device=device)
        self.k_norm = ops.RMSNorm(head_dim, eps=rms_norm_eps, dtype=dtype, device=device)

    def _heads(self, x: torch.Tensor, proj: nn.Module, heads: int, norm: nn.Module | None,
               rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``proj(x)`` as ``[B, heads, L, head_dim]``, then ``norm`` over head_dim and the rotary
        embedding when given (in that order)."""
        batch, length, _ = x.shape
        x = proj(x).view(batch, length, heads, self.head_dim)
        if norm is not None and _fast_norm(norm, x):
            return self._normed_rotary_fast(x, norm, rotary).transpose(1, 2)
        if norm is not None:
            x = norm(x)                       # RMSNorm over head_dim, before RoPE
        x = x.transpose(1, 2)                 # [B, heads, L, head_dim]
        if rotary is not None:
            x = apply_rotary(x, *rotary)
        return x

    @staticmethod
    def _normed_rotary_fast(x: torch.Tensor, norm: nn.Module, rotary) -> torch.Tensor:
        """Fast alternative of ``apply_rotary(norm(x))`` on ``[B, L, heads, head_dim]`` (the fresh
        projection, ours to overwrite): float32 math, no rotate_half copies, one rounding."""
        h = _normalized_float32(norm, x, in_place=True)
        weight = _norm_weight_float32(norm, x)
        if weight is not None:
            h = h.mul_(weight)
        if rotary is not None:
            cos, sin = (t.to(torch.float32)[:, None, :] for t in rotary)   # [L, 1, head_dim]
            h = _apply_rotary_in_place(h, cos, sin)
        return h.to(x.dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                window_mask: torch.Tensor | None = None, replacement=None,
                extra_options: dict | None = None) -> torch.Tensor:
        """``window_mask``: the caller's :func:`sliding_window_mask` for this length and window,
        to build it once for all layers (made here when needed and not given).

        ``replacement``: a ComfyUI attention replacement (``patches_replace["attn1"/"attn2"]``)
        that computes the attention instead of SDPA, see :meth:`_replaced`; ``extra_options``
        (the transformer options) are handed to it."""
        batch, length, _ = x.shape
        source = x if context is None else context
        rotary = rotary if context is None else None      # positions only in self-attention
        q = self._heads(x, self.q_proj, self.num_heads, self.q_norm, rotary)
        k = self._heads(source, self.k_proj, self.num_kv_heads, self.k_norm, rotary)
        v = self._heads(source, self.v_proj, self.num_kv_heads, None)

        mask = None
        if context is None:
            if self.sliding_window is not None and length > self.sliding_window + 1:
                mask = window_mask if window_mask is not None else sliding_window_mask(
                    length, self.sliding_window, x.device)

        if replacement is not None:
            return self.o_proj(self._replaced(replacement, q, k, v, mask, context is None, extra_options))

        # Grouped KV heads: query head h reads KV head h // (num_heads / num_kv_heads)
        # (ComfyUI ``repeat_interleave(n_rep, dim=1)``).
        group = self.num_heads // self.num_kv_heads
        grouped = group > 1 and SDPA_GROUPS_KV_HEADS   # fast path: SDPA indexes the KV heads, no copies
        if group > 1 and not grouped:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)

        # Fast path: torch's fused kernel for softmax(q k^T / sqrt(head_dim) + mask) v, the same
        # math as ComfyUI's ``optimized_attention`` with its additive window bias.
        if grouped:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(out)


    def _replaced(self, replacement, q, k, v, mask, self_attention: bool, extra_options) -> torch.Tensor:
        """``replacement(q, k, v, extra_options)`` as ComfyUI's UNet calls an attention
        replacement (``comfy/ldm/modules/attention.py`` ``BasicTransformerBlock.forward``): q, k, v
        projected, ``[B, L, heads * head_dim]``, returning ``[B, L_q, heads * head_dim]``, which
        then goes through ``o_proj``. They are what plain attention reads here: q and k after
        their RMSNorm and (self-attention) the rotary embedding, and k, v repeated to one KV head
        per query head, as ComfyUI's ``AceStepAttention`` hands them to ``optimized_attention``,
        so ``optimized_attention(q, k, v, extra_options["n_heads"], mask=extra_options["attn_mask"])``
        reproduces the layer.

        ``extra_options`` adds to the transformer options: ``n_heads``, ``dim_head``, ``n_kv_heads``
        (the checkpoint's KV heads before the repeat); ``sliding_window`` (this self-attention's
        window, None for full attention and for cross-attention); ``attn_mask``: None, or where
        the window hides keys the additive bias ``[1, 1, L, L]`` (0 where ``|i - j| <= window``,
        dtype minimum elsewhere) in q's dtype, as ComfyUI's ``AceStepAttention.forward`` builds it;
        ``original_attention(q, k, v)``: this layer's own attention of such q, k, v (mask included),
        for patches that wrap it.
        """
        batch, heads, length, head_dim = q.shape
        group = heads // k.shape[1]
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)

        def flat(t):                        # [B, heads, L, D] -> [B, L, heads * D]
            return t.transpose(1, 2).reshape(batch, t.shape[2], heads * head_dim)

        def original_attention(q, k, v):
            q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
            return flat(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            bias.masked_fill_(~mask, torch.finfo(q.dtype).min)
            bias = bias[None, None]
        extra = dict(extra_options or {})
        extra.update(n_heads=heads, dim_head=head_dim, n_kv_heads=self.num_kv_heads,
                     sliding_window=self.sliding_window if self_attention else None, attn_mask=bias,
                     original_attention=original_attention)
        return replacement(flat(q), flat(k), flat(v), extra)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``
    (ComfyUI ``AceStepEncoderLayer``; official ``AceStepEncoderLayer``)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, intermediate_size: int,
                 rms_norm_eps: float = 1e-6, sliding_window: int | None = None,
                 operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, head_dim, rms_norm_eps, sliding_window,
                                   operations=operations, dtype=dtype, device=device)
        self.input_layernorm = ops.RMSNorm(hidden_size, eps=rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = ops.RMSNorm(hidden_size, eps=rms_norm_eps, dtype=dtype, device=device)
        self.mlp = SwiGLU(hidden_size, intermediate_size, operations=operations, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(rms_norm(self.input_layernorm, x), rotary=rotary)
        x = x + self.mlp(rms_norm(self.post_attention_layernorm, x))
        return x


class EncoderStack(nn.Module):
    """``embed_tokens`` (Linear with bias) -> layers with RoPE from position 0 -> final ``norm``.
    The lyric and timbre encoders are exactly this (ComfyUI ``AceStepLyricEncoder``,
    ``AceStepTimbreEncoder``)."""

    def __init__(self, in_features: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, intermediate_size: int, rms_norm_eps: float = 1e-6, rope_theta: float = 1e6,
                 sliding_window: int | None = None, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.embed_tokens = ops.Linear(in_features, hidden_size, dtype=dtype, device=device)
        self.norm = ops.RMSNorm(hidden_size, eps=rms_norm_eps, dtype=dtype, device=device)
        # The official encoders alternate like the DiT: a window on even layers, full on odd.
        self.layers = nn.ModuleList(
            EncoderLayer(hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size, rms_norm_eps,
                         sliding_window if index % 2 == 0 else None,
                         operations=operations, dtype=dtype, device=device)
            for index in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(x)
        rotary = rotary_cos_sin(x.shape[1], self.head_dim, self.rope_theta, x)
        for layer in self.layers:
            x = layer(x, rotary)
        return rms_norm(self.norm, x)
