"""ACE-Step 1.5 task conditioning (acestep_core.ace15.tasks) against the official app.

tests/data/ace15_tasks_golden.json was written by scripts/make_ace15_tasks_golden.py, which runs the
official ACE-Step-1.5 (f30aee4) ``AceStepHandler.generate_music`` down to the batch it hands the model,
plus upstream 783bb36's ``_build_chunk_masks_and_src_latents``, on patterned latents: every latent
frame carries a code saying where it came from (source frame i: i + 1, silence-latent frame j:
-(j + 1), the VAE of zero samples: 5000, decoded audio-code frame m: 10000 + m). The same patterned
inputs go through our functions and the per-frame codes must match exactly.
"""
import json
from pathlib import Path

import pytest
import torch

from acestep_core.ace15 import tasks as T

GOLDEN = json.loads((Path(__file__).parent / "data" / "ace15_tasks_golden.json").read_text())
VAE_OF_ZEROS, HINT_BASE = 5000, 10000


def pattern(codes) -> torch.Tensor:
    """Channels-first [1, 64, len(codes)] latent whose frame t is codes[t] + channel / 128."""
    codes = torch.as_tensor(codes, dtype=torch.float32)
    return (codes[None, :] + torch.arange(64, dtype=torch.float32)[:, None] / 128)[None]


def codes_of(latent: torch.Tensor) -> list[int]:
    assert latent.ndim == 3 and latent.shape[:2] == (1, 64), latent.shape
    codes = latent[0, 0].round().long()
    assert torch.equal(latent.float(), pattern(codes)), "a frame is not a copy of a source or silence frame"
    return codes.tolist()


def unrle(runs) -> list[int]:
    return [first + step * i for first, step, count in runs for i in range(count)]


SILENCE = pattern([-(j + 1) for j in range(GOLDEN["silence_frames"])])
META = GOLDEN["meta"]


def source(frames: int, base: int = 1) -> torch.Tensor:
    return pattern(range(base, base + frames))


# Golden case -> our call (task, source, keyword arguments).
def our_call(name: str, case: dict):
    gm = case["generate_music"]
    region = {}
    if "repainting_start" in gm:
        region = dict(start_s=gm["repainting_start"], end_s=gm["repainting_end"])
    if case["audio_codes"]:
        frames = 5 * case["audio_codes"]
        return case["task_type"], source(frames, HINT_BASE), dict(from_codes=True)
    if case["task_type"] == "text2music":
        return "text2music", None, dict(duration_s=gm["audio_duration"])
    src = source(case["source_frames"])
    kwargs = dict(region)
    if "audio_cover_strength" in gm:
        kwargs["audio_cover_strength"] = gm["audio_cover_strength"]
    if case["track"]:
        kwargs["track"] = case["track"]
    if case["track_classes"]:
        kwargs["tracks"] = case["track_classes"]
    task = case["task_type"]
    if name.startswith("extend"):
        task = "extend"           # the app's repaint with a region past the source: our extend
    return task, src, kwargs


def metas_for(case: dict, cond: T.TaskConditioning) -> str:
    if case["source_frames"]:
        duration = cond.source_seconds
    else:
        duration = case["generate_music"].get("audio_duration") if not case["audio_codes"] or \
            case["task_type"] == "text2music" else None
    return T.official_metas(META["bpm"], META["key_scale"], META["time_signature"], duration)


REFUSED = {"lego_with_codes"}


