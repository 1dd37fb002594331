"""Importing for in-process tests: ComfyUI's own `nodes.py` as `nodes` (what comfy_extras and every
ComfyUI module import; the repo's `nodes/` package would otherwise shadow it), ComfyUI's built-in
extra nodes (comfy_extras) the way the server loads them, and this pack as a package named PACK,
the way ComfyUI loads a custom node folder."""
from __future__ import annotations

import asyncio
import importlib
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


def comfy_extras(*names: str) -> dict:
    """ComfyUI's modules comfy_extras.<name>, by name, reached the way the server reaches them.

    The server never imports a comfy_extras module by its package name first:
    `nodes.init_builtin_extra_nodes` loads each file by path (`nodes.load_custom_node`, a
    module named after the path), and the package names are reached through the files' imports of
    each other. Some files depend on that: in ComfyUI 0.20.1 comfy_extras/nodes_latent.py imports
    comfy_extras.nodes_post_processing, which imports `reshape_latent_to` from
    comfy_extras.nodes_latent, a cycle that fails ("partially initialized module") when
    nodes_latent is the one imported by name first. So each file is loaded with the server's
    loader first (which also registers its nodes, as on a server), then taken by package name."""
    nodes = comfy_nodes_module()
    modules = {}
    for name in names:
        qualified = f"comfy_extras.{name}"
        if qualified not in sys.modules:
            path = COMFYUI_DIR / "comfy_extras" / f"{name}.py"
            if not asyncio.run(nodes.load_custom_node(str(path), module_parent="comfy_extras")):
                raise ImportError(f"ComfyUI could not load {path} (its log above says why)")
        modules[name] = importlib.import_module(qualified)
    return modules


def pack_module():
    """This repository imported as the custom-node package PACK."""
    return sys.modules.get(PACK) or import_file(PACK, REPO / "__init__.py", REPO)
