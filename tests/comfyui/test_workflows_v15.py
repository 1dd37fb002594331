"""The ACE-Step 1.5 workflows (workflows/*_v15*.json) and ComfyUI's own 1.5 templates on a real
ComfyUI server, on tiny 1.5 checkpoints with random weights.

Each shipped 1.5 workflow runs shrunk to 2 s and a few steps, as an API prompt (the frontend's
graphToPrompt of the file) and dropped on the canvas of the real frontend with Run pressed; the
saved audio must decode, be stereo at the rate the running ComfyUI's audio nodes use (48 kHz on
0.20.1, which reads the VAE's rate; 44.1 kHz on 0.3.75, whose audio nodes assume it) and exactly
50 latent frames long (2 s at 25 frames/s), finite and audible.

The tiny checkpoints (acestep_core.ace15.tiny.write_tiny_ace15): the all-in-one file with a
planner (as Comfy-Org's holds the 1.7B one), picked in Load ACE-Step Checkpoint; the split files
(DiT, text encoder, planner, VAE) in diffusion_models/, text_encoders/ and vae/, picked in Load
ACE-Step 1.5 (split files).

On ComfyUI 0.20.1, whose templates package ships them, ComfyUI's own 1.5 templates also run with
only their loaders replaced by this pack's (skipped on 0.3.75, which has none).
"""
from __future__ import annotations

import importlib.util
import json
import pkgutil
from pathlib import Path

import numpy as np
import pytest

from comfyui_harness import ComfyServer

from .test_workflows import (GENERATOR, WORKFLOWS_DIR, assert_required_inputs_connected, audio_outputs, declared_inputs,
                             edited, executed_nodes, fresh, nodes_of, prompts_from_the_frontend, read_audio,
                             set_widgets, update_screenshot, write_test_song)

V15_NAMES = list(GENERATOR.V15_WORKFLOWS)
SECONDS = 2.0
FRAMES = 50                      # EmptyAceStep1.5LatentAudio: round(2 s * 48000 / 1920)
VAE_RATE, HOP = 48000, 1920      # the 1.5 VAE: 48 kHz, 1920 samples per latent frame
API_STEPS, CANVAS_STEPS = 2, 3   # different, so that ComfyUI's cache cannot serve one run the other's result
TINY_SPLIT_DIT = "acestep_v1.5_tiny.safetensors"


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
# tiny15: the session's tiny 1.5 models (tests/comfyui/conftest.py)


@pytest.fixture(scope="module")
def audio_rate(comfy_server) -> int:
    """The rate of the audio the running ComfyUI's audio nodes give for a 1.5 VAE: 0.20 reads the
    VAE's own 48 kHz, 0.3.75 assumes 44.1 kHz for every VAE (nodes/ace15_bridge.py resamples)."""
    version = comfy_server.get("/system_stats").json()["system"]["comfyui_version"]
    major, minor = (int(part) for part in version.split(".")[:2])
    return VAE_RATE if (major, minor) >= (0, 20) else 44100


@pytest.fixture(scope="module")
def reference_song(comfy_server, tmp_path_factory) -> str:
    """A 3 s 44.1 kHz stereo song in the server's input/ (LoadAudio of reference_timbre_v15)."""
    path = write_test_song(tmp_path_factory.mktemp("audio15") / "acestep_test_reference.wav", 3.0)
    return comfy_server.add_input_file(path)


def shrink(tiny15: dict, song: str, steps: int) -> dict[str, dict]:
    """Widget values (by node type and name) that run a 1.5 workflow on the tiny models: 2 s of
    audio (the Seconds node feeds the latent and the text encoder's duration), `steps` steps."""
    return {"LoadAceStepCheckpoint": {"ckpt_name": tiny15["aio"]},
            "LoadAceStep15Split": {"unet_name": tiny15["dit"], "text_encoder_name": tiny15["text_encoder"],
                                   "vae_name": tiny15["vae"], "planner_name": tiny15["planner"]},
            "PrimitiveFloat": {"value": SECONDS},
            "KSampler": {"steps": steps},
            "LoadAudio": {"audio": song}}


