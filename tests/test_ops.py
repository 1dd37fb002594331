"""The layer factory: every acestep_core model builds its layers from ``operations`` and reads
weights only through ``cast_weight_bias`` / ``cast_like``, so operations that keep 16-bit weights
and cast them at use give the same numbers as a float32 model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from acestep_core import ops
from acestep_core.models.dcae import DCAE
from acestep_core.models.text_encoder import TextEncoder
from acestep_core.models.transformer import AceStepTransformer
from acestep_core.models.vocoder import Vocoder
from acestep_core.testing import tiny_config

LAYERS = ("Linear", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "LayerNorm", "GroupNorm",
          "Embedding", "RMSNorm")


def _cast_at_use_ops():
    """Operations whose layers keep their weights as stored and cast them to the input's dtype
    and device at each call (what ComfyUI's manual-cast operations do), counting the calls."""
    calls = {"forward": 0, "served": 0}

    def make(base):
        class Layer(base):
            def acestep_cast_weight_bias(self, like, dtype):
                calls["served"] += 1
                bias = getattr(self, "bias", None)
                return (self.weight.to(like.device, dtype),
                        None if bias is None else bias.to(like.device, dtype))

            def forward(self, x, *args, **kwargs):
                calls["forward"] += 1
                if base is nn.Embedding:
                    return nn.functional.embedding(x, self.weight.to(x.device))
                weight, bias = self.acestep_cast_weight_bias(x, x.dtype)
                saved = self._parameters["weight"], self._parameters.get("bias")
                try:   # run the parent's math with the cast tensors
                    self._parameters["weight"] = weight
                    if bias is not None:
                        self._parameters["bias"] = bias
                    return super().forward(x, *args, **kwargs)
                finally:
                    self._parameters["weight"] = saved[0]
                    if saved[1] is not None:
                        self._parameters["bias"] = saved[1]
        Layer.__name__ = "CastAtUse" + base.__name__
        return Layer

    namespace = SimpleNamespace(**{name: make(getattr(ops.torch_ops, name)) for name in LAYERS})
    return namespace, calls


def _build(cls, config, operations=None, dtype=torch.float32, seed=0):
    module = cls(config, operations=operations, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.05).to(p.dtype))
    # As loaded (acestep_core.loading, ComfyUI): F.linear takes another CPU kernel for a weight
    # that requires grad, which changes the last bits.
    return module.eval().requires_grad_(False)


@pytest.mark.parametrize("cls,part", [(AceStepTransformer, "transformer"), (DCAE, "dcae"),
                                      (Vocoder, "vocoder"), (TextEncoder, "text_encoder")])
def test_every_layer_comes_from_operations(cls, part):
    namespace, _ = _cast_at_use_ops()
    with torch.device("meta"):
        module = cls(getattr(tiny_config(), part), operations=namespace)
    plain = [name for name, m in module.named_modules()
             if type(m) in tuple(getattr(ops.torch_ops, n) for n in LAYERS)]
    assert not plain, f"{cls.__name__} builds plain torch layers, not from operations: {plain[:5]}"
    built = [m for m in module.modules() if type(m).__name__.startswith("CastAtUse")]
    assert built


def test_transformer_16bit_weights_cast_at_use_equal_float32_model():
    """bf16 weights held as bf16 and cast per layer to float32 == the same bf16 values loaded as a
    float32 model: the same arithmetic, bit for bit."""
    config = tiny_config().transformer
    namespace, calls = _cast_at_use_ops()
    reference = _build(AceStepTransformer, config)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())          # values a bf16 file holds
    stored = AceStepTransformer(config, operations=namespace, dtype=torch.bfloat16,
                                compute_dtype=torch.float32)
    stored.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
    stored.eval().requires_grad_(False)
    assert stored.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in stored.parameters())

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, 20, generator=gen)
    context = torch.randn(2, 7, config.text_embedding_dim, generator=gen)
    lyrics = torch.randint(0, config.lyric_encoder_vocab_size, (1, 9), generator=gen)
    with torch.no_grad():
        want = reference(x, torch.tensor([500.0, 20.0]), context=context, lyric_token_idx=lyrics)
        got = stored(x, torch.tensor([500.0, 20.0]), context=context, lyric_token_idx=lyrics)
    assert got.dtype == torch.float32
    assert calls["served"] > 0 and calls["forward"] > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("cls,part", [(DCAE, "dcae"), (Vocoder, "vocoder")])
