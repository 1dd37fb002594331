"""ACE-Step 1.5 VAE and text encoder against ComfyUI 0.20.1 on identical tiny random weights.

The reference outputs are golden tensors written by ``scripts/make_ace15_io_golden.py`` from
ComfyUI 0.20.1's own code (commit in the file's metadata); the real-size structure is checked
against the name/shape manifest the same script writes from ComfyUI's modules on the meta device.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from acestep_core.ace15 import tiny
from acestep_core.ace15.text_encoder import (Qwen3EncoderConfig, Qwen3TextEncoder, QwenTokenizer, caption_prompt,
                                             encode_text, find_qwen_tokenizer, lyrics_prompt)
from acestep_core.ace15.vae import AudioCodec15, OobleckConfig, OobleckVAE

DATA = Path(__file__).parent / "data"
TOL = 1e-4


def _golden():
    with safe_open(str(DATA / "ace15_io_golden.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


GOLDEN, META = _golden()


def _inputs():
    # scripts/make_ace15_io_golden.py, inputs()
    g = torch.Generator().manual_seed(7)
    wave = 0.5 * torch.randn(2, 2, 1920 * 3 + 333, generator=g)
    latent = torch.randn(2, 64, 5, generator=g)
    return wave, latent


@pytest.fixture(scope="module")
def codec():
    state = tiny.random_vae_state(tiny.TINY_VAE_CONFIG, seed=1)
    assert torch.allclose(tiny.checksum(state), GOLDEN["vae.weights.checksum"], rtol=1e-12), \
        "the tiny VAE weights differ from those the golden data was made with"
    with torch.device("meta"):
        vae = OobleckVAE(tiny.TINY_VAE_CONFIG)
    vae.load_state_dict(state, assign=True)
    return AudioCodec15(vae.eval())


def _close(ours, ref, tol=TOL):
    """max |ours - ref| <= tol relative to the reference's largest value."""
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 1e-3, "a reference this small would make the comparison meaningless"
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale, f"max |diff| {err:.3g} (reference max {scale:.3g})"
    return err


def test_golden_made_by_comfyui_020():
    assert META["reference"].startswith("ComfyUI 0.20")
    assert len(META["commit"]) == 40


def test_vae_encode_matches_comfyui(codec):
    wave, _ = _inputs()
    moments = codec.encode_moments(wave, chunk_frames=None)
    _close(moments, GOLDEN["vae.encode.moments"])
    # The latent is a posterior sample: the same seed gives ComfyUI's noise (vae_sample's randn_like
    # on the global generator), so the sample matches too.
    latent = codec.encode(wave, chunk_frames=None, generator=torch.Generator().manual_seed(123))
    _close(latent, GOLDEN["vae.encode.latent"])
    assert latent.shape == (2, 64, 3)          # (3 * 1920 + 333) // 1920 frames, centre-cropped


def test_vae_decode_matches_comfyui(codec):
    _, latent = _inputs()
    audio = codec.decode(latent, chunk_frames=None)
    assert audio.shape == (2, 2, 5 * 1920)
    _close(audio, GOLDEN["vae.decode.audio"])