@pytest.mark.parametrize("name", sorted(set(GOLDEN["cases"]) - REFUSED))
def test_matches_the_official_app(name):
    case = GOLDEN["cases"][name]
    task, src, kwargs = our_call(name, case)
    if task == "lego":
        kwargs["lego_keeps_source"] = False       # f30aee4 silenced the lego region
    cond = T.build_task_conditioning(task, SILENCE, src, **kwargs)

    assert cond.frames == case["frames"]
    assert codes_of(cond.src_latents) == unrle(case["src_latents"])
    mask = cond.chunk_masks
    assert mask.shape == (1, 64, cond.frames) and torch.equal(mask, mask[:, :1].expand_as(mask))
    assert mask[0, 0].long().tolist() == unrle(case["chunk_mask"])
    assert cond.latent_mask.long().tolist() == unrle(case["latent_mask"])
    assert cond.is_covers is case["is_covers"]
    # The clean source on the latent's frames; where the app VAE-encodes the zero padding of an
    # extension we have silence latents at the same positions.
    ours, theirs = codes_of(cond.target_latents), unrle(case["target_latents"])
    assert [o if t != VAE_OF_ZEROS else VAE_OF_ZEROS for o, t in zip(ours, theirs)] == theirs
    assert all(o == -(i + 1) for i, (o, t) in enumerate(zip(ours, theirs)) if t == VAE_OF_ZEROS)
    if case["lm_hints"] is not None:       # from codes: the hints are the source the app gives the DiT
        assert unrle(case["lm_hints"]) == unrle(case["src_latents"]) and cond.from_codes
    assert cond.needs_cover_hints is (case["is_covers"] and not case["audio_codes"])

    caption = T.official_caption_prompt(cond.instruction, GOLDEN["caption"], metas_for(case, cond))
    assert caption == case["caption_prompt"]
    assert T.official_lyrics_prompt(GOLDEN["lyrics"], GOLDEN["language"]) == case["lyrics_prompt"]
    if case["non_cover_caption_prompt"] is None:
        assert cond.after_switch is None
    else:
        after = cond.after_switch
        assert T.official_caption_prompt(after.instruction, GOLDEN["caption"], metas_for(case, cond)) == \
            case["non_cover_caption_prompt"]
        assert after.is_covers is False and codes_of(after.src_latents) == list(range(-1, -cond.frames - 1, -1))
        assert torch.equal(after.chunk_masks, cond.chunk_masks)


def test_codes_with_a_stem_task_are_refused():
    # f30aee4 generate_music drops src_audio when audio codes are present and _prepare_batch then
    # sets is_covers from the code hint: the lego "track" becomes a cover of the codes, the backing
    # track never reaches the DiT. inference.py runs the planner (and so makes codes) for lego,
    # extract and complete when "thinking" is on; upstream 783bb36 skips it for extract only.
    case = GOLDEN["cases"]["lego_with_codes"]
    assert case["is_covers"] and unrle(case["src_latents"]) == list(range(HINT_BASE, HINT_BASE + 130))
    assert unrle(case["chunk_mask"]) == [1] * 130
    with pytest.raises(ValueError, match="audio codes are a source for text2music and cover, not for lego"):
        T.build_task_conditioning("lego", SILENCE, source(130), track="drums", from_codes=True)


@pytest.mark.parametrize("name", sorted(n for n, c in GOLDEN["cases"].items()
                                        if c["task_type"] == "lego" and n not in REFUSED))
def test_lego_keeps_the_source_as_upstream_does(name):
    case = GOLDEN["cases"][name]
    task, src, kwargs = our_call(name, case)
    cond = T.build_task_conditioning(task, SILENCE, src, **kwargs)      # lego_keeps_source=True
    assert codes_of(cond.src_latents) == unrle(case["upstream_src_latents"])
    assert cond.chunk_masks[0, 0].long().tolist() == unrle(case["upstream_chunk_mask"])
    assert cond.is_covers is case["upstream_is_covers"] is False
    assert unrle(case["upstream_src_latents"]) != unrle(case["src_latents"])   # the versions do differ


def test_upstream_changed_nothing_else():
    for name, case in GOLDEN["cases"].items():
        if case["task_type"] != "lego" or name in REFUSED:
            assert case["upstream_src_latents"] == case["src_latents"], name
            assert case["upstream_chunk_mask"] == case["chunk_mask"], name


def test_instructions():
    assert T.task_instruction("text2music") == "Fill the audio semantic mask based on the given conditions:"
    assert T.task_instruction("cover") == "Generate audio semantic tokens based on the given conditions:"
    assert T.task_instruction("extend") == T.task_instruction("repaint") == \
        "Repaint the mask area based on the given conditions:"
    assert T.task_instruction("extract", "backing_vocals") == "Extract the BACKING_VOCALS track from the audio:"
    assert T.task_instruction("extract") == "Extract the track from the audio:"
    assert T.task_instruction("complete", tracks=["guitar"]) == "Complete the input track with GUITAR:"
    assert T.task_instruction("complete") == "Complete the input track:"
    for name, case in GOLDEN["cases"].items():
        if case["task_type"] in ("lego", "extract", "complete"):
            assert T.task_instruction(case["task_type"], case["track"], case["track_classes"]) == \
                case["instruction_given"], name


