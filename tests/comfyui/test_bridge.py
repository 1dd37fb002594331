"""The pack's MODEL / CLIP / VAE inside ComfyUI's own machinery, in process (no server).

A tiny random-weight checkpoint goes through LoadAceStepCheckpoint; ComfyUI's stock nodes
(TextEncodeAceStepAudio, ConditioningZeroOut, KSampler, SamplerCustomAdvanced, ModelSamplingSD3,
VAEEncodeAudio, VAEDecodeAudio, LoRA loading) then run on it, and the sampled latent is compared
with ComfyUI's own ACE-Step model built from the same weights.

Import detail: ComfyUI has a top-level module ``nodes`` and so does this repository (the
``nodes/`` package). ComfyUI's code needs its own, so this module registers ComfyUI's nodes.py
as ``nodes`` and imports the pack as the package ``comfyui_acestep`` (as ComfyUI does, under
the folder's name), never as ``nodes``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from .pack_import import PACK, comfy_extras, comfy_nodes_module, pack_module

TAGS = "pop, piano, upbeat, female vocal"
LYRICS = "[verse]\nHello (ooh) world, we sing tonight\n\n[chorus]\nLa la la (yeah)"
SECONDS = 2.0
FRAMES = int(SECONDS * 44100 / 512 / 8)          # 21
SEED, STEPS, CFG = 42, 3, 3.0


# ---------------------------------------------------------------------------------------------
# Imports: ComfyUI's `nodes`, the pack as a package
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy_env():
    """ComfyUI modules the tests drive, with ComfyUI's `nodes` in place."""
    import comfy.utils
    env = {"nodes": comfy_nodes_module()}
    comfy.utils.PROGRESS_BAR_ENABLED = False     # no tqdm bars in the test log
    env.update(comfy_extras("nodes_ace", "nodes_audio", "nodes_latent", "nodes_model_advanced",
                            "nodes_custom_sampler"))
    return env


@pytest.fixture(scope="module")
def pack(comfy_env):
    module = pack_module()
    import importlib
    return {
        "root": module,
        "bridge": importlib.import_module(f"{PACK}.nodes.comfy_bridge"),
        "loaders": importlib.import_module(f"{PACK}.nodes.loaders"),
        "conditioning": importlib.import_module(f"{PACK}.nodes.conditioning"),
        "latents": importlib.import_module(f"{PACK}.nodes.latents"),
    }


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints in ComfyUI's model folders
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, comfy_env):
    """A checkpoints folder with the tiny single file (and broken files), a diffusion_models
    folder with the tiny checkpoint in the original folder layout; both registered with
    folder_paths for the duration of this module."""
    import folder_paths
    from acestep_core.testing import write_tiny_checkpoint

    base = tmp_path_factory.mktemp("models")
    ckpts, diffusion = base / "checkpoints", base / "diffusion_models"
    ckpts.mkdir()
    diffusion.mkdir()
    single = write_tiny_checkpoint(ckpts / "ace_tiny.safetensors", layout="comfyui", seed=0)
    write_tiny_checkpoint(diffusion / "ace_tiny_folders", layout="folders", seed=0)
    # The same folder checkpoint reached from checkpoints/ (ComfyUI follows links when listing).
    (ckpts / "linked_folders").symlink_to(diffusion / "ace_tiny_folders", target_is_directory=True)
    # Not ACE-Step: a Stable-Diffusion-like key layout.
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(ckpts / "sd_like.safetensors"))
    # Truncated: the tiny file cut in half (an interrupted download).
    data = single.read_bytes()
    (ckpts / "truncated.safetensors").write_bytes(data[: len(data) // 2])

    saved = {k: list(folder_paths.folder_names_and_paths[k][0]) for k in ("checkpoints", "diffusion_models")}
    folder_paths.add_model_folder_path("checkpoints", str(ckpts), is_default=True)
    folder_paths.add_model_folder_path("diffusion_models", str(diffusion), is_default=True)
    yield {"checkpoints": ckpts, "diffusion_models": diffusion, "single": single}
    for k, paths in saved.items():
        folder_paths.folder_names_and_paths[k][0][:] = paths


@pytest.fixture(scope="module")
def loaded(pack, model_dirs):
    """(MODEL, CLIP, VAE) of the tiny single-file checkpoint, through the node."""
    node = pack["loaders"].LoadAceStepCheckpoint()
    return node.load("ace_tiny.safetensors", "default")


@pytest.fixture(scope="module")
def conds(comfy_env, loaded):
    """Positive from ComfyUI's BUILT-IN TextEncodeAceStepAudio fed our CLIP; negative from
    ConditioningZeroOut."""
    _, clip, _ = loaded
    positive = comfy_env["nodes_ace"].TextEncodeAceStepAudio.execute(clip, TAGS, LYRICS, 1.0).result[0]
    negative = comfy_env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    return positive, negative


def _empty_latent(comfy_env, seconds=SECONDS):
    return comfy_env["nodes_ace"].EmptyAceStepLatentAudio.execute(seconds, 1).result[0]


def _ksample(comfy_env, model, conds, latent, seed=SEED, steps=STEPS, cfg=CFG, denoise=1.0,
             sampler="euler", scheduler="simple"):
    positive, negative = conds
    out = comfy_env["nodes"].common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive,
                                             negative, latent, denoise=denoise)[0]
    return out["samples"]


# ---------------------------------------------------------------------------------------------
# ComfyUI's own ACE-Step model at the tiny sizes, with the same weights
# ---------------------------------------------------------------------------------------------
def comfyui_reference_model(checkpoint: Path):
    """ModelPatcher around comfy.model_base.ACEStep built at the tiny sizes.

    ComfyUI's loader hard-codes the released sizes, so the model is built from
    supported_models.ACEStep with the tiny unet_config, and its lyric Conformer (hard-coded to
    1024 wide, 16 heads, 4096 FFN, 6 layers) is replaced by one at the tiny sizes."""
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.ace.lyric_encoder import ConformerEncoder
    from acestep_core.checkpoint import open_checkpoint
    from acestep_core.loading import infer_config

    source = open_checkpoint(checkpoint).components["transformer"]
    cfg = infer_config(source)
    unet_config = {
        "audio_model": "ace", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "num_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "attention_head_dim": cfg.attention_head_dim, "inner_dim": cfg.inner_dim, "mlp_ratio": cfg.mlp_ratio,
        "patch_size": list(cfg.patch_size), "max_height": cfg.max_height, "max_position": cfg.max_position,
        "max_width": 32768, "speaker_embedding_dim": cfg.speaker_embedding_dim,
        "text_embedding_dim": cfg.text_embedding_dim, "ssl_latent_dims": list(cfg.ssl_latent_dims),
        "lyric_encoder_vocab_size": cfg.lyric_encoder_vocab_size, "lyric_hidden_size": cfg.lyric_hidden_size,
    }
    model_config = comfy.supported_models.ACEStep(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    lyric = cfg.lyric_encoder
    model.diffusion_model.lyric_encoder = ConformerEncoder(
        input_size=cfg.lyric_hidden_size, output_size=lyric.hidden_size, attention_heads=lyric.num_heads,
        linear_units=lyric.ffn_size, num_blocks=lyric.num_layers, static_chunk_size=0,
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    missing, unexpected = model.diffusion_model.load_state_dict(source.state_dict(dtype=torch.float32), strict=False)
    # Non-persistent rotary / positional buffers are not weights; everything else must load.
    assert [k for k in missing if "rotary" not in k and not k.endswith(".pe")] == [], missing
    assert unexpected == [], unexpected
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


# =============================================================================================
# Loader
# =============================================================================================
def test_loader_returns_comfyui_objects(pack, loaded):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd
    model, clip, vae = loaded
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(model.model, pack["bridge"].AceStepModel)
    assert isinstance(model.model, comfy.model_base.BaseModel)
    assert isinstance(model.model, comfy.model_base.ACEStep)       # comfy/lora.py treats it as ACE
    assert model.model.model_type == comfy.model_base.ModelType.FLOW
    assert float(model.model.model_sampling.shift) == 3.0
    assert model.model.latent_format.latent_channels == 8
    assert model.model_dtype() == torch.float32                     # CPU: "default" is fp32
    assert isinstance(clip, comfy.sd.CLIP)
    assert isinstance(vae, comfy.sd.VAE)
    assert vae.latent_channels == 8 and vae.output_channels == 2 and vae.latent_dim == 2
    assert vae.upscale_ratio == vae.downscale_ratio == 4096 and vae.extra_1d_channel == 16


def test_loader_lists_files_and_original_folders(pack, model_dirs):
    node = pack["loaders"].LoadAceStepCheckpoint
    spec = node.INPUT_TYPES()
    names = spec["required"]["ckpt_name"][0]
    assert "ace_tiny.safetensors" in names
    assert "ace_tiny_folders" in names                 # a folder under diffusion_models/, by name
    assert "linked_folders" in names                   # a folder under checkpoints/
    # ComfyUI's own list shows the folder's weight files; they are not loadable alone, so ours
    # leaves them out.
    import folder_paths
    inner = "linked_folders/ace_step_transformer/diffusion_pytorch_model.safetensors"
    assert inner in folder_paths.get_filename_list("checkpoints")
    assert not any(n.startswith("linked_folders/") for n in names)
    assert names.index("ace_tiny.safetensors") < names.index("ace_tiny_folders")   # files first
    assert spec["optional"]["weight_dtype"][0] == ["default", "fp32", "bf16", "fp16"]
    for section in spec.values():                      # every input has a tooltip
        for name, (_, options) in section.items():
            assert options.get("tooltip"), name
    assert node.RETURN_TYPES == ("MODEL", "CLIP", "VAE") and node.CATEGORY == "loaders"


def test_folder_layout_loads_same_model(pack, comfy_env, model_dirs, loaded, conds):
    """The original folder layout (same random weights) gives the same sampled latent."""
    model, clip, vae = pack["loaders"].LoadAceStepCheckpoint().load("ace_tiny_folders")
    a = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    b = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name, expected", [
    ("no_such_model.safetensors", "not found"),
    ("sd_like.safetensors", "not an ACE-Step v1 checkpoint"),
    ("truncated.safetensors", "truncated"),
])
def test_loader_errors_name_the_problem(pack, model_dirs, name, expected):
    from acestep_core.checkpoint import CheckpointError
    with pytest.raises(CheckpointError) as err:
        pack["loaders"].LoadAceStepCheckpoint().load(name)
    assert expected in str(err.value)
    assert name in str(err.value)


def test_unknown_weight_dtype_is_a_clear_error(pack, model_dirs):
    from acestep_core.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="Unsupported weight dtype"):
        pack["loaders"].LoadAceStepCheckpoint().load("ace_tiny.safetensors", "int8")


