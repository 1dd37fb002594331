"""ComfyUI nodes of comfyui-acestep: collects every node module's mappings.

Each module is imported on its own: one that fails (a missing optional dependency, an older
ComfyUI) is reported in the server log and the other nodes still load.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("comfyui-acestep")

# Node modules of this package, in menu order. A module missing from disk is skipped quietly.
NODE_MODULES = ("loaders", "conditioning", "latents", "ace15_nodes", "ace15_planner", "tasks", "ace15_tasks", "guidance",
                "edit", "lora", "routes")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _collect(name: str) -> None:
    try:
        module = importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            return
        log.exception("comfyui-acestep: nodes.%s could not be imported; its nodes are unavailable", name)
        return
    except Exception:
        log.exception("comfyui-acestep: nodes.%s could not be imported; its nodes are unavailable", name)
        return
    NODE_CLASS_MAPPINGS.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))


for _name in NODE_MODULES:
    _collect(_name)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