def test_with_instruction_rewrites_a_comfyui_prompt():
    from acestep_core.ace15.text_encoder import caption_prompt

    prompt = caption_prompt("rock", bpm=100)
    swapped = T.with_instruction(prompt, T.task_instruction("lego", "bass"))
    assert swapped == prompt.replace(T.COVER_INSTRUCTION, "Generate the BASS track based on the audio context:")
    assert T.with_instruction(swapped, "Fill it").startswith("# Instruction\nFill it:\n\n# Caption\nrock")
    with pytest.raises(ValueError, match="Instruction"):
        T.with_instruction("no header here", "x")


def test_seconds_to_frames_floor_like_the_app():
    # handler.py _prepare_batch: int(seconds * 48000 // 1920)
    assert [T.seconds_to_frame(s) for s in (0.0, 0.039, 0.04, 1.03, 2.99, 600.0)] == [0, 0, 1, 25, 74, 15000]
    assert T.text2music_frames(3.0) == 75 and T.text2music_frames(0.01) == 2 and T.text2music_frames(6.04) == 150
    mask = T.repaint_chunk_mask(10, 0.04, 0.2)
    assert mask.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_cover_strength_switch_step():
    # models/{turbo,base}/modeling_acestep_v15_*.py generate_audio (upstream 783bb36):
    # cover_steps = int(num_steps * audio_cover_strength); step_idx >= cover_steps uses the
    # non-cover condition (turbo file lines 1981-1991, base file lines 1898 and 1952-1962).
    assert [T.cover_steps(8, s) for s in (0.0, 0.2, 0.5, 0.99, 1.0)] == [0, 1, 4, 7, 8]
    cond = T.build_task_conditioning("cover", SILENCE, source(130), audio_cover_strength=0.3)
    steps = 8
    assert cond.switch_step(steps) == 2
    assert [cond.at_step(i, steps).is_covers for i in range(steps)] == [True, True] + [False] * 6
    full = T.build_task_conditioning("cover", SILENCE, source(130))
    assert full.after_switch is None and full.switch_step(steps) == steps


def test_cover_hints_pad_with_silence_before_tokenizing():
    from acestep_core.ace15 import Ace15Model, tiny_config
    from acestep_core.ace15.testing import random_state_dict

    config = tiny_config()
    model = Ace15Model(config)
    model.load_state_dict(random_state_dict(config, seed=1))
    torch.manual_seed(0)
    src = torch.randn(1, 64, 13)
    silence = torch.randn(1, 64, 40)
    hints = T.cover_hints(model, src, silence)
    assert hints.shape == (1, 13, 64)
    # The official tokenize pads 13 frames to 15 with silence_latent[:, :2] (modeling file, tokenize).
    padded = torch.cat([src, silence[..., :2]], dim=-1).movedim(-1, -2)
    assert torch.equal(hints, model.hints_from_latents(padded)[:, :13])
    zero_padded = model.hints_from_latents(src.movedim(-1, -2))[:, :13]      # ComfyUI pads with zeros
    assert not torch.allclose(hints[:, 10:], zero_padded[:, 10:])
    assert torch.equal(T.pad_to_code_frames(src[..., :10], silence), src[..., :10])


def test_fit_hints():
    hints = source(20, HINT_BASE)
    assert codes_of(T.fit_hints(hints, 12, SILENCE)) == list(range(HINT_BASE, HINT_BASE + 12))
    assert codes_of(T.fit_hints(hints, 23, SILENCE)) == list(range(HINT_BASE, HINT_BASE + 20)) + [-1, -2, -3]


