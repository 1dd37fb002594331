"""ACE-Step 1.5 structure: our 2B and XL generation models (built on the meta device) have
exactly the tensor names and shapes of ComfyUI 0.20.1's (tests/data/ace15_manifest.json.gz,
written by scripts/make_ace15_manifest.py), and sizes read back from those shapes give the same
config."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from acestep_core.ace15 import Ace15Model, config_from_state_dict_shapes, released_2b, released_xl, tiny_config
from acestep_core.ace15.testing import random_state_dict
from acestep_core.config import ConfigError

MANIFEST = Path(__file__).parent / "data" / "ace15_manifest.json.gz"
CONFIGS = {"2b": released_2b, "xl": released_xl}


@pytest.fixture(scope="module")
def manifest():
    with gzip.open(MANIFEST, "rt") as f:
        return json.load(f)


def meta_shapes(config) -> dict[str, list[int]]:
    model = Ace15Model(config, dtype=torch.bfloat16, device="meta")
    return {key: list(t.shape) for key, t in model.state_dict().items()}


@pytest.mark.parametrize("name", ["2b", "xl"])
def test_names_and_shapes_equal_comfyui(manifest, name):
    reference = manifest["configs"][name]["shapes"]
    ours = meta_shapes(CONFIGS[name]())
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    wrong = {key: (ours[key], reference[key]) for key in reference if ours[key] != reference[key]}
    assert wrong == {}


@pytest.mark.parametrize("name", ["2b", "xl"])
def test_parameter_count(manifest, name):
    model = Ace15Model(CONFIGS[name](), dtype=torch.bfloat16, device="meta")
    assert sum(p.numel() for p in model.parameters()) == manifest["configs"][name]["parameters"]


@pytest.mark.parametrize("name", ["2b", "xl"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_config_from_reference_shapes(manifest, name, prefix):
    shapes = {prefix + key: shape for key, shape in manifest["configs"][name]["shapes"].items()}
    shapes["vae.some.weight"] = [1]  # other components of a single file are ignored
    config = config_from_state_dict_shapes(shapes, prefix=prefix)
    assert config == CONFIGS[name]()
    assert config.is_xl == (name == "xl")


def test_tiny_config_round_trips_through_shapes():
    config = tiny_config()
    state = random_state_dict(config, seed=0)
    assert config_from_state_dict_shapes(state) == config


def test_config_errors_name_the_missing_tensor(manifest):
    shapes = dict(manifest["configs"]["2b"]["shapes"])
    del shapes["decoder.proj_in.1.weight"]
    with pytest.raises(ConfigError, match="decoder.proj_in.1.weight"):
        config_from_state_dict_shapes(shapes)
    with pytest.raises(ConfigError, match="not an ACE-Step 1.5"):
        config_from_state_dict_shapes({"genre_embedder.weight": [2560, 1]})
