"""AceStepEdit (nodes/edit.py) on ACE-Step 1.5, in process, on tiny random-weight 1.5 checkpoints.

The 1.5 app's flow-edit (ACE-Step-1.5 ``acestep/models/common/flow_edit.py``
``flowedit_sampling_loop`` with ``flow_edit_helpers``, 2026-04) is written out below as a plain
loop on the core 1.5 DiT (acestep_core.ace15.loading.load_ace15, same weights): the guider run by
SamplerCustomAdvanced must give its latent. Identical source and target give the source back
bit for bit; a v1 latent or v1 conditioning into a 1.5 edit is a clear error (the other way round:
tests/comfyui/test_task_nodes.py); a turbo checkpoint is refused, as the reference does.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

TAGS = "synth pop, female vocal"
OTHER_TAGS = "acoustic folk, male vocal"
LYRICS = "[verse]\nNeon lights along the river"
SECONDS, FRAMES, SEED = 2.0, 50, 11
# flowedit_sampling_loop / apg_forward constants (MomentumBuffer momentum, APG norm threshold).
MOMENTUM, NORM_THRESHOLD = -0.75, 2.5


@pytest.fixture(scope="module")
def env(in_process_env):
    return in_process_env(extras=("nodes_ace", "nodes_custom_sampler"),
                          pack_nodes=("loaders", "ace15_nodes", "edit"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, env):
    import folder_paths
    from acestep_core.ace15.tiny import write_tiny_ace15

    ckpts = tmp_path_factory.mktemp("ace15_edit_models") / "checkpoints"
    aio = write_tiny_ace15(ckpts, "aio")["checkpoint"]
    write_tiny_ace15(ckpts / "Ace15-turbo", "official")
    base = ckpts / "Ace15-base"
    shutil.copytree(ckpts / "Ace15-turbo", base)
    config = base / "acestep-v15-turbo" / "config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), is_turbo=False)))
    saved = list(folder_paths.folder_names_and_paths["checkpoints"][0])
    folder_paths.add_model_folder_path("checkpoints", str(ckpts), is_default=True)
    yield aio
    folder_paths.folder_names_and_paths["checkpoints"][0][:] = saved


@pytest.fixture(scope="module")
def loaded(env, models):
    return env["loaders"].LoadAceStepCheckpoint().load("ace_step_1.5_tiny_aio.safetensors", "fp32")


def _encode(env, clip, tags, codes=False):
    """TextEncodeAceStepAudio1.5: ComfyUI's own where it has one (0.20.1), else ours."""
    args = (clip, tags, LYRICS, 0, 120, SECONDS, "4", "en", "C major", codes, 2.0, 0.85, 0.9, 0, 0.0)
    theirs = getattr(env["nodes_ace"], "TextEncodeAceStepAudio15", None)
    if theirs is not None:
        return theirs.execute(*args).result[0]
    return env["ace15_nodes"].TextEncodeAceStepAudio15().execute(*args)[0]


def _source_latent(batch=1):
    return torch.randn(batch, 64, FRAMES, generator=torch.Generator().manual_seed(3))


def _edit(env, model, source, target, mode="full", n_min=0.0, n_max=1.0, n_avg=1, steps=4, cfg=3.0, latent=None):
    cs = env["nodes_custom_sampler"]
    guider = env["edit"].AceStepEdit().get_guider(model, source, target, mode, cfg, n_min, n_max, n_avg, "apg")[0]
    sigmas = cs.BasicScheduler.execute(model, "simple", steps, 1.0).result[0]
    sampler = cs.KSamplerSelect.execute("euler").result[0]
    noise = cs.RandomNoise.execute(SEED).result[0]
    samples = _source_latent() if latent is None else latent
    out, _ = cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": samples}).result
    return out["samples"], sigmas


def _apg(cond, uncond_running_diff, scale):
    """apg_forward with the 1.5 loop's dims=[1] on [B, T, C], i.e. over time on our [B, C, T]."""
    diff = uncond_running_diff
    diff = diff * torch.clamp(NORM_THRESHOLD / diff.norm(p=2, dim=-1, keepdim=True), max=1.0)
    c64, d64 = cond.double(), diff.double()
    unit = torch.nn.functional.normalize(c64, dim=-1)
    orthogonal = (d64 - (d64 * unit).sum(dim=-1, keepdim=True) * unit).float()
    return cond + (scale - 1) * orthogonal


