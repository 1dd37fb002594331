#!/usr/bin/env python3
"""Regenerate tests/data/ace15_golden.safetensors: ComfyUI 0.20.1's ACE-Step 1.5 generation model
run on tiny random weights, for tests/test_ace15_numerics.py to compare ours against.

    /work/comfy020/venv/bin/python scripts/make_ace15_golden.py --comfyui /work/comfy020/ComfyUI

``--comfyui``: a ComfyUI 0.20.1 source tree (fetched ``github:YellowRoseCx/ComfyUI``, commit
aa9d2fc713664e9ffe37763f4c9240c0c3eda667, Comfy-Org master of 2026-05-10) and a Python with its
requirements. The file holds, in float32 unless noted:

- ``weights.checksum``: the tiny model's weights are not stored: both sides build them from the
  seed (``acestep_core.ace15.testing.random_state_dict`` of ``tiny_config(sliding_window=2)``,
  seed 0, rounded to float16 and back), and the checksum (``acestep_core.ace15.tiny.checksum``)
  proves the test rebuilt the same values;
- ``<case>.in.*`` / ``<case>.out.*``: the inputs and ComfyUI's outputs of each case; the metadata
  ``cases`` entry says which ComfyUI call made it and with which non-tensor arguments.

Cases: the sampler entry ``AceStepConditionGenerationModel.forward`` (batch 1 and 2, odd lengths,
several timesteps, lyrics of 9 tokens or 1, a random reference timbre / the silence latent / 5 Hz
audio codes, the null condition); ``prepare_condition`` + ``decoder`` with one reference per batch
item (the official batching, which ComfyUI's forward does not do); the condition encoder with
padding masks (packing); the FSQ tokenizer -> detokenizer round trip and index decoding.
Nothing of ComfyUI is copied: only these generated tensors are committed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
OUT = REPO / "tests" / "data" / "ace15_golden.safetensors"
REFERENCE_COMMIT = "aa9d2fc713664e9ffe37763f4c9240c0c3eda667"
WEIGHT_SEED = 0
INPUT_SEED = 1


def tiny_golden_config():
    from acestep_core.ace15.config import tiny_config
    return tiny_config(sliding_window=2)


def build(comfyui: Path):
    import torch
    from make_ace15_manifest import comfy_kwargs, import_comfy_ace15
    comfy_ops, ace_step15 = import_comfy_ace15(comfyui)
    from acestep_core.ace15.config import config_to_dict
    from acestep_core.ace15.testing import random_state_dict

    config = tiny_golden_config()
    weights = {k: v.half() for k, v in random_state_dict(config, WEIGHT_SEED).items()}
    model = ace_step15.AceStepConditionGenerationModel(
        **comfy_kwargs(config), dtype=torch.float32, device="cpu", operations=comfy_ops.disable_weight_init)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    assert not missing and not unexpected
    model.eval()

    g = torch.Generator().manual_seed(INPUT_SEED)
    text_dim = config.encoder.text_hidden_dim

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    from acestep_core.ace15.tiny import checksum
    tensors = {"weights.checksum": checksum(weights)}
    cases = {}

    def record(name, call, inputs, outputs, **arguments):
        cases[name] = {"call": call, "arguments": arguments}
        for key, value in inputs.items():
            tensors[f"{name}.in.{key}"] = value.contiguous()
        for key, value in outputs.items():
            tensors[f"{name}.out.{key}"] = value.detach().contiguous()

    def silence(batch, frames):
        return ace_step15.get_silence_latent(frames, "cpu").expand(batch, -1, -1).contiguous()

    # --- the sampler entry point: AceStepConditionGenerationModel.forward
    forward_cases = [
        # name, batch, frames, timesteps, lyric tokens, reference, extra arguments
        ("forward_b1_reference", 1, 13, [0.7], 9, "random", {"is_covers": True}),
        ("forward_b1_short_lyrics", 1, 15, [0.1], 1, "random", {"is_covers": True}),
        ("forward_b2_silence", 2, 17, [0.25, 0.9], 9, "silence", {"is_covers": False}),
        ("forward_b2_codes", 2, 13, [0.5, 0.5], 9, "silence", {"codes": 2}),
        ("forward_b1_null", 1, 11, [1.0], 1, "silence", {"is_covers": False, "replace_with_null_embeds": True}),
    ]
    with torch.no_grad():
        for name, batch, frames, timesteps, lyric_len, reference, extra in forward_cases:
            inputs = {"x": randn(batch, 64, frames), "timestep": torch.tensor(timesteps),
                      "context": randn(batch, 6, text_dim), "lyric_embed": randn(batch, lyric_len, text_dim),
                      "refer_audio": randn(batch, 64, frames) if reference == "random" else silence(batch, frames)}
            kwargs = {k: v for k, v in extra.items() if k != "codes"}
            if "codes" in extra:
                # too few codes for the latent: ComfyUI pads them with index 35847
                inputs["audio_codes"] = torch.randint(0, 64000, (batch, extra["codes"]), generator=g)
            out = model(inputs["x"], inputs["timestep"], inputs["context"], lyric_embed=inputs["lyric_embed"],
                        refer_audio=inputs["refer_audio"], audio_codes=inputs.get("audio_codes"), **kwargs)
            record(name, "AceStepConditionGenerationModel.forward", inputs, {"velocity": out}, **kwargs)

        # --- one reference per batch item (official order mask 0..B-1) through prepare_condition + decoder
        batch, frames = 2, 13
        inputs = {"x": randn(batch, 64, frames), "timestep": torch.tensor([0.3, 0.6]),
                  "context": randn(batch, 6, text_dim), "lyric_embed": randn(batch, 9, text_dim),
                  "refer_audio": randn(batch, 64, frames)}
        x = inputs["x"].movedim(-1, -2)
        refer = inputs["refer_audio"].movedim(-1, -2)
        condition, _, context_latents = model.prepare_condition(
            inputs["context"], None, inputs["lyric_embed"], None, refer, torch.arange(batch), x,
            torch.ones_like(x), True)
        out = model.decoder(hidden_states=x, timestep=inputs["timestep"], timestep_r=inputs["timestep"],
                            attention_mask=None, encoder_hidden_states=condition, encoder_attention_mask=None,
                            context_latents=context_latents).movedim(-1, -2)
        record("prepared_b2_per_item_reference", "prepare_condition(order mask 0..B-1) + decoder", inputs,
               {"velocity": out, "condition": condition, "context_latents": context_latents}, is_covers=True)

        # --- condition encoder with padding masks (exercises the packing sort)
        inputs = {"text": randn(2, 6, text_dim), "text_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]),
                  "lyric": randn(2, 5, text_dim), "lyric_mask": torch.tensor([[1, 1, 1, 0, 0], [1] * 5]),
                  "refer_packed": randn(2, 13, 64), "order_mask": torch.tensor([0, 1])}
        hidden, mask = model.encoder(inputs["text"], inputs["text_mask"], inputs["lyric"], inputs["lyric_mask"],
                                     inputs["refer_packed"], inputs["order_mask"])
        record("encoder_masked", "AceStepConditionEncoder.forward", inputs, {"hidden": hidden, "mask": mask.long()})

        # --- FSQ tokenizer -> detokenizer, and index decoding
        inputs = {"latents": randn(2, 13, 64), "indices": torch.tensor([[0, 63999, 35847, 12345, 777]])}
        quantized, indices = model.tokenizer.tokenize(inputs["latents"])
        record("fsq_round_trip", "tokenizer.tokenize -> detokenizer; quantizer.get_output_from_indices", inputs, {
            "quantized": quantized, "indices": indices.long(), "hints": model.detokenizer(quantized),
            "decoded": model.tokenizer.quantizer.get_output_from_indices(indices, dtype=torch.float32),
            "fixed_decoded": model.tokenizer.quantizer.get_output_from_indices(inputs["indices"], dtype=torch.float32),
            "fixed_hints": model.detokenizer(
                model.tokenizer.quantizer.get_output_from_indices(inputs["indices"], dtype=torch.float32))})

    metadata = {"reference": f"ComfyUI 0.20.1 comfy/ldm/ace/ace_step15.py @ {REFERENCE_COMMIT}",
                "how": "/work/comfy020/venv/bin/python scripts/make_ace15_golden.py --comfyui /work/comfy020/ComfyUI",
                "config": json.dumps(config_to_dict(config)), "weight_seed": str(WEIGHT_SEED),
                "input_seed": str(INPUT_SEED), "cases": json.dumps(cases)}
    return tensors, metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI 0.20.1 source tree")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from safetensors.torch import save_file
    tensors, metadata = build(args.comfyui.resolve())
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"wrote {args.out}: {len(tensors)} tensors, {args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
