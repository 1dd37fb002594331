"""The standalone CLI end to end on a tiny checkpoint: make-tiny, generate, a WAV that decodes."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acestep_core.constants import frames_for_seconds, samples_for_frames
from acestep_core.loading import load_checkpoint
from acestep_core.pipeline import encode_text, read_wav, sample

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