def test_variants():
    assert T.variants_for("lego") == T.variants_for("extract") == T.variants_for("complete") == ("base",)
    assert set(T.variants_for("repaint")) == {"turbo", "sft", "base"}
    T.check_variant("extract", "base")
    T.check_variant("extract", None)
    with pytest.raises(ValueError, match="needs the ACE-Step 1.5 base model; this is the turbo"):
        T.check_variant("extract", "turbo")
    with pytest.raises(ValueError, match="needs the ACE-Step 1.5 base model"):
        T.build_task_conditioning("lego", SILENCE, source(130), track="drums", variant="sft")
    assert T.variant_from_config({"is_turbo": True}) == "turbo"
    assert T.variant_from_config({"is_turbo": False}) == "base or sft"
    assert T.variant_from_config({}) is None and T.variant_from_config(None) is None


def test_bad_input_is_named():
    src = source(130)      # 5.2 s
    with pytest.raises(ValueError, match="unknown ACE-Step 1.5 task 'inpaint'.*text2music, cover, repaint"):
        T.build_task_conditioning("inpaint", SILENCE, src)
    with pytest.raises(ValueError, match="unknown stem 'drum'.*woodwinds, brass.*backing_vocals, vocals"):
        T.build_task_conditioning("extract", SILENCE, src, track="drum")
    with pytest.raises(ValueError, match="unknown stem 'voice'"):
        T.task_instruction("complete", tracks=["drums", "voice"])
    with pytest.raises(ValueError, match=r"outside the source \(0-5.2 s\); use the extend task"):
        T.build_task_conditioning("repaint", SILENCE, src, start_s=4.0, end_s=6.0)
    with pytest.raises(ValueError, match="outside the source"):
        T.build_task_conditioning("repaint", SILENCE, src, start_s=-1.0, end_s=2.0)
    with pytest.raises(ValueError, match="ends at 1 s, not after its start 2 s"):
        T.build_task_conditioning("repaint", SILENCE, src, start_s=2.0, end_s=1.0)
    with pytest.raises(ValueError, match="not after its start"):
        T.build_task_conditioning("extend", SILENCE, src, start_s=3.0, end_s=2.5)
    with pytest.raises(ValueError, match="at most 15000 frames"):
        T.build_task_conditioning("extract", SILENCE, torch.zeros(1, 64, 15001))
    with pytest.raises(ValueError, match="source plus extension.*at most 15000"):
        T.build_task_conditioning("extend", torch.zeros(1, 64, 15000), torch.zeros(1, 64, 14990), start_s=-1.0)
    with pytest.raises(ValueError, match="at most 15000"):
        T.build_task_conditioning("text2music", SILENCE, duration_s=601)
    with pytest.raises(ValueError, match="audio_cover_strength is 1.5"):
        T.build_task_conditioning("cover", SILENCE, src, audio_cover_strength=1.5)
    with pytest.raises(ValueError, match="start_s / end_s set a region for repaint, extend and lego; extract"):
        T.build_task_conditioning("extract", SILENCE, src, start_s=1.0)
    with pytest.raises(ValueError, match="stems for lego, extract and complete; repaint"):
        T.build_task_conditioning("repaint", SILENCE, src, track="drums")
    with pytest.raises(ValueError, match="text2music needs the latent length"):
        T.build_task_conditioning("text2music", SILENCE)
    with pytest.raises(ValueError, match="cover needs the source"):
        T.build_task_conditioning("cover", SILENCE)
    with pytest.raises(ValueError, match=r"expected ACE-Step 1.5 latents \[B, 64, T\]"):
        T.build_task_conditioning("cover", SILENCE, torch.zeros(1, 8, 16, 100))
    with pytest.raises(ValueError, match="the silence latent has 160 frames; 200 are needed"):
        T.build_task_conditioning("repaint", SILENCE, source(200), start_s=1.0, end_s=2.0)
    with pytest.raises(ValueError, match="audio codes are a source for text2music and cover, not for repaint"):
        T.build_task_conditioning("repaint", SILENCE, src, from_codes=True)


def test_silence_may_be_a_function_and_batches_share_the_region():
    calls = []

    def silence(frames):
        calls.append(frames)
        return SILENCE[..., :frames]

    batch = torch.cat([source(130), source(130, 500)])
    cond = T.build_task_conditioning("repaint", silence, batch, start_s=1.0, end_s=2.0)
    assert cond.src_latents.shape == cond.chunk_masks.shape == (2, 64, 130) and calls
    assert cond.region == (25, 50)
    assert torch.equal(cond.src_latents[0, :, 25:50], cond.src_latents[1, :, 25:50])
    assert torch.equal(cond.src_latents[1, :, :25], batch[1, :, :25])


