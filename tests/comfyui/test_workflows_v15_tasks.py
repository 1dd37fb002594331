"""The ACE-Step 1.5 task workflows (workflows/{cover,repaint,extend,lego,extract,complete,flow_edit,
retake}_v15.json) on a real ComfyUI server, on the session's tiny 1.5 checkpoints (random weights).

Each shipped file is checked as a user gets it (loader, download addresses, a note naming the
model variant the task needs, the task's values), then runs shrunk to a few steps:

* as the API prompt the frontend builds from it, on a 1 s mono 8 kHz source (what VAEEncodeAudio
  makes of the shortest, poorest input: 25 latent frames, padded to the 1.5 minimum by the task
  node and cut back by AceStep15RestoreSource);
* dropped on the canvas of the real frontend (screenshot for the README), on a 3 s stereo 44.1 kHz
  song, widgets changed as a user does, Run pressed.

The saved audio must decode, be stereo at the rate of the running ComfyUI's audio nodes and exactly
as long as the task makes it: the source's length (cover, repaint, lego, extract, complete,
flow-edit), the source plus the added seconds (extend), the Seconds node (retake).

Bad input through the server gives an execution error that says what is wrong, and the server
answers /system_stats and runs the next prompt: a region that starts after it ends, a stem name the
model does not know (the combo is refused by ComfyUI's validation, a typed list by the node), a
10-minute source extended past the 600 s cap (refused before sampling); a 10 s repaint of that
source runs, and neither takes gigabytes of memory. A region outside the song:
tests/comfyui/test_ace15_task_nodes.py (server test).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from comfyui_harness import WorkflowError

from .test_workflows import (GENERATOR, WORKFLOWS_DIR, assert_required_inputs_connected, audio_outputs, declared_inputs,
                             edited, executed_nodes, fresh, nodes_of, prompts_from_the_frontend, set_widgets,
                             update_screenshot, write_test_song)
from .test_workflows_v15 import audio_rate, check_song  # noqa: F401  (audio_rate: a module fixture)

TASK_NAMES = list(GENERATOR.V15_TASK_WORKFLOWS)
API_STEPS, CANVAS_STEPS = 2, 3      # different, so that ComfyUI's cache cannot serve one run the other's result
FRAMES_PER_SECOND = 25
RETAKE_SECONDS = 2.0
API_SONG_SECONDS, CANVAS_SONG_SECONDS = 1.0, 3.0
ADDED_SECONDS = 1.0                 # extend's right_seconds in the tests
BASE_ONLY = {"lego_v15", "extract_v15", "complete_v15", "flow_edit_v15"}
TASK_NODE = {"cover_v15": "AceStep15Cover", "repaint_v15": "AceStep15Repaint", "extend_v15": "AceStep15Extend",
             "lego_v15": "AceStep15Lego", "extract_v15": "AceStep15Extract", "complete_v15": "AceStep15Complete"}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def songs(comfy_server, tmp_path_factory) -> dict[str, str]:
    """In the server's input/: a 1 s mono 8 kHz clip (the API runs) and a 3 s 44.1 kHz stereo song
    (the canvas runs)."""
    folder = tmp_path_factory.mktemp("audio15tasks")
    mono = folder / "acestep_test_mono_8k_1s.wav"
    write_test_song(mono, API_SONG_SECONDS, rate=8000, channels=1)
    stereo = write_test_song(folder / "acestep_test_song_3s.wav", CANVAS_SONG_SECONDS)
    return {"api": comfy_server.add_input_file(mono), "canvas": comfy_server.add_input_file(stereo)}


def shrink(tiny15: dict, song: str, song_seconds: float, steps: int, name: str = "") -> dict[str, dict]:
    """Widget values (by node type and name) that run a task workflow on the tiny models in a few
    steps on a `song_seconds` song (a repaint region inside it, one added second for extend; the
    flow-edit text encoders' duration the song's)."""
    values = {"LoadAceStepCheckpoint": {"ckpt_name": tiny15["aio"]},
            "LoadAceStep15Split": {"unet_name": tiny15["dit"], "text_encoder_name": tiny15["text_encoder"],
                                   "vae_name": tiny15["vae"]},
            "LoadAudio": {"audio": song},
            "KSampler": {"steps": steps},
            "BasicScheduler": {"steps": steps},
            "PrimitiveFloat": {"value": RETAKE_SECONDS},
            "AceStep15Repaint": {"start_seconds": round(0.2 * song_seconds, 2),
                                 "end_seconds": round(0.6 * song_seconds, 2)},
            "AceStep15Extend": {"left_seconds": 0.0, "right_seconds": ADDED_SECONDS}}
    if name == "flow_edit_v15":     # retake's duration comes from its Seconds node
        values["TextEncodeAceStepAudio1.5"] = {"duration": song_seconds}
    return values


def expected_frames(name: str, song_seconds: float) -> int:
    if name == "retake_v15":
        return int(RETAKE_SECONDS * FRAMES_PER_SECOND)
    seconds = song_seconds + (ADDED_SECONDS if name == "extend_v15" else 0.0)
    return int(round(seconds * FRAMES_PER_SECOND))


def sampler_id(prompt: dict) -> str:
    (found,) = [k for k, v in prompt.items() if v["class_type"] in ("KSampler", "SamplerCustomAdvanced")]
    return found


def workflow_nodes(name: str) -> dict[str, list[dict]]:
    by_type = {}
    for node in json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    return by_type


@pytest.fixture(scope="module")
def task_prompts(comfy_server, ui) -> dict[str, dict]:
    """Each shipped task workflow as the API prompt the frontend builds from it."""
    return prompts_from_the_frontend(ui, TASK_NAMES)


# ---------------------------------------------------------------------------------------------
# The shipped files
# ---------------------------------------------------------------------------------------------
TURBO = {"steps": 8, "cfg": 1, "sampler_name": "euler", "scheduler": "simple", "denoise": 1}
BASE = {"steps": 50, "cfg": 6, "sampler_name": "euler", "scheduler": "simple", "denoise": 1}
SHIPPED = {
    "cover_v15": {"KSampler": TURBO, "AceStep15Cover": {"audio_cover_strength": 1.0, "sampler_steps": 8}},
    "repaint_v15": {"KSampler": TURBO, "AceStep15Repaint": {"start_seconds": 20.0, "end_seconds": 30.0}},
    "extend_v15": {"KSampler": TURBO, "AceStep15Extend": {"left_seconds": 0.0, "right_seconds": 30.0}},
    "lego_v15": {"KSampler": BASE, "AceStep15Lego": {"stem": "guitar", "start_seconds": 0.0, "end_seconds": -1.0}},
    "extract_v15": {"KSampler": BASE, "AceStep15Extract": {"stem": "vocals"}},
    "complete_v15": {"KSampler": BASE, "AceStep15Complete": {"stems": "drums, bass"}},
    "flow_edit_v15": {"BasicScheduler": {"steps": 50, "scheduler": "simple", "denoise": 1},
                      "AceStepEdit": {"mode": "full", "cfg": 6}, "KSamplerSelect": {"sampler_name": "euler"}},
    "retake_v15": {"KSampler": TURBO, "AceStepRetakeModel": {"variance": 0.2}},
}


def test_every_task_workflow_has_expectations():
    assert sorted(SHIPPED) == sorted(TASK_NAMES)
    assert sorted(TASK_NAMES) == sorted(["cover_v15", "repaint_v15", "extend_v15", "lego_v15", "extract_v15",
                                         "complete_v15", "flow_edit_v15", "retake_v15"])
    for name in TASK_NAMES:
        assert (WORKFLOWS_DIR / f"{name}.json").is_file() and (WORKFLOWS_DIR / f"{name}.jpg").is_file(), name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shipped_task_file(name, comfy_server, task_prompts):
    """The graph as the issue asks (LoadAudio -> VAEEncodeAudio -> task node -> sampler ->
    AceStep15RestoreSource -> VAEDecodeAudio -> SaveAudio), every required input connected, the
    values of the recipe, and a note naming the model variant and files the task needs, with
    the loader's download addresses (the Missing Models dialog reads them)."""
    by_type = workflow_nodes(name)
    (note,) = by_type.pop("MarkdownNote")
    text = note["widgets_values"][0]
    info = comfy_server.object_info()
    assert_required_inputs_connected(by_type, info)

    (loader,) = by_type.get("LoadAceStepCheckpoint", []) + by_type.get("LoadAceStep15Split", [])
    models = loader["properties"]["models"]
    if name in BASE_ONLY:
        assert loader["type"] == "LoadAceStep15Split"
        assert [m["name"] for m in models] == ["acestep_v1.5_xl_base_bf16.safetensors", "qwen_0.6b_ace15.safetensors",
                                               "ace_1.5_vae.safetensors"]
        assert "**base**" in text and "acestep-v15-base" in text and "turbo" in text
        for m in models:
            assert m["url"] in text and f"models/{m['directory']}/" in text
    else:
        assert loader["type"] == "LoadAceStepCheckpoint" and models == [GENERATOR.V15_AIO_MODEL]
        assert models[0]["url"] in text and "models/checkpoints/" in text and "random weights" in text

    prompt = task_prompts[name]
    for kind, values in SHIPPED[name].items():
        (node,) = nodes_of(prompt, kind)
        for key, value in values.items():
            assert node["inputs"][key] == pytest.approx(value) if not isinstance(value, str) else \
                node["inputs"][key] == value, f"{kind}.{key}: {node['inputs'][key]}"
    if name == "retake_v15":       # text2music_v15_turbo with the retake between the model and KSampler
        (retake_id,) = [k for k, v in prompt.items() if v["class_type"] == "AceStepRetakeModel"]
        assert nodes_of(prompt, "KSampler")[0]["inputs"]["model"] == [retake_id, 0]
        return
    (audio_id,) = [k for k, v in prompt.items() if v["class_type"] == "LoadAudio"]
    (encode_id,) = [k for k, v in prompt.items() if v["class_type"] == "VAEEncodeAudio"]
    assert prompt[encode_id]["inputs"]["audio"] == [audio_id, 0]
    sampler = prompt[sampler_id(prompt)]["inputs"]
    (decode,) = nodes_of(prompt, "VAEDecodeAudio")
    if name == "flow_edit_v15":    # the source latent itself is sampled by the edit guider
        assert sampler["latent_image"] == [encode_id, 0]
        assert decode["inputs"]["samples"] == [sampler_id(prompt), 0]
        return
    (task_id,) = [k for k, v in prompt.items() if v["class_type"] == TASK_NODE[name]]
    assert prompt[task_id]["inputs"]["samples"] == [encode_id, 0]
    assert [sampler[k] for k in ("positive", "negative", "latent_image")] == [[task_id, 0], [task_id, 1], [task_id, 2]]
    (restore_id,) = [k for k, v in prompt.items() if v["class_type"] == "AceStep15RestoreSource"]
    assert prompt[restore_id]["inputs"]["samples"] == [sampler_id(prompt), 0]
    assert decode["inputs"]["samples"] == [restore_id, 0]


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_workflow_runs_as_api_prompt(name, comfy_server, tiny15, songs, audio_rate, task_prompts,
                                          artifacts_dir):
    """On a 1 s mono 8 kHz source."""
    prompt = edited(task_prompts[name], shrink(tiny15, songs["api"], API_SONG_SECONDS, API_STEPS, name))
    entry = comfy_server.run_prompt(prompt, timeout=600)
    assert sampler_id(prompt) in executed_nodes(entry)
    (song,) = audio_outputs(comfy_server, entry)
    assert song.suffix == ".flac" and song.name.startswith(f"ace_step_{name}_")
    check_song(song, audio_rate, frames=expected_frames(name, API_SONG_SECONDS))
    (artifacts_dir / f"workflow_{name}_api.flac").write_bytes(song.read_bytes())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_workflow_runs_from_the_canvas(name, comfy_server, tiny15, songs, audio_rate, task_prompts, ui,
                                            artifacts_dir, readme_images):
    """Dropped on the canvas (screenshot for the README), widgets changed as a user does, Run; on
    a 3 s stereo song."""
    fresh(ui).load_workflow(WORKFLOWS_DIR / f"{name}.json", drag_drop=True)
    ui.page.wait_for_function("window.app.canvas.ds.scale !== 1", timeout=30_000)
    ui.page.wait_for_timeout(1000)
    ui.page.wait_for_load_state("networkidle")
    ui.page.wait_for_timeout(300)
    assert ui.page_errors == [], ui.page_errors
    update_screenshot(ui.screenshot(artifacts_dir / f"workflow_{name}_opened.png"), readme_images / f"{name}.png")

    values = shrink(tiny15, songs["canvas"], CANVAS_SONG_SECONDS, CANVAS_STEPS, name)
    set_widgets(ui, values)
    entry = comfy_server.wait_for(ui.run(), timeout=600)
    queued = entry["prompt"][2]
    expected = edited(task_prompts[name], values)
    assert declared_inputs(queued, comfy_server.object_info()) == declared_inputs(expected, comfy_server.object_info())
    assert sampler_id(queued) in executed_nodes(entry), "the sampler's result came from the cache"
    (song,) = audio_outputs(comfy_server, entry)
    data = check_song(song, audio_rate, frames=expected_frames(name, CANVAS_SONG_SECONDS))
    assert np.isfinite(data).all()
    (artifacts_dir / f"workflow_{name}_canvas.flac").write_bytes(song.read_bytes())


