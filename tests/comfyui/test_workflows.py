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

The workflows: text2music and audio2audio (ComfyUI's template recipe), and the ACE-Step app's
tasks on its own recipe (AceStepGuidance, cfg 15, 60 steps): text2music_apg, text2music_lora
(with a tiny LoRA written by acestep_core.lora.write_tiny_lora), retake, repaint, extend,
lyric_edit and remix.

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
import soundfile

from comfyui_harness import REPO, ComfyServer

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 4096          # one latent frame of the music DCAE + vocoder: 8 * 512 samples
WORKFLOWS_DIR = REPO / "workflows"
PACK_FOLDER = "comfyui-acestep"   # the pack's folder name in custom_nodes/ (comfyui_harness.PACK_NAME)

# How far the runs are shrunk. The canvas runs take one step more than the API runs so that
# ComfyUI's cache cannot hand one of them the other's results.
API_EDIT = {"seconds": 2.0, "steps": 2}
CANVAS_EDIT = {"seconds": 2.0, "steps": 3}
INPUT_SECONDS = 2.0               # the song that the workflows starting from LoadAudio load
EXTEND_EDIT = {"left_seconds": 0.5, "right_seconds": 1.0}
REPAINT_EDIT = {"start_seconds": 0.5, "end_seconds": 1.5}
TINY_LORA = "acestep_tiny_test_lora.safetensors"


def load_generator():
    """scripts/make_workflows.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = load_generator()
WORKFLOW_NAMES = list(GENERATOR.WORKFLOWS)
# The ACE-Step v1 workflows; the 1.5 ones run in test_workflows_v15.py (GENERATOR.V15_WORKFLOWS) and
# test_workflows_v15_tasks.py (GENERATOR.V15_TASK_WORKFLOWS).
# The tests of every file (generator output, templates listing and pictures, layout) cover both.
V1_NAMES = [name for name in WORKFLOW_NAMES
            if name not in GENERATOR.V15_WORKFLOWS and name not in GENERATOR.V15_TASK_WORKFLOWS]


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


def edits(checkpoint: str, input_audio: str, lora: str, seconds: float, steps: int) -> dict[str, dict]:
    """Widget values that shrink a workflow to the tiny models, by node type and input name:
    the tiny checkpoint, `seconds` of audio, `steps` steps, our input song and LoRA, and
    repaint / extend ranges that fit a 2 s song."""
    return {"LoadAceStepCheckpoint": {"ckpt_name": checkpoint},
            "EmptyAceStepLatentAudio": {"seconds": seconds},
            "KSampler": {"steps": steps}, "BasicScheduler": {"steps": steps},
            "LoadAudio": {"audio": input_audio},
            "AceStepLoraLoader": {"lora_name": lora},
            "AceStepExtend": dict(EXTEND_EDIT),
            "AceStepRepaint": dict(REPAINT_EDIT)}


def edited(prompt: dict, values: dict[str, dict]) -> dict:
    """A copy of an API prompt with `values` (from edits()) set."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        for name, value in values.get(node["class_type"], {}).items():
            assert name in node["inputs"], f"{node['class_type']} has no input {name}"
            node["inputs"][name] = value
    return prompt


def extension_frames(seconds: float) -> int:
    """Frames AceStepExtend adds for `seconds`: int(seconds * 44100 / 4096)."""
    return int(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)


def expected_frames(prompt: dict, input_frames: int) -> int:
    """Latent frames of the song a (shrunk) workflow makes: from its empty latent, or from the
    input audio when it starts from LoadAudio, plus what AceStepExtend adds."""
    empty = nodes_of(prompt, "EmptyAceStepLatentAudio")
    frames = latent_frames(empty[0]["inputs"]["seconds"]) if empty else input_frames
    for node in nodes_of(prompt, "AceStepExtend"):
        frames += extension_frames(node["inputs"]["left_seconds"]) + extension_frames(node["inputs"]["right_seconds"])
    return frames


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
def tiny_lora(comfy_server, tiny_checkpoints) -> str:
    """A random LoRA for the tiny checkpoint's transformer, in the server's models/loras/."""
    from safetensors import safe_open

    from acestep_core.lora import write_tiny_lora

    checkpoint = comfy_server.base_dir / "models" / "checkpoints" / tiny_checkpoints["comfyui"]
    prefix = "model.diffusion_model."
    with safe_open(str(checkpoint), framework="pt") as f:
        shapes = {k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix)}
    folder = comfy_server.base_dir / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_lora(folder / TINY_LORA, shapes, rank=4, alpha=4.0)
    return TINY_LORA


