#!/usr/bin/env python3
"""ACE-Step 1.5 planner: tokens per second and peak memory, ours vs ComfyUI 0.20.1's, on identical
random weights at a real config (default 1.7B), CFG on, same prompt ids, same seed.

    flock /tmp/acestep-heavy.lock ~/.cache/comfyui-acestep/env/venv/bin/python benchmarks/bench_planner.py \\
        --tokens 20 --comfyui /work/comfy020/ComfyUI --comfyui-python /work/comfy020/venv/bin/python

Each side runs in its own subprocess, one after the other (our core in this Python; ComfyUI with
its own venv's Python), loads the same bf16 ``.safetensors`` (written once to ``--weights``, random
``random_planner_state_dict`` values, exactly representable in fp16 too) and generates ``--tokens``
audio codes for a 60 s song's prompt (cfg 2.0, temperature 0.85, top-p 0.9, seed 0: the node
defaults). ComfyUI runs as its CLIP loader sets it up on the CPU: the planner held in fp16
(``model_management.text_encoder_dtype``), ``comfy.ops.manual_cast`` layers computing in float32,
its ``generate_audio_codes`` loop. Ours keeps the file's bf16 and runs once per ``--products`` mode
(default both: ``float32``, ComfyUI's arithmetic and default on the CPU, and ``weight_dtype``, bf16
products), each in its own subprocess. ``--comfyui-result FILE`` keeps ComfyUI's run (the slow
side) in FILE and reads it back on later runs of the same weights, tokens and prompt.

Reported per side: load time, prefill (the first token), decode tokens/s, peak RSS while
generating (VmHWM reset after loading, so the loader's transient copies are not counted; the
loader's own peak is shown apart) and the codes; the summary says whether both drew the same
codes. A whole 60 s song is 300 codes; at ~8 s per token ComfyUI would take 40 minutes here, so
measure a prefix (``--tokens``): tokens/s is per decode step and does not change along the song
beyond the growing attention (a few % at 300 tokens for a ~150-token prompt).

``--device cuda`` runs both sides on the GPU (ComfyUI's planner in the dtype its loader picks
there, ours in the file's bf16, with and without its CUDA graph; peak = allocated GPU memory).
Not yet run: no GPU has been lent to this project so far.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTION = "Energetic synth-pop with bright female vocals, punchy drums and a catchy hook"
LYRICS = ("[verse]\nNeon lights are calling me tonight\nEvery heartbeat running to the light\n\n"
          "[chorus]\nWe run, we run, into the sun\nNothing can stop us now")
METADATA = dict(bpm=124, duration=60, keyscale="F# minor", timesignature="4")
SETTINGS = dict(seed=0, cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0)


def _rss_mib(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak(device="cpu"):
    if device == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats()
        return
    with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
        f.write("5")


def _peak_mib(device="cpu"):
    """Peak while generating: resident set on the CPU, allocated GPU memory on CUDA."""
    if device == "cuda":
        import torch
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return _rss_mib("VmHWM")


def write_weights(path: Path, size: str):
    import torch
    from safetensors.torch import save_file

    from acestep_core.ace15.planner import PLANNER_CONFIGS, random_planner_state_dict
    sd = random_planner_state_dict(PLANNER_CONFIGS[size], seed=0, dtype=torch.bfloat16, embed_std=0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path) + ".part")
    os.replace(str(path) + ".part", path)


def prompt_ids(comfyui_dir):
    from acestep_core.ace15.planner_grammar import PlannerTokenizer, codes_prompts, comfyui_tokenizer_dir
    tokenizer = PlannerTokenizer.load(comfyui_tokenizer_dir(comfyui_dir))
    cond, uncond = codes_prompts(CAPTION, LYRICS, METADATA)
    return tokenizer.encode(cond), tokenizer.encode(uncond)


def worker_ours(args, ids):
    import torch

    from acestep_core.ace15.planner import load_planner
    start = time.perf_counter()
    planner = load_planner(args.weights, device=args.device, products=args.products)
    load_s = time.perf_counter() - start
    load_peak = _rss_mib("VmHWM")
    _reset_peak(args.device)
    stamps = []
    start = time.perf_counter()
    # the progress callback follows the token's .item(): each stamp is after the device finished it
    codes = planner.generate_codes(ids[0], ids[1], args.tokens, progress=lambda d, t: stamps.append(time.perf_counter()),
                                   cuda_graph=args.cuda_graph == "on", **SETTINGS)
    weights_kept = {str(p.dtype) for p in planner.lm.parameters()}
    return dict(codes=codes, load_s=load_s, load_peak_mib=load_peak, stamps=[s - start for s in stamps],
                peak_mib=_peak_mib(args.device), dtype=f"{planner.weight_dtype} ({args.products} products)",
                threads=torch.get_num_threads(), weights_after=sorted(weights_kept))


def worker_comfyui(args, ids):
    sys.path.append(args.comfyui)
    import torch
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = args.device == "cpu"
    import comfy.model_management as mm
    import comfy.text_encoders.ace15 as ace15
    import comfy.utils
    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = mm.text_encoder_dtype(device)       # fp16 on the CPU, as the CLIP loader picks (bf16 on most GPUs)
    size_class = ace15.Qwen3_2B_ACE15 if args.size != "4B" else ace15.Qwen3_4B_ACE15
    model = size_class(device=args.device, dtype=dtype)
    sd = comfy.utils.load_torch_file(args.weights, device=device)
    missing, unexpected = model.transformer.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    del sd
    model.execution_device = device
    load_s = time.perf_counter() - start
    load_peak = _rss_mib("VmHWM")
    _reset_peak(args.device)
    stamps = []
    original = model.transformer.logits

    def logits(x):   # one call per generated token: time stamp after each step's logits
        out = original(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return out
    model.transformer.logits = logits
    positive = [[(t, 1.0) for t in ids[0]]]
    negative = [[(t, 1.0) for t in ids[1]]]
    start = time.perf_counter()
    codes = ace15.generate_audio_codes(model, positive, negative, min_tokens=args.tokens, max_tokens=args.tokens,
                                       **SETTINGS)
    return dict(codes=codes, load_s=load_s, load_peak_mib=load_peak, stamps=[s - start for s in stamps],
                peak_mib=_peak_mib(args.device), dtype=str(dtype), threads=torch.get_num_threads())


def summarize(name, result, show=True):
    stamps = result["stamps"]
    prefill = stamps[0]
    decode = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    total = stamps[-1]
    if show:
        print(f"{name:22s} weights {result['dtype']:32s} load {result['load_s']:6.1f} s (peak {result['load_peak_mib']:7.0f} MiB)"
              f" | first token {prefill:6.2f} s | decode {decode:6.3f} s/token = {1 / decode:7.2f} tokens/s"
              f" | {len(result['codes'])} tokens in {total:6.1f} s = {len(result['codes']) / total:6.2f} tokens/s"
              f" | peak while generating {result['peak_mib']:7.0f} MiB", flush=True)
    return dict(decode_tps=1 / decode, total_tps=len(result["codes"]) / total, peak=result["peak_mib"])


def _load_average():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return ["?"] * 3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=20, help="audio codes to generate per side (a 60 s song is 300)")
    parser.add_argument("--size", default="1.7B", choices=["1.7B", "4B"])
    parser.add_argument("--weights", default=None, help="random bf16 planner file (written if missing)")
    parser.add_argument("--comfyui", default="/work/comfy020/ComfyUI", help="ComfyUI 0.20.1 source tree")
    parser.add_argument("--comfyui-python", default="/work/comfy020/venv/bin/python")
    parser.add_argument("--products", default="float32,weight_dtype",
                        help="our planner's matrix-product modes to run, comma-separated (float32, weight_dtype, auto)")
    parser.add_argument("--comfyui-result", default=None,
                        help="JSON file of ComfyUI's run: read if it exists (same weights, tokens and prompt), "
                             "else ComfyUI runs and its result is written there")
    parser.add_argument("--only", choices=["ours", "comfyui"], default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: both sides on the GPU (ComfyUI in the dtype its loader picks there); "
                             "ours runs with and without its CUDA graph")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="off", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "comfyui"], help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    args.weights = args.weights or f"/tmp/acestep_bench_planner_{args.size}.safetensors"

    if args.worker:
        ids = json.loads(Path(args.ids).read_text())
        result = (worker_ours if args.worker == "ours" else worker_comfyui)(args, ids)
        Path(args.out).write_text(json.dumps(result))
        return

    if not Path(args.weights).is_file():
        print(f"writing random {args.size} planner weights to {args.weights} ...", flush=True)
        write_weights(Path(args.weights), args.size)
    ids = prompt_ids(args.comfyui)
    ids_file = Path(args.weights).with_suffix(".ids.json")
    ids_file.write_text(json.dumps(ids))
    print(f"{args.size} planner, prompt {len(ids[0])} / {len(ids[1])} tokens (cond / uncond), CFG on, "
          f"{args.tokens} codes, settings {SETTINGS}; load average {' '.join(_load_average())}", flush=True)
    runs = []
    if args.only != "comfyui":
        graphs = ["on", "off"] if args.device == "cuda" else ["off"]
        runs += [(f"ours {p}" + (f" graph {g}" if args.device == "cuda" else ""), "ours", sys.executable, p, g)
                 for p in args.products.split(",") for g in graphs]
    if args.only != "ours":
        runs.append(("comfyui", "comfyui", args.comfyui_python, None, "off"))
    results = {}
    for name, side, python, products, graph in runs:
        saved = Path(args.comfyui_result) if side == "comfyui" and args.comfyui_result else None
        run_key = json.loads(json.dumps(dict(weights=args.weights, tokens=args.tokens, size=args.size, ids=ids,
                                             settings=SETTINGS, **({"device": "cuda"} if args.device == "cuda" else {}))))   # as the file holds it (lists, not tuples)
        if saved is not None and saved.is_file():
            record = json.loads(saved.read_text())
            if record.get("run") != run_key:
                raise SystemExit(f"{saved} holds a ComfyUI run of other weights, tokens or prompt; delete it to rerun")
            results[name] = record["result"]
            print(f"comfyui: read from {saved} (run at {record['when']}, load average then "
                  f"{' '.join(record['load_before'])} before, {' '.join(record['load_after'])} after)")
        else:
            out = Path(args.weights).with_suffix(f".{side}.json")
            cmd = [python, __file__, "--worker", side, "--ids", str(ids_file), "--out", str(out), "--weights",
                   args.weights, "--tokens", str(args.tokens), "--size", args.size, "--comfyui", args.comfyui,
                   "--products", products or "auto", "--device", args.device, "--cuda-graph", graph]
            before = _load_average()
            subprocess.run(cmd, check=True, cwd=REPO)
            results[name] = json.loads(out.read_text())
            out.unlink()
            after = _load_average()
            print(f"{name}: load average {' '.join(before)} before, {' '.join(after)} after", flush=True)
            if saved is not None:
                saved.write_text(json.dumps(dict(run=run_key, result=results[name], load_before=before,
                                                 load_after=after, when=time.strftime("%Y-%m-%d %H:%M:%S %Z"))))
        summarize(name, results[name])
    ids_file.unlink()
    if "comfyui" in results:
        theirs = summarize("comfyui", results["comfyui"], False)
        for name, result in results.items():
            if name == "comfyui":
                continue
            ours = summarize(name, result, False)
            same = result["codes"] == results["comfyui"]["codes"]
            agree = next((i for i, (a, b) in enumerate(zip(result["codes"], results["comfyui"]["codes"])) if a != b),
                         len(result["codes"]))
            equal = sum(a == b for a, b in zip(result["codes"], results["comfyui"]["codes"]))
            print(f"{name}: speed-up decode {ours['decode_tps'] / theirs['decode_tps']:.2f}x, end to end "
                  f"{ours['total_tps'] / theirs['total_tps']:.2f}x; peak memory while generating "
                  f"{ours['peak'] / theirs['peak']:.2f}x ComfyUI's; same codes: {same}"
                  + ("" if same else f" (first {agree} identical, {equal} of {len(result['codes'])} equal)")
                  + f"; our weights after generating: {', '.join(result['weights_after'])}")
    for name, result in results.items():
        print(f"codes {name:20s}:", result["codes"])


if __name__ == "__main__":
    main()