# =============================================================================================
# MODEL: stock samplers, and parity with ComfyUI's own ACE-Step model
# =============================================================================================
def test_ksampler_runs_on_our_model(comfy_env, loaded, conds):
    samples = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    assert samples.shape == (1, 8, 16, FRAMES)
    assert torch.isfinite(samples).all() and samples.abs().max() > 0


def test_ksampler_matches_comfyui_ace_model(comfy_env, model_dirs, loaded, conds):
    """Same tiny weights, conditioning, seed, steps and cfg: our MODEL and ComfyUI's ACEStep
    give the same latent, bit for bit (the bridge runs every op in ComfyUI's order: its
    operations, its attention, the feed-forward's reference steps)."""
    reference = comfyui_reference_model(model_dirs["single"])
    ours = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    theirs = _ksample(comfy_env, reference, conds, _empty_latent(comfy_env))
    delta = (ours - theirs).abs().max().item()
    print(f"\nKSampler euler/simple {STEPS} steps cfg {CFG}: max|ours - ComfyUI ACEStep| = {delta:.3e} "
          f"(latent max |x| = {theirs.abs().max().item():.3f})")
    assert torch.equal(ours, theirs), delta


def test_patch_embedding_equals_comfyui_ace_bit_for_bit(model_dirs, loaded):
    """Float32 on the CPU, our patch embedding runs ComfyUI's ACEStep operations on the same
    layout (conv, GroupNorm, 1x1 conv), so its output equals theirs exactly: the first op of
    every model call adds no rounding difference (a matrix-product form differed by ~4e-7
    relative at the real width)."""
    reference = comfyui_reference_model(model_dirs["single"]).model.diffusion_model
    ours = loaded[0].model.diffusion_model
    x = torch.randn(2, 8, 16, 33, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, expected = ours.proj_in(x), reference.proj_in(x)
    assert got.shape == expected.shape and torch.equal(got, expected), (got - expected).abs().max()


@torch.no_grad()
def test_cross_attention_runs_comfyui_attention_bit_for_bit(pack, loaded):
    """Our MODEL's cross-attention computes the softmax attention with ComfyUI's own
    ``optimized_attention`` (sub-quadratic here, in --cpu mode), called as ComfyUI's ACE-Step
    model calls it: float32 output equal to CustomerAttnProcessor2_0's to the bit, with and
    without masks (F.scaled_dot_product_attention differed by ~7e-7 relative at the real width)."""
    import comfy.ldm.modules.attention
    import comfy.ops
    from comfy.ldm.ace.attention import Attention, CustomerAttnProcessor2_0
    from comfy.ldm.ace.model import Qwen2RotaryEmbedding
    from acestep_core.models.attention import CrossAttention, rope_tables

    comfy_attention = pack["bridge"].comfy_attention
    blocks = loaded[0].model.diffusion_model.transformer_blocks
    assert all(block.cross_attn.attention_function is comfy_attention for block in blocks)

    heads, head_dim, frames, tokens = 2, 128, 33, 19
    dim = heads * head_dim
    ours = CrossAttention(dim, dim, heads, head_dim, attention_function=comfy_attention).eval()
    theirs = Attention(query_dim=dim, cross_attention_dim=dim, added_kv_proj_dim=dim, dim_head=head_dim,
                       heads=heads, out_dim=dim, context_pre_only=False, bias=True,
                       processor=CustomerAttnProcessor2_0(), operations=comfy.ops.disable_weight_init).eval()
    g = torch.Generator().manual_seed(9)
    state = {k: torch.randn(v.shape, generator=g) / v.shape[-1] ** 0.5 for k, v in ours.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    x, context = torch.randn(2, frames, dim, generator=g), torch.randn(2, tokens, dim, generator=g)
    table = Qwen2RotaryEmbedding(head_dim, max_position_embeddings=64, base=1e6)
    context_mask = torch.ones(2, tokens)
    context_mask[1, 11:] = 0
    for masks in ((None, None), (context_mask, torch.ones(2, frames))):
        expected = theirs(x, encoder_hidden_states=context, encoder_attention_mask=masks[0], attention_mask=masks[1],
                          rotary_freqs_cis=table(x, seq_len=frames), rotary_freqs_cis_cross=table(x, seq_len=tokens))
        got = ours(x, context, rope_tables(frames, head_dim, 1e6), rope_tables(tokens, head_dim, 1e6), *masks)
        assert torch.equal(got, expected), (comfy.ldm.modules.attention.optimized_attention.__name__, masks[0] is None,
                                            (got - expected).abs().max())


def test_attention_override_reaches_our_cross_attention(comfy_env, loaded, conds):
    """``transformer_options["optimized_attention_override"]`` (how ComfyUI and other packs swap
    the attention per model) is called for our cross-attention as for ComfyUI's own models: once
    per block and model call; one that runs the attention it is given leaves the latent bit-equal."""
    base = loaded[0]
    blocks = len(base.model.diffusion_model.transformer_blocks)
    calls = []

    def override(attention, *args, **kwargs):
        calls.append(attention.__name__)
        return attention(*args, **kwargs)

    plain = _ksample(comfy_env, base, conds, _empty_latent(comfy_env))
    model = base.clone()
    model.model_options["transformer_options"] = dict(model.model_options.get("transformer_options", {}),
                                                      optimized_attention_override=override)
    assert torch.equal(_ksample(comfy_env, model, conds, _empty_latent(comfy_env)), plain)
    assert len(calls) >= STEPS * blocks and len(calls) % blocks == 0


def test_extra_conds_match_comfyui(loaded, conds):
    """Our extra_conds gives ComfyUI ACEStep's keyword arguments for the same conditioning."""
    import comfy.model_base
    model = loaded[0].model
    positive, _ = conds
    noise = torch.randn(2, 8, 16, FRAMES)
    kwargs = dict(positive[0][1], cross_attn=positive[0][0], noise=noise, device=noise.device)
    ours = model.extra_conds(**kwargs)
    theirs = comfy.model_base.ACEStep.extra_conds(model, **kwargs)
    assert set(ours) == set(theirs) == {"c_crossattn", "lyric_token_idx", "speaker_embeds", "lyrics_strength"}
    for key in ("c_crossattn", "lyric_token_idx", "speaker_embeds"):
        assert torch.equal(ours[key].cond, theirs[key].cond), key
    assert ours["speaker_embeds"].cond.shape == (2, 512)
    assert ours["lyrics_strength"].cond == theirs["lyrics_strength"].cond == 1.0


def test_sampler_custom_advanced_and_cfg_guider(comfy_env, loaded, conds):
    """SamplerCustomAdvanced + CFGGuider + BasicScheduler + KSamplerSelect + RandomNoise give
    the KSampler result."""
    cs = comfy_env["nodes_custom_sampler"]
    model = loaded[0]
    positive, negative = conds
    guider = cs.CFGGuider.execute(model, positive, negative, CFG).result[0]
    sigmas = cs.BasicScheduler.execute(model, "simple", STEPS, 1.0).result[0]
    sampler = cs.KSamplerSelect.execute("euler").result[0]
    noise = cs.RandomNoise.execute(SEED).result[0]
    out, _ = cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, _empty_latent(comfy_env)).result
    expected = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    assert torch.allclose(out["samples"], expected, atol=1e-6)


def test_model_sampling_sd3_changes_the_shift(comfy_env, loaded, conds):
    patch = comfy_env["nodes_model_advanced"].ModelSamplingSD3().patch
    base = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    same = _ksample(comfy_env, patch(loaded[0], 3.0)[0], conds, _empty_latent(comfy_env))
    other = _ksample(comfy_env, patch(loaded[0], 6.0)[0], conds, _empty_latent(comfy_env))
    assert torch.allclose(base, same, atol=1e-6)
    assert (base - other).abs().max() > 1e-3


def test_lora_patches_our_transformer(comfy_env, loaded, conds):
    """An ACE-Step LoRA in the official key format ('<module path>.lora_A/B.weight') maps onto
    our transformer (via comfy/lora.py's ACEStep branch) and changes the result; the unpatched
    model is untouched afterwards."""
    import comfy.sd
    model = loaded[0]
    target = "transformer_blocks.0.attn.to_q"
    weight = model.model.diffusion_model.get_submodule(target).weight
    rank = 4
    lora = {f"{target}.lora_A.weight": torch.randn(rank, weight.shape[1]) * 0.5,
            f"{target}.lora_B.weight": torch.randn(weight.shape[0], rank) * 0.5}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert f"diffusion_model.{target}.weight" in patched.patches
    before = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    with_lora = _ksample(comfy_env, patched, conds, _empty_latent(comfy_env))
    after = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    assert (with_lora - before).abs().max() > 1e-4
    assert torch.equal(before, after)


def test_cast_weights_path_gives_same_result(comfy_env, loaded, conds):
    """Layers became comfy.ops classes; forcing their weight-casting path (what ComfyUI's
    low-VRAM mode switches on for offloaded layers) gives the same latent."""
    import comfy.ops
    model = loaded[0]
    layers = [m for m in model.model.diffusion_model.modules() if isinstance(m, comfy.ops.CastWeightBiasOp)]
    assert len(layers) > 10
    plain = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    try:
        for m in layers:
            m.comfy_cast_weights = True
        cast = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    finally:
        for m in layers:
            del m.comfy_cast_weights          # back to the class default (False)
    assert torch.equal(plain, cast)


def test_checkpoint_save_round_trip(comfy_env, pack, model_dirs, loaded, conds):
    """ComfyUI's checkpoint saving (CheckpointSave) writes our MODEL/CLIP/VAE in the released
    single-file layout: the file loads through our loader and samples identically."""
    import comfy.sd
    model, clip, vae = loaded
    path = model_dirs["checkpoints"] / "saved_by_comfyui.safetensors"
    comfy.sd.save_checkpoint(str(path), model, clip, vae)
    try:
        from acestep_core.checkpoint import open_checkpoint
        source = open_checkpoint(path)
        assert source.layout == "single_file" and source.spiece_model is not None
        reloaded = pack["loaders"].LoadAceStepCheckpoint().load(path.name)
        a = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
        b = _ksample(comfy_env, reloaded[0], conds, _empty_latent(comfy_env))
        assert torch.equal(a, b)
    finally:
        path.unlink()


def test_weight_dtype_choices(pack):
    choose = pack["loaders"].choose_dtypes
    assert choose("default")[:2] == (torch.float32, torch.float32)      # CPU
    assert choose("bf16") == (torch.bfloat16, torch.bfloat16, torch.float32)
    assert choose("fp16") == (torch.float16, torch.float32, torch.float32)   # UMT5 stays fp32
    assert choose("fp32") == (torch.float32, torch.float32, torch.float32)


def test_bf16_weights_sample(comfy_env, pack, model_dirs, conds):
    model, clip, vae = pack["loaders"].LoadAceStepCheckpoint().load("ace_tiny.safetensors", "bf16")
    assert model.model_dtype() == torch.bfloat16
    assert clip.cond_stage_model.dtypes == {torch.bfloat16}
    samples = _ksample(comfy_env, model, conds, _empty_latent(comfy_env), steps=2)
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()


def test_empty_lyrics_are_one_masked_token(comfy_env, loaded):
    """Empty lyrics: the original's single masked [0] token. The mask travels as
    conditioning_lyrics_mask (kept by ConditioningZeroOut) and reaches the transformer as
    lyric_mask; sampling works."""
    model, clip, _ = loaded
    positive = comfy_env["nodes_ace"].TextEncodeAceStepAudio.execute(clip, TAGS, "", 1.0).result[0]
    negative = comfy_env["nodes"].ConditioningZeroOut().zero_out(positive)[0]
    options = positive[0][1]
    assert options["conditioning_lyrics"].tolist() == [[0]]
    assert options["conditioning_lyrics_mask"].tolist() == [[0]]
    assert negative[0][1]["conditioning_lyrics_mask"].tolist() == [[0]]
    noise = torch.randn(1, 8, 16, FRAMES)
    extra = model.model.extra_conds(**options, cross_attn=positive[0][0], noise=noise)
    assert extra["lyric_mask"].cond.tolist() == [[0]]
    samples = _ksample(comfy_env, model, (positive, negative), _empty_latent(comfy_env), steps=2)
    assert torch.isfinite(samples).all()


def test_low_vram_partial_load_gives_same_result(loaded, conds):
    """ModelPatcher's low-VRAM load (every layer left offloaded, weights cast per use, LoRA
    applied as a weight function) denoises exactly like a full load, LoRA included. The LoRA
    hits layers whose weights our transformer reads directly (the feed-forward's 1x1 conv via
    a ModuleDict, the lyric embedding whose device picks the token ids' device)."""
    import comfy.model_management as mm
    import comfy.sd
    model = loaded[0]
    transformer = model.model.diffusion_model
    g = torch.Generator().manual_seed(5)
    lora = {}
    for target in ("transformer_blocks.0.ff.inverted_conv.conv", "lyric_embs", "transformer_blocks.1.attn.to_q"):
        w = transformer.get_submodule(target).weight
        lora[f"{target}.lora_A.weight"] = torch.randn(4, *w.shape[1:], generator=g) * 0.3
        lora[f"{target}.lora_B.weight"] = torch.randn(w.shape[0], 4, *([1] * (w.ndim - 2)), generator=g) * 0.3
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert len(patched.patches) == 3
    positive = conds[0]
    x = torch.randn(1, 8, 16, FRAMES, generator=g)
    sigma = torch.tensor([0.7])
    kwargs = dict(c_crossattn=positive[0][0], lyric_token_idx=positive[0][1]["conditioning_lyrics"],
                  speaker_embeds=torch.zeros(1, 512), lyrics_strength=1.0)
    cpu = torch.device("cpu")

    def denoise(patcher, lowvram_bytes):
        patcher.patch_model(device_to=cpu, lowvram_model_memory=lowvram_bytes)
        try:
            offloaded = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in transformer.modules())
            with torch.no_grad():
                return patcher.model.apply_model(x, sigma, **kwargs), offloaded
        finally:
            patcher.unpatch_model(cpu)

    mm.unload_all_models()
    without_lora, _ = denoise(model, 0)
    full, offloaded_full = denoise(patched, 0)
    partial, offloaded_partial = denoise(patched, 1)          # a 1-byte budget: nothing fits
    again, _ = denoise(model, 0)
    assert offloaded_full == 0 and offloaded_partial > 10
    assert (full - without_lora).abs().max() > 1e-3         # the LoRA matters
    delta = (partial - full).abs().max().item()
    print(f"\nlow-VRAM (all layers offloaded) vs full load, with LoRA: max|delta| = {delta:.3e}")
    assert delta <= 1e-5
    assert torch.equal(again, without_lora)                  # nothing left patched
    # ComfyUI's machinery alone: no hooks and no layer classes of ours besides the operations'.
    for name, m in transformer.named_modules():
        assert not (m._forward_pre_hooks or m._forward_hooks), f"{name} has forward hooks"


