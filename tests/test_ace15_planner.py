"""The ACE-Step 1.5 planner (acestep_core.ace15.planner) against ComfyUI 0.20.1's, through golden
data (scripts/make_ace15_planner_golden.py runs ComfyUI's generate_audio_codes on the same tiny
random weights), plus loading, the metadata grammar, NaN handling, interrupt and progress."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from acestep_core import ops
from acestep_core.ace15.planner import (PLANNER_CONFIGS, PRODUCTS, TINY_PLANNER_CONFIG, Planner, PlannerError,
                                        config_from_state_dict, load_planner, planner_state_dict,
                                        random_planner_state_dict, read_planner_state_dict, resolve_products,
                                        tokens_to_codes)
from acestep_core.ace15.planner_grammar import (METADATA_FIELDS, VALID_KEYSCALES, VALID_LANGUAGES,
                                                VALID_TIME_SIGNATURES, PlannerTokenizer, codes_for_duration,
                                                codes_prompts, comfyui_tokenizer_dir)

GOLDEN = load_file(str(__import__("pathlib").Path(__file__).parent / "data" / "ace15_planner_golden.safetensors"))
CASES = ["greedy", "sampled", "topk_minp", "no_cfg"]
# The caption, lyrics and metadata the golden script gave ComfyUI's ACE15Tokenizer.
CAPTION = "Upbeat synth-pop with bright female vocals, punchy drums"
LYRICS = "[verse]\nNeon lights are calling me\n\n[chorus]\nWe run, we run"
METADATA = dict(bpm=124, duration=8.2, keyscale="F# minor", timesignature="4")


@pytest.fixture(scope="module")
def tiny_sd():
    return random_planner_state_dict(TINY_PLANNER_CONFIG, 0)


@pytest.fixture(scope="module")
def planner(tiny_sd):
    return Planner.from_state_dict(tiny_sd)


@pytest.fixture(scope="module")
def tokenizer(comfyui_dir):
    path = comfyui_tokenizer_dir(comfyui_dir)
    assert path is not None, f"ComfyUI at {comfyui_dir} ships no qwen25_tokenizer"
    return PlannerTokenizer.load(path)


def test_prompt_ids_equal_comfyui(tokenizer):
    cond, uncond = codes_prompts(CAPTION, LYRICS, METADATA)
    assert tokenizer.encode(cond) == GOLDEN["prompt_ids"].tolist()
    assert tokenizer.encode(uncond) == GOLDEN["negative_ids"].tolist()


@pytest.mark.parametrize("case", CASES)
def test_codes_and_logits_equal_comfyui(planner, case):
    seed, cfg, temperature, top_p, top_k, min_p = GOLDEN[f"{case}.settings"].tolist()
    want = GOLDEN[f"{case}.codes"].tolist()
    codes, logits = planner.generate_codes(
        GOLDEN["prompt_ids"].tolist(), GOLDEN["negative_ids"].tolist(), len(want), seed=int(seed), cfg_scale=cfg,
        temperature=temperature, top_p=top_p, top_k=int(top_k), min_p=min_p, return_logits=True)
    probe = GOLDEN["probe_rows"]
    # every step: the next-token logits of both rows (the batch ComfyUI runs), fp32
    assert logits.shape[:2] == GOLDEN[f"{case}.logits_probe"].shape[:2]
    torch.testing.assert_close(logits[..., probe], GOLDEN[f"{case}.logits_probe"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.max(-1).values, GOLDEN[f"{case}.logits_max"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.logsumexp(logits, -1), GOLDEN[f"{case}.logits_lse"], atol=1e-4, rtol=0)
    assert codes == want


@pytest.fixture(scope="module")
def bf16_planner():
    return Planner.from_state_dict(random_planner_state_dict(TINY_PLANNER_CONFIG, 0, dtype=torch.bfloat16))


def _generate_like_golden(planner, case, products):
    seed, cfg, temperature, top_p, top_k, min_p = GOLDEN[f"{case}.settings"].tolist()
    return planner.generate_codes(
        GOLDEN["prompt_ids"].tolist(), GOLDEN["negative_ids"].tolist(), len(GOLDEN[f"{case}.codes"]), seed=int(seed),
        cfg_scale=cfg, temperature=temperature, top_p=top_p, top_k=int(top_k), min_p=min_p, return_logits=True,
        products=products)


@pytest.mark.parametrize("case", ["fp16.greedy", "fp16.sampled"])
def test_float32_products_on_bf16_weights_equal_comfyui(bf16_planner, case):
    """The weights stored in bf16 (as the released files); ComfyUI holds them in fp16 on the CPU and
    casts each to float32 for every product. Our float32 products on the bf16 weights: the same
    logits (to float32 rounding: ComfyUI's own run-to-run spread is ~1e-6) and the same 40 codes."""
    codes, logits = _generate_like_golden(bf16_planner, case, "float32")
    probe = GOLDEN["probe_rows"]
    torch.testing.assert_close(logits[..., probe], GOLDEN[f"{case}.logits_probe"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.max(-1).values, GOLDEN[f"{case}.logits_max"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.logsumexp(logits, -1), GOLDEN[f"{case}.logits_lse"], atol=1e-5, rtol=0)
    assert codes == GOLDEN[f"{case}.codes"].tolist()
    # the bf16 products are the alternative, not ComfyUI's numbers: this comparison sees the difference
    _, bf16_logits = _generate_like_golden(bf16_planner, case, "weight_dtype")
    assert (bf16_logits[..., probe] - GOLDEN[f"{case}.logits_probe"]).abs().max() > 1e-3


def test_float32_products_are_f_linear_on_cast_weights_without_a_copy(bf16_planner, monkeypatch):
    """Every product of the float32 mode is F.linear on the float32-cast weight, bit for bit (the
    whole forward and the logits are torch.equal), with the weight cast in blocks (a block size of a
    few rows here, so every weight is cut into many, the last one ragged); no float32 weight stays."""
    from acestep_core.ace15.planner import _KVCache
    monkeypatch.setattr(ops, "UPCAST_BLOCK_BYTES", 16 * 64 * 4 + 4)   # 16 rows of the 64-wide weights
    monkeypatch.setattr(ops, "UPCAST_BLOCK_ROWS_MULTIPLE", 16)
    monkeypatch.setattr(ops, "_upcast_scratch", {})
    cast = []

    def reference(x, weight):
        cast.append(weight.shape)
        return torch.nn.functional.linear(x, weight.float())
    ids = torch.tensor([GOLDEN["prompt_ids"].tolist()[:20]] * 2)
    rows = slice(151669, 215669)
    outs = {}
    with torch.inference_mode():
        bf16_planner._blocks_exact.clear()
        decode = bf16_planner._lin("float32", batch=2)   # blocks for 2 rows where this machine sums them alike
        for name, lin, step_lin in (("ours", bf16_planner._lin("float32"), decode),
                                    ("reference", reference, reference)):
            cache = _KVCache(bf16_planner.config, 2, 24, "cpu")
            hidden = bf16_planner._forward(bf16_planner._embed(ids), cache, lin)
            step = bf16_planner._forward(bf16_planner._embed(ids[:, -1:] + 7), cache, step_lin)
            outs[name] = (hidden, step, bf16_planner._logits(step, rows, step_lin))
    assert len(cast) == 2 * 7 * TINY_PLANNER_CONFIG.num_layers + 1     # q k v o gate up down per layer and pass, head
    for ours, reference in zip(outs["ours"], outs["reference"]):
        assert torch.equal(ours, reference)
    assert {p.dtype for p in bf16_planner.lm.parameters()} == {torch.bfloat16}
    scratch = sum(buf.numel() for buf in ops._upcast_scratch.values())
    assert 0 < scratch < TINY_PLANNER_CONFIG.intermediate_size * TINY_PLANNER_CONFIG.hidden_size   # a block, no weight


def test_products_setting(tiny_sd, bf16_planner):
    assert PRODUCTS == ("auto", "float32", "weight_dtype")
    assert resolve_products("auto", "cpu") == "float32" and resolve_products("auto", "cuda") == "weight_dtype"
    assert bf16_planner.products == "auto" and bf16_planner._lin() is bf16_planner._lin("float32")
    assert bf16_planner._lin("weight_dtype") is not bf16_planner._lin("float32")
    with pytest.raises(ValueError, match="unknown planner products 'fp64'; use one of auto, float32, weight_dtype"):
        Planner.from_state_dict(tiny_sd, products="fp64")
    with pytest.raises(ValueError, match="unknown planner products"):
        bf16_planner.generate_codes([1, 2], [3], 2, products="bf16x")
    fast = Planner.from_state_dict({k: v.to(torch.bfloat16) for k, v in tiny_sd.items()}, products="weight_dtype")
    _, a = fast.generate_codes([1, 2, 3], [4, 5], 3, seed=0, temperature=0, return_logits=True)
    _, b = bf16_planner.generate_codes([1, 2, 3], [4, 5], 3, seed=0, temperature=0, return_logits=True,
                                       products="weight_dtype")
    assert torch.equal(a, b)


def test_forward_equals_transformers_qwen3(planner):
    """Our cached forward on the HF modules gives the logits of Qwen3ForCausalLM's own forward."""
    from acestep_core.ace15.planner import _KVCache
    ids = torch.tensor([[151644, 8948, 198, 2, 3, 151669 + 5]])
    with torch.no_grad():
        cache = _KVCache(planner.config, 1, 8, "cpu")
        ours = planner._logits(planner._forward(planner._embed(ids[:, :-1]), cache), slice(151669, 215669))
        ours_next = planner._logits(planner._forward(planner._embed(ids[:, -1:]), cache), slice(151669, 215669))
        hf = planner.lm(input_ids=ids).logits[:, :, 151669:215669]
    torch.testing.assert_close(ours, hf[:, -2], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_next, hf[:, -1], atol=1e-5, rtol=0)


# --- loading ------------------------------------------------------------------------------------
def _text_encoder_sd():
    """A small Qwen3 without audio codes, like the 0.6B text encoder beside the planner."""
    cfg = TINY_PLANNER_CONFIG.__class__(**{**TINY_PLANNER_CONFIG.__dict__, "vocab_size": 1000})
    return random_planner_state_dict(cfg, 5)


def test_layouts_load_the_same_planner(tmp_path, tiny_sd, planner):
    want = planner.generate_codes([1, 2, 3], [4, 5], 6, seed=3)
    bf16 = {k: v.to(torch.bfloat16) for k, v in tiny_sd.items()}
    layouts = {
        "aio.safetensors": {**{f"text_encoders.qwen3_2b.transformer.{k}": v for k, v in bf16.items()},
                            **{f"text_encoders.qwen3_06b.transformer.{k}": v for k, v in _text_encoder_sd().items()},
                            "model.diffusion_model.decoder.proj_in.1.bias": torch.zeros(4),
                            "vae.decoder.layers.0.bias": torch.zeros(2)},
        "qwen_1.7b_ace15.safetensors": bf16,
        "official_no_prefix.safetensors": {k.removeprefix("model."): v for k, v in bf16.items()},
    }
    for name, sd in layouts.items():
        save_file(sd, str(tmp_path / name))
    folder = tmp_path / "acestep-5Hz-lm-tiny"
    folder.mkdir()
    keys = sorted(bf16)
    save_file({k: bf16[k] for k in keys[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: bf16[k] for k in keys[1::2]}, str(folder / "model-00002-of-00002.safetensors"))
    sources = [tmp_path / n for n in layouts] + [folder]
    for source in sources:
        loaded = load_planner(source)
        assert loaded.config == TINY_PLANNER_CONFIG, source
        assert loaded.weight_dtype == torch.bfloat16          # kept as the file stores it
        for key, tensor in bf16.items():
            assert torch.equal(loaded.lm.state_dict()[key], tensor), (source, key)
        fp32 = load_planner({k: v.float() for k, v in read_planner_state_dict(source).items()})
        assert fp32.generate_codes([1, 2, 3], [4, 5], 6, seed=3) == planner.generate_codes(
            [1, 2, 3], [4, 5], 6, seed=3) and len(want) == 6
    # state dicts with a layout hint, as the checkpoint loader passes them
    aio = load_file(str(tmp_path / "aio.safetensors"))
    assert set(planner_state_dict(aio, "comfyui_aio")) == set(bf16)
    with pytest.raises(ValueError, match="no Qwen3 planner"):
        planner_state_dict(bf16, "comfyui_aio")


def test_text_encoder_is_not_a_planner():
    with pytest.raises(ValueError, match="text encoder"):
        Planner.from_state_dict(_text_encoder_sd())


@pytest.mark.parametrize("size", sorted(PLANNER_CONFIGS))
def test_real_configs_from_shapes(size):
    from transformers import Qwen3ForCausalLM
    want = PLANNER_CONFIGS[size]
    with torch.device("meta"):
        sd = Qwen3ForCausalLM(want.qwen3_config()).state_dict()
    sd.pop("lm_head.weight", None)
    assert config_from_state_dict(sd) == want
    assert want.size_name == size


def test_tokens_to_codes():
    assert tokens_to_codes([151669, 215668]) == [0, 63999]
    with pytest.raises(ValueError, match="not an audio code"):
        tokens_to_codes([151668])


# --- metadata grammar ---------------------------------------------------------------------------
def _parse_thinking(text):
    assert text.startswith("<think>\n") and text.endswith("\n</think>"), text
    lines = text[len("<think>\n"):-len("\n</think>")].split("\n")
    return dict(line.split(": ", 1) for line in lines)


def test_metadata_never_leaves_the_grammar(planner, tokenizer):
    """100 seeds on random weights: every thinking block the planner writes parses into the five
    fields, in order, each value from its valid set."""
    valid = {"bpm": {str(v) for v in range(30, 301)}, "duration": {str(v) for v in range(10, 601)},
             "keyscale": set(VALID_KEYSCALES), "language": set(VALID_LANGUAGES),
             "timesignature": set(VALID_TIME_SIGNATURES)}
    seen = {k: set() for k in METADATA_FIELDS}
    for seed in range(100):
        meta, tokens = planner.generate_metadata(tokenizer, "lofi hip hop", "la la", {}, seed=seed,
                                                 temperature=1.5 if seed % 2 else 0.85, top_p=1.0 if seed % 3 else 0.9,
                                                 return_tokens=True)
        fields = _parse_thinking(tokenizer.decode(tokens))
        assert list(fields) == list(METADATA_FIELDS), fields
        for key, value in fields.items():
            assert value in valid[key], (seed, key, value)
            assert str(meta[key]) == value
            seen[key].add(value)
    assert all(len(values) > 1 for values in seen.values()), seen   # the model really chose


@pytest.mark.parametrize("duration", [1, 2.2, 3.0])
def test_code_count_follows_duration(planner, tokenizer, duration):
    result = planner.plan(tokenizer, "ambient", "", dict(duration=duration, bpm=90, keyscale="C major",
                                                          timesignature="4"), seed=1)
    assert len(result.codes) == codes_for_duration(duration) == 5 * math.ceil(duration)
    assert all(0 <= c < 64000 for c in result.codes)
    assert result.generated == ()


def test_user_metadata_is_never_overwritten(planner, tokenizer):
    user = {"bpm": 400, "keyscale": "Eb minor", "language": "ja", "duration": 2}   # bpm outside 30-300 on purpose
    for seed in range(5):
        result = planner.plan(tokenizer, "city pop", "[verse]\nhello", dict(user), seed=seed)
        assert {k: result.metadata[k] for k in user} == user
        assert result.generated == ("timesignature",)
        assert result.metadata["timesignature"] in VALID_TIME_SIGNATURES
        assert "bpm: 400\n" in result.thinking and "keyscale: Eb minor\n" in result.thinking
        assert len(result.codes) == 10
    meta, tokens = planner.generate_metadata(tokenizer, "x", "", {"bpm": 400}, seed=0, return_tokens=True)
    assert _parse_thinking(tokenizer.decode(tokens))["bpm"] == "400" and meta["bpm"] == 400


def test_all_metadata_given_is_comfyuis_prompt(planner, tokenizer, monkeypatch):
    seen = {}
    original = planner.generate_codes

    def spy(prompt_ids, negative_ids, count, **kw):
        seen.update(prompt=prompt_ids, negative=negative_ids, count=count)
        return original(prompt_ids, negative_ids, count, **kw)
    monkeypatch.setattr(planner, "generate_codes", spy)
    planner.plan(tokenizer, CAPTION, LYRICS, dict(METADATA, language="en"), seed=0)
    assert seen["prompt"] == GOLDEN["prompt_ids"].tolist() and seen["negative"] == GOLDEN["negative_ids"].tolist()
    assert seen["count"] == 45   # ceil(8.2) * 5


# --- failure modes ------------------------------------------------------------------------------
def test_poisoned_weights_give_a_clear_error(tiny_sd, tokenizer):
    poisoned = dict(tiny_sd)
    poisoned["model.layers.1.mlp.down_proj.weight"] = tiny_sd["model.layers.1.mlp.down_proj.weight"].clone()
    poisoned["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    bad = Planner.from_state_dict(poisoned)
    with pytest.raises(PlannerError, match="NaN/inf logits at audio-code token 1"):
        bad.generate_codes([1, 2, 3], [4, 5], 5, seed=0)
    with pytest.raises(PlannerError, match="NaN/inf logits at metadata token 1"):
        bad.plan(tokenizer, "x", "", {}, seed=0)
    poisoned_head = dict(tiny_sd)
    poisoned_head["model.embed_tokens.weight"] = tiny_sd["model.embed_tokens.weight"].clone()
    poisoned_head["model.embed_tokens.weight"][151669 + 7] = float("inf")
    with pytest.raises(PlannerError, match="NaN/inf"):
        Planner.from_state_dict(poisoned_head).generate_codes([1, 2], [3], 3, seed=0, temperature=0)


def test_interrupt_within_one_token_and_progress(planner):
    calls, ticks = [], []

    class Stop(Exception):
        pass

    def interrupt():
        calls.append(len(ticks))
        if len(ticks) == 3:
            raise Stop

    with pytest.raises(Stop):
        planner.generate_codes([1, 2, 3], [4], 10, seed=2, interrupt=interrupt, progress=lambda d, t: ticks.append((d, t)))
    assert ticks == [(1, 10), (2, 10), (3, 10)]       # stopped before a 4th forward pass
    # the planner is usable afterwards and reproducible
    first = planner.generate_codes([1, 2, 3], [4], 10, seed=2, progress=lambda d, t: ticks.append((d, t)))
    assert first == planner.generate_codes([1, 2, 3], [4], 10, seed=2)
    assert ticks[-1] == (10, 10)


def test_bf16_weights_stay_bf16_and_agree(tiny_sd):
    """A bf16 file with bf16 matrix products (fp32 residual): logits within bf16 error."""
    fp32 = Planner.from_state_dict(tiny_sd)
    bf16 = Planner.from_state_dict({k: v.to(torch.bfloat16) for k, v in tiny_sd.items()}, products="weight_dtype")
    _, a = fp32.generate_codes([1, 2, 3], [4, 5], 4, seed=0, temperature=0, return_logits=True)
    _, b = bf16.generate_codes([1, 2, 3], [4, 5], 4, seed=0, temperature=0, return_logits=True)
    assert bf16.lm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_metadata_text_lists_sources():
    from acestep_core.ace15.planner import PlanResult
    text = PlanResult({"bpm": 90, "duration": 2, "keyscale": "C major", "language": "en", "timesignature": "4"},
                      [1] * 10, generated=("keyscale",)).metadata_text()
    assert "keyscale: C major (planner)" in text and "bpm: 90 (user)" in text and "audio codes: 10" in text
    json.dumps(text)


class _ReplayLikeAGraph:
    """A stand-in for ``record_cuda_graph`` on the CPU with a CUDA graph's contract: the step is
    run once to warm up and once to "record", its output tensor is fixed at recording and every
    replay overwrites that same tensor. A caller that kept an old output, or fed inputs anywhere
    but the recorded input tensors, would decode other tokens than the eager loop."""

    def __init__(self):
        self.recordings = 0
        self.replays = 0

    def __call__(self, step):
        self.recordings += 1
        step()                      # the side-stream warm-up
        output = step()             # the recording
        recorded = output

        def replay():
            self.replays += 1
            recorded.copy_(step())
            return recorded
        return replay


@pytest.mark.parametrize("case", ["sampled", "no_cfg"])
def test_graphed_decoding_equals_eager(planner, case, monkeypatch):
    """The fixed-shape step CUDA graphs record (whole cache read, later slots masked, position as
    a tensor) decodes the golden tokens with the same logits as the eager loop."""
    from acestep_core.ace15 import planner as planner_module
    stand_in = _ReplayLikeAGraph()
    monkeypatch.setattr(planner_module, "record_cuda_graph", stand_in)
    seed, cfg, temperature, top_p, top_k, min_p = GOLDEN[f"{case}.settings"].tolist()
    want = GOLDEN[f"{case}.codes"].tolist()
    kwargs = dict(seed=int(seed), cfg_scale=cfg, temperature=temperature, top_p=top_p, top_k=int(top_k),
                  min_p=min_p, return_logits=True)
    ids = GOLDEN["prompt_ids"].tolist(), GOLDEN["negative_ids"].tolist()
    eager_codes, eager_logits = planner.generate_codes(*ids, len(want), cuda_graph=False, **kwargs)
    codes, logits = planner.generate_codes(*ids, len(want), cuda_graph=True, **kwargs)
    assert stand_in.recordings == 1 and stand_in.replays == len(want) - 1
    assert codes == eager_codes == want
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=0)


def test_graph_recording_refused_falls_back_to_eager(planner, monkeypatch, caplog):
    from acestep_core.ace15 import planner as planner_module

    def refuse(step):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(planner_module, "record_cuda_graph", refuse)
    want = GOLDEN["greedy.codes"].tolist()
    ids = GOLDEN["prompt_ids"].tolist(), GOLDEN["negative_ids"].tolist()
    seed, cfg, temperature, top_p, top_k, min_p = GOLDEN["greedy.settings"].tolist()
    with caplog.at_level("WARNING", logger="acestep_core"):
        codes = planner.generate_codes(*ids, len(want), seed=int(seed), cfg_scale=cfg, temperature=temperature,
                                       top_p=top_p, top_k=int(top_k), min_p=min_p, cuda_graph=True)
    assert codes == want
    assert "CUDA graph recording failed" in caplog.text and "stream is capturing" in caplog.text


def test_cuda_graphs_on_the_cpu_are_refused_clearly():
    from acestep_core.ace15.planner import record_cuda_graph
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: recording is allowed here")
    with pytest.raises(PlannerError, match="CUDA graphs need a CUDA device"):
        record_cuda_graph(lambda: torch.zeros(1))
