"""Attention and block replacements registered with ComfyUI's own ModelPatcher API, on ComfyUI
0.20.1's ACE-Step 1.5 model and on our bare ``Ace15Model`` with the same tiny weights.

ComfyUI 0.20.1's ``comfy/ldm/ace/ace_step15.py`` takes ``transformer_options`` only into
``**kwargs`` of ``AceStepConditionGenerationModel.forward`` and reads no patch, so it calls a
replacement for no block: the test records that, and fails (asking for the keys to be compared)
if a later ComfyUI starts honouring them. Ours calls it for every ``("double_block", i)`` that
``set_model_attn1_replace(patch, "double_block", i)`` registered. ComfyUI versions without the 1.5
model (0.3.75) skip this module."""
from __future__ import annotations

import pytest
import torch

ace_step15 = pytest.importorskip("comfy.ldm.ace.ace_step15", reason="this ComfyUI has no ACE-Step 1.5 model")

from acestep_core.ace15 import Ace15Model, tiny_config  # noqa: E402
from acestep_core.ace15.testing import random_state_dict  # noqa: E402

FRAMES = 13


@pytest.fixture(scope="module")
def models():
    """(ComfyUI's ModelPatcher around its ACEStep15 BaseModel, our Ace15Model), same weights.
    ComfyUI's loader assumes the released 128-wide heads, so its model is built from
    supported_models.ACEStep15 with the tiny sizes, as scripts/make_ace15_golden.py does."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    from make_ace15_manifest import comfy_kwargs

    config = tiny_config(sliding_window=2)
    weights = random_state_dict(config, seed=7)
    model_config = comfy.supported_models.ACEStep15({"audio_model": "ace1.5", **comfy_kwargs(config)})
    model_config.custom_operations = comfy.ops.disable_weight_init
    base = comfy.model_base.ACEStep15(model_config, device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(weights, strict=True)
    base.eval()
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    ours = Ace15Model(config)
    ours.load_state_dict(weights, strict=True)
    return patcher, ours.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return dict(x=torch.randn(1, 64, FRAMES, generator=g), timestep=torch.tensor([0.6]),
                context=torch.randn(1, 6, 24, generator=g), lyric_embed=torch.randn(1, 5, 24, generator=g),
                refer_audio=torch.randn(1, 64, FRAMES, generator=g))


def patched(patcher, register):
    model = patcher.clone()
    for i in range(len(model.model.diffusion_model.decoder.layers)):
        register(model, i)
    return model.model_options["transformer_options"]


def comfyui_forward(patcher, inputs, options):
    """ComfyUI's model called as ``BaseModel._apply_model`` calls a diffusion model:
    ``diffusion_model(x, t, context=..., <conds>, transformer_options=...)``."""
    a = dict(inputs)
    with torch.no_grad():
        return patcher.model.diffusion_model(a.pop("x"), a.pop("timestep"), transformer_options=options, **a)


def our_forward(ours, inputs, options):
    with torch.no_grad():
        return ours(**inputs, transformer_options=options)


def assert_close(mine, theirs):
    """Ours on ComfyUI's numbers, as tests/test_ace15_numerics.py checks them unpatched."""
    scale = max(1.0, theirs.abs().max().item())
    assert (mine - theirs).abs().max().item() <= 1e-4 * scale


def assert_same_keys(comfyui_calls, our_calls, what):
    assert comfyui_calls == [] or comfyui_calls == our_calls, (
        f"ComfyUI's ACE-Step 1.5 model now calls {what} for {comfyui_calls}, ours for {our_calls}: "
        "make the keys match (acestep_core/patching.py)")


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_attention_replacement_keys(models, inputs, name):
    patcher, ours = models
    calls = []

    def through(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return extra_options["original_attention"](q, k, v)

    options = patched(patcher, lambda m, i: getattr(m, f"set_model_{name}_replace")(through, "double_block", i))
    blocks = len(ours.decoder.layers)
    assert set(options["patches_replace"][name]) == {("double_block", i) for i in range(blocks)}

    plain = comfyui_forward(patcher, inputs, {})
    theirs = comfyui_forward(patcher, inputs, options)
    comfyui_calls, calls[:] = list(calls), []
    mine = our_forward(ours, inputs, options)
    assert calls == [("double_block", i) for i in range(blocks)]
    assert_same_keys(comfyui_calls, calls, f"{name} replacements")
    assert torch.equal(theirs, plain)
    assert_close(mine, theirs)


def test_block_replacement_keys(models, inputs):
    patcher, ours = models
    calls = []

    def replace(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    options = patched(patcher, lambda m, i: m.set_model_patch_replace(replace, "dit", "double_block", i))
    theirs = comfyui_forward(patcher, inputs, options)
    comfyui_calls, calls[:] = list(calls), []
    mine = our_forward(ours, inputs, options)
    assert calls == list(range(len(ours.decoder.layers)))
    assert_same_keys(comfyui_calls, calls, "block replacements")
    assert_close(mine, theirs)
