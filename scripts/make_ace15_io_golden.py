#!/usr/bin/env python3
"""Regenerate the ACE-Step 1.5 I/O golden data from ComfyUI 0.20.1's own code:

    tests/data/ace15_io_golden.safetensors   VAE encode / decode and text-encoder outputs on the
                                             tiny random weights of acestep_core.ace15.tiny
    tests/data/ace15_io_manifest.json        parameter names and shapes of the REAL-size VAE and
                                             Qwen3-Embedding-0.6B, built on the meta device
    acestep_core/ace15/silence_latent_comfyui.safetensors
                                             the silence latent ComfyUI hard-codes (get_silence_latent):
                                             4 head frames and the frame repeated after them (1.3 KiB)

Run it with the Python of a ComfyUI 0.20.1 installation (one with ACE-Step 1.5 built in):

    /work/comfy020/venv/bin/python scripts/make_ace15_io_golden.py --comfyui /work/comfy020/ComfyUI

Reference used for the committed files: ComfyUI 0.20.1 from github:YellowRoseCx/ComfyUI, commit
aa9d2fc713664e9ffe37763f4c9240c0c3eda667 (``git --git-dir=... rev-parse HEAD``; the commit is
also written into the files' metadata).

What runs on the reference side (nothing of it is copied into this repository):
  * VAE: ``comfy.sd.VAE(sd=...)`` on the tiny weights, so ComfyUI's own detection (the 1.5 VAE by
    its kernel-12 block), waveform crop (``vae_encode_crop_pixels``), bottleneck sampling
    (``vae_sample`` with the global RNG seeded) and decode are exercised. ComfyUI's detection
    only knows the real widths, so its ``AudioOobleckVAE`` is called with the tiny widths
    (channels 4) by wrapping the class for this run.
  * Text: ``ACE15Tokenizer.tokenize_with_weights`` with the arguments ``TextEncodeAceStepAudio1.5``
    passes (generate_audio_codes False) and ``ACE15TEModel.encode_token_weights`` on a tiny
    Qwen3 (hidden 24, 2 layers, real vocabulary), given through ComfyUI's model_options config
    override; ``head_dim`` is a class attribute of ComfyUI's config, set for this run.
Weights and inputs are regenerated from seeds on both sides; the file stores a checksum of the
weights so a change of the generator shows up as a clear test failure.
"""
from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "ace15_io_golden.safetensors"
MANIFEST = REPO / "tests" / "data" / "ace15_io_manifest.json"
SILENCE = REPO / "acestep_core" / "ace15" / "silence_latent_comfyui.safetensors"

VAE_SEED, TEXT_SEED = 1, 2
ENCODE_BATCH, ENCODE_SAMPLES = 2, 1920 * 3 + 333      # odd length: exercises the centred crop
ENCODE_NOISE_SEED = 123
DECODE_BATCH, DECODE_FRAMES = 2, 5

# (tags, lyrics, language, bpm, timesignature, keyscale, duration): what the node passes.
TEXT_CASES = [
    ("pop, piano, female vocals", "[verse]\nHello world\nsing along\n\n[chorus]\nla la la", "en", 120, 4, "C major", 30.5),
    ("", "", "en", 90, 3, "A minor", 120.0),
    ("  lo-fi hip hop \\(chill\\), 80 bpm  ", "雨の日は\n家にいる", "ja", 80, 4, "F# minor", 12.0),
    ("rock embedding:foo guitar", "[instrumental]", "zh", 200, 6, "Bb major", 0.2),
]


def inputs(torch):
    """The seeded inputs both sides use."""
    g = torch.Generator().manual_seed(7)
    wave = 0.5 * torch.randn(ENCODE_BATCH, 2, ENCODE_SAMPLES, generator=g)
    latent = torch.randn(DECODE_BATCH, 64, DECODE_FRAMES, generator=g)
    return wave, latent


