"""ACE-Step 1.5 as ComfyUI's MODEL, CLIP and VAE (nodes/ace15_bridge.py), in process.

Tiny random-weight 1.5 checkpoints in every released layout go through LoadAceStepCheckpoint and
LoadAceStep15Split; ComfyUI's stock nodes (TextEncodeAceStepAudio1.5 — ComfyUI's own on 0.20.1,
ours on 0.3.75 —, ConditioningZeroOut, KSampler, VAEDecodeAudio / VAEEncodeAudio) run on them.
The sampled latent is compared with the core's own text2music loop (0.3.75 and 0.20.1) and with
ComfyUI 0.20.1's own 1.5 model built at the tiny sizes from the same weights (0.20.1 only: 0.3.75
has no 1.5 model).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TAGS = "synth pop, female vocal, 120 bpm"
LYRICS = "[verse]\nNeon lights along the river\n[chorus]\nOh oh (oh)"
SECONDS, SEED, STEPS = 2.0, 7, 3
FRAMES = 50                                       # round(2 s * 48000 / 1920)


@pytest.fixture(scope="module")
def env(in_process_env):
    return in_process_env(extras=("nodes_ace", "nodes_audio", "nodes_model_advanced"),
                          pack_nodes=("loaders", "ace15_bridge", "ace15_nodes"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, env):
    """Tiny 1.5 checkpoints (same weights in each layout) registered in ComfyUI's model folders."""
    import folder_paths
    from acestep_core.ace15.tiny import write_tiny_ace15

    base = tmp_path_factory.mktemp("ace15_models")
    ckpts, diffusion = base / "checkpoints", base / "split"
    aio = write_tiny_ace15(ckpts, "aio")["checkpoint"]
    official = write_tiny_ace15(ckpts / "Ace-Step1.5", "official")
    split = write_tiny_ace15(diffusion, "split", planner=True)
    kinds = ("checkpoints", "diffusion_models", "text_encoders", "vae")
    saved = {k: list(folder_paths.folder_names_and_paths[k][0]) for k in kinds}
    folder_paths.add_model_folder_path("checkpoints", str(ckpts), is_default=True)
    for kind in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(kind, str(diffusion / kind), is_default=True)
    yield {"aio": aio, "official": official, "split": split}
    for k, paths in saved.items():
        folder_paths.folder_names_and_paths[k][0][:] = paths


def _text_encode_node(env):
    """ComfyUI's own TextEncodeAceStepAudio1.5 where it has one (0.20.1), else ours."""
    theirs = getattr(env["nodes_ace"], "TextEncodeAceStepAudio15", None)
    if theirs is not None:
        return lambda *a: theirs.execute(*a).result[0]
    return lambda *a: env["ace15_nodes"].TextEncodeAceStepAudio15().execute(*a)[0]


def _encode(env, clip, codes=False, seed=0):
    encode = _text_encode_node(env)
    return encode(clip, TAGS, LYRICS, seed, 120, SECONDS, "4", "en", "C major", codes, 2.0, 0.85, 0.9, 0, 0.0)


def _empty(env, seconds=SECONDS):
    return env["ace15_nodes"].EmptyAceStep15LatentAudio().execute(seconds, 1)[0]


def _ksample(env, model, positive, negative, latent, cfg=1.0, steps=STEPS, seed=SEED):
    return env["nodes"].common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative,
                                        latent)[0]["samples"]


@pytest.fixture(scope="module")
def loaded(env, models):
    return env["loaders"].LoadAceStepCheckpoint().load("ace_step_1.5_tiny_aio.safetensors", "fp32")


def test_the_checkpoint_loader_lists_and_loads_15(env, models, loaded):
    names = env["loaders"].list_checkpoint_names()
    assert "ace_step_1.5_tiny_aio.safetensors" in names and "Ace-Step1.5" in names
    model, clip, vae = loaded
    bridge = env["ace15_bridge"]
    assert isinstance(model.model, bridge.Ace15BaseModel)
    assert model.model.model_sampling.shift == pytest.approx(3.0)
    assert clip.cond_stage_model.acestep_generation == "1.5" and not clip.cond_stage_model.has_planner
    assert isinstance(vae, bridge.Ace15VAE) and vae.latent_channels == 64
    import comfy.model_base
    if hasattr(comfy.model_base, "ACEStep15"):        # ComfyUI maps official 1.5 LoRA keys by this class
        assert isinstance(model.model, comfy.model_base.ACEStep15)


