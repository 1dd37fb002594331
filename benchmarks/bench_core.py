"""Our core vs ComfyUI's ACE-Step implementation, on identical random weights, in one run.

    python benchmarks/bench_core.py [--quick] [--device cuda] [--real [--real-frames 323 2583]]
                                    [--dtypes fp32 bf16] [--decode-seconds 30 240] [--threads N]

Prints per-step transformer latency and peak memory (mid-size config, and the real config in bf16
for one step with --real), and DCAE+vocoder decode time and peak memory at the real VAE config.
Every measurement runs in a fresh subprocess so peak memory is not polluted by earlier ones. On the
CPU, peak memory is the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) over its resident set just before the first call: the activations and
temporaries, weights excluded, including what kernels allocate internally. glibc's mmap threshold
is pinned at 128 KiB for both implementations so that freed blocks go back to the system and the
figure is reproducible. On CUDA it is the caching allocator's peak over what was allocated before.
Times are the median of the calls after the first (decode: the first and only call on the CPU).
Needs ComfyUI's source on sys.path (COMFYUI_DIR, as the tests use).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", Path.home() / ".cache/comfyui-acestep/env/ComfyUI"))


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _measure(fn, repeats: int, time_first: bool = False):
    """Peak memory of the first call, measured from the resident set before it (freed memory
    stays in the allocator, so later calls would not show it), then the median time of
    ``repeats`` further calls (the first call pays one-off costs such as table building).
    time_first: report the first call's time instead (for calls too slow to repeat)."""
    rss_before = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    peak_mib = (_status_kib("VmHWM") - rss_before) / 1024
    if time_first:
        return first, peak_mib
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_mib


def _measure_cuda(fn, repeats: int, time_first: bool = False):
    """As _measure, on a CUDA device: peak = the allocator's peak over what was allocated before
    the first call; times between device synchronisations."""
    import torch
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    if time_first:
        return first, peak_mib
    fn()                        # kernels are tuned and clocks ramp up over the first calls
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_mib


def _fill_deterministic(module, seed: int) -> None:
    """Same values for the same key in any process on the same kind of device: one generator per
    key, seeded by key name (on the module's device, so a 3.3B model fills in seconds on a GPU)."""
    import zlib

    import torch
    with torch.no_grad():
        for key, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or "mel_transform" in key or "window" in key or key.endswith(".fb"):
                continue
            gen = torch.Generator(tensor.device).manual_seed(seed + zlib.crc32(key.encode()))
            fan_in = max(1, tensor[0].numel()) if tensor.ndim >= 2 else 1
            scale = (1.0 / fan_in) ** 0.5 if tensor.ndim >= 2 else 0.02
            value = torch.randn(tensor.shape, generator=gen, device=tensor.device) * scale
            if tensor.ndim == 1 and key.endswith("weight"):
                value += 1.0
            if key.endswith("weight_g") or key.endswith("original0"):
                value = value.abs() + 0.5
            tensor.copy_(value.to(tensor.dtype))


def _transformer_config(size: str):
    from acestep_core.config import TransformerConfig
    if size == "real":
        return TransformerConfig.released()
    return TransformerConfig(num_layers=8, num_attention_heads=8, attention_head_dim=128)


def worker_transformer(impl: str, size: str, dtype_name: str, frames: int, batch: int, repeats: int,
                       device: str = "cpu") -> dict:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    cfg = _transformer_config(size)
    if impl == "ours":
        from acestep_core.models.transformer import AceStepTransformer
        model = AceStepTransformer(cfg, device=device, dtype=dtype)
    else:
        import comfy.ops
        from comfy.ldm.ace.model import ACEStepTransformer2DModel
        model = ACEStepTransformer2DModel(
            in_channels=cfg.in_channels, num_layers=cfg.num_layers, inner_dim=cfg.inner_dim,
            attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
            mlp_ratio=cfg.mlp_ratio, out_channels=cfg.out_channels, max_position=cfg.max_position,
            rope_theta=cfg.rope_theta, speaker_embedding_dim=cfg.speaker_embedding_dim,
            text_embedding_dim=cfg.text_embedding_dim, ssl_latent_dims=list(cfg.ssl_latent_dims),
            lyric_encoder_vocab_size=cfg.lyric_encoder_vocab_size, lyric_hidden_size=cfg.lyric_hidden_size,
            patch_size=list(cfg.patch_size), max_height=cfg.max_height, max_width=32768,
            dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    _fill_deterministic(model, 1234)
    model.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 8, 16, frames, generator=gen).to(device, dtype)
    text = torch.randn(batch, 24, cfg.text_embedding_dim, generator=gen).to(device, dtype)
    lyrics = torch.randint(3, 6000, (batch, 200), generator=gen).to(device)
    speaker = torch.zeros(batch, cfg.speaker_embedding_dim, dtype=dtype, device=device)
    t = torch.full((batch,), 700.0, dtype=dtype, device=device)
    out = {}

    def step():
        with torch.no_grad():
            out["v"] = model(x, t, context=text, lyric_token_idx=lyrics, speaker_embeds=speaker)

    seconds, peak = (_measure_cuda if device != "cpu" else _measure)(step, repeats)
    v = out["v"].float()
    return {"seconds": seconds, "peak_mib": peak, "checksum": float(v.abs().mean()),
            "finite": bool(torch.isfinite(v).all())}