# =============================================================================================
# Denoise with an input latent
# =============================================================================================
def test_denoise_behaviour(comfy_env, loaded, conds):
    model = loaded[0]
    generator = torch.Generator().manual_seed(7)
    source = {"samples": torch.randn(1, 8, 16, FRAMES, generator=generator) * 0.5}
    steps = 4
    zero = _ksample(comfy_env, model, conds, source, steps=steps, denoise=0.0)
    assert torch.equal(zero, source["samples"])                          # denoise 0: untouched
    full = _ksample(comfy_env, model, conds, source, steps=steps, denoise=1.0)
    empty = _ksample(comfy_env, model, conds, _empty_latent(comfy_env), steps=steps, denoise=1.0)
    assert torch.allclose(full, empty, atol=1e-5)                        # denoise 1: input ignored
    distances = [(_ksample(comfy_env, model, conds, source, steps=steps, denoise=d) - source["samples"]).norm().item()
                 for d in (0.2, 0.4, 0.6, 0.8)]
    print("\ndistance to the input latent at denoise 0.2/0.4/0.6/0.8:", [f"{x:.3f}" for x in distances])
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


# =============================================================================================
# CLIP: built-in TextEncodeAceStepAudio and ours
# =============================================================================================
def test_text_encode_builtin_and_ours_agree(comfy_env, pack, loaded):
    _, clip, _ = loaded
    builtin = comfy_env["nodes_ace"].TextEncodeAceStepAudio.execute(clip, TAGS, LYRICS, 0.7).result[0]
    ours = pack["conditioning"].TextEncodeAceStepAudio().encode(clip, TAGS, LYRICS, 0.7)[0]
    assert len(builtin) == len(ours) == 1
    assert torch.equal(builtin[0][0], ours[0][0])
    assert torch.equal(builtin[0][1]["conditioning_lyrics"], ours[0][1]["conditioning_lyrics"])
    assert builtin[0][1]["lyrics_strength"] == ours[0][1]["lyrics_strength"] == 0.7
    assert set(builtin[0][1]) == set(ours[0][1])


