"""Sizes of the ACE-Step 1.5 generation model (DiT, condition encoder, audio tokenizer and
detokenizer), as plain dataclasses, and how to read them off a state dict's tensor shapes.

The released 2B model (turbo / sft / base) and the XL model differ only in sizes, so one code path
builds both, and the tiny test models too: :func:`config_from_state_dict_shapes` reads every size
that a tensor reveals. The defaults below are the 2B release (official
``acestep/models/turbo/configuration_acestep_v15.py``; ComfyUI 0.20.1
``comfy/ldm/ace/ace_step15.py``, ``AceStepConditionGenerationModel.__init__``).

Everything here is pure data: no torch modules are built in this file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..config import ConfigError

# The FSQ levels of the released tokenizer. A state dict only reveals how many there are (the
# rows of ``tokenizer.quantizer.project_in.weight``), not their values.
RELEASED_FSQ_LEVELS = (8, 8, 8, 5, 5, 5)

# ComfyUI pads too-short audio-code sequences with this index (``AceStepConditionGenerationModel.
# prepare_condition`` in comfy/ldm/ace/ace_step15.py).
AUDIO_CODE_PAD_INDEX = 35847


@dataclass(frozen=True)
class DiTConfig:
    """The diffusion transformer (``decoder.*``)."""

    in_channels: int = 192          # [src latents 64 | chunk mask 64 | x_t 64]
    audio_channels: int = 64        # latent channels out (``audio_acoustic_hidden_dim``)
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 6144
    patch_size: int = 2
    condition_size: int = 2048      # width of the packed condition sequence (encoder hidden size)
    timestep_dim: int = 256         # sinusoid width fed to time_embed / time_embed_r
    sliding_window: int = 128       # in patch tokens, bidirectional: |i - j| <= window
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6

    def layer_uses_sliding_window(self, index: int) -> bool:
        """Even layers attend within the window, odd layers attend fully (official
        ``configuration_acestep_v15.py`` layer_types; ComfyUI ``i % 2 == 0 -> sliding``)."""
        return index % 2 == 0


@dataclass(frozen=True)
class ConditionEncoderConfig:
    """Text projector, lyric encoder and timbre encoder (``encoder.*``)."""

    text_hidden_dim: int = 1024     # Qwen3-Embedding-0.6B width
    timbre_hidden_dim: int = 64     # VAE latent channels
    hidden_size: int = 2048
    num_lyric_layers: int = 8
    num_timbre_layers: int = 4
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 6144
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # ComfyUI 0.20.1 builds every lyric / timbre encoder layer with full attention
    # (``AceStepEncoderLayer`` passes no window); the official model uses the DiT's alternation
    # (a bidirectional 128-token window on even layers). None = ComfyUI's behaviour; the two only
    # differ for sequences longer than the window.
    sliding_window: int | None = None


@dataclass(frozen=True)
class AudioTokenizerConfig:
    """The 25 Hz -> 5 Hz FSQ tokenizer (``tokenizer.*``) and the 5 Hz -> 25 Hz detokenizer
    (``detokenizer.*``)."""

    audio_channels: int = 64
    hidden_size: int = 2048
    pool_window_size: int = 5       # latent frames per code
    fsq_levels: tuple = RELEASED_FSQ_LEVELS
    num_quantizers: int = 1
    num_pooler_layers: int = 2
    num_detokenizer_layers: int = 2
    # ComfyUI hard-codes 16 / 8 heads and an MLP of 3x the width for the pooler and detokenizer
    # layers (``AttentionPooler.__init__``, ``AudioTokenDetokenizer.__init__``).
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 6144
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # The detokenizer's final norm: 1e-6 in the official model (Qwen3RMSNorm); ComfyUI 0.20.1
    # builds it without eps, i.e. torch's finfo(dtype).eps (1.2e-7 in float32, 7.8e-3 in bf16).
    detokenizer_norm_eps: float | None = 1e-6

    @property
    def codebook_size(self) -> int:
        size = 1
        for level in self.fsq_levels:
            size *= level
        return size ** self.num_quantizers


@dataclass(frozen=True)
class Ace15Config:
    """The whole generation model: ``decoder``, ``encoder``, ``tokenizer``, ``detokenizer`` and
    ``null_condition_emb``, as in the released checkpoints."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    encoder: ConditionEncoderConfig = field(default_factory=ConditionEncoderConfig)
    tokenizer: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)

    @property
    def is_xl(self) -> bool:
        """The XL release widens the DiT (2560) but keeps the 2048-wide condition encoder."""
        return self.dit.hidden_size > 2048


def released_2b() -> Ace15Config:
    """ACE-Step 1.5 2B (turbo, sft, base)."""
    return Ace15Config()


