"""The shipped workflows (workflows/*.json) on a real ComfyUI server, as users run them.

Each workflow runs end to end on the tiny random-weight checkpoint, shrunk to a few seconds of
audio and a few steps:

  (a) as an API prompt: the UI file converted by the real frontend (app.graphToPrompt, what the
      Run button sends), values edited down, queued through the HTTP API;
  (b) as a user does it: the file dropped on the canvas of the real frontend in headless
      Chromium, widgets changed on the canvas, Run pressed (app.queuePrompt).

The saved audio must decode, be 44.1 kHz stereo of exactly frames * 4096 samples, and be
neither silent nor NaN. (b) also takes the README's screenshots (docs/images/<workflow>.png)
of the file as opened, before any change.

Also here: the files are what scripts/make_workflows.py generates, ComfyUI lists them as the
pack's templates, and ComfyUI's own ACE-Step templates (comfyui-workflow-templates) run with
their CheckpointLoaderSimple replaced by LoadAceStepCheckpoint.
"""
from __future__ import annotations

import importlib.util
import json
import math
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from .harness import REPO, ComfyServer

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 4096          # one latent frame of the music DCAE + vocoder: 8 * 512 samples
WORKFLOWS_DIR = REPO / "workflows"
DOCS_IMAGES = REPO / "docs" / "images"
PACK_FOLDER = "comfyui-acestep"   # the pack's folder name in custom_nodes/ (harness.PACK_NAME)
SCREEN = (1600, 900)

# How far the runs are shrunk. The canvas runs use other values than the API runs so that
# ComfyUI's cache cannot hand one of them the other's results.
API_EDIT = {"seconds": 2.0, "steps": 2}
CANVAS_EDIT = {"seconds": 3.0, "steps": 3}
INPUT_SECONDS = 2.0               # the audio that audio2audio loads


def load_generator():
    """scripts/make_workflows.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
WORKFLOW_NAMES = list(GENERATOR.WORKFLOWS)


# ---------------------------------------------------------------------------------------------
# Audio checks
# ---------------------------------------------------------------------------------------------
def latent_frames(seconds: float) -> int:
    """EmptyAceStepLatentAudio's frame count: int(seconds * 44100 / 512 / 8)."""
    return int(seconds * SAMPLE_RATE / 512 / 8)


