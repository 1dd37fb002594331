"""The ACE-Step 1.5 planner: the Qwen3 "5 Hz language model" that writes a song's missing metadata
and then one audio code per 200 ms for the DiT to read as hints.

Model: ``transformers``' ``Qwen3ForCausalLM`` built from a config read off the tensor shapes
(0.6B / 1.7B / 4B, or any other size), its weights assigned as the file stores them (no dtype
conversion, no copy). Loading accepts the planner inside Comfy-Org's all-in-one checkpoint
(``text_encoders.qwen3_2b.transformer.`` / ``qwen3_4b``), the split ComfyUI text-encoder files
(``text_encoders/qwen_1.7b_ace15.safetensors`` / ``qwen_4b_ace15``: HF names under ``model.``) and
the official ``acestep-5Hz-lm-*`` folders (HF names, with or without ``model.``; ComfyUI has no slot
for the 0.6B one, this loader takes it like the others).

Generation reproduces ComfyUI 0.20.1 (``comfy/text_encoders/ace15.py``,
``sample_manual_loop_no_classes`` / ``generate_audio_codes``): the conditional and unconditional
prompts left-padded with ``<|endoftext|>`` to one length and run as one batch, positions counted
from the first (padded) slot, CFG ``uncond + cfg * (cond - uncond)`` on the logits, only the 64000
audio codes allowed, then top-k, min-p (relative to the top probability), top-p (the token that
crosses ``top_p`` kept), ``/ temperature`` and one multinomial draw from a ``torch.Generator``
seeded with the seed; exactly ``5 * ceil(duration)`` codes. ``torch.multinomial`` with one sample
is ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn over the whole vocabulary row
(``aten/src/ATen/native/Distributions.cpp``, ``multinomial``), so drawing that same ``q`` and
taking the argmax over the audio-code slice gives ComfyUI's token for the same seed while the
logits are only computed for the allowed tokens.

Where metadata is missing, a metadata pass first (the official ``llm_inference.py`` phase 1
under ``MetadataConstrainedLogitsProcessor``; ComfyUI 0.20.1 has no such pass) writes the
thinking block field by field from the grammar in :mod:`.planner_grammar`; fields the user set
are injected, never sampled, and come back unchanged.

Speed: a preallocated KV cache, cond + uncond in one batch, logits only for the allowed tokens
(64000 codes instead of the 217204-row vocabulary, a handful of tokens while writing metadata),
forced tokens of the grammar fed in one forward pass, one host sync per token (the token id,
which the progress callback and the grammar need anyway). The residual stream, norms, attention
and sampling are float32. On a CUDA device the codes pass decodes through one recorded CUDA graph
(:class:`_GraphedDecodeStep` around :meth:`Planner._decode_step`, the step with fixed shapes).

Matrix products (``products``, :data:`PRODUCTS`): ``float32`` computes each one in float32 on the
stored 16-bit weights, cast block by block into one scratch buffer (:func:`acestep_core.ops.linear_upcast`;
no float32 copy of any weight is kept). That is ComfyUI's arithmetic on the CPU, where its loader
holds the planner in fp16 and ``comfy.ops.manual_cast`` casts every weight to float32 for every
product: bf16 and fp16 hold the released weights' values alike, so the logits agree to float32
rounding and the codes are ComfyUI's for the same seed. ``weight_dtype`` computes them in the
weights' own dtype (bf16), several times faster on a CPU with bf16 instructions, but the logits
then differ in the third digit and a draw soon lands on another code than ComfyUI's (after 27 of
300 at the real 1.7B size). ``auto``, the default, is ``float32`` on the CPU (users who compare
with ComfyUI get its codes) and ``weight_dtype`` on other devices (GPUs compute bf16 products
natively, and ComfyUI's loop computes in bf16 there too where the GPU has it:
``sample_manual_loop_no_classes``'s ``execution_dtype``).
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import ops
from ..ops import UPCAST_MIN_ROWS_OF_INPUT, linear_upcast, small_rows_blocks_exact
from .planner_grammar import (AUDIO_CODE_END, AUDIO_CODE_OFFSET, METADATA_FIELDS, NUM_AUDIO_CODES, PAD_ID,
                              MetadataGrammar, PlannerTokenizer, codes_for_duration,
                              codes_prompts, metadata_prompts, normalize_metadata)

Q_NORM_KEY = "model.layers.0.self_attn.q_norm.weight"
EMBED_KEY = "model.embed_tokens.weight"
LAYOUTS = ("comfyui_aio", "comfyui_text_encoder", "official")
log = logging.getLogger("acestep_core")
MASKED = torch.finfo(torch.float32).min / 4   # ComfyUI's additive attention mask value (llama.py, Llama2_.forward)


class PlannerError(RuntimeError):
    """The planner cannot go on: damaged weights (NaN / inf logits) or an impossible request."""


# --- config ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannerConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True

    @property
    def size_name(self) -> str:
        return {1024: "0.6B", 2048: "1.7B", 2560: "4B"}.get(self.hidden_size, f"custom ({self.hidden_size} wide)")

    def qwen3_config(self):
        from transformers import Qwen3Config
        kwargs = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                      intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                      num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                      head_dim=self.head_dim, max_position_embeddings=self.max_position_embeddings,
                      rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_word_embeddings,
                      attention_bias=False, use_sliding_window=False, hidden_act="silu",
                      pad_token_id=PAD_ID)
        try:   # transformers >= 5 keeps RoPE settings in rope_parameters, 4.x in rope_theta
            return Qwen3Config(**kwargs, rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        except TypeError:
            return Qwen3Config(**kwargs, rope_theta=self.rope_theta)


# The released planners (ComfyUI llama.py Qwen3_2B_ACE15_lm_Config / Qwen3_4B_ACE15_lm_Config;
# the 0.6B one is Qwen3-0.6B's shape with the audio-code vocabulary).
PLANNER_CONFIGS = {
    "0.6B": PlannerConfig(217204, 1024, 3072, 28, 16, 8),
    "1.7B": PlannerConfig(217204, 2048, 6144, 28, 16, 8),
    "4B": PlannerConfig(217204, 2560, 9728, 36, 32, 8),
}


def config_from_state_dict(sd: dict) -> PlannerConfig:
    """The planner's config from its tensor shapes (keys as :func:`planner_state_dict` returns)."""
    for key in (EMBED_KEY, Q_NORM_KEY):
        if key not in sd:
            raise ValueError(f"not a Qwen3 planner state dict: {key} is missing")
    vocab, hidden = sd[EMBED_KEY].shape
    head_dim = sd[Q_NORM_KEY].shape[0]
    num_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    q_out = sd["model.layers.0.self_attn.q_proj.weight"].shape[0]
    k_out = sd["model.layers.0.self_attn.k_proj.weight"].shape[0]
    intermediate = sd["model.layers.0.mlp.gate_proj.weight"].shape[0]
    if vocab < AUDIO_CODE_END:
        raise ValueError(f"this Qwen3 model has {vocab} tokens, no audio codes ({AUDIO_CODE_END} needed): it is a text "
                         "encoder (Qwen3-Embedding), not the 5 Hz planner. Load acestep-5Hz-lm-* / qwen_*_ace15.")
    return PlannerConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_layers=num_layers, num_heads=q_out // head_dim, num_kv_heads=k_out // head_dim,
                         head_dim=head_dim, tie_word_embeddings="lm_head.weight" not in sd)