def test_clip_encodes_with_our_tokenizers(loaded):
    """Tag ids and lyric ids are acestep_core's tokenizers' (lyrics untouched by ComfyUI's
    weight syntax: parentheses reach the lyric tokenizer), and the hidden states are our UMT5's."""
    _, clip, _ = loaded
    text_model = clip.cond_stage_model
    tokenizer = clip.tokenizer
    tokens = clip.tokenize(TAGS, lyrics=LYRICS)
    assert [t for t, _ in tokens["umt5base"][0]] == tokenizer.tag_tokenizer.encode(TAGS)
    assert [t for t, _ in tokens["lyrics"][0]] == tokenizer.lyric_tokenizer.encode(LYRICS)
    assert all(w == 1.0 for _, w in tokens["lyrics"][0])
    paren_ids = tokenizer.lyric_tokenizer.encode("Hello (ooh) world")
    plain_ids = tokenizer.lyric_tokenizer.encode("Hello ooh world")
    assert [t for t, _ in clip.tokenize("", lyrics="Hello (ooh) world")["lyrics"][0]] == paren_ids
    assert paren_ids != plain_ids                                      # the parentheses are tokens
    cond = clip.encode_from_tokens_scheduled(tokens)
    hidden, extra = cond[0][0], cond[0][1]
    ids = torch.tensor([tokenizer.tag_tokenizer.encode(TAGS)])
    with torch.no_grad():
        direct = text_model.encoder(ids, attention_mask=torch.ones_like(ids)).float()
    assert hidden.dtype == torch.float32 and hidden.shape == direct.shape
    assert torch.equal(hidden, direct)
    assert extra["pooled_output"] is None
    assert extra["conditioning_lyrics"].dtype == torch.long
    assert extra["conditioning_lyrics"].tolist() == [tokenizer.lyric_tokenizer.encode(LYRICS)]


