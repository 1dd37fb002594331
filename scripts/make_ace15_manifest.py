#!/usr/bin/env python3
"""Regenerate tests/data/ace15_manifest.json.gz: the name and shape of every tensor in ComfyUI
0.20.1's ACE-Step 1.5 generation model (``AceStepConditionGenerationModel``: DiT, condition
encoder, tokenizer, detokenizer, null embedding) at the 2B and the XL config, built on the meta
device (no memory, no weights). tests/test_ace15_structure.py checks our modules against it.

    /work/comfy020/venv/bin/python scripts/make_ace15_manifest.py --comfyui /work/comfy020/ComfyUI

``--comfyui`` is a ComfyUI 0.20.1 source tree (fetched ``github:YellowRoseCx/ComfyUI``, commit
aa9d2fc713664e9ffe37763f4c9240c0c3eda667, a snapshot of Comfy-Org master 2026-05-10), run with a
Python that has its requirements. The XL sizes are the ones ComfyUI's detection
(``comfy/model_detection.py``, ``audio_model = "ace1.5"``) reads from the released XL file: width
2560, 32 layers, heads = q_proj rows / 128, MLP = gate_proj rows; the head count and MLP width
are taken from ``acestep_core.ace15.config.released_xl`` (no XL file was available).
Nothing of ComfyUI is copied: only the generated names and shapes are committed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "ace15_manifest.json.gz"


def comfy_kwargs(config) -> dict:
    """``AceStepConditionGenerationModel`` keyword arguments for an :class:`Ace15Config`, the way
    ComfyUI's detection fills them (everything else at its defaults)."""
    return dict(hidden_size=config.dit.hidden_size, intermediate_size=config.dit.intermediate_size,
                num_heads=config.dit.num_heads, num_dit_layers=config.dit.num_layers,
                encoder_hidden_size=config.encoder.hidden_size, encoder_num_heads=config.encoder.num_heads,
                encoder_intermediate_size=config.encoder.intermediate_size)


def build_manifest(comfyui: Path) -> dict:
    sys.path.insert(0, str(comfyui))
    sys.path.insert(0, str(REPO))
    import torch
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # no GPU needed (model_management probes CUDA on import)
    import comfy.ops
    from comfy.ldm.ace import ace_step15
    from acestep_core.ace15.config import released_2b, released_xl

    original_fsq = ace_step15.FSQ

    class FSQOnCPU(original_fsq):
        # FSQ has no parameters but computes its codebook with .item() at build time, which the
        # meta device cannot do: build just this module's buffers on the CPU.
        def __init__(self, *args, device=None, **kwargs):
            super().__init__(*args, device="cpu", **kwargs)

    ace_step15.FSQ = FSQOnCPU
    manifest = {"reference": "ComfyUI 0.20.1 comfy/ldm/ace/ace_step15.py AceStepConditionGenerationModel",
                "commit": git_commit(comfyui), "configs": {}}
    for name, config in (("2b", released_2b()), ("xl", released_xl())):
        kwargs = comfy_kwargs(config)
        model = ace_step15.AceStepConditionGenerationModel(
            **kwargs, dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
        shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
        manifest["configs"][name] = {"comfy_kwargs": kwargs, "shapes": shapes,
                                     "parameters": sum(p.numel() for p in model.parameters())}
        print(f"{name}: {len(shapes)} tensors, {manifest['configs'][name]['parameters']:,} parameters")
    return manifest


def git_commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "aa9d2fc713664e9ffe37763f4c9240c0c3eda667 (from the fetched snapshot; tree has no .git)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI 0.20.1 source tree")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    manifest = build_manifest(args.comfyui.resolve())
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:
        f.write(data)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