# --- key layouts -------------------------------------------------------------------------------
def find_planner_prefix(keys, layout: str | None = None, shape_of: Callable | None = None) -> str:
    """The key prefix in front of the planner's HF names ``model.…`` (``""``, ``"model."`` missing
    is reported as ``"-"``) in any of the layouts; among several Qwen3 models (the all-in-one file
    also holds the 0.6B text encoder) the one whose vocabulary has the audio codes."""
    if layout not in (None, "auto", *LAYOUTS):
        raise ValueError(f"unknown planner layout {layout!r}; use one of {', '.join(LAYOUTS)} or None")
    keys = list(keys)
    candidates = []
    for key in keys:
        if key.endswith("layers.0.self_attn.q_norm.weight"):
            stem = key[: -len("layers.0.self_attn.q_norm.weight")]
            if stem.endswith("model."):
                candidates.append(stem[: -len("model.")])
            else:                       # official checkpoints without the model. prefix
                candidates.append(stem + "-")
    if layout == "comfyui_aio":
        candidates = [c for c in candidates if c.startswith("text_encoders.")]
    elif layout in ("comfyui_text_encoder", "official"):
        candidates = [c for c in candidates if c in ("", "-")]
    if not candidates:
        raise ValueError("no Qwen3 planner weights found (no '...layers.0.self_attn.q_norm.weight' key"
                         + (f" in the {layout} layout)" if layout not in (None, "auto") else ")"))
    if shape_of is not None and len(candidates) > 1:
        with_codes = [c for c in candidates if shape_of(_embed_key(c))[0] >= AUDIO_CODE_END]
        candidates = with_codes or candidates
    if len(candidates) > 1:   # the all-in-one file's planner slot names its size; the text encoder is qwen3_06b
        named = [c for c in candidates if "qwen3_06b" not in c]
        candidates = named or candidates
    return candidates[0]


def _embed_key(prefix: str) -> str:
    return prefix[:-1] + "embed_tokens.weight" if prefix.endswith("-") else prefix + EMBED_KEY


def _canonical(key: str, prefix: str) -> str | None:
    if prefix.endswith("-"):
        stem = prefix[:-1]
        if not key.startswith(stem):
            return None
        rest = key[len(stem):]
        return rest if rest == "lm_head.weight" else "model." + rest
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    return rest if rest.startswith("model.") or rest == "lm_head.weight" else None