def check_song(path: Path, rate: int, frames: int = FRAMES, tolerance: int = 0) -> np.ndarray:
    """Stereo audio at `rate` of exactly `frames` latent frames (± tolerance samples, for MP3),
    finite, audible and within full scale."""
    data, got_rate = read_audio(path)
    assert got_rate == rate, f"{path.name}: {got_rate} Hz, expected {rate}"
    assert data.shape[1] == 2, f"{path.name}: {data.shape[1]} channels"
    expected = frames * HOP * rate // VAE_RATE
    assert abs(data.shape[0] - expected) <= tolerance, f"{path.name}: {data.shape[0]} samples, expected {expected}"
    assert np.isfinite(data).all(), f"{path.name}: NaN or infinite samples"
    rms = float(np.sqrt(np.mean(data ** 2)))
    assert rms > 1e-4, f"{path.name}: silent (rms {rms:.2e})"
    assert np.abs(data).max() <= 1.0 + 1e-6, f"{path.name}: beyond full scale"
    return data


def ksampler_id(prompt: dict) -> str:
    (found,) = [k for k, v in prompt.items() if v["class_type"] == "KSampler"]
    return found


# ---------------------------------------------------------------------------------------------
# The shipped files and their values
# ---------------------------------------------------------------------------------------------
AIO = GENERATOR.V15_AIO_MODEL
TURBO_SAMPLER = {"steps": 8, "cfg": 1, "sampler_name": "euler", "scheduler": "simple", "denoise": 1}
BASE_SAMPLER = {"steps": 50, "cfg": 6, "sampler_name": "euler", "scheduler": "simple", "denoise": 1}
PLANNER = {"cfg_scale": 2, "temperature": 0.85, "top_p": 0.9, "top_k": 0, "min_p": 0}
SHIPPED = {
    "text2music_v15_turbo": {"KSampler": TURBO_SAMPLER, "ModelSamplingAuraFlow": {"shift": 3},
                             "TextEncodeAceStepAudio1.5": {"generate_audio_codes": False},
                             "LoadAceStepCheckpoint": {"ckpt_name": "ace_step_1.5_turbo_aio.safetensors"}},
    "text2music_v15_planner": {"KSampler": TURBO_SAMPLER, "ModelSamplingAuraFlow": {"shift": 3},
                               "TextEncodeAceStepAudio1.5": {"generate_audio_codes": True, **PLANNER},
                               "LoadAceStepCheckpoint": {"ckpt_name": "ace_step_1.5_turbo_aio.safetensors"}},
    "text2music_v15_base": {"KSampler": BASE_SAMPLER, "ModelSamplingAuraFlow": {"shift": 3},
                            "TextEncodeAceStepAudio1.5": {"generate_audio_codes": True, **PLANNER},
                            "LoadAceStep15Split": {"unet_name": "acestep_v1.5_xl_base_bf16.safetensors",
                                                   "text_encoder_name": "qwen_0.6b_ace15.safetensors",
                                                   "planner_name": "qwen_4b_ace15.safetensors",
                                                   "vae_name": "ace_1.5_vae.safetensors"}},
    "reference_timbre_v15": {"KSampler": TURBO_SAMPLER, "ModelSamplingAuraFlow": {"shift": 3},
                             "TextEncodeAceStepAudio1.5": {"generate_audio_codes": False},
                             "LoadAceStepCheckpoint": {"ckpt_name": "ace_step_1.5_turbo_aio.safetensors"}},
}


def test_every_15_workflow_has_expectations():
    assert sorted(SHIPPED) == sorted(V15_NAMES)
    assert all((WORKFLOWS_DIR / f"{name}.json").is_file() for name in V15_NAMES)


@pytest.fixture(scope="module")
def api_prompts15(comfy_server, ui) -> dict[str, dict]:
    """Each shipped 1.5 workflow as the API prompt the frontend builds from it."""
    return prompts_from_the_frontend(ui, V15_NAMES)


