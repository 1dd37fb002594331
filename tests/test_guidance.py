"""Guidance math against straightforward reference computations written from the formulas
(apg_guidance.py / the APG and CFG-Zero* papers), plus ERG query scaling against ComfyUI's
transformer with the original's forward hooks. Run with ``pytest -s`` for measured figures."""
import math
from types import SimpleNamespace

import pytest
import torch

from acestep_core.sampling.flow import cfg, original_sigmas, simple_sigmas
from acestep_core.sampling.guidance import (ERG_DIFFUSION_BLOCKS, ERG_LYRIC_LAYERS, ERG_TAG_BLOCKS, ERG_TAU,
                                            MomentumBuffer, apg, cfg_active, cfg_zero_star, denoised_from_velocity,
                                            double_condition_active, double_condition_guidance,
                                            erg_diffusion_modules, erg_lyric_modules, guidance_interval_active,
                                            guidance_interval_bounds, guidance_scale_at, optimized_scale,
                                            scaled_queries, step_index_from_sigma, velocity_from_denoised)
from reference import guidance_interval_active_for_sigma, guidance_scale_for_sigma


def fixed_preds(seed=0, shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(shape, generator=g)
    uncond = cond + 0.3 * torch.randn(shape, generator=g)
    # Make channel 0 of item 0 differ a lot, so norm clipping acts on some slices and not others.
    uncond[0, 0] += 3.0 * torch.randn(shape[2:], generator=g)
    return cond, uncond


# ---------------------------------------------------------------------------------------------
# APG
# ---------------------------------------------------------------------------------------------
def apg_reference(cond_steps, uncond_steps, scale, momentum=-0.75, eta=0.0, threshold=2.5):
    """Element-by-element APG over several steps, in float64 Python loops: running average,
    per-(item, channel) norm clip over (16, T), projection onto cond, recombination."""
    outs, avg = [], None
    clipped_any = unclipped_any = False
    for cond, uncond in zip(cond_steps, uncond_steps):
        c, u = cond.double(), uncond.double()
        diff = c - u
        avg = diff.clone() if avg is None else diff + momentum * avg
        out = torch.empty_like(c)
        B, C, H, W = c.shape
        for b in range(B):
            for ch in range(C):
                d = avg[b, ch].clone()
                norm = math.sqrt(sum(float(d[h, w]) ** 2 for h in range(H) for w in range(W)))
                if threshold > 0 and norm > threshold:
                    d = d * (threshold / norm)
                    clipped_any = True
                else:
                    unclipped_any = True
                cc = c[b, ch]
                cnorm = math.sqrt(sum(float(cc[h, w]) ** 2 for h in range(H) for w in range(W)))
                dot = sum(float(d[h, w]) * float(cc[h, w]) for h in range(H) for w in range(W)) / cnorm
                parallel = dot * cc / cnorm
                orthogonal = d - parallel
                out[b, ch] = cc + (scale - 1) * (orthogonal + eta * parallel)
        outs.append(out)
    assert clipped_any and unclipped_any  # the fixture exercises both branches of the clip
    return outs


def test_apg_with_momentum_over_several_steps_matches_reference():
    steps = [fixed_preds(seed) for seed in range(4)]
    conds, unconds = [c for c, _ in steps], [u for _, u in steps]
    ref = apg_reference(conds, unconds, scale=15.0)
    buffer = MomentumBuffer()
    worst = 0.0
    for i, (c, u) in enumerate(steps):
        out = apg(c, u, 15.0, buffer)
        assert out.dtype == c.dtype and out.shape == c.shape
        err = float((out.double() - ref[i]).abs().max() / ref[i].abs().max())
        worst = max(worst, err)
        assert err < 1e-6, (i, err)
    # The buffer holds the un-clipped running average: d3 + m*(d2 + m*(d1 + m*d0)).
    d = [c - u for c, u in steps]
    expected = d[3] + -0.75 * (d[2] + -0.75 * (d[1] + -0.75 * d[0]))
    assert torch.allclose(buffer.running_average, expected, atol=1e-6)
    print(f"\nAPG (momentum, 4 steps) vs loop reference: worst rel max|diff| = {worst:.2e}")


def test_apg_eta_and_no_momentum_variants():
    c, u = fixed_preds(7)
    for eta, threshold in ((0.0, 2.5), (0.5, 2.5), (1.0, 0.0), (0.3, 0.0)):
        ref = apg_reference([c], [u], 4.0, eta=eta, threshold=threshold) if threshold > 0 else None
        out = apg(c, u, 4.0, None, eta=eta, norm_threshold=threshold)
        if ref is not None:
            assert torch.allclose(out.double(), ref[0], atol=1e-5)
    # eta = 1 without clipping or momentum is plain CFG: c + (g-1)(c-u) = u + g(c-u).
    out = apg(c, u, 4.0, None, eta=1.0, norm_threshold=0.0)
    assert torch.allclose(out, cfg(c, u, 4.0), atol=1e-5)
    # No difference -> the conditional prediction, exactly.
    assert torch.equal(apg(c, c.clone(), 15.0, MomentumBuffer()), c)


def test_apg_keeps_dtype_and_projects_in_float64():
    c, u = fixed_preds(3)
    out16 = apg(c.bfloat16(), u.bfloat16(), 15.0)
    assert out16.dtype == torch.bfloat16
    ref = apg(c.bfloat16().float(), u.bfloat16().float(), 15.0)
    assert float((out16.float() - ref).abs().max()) <= 0.02 * float(ref.abs().max())
    # eta = 0: the guided update is orthogonal to cond in every (item, channel) slice.
    update = (apg(c, u, 2.0).double() - c.double())
    dots = (update * c.double()).sum(dim=(-2, -1))
    assert float(dots.abs().max()) < 1e-5


def test_momentum_buffer_reset():
    buf = MomentumBuffer(-0.5)
    a = torch.ones(2)
    assert torch.equal(buf.update(a), a)
    assert torch.equal(buf.update(a), a - 0.5 * a)
    buf.reset()
    assert torch.equal(buf.update(3 * a), 3 * a)


# ---------------------------------------------------------------------------------------------
# CFG-Zero* and double condition
# ---------------------------------------------------------------------------------------------
def test_cfg_zero_star_matches_reference_and_comfyui_scale():
    c, u = fixed_preds(11)
    B = c.shape[0]
    alpha_ref = []
    for b in range(B):
        cb, ub = c[b].double().flatten().tolist(), u[b].double().flatten().tolist()
        alpha_ref.append(sum(x * y for x, y in zip(cb, ub)) / (sum(y * y for y in ub) + 1e-8))
    alpha = optimized_scale(c, u)
    assert alpha.shape == (B, 1, 1, 1)
    assert torch.allclose(alpha.flatten().double(), torch.tensor(alpha_ref, dtype=torch.float64), atol=1e-6)

    from comfy_extras.nodes_cfg import optimized_scale as comfy_optimized_scale
    assert torch.allclose(alpha, comfy_optimized_scale(c, u), atol=1e-6)

    g = 6.0
    ref = torch.stack([a * u[b].double() + g * (c[b].double() - a * u[b].double())
                       for b, a in enumerate(alpha_ref)])
    out = cfg_zero_star(c, u, g, step_index=2)
    err = float((out.double() - ref).abs().max())
    print(f"\nCFG-Zero* vs reference: max|diff| = {err:.2e}")
    assert err < 1e-5
    # zero-init: steps 0..zero_steps (inclusive) give exactly zero velocity
    assert torch.equal(cfg_zero_star(c, u, g, 0), torch.zeros_like(c))
    assert torch.equal(cfg_zero_star(c, u, g, 1), torch.zeros_like(c))
    assert not torch.equal(cfg_zero_star(c, u, g, 2), torch.zeros_like(c))
    assert torch.equal(cfg_zero_star(c, u, g, 3, zero_steps=3), torch.zeros_like(c))
    assert torch.allclose(cfg_zero_star(c, u, g, 0, use_zero_init=False).double(), ref, atol=1e-5)
    # an all-zero uncond stays finite (alpha = 0 -> g * cond)
    out0 = cfg_zero_star(c, torch.zeros_like(u), g, 5)
    assert torch.allclose(out0, g * c)


def test_double_condition_matches_reference():
    g = torch.Generator().manual_seed(4)
    c, ct, u = (torch.randn(2, 8, 16, 6, generator=g) for _ in range(3))
    gt, gl = 5.0, 2.5
    out = double_condition_guidance(c, ct, u, gt, gl)
    ref = torch.empty_like(c)
    for idx in range(c.numel()):
        cv, ctv, uv = c.flatten()[idx].item(), ct.flatten()[idx].item(), u.flatten()[idx].item()
        ref.view(-1)[idx] = uv + gt * (ctv - uv) + gl * (cv - ctv)
    assert torch.allclose(out, ref, atol=1e-5)
    # equal scales: the text-only pass cancels and it is plain CFG
    assert torch.allclose(double_condition_guidance(c, ct, u, 3.0, 3.0), cfg(c, u, 3.0), atol=1e-5)
    assert double_condition_active(1.5, 2.0) and not double_condition_active(1.0, 2.0)
    assert not double_condition_active(None, 5.0) and not double_condition_active(0.0, 0.0)
    assert cfg_active(15.0) and not cfg_active(1.0) and not cfg_active(0.0)


# ---------------------------------------------------------------------------------------------
# Interval and decay
# ---------------------------------------------------------------------------------------------
def test_guidance_interval_bounds():
    assert guidance_interval_bounds(60, 0.5) == (15, 45)
    assert guidance_interval_bounds(60, 1.0) == (0, 60)
    assert guidance_interval_bounds(119, 0.5) == (29, 89)  # heun with 60 steps: 2N - 1 evaluations
    guided = [i for i in range(60) if guidance_interval_active(i, 60, 0.5)]
    assert guided == list(range(15, 45))
    for n in (1, 2, 3, 7, 27, 60, 200):
        for gi in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
            start, end = guidance_interval_bounds(n, gi)
            assert 0 <= start <= end <= n
            # the middle fraction gi of the steps, truncated
            assert start == math.floor(n * ((1 - gi) / 2)) and end == math.floor(n * (gi / 2 + 0.5))


def test_guidance_scale_decay_and_division_by_zero_edge():
    g, lo = 15.0, 3.0
    assert guidance_scale_at(14, 60, g, 0.5, 0.0, lo) is None
    assert guidance_scale_at(45, 60, g, 0.5, 0.0, lo) is None
    assert guidance_scale_at(30, 60, g, 0.5, 0.0, lo) == g
    # decay 1: linear from g on the first guided step to min on the last (15..44: 29 intervals)
    for i in range(15, 45):
        expected = g - (g - lo) * (i - 15) / 29 * 1.0
        assert guidance_scale_at(i, 60, g, 0.5, 1.0, lo) == pytest.approx(expected, abs=1e-12)
    assert guidance_scale_at(44, 60, g, 0.5, 1.0, lo) == pytest.approx(lo)
    assert guidance_scale_at(44, 60, g, 0.5, 0.5, lo) == pytest.approx(g - (g - lo) * 0.5)
    # one guided step (2 steps, interval 0.5 -> [0, 1)): the original divides by zero here
    assert guidance_interval_bounds(2, 0.5) == (0, 1)
    assert guidance_scale_at(0, 2, g, 0.5, 1.0, lo) == g
    assert guidance_scale_at(1, 2, g, 0.5, 1.0, lo) is None
    # an empty interval never guides
    assert all(guidance_scale_at(i, 10, g, 0.0, 1.0, lo) is None for i in range(10))


def test_sigma_based_variants_agree_with_step_based():
    for sigmas in (original_sigmas(60), simple_sigmas(27)):
        n = len(sigmas) - 1
        for i in range(n):
            s = sigmas[i]
            assert step_index_from_sigma(s, sigmas) == i
            assert step_index_from_sigma(float(s) * (1 + 1e-6), sigmas) == i  # float noise in the hook
            assert step_index_from_sigma(s.repeat(3), sigmas) == i          # one sigma per batch item
            expected = guidance_scale_at(i, n, 15.0, 0.5, 1.0, 3.0)
            assert guidance_scale_for_sigma(s, sigmas, 15.0, 0.5, 1.0, 3.0) == expected
            assert guidance_interval_active_for_sigma(s, sigmas, 0.5) == guidance_interval_active(i, n, 0.5)
    with pytest.raises(ValueError):
        step_index_from_sigma(float("nan"), original_sigmas(5))
    with pytest.raises(ValueError):
        step_index_from_sigma(0.5, [1.0])


def test_velocity_denoised_conversion():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 8, 16, 5, generator=g), torch.randn(2, 8, 16, 5, generator=g)
    sigma = torch.tensor([0.7, 0.2])
    x = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    v = velocity_from_denoised(x, x0, sigma)
    assert torch.allclose(v, eps - x0, atol=1e-5)
    assert torch.allclose(denoised_from_velocity(x, v, sigma), x0, atol=1e-5)
    assert torch.allclose(velocity_from_denoised(x[:1], x0[:1], 0.7), eps[:1] - x0[:1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ERG
# ---------------------------------------------------------------------------------------------
def test_erg_constants():
    assert ERG_TAU == 0.01
    assert ERG_DIFFUSION_BLOCKS == (15, 16, 17, 18, 19)
    assert ERG_LYRIC_LAYERS == (4, 5)
    assert ERG_TAG_BLOCKS == (8, 9)
    from acestep_core.models.text_encoder import ERG_TAG_QUERY_SCALES
    assert ERG_TAG_QUERY_SCALES == {b: ERG_TAU for b in ERG_TAG_BLOCKS}


def fake_transformer(blocks=24, lyric_layers=6):
    attn = lambda: SimpleNamespace(query_scale=1.0)  # noqa: E731
    return SimpleNamespace(
        transformer_blocks=[SimpleNamespace(attn=attn(), cross_attn=attn()) for _ in range(blocks)],
        lyric_encoder=SimpleNamespace(encoders=[SimpleNamespace(self_attn=attn()) for _ in range(lyric_layers)]))


def test_scaled_queries_sets_and_restores():
    tr = fake_transformer()
    diffusion = erg_diffusion_modules(tr)
    lyric = erg_lyric_modules(tr)
    assert len(diffusion) == 10 and len(lyric) == 2
    assert diffusion[0] is tr.transformer_blocks[15].attn and diffusion[-1] is tr.transformer_blocks[19].cross_attn
    assert lyric == [tr.lyric_encoder.encoders[4].self_attn, tr.lyric_encoder.encoders[5].self_attn]
    everything = [m for b in tr.transformer_blocks for m in (b.attn, b.cross_attn)]

    with scaled_queries(diffusion) as flat:
        assert len(flat) == 10
        scaled = {id(m) for m in diffusion}
        for m in everything:
            assert m.query_scale == (ERG_TAU if id(m) in scaled else 1.0)
        with scaled_queries([(tr.transformer_blocks[15].attn, tr.transformer_blocks[0].attn)], 0.5):
            assert tr.transformer_blocks[15].attn.query_scale == pytest.approx(0.005)  # nests by multiplying
            assert tr.transformer_blocks[0].attn.query_scale == 0.5
        assert tr.transformer_blocks[15].attn.query_scale == ERG_TAU
    assert all(m.query_scale == 1.0 for m in everything)

    # restored after an exception; a module listed twice is scaled once; generators accepted
    with pytest.raises(RuntimeError):
        with scaled_queries((m for m in lyric + lyric), 0.1):
            assert lyric[0].query_scale == pytest.approx(0.1)
            raise RuntimeError("boom")
    assert all(m.query_scale == 1.0 for m in lyric)

    with pytest.raises(TypeError):
        with scaled_queries([object()]):
            pass
    small = fake_transformer(blocks=2, lyric_layers=2)
    with pytest.raises(IndexError):
        erg_diffusion_modules(small)
    assert erg_diffusion_modules(small, strict=False) == []


@torch.no_grad()
def test_erg_scaling_matches_hooked_comfyui(monkeypatch):
    """Our transformer inside ``scaled_queries`` equals ComfyUI's with the original's ERG forward
    hooks (q projection outputs times tau) on the same blocks and the same random weights."""
    import comfy.ldm.ace.attention
    import comfy.ops
    from comfy.ldm.ace.lyric_encoder import ConformerEncoder
    from comfy.ldm.ace.model import ACEStepTransformer2DModel
    from comfy.ldm.modules.attention import attention_pytorch

    from acestep_core.config import LyricEncoderConfig, TransformerConfig
    from acestep_core.models.transformer import AceStepTransformer

    monkeypatch.setattr(comfy.ldm.ace.attention, "optimized_attention", attention_pytorch)
    cfg = TransformerConfig(num_layers=3, num_attention_heads=2, attention_head_dim=16, mlp_ratio=2.5,
                            speaker_embedding_dim=16, text_embedding_dim=24, ssl_latent_dims=(12, 10),
                            lyric_encoder_vocab_size=50, lyric_hidden_size=32,
                            lyric_encoder=LyricEncoderConfig(hidden_size=32, num_heads=4, ffn_size=64, num_layers=3))
    ours = AceStepTransformer(cfg).eval()
    theirs = ACEStepTransformer2DModel(
        audio_model="ace", attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels,
        inner_dim=cfg.inner_dim, max_height=cfg.max_height, max_position=cfg.max_position, max_width=32768,
        mlp_ratio=cfg.mlp_ratio, num_attention_heads=cfg.num_attention_heads, num_layers=cfg.num_layers,
        out_channels=cfg.out_channels, patch_size=list(cfg.patch_size), rope_theta=cfg.rope_theta,
        speaker_embedding_dim=cfg.speaker_embedding_dim, text_embedding_dim=cfg.text_embedding_dim,
        ssl_encoder_depths=[8, 8], ssl_latent_dims=list(cfg.ssl_latent_dims), ssl_names=["mert", "m-hubert"],
        lyric_encoder_vocab_size=cfg.lyric_encoder_vocab_size, lyric_hidden_size=cfg.lyric_hidden_size,
        operations=comfy.ops.disable_weight_init)
    lyr = cfg.lyric_encoder
    theirs.lyric_encoder = ConformerEncoder(input_size=lyr.hidden_size, output_size=lyr.hidden_size,
                                            attention_heads=lyr.num_heads, linear_units=lyr.ffn_size,
                                            num_blocks=lyr.num_layers, static_chunk_size=0,
                                            operations=comfy.ops.disable_weight_init)
    theirs.eval()
    g = torch.Generator().manual_seed(9)
    state = {k: (torch.randn(v.shape, generator=g) / math.sqrt(math.prod(v.shape[1:])) if v.ndim >= 2
                 else 1.0 + 0.1 * torch.randn(v.shape, generator=g))
             for k, v in ours.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)

    kwargs = dict(x=torch.randn(2, 8, 16, 7, generator=g), timestep=torch.tensor([150.0, 800.0]),
                  context=torch.randn(2, 5, cfg.text_embedding_dim, generator=g),
                  speaker_embeds=torch.zeros(2, cfg.speaker_embedding_dim),
                  lyric_token_idx=torch.randint(1, cfg.lyric_encoder_vocab_size, (2, 6), generator=g))
    blocks, layers = (1, 2), (1, 2)
    hooks = []
    scale = lambda module, inputs, output: output * ERG_TAU  # noqa: E731
    for i in blocks:
        hooks.append(theirs.transformer_blocks[i].attn.to_q.register_forward_hook(scale))
        hooks.append(theirs.transformer_blocks[i].cross_attn.to_q.register_forward_hook(scale))
    for i in layers:
        hooks.append(theirs.lyric_encoder.encoders[i].self_attn.linear_q.register_forward_hook(scale))
    try:
        ref = theirs(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    plain = ours(**kwargs)
    with scaled_queries([erg_diffusion_modules(ours, blocks), erg_lyric_modules(ours, layers)]):
        out = ours(**kwargs)
    after = ours(**kwargs)
    err = float((out - ref).abs().max() / max(1.0, float(ref.abs().max())))
    effect = float((plain - out).abs().max())
    print(f"\nERG (diffusion + lyric, tau 0.01) vs hooked ComfyUI: rel max|diff| = {err:.2e}, effect {effect:.3f}")
    assert err <= 1e-4
    assert effect > 1e-3
    assert torch.equal(after, plain)