def planner_state_dict(sd: dict, layout: str | None = None) -> dict:
    """The planner's tensors out of ``sd`` under HF ``Qwen3ForCausalLM`` names (``model.…``,
    ``lm_head.weight`` where the file has an untied head), tensors untouched."""
    prefix = find_planner_prefix(sd.keys(), layout, shape_of=lambda k: sd[k].shape)
    out = {}
    for key, tensor in sd.items():
        name = _canonical(key, prefix)
        if name is not None:
            out[name] = tensor
    return out


def read_planner_state_dict(path, layout: str | None = None, device="cpu") -> dict:
    """Only the planner's tensors from a ``.safetensors`` file (all-in-one or split) or an official
    folder (``model.safetensors`` or sharded ``model-0000x-of-0000y.safetensors``)."""
    from safetensors import safe_open
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors planner weights at {path}")
    handles = [safe_open(os.fspath(f), framework="pt", device=str(device)) for f in files]
    where = {key: h for h in handles for key in h.keys()}
    prefix = find_planner_prefix(where, layout, shape_of=lambda k: where[k].get_slice(k).get_shape())
    out = {}
    for key, handle in where.items():
        name = _canonical(key, prefix)
        if name is not None:
            out[name] = handle.get_tensor(key)
    return out


# --- the model ---------------------------------------------------------------------------------
class _KVCache:
    """Keys and values of every layer for a fixed maximum length, plus each slot's additive mask
    (ComfyUI masks the left padding; everything else is visible, causality is added per call).
    Zero-filled: a fixed-shape decoding step (:meth:`Planner._decode_step`) reads the unwritten
    slots too, masked, and a masked slot must hold a finite number to weigh exactly 0."""

    def __init__(self, config: PlannerConfig, batch: int, max_len: int, device, dtype=torch.float32):
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_bias = torch.zeros(batch, max_len, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len


def record_cuda_graph(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Record ``step`` (no arguments, reads and writes fixed tensors) as a CUDA graph; returns a
    function that replays it and returns the recorded output tensor (overwritten by each replay).
    ``step`` runs once on a side stream first, outside the recording, as ``torch.cuda.graphs``
    asks (lazy initialisation, library workspaces), so it must be safe to run twice."""
    if not torch.cuda.is_available():
        raise PlannerError("CUDA graphs need a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return output
    return replay


class _GraphedDecodeStep:
    """:meth:`Planner._decode_step` recorded once and replayed for every token: a 1.7B planner's
    step at batch 2 is a few hundred small kernels, whose launches bound decoding on a GPU; one
    graph launch replaces them (what ``transformers`` does with a static cache and
    ``torch.compile(mode="reduce-overhead")``). The token and position are copied into the
    recorded input tensors; recording happens at the first call, with that call's inputs, so the
    side-stream run writes the same cache slot the replay then writes again."""

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, device,
                 record: Callable | None = None):
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self._step = step
        self._record = record or record_cuda_graph
        self._replay = None

    def __call__(self, token: torch.Tensor, position: int) -> torch.Tensor:
        self.token.copy_(token)
        self.position.fill_(position)
        if self._replay is None:
            self._replay = self._record(lambda: self._step(self.token, self.position))
        return self._replay()


PRODUCTS = ("auto", "float32", "weight_dtype")
"""How the planner's matrix products are computed: ``float32`` (the weights cast to float32 block
by block, ComfyUI's arithmetic), ``weight_dtype`` (in the weights' own dtype, bf16 in the released
files), ``auto`` (float32 on the CPU, the weights' dtype on other devices)."""


def _lin_float32(x: torch.Tensor, weight: torch.Tensor, exact_small_rows: int | None = None) -> torch.Tensor:
    """x (float32) times a weight stored in 16 bits, as ComfyUI's manual-cast layers on the CPU
    (``comfy.ops.cast_bias_weight`` to float32, then ``F.linear``): the same numbers, with the
    weight cast in cache-sized blocks into one scratch buffer (no float32 copy of the weight).
    ``exact_small_rows``: the decoding batch, when blocks were checked exact for it on this machine."""
    return linear_upcast(x, weight, exact_small_rows=exact_small_rows)


def _lin_weight_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (float32) times the weight in the weight's own dtype, the result back in float32."""
    if weight.dtype == x.dtype:
        return F.linear(x, weight)
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


def resolve_products(products: str | None, device) -> str:
    """``float32`` or ``weight_dtype`` for ``products`` (one of :data:`PRODUCTS`) on ``device``."""
    if products not in PRODUCTS:
        raise ValueError(f"unknown planner products {products!r}; use one of {', '.join(PRODUCTS)}")
    if products == "auto":
        return "float32" if torch.device(device).type == "cpu" else "weight_dtype"
    return products


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class PlanResult:
    """What the planner wrote: the full metadata (the user's fields unchanged, the rest written by
    the model, see ``generated``), the audio codes (0..63999, 5 per second) and the thinking block
    the codes were conditioned on."""
    metadata: dict
    codes: list[int]
    generated: tuple[str, ...] = ()
    thinking: str = ""
    tokens_per_second: float = 0.0
    extra: dict = field(default_factory=dict)

    def metadata_text(self) -> str:
        lines = []
        for key in METADATA_FIELDS:
            if key in self.metadata:
                source = "planner" if key in self.generated else "user"
                lines.append(f"{key}: {self.metadata[key]} ({source})")
        lines.append(f"audio codes: {len(self.codes)}")
        return "\n".join(lines)


class Planner:
    """A loaded planner: ``lm`` is the ``transformers`` ``Qwen3ForCausalLM`` holding the weights."""

    def __init__(self, lm, config: PlannerConfig, products: str = "auto"):
        self.lm = lm
        self.config = config
        resolve_products(products, "cpu")          # checks the name
        self.products = products
        self._rope_cache = None
        self._grammar = {}
        self._blocks_exact = {}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: dict, layout: str | None = None, device=None, products: str = "auto") -> "Planner":
        """From a state dict in any layout (see :func:`planner_state_dict`), weights assigned as
        they are (dtype and device of the tensors given, or moved to ``device``); ``products``
        one of :data:`PRODUCTS`."""
        from transformers import Qwen3ForCausalLM
        sd = planner_state_dict(sd, layout)
        config = config_from_state_dict(sd)
        qcfg = config.qwen3_config()
        with torch.device("meta"):
            lm = Qwen3ForCausalLM(qcfg)
        lm.model.rotary_emb = type(lm.model.rotary_emb)(config=qcfg)   # a real buffer (HF forward, .to())
        expected = set(lm.state_dict().keys())
        missing = sorted(k for k in expected - sd.keys() if k != "lm_head.weight")
        if missing:
            raise ValueError(f"planner weights incomplete: {len(missing)} tensors missing, e.g. {missing[:3]}")
        unexpected = sorted(sd.keys() - expected)
        if unexpected:
            raise ValueError(f"unexpected planner tensors (not a Qwen3 model?): {unexpected[:3]}")
        if device is not None:
            sd = {k: v.to(device) for k, v in sd.items()}
        lm.load_state_dict(sd, strict=False, assign=True)
        if config.tie_word_embeddings:
            lm.lm_head.weight = lm.model.embed_tokens.weight
        lm.eval().requires_grad_(False)
        return cls(lm, config, products)

    @classmethod
    def load(cls, path, layout: str | None = None, device="cpu", products: str = "auto") -> "Planner":
        return cls.from_state_dict(read_planner_state_dict(path, layout, device), layout="official", products=products)

    @property
    def device(self) -> torch.device:
        return self.lm.model.embed_tokens.weight.device

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.lm.model.embed_tokens.weight.dtype

    def grammar(self, tokenizer: PlannerTokenizer) -> MetadataGrammar:
        key = id(tokenizer)
        if key not in self._grammar:
            self._grammar = {key: MetadataGrammar(tokenizer)}
        return self._grammar[key]

    # forward -----------------------------------------------------------------------------------
    def _rope(self, end: int):
        """cos / sin for positions [0, end) in float32, as ComfyUI's precompute_freqs_cis."""
        if self._rope_cache is None or self._rope_cache[0].shape[0] < end or self._rope_cache[0].device != self.device:
            length = max(end, 1024)
            d = self.config.head_dim
            inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, d, 2, device=self.device).float() / d))
            freqs = torch.arange(length, device=self.device).float()[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope_cache = (emb.cos(), emb.sin())
        return self._rope_cache

    def _lin(self, products: str | None = None, batch: int | None = None) -> Callable:
        """The matrix product for ``products`` (None: this planner's setting; see :data:`PRODUCTS`).
        With ``batch`` (the rows of one decoding step) float32 products cast in blocks for that
        few rows too, where this machine's product gives the whole cast's numbers for them."""
        chosen = resolve_products(self.products if products is None else products, self.device)
        if chosen != "float32":
            return _lin_weight_dtype
        if batch is None or batch >= UPCAST_MIN_ROWS_OF_INPUT or self.weight_dtype == torch.float32:
            return _lin_float32
        if batch not in self._blocks_exact:
            self._blocks_exact[batch] = small_rows_blocks_exact(self._linear_shapes(), batch, self.device)
        return functools.partial(_lin_float32, exact_small_rows=batch) if self._blocks_exact[batch] else _lin_float32

    def _linear_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of every weight the forward multiplies by; the head as a few blocks' worth of
        its rows (its products are cut into blocks the same way)."""
        layer = self.lm.model.layers[0]
        weights = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
        shapes = [tuple(w.weight.shape) for w in weights]
        hidden = self.config.hidden_size
        return shapes + [(min(NUM_AUDIO_CODES, 3 * max(64, ops.UPCAST_BLOCK_BYTES // (hidden * 4)) + 64), hidden)]

    def _forward(self, embeds: torch.Tensor, cache: _KVCache, lin: Callable | None = None) -> torch.Tensor:
        """Run ``embeds`` [B, S, H] (float32) after what the cache holds; returns the final-norm
        hidden state of the last position [B, H] in float32. ``lin(x, weight)``: the matrix product
        (default: this planner's ``products``)."""
        batch, seq, _ = embeds.shape
        start, end = cache.length, cache.length + seq
        if end > cache.max_len:
            raise PlannerError(f"KV cache overflow ({end} > {cache.max_len})")
        cos_all, sin_all = self._rope(end)
        mask = cache.key_bias[:, None, None, :end]
        if seq > 1:
            causal = torch.full((seq, end), MASKED, device=embeds.device).triu_(start + 1)
            mask = mask + causal

        def store(i, k, v):
            cache.k[i, :, :, start:end] = k
            cache.v[i, :, :, start:end] = v
            return cache.k[i, :, :, :end], cache.v[i, :, :, :end]

        x = self._layers(embeds, cos_all[start:end], sin_all[start:end], mask, store, lin or self._lin())
        cache.length = end
        return self.lm.model.norm(x[:, -1])

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor, cache: _KVCache,
                     lin: Callable) -> torch.Tensor:
        """One decoding step with shapes that never change, for CUDA graphs: ``token`` [B, 1] ids,
        ``position`` a 0-d tensor (the slot it takes, ``cache.length``). Keys and values are
        written at ``position`` and attention reads the whole cache with every later slot masked,
        so nothing here depends on a Python number that changes from step to step. Equals
        :meth:`_forward` on the same token (the masked slots weigh exactly 0; the cache must be
        zero-filled so that unwritten slots hold no NaN). Does not advance ``cache.length``."""
        cos_all, sin_all = self._rope(cache.max_len)
        at = position.view(1)
        later = torch.arange(cache.max_len, device=token.device) > position
        mask = (cache.key_bias + later.to(cache.key_bias.dtype) * MASKED)[:, None, None, :]

        def store(i, k, v):
            cache.k[i].index_copy_(2, at, k)
            cache.v[i].index_copy_(2, at, v)
            return cache.k[i], cache.v[i]

        x = self._layers(self._embed(token), cos_all.index_select(0, at), sin_all.index_select(0, at), mask, store, lin)
        return self.lm.model.norm(x[:, -1])

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                store: Callable, lin: Callable) -> torch.Tensor:
        """The decoder layers on ``x`` [B, S, H] at the positions ``cos`` / ``sin`` belong to;
        ``store(layer_index, k, v)`` puts the new keys and values in the cache and returns the keys
        and values to attend to; ``mask`` is added to the attention scores."""
        cfg = self.config
        batch, seq, _ = x.shape
        groups = cfg.num_heads // cfg.num_kv_heads
        for i, layer in enumerate(self.lm.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_norm(lin(h, attn.q_proj.weight).view(batch, seq, cfg.num_heads, cfg.head_dim)).transpose(1, 2)
            k = attn.k_norm(lin(h, attn.k_proj.weight).view(batch, seq, cfg.num_kv_heads, cfg.head_dim)).transpose(1, 2)
            v = lin(h, attn.v_proj.weight).view(batch, seq, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = store(i, k, v)
            if seq == 1:   # one query per head: group the query heads of each KV head, no KV copies
                out = F.scaled_dot_product_attention(q.reshape(batch, cfg.num_kv_heads, groups, cfg.head_dim),
                                                     keys, values, attn_mask=mask)
                out = out.reshape(batch, 1, cfg.num_heads * cfg.head_dim)
            else:
                out = F.scaled_dot_product_attention(q, keys.repeat_interleave(groups, 1),
                                                     values.repeat_interleave(groups, 1), attn_mask=mask)
                out = out.transpose(1, 2).reshape(batch, seq, cfg.num_heads * cfg.head_dim)
            x = x + lin(out, attn.o_proj.weight)
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            x = x + lin(F.silu(lin(h, mlp.gate_proj.weight)) * lin(h, mlp.up_proj.weight), mlp.down_proj.weight)
        return x

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.model.embed_tokens(ids).float()

    def _head_weight(self) -> torch.Tensor:
        return self.lm.lm_head.weight if not self.config.tie_word_embeddings else self.lm.model.embed_tokens.weight

    def _logits(self, hidden: torch.Tensor, rows, lin: Callable | None = None) -> torch.Tensor:
        """Logits [B, n] of the given vocabulary rows only (a slice, or an index tensor)."""
        weight = self._head_weight()
        weight = weight[rows] if isinstance(rows, slice) else weight.index_select(0, rows)
        return (lin or self._lin())(hidden, weight)

    def _prefill(self, prompts: list[list[int]], new_tokens: int,
                 lin: Callable | None = None) -> tuple[torch.Tensor, _KVCache]:
        """Left-pad the prompts to one length with ``<|endoftext|>`` (masked), run them as one batch
        (ComfyUI ``generate_audio_codes``), return the last hidden states and the cache."""
        length = max(len(p) for p in prompts)
        ids = torch.tensor([[PAD_ID] * (length - len(p)) + list(p) for p in prompts], device=self.device)
        cache = _KVCache(self.config, len(prompts), length + new_tokens, self.device)
        for row, prompt in enumerate(prompts):
            cache.key_bias[row, : length - len(prompt)] = MASKED
        return self._forward(self._embed(ids), cache, lin), cache

    # sampling ----------------------------------------------------------------------------------
    @staticmethod
    def _filter(logits: torch.Tensor, cfg_scale, top_k, top_p, min_p) -> torch.Tensor:
        """CFG and the filters of ComfyUI's ``sample_manual_loop_no_classes`` on the allowed logits
        [B, n] (row 0 conditional, row 1 unconditional); returns one row [1, n]."""
        if cfg_scale != 1.0 and logits.shape[0] > 1:
            cond, uncond = logits[0:1], logits[1:2]
            logits = uncond + cfg_scale * (cond - uncond)
        else:
            logits = logits[0:1].clone()
        remove = torch.finfo(logits.dtype).min
        if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
            kth = torch.topk(logits, int(top_k)).values[..., -1, None]
            logits = logits.masked_fill(logits < kth, remove)
        if min_p is not None and min_p > 0:
            probs = torch.softmax(logits, dim=-1)
            logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, remove)
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
            drop = cumulative > top_p
            drop[..., 1:] = drop[..., :-1].clone()
            drop[..., 0] = False
            logits = logits.masked_fill(drop.scatter(1, order, drop), remove)
        return logits

    @staticmethod
    def _check_finite(values: torch.Tensor, step: int, what: str) -> None:
        """``values``: the last hidden state and the chosen token's filtered logit -- a NaN or inf
        anywhere upstream reaches one of them (the argmax picks a NaN), so checking these few
        numbers instead of the whole logit row is enough."""
        if not bool(torch.isfinite(values).all()):
            raise PlannerError(
                f"the planner produced NaN/inf logits at {what} token {step + 1}: its weights are damaged or "
                "overflow in this dtype (fp16 on some GPUs). Re-download the planner, or load it in bf16/fp32.")

    # generation --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_codes(self, prompt_ids: list[int], negative_ids: list[int] | None, num_codes: int, *,
                       seed: int = 0, cfg_scale: float = 2.0, temperature: float = 0.85, top_p: float = 0.9,
                       top_k: int = 0, min_p: float = 0.0, progress: Callable | None = None,
                       interrupt: Callable | None = None, return_logits: bool = False, products: str | None = None,
                       cuda_graph: bool | None = None):
        """``num_codes`` audio codes (0..63999), token for token what ComfyUI 0.20.1's
        ``generate_audio_codes`` draws for the same prompt ids, seed and settings.

        ``progress(done, total)`` is called after each code, ``interrupt()`` before each forward
        pass (it raises to stop). With ``return_logits`` also returns the per-step CFG input
        logits over the audio codes [steps, B, 64000] (for tests). ``products``: one of
        :data:`PRODUCTS` for this call (default: the planner's). ``cuda_graph``: decode through one
        recorded CUDA graph per generation (:class:`_GraphedDecodeStep`); default on for a CUDA
        device. Should recording fail (a driver or library that refuses it), decoding goes on
        eagerly with a warning; the tokens are the same either way."""
        if num_codes <= 0:
            return ([], torch.empty(0)) if return_logits else []
        use_cfg = cfg_scale != 1.0
        if use_cfg and negative_ids is None:
            raise ValueError("CFG (cfg_scale != 1) needs the unconditional prompt ids")
        prompts = [prompt_ids, negative_ids] if use_cfg else [prompt_ids]
        if interrupt is not None:
            interrupt()
        lin = self._lin(products)
        hidden, cache = self._prefill(prompts, num_codes, lin)
        lin = self._lin(products, batch=len(prompts))   # decoding: one row per prompt
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed))
        codes_rows = slice(AUDIO_CODE_OFFSET, AUDIO_CODE_END)
        vocab = self.config.vocab_size
        codes, kept = [], []
        graphed = None
        if cuda_graph or (cuda_graph is None and self.device.type == "cuda"):
            graphed = _GraphedDecodeStep(lambda token, position: self._decode_step(token, position, cache, lin),
                                         len(prompts), self.device)
        for step in range(num_codes):
            logits = self._logits(hidden, codes_rows, lin).float()
            if return_logits:
                kept.append(logits.clone())
            filtered = self._filter(logits, cfg_scale, top_k, top_p, min_p)
            if temperature > 0:
                probs = torch.softmax(filtered / temperature, dim=-1)
                # torch.multinomial(probs_full_row, 1, generator) == argmax(p / Exp(1) noise over the row)
                noise = torch.empty((1, vocab), device=self.device, dtype=probs.dtype).exponential_(1.0, generator=generator)
                index = torch.argmax(probs / noise[:, codes_rows], dim=-1)
            else:
                index = torch.argmax(filtered, dim=-1)
            self._check_finite(torch.cat([hidden.flatten(), filtered[0, index]]), step, "audio-code")
            code = int(index.item())
            codes.append(code)
            if progress is not None:
                progress(step + 1, num_codes)
            if step + 1 == num_codes:
                break
            if interrupt is not None:
                interrupt()
            token = (index + AUDIO_CODE_OFFSET).view(1, 1).expand(len(prompts), 1)
            if graphed is not None:
                try:
                    hidden = graphed(token, cache.length)
                    cache.length += 1
                    continue
                except Exception as error:   # recording refused: the eager step below gives the same token
                    if graphed._replay is not None:
                        raise
                    log.warning("planner: CUDA graph recording failed (%s); decoding without it", error)
                    graphed = None
            hidden = self._forward(self._embed(token), cache, lin)
        if return_logits:
            return codes, torch.stack(kept)
        return codes

    @torch.inference_mode()
    def generate_metadata(self, tokenizer: PlannerTokenizer, caption: str, lyrics: str, user_metadata: dict, *,
                          seed: int = 0, cfg_scale: float = 2.0, temperature: float = 0.85, top_p: float = 0.9,
                          top_k: int = 0, min_p: float = 0.0, caption_negative: str | None = None,
                          progress: Callable | None = None, interrupt: Callable | None = None,
                          return_tokens: bool = False, products: str | None = None):
        """The metadata pass: every field of :data:`METADATA_FIELDS` as ``name: value`` lines in
        the grammar; the user's fields injected verbatim. Returns all fields as strings/ints (and,
        with ``return_tokens``, the thinking-block token ids the model read and wrote)."""
        grammar = self.grammar(tokenizer)
        cond, uncond = metadata_prompts(caption, lyrics, caption_negative)
        use_cfg = cfg_scale != 1.0
        prompts = [tokenizer.encode(cond)] + ([tokenizer.encode(uncond)] if use_cfg else [])
        user_lines = {k: grammar.user_line(k, math.ceil(float(v)) if k == "duration" else v)
                      for k, v in user_metadata.items() if k in METADATA_FIELDS}
        budget = len(grammar.think_open) + 1 + sum(
            len(user_lines[k]) if k in user_lines else len(t.prefix) + t.depth for k, t in grammar.fields.items())
        if interrupt is not None:
            interrupt()
        lin = self._lin(products)
        hidden, cache = self._prefill(prompts, budget, lin)
        lin = self._lin(products, batch=len(prompts))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(seed))
        pending = list(grammar.think_open)       # forced tokens not yet fed
        result, steps, stream = {}, 0, []

        def feed():
            nonlocal hidden, pending
            stream.extend(pending)
            if interrupt is not None:
                interrupt()
            ids = torch.tensor([pending] * len(prompts), device=self.device)
            hidden = self._forward(self._embed(ids), cache, lin)
            pending = []

        for name in METADATA_FIELDS:
            trie = grammar.fields[name]
            if name in user_metadata:
                pending += user_lines[name]
                result[name] = user_metadata[name]
                continue
            pending += trie.prefix
            node = 0
            while node not in trie.values:
                options = trie.children[node]
                if len(options) == 1:            # forced by the grammar: no model choice
                    token, node = next(iter(options.items()))
                    pending.append(token)
                    continue
                feed()
                candidates = torch.tensor(list(options), device=self.device)
                logits = self._logits(hidden, candidates, lin).float()
                self._check_finite(logits, steps, "metadata")   # a handful of candidates: check them all
                filtered = self._filter(logits, cfg_scale, top_k, top_p, min_p)
                if temperature > 0:
                    probs = torch.softmax(filtered / temperature, dim=-1)
                    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
                    choice = int(torch.argmax(probs / noise, dim=-1).item())
                else:
                    choice = int(torch.argmax(filtered, dim=-1).item())
                token = int(candidates[choice])
                pending.append(token)
                node = options[token]
                steps += 1
                if progress is not None:
                    progress(steps, None)
            value = trie.values[node]
            result[name] = int(value) if value.isdigit() and name != "timesignature" else value
        if return_tokens:
            return result, stream + pending + list(grammar.think_close)
        return result

    def plan(self, tokenizer: PlannerTokenizer, caption: str, lyrics: str = "", metadata: dict | None = None, *,
             seed: int = 0, cfg_scale: float = 2.0, temperature: float = 0.85, top_p: float = 0.9, top_k: int = 0,
             min_p: float = 0.0, generate_codes: bool = True, caption_negative: str | None = None,
             lyrics_negative: str | None = None, progress: Callable | None = None,
             interrupt: Callable | None = None, products: str | None = None) -> PlanResult:
        """Caption, lyrics and the metadata the user set -> complete metadata and audio codes.

        If any of bpm, duration, keyscale, timesignature is missing, the metadata pass writes the
        missing fields (and the language, unless set), as the official pipeline's phase 1 does
        when not all four are given; otherwise the codes pass runs on the user's metadata alone,
        which is exactly ComfyUI's ``TextEncodeAceStepAudio1.5`` prompt."""
        import time
        user = normalize_metadata(metadata)
        settings = dict(seed=seed, cfg_scale=cfg_scale, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                        products=products)
        generated: tuple[str, ...] = ()
        full = dict(user)
        cot_keys = ("bpm", "duration", "keyscale", "timesignature")
        if not all(k in user for k in cot_keys):
            written = self.generate_metadata(tokenizer, caption, lyrics, user, caption_negative=caption_negative,
                                             progress=progress, interrupt=interrupt, **settings)
            generated = tuple(k for k in METADATA_FIELDS if k not in user)
            full = {k: (user[k] if k in user else written[k]) for k in METADATA_FIELDS}
            cot_keys = METADATA_FIELDS       # the official CoT after a metadata pass names the language too
        codes, rate, cond_text = [], 0.0, ""
        if generate_codes:
            cond_text, uncond_text = codes_prompts(caption, lyrics, full, cot_keys, caption_negative, lyrics_negative)
            count = codes_for_duration(full["duration"])
            start = time.perf_counter()
            codes = self.generate_codes(tokenizer.encode(cond_text), tokenizer.encode(uncond_text), count,
                                        progress=progress, interrupt=interrupt, **settings)
            rate = len(codes) / max(time.perf_counter() - start, 1e-9)
        thinking = cond_text.split("<|im_start|>assistant\n", 1)[-1].split("\n\n<|im_end|>", 1)[0] if cond_text else ""
        return PlanResult(metadata=full, codes=codes, generated=generated, thinking=thinking, tokens_per_second=rate)