def test_clip_state_dict_has_comfyui_keys(loaded):
    _, clip, _ = loaded
    sd = clip.get_sd()
    assert "umt5base.transformer.shared.weight" in sd
    assert any(k.startswith("umt5base.transformer.encoder.block.0.") for k in sd)
    assert sd["spiece_model"].dtype == torch.uint8


def test_our_latent_nodes_match_builtins(comfy_env, pack):
    latents = pack["latents"]
    ours = latents.EmptyAceStepLatentAudio().generate(37.3, 3)[0]
    builtin = comfy_env["nodes_ace"].EmptyAceStepLatentAudio.execute(37.3, 3).result[0]
    assert ours["type"] == builtin["type"] == "audio"
    assert ours["samples"].shape == builtin["samples"].shape == (3, 8, 16, int(37.3 * 44100 / 512 / 8))
    x = torch.randn(2, 8, 16, 50) * 3
    for multiplier in (1.0, 0.3, 2.5):
        a = latents.LatentOperationTonemapReinhard().op(multiplier)[0](latent=x)
        b = comfy_env["nodes_latent"].LatentOperationTonemapReinhard.execute(multiplier).result[0](latent=x)
        assert torch.equal(a, b)


def test_mirrored_nodes_have_builtin_schema(comfy_env, pack):
    """Ids, input names, types, defaults, ranges, output types and categories of our copies equal
    the built-ins' (as the server's /object_info shows them); ours add tooltips."""
    pairs = [(pack["conditioning"].TextEncodeAceStepAudio, comfy_env["nodes_ace"].TextEncodeAceStepAudio),
             (pack["latents"].EmptyAceStepLatentAudio, comfy_env["nodes_ace"].EmptyAceStepLatentAudio),
             (pack["latents"].LatentOperationTonemapReinhard, comfy_env["nodes_latent"].LatentOperationTonemapReinhard)]
    for ours, builtin in pairs:
        schema = builtin.define_schema()
        ours_inputs = ours.INPUT_TYPES()["required"]
        assert ours.__name__ == schema.node_id
        assert ours.CATEGORY == schema.category
        assert list(ours.RETURN_TYPES) == [o.get_io_type() for o in schema.outputs]
        assert list(ours_inputs) == [i.id for i in schema.inputs]
        for inp in schema.inputs:
            their = inp.as_dict()
            our_type, our_opts = ours_inputs[inp.id]
            assert not their.get("optional")
            assert our_type == inp.get_io_type(), inp.id
            for key, value in their.items():
                if key not in ("tooltip", "optional"):      # optional: the V1 section says it
                    assert our_opts.get(key) == value, (schema.node_id, inp.id, key)
            assert our_opts.get("tooltip"), (schema.node_id, inp.id)
        assert bool(getattr(ours, "EXPERIMENTAL", False)) == bool(schema.is_experimental)


# =============================================================================================
# VAE with the stock audio nodes
# =============================================================================================
def test_vae_decode_audio(comfy_env, loaded):
    _, _, vae = loaded
    latent = {"samples": torch.randn(2, 8, 16, FRAMES, generator=torch.Generator().manual_seed(1))}
    audio = comfy_env["nodes_audio"].VAEDecodeAudio().decode(vae, latent)[0]
    assert audio["sample_rate"] == 44100
    assert audio["waveform"].shape == (2, 2, FRAMES * 4096)
    assert audio["waveform"].dtype == torch.float32 and torch.isfinite(audio["waveform"]).all()


def test_vae_decode_is_chunked_and_seamless(loaded, monkeypatch):
    """A latent longer than one window decodes window by window (memory set by the window, not
    the length) with progress per window, to the audio of a one-piece decode."""
    import comfy.utils
    # ComfyUI 0.20 sends at most one progress update per 100 ms (comfy/utils.py,
    # ProgressBar.update_absolute); every window's update is counted here.
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    _, _, vae = loaded
    frames = 70
    latent = torch.randn(1, 8, 16, frames, generator=torch.Generator().manual_seed(2))
    updates = []
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    saved = vae.window_frames, vae.overlap_frames
    vae.window_frames, vae.overlap_frames = 32, 16          # 4 windows for 70 frames
    try:
        wav = vae.decode(latent)
    finally:
        vae.window_frames, vae.overlap_frames = saved
        comfy.utils.set_progress_bar_global_hook(hook)
    assert wav.shape == (1, frames * 4096, 2) and torch.isfinite(wav).all()
    with torch.no_grad():
        whole = vae.codec.decode(latent, chunk_frames=None).movedim(1, -1)
    delta = (wav - whole).abs().max().item()
    print(f"\nwindowed (32/16) vs one-piece decode of {frames} frames: max|delta| = {delta:.3e}, "
          f"max|audio| = {whole.abs().max().item():.3f}")
    assert delta <= 1e-4 * max(1.0, whole.abs().max().item())
    assert [u for u in updates] == [(k, 4) for k in range(1, 5)]


def test_vae_window_follows_the_free_memory(loaded, monkeypatch):
    """With no window set, the VAE decodes a song in one piece when the device's free memory
    allows, and in windows when it does not (the progress bar counts the windows)."""
    import comfy.model_management as mm
    import comfy.utils

    from acestep_core.codec import CUDA_FREE_MEMORY_SHARE, DECODE_BYTES_PER_FRAME
    _, _, vae = loaded
    assert vae.window_frames is None
    latent = torch.randn(1, 8, 16, 200, generator=torch.Generator().manual_seed(3))
    bytes_per_frame = DECODE_BYTES_PER_FRAME * torch.finfo(vae.vae_dtype).bits / 32
    hook = comfy.utils.PROGRESS_BAR_HOOK
    windows = {}
    try:
        for free_frames in (100_000, 150):
            updates = []
            comfy.utils.set_progress_bar_global_hook(
                lambda value, total, preview, node_id=None: updates.append((value, total)))
            monkeypatch.setattr(mm, "get_free_memory",
                                lambda *a, **k: free_frames * bytes_per_frame / CUDA_FREE_MEMORY_SHARE)
            vae.decode(latent)
            windows[free_frames] = updates[-1][1]
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
    assert windows == {100_000: 1, 150: 2}


def test_vae_decode_can_be_cancelled(loaded):
    import comfy.model_management as mm
    _, _, vae = loaded
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            vae.decode(torch.zeros(1, 8, 16, 8))
    finally:
        mm.interrupt_current_processing(False)


@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_vae_cancel_stops_inside_a_window(loaded, direction):
    """Cancel pressed while the VAE is inside one long window: the next block of the DCAE or the
    vocoder raises ComfyUI's interrupt, the window's last layer never runs."""
    import comfy.model_management as mm
    _, _, vae = loaded
    codec = vae.codec
    if direction == "decode":
        trigger, last = codec.vocoder.head.resblocks[0], codec.vocoder.head.conv_post
        run = lambda: vae.decode(torch.zeros(1, 8, 16, 8))                       # noqa: E731
    else:
        trigger, last = codec.dcae.encoder.down_blocks[0][0], codec.dcae.encoder.conv_out
        run = lambda: vae.encode(torch.zeros(1, 8 * 4096, 2))                   # noqa: E731
    reached = []
    handles = [trigger.register_forward_hook(lambda *a: mm.interrupt_current_processing(True)),
               last.register_forward_hook(lambda *a: reached.append(1))]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run()
    finally:
        mm.interrupt_current_processing(False)
        for handle in handles:
            handle.remove()
    assert not reached


