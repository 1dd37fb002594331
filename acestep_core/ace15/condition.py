"""The ACE-Step 1.5 condition encoder (``encoder.*``): caption projector, lyric encoder, timbre
encoder, and the packing of the three into one cross-attention sequence ``[lyric | timbre | text]``.

Reference: ComfyUI 0.20.1 ``comfy/ldm/ace/ace_step15.py`` (``AceStepLyricEncoder``,
``AceStepTimbreEncoder``, ``pack_sequences``, ``AceStepConditionEncoder``); official
``modeling_acestep_v15_turbo.py`` (``AceStepConditionEncoder``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops as ops_module
from .config import ConditionEncoderConfig
from .layers import EncoderStack


def pack_sequences(first: torch.Tensor, second: torch.Tensor, first_mask: torch.Tensor | None,
                   second_mask: torch.Tensor | None):
    """Concatenate along time; when both masks are given, move each row's valid tokens to the
    front (stable, so their order is kept) and return the matching prefix mask. With a mask
    missing it is a plain concatenation and the mask is None (ComfyUI ``pack_sequences``)."""
    joined = torch.cat([first, second], dim=1)
    if first_mask is None or second_mask is None:
        return joined, None
    mask = torch.cat([first_mask, second_mask], dim=1)
    order = mask.argsort(dim=1, descending=True, stable=True)
    joined = torch.gather(joined, 1, order.unsqueeze(-1).expand_as(joined))
    lengths = mask.sum(dim=1)
    packed_mask = torch.arange(joined.shape[1], device=joined.device)[None, :] < lengths[:, None]
    return joined, packed_mask


def unpack_timbre(vectors: torch.Tensor, order_mask: torch.Tensor, batch_size: int | None = None):
    """Group one timbre vector per reference (``vectors [N, H]``) by the batch item each belongs to
    (``order_mask [N]``, the item index of each reference, in order). Returns ``[B, R, H]`` (R = the
    most references any item has; items with fewer get zero vectors) and the ``[B, R]`` mask of real
    entries. ``B`` defaults to N, as ComfyUI's ``unpack_timbre_embeddings`` (with one reference per
    item, ``order_mask = [0, 1, ..., B-1]``)."""
    count = vectors.shape[0]
    batch_size = count if batch_size is None else batch_size
    order_mask = order_mask.long()
    per_item = torch.bincount(order_mask, minlength=batch_size)
    slots = int(per_item.max().item())
    # slot of each reference = how many earlier references went to the same item
    one_hot = F.one_hot(order_mask, batch_size)
    slot = (one_hot.cumsum(0) - 1).gather(1, order_mask[:, None]).squeeze(1)
    grouped = vectors.new_zeros(batch_size, slots, vectors.shape[1])
    grouped[order_mask, slot] = vectors
    mask = torch.zeros(batch_size, slots, dtype=torch.long, device=vectors.device)
    mask[order_mask, slot] = 1
    return grouped, mask


class TimbreEncoder(EncoderStack):
    """Encodes each reference latent ``[N, T_ref, 64]`` and keeps the output at frame 0 as that
    reference's timbre vector. ``special_token`` is in the checkpoints but unused (its prepend is
    commented out in the official code; ComfyUI never reads it)."""

    def __init__(self, config: ConditionEncoderConfig, operations=None, dtype=None, device=None):
        c = config
        super().__init__(c.timbre_hidden_dim, c.hidden_size, c.num_timbre_layers, c.num_heads, c.num_kv_heads,
                         c.head_dim, c.intermediate_size, c.rms_norm_eps, c.rope_theta, c.sliding_window,
                         operations=operations, dtype=dtype, device=device)
        self.special_token = nn.Parameter(torch.empty(1, 1, c.hidden_size, dtype=dtype, device=device))

    def forward(self, references: torch.Tensor, order_mask: torch.Tensor, batch_size: int | None = None):
        if references.dim() == 2:
            references = references.unsqueeze(0)
        encoded = super().forward(references)
        return unpack_timbre(encoded[:, 0, :], order_mask, batch_size)


class ConditionEncoder(nn.Module):
    """``encoder``: ``text_projector`` (Linear, no bias) on the caption's Qwen3 hidden states, the
    lyric encoder on the lyric token embeddings, the timbre encoder on reference latents; packed
    as ``pack(pack(lyric, timbre), text)``."""

    def __init__(self, config: ConditionEncoderConfig, operations=None, dtype=None, device=None):
        super().__init__()
        ops = ops_module.resolve(operations)
        c = self.config = config
        self.text_projector = ops.Linear(c.text_hidden_dim, c.hidden_size, bias=False, dtype=dtype, device=device)
        self.lyric_encoder = EncoderStack(c.text_hidden_dim, c.hidden_size, c.num_lyric_layers, c.num_heads,
                                          c.num_kv_heads, c.head_dim, c.intermediate_size, c.rms_norm_eps,
                                          c.rope_theta, c.sliding_window,
                                          operations=operations, dtype=dtype, device=device)
        self.timbre_encoder = TimbreEncoder(c, operations=operations, dtype=dtype, device=device)

    def forward(self, text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor | None,
                lyric_hidden_states: torch.Tensor, lyric_attention_mask: torch.Tensor | None,
                refer_audio_packed: torch.Tensor, refer_audio_order_mask: torch.Tensor,
                timbre_batch_size: int | None = None):
        """Caption ``[B, S, 1024]``, lyric embeddings ``[B, L, 1024]``, reference latents
        ``[N, T_ref, 64]`` with their item indices ``[N]``. Returns the packed sequence
        ``[B, L + R + S, Henc]`` and its mask (None unless every part has a mask)."""
        text = self.text_projector(text_hidden_states)
        lyric = self.lyric_encoder(lyric_hidden_states)
        timbre, timbre_mask = self.timbre_encoder(refer_audio_packed, refer_audio_order_mask, timbre_batch_size)
        merged, merged_mask = pack_sequences(lyric, timbre, lyric_attention_mask, timbre_mask)
        return pack_sequences(merged, text, merged_mask, text_attention_mask)
