"""ACE-Step 1.5 numerics: our generation model against ComfyUI 0.20.1's on identical tiny random
weights, float32 (golden tensors in tests/data/ace15_golden.safetensors, written by
scripts/make_ace15_golden.py, which says which ComfyUI call made each case)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from acestep_core.ace15 import Ace15Model
from acestep_core.ace15.config import config_from_dict

GOLDEN = Path(__file__).parent / "data" / "ace15_golden.safetensors"
TOLERANCE = 1e-4  # max |ours - reference|, relative to max(1, max |reference|)


def max_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    scale = max(1.0, reference.abs().max().item())
    return (ours.float() - reference.float()).abs().max().item() / scale


@pytest.fixture(scope="module")
def golden():
    from safetensors import safe_open
    with safe_open(str(GOLDEN), "pt") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    config = config_from_dict(json.loads(metadata["config"]))
    model = Ace15Model(config)
    # The weights are rebuilt from the seed the script used (float16-rounded), checked by checksum.
    from acestep_core.ace15.testing import random_state_dict
    from acestep_core.ace15.tiny import checksum
    weights = {k: v.half() for k, v in random_state_dict(config, int(metadata["weight_seed"])).items()}
    torch.testing.assert_close(checksum(weights), tensors["weights.checksum"], rtol=1e-12, atol=0)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    model.eval()
    return model, tensors, json.loads(metadata["cases"])


def case(tensors, name):
    inputs = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(name + ".in.")}
    outputs = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(name + ".out.")}
    return inputs, outputs


FORWARD_CASES = ["forward_b1_reference", "forward_b1_short_lyrics", "forward_b2_silence", "forward_b2_codes",
                 "forward_b1_null"]


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_sampler_forward_equals_comfyui(golden, name):
    model, tensors, cases = golden
    inputs, outputs = case(tensors, name)
    arguments = cases[name]["arguments"]
    batch = inputs["x"].shape[0]
    with torch.no_grad():
        # ComfyUI's forward gives every reference to batch item 0 (all-zero order mask)
        velocity = model(inputs["x"], inputs["timestep"], inputs["context"], lyric_embed=inputs["lyric_embed"],
                         refer_audio=inputs["refer_audio"], audio_codes=inputs.get("audio_codes"),
                         refer_audio_order_mask=torch.zeros(batch, dtype=torch.long), **arguments)
    assert max_error(velocity, outputs["velocity"]) <= TOLERANCE


def test_per_item_reference_equals_comfyui_prepare_condition(golden):
    model, tensors, _ = golden
    inputs, outputs = case(tensors, "prepared_b2_per_item_reference")
    with torch.no_grad():
        velocity = model(inputs["x"], inputs["timestep"], inputs["context"], lyric_embed=inputs["lyric_embed"],
                         refer_audio=inputs["refer_audio"], is_covers=True)   # default: one reference per item
        x = inputs["x"].movedim(-1, -2)
        condition, _, context_latents = model.prepare_condition(
            inputs["context"], None, inputs["lyric_embed"], None, inputs["refer_audio"].movedim(-1, -2),
            torch.arange(2), x, torch.ones_like(x), True)
    assert max_error(condition, outputs["condition"]) <= TOLERANCE
    assert max_error(context_latents, outputs["context_latents"]) <= TOLERANCE
    assert max_error(velocity, outputs["velocity"]) <= TOLERANCE


def test_batch_items_are_independent_with_per_item_references(golden):
    """With one reference per item, item 1 of a batch equals item 1 run alone (ComfyUI's all-zero
    order mask breaks this; our default does not)."""
    model, tensors, _ = golden
    inputs, _ = case(tensors, "prepared_b2_per_item_reference")
    pick = {k: v[1:] for k, v in inputs.items()}
    with torch.no_grad():
        both = model(inputs["x"], inputs["timestep"], inputs["context"], inputs["lyric_embed"], inputs["refer_audio"],
                     is_covers=True)
        alone = model(pick["x"], pick["timestep"], pick["context"], pick["lyric_embed"], pick["refer_audio"],
                      is_covers=True)
    assert max_error(both[1:], alone) <= TOLERANCE


def test_condition_encoder_with_masks_equals_comfyui(golden):
    model, tensors, _ = golden
    inputs, outputs = case(tensors, "encoder_masked")
    with torch.no_grad():
        hidden, mask = model.encoder(inputs["text"], inputs["text_mask"], inputs["lyric"], inputs["lyric_mask"],
                                     inputs["refer_packed"], inputs["order_mask"])
    assert torch.equal(mask.long(), outputs["mask"])
    # positions past the mask hold padding in an order neither side promises beyond the sort
    assert max_error(hidden, outputs["hidden"]) <= TOLERANCE


def test_fsq_round_trip_equals_comfyui(golden):
    model, tensors, _ = golden
    inputs, outputs = case(tensors, "fsq_round_trip")
    with torch.no_grad():
        quantized, indices = model.tokenizer.tokenize(inputs["latents"])
        hints = model.detokenizer(quantized)
        decoded = model.tokenizer.quantizer.get_output_from_indices(indices)
        fixed = model.tokenizer.quantizer.get_output_from_indices(inputs["indices"])
        fixed_hints = model.detokenizer(fixed)
    assert torch.equal(indices.long(), outputs["indices"])
    assert len(set(indices.flatten().tolist())) > 1  # not a degenerate all-one-code case
    for ours, key in ((quantized, "quantized"), (hints, "hints"), (decoded, "decoded"), (fixed, "fixed_decoded"),
                      (fixed_hints, "fixed_hints")):
        assert max_error(ours, outputs[key]) <= TOLERANCE, key
    # decoding the indices gives back exactly what the quantizer produced
    assert max_error(decoded, quantized) <= TOLERANCE
    assert hints.shape == (2, 15, 64)  # 13 frames -> 3 codes at 5 Hz -> 15 frames at 25 Hz
