"""Flow-matching schedules and steps against the original's figures and ComfyUI's sampler."""
import math

import pytest
import torch

from acestep_core.sampling.flow import (cfg, euler_step, noise_like_latent, omega_factor, original_sigmas,
                                        shift_sigma, simple_sigmas)


def test_original_schedule_figures():
    # Values the original FlowMatchEulerDiscreteScheduler gives for 60 steps (acestep/schedulers/scheduling_flow_match_euler_discrete.py ``set_timesteps``),
    # including the double shift that ends at shift(shift(0.001)).
    s = original_sigmas(60)
    assert s.shape == (61,)
    expected_head = [1.0, 0.99430, 0.98847, 0.98251, 0.97641]
    assert torch.allclose(s[:5], torch.tensor(expected_head), atol=1e-5)
    assert torch.allclose(s[-4:-1], torch.tensor([0.10281, 0.05739, 0.00893]), atol=1e-5)
    assert s[-1] == 0
    assert abs(float(s[-2]) - float(shift_sigma(shift_sigma(torch.tensor(0.001))))) < 1e-7
    assert bool((s[1:] < s[:-1]).all())


def test_simple_schedule_matches_comfyui():
    import comfy.model_sampling as ms
    import comfy.samplers

    class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass

    class Cfg:
        sampling_settings = {"shift": 3.0, "multiplier": 1000}

    sampling = Flow(Cfg())
    for steps in (1, 8, 27):
        theirs = comfy.samplers.simple_scheduler(sampling, steps).float()
        ours = simple_sigmas(steps, 3.0)
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, atol=1e-6), (steps, (ours - theirs).abs().max())
        assert ours[0] == 1.0 and ours[-1] == 0.0


def test_omega_factor():
    assert omega_factor(0.0) == pytest.approx(1.0)
    assert omega_factor(10.0) == pytest.approx(1.046212, abs=1e-6)
    assert omega_factor(1e4) == pytest.approx(1.1)


def test_euler_step_plain_and_mean_preserving():
    x = torch.randn(2, 8, 16, 5)
    v = torch.randn(2, 8, 16, 5)
    plain = euler_step(x, v, 0.8, 0.6)
    assert torch.allclose(plain, x - 0.2 * v, atol=1e-6)
    scaled = euler_step(x, v, 0.8, 0.6, omega=10.0)
    dx, dx_scaled = plain - x, scaled - x
    assert torch.allclose(dx_scaled.mean(), dx.mean(), atol=1e-6)
    assert torch.allclose(dx_scaled - dx_scaled.mean(), (dx - dx.mean()) * omega_factor(10.0), atol=1e-5)


def test_cfg_formula():
    c, u = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(cfg(c, u, 1.0), c)
    assert torch.allclose(cfg(c, u, 5.0), u + 5.0 * (c - u))


def test_noise_per_item_generators():
    a = noise_like_latent((2, 8, 16, 7), [11, 12])
    b = noise_like_latent((1, 8, 16, 7), [12])
    assert torch.equal(a[1], b[0])
    c = noise_like_latent((3, 8, 16, 7), [5])
    assert torch.equal(c[0], c[2])  # a short list repeats its last seed
    gen = torch.Generator().manual_seed(11)
    assert torch.equal(a[0], torch.randn((8, 16, 7), generator=gen))


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        original_sigmas(0)
    with pytest.raises(ValueError, match="steps"):
        simple_sigmas(-3)


def test_shift_sigma_endpoints():
    assert float(shift_sigma(torch.tensor(0.0))) == 0.0
    assert float(shift_sigma(torch.tensor(1.0))) == 1.0
    assert math.isclose(float(shift_sigma(torch.tensor(0.5), 3.0)), 0.75, rel_tol=1e-6)
