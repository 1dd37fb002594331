"""A user's first run, ours vs ComfyUI native, at the real size: peak memory, time, same latent.

    python benchmarks/bench_memory.py [--workdir DIR] [--steps 3] [--seconds 3] [--threads N]
                                      [--keep-checkpoint] [--only ours|comfy]

Writes one real-size ACE-Step v1 checkpoint with random weights in the released single-file
layout, every weight in bfloat16 as the released file stores them (7.7 GB, streamed to disk one
tensor at a time), then, in a fresh process per implementation, does what a CPU user's first
workflow does: load the checkpoint (ours: LoadAceStepCheckpoint; native: ComfyUI's
``comfy.sd.load_checkpoint_guess_config``, what CheckpointLoaderSimple calls), KSampler (euler,
simple, cfg 3) for ``--steps`` steps on a ``--seconds`` latent with the same fixed conditioning
(random text hidden states and lyric ids, so the text encoders' tokenizers play no part), and a
decode of the result with the loaded VAE. Reports each process's peak resident set (VmHWM, which
includes the checkpoint's memory-mapped pages while they are resident) and wall time of the three
stages, and compares the two sampled latents (the decode runs on each side's own VAE).

ComfyUI runs in --cpu mode: it upcasts 16-bit weights to float32 at load; ours keeps them in
16 bits and upcasts each layer's weights at use (ComfyUI's manual-cast operations), the same
arithmetic. Needs ComfyUI's source (COMFYUI_DIR) and ~20 GB of free RAM for the native run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", Path.home() / ".cache/comfyui-acestep/env/ComfyUI"))
PACK = "comfyui_acestep"
SEED, CFG = 7, 3.0


# ---------------------------------------------------------------------------------------------
# the checkpoint
# ---------------------------------------------------------------------------------------------
def write_real_checkpoint(path: Path, seed: int = 0) -> Path:
    """Released config, released single-file key layout, bfloat16 random weights (scales as in
    acestep_core.testing), written without ever holding more than one tensor."""
    import torch

    from acestep_core.checkpoint import SINGLE_FILE_PREFIXES, SPIECE_KEY
    from acestep_core.config import AceStepConfig
    from acestep_core.models.dcae import DCAE
    from acestep_core.models.text_encoder import TextEncoder
    from acestep_core.models.transformer import AceStepTransformer
    from acestep_core.models.vocoder import Vocoder
    from acestep_core.testing import TINY_SPIECE_VOCAB, _randomize_
    from acestep_core.text.tags import make_tiny_spiece_model

    config = AceStepConfig.released()
    entries = []          # (key, shape, dtype name, make tensor)
    for name, cls, cfg in (("transformer", AceStepTransformer, config.transformer), ("dcae", DCAE, config.dcae),
                           ("vocoder", Vocoder, config.vocoder), ("text_encoder", TextEncoder, config.text_encoder)):
        with torch.device("meta"):
            module = cls(cfg)
        for key, tensor in module.state_dict().items():
            if key.startswith("mel_transform."):
                continue        # recomputed from the config
            entries.append((SINGLE_FILE_PREFIXES[name] + key, tuple(tensor.shape), "BF16", key))
    spiece = make_tiny_spiece_model(TINY_SPIECE_VOCAB)
    header, offset = {}, 0
    for key, shape, dtype, _ in entries:
        size = math.prod(shape) * 2
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header[SPIECE_KEY] = {"dtype": "U8", "shape": [len(spiece)], "data_offsets": [offset, offset + len(spiece)]}
    header["__metadata__"] = {"note": "ACE-Step v1 real-size checkpoint: RANDOM weights (benchmark)"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape, _, canonical in entries:
            state = {canonical: torch.empty(shape, dtype=torch.bfloat16)}
            _randomize_(state, generator)
            f.write(state[canonical].view(torch.int16).numpy().tobytes())
        f.write(spiece)
    return path


# ---------------------------------------------------------------------------------------------
# worker: one implementation in a fresh process
# ---------------------------------------------------------------------------------------------
def _peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("VmHWM")


def _import_comfyui():
    """ComfyUI in --cpu mode with its nodes.py importable as ``nodes`` (what its modules import)."""
    import importlib.util

    sys.path.append(str(COMFYUI_DIR))
    from comfy.cli_args import args
    args.cpu = True
    spec = importlib.util.spec_from_file_location("nodes", COMFYUI_DIR / "nodes.py")
    nodes = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = nodes
    spec.loader.exec_module(nodes)
    return nodes


def _import_pack():
    import importlib.util
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK}.nodes.loaders")


def worker(impl: str, checkpoint: str, steps: int, seconds: float, out: str) -> dict:
    import torch
    nodes = _import_comfyui()
    import comfy.sd
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False

    t0 = time.perf_counter()
    if impl == "ours":
        model, _, vae = _import_pack().load_ace_step_path(checkpoint)
    else:
        model, _, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    t_load = time.perf_counter() - t0

    g = torch.Generator().manual_seed(SEED)
    context = torch.randn(1, 24, 768, generator=g)
    lyrics = torch.randint(3, 6000, (1, 80), generator=g)
    positive = [[context, {"conditioning_lyrics": lyrics}]]
    negative = [[torch.zeros_like(context), {"conditioning_lyrics": lyrics}]]
    frames = math.ceil(seconds * 44100 / 4096)
    latent = {"samples": torch.zeros(1, 8, 16, frames), "type": "audio"}
    t0 = time.perf_counter()
    samples = nodes.common_ksampler(model, SEED, steps, CFG, "euler", "simple", positive, negative, latent)[0]["samples"]
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio = vae.decode(samples)
    t_decode = time.perf_counter() - t0
    torch.save(samples, out)
    return {"impl": impl, "peak_gib": _peak_gib(), "load_s": t_load, "sample_s": t_sample, "decode_s": t_decode,
            "audio_shape": list(audio.shape), "finite": bool(torch.isfinite(audio).all())}


def run_worker(impl: str, checkpoint: Path, steps: int, seconds: float, out: Path, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    spec = {"impl": impl, "checkpoint": str(checkpoint), "steps": steps, "seconds": seconds, "out": str(out)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else [f"exit {proc.returncode}"]
        return {"impl": impl, "error": " | ".join(tail), "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, default=None, help="where the 7.7 GB checkpoint is written")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--keep-checkpoint", action="store_true")
    ap.add_argument("--only", choices=["ours", "comfy"], default=None)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return 0

    import torch
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="acestep-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "ace_step_v1_real_size_RANDOM.safetensors"
    if not checkpoint.exists():
        t0 = time.perf_counter()
        write_real_checkpoint(checkpoint)
        print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    results = {}
    try:
        for impl in ("ours", "comfy"):
            if args.only and impl != args.only:
                continue
            print(f"{impl}: MemAvailable before the run {_available_gib():.1f} GiB", flush=True)
            results[impl] = run_worker(impl, checkpoint, args.steps, args.seconds, workdir / f"{impl}.pt", args.threads)
            print(json.dumps(results[impl]), flush=True)
    finally:
        if not args.keep_checkpoint:
            checkpoint.unlink(missing_ok=True)
    print(f"\nload + {args.steps} steps ({args.seconds:g} s latent, cfg {CFG}) + decode, real-size bf16 checkpoint, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("| | peak RSS | load | sample | decode | total (process) |")
    print("|---|---|---|---|---|---|")
    for impl, r in results.items():
        if "error" in r:
            print(f"| {impl} | error: {r['error']} | | | | |")
            continue
        print(f"| {impl} | {r['peak_gib']:.2f} GiB | {r['load_s']:.1f} s | {r['sample_s']:.1f} s | "
              f"{r['decode_s']:.1f} s | {r['wall_s']:.1f} s |")
    ours, theirs = results.get("ours", {}), results.get("comfy", {})
    if "peak_gib" in ours and "peak_gib" in theirs:
        a, b = torch.load(workdir / "ours.pt"), torch.load(workdir / "comfy.pt")
        rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        print(f"\nours / native: peak RSS {ours['peak_gib'] / theirs['peak_gib']:.2f}x, "
              f"time {ours['wall_s'] / theirs['wall_s']:.2f}x; latent max|diff| / max|latent| = {rel:.2e}"
              f" (bit-equal: {torch.equal(a, b)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
