"""The cross-attention's ``attention_function`` seam (like ``operations``): the core computes the
softmax attention with ``F.scaled_dot_product_attention`` unless a caller hands in another
function with the same contract (the pack's ComfyUI bridge hands in ComfyUI's
``optimized_attention``). Runs without ComfyUI."""
from __future__ import annotations

import torch

from acestep_core.models.attention import sdpa_attention
from acestep_core.models.transformer import AceStepTransformer
from acestep_core.testing import tiny_config


def _model(attention_function=None):
    cfg = tiny_config().transformer
    torch.manual_seed(0)
    model = AceStepTransformer(cfg, attention_function=attention_function).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return cfg, model.requires_grad_(False)


def _inputs(cfg, frames=5):
    gen = torch.Generator().manual_seed(2)
    return dict(x=torch.randn(2, 8, 16, frames, generator=gen), timestep=torch.tensor([300.0, 800.0]),
                context=torch.randn(2, 4, cfg.text_embedding_dim, generator=gen),
                text_attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
                speaker_embeds=torch.zeros(2, cfg.speaker_embedding_dim),
                lyric_token_idx=torch.randint(0, cfg.lyric_encoder_vocab_size, (2, 3), generator=gen))


def test_injected_attention_function_gets_the_contract_and_is_used():
    """Called once per block with q [B, H, T, D], k / v [B, H, S, D], an additive float mask
    (0 / -inf, [B, 1, 1, S]) and the transformer options of the block; its output is what the
    layer uses: forwarding to the default gives the default model's result bit for bit, and a
    function that returns zeros gives another one."""
    cfg, default = _model()
    calls = []

    def recording(q, k, v, mask=None, transformer_options=None):
        calls.append((q.shape, k.shape, v.shape, mask, dict(transformer_options)))
        return sdpa_attention(q, k, v, mask, transformer_options)

    _, recorded = _model(recording)
    recorded.load_state_dict(default.state_dict())
    kwargs = _inputs(cfg)
    with torch.no_grad():
        expected = default(**kwargs)
        got = recorded(**kwargs, transformer_options={"marker": 7})
    assert torch.equal(got, expected)

    heads, head_dim = cfg.num_attention_heads, cfg.attention_head_dim
    context_len = 1 + 4 + 3                     # speaker token, tags, lyrics
    assert len(calls) == cfg.num_layers
    for index, (q_shape, k_shape, v_shape, mask, options) in enumerate(calls):
        assert q_shape == (2, heads, 5, head_dim)
        assert k_shape == v_shape == (2, heads, context_len, head_dim)
        assert mask.dtype == torch.float32 and mask.shape == (2, 1, 1, context_len)
        assert torch.equal(mask[1, 0, 0], torch.tensor([0.0, 0, 0, float("-inf"), float("-inf"), 0, 0, 0]))
        assert not mask[0].any()
        assert options["marker"] == 7 and options["block_index"] == index

    def zeros(q, k, v, mask=None, transformer_options=None):
        return q.new_zeros(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])

    _, zeroed = _model(zeros)
    zeroed.load_state_dict(default.state_dict())
    with torch.no_grad():
        assert (zeroed(**kwargs) - expected).abs().max() > 1e-3


def test_padded_frames_get_zero_whatever_the_function_returns():
    """A padded latent frame gets a zero attention output even when the function gives NaN there
    (as some attention backends do for an all -inf row)."""
    cfg, default = _model()

    def nan_on_padding(q, k, v, mask=None, transformer_options=None):
        out = sdpa_attention(q, k, v, mask).clone()
        out[1, 3:] = float("nan")                  # the frames padded below
        return out

    _, model = _model(nan_on_padding)
    model.load_state_dict(default.state_dict())
    kwargs = _inputs(cfg)
    kwargs["attention_mask"] = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])
    with torch.no_grad():
        got, expected = model(**kwargs), default(**kwargs)
    assert torch.isfinite(got).all() and torch.equal(got, expected)
