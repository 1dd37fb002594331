"""Every released ACE-Step 1.5 layout through one loader (tiny checkpoints with the same random
weights in each layout), and the clear errors for wrong mixes and bad files."""
from __future__ import annotations

import pickle

import pytest
import torch

from acestep_core.ace15.loading import (CheckpointError, detect_generation, inspect_path, load_ace15, read_plain_tensor,
                                        silence_latent)
from acestep_core.ace15.text_encoder import TokenizerNotFound, encode_text, find_qwen_tokenizer
from acestep_core.ace15.tiny import write_tiny_ace15


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ace15_layouts")
    tokenizer = find_qwen_tokenizer()
    aio = write_tiny_ace15(root / "aio", "aio")
    split = write_tiny_ace15(root / "split", "split", planner=True)
    official = write_tiny_ace15(root / "official", "official", tokenizer_dir=tokenizer)
    return {"aio": aio, "split": split, "official": official}


def _paths(layouts, name):
    p = layouts[name]
    return {"aio": [p.get("checkpoint")], "split": [p.get("dit"), p.get("vae"), p.get("text_encoder")],
            "official": [p.get("root")]}[name]


def _run(models):
    cond = encode_text(models.text_encoder, models.tokenizer, "pop, piano", "[verse]\nla la", bpm=120, duration=10)
    z = torch.randn(1, 64, 13, generator=torch.Generator().manual_seed(0))
    velocity = models.model(z, torch.tensor([0.7]), cond.caption, lyric_embed=cond.lyrics, refer_audio=silence_latent(13),
                            is_covers=False)
    return cond, velocity, models.codec.decode(z)


def test_every_layout_gives_identical_outputs(layouts):
    results = {name: _run(load_ace15(_paths(layouts, name))) for name in ("aio", "split", "official")}
    ref_cond, ref_v, ref_audio = results["aio"]
    assert ref_v.abs().max() > 0 and ref_audio.abs().max() > 0
    for name, (cond, v, audio) in results.items():
        assert cond.caption_ids == ref_cond.caption_ids, name
        assert torch.equal(cond.caption, ref_cond.caption), name
        assert torch.equal(cond.lyrics, ref_cond.lyrics), name
        assert torch.equal(v, ref_v), name
        assert torch.equal(audio, ref_audio), name


def test_inspect_tells_what_each_file_is(layouts):
    split = layouts["split"]
    assert inspect_path(split["dit"]).describe() == "ACE-Step 1.5 DiT (width 48, 3 layers)"
    assert "VAE (Oobleck, 48 kHz" in inspect_path(split["vae"]).describe()
    assert "text encoder (Qwen3-Embedding, width 24, 2 layers)" in inspect_path(split["text_encoder"]).describe()
    assert "5 Hz planner" in inspect_path(split["planner"]).describe()
    kinds = [p.kind for p in inspect_path(layouts["aio"]["checkpoint"]).parts]
    assert kinds == ["dit", "vae", "text_encoder"]
    official = inspect_path(layouts["official"]["root"])
    assert sorted(p.kind for p in official.parts) == ["dit", "text_encoder", "vae"]
    assert "turbo" in official.of("dit")[0].description
    assert detect_generation(layouts["aio"]["checkpoint"]) == "1.5"


def test_silence_latent_read_without_unpickling(layouts, tmp_path):
    path = layouts["official"]["dit"] / "silence_latent.pt"
    expected = torch.load(path, weights_only=True)
    assert torch.equal(read_plain_tensor(path), expected)
    models = load_ace15(_paths(layouts, "official"), components=())
    assert torch.equal(models.silence(30), expected[..., :30])
    assert torch.equal(models.silence(45)[..., 40:], expected[..., -1:].expand(1, 64, 5))
    # ComfyUI's built-in silence: 4 head frames, then one frame repeated.
    comfy = silence_latent(10)
    assert comfy.shape == (1, 64, 10) and torch.equal(comfy[..., 4], comfy[..., 9])
    assert not torch.equal(comfy[..., 0], comfy[..., 4])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path):
    evil = tmp_path / "silence_latent.pt"
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Payload(), f)
    torch.save([torch.zeros(2), _Payload()], evil)
    with pytest.raises(CheckpointError, match="refusing|not a plain saved tensor"):
        read_plain_tensor(evil)
    with pytest.raises(CheckpointError, match="not a PyTorch zip"):
        read_plain_tensor(tmp_path / "plain.pkl")
    # A pickle given where safetensors is expected.
    with pytest.raises(CheckpointError, match="pickle"):
        load_ace15([evil])


def test_truncated_file(layouts, tmp_path):
    data = layouts["split"]["dit"].read_bytes()
    cut = tmp_path / "acestep_v1.5_cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_ace15([cut, layouts["split"]["vae"], layouts["split"]["text_encoder"]])


def test_planner_given_as_text_encoder(layouts):
    split = layouts["split"]
    with pytest.raises(CheckpointError) as err:
        load_ace15([split["dit"], split["vae"], split["planner"]])
    message = str(err.value)
    assert "qwen_1.7b_ace15.safetensors: ACE-Step 1.5 5 Hz planner" in message
    assert "is the 5 Hz planner, not the text encoder" in message
    assert "acestep_v1.5_tiny.safetensors: ACE-Step 1.5 DiT" in message


def test_v1_vae_with_15_dit(layouts, tmp_path):
    from acestep_core.testing import write_tiny_checkpoint

    v1 = write_tiny_checkpoint(tmp_path / "v1", layout="folders")
    v1_vae = v1 / "music_dcae_f8c8" / "diffusion_pytorch_model.safetensors"
    split = layouts["split"]
    with pytest.raises(CheckpointError) as err:
        load_ace15([split["dit"], v1_vae, split["text_encoder"]])
    message = str(err.value)
    assert f"{v1_vae}: ACE-Step v1 VAE (music DCAE, 44.1 kHz)" in message
    assert "cannot be mixed with 1.5" in message and "DiT" in message and "text encoder" in message
    assert detect_generation(v1) == "v1"


def test_folder_where_a_single_file_is_expected(layouts):
    official = layouts["official"]
    split = layouts["split"]
    with pytest.raises(CheckpointError, match="is a folder .* where a single .safetensors file is expected"):
        load_ace15([split["dit"], official["vae"], split["text_encoder"]], single_files=True)


def test_missing_tokenizer(layouts, tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    monkeypatch.setattr("acestep_core.ace15.text_encoder._comfyui_tokenizer_dirs", lambda: [])
    models = load_ace15(_paths(layouts, "split"), components=())
    with pytest.raises(TokenizerNotFound) as err:
        models.tokenizer
    assert "Qwen3-Embedding-0.6B" in str(err.value) and str(layouts["split"]["dit"].parent) in str(err.value)
