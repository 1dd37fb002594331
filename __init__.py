"""comfyui-acestep: ACE-Step v1 music generation for ComfyUI, on the acestep_core PyTorch package.

ComfyUI imports this folder as a package. ``acestep_core`` is made importable under its own
name (the nodes use absolute imports, so there is exactly one copy of it however the pack is
loaded) without putting this folder on sys.path: that would expose our ``nodes`` package under
the name of ComfyUI's own ``nodes`` module.
"""
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _ensure_acestep_core() -> None:
    if "acestep_core" in sys.modules:
        return
    package_dir = _HERE / "acestep_core"
    spec = importlib.util.spec_from_file_location("acestep_core", package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["acestep_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["acestep_core"]
        raise


_ensure_acestep_core()

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Run as a plain module, not as a package: pytest (8 and later) does that when it sets up the
    # checkout's folder as a test package and the folder's name is not a Python identifier (the
    # README's `git clone ... comfyui-acestep`). There are no nodes to offer then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