def test_text2music_through_stock_nodes_equals_the_core_loop(env, models, loaded):
    """TextEncodeAceStepAudio1.5 (codes off) -> KSampler (euler, simple, 3 steps, cfg 1) on our MODEL
    gives the latent of acestep_core.ace15.pipeline.sample on the same weights."""
    from acestep_core.ace15.loading import load_ace15
    from acestep_core.ace15.pipeline import sample

    model, clip, _ = loaded
    positive = _encode(env, clip)
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    ours = _ksample(env, model, positive, negative, _empty(env))
    core = load_ace15(models["aio"])
    reference = sample(core, TAGS, LYRICS, seconds=SECONDS, steps=STEPS, cfg_scale=1.0, seed=SEED, language="en",
                       bpm=120, timesignature=4, keyscale="C major")
    assert ours.shape == (1, 64, FRAMES)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)   # float32 sigma tables differ in the last bits

    # CFG 3 with a ConditioningZeroOut negative: the null condition pass runs and changes the result.
    guided = _ksample(env, model, positive, negative, _empty(env), cfg=3.0)
    assert (guided - ours).abs().max() > 1e-3


def test_a_sampling_run_encodes_each_condition_once(env, loaded, monkeypatch):
    """Our MODEL's OUTER_SAMPLE wrapper: the condition encoder runs once per sampling run (the null
    condition of the CFG pass needs none), not once per step, with the same result as without it."""
    import comfy.patcher_extension
    model, clip, _ = loaded
    bridge = env["ace15_bridge"]
    positive = _encode(env, clip)
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    plain = model.clone()
    plain.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, bridge.REUSE_WRAPPER_KEY)
    encoder = model.model.diffusion_model.encoder
    calls = []
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    reused = _ksample(env, model, positive, negative, _empty(env), cfg=3.0, steps=4)
    assert len(calls) == 1
    calls.clear()
    every_step = _ksample(env, plain, positive, negative, _empty(env), cfg=3.0, steps=4)
    assert len(calls) == 4
    torch.testing.assert_close(reused, every_step, rtol=0, atol=0)


def test_every_layout_loads_the_same_model(env, models, loaded):
    model, clip, _ = loaded
    positive = _encode(env, clip)
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    reference = _ksample(env, model, positive, negative, _empty(env))
    split = env["loaders"].LoadAceStep15Split().load("acestep_v1.5_tiny.safetensors", "qwen_0.6b_ace15.safetensors",
                                                     "ace_1.5_vae.safetensors", "none", "fp32")
    m2, c2, _ = split
    p2 = _encode(env, c2)
    torch.testing.assert_close(_ksample(env, m2, p2, env["nodes"].ConditioningZeroOut().zero_out(p2)[0],
                                        _empty(env)), reference, rtol=0, atol=0)
    # The official folder ships its own silence_latent.pt (random in the tiny one), so its result
    # differs from the all-in-one file's, which uses ComfyUI's silence values.
    m3, c3, v3 = env["loaders"].LoadAceStepCheckpoint().load("Ace-Step1.5", "fp32")
    p3 = _encode(env, c3)
    official = _ksample(env, m3, p3, env["nodes"].ConditioningZeroOut().zero_out(p3)[0], _empty(env))
    assert official.shape == reference.shape and torch.isfinite(official).all()
    assert m3.model.silence_file is not None and m3.model.silence_file.name == "silence_latent.pt"


def test_wrong_mix_in_the_split_loader_names_each_file(env, models):
    from acestep_core.checkpoint import CheckpointError
    with pytest.raises(CheckpointError) as err:
        env["loaders"].LoadAceStep15Split().load("acestep_v1.5_tiny.safetensors", "qwen_1.7b_ace15.safetensors",
                                                 "ace_1.5_vae.safetensors", "none", "fp32")
    message = str(err.value)
    assert "qwen_1.7b_ace15.safetensors" in message and "planner" in message and "text encoder" in message


