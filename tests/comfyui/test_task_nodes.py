"""Task, guidance, edit and LoRA nodes (nodes/tasks.py, guidance.py, edit.py, lora.py) inside
ComfyUI's own samplers, in process, on a tiny random-weight checkpoint.

References are computed independently of the nodes: sampling loops written here from the
formulas (ACE-Step acestep/pipeline_ace_step.py, acestep/apg_guidance.py) on the transformer's raw velocity, compared with what the stock KSampler /
SamplerCustomAdvanced produce through the nodes.

Import detail (as test_bridge.py): ComfyUI's nodes.py is registered as ``nodes`` and this pack
is imported as the package ``comfyui_acestep``.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from safetensors.torch import save_file

from .pack_import import PACK, comfy_extras, comfy_nodes_module, pack_module

TAGS = "pop, piano, upbeat, female vocal"
LYRICS = "[verse]\nHello world, we sing tonight\n\n[chorus]\nLa la la"
OTHER_LYRICS = "[verse]\nGoodbye moon, we dance till dawn\n\n[chorus]\nNa na na"
FRAMES = 21                        # 2 s of latent
SEED, RETAKE_SEED, STEPS, CFG = 42, 7, 4, 3.0


# ---------------------------------------------------------------------------------------------
# Imports: ComfyUI's `nodes`, the pack as a package
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    import comfy.utils
    nodes = comfy_nodes_module()
    comfy.utils.PROGRESS_BAR_ENABLED = False
    out = {"nodes": nodes}
    out.update(comfy_extras("nodes_ace", "nodes_custom_sampler"))
    pack = pack_module()
    out["pack"] = pack
    for name in ("tasks", "guidance", "edit", "lora", "loaders"):
        out[name] = importlib.import_module(f"{PACK}.nodes.{name}")
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, env):
    """A checkpoints folder with the tiny checkpoint and a loras folder, registered with
    folder_paths for this module."""
    import folder_paths
    from acestep_core.testing import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("models")
    ckpts, loras = base / "checkpoints", base / "loras"
    ckpts.mkdir()
    loras.mkdir()
    write_tiny_checkpoint(ckpts / "ace_tiny_tasks.safetensors", layout="comfyui", seed=3)
    saved = {k: list(folder_paths.folder_names_and_paths[k][0]) for k in ("checkpoints", "loras")}
    folder_paths.add_model_folder_path("checkpoints", str(ckpts), is_default=True)
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    yield {"checkpoints": ckpts, "loras": loras}
    for k, paths in saved.items():
        folder_paths.folder_names_and_paths[k][0][:] = paths


@pytest.fixture(scope="module")
def loaded(env, folders):
    return env["loaders"].LoadAceStepCheckpoint().load("ace_tiny_tasks.safetensors", "fp32")


@pytest.fixture(scope="module")
def conds(env, loaded):
    clip = loaded[1]
    positive = env["nodes_ace"].TextEncodeAceStepAudio.execute(clip, TAGS, LYRICS, 1.0).result[0]
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    return positive, negative


def _use(model):
    """Load a MODEL's weights (with its patches) into the shared network, as a sampler would."""
    import comfy.model_management as mm
    mm.load_models_gpu([model], force_full_load=True)


def _empty(frames=FRAMES):
    return {"samples": torch.zeros(1, 8, 16, frames), "type": "audio"}


def _source(frames=FRAMES, seed=11):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 8, 16, frames, generator=g) * 0.7, "type": "audio"}


def _ksample(env, model, conds, latent, seed=SEED, steps=STEPS, cfg=CFG, denoise=1.0, sampler="euler"):
    positive, negative = conds
    return env["nodes"].common_ksampler(model, seed, steps, cfg, sampler, "simple", positive, negative, latent,
                                        denoise=denoise)[0]


def _custom_sample(env, model, conds, latent, noise, steps=STEPS, cfg=CFG, guider=None):
    cs = env["nodes_custom_sampler"]
    if guider is None:
        guider = cs.CFGGuider.execute(model, conds[0], conds[1], cfg).result[0]
    sigmas = cs.BasicScheduler.execute(model, "simple", steps, 1.0).result[0]
    sampler = cs.KSamplerSelect.execute("euler").result[0]
    out, _ = cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent).result
    return out


def _result(value):
    """A node's outputs whether or not it returned UI data."""
    return value["result"] if isinstance(value, dict) else value


def _sigmas(model, steps=STEPS):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def _frame(seconds):
    return int(seconds * 44100 / 512 / 8)


# =============================================================================================
# Registration
# =============================================================================================
OUR_NODES = ("AceStepRepaint", "AceStepExtend", "AceStepRestoreSource", "AceStepRetake", "AceStepRetakeModel",
             "AceStepGuidance", "AceStepErgNegative", "AceStepEdit", "AceStepLoraLoader")


