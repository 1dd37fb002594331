"""ComfyUI's transformer_options on the ACE-Step 1.5 DiT, without ComfyUI: attention replacements
(``patches_replace["attn1"/"attn2"][("double_block", i)]``, what ``set_model_attn1_replace(patch,
"double_block", i)`` stores) and block replacements (``patches_replace["dit"]``) are honoured, and
the options reach every layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acestep_core.ace15 import Ace15Model, tiny_config
from acestep_core.ace15.testing import random_state_dict

FRAMES = 13          # 7 tokens after patching: longer than the window of 2 below, so it masks


@pytest.fixture(scope="module")
def model():
    config = tiny_config(sliding_window=2)
    model = Ace15Model(config)
    model.load_state_dict(random_state_dict(config, seed=5))
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(2, 64, FRAMES, generator=g), timestep=torch.tensor([0.7, 0.3]),
                context=torch.randn(2, 6, 24, generator=g), lyric_embed=torch.randn(2, 5, 24, generator=g),
                refer_audio=torch.randn(2, 64, FRAMES, generator=g))


@pytest.fixture(scope="module")
def plain(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def run(model, inputs, options):
    with torch.no_grad():
        return model(**inputs, transformer_options=options)


def replace_all(model, name, patch):
    """What ``ModelPatcher.set_model_<name>_replace(patch, "double_block", i)`` stores for every i."""
    blocks = len(model.decoder.layers)
    return {"patches_replace": {name: {("double_block", i): patch for i in range(blocks)}}}


def sdpa(q, k, v, extra):
    """Plain attention on the q, k, v a replacement gets, as ``optimized_attention`` computes it."""
    heads, dim = extra["n_heads"], extra["dim_head"]
    q, k, v = (t.view(t.shape[0], t.shape[1], heads, dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=extra["attn_mask"])
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], heads * dim)


def test_options_without_patches_leave_the_output_bit_equal(model, inputs, plain):
    options = {"sigmas": torch.tensor([0.7]), "cond_or_uncond": [0]}
    assert torch.equal(run(model, inputs, options), plain)
    assert torch.equal(run(model, inputs, {}), plain)
    assert set(options) == {"sigmas", "cond_or_uncond"}       # the caller's dict is not changed


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_replacement_through_the_original_attention_is_bit_equal(model, inputs, plain, name):
    calls = []

    def through(q, k, v, extra):
        calls.append(extra["block"])
        return extra["original_attention"](q, k, v)

    assert torch.equal(run(model, inputs, replace_all(model, name, through)), plain)
    blocks = len(model.decoder.layers)
    assert calls == [("double_block", i) for i in range(blocks)]


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_replacement_with_plain_attention_on_its_inputs_gives_the_same_output(model, inputs, plain, name):
    """The q, k, v and attn_mask a replacement gets are those of the layer: plain attention of them
    (with the additive window bias, on the sliding layers) reproduces the model."""
    seen = []

    def attention(q, k, v, extra):
        seen.append((extra["block_index"], extra["sliding_window"], extra["attn_mask"] is not None))
        assert q.shape[-1] == k.shape[-1] == v.shape[-1] == extra["n_heads"] * extra["dim_head"]
        return sdpa(q, k, v, extra)

    out = run(model, inputs, replace_all(model, name, attention))
    assert torch.allclose(out, plain, atol=1e-5, rtol=0), (out - plain).abs().max()
    if name == "attn1":   # tiny_config: window on even layers
        assert seen == [(0, 2, True), (1, None, False), (2, 2, True)]
    else:
        assert seen == [(0, None, False), (1, None, False), (2, None, False)]


def test_window_bias_is_what_the_sliding_layer_masks(model, inputs):
    biases = []

    def record(q, k, v, extra):
        biases.append(extra["attn_mask"])
        return extra["original_attention"](q, k, v)

    run(model, inputs, {"patches_replace": {"attn1": {("double_block", 0): record}}})
    (bias,) = biases
    tokens = (FRAMES + 1) // 2
    index = torch.arange(tokens)
    visible = (index[:, None] - index[None, :]).abs() <= 2
    assert bias.shape == (1, 1, tokens, tokens)
    assert torch.equal(bias[0, 0] == 0, visible)
    assert (bias[0, 0][~visible] == torch.finfo(bias.dtype).min).all()


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_replacement_output_is_used(model, inputs, plain, name):
    def zeros(q, k, v, extra):
        return torch.zeros_like(q)

    out = run(model, inputs, replace_all(model, name, zeros))
    assert (out - plain).abs().max() > 1e-3
    # one block only, keyed with the transformer index as set_model_attn1_replace(..., transformer_index=0) does
    one = run(model, inputs, {"patches_replace": {name: {("double_block", 1, 0): zeros}}})
    assert (one - plain).abs().max() > 1e-3 and not torch.equal(one, out)


def test_block_replacement_called_once_per_block_with_its_index(model, inputs, plain):
    calls = []

    def replace(args, extra):
        options = args["transformer_options"]
        calls.append((options["block"], options["block_index"], options["total_blocks"], options["block_type"]))
        assert args["img"].shape[1] == (FRAMES + 1) // 2 and args["vec"].shape[1] == 6
        assert len(args["pe"]) == 2
        return extra["original_block"](args)

    blocks = len(model.decoder.layers)
    options = {"patches_replace": {"dit": {("double_block", i): replace for i in range(blocks)}}}
    assert torch.equal(run(model, inputs, options), plain)
    assert calls == [(("double_block", i), i, blocks, "double") for i in range(blocks)]

    skipped = run(model, inputs, {"patches_replace": {"dit": {("double_block", 1): lambda args, extra: {
        "img": args["img"]}}}})
    assert (skipped - plain).abs().max() > 1e-3


def test_options_reach_every_block(model, inputs):
    """A marker in the transformer options is in the extra_options of every layer's attention
    replacements, with that layer's block."""
    seen = []

    def record(q, k, v, extra):
        seen.append((extra["marker"], extra["block_index"]))
        return extra["original_attention"](q, k, v)

    options = replace_all(model, "attn1", record)
    options["patches_replace"]["attn2"] = options["patches_replace"]["attn1"]
    options["marker"] = "here"
    run(model, inputs, options)
    blocks = len(model.decoder.layers)
    assert seen == [("here", i) for i in range(blocks) for _ in ("attn1", "attn2")]
