"""Tiny ACE-Step 1.5 generation models with random weights, in the released key layouts.

The keys are those of the released files: bare (``decoder.*``, ``encoder.*``, ``tokenizer.*``,
``detokenizer.*``, ``null_condition_emb``) in Comfy-Org's split ``diffusion_models/acestep_v1.5_*``
files and in the official ``acestep-v15-*/model.safetensors``; under ``model.diffusion_model.`` in
Comfy-Org's all-in-one checkpoint (next to ``vae.*`` and ``text_encoders.*``; ComfyUI
``comfy/model_detection.py`` ``unet_prefix_from_state_dict``, ``comfy/supported_models.py``
``ACEStep15``). The VAE / text-encoder tiny writers live with those components.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..testing import _randomize_
from .config import Ace15Config, tiny_config

SINGLE_FILE_DIT_PREFIX = "model.diffusion_model."
"""Where Comfy-Org's all-in-one checkpoint keeps the 1.5 generation model."""


def random_state_dict(config: Ace15Config | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Bare-key state dict of an :class:`~acestep_core.ace15.model.Ace15Model`, random but
    reproducible from ``seed`` (float32): matrices ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1),
    biases ~ N(0, 0.02)."""
    from .model import Ace15Model

    config = config or tiny_config()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Ace15Model(config).state_dict().items()}
    state = {key: torch.empty(shape) for key, shape in shapes.items()}
    _randomize_(state, torch.Generator().manual_seed(seed))
    return state


def checkpoint_tensors(config: Ace15Config | None = None, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a tiny 1.5 DiT file with every key under ``prefix`` ("" for the split and
    official files, :data:`SINGLE_FILE_DIT_PREFIX` for the all-in-one file)."""
    return {prefix + key: tensor for key, tensor in random_state_dict(config, seed).items()}


def write_tiny_dit(path, config: Ace15Config | None = None, seed: int = 0, prefix: str = "",
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny 1.5 generation model as one safetensors file (see :func:`checkpoint_tensors`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype).contiguous() for k, v in checkpoint_tensors(config, seed, prefix).items()}
    save_file(tensors, str(path), metadata={"note": "ACE-Step 1.5 tiny test model: RANDOM weights"})
    return path


__all__ = ["SINGLE_FILE_DIT_PREFIX", "checkpoint_tensors", "random_state_dict", "write_tiny_dit"]
