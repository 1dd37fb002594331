#!/usr/bin/env python3
"""Regenerate tests/data/ace15_tasks_golden.json (+ .safetensors): what the official ACE-Step 1.5 app gives its DiT
for each task (text2music, cover, repaint, extend, lego, extract, complete), recorded by running
the app's own code on tiny, patterned inputs.

    ~/.cache/comfyui-acestep/env/venv/bin/python scripts/make_ace15_tasks_golden.py

Reference used (both from bare git mirrors, read with ``git show``; nothing is written into this
repository but the JSON):
  * ace-step/ACE-Step-1.5 f30aee4 (``--official``): ``acestep/handler.py`` + ``acestep/constants.py``.
    ``AceStepHandler.generate_music`` runs for real (instruction from ``generate_instruction``,
    ``prepare_batch_data``, ``determine_task_type``, ``prepare_padding_info``, ``service_generate``,
    ``_prepare_batch``) and is stopped at ``preprocess_batch``, where the batch it built is recorded.
  * upstream 783bb36 (``--upstream``, in the erichchampion/ace-step-1.5 fork):
    ``acestep/core/generation/handler/conditioning_masks.py`` ``_build_chunk_masks_and_src_latents``,
    run on the same inputs (its lego keeps the source inside the region).
Heavy imports (transformers, diffusers, soundfile, loguru, the app's downloader / GPU modules) are
stubbed: none of them is used on this path. The VAE, the text tokenizer and the code detokenizer are
stand-ins that make each latent frame say where it came from:

  frame code k   ->  latent frame  k + arange(64) / 128       (exact in float32)
  source frame i:  code i + 1          silence-latent frame j: code -(j + 1)
  VAE of zero samples (extend padding): code 5000     decoded audio-code frame m: code 10000 + m

so every recorded tensor is stored as its per-frame codes (checked to reproduce the tensor exactly),
run-length encoded; the file is about 20 kilobytes.

tests/data/ace15_tasks_golden.safetensors (14 KB): upstream 783bb36's repaint-while-sampling helpers
(``_repaint_step_injection`` / ``_repaint_boundary_blend`` of the turbo and base model files, which
agree with the handler's ``repaint_step_injection.py``) on small random tensors; the JSON also gets
``_resolve_repaint_config`` (generate_music.py) for each mode and a few strengths.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.abc
import importlib.machinery
import json
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "ace15_tasks_golden.json"
OUT_TENSORS = REPO / "tests" / "data" / "ace15_tasks_golden.safetensors"
OFFICIAL = "/work/.mirror/ace-step+ACE-Step-1.5/repo"
UPSTREAM = "/work/.mirror/erichchampion+ace-step-1.5/repo"
UPSTREAM_COMMIT = "783bb36ec9928564b6f3dbb22fe72daa0fbaa0f2"
SILENCE_FRAMES = 160
VAE_OF_ZEROS, HINT_BASE = 5000, 10000
CAPTION, LYRICS, LANGUAGE = "dreamy synth pop, female vocals", "[verse]\nla la la", "en"
META = dict(bpm=120, key_scale="C major", time_signature="4")

# name: (task_type, source frames or None, arguments of generate_music, track, track classes,
#        number of audio codes or 0, lego_keeps_source for ours)
CASES = {
    "text2music_short": ("text2music", None, dict(audio_duration=3.0), None, None, 0),
    "text2music_long": ("text2music", None, dict(audio_duration=6.0), None, None, 0),
    "text2music_codes": ("text2music", None, dict(audio_duration=4.0), None, None, 20),
    "cover": ("cover", 130, dict(audio_cover_strength=0.5), None, None, 0),
    "cover_short": ("cover", 100, {}, None, None, 0),
    "cover_codes": ("cover", None, {}, None, None, 30),
    "repaint": ("repaint", 130, dict(repainting_start=1.0, repainting_end=2.5), None, None, 0),
    "repaint_short": ("repaint", 100, dict(repainting_start=0.5, repainting_end=3.0), None, None, 0),
    "repaint_unaligned": ("repaint", 130, dict(repainting_start=1.03, repainting_end=2.99), None, None, 0),
    "repaint_to_end": ("repaint", 130, dict(repainting_start=4.0, repainting_end=-1), None, None, 0),
    "extend_both": ("repaint", 100, dict(repainting_start=-0.8, repainting_end=5.2), None, None, 0),
    "extend_right": ("repaint", 100, dict(repainting_start=3.0, repainting_end=6.0), None, None, 0),
    "extend_left_to_end": ("repaint", 100, dict(repainting_start=-1.0, repainting_end=-1), None, None, 0),
    "lego_whole": ("lego", 130, {}, "drums", None, 0),
    "lego_region": ("lego", 130, dict(repainting_start=1.0, repainting_end=2.0), "backing_vocals", None, 0),
    "lego_default_instruction": ("lego", 130, {}, None, None, 0),
    "extract": ("extract", 130, {}, "vocals", None, 0),
    "complete": ("complete", 100, {}, None, ["drums", "bass"], 0),
    # With audio codes (the planner's, when "thinking" is on at f30aee4) the app ignores the source
    # audio and covers the codes, whatever the task: recorded to show it; we refuse codes here.
    "lego_with_codes": ("lego", 130, {}, "drums", None, 26),
}


def pattern(codes) -> torch.Tensor:
    """[len(codes), 64] time-major frames."""
    codes = torch.as_tensor(codes, dtype=torch.float32)
    return codes[:, None] + torch.arange(64, dtype=torch.float32)[None, :] / 128


def codes_of(frames: torch.Tensor) -> list[int]:
    frames = frames.float()
    codes = frames[:, 0].round().long()
    assert torch.equal(frames, pattern(codes)), "a latent frame is not one of the patterned frames"
    return codes.tolist()


def rle(values: list[int]) -> list[list[int]]:
    """Runs ``[first, step, count]`` with step -1, 0 or 1."""
    runs = []
    for v in values:
        if runs:
            first, step, count = runs[-1]
            if count == 1 and v - first in (-1, 0, 1):
                runs[-1] = [first, v - first, 2]
                continue
            if first + step * count == v:
                runs[-1][2] += 1
                continue
        runs.append([v, 0, 1])
    return runs


class _Anything:
    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    STUBS = ("soundfile", "loguru", "transformers", "diffusers", "acestep.model_downloader",
             "acestep.dit_alignment_score", "acestep.gpu_config")

    def find_spec(self, name, path=None, target=None):
        if any(name == s or name.startswith(s + ".") for s in self.STUBS):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: _Anything()
        return module

    def exec_module(self, module):
        pass


class _Stop(BaseException):
    """Raised at preprocess_batch; a BaseException so generate_music's ``except Exception`` lets it through."""

    def __init__(self, batch):
        self.batch = batch


