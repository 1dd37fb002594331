"""ACE-Step 1.5: one sampler step of our generation model vs ComfyUI 0.20.1's, on identical random
weights, in one run.

    python benchmarks/bench_ace15.py [--config 2b|xl|mid] [--dtypes fp32 bf16] [--frames 750] [--steps 3]
        [--comfyui /work/comfy020/ComfyUI] [--comfy-python /work/comfy020/venv/bin/python]

A "step" is what the sampler calls once per denoising step: the model's forward with the caption
hidden states, lyric embeddings and reference latents (ComfyUI ``AceStepConditionGenerationModel.
forward``; text2music without audio codes, so the reference is the silence stand-in and
``is_covers`` is False, as ``comfy/model_base.py`` ``ACEStep15.extra_conds`` sets it). Rows:

- ``first step``: the first call (ComfyUI does the same work at every step);
- ``later steps``: the median of the next ``--steps - 1`` calls with the same conditions, as in a
  sampler (ours reuses the condition encoding, which does not depend on the step);
- ``decoder only``: the DiT alone on a prepared condition (same inputs for both).

Each implementation runs in its own subprocess, ``--rounds`` times, alternating; each figure is
the best of the rounds (on a shared machine other load only ever adds time): ours with this Python, ComfyUI's with
``--comfy-python`` on the ComfyUI 0.20.1 tree ``--comfyui`` (defaults: COMFYUI_PYTHON /
COMFYUI_DIR). Peak memory is measured as in benchmarks/bench_core.py: the rise of the peak
resident set over the resident set before the first call (weights excluded), glibc's mmap
threshold pinned at 128 KiB. Weights are filled per tensor name from a fixed seed, so both sides
hold identical values; the velocity checksums printed must agree.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "scripts"), str(REPO)]

from bench_core import _fill_deterministic, _measure, _reset_peak, _status_kib  # noqa: E402


def _config(name: str):
    from acestep_core.ace15.config import Ace15Config, DiTConfig, released_2b, released_xl
    if name == "2b":
        return released_2b()
    if name == "xl":
        return released_xl()
    # a quick mid-size: 6 DiT layers at the real widths, real encoders
    return Ace15Config(dit=DiTConfig(num_layers=6))


def worker(impl: str, config_name: str, dtype_name: str, frames: int, steps: int, comfyui: str) -> dict:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    config = _config(config_name)
    if impl == "ours":
        from acestep_core.ace15 import Ace15Model
        model = Ace15Model(config, dtype=dtype)
    else:
        from make_ace15_manifest import comfy_kwargs, import_comfy_ace15
        comfy_ops, ace_step15 = import_comfy_ace15(Path(comfyui))
        model = ace_step15.AceStepConditionGenerationModel(
            **comfy_kwargs(config), dtype=dtype, device="cpu", operations=comfy_ops.disable_weight_init)
    _fill_deterministic(model, 1515)
    model.eval().requires_grad_(False)

    gen = torch.Generator().manual_seed(0)
    text_dim = config.encoder.text_hidden_dim
    x = torch.randn(1, 64, frames, generator=gen).to(dtype)
    t = torch.tensor([0.6]).to(dtype)
    context = torch.randn(1, 64, text_dim, generator=gen).to(dtype)
    lyrics = (torch.randn(1, 200, text_dim, generator=gen) * 0.05).to(dtype)
    refer = torch.randn(1, 64, frames, generator=gen).to(dtype)
    out = {}

    def step():
        with torch.no_grad():
            out["v"] = model(x, t, context, lyric_embed=lyrics, refer_audio=refer, is_covers=False)

    # ours: the conditions of one sampling run are encoded once (Ace15Model.reuse_conditions)
    reuse = model.reuse_conditions() if impl == "ours" else contextlib.nullcontext()
    reuse.__enter__()
    rss_before = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = (_status_kib("VmHWM") - rss_before) / 1024
    later = []
    for _ in range(steps - 1):
        t0 = time.perf_counter()
        step()
        later.append(time.perf_counter() - t0)
    reuse.__exit__(None, None, None)
    velocity = out["v"].float()

    # the DiT alone, on the same prepared condition
    with torch.no_grad():
        hidden = x.movedim(-1, -2)
        condition = torch.randn(1, 200 + 1 + 64, config.encoder.hidden_size, generator=gen).to(dtype)
        context_latents = torch.cat([refer.movedim(-1, -2), torch.ones_like(hidden)], dim=-1)
    if impl == "ours":
        decoder = lambda: model.decoder(hidden, t, t, condition, context_latents)  # noqa: E731
    else:
        decoder = lambda: model.decoder(hidden_states=hidden, timestep=t, timestep_r=t, attention_mask=None,  # noqa: E731
                                        encoder_hidden_states=condition, encoder_attention_mask=None,
                                        context_latents=context_latents)
    dec = {}

    def decoder_step():
        with torch.no_grad():
            dec["v"] = decoder()

    decoder_seconds, decoder_peak = _measure(decoder_step, max(1, steps - 1))
    return {"first": first, "later": statistics.median(later) if later else None, "peak_mib": peak,
            "decoder": decoder_seconds, "decoder_peak_mib": decoder_peak,
            "checksum": float(velocity.abs().mean()), "decoder_checksum": float(dec["v"].float().abs().mean()),
            "finite": bool(torch.isfinite(velocity).all())}


def vae_worker(impl: str, seconds: float, comfyui: str, memory_limit_gib: float = 0) -> dict:
    """Decode ``seconds`` of random latent with the released-size 48 kHz VAE (random weights from
    one seed, identical on both sides): ours through acestep_core's windowed AudioCodec15.decode
    (what our VAEDecodeAudio path calls), ComfyUI's through ``comfy.sd.VAE.decode`` (what its
    VAEDecodeAudio calls). ``memory_limit_gib`` caps the address space so a decode that would
    exhaust the machine fails cleanly instead of waking the OOM killer."""
    import resource

    import torch

    if memory_limit_gib:
        limit = int(memory_limit_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from acestep_core.ace15.tiny import random_vae_state
    from acestep_core.ace15.vae import OobleckConfig

    torch.set_grad_enabled(False)
    state = random_vae_state(OobleckConfig.released(), 1515)
    frames = round(seconds * 25)
    latent = torch.randn(1, 64, frames, generator=torch.Generator().manual_seed(0))
    if impl == "ours":
        from acestep_core.ace15.vae import AudioCodec15, OobleckVAE
        vae = OobleckVAE(OobleckConfig.released())
        vae.load_state_dict(state, strict=True)
        codec = AudioCodec15(vae.eval())
        decode = lambda: codec.decode(latent)  # noqa: E731
    else:
        sys.path.insert(0, comfyui)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.sd
        vae = comfy.sd.VAE(sd=dict(state), dtype=torch.float32)
        decode = lambda: vae.decode(latent).movedim(-1, 1)  # noqa: E731
    del state
    out = {}
    rss_before = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    try:
        out["audio"] = decode()
    except (MemoryError, RuntimeError) as err:
        return {"error": f"{type(err).__name__} within {memory_limit_gib} GiB: {str(err)[:80]}"}
    seconds_taken = time.perf_counter() - t0
    peak = (_status_kib("VmHWM") - rss_before) / 1024
    audio = out["audio"].float()
    return {"decode": seconds_taken, "decode_peak_mib": peak, "checksum": float(audio.abs().mean()),
            "samples": audio.shape[-1]}


def run_worker(python: str, spec: dict) -> dict:
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([python, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:] if proc.stderr.strip() else [f"exit {proc.returncode}"]
        return {"error": " / ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _keep_best(best: dict, result: dict) -> None:
    """Merge ``result`` into ``best``: the smallest time and memory figures, the first checksums."""
    if "error" in result or "error" in best:
        best.setdefault("error", result.get("error"))
        return
    for key, value in result.items():
        if key not in best or best[key] is None:
            best[key] = value
        elif isinstance(value, float) and key not in ("checksum", "decoder_checksum"):
            best[key] = min(best[key], value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--config", default="2b", choices=["2b", "xl", "mid"])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--frames", type=int, default=750, help="latent frames (750 = 30 s)")
    ap.add_argument("--steps", type=int, default=3, help="calls per measurement (the first + later ones)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each side; the best figures count")
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", "/work/comfy020/ComfyUI"),
                    help="ComfyUI 0.20.1 source tree")
    ap.add_argument("--comfy-python", default=os.environ.get("COMFYUI_PYTHON", "/work/comfy020/venv/bin/python"))
    ap.add_argument("--vae-seconds", type=float, nargs="*", default=[],
                    help="also decode these lengths (seconds) with the real-size VAE, e.g. 30 240")
    ap.add_argument("--vae-only", action="store_true", help="only the VAE decode rows")
    ap.add_argument("--memory-limit-gib", type=float, default=16.0,
                    help="address-space cap of each VAE worker (a decode beyond it is reported, not run to OOM)")
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        if spec.pop("kind", "step") == "vae":
            print(json.dumps(vae_worker(**spec)))
        else:
            print(json.dumps(worker(**spec)))
        return 0

    import platform

    import torch
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} (ours), "
          f"threads {torch.get_num_threads()}; ComfyUI tree {args.comfyui}")
    print(f"config {args.config}, {args.frames} latent frames, batch 1, text2music step (is_covers False)\n")
    print("| measurement | ours | ComfyUI 0.20.1 | ratio |")
    print("|---|---|---|---|")
    for seconds in args.vae_seconds:
        spec = dict(kind="vae", seconds=seconds, comfyui=args.comfyui, memory_limit_gib=args.memory_limit_gib)
        ours, theirs = {}, {}
        for _ in range(args.rounds):
            _keep_best(ours, run_worker(sys.executable, {"impl": "ours", **spec}))
            _keep_best(theirs, run_worker(args.comfy_python, {"impl": "comfy", **spec}))
        for label, key, fmt in (("time", "decode", "{:.1f} s"), ("peak", "decode_peak_mib", "{:.0f} MiB")):
            a = fmt.format(ours[key]) if key in ours else ours.get("error", "?")
            b = fmt.format(theirs[key]) if key in theirs else theirs.get("error", "?")
            ratio = f"{ours[key] / max(theirs[key], 1e-9):.2f}x" if key in ours and key in theirs else ""
            print(f"| VAE decode {seconds:g} s fp32 {label} | {a} | {b} | {ratio} |", flush=True)
        if "checksum" in ours and "checksum" in theirs:
            print(f"| VAE decode {seconds:g} s checksum | {ours['checksum']:.6f} | {theirs['checksum']:.6f} | |", flush=True)
    if args.vae_only:
        return 0
    for dtype in args.dtypes:
        spec = dict(config_name=args.config, dtype_name=dtype, frames=args.frames, steps=args.steps,
                    comfyui=args.comfyui)
        ours, theirs = {}, {}
        for _ in range(args.rounds):   # alternate, keep each figure's best: a shared machine's load only adds
            _keep_best(ours, run_worker(sys.executable, {"impl": "ours", **spec}))
            _keep_best(theirs, run_worker(args.comfy_python, {"impl": "comfy", **spec}))
        if "error" in ours or "error" in theirs:
            print(f"| {dtype} | {ours.get('error', 'ok')} | {theirs.get('error', 'ok')} | |", flush=True)
            continue
        rows = [("first step", "first", "s"), ("later steps (median)", "later", "s"), ("step peak", "peak_mib", "MiB"),
                ("decoder only", "decoder", "s"), ("decoder peak", "decoder_peak_mib", "MiB")]
        for label, key, unit in rows:
            a, b = ours[key], theirs[key]
            if a is None or b is None:
                continue
            fmt = "{:.2f} s" if unit == "s" else "{:.0f} MiB"
            print(f"| {args.config} {dtype} {label} | {fmt.format(a)} | {fmt.format(b)} | {a / max(b, 1e-9):.2f}x |",
                  flush=True)
        print(f"| {args.config} {dtype} checksum step / decoder | {ours['checksum']:.5f} / {ours['decoder_checksum']:.5f}"
              f" | {theirs['checksum']:.5f} / {theirs['decoder_checksum']:.5f} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
