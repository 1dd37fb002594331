"""Build ACE-Step modules from a checkpoint: infer each config, construct on the meta device,
assign the tensors as read. One code path for both layouts and for tiny test checkpoints."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (COMPONENTS, CheckpointError, CheckpointSource, ComponentSource, open_checkpoint,
                         resolve_dtype)
from .config import AceStepConfig, ConfigError


def _component_factory(name: str):
    """(infer_config, module_class, key_fixer) of a component; imported lazily so that reading a
    checkpoint header does not import every model."""
    if name == "transformer":
        from .models.transformer import AceStepTransformer, infer_transformer_config
        return infer_transformer_config, AceStepTransformer, None
    if name == "dcae":
        from .models.dcae import DCAE, infer_dcae_config
        return infer_dcae_config, DCAE, None
    if name == "vocoder":
        from .models.vocoder import Vocoder, canonical_vocoder_keys, infer_vocoder_config
        return infer_vocoder_config, Vocoder, canonical_vocoder_keys
    if name == "text_encoder":
        from .models.text_encoder import TextEncoder, infer_text_encoder_config
        return infer_text_encoder_config, TextEncoder, None
    raise KeyError(name)


def infer_config(source: ComponentSource):
    infer, _, fix_keys = _component_factory(source.name)
    shapes = fix_keys(source.shapes) if fix_keys else source.shapes
    try:
        return infer(shapes, source.json_config)
    except ConfigError as err:
        raise CheckpointError(f"{source.file}: the {source.name} weights have an unexpected layout: {err}") from err


def build_component(source: ComponentSource, dtype: torch.dtype = torch.float32, device="cpu",
                    config=None, operations=None, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Construct one component on the meta device and assign its tensors (no second copy).

    ``dtype``: how the weights are held; ``compute_dtype`` (optional) the activation dtype when
    it differs, which needs ``operations`` that cast each weight at use (ComfyUI's manual cast)."""
    _, module_cls, fix_keys = _component_factory(source.name)
    config = config or infer_config(source)
    with torch.device("meta"):
        module = module_cls(config, dtype=dtype, operations=operations)
    if compute_dtype is not None and compute_dtype != dtype:
        module.compute_dtype = compute_dtype
    return assign_weights(module, source, dtype, device)


def assign_weights(module: nn.Module, source: ComponentSource, dtype: torch.dtype | None, device="cpu") -> nn.Module:
    """Give ``module`` (built on the meta device) the tensors of ``source``, converted to
    ``dtype`` (None: as stored; one copy of each weight is held); a CheckpointError
    names what does not fit."""
    _, _, fix_keys = _component_factory(source.name)
    state = source.state_dict(dtype=dtype, device=device)
    if fix_keys:
        state = fix_keys(state)
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    # Buffers that a module can recompute itself (mel filterbank, window) may be absent from a file.
    recomputable = set(getattr(module, "recomputable_buffers", ()))
    missing_required = [k for k in missing if k not in recomputable]
    if missing_required or unexpected:
        parts = []
        if missing_required:
            parts.append(f"{len(missing_required)} missing (e.g. {', '.join(missing_required[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{source.file}: the {source.name} weights do not match ACE-Step v1's key layout: "
            f"{'; '.join(parts)}. The file is from another model or another release; use the "
            "released ace_step_v1_3.5b.safetensors or the original folders.")
    try:
        module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source.file}: the {source.name} weights have unexpected shapes: "
                              f"{str(err)[:600]}") from err
    if hasattr(module, "materialize_buffers"):
        module.materialize_buffers(device=device)
    still_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{source.file}: the {source.name} weights lack {', '.join(still_meta[:5])}.")
    return module.eval().requires_grad_(False)


@dataclass
class AceStepModels:
    """The loaded parts of one checkpoint. Components not requested are None."""

    source: CheckpointSource
    config: AceStepConfig
    transformer: nn.Module | None = None
    codec: object | None = None          # acestep_core.codec.AudioCodec
    text_encoder: nn.Module | None = None
    dtype: torch.dtype = torch.float32
    _lyric_vocab: Path | None = field(default=None, repr=False)

    @cached_property
    def tag_tokenizer(self):
        from .text.tags import TagTokenizer
        if self.source.spiece_model is not None:
            return TagTokenizer(self.source.spiece_model)
        if self.source.tokenizer_json is not None:
            return TagTokenizer.from_tokenizer_json(self.source.tokenizer_json)
        raise CheckpointError(
            f"{self.source.path}: no tokenizer for the text encoder (the single file lacks "
            "'text_encoders.spiece_model'; the umt5-base/ folder lacks spiece.model and tokenizer.json). "
            "Use the complete released checkpoint.")

    @cached_property
    def lyric_tokenizer(self):
        from .text.lyrics import LyricTokenizer
        from .text.vocab import find_lyric_vocab
        return LyricTokenizer(self._lyric_vocab or find_lyric_vocab(self.source.path))


def load_checkpoint(path, dtype="fp32", vae_dtype=None, device="cpu",
                    components=("transformer", "vae", "text_encoder")) -> AceStepModels:
    """Load an ACE-Step v1 checkpoint in either layout.

    ``components`` picks any of "transformer", "vae" (DCAE + vocoder) and "text_encoder"; all
    three must be present in the checkpoint or a CheckpointError names what is missing.
    ``vae_dtype`` defaults to float32 (the codec is small and sensitive to precision)."""
    from .codec import AudioCodec

    weight_dtype = resolve_dtype(dtype)
    vae_weight_dtype = resolve_dtype(vae_dtype) if vae_dtype is not None else torch.float32
    src = open_checkpoint(path)
    unknown = set(components) - {"transformer", "vae", "text_encoder"}
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from transformer, vae, text_encoder")
    wanted = []
    for c in components:
        wanted += ["dcae", "vocoder"] if c == "vae" else [c]
    src.require(*COMPONENTS)  # a usable checkpoint has all of them, even if we load only some now

    configs = {name: infer_config(src.components[name]) for name in COMPONENTS}
    models = AceStepModels(src, AceStepConfig(**configs), dtype=weight_dtype)
    if "transformer" in wanted:
        models.transformer = build_component(src.components["transformer"], weight_dtype, device,
                                             configs["transformer"])
    if "text_encoder" in wanted:
        models.text_encoder = build_component(src.components["text_encoder"], weight_dtype, device,
                                              configs["text_encoder"])
    if "dcae" in wanted:
        dcae = build_component(src.components["dcae"], vae_weight_dtype, device, configs["dcae"])
        vocoder = build_component(src.components["vocoder"], vae_weight_dtype, device, configs["vocoder"])
        models.codec = AudioCodec(dcae, vocoder)
    return models