@pytest.fixture(scope="module")
def tiny_edits(tiny_checkpoints, input_audio, tiny_lora):
    """edits(...) for the API runs and for the canvas runs."""
    def make(seconds, steps):
        return edits(tiny_checkpoints["comfyui"], input_audio[0], tiny_lora, seconds, steps)
    return {"api": make(**API_EDIT), "canvas": make(**CANVAS_EDIT)}


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
def graph_content(workflow: dict) -> dict:
    """What a workflow file says whatever frontend wrote it: each node's id, type, title, mode,
    widget values, properties and connections, the links and the groups. Left out: positions,
    sizes and the frontend's version (another frontend measures nodes otherwise, and the
    generator lays them out from those measures)."""
    nodes = [{"id": n["id"], "type": n["type"], "title": n.get("title"), "mode": n.get("mode", 0),
              "widgets_values": n.get("widgets_values"), "properties": n.get("properties"),
              "inputs": [(i["name"], i.get("link")) for i in n.get("inputs", [])],
              "outputs": [(o["name"], sorted(o.get("links") or [])) for o in n.get("outputs", [])]}
             for n in workflow["nodes"]]
    return {"nodes": sorted(nodes, key=lambda n: n["id"]), "links": sorted(map(tuple, workflow["links"])),
            "groups": workflow.get("groups", [])}


def test_shipped_files_are_the_generators_output(comfy_server, ui):
    """workflows/*.json are what scripts/make_workflows.py makes in the real frontend (so they are
    reproducible, and nobody edited one by hand without the generator): byte for byte on the
    frontend that wrote them (extra.frontendVersion), the same graph on any other."""
    shipped = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))
    assert shipped == sorted(WORKFLOW_NAMES)
    built = GENERATOR.generate(comfy_server, ui=ui)
    for name in WORKFLOW_NAMES:
        text = (WORKFLOWS_DIR / f"{name}.json").read_text()
        written_by = json.loads(text)["extra"]["frontendVersion"]
        running = json.loads(built[name])["extra"]["frontendVersion"]
        if written_by == running:
            assert text == built[name], (
                f"workflows/{name}.json differs from the generator's output: run python scripts/make_workflows.py")
        else:
            assert graph_content(json.loads(text)) == graph_content(json.loads(built[name])), (
                f"workflows/{name}.json (frontend {written_by}) is another graph than the generator builds on "
                f"frontend {running}: run python scripts/make_workflows.py")
    print(f"compared on frontend {running} with files written by {written_by}"
          + (" (byte for byte)" if written_by == running else " (graph content; layout is the frontend's)"))


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


NODE_RECTS_JS = """() => {
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    return window.app.graph.nodes.map((n) => ({id: n.id, type: n.type,
        x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title}));
}"""


def overlaps(rects: list[dict]) -> list[str]:
    """Pairs of nodes whose rectangles (title bar included) intersect, with the overlap size."""
    found = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > 0 and dy > 0:
                found.append(f"{a['type']} #{a['id']} and {b['type']} #{b['id']} overlap by {dx:.0f} x {dy:.0f}")
    return found


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_no_node_covers_another_once_opened(name, ui):
    """Opened in the real frontend and drawn (panels such as the waveform picker and the lyric
    editor have their height then), no two nodes' rectangles intersect."""
    fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=True)
    ui.page.wait_for_timeout(1000)
    ui.page.wait_for_load_state("networkidle")
    ui.evaluate("() => { window.app.graph.setDirtyCanvas(true, true); window.app.canvas.draw(true, true); }")
    ui.page.wait_for_timeout(300)
    assert overlaps(ui.evaluate(NODE_RECTS_JS)) == []


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_templates_dialog_has_a_picture_of_each_workflow(name, comfy_server):
    """ComfyUI 0.3.75's and 0.20.1's Templates dialog show <name>.jpg from beside an extension's
    workflow (both frontends build the URL /api/workflow_templates/<pack>/<name>.jpg): it is
    served, is a real JPEG of a canvas-shaped picture, and is small."""
    from PIL import Image
    import io

    r = comfy_server.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg")
    assert r.headers["content-type"] == "image/jpeg"
    assert 2_000 < len(r.content) <= 60_000, len(r.content)
    with Image.open(io.BytesIO(r.content)) as picture:
        assert picture.format == "JPEG" and 300 <= picture.width <= 480 and picture.height >= 150, picture.size
        darkest, brightest = picture.convert("L").getextrema()
        assert brightest - darkest > 50   # not a blank picture