@pytest.mark.parametrize("name", V15_NAMES)
def test_shipped_15_file(name, comfy_server, api_prompts15):
    """The file as a user gets it: the real file names with the download addresses of ComfyUI's
    own 1.5 templates on the loader (the Missing Models dialog reads them), a note that says where
    each file goes, the recipe's values, one Seconds value for the latent and the text encoder's
    duration, one seed for sampler and planner, and every required input connected."""
    workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
    by_type = {}
    for node in workflow["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    (note,) = by_type.pop("MarkdownNote")
    text = note["widgets_values"][0]
    loader = by_type.get("LoadAceStepCheckpoint", []) + by_type.get("LoadAceStep15Split", [])
    assert len(loader) == 1
    models = loader[0]["properties"]["models"]
    if loader[0]["type"] == "LoadAceStepCheckpoint":
        assert models == [AIO]
        assert AIO["url"] == ("https://huggingface.co/Comfy-Org/ace_step_1.5_ComfyUI_files/resolve/main/"
                              "checkpoints/ace_step_1.5_turbo_aio.safetensors")
        for needle in ("models/checkpoints", "ace_step_1.5_turbo_aio.safetensors", AIO["url"], "random weights"):
            assert needle in text, needle
    else:
        assert [m["directory"] for m in models] == ["diffusion_models", "text_encoders", "text_encoders", "vae"]
        assert [m["name"] for m in models] == loader[0]["widgets_values"][:2] + loader[0]["widgets_values"][3:4] + \
            loader[0]["widgets_values"][2:3]
        for m in models:
            assert m["url"].startswith("https://huggingface.co/Comfy-Org/ace_step_1.5_ComfyUI_files/resolve/main/"
                                       f"split_files/{m['directory']}/")
            assert m["name"] in text and m["url"] in text and f"models/{m['directory']}/" in text
    assert ("LoadAudio" in by_type) == (name == "reference_timbre_v15")
    info = comfy_server.object_info()
    assert_required_inputs_connected(by_type, info)

    prompt = api_prompts15[name]
    for kind, values in SHIPPED[name].items():
        (node,) = nodes_of(prompt, kind)
        for key, value in values.items():
            assert node["inputs"][key] == pytest.approx(value), f"{kind}.{key}: {node['inputs'][key]}"
    (seconds,) = [k for k, v in prompt.items() if v["class_type"] == "PrimitiveFloat"]
    (seed,) = [k for k, v in prompt.items() if v["class_type"] == "PrimitiveInt"]
    assert prompt[seconds]["inputs"]["value"] == 120 and prompt[seed]["inputs"]["value"] == GENERATOR.SEED
    assert nodes_of(prompt, "EmptyAceStep1.5LatentAudio")[0]["inputs"]["seconds"] == [seconds, 0]
    (text_encode,) = nodes_of(prompt, "TextEncodeAceStepAudio1.5")
    assert text_encode["inputs"]["duration"] == [seconds, 0] and text_encode["inputs"]["seed"] == [seed, 0]
    assert nodes_of(prompt, "KSampler")[0]["inputs"]["seed"] == [seed, 0]
    if name == "reference_timbre_v15":   # encoded reference -> ReferenceTimbreAudio -> both sides of CFG
        (ref_id,) = [k for k, v in prompt.items() if v["class_type"] == "ReferenceTimbreAudio"]
        (encode_id,) = [k for k, v in prompt.items() if v["class_type"] == "VAEEncodeAudio"]
        assert prompt[ref_id]["inputs"]["latent"] == [encode_id, 0]
        sampler = nodes_of(prompt, "KSampler")[0]["inputs"]
        assert sampler["positive"] == [ref_id, 0]
        assert prompt[sampler["negative"][0]]["inputs"]["conditioning"] == [ref_id, 0]


# ---------------------------------------------------------------------------------------------
# The recipe is ComfyUI's (its templates package, where installed: ComfyUI 0.20)
# ---------------------------------------------------------------------------------------------
def installed_templates(pattern: str) -> dict[str, Path]:
    """{name: path} of the installed comfyui-workflow-templates* files matching `pattern`."""
    found = {}
    for module in pkgutil.iter_modules():
        if module.name.startswith("comfyui_workflow_templates"):
            for root in importlib.util.find_spec(module.name).submodule_search_locations or []:
                for path in sorted(Path(root).rglob(pattern)):
                    found.setdefault(path.stem, path)
    return found


def loads_15(template: dict) -> bool:
    """A loader of the graph or of a subgraph names an ACE-Step 1.5 file."""
    graphs = [template, *template.get("definitions", {}).get("subgraphs", [])]
    names = [str(v) for graph in graphs for node in graph.get("nodes", [])
             if node.get("type") in ("CheckpointLoaderSimple", "UNETLoader") for v in node.get("widgets_values") or []]
    return any("1.5" in n or "v1.5" in n for n in names)


OFFICIAL_15 = {name: path for name, path in installed_templates("*ace_step*.json").items()
               if loads_15(json.loads(path.read_text()))}
NO_15_TEMPLATES = "this ComfyUI's templates package has no ACE-Step 1.5 templates (0.3.75's; ComfyUI 0.20 ships them)"


def template_node(name: str, kind: str) -> dict:
    (node,) = [n for n in json.loads(OFFICIAL_15[name].read_text())["nodes"] if n["type"] == kind]
    return node


@pytest.mark.parametrize("workflow, template", [("text2music_v15_turbo", "audio_ace_step_1_5_checkpoint"),
                                                ("text2music_v15_planner", "audio_ace_step_1_5_checkpoint"),
                                                ("reference_timbre_v15", "audio_ace_step_1_5_checkpoint"),
                                                ("text2music_v15_base", "audio_ace_step1_5_xl_base")])
def test_15_recipe_is_the_official_templates(workflow, template, api_prompts15):
    """Steps, CFG, sampler, schedule, shift, the planner's sampling and the model files and
    addresses are those of ComfyUI 0.20.1's template (read from the installed package)."""
    if template not in OFFICIAL_15:
        pytest.skip(NO_15_TEMPLATES)
    steps_cfg = template_node(template, "KSampler")["widgets_values"][2:7]
    ours = nodes_of(api_prompts15[workflow], "KSampler")[0]["inputs"]
    assert [ours[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "denoise")] == steps_cfg
    assert nodes_of(api_prompts15[workflow], "ModelSamplingAuraFlow")[0]["inputs"]["shift"] == \
        template_node(template, "ModelSamplingAuraFlow")["widgets_values"][0]
    text = template_node(template, "TextEncodeAceStepAudio1.5")["widgets_values"]
    ours_text = nodes_of(api_prompts15[workflow], "TextEncodeAceStepAudio1.5")[0]["inputs"]
    if len(text) > 9:   # the 1.5 checkpoint template predates the planner widgets: their defaults apply
        assert [ours_text[k] for k in ("cfg_scale", "temperature", "top_p", "top_k", "min_p")] == text[10:15]
    all_models = [m for graph in [json.loads(OFFICIAL_15[template].read_text())] for n in graph["nodes"]
                  for m in n.get("properties", {}).get("models", [])]
    workflow_file = json.loads((WORKFLOWS_DIR / f"{workflow}.json").read_text())
    (loader,) = [n for n in workflow_file["nodes"] if n["type"] in ("LoadAceStepCheckpoint", "LoadAceStep15Split")]
    for model in loader["properties"]["models"]:
        assert model in all_models, f"{model} is not among {template}'s models"


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", V15_NAMES)
def test_15_workflow_runs_as_api_prompt(name, comfy_server, tiny15, reference_song, audio_rate, api_prompts15,
                                        artifacts_dir):
    prompt = edited(api_prompts15[name], shrink(tiny15, reference_song, API_STEPS))
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert ksampler_id(prompt) in executed_nodes(entry)
    (song,) = audio_outputs(comfy_server, entry)
    assert song.suffix == ".flac" and song.name.startswith(f"ace_step_{name}_")
    check_song(song, audio_rate)
    (artifacts_dir / f"workflow_{name}_api.flac").write_bytes(song.read_bytes())


@pytest.mark.parametrize("name", V15_NAMES)
def test_15_workflow_runs_from_the_canvas(name, comfy_server, tiny15, reference_song, audio_rate, api_prompts15, ui,
                                          artifacts_dir, readme_images):
    """Dropped on the canvas (screenshot for the README), widgets changed as a user does, Run."""
    fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=True)
    ui.page.wait_for_function("window.app.canvas.ds.scale !== 1", timeout=30_000)
    ui.page.wait_for_timeout(1000)
    ui.page.wait_for_load_state("networkidle")
    ui.page.wait_for_timeout(300)
    assert ui.page_errors == [], ui.page_errors
    update_screenshot(ui.screenshot(artifacts_dir / f"workflow_{name}_opened.png"), readme_images / f"{name}.png")

    values = shrink(tiny15, reference_song, CANVAS_STEPS)
    set_widgets(ui, values)
    entry = comfy_server.wait_for(ui.run(), timeout=600)
    queued = entry["prompt"][2]
    expected = edited(api_prompts15[name], values)
    assert declared_inputs(queued, comfy_server.object_info()) == declared_inputs(expected, comfy_server.object_info())
    assert ksampler_id(queued) in executed_nodes(entry), "the sampler's result came from the cache"
    (song,) = audio_outputs(comfy_server, entry)
    check_song(song, audio_rate)
    (artifacts_dir / f"workflow_{name}_canvas.flac").write_bytes(song.read_bytes())