def test_codec_16bit_weights_cast_at_use_equal_float32_model(cls, part):
    config = getattr(tiny_config(), part)
    namespace, _ = _cast_at_use_ops()
    reference = _build(cls, config)
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() and not k.startswith("mel_transform") else v)
             for k, v in reference.state_dict().items()}
    reference.load_state_dict({k: v.float() for k, v in state.items()})
    stored = cls(config, operations=namespace, dtype=torch.bfloat16)
    stored.load_state_dict(state)
    stored.compute_dtype = torch.float32
    stored.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        if cls is DCAE:
            z = torch.randn(1, 8, 16, 6, generator=gen)
            want, got = reference.decode(z), stored.decode(z.to(stored.dtype))
        else:
            mel = torch.randn(2, config.input_channels, 12, generator=gen)
            want, got = reference.decode(mel), stored.decode(mel)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cast_weight_bias_serves_from_layer_or_moves_parameters():
    layer = nn.Linear(3, 2).to(torch.bfloat16)
    x = torch.zeros(1, 3)
    weight, bias = ops.cast_weight_bias(layer, x)
    assert weight.dtype == bias.dtype == torch.float32
    torch.testing.assert_close(weight, layer.weight.float())
    layer.acestep_cast_weight_bias = lambda like, dtype: ("w", "b")
    assert ops.cast_weight_bias(layer, x) == ("w", "b")
    table = torch.ones(2, dtype=torch.bfloat16)
    assert ops.cast_like(table, x).dtype == torch.float32
    same = torch.ones(2)
    assert ops.cast_like(same, x) is same


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape_in", [(1, 384), (2, 384), (3, 7, 384), (40, 384)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_upcast_is_bit_equal_to_casting_the_whole_weight(monkeypatch, wdtype, shape_in, with_bias):
    """The blockwise cast visits output rows in blocks and nothing else: every element equals
    F.linear on the whole float32 copy, bit for bit (several blocks and a ragged last one)."""
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(1000, 384, generator=g) * 0.05).to(wdtype)
    bias = (torch.randn(1000, generator=g) * 0.1).to(wdtype) if with_bias else None
    x = torch.randn(*shape_in, generator=g)
    monkeypatch.setattr(ops, "UPCAST_BLOCK_BYTES", 64 * 384 * 4)   # 64-row blocks: 16 blocks, last one 40 rows
    expected = nn.functional.linear(x, weight.float(), None if bias is None else bias.float())
    got = ops.linear_upcast(x, weight, bias)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7, 8, 33])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_upcast_is_bit_equal_at_the_real_width(rows, strided):
    """At the real model's width (K = 2560) a product of 1-7 rows takes a kernel whose sums
    depend on the number of output columns, and a strided input another one: linear_upcast still
    equals F.linear on the whole float32 copy bit for bit (it casts whole there)."""
    g = torch.Generator().manual_seed(2)
    weight = (torch.randn(3000, 2560, generator=g) * 0.02).bfloat16()
    x = torch.randn(2560, rows, generator=g).t() if strided else torch.randn(rows, 2560, generator=g)
    assert torch.equal(ops.linear_upcast(x, weight), nn.functional.linear(x, weight.float()))


def test_linear_upcast_takes_the_plain_path_for_many_rows_and_equal_dtypes():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 32, generator=g).bfloat16()
    x = torch.randn(ops.UPCAST_MAX_ROWS_OF_INPUT + 1, 32, generator=g)
    assert torch.equal(ops.linear_upcast(x, weight), nn.functional.linear(x, weight.float()))
    same = torch.randn(3, 32, generator=g).bfloat16()
    assert torch.equal(ops.linear_upcast(same, weight), nn.functional.linear(same, weight))


def test_linear_upcast_inside_then_outside_inference_mode(monkeypatch):
    """The scratch buffer first allocated inside torch.inference_mode (the planner generates there)
    is written again by a call outside it (failed before: 'Inplace update to inference tensor
    outside InferenceMode')."""
    monkeypatch.setattr(ops, "_upcast_scratch", {})
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 32, generator=g).bfloat16()
    x = torch.randn(2, 32, generator=g)
    expected = nn.functional.linear(x, weight.float())
    with torch.inference_mode():
        assert torch.equal(ops.linear_upcast(x, weight), expected)
    assert torch.equal(ops.linear_upcast(x, weight), expected)
    with torch.inference_mode():
        assert torch.equal(ops.linear_upcast(x, weight), expected)


def test_linear_upcast_default_blocks_of_a_wide_weight_are_exact():
    """K = 6144 (a 1.5 DiT / planner MLP down projection), 8 input rows, the default block size: the
    rows per block are a multiple of UPCAST_BLOCK_ROWS_MULTIPLE (170-row blocks differed from the
    whole product in the last bit on the AVX-512 EPYC this was measured on)."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(2048, 6144, generator=g).bfloat16()
    x = torch.randn(8, 6144, generator=g)
    assert torch.equal(ops.linear_upcast(x, weight), nn.functional.linear(x, weight.float()))


def test_exact_small_rows_only_where_checked(monkeypatch):
    """Fewer rows than UPCAST_MIN_ROWS_OF_INPUT take blocks only for the row count the caller
    checked with small_rows_blocks_exact; any result equals the whole cast's."""
    monkeypatch.setattr(ops, "UPCAST_BLOCK_BYTES", 64 * 1024 * 4)
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(300, 1024, generator=g).bfloat16()
    exact = ops.small_rows_blocks_exact([(300, 1024)], 2)
    assert isinstance(exact, bool)
    for rows in (2, 3):
        monkeypatch.setattr(ops, "_upcast_scratch", {})
        x = torch.randn(rows, 1024, generator=g)
        got = ops.linear_upcast(x, weight, exact_small_rows=2 if exact else None)
        assert torch.equal(got, nn.functional.linear(x, weight.float()))
        assert bool(ops._upcast_scratch) == (exact and rows == 2)    # blocks only for the checked count


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cin, cout, bias", [(640, 3200, True), (1600, 640, False)])
@pytest.mark.parametrize("frames", [1, 7, 33, 300])          # 2 x 300 frames: the whole cast
def test_pointwise_conv1d_upcast_equals_conv_on_the_cast_weight(weight_dtype, cin, cout, bias, frames):
    """conv1d_pointwise_upcast (blocks of output channels cast into the scratch buffer) gives
    F.conv1d on the whole cast weight bit for bit, contiguous and transposed inputs."""
    import torch.nn.functional as F

    from acestep_core.ops import conv1d_pointwise_upcast
    g = torch.Generator().manual_seed(frames)
    weight = (torch.randn(cout, cin, 1, generator=g) * cin ** -0.5).to(weight_dtype)
    b = torch.randn(cout, generator=g).to(weight_dtype) if bias else None
    for x in (torch.randn(2, cin, frames, generator=g), torch.randn(2, frames, cin, generator=g).transpose(1, 2)):
        expected = F.conv1d(x, weight.float(), None if b is None else b.float())
        assert torch.equal(conv1d_pointwise_upcast(x, weight, b), expected)