def test_repaint_settings_match_upstream():
    for key, expected in GOLDEN["repaint_settings"].items():
        mode, strength = key.split()
        assert list(T.repaint_settings(mode, float(strength))) == expected, key
    with pytest.raises(ValueError, match="unknown repaint mode 'soft'.*conservative, balanced, aggressive"):
        T.repaint_settings("soft")
    assert T.injection_steps(8, 0.5) == 4 and T.injection_steps(8, 0.0) == 0 and T.injection_steps(50, 1.0) == 50


def test_repaint_injection_and_blend_match_upstream():
    from safetensors.torch import load_file

    data = load_file(str(Path(__file__).parent / "data" / "ace15_tasks_golden.safetensors"))
    channels_first = {k: v.movedim(-1, 1) for k, v in data.items() if v.ndim == 3}
    x, clean, noise = channels_first["x"], channels_first["clean"], channels_first["noise"]
    mask = data["mask"].bool()
    assert torch.equal(T.repaint_step_injection(x, clean, mask, 0.3, noise), channels_first["injected_t0.3"])
    for frames in (0, 6, 25):
        assert torch.equal(T.repaint_boundary_blend(x, clean, mask, frames), channels_first[f"blend_{frames}"]), frames
    soft = T.repaint_soft_mask(mask, 6)
    assert soft[0, 4:10].tolist() == pytest.approx([1 / 7, 2 / 7, 3 / 7, 4 / 7, 5 / 7, 6 / 7])
    assert soft[0, :4].sum() == 0 and soft[2].eq(1).all()


def test_region_mask_for_repaint_sampling():
    cond = T.build_task_conditioning("repaint", SILENCE, source(130), start_s=1.0, end_s=2.0)
    assert cond.region_mask.dtype == torch.bool and cond.region_mask[0].nonzero().flatten().tolist() == \
        list(range(25, 50))
    assert T.build_task_conditioning("extract", SILENCE, source(130)).region_mask is None


def test_cover_noise_start():
    # models/turbo/modeling_acestep_v15_turbo.py generate_audio (783bb36): SHIFT_TIMESTEPS[3.0] and
    # nearest_t = min(t_schedule_list, key=lambda x: abs(x - (1 - cover_noise_strength))).
    shift3 = [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3]
    assert [T.cover_noise_start(shift3, s) for s in (0.0, 0.05, 0.4, 0.5, 0.9, 1.0)] == [0, 1, 5, 6, 7, 7]
    with pytest.raises(ValueError, match="cover_noise_strength is -0.1"):
        T.cover_noise_start(shift3, -0.1)


def test_caption_prompt_takes_the_task_instruction():
    """caption_prompt(instruction=...) is ComfyUI's caption prompt with the task's instruction line
    (the ':' appended as the app's _format_instruction does); without it the output is unchanged."""
    from acestep_core.ace15.text_encoder import CAPTION_TEMPLATE, DEFAULT_INSTRUCTION, caption_prompt, metas_text
    plain = caption_prompt(" a, b ", 90, "3", "D minor", 12.5)
    assert plain == CAPTION_TEMPLATE.format(caption="a, b", metas=metas_text(90, "3", "D minor", 12.5))
    assert caption_prompt(" a, b ", 90, "3", "D minor", 12.5, instruction=DEFAULT_INSTRUCTION) == plain
    for task, track in (("repaint", None), ("lego", "drums"), ("text2music", None)):
        instruction = T.task_instruction(task, track)
        assert caption_prompt(" a, b ", 90, "3", "D minor", 12.5, instruction=instruction) == \
            T.with_instruction(plain, instruction)
    tagged = caption_prompt(DEFAULT_INSTRUCTION, instruction="Do it")    # the tags keep their text
    assert tagged.startswith(f"# Instruction\nDo it:\n\n# Caption\n{DEFAULT_INSTRUCTION}\n")
    with pytest.raises(ValueError, match="line break"):
        caption_prompt("x", instruction="two\nlines")
