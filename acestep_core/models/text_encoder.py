"""UMT5-base encoder for the style tags, built on ``transformers.UMT5EncoderModel``.

The tags string becomes token ids (``acestep_core.text.tags``), this module turns them into
``last_hidden_state`` [B, L, d_model] (after the final RMS norm), the text context of the
diffusion transformer.

The Hugging Face classes do the math; this wrapper fixes three things:
  * The model is built from our ``TextEncoderConfig`` (never ``from_pretrained``, no hub).
  * State-dict keys are exactly the checkpoint's: ``shared.weight``, ``encoder.block.{n}...``,
    ``encoder.final_layer_norm.weight``. Hugging Face ties ``encoder.embed_tokens`` to ``shared``,
    which would add a second name for the same tensor. We drop ``encoder.embed_tokens`` and look
    the ids up in ``shared`` ourselves, so there is one parameter and one key; loading
    ``shared.weight`` (also with ``assign=True`` into a meta-device module) is all it takes.
  * ``encode(..., query_scale_blocks={8: 0.01, 9: 0.01})`` scales the outputs of the query
    projections of chosen blocks, which is how the original pipeline builds its "ERG" tag
    embedding (a flattened-attention pass used for the unconditional branch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Iterator, Mapping

import torch
from torch import nn

from .. import ops as layer_ops
from ..config import ConfigError, TextEncoderConfig

# Blocks and factor of the original pipeline's ERG tag pass (pipeline_ace_step.py,
# get_text_embeddings_null: tau=0.01 on SelfAttention.q of blocks l_min=8 .. l_max-1=9).
ERG_TAG_QUERY_SCALES = {8: 0.01, 9: 0.01}

_TIED_EMBED_KEY = "encoder.embed_tokens.weight"


def _hf_config(config: TextEncoderConfig):
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        layer_norm_epsilon=config.layer_norm_epsilon,
        feed_forward_proj=config.feed_forward_proj,
        dropout_rate=0.0,  # inference only: train()/eval() must not change the output
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


class TextEncoder(nn.Module):
    """UMT5 encoder stack: ids [B, L] (+ mask) -> last hidden state [B, L, d_model]."""

    def __init__(self, config: TextEncoderConfig, device=None, dtype=None, operations=None):
        super().__init__()
        from transformers import UMT5EncoderModel

        self.config = config
        device_context = torch.device(device) if device is not None else contextlib.nullcontext()
        with device_context:
            hf_model = UMT5EncoderModel(_hf_config(config))
        if operations is not None:
            _use_operations(hf_model, layer_ops.resolve(operations))
        # Keep the two parts we need as our own children: their parameter names are then the
        # checkpoint's. The stack's own embedding (a tied alias of `shared`) is removed.
        self.shared = hf_model.shared
        self.encoder = hf_model.encoder
        self.encoder.embed_tokens = None
        if dtype is not None:
            self.to(dtype=dtype)
        # A file written by transformers may carry the tied alias as well; accept and drop it.
        self._register_load_state_dict_pre_hook(_drop_tied_embedding)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.block

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] long; attention_mask [B, L] (1 = token, 0 = padding) or None."""
        embeddings = self.shared(input_ids)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeddings.device)
        out = self.encoder(inputs_embeds=embeddings, attention_mask=attention_mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @contextlib.contextmanager
    def scaled_queries(self, query_scale_blocks: Mapping[int, float] | None) -> Iterator[None]:
        """Within the block, the query projection output of block ``n`` is multiplied by
        ``query_scale_blocks[n]`` (temporary forward hooks, removed on exit)."""
        handles = []
        try:
            for index, scale in (query_scale_blocks or {}).items():
                if not 0 <= index < len(self.blocks):
                    raise IndexError(f"block {index} does not exist: the text encoder has "
                                     f"{len(self.blocks)} blocks")
                query = self.blocks[index].layer[0].SelfAttention.q
                handles.append(query.register_forward_hook(_scale_output_hook(float(scale))))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               query_scale_blocks: Mapping[int, float] | None = None) -> torch.Tensor:
        """``forward`` with optional query scaling, e.g. ``ERG_TAG_QUERY_SCALES``."""
        with self.scaled_queries(query_scale_blocks):
            return self(input_ids, attention_mask)


