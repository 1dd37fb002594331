"""ACE-Step 1.5 task nodes (nodes/ace15_tasks.py) in process, on tiny random-weight 1.5 checkpoints.

What each node hands the DiT equals acestep_core.ace15.tasks.build_task_conditioning (which
tests/test_ace15_tasks.py checks against the official handler's golden data); the caption is
encoded with the task's instruction; the stock KSampler samples every task to finite latents;
repaint and extend keep every other frame bit for bit after AceStep15RestoreSource; the cover
strength switch lands on the official step; bad input gives a clear error.
"""
from __future__ import annotations

import importlib
import json
import shutil
import types

import pytest
import torch

from .pack_import import PACK

TAGS = "synth pop, female vocal"
LYRICS = "[verse]\nNeon lights along the river"
STEPS, SEED = 2, 5
META = ("en", 120, "4", "C major")          # language, bpm, timesignature, keyscale


@pytest.fixture(scope="module")
def env(in_process_env):
    return in_process_env(extras=("nodes_audio", "nodes_custom_sampler"),
                          pack_nodes=("loaders", "ace15_bridge", "ace15_tasks", "tasks"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, env):
    """The tiny 1.5 model as an all-in-one file (variant unknown) and as official folders whose
    config.json says turbo and base."""
    import folder_paths
    from acestep_core.ace15.tiny import write_tiny_ace15

    ckpts = tmp_path_factory.mktemp("ace15_task_models") / "checkpoints"
    write_tiny_ace15(ckpts, "aio")
    write_tiny_ace15(ckpts / "Ace15-turbo", "official")
    base = ckpts / "Ace15-base"
    shutil.copytree(ckpts / "Ace15-turbo", base)
    config = base / "acestep-v15-turbo" / "config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), is_turbo=False)))
    saved = list(folder_paths.folder_names_and_paths["checkpoints"][0])
    folder_paths.add_model_folder_path("checkpoints", str(ckpts), is_default=True)
    yield ckpts
    folder_paths.folder_names_and_paths["checkpoints"][0][:] = saved


@pytest.fixture(scope="module")
def loaded(env, models):
    return env["loaders"].LoadAceStepCheckpoint().load("ace_step_1.5_tiny_aio.safetensors", "fp32")


def _source(frames: int, seed: int = 0, batch: int = 1) -> dict:
    return {"samples": torch.randn(batch, 64, frames, generator=torch.Generator().manual_seed(seed)), "type": "audio"}


def _silence(model):
    return lambda n: model.model.silence(n, "cpu").float()


def _ksample(env, model, positive, negative, latent, cfg=1.0, steps=STEPS, seed=SEED, denoise=1.0):
    return env["nodes"].common_ksampler(model, seed, steps, cfg, "euler", "simple", positive, negative, latent,
                                        denoise=denoise)[0]


def _restore(env, latent):
    return env["ace15_tasks"].AceStep15RestoreSource().restore(latent)[0]


# Each task node, its widget values (after model, clip, samples, tags, lyrics; before the metadata)
# and the build_task_conditioning arguments they stand for. Source: 150 frames (6 s).
CASES = {
    "cover": ("AceStep15Cover", (1.0, 0), {}),
    "repaint": ("AceStep15Repaint", (1.0, 2.0), {"start_s": 1.0, "end_s": 2.0}),
    "extend_after": ("AceStep15Extend", (0.0, 2.0), {"start_s": 6.0, "end_s": 8.0}),
    "extend_before": ("AceStep15Extend", (1.2, 0.0), {"start_s": -1.2, "end_s": 0.0}),
    "lego": ("AceStep15Lego", ("drums", 1.0, -1.0), {"track": "drums", "start_s": 1.0, "end_s": -1.0}),
    "extract": ("AceStep15Extract", ("bass",), {"track": "bass"}),
    "complete": ("AceStep15Complete", ("drums, Bass",), {"tracks": ["drums", "bass"]}),
}


def _record_cover_flags_and_hints(monkeypatch, dit) -> list:
    """(is_covers, precomputed 25 Hz hints) of every condition the DiT prepares from now on."""
    seen = []
    original = dit.prepare_condition

    def spy(*args, **kwargs):
        seen.append((args[8], kwargs.get("precomputed_lm_hints_25Hz")))
        return original(*args, **kwargs)

    monkeypatch.setattr(dit, "prepare_condition", spy)
    return seen


def _run(env, node_id, model, clip, samples, widgets, tags=TAGS, lyrics=LYRICS):
    node = env["ace15_tasks"].NODE_CLASS_MAPPINGS[node_id]()
    return node.execute(model, clip, samples, tags, lyrics, *widgets, *META)


@pytest.mark.parametrize("case", list(CASES))
def test_node_conditioning_is_the_core_task_conditioning(env, loaded, case):
    from acestep_core.ace15.tasks import build_task_conditioning
    from acestep_core.ace15.text_encoder import caption_prompt

    node_id, widgets, build = CASES[case]
    task = "extend" if case.startswith("extend") else case
    model, clip, _ = loaded
    samples = _source(150)
    positive, negative, latent = _run(env, node_id, model, clip, samples, widgets)
    expected = build_task_conditioning(task, _silence(model), samples["samples"], **build)

    assert len(positive) == len(negative) == 1
    options = positive[0][1]
    assert torch.equal(options["acestep15_src_latents"], expected.src_latents)
    assert torch.equal(options["acestep15_chunk_masks"], expected.chunk_masks)
    assert options["acestep15_is_covers"] is expected.is_covers
    assert torch.equal(latent["samples"], expected.target_latents)
    if task in ("repaint", "extend"):
        assert torch.equal(latent["noise_mask"].flatten(), expected.chunk_masks[0, 0])
    else:
        assert "noise_mask" not in latent

    # The caption reaches the encoder with the task's instruction (and the source's duration).
    tokens = env["ace15_tasks"].task_tokens("test", clip, TAGS, LYRICS, "en", 120, "4", "C major", 6,
                                            expected.instruction)
    decoded = clip.tokenizer.tokenizer._tokenizer.decode([p[0] for p in tokens["qwen3_06b"][0]])
    assert decoded == caption_prompt(TAGS, 120, "4", "C major", 6, instruction=expected.instruction)
    assert f"# Instruction\n{expected.instruction}\n" in decoded
    torch.testing.assert_close(positive[0][0], clip.encode_from_tokens_scheduled(tokens)[0][0], rtol=0, atol=0)
    default = clip.encode_from_tokens_scheduled(clip.tokenize(TAGS, lyrics=LYRICS, duration=6, bpm=120,
                                                              timesignature="4", keyscale="C major",
                                                              language="en", generate_audio_codes=False))
    same_text = expected.instruction == "Generate audio semantic tokens based on the given conditions:"
    assert same_text == torch.equal(positive[0][0], default[0][0])
    # negative: the null condition (zeros) with the same task inputs
    assert not negative[0][0].any() and not negative[0][1]["conditioning_lyrics"].any()
    assert negative[0][1]["acestep15_src_latents"] is options["acestep15_src_latents"]


def test_instruction_with_comfyuis_own_15_tokenizer(env, loaded):
    """ComfyUI 0.20's own 1.5 CLIP (ACE15Tokenizer): the caption tokens written with the task's
    instruction are ComfyUI's own tokens for the default one, and carry the task's otherwise."""
    try:
        from comfy.text_encoders.ace15 import ACE15Tokenizer
    except ImportError:
        pytest.skip("this ComfyUI has no ACE-Step 1.5 text encoder of its own (0.20+ has)")
    from acestep_core.ace15.tasks import COVER_INSTRUCTION, REPAINT_INSTRUCTION
    tokenizer = ACE15Tokenizer()
    clip = types.SimpleNamespace(cond_stage_model=types.SimpleNamespace(qwen3_06b=None), tokenizer=tokenizer,
                                 tokenize=lambda text, **kw: tokenizer.tokenize_with_weights(text, False, **kw))
    theirs = tokenizer.tokenize_with_weights(TAGS, False, lyrics=LYRICS, bpm=120, duration=6, timesignature="4",
                                             language="en", keyscale="C major", generate_audio_codes=False)
    task_tokens = env["ace15_tasks"].task_tokens
    cover = task_tokens("test", clip, TAGS, LYRICS, "en", 120, "4", "C major", 6, COVER_INSTRUCTION)
    assert cover["qwen3_06b"] == theirs["qwen3_06b"] and cover["lyrics"] == theirs["lyrics"]
    repaint = task_tokens("test", clip, TAGS, LYRICS, "en", 120, "4", "C major", 6, REPAINT_INSTRUCTION)
    text = tokenizer.qwen3_06b.tokenizer.decode([int(p[0]) for p in repaint["qwen3_06b"][0]])
    assert f"# Instruction\n{REPAINT_INSTRUCTION}\n\n# Caption\n{TAGS}" in text


def test_extend_both_sides_generates_only_the_new_frames(env, loaded):
    from acestep_core.ace15.tasks import build_task_conditioning
    model, clip, _ = loaded
    samples = _source(60, seed=1)
    positive, _, latent = _run(env, "AceStep15Extend", model, clip, samples, (1.0, 2.0))
    whole = build_task_conditioning("extend", _silence(model), samples["samples"], start_s=-1.0, end_s=2.4 + 2.0)
    generate = positive[0][1]["acestep15_chunk_masks"][0, 0]
    assert latent["samples"].shape[-1] == 25 + 60 + 50 == 135
    assert generate[:25].all() and not generate[25:85].any() and generate[85:135].all()
    src = positive[0][1]["acestep15_src_latents"]
    assert torch.equal(src[..., 25:85], samples["samples"])
    assert torch.equal(src[..., :25], whole.src_latents[..., :25])
    assert torch.equal(src[..., 85:], whole.src_latents[..., 85:])


# ---------------------------------------------------------------------------------------------
# Sampling with the stock KSampler
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_stock_ksampler_runs_every_task(env, loaded, case):
    node_id, widgets, _ = CASES[case]
    model, clip, _ = loaded
    samples = _source(60, seed=2)
    positive, negative, latent = _run(env, node_id, model, clip, samples, widgets)
    out = _ksample(env, model, positive, negative, latent, cfg=2.0)
    assert torch.isfinite(out["samples"]).all()
    done = _restore(env, out)
    frames = latent[env["ace15_tasks"].TASK15_KEY]["valid_frames"]
    assert done["samples"].shape == (1, 64, frames) and torch.isfinite(done["samples"]).all()
    assert "noise_mask" not in done and env["ace15_tasks"].TASK15_KEY not in done


def test_cover_hints_reach_the_dit(env, loaded, monkeypatch):
    """A cover gives the DiT the source tokenized to 5 Hz and decoded back (cover_hints with the
    model's silence), as the official prepare_condition does with is_covers true."""
    from acestep_core.ace15.tasks import cover_hints
    model, clip, _ = loaded
    samples = _source(132, seed=3)      # not a multiple of 5: padded with silence before tokenizing
    positive, negative, latent = _run(env, "AceStep15Cover", model, clip, samples, (1.0, 0))
    dit = model.model.diffusion_model
    seen = _record_cover_flags_and_hints(monkeypatch, dit)
    _ksample(env, model, positive, negative, latent)
    expected = cover_hints(dit, samples["samples"], _silence(model))
    assert seen and all(flag is True for flag, _ in seen)
    torch.testing.assert_close(seen[0][1], expected, rtol=0, atol=0)


def _plan(codes):
    planner = importlib.import_module(f"{PACK}.nodes.ace15_planner")
    return planner.AudioCodesPlan(codes=tuple(codes), metadata={"duration": len(codes) / 5}, caption=TAGS,
                                  lyrics=LYRICS)


def test_cover_from_planner_codes(env, loaded, monkeypatch):
    """AceStep15Cover with AceStepPlanner's codes instead of a song: as the official handler with
    given codes, the source and target latents are the codes' 25 Hz decoding (quantizer indices ->
    detokenizer, 5 frames per code; padded to 128 frames as every task), is_covers is true, and
    the DiT's precomputed_lm_hints_25Hz are the decoding padded with the silence latent's first
    frames; the node's conditioning is build_task_conditioning(from_codes=True) exactly, a
    connected song is then not used, and the stock KSampler samples it finitely."""
    from acestep_core.ace15.tasks import build_task_conditioning
    model, clip, _ = loaded
    codes = torch.randint(0, 64000, (31,), generator=torch.Generator().manual_seed(4)).tolist()
    dit = model.model.diffusion_model

    def decode(codes):          # handler.py _decode_audio_codes_to_latents, channels first
        with torch.no_grad():
            quantized = dit.tokenizer.quantizer.get_output_from_indices(torch.tensor([codes]), dtype=torch.float32)
            return dit.detokenizer(quantized).movedim(-1, -2)

    decoded = decode(codes)
    assert decoded.shape == (1, 64, 155)
    silence = _silence(model)
    expected = build_task_conditioning("cover", silence, decoded, from_codes=True)

    node = env["ace15_tasks"].AceStep15Cover()
    positive, negative, latent = node.execute(model, clip, None, TAGS, LYRICS, 1.0, 0, *META, audio_codes=_plan(codes))
    options = positive[0][1]
    assert torch.equal(options["acestep15_src_latents"], expected.src_latents)
    assert torch.equal(options["acestep15_chunk_masks"], expected.chunk_masks)
    assert options["acestep15_is_covers"] is True and expected.from_codes
    assert torch.equal(latent["samples"], expected.target_latents)
    hints = decoded                                   # 155 frames >= 128: no padding
    assert torch.equal(options["acestep15_lm_hints"], hints)
    assert torch.equal(negative[0][1]["acestep15_lm_hints"], hints)
    # Fewer codes than the 128-frame minimum: the hints are padded with the silence's first frames.
    short = node.execute(model, clip, None, TAGS, LYRICS, 1.0, 0, *META, audio_codes=_plan(codes[:10]))[0]
    lm = short[0][1]["acestep15_lm_hints"]
    assert lm.shape == (1, 64, 128)
    torch.testing.assert_close(lm[..., :50], decode(codes[:10]), rtol=0, atol=0)
    assert torch.equal(lm[..., 50:], silence(78))
    # The codes win over a connected song (as the app ignores src_audio), with a warning.
    both = node.execute(model, clip, _source(60), TAGS, LYRICS, 1.0, 0, *META, audio_codes=_plan(codes))
    assert torch.equal(both[0][0][1]["acestep15_src_latents"], expected.src_latents)

    seen = _record_cover_flags_and_hints(monkeypatch, dit)
    out = _restore(env, _ksample(env, model, positive, negative, latent, cfg=2.0))["samples"]
    assert out.shape == (1, 64, 155) and torch.isfinite(out).all()
    assert seen and all(flag is True for flag, _ in seen)
    torch.testing.assert_close(seen[0][1], hints.movedim(-1, -2), rtol=0, atol=0)
    # With a strength below 1 the text2music steps get no hints (silence source, no cover flag).
    pos, _, _ = node.execute(model, clip, None, TAGS, LYRICS, 0.5, 4, *META, audio_codes=_plan(codes))
    assert [o["acestep15_is_covers"] for _, o in pos] == [True, False]
    assert "acestep15_lm_hints" in pos[0][1] and "acestep15_lm_hints" not in pos[1][1]


def test_cover_needs_a_song_or_codes(env, loaded):
    model, clip, _ = loaded
    node = env["ace15_tasks"].AceStep15Cover()
    with pytest.raises(ValueError, match="AceStep15Cover: connect the source song .* or the planner's 'audio_codes'"):
        node.execute(model, clip, None, TAGS, LYRICS, 1.0, 0, *META)
    with pytest.raises(ValueError, match="AceStep15Cover: this plan has no audio codes"):
        node.execute(model, clip, None, TAGS, LYRICS, 1.0, 0, *META, audio_codes=_plan([]))
    with pytest.raises(ValueError, match="AceStep15Cover: 3001 audio codes are 600.2 s; .*at most 600 s"):
        node.execute(model, clip, None, TAGS, LYRICS, 1.0, 0, *META, audio_codes=_plan([1] * 3001))


def test_repaint_keeps_every_frame_outside_the_region(env, loaded):
    model, clip, _ = loaded
    samples = _source(150, seed=4)
    positive, negative, latent = _run(env, "AceStep15Repaint", model, clip, samples, (1.0, 2.5))
    out = _ksample(env, model, positive, negative, latent, cfg=2.0, steps=3)
    done = _restore(env, out)["samples"]
    source = samples["samples"]
    assert done.shape == source.shape
    assert (done[..., :25] - source[..., :25]).abs().max().item() == 0.0
    assert (done[..., 62:] - source[..., 62:]).abs().max().item() == 0.0
    assert (done[..., 25:62] - source[..., 25:62]).abs().max() > 1e-2
    # Without the restore step the sampler's float rounding may leave tiny differences, never more.
    assert (out["samples"][..., 62:] - source[..., 62:]).abs().max() < 1e-4


def test_repaint_audio_outside_the_region_and_the_vae_overlap_is_the_source_audio(env, loaded):
    """Decoded, a repainted song equals the decoded source everywhere farther than the VAE's window
    overlap (OVERLAP_FRAMES latent frames) from the region: only the decoder's receptive field
    around the region can carry the new frames' influence. Inside the region the audio is new."""
    from acestep_core.ace15.vae import OVERLAP_FRAMES
    model, clip, vae = loaded
    samples = _source(200, seed=6)                                     # 8 s
    positive, negative, latent = _run(env, "AceStep15Repaint", model, clip, samples, (3.0, 4.0))
    done = _restore(env, _ksample(env, model, positive, negative, latent, cfg=2.0, steps=3))["samples"]
    new_audio, old_audio = vae.decode(done), vae.decode(samples["samples"])   # [B, S, C]
    assert new_audio.shape == old_audio.shape
    per_frame = 1920 * vae.audio_sample_rate / 48000                   # output samples per latent frame
    first, last = 75, 100                                              # the region's frames: 3 s and 4 s
    left = int((first - OVERLAP_FRAMES) * per_frame)
    right = int(round((last + OVERLAP_FRAMES) * per_frame))
    assert 0 < left and right < new_audio.shape[1]
    scale = old_audio.abs().max().item()
    outside = torch.cat([(new_audio - old_audio)[:, :left], (new_audio - old_audio)[:, right:]], dim=1)
    assert outside.abs().max().item() <= 1e-6 * scale, outside.abs().max().item()
    inside = (new_audio - old_audio)[:, int(first * per_frame):int(last * per_frame)]
    assert inside.abs().max().item() > 1e-3 * scale


def test_repaint_through_sampler_custom_advanced_with_a_batch_of_two(env, loaded):
    """SamplerCustomAdvanced (RandomNoise, CFGGuider at cfg 2, euler, simple) samples a repaint of a
    two-song batch; each song keeps every frame outside the region."""
    custom = env["nodes_custom_sampler"]

    def result(node_output):
        return node_output.result if hasattr(node_output, "result") else node_output

    model, clip, _ = loaded
    samples = _source(140, seed=10, batch=2)
    positive, negative, latent = _run(env, "AceStep15Repaint", model, clip, samples, (2.0, 3.0))
    assert positive[0][1]["acestep15_src_latents"].shape == (2, 64, 140)
    (guider,) = result(custom.CFGGuider.execute(model, positive, negative, 2.0))
    (sampler,) = result(custom.KSamplerSelect.execute("euler"))
    (sigmas,) = result(custom.BasicScheduler.execute(model, "simple", 3, 1.0))
    (noise,) = result(custom.RandomNoise.execute(4))
    out, _ = result(custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent))
    done = _restore(env, out)["samples"]
    source = samples["samples"]
    assert done.shape == (2, 64, 140) and torch.isfinite(done).all()
    outside = torch.ones(140, dtype=torch.bool)
    outside[50:75] = False
    assert (done[..., outside] - source[..., outside]).abs().max().item() == 0.0
    assert (done[..., 50:75] - source[..., 50:75]).abs().amax(dim=(1, 2)).min() > 1e-2


