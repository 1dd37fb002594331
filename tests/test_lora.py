"""LoRA parsing, scale resolution and application: exact deltas, stacking, the scale sources
(alpha tensors, embedded metadata, adapter_config.json, the default), ComfyUI parity, and the
errors for files that are not ACE-Step LoRAs."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from acestep_core.config import LyricEncoderConfig, TransformerConfig
from acestep_core.lora import (ACE_STEP_LORA_TARGETS, PLAIN_LORA_CONFIG, RELEASED_LORA_CONFIG, LoraError, LoraPatch,
                               load_lora, lora_delta, lora_scale, lora_target_keys, write_tiny_lora)
from reference import apply_lora_
from acestep_core.models.transformer import AceStepTransformer

SMALL = TransformerConfig(
    num_layers=2, num_attention_heads=2, attention_head_dim=16, mlp_ratio=2.5,
    speaker_embedding_dim=16, text_embedding_dim=24, ssl_latent_dims=(12, 10),
    lyric_encoder_vocab_size=50, lyric_hidden_size=32,
    lyric_encoder=LyricEncoderConfig(hidden_size=32, num_heads=4, ffn_size=64, num_layers=2))


@pytest.fixture(scope="module")
def shapes():
    return {k: tuple(v.shape) for k, v in AceStepTransformer(SMALL, device="meta").state_dict().items()}


@pytest.fixture
def weights(shapes):
    """Random values for every weight a LoRA can touch (the rest is irrelevant here)."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shapes[k], generator=g) for k in lora_target_keys(shapes)}


def reference_delta(A, B, scale, strength):
    """strength * scale * B @ A as an explicit sum over the rank, in float64."""
    a, b = A.double().flatten(1), B.double().flatten(1)
    return strength * scale * torch.einsum("or,ri->oi", b, a)


# ---------------------------------------------------------------------------------------------
# targets and scales
# ---------------------------------------------------------------------------------------------
def test_released_targets_on_the_real_model():
    real = AceStepTransformer(TransformerConfig.released(), device="meta").state_dict()
    keys = lora_target_keys(real)
    # 24 blocks x (self + cross attention) x (to_q, to_k, to_v, to_out.0) + 8 lyric layers x
    # (linear_q, linear_k, linear_v) + speaker_embedder
    layers = TransformerConfig.released().lyric_encoder.num_layers
    assert len(keys) == 24 * 2 * 4 + layers * 3 + 1
    assert "speaker_embedder.weight" in keys
    assert "transformer_blocks.23.cross_attn.to_out.0.weight" in keys
    assert "lyric_encoder.encoders.0.self_attn.linear_q.weight" in keys
    assert not any("add_" in k or "linear_out" in k or "linear_pos" in k for k in keys)


def test_lora_scale_rules():
    assert lora_scale(256, 32, use_rslora=True) == 2.0  # the released config
    assert lora_scale(256, 32) == 0.125
    assert lora_scale(8) == 1.0 and lora_scale(16, use_rslora=True) == 4.0
    assert RELEASED_LORA_CONFIG.r == 256 and RELEASED_LORA_CONFIG.lora_alpha == 32 and RELEASED_LORA_CONFIG.use_rslora


def test_lora_delta_is_exact_for_representable_values():
    g = torch.Generator().manual_seed(1)
    A = torch.randint(-3, 4, (4, 6), generator=g).float()
    B = torch.randint(-3, 4, (5, 4), generator=g).float()
    delta = lora_delta(A, B, 0.5, 0.75)
    assert torch.equal(delta.double(), reference_delta(A, B, 0.5, 0.75))
    # conv LoRA: A [r, in, k], B [out, r, 1]
    Ac, Bc = torch.randint(-3, 4, (3, 2, 5), generator=g).float(), torch.randint(-3, 4, (4, 3, 1), generator=g).float()
    conv = lora_delta(Ac, Bc, 2.0, 1.0, shape=(4, 2, 5))
    assert torch.equal(conv.double(), reference_delta(Ac, Bc, 2.0, 1.0).reshape(4, 2, 5))


# ---------------------------------------------------------------------------------------------
# loading and applying
# ---------------------------------------------------------------------------------------------
def test_load_and_apply_matches_reference(tmp_path, shapes, weights):
    path = tmp_path / "lora.safetensors"
    written = write_tiny_lora(path, shapes, rank=4, alpha=8.0, rslora=False)
    lora = load_lora(path, shapes)
    assert set(lora) == set(lora_target_keys(shapes)) and len(lora) == len(written) // 2
    assert lora.config_source == "embedded lora_adapter_metadata" and not lora.warnings and not lora.unmatched
    worst = 0.0
    patched = apply_lora_(dict(weights), lora, strength=0.7)
    for key, (A, B, scale) in lora.items():
        assert scale == 2.0
        module = key[:-len(".weight")]
        assert torch.equal(A, written[module + ".lora_A.weight"]) and torch.equal(B, written[module + ".lora_B.weight"])
        ref = weights[key].double() + reference_delta(A, B, scale, 0.7)
        worst = max(worst, float((patched[key].double() - ref).abs().max()))
    print(f"\nLoRA apply vs einsum reference: max|diff| = {worst:.2e}")
    assert worst < 1e-5

    # strength 0 leaves every tensor untouched
    before = dict(weights)
    assert all(apply_lora_(before, lora, 0.0)[k] is weights[k] for k in weights)


