"""Sizes of every ACE-Step component, as plain dataclasses.

A config is built either from the component's ``config.json`` (original folder layout) or
inferred from the tensor shapes of its state dict (ComfyUI's single file carries no configs).
Fields that shapes cannot reveal (an attention head size, a stride, a dilation, mel settings)
keep the values of the released ACE-Step v1 files; ``released()`` gives the full real config and
is used by the structure tests and as the fallback documentation of those values.

Everything here is pure data: no torch modules are built in this file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config.json or a state dict does not describe an ACE-Step component."""


def _pick(cls, values: Mapping[str, Any]):
    """Build dataclass ``cls`` from the keys of ``values`` it knows; lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key in names:
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[key] = value
    return cls(**kwargs)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable JSON config ({err}). Re-download this file.") from err


# ---------------------------------------------------------------------------------------------
# Diffusion transformer and its lyric encoder
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LyricEncoderConfig:
    """The Conformer that reads lyric token embeddings (CosyVoice/WeNet style)."""

    hidden_size: int = 1024  # == TransformerConfig.lyric_hidden_size
    num_heads: int = 16
    ffn_size: int = 4096
    num_layers: int = 6
    layer_norm_eps: float = 1e-5


@dataclass(frozen=True)
class TransformerConfig:
    in_channels: int = 8
    out_channels: int = 8
    num_layers: int = 24
    num_attention_heads: int = 20
    attention_head_dim: int = 128
    mlp_ratio: float = 2.5
    patch_size: tuple = (16, 1)
    max_height: int = 16
    max_position: int = 32768
    rope_theta: float = 1_000_000.0
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768
    ssl_latent_dims: tuple = (1024, 768)
    lyric_encoder_vocab_size: int = 6693
    lyric_hidden_size: int = 1024
    lyric_encoder: LyricEncoderConfig = field(default_factory=LyricEncoderConfig)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.inner_dim * self.mlp_ratio)

    @classmethod
    def released(cls) -> "TransformerConfig":
        return cls()

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any]) -> "TransformerConfig":
        """From the original ``ace_step_transformer/config.json``; the lyric encoder sizes are not
        in that file and come from the state dict (see ``with_lyric_encoder_from_shapes``)."""
        return _pick(cls, values)

    def to_json_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("lyric_encoder")
        out["inner_dim"] = self.inner_dim
        out["_class_name"] = "Transformer2DModel"
        return out


# ---------------------------------------------------------------------------------------------
# Music DCAE (mel <-> latent autoencoder) and the mel <-> waveform vocoder
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DCAEConfig:
    in_channels: int = 2
    latent_channels: int = 8
    attention_head_dim: int = 32
    encoder_block_types: tuple = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    decoder_block_types: tuple = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock")
    encoder_block_out_channels: tuple = (128, 256, 512, 1024)
    decoder_block_out_channels: tuple = (128, 256, 512, 1024)
    encoder_layers_per_block: tuple = (2, 2, 3, 3)
    decoder_layers_per_block: tuple = (3, 3, 3, 3)
    encoder_qkv_multiscales: tuple = ((), (), (5,), (5,))
    decoder_qkv_multiscales: tuple = ((), (), (5,), (5,))

    @classmethod
    def released(cls) -> "DCAEConfig":
        return cls()

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any]) -> "DCAEConfig":
        """From a diffusers ``AutoencoderDC`` config.json (``music_dcae_f8c8/config.json``)."""
        cfg = _pick(cls, values)
        for name in ("encoder_block_types", "decoder_block_types"):
            value = getattr(cfg, name)
            if isinstance(value, str):  # diffusers allows one string for every stage
                cfg = dataclasses.replace(cfg, **{name: (value,) * len(cfg.encoder_block_out_channels)})
        return cfg

    def to_json_dict(self) -> dict:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        out.update({"_class_name": "AutoencoderDC", "upsample_block_type": "interpolate",
                    "downsample_block_type": "Conv", "decoder_norm_types": "rms_norm",
                    "decoder_act_fns": "silu", "scaling_factor": 0.41407})
        return out


@dataclass(frozen=True)
class VocoderConfig:
    input_channels: int = 128  # mel bins fed to the ConvNeXt backbone
    depths: tuple = (3, 3, 9, 3)
    dims: tuple = (128, 256, 384, 512)
    kernel_sizes: tuple = (7,)
    upsample_rates: tuple = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5))
    num_mels: int = 512  # channels entering the HiFi-GAN head (== dims[-1])
    upsample_initial_channel: int = 1024
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    f_min: float = 40.0
    f_max: float = 16000.0
    n_mels: int = 128

    @classmethod
    def released(cls) -> "VocoderConfig":
        return cls()

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any]) -> "VocoderConfig":
        """From ``music_vocoder/config.json``."""
        return _pick(cls, values)

    def to_json_dict(self) -> dict:
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        out.update({"_class_name": "ADaMoSHiFiGANV1", "use_template": False, "drop_path_rate": 0.0})
        return out


# ---------------------------------------------------------------------------------------------
# UMT5 text encoder (tags)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 256384
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    @classmethod
    def released(cls) -> "TextEncoderConfig":
        return cls()

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any]) -> "TextEncoderConfig":
        """From a Hugging Face ``umt5-base/config.json``."""
        return _pick(cls, values)

    def to_json_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update({"model_type": "umt5", "architectures": ["UMT5EncoderModel"], "is_encoder_decoder": True,
                    "dense_act_fn": "gelu_new", "is_gated_act": True, "pad_token_id": 0,
                    "eos_token_id": 1, "decoder_start_token_id": 0, "scalable_attention": True,
                    "tie_word_embeddings": False, "num_decoder_layers": self.num_layers})
        return out


@dataclass(frozen=True)
class AceStepConfig:
    """All four components of one checkpoint."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    dcae: DCAEConfig = field(default_factory=DCAEConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    @classmethod
    def released(cls) -> "AceStepConfig":
        return cls()
