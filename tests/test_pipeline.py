"""The standalone CLI end to end on a tiny checkpoint: make-tiny, generate, a WAV that decodes."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acestep_core.constants import frames_for_seconds, samples_for_frames
from acestep_core.loading import load_checkpoint
from acestep_core.pipeline import encode_text, sample
from reference import read_wav

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "acestep_core", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny_RANDOM.safetensors"
    proc = _cli("make-tiny", "--out", str(out), "--layout", "comfyui", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stderr
    return out


def test_cli_generate_writes_decodable_wav(tiny_ckpt, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nHello (hello) world\n\n[chorus]\nSing it 2 times\n", encoding="utf-8")
    out = tmp_path / "song.wav"
    proc = _cli("generate", "--checkpoint", str(tiny_ckpt), "--tags", "pop, piano, upbeat", "--lyrics",
                str(lyrics), "--seconds", "2.5", "--steps", "3", "--cfg", "5", "--seed", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "sampling" in proc.stderr and "decoding" in proc.stderr  # tqdm progress bars
    audio, rate = read_wav(out)
    assert rate == 44100
    assert audio.shape == (2, samples_for_frames(frames_for_seconds(2.5)))
    assert torch.isfinite(audio).all()
    assert audio.abs().max() > 1e-3  # not silent


def test_cli_errors_are_one_clear_line(tmp_path):
    proc = _cli("generate", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.wav"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "missing.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_info_describes_both_layouts(tiny_ckpt, tmp_path):
    folders = tmp_path / "folders"
    assert _cli("make-tiny", "--out", str(folders), "--layout", "folders").returncode == 0
    for path in (tiny_ckpt, folders):
        proc = _cli("info", str(path))
        assert proc.returncode == 0, proc.stderr
        assert "transformer" in proc.stdout and "vocoder" in proc.stdout and "text_encoder" in proc.stdout


@torch.no_grad()
def test_sampling_is_seeded_and_guidance_matters(tiny_ckpt):
    models = load_checkpoint(tiny_ckpt)
    cond = encode_text(models, "rock, guitar", "[verse]\nla la la")
    a = sample(models, cond, seconds=1.0, steps=3, cfg_scale=4.0, seed=7)
    b = sample(models, cond, seconds=1.0, steps=3, cfg_scale=4.0, seed=7)
    c = sample(models, cond, seconds=1.0, steps=3, cfg_scale=4.0, seed=8)
    d = sample(models, cond, seconds=1.0, steps=3, cfg_scale=1.0, seed=7)
    assert a.shape == (1, 8, 16, frames_for_seconds(1.0))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        sample(models, cond, seconds=0.01, steps=2)


def test_cli_generate_ace15_writes_48k_wav(tmp_path):
    """A tiny 1.5 checkpoint (split files) through the same command: detected from its weights,
    turbo defaults (8 steps, shift 3, cfg 1), a 48 kHz stereo WAV of round(seconds * 25) frames."""
    proc = _cli("make-tiny", "--generation", "1.5", "--layout", "split", "--out", str(tmp_path / "tiny15"))
    assert proc.returncode == 0, proc.stderr
    files = [tmp_path / "tiny15" / f for f in ("diffusion_models/acestep_v1.5_tiny.safetensors",
                                                 "text_encoders/qwen_0.6b_ace15.safetensors", "vae/ace_1.5_vae.safetensors")]
    out = tmp_path / "song15.wav"
    proc = _cli("generate", "--checkpoint", *map(str, files), "--tags", "pop, piano", "--lyrics", "[verse]\nla la",
                "--seconds", "1.5", "--bpm", "120", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ACE-Step 1.5" in proc.stderr and "8/8" in proc.stderr
    audio, rate = read_wav(out)
    assert rate == 48000
    assert audio.shape == (2, round(1.5 * 25) * 1920)
    assert torch.isfinite(audio).all() and audio.abs().max() > 1e-3


def test_cli_wrong_mix_names_each_file(tiny_ckpt, tmp_path):
    proc = _cli("make-tiny", "--generation", "1.5", "--layout", "split", "--out", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    dit = tmp_path / "t" / "diffusion_models" / "acestep_v1.5_tiny.safetensors"
    proc = _cli("generate", "--checkpoint", str(dit), str(tiny_ckpt), "--out", str(tmp_path / "x.wav"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{dit}: ACE-Step 1.5 DiT" in proc.stderr and f"{tiny_ckpt}: ACE-Step v1 (3.5B) checkpoint" in proc.stderr


def test_cli_make_tiny_15_aio_with_planner_into_an_existing_models_folder(tmp_path):
    """What the 1.5 workflows' notes tell users to run: --out is ComfyUI's models/checkpoints (a
    folder that exists), the all-in-one file is written into it with the planner under Comfy-Org's
    qwen3_2b prefix; a second run keeps the file instead of refusing because the folder exists."""
    from acestep_core.ace15.loading import inspect_path

    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    args = ("make-tiny", "--generation", "1.5", "--layout", "aio", "--planner", "--out", str(checkpoints))
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    written = checkpoints / "ace_step_1.5_tiny_aio.safetensors"
    kinds = {part.kind: part.source.prefix for part in inspect_path(written).parts}
    assert kinds == {"dit": "model.diffusion_model.", "vae": "vae.",
                     "text_encoder": "text_encoders.qwen3_06b.transformer.",
                     "planner": "text_encoders.qwen3_2b.transformer."}
    before = written.stat().st_mtime_ns
    again = _cli(*args)
    assert again.returncode == 0 and "keeping it" in again.stderr and written.stat().st_mtime_ns == before