def encoded_frames(samples: int) -> int:
    """Frames VAEEncodeAudio gives for this many 44.1 kHz samples: the pack's VAE pads the end
    to whole frames (ComfyUI's own ACE VAE would crop)."""
    return math.ceil(samples / SAMPLES_PER_FRAME)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(samples [S, C] float64, sample rate) of a saved FLAC / MP3 / WAV file."""
    assert path.is_file(), f"{path} was not written"
    data, rate = soundfile.read(str(path), always_2d=True)
    return data, rate


def check_song(path: Path, frames: int | None, channels: int = 2, tolerance: int = 0) -> np.ndarray:
    """The file decodes to 44.1 kHz `channels`-channel audio of frames * 4096 samples
    (± tolerance, for lossy formats), finite and audible. Returns the samples."""
    data, rate = read_audio(path)
    assert rate == SAMPLE_RATE, f"{path.name}: {rate} Hz"
    assert data.shape[1] == channels, f"{path.name}: {data.shape[1]} channels"
    if frames is not None:
        expected = frames * SAMPLES_PER_FRAME
        assert abs(data.shape[0] - expected) <= tolerance, f"{path.name}: {data.shape[0]} samples, expected {expected}"
    assert np.isfinite(data).all(), f"{path.name}: NaN or infinite samples"
    rms = float(np.sqrt(np.mean(data ** 2)))
    assert rms > 1e-3, f"{path.name}: silent (rms {rms:.2e})"
    assert np.abs(data).max() <= 1.0 + 1e-6, f"{path.name}: clipped beyond full scale"
    return data


def write_test_song(path: Path, seconds: float, rate: int = SAMPLE_RATE, channels: int = 2, seed: int = 0) -> Path:
    """A short 'song': two detuned tones per channel with a little noise, 16-bit WAV."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    columns = [0.25 * np.sin(2 * np.pi * (220.0 + 55.0 * c) * t) + 0.15 * np.sin(2 * np.pi * (330.0 + 7.0 * c) * t)
               + 0.02 * rng.standard_normal(n) for c in range(channels)]
    soundfile.write(str(path), np.stack(columns, axis=1).astype(np.float32), rate, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------------------------
# History helpers
# ---------------------------------------------------------------------------------------------
def audio_outputs(server: ComfyServer, entry: dict) -> list[Path]:
    return [p for p in server.output_files(entry) if p.suffix in (".flac", ".mp3", ".opus", ".wav")]


def executed_nodes(entry: dict) -> set[str]:
    """Node ids that really ran (not served from ComfyUI's cache) in a finished prompt."""
    cached = set()
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            cached.update(data["nodes"])
    return set(entry["prompt"][2]) - cached


def nodes_of(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


def shrink(prompt: dict, checkpoint: str, input_audio: str, seconds: float, steps: int) -> dict:
    """The prompt with the tiny checkpoint, `seconds` of audio, `steps` steps, our input file."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LoadAceStepCheckpoint":
            inputs["ckpt_name"] = checkpoint
        elif kind == "EmptyAceStepLatentAudio":
            inputs["seconds"] = seconds
        elif kind in ("KSampler", "KSamplerAdvanced", "BasicScheduler"):
            inputs["steps"] = steps
        elif kind == "LoadAudio":
            inputs["audio"] = input_audio
    return prompt


def expected_frames(prompt: dict, input_frames: int) -> int:
    """Latent frames of the song a (shrunk) workflow makes: from its empty latent, or from the
    input audio when it starts from LoadAudio."""
    empty = nodes_of(prompt, "EmptyAceStepLatentAudio")
    return latent_frames(empty[0]["inputs"]["seconds"]) if empty else input_frames


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def input_audio(comfy_server, tmp_path_factory) -> tuple[str, int]:
    """(file name in the server's input/, latent frames it encodes to) for LoadAudio."""
    path = write_test_song(tmp_path_factory.mktemp("audio") / "acestep_test_input.wav", INPUT_SECONDS)
    name = comfy_server.add_input_file(path)
    return name, encoded_frames(int(round(INPUT_SECONDS * SAMPLE_RATE)))


@pytest.fixture(scope="module")
def quiet_canvas(comfy_server):
    """Screenshots without the minimap and the fps counter (it changes from run to run); the
    server's settings are put back afterwards (the server is shared by the session)."""
    changes = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
    before = requests.get(comfy_server.url + "/settings", timeout=30).json()
    requests.post(comfy_server.url + "/settings", json=changes, timeout=30).raise_for_status()
    yield
    restore = {key: before.get(key, True) for key in changes}   # both default to True
    requests.post(comfy_server.url + "/settings", json=restore, timeout=30).raise_for_status()


@pytest.fixture(scope="module")
def ui(comfy_server, quiet_canvas):
    """One headless Chromium page on the server's frontend for the module (reloaded per use)."""
    with comfy_server.browser(*SCREEN) as page:
        yield page


def fresh(ui):
    """The page reloaded with nothing remembered from earlier loads (the frontend keeps open
    workflows in the browser's storage): an empty app, as a user who just opened ComfyUI."""
    ui.evaluate("""() => {
        localStorage.clear();
        sessionStorage.clear();
        // The 'Try Nodes 2.0' banner would hide the top of the canvas.
        localStorage.setItem('vueNodesBannerDismissed', 'true');
    }""")
    ui.page.reload()
    ui.page.wait_for_function("window.app && window.app.graph")
    return ui


def set_widgets(ui, values: dict[str, dict[str, object]]) -> None:
    """Change widget values on the canvas, by node type and widget name, as a user does."""
    missing = ui.evaluate("""(values) => {
        const missing = [];
        for (const [type, widgets] of Object.entries(values)) {
            const nodes = window.app.graph.nodes.filter(n => n.type === type);
            if (!nodes.length) continue;
            for (const node of nodes) for (const [name, value] of Object.entries(widgets)) {
                const w = node.widgets?.find(w => w.name === name);
                if (!w) { missing.push(type + '.' + name); continue; }
                w.value = value;
                w.callback?.(value, window.app.canvas, node);
            }
        }
        window.app.graph.setDirtyCanvas(true, true);
        return missing;
    }""", values)
    assert missing == [], f"widgets not found on the canvas: {missing}"


def update_screenshot(new: Path, kept: Path, changed_fraction: float = 1e-3) -> None:
    """Copy a fresh screenshot over the README's copy unless they look the same: a few pixels
    always differ between runs (the canvas grid behind the translucent zoom bar), and a
    rewrite for those would only churn the git history."""
    from PIL import Image

    if kept.exists():
        with Image.open(new) as a, Image.open(kept) as b:
            if a.size == b.size:
                diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
                if (diff.max(axis=2) > 8).mean() < changed_fraction:
                    return
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(new.read_bytes())


# ---------------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------------
def test_shipped_files_are_the_generators_output(comfy_server, ui):
    """workflows/*.json are exactly what scripts/make_workflows.py makes in the real frontend
    (so they are reproducible, and nobody edited one by hand without the generator)."""
    shipped = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))
    assert shipped == sorted(WORKFLOW_NAMES)
    built = GENERATOR.generate(comfy_server, ui=ui)
    for name in WORKFLOW_NAMES:
        assert (WORKFLOWS_DIR / f"{name}.json").read_text() == built[name], (
            f"workflows/{name}.json differs from the generator's output: run python scripts/make_workflows.py")


def test_templates_endpoint_lists_the_workflows(comfy_server):
    """ComfyUI offers the files as the pack's templates (Workflow > Browse Templates):
    GET /api/workflow_templates lists them under the pack's folder, and each is served."""
    listing = comfy_server.get("/api/workflow_templates").json()
    assert sorted(listing.get(PACK_FOLDER, [])) == sorted(WORKFLOW_NAMES), listing
    for name in WORKFLOW_NAMES:
        served = comfy_server.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.json")
        assert served.json() == json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def test_templates_open_from_the_templates_dialog(ui):
    """In the frontend: Templates > Extensions > comfyui-acestep shows the workflows, and a
    click opens one on the canvas."""
    fresh(ui).evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    ui.page.get_by_text(PACK_FOLDER, exact=True).click()
    for name in WORKFLOW_NAMES:
        ui.page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    ui.page.get_by_text("text2music", exact=True).first.click()
    ui.page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'LoadAceStepCheckpoint')", timeout=30_000)
    types = ui.evaluate("() => window.app.graph.nodes.map(n => n.type)")
    shipped = json.loads((WORKFLOWS_DIR / "text2music.json").read_text())
    assert sorted(types) == sorted(node["type"] for node in shipped["nodes"])


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_shipped_defaults(name):
    """What a user gets before changing anything: the real checkpoint's name (with the
    download link ComfyUI's missing-models dialog offers), the official template's sampling
    values, a Note that says where the checkpoint goes and that the demo one makes noise."""
    workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
    by_type = {}
    for node in workflow["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    (loader,) = by_type["LoadAceStepCheckpoint"]
    assert loader["widgets_values"][0] == "ace_step_v1_3.5b.safetensors"
    assert loader["properties"]["models"][0]["name"] == "ace_step_v1_3.5b.safetensors"
    assert loader["properties"]["models"][0]["directory"] == "checkpoints"
    (sampler,) = by_type["KSampler"]
    seed, control, steps, cfg, sampler_name, scheduler, denoise = sampler["widgets_values"]
    assert (steps, cfg, sampler_name, scheduler) == (50, 5, "euler", "simple")
    assert denoise == (0.3 if name == "audio2audio" else 1)
    assert by_type["ModelSamplingSD3"][0]["widgets_values"] == [5]
    assert "SaveAudio" in by_type and "VAEDecodeAudio" in by_type and "TextEncodeAceStepAudio" in by_type
    assert "ConditioningZeroOut" in by_type
    assert ("LoadAudio" in by_type) == (name == "audio2audio")
    assert ("EmptyAceStepLatentAudio" in by_type) == (name != "audio2audio")
    (note,) = by_type["MarkdownNote"]
    text = note["widgets_values"][0]
    for needle in ("models/checkpoints", "ace_step_v1_3.5b.safetensors", "random weights", "noise"):
        assert needle in text, needle
    # Every input of every node is connected (a dangling input fails only when queued).
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            assert slot.get("link") is not None, f"{node['type']}.{slot['name']} is not connected"


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_prompts(comfy_server, ui) -> dict[str, dict]:
    """Each shipped workflow as the API prompt that the frontend builds from it."""
    prompts = {}
    for name in WORKFLOW_NAMES:
        fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=False)
        prompts[name] = ui.graph_to_prompt()
    return prompts


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_runs_as_api_prompt(name, comfy_server, tiny_checkpoints, input_audio, api_prompts, artifacts_dir):
    prompt = api_prompts[name]
    # The frontend turned the file into the graph the workflow describes.
    (sampler,) = nodes_of(prompt, "KSampler")
    assert sampler["inputs"]["cfg"] == 5 and sampler["inputs"]["steps"] == 50
    assert nodes_of(prompt, "LoadAceStepCheckpoint")[0]["inputs"]["ckpt_name"] == "ace_step_v1_3.5b.safetensors"
    assert not nodes_of(prompt, "MarkdownNote"), "notes are not sent to the server"

    prompt = shrink(prompt, tiny_checkpoints["comfyui"], input_audio[0], **API_EDIT)
    entry = comfy_server.run_prompt(prompt, timeout=600)
    (song,) = audio_outputs(comfy_server, entry)
    assert song.suffix == ".flac" and song.name.startswith(f"ace_step_{name}")
    check_song(song, expected_frames(prompt, input_audio[1]))
    (artifacts_dir / f"workflow_{name}_api.flac").write_bytes(song.read_bytes())


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_runs_from_the_canvas(name, comfy_server, tiny_checkpoints, input_audio, ui, artifacts_dir):
    """Dropped on the canvas, screenshot for the README, widgets changed, Run."""
    fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=True)
    # No view is stored in the file: ComfyUI fits the graph to the window once it is drawn.
    ui.page.wait_for_function("window.app.canvas.ds.scale !== 1", timeout=30_000)
    ui.page.wait_for_timeout(500)
    assert ui.page_errors == [], ui.page_errors
    update_screenshot(ui.screenshot(artifacts_dir / f"workflow_{name}_opened.png"), DOCS_IMAGES / f"{name}.png")

    set_widgets(ui, {"LoadAceStepCheckpoint": {"ckpt_name": tiny_checkpoints["comfyui"]},
                     "EmptyAceStepLatentAudio": {"seconds": CANVAS_EDIT["seconds"]},
                     "KSampler": {"steps": CANVAS_EDIT["steps"]},
                     "LoadAudio": {"audio": input_audio[0]}})
    prompt_id = ui.run()
    entry = comfy_server.wait_for(prompt_id, timeout=600)
    ui.page.wait_for_timeout(500)
    ui.screenshot(artifacts_dir / f"workflow_{name}_after_run.png")

    prompt = entry["prompt"][2]
    (sampler_id,) = [k for k, v in prompt.items() if v["class_type"] == "KSampler"]
    assert sampler_id in executed_nodes(entry), "the sampler's result came from the cache"
    sampler = prompt[sampler_id]["inputs"]
    assert sampler["steps"] == CANVAS_EDIT["steps"] and sampler["cfg"] == 5          # edited / as shipped
    assert sampler["denoise"] == pytest.approx(0.3 if name == "audio2audio" else 1.0)
    (song,) = audio_outputs(comfy_server, entry)
    check_song(song, expected_frames(prompt, input_audio[1]))
    (artifacts_dir / f"workflow_{name}_canvas.flac").write_bytes(song.read_bytes())


