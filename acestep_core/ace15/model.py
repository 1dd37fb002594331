"""The whole ACE-Step 1.5 generation model, as one module with the released checkpoints' tree:
``decoder`` (DiT), ``encoder`` (condition encoder), ``tokenizer``, ``detokenizer`` and
``null_condition_emb``. Its ``forward`` is what a sampler calls at each step, with ComfyUI's
argument names and channels-first latents ``[B, 64, T]`` (ComfyUI 0.20.1
``comfy/ldm/ace/ace_step15.py``, ``AceStepConditionGenerationModel.forward`` / ``prepare_condition``;
the conditions come from ``comfy/model_base.py``, ``ACEStep15.extra_conds``).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .condition import ConditionEncoder
from .config import AUDIO_CODE_PAD_INDEX, Ace15Config, released_2b
from .dit import Ace15DiT
from .tokenizer import AudioDetokenizer, AudioTokenizer


class Ace15Model(nn.Module):
    def __init__(self, config: Ace15Config | None = None, operations=None, dtype=None, device=None):
        super().__init__()
        self.config = config = config or released_2b()
        self.decoder = Ace15DiT(config.dit, operations=operations, dtype=dtype, device=device)
        self.encoder = ConditionEncoder(config.encoder, operations=operations, dtype=dtype, device=device)
        self.tokenizer = AudioTokenizer(config.tokenizer, operations=operations, dtype=dtype, device=device)
        self.detokenizer = AudioDetokenizer(config.tokenizer, operations=operations, dtype=dtype, device=device)
        # Replaces the whole packed condition sequence for the unconditional (CFG) pass.
        self.null_condition_emb = nn.Parameter(torch.empty(1, 1, config.encoder.hidden_size, dtype=dtype, device=device))
        self._reused, self._reuse_limit = None, 0   # see reuse_conditions()

    # -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reuse_conditions(self, entries: int = 4):
        """Within this block, a call whose condition inputs (caption, lyrics, references, codes)
        equal those of an earlier call reuses that call's encoded condition and audio hints instead
        of recomputing them: they do not depend on x or the timestep, so the steps of one sampling
        run need them once (ComfyUI recomputes them at every step). Inputs are compared by value;
        only the last ``entries`` results are kept, and nothing survives the block, so weights
        patched between runs (LoRA) are always seen."""
        outer = self._reused, self._reuse_limit
        self._reused, self._reuse_limit = [], entries
        try:
            yield self
        finally:
            self._reused, self._reuse_limit = outer

    def _reuse(self, kind: str, key: tuple, compute):
        if self._reused is None:
            return compute()
        for entry_kind, entry_key, value in self._reused:
            if entry_kind == kind and _same_inputs(entry_key, key):
                return value
        value = compute()
        self._reused.append((kind, key, value))
        del self._reused[:-self._reuse_limit]
        return value

    # -----------------------------------------------------------------------------------------
    def null_condition(self, text_hidden_states, lyric_hidden_states, refer_audio_order_mask, timbre_batch_size=None):
        """The unconditional condition: ``null_condition_emb`` at every position of a packed
        sequence as long as the encoder's would be (lyric tokens + timbre slots + caption tokens),
        without running the encoder (ComfyUI runs it, then overwrites every value:
        ``enc_hidden[:] = null_condition_emb``)."""
        order = refer_audio_order_mask.long()
        batch = order.shape[0] if timbre_batch_size is None else timbre_batch_size
        slots = int(torch.bincount(order, minlength=batch).max().item())
        length = lyric_hidden_states.shape[1] + slots + text_hidden_states.shape[1]
        null = self.null_condition_emb.to(device=text_hidden_states.device, dtype=text_hidden_states.dtype)
        return null.expand(batch, length, null.shape[-1])

    def hints_from_audio_codes(self, audio_codes: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """5 Hz audio codes ``[B, T5]`` (FSQ indices, e.g. from the 5 Hz LM) -> 25 Hz hints
        ``[B, 5*T5', 64]``. Too few codes for ``frames`` latent frames are padded with index
        35847 first (ComfyUI ``prepare_condition``)."""
        window = self.config.tokenizer.pool_window_size
        needed = math.ceil(frames / window)
        if audio_codes.shape[1] < needed:
            audio_codes = F.pad(audio_codes, (0, needed - audio_codes.shape[1]), value=AUDIO_CODE_PAD_INDEX)
        return self.detokenizer(self.tokenizer.quantizer.get_output_from_indices(audio_codes, dtype=dtype))

    def hints_from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """25 Hz latents ``[B, T, 64]`` -> tokenized to 5 Hz and decoded back ``[B, 5*ceil(T/5), 64]``."""
        quantized, _ = self.tokenizer.tokenize(latents)
        return self.detokenizer(quantized)

    def prepare_condition(self, text_hidden_states, text_attention_mask, lyric_hidden_states, lyric_attention_mask,
                          refer_audio_packed, refer_audio_order_mask, src_latents, chunk_masks, is_covers,
                          precomputed_lm_hints_25Hz=None, audio_codes=None, timbre_batch_size=None,
                          null_condition: bool = False):
        """Time-major inputs. Returns ``(condition [B, S, Henc], condition mask or None,
        context_latents [B, T, 128])``.

        The DiT's source latents: with ``is_covers`` None or True the "LM hints" (from
        ``precomputed_lm_hints_25Hz``, else from ``audio_codes``, else from tokenizing the reference
        latents), with ``is_covers`` False the ``src_latents`` given. ``null_condition``: the
        unconditional (CFG) pass, whose condition is the null embedding at every position of the
        packed sequence (ComfyUI ``replace_with_null_embeds``).
        """
        if null_condition:
            condition, condition_mask = self.null_condition(
                text_hidden_states, lyric_hidden_states, refer_audio_order_mask, timbre_batch_size), None
        else:
            condition, condition_mask = self._reuse(
                "condition",
                (text_hidden_states, text_attention_mask, lyric_hidden_states, lyric_attention_mask,
                 refer_audio_packed, refer_audio_order_mask, timbre_batch_size),
                lambda: self.encoder(text_hidden_states, text_attention_mask, lyric_hidden_states,
                                     lyric_attention_mask, refer_audio_packed, refer_audio_order_mask,
                                     timbre_batch_size))

        frames = src_latents.shape[1]
        if is_covers is None or is_covers is True:
            if precomputed_lm_hints_25Hz is not None:
                hints = precomputed_lm_hints_25Hz
            elif audio_codes is not None:
                dtype = text_hidden_states.dtype
                hints = self._reuse("code hints", (audio_codes, frames, dtype),
                                    lambda: self.hints_from_audio_codes(audio_codes, frames, dtype))
            else:
                hints = self._reuse("latent hints", (refer_audio_packed,),
                                    lambda: self.hints_from_latents(refer_audio_packed))
            src_latents = hints[:, :frames, :]
            if src_latents.shape[1] != frames:
                raise ValueError(f"the audio hints cover {src_latents.shape[1]} latent frames, the latent has {frames}: "
                                 "give reference latents / audio codes at least as long as the latent")
        # (ComfyUI also computes the hints when is_covers is False and then discards them.)
        context_latents = torch.cat([src_latents, chunk_masks.to(src_latents.dtype)], dim=-1)
        return condition, condition_mask, context_latents

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                lyric_embed: torch.Tensor | None = None, refer_audio: torch.Tensor | None = None,
                audio_codes: torch.Tensor | None = None, is_covers=None, replace_with_null_embeds: bool = False,
                refer_audio_order_mask: torch.Tensor | None = None, src_latents: torch.Tensor | None = None,
                chunk_masks: torch.Tensor | None = None, precomputed_lm_hints_25Hz: torch.Tensor | None = None,
                transformer_options: dict | None = None, **kwargs) -> torch.Tensor:
        """One denoising step: velocity ``[B, 64, T]`` for the noisy latent ``x [B, 64, T]`` at flow
        time ``timestep [B]`` in [0, 1].

        ``context`` caption hidden states ``[B, S, 1024]``; ``lyric_embed`` lyric token embeddings
        ``[B, L, 1024]``; ``refer_audio`` reference latents ``[N, 64, T_ref]`` (the silence latent when
        there is no reference; also the source with ``is_covers`` False unless ``src_latents``
        ``[B, 64, T]`` is given); ``audio_codes`` 5 Hz FSQ indices ``[B, T5]``; ``chunk_masks``
        ``[B, 64, T]`` (default ones); ``replace_with_null_embeds`` for the unconditional pass.

        ``refer_audio_order_mask [N]`` says which batch item each reference belongs to; the default
        is one reference per item (``0 .. N-1``), as the official pipeline does. ComfyUI 0.20.1
        passes all zeros, which with a batch of 2 or more gives every reference to item 0 and
        zero vectors to the others; pass zeros to reproduce that.

        ``transformer_options`` (ComfyUI's) goes to the DiT (``Ace15DiT.forward``): attention and
        block replacements; the condition encoder, tokenizer and detokenizer take none.
        """
        if lyric_embed is None or refer_audio is None:
            raise ValueError("ACE-Step 1.5 needs lyric_embed (the lyric token embeddings) and refer_audio "
                             "(reference latents, or the silence latent when there is no reference)")
        x = x.movedim(-1, -2)
        batch = x.shape[0]
        if refer_audio.shape[0] == 1 and batch > 1:
            refer_audio = refer_audio.expand(batch, -1, -1)
        refer_packed = refer_audio.movedim(-1, -2)
        if refer_audio_order_mask is None:
            refer_audio_order_mask = torch.arange(refer_packed.shape[0], device=x.device)
        chunk_masks = torch.ones_like(x) if chunk_masks is None else chunk_masks.movedim(-1, -2)
        if src_latents is None:
            src_latents = refer_packed if is_covers is False else x
        else:
            src_latents = src_latents.movedim(-1, -2)

        condition, _, context_latents = self.prepare_condition(
            context, None, lyric_embed, None, refer_packed, refer_audio_order_mask, src_latents, chunk_masks,
            is_covers, precomputed_lm_hints_25Hz=precomputed_lm_hints_25Hz, audio_codes=audio_codes,
            null_condition=replace_with_null_embeds)

        out = self.decoder(x, timestep, timestep, condition, context_latents, transformer_options)
        return out.movedim(-1, -2)


def _same_inputs(a: tuple, b: tuple) -> bool:
    """Element-wise equality of two argument tuples: tensors by shape, dtype, device and value."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x is y:
                continue
            if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True