def _use_operations(module: nn.Module, ops) -> None:
    """Replace the Linear and Embedding layers that transformers built with ``ops``' classes of
    the same shape, device and dtype (new modules, before any weight is loaded: the Hugging Face
    classes take no layer factory). Their norms stay: they are transformers' own modules."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            layer = ops.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                               device=child.weight.device, dtype=child.weight.dtype)
        elif type(child) is nn.Embedding:
            layer = ops.Embedding(child.num_embeddings, child.embedding_dim, padding_idx=child.padding_idx,
                                  device=child.weight.device, dtype=child.weight.dtype)
        else:
            _use_operations(child, ops)
            continue
        setattr(module, name, layer)


def _scale_output_hook(scale: float):
    def hook(module, inputs, output):
        return output * scale
    return hook


def _drop_tied_embedding(state_dict, prefix, local_metadata, strict, missing_keys,
                         unexpected_keys, error_msgs):
    tied = prefix + _TIED_EMBED_KEY
    shared = prefix + "shared.weight"
    if tied in state_dict:
        alias = state_dict.pop(tied)
        state_dict.setdefault(shared, alias)


# ---------------------------------------------------------------------------------------------
# Config from tensor shapes
# ---------------------------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.")


def infer_text_encoder_config(shapes: Mapping[str, tuple], json_config: dict | None = None) -> TextEncoderConfig:
    """TextEncoderConfig from state-dict shapes (canonical keys), starting from ``json_config``
    (a Hugging Face umt5 config.json) when given. Sizes the shapes reveal always win:
    vocab and d_model from ``shared.weight`` [vocab, d_model]; the number of blocks from the
    keys; buckets and heads from ``relative_attention_bias`` [buckets, heads]; d_kv from the
    query projection [heads * d_kv, d_model]; d_ff from ``wi_0`` [d_ff, d_model]."""
    config = TextEncoderConfig.from_json_dict(json_config) if json_config else TextEncoderConfig.released()

    def need(key: str) -> tuple:
        if key not in shapes:
            raise ConfigError(f"the text encoder weights lack '{key}' (not a UMT5 encoder state dict)")
        return tuple(shapes[key])

    vocab_size, d_model = need("shared.weight")
    need("encoder.final_layer_norm.weight")
    blocks = sorted({int(m.group(1)) for key in shapes if (m := _BLOCK_RE.match(key))})
    if not blocks:
        raise ConfigError("the text encoder weights have no 'encoder.block.{n}.*' keys")
    if blocks != list(range(len(blocks))):
        raise ConfigError(f"the text encoder blocks are not numbered 0..{len(blocks) - 1} (found {blocks})")
    attention = "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = need(attention + "relative_attention_bias.weight")
    inner_dim, _ = need(attention + "q.weight")
    if inner_dim % heads:
        raise ConfigError(f"query projection width {inner_dim} is not a multiple of the {heads} heads")
    gated_key = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    if gated_key not in shapes:
        raise ConfigError(f"the text encoder weights lack '{gated_key}': ACE-Step's UMT5 uses a gated "
                          "feed-forward (wi_0, wi_1, wo)")
    d_ff, _ = shapes[gated_key]
    feed_forward = config.feed_forward_proj if config.feed_forward_proj.startswith("gated-") else "gated-gelu"
    return dataclasses.replace(
        config, vocab_size=int(vocab_size), d_model=int(d_model), num_layers=len(blocks),
        num_heads=int(heads), relative_attention_num_buckets=int(buckets), d_kv=int(inner_dim) // int(heads),
        d_ff=int(d_ff), feed_forward_proj=feed_forward)


__all__ = ["TextEncoder", "infer_text_encoder_config", "ERG_TAG_QUERY_SCALES"]