def test_vae_window_on_cpu_is_bounded_whatever_the_free_ram(loaded, monkeypatch):
    """On the CPU the window is at most the CPU budget however much RAM looks free, so a long
    song is encoded / decoded in windows of bounded memory (was: one window of the whole song)."""
    import comfy.model_management as mm
    from acestep_core.codec import CPU_WINDOW_BUDGET, window_frames_for_budget
    _, _, vae = loaded
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 1 << 50)
    assert vae._window() == window_frames_for_budget(CPU_WINDOW_BUDGET, vae.vae_dtype, vae.overlap_frames)
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 1 << 20)
    assert vae._window() == 2 * vae.overlap_frames


def test_vae_encode_audio(comfy_env, loaded):
    _, _, vae = loaded
    samples = int(SECONDS * 44100)
    wave = torch.sin(torch.arange(samples) / 44100 * 2 * math.pi * 440)[None, None].repeat(1, 2, 1) * 0.3
    latent = comfy_env["nodes_audio"].VAEEncodeAudio().encode(vae, {"waveform": wave, "sample_rate": 44100})[0]
    assert latent["samples"].shape == (1, 8, 16, math.ceil(samples / 4096))
    assert torch.isfinite(latent["samples"]).all()
    # Round trip through the stock decoder gives audio of the padded length.
    audio = comfy_env["nodes_audio"].VAEDecodeAudio().decode(vae, latent)[0]
    assert audio["waveform"].shape == (1, 2, math.ceil(samples / 4096) * 4096)


@pytest.mark.parametrize("case", ["half_second", "mono", "8khz", "three_channels"])
def test_vae_encode_awkward_audio(comfy_env, loaded, case):
    _, _, vae = loaded
    encode = comfy_env["nodes_audio"].VAEEncodeAudio().encode
    g = torch.Generator().manual_seed(3)
    if case == "half_second":
        audio = {"waveform": torch.randn(1, 2, 22050, generator=g) * 0.1, "sample_rate": 44100}
        frames = math.ceil(22050 / 4096)
    elif case == "mono":
        mono = torch.randn(1, 1, 44100, generator=g) * 0.1
        audio = {"waveform": mono, "sample_rate": 44100}
        frames = math.ceil(44100 / 4096)
        stereo = encode(vae, {"waveform": mono.repeat(1, 2, 1), "sample_rate": 44100})[0]["samples"]
    elif case == "8khz":
        audio = {"waveform": torch.randn(1, 2, 8000, generator=g) * 0.1, "sample_rate": 8000}
        frames = math.ceil(44100 / 4096)
    else:
        audio = {"waveform": torch.randn(1, 3, 44100, generator=g) * 0.1, "sample_rate": 44100}
        frames = math.ceil(44100 / 4096)
        first_two = encode(vae, {"waveform": audio["waveform"][:, :2], "sample_rate": 44100})[0]["samples"]
    latent = encode(vae, audio)[0]["samples"]
    assert latent.shape == (1, 8, 16, frames) and torch.isfinite(latent).all()
    if case == "mono":
        assert torch.equal(latent, stereo)
    if case == "three_channels":
        assert torch.equal(latent, first_two)


def test_vae_encode_tiny_audio_pads_to_one_frame(loaded):
    _, _, vae = loaded
    latent = vae.encode(torch.randn(1, 100, 2) * 0.1)
    assert latent.shape == (1, 8, 16, 1)


@pytest.mark.parametrize("waveform, message", [
    (torch.full((1, 2, 44100), float("nan")), "NaN"),
    (torch.zeros(1, 2, 0), "empty"),
])
def test_vae_encode_bad_audio_is_a_clear_error(comfy_env, loaded, waveform, message):
    _, _, vae = loaded
    with pytest.raises(ValueError, match=message):
        comfy_env["nodes_audio"].VAEEncodeAudio().encode(vae, {"waveform": waveform, "sample_rate": 44100})


def test_vae_rejects_foreign_latents(loaded):
    _, _, vae = loaded
    with pytest.raises(ValueError, match=r"\[batch, 8, 16, frames\]"):
        vae.decode(torch.zeros(1, 4, 64, 64))           # an SD image latent


# =============================================================================================
# Pack import
# =============================================================================================
def test_node_collection_skips_missing_modules(pack):
    import importlib
    package = importlib.import_module(f"{PACK}.nodes")
    before = dict(package.NODE_CLASS_MAPPINGS)
    package._collect("no_such_node_module")            # e.g. a task module not installed
    assert package.NODE_CLASS_MAPPINGS == before


def test_pack_exports(pack):
    root = pack["root"]
    assert root.WEB_DIRECTORY == "./web"
    for node in ("LoadAceStepCheckpoint", "TextEncodeAceStepAudio", "EmptyAceStepLatentAudio",
                 "LatentOperationTonemapReinhard"):
        assert node in root.NODE_CLASS_MAPPINGS, node
    assert root.NODE_DISPLAY_NAME_MAPPINGS["LoadAceStepCheckpoint"] == "Load ACE-Step Checkpoint"
    # Mirrors of built-ins must not rename the built-ins (ComfyUI applies every display name).
    for node in ("TextEncodeAceStepAudio", "EmptyAceStepLatentAudio", "LatentOperationTonemapReinhard"):
        assert node not in root.NODE_DISPLAY_NAME_MAPPINGS


def test_lyrics_preview_node_shows_what_the_model_reads(pack):
    from acestep_core.text.lyrics import LyricTokenizer
    from acestep_core.text.vocab import find_lyric_vocab

    node = pack["root"].NODE_CLASS_MAPPINGS["AceStepLyricsPreview"]()
    lyrics = "[verse]\nHello world 2 times\n我爱你\n[ja]東京の夜"
    out = node.preview(lyrics, limit=4096)
    expected = LyricTokenizer(find_lyric_vocab()).preview(lyrics, limit=4096)
    table = out["result"][0]
    assert out["ui"]["text"] == [table] and table == expected.format()
    assert "wo3ai4ni3" in table and "two times" in table and f"total {expected.total_tokens} tokens" in table
    # Over the limit: the table says how much is cut.
    short = node.preview(lyrics, limit=5)["result"][0]
    assert "beyond the limit" in short and "warning" in short


# =============================================================================================
# Model patches: wrappers, attention / block replacements, EasyCache, LoRA on both models
# =============================================================================================
def _count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls, handle


