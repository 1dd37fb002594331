"""Command line: ``python -m acestep_core {generate,make-tiny,info} ...``"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _tqdm_progress(desc: str):
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
    return update


def cmd_generate(args) -> int:
    import torch

    from .loading import load_checkpoint
    from .pipeline import generate, write_wav

    lyrics = ""
    if args.lyrics:
        path = Path(args.lyrics)
        lyrics = path.read_text(encoding="utf-8") if path.is_file() else args.lyrics
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    models = load_checkpoint(args.checkpoint, dtype=args.dtype)
    print(f"loaded {args.checkpoint} ({models.source.layout}) in {time.time() - t0:.1f} s", file=sys.stderr)
    waveform = generate(models, args.tags, lyrics, seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg,
                        seed=args.seed, shift=args.shift, schedule=args.schedule,
                        on_step=_tqdm_progress("sampling"), on_decode=_tqdm_progress("decoding"))
    out = write_wav(args.out, waveform)
    print(f"wrote {out} ({waveform.shape[-1] / 44100:.2f} s, 44100 Hz stereo)", file=sys.stderr)
    return 0


def cmd_make_tiny(args) -> int:
    from .testing import write_tiny_checkpoint

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"{out} exists; keeping it (use --force to overwrite)", file=sys.stderr)
        return 0
    path = write_tiny_checkpoint(out, layout=args.layout, seed=args.seed)
    print(f"wrote tiny ACE-Step checkpoint with RANDOM weights ({args.layout} layout): {path}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .loading import infer_config
    from .checkpoint import open_checkpoint

    src = open_checkpoint(args.checkpoint)
    print(f"{src.path}: {src.layout} layout")
    for name, comp in src.components.items():
        n = sum(int(__import__('math').prod(s)) for s in comp.shapes.values())
        print(f"  {name:13s} {len(comp.shapes):5d} tensors {n / 1e6:9.2f} M values  {comp.file.name}")
        print(f"    {infer_config(comp)}")
    return 0


def main(argv=None) -> int:
    from .checkpoint import CheckpointError

    parser = argparse.ArgumentParser(prog="python -m acestep_core", description="ACE-Step v1 standalone tools")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text2music to a WAV file")
    gen.add_argument("--checkpoint", required=True, help="ace_step_v1_3.5b.safetensors or the original folder")
    gen.add_argument("--tags", default="", help="comma-separated style tags, e.g. 'pop, piano, female vocals'")
    gen.add_argument("--lyrics", default="", help="a lyrics text file (or the lyrics themselves)")
    gen.add_argument("--seconds", type=float, default=30.0)
    gen.add_argument("--steps", type=int, default=27)
    gen.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--shift", type=float, default=3.0, help="flow time shift")
    gen.add_argument("--schedule", choices=["original", "simple"], default="original",
                     help="'original': the original app's sigmas (incl. its double shift); 'simple': ComfyUI's")
    gen.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 for the transformer and text encoder")
    gen.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    gen.add_argument("--out", default="song.wav")
    gen.set_defaults(func=cmd_generate)

    tiny = sub.add_parser("make-tiny", help="write a tiny checkpoint with random weights (tests, demo)")
    tiny.add_argument("--out", required=True, help="a .safetensors file (comfyui layout) or a folder (folders layout)")
    tiny.add_argument("--layout", choices=["comfyui", "folders"], default="comfyui")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--force", action="store_true")
    tiny.set_defaults(func=cmd_make_tiny)

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint")
    info.set_defaults(func=cmd_info)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
