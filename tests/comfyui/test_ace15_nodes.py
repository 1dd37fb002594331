"""The ACE-Step 1.5 nodes ComfyUI 0.20.1 has built in, provided for ComfyUI versions without them:
registered only where the running ComfyUI lacks the id, with 0.20.1's inputs and defaults."""
from __future__ import annotations

import importlib

import pytest
import torch

from .pack_import import PACK, comfy_extras, comfy_nodes_module, pack_module

IDS = ("TextEncodeAceStepAudio1.5", "EmptyAceStep1.5LatentAudio", "ReferenceTimbreAudio")


@pytest.fixture(scope="module")
def env():
    nodes = comfy_nodes_module()
    comfy_extras("nodes_ace")
    pack_module()
    return nodes, importlib.import_module(f"{PACK}.nodes.ace15_nodes")


def test_registered_only_where_comfyui_lacks_them(env):
    nodes, ours = env
    built_in = ours._built_in_ids()
    for node_id in IDS:
        if node_id in built_in:               # ComfyUI 0.20.1: keep its node, and ours must match it
            theirs = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
            mine = ours._ALL[node_id][0].INPUT_TYPES()
            for group in ("required", "optional"):
                assert list(theirs.get(group, {})) == list(mine.get(group, {})), (node_id, group)
                for name, spec in mine.get(group, {}).items():
                    their_spec = theirs[group][name]
                    if isinstance(spec[0], list):     # V3 nodes spell a combo ("COMBO", {"options": [...]})
                        options = their_spec[1]["options"] if their_spec[0] == "COMBO" else their_spec[0]
                        assert list(options) == spec[0], (node_id, name)
                    else:
                        assert their_spec[0] == spec[0], (node_id, name)
                    for key in ("default", "min", "max", "step"):
                        if len(spec) > 1 and key in spec[1]:
                            assert their_spec[1].get(key) == spec[1][key], (node_id, name, key)
        else:                                 # ComfyUI 0.3.75: ours fills the gap
            assert node_id in ours.NODE_CLASS_MAPPINGS
            assert nodes.NODE_CLASS_MAPPINGS.get(node_id) in (None, ours.NODE_CLASS_MAPPINGS[node_id])


def test_empty_latent_and_reference(env):
    _, ours = env
    (latent,) = ours.EmptyAceStep15LatentAudio().execute(10.02, 2)
    assert latent["type"] == "audio" and latent["samples"].shape == (2, 64, 250) and not latent["samples"].any()
    cond = [[torch.zeros(1, 3, 4), {"pooled_output": None}]]
    assert ours.ReferenceAudio().execute(cond)[0] is cond
    ref = {"samples": torch.ones(1, 64, 7)}
    (once,) = ours.ReferenceAudio().execute(cond, ref)
    (twice,) = ours.ReferenceAudio().execute(once, {"samples": torch.zeros(1, 64, 5)})
    assert len(once[0][1]["reference_audio_timbre_latents"]) == 1 and "reference_audio_timbre_latents" not in cond[0][1]
    assert [t.shape[-1] for t in twice[0][1]["reference_audio_timbre_latents"]] == [7, 5]


class _Clip:
    def __init__(self, model):
        self.cond_stage_model = model
        self.calls = []

    def tokenize(self, text, **kwargs):
        self.calls.append((text, kwargs))
        return {"tokens": text}

    def encode_from_tokens_scheduled(self, tokens):
        return [[torch.zeros(1, 2, 3), {"tokens": tokens}]]


class _Ace15TextModel:
    acestep_generation = "1.5"
    has_planner = False


ARGS = dict(tags="pop", lyrics="la", seed=3, bpm=100, duration=30.0, timesignature="3", language="fr",
            keyscale="E minor", cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0)


def test_text_encode_needs_a_15_encoder_and_says_when_the_planner_is_missing(env):
    _, ours = env
    node = ours.TextEncodeAceStepAudio15()
    with pytest.raises(ValueError, match="needs an ACE-Step 1.5 text encoder"):
        node.execute(_Clip(object()), generate_audio_codes=False, **ARGS)
    clip = _Clip(_Ace15TextModel())
    with pytest.raises(ours.PlannerNotLoaded, match="planner .* is not loaded: set generate_audio_codes to false"):
        node.execute(clip, generate_audio_codes=True, **ARGS)
    assert clip.calls == []
    (cond,) = node.execute(clip, generate_audio_codes=False, **ARGS)
    text, kwargs = clip.calls[0]
    assert text == "pop" and kwargs["timesignature"] == 3 and kwargs["generate_audio_codes"] is False
    assert kwargs["language"] == "fr" and kwargs["duration"] == 30.0 and cond[0][1]["tokens"] == {"tokens": "pop"}