def commit_of(comfyui: Path) -> str:
    for git_dir in (comfyui / ".git", Path("/work/.mirror/YellowRoseCx+ComfyUI/repo")):
        try:
            return subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], check=True,
                                  capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default="/work/comfy020/ComfyUI", help="a ComfyUI 0.20.1 checkout")
    args = parser.parse_args()
    comfyui = Path(args.comfyui).resolve()
    sys.path[:0] = [str(comfyui), str(REPO)]

    import torch

    import comfy.cli_args
    comfy.cli_args.args.cpu = True          # before comfy.model_management looks for a GPU
    from safetensors.torch import save_file

    import comfy.ldm.audio.autoencoder as autoencoder
    import comfy.sd
    import comfy.text_encoders.ace15 as ace15
    import comfy.text_encoders.llama as llama
    import comfyui_version

    from acestep_core.ace15 import tiny

    version = comfyui_version.__version__
    if not version.startswith("0.20."):
        print(f"warning: ComfyUI {version}, the golden data is meant to come from 0.20.x", file=sys.stderr)
    commit = commit_of(comfyui)
    torch.set_grad_enabled(False)
    out: dict[str, torch.Tensor] = {}

    # --- VAE ------------------------------------------------------------------------------
    vcfg = tiny.TINY_VAE_CONFIG
    vae_state = tiny.random_vae_state(vcfg, VAE_SEED)
    real_class = comfy.sd.AudioOobleckVAE
    comfy.sd.AudioOobleckVAE = functools.partial(real_class, channels=vcfg.channels, c_mults=list(vcfg.c_mults),
                                                 latent_dim=vcfg.latent_channels)
    try:
        vae = comfy.sd.VAE(sd=dict(vae_state), dtype=torch.float32)
    finally:
        comfy.sd.AudioOobleckVAE = real_class
    assert vae.audio_sample_rate == 48000 and vae.downscale_ratio == 1920, "not detected as the 1.5 VAE"
    wave, latent = inputs(torch)
    torch.manual_seed(ENCODE_NOISE_SEED)
    out["vae.encode.latent"] = vae.encode(wave.movedim(1, -1)).float().contiguous()
    cropped = vae.vae_encode_crop_pixels(wave.movedim(1, -1)).movedim(-1, 1)
    out["vae.encode.moments"] = vae.first_stage_model.encoder(cropped).float().contiguous()
    out["vae.decode.audio"] = vae.decode(latent).movedim(-1, 1).float().contiguous()
    out["vae.weights.checksum"] = tiny.checksum(vae_state)

    # --- text encoder ----------------------------------------------------------------------
    tcfg = tiny.TINY_TEXT_CONFIG
    text_state = tiny.random_text_encoder_state(tcfg, TEXT_SEED)
    llama.Qwen3_06B_ACE15_Config.head_dim = tcfg.head_dim
    overrides = {"vocab_size": tcfg.vocab_size, "hidden_size": tcfg.hidden_size,
                 "intermediate_size": tcfg.intermediate_size, "num_hidden_layers": tcfg.num_hidden_layers,
                 "num_attention_heads": tcfg.num_attention_heads, "num_key_value_heads": tcfg.num_key_value_heads}
    te = ace15.ACE15TEModel(device="cpu", dtype=torch.float32, lm_model=None, model_options={"_model_config": overrides})
    missing, unexpected = te.qwen3_06b.load_sd({"model." + k: v for k, v in text_state.items()})
    assert not missing and not unexpected, (missing, unexpected)
    tokenizer = ace15.ACE15Tokenizer()
    for index, (tags, lyrics, language, bpm, ts, key, duration) in enumerate(TEXT_CASES):
        tokens = tokenizer.tokenize_with_weights(tags, lyrics=lyrics, bpm=bpm, duration=duration, timesignature=int(ts),
                                                 language=language, keyscale=key, seed=0, generate_audio_codes=False,
                                                 cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0)
        te.qwen3_06b.reset_clip_options()   # as comfy.sd.CLIP.encode_from_tokens does before each encode
        caption, _, extra = te.encode_token_weights(tokens)
        out[f"text.{index}.caption_ids"] = torch.tensor([t for t, _ in tokens["qwen3_06b"][0]])
        out[f"text.{index}.lyric_ids"] = torch.tensor([t for t, _ in tokens["lyrics"][0]])
        out[f"text.{index}.caption"] = caption.float().contiguous()
        out[f"text.{index}.lyrics"] = extra["conditioning_lyrics"].float().contiguous()
    out["text.weights.checksum"] = tiny.checksum(text_state)

    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(GOLDEN), metadata={"reference": f"ComfyUI {version}", "commit": commit,
                                          "script": "scripts/make_ace15_io_golden.py",
                                          "text_cases": json.dumps(TEXT_CASES, ensure_ascii=False)})

    # --- ComfyUI's hard-coded silence latent (used when no official silence_latent.pt is given)
    import comfy.ldm.ace.ace_step15 as ace_step15
    silence = ace_step15.get_silence_latent(5, "cpu").float()          # 4 head frames + the repeated one
    save_file({"head": silence[..., :4].contiguous(), "frame": silence[..., 4:5].contiguous()}, str(SILENCE),
              metadata={"source": f"ComfyUI {version} comfy/ldm/ace/ace_step15.py get_silence_latent", "commit": commit})

    # --- real-size structure manifest --------------------------------------------------------
    with torch.device("meta"):
        real_vae = real_class(strides=[2, 4, 4, 6, 10])
        llama.Qwen3_06B_ACE15_Config.head_dim = 128
        real_te = llama.Qwen3_06B_ACE15({}, torch.float32, "meta", comfy.ops.manual_cast)
    manifest = {
        "reference": f"ComfyUI {version}", "commit": commit, "script": "scripts/make_ace15_io_golden.py",
        "vae": {k: list(v.shape) for k, v in real_vae.state_dict().items()},
        "text_encoder": {k: list(v.shape) for k, v in real_te.state_dict().items()},
    }
    MANIFEST.write_text(json.dumps(manifest, indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN.relative_to(REPO)} ({GOLDEN.stat().st_size // 1024} KiB) and "
          f"{MANIFEST.relative_to(REPO)} ({MANIFEST.stat().st_size // 1024} KiB) from ComfyUI {version} {commit[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