def released_xl() -> Ace15Config:
    """ACE-Step 1.5 XL, as ComfyUI 0.20.1 would infer it from the released file.

    Width 2560 and 32 layers are published (acestep.cpp docs/ARCHITECTURE.md); the head count and
    MLP width are not published in any source we have: 32 heads / 9728 are the Qwen3-4B sizes the
    XL DiT is said to share. A real XL file is read through :func:`config_from_state_dict_shapes`,
    which takes them from the tensors, so this guess only matters for the structure manifest.
    """
    return Ace15Config(dit=DiTConfig(hidden_size=2560, num_layers=32, num_heads=32, intermediate_size=9728))


# ---------------------------------------------------------------------------------------------
# Sizes from tensor shapes
# ---------------------------------------------------------------------------------------------
DETECTION_KEY = "encoder.lyric_encoder.layers.0.input_layernorm.weight"
"""The key ComfyUI detects a 1.5 generation model by (comfy/model_detection.py,
``detect_unet_config``: ``audio_model = "ace1.5"``)."""


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", value)
    return tuple(int(n) for n in shape)


def _count_layers(keys, prefix: str) -> int:
    indices = set()
    for key in keys:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    if not indices:
        return 0
    if indices != set(range(max(indices) + 1)):
        raise ConfigError(f"layers under {prefix!r} are not numbered 0..N-1 (found {sorted(indices)})")
    return max(indices) + 1


def config_from_state_dict_shapes(state: Mapping[str, Any], prefix: str = "") -> Ace15Config:
    """The :class:`Ace15Config` of a 1.5 generation-model state dict.

    ``state`` maps key -> tensor, or key -> shape (e.g. read from a safetensors header, so nothing
    is loaded). ``prefix`` is stripped from every key first (Comfy-Org's single file stores the
    model under ``model.diffusion_model.``). Every size a tensor reveals is read from it, so the 2B,
    XL and tiny test models come through here; the FSQ level values and the number of residual
    quantizers leave no trace in the weights and keep the released values.
    """
    shapes = {key[len(prefix):]: _shape_of(v) for key, v in state.items() if key.startswith(prefix)}

    def need(key: str) -> tuple[int, ...]:
        try:
            return shapes[key]
        except KeyError:
            raise ConfigError(
                f"not an ACE-Step 1.5 model state dict: tensor {prefix + key!r} is missing "
                f"({len(shapes)} tensors under prefix {prefix!r}). Load a 1.5 DiT file "
                "(acestep_v1.5_*.safetensors or the official acestep-v15-*/model.safetensors).") from None

    if DETECTION_KEY not in shapes:
        need(DETECTION_KEY)

    # --- DiT
    head_dim = need("decoder.layers.0.self_attn.q_norm.weight")[0]
    hidden, in_channels, patch = need("decoder.proj_in.1.weight")
    q_out = need("decoder.layers.0.self_attn.q_proj.weight")[0]
    kv_out = need("decoder.layers.0.self_attn.k_proj.weight")[0]
    time_in = need("decoder.time_embed.linear_1.weight")[1]
    dit = DiTConfig(
        in_channels=in_channels,
        audio_channels=need("decoder.proj_out.1.weight")[1],
        hidden_size=hidden,
        num_layers=_count_layers(shapes, "decoder.layers."),
        num_heads=q_out // head_dim,
        num_kv_heads=kv_out // head_dim,
        head_dim=head_dim,
        intermediate_size=need("decoder.layers.0.mlp.gate_proj.weight")[0],
        patch_size=patch,
        condition_size=need("decoder.condition_embedder.weight")[1],
        timestep_dim=time_in,
    )

    # --- condition encoder
    enc_head_dim = need("encoder.lyric_encoder.layers.0.self_attn.q_norm.weight")[0]
    enc_hidden, text_dim = need("encoder.lyric_encoder.embed_tokens.weight")
    encoder = ConditionEncoderConfig(
        text_hidden_dim=text_dim,
        timbre_hidden_dim=need("encoder.timbre_encoder.embed_tokens.weight")[1],
        hidden_size=enc_hidden,
        num_lyric_layers=_count_layers(shapes, "encoder.lyric_encoder.layers."),
        num_timbre_layers=_count_layers(shapes, "encoder.timbre_encoder.layers."),
        num_heads=need("encoder.lyric_encoder.layers.0.self_attn.q_proj.weight")[0] // enc_head_dim,
        num_kv_heads=need("encoder.lyric_encoder.layers.0.self_attn.k_proj.weight")[0] // enc_head_dim,
        head_dim=enc_head_dim,
        intermediate_size=need("encoder.lyric_encoder.layers.0.mlp.gate_proj.weight")[0],
    )

    # --- audio tokenizer / detokenizer
    tok_head_dim = need("tokenizer.attention_pooler.layers.0.self_attn.q_norm.weight")[0]
    tok_hidden, audio_channels = need("tokenizer.audio_acoustic_proj.weight")
    num_levels = need("tokenizer.quantizer.project_in.weight")[0]
    if num_levels != len(RELEASED_FSQ_LEVELS):
        raise ConfigError(
            f"tokenizer.quantizer.project_in has {num_levels} outputs; the released FSQ has "
            f"{len(RELEASED_FSQ_LEVELS)} levels {RELEASED_FSQ_LEVELS}, and other level sets cannot be "
            "read from the weights.")
    tokenizer = AudioTokenizerConfig(
        audio_channels=audio_channels,
        hidden_size=tok_hidden,
        pool_window_size=need("detokenizer.special_tokens")[1],
        num_pooler_layers=_count_layers(shapes, "tokenizer.attention_pooler.layers."),
        num_detokenizer_layers=_count_layers(shapes, "detokenizer.layers."),
        num_heads=need("tokenizer.attention_pooler.layers.0.self_attn.q_proj.weight")[0] // tok_head_dim,
        num_kv_heads=need("tokenizer.attention_pooler.layers.0.self_attn.k_proj.weight")[0] // tok_head_dim,
        head_dim=tok_head_dim,
        intermediate_size=need("tokenizer.attention_pooler.layers.0.mlp.gate_proj.weight")[0],
    )

    config = Ace15Config(dit, encoder, tokenizer)
    _check_consistent(config)
    return config