def test_repaint_past_the_end_of_the_song_stops_at_its_end(env, loaded, caplog):
    from acestep_core.ace15.tasks import build_task_conditioning
    model, clip, _ = loaded
    samples = _source(50)                                   # 2 s
    with caplog.at_level("WARNING"):
        positive, _, _ = _run(env, "AceStep15Repaint", model, clip, samples, (1.0, 3.0))
    assert "after the song (2 s); repainting up to its end" in caplog.text
    expected = build_task_conditioning("repaint", _silence(model), samples["samples"], start_s=1.0, end_s=2.0)
    assert torch.equal(positive[0][1]["acestep15_chunk_masks"], expected.chunk_masks)


def test_repaint_of_a_short_song_cuts_the_padding(env, loaded):
    """A 2 s song is padded to the official 128 frames for the DiT; the padding is kept as silence
    during sampling and cut off after it."""
    model, clip, _ = loaded
    samples = _source(50, seed=5)
    positive, negative, latent = _run(env, "AceStep15Repaint", model, clip, samples, (0.4, 1.2))
    assert latent["samples"].shape[-1] == 128
    assert not latent["noise_mask"][..., 50:].any()
    done = _restore(env, _ksample(env, model, positive, negative, latent))["samples"]
    assert done.shape == (1, 64, 50)
    keep = torch.ones(50, dtype=torch.bool)
    keep[10:30] = False
    assert (done[..., keep] - samples["samples"][..., keep]).abs().max().item() == 0.0