# ---------------------------------------------------------------------------------------------
# Bad input through the server
# ---------------------------------------------------------------------------------------------
def _server_is_up(comfy_server) -> None:
    stats = comfy_server.get("/system_stats").json()
    assert stats["system"]["comfyui_version"]


def _refused(comfy_server, prompt: dict, pattern: str) -> None:
    with pytest.raises(WorkflowError, match=pattern):
        comfy_server.run_prompt(prompt, timeout=600)
    _server_is_up(comfy_server)


def test_bad_regions_and_stems_are_clear_errors(comfy_server, tiny15, songs, task_prompts):
    def prompt(name: str, values: dict) -> dict:
        base = shrink(tiny15, songs["api"], API_SONG_SECONDS, API_STEPS)
        for kind, widgets in values.items():
            base[kind] = dict(base.get(kind, {}), **widgets)
        return edited(task_prompts[name], base)

    _refused(comfy_server, prompt("repaint_v15", {"AceStep15Repaint": {"start_seconds": 0.8, "end_seconds": 0.3}}),
             r"AceStep15Repaint: the region to generate ends at 0.3 s, not after its start 0.8 s")
    _refused(comfy_server, prompt("lego_v15", {"AceStep15Lego": {"start_seconds": 0.7, "end_seconds": 0.2}}),
             r"AceStep15Lego: the region to generate ends at 0.2 s, not after its start 0.7 s")
    # A stem outside the combo's list: ComfyUI's validation names the input and the value.
    _refused(comfy_server, prompt("extract_v15", {"AceStep15Extract": {"stem": "cowbell"}}),
             r"(?s)stem.*cowbell")
    # The typed list of complete: the node names the stem and the ones it knows.
    _refused(comfy_server, prompt("complete_v15", {"AceStep15Complete": {"stems": "drums, cowbell"}}),
             r"AceStep15Complete: unknown stem 'cowbell'; ACE-Step 1.5 knows these tracks: vocals, backing_vocals")
    # The server still runs prompts.
    entry = comfy_server.run_prompt(prompt("repaint_v15", {"AceStep15Repaint": {"start_seconds": 0.1,
                                                                                "end_seconds": 0.5}}), timeout=600)
    (song,) = audio_outputs(comfy_server, entry)
    assert song.suffix == ".flac"


