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


# ACESTEP_WITHOUT_COMFYUI=1: the run without ComfyUI (scripts/test.sh --without-comfyui, first in
# .ci/run). ComfyUI is not put on sys.path and an import of it is refused: from acestep_core it is
# an error naming the importing line (the core must stay importable and testable without
# ComfyUI); from a test, which uses ComfyUI's own code as its reference, the test is skipped.
WITHOUT_COMFYUI = os.environ.get("ACESTEP_WITHOUT_COMFYUI") == "1"
_CORE = REPO / "acestep_core"


class _RefuseComfyUI:
    """A meta-path finder that refuses ``comfy`` and ``comfy_extras`` (see WITHOUT_COMFYUI)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("comfy", "comfy_extras", "comfy_api", "folder_paths"):
            return None
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                     or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        where = Path(frame.f_code.co_filename).resolve() if frame is not None else None
        if where is not None and _CORE in where.parents:
            raise ImportError(f"acestep_core must not import ComfyUI: {where.relative_to(REPO)}:{frame.f_lineno} "
                              f"imports {name!r} (the core is plain PyTorch; ComfyUI code belongs in nodes/)")
        raise pytest.skip.Exception(f"needs ComfyUI ({name}) as its reference: skipped in the run without ComfyUI",
                                    allow_module_level=True)


if WITHOUT_COMFYUI:
    sys.meta_path.insert(0, _RefuseComfyUI())
    collect_ignore = ["comfyui"]
    # Data files only (the lyric vocabulary, tokenizers ComfyUI ships), never its code.
    os.environ.setdefault("COMFYUI_DIR", str(COMFYUI_DIR))
else:
    _add_comfyui_to_path()


def _comfy_cpu_mode():
    # comfy.model_management probes CUDA when imported; tests run on machines without a GPU, so
    # put ComfyUI in --cpu mode before anything imports it (unless a GPU is really there).
    import torch
    from comfy.cli_args import args
    if not torch.cuda.is_available():
        args.cpu = True


if not WITHOUT_COMFYUI:
    _comfy_cpu_mode()


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    return COMFYUI_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    import torch
    torch.manual_seed(0)
    yield

