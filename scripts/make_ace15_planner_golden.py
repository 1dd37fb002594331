#!/usr/bin/env python3
"""Regenerate tests/data/ace15_planner_golden.safetensors: ComfyUI 0.20.1's ACE-Step 1.5 planner
(``comfy/text_encoders/ace15.py``: ``ACE15Tokenizer``, ``generate_audio_codes`` /
``sample_manual_loop_no_classes``; ``comfy/text_encoders/llama.py``) run on tiny random weights.

    /work/comfy020/venv/bin/python scripts/make_ace15_planner_golden.py --comfyui /work/comfy020/ComfyUI

Reference used: ComfyUI 0.20.1, git aa9d2fc713664e9ffe37763f4c9240c0c3eda667 of the
YellowRoseCx/ComfyUI snapshot (``git --git-dir=/work/.mirror/YellowRoseCx+ComfyUI/repo rev-parse HEAD``),
its own venv (Python 3.11, torch 2.9.1, transformers 5.25), on the CPU in float32.

What it writes (a few tens of kilobytes):
  * ``prompt_ids`` / ``negative_ids``: ``ACE15Tokenizer.tokenize_with_weights`` of a caption,
    lyrics and metadata (the ``lm_prompt`` / ``lm_prompt_negative`` token ids);
  * for each sampling case (greedy; seeded sampling with the node defaults; top-k + min-p + other
    cfg and temperature; no CFG): the 40 codes ComfyUI draws, and at every step the conditional
    and unconditional next-token logits at 64 fixed audio-code rows plus each row's maximum and
    log-sum-exp over all 64000 codes (enough to catch any difference in the whole row);
  * the same for ``fp16.<case>`` (greedy, sampled): the weights stored in bf16 (as the released
    files) and held by ComfyUI in fp16, as its CLIP loader does on the CPU
    (``model_management.text_encoder_dtype``), its ``comfy.ops.manual_cast`` layers casting each
    weight to float32 for every product (the planner's float32 products must give these).
The weights are ``acestep_core.ace15.planner.random_planner_state_dict(TINY_PLANNER_CONFIG, 0)``,
rebuilt identically by the test; ComfyUI's 1.7B config class is swapped for the tiny sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "ace15_planner_golden.safetensors"
STEPS = 40
CAPTION = "Upbeat synth-pop with bright female vocals, punchy drums"
LYRICS = "[verse]\nNeon lights are calling me\n\n[chorus]\nWe run, we run"
METADATA = dict(bpm=124, duration=8.2, keyscale="F# minor", timesignature="4", language="en")
CASES = {   # name: (seed, cfg_scale, temperature, top_p, top_k, min_p)
    "greedy": (0, 2.0, 0.0, 0.9, 0, 0.0),
    "sampled": (7, 2.0, 0.85, 0.9, 0, 0.0),
    "topk_minp": (3, 3.0, 1.2, 0.95, 50, 0.05),
    "no_cfg": (11, 1.0, 0.85, 0.9, 0, 0.0),
}
FP16_CASES = ("greedy", "sampled")
PROBE_ROWS = 64


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default="/work/comfy020/ComfyUI", help="ComfyUI 0.20.1 source tree")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.append(args.comfyui)
    import torch
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = True
    import comfy.text_encoders.ace15 as ace15
    import comfy.text_encoders.llama as llama
    from safetensors.torch import save_file

    from acestep_core.ace15.planner import TINY_PLANNER_CONFIG as tiny
    from acestep_core.ace15.planner import random_planner_state_dict
    from acestep_core.ace15.planner_grammar import AUDIO_CODE_END, AUDIO_CODE_OFFSET

    @dataclasses.dataclass
    class TinyLmConfig(llama.Qwen3_2B_ACE15_lm_Config):
        vocab_size: int = tiny.vocab_size
        hidden_size: int = tiny.hidden_size
        intermediate_size: int = tiny.intermediate_size
        num_hidden_layers: int = tiny.num_layers
        num_attention_heads: int = tiny.num_heads
        num_key_value_heads: int = tiny.num_kv_heads
    TinyLmConfig.head_dim = tiny.head_dim
    llama.Qwen3_2B_ACE15_lm_Config = TinyLmConfig   # looked up by name when the model is built

    def comfyui_model(dtype, weights_dtype):
        model = ace15.Qwen3_2B_ACE15(device="cpu", dtype=dtype)
        sd = random_planner_state_dict(tiny, 0, dtype=weights_dtype)
        missing, unexpected = model.transformer.load_state_dict(sd, strict=False)
        assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
        assert all(p.dtype == dtype for p in model.transformer.parameters())
        for key, tensor in sd.items():   # bf16 -> fp16 is exact for these values
            assert torch.equal(model.transformer.state_dict()[key].to(weights_dtype), tensor), key
        model.execution_device = torch.device("cpu")
        return model
    models = {"": comfyui_model(torch.float32, torch.float32),
              "fp16.": comfyui_model(torch.float16, torch.bfloat16)}

    tokenizer = ace15.ACE15Tokenizer()
    tokens = tokenizer.tokenize_with_weights(CAPTION, lyrics=LYRICS, **METADATA)
    prompt_ids = [t for t, _ in tokens["lm_prompt"][0]]
    negative_ids = [t for t, _ in tokens["lm_prompt_negative"][0]]

    probe = torch.randperm(AUDIO_CODE_END - AUDIO_CODE_OFFSET, generator=torch.Generator().manual_seed(1))[:PROBE_ROWS]
    out = {"prompt_ids": torch.tensor(prompt_ids), "negative_ids": torch.tensor(negative_ids), "probe_rows": probe}
    runs = [("", name, case) for name, case in CASES.items()] + [
        ("fp16.", name, CASES[name]) for name in FP16_CASES]
    for prefix, case_name, (seed, cfg, temperature, top_p, top_k, min_p) in runs:
        model = models[prefix]
        name = prefix + case_name
        original_logits = model.transformer.logits
        seen = []

        def logits(x, _seen=seen):
            full = original_logits(x)
            _seen.append(full[:, -1, AUDIO_CODE_OFFSET:AUDIO_CODE_END].detach().clone())
            return full
        model.transformer.logits = logits
        codes = ace15.generate_audio_codes(model, tokens["lm_prompt"], tokens["lm_prompt_negative"],
                                           min_tokens=STEPS, max_tokens=STEPS, seed=seed, cfg_scale=cfg,
                                           temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
        model.transformer.logits = original_logits
        rows = torch.stack(seen)                            # [steps, B, 64000]
        assert len(codes) == STEPS and rows.shape[0] == STEPS, (len(codes), rows.shape)
        out[f"{name}.codes"] = torch.tensor(codes)
        out[f"{name}.logits_probe"] = rows[..., probe].contiguous()
        out[f"{name}.logits_max"] = rows.max(-1).values.contiguous()
        out[f"{name}.logits_lse"] = torch.logsumexp(rows, -1).contiguous()
        out[f"{name}.settings"] = torch.tensor([seed, cfg, temperature, top_p, top_k, min_p], dtype=torch.float64)
        print(name, codes[:8], "...")
    save_file(out, args.out)
    print("wrote", args.out, Path(args.out).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
