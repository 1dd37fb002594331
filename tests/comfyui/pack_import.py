"""Importing for in-process tests: ComfyUI's own `nodes.py` as `nodes` (what comfy_extras and every
ComfyUI module import; the repo's `nodes/` package would otherwise shadow it), and this pack as a
package named PACK, the way ComfyUI loads a custom node folder."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import comfy  # on sys.path through tests/conftest.py

COMFYUI_DIR = Path(list(comfy.__path__)[0]).resolve().parent   # comfy is a namespace package
REPO = Path(__file__).resolve().parents[2]
PACK = "comfyui_acestep"


def import_file(name: str, path: Path, package_dir: Path | None = None):
    kwargs = {"submodule_search_locations": [str(package_dir)]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, path, **kwargs)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def comfy_nodes_module():
    """ComfyUI's nodes.py as `nodes`, imported once."""
    path = (COMFYUI_DIR / "nodes.py").resolve()
    current = sys.modules.get("nodes")
    if current is not None and Path(getattr(current, "__file__", "") or "").resolve() == path:
        return current
    return import_file("nodes", path)


def pack_module():
    """This repository imported as the custom-node package PACK."""
    return sys.modules.get(PACK) or import_file(PACK, REPO / "__init__.py", REPO)
