"""The diffusion transformer and lyric encoder against ComfyUI's ACE-Step implementation.

Structure at the real size is compared on the meta device; numerics at tiny sizes with the same
random weights loaded into both models (fp32, max|diff| <= 1e-4 relative to max(1, max|ref|)).
Run with ``pytest -s`` to see the measured differences.
"""
import dataclasses
import math

import pytest
import torch

import comfy.ldm.ace.attention
import comfy.ops
from comfy.ldm.ace.attention import Attention, CustomLiteLAProcessor2_0
from comfy.ldm.ace.lyric_encoder import ConformerEncoder
from comfy.ldm.ace.model import ACEStepTransformer2DModel, Qwen2RotaryEmbedding
from comfy.ldm.modules.attention import attention_pytorch

from acestep_core.config import ConfigError, LyricEncoderConfig, TransformerConfig
from acestep_core.models.attention import LinearSelfAttention, apply_rope, rope_tables
from acestep_core.models.lyric_encoder import LyricEncoder
from acestep_core.models.transformer import AceStepTransformer, infer_transformer_config

OPS = comfy.ops.disable_weight_init
TOL = 1e-4

# Two tiny configs: small heads (fast), and the released head size 128 with 2 heads.
SMALL = TransformerConfig(
    num_layers=2, num_attention_heads=2, attention_head_dim=32, mlp_ratio=2.5,
    speaker_embedding_dim=16, text_embedding_dim=24, ssl_latent_dims=(12, 10),
    lyric_encoder_vocab_size=50, lyric_hidden_size=32,
    lyric_encoder=LyricEncoderConfig(hidden_size=32, num_heads=4, ffn_size=64, num_layers=2))
