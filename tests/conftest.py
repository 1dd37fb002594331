"""Shared test setup: find the real ComfyUI that the environment script installed, so tests can
compare our modules with ComfyUI's own ACE-Step code on identical weights."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENV = Path(os.environ.get("ACESTEP_ENV_DIR", Path.home() / ".cache" / "comfyui-acestep" / "env"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", DEFAULT_ENV / "ComfyUI"))

for _path in (REPO, REPO / "scripts"):   # scripts/: comfyui_harness, shared with the scripts
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _add_comfyui_to_path():
    if not (COMFYUI_DIR / "comfy" / "ldm" / "ace").is_dir():
        raise RuntimeError(
            f"ComfyUI not found at {COMFYUI_DIR}. Run scripts/setup_env.sh first, or set COMFYUI_DIR "
            "to a ComfyUI source tree: the tests compare against ComfyUI's own ACE-Step code.")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))
    # Subprocesses (the CLI tests) find ComfyUI's lyric vocabulary through this variable.
    os.environ.setdefault("COMFYUI_DIR", str(COMFYUI_DIR))


_add_comfyui_to_path()


def _comfy_cpu_mode():
    # comfy.model_management probes CUDA when imported; tests run on machines without a GPU, so
    # put ComfyUI in --cpu mode before anything imports it (unless a GPU is really there).
    import torch
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        args.cpu = True


_comfy_cpu_mode()


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    return COMFYUI_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    import torch
    torch.manual_seed(0)
    yield