def git_show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_reference(official: str, upstream: str, tmp: Path):
    for path in ("acestep/__init__.py", "acestep/handler.py", "acestep/constants.py"):
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text(git_show(official, "HEAD", path))
    (tmp / "upstream_conditioning_masks.py").write_text(
        git_show(upstream, UPSTREAM_COMMIT, "acestep/core/generation/handler/conditioning_masks.py"))
    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, str(tmp))
    import acestep.handler as handler
    import upstream_conditioning_masks as masks
    official_commit = subprocess.run(["git", "--git-dir", official, "rev-parse", "HEAD"], check=True,
                                     capture_output=True, text=True).stdout.strip()
    return handler, masks, official_commit


class RecordingTokenizer:
    pad_token_id = 0

    def __init__(self):
        self.texts = []

    def __call__(self, text, **kwargs):
        self.texts.append(text)
        ids = torch.arange(1, 4)[None]
        return types.SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))


def make_handler(handler_module, silence: torch.Tensor):
    h = handler_module.AceStepHandler.__new__(handler_module.AceStepHandler)
    h.device, h.dtype, h.sample_rate, h.batch_size = "cpu", torch.float32, 48000, 1
    h.offload_to_cpu, h.offload_dit_to_cpu, h.current_offload_cost = False, False, 0.0
    h.config = types.SimpleNamespace(is_turbo=False)
    h.silence_latent = silence                        # [1, S, 64] time-major, as the app keeps it
    h.vae = h.text_encoder = object()
    h.text_tokenizer = RecordingTokenizer()

    class Quantizer:
        num_quantizers = 1

        def get_output_from_indices(self, indices):
            return indices.float()                    # [1, n, 1]

    def detokenize(quantized):
        return pattern(HINT_BASE + torch.arange(quantized.shape[1] * 5))[None]

    h.model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(quantizer=Quantizer()), detokenizer=detokenize)

    def encode(audio):                                # the VAE: [2, S] -> [S // 1920, 64]
        samples = audio[0, ::1920][: audio.shape[-1] // 1920]
        codes = [VAE_OF_ZEROS if v == 0 else int(round(float(v) * 1024)) for v in samples]
        return pattern(codes)

    h._encode_audio_to_latents = encode
    h.process_src_audio = lambda audio: audio
    h._start_diffusion_progress_estimator = lambda **kwargs: (None, None)
    recorded = {}
    real_prepare_batch = h._prepare_batch

    def prepare_batch(**kwargs):
        recorded["prepare_batch_args"] = kwargs
        return real_prepare_batch(**kwargs)

    def preprocess_batch(batch):
        raise _Stop(batch)

    h._prepare_batch = prepare_batch
    h.preprocess_batch = preprocess_batch
    return h, recorded


def source_wav(frames: int) -> torch.Tensor:
    values = (torch.arange(frames, dtype=torch.float32) + 1) / 1024
    return values.repeat_interleave(1920)[None].repeat(2, 1)


def run_case(handler_module, masks_module, silence, name, spec):
    task, source_frames, extra, track, classes, n_codes = spec
    h, recorded = make_handler(handler_module, silence)
    instruction = h.generate_instruction(task, track, classes)
    kwargs = dict(captions=CAPTION, lyrics=LYRICS, vocal_language=LANGUAGE, batch_size=1, use_random_seed=False,
                  seed=0, instruction=instruction, task_type=task, **META)
    kwargs.update(extra)
    if source_frames:
        kwargs["src_audio"] = source_wav(source_frames)
    if n_codes:
        kwargs["audio_code_string"] = "".join(f"<|audio_code_{i * 7}|>" for i in range(n_codes))
    try:
        result = h.generate_music(**kwargs)
        raise RuntimeError(f"{name}: generate_music did not reach preprocess_batch: {result.get('error')}")
    except _Stop as stop:
        batch = stop.batch
    masks = batch["chunk_masks"][0]
    assert masks.dtype == torch.bool
    args = recorded["prepare_batch_args"]
    frames = batch["src_latents"].shape[1]
    # The upstream builder on the same inputs (its lego keeps the source in the region).
    up_masks, _, up_covers, up_src, _ = masks_module.ConditioningMaskMixin._build_chunk_masks_and_src_latents(
        types.SimpleNamespace(device="cpu", sample_rate=48000), 1, frames, args["instructions"],
        h._normalize_audio_code_hints(args["audio_code_hints"], 1), batch["target_wavs"], batch["target_latents"],
        args["repainting_start"], args["repainting_end"], silence[0, :frames, :])
    texts = h.text_tokenizer.texts
    record = {
        "task_type": task, "source_frames": source_frames, "generate_music": {k: v for k, v in extra.items()},
        "track": track, "track_classes": classes, "audio_codes": n_codes,
        "instruction_given": instruction,
        "frames": frames,
        "src_latents": rle(codes_of(batch["src_latents"][0])),
        "target_latents": rle(codes_of(batch["target_latents"][0])),
        "chunk_mask": rle([int(v) for v in masks]),
        "latent_mask": rle([int(v) for v in batch["latent_masks"][0]]),
        "is_covers": bool(batch["is_covers"][0]),
        "lm_hints": None if batch["precomputed_lm_hints_25Hz"] is None
        else rle(codes_of(batch["precomputed_lm_hints_25Hz"][0])),
        "caption_prompt": texts[0], "lyrics_prompt": texts[1],
        "non_cover_caption_prompt": texts[2] if len(texts) > 2 else None,
        "upstream_src_latents": rle(codes_of(up_src[0])),
        "upstream_chunk_mask": rle([int(v) for v in up_masks[0]]),
        "upstream_is_covers": bool(up_covers[0]),
    }
    return record


def module_from(source: str, name: str, namespace: dict):
    """``source`` imported as a module from a temporary file (outside the repository), with
    ``namespace`` (e.g. ``torch``) in its globals before it runs."""
    import importlib.util
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="ace15_reference_"))
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"ace15_reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(namespace)
    spec.loader.exec_module(module)
    return module