HEAD128 = dataclasses.replace(SMALL, attention_head_dim=128, mlp_ratio=1.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tensors here are tiny: extra threads only add synchronisation, which costs seconds on a
    # busy machine. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _comfy_pytorch_attention(monkeypatch):
    # In --cpu mode ComfyUI picks its sub-quadratic attention, which cannot take ACE's
    # [B, H, T, S] cross-attention mask; on a GPU it uses PyTorch's SDPA, as here.
    monkeypatch.setattr(comfy.ldm.ace.attention, "optimized_attention", attention_pytorch)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def comfy_config(cfg: TransformerConfig) -> dict:
    """ComfyUI's constructor arguments for ``cfg`` (the real one: comfy/model_detection.py)."""
    return dict(audio_model="ace", attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels,
                inner_dim=cfg.inner_dim, max_height=cfg.max_height, max_position=cfg.max_position,
                max_width=32768, mlp_ratio=cfg.mlp_ratio, num_attention_heads=cfg.num_attention_heads,
                num_layers=cfg.num_layers, out_channels=cfg.out_channels, patch_size=list(cfg.patch_size),
                rope_theta=cfg.rope_theta, speaker_embedding_dim=cfg.speaker_embedding_dim,
                text_embedding_dim=cfg.text_embedding_dim, ssl_encoder_depths=[8, 8],
                ssl_latent_dims=list(cfg.ssl_latent_dims), ssl_names=["mert", "m-hubert"],
                lyric_encoder_vocab_size=cfg.lyric_encoder_vocab_size, lyric_hidden_size=cfg.lyric_hidden_size)


def comfy_lyric_encoder(cfg: LyricEncoderConfig, device=None):
    return ConformerEncoder(input_size=cfg.hidden_size, output_size=cfg.hidden_size, attention_heads=cfg.num_heads,
                            linear_units=cfg.ffn_size, num_blocks=cfg.num_layers, static_chunk_size=0,
                            device=device, operations=OPS)


def comfy_transformer(cfg: TransformerConfig, device=None):
    model = ACEStepTransformer2DModel(**comfy_config(cfg), device=device, operations=OPS)
    if cfg.lyric_encoder != LyricEncoderConfig():
        # ComfyUI hard-codes the released Conformer sizes; swap in one of the tiny sizes.
        model.lyric_encoder = comfy_lyric_encoder(cfg.lyric_encoder, device=device)
    return model


def shapes_of(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def random_state(module, seed=0) -> dict:
    """Non-trivial values for every tensor: matrices ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1),
    modulation tables and attention biases ~ N(0, 0.2), other vectors ~ N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in module.state_dict().items():
        if t.ndim >= 2 and "scale_shift_table" not in key and "pos_bias" not in key:
            value = torch.randn(t.shape, generator=g) / math.sqrt(math.prod(t.shape[1:]))
        elif "scale_shift_table" in key or "pos_bias" in key:
            value = 0.2 * torch.randn(t.shape, generator=g)
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            value = 0.1 * torch.randn(t.shape, generator=g)
        state[key] = value
    return state


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    assert torch.isfinite(ref).all() and torch.isfinite(ours).all()
    return float((ours.float() - ref.float()).abs().max() / max(1.0, float(ref.float().abs().max())))


@pytest.fixture(scope="module", params=[SMALL, HEAD128], ids=["heads2x32", "heads2x128"])
def pair(request):
    cfg = request.param
    ours = AceStepTransformer(cfg).eval()
    theirs = comfy_transformer(cfg).eval()
    state = random_state(ours, seed=1)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    return cfg, ours, theirs


# ---------------------------------------------------------------------------------------------
# structure at the real size
# ---------------------------------------------------------------------------------------------
def test_real_config_state_dict_matches_comfyui():
    import comfy.model_detection
    cfg = TransformerConfig.released()
    ours = AceStepTransformer(cfg, device="meta")
    # ComfyUI's own detection result for an ACE-Step file (it only looks for genre_embedder).
    detected = comfy.model_detection.detect_unet_config(
        {k: v for k, v in ours.state_dict().items()}, "")
    assert detected == comfy_config(cfg)
    theirs = ACEStepTransformer2DModel(**detected, device="meta", operations=OPS)
    ours_shapes, theirs_shapes = shapes_of(ours), shapes_of(theirs)
    assert set(ours_shapes) == set(theirs_shapes), (sorted(set(ours_shapes) ^ set(theirs_shapes))[:10])
    assert ours_shapes == theirs_shapes
    assert len(ours_shapes) == 874  # model.diffusion_model.* tensors of the released ace_step_v1_3.5b.safetensors
    assert sum(math.prod(s) for s in ours_shapes.values()) == 3_305_659_264
    assert not list(ours.named_buffers())  # rotary tables are not state
    assert ours.dtype == torch.float32
    print(f"\nreal config: {len(ours_shapes)} tensors, identical keys and shapes")


def test_real_lyric_encoder_state_dict_matches_comfyui():
    ours = LyricEncoder(LyricEncoderConfig(), device="meta")
    theirs = ConformerEncoder(input_size=1024, static_chunk_size=0, device="meta", operations=OPS)
    assert shapes_of(ours) == shapes_of(theirs)


def test_meta_construction_keeps_dtype():
    ours = AceStepTransformer(TransformerConfig.released(), device="meta", dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# config inference
# ---------------------------------------------------------------------------------------------
def test_infer_config_real_and_tiny():
    real = shapes_of(AceStepTransformer(TransformerConfig.released(), device="meta"))
    assert infer_transformer_config(real) == TransformerConfig.released()
    assert infer_transformer_config(real, {"attention_head_dim": 128, "rope_theta": 1e6}) == TransformerConfig.released()
    wide_heads = infer_transformer_config(real, {"attention_head_dim": 64})
    assert (wide_heads.num_attention_heads, wide_heads.inner_dim) == (40, 2560)
    with pytest.raises(ConfigError, match="not a multiple"):
        infer_transformer_config(real, {"attention_head_dim": 96})

    for cfg in (SMALL, HEAD128):
        shapes = shapes_of(AceStepTransformer(cfg, device="meta"))
        assert infer_transformer_config(shapes, {"attention_head_dim": cfg.attention_head_dim}) == cfg
    # Without a config the head size is the released 128; SMALL's width 64 cannot be split so.
    with pytest.raises(ConfigError, match="head size"):
        infer_transformer_config(shapes_of(AceStepTransformer(SMALL, device="meta")))


def test_infer_config_errors_and_optional_projectors():
    real = shapes_of(AceStepTransformer(TransformerConfig.released(), device="meta"))
    no_lyrics = {k: v for k, v in real.items() if k != "lyric_embs.weight"}
    with pytest.raises(ConfigError, match="lyric_embs.weight"):
        infer_transformer_config(no_lyrics)
    gap = {k: v for k, v in real.items() if not k.startswith("transformer_blocks.5.")}
    with pytest.raises(ConfigError, match="gaps"):
        infer_transformer_config(gap)
    # A file without the training-only REPA heads gives a model without them.
    bare = {k: v for k, v in real.items() if not k.startswith("projectors.")}
    cfg = infer_transformer_config(bare)
    assert cfg.ssl_latent_dims == ()
    assert set(shapes_of(AceStepTransformer(cfg, device="meta"))) == set(bare)


# ---------------------------------------------------------------------------------------------
# numerics at tiny sizes
# ---------------------------------------------------------------------------------------------
def test_rope_matches_comfyui_including_pairing_quirk():
    for head_dim in (32, 128):
        table = Qwen2RotaryEmbedding(head_dim, max_position_embeddings=64, base=1e6)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(2, 40, 3, head_dim).to(dtype)  # [B, S, H, D]
            ref = CustomLiteLAProcessor2_0().apply_rotary_emb(x.transpose(1, 2), table(x, seq_len=40)).transpose(1, 2)
            ours = apply_rope(x, *rope_tables(40, head_dim, 1e6, dtype=dtype)).to(dtype)
            assert torch.equal(ours, ref), (head_dim, dtype, rel_err(ours, ref))
    # The quirk itself: a pair (2m, 2m+1) is rotated with two different frequencies, so the pair
    # norm is not preserved (a textbook RoPE would preserve it).
    x = torch.zeros(1, 5, 1, 32)
    x[..., 2:4] = 1.0
    y = apply_rope(x, *rope_tables(5, 32, 1e6))
    assert not torch.allclose(y[0, 4, 0, 2:4].norm(), torch.tensor(math.sqrt(2.0)), atol=1e-3)


@torch.no_grad()
def test_linear_self_attention_equals_comfyui_processor_bit_for_bit():
    """Float32, the released head size: our linear self-attention runs ComfyUI's operations
    (CustomLiteLAProcessor2_0) in their order and layouts, so the output is the same to the bit,
    with and without a padded frame (an einsum formulation differed by ~2e-7 relative)."""
    heads, head_dim, frames = 2, 128, 33
    dim = heads * head_dim
    ours = LinearSelfAttention(dim, heads, head_dim).eval()
    theirs = Attention(query_dim=dim, dim_head=head_dim, heads=heads, out_dim=dim, bias=True,
                       processor=CustomLiteLAProcessor2_0(), operations=OPS).eval()
    state = random_state(ours, seed=7)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, frames, dim, generator=torch.Generator().manual_seed(8))
    rotary = Qwen2RotaryEmbedding(head_dim, max_position_embeddings=64, base=1e6)(x, seq_len=frames)
    padded = torch.ones(2, frames)
    padded[1, 20:] = 0
    for mask in (None, padded):
        expected = theirs(x, attention_mask=mask, rotary_freqs_cis=rotary)[0]
        got = ours(x, rope_tables(frames, head_dim, 1e6), mask)
        assert torch.equal(got, expected), (mask is not None, rel_err(got, expected))


@torch.no_grad()
def test_forward_in_reference_order_equals_comfyui_bit_for_bit():
    """Float32, given ComfyUI's attention function for the cross-attention and ``reference_order``
    (the feed-forward in ComfyUI's own steps; the fast path's 1x1 convs as matrix products round
    differently), the whole model gives ComfyUI's output to the bit: patch embedding, modulation,
    both attentions, feed-forward, lyric encoder and output layer compute the reference's
    operations in its order. This is how the ComfyUI bridge builds it."""
    cfg = HEAD128
    attention = comfy.ldm.ace.attention.optimized_attention     # what ComfyUI's model calls

    def comfy_attention(q, k, v, mask=None, transformer_options=None):
        return attention(q, k, v, heads=q.shape[1], mask=mask, skip_reshape=True,
                         transformer_options=transformer_options or {})

    ours = AceStepTransformer(cfg, attention_function=comfy_attention, reference_order=True).eval()
    theirs = comfy_transformer(cfg).eval()
    state = random_state(ours, seed=1)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    for name, kwargs in _cases(cfg, torch.Generator().manual_seed(3), (7,)):
        if "padded latent" in name:
            continue      # padded frames: the reference's -inf score rows, ours zeroed (see _cases)
        expected = theirs(**kwargs, transformer_options={})
        got = ours(**kwargs, transformer_options={})
        assert torch.equal(got, expected), (name, rel_err(got, expected))


def _cases(cfg, generator, widths):
    """(name, kwargs) of forward calls covering timesteps, masks, empty lyrics, lyrics_strength and
    odd latent lengths. ``comfy_extra`` holds arguments given to ComfyUI's model only."""
    def rnd(*shape):
        return torch.randn(*shape, generator=generator)

    def ids(batch, length):
        return torch.randint(0, cfg.lyric_encoder_vocab_size, (batch, length), generator=generator)

    text = rnd(2, 6, cfg.text_embedding_dim)
    zeros_spk = torch.zeros(2, cfg.speaker_embedding_dim)
    text_mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    lyric_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    for width in widths:
        ones = torch.ones(2, width)

        def common(t, speaker=zeros_spk):
            return dict(x=rnd(2, 8, 16, width), timestep=torch.tensor(t), context=text, speaker_embeds=speaker)

        yield f"T{width} no masks", dict(common([0.0, 999.0]), lyric_token_idx=ids(2, 9))
        # ComfyUI needs the latent mask too once the context is masked (all ones in the pipeline).
        yield f"T{width} masked", dict(common([250.5, 999.0]), lyric_token_idx=ids(2, 9),
                                       text_attention_mask=text_mask, lyric_mask=lyric_mask, attention_mask=ones)
        # The original's empty lyrics: one token 0 with mask 0 (a fully masked lyric encoder row).
        yield f"T{width} empty lyrics masked", dict(common([500.0, 10.0], rnd(2, cfg.speaker_embedding_dim)),
                                                     lyric_token_idx=torch.zeros(2, 1, dtype=torch.long),
                                                     lyric_mask=torch.zeros(2, 1), text_attention_mask=text_mask,
                                                     attention_mask=ones)
        yield f"T{width} zero lyrics, strength 0.4", dict(common([250.5, 0.0]), lyrics_strength=0.4,
                                                          lyric_token_idx=torch.zeros(2, 3, dtype=torch.long))
        if width > 2:
            pad = torch.ones(2, width)
            pad[1, width // 2:] = 0
            # The reference fails on a latent mask without a context mask (it feeds the [B, T] mask
            # to SDPA as scores); ours equals the reference given all-ones context masks.
            yield f"T{width} padded latent", dict(common([999.0, 250.5]), lyric_token_idx=ids(2, 4),
                                                  attention_mask=pad,
                                                  comfy_extra=dict(text_attention_mask=torch.ones(2, 6),
                                                                   lyric_mask=torch.ones(2, 4)))
            yield f"T{width} controlnet residual", dict(common([700.0, 700.0]), lyric_token_idx=ids(2, 4),
                                                        block_controlnet_hidden_states=rnd(2, width, cfg.inner_dim),
                                                        controlnet_scale=0.7)
            yield f"T{width} padded latent, masked", dict(common([30.0, 600.0]), lyric_token_idx=ids(2, 9),
                                                          attention_mask=pad, text_attention_mask=text_mask,
                                                          lyric_mask=lyric_mask)


@torch.no_grad()
def test_forward_matches_comfyui(pair):
    cfg, ours, theirs = pair
    worst = 0.0
    figures = []
    widths = (1, 7, 33) if cfg is SMALL else (7,)  # the 128-wide heads: one length keeps it fast
    for name, kwargs in _cases(cfg, torch.Generator().manual_seed(3), widths):
        extra = kwargs.pop("comfy_extra", {})
        ref = theirs(**kwargs, **extra, transformer_options={})
        out = ours(**kwargs, transformer_options={}, control=None)
        err = rel_err(out, ref)
        figures.append((name, err, float(ref.abs().max())))
        worst = max(worst, err)
        assert err <= TOL, (name, err)
    print(f"\n[{cfg.num_attention_heads}x{cfg.attention_head_dim}] forward vs ComfyUI: {len(figures)} cases, "
          f"worst rel max|diff| = {worst:.2e}")
    for name, err, scale in figures:
        print(f"    {name:40s} {err:.2e} (max|ref| {scale:.2f})")


@torch.no_grad()
def test_query_scale_matches_hooked_comfyui(pair):
    """``query_scale`` multiplies the q projection, the place the original's ERG hooks."""
    cfg, ours, theirs = pair
    hooks = []

    def scale_output(factor):
        return lambda module, inputs, output: output * factor

    ours.transformer_blocks[1].attn.query_scale = 0.3
    ours.transformer_blocks[1].cross_attn.query_scale = 0.5
    ours.lyric_encoder.encoders[1].self_attn.query_scale = 0.01
    hooks.append(theirs.transformer_blocks[1].attn.to_q.register_forward_hook(scale_output(0.3)))
    hooks.append(theirs.transformer_blocks[1].cross_attn.to_q.register_forward_hook(scale_output(0.5)))
    hooks.append(theirs.lyric_encoder.encoders[1].self_attn.linear_q.register_forward_hook(scale_output(0.01)))
    try:
        g = torch.Generator().manual_seed(5)
        kwargs = dict(x=torch.randn(2, 8, 16, 9, generator=g), timestep=torch.tensor([100.0, 700.0]),
                      context=torch.randn(2, 4, cfg.text_embedding_dim, generator=g),
                      speaker_embeds=torch.zeros(2, cfg.speaker_embedding_dim),
                      lyric_token_idx=torch.randint(0, cfg.lyric_encoder_vocab_size, (2, 7), generator=g))
        ref, out = theirs(**kwargs), ours(**kwargs)
        ours.transformer_blocks[1].attn.query_scale = 1.0
        ours.transformer_blocks[1].cross_attn.query_scale = 1.0
        ours.lyric_encoder.encoders[1].self_attn.query_scale = 1.0
        plain = ours(**kwargs)
    finally:
        for h in hooks:
            h.remove()
        for block in ours.transformer_blocks:
            block.attn.query_scale = block.cross_attn.query_scale = 1.0
        for layer in ours.lyric_encoder.encoders:
            layer.self_attn.query_scale = 1.0
    err = rel_err(out, ref)
    print(f"\nquery_scale vs hooked ComfyUI: {err:.2e}; effect size {float((plain - out).abs().max()):.3f}")
    assert err <= TOL
    assert float((plain - out).abs().max()) > 1e-3


@torch.no_grad()
def test_encode_decode_split_and_lyric_broadcast(pair):
    cfg, ours, _ = pair
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, 16, 5, generator=g)
    text = torch.randn(1, 4, cfg.text_embedding_dim, generator=g).expand(3, -1, -1)
    ids = torch.randint(0, cfg.lyric_encoder_vocab_size, (1, 6), generator=g)
    full = ours(x, torch.tensor([1.0, 2.0, 3.0]), context=text, lyric_token_idx=ids.expand(3, -1),
                speaker_embeds=torch.zeros(3, cfg.speaker_embedding_dim))
    ctx, mask = ours.encode(text, lyric_token_idx=ids)  # batch-1 lyrics shared; speaker None = zeros
    assert mask is None and ctx.shape == (3, 1 + 4 + 6, cfg.inner_dim)
    split = ours.decode(x, torch.tensor([1.0, 2.0, 3.0]), ctx)
    assert rel_err(split, full) < 1e-6
    # Masks: speaker always kept, missing parts count as real tokens.
    _, mask = ours.encode(text, lyric_token_idx=ids, lyric_mask=torch.tensor([[1, 1, 1, 0, 0, 0]]))
    assert mask.dtype == torch.bool and mask.shape == (3, 11)
    assert mask[:, :5].all() and mask[:, 5:8].all() and not mask[:, 8:].any()
    # No lyric tokens at all: the context is speaker + text.
    ctx0, _ = ours.encode(text, lyric_token_idx=torch.zeros(3, 0, dtype=torch.long))
    assert ctx0.shape == (3, 5, cfg.inner_dim) and torch.isfinite(ctx0).all()
    # A scalar timestep is shared by the batch; output_length pads/crops the time axis.
    assert rel_err(ours.decode(x, 2.0, ctx), ours.decode(x, torch.full((3,), 2.0), ctx)) == 0.0
    padded = ours.decode(x, 2.0, ctx, output_length=8)
    assert padded.shape[-1] == 8 and not padded[..., 5:].any()
    assert ours.decode(x, 2.0, ctx, output_length=3).shape[-1] == 3


@torch.no_grad()
def test_lyric_encoder_matches_comfyui():
    cfg = LyricEncoderConfig(hidden_size=48, num_heads=4, ffn_size=96, num_layers=3)
    ours = LyricEncoder(cfg).eval()
    theirs = comfy_lyric_encoder(cfg).eval()
    state = random_state(ours, seed=2)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(4)
    figures = []
    for length in (1, 2, 13):
        emb = torch.randn(3, length, 48, generator=g)
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, length // 2 + 1:] = 0   # padding
        mask[2] = 0                      # nothing real: attention output must be exactly 0, not NaN
        for m in (None, mask):
            ref, _ = theirs(emb, m, decoding_chunk_size=1, num_decoding_left_chunks=-1)
            out = ours(emb, m)
            figures.append(rel_err(out, ref))
            # The reference's attention operations in its order: float32 gives the same bits.
            assert torch.equal(out, ref), (length, m is None, figures[-1])
    print(f"\nlyric encoder vs ComfyUI: worst rel max|diff| = {max(figures):.2e} over {len(figures)} cases")

    # The fully masked row: its attention output is exactly zero (only linear_out's bias remains).
    attn = ours.encoders[0].self_attn
    x = torch.randn(1, 4, 48, generator=g)
    out = attn(x, torch.randn(1, 7, 48, generator=g), torch.zeros(1, 4, dtype=torch.bool))
    assert torch.equal(out, attn.linear_out.bias.expand_as(out))


def _naive_sdpa(q, k, v, attn_mask=None, scale=None, **_):
    """Softmax attention that, like some GPU kernels, gives NaN for a row with no allowed key."""
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1) @ v


@torch.no_grad()
def test_fully_masked_rows_are_zero_whatever_the_attention_backend(pair, monkeypatch):
    """PyTorch's CPU attention already returns 0 for an all -inf row; other backends may give NaN.
    Our layers must give the reference's 0 either way."""
    cfg, ours, theirs = pair
    g = torch.Generator().manual_seed(11)
    kwargs = dict(x=torch.randn(2, 8, 16, 6, generator=g), timestep=torch.tensor([400.0, 800.0]),
                  context=torch.randn(2, 6, cfg.text_embedding_dim, generator=g),
                  speaker_embeds=torch.zeros(2, cfg.speaker_embedding_dim),
                  lyric_token_idx=torch.zeros(2, 1, dtype=torch.long), lyric_mask=torch.zeros(2, 1),
                  text_attention_mask=torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]]),
                  attention_mask=torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3]))
    ref = theirs(**kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _naive_sdpa)
    out = ours(**kwargs)
    assert rel_err(out, ref) <= TOL