def test_vae_windowed_decode_and_encode_equal_one_piece(codec):
    """Windows share 32 frames and the receptive field is 9 frames each way, so the windowed
    result equals the one-piece result to float rounding."""
    torch.manual_seed(0)
    latent = torch.randn(1, 64, 100)
    whole = codec.decode(latent, chunk_frames=None)
    calls = []
    windowed = codec.decode(latent, chunk_frames=64, overlap_frames=32, on_progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 2 and calls[-1][0] == calls[-1][1]
    _close(windowed, whole, 1e-5)
    wave = torch.randn(1, 2, 1920 * 100)
    whole = codec.encode_moments(wave, chunk_frames=None)
    _close(codec.encode_moments(wave, chunk_frames=64, overlap_frames=32), whole, 1e-5)


def test_vae_receptive_field_within_overlap(codec):
    """Changing one latent frame changes at most 9 frames of audio each way (the reason 32 frames
    of overlap with an 8-frame centred fade make windows exact)."""
    torch.manual_seed(1)
    latent = torch.randn(1, 64, 40)
    bumped = latent.clone()
    bumped[..., 20] += 1.0
    diff = (codec.decode(bumped, chunk_frames=None) - codec.decode(latent, chunk_frames=None)).abs().amax(1)[0]
    changed = (diff > 0).nonzero()
    first, last = changed.min().item() / 1920, changed.max().item() / 1920
    assert 20 - 9 <= first and last < 21 + 9


def test_vae_interrupt_stops_decode(codec):
    class Stop(Exception):
        pass

    def interrupt(done, total):
        raise Stop

    with pytest.raises(Stop):
        codec.decode(torch.zeros(1, 64, 150), chunk_frames=64, overlap_frames=32, on_progress=interrupt)


def test_vae_check_inside_a_window(codec):
    """check() runs after every block (8 per pass), so an interrupt stops a one-window decode
    before it ends; the result with a no-op check is unchanged."""
    latent = torch.randn(1, 64, 20, generator=torch.Generator().manual_seed(3))
    calls = []
    assert torch.equal(codec.decode(latent, chunk_frames=None, check=lambda: calls.append(1)),
                       codec.decode(latent, chunk_frames=None))
    assert len(calls) == 8

    class Stop(Exception):
        pass

    seen = []

    def stop_at_third():
        seen.append(1)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        codec.encode(torch.randn(1, 2, 1920 * 20), chunk_frames=None, check=stop_at_third)
    assert len(seen) == 3


def test_vae_bad_input(codec):
    with pytest.raises(ValueError, match="latent"):
        codec.decode(torch.zeros(1, 8, 16, 10))
    with pytest.raises(ValueError, match="at least one frame"):
        codec.encode(torch.zeros(1, 2, 1000))
    mono = torch.randn(1, 1, 1920 * 2)
    assert codec.encode(mono, sample=False).shape == (1, 64, 2)


def test_vae_real_structure_matches_comfyui():
    manifest = json.loads((DATA / "ace15_io_manifest.json").read_text())
    with torch.device("meta"):
        vae = OobleckVAE(OobleckConfig.released())
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == manifest["vae"]
    assert sum(torch.Size(s).numel() for s in ours.values()) == 168_695_426


# ---------------------------------------------------------------------------------------------
# text encoder
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_encoder():
    state = tiny.random_text_encoder_state(tiny.TINY_TEXT_CONFIG, seed=2)
    assert torch.allclose(tiny.checksum(state), GOLDEN["text.weights.checksum"], rtol=1e-12)
    with torch.device("meta"):
        encoder = Qwen3TextEncoder(tiny.TINY_TEXT_CONFIG)
    encoder.load_state_dict(state, assign=True)
    encoder.materialize_buffers("cpu")
    return encoder


@pytest.fixture(scope="module")
def tokenizer():
    # CI's ComfyUI 0.3.75 ships comfy/text_encoders/qwen25_tokenizer with the vocabulary and merges
    # of 0.20.1's copy (identical files); the run-time search finds it through COMFYUI_DIR.
    return QwenTokenizer(find_qwen_tokenizer())


CASES = json.loads(META["text_cases"])


@pytest.mark.parametrize("index", range(len(CASES)))
def test_text_encoding_matches_comfyui(index, text_encoder, tokenizer):
    tags, lyrics, language, bpm, ts, key, duration = CASES[index]
    out = encode_text(text_encoder, tokenizer, tags, lyrics, language=language, bpm=bpm, timesignature=ts,
                      keyscale=key, duration=duration)
    assert out.caption_ids == GOLDEN[f"text.{index}.caption_ids"].tolist()
    assert out.lyric_ids == GOLDEN[f"text.{index}.lyric_ids"].tolist()
    _close(out.caption, GOLDEN[f"text.{index}.caption"])
    _close(out.lyrics, GOLDEN[f"text.{index}.lyrics"])


def test_prompt_strings():
    text = caption_prompt(" rock ", bpm=120, timesignature="3/4", keyscale="E minor", duration=30.2)
    assert text.endswith("# Caption\nrock\n\n# Metas\n- bpm: 120\n- timesignature: 3\n- keyscale: E minor\n"
                         "- duration: 31 seconds\n<|endoftext|>\n<|endoftext|>")
    assert "- bpm: N/A" in caption_prompt("x", duration=None) and "- duration: 30 seconds" in caption_prompt("x", duration=None)
    assert lyrics_prompt("la\n", "fr") == "# Languages\nfr\n\n# Lyric\nla\n<|endoftext|><|endoftext|>"


def test_text_encoder_real_structure_matches_comfyui():
    manifest = json.loads((DATA / "ace15_io_manifest.json").read_text())
    with torch.device("meta"):
        encoder = Qwen3TextEncoder(Qwen3EncoderConfig.released())
    ours = {"model." + k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == manifest["text_encoder"]
