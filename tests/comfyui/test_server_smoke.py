"""The real ComfyUI server starts with the pack, imports it, and answers its API."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from comfyui_harness import PACK_NAME, ComfyServer, ServerError


def test_pack_imports_cleanly(comfy_server):
    log = comfy_server.log()
    assert comfy_server.pack_problems() == []
    ours = [line for line in comfy_server.import_failures() if PACK_NAME in line]
    assert ours == [], "\n".join(ours)
    assert f"Cannot import {comfy_server.base_dir / 'custom_nodes' / PACK_NAME}" not in log
    # ComfyUI reads pyproject.toml of every pack; a malformed one only shows up as this warning.
    assert "Unable to parse pyproject.toml" not in log


def test_object_info_answers(comfy_server):
    info = comfy_server.object_info()
    # Core nodes and ComfyUI's own ACE-Step nodes are there: the node list is complete.
    for node in ("KSampler", "CheckpointLoaderSimple", "EmptyAceStepLatentAudio", "TextEncodeAceStepAudio"):
        assert node in info, node
    # Every node of ours is well formed as the frontend needs it.
    ours = {name: d for name, d in info.items() if d.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    for name, d in ours.items():
        assert d["category"] and isinstance(d["output"], list) and "required" in d["input"], name
    # The single-node endpoint answers too.
    assert comfy_server.object_info("KSampler")["name"] == "KSampler"


def test_checkpoints_are_offered(comfy_server, tmp_path):
    """add_checkpoint puts files and folders where ComfyUI's loaders look (the base directory's
    models/checkpoints), and ComfyUI lists them without a restart."""
    single = tmp_path / "smoke_single.safetensors"
    save_file({"x": torch.zeros(1)}, str(single))
    folder = tmp_path / "smoke_folder"
    (folder / "part").mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(folder / "part" / "model.safetensors"))
    comfy_server.add_checkpoint(single)
    comfy_server.add_checkpoint(folder)
    choices = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert "smoke_single.safetensors" in choices
    assert "smoke_folder/part/model.safetensors" in choices


def test_tiny_checkpoints_fixture(comfy_server, tiny_checkpoints):
    """The fixture the workflow tests use: both layouts, made by the CLI, where ComfyUI looks."""
    checkpoints = comfy_server.base_dir / "models" / "checkpoints"
    choices = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert tiny_checkpoints["comfyui"] in choices
    folder = checkpoints / tiny_checkpoints["folders"]
    for part in ("ace_step_transformer", "music_dcae_f8c8", "music_vocoder", "umt5-base"):
        assert (folder / part).is_dir(), part


def test_harness_reports_packs_that_fail_to_import(tmp_path):
    """The guard the other tests rely on: a pack that raises on import, and one that catches the
    error of one of its modules and only logs it, both stop the server start."""
    broken = tmp_path / "broken_pack"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('deliberately broken for the harness test')\n")
    quiet = tmp_path / "quiet_pack"
    quiet.mkdir()
    (quiet / "bad_module.py").write_text("raise RuntimeError('a module that fails, caught by its pack')\n")
    (quiet / "__init__.py").write_text(
        "import logging\n"
        "NODE_CLASS_MAPPINGS = {}\n"
        "try:\n"
        "    from . import bad_module\n"
        "except Exception:\n"
        "    logging.exception('quiet_pack: bad_module could not be imported')\n")
    server = ComfyServer(base_dir=tmp_path / "base", packs=[broken, quiet],
                         required_packs=["broken_pack", "quiet_pack"])
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    assert "'broken_pack': IMPORT FAILED" in message
    assert "deliberately broken for the harness test" in message
    assert "'quiet_pack': a traceback through its files was logged" in message
    assert "a module that fails, caught by its pack" in message
    assert "'quiet_pack': IMPORT FAILED" not in message  # ComfyUI itself saw a clean import
    assert server.proc.poll() is not None  # stopped, not left running


# A two-node graph of built-in nodes (no model needed), in the UI format the frontend saves.
EMPTY_IMAGE_WORKFLOW = {
    "last_node_id": 2, "last_link_id": 1,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "pos": [80, 80], "size": [315, 130], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
         "properties": {"Node name for S&R": "EmptyImage"}, "widgets_values": [64, 48, 1, 16711680]},
        {"id": 2, "type": "SaveImage", "pos": [460, 80], "size": [315, 270], "flags": {}, "order": 1, "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
         "properties": {"Node name for S&R": "SaveImage"}, "widgets_values": ["harness_smoke"]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    "groups": [], "config": {}, "extra": {}, "version": 0.4,
}


def test_harness_drives_the_real_frontend(comfy_server, tmp_path, artifacts_dir):
    """ui_to_api and a drag-and-drop run in headless Chromium, with the pack's web files loaded."""
    from PIL import Image

    api = comfy_server.ui_to_api(EMPTY_IMAGE_WORKFLOW)
    assert {k: (v["class_type"], v["inputs"]) for k, v in api.items()} == {
        "1": ("EmptyImage", {"width": 64, "height": 48, "batch_size": 1, "color": 16711680}),
        "2": ("SaveImage", {"filename_prefix": "harness_smoke", "images": ["1", 0]}),
    }
    path = tmp_path / "empty_image.json"
    path.write_text(json.dumps(EMPTY_IMAGE_WORKFLOW))
    shot = artifacts_dir / "harness_smoke_canvas.png"
    entry = comfy_server.run_ui_workflow(path, screenshot=shot)
    (saved,) = comfy_server.output_files(entry)
    assert saved.parent == comfy_server.base_dir / "output" and saved.name.startswith("harness_smoke")
    with Image.open(saved) as image:
        assert image.size == (64, 48)
        assert image.convert("RGB").getpixel((10, 10)) == (255, 0, 0)  # color 0xFF0000
    assert shot.stat().st_size > 10_000


def test_the_suite_writes_outside_the_repository(artifacts_dir, readme_images, monkeypatch):
    """Screenshots and audio go to temporary folders; docs/images/ only on request
    (ACESTEP_REFRESH_README_IMAGES=1, scripts/refresh_readme_images.sh)."""
    from comfyui_harness import REPO
    if os.environ.get("ACESTEP_REFRESH_README_IMAGES") == "1":
        assert readme_images == REPO / "docs" / "images"
        return
    for path in (artifacts_dir, readme_images):
        assert REPO not in path.resolve().parents, path