@torch.no_grad()
def test_bf16_close_to_fp32():
    cfg = HEAD128
    ours32 = AceStepTransformer(cfg).eval()
    state = random_state(ours32, seed=9)
    ours32.load_state_dict(state)
    ours16 = AceStepTransformer(cfg, dtype=torch.bfloat16).eval()
    ours16.load_state_dict(state)
    assert {p.dtype for p in ours16.parameters()} == {torch.bfloat16}
    g = torch.Generator().manual_seed(8)
    kwargs = dict(x=torch.randn(2, 8, 16, 21, generator=g), timestep=torch.tensor([900.0, 30.0]),
                  context=torch.randn(2, 5, cfg.text_embedding_dim, generator=g),
                  lyric_token_idx=torch.randint(0, cfg.lyric_encoder_vocab_size, (2, 8), generator=g),
                  text_attention_mask=torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]), lyric_mask=torch.ones(2, 8))
    ref = ours32(**kwargs)
    out = ours16(**kwargs)
    assert out.dtype == torch.bfloat16
    err = rel_err(out, ref)
    print(f"\nbf16 vs fp32 (ours): rel max|diff| = {err:.2e}")
    assert err < 5e-2


def _feed_forward_and_comfyui_glumbconv(dtype, reference_order=False):
    """(our GLUConvFeedForward, ComfyUI's GLUMBConv with the same random weights, an input)."""
    from comfy.ldm.ace.attention import GLUMBConv

    from acestep_core.models import transformer
    torch.manual_seed(0)
    ours = transformer.GLUConvFeedForward(64, 160, dtype=dtype, reference_order=reference_order)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    theirs = GLUMBConv(64, 160, use_bias=(True, True, False), act=("silu", "silu", None), dtype=dtype,
                       operations=comfy.ops.disable_weight_init)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs, torch.randn(2, 37, 64).to(dtype)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_feed_forward_blocks_equal_the_reference_convolutions(monkeypatch, dtype, tolerance):
    """The feed-forward (1x1 convs as matrix products, the depthwise conv as shifted multiply-adds
    on blocks of channels) against ComfyUI's GLUMBConv on the same weights, with one channel block
    and with several (the last one partial)."""
    from acestep_core.models import transformer
    ours, theirs, x = _feed_forward_and_comfyui_glumbconv(dtype)
    expected = theirs(x).float()
    one_block = ours(x).float()
    monkeypatch.setattr(transformer, "FF_MIN_BLOCK_CHANNELS", 48)
    monkeypatch.setattr(transformer, "FF_BLOCK_ELEMENTS_CPU", 1)
    four_blocks = ours(x).float()
    scale = expected.abs().max().item()
    errors = [(out - expected).abs().max().item() / scale for out in (one_block, four_blocks)]
    print(f"\nfeed-forward {dtype}, relative max|delta| vs ComfyUI: one block {errors[0]:.2e}, four {errors[1]:.2e}")
    assert max(errors) <= tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_reference_order_equals_comfyui_bit_for_bit(dtype):
    """``reference_order`` (what the ComfyUI bridge asks for): the feed-forward runs ComfyUI's
    GLUMBConv steps and gives its output to the bit, in float32 and bfloat16; the fast path stays
    within its tolerance of it."""
    ours, theirs, x = _feed_forward_and_comfyui_glumbconv(dtype, reference_order=True)
    expected = theirs(x)
    assert torch.equal(ours(x), expected)
    fast = ours.forward_fast(x).float()
    assert (fast - expected.float()).abs().max() / expected.float().abs().max() <= (1e-5 if dtype == torch.float32
                                                                                     else 3e-2)