def _check_consistent(config: Ace15Config) -> None:
    problems = []
    dit, enc, tok = config.dit, config.encoder, config.tokenizer
    for name, part in (("decoder", dit), ("encoder", enc), ("tokenizer", tok)):
        if part.num_kv_heads <= 0 or part.num_heads % part.num_kv_heads:
            problems.append(f"{name}: {part.num_heads} query heads are not a multiple of {part.num_kv_heads} KV heads")
    if dit.condition_size != enc.hidden_size:
        problems.append(f"decoder.condition_embedder reads width {dit.condition_size}, the encoder gives {enc.hidden_size}")
    if dit.in_channels != 3 * dit.audio_channels:
        problems.append(f"decoder.proj_in takes {dit.in_channels} channels, expected 3 x {dit.audio_channels}")
    if tok.hidden_size != enc.hidden_size:
        problems.append(f"tokenizer width {tok.hidden_size} differs from encoder width {enc.hidden_size}")
    if problems:
        raise ConfigError("inconsistent ACE-Step 1.5 state dict: " + "; ".join(problems))


def config_to_dict(config: Ace15Config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(values: Mapping[str, Any]) -> Ace15Config:
    def build(cls, part: Mapping[str, Any] | None):
        part = dict(part or {})
        if "fsq_levels" in part:
            part["fsq_levels"] = tuple(part["fsq_levels"])
        return cls(**part)
    return Ace15Config(build(DiTConfig, values.get("dit")), build(ConditionEncoderConfig, values.get("encoder")),
                       build(AudioTokenizerConfig, values.get("tokenizer")))


def tiny_config(**dit_overrides) -> Ace15Config:
    """Small sizes that keep every structural feature (GQA, both attention kinds, the 16/8-head
    pooler and detokenizer, 6-level FSQ, 2048-independent widths); used by tests and the tiny
    checkpoints. The DiT is wider than the encoder, as in XL, so a mix-up of the two widths fails.
    The sliding window keeps the released 128 (shapes cannot reveal it, and a tiny checkpoint must
    read back to this config); pass ``sliding_window=2`` to exercise the window at tiny lengths."""
    dit = DiTConfig(hidden_size=48, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=64, condition_size=32)
    dit = dataclasses.replace(dit, **dit_overrides)
    encoder = ConditionEncoderConfig(text_hidden_dim=24, hidden_size=32, num_lyric_layers=2, num_timbre_layers=2,
                                     num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
    tokenizer = AudioTokenizerConfig(hidden_size=32, head_dim=8, intermediate_size=96)
    return Ace15Config(dit, encoder, tokenizer)


__all__: Sequence[str] = (
    "Ace15Config", "AudioTokenizerConfig", "ConditionEncoderConfig", "DiTConfig", "RELEASED_FSQ_LEVELS",
    "AUDIO_CODE_PAD_INDEX", "DETECTION_KEY", "config_from_state_dict_shapes", "config_from_dict",
    "config_to_dict", "released_2b", "released_xl", "tiny_config")