def function_from(source: str, name: str, namespace: dict):
    """One top-level function of a source file, imported alone (its module imports heavy packages)."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return getattr(module_from(ast.unparse(ast.Module(body=[node], type_ignores=[])), name, namespace), name)


def repaint_sampling(upstream: str):
    """Upstream 783bb36's repaint-while-sampling helpers on small random tensors ([B, T, C] with
    C = 4: they do not depend on the width). The functions the turbo model file calls and the
    handler module's copies must agree; both are recorded."""
    model_file = git_show(upstream, UPSTREAM_COMMIT, "acestep/models/turbo/modeling_acestep_v15_turbo.py")
    base_file = git_show(upstream, UPSTREAM_COMMIT, "acestep/models/base/modeling_acestep_v15_base.py")
    helpers = git_show(upstream, UPSTREAM_COMMIT, "acestep/core/generation/handler/repaint_step_injection.py")
    music = git_show(upstream, UPSTREAM_COMMIT, "acestep/core/generation/handler/generate_music.py")
    ns = {"torch": torch}
    inject = function_from(model_file, "_repaint_step_injection", ns)
    blend = function_from(model_file, "_repaint_boundary_blend", ns)
    base_inject = function_from(base_file, "_repaint_step_injection", {"torch": torch})
    base_blend = function_from(base_file, "_repaint_boundary_blend", {"torch": torch})
    handler_ns = vars(module_from(helpers, "repaint_step_injection", {"torch": torch}))
    resolve = function_from(music, "_resolve_repaint_config", {})

    gen = torch.Generator().manual_seed(0)
    x, clean, noise = (torch.randn(3, 40, 4, generator=gen) for _ in range(3))
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, 10:22] = True
    mask[1, 0:5] = True
    mask[2] = True
    tensors = {"x": x, "clean": clean, "noise": noise, "mask": mask.to(torch.uint8)}
    tensors["injected_t0.3"] = inject(x, clean, mask, 0.3, noise)
    assert torch.equal(tensors["injected_t0.3"], base_inject(x, clean, mask, 0.3, noise))
    assert torch.equal(tensors["injected_t0.3"],
                       handler_ns["apply_repaint_step_injection"](x, clean, mask, 0.3, noise))
    for frames in (0, 6, 25):
        tensors[f"blend_{frames}"] = blend(x, clean, mask, frames)
        assert torch.equal(tensors[f"blend_{frames}"], base_blend(x, clean, mask, frames))
        assert torch.equal(tensors[f"blend_{frames}"],
                           handler_ns["apply_repaint_boundary_blend"](x, clean, mask, frames))
    settings = {f"{mode} {strength}": list(resolve(mode, strength)) for mode in REPAINT_MODES_UPSTREAM
                for strength in (0.0, 0.3, 0.5, 1.0, 1.7)}
    return tensors, settings