# ---------------------------------------------------------------------------------------------
# ComfyUI's own 1.5 templates with this pack's loaders
# ---------------------------------------------------------------------------------------------
SPLIT_LOADERS = ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader")


def with_our_15_loaders(prompt: dict, tiny15: dict) -> dict:
    """CheckpointLoaderSimple -> LoadAceStepCheckpoint (same MODEL, CLIP, VAE outputs);
    UNETLoader + CLIPLoader / DualCLIPLoader + VAELoader -> one LoadAceStep15Split whose outputs
    0, 1, 2 take the links of the three (a DualCLIPLoader's second file is the planner)."""
    prompt = json.loads(json.dumps(prompt))
    by_type = {}
    for key, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(key)
    if "CheckpointLoaderSimple" in by_type:
        (key,) = by_type["CheckpointLoaderSimple"]
        assert not any(kind in by_type for kind in SPLIT_LOADERS)
        prompt[key] = {"class_type": "LoadAceStepCheckpoint", "inputs": {"ckpt_name": tiny15["aio"]}}
        return prompt
    (unet,) = by_type["UNETLoader"]
    (vae,) = by_type["VAELoader"]
    (clip,) = by_type.get("DualCLIPLoader", []) + by_type.get("CLIPLoader", [])
    planner = tiny15["planner"] if prompt[clip]["class_type"] == "DualCLIPLoader" else "none"
    new = "ace15_split_loader"          # any string is a node id in an API prompt
    prompt[new] = {"class_type": "LoadAceStep15Split",
                   "inputs": {"unet_name": tiny15["dit"], "text_encoder_name": tiny15["text_encoder"],
                              "vae_name": tiny15["vae"], "planner_name": planner}}
    output_of = {unet: 0, clip: 1, vae: 2}
    for key in (unet, clip, vae):
        del prompt[key]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] in output_of:
                node["inputs"][name] = [new, output_of[value[0]]]
    return prompt