def worker_decode(impl: str, seconds_audio: float, repeats: int, chunk: str = "default", device: str = "cpu") -> dict:
    import torch

    from acestep_core.constants import frames_for_seconds
    frames = frames_for_seconds(seconds_audio)
    gen = torch.Generator().manual_seed(0)
    latent = (torch.randn(1, 8, 16, frames, generator=gen) * 0.5).to(device)
    if impl == "ours":
        from acestep_core.codec import AudioCodec
        from acestep_core.config import DCAEConfig, VocoderConfig
        from acestep_core.models.dcae import DCAE
        from acestep_core.models.vocoder import Vocoder
        dcae, vocoder = DCAE(DCAEConfig.released(), device=device), Vocoder(VocoderConfig.released(), device=device)
        _fill_deterministic(dcae, 99)
        _fill_deterministic(vocoder, 77)
        codec = AudioCodec(dcae.eval().requires_grad_(False), vocoder.eval().requires_grad_(False))
        window = {} if chunk == "default" else {"chunk_frames": None if chunk == "none" else int(chunk)}
        run = lambda: codec.decode(latent, **window)  # noqa: E731
    else:
        from comfy.ldm.ace.vae.music_dcae_pipeline import MusicDCAE
        pipe = MusicDCAE(source_sample_rate=44100).to(device)
        _fill_deterministic(pipe.dcae, 99)
        _fill_deterministic(pipe.vocoder, 77)
        pipe.eval().requires_grad_(False)
        run = lambda: pipe.decode(latent)  # noqa: E731
    result = {}

    def call():
        with torch.no_grad():
            result["w"] = run()

    seconds, peak = (_measure_cuda if device != "cpu" else _measure)(call, repeats, time_first=device == "cpu")
    w = result["w"]
    w = torch.stack(list(w)) if isinstance(w, (list, tuple)) else w
    return {"seconds": seconds, "peak_mib": peak, "samples": int(w.shape[-1]),
            "finite": bool(torch.isfinite(w.float()).all())}


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def run_worker(spec: dict, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(COMFYUI_DIR), env.get("PYTHONPATH", "")])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # Large blocks straight from mmap and back to the system on free: the resident set then
    # follows the live tensors, instead of whatever glibc's adaptive heap happened to keep.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label, ours, theirs, extra=""):
    if "error" in ours or "error" in theirs:
        return f"| {label} | {ours.get('error', '')} | {theirs.get('error', '')} | | | | |"
    rt = ours["seconds"] / theirs["seconds"]
    rm = ours["peak_mib"] / max(theirs["peak_mib"], 1e-9)
    return (f"| {label} | {ours['seconds']:.3f} s | {theirs['seconds']:.3f} s | {rt:.2f}x | "
            f"{ours['peak_mib']:.0f} MiB | {theirs['peak_mib']:.0f} MiB | {rm:.2f}x |{extra}")


def compare(kind: str, label: str, threads: int, **spec) -> str:
    ours = run_worker({"kind": kind, "impl": "ours", **spec}, threads)
    theirs = run_worker({"kind": kind, "impl": "comfy", **spec}, threads)
    same = ""
    if "checksum" in ours and "checksum" in theirs:
        same = f" checksum ours {ours['checksum']:.5f} / ComfyUI {theirs['checksum']:.5f}"
    row = _row(label, ours, theirs, same)
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="short latents, one repeat (smoke run)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--real", action="store_true", help="also one step at the real 3.3B config")
    ap.add_argument("--real-dtype", default="bf16", choices=["fp32", "bf16"],
                    help="dtype of the real-config step (bf16 needs ~7 GB per process, fp32 ~14 GB)")
    ap.add_argument("--real-frames", type=int, nargs="+", default=[33])
    ap.add_argument("--decode-seconds", type=float, nargs="*", default=[30.0, 240.0])
    ap.add_argument("--frames", type=int, default=323, help="latent frames for the transformer step (323 = 30 s)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                    help="mid-config transformer dtypes to compare (bf16 is very slow on CPUs without native bf16)")
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        sys.path[:0] = [str(REPO), str(COMFYUI_DIR)]
        from comfy.cli_args import args as comfy_args
        comfy_args.cpu = spec["device"] == "cpu"
        kind = spec.pop("kind")
        res = (worker_transformer if kind == "transformer" else worker_decode)(**spec)
        print(json.dumps(res))
        return 0

    import platform

    import torch
    frames = 33 if args.quick else args.frames
    repeats = 1 if args.quick else 3
    where = f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, " \
            f"threads {args.threads or torch.get_num_threads()}"
    if args.device != "cpu":
        where += f", {torch.cuda.get_device_name(0)}"
    print(f"machine: {where}; device {args.device}")
    print("\n| measurement | ours | ComfyUI | time ratio | ours peak | ComfyUI peak | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    common = dict(device=args.device)
    if args.device != "cpu":
        repeats = 10            # GPU steps take milliseconds: more of them for a stable median
    for dtype in args.dtypes:
        compare("transformer", f"transformer step, mid config (8 layers, 1024 wide), {dtype}, batch 2, {frames} frames",
                args.threads, **common, size="mid", dtype_name=dtype, frames=frames, batch=2, repeats=repeats)
    if args.real:
        for real_frames in args.real_frames:
            compare("transformer", f"transformer step, REAL config (3.3B), {args.real_dtype}, batch 2, "
                    f"{real_frames} frames", args.threads, **common, size="real", dtype_name=args.real_dtype,
                    frames=real_frames, batch=2, repeats=1 if args.device == "cpu" else repeats)
    for seconds in ([2.0] if args.quick else args.decode_seconds):
        compare("decode", f"DCAE+vocoder decode, real VAE config, {seconds:g} s audio, fp32", args.threads, **common,
                seconds_audio=seconds, repeats=1 if args.device == "cpu" else repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