# What each workflow does before the user changes anything, by node type and input name (in
# the API prompt the frontend builds from the file). text2music / audio2audio: ComfyUI's
# template values; the others: the ACE-Step app's defaults.
TEMPLATE_SAMPLER = {"steps": 50, "cfg": 5, "sampler_name": "euler", "scheduler": "simple"}
APP_SAMPLER = {"steps": 60, "cfg": 15, "sampler_name": "euler", "scheduler": "simple"}
APP_GUIDANCE = {"cfg_type": "apg", "apg_momentum": -0.75, "apg_norm_threshold": 2.5, "guidance_interval": 0.5,
                "omega_scale": 10, "use_erg_tag": True, "use_erg_lyric": False, "use_erg_diffusion": True}
SHIPPED = {
    "text2music": {"KSampler": {**TEMPLATE_SAMPLER, "denoise": 1}, "ModelSamplingSD3": {"shift": 5},
                   "EmptyAceStepLatentAudio": {"seconds": 120}, "LatentOperationTonemapReinhard": {"multiplier": 1}},
    "audio2audio": {"KSampler": {**TEMPLATE_SAMPLER, "denoise": 0.3}, "ModelSamplingSD3": {"shift": 5}},
    "text2music_apg": {"KSampler": {**APP_SAMPLER, "denoise": 1}, "AceStepGuidance": APP_GUIDANCE},
    "text2music_lora": {"KSampler": {**APP_SAMPLER, "denoise": 1}, "AceStepGuidance": APP_GUIDANCE,
                        "AceStepLoraLoader": {"lora_name": "ace_step_v1_chinese_rap_lora.safetensors", "strength": 1}},
    "retake": {"KSampler": {**APP_SAMPLER, "denoise": 1}, "AceStepGuidance": APP_GUIDANCE,
               "AceStepRetakeModel": {"variance": 0.2}},
    "repaint": {"KSampler": APP_SAMPLER, "AceStepGuidance": APP_GUIDANCE,
                "AceStepRepaint": {"start_seconds": 20, "end_seconds": 30, "variance": 0.2}},
    "extend": {"KSampler": {**APP_SAMPLER, "denoise": 1}, "AceStepGuidance": APP_GUIDANCE,
               "AceStepExtend": {"left_seconds": 0, "right_seconds": 30}},
    "lyric_edit": {"AceStepEdit": {"mode": "only_lyrics", "cfg": 15, "cfg_type": "apg"},
                   "BasicScheduler": {"steps": 60, "scheduler": "simple", "denoise": 1},
                   "KSamplerSelect": {"sampler_name": "euler"}},
    "remix": {"AceStepEdit": {"mode": "remix", "cfg": 15, "cfg_type": "apg"},
              "BasicScheduler": {"steps": 60, "scheduler": "simple", "denoise": 1},
              "KSamplerSelect": {"sampler_name": "euler"}},
}
STARTS_FROM_A_SONG = {"audio2audio", "repaint", "extend", "lyric_edit", "remix"}
# The node whose result is the music (it must really run in each test).
SAMPLERS = ("KSampler", "SamplerCustomAdvanced")


def test_every_workflow_has_expectations():
    assert sorted(SHIPPED) == sorted(V1_NAMES)