def test_nodes_are_registered_with_tooltips(env):
    mappings = env["pack"].NODE_CLASS_MAPPINGS
    for name in OUR_NODES:
        cls = mappings[name]
        assert cls.CATEGORY == "audio/acestep"
        assert name in env["pack"].NODE_DISPLAY_NAME_MAPPINGS
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for input_name, value in section.items():
                assert len(value) == 2 and value[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


# =============================================================================================
# Repaint
# =============================================================================================
def test_repaint_mask_edges_name_the_frames(env):
    node = env["tasks"].AceStepRepaint()
    src = _source(frames=200)                                           # 18.6 s
    latent, denoise = _result(node.repaint(src, 0.0, 7.3, 0.2))
    mask = latent["noise_mask"]
    assert mask.shape == (1, 1, 16, 200) and denoise == 0.2
    edge = _frame(7.3)                                                  # 78
    assert edge == 78
    assert torch.all(mask[..., :edge] == 1) and torch.all(mask[..., edge:] == 0)
    assert torch.equal(latent["samples"], src["samples"])

    # 7.3 s to the song's end (a time past it is clamped, with a warning in the UI output)
    out = node.repaint(src, 7.3, 1000.0, 0.5)
    latent, _ = out["result"]
    assert any("past the end" in t for t in out["ui"]["text"])
    assert torch.all(latent["noise_mask"][..., :edge] == 0) and torch.all(latent["noise_mask"][..., edge:] == 1)
    end_seconds = 200 * 4096 / 44100                                    # exactly the song's end
    latent, _ = _result(node.repaint(src, 7.3, end_seconds, 0.5))
    assert torch.all(latent["noise_mask"][..., edge:] == 1)
    # fractional seconds resolve to frames, not whole seconds: 1.05 s -> frame 11, 2.0 s -> 21
    latent, _ = _result(node.repaint(src, 1.05, 2.0, 0.5))
    on = latent["noise_mask"][0, 0, 0].nonzero().flatten().tolist()
    assert on == list(range(_frame(1.05), _frame(2.0))) == list(range(11, 21))


@pytest.mark.parametrize("start, end, message", [
    (5.0, 5.0, "before the end"),
    (30.0, 40.0, "starts past the end of the song"),
    (float("nan"), 1.0, "must be numbers"),
])
def test_repaint_bad_ranges_are_clear_errors(env, start, end, message):
    with pytest.raises(ValueError, match=message) as info:
        env["tasks"].AceStepRepaint().repaint(_source(frames=100), start, end, 0.2)
    assert "AceStepRepaint" in str(info.value)


def test_repaint_with_ksampler_keeps_the_outside(env, loaded, conds):
    """Stock KSampler with the Repaint latent and denoise = variance: frames outside the range
    stay the source (float rounding of the last Euler step, then exactly after
    AceStepRestoreSource); frames inside change."""
    tasks = env["tasks"]
    src = _source()
    latent, denoise = _result(tasks.AceStepRepaint().repaint(src, 0.5, 1.3, 0.6))
    a, b = _frame(0.5), _frame(1.3)
    sampled = _ksample(env, loaded[0], conds, latent, denoise=denoise)
    raw = sampled["samples"]
    outside = torch.cat([raw[..., :a] - src["samples"][..., :a], raw[..., b:] - src["samples"][..., b:]], -1)
    print(f"\nrepaint: KSampler output outside the range, max|out - source| = {outside.abs().max().item():.3e}")
    assert outside.abs().max() <= 1e-5
    assert (raw[..., a:b] - src["samples"][..., a:b]).abs().max() > 1e-2
    final = _result(tasks.AceStepRestoreSource().restore(sampled))[0]
    assert "noise_mask" not in final and tasks.TASK_KEY not in final
    assert torch.equal(final["samples"][..., :a], src["samples"][..., :a])
    assert torch.equal(final["samples"][..., b:], src["samples"][..., b:])
    assert torch.equal(final["samples"][..., a:b], raw[..., a:b])
    # variance 0: nothing is sampled, the source comes back exactly
    latent, denoise = _result(tasks.AceStepRepaint().repaint(src, 0.5, 1.3, 0.0))
    zero = _ksample(env, loaded[0], conds, latent, denoise=denoise)
    assert torch.equal(zero["samples"], src["samples"])


def test_masked_ksampler_is_the_original_repaint_loop(env, loaded, conds):
    """The claim behind AceStepRepaint: ComfyUI's masked Euler sampling equals the original's
    repaint loop (Euler step, then the known frames put back on (1-s')x0 + s'z0)."""
    from acestep_core.tasks import repaint_mask
    model = loaded[0]
    src = _source(seed=4)
    latent, _ = _result(env["tasks"].AceStepRepaint().repaint(src, 0.4, 1.5, 1.0))
    comfy_out = _ksample(env, model, conds, latent)["samples"]

    # The original loop with the same model velocities, noise and sigmas.
    import comfy.sample
    _use(model)
    transformer = model.model.diffusion_model
    mask = repaint_mask(FRAMES, 0.4, 1.5)[0]
    x0 = src["samples"]
    z0 = comfy.sample.prepare_noise(x0, SEED)
    sigmas = _sigmas(model)
    x = z0.clone()                                      # start step 0: (1 - 1) * x0 + 1 * z0
    positive, negative = conds
    for i in range(STEPS):
        s, s_next = sigmas[i:i + 1], sigmas[i + 1:i + 2]
        c = _raw_velocity(transformer, x, s, positive)
        u = _raw_velocity(transformer, x, s, negative)
        v = u + CFG * (c - u)
        x = x + (s_next - s) * v
        known = (1 - s_next) * x0 + s_next * z0
        x = torch.where(mask > 0.5, x, known)
    delta = (comfy_out - x).abs().max().item()
    print(f"\nmasked KSampler vs the original repaint loop: max|delta| = {delta:.3e}")
    assert delta <= 1e-4


# =============================================================================================
# Extend
# =============================================================================================
@pytest.mark.parametrize("frames, left, right", [(13, 0.7, 1.3), (9, 0.0, 0.45), (17, 1.1, 0.0), (5, 2.3, 0.1)])
def test_extend_lengths_and_source_kept(env, loaded, conds, frames, left, right):
    tasks = env["tasks"]
    src = _source(frames=frames, seed=frames)
    latent = _result(tasks.AceStepExtend().extend(src, left, right))[0]
    nl, nr = _frame(left), _frame(right)
    assert latent["samples"].shape[-1] == nl + frames + nr
    mask = latent["noise_mask"][0, 0, 0]
    assert mask.tolist() == [1.0] * nl + [0.0] * frames + [1.0] * nr
    sampled = _ksample(env, loaded[0], conds, latent, steps=2)
    raw = sampled["samples"]
    assert (raw[..., nl:nl + frames] - src["samples"]).abs().max() <= 1e-5
    final = _result(tasks.AceStepRestoreSource().restore(sampled))[0]["samples"]
    assert final.shape[-1] == nl + frames + nr
    assert torch.equal(final[..., nl:nl + frames], src["samples"])
    assert torch.equal(final[..., :nl], raw[..., :nl]) and torch.equal(final[..., nl + frames:], raw[..., nl + frames:])
    assert final[..., :nl].abs().sum() + final[..., nl + frames:].abs().sum() > 0


def test_extend_past_240_seconds_reattaches_the_source(env):
    """Source + extension longer than the 240 s window: the window holds the new frames and
    the nearest source frames; AceStepRestoreSource gives left + T + right frames with the whole
    source (sampling is faked here: the window is filled with a marker value)."""
    tasks = env["tasks"]
    src = _source(frames=2550, seed=1)
    for left, right in ((0.0, 10.0), (10.0, 0.0)):
        out = tasks.AceStepExtend().extend(src, left, right)
        latent = out["result"][0]
        assert any("240 s" in t for t in out["ui"]["text"])
        n = _frame(10.0)
        window = latent["samples"]
        assert window.shape[-1] == 2583
        sampled = dict(latent, samples=torch.where(latent["noise_mask"][:, :1].expand_as(window) > 0.5,
                                                   torch.full_like(window, 5.0), window))
        final = _result(tasks.AceStepRestoreSource().restore(sampled))[0]["samples"]
        assert final.shape[-1] == 2550 + n
        if right:
            assert torch.equal(final[..., :2550], src["samples"]) and torch.all(final[..., 2550:] == 5.0)
        else:
            assert torch.equal(final[..., n:], src["samples"]) and torch.all(final[..., :n] == 5.0)
    with pytest.raises(ValueError, match="one side at a time"):
        tasks.AceStepExtend().extend(src, 10.0, 10.0)


def test_extend_nothing_passes_through(env):
    tasks = env["tasks"]
    src = _source(frames=7)
    out = tasks.AceStepExtend().extend(src, 0.0, 0.05)
    latent = out["result"][0]
    assert "nothing is added" in out["ui"]["text"][0]
    assert torch.equal(latent["samples"], src["samples"]) and torch.all(latent["noise_mask"] == 0)
    final = _result(tasks.AceStepRestoreSource().restore(latent))[0]
    assert torch.equal(final["samples"], src["samples"])


def test_restore_source_passes_other_latents_through_and_refuses_mismatches(env):
    """AceStepRestoreSource on what is not a sampled Repaint / Extend latent: another latent passes
    through with a warning (its noise_mask dropped); a source of one is put back into every sampled
    item; another batch or another length than the task's is a clear error."""
    restore = env["tasks"].AceStepRestoreSource().restore
    src = _source()
    out = restore(dict(src, noise_mask=torch.ones(1, 1, 16, FRAMES)))
    assert out["ui"]["text"] == ["AceStepRestoreSource: this latent does not come from AceStepRepaint or "
                                 "AceStepExtend; passed through"]
    assert out["result"][0].keys() == {"samples", "type"} and out["result"][0]["samples"] is src["samples"]
    latent, _ = _result(env["tasks"].AceStepRepaint().repaint(src, 0.5, 1.3, 0.6))
    a, b = _frame(0.5), _frame(1.3)
    final = _result(restore(dict(latent, samples=torch.full((2, 8, 16, FRAMES), 5.0))))[0]["samples"]
    assert final.shape == (2, 8, 16, FRAMES)
    for item in final:
        assert torch.equal(item[..., :a], src["samples"][0, ..., :a]) and torch.all(item[..., a:b] == 5.0)
        assert torch.equal(item[..., b:], src["samples"][0, ..., b:])
    two = {"samples": torch.cat([src["samples"]] * 2), "type": "audio"}
    latent, _ = _result(env["tasks"].AceStepRepaint().repaint(two, 0.5, 1.3, 0.6))
    with pytest.raises(ValueError, match=r"AceStepRestoreSource: the sampled batch \(3\) does not match the "
                                         r"source batch \(2\)"):
        restore(dict(latent, samples=torch.zeros(3, 8, 16, FRAMES)))
    with pytest.raises(ValueError, match=f"AceStepRestoreSource: the latent has {FRAMES - 1} frames but the task "
                                         f"was made for {FRAMES}"):
        restore(dict(latent, samples=torch.zeros(2, 8, 16, FRAMES - 1)))


# =============================================================================================
# Retake
# =============================================================================================
class _FixedNoise:
    def __init__(self, noise, seed):
        self.noise, self.seed = noise, seed

    def generate_noise(self, input_latent):
        return self.noise.clone()


def test_retake_noise_formula(env):
    import comfy.sample
    tasks = env["tasks"]
    latent = _empty()
    e1 = comfy.sample.prepare_noise(latent["samples"], SEED)
    e2 = comfy.sample.prepare_noise(latent["samples"], RETAKE_SEED)
    make = lambda v: tasks.AceStepRetake().get_noise(SEED, RETAKE_SEED, v)[0]
    assert torch.equal(make(0.0).generate_noise(latent), e1) and make(0.0).seed == SEED
    assert torch.equal(make(1.0).generate_noise(latent), e2) and make(1.0).seed == RETAKE_SEED
    v = 0.3
    phi = v * math.pi / 2
    expected = math.cos(phi) * e1 + math.sin(phi) * e2
    assert torch.allclose(make(v).generate_noise(latent), expected, atol=1e-6, rtol=0)
    # with a repaint mask only the painted frames are mixed
    painted = _result(tasks.AceStepRepaint().repaint(_source(), 0.5, 1.0, v))[0]
    mixed = make(v).generate_noise(painted)
    a, b = _frame(0.5), _frame(1.0)
    assert torch.equal(mixed[..., :a], e1[..., :a]) and torch.equal(mixed[..., b:], e1[..., b:])
    assert torch.allclose(mixed[..., a:b], expected[..., a:b], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="variance"):
        tasks.AceStepRetake().get_noise(SEED, RETAKE_SEED, 1.5)


def test_retake_sampling_noise_and_ksampler_paths(env, loaded, conds):
    import comfy.sample
    cs, tasks = env["nodes_custom_sampler"], env["tasks"]
    model = loaded[0]
    original = _custom_sample(env, model, conds, _empty(), cs.RandomNoise.execute(SEED).result[0])["samples"]
    retaken = _custom_sample(env, model, conds, _empty(), cs.RandomNoise.execute(RETAKE_SEED).result[0])["samples"]
    noise = lambda v: tasks.AceStepRetake().get_noise(SEED, RETAKE_SEED, v)[0]
    assert torch.equal(_custom_sample(env, model, conds, _empty(), noise(0.0))["samples"], original)
    assert torch.equal(_custom_sample(env, model, conds, _empty(), noise(1.0))["samples"], retaken)
    v = 0.4
    e1 = comfy.sample.prepare_noise(_empty()["samples"], SEED)
    e2 = comfy.sample.prepare_noise(_empty()["samples"], RETAKE_SEED)
    phi = v * math.pi / 2
    formula = (math.cos(phi) * e1 + math.sin(phi) * e2).float()
    mid = _custom_sample(env, model, conds, _empty(), noise(v))["samples"]
    expected = _custom_sample(env, model, conds, _empty(), _FixedNoise(formula, RETAKE_SEED))["samples"]
    assert (mid - expected).abs().max() <= 1e-5
    assert (mid - original).abs().max() > 1e-3 and (mid - retaken).abs().max() > 1e-3

    # KSampler path: KSampler's seed is the original seed, the MODEL patch mixes in the retake.
    patch = lambda v: tasks.AceStepRetakeModel().patch(model, RETAKE_SEED, v)[0]
    ks_original = _ksample(env, model, conds, _empty())["samples"]
    assert torch.equal(_ksample(env, patch(0.0), conds, _empty())["samples"], ks_original)
    assert torch.equal(_ksample(env, patch(1.0), conds, _empty())["samples"],
                       _ksample(env, model, conds, _empty(), seed=RETAKE_SEED)["samples"])
    ks_mid = _ksample(env, patch(v), conds, _empty())["samples"]
    assert (ks_mid - mid).abs().max() <= 1e-5
    # the unpatched model is not affected by the patched clone
    assert torch.equal(_ksample(env, model, conds, _empty())["samples"], ks_original)


# =============================================================================================
# Flow-edit
# =============================================================================================
def _edit(env, model, source, target, mode, n_min=0.0, n_max=1.0, steps=5, cfg=CFG, seed=SEED, negative=None,
          latent=None):
    cs = env["nodes_custom_sampler"]
    guider = env["edit"].AceStepEdit().get_guider(model, source, target, mode, cfg, n_min, n_max, 1, "apg",
                                                      negative)[0]
    sigmas = cs.BasicScheduler.execute(model, "simple", steps, 1.0).result[0]
    sampler = cs.KSamplerSelect.execute("euler").result[0]
    noise = cs.RandomNoise.execute(seed).result[0]
    out, _ = cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent or _source(seed=9)).result
    return out["samples"], sigmas