def test_two_loras_stack(tmp_path, shapes, weights):
    write_tiny_lora(tmp_path / "a" / "one.safetensors", shapes, rank=4, alpha=4.0, seed=1)
    write_tiny_lora(tmp_path / "b" / "two.safetensors", shapes, rank=2, alpha=4.0, seed=2,
                    targets=("to_q", "to_k"))
    one = load_lora(tmp_path / "a" / "one.safetensors", shapes)
    two = load_lora(tmp_path / "b" / "two.safetensors", shapes)
    assert len(two) < len(one)
    sd = apply_lora_(apply_lora_(dict(weights), one, 1.0), two, -0.5)
    for key in weights:
        ref = weights[key].double() + reference_delta(*one[key], 1.0)
        if key in two:
            ref = ref + reference_delta(*two[key], -0.5)
        assert torch.allclose(sd[key].double(), ref, atol=1e-5), key


def test_scale_sources(tmp_path, shapes):
    cases = {
        "metadata": dict(config="metadata", rslora=True),
        "adapter_config": dict(config="adapter_config", rslora=True),
        "alpha_tensors": dict(config="alpha_tensors", rslora=False),
    }
    for name, kw in cases.items():
        path = tmp_path / name / "lora.safetensors"
        write_tiny_lora(path, shapes, rank=16, alpha=8.0, **kw)
        lora = load_lora(path, shapes)
        expected = 8.0 / math.sqrt(16) if kw["rslora"] else 8.0 / 16
        assert {p.scale for p in lora.values()} == {expected}, name
    assert "adapter_config.json" in load_lora(tmp_path / "adapter_config" / "lora.safetensors", shapes).config_source
    assert load_lora(tmp_path / "alpha_tensors" / "lora.safetensors", shapes).config_source == ".alpha tensors"

    # nothing stored: the released training config (alpha 32, rsLoRA) by default, or alpha = rank
    bare = tmp_path / "bare" / "lora.safetensors"
    write_tiny_lora(bare, shapes, rank=16, config=None)
    lora = load_lora(bare, shapes)
    assert {p.scale for p in lora.values()} == {32 / math.sqrt(16)}
    assert lora.config_source == RELEASED_LORA_CONFIG.source
    assert {p.scale for p in load_lora(bare, shapes, default_config=PLAIN_LORA_CONFIG).values()} == {1.0}

    # the released rank 256 with nothing stored -> 2.0
    one = {"speaker_embedder.weight": shapes["speaker_embedder.weight"]}
    r256 = tmp_path / "r256" / "lora.safetensors"
    write_tiny_lora(r256, one, rank=256, config=None)
    assert load_lora(r256, shapes)["speaker_embedder.weight"].scale == 2.0


def test_prefixes_and_key_spellings(tmp_path, shapes):
    reference = None
    for prefix in ("", "transformer.", "base_model.model.", "diffusion_model.", "model.diffusion_model."):
        path = tmp_path / (prefix or "none") / "lora.safetensors"
        write_tiny_lora(path, shapes, rank=3, alpha=3.0, prefix=prefix)
        lora = load_lora(path, set(shapes))  # keys only: shapes are checked at apply time
        keys = sorted(lora)
        reference = reference or keys
        assert keys == reference, prefix

    written = write_tiny_lora(tmp_path / "x.safetensors", shapes, rank=3, alpha=6.0, config="alpha_tensors")
    kohya = {}
    peft_named = {}
    for k, v in written.items():
        kohya[k.replace(".lora_A.weight", ".lora_down.weight").replace(".lora_B.weight", ".lora_up.weight")] = v
        named = k.replace(".lora_A.weight", ".lora_A.default.weight")
        peft_named[named.replace(".lora_B.weight", ".lora_B.default.weight")] = v
    for name, tensors in (("kohya", kohya), ("peft_named", peft_named)):
        path = tmp_path / name / "lora.safetensors"
        path.parent.mkdir()
        save_file(tensors, str(path))
        lora = load_lora(path, shapes)
        assert sorted(lora) == reference and {p.scale for p in lora.values()} == {2.0}, name


def test_matches_comfyui_lora_application(tmp_path, shapes, weights):
    """With .alpha tensors ComfyUI scales by alpha/rank; both must then give the same weights."""
    import comfy.lora

    path = tmp_path / "lora.safetensors"
    write_tiny_lora(path, shapes, rank=4, alpha=2.0, config="alpha_tensors", seed=5)
    ours = apply_lora_(dict(weights), load_lora(path, shapes), 0.8)

    from safetensors.torch import load_file
    lora_sd = load_file(str(path))
    to_load = {k[:-len(".weight")]: "diffusion_model." + k for k in shapes if k.endswith(".weight")}  # ACE mapping
    patches = comfy.lora.load_lora(lora_sd, to_load, log_missing=False)
    assert len(patches) == len(weights)
    worst = 0.0
    for key, w in weights.items():
        theirs = comfy.lora.calculate_weight([(0.8, patches["diffusion_model." + key], 1.0, None, None)],
                                             w.clone(), "diffusion_model." + key)
        worst = max(worst, float((ours[key] - theirs).abs().max()))
    print(f"\nLoRA apply vs ComfyUI calculate_weight: max|diff| = {worst:.2e}")
    assert worst < 1e-5