# ---------------------------------------------------------------------------------------------
# ComfyUI's own ACE-Step templates with our loader
# ---------------------------------------------------------------------------------------------
def official_ace_templates() -> dict[str, Path]:
    """ACE-Step workflow templates of the installed comfyui-workflow-templates packages."""
    found = {}
    for module in pkgutil.iter_modules():
        if not module.name.startswith("comfyui_workflow_templates"):
            continue
        spec = importlib.util.find_spec(module.name)
        for root in spec.submodule_search_locations or []:
            for path in sorted(Path(root).rglob("*ace_step*.json")):
                found.setdefault(path.stem, path)
    return found


OFFICIAL_TEMPLATES = official_ace_templates()


def test_official_templates_are_installed():
    """The package that ComfyUI 0.3.75 requires ships these (a missing one fails, not skips)."""
    for name in ("audio_ace_step_1_t2a_song", "audio_ace_step_1_t2a_instrumentals", "audio_ace_step_1_m2m_editing"):
        assert name in OFFICIAL_TEMPLATES, f"{name} not found in comfyui_workflow_templates* ({sys.executable})"


def with_our_loader(prompt: dict, checkpoint: str) -> dict:
    """CheckpointLoaderSimple -> LoadAceStepCheckpoint: same outputs (MODEL, CLIP, VAE), so
    every link stays as it was."""
    prompt = json.loads(json.dumps(prompt))
    loaders = [key for key, node in prompt.items() if node["class_type"] == "CheckpointLoaderSimple"]
    assert len(loaders) == 1, loaders
    prompt[loaders[0]] = {"class_type": "LoadAceStepCheckpoint", "inputs": {"ckpt_name": checkpoint}}
    return prompt


@pytest.mark.parametrize("template", sorted(OFFICIAL_TEMPLATES))
def test_official_template_runs_with_our_loader(template, comfy_server, tiny_checkpoints, input_audio, ui):
    fresh(ui).load_workflow(OFFICIAL_TEMPLATES[template], drag_drop=False)
    prompt = ui.graph_to_prompt()       # subgraphs are flattened here, as when Run is pressed
    prompt = shrink(with_our_loader(prompt, tiny_checkpoints["comfyui"]), tiny_checkpoints["comfyui"],
                    input_audio[0], **API_EDIT)
    entry = comfy_server.run_prompt(prompt, timeout=600)
    songs = audio_outputs(comfy_server, entry)
    assert songs, f"{template} saved no audio"
    for song in songs:
        # MP3 (SaveAudioMP3) adds encoder delay / padding: allow a few MP3 frames.
        check_song(song, expected_frames(prompt, input_audio[1]), tolerance=3 * 1152 if song.suffix == ".mp3" else 0)
