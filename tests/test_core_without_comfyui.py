"""acestep_core is plain PyTorch: every module imports in a Python that cannot see ComfyUI, and
none of them pulls ComfyUI in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, pkgutil, sys
import acestep_core
names = [m.name for m in pkgutil.walk_packages(acestep_core.__path__, "acestep_core.")
         if m.name != "acestep_core.__main__"]
for name in names:
    importlib.import_module(name)
leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("comfy", "comfy_extras", "folder_paths", "nodes"))
print(len(names), leaked)
"""


def test_every_core_module_imports_without_comfyui(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_DIR")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, leaked = proc.stdout.strip().split(" ", 1)
    assert int(count) > 20
    assert leaked == "[]", f"acestep_core imported ComfyUI modules: {leaked}"