def test_diffusion_model_wrapper_runs_once_per_model_call(comfy_env, loaded, conds):
    """A DIFFUSION_MODEL wrapper registered the way EasyCache and other packs do is called once per
    call of the network, with the transformer_options of that call, and its result is used."""
    import comfy.patcher_extension
    model = loaded[0].clone()
    model.model_options["transformer_options"]["acestep_test_marker"] = "here"
    seen = []

    def wrapper(executor, *args, **kwargs):
        seen.append(kwargs["transformer_options"])
        return executor(*args, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "acestep_test", wrapper)
    calls, handle = _count_calls(model.model.diffusion_model.proj_in)
    try:
        wrapped = _ksample(comfy_env, model, conds, _empty_latent(comfy_env))
    finally:
        handle.remove()
    plain = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    assert len(seen) == len(calls) >= STEPS
    assert all(options.get("acestep_test_marker") == "here" and "sigmas" in options for options in seen)
    assert torch.equal(wrapped, plain)

    def doubling(executor, *args, **kwargs):
        return executor(*args, **kwargs) * 2.0

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "acestep_test", doubling)
    assert (_ksample(comfy_env, model, conds, _empty_latent(comfy_env)) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["attn1", "attn2"])
def test_attention_replacement_applies_to_every_block(comfy_env, loaded, conds, name):
    """set_model_attn1_replace / set_model_attn2_replace(patch, "double_block", i): the patch is
    called in block i on every model call and its output is used. One that calls the original
    attention leaves the latent bit-equal; one that returns zeros changes it."""
    base = loaded[0]
    blocks = len(base.model.diffusion_model.transformer_blocks)
    calls = []

    def through(q, k, v, extra_options):
        calls.append(extra_options["block"])
        assert extra_options["n_heads"] > 0 and extra_options["dim_head"] > 0
        return extra_options["original_attention"](q, k, v)

    def zeros(q, k, v, extra_options):
        return torch.zeros_like(q)

    def patched(patch):
        model = base.clone()
        for i in range(blocks):
            getattr(model, f"set_model_{name}_replace")(patch, "double_block", i)
        return model

    plain = _ksample(comfy_env, base, conds, _empty_latent(comfy_env))
    assert torch.equal(_ksample(comfy_env, patched(through), conds, _empty_latent(comfy_env)), plain)
    assert len(calls) >= STEPS * blocks and len(calls) % blocks == 0
    assert set(calls) == {("double_block", i) for i in range(blocks)}
    zeroed = _ksample(comfy_env, patched(zeros), conds, _empty_latent(comfy_env))
    assert (zeroed - plain).abs().max() > 1e-3


def test_dit_block_replacement(comfy_env, loaded, conds):
    """patches_replace["dit"][("double_block", i)] as ComfyUI's DiTs take it: called with
    img/txt/vec/pe/transformer_options and the original block."""
    base = loaded[0]
    model = base.clone()
    calls = []

    def replace(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    for i in range(len(base.model.diffusion_model.transformer_blocks)):
        model.set_model_patch_replace(replace, "dit", "double_block", i)
    plain = _ksample(comfy_env, base, conds, _empty_latent(comfy_env))
    assert torch.equal(_ksample(comfy_env, model, conds, _empty_latent(comfy_env)), plain)
    assert sorted(set(calls)) == list(range(len(base.model.diffusion_model.transformer_blocks)))


def _easycache(comfy_env, model, threshold):
    import importlib
    node = importlib.import_module("comfy_extras.nodes_easycache").EasyCacheNode
    return node.execute(model, threshold, 0.0, 1.0, False).result[0]


def test_easycache_acts_on_our_model_as_on_comfyui_ace(comfy_env, model_dirs, loaded, conds, caplog):
    """ComfyUI's stock EasyCache on our MODEL and on ComfyUI's own ACE-Step MODEL built from the
    same weights: the same steps skipped and the same latent."""
    import logging
    reference = comfyui_reference_model(model_dirs["single"])
    steps = 12
    results = {}
    for label, model in (("ours", loaded[0]), ("comfyui", reference)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            latent = _ksample(comfy_env, _easycache(comfy_env, model, 3.0), conds, _empty_latent(comfy_env),
                              steps=steps)
        lines = [r.getMessage() for r in caplog.records if "EasyCache - skipped" in r.getMessage()]
        assert lines, f"EasyCache did not run on the {label} model"
        results[label] = (latent, lines[-1])
        plain = _ksample(comfy_env, model, conds, _empty_latent(comfy_env), steps=steps)
        assert (latent - plain).abs().max() > 1e-4, f"EasyCache skipped nothing on the {label} model"
    (ours, our_log), (theirs, their_log) = results["ours"], results["comfyui"]
    print(f"\nours: {our_log}\nComfyUI ACE: {their_log}")
    assert our_log == their_log and "skipped 0/" not in our_log
    delta = (ours - theirs).abs().max().item()
    assert delta <= 1e-4 * max(1.0, theirs.abs().max().item()), delta


def test_stock_lora_loader_same_on_our_model_and_comfyui_ace(comfy_env, model_dirs, loaded, conds):
    """LoraLoaderModelOnly with a LoRA in the released layout ('<module path>.lora_A/B.weight', no
    alpha): the same latent on our MODEL as on ComfyUI's own ACE-Step MODEL."""
    import comfy.utils
    import folder_paths
    transformer = loaded[0].model.diffusion_model
    g = torch.Generator().manual_seed(11)
    lora = {}
    for target in ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.cross_attn.to_v",
                   "transformer_blocks.0.ff.inverted_conv.conv"):
        w = transformer.get_submodule(target).weight
        lora[f"{target}.lora_A.weight"] = torch.randn(4, *w.shape[1:], generator=g) * 0.3
        lora[f"{target}.lora_B.weight"] = torch.randn(w.shape[0], 4, *([1] * (w.ndim - 2)), generator=g) * 0.3
    loras = model_dirs["checkpoints"].parent / "loras"
    loras.mkdir(exist_ok=True)
    path = loras / "released_layout.safetensors"
    save_file(lora, str(path))
    folder_paths.add_model_folder_path("loras", str(loras))
    try:
        node = comfy_env["nodes"].LoraLoaderModelOnly()
        reference = comfyui_reference_model(model_dirs["single"])
        ours = _ksample(comfy_env, node.load_lora_model_only(loaded[0], path.name, 1.0)[0], conds,
                        _empty_latent(comfy_env))
        theirs = _ksample(comfy_env, node.load_lora_model_only(reference, path.name, 1.0)[0], conds,
                          _empty_latent(comfy_env))
        plain = _ksample(comfy_env, loaded[0], conds, _empty_latent(comfy_env))
    finally:
        path.unlink()
        folder_paths.folder_names_and_paths["loras"][0].remove(str(loras))
    assert (ours - plain).abs().max() > 1e-3
    assert (ours - theirs).abs().max().item() <= 1e-4 * max(1.0, theirs.abs().max().item())


def test_16bit_checkpoint_held_in_16bit_samples_like_float32(comfy_env, pack, model_dirs, conds):
    """A checkpoint stored in bf16, loaded for a float32 compute (the CPU default): the weights
    stay bf16 (ComfyUI's manual-cast layers upcast each one at use) and the sampled latent and the
    decoded audio equal those of the same values stored as float32, bit for bit."""
    from safetensors.torch import load_file
    import comfy.ops
    ckpts = model_dirs["checkpoints"]
    state = load_file(str(model_dirs["single"]))
    half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state.items()}
    widened = {k: (v.float() if v.is_floating_point() else v) for k, v in half.items()}
    save_file(half, str(ckpts / "tiny_bf16.safetensors"))
    save_file(widened, str(ckpts / "tiny_bf16_as_fp32.safetensors"))
    try:
        loader = pack["loaders"].LoadAceStepCheckpoint()
        held, _, held_vae = loader.load("tiny_bf16.safetensors", "default")
        wide, _, wide_vae = loader.load("tiny_bf16_as_fp32.safetensors", "default")
        transformer = held.model.diffusion_model
        assert held.model.get_dtype() == torch.bfloat16 and held.model.manual_cast_dtype == torch.float32
        assert all(p.dtype == torch.bfloat16 for p in transformer.parameters())
        assert all(isinstance(m, comfy.ops.manual_cast.Linear) for m in transformer.modules()
                   if isinstance(m, torch.nn.Linear))
        assert held_vae.codec.dcae.encoder.conv_in.weight.dtype == torch.bfloat16
        a = _ksample(comfy_env, held, conds, _empty_latent(comfy_env))
        b = _ksample(comfy_env, wide, conds, _empty_latent(comfy_env))
        assert torch.equal(a, b), (a - b).abs().max()
        assert torch.equal(held_vae.decode(a), wide_vae.decode(b))
    finally:
        (ckpts / "tiny_bf16.safetensors").unlink()
        (ckpts / "tiny_bf16_as_fp32.safetensors").unlink()


