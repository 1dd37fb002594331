"""Retake / repaint / extend / flow-edit math against reference loops written from the
original's algorithm (acestep/pipeline_ace_step.py ``text2music_diffusion_process``, ``flowedit_diffusion_process``), with its known bugs fixed where noted."""
import math

import pytest
import torch

from acestep_core.constants import frames_for_seconds
from acestep_core.sampling.flow import original_sigmas
from acestep_core.sampling.guidance import MomentumBuffer, apg
from acestep_core.tasks import (EDIT_PRESETS, MAX_EXTEND_FRAMES, edit_phase, edit_step_range, extend_assemble,
                                extend_frames, extend_latent, extend_noise, flowedit_sample, flowedit_step,
                                flowedit_target_start, flowedit_velocity, repaint_mask, repaint_noise,
                                repaint_start_step, retake_noise, seconds_to_frame)
from reference import reimpose_known, repaint_initial_latent, repaint_step

FRAME_RATE = 44100 / 512 / 8  # latent frames per second


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# seconds -> frames, repaint mask
# ---------------------------------------------------------------------------------------------
def test_seconds_to_frame_matches_frames_for_seconds_and_floors_negatives():
    for s in [0.0, 0.05, 0.0929, 0.0930, 1.0, 7.3, 29.99, 30.0, 60.0, 123.456, 240.0]:
        assert seconds_to_frame(s) == frames_for_seconds(s), s
    assert frames_for_seconds(240.0) == MAX_EXTEND_FRAMES == 2583
    for s in [0.05, 1.0, 7.3, 10.0]:
        # the frame containing -s: floor, so s seconds to the left span ceil(s * rate) frames
        assert seconds_to_frame(-s) == math.floor(-s * FRAME_RATE) == -math.ceil(s * FRAME_RATE)
    assert seconds_to_frame(-0.05) == -1 and seconds_to_frame(0.05) == 0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            seconds_to_frame(bad)


def test_repaint_mask_edges():
    T = frames_for_seconds(30.0)  # 322 frames (322.998 truncated), 29.96 s
    assert T == 322
    mask, a, b, warnings = repaint_mask(T, 0.0, 7.3)
    assert (a, b, warnings) == (0, 78, [])  # 7.3 s * 86.13 frames/s = 78.6 -> frame 78
    assert mask.shape == (T,) and mask.dtype == torch.float32
    assert mask[:78].eq(1).all() and mask[78:].eq(0).all()

    mask, a, b, warnings = repaint_mask(T, 7.3, 30.0)
    assert (a, b, warnings) == (78, T, [])  # the song end lands on T exactly
    assert mask[:78].eq(0).all() and mask[78:].eq(1).all()

    mask, a, b, warnings = repaint_mask(T, -2.0, 45.0)
    assert (a, b) == (0, T) and mask.eq(1).all()
    assert len(warnings) == 2 and "before the start" in warnings[0] and "past the end" in warnings[1]
    _, a, b, warnings = repaint_mask(T, 10.0, float("inf"))
    assert (a, b, warnings) == (frames_for_seconds(10.0), T, [])

    with pytest.raises(ValueError, match="before the end"):
        repaint_mask(T, 8.0, 8.0)
    with pytest.raises(ValueError, match="before the end"):
        repaint_mask(T, 9.0, 3.0)
    with pytest.raises(ValueError, match=r"starts past the end of the song \(\d+\.\d\d s\); choose") as after:
        repaint_mask(T, 40.0, 50.0)  # entirely after the song
    assert "frame" not in str(after.value).split(";")[0]   # seconds only: frame numbers mean nothing to a user
    with pytest.raises(ValueError, match="covers no frame"):
        repaint_mask(T, 1.0, 1.01)  # inside one frame (86.1 and 86.99)
    with pytest.raises(ValueError, match="numbers"):
        repaint_mask(T, float("nan"), 3.0)


# ---------------------------------------------------------------------------------------------
# Retake noise
# ---------------------------------------------------------------------------------------------
def test_retake_noise_endpoints_exact_and_mix_formula():
    e1, e2 = randn(2, 8, 16, 9, seed=1), randn(2, 8, 16, 9, seed=2)
    assert torch.equal(retake_noise(e1, e2, 0.0), e1)
    assert torch.equal(retake_noise(e1, e2, 1.0), e2)
    for v in (0.2, 0.5, 0.9):
        phi = v * math.pi / 2
        ref = math.cos(phi) * e1.double() + math.sin(phi) * e2.double()
        assert torch.allclose(retake_noise(e1, e2, v).double(), ref, atol=1e-6)
    big1, big2 = randn(400_000, seed=3), randn(400_000, seed=4)
    assert abs(float(retake_noise(big1, big2, 0.37).std()) - 1.0) < 0.01  # variance preserving
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            retake_noise(e1, e2, bad)


