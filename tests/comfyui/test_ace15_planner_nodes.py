"""The ACE-Step 1.5 planner nodes (nodes/ace15_planner.py) on a tiny random-weight checkpoint with a
tiny planner, loaded through LoadAceStep15Split: metadata kept / written in the grammar, 5 codes per
second, seeded, the codes sampled through KSampler like TextEncodeAceStepAudio1.5's own, ComfyUI's
progress bar, Cancel, and ComfyUI's memory manager holding the planner.
"""
from __future__ import annotations

import time

import pytest
import torch

from .pack_import import pack_module

TAGS = "synth pop, female vocal"
LYRICS = "[verse]\nNeon lights along the river\n[chorus]\nOh oh (oh)"
SECONDS, STEPS = 2.0, 3
SET_ALL = dict(bpm=120, duration=SECONDS, timesignature="4", language="en", keyscale="C major")
AUTO_ALL = dict(bpm=0, duration=0.0, timesignature="auto", language="auto", keyscale="auto")
SAMPLING = dict(cfg_scale=2.0, temperature=0.85, top_p=0.9, top_k=0, min_p=0.0)   # ComfyUI 0.20.1's defaults


@pytest.fixture(scope="module")
def env(in_process_env):
    return in_process_env(extras=("nodes_ace", "nodes_audio"),
                          pack_nodes=("loaders", "ace15_nodes", "ace15_planner"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, env):
    import folder_paths
    from acestep_core.ace15.tiny import write_tiny_ace15

    base = tmp_path_factory.mktemp("ace15_planner_models")
    split = write_tiny_ace15(base, "split", planner=True)
    aio = write_tiny_ace15(base / "checkpoints", "aio")["checkpoint"]
    kinds = ("checkpoints", "diffusion_models", "text_encoders", "vae")
    saved = {k: list(folder_paths.folder_names_and_paths[k][0]) for k in kinds}
    folder_paths.add_model_folder_path("checkpoints", str(base / "checkpoints"), is_default=True)
    for kind in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(kind, str(base / kind), is_default=True)
    yield {"split": split, "aio": aio}
    for k, paths in saved.items():
        folder_paths.folder_names_and_paths[k][0][:] = paths


def _load(env, planner="qwen_1.7b_ace15.safetensors"):
    return env["loaders"].LoadAceStep15Split().load("acestep_v1.5_tiny.safetensors", "qwen_0.6b_ace15.safetensors",
                                                    "ace_1.5_vae.safetensors", planner, "fp32")


@pytest.fixture(scope="module")
def loaded(env, models):
    return _load(env)


def _plan(env, clip, seed=11, codes=True, **metadata):
    fields = {**AUTO_ALL, **metadata}
    out = env["ace15_planner"].AceStepPlanner().plan(clip, TAGS, LYRICS, seed, fields["bpm"], fields["duration"],
                                                     fields["timesignature"], fields["language"],
                                                     fields["keyscale"], codes, **SAMPLING)
    assert out["ui"]["text"] == [out["result"][1]]
    return out["result"]


def _text_encode(env, clip, codes, seed=11):
    theirs = getattr(env["nodes_ace"], "TextEncodeAceStepAudio15", None)
    args = (clip, TAGS, LYRICS, seed, 120, SECONDS, "4", "en", "C major", codes, *SAMPLING.values())
    if theirs is not None:
        return theirs.execute(*args).result[0]
    return env["ace15_nodes"].TextEncodeAceStepAudio15().execute(*args)[0]


def _ksample(env, model, positive, seconds=SECONDS, seed=7):
    negative = env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    latent = env["ace15_nodes"].EmptyAceStep15LatentAudio().execute(seconds, 1)[0]
    return env["nodes"].common_ksampler(model, seed, STEPS, 1.0, "euler", "simple", positive, negative,
                                        latent)[0]["samples"]


def test_user_metadata_is_kept_and_codes_match_the_duration(env, loaded):
    _, clip, _ = loaded
    plan, text, duration = _plan(env, clip, **{**SET_ALL, "duration": 3.5, "keyscale": "F# minor", "bpm": 97,
                                               "timesignature": "3", "language": "ja"})
    assert plan.metadata == {"bpm": 97, "duration": 3.5, "keyscale": "F# minor", "timesignature": "3",
                             "language": "ja"}
    assert plan.generated == () and duration == 3.5
    assert len(plan.codes) == 5 * 4 and all(0 <= c < 64000 for c in plan.codes)     # 5 per second, rounded up
    assert "bpm: 97 (user)" in text and "keyscale: F# minor (user)" in text and "audio codes: 20" in text


def test_auto_fields_are_written_in_the_grammar_and_user_fields_untouched(env, loaded):
    from acestep_core.ace15.planner_grammar import (BPM_RANGE, DURATION_RANGE, VALID_KEYSCALES, VALID_LANGUAGES,
                                                    VALID_TIME_SIGNATURES)
    _, clip, _ = loaded
    for seed, given in ((1, {}), (2, {"bpm": 88}), (3, {"keyscale": "Eb major", "language": "de"}),
                        (4, {"duration": 2.0, "timesignature": "6"})):
        plan, text, duration = _plan(env, clip, seed=seed, codes=False, **given)
        meta = plan.metadata
        assert set(plan.generated) == {"bpm", "duration", "keyscale", "language", "timesignature"} - set(given)
        for key, value in given.items():
            shown = f"{value:g}" if isinstance(value, float) else value     # 2.0 s is written 2
            assert meta[key] == value and f"{key}: {shown} (user)" in text
        assert BPM_RANGE[0] <= meta["bpm"] <= BPM_RANGE[1]
        assert DURATION_RANGE[0] <= meta["duration"] <= DURATION_RANGE[1] or "duration" in given
        assert meta["keyscale"] in VALID_KEYSCALES and meta["language"] in VALID_LANGUAGES
        assert str(meta["timesignature"]) in VALID_TIME_SIGNATURES
        assert duration == float(meta["duration"]) and plan.codes == ()
        assert "audio codes: none" in text


def test_language_not_planned_when_the_other_fields_are_set(env, loaded):
    _, clip, _ = loaded
    plan, text, _ = _plan(env, clip, codes=False, **{**SET_ALL, "language": "auto"})
    assert plan.generated == () and plan.metadata["language"] == "unknown"
    assert "language: unknown (not planned" in text


def test_same_seed_same_codes(env, loaded):
    _, clip, _ = loaded
    first = _plan(env, clip, seed=3, **SET_ALL)[0]
    assert _plan(env, clip, seed=3, **SET_ALL)[0] == first
    assert _plan(env, clip, seed=4, **SET_ALL)[0].codes != first.codes
    auto = _plan(env, clip, seed=9, codes=False)[0]
    assert _plan(env, clip, seed=9, codes=False)[0].metadata == auto.metadata


def test_applied_codes_sample_like_text_encode_with_codes_on(env, loaded):
    """Plan (all metadata set) -> AceStepApplyAudioCodes on TextEncodeAceStepAudio1.5 (codes off) ->
    KSampler gives the latent of TextEncodeAceStepAudio1.5 with generate_audio_codes on, same seed;
    AceStepPlanTextEncode gives the same conditioning."""
    model, clip, _ = loaded
    plan, _, duration = _plan(env, clip, seed=11, **SET_ALL)
    planner = env["ace15_planner"]
    stock = _text_encode(env, clip, codes=True, seed=11)
    assert stock[0][1]["audio_codes"] == [list(plan.codes)]
    applied = planner.AceStepApplyAudioCodes().apply(_text_encode(env, clip, codes=False), plan)[0]
    from_plan = planner.AceStepPlanTextEncode().encode(clip, plan, True)[0]
    for conditioning in (applied, from_plan):
        assert conditioning[0][1]["audio_codes"] == [list(plan.codes)]
        torch.testing.assert_close(conditioning[0][0], stock[0][0], rtol=0, atol=0)
        torch.testing.assert_close(conditioning[0][1]["conditioning_lyrics"], stock[0][1]["conditioning_lyrics"],
                                   rtol=0, atol=0)
    expected = _ksample(env, model, stock, duration)
    torch.testing.assert_close(_ksample(env, model, applied, duration), expected, rtol=0, atol=0)
    torch.testing.assert_close(_ksample(env, model, from_plan, duration), expected, rtol=0, atol=0)
    without = planner.AceStepPlanTextEncode().encode(clip, plan, False)[0]
    assert "audio_codes" not in without[0][1]
    assert (_ksample(env, model, without, duration) - expected).abs().max() > 1e-4


def test_progress_bar_counts_tokens(env, loaded):
    import comfy.utils
    _, clip, _ = loaded
    calls = []
    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        _plan(env, clip, **SET_ALL)                    # codes only: 10 tokens
        codes_only, calls[:] = list(calls), []
        plan = _plan(env, clip, seed=2, **{**SET_ALL, "bpm": 0, "language": "auto"})[0]   # metadata pass first
        with_metadata = list(calls)
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
    assert codes_only[-1] == (10, 10) and codes_only[0][0] == 1
    assert [v for v, _ in codes_only] == sorted(v for v, _ in codes_only)
    if len(codes_only) == 10:                          # ComfyUI 0.3.75 reports every token (0.20 throttles)
        assert codes_only == [(i, 10) for i in range(1, 11)]
    assert plan.generated == ("bpm", "language")
    values = [v for v, _ in with_metadata]
    assert values == sorted(values) and with_metadata[-1][0] == with_metadata[-1][1]
    assert with_metadata[-1][0] > 10                   # the metadata tokens and the 10 codes


def test_interrupt_stops_planning_and_the_next_run_works(env, loaded):
    import comfy.model_management as mm
    import comfy.utils
    _, clip, _ = loaded
    expected = _plan(env, clip, seed=5, **SET_ALL)[0]
    seen = []

    def cancel_at_first_token(value, total, preview, node_id=None):
        seen.append(value)
        mm.interrupt_current_processing(True)

    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(cancel_at_first_token)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _plan(env, clip, seed=5, **SET_ALL)
    finally:
        comfy.utils.set_progress_bar_global_hook(saved)
        mm.interrupt_current_processing(False)
    assert seen == [1]                                 # stopped before the second token
    assert _plan(env, clip, seed=5, **SET_ALL)[0] == expected


def test_memory_manager_holds_the_planner_and_can_unload_it(env, loaded):
    """After planning the CLIP (planner included) is among ComfyUI's loaded models, its weights on the
    load device. Loading the MODEL for sampling then frees memory on that device
    (``load_models_gpu`` -> ``free_memory``), which unloads the CLIP to its offload device when the
    memory is needed. On the CPU ComfyUI skips that step (load and offload device are both the CPU:
    there is nothing to move), so here ``free_memory`` is called as it would be on a GPU."""
    import comfy.model_management as mm
    model, clip, _ = loaded
    mm.unload_all_models()
    _plan(env, clip, **SET_ALL)
    assert clip.patcher in [m.model for m in mm.current_loaded_models]
    planner_weight = clip.cond_stage_model.planner.lm.model.embed_tokens.weight
    device = clip.patcher.load_device
    assert planner_weight.device == torch.device(device)
    mm.load_models_gpu([model])
    assert model in [m.model for m in mm.current_loaded_models]
    if torch.device(device).type == "cpu":
        assert clip.patcher in [m.model for m in mm.current_loaded_models]
    unloaded = mm.free_memory(mm.get_free_memory(device) * 4, device)
    assert clip.patcher in [m.model for m in unloaded]
    assert clip.patcher not in [m.model for m in mm.current_loaded_models]
    assert planner_weight.device == torch.device(clip.patcher.offload_device)
    # The next plan loads it again and gives the same codes.
    first = _plan(env, clip, **SET_ALL)[0]
    assert clip.patcher in [m.model for m in mm.current_loaded_models]
    assert _plan(env, clip, **SET_ALL)[0] == first
    mm.unload_all_models()


def test_clear_errors(env, models, loaded):
    planner = env["ace15_planner"]
    _, no_planner, _ = env["loaders"].LoadAceStepCheckpoint().load("ace_step_1.5_tiny_aio.safetensors", "fp32")
    with pytest.raises(ValueError, match="no 5 Hz planner.*qwen_1.7b_ace15.*qwen_4b_ace15.*acestep-5Hz-lm"):
        _plan(env, no_planner, **SET_ALL)

    from acestep_core.testing import write_tiny_checkpoint
    write_tiny_checkpoint(models["aio"].parent / "ace_v1_tiny.safetensors", layout="comfyui", seed=0)
    _, v1_clip, _ = env["loaders"].LoadAceStepCheckpoint().load("ace_v1_tiny.safetensors", "fp32")
    with pytest.raises(ValueError, match="not an ACE-Step 1.5 text encoder.*v1"):
        _plan(env, v1_clip, **SET_ALL)
    with pytest.raises(ValueError, match="needs an ACE-Step 1.5 text encoder"):
        planner.AceStepPlanTextEncode().encode(v1_clip, _plan(env, loaded[1], **SET_ALL)[0], True)

    class ComfyOwn15Clip:                              # ComfyUI 0.20's ACE15TEModel: qwen3_06b, lm_model
        cond_stage_model = torch.nn.Module()
        cond_stage_model.qwen3_06b = torch.nn.Module()
        cond_stage_model.lm_model = "qwen3_2b"
    with pytest.raises(ValueError, match="ComfyUI's own ACE-Step 1.5 text encoder.*LoadAceStep15Split"):
        _plan(env, ComfyOwn15Clip(), **SET_ALL)
    with pytest.raises(ValueError, match="bpm 5 is out of range"):
        _plan(env, loaded[1], **{**SET_ALL, "bpm": 5})

    plan_without_codes = _plan(env, loaded[1], codes=False, **SET_ALL)[0]
    conditioning = _text_encode(env, loaded[1], codes=False)
    with pytest.raises(ValueError, match="no audio codes.*generate_audio_codes"):
        planner.AceStepApplyAudioCodes().apply(conditioning, plan_without_codes)
    with pytest.raises(ValueError, match="must come from AceStepPlanner"):
        planner.AceStepApplyAudioCodes().apply(conditioning, {"codes": [1, 2]})


def test_nan_planner_gives_a_clear_error(env, models):
    from acestep_core.ace15.planner import PlannerError
    _, clip, _ = _load(env)
    with torch.no_grad():
        clip.cond_stage_model.planner.lm.model.norm.weight.fill_(float("nan"))
    with pytest.raises(PlannerError, match="NaN/inf"):
        _plan(env, clip, **SET_ALL)
    with pytest.raises(PlannerError, match="NaN/inf"):
        _plan(env, clip, codes=False)


def test_nodes_are_registered(env):
    pack = pack_module()
    for node_id in ("AceStepPlanner", "AceStepApplyAudioCodes", "AceStepPlanTextEncode"):
        assert node_id in pack.NODE_CLASS_MAPPINGS
    inputs = env["ace15_planner"].AceStepPlanner.INPUT_TYPES()["required"]
    stock = env["ace15_nodes"].TextEncodeAceStepAudio15.INPUT_TYPES()["required"]
    for name in ("seed", "cfg_scale", "temperature", "top_p", "top_k", "min_p", "generate_audio_codes"):
        assert inputs[name][1]["default"] == stock[name][1]["default"], name
    assert inputs["bpm"][1]["default"] == 0 and inputs["keyscale"][1]["default"] == "auto"
    optional = env["ace15_planner"].AceStepPlanner.INPUT_TYPES()["optional"]
    assert optional["matrix_products"][0] == ["auto", "float32", "weight_dtype"]
    assert optional["matrix_products"][1]["default"] == "auto"


def test_matrix_products_reach_the_planner(env, loaded, monkeypatch):
    """The node's matrix_products option is the core planner's products for this run; left out
    (a workflow saved before the option existed) it is auto."""
    _, clip, _ = loaded
    planner = clip.cond_stage_model.planner
    seen = []
    original = planner.plan

    def spy(*args, **kwargs):
        seen.append(kwargs["products"])
        return original(*args, **kwargs)
    monkeypatch.setattr(planner, "plan", spy)
    node = env["ace15_planner"].AceStepPlanner()
    fields = {**AUTO_ALL, **SET_ALL}
    args = (clip, TAGS, LYRICS, 5, fields["bpm"], 1.0, fields["timesignature"], fields["language"], fields["keyscale"],
            True, *SAMPLING.values())
    fast = node.plan(*args, matrix_products="weight_dtype")["result"][0]
    default = node.plan(*args)["result"][0]
    assert seen == ["weight_dtype", "auto"]
    assert len(fast.codes) == len(default.codes) == 5


# ---------------------------------------------------------------------------------------------
# In a real server: plan once, sample twice
# ---------------------------------------------------------------------------------------------
def _plan_graph(sampler_seed: int) -> dict:
    sampling = {"cfg_scale": 2.0, "temperature": 0.85, "top_p": 0.9, "top_k": 0, "min_p": 0.0}
    return {
        "1": {"class_type": "LoadAceStep15Split", "inputs": {
            "unet_name": "acestep_v1.5_tiny.safetensors", "text_encoder_name": "qwen_0.6b_ace15.safetensors",
            "vae_name": "ace_1.5_vae.safetensors", "planner_name": "qwen_1.7b_ace15.safetensors",
            "weight_dtype": "fp32"}},
        "2": {"class_type": "AceStepPlanner", "inputs": {
            "clip": ["1", 1], "tags": TAGS, "lyrics": LYRICS, "seed": 3, "bpm": 120, "duration": 2.0,
            "timesignature": "4", "language": "en", "keyscale": "auto", "generate_audio_codes": True, **sampling}},
        "3": {"class_type": "AceStepPlanTextEncode", "inputs": {"clip": ["1", 1], "audio_codes": ["2", 0],
                                                                "use_audio_codes": True}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptyAceStep1.5LatentAudio", "inputs": {"seconds": ["2", 2], "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": sampler_seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "planner_nodes"}},
    }


def test_plan_once_sample_twice_in_the_server(comfy_server, tiny15, tmp_path):
    info = comfy_server.object_info("AceStepPlanner")
    assert info["output"] == ["ACESTEP_AUDIO_CODES", "STRING", "FLOAT"]
    assert info["input"]["required"]["keyscale"][0][0] == "auto"

    with comfy_server.listen() as first:
        entry = comfy_server.wait_for(comfy_server.queue_prompt(_plan_graph(1), client_id=first.client_id))
        time.sleep(0.3)
    shown = entry["outputs"]["2"]["text"][0]
    assert "bpm: 120 (user)" in shown and "keyscale: " in shown and "(planner)" in shown
    assert "audio codes: 10" in shown
    assert "bpm: 120 (user)" in first.text_on("2")          # drawn on the node while it runs
    with comfy_server.listen() as second:
        comfy_server.wait_for(comfy_server.queue_prompt(_plan_graph(2), client_id=second.client_id))
        time.sleep(0.3)
    cached = [m["data"]["nodes"] for m in second.json if m.get("type") == "execution_cached"]
    executed = {m["data"]["node"] for m in second.json if m.get("type") == "executing" and m["data"].get("node")}
    assert cached and "2" in cached[0] and "2" not in executed and "6" in executed   # planned once, sampled again
