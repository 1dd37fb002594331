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

    from .ace15.loading import detect_generation

    lyrics = ""
    if args.lyrics:
        path = Path(args.lyrics)
        lyrics = path.read_text(encoding="utf-8") if path.is_file() else args.lyrics
    if args.threads:
        torch.set_num_threads(args.threads)
    # One entry point for both generations: what the checkpoint is comes from its keys.
    generations = {detect_generation(p) for p in args.checkpoint}
    if generations == {"1.5"}:
        return _generate_ace15(args, lyrics)
    if len(args.checkpoint) > 1 or generations != {"v1"}:
        from .ace15.loading import resolve_sources
        resolve_sources(args.checkpoint)     # raises the message naming each file and what it is
    return _generate_v1(args, lyrics)


def _generate_ace15(args, lyrics: str) -> int:
    from .ace15.loading import load_ace15
    from .ace15.pipeline import TURBO_CFG, TURBO_SHIFT, TURBO_STEPS, generate
    from .pipeline import write_wav

    t0 = time.time()
    models = load_ace15(args.checkpoint, dtype=args.dtype)
    print(f"loaded ACE-Step 1.5 from {', '.join(args.checkpoint)} in {time.time() - t0:.1f} s", file=sys.stderr)
    waveform = generate(models, args.tags, lyrics, seconds=args.seconds,
                        steps=args.steps if args.steps is not None else TURBO_STEPS,
                        cfg_scale=args.cfg if args.cfg is not None else TURBO_CFG,
                        shift=args.shift if args.shift is not None else TURBO_SHIFT, seed=args.seed,
                        language=args.language, bpm=args.bpm, timesignature=args.timesignature, keyscale=args.keyscale,
                        on_step=_tqdm_progress("sampling"), on_decode=_tqdm_progress("decoding"))
    out = write_wav(args.out, waveform, sample_rate=48000)
    print(f"wrote {out} ({waveform.shape[-1] / 48000:.2f} s, 48000 Hz stereo)", file=sys.stderr)
    return 0


def _generate_v1(args, lyrics: str) -> int:
    from .loading import load_checkpoint
    from .pipeline import generate, write_wav

    args.checkpoint = args.checkpoint[0]
    args.steps = 27 if args.steps is None else args.steps
    args.cfg = 5.0 if args.cfg is None else args.cfg
    args.shift = 3.0 if args.shift is None else args.shift
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
    # A 1.5 all-in-one file is written into the folder --out (e.g. ComfyUI's models/checkpoints,
    # which exists): what is kept when present is that file, not the folder.
    aio_file = out / "ace_step_1.5_tiny_aio.safetensors"
    written = aio_file if args.generation == "1.5" and args.layout in ("aio", "comfyui") else out
    if written.exists() and not args.force:
        print(f"{written} exists; keeping it (use --force to overwrite)", file=sys.stderr)
        return 0
    if args.generation == "1.5":
        from .ace15.tiny import write_tiny_ace15

        layout = {"comfyui": "aio", "folders": "official"}.get(args.layout, args.layout)
        paths = write_tiny_ace15(out, layout, seed=args.seed, planner=args.planner)
        print(f"wrote tiny ACE-Step 1.5 checkpoint with RANDOM weights ({layout} layout): "
              f"{', '.join(str(p) for p in paths.values())}", file=sys.stderr)
        return 0
    path = write_tiny_checkpoint(out, layout=args.layout, seed=args.seed)
    print(f"wrote tiny ACE-Step checkpoint with RANDOM weights ({args.layout} layout): {path}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .loading import infer_config
    from .checkpoint import open_checkpoint

    from .ace15.loading import detect_generation, inspect_path

    if detect_generation(args.checkpoint) == "1.5":
        inventory = inspect_path(args.checkpoint)
        print(f"{inventory.path}: ACE-Step 1.5")
        for part in inventory.parts:
            where = str(part.source.file) if part.source is not None else ""
            print(f"  {part.kind:13s} {part.description}  {where}")
        return 0
    src = open_checkpoint(args.checkpoint)
    print(f"{src.path}: {src.layout} layout")
    for name, comp in src.components.items():
        n = sum(int(__import__('math').prod(s)) for s in comp.shapes.values())
        print(f"  {name:13s} {len(comp.shapes):5d} tensors {n / 1e6:9.2f} M values  {comp.file.name}")
        print(f"    {infer_config(comp)}")
    return 0


def main(argv=None) -> int:
    from .checkpoint import CheckpointError

    parser = argparse.ArgumentParser(prog="python -m acestep_core", description="ACE-Step v1 / 1.5 standalone tools")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text2music to a WAV file")
    gen.add_argument("--checkpoint", required=True, nargs="+",
                     help="ACE-Step v1: ace_step_v1_3.5b.safetensors or the original folder. ACE-Step 1.5 / XL: the "
                          "all-in-one file, the split files (diffusion model, qwen_0.6b_ace15 text encoder, VAE), or "
                          "the official folder(s); what each is comes from its weights")
    gen.add_argument("--tags", default="", help="comma-separated style tags, e.g. 'pop, piano, female vocals'")
    gen.add_argument("--lyrics", default="", help="a lyrics text file (or the lyrics themselves)")
    gen.add_argument("--seconds", type=float, default=30.0)
    gen.add_argument("--steps", type=int, default=None, help="default: 27 (v1), 8 (1.5 turbo)")
    gen.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale; default 5 (v1), 1 (1.5)")
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--shift", type=float, default=None, help="flow time shift (default 3)")
    gen.add_argument("--language", default="en", help="1.5: the lyrics' language code")
    gen.add_argument("--bpm", type=int, default=None, help="1.5: tempo for the caption's metadata")
    gen.add_argument("--timesignature", default=None, help="1.5: e.g. 4 or 3/4")
    gen.add_argument("--keyscale", default=None, help="1.5: e.g. 'E minor'")
    gen.add_argument("--schedule", choices=["original", "simple"], default="original",
                     help="v1: 'original': the original app's sigmas (incl. its double shift); 'simple': ComfyUI's "
                          "(1.5 always uses ComfyUI's 'simple')")
    gen.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 for the transformer and text encoder")
    gen.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    gen.add_argument("--out", default="song.wav")
    gen.set_defaults(func=cmd_generate)

    tiny = sub.add_parser("make-tiny", help="write a tiny checkpoint with random weights (tests, demo)")
    tiny.add_argument("--out", required=True, help="a .safetensors file (comfyui layout) or a folder (folders layout)")
    tiny.add_argument("--layout", choices=["comfyui", "folders", "aio", "split", "official"], default="comfyui",
                      help="v1: comfyui / folders; 1.5 (--generation 1.5, --out is a folder): aio / split / official")
    tiny.add_argument("--generation", choices=["v1", "1.5"], default="v1")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--planner", action="store_true",
                      help="1.5 aio / split: add a tiny 5 Hz planner (for generate_audio_codes)")
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
