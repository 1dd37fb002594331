"""Loading both released layouts through one code path, and the errors users see."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from acestep_core.checkpoint import CheckpointError, open_checkpoint, resolve_dtype
from acestep_core.constants import SAMPLE_RATE, frames_for_seconds, samples_for_frames
from acestep_core.loading import load_checkpoint
from acestep_core.testing import tiny_config, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    single = write_tiny_checkpoint(root / "tiny.safetensors", layout="comfyui", seed=3)
    folders = write_tiny_checkpoint(root / "tiny_folders", layout="folders", seed=3)
    return root, single, folders


def test_single_file_has_released_prefixes(tiny_dir):
    _, single, _ = tiny_dir
    src = open_checkpoint(single)
    assert src.layout == "single_file"
    assert set(src.components) == {"transformer", "dcae", "vocoder", "text_encoder"}
    assert src.spiece_model and len(src.spiece_model) > 100
    from acestep_core.checkpoint import read_safetensors_header
    keys = read_safetensors_header(single).shapes
    assert "model.diffusion_model.genre_embedder.weight" in keys
    assert "vae.dcae.encoder.conv_in.weight" in keys
    assert "vae.vocoder.backbone.channel_layers.0.0.bias" in keys
    assert "text_encoders.umt5base.transformer.shared.weight" in keys
    assert "text_encoders.spiece_model" in keys


def test_inferred_config_equals_written_config(tiny_dir):
    _, single, folders = tiny_dir
    expected = tiny_config()
    for path in (single, folders):
        models = load_checkpoint(path, components=())
        assert models.config.transformer == expected.transformer, path
        assert models.config.dcae == expected.dcae, path
        assert models.config.vocoder == expected.vocoder, path
        assert models.config.text_encoder == expected.text_encoder, path


@torch.no_grad()
def test_single_file_and_folders_give_identical_outputs(tiny_dir):
    _, single, folders = tiny_dir
    a = load_checkpoint(single)
    b = load_checkpoint(folders)
    for (ka, va), (kb, vb) in zip(sorted(a.transformer.state_dict().items()), sorted(b.transformer.state_dict().items())):
        assert ka == kb and torch.equal(va, vb)
    tags = "pop, piano, 120 bpm"
    assert a.tag_tokenizer.encode(tags) == b.tag_tokenizer.encode(tags)
    ids = torch.tensor([a.tag_tokenizer.encode(tags)])
    ha, hb = a.text_encoder(ids), b.text_encoder(ids)
    assert torch.equal(ha, hb)
    x = torch.randn(1, 8, 16, 9)
    t = torch.tensor([500.0])
    lyr = torch.tensor([[261, 5, 6, 2]])
    va = a.transformer(x, t, context=ha, lyric_token_idx=lyr, speaker_embeds=torch.zeros(1, 512))
    vb = b.transformer(x, t, context=hb, lyric_token_idx=lyr, speaker_embeds=torch.zeros(1, 512))
    assert torch.equal(va, vb)
    wa, wb = a.codec.decode(x), b.codec.decode(x)
    assert torch.equal(wa, wb)
    assert wa.shape == (1, 2, 9 * 4096) and torch.isfinite(wa).all() and wa.abs().max() > 0


def test_load_dtype_choices(tiny_dir):
    _, single, _ = tiny_dir
    m = load_checkpoint(single, dtype="bf16", components=("transformer",))
    assert next(m.transformer.parameters()).dtype == torch.bfloat16
    m = load_checkpoint(single, dtype=torch.float16, components=("text_encoder",))
    assert next(m.text_encoder.parameters()).dtype == torch.float16
    assert m.transformer is None and m.codec is None


@pytest.mark.parametrize("bad", ["int8", "fp64", "banana", torch.int32])
def test_wrong_dtype_request(bad):
    with pytest.raises(CheckpointError, match="dtype"):
        resolve_dtype(bad)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file.*models/checkpoints"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tiny_dir, tmp_path):
    _, single, _ = tiny_dir
    data = single.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated.*download"):
        load_checkpoint(cut)
    head_cut = tmp_path / "headcut.safetensors"
    head_cut.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="headcut.safetensors"):
        load_checkpoint(head_cut)


def test_not_safetensors(tmp_path):
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"PK\x03\x04" + b"\x00" * 5000)
    with pytest.raises(CheckpointError, match=r"model\.ckpt.*not a safetensors file.*[Pp]ickle"):
        load_checkpoint(f)
    txt = tmp_path / "notes.safetensors"
    txt.write_text("hello world, not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(txt)


def test_checkpoint_of_another_model(tmp_path):
    f = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(2)}, str(f))
    with pytest.raises(CheckpointError, match=r"sd15\.safetensors.*not an ACE-Step v1 checkpoint.*Stable Diffusion"):
        load_checkpoint(f)


@pytest.mark.parametrize("drop,words", [("vae.", "VAE"), ("text_encoders.", "text encoder")])
def test_file_missing_component(tiny_dir, tmp_path, drop, words):
    _, single, _ = tiny_dir
    from safetensors.torch import load_file
    state = {k: v for k, v in load_file(str(single)).items() if not k.startswith(drop)}
    f = tmp_path / "partial.safetensors"
    save_file(state, str(f))
    with pytest.raises(CheckpointError, match=rf"partial\.safetensors.*no {words}"):
        load_checkpoint(f)


@pytest.mark.parametrize("old,new", [(".attn.to_q.", ".attn.query."),
                                     (".cross_attn.add_q_proj.", ".cross_attn.extra_q.")])
def test_wrong_key_layout(tiny_dir, tmp_path, old, new):
    _, single, _ = tiny_dir
    from safetensors.torch import load_file
    state = load_file(str(single))
    renamed = {k.replace(old, new): v for k, v in state.items()}
    f = tmp_path / "renamed.safetensors"
    save_file(renamed, str(f))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(f, components=("transformer",))
    message = str(info.value)
    assert "renamed.safetensors" in message and "transformer" in message
    assert "missing" in message and old.strip(".").split(".")[-1] in message


def test_folder_missing_component(tiny_dir, tmp_path):
    _, _, folders = tiny_dir
    copy = tmp_path / "ckpt"
    shutil.copytree(folders, copy)
    shutil.rmtree(copy / "music_vocoder")
    with pytest.raises(CheckpointError, match=r"ckpt.*vocoder.*music_vocoder/"):
        load_checkpoint(copy)


def test_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no ACE-Step checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("seconds,frames", [(1.0, 10), (10.3, 110), (240.0, 2583)])
def test_length_formula(seconds, frames):
    # The reference formula, written out independently: int(seconds * 44100 / 512 / 8).
    assert frames_for_seconds(seconds) == int(seconds * 44100 / 512 / 8) == frames
    samples = samples_for_frames(frames)
    assert samples == frames * 4096
    # Round trip: the decoded length maps back to the same number of frames, and covers the
    # request up to less than one frame (92.9 ms).
    assert frames_for_seconds(samples / SAMPLE_RATE) == frames
    assert 0 <= seconds - samples / SAMPLE_RATE < 4096 / SAMPLE_RATE


def test_length_formula_matches_comfyui():
    import comfy_extras.nodes_ace as nodes_ace  # noqa: F401  (ComfyUI's own EmptyAceStepLatentAudio)
    node = nodes_ace.EmptyAceStepLatentAudio
    for seconds, frames in [(1.0, 10), (10.3, 110), (240.0, 2583)]:
        out = node.execute(seconds=seconds, batch_size=1) if hasattr(node, "execute") else node().generate(seconds, 1)
        latent = out[0] if isinstance(out, tuple) else out.result[0]
        assert latent["samples"].shape == (1, 8, 16, frames)


def _mixed_file(tmp_path):
    from safetensors.torch import save_file

    from acestep_core.checkpoint import ComponentSource, read_safetensors_header
    g = torch.Generator().manual_seed(0)
    tensors = {"a.bf16": torch.randn(3, 5, generator=g).bfloat16(), "b.f32": torch.randn(7, generator=g),
               "c.f16": torch.randn(2, 3, 1, generator=g).half(), "d.i64": torch.arange(5),
               "e.bool": torch.tensor([True, False, True]), "f.scalar": torch.tensor(2.5),
               "g.empty": torch.zeros(0, 4), "h.u8": torch.arange(9, dtype=torch.uint8),
               "i.f32_big": torch.randn(64, 16, generator=g)}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    info = read_safetensors_header(path)
    return path, ComponentSource("test", path, "", info.shapes, dtypes=info.dtypes)


def _mapped(path) -> bool:
    maps = Path("/proc/self/maps")
    return maps.exists() and str(path) in maps.read_text()


def _inside_mapping(tensor, path) -> bool:
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            low, high = (int(a, 16) for a in line.split()[0].split("-"))
            if low <= address < high:
                return True
    return False


@pytest.mark.parametrize("mapped", [True, False])
def test_component_tensors_read_exactly_mapped_or_aligned(tmp_path, monkeypatch, mapped):
    """Every stored dtype and shape (0-dim, empty) reads back exactly as safetensors stores it.
    Mapped (the default on the CPU): tensors kept in the file's dtype are views of the file's
    pages; 4- and 8-byte values only where 64-byte aligned, else read into fresh aligned memory (a
    float32 product sums in another order at other alignments). Not mapped: all fresh, aligned."""
    from safetensors.torch import load

    from acestep_core import checkpoint
    monkeypatch.setattr(checkpoint, "MAP_STORED_WEIGHTS", mapped)
    path, source = _mixed_file(tmp_path)
    read = source.state_dict()
    expected = load(path.read_bytes())    # safetensors' own reader (from bytes: it maps files it opens)
    assert set(read) == set(expected)
    for key, tensor in read.items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
        if tensor.numel() and (tensor.element_size() > 2 or not mapped):
            assert tensor.data_ptr() % 64 == 0, key
    if Path("/proc/self/maps").exists():
        views = {key for key, tensor in read.items() if tensor.numel() and _inside_mapping(tensor, path)}
        if mapped:
            assert {"a.bf16", "c.f16", "e.bool", "h.u8"} <= views
            assert all(read[key].element_size() <= 2 or read[key].data_ptr() % 64 == 0 for key in views)
        else:
            assert not views and not _mapped(path)
        del read, views, tensor
        import gc
        gc.collect()
        assert not _mapped(path), "the mapping outlives the tensors"


def test_mapped_weights_are_private_and_converted_ones_are_copies(tmp_path):
    """A weight patched in place (ComfyUI's in-place LoRA patching) changes the process's copy,
    never the file; tensors converted to another dtype are fresh memory (no mapped source kept)."""
    from safetensors.torch import load
    path, source = _mixed_file(tmp_path)
    before = path.read_bytes()
    read = source.state_dict()
    read["a.bf16"].add_(1.0)
    read["h.u8"].zero_()
    assert path.read_bytes() == before
    assert torch.equal(source.state_dict()["a.bf16"], load(before)["a.bf16"])
    del read
    converted = source.state_dict(dtype=torch.float32)
    assert converted["a.bf16"].dtype == torch.float32 and converted["d.i64"].dtype == torch.int64
    if Path("/proc/self/maps").exists():
        assert not any(_inside_mapping(t, path) for k, t in converted.items() if t.is_floating_point() and t.numel())


def test_a_file_cut_after_its_header_was_read_gives_the_read_error(tmp_path):
    """Mapping a file shorter than its header says would kill the process at the first touch of a
    missing page: a file cut after it was opened is checked again before any tensor is made."""
    from acestep_core.checkpoint import CheckpointError
    path, source = _mixed_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match="truncated|ends inside tensor"):
        source.state_dict()


def test_reading_on_several_threads_gives_the_same_tensors_in_order(tmp_path, monkeypatch):
    """Tensors read ahead on several threads (positional reads on one file) arrive in the file's
    key order with the same bytes as one thread reading them, converted as asked."""
    from acestep_core import checkpoint
    from acestep_core.testing import write_tiny_checkpoint
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", layout="comfyui", seed=0)
    component = checkpoint.open_checkpoint(path).components["transformer"]
    read = {}
    for threads in (1, 3):
        monkeypatch.setattr(checkpoint, "READ_THREADS", threads)
        read[threads] = list(component.iter_tensors(dtype=torch.bfloat16))
    assert [k for k, _ in read[3]] == [k for k, _ in read[1]] == list(component.shapes)
    for (_, a), (_, b) in zip(read[1], read[3]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert any(t.dtype == torch.bfloat16 for _, t in read[3])