@pytest.mark.parametrize("name", V1_NAMES)
def test_shipped_file(name, comfy_server):
    """The file as a user gets it: the real checkpoint's name (with the download link ComfyUI's
    missing-models dialog offers), a Note that says where the checkpoint goes and that the demo
    one makes noise, every required input connected, and nothing the server does not know."""
    workflow = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
    info = comfy_server.object_info()
    by_type = {}
    for node in workflow["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    (loader,) = by_type["LoadAceStepCheckpoint"]
    assert loader["widgets_values"][0] == "ace_step_v1_3.5b.safetensors"
    assert loader["properties"]["models"][0]["name"] == "ace_step_v1_3.5b.safetensors"
    assert loader["properties"]["models"][0]["directory"] == "checkpoints"
    for lora in by_type.get("AceStepLoraLoader", []):
        assert lora["properties"]["models"][0] == {"name": lora["widgets_values"][0], "directory": "loras",
                                                   "url": GENERATOR.LORA_URL}
    (note,) = by_type.pop("MarkdownNote")
    text = note["widgets_values"][0]
    for needle in ("models/checkpoints", "ace_step_v1_3.5b.safetensors", "random weights", "noise"):
        assert needle in text, needle
    assert ("LoadAudio" in by_type) == (name in STARTS_FROM_A_SONG)
    assert "SaveAudio" in by_type and "VAEDecodeAudio" in by_type
    assert_required_inputs_connected(by_type, info)


def assert_required_inputs_connected(by_type: dict[str, list[dict]], info: dict) -> None:
    """Every node type of a workflow file (nodes grouped by type) exists on the server, and every
    required input that is not a widget has a link."""
    for kind, nodes in by_type.items():
        assert kind in info, f"{kind} is not a node type of this server"
        required = info[kind]["input"].get("required", {})
        for node in nodes:
            for slot in node.get("inputs", []):
                if slot["name"] in required and "widget" not in slot:
                    assert slot.get("link") is not None, f"{kind}.{slot['name']} is not connected"


def prompts_from_the_frontend(ui, names) -> dict[str, dict]:
    """Each named shipped workflow as the API prompt the frontend builds from it."""
    fresh(ui)
    prompts = {}
    for name in names:
        ui.load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=False)
        prompts[name] = ui.graph_to_prompt()
    return prompts


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_prompts(comfy_server, ui) -> dict[str, dict]:
    """Each shipped workflow as the API prompt that the frontend builds from it."""
    return prompts_from_the_frontend(ui, V1_NAMES)


@pytest.mark.parametrize("name", V1_NAMES)
def test_shipped_values(name, api_prompts):
    prompt = api_prompts[name]
    assert nodes_of(prompt, "LoadAceStepCheckpoint")[0]["inputs"]["ckpt_name"] == "ace_step_v1_3.5b.safetensors"
    assert not nodes_of(prompt, "MarkdownNote"), "notes are not sent to the server"
    for kind, values in SHIPPED[name].items():
        (node,) = nodes_of(prompt, kind)
        for key, value in values.items():
            got = node["inputs"][key]
            if isinstance(value, float):
                assert got == pytest.approx(value), f"{kind}.{key}: {got}"
            else:
                assert got == value, f"{kind}.{key}: {got}"
    if name == "repaint":     # the variance drives KSampler's denoise through a link
        (repaint_id,) = [k for k, v in prompt.items() if v["class_type"] == "AceStepRepaint"]
        assert nodes_of(prompt, "KSampler")[0]["inputs"]["denoise"] == [repaint_id, 1]
    if name == "retake":      # KSampler's seed is the original song's: it must not change by itself
        assert nodes_of(prompt, "KSampler")[0]["inputs"]["seed"] == GENERATOR.SEED


def declared_inputs(prompt: dict, info: dict) -> dict:
    """{node id: (class, the inputs its node type declares)}: what the server runs with. Frontend
    1.43 also sends values of widgets of its own, which the server ignores: LoadAudio's player
    `audioUI`, a /view URL of the chosen file with a random number in it."""
    out = {}
    for key, node in prompt.items():
        spec = info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        out[key] = (node["class_type"], {k: v for k, v in node["inputs"].items() if k in names})
    return out


def sampler_id(prompt: dict) -> str:
    (found,) = [k for k, v in prompt.items() if v["class_type"] in SAMPLERS]
    return found


@pytest.mark.parametrize("name", V1_NAMES)
def test_workflow_runs_as_api_prompt(name, comfy_server, input_audio, tiny_edits, api_prompts, artifacts_dir):
    prompt = edited(api_prompts[name], tiny_edits["api"])
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert sampler_id(prompt) in executed_nodes(entry)
    (song,) = audio_outputs(comfy_server, entry)
    assert song.suffix == ".flac" and song.name.startswith(f"ace_step_{name}_")
    check_song(song, expected_frames(prompt, input_audio[1]))
    (artifacts_dir / f"workflow_{name}_api.flac").write_bytes(song.read_bytes())