def _reference_flowedit(velocity, src_cond, tar_cond, x_src, sigmas, n_min, n_max, n_avg, scale, noise):
    """flowedit_sampling_loop (Euler, APG, no CFG interval / clamp / EMA, the defaults): V_delta
    averaged over n_avg forward noises with the APG momentum snapshot per step, then the target
    alone from n_max on. ``velocity(z, sigma, cond, null)`` is the DiT's velocity."""
    steps = len(sigmas) - 1
    lo, hi = int(steps * n_min), int(steps * n_max)
    z_edit, x_tar = x_src.clone(), None
    momentum = {"src": None, "tar": None}

    def guided(z, sigma, which, cond):
        c, u = velocity(z, sigma, cond, False), velocity(z, sigma, cond, True)
        before = momentum[which]
        running = (c - u) if before is None else (c - u) + MOMENTUM * before
        return _apg(c, running, scale), c - u

    def advance(which, mean_diff):
        before = momentum[which]
        momentum[which] = mean_diff if before is None else mean_diff + MOMENTUM * before

    for i in range(lo, steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        if i < hi:
            v_src = v_tar = d_src = d_tar = 0
            for _ in range(n_avg):
                eps = noise()
                zt_src = (1.0 - s) * x_src + s * eps
                zt_tar = z_edit + zt_src - x_src
                vs, ds = guided(zt_src, s, "src", src_cond)
                vt, dt = guided(zt_tar, s, "tar", tar_cond)
                v_src, v_tar, d_src, d_tar = v_src + vs, v_tar + vt, d_src + ds, d_tar + dt
            advance("src", d_src / n_avg)
            advance("tar", d_tar / n_avg)
            z_edit = z_edit + (s_next - s) * (v_tar / n_avg - v_src / n_avg)
        else:
            if x_tar is None:
                x_tar = z_edit + ((1.0 - s) * x_src + s * noise()) - x_src
            vt, dt = guided(x_tar, s, "tar", tar_cond)
            advance("tar", dt)
            x_tar = x_tar + (s_next - s) * vt
    return z_edit if x_tar is None else x_tar


def test_identical_source_and_target_give_the_source_back(env, loaded):
    model, clip, _ = loaded
    positive = _encode(env, clip, TAGS)
    for mode, n_avg in (("full", 1), ("only_lyrics", 2)):
        out, _ = _edit(env, model, positive, positive, mode, n_avg=n_avg)
        assert out.shape == (1, 64, FRAMES)
        assert torch.equal(out, _source_latent()), mode


def test_edit_equals_the_reference_loop(env, loaded, models):
    """New tags, 4 steps: skip step 0, edit steps 1-2 (2 noise draws each, cfg 3 APG), sample step 3
    for the target; the latent equals the reference loop's on the same weights and noises."""
    from acestep_core.ace15.loading import load_ace15

    model, clip, _ = loaded
    source, target = _encode(env, clip, TAGS), _encode(env, clip, OTHER_TAGS)
    n_min, n_max, n_avg, cfg, steps = 0.25, 0.75, 2, 3.0, 4
    ours, sigmas = _edit(env, model, source, target, "custom", n_min, n_max, n_avg, steps, cfg)

    core = load_ace15(models)
    silence = core.silence(FRAMES).float()

    def velocity(z, sigma, cond, null):
        caption, options = cond[0]
        t = torch.full((1,), sigma, dtype=torch.float32)
        return core.model(z, t, caption, lyric_embed=options["conditioning_lyrics"], refer_audio=silence,
                          is_covers=False, replace_with_null_embeds=null).float()

    generator = torch.Generator().manual_seed(SEED)          # RandomNoise's draw, then the same stream
    x_src = _source_latent()
    reference = _reference_flowedit(velocity, source, target, x_src, [float(s) for s in sigmas], n_min, n_max,
                                    n_avg, cfg, lambda: torch.randn(x_src.shape, generator=generator))
    assert (reference - x_src).abs().max() > 1e-2                 # the edit did something
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_a_new_target_tag_changes_the_song_and_planner_codes_are_dropped(env, loaded):
    model, clip, _ = loaded
    source = _encode(env, clip, TAGS)
    out, _ = _edit(env, model, source, _encode(env, clip, OTHER_TAGS))
    assert torch.isfinite(out).all() and (out - _source_latent()).abs().max() > 1e-2
    # the reference's context is text2music's (silence, no LM hints): codes on a stream change nothing
    with_codes = [[c, dict(o, audio_codes=[[1, 2, 3]])] for c, o in source]
    same, _ = _edit(env, model, with_codes, with_codes)
    assert torch.equal(same, _source_latent())


def test_bad_input_says_what_is_wrong(env, loaded):
    model, clip, _ = loaded
    positive = _encode(env, clip, TAGS)
    with pytest.raises(ValueError, match=r"ACE-Step 1.5, whose latents are \[batch, 64, frames\].*\[1, 8, 16, 12\]"):
        _edit(env, model, positive, positive, latent=torch.randn(1, 8, 16, 12))
    v1_conditioning = [[torch.zeros(1, 5, 768), {"conditioning_lyrics": torch.zeros(1, 7, dtype=torch.long)}]]
    with pytest.raises(ValueError, match="target conditioning comes from the ACE-Step v1 text encoder.*"
                                         "TextEncodeAceStepAudio1.5"):
        env["edit"].AceStepEdit().get_guider(model, positive, v1_conditioning, "full", 3.0, 0.0, 1.0, 1, "apg")


def test_turbo_is_refused_base_runs(env, models):
    load = env["loaders"].LoadAceStepCheckpoint().load
    turbo, clip, _ = load("Ace15-turbo", "fp32")
    positive = _encode(env, clip, TAGS)
    with pytest.raises(ValueError, match="AceStepEdit: this is the ACE-Step 1.5 turbo model.*acestep-v15-base"):
        env["edit"].AceStepEdit().get_guider(turbo, positive, positive, "full", 3.0, 0.0, 1.0, 1, "apg")
    base, clip, _ = load("Ace15-base", "fp32")
    out, _ = _edit(env, base, positive, _encode(env, clip, OTHER_TAGS), steps=2)
    assert torch.isfinite(out).all()