REPAINT_MODES_UPSTREAM = ("conservative", "balanced", "aggressive")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", default=OFFICIAL, help="bare git of ace-step/ACE-Step-1.5")
    parser.add_argument("--upstream", default=UPSTREAM, help=f"bare git holding upstream commit {UPSTREAM_COMMIT[:7]}")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--out-tensors", default=str(OUT_TENSORS))
    args = parser.parse_args()
    silence = pattern(-(torch.arange(SILENCE_FRAMES) + 1))[None]
    with tempfile.TemporaryDirectory() as tmp:
        handler_module, masks_module, official_commit = load_reference(args.official, args.upstream, Path(tmp))
        with contextlib.redirect_stdout(sys.stderr):
            cases = {name: run_case(handler_module, masks_module, silence, name, spec) for name, spec in CASES.items()}
    tensors, settings = repaint_sampling(args.upstream)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out_tensors,
              metadata={"source": f"ACE-Step-1.5 {UPSTREAM_COMMIT}: _repaint_step_injection / _repaint_boundary_blend"})
    golden = {
        "about": "scripts/make_ace15_tasks_golden.py: the official ACE-Step 1.5 app's DiT inputs per task, per-frame "
                 "codes (source frame i: i+1, silence frame j: -(j+1), VAE of zeros: 5000, code hint m: 10000+m), "
                 "run-length encoded as [first, step, count]",
        "official_commit": official_commit, "upstream_commit": UPSTREAM_COMMIT,
        "silence_frames": SILENCE_FRAMES, "caption": CAPTION, "lyrics": LYRICS, "language": LANGUAGE, "meta": META,
        "cases": cases,
        "repaint_settings": settings,
    }
    # One line per case field: small and still readable in a diff.
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s+(-?\d+),\s+(-?\d+),\s+(-?\d+)\s+\]", r"[\1, \2, \3]", text)
    text = re.sub(r"\[\s+((?:\[-?\d+, -?\d+, -?\d+\],?\s*)+)\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    Path(args.out).write_text(text + "\n")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes, {len(cases)} cases) and {args.out_tensors} "
          f"({Path(args.out_tensors).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
