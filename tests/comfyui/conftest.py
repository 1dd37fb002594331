"""Fixtures for tests that need the real ComfyUI server with this pack loaded.

`comfy_server` is one server per test session (starting one costs 10-20 s on a small machine),
on a fresh base directory with the pack symlinked into custom_nodes/. `tiny_checkpoints` adds
two tiny random-weight checkpoints to its models/checkpoints/ (ComfyUI lists new files without
a restart). Nothing is skipped: a server that cannot start, or that fails to import the pack,
makes the tests error with the server's log.

`in_process_env` is for tests that run the nodes in the test's own process instead (no server):
each such module builds its `env` with it, naming the ComfyUI extras and pack node modules it uses.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import requests

from comfyui_harness import REPO, ComfyServer, make_tiny_checkpoint

TINY_SINGLE_FILE = "acestep_tiny_RANDOM_WEIGHTS_demo.safetensors"
TINY_FOLDERS = "acestep_tiny_RANDOM_WEIGHTS_folders"
SCREEN = (1600, 900)      # the browser window of the workflow tests (README screenshots)


@pytest.fixture(scope="session")
def in_process_env():
    """Builds a test module's ComfyUI, in process: ``in_process_env(extras, pack_nodes)`` -> a dict
    with ComfyUI's ``nodes`` module, each ComfyUI ``comfy_extras.<name>`` of ``extras`` and each
    ``<pack>.nodes.<name>`` of ``pack_nodes``, by name. ComfyUI's progress bars are turned off (no
    tqdm bars in the test log). A module calls it from its own module-scoped ``env`` fixture, so
    it gets its own dict, made once."""
    def build(extras: tuple[str, ...], pack_nodes: tuple[str, ...]) -> dict:
        import comfy.utils

        from .pack_import import PACK, comfy_extras, comfy_nodes_module, pack_module
        comfy.utils.PROGRESS_BAR_ENABLED = False
        env = {"nodes": comfy_nodes_module()}
        env.update(comfy_extras(*extras))
        pack_module()
        for name in pack_nodes:
            env[name] = importlib.import_module(f"{PACK}.nodes.{name}")
        return env
    return build


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> ComfyServer:
    """A running ComfyUI with the pack loaded (ServerError, with the log tail, otherwise)."""
    server = ComfyServer(base_dir=tmp_path_factory.mktemp("comfy-base"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_checkpoints(comfy_server, tmp_path_factory) -> dict[str, str]:
    """Tiny random-weight checkpoints, made with `python -m acestep_core make-tiny` and put in
    the session server's models/checkpoints/. Returns their names there, by layout:
    {'comfyui': single .safetensors file, 'folders': a folder in the original layout}."""
    folder = tmp_path_factory.mktemp("acestep-tiny")
    made = {"comfyui": make_tiny_checkpoint(folder / TINY_SINGLE_FILE, layout="comfyui"),
            "folders": make_tiny_checkpoint(folder / TINY_FOLDERS, layout="folders")}
    return {layout: comfy_server.add_checkpoint(path).name for layout, path in made.items()}


@pytest.fixture(scope="session")
def tiny15(comfy_server, tmp_path_factory) -> dict[str, str]:
    """Tiny ACE-Step 1.5 models in the session server's model folders (one set for every test
    module, so no two modules link different files under one name), by widget value: the
    all-in-one file and the split files, each with a tiny planner, same weights (same seed)."""
    from acestep_core.ace15.tiny import write_tiny_ace15

    folder = tmp_path_factory.mktemp("ace15-tiny")
    aio = write_tiny_ace15(folder / "aio", "aio", planner=True)["checkpoint"]
    split = write_tiny_ace15(folder / "split", "split", planner=True)
    comfy_server.add_model("checkpoints", aio)
    for role, kind in (("dit", "diffusion_models"), ("text_encoder", "text_encoders"), ("planner", "text_encoders"),
                       ("vae", "vae")):
        comfy_server.add_model(kind, split[role])
    return {"aio": aio.name, "dit": split["dit"].name, "text_encoder": split["text_encoder"].name,
            "planner": split["planner"].name, "vae": split["vae"].name}


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    """Screenshots and audio that a person may want to look at: a temporary folder (tests write
    nothing into the repository), or ACESTEP_ARTIFACTS_DIR when set."""
    chosen = os.environ.get("ACESTEP_ARTIFACTS_DIR")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def readme_images(artifacts_dir) -> Path:
    """Where the tests put the README's pictures: docs/images/ only when asked for with
    ACESTEP_REFRESH_README_IMAGES=1 (``bash scripts/refresh_readme_images.sh`` does that), else a
    folder among the artifacts, so the suite never changes committed files."""
    if os.environ.get("ACESTEP_REFRESH_README_IMAGES") == "1":
        return REPO / "docs" / "images"
    path = artifacts_dir / "readme-images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def quiet_canvas(comfy_server):
    """Screenshots without the minimap and the fps counter (it changes from run to run), and no
    workflow restored when the page reloads (Comfy.Workflow.Persist: frontend 1.43 restored the
    previous test's workflow after a reload, sometimes after the next file was dropped, and Run then
    queued that one); the server's settings are put back afterwards (the server is shared by the
    session)."""
    changes = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False, "Comfy.Workflow.Persist": False}
    before = requests.get(comfy_server.url + "/settings", timeout=30).json()
    requests.post(comfy_server.url + "/settings", json=changes, timeout=30).raise_for_status()
    yield
    restore = {key: before.get(key, True) for key in changes}   # all default to True
    requests.post(comfy_server.url + "/settings", json=restore, timeout=30).raise_for_status()


@pytest.fixture(scope="session")
def ui(comfy_server, quiet_canvas):
    """One headless Chromium page on the server's frontend, shared by the workflow test modules
    (test_workflows.py, test_workflows_v15.py: starting a browser costs 15-20 s); each test reloads
    it (test_workflows.fresh)."""
    with comfy_server.browser(*SCREEN) as page:
        yield page