@pytest.mark.parametrize("name", V1_NAMES)
def test_workflow_runs_from_the_canvas(name, comfy_server, input_audio, tiny_edits, api_prompts, ui, artifacts_dir,
                                      readme_images):
    """Dropped on the canvas, screenshot for the README, widgets changed, Run."""
    fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=True)
    # No view is stored in the file: ComfyUI fits the graph to the window once it is drawn.
    ui.page.wait_for_function("window.app.canvas.ds.scale !== 1", timeout=30_000)
    # Widgets that ask the server for a preview (the lyric panel) wait for typing to pause
    # (350 ms) first: give them that, then let their requests finish.
    ui.page.wait_for_timeout(1000)
    ui.page.wait_for_load_state("networkidle")
    ui.page.wait_for_timeout(300)
    assert ui.page_errors == [], ui.page_errors
    update_screenshot(ui.screenshot(artifacts_dir / f"workflow_{name}_opened.png"), readme_images / f"{name}.png")

    set_widgets(ui, tiny_edits["canvas"])
    prompt_id = ui.run()
    entry = comfy_server.wait_for(prompt_id, timeout=600)
    ui.page.wait_for_timeout(500)
    ui.screenshot(artifacts_dir / f"workflow_{name}_after_run.png")

    # What Run sent is the file with exactly the changed widgets changed.
    queued = entry["prompt"][2]
    expected = edited(api_prompts[name], tiny_edits["canvas"])
    assert {k: (v["class_type"], sorted(v["inputs"])) for k, v in queued.items()} == \
        {k: (v["class_type"], sorted(v["inputs"])) for k, v in expected.items()}
    info = comfy_server.object_info()
    assert declared_inputs(queued, info) == declared_inputs(expected, info)
    assert sampler_id(queued) in executed_nodes(entry), "the sampler's result came from the cache"
    (song,) = audio_outputs(comfy_server, entry)
    check_song(song, expected_frames(queued, input_audio[1]))
    (artifacts_dir / f"workflow_{name}_canvas.flac").write_bytes(song.read_bytes())


# ---------------------------------------------------------------------------------------------
# ComfyUI's own ACE-Step templates with our loader
# ---------------------------------------------------------------------------------------------
V1_CHECKPOINT = "ace_step_v1_3.5b.safetensors"


def loads_the_v1_checkpoint(template: dict) -> bool:
    """A CheckpointLoaderSimple set to the v1 checkpoint, on the graph or in a subgraph."""
    graphs = [template, *template.get("definitions", {}).get("subgraphs", [])]
    return any(node.get("type") == "CheckpointLoaderSimple" and V1_CHECKPOINT in (node.get("widgets_values") or [])
               for graph in graphs for node in graph.get("nodes", []))


def official_ace_templates() -> dict[str, Path]:
    """ACE-Step v1 workflow templates of the installed comfyui-workflow-templates packages: those
    whose checkpoint loader loads the v1 checkpoint. ComfyUI 0.20's packages also ship ACE-Step
    1.5 templates (audio_ace_step_1_5_*, audio_ace_step1_5_xl_*, and 05_audio_ace_step_1_t2a_song_
    subgraphed, which there loads the 1.5 turbo model) for models this pack's v1 loader does not load."""
    found = {}
    for module in pkgutil.iter_modules():
        if not module.name.startswith("comfyui_workflow_templates"):
            continue
        spec = importlib.util.find_spec(module.name)
        for root in spec.submodule_search_locations or []:
            for path in sorted(Path(root).rglob("*ace_step*.json")):
                if loads_the_v1_checkpoint(json.loads(path.read_text())):
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
def test_official_template_runs_with_our_loader(template, comfy_server, tiny_checkpoints, input_audio, tiny_edits,
                                                ui):
    fresh(ui).load_workflow(OFFICIAL_TEMPLATES[template], drag_drop=False)
    prompt = ui.graph_to_prompt()       # subgraphs are flattened here, as when Run is pressed
    prompt = edited(with_our_loader(prompt, tiny_checkpoints["comfyui"]), tiny_edits["api"])
    entry = comfy_server.run_prompt(prompt, timeout=600)
    songs = audio_outputs(comfy_server, entry)
    assert songs, f"{template} saved no audio"
    for song in songs:
        # MP3 (SaveAudioMP3) adds encoder delay / padding: allow a few MP3 frames.
        check_song(song, expected_frames(prompt, input_audio[1]), tolerance=3 * 1152 if song.suffix == ".mp3" else 0)
