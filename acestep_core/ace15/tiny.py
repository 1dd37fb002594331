"""Tiny ACE-Step 1.5 I/O components (VAE, text encoder) with random, reproducible weights.

Tests and ``scripts/make_ace15_io_golden.py`` build the same weights from the same seed (the
golden file records a checksum of them), so ComfyUI 0.20.1's code and ours are compared on
identical weights without storing megabytes in the repository. The tiny text encoder keeps the
real vocabulary (151669) so real prompts tokenise into valid ids; everything else is small.
"""
from __future__ import annotations

import math

import torch

from .text_encoder import Qwen3EncoderConfig, Qwen3TextEncoder
from .vae import OobleckConfig, OobleckVAE

# Real strides and latent width (so hop 1920 and 64 channels are exercised), narrow convolutions.
TINY_VAE_CONFIG = OobleckConfig(channels=4, c_mults=(1, 2, 2, 2, 4), strides=(2, 4, 4, 6, 10), latent_channels=64)
# Width 24 = the tiny condition encoder's text_hidden_dim (acestep_core.ace15.config.tiny_config).
TINY_TEXT_CONFIG = Qwen3EncoderConfig(vocab_size=151669, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def randomize_(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fill every floating tensor in key order from one seeded generator: matrices and kernels
    ~ N(0, 1/fan_in), weight-norm magnitudes (``original0``) in [0.15, 0.45), norm weights ~ 1 +
    N(0, 0.1), other vectors (biases, log-scale Snake parameters) ~ N(0, 0.1). The magnitudes keep
    the VAE's activations O(1): with magnitudes ~1 they grow to the hundreds and float32 itself
    drifts 1e-4 from a float64 run, too close to the comparison tolerance."""
    generator = torch.Generator().manual_seed(seed)
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point():
            continue
        shape = tensor.shape
        if key.endswith("original0"):
            value = 0.15 + 0.3 * torch.rand(shape, generator=generator)
        elif tensor.ndim >= 2:
            value = torch.randn(shape, generator=generator) / math.sqrt(max(math.prod(shape[1:]), 1))
        elif key.endswith("norm.weight") or key.endswith("layernorm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.1 * torch.randn(shape, generator=generator)
        state[key] = value.to(tensor.dtype).contiguous()
    return state


def random_vae_state(config: OobleckConfig = TINY_VAE_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI-keyed state dict of a VAE with random weights."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in OobleckVAE(config).state_dict().items()}
    return randomize_({k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}, seed)


def random_text_encoder_state(config: Qwen3EncoderConfig = TINY_TEXT_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Qwen3Model-keyed state dict of a text encoder with random weights."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in Qwen3TextEncoder(config).state_dict().items()}
    return randomize_({k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}, seed)


def checksum(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """[sum, sum of squares, sum of index-weighted values] over all tensors in key order, float64:
    detects a change of the generator or the fill rule."""
    total = torch.zeros(3, dtype=torch.float64)
    for key in sorted(state):
        t = state[key].double().flatten()
        total += torch.stack([t.sum(), (t * t).sum(), (t * torch.arange(t.numel(), dtype=torch.float64)).sum() / max(t.numel(), 1)])
    return total


# ---------------------------------------------------------------------------------------------
# Tiny 1.5 checkpoints in every released layout (same weights in each)
# ---------------------------------------------------------------------------------------------
LAYOUTS = ("aio", "split", "official")
# Where Comfy-Org's all-in-one file keeps its 1.7B planner: the prefix ComfyUI 0.20.1's ACEStep15
# clip_target probes (comfy/supported_models.py); the HF "model." names follow it.
COMFY_PLANNER_1_7B_PREFIX = "text_encoders.qwen3_2b.transformer."


def to_diffusers_vae_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI-keyed VAE state -> the official ``vae/`` folder's diffusers ``AutoencoderOobleck``
    names (the inverse of ``vae.canonical_vae_keys``): weight_g / weight_v, Snake [1, C, 1]."""
    n_blocks = max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")) - 2
    unit = ("snake1", "conv1", "snake2", "conv2")
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        side, index, rest = parts[0], int(parts[2]), parts[3:]
        if index == 0:
            name = [side, "conv1"]
        elif index == n_blocks + 1:
            name = [side, "snake1"]
        elif index == n_blocks + 2:
            name = [side, "conv2"]
        else:
            name = [side, "block", str(index - 1)]
            j = int(rest[1])
            if side == "encoder":
                inner = f"res_unit{j + 1}" if j < 3 else ("snake1" if j == 3 else "conv1")
            else:
                inner = "snake1" if j == 0 else ("conv_t1" if j == 1 else f"res_unit{j - 1}")
            name.append(inner)
            rest = rest[2:]
            if inner.startswith("res_unit"):
                name.append(unit[int(rest[1])])
                rest = rest[2:]
        tail = ".".join(rest)
        tail = tail.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        if tail in ("alpha", "beta"):
            value = value.reshape(1, -1, 1)
        out[".".join(name + [tail])] = value
    return out


def write_tiny_ace15(out, layout: str, seed: int = 0, tokenizer_dir=None, planner: bool = False) -> dict:
    """Write a tiny 1.5 checkpoint with RANDOM weights in ``layout``:

    * ``"aio"``: ``out/ace_step_1.5_tiny_aio.safetensors`` (Comfy-Org's all-in-one prefixes; with
      ``planner``, a tiny planner under ``text_encoders.qwen3_2b.transformer.`` as the released file
      holds its 1.7B planner);
    * ``"split"``: ``out/diffusion_models/acestep_v1.5_tiny.safetensors``,
      ``out/text_encoders/qwen_0.6b_ace15.safetensors``, ``out/vae/ace_1.5_vae.safetensors``
      (+ ``out/text_encoders/qwen_1.7b_ace15.safetensors``, a tiny planner, with ``planner``);
    * ``"official"``: ``out/acestep-v15-turbo/`` (config.json, model.safetensors,
      silence_latent.pt), ``out/vae/`` (diffusers names), ``out/Qwen3-Embedding-0.6B/``.

    The same seed gives the same weights in every layout. ``tokenizer_dir``: Qwen tokenizer files
    copied into ``Qwen3-Embedding-0.6B/`` (official layout). Returns the role -> path map."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from .loading import COMFY_DIT_PREFIX, COMFY_TEXT_ENCODER_PREFIX, COMFY_VAE_PREFIX
    from .testing import random_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dit = random_state_dict(seed=seed)
    vae = random_vae_state(TINY_VAE_CONFIG, seed + 1)
    text = random_text_encoder_state(TINY_TEXT_CONFIG, seed + 2)
    note = {"note": "ACE-Step 1.5 tiny test checkpoint: RANDOM weights"}

    def planner_state() -> dict[str, torch.Tensor]:
        from .planner import PlannerConfig, random_planner_state_dict
        return random_planner_state_dict(PlannerConfig(217204, 16, 32, 1, 2, 1, head_dim=8), seed)

    if layout == "aio":
        flat = {COMFY_DIT_PREFIX + k: v for k, v in dit.items()}
        flat.update({COMFY_VAE_PREFIX + k: v for k, v in vae.items()})
        flat.update({COMFY_TEXT_ENCODER_PREFIX + k: v for k, v in text.items()})
        if planner:
            flat.update({COMFY_PLANNER_1_7B_PREFIX + k: v for k, v in planner_state().items()})
        path = out / "ace_step_1.5_tiny_aio.safetensors"
        save_file(flat, str(path), metadata=note)
        return {"checkpoint": path}
    if layout == "split":
        paths = {"dit": out / "diffusion_models" / "acestep_v1.5_tiny.safetensors",
                 "text_encoder": out / "text_encoders" / "qwen_0.6b_ace15.safetensors",
                 "vae": out / "vae" / "ace_1.5_vae.safetensors"}
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        save_file(dit, str(paths["dit"]), metadata=note)
        save_file({"model." + k: v for k, v in text.items()}, str(paths["text_encoder"]), metadata=note)
        save_file(vae, str(paths["vae"]), metadata=note)
        if planner:
            paths["planner"] = out / "text_encoders" / "qwen_1.7b_ace15.safetensors"
            save_file(planner_state(), str(paths["planner"]), metadata=note)
        return paths
    if layout != "official":
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    dit_dir, vae_dir, te_dir = out / "acestep-v15-turbo", out / "vae", out / "Qwen3-Embedding-0.6B"
    for d in (dit_dir, vae_dir, te_dir):
        d.mkdir(parents=True, exist_ok=True)
    save_file(dit, str(dit_dir / "model.safetensors"), metadata=note)
    (dit_dir / "config.json").write_text(json.dumps({"model_type": "acestep", "is_turbo": True}))
    silence = torch.randn(1, 64, 40, generator=torch.Generator().manual_seed(seed + 3))
    torch.save(silence, dit_dir / "silence_latent.pt")
    save_file(to_diffusers_vae_keys(vae), str(vae_dir / "diffusion_pytorch_model.safetensors"), metadata=note)
    (vae_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderOobleck", "sampling_rate": 48000}))
    save_file(text, str(te_dir / "model.safetensors"), metadata=note)
    (te_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen3Model"], "model_type": "qwen3",
                                                    "rms_norm_eps": 1e-6,
                                                    "rope_theta": 1000000}))
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy(f, te_dir / f.name)
    return {"dit": dit_dir, "vae": vae_dir, "text_encoder": te_dir, "root": out}


__all__ = ["LAYOUTS", "to_diffusers_vae_keys", "write_tiny_ace15", "TINY_VAE_CONFIG", "TINY_TEXT_CONFIG",
           "randomize_", "random_vae_state", "random_text_encoder_state", "checksum"]