# ---------------------------------------------------------------------------------------------
# Manual-cast products on the CPU through acestep_core.ops.linear_upcast
# ---------------------------------------------------------------------------------------------
def _manual_cast_pair(pack, cls_name, *args, weight_dtype=torch.bfloat16, bias=True, seed=0):
    """(ComfyUI's comfy.ops.manual_cast layer, the pack's layer of the same operations), same
    16-bit weights."""
    import comfy.ops
    theirs = getattr(comfy.ops.manual_cast, cls_name)(*args, bias=bias, dtype=weight_dtype)
    ours = getattr(pack["bridge"].with_cast_weight_bias(comfy.ops.manual_cast), cls_name)(
        *args, bias=bias, dtype=weight_dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            ours.get_parameter(name).copy_(p)
    return theirs, ours, g


@pytest.fixture
def upcast_calls(monkeypatch):
    """Counts the calls of acestep_core.ops.linear_upcast (the bridge's block-upcast path)."""
    from acestep_core import ops
    calls = []
    real = ops.linear_upcast

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(ops, "linear_upcast", counting)
    return calls


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [(3,), (2, 33), (1, 300)])     # 300 rows: the whole-cast branch
def test_linear_upcast_forward_equals_comfyui_manual_cast(pack, upcast_calls, weight_dtype, bias, rows):
    """The pack's manual-cast Linear on the CPU (16-bit weights, float32 input, no patches) runs
    through linear_upcast and gives ComfyUI's manual_cast.Linear result bit for bit (its output
    rows span several cast blocks with a ragged last one)."""
    from acestep_core import ops
    features = ops.UPCAST_BLOCK_BYTES // 4 // 100           # about 100 rows per block at this width
    theirs, ours, g = _manual_cast_pair(pack, "Linear", features, 250, weight_dtype=weight_dtype, bias=bias)
    x = torch.randn(*rows, features, generator=g)
    expected, got = theirs(x), ours(x)
    assert len(upcast_calls) == 1
    assert got.dtype == torch.float32 and torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frames, transposed", [(7, False), (33, True), (300, False)])   # 2 x 300: whole cast
def test_pointwise_conv1d_upcast_equals_comfyui_manual_cast(pack, monkeypatch, weight_dtype, bias, frames,
                                                             transposed):
    """The pack's manual-cast 1x1 Conv1d on the CPU (the v1 feed-forward's convs in ComfyUI's
    order) casts its weight in blocks of output channels and gives ComfyUI's manual_cast.Conv1d
    result bit for bit, on a contiguous or a transposed [B, C, T] input; a kernel-3 conv is left
    to ComfyUI."""
    from acestep_core import ops
    calls = []
    real = ops.conv1d_pointwise_upcast
    monkeypatch.setattr(ops, "conv1d_pointwise_upcast", lambda *a, **k: calls.append(1) or real(*a, **k))
    channels = ops.UPCAST_BLOCK_BYTES // 4 // 100            # about 100 output channels per block
    theirs, ours, g = _manual_cast_pair(pack, "Conv1d", channels, 250, 1, weight_dtype=weight_dtype, bias=bias)
    x = torch.randn(2, frames, channels, generator=g).transpose(1, 2) if transposed else \
        torch.randn(2, channels, frames, generator=g)
    expected, got = theirs(x), ours(x)
    assert len(calls) == 1
    assert got.dtype == torch.float32 and torch.equal(got, expected), (got - expected).abs().max()
    theirs3, ours3, g = _manual_cast_pair(pack, "Conv1d", 16, 8, 3, weight_dtype=weight_dtype, bias=bias)
    x = torch.randn(2, 16, 9, generator=g)
    assert torch.equal(ours3(x), theirs3(x)) and len(calls) == 1


def test_linear_with_pending_weight_patches_takes_comfyui_path(pack, upcast_calls):
    """A layer with weight / bias functions pending (a LoRA under ComfyUI's low-VRAM loading) is
    computed by ComfyUI's own forward: the functions apply and the result is ComfyUI's."""
    theirs, ours, g = _manual_cast_pair(pack, "Linear", 64, 48)
    patch = [lambda w: w * 2 + 1]
    bias_patch = [lambda b: b - 3]
    for layer in (theirs, ours):
        layer.weight_function, layer.bias_function = list(patch), list(bias_patch)
    x = torch.randn(2, 5, 64, generator=g)
    got = ours(x)
    assert upcast_calls == []
    assert torch.equal(got, theirs(x))
    assert (got - torch.nn.functional.linear(x, theirs.weight.float(), theirs.bias.float())).abs().max() > 1


def test_linear_not_marked_for_casting_or_not_narrower_takes_comfyui_path(pack, upcast_calls):
    """Float32 weights (nothing to upcast) and disable_weight_init layers (no cast at use) never
    take the block upcast."""
    import comfy.ops
    _, wide, g = _manual_cast_pair(pack, "Linear", 64, 48, weight_dtype=torch.float32)
    plain = pack["bridge"].with_cast_weight_bias(comfy.ops.disable_weight_init).Linear(64, 48, dtype=torch.float32)
    x = torch.randn(2, 64, generator=g)
    wide(x), plain(x)
    assert upcast_calls == []


def test_acestep_linear_of_a_1x1_conv(pack, upcast_calls):
    """acestep_linear (the core's feed-forward fast path) of a manual-cast 1x1 Conv1d with 16-bit
    weights equals F.linear on ComfyUI's cast weight, through the block upcast; with a weight
    patch pending it applies the patch through comfy.ops.cast_bias_weight."""
    import comfy.ops
    theirs, ours, g = _manual_cast_pair(pack, "Conv1d", 64, 96, 1)
    x = torch.randn(2, 7, 64, generator=g)
    weight, bias = comfy.ops.cast_bias_weight(theirs, x)
    assert torch.equal(ours.acestep_linear(x), torch.nn.functional.linear(x, weight.squeeze(-1), bias))
    assert len(upcast_calls) == 1
    ours.weight_function = [lambda w: w * 2]
    theirs.weight_function = [lambda w: w * 2]
    weight, bias = comfy.ops.cast_bias_weight(theirs, x)
    assert torch.equal(ours.acestep_linear(x), torch.nn.functional.linear(x, weight.squeeze(-1), bias))
    assert len(upcast_calls) == 1