def shrunk_template(prompt: dict, steps: int = API_STEPS) -> dict:
    """2 s and `steps` steps wherever the template holds the value itself (not through a link)."""
    values = {"EmptyAceStep1.5LatentAudio": {"seconds": SECONDS}, "TextEncodeAceStepAudio1.5": {"duration": SECONDS},
              "PrimitiveFloat": {"value": SECONDS}, "KSampler": {"steps": steps}}
    for node in prompt.values():
        for name, value in values.get(node["class_type"], {}).items():
            if not isinstance(node["inputs"].get(name), list):
                node["inputs"][name] = value
    return prompt


# What an online language model node (audio_ace_step_1_5_split_llm asks Gemini for a song) is
# replaced with: text in the shape that template's RegexExtract nodes split (tags, ---, lyrics).
OFFLINE_SONG = "synth pop, female vocals, 120 bpm\n---\n[verse]\nNeon lights along the river\n[chorus]\nOh oh"


def offline(prompt: dict, info: dict) -> dict:
    """The template with each of ComfyUI's online API nodes (they need an account and the network)
    replaced by a PrimitiveStringMultiline holding OFFLINE_SONG; only nodes whose outputs are all
    STRING are replaced, anything else fails here."""
    prompt = json.loads(json.dumps(prompt))
    for key, node in prompt.items():
        spec = info.get(node["class_type"], {})
        if spec.get("api_node"):
            assert set(spec["output"]) == {"STRING"}, f"{node['class_type']} gives {spec['output']}"
            prompt[key] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": OFFLINE_SONG}}
    return prompt


def test_official_15_templates_are_installed(comfy_server):
    """A ComfyUI with its own 1.5 nodes (0.20) has the templates this module runs: none missing."""
    if comfy_server.object_info("TextEncodeAceStepAudio1.5").get("python_module", "").startswith("custom_nodes"):
        pytest.skip("this ComfyUI has no 1.5 nodes of its own (the pack provides them): " + NO_15_TEMPLATES)
    expected = {"audio_ace_step_1_5_checkpoint", "audio_ace_step_1_5_split", "audio_ace_step_1_5_split_4b",
                "audio_ace_step_1_5_split_llm", "audio_ace_step1_5_xl_base", "audio_ace_step1_5_xl_sft",
                "audio_ace_step1_5_xl_turbo"}
    assert expected <= set(OFFICIAL_15), sorted(OFFICIAL_15)


@pytest.mark.parametrize("template", sorted(OFFICIAL_15) or [pytest.param("none", marks=pytest.mark.skip(
    reason=NO_15_TEMPLATES))])
def test_official_15_template_runs_with_our_loaders(template, comfy_server, tiny15, audio_rate, ui):
    fresh(ui).load_workflow(OFFICIAL_15[template], drag_drop=False)
    prompt = ui.graph_to_prompt()       # subgraphs are flattened here, as when Run is pressed
    prompt = shrunk_template(with_our_15_loaders(offline(prompt, comfy_server.object_info()), tiny15))
    entry = comfy_server.run_prompt(prompt, timeout=600)
    songs = audio_outputs(comfy_server, entry)
    assert songs, f"{template} saved no audio"
    for song in songs:
        # MP3 (SaveAudioMP3) adds encoder delay / padding: allow a few MP3 frames.
        check_song(song, audio_rate, tolerance=3 * 1152 if song.suffix == ".mp3" else 0)