def test_restore_source_passes_other_latents_through_and_refuses_mismatches(env, loaded):
    """AceStep15RestoreSource on what is not a sampled task latent: another latent passes through
    with a warning (its noise_mask dropped); another batch or shape than the task's is a clear
    error."""
    model, clip, _ = loaded
    restore = env["ace15_tasks"].AceStep15RestoreSource().restore
    song = _source(50)
    out = restore(dict(song, noise_mask=torch.ones(1, 1, 50)))
    assert out["ui"]["text"] == ["AceStep15RestoreSource: this latent does not come from an ACE-Step 1.5 task "
                                 "node; passed through"]
    assert out["result"][0].keys() == {"samples", "type"} and out["result"][0]["samples"] is song["samples"]
    _, _, latent = _run(env, "AceStep15Repaint", model, clip, _source(50, batch=2), (0.5, 1.0))
    assert latent["samples"].shape == (2, 64, 128)       # padded to the 5.12 s minimum
    with pytest.raises(ValueError, match=r"AceStep15RestoreSource: the sampled batch \(3\) does not match the "
                                         r"source batch \(2\)"):
        restore(dict(latent, samples=torch.zeros(3, 64, 128)))
    with pytest.raises(ValueError, match=r"AceStep15RestoreSource: the latent has shape \[2, 64, 130\], but the "
                                         r"task was made for \[2, 64, 128\]"):
        restore(dict(latent, samples=torch.zeros(2, 64, 130)))