def _peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_ten_minute_source(comfy_server, tiny15, task_prompts, audio_rate, tmp_path):
    """A 600 s source (mono 8 kHz: 9.6 MB of WAV) extended past the model's cap is refused before
    sampling, with a message naming the cap; repainting 10 s of it samples the whole 15000-frame
    latent and gives the 600 s back. The server's peak memory stays under 2 GiB above what it held
    before (measured on the tiny model: +0.95 GiB after the refusal, +1.19 GiB after the repaint,
    mostly the 48 kHz stereo waveform and the VAE's activations)."""
    wav = tmp_path / "acestep_test_ten_minutes.wav"
    rate, seconds = 8000, 600
    t = np.arange(seconds * rate, dtype=np.float32) / rate
    soundfile.write(str(wav), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")
    song = comfy_server.add_input_file(wav)
    before = _peak_rss_kib(comfy_server.proc.pid)
    values = shrink(tiny15, song, seconds, API_STEPS)
    values["AceStep15Extend"] = {"left_seconds": 0.0, "right_seconds": 5.0}
    _refused(comfy_server, edited(task_prompts["extend_v15"], values),
             r"AceStep15Extend: .*at most 15000 frames")
    grown = (_peak_rss_kib(comfy_server.proc.pid) - before) / 2 ** 20
    print(f"600 s source, extend refused: the server's peak memory grew by {grown:.2f} GiB")
    assert grown < 2.0, f"the server's peak memory grew by {grown:.2f} GiB"
    # Repainting 10 s of it samples the whole 15000-frame latent (one step on the tiny model).
    values = shrink(tiny15, song, seconds, 1)
    values["AceStep15Repaint"] = {"start_seconds": 300.0, "end_seconds": 310.0}
    entry = comfy_server.run_prompt(edited(task_prompts["repaint_v15"], values), timeout=600)
    (out,) = audio_outputs(comfy_server, entry)
    data, _ = soundfile.read(str(out), always_2d=True)
    assert data.shape[0] == seconds * audio_rate and np.isfinite(data).all()
    grown = (_peak_rss_kib(comfy_server.proc.pid) - before) / 2 ** 20
    print(f"600 s source, repaint sampled: {data.shape[0]} samples, peak memory grew by {grown:.2f} GiB")
    assert grown < 2.0, f"the server's peak memory grew by {grown:.2f} GiB"