def test_vae_decodes_at_the_rate_the_audio_nodes_expect(env, loaded):
    """VAEDecodeAudio on ComfyUI 0.20 reads the VAE's 48 kHz; 0.3.75's assumes 44.1 kHz, so there the
    VAE resamples. Encoding the decoded audio through VAEEncodeAudio gives a latent of the same length."""
    _, _, vae = loaded
    bridge = env["ace15_bridge"]
    latent = {"samples": torch.randn(1, 64, FRAMES, generator=torch.Generator().manual_seed(0))}
    decode = getattr(env["nodes_audio"], "VAEDecodeAudio")
    out = decode.execute(vae, latent).result[0] if hasattr(decode, "execute") else decode().decode(vae, latent)[0]
    rate = 48000 if bridge.audio_nodes_read_vae_sample_rate() else 44100
    assert out["sample_rate"] == rate == vae.audio_sample_rate
    assert out["waveform"].shape == (1, 2, FRAMES * 1920 * rate // 48000)
    assert torch.isfinite(out["waveform"]).all() and out["waveform"].abs().max() > 0
    encode = getattr(env["nodes_audio"], "VAEEncodeAudio")
    again = encode.execute(vae, out).result[0] if hasattr(encode, "execute") else encode().encode(vae, out)[0]
    assert again["samples"].shape == (1, 64, FRAMES)

    # The 48 kHz path of a VAE built for the newer audio nodes: exact length, no resampling.
    direct = bridge.make_vae(vae.codec, torch.float32, io_sample_rate=48000)
    wave = direct.decode(latent["samples"])
    assert wave.shape == (1, FRAMES * 1920, 2)
    torch.testing.assert_close(wave.movedim(-1, 1), vae.codec.decode(latent["samples"]), rtol=0, atol=0)


def test_bad_latents_and_conditioning_say_what_is_wrong(env, loaded):
    model, clip, vae = loaded
    with pytest.raises(ValueError, match=r"ACE-Step 1.5 latents are \[batch, 64, frames\]"):
        vae.decode(torch.zeros(1, 8, 16, 10))
    with pytest.raises(ValueError, match="NaN"):
        vae.decode(torch.full((1, 64, 4), float("nan")))
    with pytest.raises(ValueError, match="longer clip"):
        vae.encode(torch.zeros(1, 100, 2))
    not_15 = [[torch.zeros(1, 5, 24), {"pooled_output": None}]]
    with pytest.raises(ValueError, match="TextEncodeAceStepAudio1.5"):
        _ksample(env, model, not_15, not_15, _empty(env))


def test_planner_codes_through_the_clip(env, models):
    """A CLIP loaded with a planner writes 5 codes per second with generate_audio_codes on, the same
    codes as the core planner for the same prompt and seed, and they reach the DiT as audio_codes."""
    from acestep_core.ace15.planner import load_planner
    from acestep_core.ace15.planner_grammar import PlannerTokenizer, codes_prompts

    model, clip, _ = env["loaders"].LoadAceStep15Split().load(
        "acestep_v1.5_tiny.safetensors", "qwen_0.6b_ace15.safetensors", "ace_1.5_vae.safetensors",
        "qwen_1.7b_ace15.safetensors", "fp32")
    assert clip.cond_stage_model.has_planner
    positive = _encode(env, clip, codes=True, seed=11)
    codes = positive[0][1]["audio_codes"][0]
    assert len(codes) == 5 * 2 and all(0 <= c < 64000 for c in codes)

    planner = load_planner(models["split"]["planner"])
    tokenizer = PlannerTokenizer.load(clip.tokenizer.tokenizer.folder)
    cond, uncond = codes_prompts(TAGS, LYRICS, {"bpm": 120, "duration": SECONDS, "keyscale": "C major",
                                                "timesignature": 4})
    expected = planner.generate_codes(tokenizer.encode(cond), tokenizer.encode(uncond), 10, seed=11, cfg_scale=2.0,
                                      temperature=0.85, top_p=0.9, top_k=0, min_p=0.0)
    assert codes == expected
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    with_codes = _ksample(env, model, positive, negative, _empty(env))
    without = _ksample(env, model, _encode(env, clip), negative, _empty(env))
    assert torch.isfinite(with_codes).all() and (with_codes - without).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# ComfyUI 0.20.1's own 1.5 model on the same weights
# ---------------------------------------------------------------------------------------------
def _comfy_kwargs(config):
    spec = importlib.util.spec_from_file_location("make_ace15_manifest", REPO / "scripts" / "make_ace15_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.comfy_kwargs(config)


@pytest.fixture(scope="module")
def native(env, models):
    """ComfyUI 0.20.1's own 1.5 MODEL (comfy.model_base.ACEStep15) built at the tiny sizes with the
    all-in-one file's DiT weights (its loader hard-codes a 128-wide head, so it is built from
    supported_models.ACEStep15 with the tiny unet_config)."""
    import comfy.model_base
    if not hasattr(comfy.model_base, "ACEStep15"):
        pytest.skip("this ComfyUI has no ACE-Step 1.5 model of its own (0.20+ has)")
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from acestep_core.ace15.config import config_from_state_dict_shapes
    from acestep_core.ace15.loading import inspect_path

    dit = inspect_path(models["aio"]).of("dit")[0]
    unet_config = {"audio_model": "ace1.5", **_comfy_kwargs(config_from_state_dict_shapes(dit.source.shapes))}
    model_config = comfy.supported_models.ACEStep15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    missing, unexpected = model.diffusion_model.load_state_dict(dit.source.state_dict(dtype=torch.float32),
                                                                strict=True)
    assert not missing and not unexpected
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=mm.get_torch_device(), offload_device="cpu")


def _conds(env, clip):
    positive = _encode(env, clip)
    return positive, env["nodes"].ConditioningZeroOut().zero_out(positive)[0]


def test_same_latent_as_comfyuis_own_15_model(env, loaded, native):
    model, clip, _ = loaded
    positive, negative = _conds(env, clip)
    for cfg in (1.0, 3.0):
        ours = _ksample(env, model, positive, negative, _empty(env), cfg=cfg)
        theirs = _ksample(env, native, positive, negative, _empty(env), cfg=cfg)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _easycache(model, threshold):
    node = importlib.import_module("comfy_extras.nodes_easycache").EasyCacheNode
    return node.execute(model, threshold, 0.0, 1.0, False).result[0]


def _easycache_run(env, model, conds, caplog):
    import logging
    caplog.clear()
    with caplog.at_level(logging.INFO):
        latent = _ksample(env, _easycache(model, 3.0), *conds, _empty(env), steps=12)
    lines = [r.getMessage() for r in caplog.records if "EasyCache - skipped" in r.getMessage()]
    assert lines, "EasyCache did not run"
    return latent, lines[-1]


def test_easycache_skips_steps_on_our_15_model(env, loaded, caplog):
    """ComfyUI's stock EasyCache (12 steps, threshold 3.0) acts on our 1.5 MODEL: steps skipped,
    latent changed (nodes_easycache exists on both ComfyUIs)."""
    model, clip, _ = loaded
    conds = _conds(env, clip)
    latent, line = _easycache_run(env, model, conds, caplog)
    assert "skipped 0/" not in line, line
    plain = _ksample(env, model, *conds, _empty(env), steps=12)
    assert (latent - plain).abs().max() > 1e-4


def test_easycache_and_official_lora_same_on_ours_and_comfyuis_15(env, loaded, native, caplog, tmp_path):
    """EasyCache: ComfyUI 0.20.1's own 1.5 model never runs DIFFUSION_MODEL wrappers
    (``AceStepConditionGenerationModel.forward`` takes transformer_options in **kwargs and ignores
    it), so EasyCache skips nothing there ("skipped 0/12"), while on ours it skips 8/12; should a
    ComfyUI release run the wrappers, both must skip the same steps with the same latent.
    LoraLoaderModelOnly with a LoRA in the official 1.5 (PEFT) key layout,
    ``base_model.model.<decoder module>.lora_A/B.weight``: the same latent on both."""
    model, clip, _ = loaded
    conds = _conds(env, clip)
    ours, our_line = _easycache_run(env, model, conds, caplog)
    theirs, their_line = _easycache_run(env, native, conds, caplog)
    assert "skipped 0/" not in our_line, our_line
    if "skipped 0/" in their_line:
        print(f"\nours: {our_line}\nComfyUI's 1.5: {their_line} (its model runs no DIFFUSION_MODEL wrappers)")
        plain = _ksample(env, native, *conds, _empty(env), steps=12)
        torch.testing.assert_close(theirs, plain, rtol=0, atol=0)
    else:
        assert our_line == their_line, (our_line, their_line)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    import comfy.lora
    import comfy.utils
    from safetensors.torch import save_file
    weights = model.model.diffusion_model.decoder.state_dict()
    g = torch.Generator().manual_seed(3)
    lora = {}
    for name in [k for k in weights if k.endswith("self_attn.q_proj.weight")][:2]:
        out_f, in_f = weights[name].shape
        stem = "base_model.model." + name[: -len(".weight")]
        lora[stem + ".lora_A.weight"] = torch.randn(4, in_f, generator=g) * 0.5
        lora[stem + ".lora_B.weight"] = torch.randn(out_f, 4, generator=g) * 0.5
    assert lora
    path = tmp_path / "official_15_lora.safetensors"
    save_file(lora, str(path))
    sd = comfy.utils.load_torch_file(str(path))
    results = []
    for patcher in (model, native):
        key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
        loaded_lora = comfy.lora.load_lora(sd, key_map)
        assert len(loaded_lora) == 2, f"official 1.5 LoRA keys not mapped on {type(patcher.model).__name__}"
        clone = patcher.clone()
        clone.add_patches(loaded_lora, 1.0)
        results.append(_ksample(env, clone, *conds, _empty(env)))
    plain = _ksample(env, model, *conds, _empty(env))
    assert (results[0] - plain).abs().max() > 1e-4
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_reference_timbre_through_stock_nodes(env, loaded, request):
    """ReferenceTimbreAudio with a latent from VAEEncodeAudio: the DiT gets the reference (is_covers
    True, no silence stand-in), the result differs from plain text2music, and on ComfyUI 0.20.1 it
    equals ComfyUI's own 1.5 model's for the same conditioning."""
    model, clip, vae = loaded
    positive, negative = _conds(env, clip)
    wave = torch.sin(torch.linspace(0, 900, 3 * 48000)).repeat(1, 2, 1) * 0.3
    audio = {"waveform": wave, "sample_rate": 48000}
    encode = env["nodes_audio"].VAEEncodeAudio
    reference = encode.execute(vae, audio).result[0] if hasattr(encode, "execute") else encode().encode(vae, audio)[0]
    assert reference["samples"].shape[:2] == (1, 64)
    reference_node = env["nodes_ace"].ReferenceAudio if hasattr(env["nodes_ace"], "ReferenceAudio") else None
    if reference_node is not None:
        with_reference = reference_node.execute(positive, reference).result[0]
    else:
        with_reference = env["ace15_nodes"].ReferenceAudio().execute(positive, reference)[0]
    timbre = _ksample(env, model, with_reference, negative, _empty(env))
    plain = _ksample(env, model, positive, negative, _empty(env))
    assert torch.isfinite(timbre).all() and (timbre - plain).abs().max() > 1e-4
    import comfy.model_base
    if hasattr(comfy.model_base, "ACEStep15"):
        native = request.getfixturevalue("native")
        torch.testing.assert_close(timbre, _ksample(env, native, with_reference, negative, _empty(env)),
                                   rtol=1e-4, atol=1e-4)


def test_clip_asks_for_a_full_load(env, loaded, monkeypatch):
    """The 1.5 text encoder and planner are transformers modules that cannot run partly offloaded:
    encoding asks ComfyUI's memory manager for a full load of the CLIP's own patcher."""
    import comfy.model_management as mm
    _, clip, _ = loaded
    calls = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: calls.append((models, k)) or real(models, *a, **k))
    _encode(env, clip)
    assert any(clip.patcher in models and k.get("force_full_load") for models, k in calls), calls