def test_apply_keeps_dtype_and_does_not_write_into_weights(tmp_path, shapes, weights):
    path = tmp_path / "lora.safetensors"
    write_tiny_lora(path, shapes, rank=2, alpha=2.0)
    lora = load_lora(path, shapes)
    bf16 = {k: v.bfloat16() for k, v in weights.items()}
    originals = {k: v.clone() for k, v in bf16.items()}
    out = apply_lora_(dict(bf16), lora, 1.0)
    key = next(iter(lora))
    assert out[key].dtype == torch.bfloat16
    assert all(torch.equal(bf16[k], originals[k]) for k in bf16)
    ref = (weights[key].bfloat16().float() + lora[key].delta(1.0).reshape(weights[key].shape)).bfloat16()
    assert torch.equal(out[key], ref)
    assert isinstance(lora[key], LoraPatch) and lora[key].rank == 2


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_bad_files_give_clear_errors(tmp_path, shapes, weights):
    with pytest.raises(FileNotFoundError):
        load_lora(tmp_path / "missing.safetensors", shapes)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(LoraError, match="not a readable safetensors"):
        load_lora(junk, shapes)

    model = tmp_path / "model.safetensors"
    save_file({k: torch.zeros(2) for k in list(shapes)[:5]}, str(model))
    with pytest.raises(LoraError, match="not a LoRA"):
        load_lora(model, shapes)

    other = tmp_path / "sdxl.safetensors"
    save_file({"down_blocks.0.attentions.0.to_q.lora_A.weight": torch.zeros(4, 8),
               "down_blocks.0.attentions.0.to_q.lora_B.weight": torch.zeros(8, 4)}, str(other))
    with pytest.raises(LoraError, match="another model"):
        load_lora(other, shapes)

    key = "transformer_blocks.0.attn.to_q"
    out_dim, in_dim = shapes[key + ".weight"]
    mismatch = tmp_path / "rank.safetensors"
    save_file({key + ".lora_A.weight": torch.zeros(4, in_dim), key + ".lora_B.weight": torch.zeros(out_dim, 3)},
              str(mismatch))
    with pytest.raises(LoraError, match="rank mismatch"):
        load_lora(mismatch, shapes)

    wrong = tmp_path / "size.safetensors"
    save_file({key + ".lora_A.weight": torch.zeros(4, in_dim + 1), key + ".lora_B.weight": torch.zeros(out_dim, 4)},
              str(wrong))
    with pytest.raises(LoraError, match="does not fit"):
        load_lora(wrong, shapes)
    lora = load_lora(wrong, set(shapes))  # without shapes the check happens when applying
    with pytest.raises(LoraError, match="does not fit"):
        apply_lora_(dict(weights), lora)
    with pytest.raises(LoraError, match="has no weight"):
        apply_lora_({}, lora)

    half = tmp_path / "half.safetensors"
    save_file({key + ".lora_A.weight": torch.zeros(4, in_dim)}, str(half))
    with pytest.raises(LoraError, match="no lora_B"):
        load_lora(half, shapes)

    dora = tmp_path / "dora.safetensors"
    save_file({key + ".lora_A.weight": torch.zeros(4, in_dim), key + ".lora_B.weight": torch.zeros(out_dim, 4),
               key + ".lora_magnitude_vector": torch.zeros(out_dim)}, str(dora))
    with pytest.raises(LoraError, match="DoRA"):
        load_lora(dora, shapes)

    bad_meta = tmp_path / "meta.safetensors"
    save_file({key + ".lora_A.weight": torch.zeros(4, in_dim), key + ".lora_B.weight": torch.zeros(out_dim, 4)},
              str(bad_meta), metadata={"lora_adapter_metadata": "{not json"})
    with pytest.raises(LoraError, match="not valid JSON"):
        load_lora(bad_meta, shapes)


def test_partially_matching_lora_warns(tmp_path, shapes):
    path = tmp_path / "mixed.safetensors"
    written = write_tiny_lora(path, shapes, rank=2, alpha=2.0, config=None)
    written["text_encoder.block.0.q.lora_A.weight"] = torch.zeros(2, 8)
    written["text_encoder.block.0.q.lora_B.weight"] = torch.zeros(8, 2)
    save_file(written, str(path), metadata={"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 2})})
    lora = load_lora(path, shapes)
    assert lora.unmatched == ["text_encoder.block.0.q"]
    assert any("no matching ACE-Step weight" in w for w in lora.warnings)
    assert len(lora) == len(lora_target_keys(shapes, ACE_STEP_LORA_TARGETS))
