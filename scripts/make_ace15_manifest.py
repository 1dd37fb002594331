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
    """``AceStepConditionGenerationModel`` keyword arguments for an :class:`Ace15Config`.

    ComfyUI ties some sizes together that our config keeps apart (one head size and one KV-head
    count for the DiT and the encoder; 16 / 8 heads and a 3x MLP in the pooler and detokenizer;
    the FSQ input width = the encoder width): a config that breaks a tie cannot be built there.
    """
    dit, enc, tok = config.dit, config.encoder, config.tokenizer
    ties = {"head_dim": {dit.head_dim, enc.head_dim, tok.head_dim},
            "num_kv_heads": {dit.num_kv_heads, enc.num_kv_heads},
            "tokenizer heads 16/8": {(tok.num_heads, tok.num_kv_heads), (16, 8)},
            "tokenizer MLP 3x": {tok.intermediate_size, 3 * tok.hidden_size},
            "encoder width": {enc.hidden_size, tok.hidden_size, dit.condition_size},
            "detokenizer layers": {tok.num_detokenizer_layers, 2}}
    broken = [name for name, values in ties.items() if len(values) > 1]
    if broken:
        raise ValueError(f"ComfyUI cannot build this config (it ties {', '.join(broken)})")
    return dict(in_channels=dit.in_channels, hidden_size=dit.hidden_size, text_hidden_dim=enc.text_hidden_dim,
                timbre_hidden_dim=enc.timbre_hidden_dim, audio_acoustic_hidden_dim=dit.audio_channels,
                num_dit_layers=dit.num_layers, num_lyric_layers=enc.num_lyric_layers,
                num_timbre_layers=enc.num_timbre_layers, num_tokenizer_layers=tok.num_pooler_layers,
                num_heads=dit.num_heads, num_kv_heads=dit.num_kv_heads, head_dim=dit.head_dim,
                intermediate_size=dit.intermediate_size, patch_size=dit.patch_size,
                pool_window_size=tok.pool_window_size, rms_norm_eps=dit.rms_norm_eps,
                sliding_window=dit.sliding_window, fsq_dim=tok.hidden_size, fsq_levels=list(tok.fsq_levels),
                fsq_input_num_quantizers=tok.num_quantizers, encoder_hidden_size=enc.hidden_size,
                encoder_intermediate_size=enc.intermediate_size, encoder_num_heads=enc.num_heads)


def import_comfy_ace15(comfyui: Path):
    """``(comfy.ops, comfy.ldm.ace.ace_step15)`` from the ComfyUI tree at ``comfyui``, CPU only,
    with FSQ's buffers always built on the CPU (it has no parameters but computes its codebook with
    ``.item()`` at build time, which the meta device cannot do)."""
    sys.path.insert(0, str(comfyui))
    sys.path.insert(0, str(REPO))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # no GPU needed (model_management probes CUDA on import)
    import comfy.ops
    from comfy.ldm.ace import ace_step15

    original_fsq = ace_step15.FSQ

    class FSQOnCPU(original_fsq):
        def __init__(self, *args, device=None, **kwargs):
            super().__init__(*args, device="cpu", **kwargs)

    ace_step15.FSQ = FSQOnCPU
    return comfy.ops, ace_step15


def build_manifest(comfyui: Path) -> dict:
    import torch
    comfy_ops, ace_step15 = import_comfy_ace15(comfyui)
    from acestep_core.ace15.config import released_2b, released_xl

    manifest = {"reference": "ComfyUI 0.20.1 comfy/ldm/ace/ace_step15.py AceStepConditionGenerationModel",
                "commit": git_commit(comfyui), "configs": {}}
    for name, config in (("2b", released_2b()), ("xl", released_xl())):
        kwargs = comfy_kwargs(config)
        model = ace_step15.AceStepConditionGenerationModel(
            **kwargs, dtype=torch.bfloat16, device="meta", operations=comfy_ops.disable_weight_init)
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