def _counting(model):
    """MODEL clone that records (sigma, batch) of every transformer call."""
    calls = []
    clone = model.clone()

    def wrapper(apply_model, args):
        calls.append((round(float(args["timestep"][0]), 6), args["input"].shape[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone, calls


def test_edit_identity_returns_the_source(env, loaded, conds):
    positive, _ = conds
    src = _source(seed=9)["samples"]
    for mode in ("only_lyrics", "custom"):
        out, _ = _edit(env, loaded[0], positive, positive, mode)
        assert torch.equal(out, src), mode


def test_edit_steps_follow_n_min_n_max(env, loaded, conds):
    clip = loaded[1]
    positive, _ = conds
    target = env["nodes_ace"].TextEncodeAceStepAudio.execute(clip, TAGS, OTHER_LYRICS, 1.0).result[0]
    model, calls = _counting(loaded[0])
    steps = 5
    out, sigmas = _edit(env, model, positive, target, "custom", 0.4, 0.8, steps=steps)
    start, end = int(steps * 0.4), int(steps * 0.8)                 # edit steps 2, 3; then step 4 sampled
    per_sigma = {}
    for sigma, batch in calls:
        per_sigma[sigma] = per_sigma.get(sigma, 0) + batch
    called = sorted(per_sigma, reverse=True)
    assert called == [round(float(s), 6) for s in sigmas[start:steps]]
    for i in range(start, steps):
        # cond + uncond of both streams while editing, of the target only after n_max
        assert per_sigma[round(float(sigmas[i]), 6)] == (4 if i < end else 2), i
    src = _source(seed=9)["samples"]
    assert (out - src).abs().max() > 1e-3

    # only_lyrics preset = (0.6, 1.0): steps int(5*0.6)=3 .. 4 edited, nothing sampled after
    model, calls = _counting(loaded[0])
    _edit(env, model, positive, target, "only_lyrics", steps=steps)
    assert sorted({c[0] for c in calls}, reverse=True) == [round(float(s), 6) for s in sigmas[3:steps]]
    assert sum(batch for _, batch in calls) == 2 * 4


def test_edit_rejects_empty_latent_and_bad_range(env, loaded, conds):
    positive, _ = conds
    with pytest.raises(ValueError, match="latent is empty"):
        _edit(env, loaded[0], positive, positive, "only_lyrics", latent=_empty())
    with pytest.raises(ValueError, match="AceStepEdit"):
        env["edit"].AceStepEdit().get_guider(loaded[0], positive, positive, "custom", CFG, 0.8, 0.2, 1, "apg")


def test_edit_rejects_ace15_latents_and_conditioning_on_v1(env, loaded, conds):
    positive, _ = conds
    with pytest.raises(ValueError, match=r"MODEL is ACE-Step v1, whose latents are \[batch, 8, 16, frames\].*"
                                         r"\[1, 64, 30\]"):
        _edit(env, loaded[0], positive, positive, "only_lyrics", latent={"samples": torch.randn(1, 64, 30)})
    ace15_conditioning = [[torch.zeros(1, 5, 1024), {"conditioning_lyrics": torch.zeros(1, 7, 1024)}]]
    with pytest.raises(ValueError, match="AceStepEdit: the source conditioning comes from the ACE-Step 1.5 text "
                                         "encoder, but the MODEL is ACE-Step v1"):
        env["edit"].AceStepEdit().get_guider(loaded[0], ace15_conditioning, positive, "full", CFG, 0, 1, 1, "apg")


# =============================================================================================
# Guidance
# =============================================================================================
OFF = dict(cfg_type="cfg", guidance_interval=1.0, guidance_interval_decay=0.0, guidance_scale_text=0.0,
           guidance_scale_lyric=0.0, use_erg_tag=False, use_erg_lyric=False, use_erg_diffusion=False,
           omega_scale=0.0)


def _guided(env, model, **settings):
    g = env["guidance"]
    options = dict(OFF, erg_diffusion_blocks=(1,), erg_lyric_layers=(1,))
    options.update(settings)
    return g.GuidancePatch(g.GuidanceSettings(**options)).apply(model)


def _raw_velocity(transformer, x, sigma, conditioning, erg_text=None):
    """The transformer's velocity for one conditioning entry, called as ComfyUI calls it."""
    cond, options = conditioning[0]
    text = cond if erg_text is None else erg_text
    with torch.no_grad():
        return transformer(x, (sigma * 1000.0).expand(x.shape[0]), context=text,
                           lyric_token_idx=options["conditioning_lyrics"],
                           speaker_embeds=torch.zeros(x.shape[0], 512), lyrics_strength=1.0).float()


def _ref_apg(c, u, g, avg, momentum, threshold, eta):
    delta = c - u
    avg = delta if avg is None else delta + momentum * avg
    delta = avg
    norm = delta.norm(p=2, dim=(-2, -1), keepdim=True)
    delta = delta * torch.clamp(threshold / norm, max=1.0)
    c64, d64 = c.double(), delta.double()
    unit = c64 / c64.norm(p=2, dim=(-2, -1), keepdim=True)
    parallel = (d64 * unit).sum(dim=(-2, -1), keepdim=True) * unit
    return (c64 + (g - 1) * ((d64 - parallel) + eta * parallel)).float(), avg


def _ref_cfg_star(c, u, g, i):
    if i <= 1:
        return torch.zeros_like(c)
    alpha = (c * u).flatten(1).sum(1) / ((u * u).flatten(1).sum(1) + 1e-8)
    ua = u * alpha.view(-1, 1, 1, 1)
    return ua + g * (c - ua)


def _reference_sample(loaded, conds, settings: dict, cfg=CFG, steps=STEPS, erg_negative=None):
    """The original's text2music loop written out: Euler over ComfyUI's sigmas, guidance in the
    interval only, ERG by scaling queries of the tiny model's block 1 / lyric layer 1."""
    import comfy.sample
    from acestep_core.sampling.guidance import scaled_queries
    s = dict(OFF, **settings)
    model = loaded[0]
    _use(model)
    transformer = model.model.diffusion_model
    positive, negative = conds
    x = comfy.sample.prepare_noise(_empty()["samples"], SEED)
    sigmas = _sigmas(model, steps)
    n = steps
    start, end = int(n * ((1 - s["guidance_interval"]) / 2)), int(n * (s["guidance_interval"] / 2 + 0.5))
    diffusion_q = [transformer.transformer_blocks[1].attn, transformer.transformer_blocks[1].cross_attn] \
        if s["use_erg_diffusion"] else []
    lyric_q = [transformer.lyric_encoder.encoders[1].self_attn] if s["use_erg_lyric"] else []
    if s["use_erg_lyric"]:
        uncond = positive                             # the real lyrics, weakened by lyric ERG
        null_text = erg_negative[0][1]["acestep_erg_text"] if (erg_negative and s["use_erg_tag"]) \
            else torch.zeros_like(positive[0][0])
    else:
        uncond, null_text = negative, None
    double = s["guidance_scale_text"] > 1 and s["guidance_scale_lyric"] > 1
    avg = None
    for i in range(n):
        sig, sig_next = sigmas[i:i + 1], sigmas[i + 1:i + 2]
        c = _raw_velocity(transformer, x, sig, positive)
        if start <= i < end and cfg not in (0.0, 1.0):
            with scaled_queries([diffusion_q, lyric_q], 0.01):
                u = _raw_velocity(transformer, x, sig, uncond, erg_text=null_text)
            g = cfg
            if s["guidance_interval_decay"] > 0:
                g = cfg - (cfg - s["min_guidance_scale"]) * (i - start) / (end - start - 1) * s["guidance_interval_decay"]
            if double:
                if s["use_erg_lyric"]:
                    with scaled_queries(lyric_q, 0.01):
                        t = _raw_velocity(transformer, x, sig, positive)
                else:
                    no_lyrics = [[positive[0][0], dict(positive[0][1], conditioning_lyrics=torch.zeros_like(
                        positive[0][1]["conditioning_lyrics"]))]]
                    t = _raw_velocity(transformer, x, sig, no_lyrics)
                gt, gl = s["guidance_scale_text"], s["guidance_scale_lyric"]
                v = (1 - gt) * u + (gt - gl) * t + gl * c
            elif s["cfg_type"] == "apg":
                v, avg = _ref_apg(c, u, g, avg, s.get("apg_momentum", -0.75), s.get("apg_norm_threshold", 2.5),
                                  s.get("apg_eta", 0.0))
            elif s["cfg_type"] == "cfg_star":
                v = _ref_cfg_star(c, u, g, i)
            else:
                v = u + g * (c - u)
        else:
            v = c
        if s["omega_scale"]:
            w = 0.9 + 0.2 / (1 + math.exp(-0.1 * s["omega_scale"]))
            dx = (sig_next - sig) * v
            m = dx.mean()
            x = x + (dx - m) * w + m
        else:
            x = x + (sig_next - sig) * v
    return x


def test_guidance_all_off_is_the_unpatched_model(env, loaded, conds):
    model = loaded[0]
    patched = _guided(env, model)
    assert "sampler_post_cfg_function" not in patched.model_options
    assert "sampler_calc_cond_batch_function" not in patched.model_options
    assert torch.equal(_ksample(env, patched, conds, _empty())["samples"],
                       _ksample(env, model, conds, _empty())["samples"])
    node_off = env["guidance"].AceStepGuidance().patch(model, apg_momentum=-0.75, apg_norm_threshold=2.5, apg_eta=0.0,
                                                       cfg_star_zero_init=True, min_guidance_scale=3.0, **OFF)[0]
    assert torch.equal(_ksample(env, node_off, conds, _empty())["samples"],
                       _ksample(env, model, conds, _empty())["samples"])


_PLAIN: dict[int, torch.Tensor] = {}       # plain-CFG results of the guidance cases, by step count
GUIDANCE_CASES = {
    "apg_defaults": dict(cfg_type="apg"),
    "apg_clipping_eta": dict(cfg_type="apg", apg_momentum=-0.5, apg_norm_threshold=0.3, apg_eta=0.4),
    "cfg_star": dict(cfg_type="cfg_star"),
    "interval_decay": dict(cfg_type="cfg", guidance_interval=0.5, guidance_interval_decay=1.0,
                           min_guidance_scale=1.5),
    "double_condition": dict(guidance_scale_text=4.0, guidance_scale_lyric=2.5),
    "erg_diffusion": dict(use_erg_diffusion=True),
    "erg_lyric": dict(use_erg_lyric=True),
    "erg_lyric_double": dict(use_erg_lyric=True, guidance_scale_text=3.0, guidance_scale_lyric=2.0),
    "omega": dict(omega_scale=10.0),
    "everything": dict(cfg_type="apg", guidance_interval=0.75, use_erg_diffusion=True, use_erg_lyric=True,
                       use_erg_tag=True, omega_scale=10.0),
}


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_guidance_matches_the_reference_loop(env, loaded, conds, case):
    settings = GUIDANCE_CASES[case]
    steps = 4      # interval 0.5 -> guided steps 1, 2; 0.75 -> steps 0..2
    positive, negative = conds
    erg_neg = None
    if settings.get("use_erg_tag"):
        g = env["guidance"]
        erg_neg = g.erg_negative(positive, g.erg_tag_embedding(loaded[1], TAGS, blocks=(1,)))
        negative = erg_neg
    patched = _guided(env, loaded[0], **settings)
    ours = _ksample(env, patched, (positive, negative), _empty(), steps=steps)["samples"]
    reference = _reference_sample(loaded, conds, settings, steps=steps, erg_negative=erg_neg)
    if steps not in _PLAIN:
        _PLAIN[steps] = _ksample(env, loaded[0], conds, _empty(), steps=steps)["samples"]
    plain = _PLAIN[steps]
    delta = (ours - reference).abs().max().item()
    print(f"\nguidance {case}: max|KSampler+patch - reference| = {delta:.3e} "
          f"(differs from plain CFG by {(ours - plain).abs().max().item():.3e})")
    assert delta <= 1e-4
    assert (ours - plain).abs().max() > 1e-4          # the setting does something


def test_tag_erg_negative_without_patch_is_zero_out(env, loaded, conds):
    """AceStepErgNegative is ConditioningZeroOut plus the ERG embedding: without the patch it
    samples exactly like ConditioningZeroOut; the embedding differs from the plain encoding."""
    g = env["guidance"]
    positive, negative = conds
    emb = g.erg_tag_embedding(loaded[1], TAGS, blocks=(1,))
    assert emb.shape == positive[0][0].shape and (emb - positive[0][0]).abs().max() > 1e-3
    neg = g.erg_negative(positive, emb)
    assert torch.equal(_ksample(env, loaded[0], (positive, neg), _empty())["samples"],
                       _ksample(env, loaded[0], conds, _empty())["samples"])
    # the node uses UMT5 blocks 8 and 9; the tiny encoder has 2, so it falls back to a plain zero-out
    plain = g.AceStepErgNegative().encode(loaded[1], positive, TAGS)[0]
    assert g.ERG_TEXT_KEY not in plain[0][1] and torch.equal(plain[0][0], negative[0][0])


def test_guidance_node_defaults_run_and_skip_omega_when_repainting(env, loaded, conds):
    model = loaded[0]
    node = env["guidance"].AceStepGuidance()
    spec = node.INPUT_TYPES()["required"]
    defaults = {k: v[1]["default"] for k, v in spec.items() if k != "model"}
    assert defaults == dict(cfg_type="apg", apg_momentum=-0.75, apg_norm_threshold=2.5, apg_eta=0.0,
                            cfg_star_zero_init=True, guidance_interval=0.5, guidance_interval_decay=0.0,
                            min_guidance_scale=3.0, guidance_scale_text=0.0, guidance_scale_lyric=0.0,
                            use_erg_tag=True, use_erg_lyric=False, use_erg_diffusion=True, omega_scale=10.0)
    patched = node.patch(model, **defaults)[0]
    out = _ksample(env, patched, conds, _empty(), cfg=15.0)["samples"]
    assert torch.isfinite(out).all()
    # repaint with omega only: the patch leaves the masked sampling as it is (no omega)
    latent, denoise = _result(env["tasks"].AceStepRepaint().repaint(_source(), 0.5, 1.3, 1.0))
    omega_only = _guided(env, model, omega_scale=10.0)
    masked = (_ksample(env, omega_only, conds, latent)["samples"] - _ksample(env, model, conds, latent)["samples"])
    unmasked = (_ksample(env, omega_only, conds, _empty())["samples"] - _ksample(env, model, conds, _empty())["samples"])
    assert masked.abs().max() <= 1e-5 and unmasked.abs().max() > 1e-4
    with pytest.raises(ValueError, match="guidance_interval"):
        node.patch(model, **dict(defaults, guidance_interval=1.5))


# =============================================================================================
# LoRA
# =============================================================================================
@pytest.fixture(scope="module")
def lora_files(folders, loaded):
    from acestep_core.lora import write_tiny_lora
    env_model = loaded[0]
    shapes = {k[len("diffusion_model."):]: tuple(v.shape)
              for k, v in env_model.model_state_dict(filter_prefix="diffusion_model.").items()}
    loras = folders["loras"]
    write_tiny_lora(loras / "tiny_rslora.safetensors", shapes, rank=4, alpha=8.0, rslora=True, config="metadata",
                    seed=1)
    write_tiny_lora(loras / "tiny_plain.safetensors", shapes, rank=2, alpha=3.0, config="alpha_tensors", seed=2)
    save_file({"foo.weight": torch.zeros(3, 3)}, str(loras / "not_a_lora.safetensors"))
    wrong = {k: (s[0] * 2,) + tuple(s[1:]) for k, s in shapes.items()}
    write_tiny_lora(loras / "wrong_size.safetensors", wrong, rank=2, seed=3)
    (loras / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    return shapes


def _weights(model, keys):
    _use(model)
    transformer = model.model.diffusion_model
    return {k: transformer.get_parameter(k).detach().clone() for k in keys}


def test_lora_strength_scale_stacking_and_unplugging(env, loaded, conds, folders, lora_files):
    from acestep_core.lora import load_lora, lora_delta
    node = env["lora"].AceStepLoraLoader()
    model = loaded[0]
    first = load_lora(folders["loras"] / "tiny_rslora.safetensors", lora_files)
    second = load_lora(folders["loras"] / "tiny_plain.safetensors", lora_files)
    keys = sorted(first)
    assert len(keys) > 10 and all(abs(p.scale - 8.0 / math.sqrt(4)) == 0 for p in first.values())   # rsLoRA: 4.0
    assert all(p.scale == 3.0 / 2 for p in second.values())                                         # alpha / r
    base = _weights(model, keys)
    base_out = _ksample(env, model, conds, _empty())["samples"]

    zero = node.load(model, "tiny_rslora.safetensors", 0.0)[0]
    assert torch.equal(_ksample(env, zero, conds, _empty())["samples"], base_out)

    s = 0.7
    one = node.load(model, "tiny_rslora.safetensors", s)[0]
    patched = _weights(one, keys)
    worst = 0.0
    for k in keys:
        A, B, scale = first[k]
        expected = base[k] + lora_delta(A, B, scale, s, base[k].shape)
        worst = max(worst, (patched[k] - expected).abs().max().item())
        assert torch.equal(patched[k], expected), k
    print(f"\nLoRA: {len(keys)} weights, max|patched - (W + s*scale*B@A)| = {worst:.1e}")
    out_one = _ksample(env, one, conds, _empty())["samples"]
    assert (out_one - base_out).abs().max() > 1e-4

    two = node.load(one, "tiny_plain.safetensors", -1.3)[0]
    stacked = _weights(two, keys)
    for k in keys:
        expected = base[k] + lora_delta(*first[k], s, base[k].shape)
        if k in second:
            expected = expected + lora_delta(*second[k], -1.3, base[k].shape)
        assert torch.equal(stacked[k], expected), k

    # unplugged: the base MODEL samples exactly as before, with its original weights
    assert torch.equal(_ksample(env, model, conds, _empty())["samples"], base_out)
    restored = _weights(model, keys)
    assert all(torch.equal(restored[k], base[k]) for k in keys)


@pytest.mark.parametrize("name, message", [
    ("not_a_lora.safetensors", "is not a LoRA"),
    ("wrong_size.safetensors", "does not fit the model weight"),
    ("garbage.safetensors", "not a readable safetensors"),
    ("missing.safetensors", "was not found"),
])
def test_lora_bad_files_are_clear_errors(env, loaded, lora_files, name, message):
    with pytest.raises(ValueError, match=message) as info:
        env["lora"].AceStepLoraLoader().load(loaded[0], name, 1.0)
    assert "AceStepLoraLoader" in str(info.value)