def test_extend_keeps_the_source_and_adds_odd_lengths(env, loaded):
    model, clip, _ = loaded
    samples = _source(61, seed=6)                 # odd length, and odd extensions
    positive, negative, latent = _run(env, "AceStep15Extend", model, clip, samples, (0.52, 1.64))
    done = _restore(env, _ksample(env, model, positive, negative, latent, cfg=2.0))["samples"]
    assert done.shape == (1, 64, 13 + 61 + 41)
    assert (done[..., 13:74] - samples["samples"]).abs().max().item() == 0.0
    assert torch.isfinite(done).all()


# ---------------------------------------------------------------------------------------------
# audio_cover_strength on ComfyUI's timestep ranges
# ---------------------------------------------------------------------------------------------
def _entry_used(model_sampling, options, sigma: float) -> bool:
    """ComfyUI's test for a conditioning entry with a timestep range (comfy/samplers.py: the
    percents become sigmas in convert_cond / calculate_start_end_timesteps, and get_area_and_mult
    skips an entry when sigma > timestep_start or sigma < timestep_end)."""
    start = model_sampling.percent_to_sigma(options.get("start_percent", 0.0))
    end = model_sampling.percent_to_sigma(options.get("end_percent", 1.0))
    return not (sigma > start or sigma < end)


