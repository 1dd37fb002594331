"""Tiny ACE-Step checkpoints with random weights, in exactly the released key layouts.

Tests, benchmarks and the demo use these: they load through the same code as the real 7.7 GB
file, so everything but the sizes is exercised. The weights are random: the audio is noise-like.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .checkpoint import FOLDERS, SINGLE_FILE_PREFIXES, SPIECE_KEY
from .config import (AceStepConfig, DCAEConfig, LyricEncoderConfig, TextEncoderConfig, TransformerConfig,
                     VocoderConfig)

TINY_SPIECE_VOCAB = 384


def tiny_config(text_vocab_size: int = TINY_SPIECE_VOCAB) -> AceStepConfig:
    """Small sizes that keep every structural feature of the real model (all block types, the
    real lyric vocabulary, the real mel and hop settings so audio lengths are real)."""
    text = TextEncoderConfig(vocab_size=text_vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    transformer = TransformerConfig(
        num_layers=2, num_attention_heads=2, attention_head_dim=128, mlp_ratio=2.5,
        speaker_embedding_dim=512, text_embedding_dim=text.d_model, ssl_latent_dims=(16, 8),
        lyric_encoder_vocab_size=6693, lyric_hidden_size=64,
        lyric_encoder=LyricEncoderConfig(hidden_size=64, num_heads=4, ffn_size=128, num_layers=2))
    dcae = DCAEConfig(
        attention_head_dim=8,
        encoder_block_out_channels=(16, 32, 32, 64), decoder_block_out_channels=(16, 32, 32, 64),
        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1))
    vocoder = VocoderConfig(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_mels=32,
                            upsample_initial_channel=128, resblock_kernel_sizes=(3, 7),
                            resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)))
    return AceStepConfig(transformer, dcae, vocoder, text)


def _randomize_(state: dict[str, torch.Tensor], generator: torch.Generator, keep=()) -> None:
    """Fill every tensor with values of a sensible scale, deterministically, so that the tiny
    model gives finite, non-trivial outputs: matrices ~ N(0, 1/fan_in), norm-like 1-D weights
    ~ 1 + N(0, 0.1), other vectors ~ N(0, 0.02)."""
    for key, tensor in state.items():
        if key in keep or not tensor.is_floating_point():
            continue
        if tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:])
            if key.endswith("weight_g"):  # weight-norm magnitudes: positive, O(1)
                value = 0.5 + torch.rand(tensor.shape, generator=generator)
            else:
                value = torch.randn(tensor.shape, generator=generator) / math.sqrt(max(fan_in, 1))
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator)
        tensor.copy_(value.to(tensor.dtype))


def random_state_dicts(config: AceStepConfig, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Canonical-key state dicts of all four components, random but reproducible."""
    from .models.dcae import DCAE
    from .models.text_encoder import TextEncoder
    from .models.transformer import AceStepTransformer
    from .models.vocoder import Vocoder

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, cls, cfg in (("transformer", AceStepTransformer, config.transformer),
                           ("dcae", DCAE, config.dcae),
                           ("vocoder", Vocoder, config.vocoder),
                           ("text_encoder", TextEncoder, config.text_encoder)):
        module = cls(cfg)
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        # The mel filterbank and window are fixed functions of the config, not weights.
        _randomize_(state, generator, keep=[k for k in state if k.startswith("mel_transform.")])
        out[name] = state
    return out


def write_tiny_checkpoint(out, layout: str = "comfyui", seed: int = 0,
                          config: AceStepConfig | None = None) -> Path:
    """Write a tiny checkpoint. layout "comfyui": one .safetensors file with ComfyUI's prefixes;
    layout "folders": the original repository's four sub-folders with config.json files."""
    from safetensors.torch import save_file

    from .text.tags import make_tiny_spiece_model

    out = Path(out)
    spiece = make_tiny_spiece_model(TINY_SPIECE_VOCAB)
    config = config or tiny_config()
    states = random_state_dicts(config, seed)
    if layout == "comfyui":
        flat = {}
        for name, state in states.items():
            for key, tensor in state.items():
                flat[SINGLE_FILE_PREFIXES[name] + key] = tensor
        flat[SPIECE_KEY] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(flat, str(out), metadata={"note": "ACE-Step v1 tiny test checkpoint: RANDOM weights"})
        return out
    if layout != "folders":
        raise ValueError(f"layout must be 'comfyui' or 'folders', not {layout!r}")
    configs = {"transformer": config.transformer.to_json_dict(), "dcae": config.dcae.to_json_dict(),
               "vocoder": config.vocoder.to_json_dict(), "text_encoder": config.text_encoder.to_json_dict()}
    for name, state in states.items():
        folder = out / FOLDERS[name]
        folder.mkdir(parents=True, exist_ok=True)
        weights = "model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors"
        save_file(state, str(folder / weights))
        (folder / "config.json").write_text(json.dumps(configs[name], indent=2))
    (out / FOLDERS["text_encoder"] / "spiece.model").write_bytes(spiece)
    (out / "README.txt").write_text("ACE-Step v1 tiny test checkpoint: RANDOM weights, for tests only.\n")
    return out


__all__ = ["tiny_config", "random_state_dicts", "write_tiny_checkpoint"]