def test_repaint_noise_mixes_only_inside_mask():
    e1, e2 = randn(1, 8, 16, 12, seed=5), randn(1, 8, 16, 12, seed=6)
    mask, *_ = repaint_mask(12, 3 / FRAME_RATE + 1e-6, 8 / FRAME_RATE + 1e-6)
    z0 = repaint_noise(e1, e2, mask, 0.3)
    assert torch.equal(z0[..., :3], e1[..., :3]) and torch.equal(z0[..., 8:], e1[..., 8:])
    assert torch.equal(z0[..., 3:8], retake_noise(e1, e2, 0.3)[..., 3:8])


def test_repaint_start_step():
    assert repaint_start_step(60, 0.2) == 48
    assert repaint_start_step(60, 0.5) == 30
    assert repaint_start_step(60, 0.8) == 11  # the original's float rounding: 60 * 0.19999...
    assert repaint_start_step(60, 1.0) == 0
    assert repaint_start_step(60, 0.0) == 60
    with pytest.raises(ValueError):
        repaint_start_step(0, 0.5)


# ---------------------------------------------------------------------------------------------
# The repaint loop
# ---------------------------------------------------------------------------------------------
def linear_velocity(seed):
    """A deterministic stand-in for the guided model: v = a * x + b * sigma + c."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = 0.3 * torch.randn(1, generator=g), torch.randn(8, 16, 1, generator=g), torch.randn(1, generator=g)
    return lambda x, sigma: a * x + b * sigma + c


def reference_repaint(x0, eps1, eps2, mask_bool, variance, sigmas, velocity):
    """The original's repaint loop (pipeline_ace_step.py ``text2music_diffusion_process``, repaint branch), written out: skip i < n_min; at n_min set
    x = (1 - s) x0 + s z0; every step Euler then where(M, x, (1 - s') x0 + s' z0)."""
    steps = len(sigmas) - 1
    n_min = int(steps * (1 - variance))
    phi = variance * math.pi / 2
    z0 = torch.where(mask_bool, math.cos(phi) * eps1 + math.sin(phi) * eps2, eps1)
    x = None
    for i in range(steps):
        if i < n_min:
            continue
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if i == n_min:
            x = (1 - s) * x0 + s * z0
        x = x + (s_next - s) * velocity(x, s)
        x = torch.where(mask_bool, x, (1 - s_next) * x0 + s_next * z0)
    return x


def run_repaint(x0, eps1, eps2, mask, variance, sigmas, velocity):
    steps = len(sigmas) - 1
    z0 = repaint_noise(eps1, eps2, mask, variance)
    n = repaint_start_step(steps, variance)
    x = repaint_initial_latent(x0, z0, sigmas[n])
    for i in range(n, steps):
        x = repaint_step(x, velocity(x, float(sigmas[i])), x0, z0, mask, sigmas[i], sigmas[i + 1])
    return x


def test_repaint_loop_matches_reference_and_keeps_source_exactly():
    T = 20
    x0, e1, e2 = randn(2, 8, 16, T, seed=10), randn(2, 8, 16, T, seed=11), randn(2, 8, 16, T, seed=12)
    mask, a, b, _ = repaint_mask(T, 4 / FRAME_RATE + 1e-6, 13 / FRAME_RATE + 1e-6)
    assert (a, b) == (4, 13)
    sigmas = original_sigmas(30)
    velocity = linear_velocity(3)
    worst = 0.0
    for variance in (0.2, 0.5, 1.0):
        ref = reference_repaint(x0, e1, e2, mask.bool(), variance, sigmas, velocity)
        out = run_repaint(x0, e1, e2, mask, variance, sigmas, velocity)
        worst = max(worst, float((out - ref).abs().max()))
        assert torch.allclose(out, ref, atol=1e-5), variance
        assert torch.equal(out[..., :a], x0[..., :a]) and torch.equal(out[..., b:], x0[..., b:])
    print(f"\nrepaint loop vs reference: max|diff| = {worst:.2e}")
    # variance 0: nothing to regenerate -> the source (the original returned pure noise here)
    assert torch.equal(run_repaint(x0, e1, e2, mask, 0.0, sigmas, velocity), x0)


def test_repaint_with_ideal_velocity_lands_on_target_inside_mask():
    # v = (x - y) / sigma carries x to y at sigma 0 (a perfect model of a song y).
    T = 15
    x0, y = randn(1, 8, 16, T, seed=20), randn(1, 8, 16, T, seed=21)
    e1, e2 = randn(1, 8, 16, T, seed=22), randn(1, 8, 16, T, seed=23)
    mask, a, b, _ = repaint_mask(T, 5 / FRAME_RATE + 1e-6, 9 / FRAME_RATE + 1e-6)
    out = run_repaint(x0, e1, e2, mask, 0.6, original_sigmas(20), lambda x, s: (x - y) / s)
    expected = torch.where(mask.bool(), y, x0)
    assert torch.allclose(out, expected, atol=1e-5)


def test_reimpose_known_soft_mask_and_dtype():
    x, x0, z0 = randn(1, 8, 16, 4, seed=1), randn(1, 8, 16, 4, seed=2), randn(1, 8, 16, 4, seed=3)
    m = torch.tensor([1.0, 0.0, 0.5, 0.25])
    out = reimpose_known(x, x0, z0, m, 0.3)
    known = 0.7 * x0 + 0.3 * z0
    assert torch.allclose(out, m * x + (1 - m) * known, atol=1e-6)
    assert torch.equal(out[..., 0], x[..., 0])
    assert reimpose_known(x.bfloat16(), x0, z0, m, 0.3).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Extend
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,left,right", [(11, 5, 0), (11, 0, 7), (11, 3, 4), (9, 1, 1), (7, 13, 0), (7, 0, 10)])
def test_extend_lengths_and_source_preserved(T, left, right):
    src = randn(2, 8, 16, T, seed=T + left)
    window, mask, plan = extend_latent(src, left, right)
    assert window.shape[-1] == plan.window_frames == left + T + right  # fits: nothing trimmed
    assert mask.tolist() == [1.0] * left + [0.0] * T + [1.0] * right
    assert torch.equal(window[..., left:left + T], src)
    assert window[..., :left].eq(0).all() and window[..., left + T:].eq(0).all()
    sampled = window + 5.0 * mask  # anything in the new regions
    out = extend_assemble(sampled, src, plan)
    assert out.shape == (2, 8, 16, T + left + right) == (2, 8, 16, plan.output_frames)
    assert torch.equal(out[..., left:left + T], src)
    assert torch.equal(out[..., :left], sampled[..., :left])
    assert torch.equal(out[..., left + T:], sampled[..., left + T:])


def test_extend_trims_to_window_and_reattaches():
    T, max_frames = 11, 15
    src = randn(1, 8, 16, T, seed=30)
    # left extension: the original keeps the first max frames of [zeros, source]
    window, mask, plan = extend_latent(src, 6, 0, max_frames)
    assert window.shape[-1] == max_frames and (plan.kept_start, plan.kept_end) == (0, 9)
    original_window = torch.cat([torch.zeros(1, 8, 16, 6), src], -1)[..., :max_frames]
    assert torch.equal(window, original_window)
    assert mask.tolist() == [1.0] * 6 + [0.0] * 9
    sampled = window.clone()
    sampled[..., :6] = 7.0
    out = extend_assemble(sampled, src, plan)
    assert out.shape[-1] == 6 + T and torch.equal(out[..., 6:], src) and out[..., :6].eq(7.0).all()

    # right extension: the original keeps the last max frames of [source, zeros]
    window, mask, plan = extend_latent(src, 0, 6, max_frames)
    assert (plan.kept_start, plan.kept_end) == (2, 11)
    assert torch.equal(window, torch.cat([src, torch.zeros(1, 8, 16, 6)], -1)[..., -max_frames:])
    sampled = window.clone()
    sampled[..., -6:] = -3.0
    out = extend_assemble(sampled, src, plan)
    assert out.shape[-1] == T + 6 and torch.equal(out[..., :T], src) and out[..., T:].eq(-3.0).all()

    with pytest.raises(ValueError, match="one side at a time"):
        extend_latent(src, 3, 3, max_frames)
    with pytest.raises(ValueError, match="no room"):
        extend_latent(src, 15, 0, max_frames)
    with pytest.raises(ValueError, match="nothing to extend"):
        extend_latent(src, 0, 0)
    with pytest.raises(ValueError):
        extend_latent(src, -1, 2)


def test_extend_noise_matches_original_slicing():
    T, L, R = 11, 4, 3
    src = randn(1, 8, 16, T, seed=40)
    e1, e2 = randn(1, 8, 16, T, seed=41), randn(1, 8, 16, T, seed=42)
    _, _, plan = extend_latent(src, L, R)
    z0 = extend_noise(e1, e2, plan)
    ref = torch.cat([e2[..., :L], e1, e2[..., -R:]], -1)
    assert torch.equal(z0, ref)
    # with a right trim (left extension past the window): main noise loses its tail
    _, _, plan = extend_latent(src, 6, 0, 15)
    assert torch.equal(extend_noise(e1, e2, plan), torch.cat([e2[..., :6], e1[..., :9]], -1))
    # an extension longer than the source needs a longer retake noise (the original failed here)
    _, _, plan = extend_latent(src, 0, 20)
    assert plan.retake_noise_frames == 20
    with pytest.raises(ValueError, match="at least 20"):
        extend_noise(e1, e2, plan)
    long = randn(1, 8, 16, 20, seed=43)
    assert torch.equal(extend_noise(e1, long, plan), torch.cat([e1, long], -1))
    with pytest.raises(ValueError, match="cover the source"):
        extend_noise(e1[..., :5], e2, plan)


def test_extend_end_to_end_with_ideal_velocity():
    # Sample the extension window with the repaint loop (variance 1, as the original UI) and a
    # perfect model of a song y; the new frames become y, the source stays exact.
    T, L, R = 9, 4, 5
    src = randn(1, 8, 16, T, seed=50)
    window, mask, plan = extend_latent(src, L, R)
    y = randn(1, 8, 16, plan.window_frames, seed=51)
    z0 = extend_noise(randn(1, 8, 16, T, seed=52), randn(1, 8, 16, T, seed=53), plan)
    sigmas = original_sigmas(12)
    n = repaint_start_step(12, 1.0)
    x = repaint_initial_latent(window, z0, sigmas[n])
    assert torch.equal(x, z0)  # sigma 1: pure noise
    for i in range(n, 12):
        x = repaint_step(x, (x - y) / float(sigmas[i]), window, z0, mask, sigmas[i], sigmas[i + 1])
    out = extend_assemble(x, src, plan)
    assert out.shape[-1] == L + T + R
    assert torch.equal(out[..., L:L + T], src)
    assert torch.allclose(out[..., :L], y[..., :L], atol=1e-5)
    assert torch.allclose(out[..., L + T:], y[..., L + T:], atol=1e-5)


def test_extend_frames():
    assert extend_frames(0.0, 30.0) == (0, frames_for_seconds(30.0))
    left, right = extend_frames(7.3, 7.3)
    assert left == right == 78
    with pytest.raises(ValueError):
        extend_frames(-1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Flow-edit
# ---------------------------------------------------------------------------------------------
def test_edit_step_range_and_presets():
    assert EDIT_PRESETS == {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}
    assert edit_step_range(60, *EDIT_PRESETS["only_lyrics"]) == (36, 60)
    assert edit_step_range(60, *EDIT_PRESETS["remix"]) == (12, 24)
    assert edit_step_range(27, 0.0, 1.0) == (0, 27)
    for bad in ((0.5, 0.4), (-0.1, 1.0), (0.0, 1.1), (float("nan"), 1.0)):
        with pytest.raises(ValueError):
            edit_step_range(60, *bad)
    assert [edit_phase(i, 2, 4) for i in range(6)] == ["skip", "skip", "edit", "edit", "sample", "sample"]


def nonlinear_velocity(seed):
    g = torch.Generator().manual_seed(seed)
    w = 0.5 * torch.randn(8, 8, generator=g)
    b = torch.randn(8, 1, 1, generator=g)
    return lambda z, s: torch.tanh(torch.einsum("oc,bchw->bohw", w, z)) + b * s


def reference_flowedit(v_tar, v_src, x_src, sigmas, n_min, n_max, noise_fn, n_avg):
    """The original's flowedit loop (pipeline_ace_step.py ``flowedit_diffusion_process``), Euler branch, written out."""
    steps = len(sigmas) - 1
    start, end = int(steps * n_min), int(steps * n_max)
    z_edit, x_tar = x_src.clone(), None
    for i in range(steps):
        if i < start:
            continue
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if i < end:
            V = torch.zeros_like(x_src)
            for _ in range(n_avg):
                eps = noise_fn()
                z_src = (1 - s) * x_src + s * eps
                z_tar = z_edit + z_src - x_src
                V += (1 / n_avg) * (v_tar(z_tar, s) - v_src(z_src, s))
            z_edit = z_edit + (s_next - s) * V
        else:
            if i == end:
                eps = noise_fn()
                x_tar = z_edit + (s * eps + (1 - s) * x_src) - x_src
            x_tar = x_tar + (s_next - s) * v_tar(x_tar, s)
    return z_edit if x_tar is None else x_tar


def noise_stream(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(shape, generator=g)


@pytest.mark.parametrize("preset,n_avg", [("only_lyrics", 1), ("remix", 2), ("full", 3)])
def test_flowedit_loop_matches_reference(preset, n_avg):
    n_min, n_max = EDIT_PRESETS.get(preset, (0.0, 1.0))
    x_src = randn(2, 8, 16, 6, seed=60)
    v_tar, v_src = nonlinear_velocity(1), nonlinear_velocity(2)
    sigmas = original_sigmas(20)
    ref = reference_flowedit(v_tar, v_src, x_src, sigmas, n_min, n_max, noise_stream(7, x_src.shape), n_avg)
    steps_seen = []
    out = flowedit_sample(v_tar, v_src, x_src, sigmas, n_min, n_max, noise_stream(7, x_src.shape), n_avg,
                          on_step=lambda i, x: steps_seen.append(i))
    err = float((out - ref).abs().max())
    print(f"\nflow-edit {preset} (n_avg {n_avg}) vs reference: max|diff| = {err:.2e}")
    assert torch.allclose(out, ref, atol=1e-5)
    assert steps_seen == list(range(int(20 * n_min), 20))
    assert not torch.allclose(out, x_src, atol=1e-3)  # it did edit something


def test_flowedit_identity_is_exact():
    x_src = randn(1, 8, 16, 7, seed=70)
    v = nonlinear_velocity(3)
    for n_min in (0.0, 0.6):
        out = flowedit_sample(v, v, x_src, original_sigmas(15), n_min, 1.0, noise_stream(1, x_src.shape), 2)
        assert torch.equal(out, x_src)

    # the same with APG-guided velocities, each stream with its own momentum buffer
    cond, uncond = nonlinear_velocity(4), nonlinear_velocity(5)

    def guided(buffer):
        return lambda z, s: apg(cond(z, s), uncond(z, s), 15.0, buffer)

    out = flowedit_sample(guided(MomentumBuffer()), guided(MomentumBuffer()), x_src, original_sigmas(15),
                          0.0, 1.0, noise_stream(2, x_src.shape))
    assert torch.equal(out, x_src)
    # ...which a shared buffer (updated twice per step) would break
    shared = MomentumBuffer()
    drifted = flowedit_sample(guided(shared), guided(shared), x_src, original_sigmas(15), 0.0, 1.0,
                              noise_stream(2, x_src.shape))
    assert not torch.equal(drifted, x_src)


def test_flowedit_pieces():
    x_src, z_edit = randn(1, 8, 16, 5, seed=80), randn(1, 8, 16, 5, seed=81)
    eps = [randn(1, 8, 16, 5, seed=82), randn(1, 8, 16, 5, seed=83)]
    v_tar, v_src = nonlinear_velocity(6), nonlinear_velocity(7)
    s = 0.6
    V = flowedit_velocity(v_tar, v_src, z_edit, x_src, s, eps)
    ref = sum(v_tar(z_edit + ((1 - s) * x_src + s * e) - x_src, s) - v_src((1 - s) * x_src + s * e, s)
              for e in eps) / 2
    assert torch.allclose(V, ref, atol=1e-5)
    assert torch.allclose(flowedit_step(z_edit, V, s, 0.4), z_edit - 0.2 * V, atol=1e-6)
    start = flowedit_target_start(z_edit, x_src, s, eps[0])
    assert torch.allclose(start, z_edit + (s * eps[0] + (1 - s) * x_src) - x_src, atol=1e-5)
    assert torch.equal(flowedit_target_start(x_src, x_src, s, eps[0]), ((1 - s) * x_src + s * eps[0]))
    with pytest.raises(ValueError):
        flowedit_velocity(v_tar, v_src, z_edit, x_src, s, [])