def test_cover_strength_switch_step_with_the_simple_scheduler(env, loaded):
    """Which steps get the cover conditioning, by ComfyUI's own simple scheduler and range test, for
    steps 1-100 and strengths 0-1 by 0.01: with sampler_steps given, the official int(steps *
    strength); without, ceil(steps * strength) (equal when steps * strength is whole)."""
    import math

    import comfy.samplers
    from acestep_core.ace15.tasks import cover_steps
    model, clip, _ = loaded
    ms = model.get_model_object("model_sampling")
    switch_percent = env["ace15_tasks"].switch_percent
    mismatches = {True: [], False: []}
    for hundredths in range(0, 101):
        strength = hundredths / 100
        for steps in range(1, 101):
            sigmas = comfy.samplers.calculate_sigmas(ms, "simple", steps)
            for exact in (True, False):
                boundary = switch_percent(strength, steps if exact else 0, ms)
                if boundary is None:              # one cover entry without a range
                    cover, text2music = {}, None
                elif boundary <= 0.0:             # one text2music entry without a range
                    cover, text2music = None, {}
                else:
                    cover, text2music = {"end_percent": boundary}, {"start_percent": boundary}
                switch = cover_steps(steps, strength) if exact else math.ceil(steps * strength - 1e-9)
                for i in range(steps):
                    sigma = float(sigmas[i])
                    used = [entry is not None and _entry_used(ms, entry, sigma) for entry in (cover, text2music)]
                    if used != [i < switch, i >= switch]:
                        mismatches[exact].append((strength, steps, i, used))
    assert mismatches[True] == []
    # Without sampler_steps, ceil(steps * strength) but where ComfyUI's simple_scheduler rounds a
    # whole grid index one down (int(i * (1000 / steps)): 38 steps, i = 19 -> 499), so that step
    # starts just before the strength: 3 of the 10100 cases, one cover step more.
    rounded_down = [(s_, n, i) for s_, n, i, _ in mismatches[False]
                    if (1000 * i) % n == 0 and int(i * (1000 / n)) == 1000 * i // n - 1]
    assert [m[:3] for m in mismatches[False]] == rounded_down and len(rounded_down) == 3
    # The two differ where steps * strength is not whole, e.g. 3 steps at 0.5: official 1, ceil 2.
    assert cover_steps(3, 0.5) == 1 and math.ceil(3 * 0.5) == 2


def test_cover_strength_through_ksampler(env, loaded, monkeypatch):
    """8 steps at strength 0.5: the cover conditioning (is_covers true, the cover instruction) on
    steps 0-3, text2music (is_covers false, silence source) on 4-7, as the official loop."""
    from acestep_core.ace15.tasks import build_task_conditioning
    model, clip, _ = loaded
    samples = _source(60, seed=7)
    positive, negative, latent = _run(env, "AceStep15Cover", model, clip, samples, (0.5, 0))
    assert [(p[1]["start_percent"], p[1]["end_percent"]) for p in positive] == [(0.0, 0.4995), (0.4995, 1.0)]
    expected = build_task_conditioning("cover", _silence(model), samples["samples"], audio_cover_strength=0.5)
    assert torch.equal(positive[1][1]["acestep15_src_latents"], expected.after_switch.src_latents)
    dit = model.model.diffusion_model
    flags = []
    original = dit.prepare_condition
    monkeypatch.setattr(dit, "prepare_condition", lambda *a, **k: flags.append(a[8]) or original(*a, **k))
    out = _ksample(env, model, positive, negative, latent, steps=8)
    assert flags == [True] * 4 + [False] * 4
    assert torch.isfinite(out["samples"]).all()


def test_retake_nodes_work_on_15_latents(env, loaded):
    """v1's AceStepRetakeModel mixes seeds on any latent: variance 0 is the original seed's song,
    variance 1 the retake seed's."""
    model, clip, _ = loaded
    samples = _source(60, seed=8)
    positive, negative, latent = _run(env, "AceStep15Cover", model, clip, samples, (1.0, 0))
    original = _ksample(env, model, positive, negative, latent, seed=3)["samples"]
    other = _ksample(env, model, positive, negative, latent, seed=9)["samples"]
    retake = env["tasks"].AceStepRetakeModel()
    same = _ksample(env, retake.patch(model, 9, 0.0)[0], positive, negative, latent, seed=3)["samples"]
    new = _ksample(env, retake.patch(model, 9, 1.0)[0], positive, negative, latent, seed=3)["samples"]
    between = _ksample(env, retake.patch(model, 9, 0.3)[0], positive, negative, latent, seed=3)["samples"]
    assert torch.equal(same, original) and torch.equal(new, other)
    assert (between - original).abs().max() > 1e-4 and (between - other).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Variants and bad input
# ---------------------------------------------------------------------------------------------
def test_base_only_tasks_refuse_the_turbo_model_before_sampling(env, models):
    turbo, clip, _ = env["loaders"].LoadAceStepCheckpoint().load("Ace15-turbo", "fp32")
    samples = _source(30)
    for node_id, widgets in (("AceStep15Lego", ("drums", 0.0, -1.0)), ("AceStep15Extract", ("vocals",)),
                             ("AceStep15Complete", ("drums",))):
        with pytest.raises(ValueError, match="turbo model.*acestep-v15-base") as err:
            _run(env, node_id, turbo, clip, samples, widgets)
        assert err.value.args[0].startswith(node_id)
    _run(env, "AceStep15Repaint", turbo, clip, samples, (0.2, 0.8))      # turbo repaints


def test_base_only_tasks_warn_where_the_variant_is_not_known(env, models, loaded, caplog):
    base, clip, _ = env["loaders"].LoadAceStepCheckpoint().load("Ace15-base", "fp32")
    with caplog.at_level("WARNING"):
        _run(env, "AceStep15Extract", base, clip, _source(30), ("vocals",))
    assert "base or sft" in caplog.text
    caplog.clear()
    model, clip, _ = loaded
    with caplog.at_level("WARNING"):
        _run(env, "AceStep15Lego", model, clip, _source(30), ("guitar", 0.0, -1.0))
    assert "does not say which variant" in caplog.text


def test_bad_input_says_what_is_wrong(env, loaded):
    model, clip, _ = loaded
    song = _source(50)                                   # 2 s
    with pytest.raises(ValueError, match=r"AceStep15Repaint: .*outside the source \(0-2 s\)"):
        _run(env, "AceStep15Repaint", model, clip, song, (3.0, 4.0))
    with pytest.raises(ValueError, match=r"AceStep15Repaint: .*outside the source \(0-2 s\)"):
        _run(env, "AceStep15Repaint", model, clip, song, (2.0, 4.0))
    with pytest.raises(ValueError, match="AceStep15Repaint: .*not after its start"):
        _run(env, "AceStep15Repaint", model, clip, song, (1.5, 0.5))
    with pytest.raises(ValueError, match="unknown stem 'cowbell'.*vocals.*woodwinds"):
        _run(env, "AceStep15Lego", model, clip, song, ("cowbell", 0.0, -1.0))
    with pytest.raises(ValueError, match="unknown stem 'cowbell'.*vocals.*woodwinds"):
        _run(env, "AceStep15Complete", model, clip, song, ("drums, cowbell",))
    with pytest.raises(ValueError, match=r"\[batch, 64, frames\]"):
        _run(env, "AceStep15Cover", model, clip, {"samples": torch.zeros(1, 8, 16, 20)}, (1.0, 0))
    with pytest.raises(ValueError, match="nothing to add"):
        _run(env, "AceStep15Extend", model, clip, song, (0.0, 0.0))
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        _run(env, "AceStep15Extend", model, clip, song, (0.0, 0.01))
    with pytest.raises(ValueError, match="not an ACE-Step 1.5 model loaded by this pack"):
        _run(env, "AceStep15Cover", types.SimpleNamespace(model=object()), clip, song, (1.0, 0))
    # A latent of another length than the task's: the sampler says so instead of failing in the DiT.
    positive, negative, latent = _run(env, "AceStep15Cover", model, clip, song, (1.0, 0))
    with pytest.raises(ValueError, match="same ACE-Step 1.5 task node"):
        _ksample(env, model, positive, negative, {"samples": torch.zeros(1, 64, 130)})


def test_ten_minute_source_is_accepted_and_longer_is_refused(env, loaded):
    model, clip, _ = loaded
    ten_minutes = {"samples": torch.zeros(1, 64, 15000)}
    positive, _, latent = _run(env, "AceStep15Repaint", model, clip, ten_minutes, (30.0, 40.0))
    assert latent["samples"].shape == (1, 64, 15000)
    assert positive[0][1]["acestep15_chunk_masks"][0, 0].sum() == 250
    with pytest.raises(ValueError, match="AceStep15Extend: .*at most 15000 frames"):
        _run(env, "AceStep15Extend", model, clip, ten_minutes, (0.0, 5.0))
    with pytest.raises(ValueError, match="AceStep15Cover: .*at most 15000 frames"):
        _run(env, "AceStep15Cover", model, clip, {"samples": torch.zeros(1, 64, 15001)}, (1.0, 0))


def test_mono_8khz_one_second_source(env, loaded):
    """A 1 s mono 8 kHz clip through the stock VAEEncodeAudio becomes a 25-frame 1.5 latent, which
    the task nodes pad to 128 frames and sample."""
    model, clip, vae = loaded
    audio = {"waveform": torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1,
             "sample_rate": 8000}
    encode = env["nodes_audio"].VAEEncodeAudio
    latent = encode.execute(vae, audio).result[0] if hasattr(encode, "execute") else encode().encode(vae, audio)[0]
    assert latent["samples"].shape == (1, 64, 25)
    positive, negative, task_latent = _run(env, "AceStep15Repaint", model, clip, latent, (0.2, 0.6))
    done = _restore(env, _ksample(env, model, positive, negative, task_latent))["samples"]
    assert done.shape == (1, 64, 25) and torch.isfinite(done).all()
    assert (done[..., :5] - latent["samples"][..., :5]).abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------
# In a real server, through the API
# ---------------------------------------------------------------------------------------------
def _task_graph(audio: str, node_id: str, widgets: dict, checkpoint: str) -> dict:
    meta = {"language": "en", "bpm": 0, "timesignature": "N/A", "keyscale": "N/A"}
    return {
        "1": {"class_type": "LoadAceStepCheckpoint", "inputs": {"ckpt_name": checkpoint, "weight_dtype": "fp32"}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio}},
        "3": {"class_type": "VAEEncodeAudio", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": node_id, "inputs": {"model": ["1", 0], "clip": ["1", 1], "samples": ["3", 0],
                                                "tags": TAGS, "lyrics": LYRICS, **widgets, **meta}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["4", 2], "denoise": 1.0}},
        "6": {"class_type": "AceStep15RestoreSource", "inputs": {"samples": ["5", 0]}},
        "7": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveAudio", "inputs": {"audio": ["7", 0], "filename_prefix": "ace15_task"}},
    }


