"""ACE-Step 1.5 model behaviour beyond the ComfyUI comparison: the memory / reuse fast paths give
the plain path's numbers, the tiny checkpoint writer's files read back, bad calls say what is wrong."""
from __future__ import annotations

import pytest
import torch

from acestep_core.ace15 import Ace15Model, config_from_state_dict_shapes, tiny_config
from acestep_core.ace15.layers import SwiGLU
from acestep_core.ace15.testing import SINGLE_FILE_DIT_PREFIX, random_state_dict, write_tiny_dit


@pytest.fixture(scope="module")
def model():
    config = tiny_config(sliding_window=2)
    model = Ace15Model(config)
    model.load_state_dict(random_state_dict(config, seed=3))
    return model.eval()


def inputs(batch=2, frames=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 64, frames, generator=g), timestep=torch.rand(batch, generator=g),
                context=torch.randn(batch, 6, 24, generator=g), lyric_embed=torch.randn(batch, 5, 24, generator=g),
                refer_audio=torch.randn(batch, 64, frames, generator=g))


def test_mlp_in_blocks_equals_one_pass():
    mlp = SwiGLU(16, 40)
    x = torch.randn(3, 11, 16)
    whole = mlp(x)
    mlp.rows_per_block = 4          # 33 rows in 9 blocks
    assert torch.allclose(mlp(x), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("extra", [{"is_covers": True}, {"is_covers": False},
                                   {"audio_codes": torch.tensor([[5, 63999, 12], [0, 1, 2]])}])
def test_reused_conditions_give_the_same_steps(model, extra):
    a = inputs()
    with torch.no_grad():
        plain = [model(a["x"], t, a["context"], a["lyric_embed"], a["refer_audio"], **extra)
                 for t in (torch.tensor([0.9, 0.9]), torch.tensor([0.4, 0.4]))]
        with model.reuse_conditions():
            reused = [model(a["x"], t, a["context"], a["lyric_embed"], a["refer_audio"], **extra)
                      for t in (torch.tensor([0.9, 0.9]), torch.tensor([0.4, 0.4]))]
            assert len(model._reused) >= 1
            # a different caption is not served from the reuse list
            other = model(a["x"], torch.tensor([0.4, 0.4]), a["context"] + 1, a["lyric_embed"], a["refer_audio"],
                          **extra)
        assert model._reused is None
    for p, r in zip(plain, reused):
        assert torch.equal(p, r)
    assert not torch.allclose(other, reused[1])


def test_null_condition_has_the_encoder_length(model):
    a = inputs()
    order = torch.arange(2)
    with torch.no_grad():
        encoded, _ = model.encoder(a["context"], None, a["lyric_embed"], None, a["refer_audio"].movedim(-1, -2), order)
        null = model.null_condition(a["context"], a["lyric_embed"], order)
    assert null.shape == encoded.shape
    assert torch.equal(null[1, 3], model.null_condition_emb[0, 0])


def test_missing_inputs_say_what_is_needed(model):
    a = inputs()
    with pytest.raises(ValueError, match="lyric_embed"):
        model(a["x"], a["timestep"], a["context"], None, a["refer_audio"])
    with pytest.raises(ValueError, match="at least as long"):
        model(a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"][:, :, :4], is_covers=True)


@pytest.mark.parametrize("prefix", ["", SINGLE_FILE_DIT_PREFIX])
def test_tiny_checkpoint_reads_back(tmp_path, prefix):
    from safetensors import safe_open
    path = write_tiny_dit(tmp_path / "tiny.safetensors", seed=5, prefix=prefix, dtype=torch.bfloat16)
    with safe_open(str(path), "pt") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
        state = {key[len(prefix):]: f.get_tensor(key) for key in f.keys()}
    assert all(key.startswith(prefix) for key in shapes)
    config = config_from_state_dict_shapes(shapes, prefix=prefix)
    assert config == tiny_config()
    model = Ace15Model(config, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True)
    a = inputs(batch=1, frames=9)
    with torch.no_grad():
        out = model(*(v.bfloat16() for v in (a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"])))
    assert out.shape == (1, 64, 9) and torch.isfinite(out.float()).all()


def test_kv_heads_copied_or_grouped_by_sdpa_agree(model, monkeypatch):
    """The grouped-KV fast path (SDPA enable_gqa) and the copy path for older torch agree."""
    from acestep_core.ace15 import layers
    a = inputs()
    with torch.no_grad():
        fast = model(a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"], is_covers=True)
        monkeypatch.setattr(layers, "SDPA_GROUPS_KV_HEADS", False)
        copied = model(a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"], is_covers=True)
    assert torch.allclose(fast, copied, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_cpu_fast_paths_give_the_plain_math(model, monkeypatch, dtype, tolerance):
    """The fused RMSNorm / adaLN / RoPE alternatives (layers.CPU_FAST_PATHS) against the plain
    module calls: float32 up to summation order, bfloat16 within its rounding (the fast path
    rounds once, the plain path after every operation)."""
    from acestep_core.ace15 import layers
    a = {k: v.to(dtype) for k, v in inputs().items()}
    m = Ace15Model(model.config, dtype=dtype)
    m.load_state_dict(model.state_dict())
    m.eval()
    with torch.no_grad():
        fast = m(a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"], is_covers=True).float()
        monkeypatch.setattr(layers, "CPU_FAST_PATHS", False)
        plain = m(a["x"], a["timestep"], a["context"], a["lyric_embed"], a["refer_audio"], is_covers=True).float()
    assert not torch.equal(fast, torch.zeros_like(fast))
    assert (fast - plain).abs().max().item() <= tolerance * max(1.0, plain.abs().max().item())


def test_fast_norm_and_rotary_equal_their_formulas():
    from acestep_core.ace15.layers import Attention, apply_rotary, rms_norm, rotary_cos_sin
    g = torch.Generator().manual_seed(1)
    norm = torch.nn.RMSNorm(16, eps=1e-6)
    norm.weight.data = torch.rand(16, generator=g) + 0.5
    x = torch.randn(2, 7, 16, generator=g) * 3
    scale, shift = torch.randn(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g)
    assert torch.allclose(rms_norm(norm, x), norm(x), atol=1e-6, rtol=0)
    assert torch.allclose(rms_norm(norm, x, scale, shift), norm(x) * (1 + scale) + shift, atol=1e-5, rtol=0)
    # q / k: [B, L, heads, head_dim] -> norm over head_dim, RoPE, as [B, heads, L, head_dim]
    heads = torch.randn(2, 7, 3, 16, generator=g)
    cos, sin = rotary_cos_sin(7, 16, 1e4, heads)
    fast = Attention._normed_rotary_fast(heads.clone(), norm, (cos, sin)).transpose(1, 2)
    assert torch.allclose(fast, apply_rotary(norm(heads).transpose(1, 2), cos, sin), atol=1e-5, rtol=0)