def load_planner(source, layout: str | None = None, device=None, products: str = "auto") -> Planner:
    """A planner from a state dict, a ``.safetensors`` file or an official folder; ``products``
    one of :data:`PRODUCTS` (how its matrix products are computed)."""
    if isinstance(source, dict):
        return Planner.from_state_dict(source, layout, device, products)
    return Planner.load(source, layout, device or "cpu", products)


def tokens_to_codes(tokens) -> list[int]:
    """Audio-code token ids -> codes (``token - 151669``); anything else is an error."""
    out = []
    for token in tokens:
        code = int(token) - AUDIO_CODE_OFFSET
        if not 0 <= code < NUM_AUDIO_CODES:
            raise ValueError(f"token {token} is not an audio code (codes are {AUDIO_CODE_OFFSET}..{AUDIO_CODE_END - 1})")
        out.append(code)
    return out


__all__ = ["Planner", "PlannerConfig", "PlannerError", "PlanResult", "PLANNER_CONFIGS", "LAYOUTS", "PRODUCTS",
           "resolve_products",
           "config_from_state_dict", "planner_state_dict", "read_planner_state_dict", "load_planner",
           "find_planner_prefix", "tokens_to_codes", "random_planner_state_dict"]


def random_planner_state_dict(config: PlannerConfig, seed: int = 0, dtype=torch.float32,
                              embed_std: float = 0.05) -> dict:
    """Reproducible random planner weights under HF names (tests, golden data, benchmark): matrices
    N(0, 1/fan_in), embeddings N(0, embed_std), norm weights 1 + N(0, 0.1). Values below 2^-14 are
    zeroed so that bf16 weights convert to fp16 exactly (ComfyUI keeps the planner in fp16 on the
    CPU): both sides then hold identical numbers."""
    g = torch.Generator().manual_seed(seed)
    h, d = config.hidden_size, config.head_dim

    def mat(rows, cols, std=None):
        w = torch.randn(rows, cols, generator=g) * (std if std is not None else cols ** -0.5)
        return w.to(dtype).masked_fill_(w.abs() < 2 ** -14, 0)

    def norm(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)

    sd = {EMBED_KEY: mat(config.vocab_size, h, embed_std)}
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(h)
        sd[p + "self_attn.q_proj.weight"] = mat(config.num_heads * d, h)
        sd[p + "self_attn.k_proj.weight"] = mat(config.num_kv_heads * d, h)
        sd[p + "self_attn.v_proj.weight"] = mat(config.num_kv_heads * d, h)
        sd[p + "self_attn.q_norm.weight"] = norm(d)
        sd[p + "self_attn.k_norm.weight"] = norm(d)
        sd[p + "self_attn.o_proj.weight"] = mat(h, config.num_heads * d)
        sd[p + "post_attention_layernorm.weight"] = norm(h)
        sd[p + "mlp.gate_proj.weight"] = mat(config.intermediate_size, h)
        sd[p + "mlp.up_proj.weight"] = mat(config.intermediate_size, h)
        sd[p + "mlp.down_proj.weight"] = mat(h, config.intermediate_size)
    sd["model.norm.weight"] = norm(h)
    return sd


TINY_PLANNER_CONFIG = PlannerConfig(vocab_size=217204, hidden_size=64, intermediate_size=96, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=16)
"""A planner small enough for tests: the real vocabulary (the audio codes sit at their real ids),
every structural feature (GQA, q/k norms, tied head)."""