def test_tasks_run_in_the_server_and_bad_input_is_reported(comfy_server, tiny15, tmp_path):
    """LoadAudio (1 s mono 8 kHz) -> VAEEncodeAudio -> task node -> KSampler -> AceStep15RestoreSource ->
    VAEDecodeAudio -> SaveAudio runs for repaint and extend; a region outside the song is an
    execution error naming the node and the problem, and the server runs the next prompt."""
    import soundfile

    from comfyui_harness import WorkflowError

    checkpoint = tiny15["aio"]
    wav = tmp_path / "mono_8k.wav"
    soundfile.write(str(wav), (0.2 * torch.randn(8000, generator=torch.Generator().manual_seed(0))).numpy(), 8000,
                    subtype="PCM_16")
    audio = comfy_server.add_input_file(wav)
    for node_id, widgets, seconds in (("AceStep15Repaint", {"start_seconds": 0.2, "end_seconds": 0.6}, 1.0),
                                      ("AceStep15Extend", {"left_seconds": 0.0, "right_seconds": 1.0}, 2.0)):
        entry = comfy_server.run_prompt(_task_graph(audio, node_id, widgets, checkpoint), timeout=600)
        (saved,) = entry["outputs"]["8"]["audio"]
        path = comfy_server.base_dir / "output" / saved.get("subfolder", "") / saved["filename"]
        data, rate = soundfile.read(str(path), always_2d=True)
        assert abs(data.shape[0] / rate - seconds) < 0.05 and bool(torch.isfinite(torch.from_numpy(data)).all())
    bad = _task_graph(audio, "AceStep15Repaint", {"start_seconds": 3.0, "end_seconds": 4.0}, checkpoint)
    with pytest.raises(WorkflowError, match=r"AceStep15Repaint: the repaint region 3-4 s is outside the source"):
        comfy_server.run_prompt(bad, timeout=600)
    comfy_server.run_prompt(_task_graph(audio, "AceStep15Repaint", {"start_seconds": 0.0, "end_seconds": 0.4},
                                        checkpoint), timeout=600)
