"""Music DCAE, vocoder and audio codec against ComfyUI's own modules (comfy/ldm/ace/vae/).

* real config: identical state-dict keys and shapes (modules built without memory), and the
  configs inferred back from those shapes are the released ones;
* tiny configs with identical random weights: every path agrees with ComfyUI in float32;
* windowed encode/decode: exact for a latent that fits one window, equal to the one-piece result
  (within float rounding) for longer ones, with the real receptive field at narrow widths.
"""
import dataclasses
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from acestep_core.codec import (CPU_WINDOW_BUDGET, DECODE_BYTES_PER_FRAME, DEFAULT_OVERLAP_FRAMES, AudioCodec,
                                default_window_frames, plan_windows, window_frames_for_budget)
from acestep_core.config import ConfigError, DCAEConfig, VocoderConfig
from acestep_core.constants import LATENT_CHANNELS, LATENT_HEIGHT, SAMPLES_PER_FRAME
from acestep_core.models.dcae import DCAE, infer_dcae_config
from acestep_core.models.mel import slaney_mel_filterbank
from acestep_core.models.vocoder import Vocoder, canonical_vocoder_keys, infer_vocoder_config

TOL = 1e-4

TINY_DCAE = DCAEConfig(
    attention_head_dim=8,
    encoder_block_out_channels=(16, 32, 32, 64), decoder_block_out_channels=(16, 32, 32, 64),
    encoder_layers_per_block=(1, 1, 2, 2), decoder_layers_per_block=(1, 1, 1, 2),
    encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (3, 5)))
TINY_VOCODER = VocoderConfig(
    depths=(1, 1, 1, 1), dims=(8, 16, 16, 32), num_mels=32, upsample_initial_channel=128,
    resblock_kernel_sizes=(3, 7), resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)))
# Cheap stand-ins for the windowing tests (mono, 3 upsamplings of 8 = 512 samples per mel frame).
WINDOW_DCAE = dataclasses.replace(TINY_DCAE, in_channels=1, encoder_block_out_channels=(8, 16, 16, 32),
                                  decoder_block_out_channels=(8, 16, 16, 32))
WINDOW_VOCODER = dataclasses.replace(
    TINY_VOCODER, upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16), upsample_initial_channel=16,
    resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3, 5),))
# Narrow widths (and one audio channel) but the released depths, kernels, strides and dilations,
# hence the released receptive field.
NARROW_REAL_DCAE = dataclasses.replace(
    DCAEConfig.released(), in_channels=1, attention_head_dim=8,
    encoder_block_out_channels=(8, 16, 16, 32), decoder_block_out_channels=(8, 16, 16, 32))
NARROW_REAL_VOCODER = dataclasses.replace(
    VocoderConfig.released(), dims=(8, 8, 16, 16), num_mels=16, upsample_initial_channel=128)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class _ParamsOnMeta(torch.overrides.TorchFunctionMode):
    """Build a module whose parameters live on the meta device while small helper tensors
    (torch.linspace for drop-path rates, torchaudio's filterbank) are real: ComfyUI's vocoder
    calls .item() at construction, which a plain torch.device("meta") context refuses."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _comfy_kwargs(config) -> dict:
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    return out


def _comfy_dcae(config: DCAEConfig):
    from comfy.ldm.ace.vae.autoencoder_dc import AutoencoderDC
    return AutoencoderDC(**_comfy_kwargs(config))


def _comfy_vocoder(config: VocoderConfig):
    from comfy.ldm.ace.vae.music_vocoder import ADaMoSHiFiGANV1
    return ADaMoSHiFiGANV1(**_comfy_kwargs(config))


def _random_state(module: torch.nn.Module, seed: int) -> dict:
    """Deterministic weights of a sensible scale: matrices ~ N(0, 1/fan_in), weight-norm
    magnitudes and norm scales ~ 1, biases small. Mel buffers keep their computed values."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in module.state_dict().items():
        if key.startswith("mel_transform."):
            state[key] = t.clone()
        elif key.endswith("weight_g"):
            state[key] = 0.5 + torch.rand(t.shape, generator=gen)
        elif t.ndim >= 2:
            state[key] = torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:]))
        elif key.endswith("weight"):
            state[key] = 1.0 + 0.1 * torch.randn(t.shape, generator=gen)
        elif key.endswith("gamma"):
            state[key] = 0.5 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            state[key] = 0.05 * torch.randn(t.shape, generator=gen)
    return state


def _max_rel(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = (ours.float() - ref.float()).abs().max().item()
    return diff, diff / max(1.0, ref.abs().max().item())


def _check(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs ComfyUI {tuple(ref.shape)}"
    diff, rel = _max_rel(ours, ref)
    print(f"{name}: max|d| = {diff:.3e} (relative to max(1, max|ref|): {rel:.3e}, max|ref| = "
          f"{ref.abs().max().item():.3g})")
    assert rel <= tol, f"{name}: max|d| {diff:.3e} exceeds {tol} (relative)"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """These tensors are small: on a shared few-core machine, intra-op threads cost more in
    contention than they save (the suite runs several times faster on one thread)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_pair():
    """Our DCAE + vocoder and ComfyUI's, at tiny sizes, with identical random weights."""
    torch.manual_seed(0)
    dcae, vocoder = DCAE(TINY_DCAE).eval(), Vocoder(TINY_VOCODER).eval()
    dcae.load_state_dict(_random_state(dcae, 1))
    vocoder.load_state_dict(_random_state(vocoder, 2))
    ref_dcae, ref_vocoder = _comfy_dcae(TINY_DCAE).eval(), _comfy_vocoder(TINY_VOCODER).eval()
    ref_dcae.load_state_dict(dcae.state_dict())
    # PyTorch's parametrized weight norm converts the legacy weight_g/weight_v names on load.
    ref_vocoder.load_state_dict(vocoder.state_dict())
    return dcae, vocoder, ref_dcae, ref_vocoder


@pytest.fixture(scope="module")
def window_codec():
    dcae, vocoder = DCAE(WINDOW_DCAE).eval(), Vocoder(WINDOW_VOCODER).eval()
    dcae.load_state_dict(_random_state(dcae, 21))
    vocoder.load_state_dict(_random_state(vocoder, 22))
    return AudioCodec(dcae, vocoder)


def _music(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Something audio-like in [-1, 1]: a few partials with a decaying envelope plus noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 44100.0
    out = torch.zeros(batch, 2, samples)
    for b in range(batch):
        for c in range(2):
            for f in (110.0, 220.0 * (1 + b), 660.0, 3000.0 + 500 * c):
                out[b, c] += 0.15 * torch.sin(2 * math.pi * f * t + torch.rand(1, generator=gen).item() * 6)
            out[b, c] *= torch.exp(-3 * (t % 0.5))
            out[b, c] += 0.02 * torch.randn(samples, generator=gen)
    return out.clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# structure at the released sizes
# ---------------------------------------------------------------------------------------------
def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_real_dcae_keys_and_config():
    with torch.device("meta"):
        ours = DCAE(DCAEConfig.released())
        ref = _comfy_dcae(DCAEConfig.released())
    ref_shapes = _shapes(ref)
    assert _shapes(ours) == ref_shapes
    assert len(ref_shapes) == 192
    assert infer_dcae_config(ref_shapes) == DCAEConfig.released()
    assert infer_dcae_config(ref_shapes, DCAEConfig.released().to_json_dict()) == DCAEConfig.released()
    # Tiny shapes reveal the tiny config, whatever the starting JSON says.
    assert infer_dcae_config(_shapes(DCAE(TINY_DCAE)), DCAEConfig.released().to_json_dict()) == TINY_DCAE
    with pytest.raises(ConfigError, match="conv_in"):
        infer_dcae_config({k: v for k, v in ref_shapes.items() if not k.startswith("encoder.conv_in")})


def test_real_vocoder_keys_and_config():
    with _ParamsOnMeta():
        ref = _comfy_vocoder(VocoderConfig.released())
    with torch.device("meta"):
        ours = Vocoder(VocoderConfig.released())
    ref_raw = _shapes(ref)
    assert any(".parametrizations.weight.original0" in k for k in ref_raw)
    ref_shapes = canonical_vocoder_keys(ref_raw)
    assert _shapes(ours) == ref_shapes
    assert len(ref_shapes) == 713
    assert ref_shapes["head.ups.0.weight_g"] == (1024, 1, 1)      # ConvTranspose1d: g over input channels
    assert ref_shapes["head.conv_pre.weight_g"] == (1024, 1, 1)
    assert infer_vocoder_config(ref_shapes) == VocoderConfig.released()
    assert infer_vocoder_config(ref_raw) == VocoderConfig.released()   # either spelling
    assert infer_vocoder_config(_shapes(Vocoder(TINY_VOCODER)), VocoderConfig.released().to_json_dict()) == TINY_VOCODER
    # The front-end buffers equal torchaudio's (stored in the file, recomputed by us).
    fb = slaney_mel_filterbank(1025, 128, 44100, 40.0, 16000.0)
    ref_fb = ref.mel_transform.mel_scale.fb
    print(f"mel filterbank vs torchaudio: max|d| = {(fb - ref_fb).abs().max().item():.3e}")
    torch.testing.assert_close(fb, ref_fb, rtol=0, atol=1e-7)
    torch.testing.assert_close(Vocoder(TINY_VOCODER).mel_transform.spectrogram.window,
                               ref.mel_transform.spectrogram.window, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="conv_pre"):
        infer_vocoder_config({k: v for k, v in ref_shapes.items() if "conv_pre" not in k})


def test_vocoder_loads_both_spellings_and_rebuilds_buffers():
    ours = Vocoder(TINY_VOCODER)
    state = _random_state(ours, 3)
    comfy_spelling = _comfy_vocoder(TINY_VOCODER)
    comfy_spelling.load_state_dict(state)
    renamed = canonical_vocoder_keys(comfy_spelling.state_dict())
    assert set(renamed) == set(state)
    for key in state:
        torch.testing.assert_close(renamed[key], state[key], rtol=0, atol=0)
    # Built on meta and loaded without the mel buffers: they are recomputed in float32.
    with torch.device("meta"):
        lazy = Vocoder(TINY_VOCODER, dtype=torch.bfloat16)
    lazy.load_state_dict({k: v.bfloat16() for k, v in state.items() if not k.startswith("mel_")},
                         strict=False, assign=True)
    assert set(lazy.recomputable_buffers) == {k for k in state if k.startswith("mel_")}
    lazy.materialize_buffers(device="cpu")
    assert lazy.mel_transform.mel_scale.fb.dtype == torch.float32
    torch.testing.assert_close(lazy.mel_transform.mel_scale.fb, state["mel_transform.mel_scale.fb"], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# numerics at tiny sizes
# ---------------------------------------------------------------------------------------------
def test_dcae_matches_comfyui(tiny_pair):
    dcae, _, ref, _ = tiny_pair
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        # Latent 16 x 6 = 96 positions > head dim 8: linear attention (in float32).
        mel = torch.randn(2, 2, 128, 48, generator=gen).clamp(-1, 1)
        _check("dcae encode (linear attention)", dcae.encode(mel), ref.encoder(mel))
        z = torch.randn(2, 8, 16, 6, generator=gen)
        _check("dcae decode (linear attention)", dcae.decode(z), ref.decoder(z))
        # Latent 2 x 3 = 6 positions <= head dim 8: the quadratic form.
        mel_small = torch.randn(1, 2, 16, 24, generator=gen)
        _check("dcae encode (quadratic attention)", dcae.encode(mel_small), ref.encoder(mel_small))
        z_small = torch.randn(1, 8, 2, 3, generator=gen)
        _check("dcae decode (quadratic attention)", dcae.decode(z_small), ref.decoder(z_small))


def test_vocoder_matches_comfyui(tiny_pair):
    _, vocoder, _, ref = tiny_pair
    with torch.no_grad():
        wave = _music(1, 24 * 512)[0]                          # [2, S]
        mel = vocoder.mel(wave)
        assert mel.shape == (2, 128, 24)
        _check("vocoder log-mel front end", mel, ref.encode(wave))
        # Decode a realistic log-mel (range about -11 .. 3).
        _check("vocoder decode", vocoder.decode(mel), ref.decode(mel))


def test_codec_matches_comfyui_music_dcae(tiny_pair):
    from comfy.ldm.ace.vae.music_dcae_pipeline import MusicDCAE
    dcae, vocoder, _, _ = tiny_pair
    ref = MusicDCAE(source_sample_rate=44100, dcae_config=_comfy_kwargs(TINY_DCAE),
                    vocoder_config=_comfy_kwargs(TINY_VOCODER)).eval()
    ref.dcae.load_state_dict(dcae.state_dict())
    ref.vocoder.load_state_dict(vocoder.state_dict())
    codec = AudioCodec(dcae, vocoder)

    audio = _music(2, 5 * SAMPLES_PER_FRAME + 1234, seed=1)   # not a multiple of 4096: padded
    latent = codec.encode(audio)
    assert latent.shape == (2, LATENT_CHANNELS, LATENT_HEIGHT, 6) and latent.dtype == torch.float32
    _check("codec encode (waveform -> latent)", latent, ref.encode(audio, sr=44100))

    z = torch.randn(2, LATENT_CHANNELS, LATENT_HEIGHT, 5, generator=torch.Generator().manual_seed(7))
    wave = codec.decode(z)
    assert wave.shape == (2, 2, 5 * SAMPLES_PER_FRAME) and wave.dtype == torch.float32
    _check("codec decode (latent -> waveform)", wave, ref.decode(z))


def test_codec_runs_in_module_dtype(tiny_pair):
    dcae, vocoder, _, _ = tiny_pair
    codec32 = AudioCodec(dcae, vocoder)
    half = AudioCodec(DCAE(TINY_DCAE, dtype=torch.bfloat16), Vocoder(TINY_VOCODER, dtype=torch.bfloat16))
    half.dcae.load_state_dict(dcae.state_dict())
    half.vocoder.load_state_dict(vocoder.state_dict())
    z = torch.randn(1, LATENT_CHANNELS, LATENT_HEIGHT, 2, generator=torch.Generator().manual_seed(8))
    out = half.decode(z)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    diff = (out - codec32.decode(z)).abs().max().item()
    print(f"bf16 vs fp32 decode: max|d| = {diff:.3e}")
    assert diff < 0.25
    lat = half.encode(_music(1, 2 * SAMPLES_PER_FRAME))
    assert lat.dtype == torch.float32 and lat.shape == (1, 8, 16, 2)


# ---------------------------------------------------------------------------------------------
# windowed (long-song) encode and decode
# ---------------------------------------------------------------------------------------------
def test_plan_windows():
    assert plan_windows(300, 320, 64) == [(0, 300)]
    assert plan_windows(300, None, 64) == [(0, 300)]
    for total, chunk, overlap in ((2583, 320, 64), (321, 320, 64), (1000, 128, 64), (100, 48, 24), (50, 3, 1)):
        windows = plan_windows(total, chunk, overlap)
        lengths = {e - s for s, e in windows}
        assert len(lengths) == 1 and lengths.pop() <= chunk
        assert windows[0][0] == 0 and windows[-1][1] == total
        assert all(b[0] > a[0] and a[1] - b[0] >= overlap for a, b in zip(windows, windows[1:]))
    assert len(plan_windows(2583, 320, 64)) == 10       # 240 s: ten windows of <= 320 frames
    with pytest.raises(ValueError):
        plan_windows(100, 40, 30)


def test_decode_within_one_window_is_the_plain_decode(window_codec):
    codec = window_codec
    z = torch.randn(1, 8, 16, 6, generator=torch.Generator().manual_seed(9))
    plain = codec.decode(z, chunk_frames=None)
    assert torch.equal(codec.decode(z, chunk_frames=6, overlap_frames=2), plain)
    assert torch.equal(codec.decode(z), plain)                        # default window is 320 frames
    audio = _music(1, 6 * SAMPLES_PER_FRAME)[:, :1]
    assert torch.equal(codec.encode(audio, chunk_frames=6, overlap_frames=2), codec.encode(audio, chunk_frames=None))


def test_windowed_decode_equals_one_piece(window_codec):
    codec = window_codec
    frames = 40
    z = torch.randn(1, 8, 16, frames, generator=torch.Generator().manual_seed(10))
    whole = codec.decode(z, chunk_frames=None)
    calls = []
    # Windows (0, 22), (9, 31), (18, 40); 3-frame fades centred in each 13-frame overlap.
    assert plan_windows(frames, 24, 12) == [(0, 22), (9, 31), (18, 40)]
    windowed = codec.decode(z, chunk_frames=24, overlap_frames=12, on_progress=lambda d, t: calls.append((d, t)))
    assert windowed.shape == (1, 1, frames * SAMPLES_PER_FRAME)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    diff = (windowed - whole).abs().max().item()
    print(f"windowed vs one-piece decode, 3 windows: max|d| = {diff:.3e} "
          f"(max|wave| {whole.abs().max().item():.3f})")
    assert diff <= TOL
    # Too little overlap for the receptive field: still the right length, finite, and equal to
    # the one-piece decode away from the seams.
    rough = codec.decode(z, chunk_frames=16, overlap_frames=4)
    assert rough.shape == whole.shape and torch.isfinite(rough).all()
    windows = plan_windows(frames, 16, 4)
    away = torch.ones(frames, dtype=torch.bool)
    for (_, end), (start, _) in zip(windows, windows[1:]):
        away[start - 8:end + 8] = False
    away = away.repeat_interleave(SAMPLES_PER_FRAME)
    far = (rough - whole)[..., away].abs().max().item()
    near = (rough - whole).abs().max().item()
    print(f"windows {windows} (overlap 4): max|d| = {far:.3e} more than 8 frames from the overlaps, "
          f"{near:.3e} overall")
    assert far <= TOL


def test_windowed_encode_equals_one_piece(window_codec):
    codec = window_codec
    audio = _music(1, 60 * SAMPLES_PER_FRAME - 100, seed=2)[:, :1]
    whole = codec.encode(audio, chunk_frames=None)
    calls = []
    windowed = codec.encode(audio, chunk_frames=32, overlap_frames=16, on_progress=lambda d, t: calls.append(d))
    assert windowed.shape == whole.shape == (1, 8, 16, 60)
    assert calls == list(range(1, len(plan_windows(60, 32, 16)) + 1))
    _check("windowed vs one-piece encode", windowed, whole)


def test_default_overlap_covers_the_released_receptive_field():
    """Released depths, kernels, strides and dilations (narrow widths): the decoder's local part
    plus the vocoder change nothing farther than 3/8 of the default overlap (where the cross-fade
    starts) from a window edge, so the default windows stitch with no seam; likewise the encoder's
    local part at half the overlap (where encode cuts)."""
    dcae, vocoder = DCAE(NARROW_REAL_DCAE).eval(), Vocoder(NARROW_REAL_VOCODER).eval()
    dcae.load_state_dict(_random_state(dcae, 11))
    vocoder.load_state_dict(_random_state(vocoder, 12))
    codec = AudioCodec(dcae, vocoder)
    overlap = DEFAULT_OVERLAP_FRAMES
    margin = (overlap - overlap // 4) // 2                       # 24 frames
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        # A window [1, 1 + 2 * margin + 1) inside a longer feature map: both window edges are
        # artificial, the compared frame is `margin` frames from each.
        features = torch.randn(1, 32, 16, 2 * margin + 3, generator=gen)
        full = codec._mel_to_wave(dcae.decoder.local_part(features))
        window = codec._mel_to_wave(dcae.decoder.local_part(features[..., 1:2 * margin + 2]))
        f = SAMPLES_PER_FRAME
        diff = (window[..., margin * f:(margin + 1) * f] - full[..., (margin + 1) * f:(margin + 2) * f]).abs().max().item()
        print(f"decoder local part + vocoder, {margin} frames from window edges (released receptive field): "
              f"max|d| = {diff:.3e} (max|wave| {full.abs().max().item():.3f})")
        assert diff <= TOL
        # Encode: windows are cut in the middle of the overlap, overlap // 2 frames from the edges.
        audio = _music(1, (overlap + 64 + 1) * SAMPLES_PER_FRAME, seed=3)[:, :1]
        whole = codec.encode(audio, chunk_frames=None)
        windowed = codec.encode(audio, chunk_frames=overlap + 64)          # 2 windows
        _check("windowed vs one-piece encode, released receptive field", windowed, whole)


class _LiveTensorBytes(TorchDispatchMode):
    """Peak total size of the tensor storages created inside the mode and still referenced:
    the activation memory of a forward pass, measurable on the meta device at the real sizes
    (allocator caching and kernel workspaces are not counted)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.owners: dict[int, list] = {}

    def _forget(self, key: int, nbytes: int) -> None:
        owners = self.owners.get(key)
        if owners is None:        # already released through another view of the same storage
            return
        owners[:] = [r for r in owners if r() is not None]
        if not owners:
            del self.owners[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.owners:
                    self.owners[key] = []
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.owners[key].append(weakref.ref(t))
                weakref.finalize(t, self._forget, key, storage.nbytes())
        return out


def test_default_windows_bound_long_decodes_by_the_budget():
    """Released sizes on the meta device (float32): a 30 s song decodes in one piece by default, a
    240 s one in windows whose live activations stay inside the CPU budget, which a one-piece
    240 s decode would exceed; and the per-frame figure the windows are sized from is an upper
    bound of the one-piece decode's."""
    with torch.device("meta"):
        codec = AudioCodec(DCAE(DCAEConfig.released()), Vocoder(VocoderConfig.released()))
    window = default_window_frames(torch.device("meta"))
    assert window == window_frames_for_budget(CPU_WINDOW_BUDGET) == CPU_WINDOW_BUDGET // DECODE_BYTES_PER_FRAME
    assert plan_windows(323, window, DEFAULT_OVERLAP_FRAMES) == [(0, 323)]
    assert len(plan_windows(2583, window, DEFAULT_OVERLAP_FRAMES)) == 2
    assert window_frames_for_budget(CPU_WINDOW_BUDGET, torch.bfloat16) == 2 * window
    peaks = {}
    for frames, chunk in ((323, None), (2583, None), (2583, window)):
        with _LiveTensorBytes() as meter:
            codec.decode(torch.zeros(1, 8, 16, frames, device="meta"), chunk_frames=chunk)
        peaks[frames, chunk] = meter.peak
        print(f"decode {frames} frames ({frames * SAMPLES_PER_FRAME / 44100:.0f} s), chunk_frames={chunk}: "
              f"peak live activations {meter.peak / 2 ** 30:.2f} GiB (float32)")
    assert peaks[323, None] <= 323 * DECODE_BYTES_PER_FRAME
    assert peaks[2583, window] <= CPU_WINDOW_BUDGET < peaks[2583, None]


def test_progress_callback_exception_propagates(window_codec):
    codec = window_codec

    class Interrupted(Exception):
        pass

    seen = []

    def stop_after_first(done, total):
        seen.append((done, total))
        raise Interrupted

    z = torch.randn(2, 8, 16, 60, generator=torch.Generator().manual_seed(14))
    with pytest.raises(Interrupted):
        codec.decode(z, chunk_frames=32, overlap_frames=8, on_progress=stop_after_first)
    assert seen == [(1, 6)]                                 # 2 items x 3 windows, stopped after one
    with pytest.raises(Interrupted):
        codec.decode(z[:, :, :, :4], on_progress=stop_after_first)
    with pytest.raises(Interrupted):
        codec.encode(_music(1, 4 * SAMPLES_PER_FRAME)[:, :1], on_progress=stop_after_first)


def test_check_runs_inside_windows_and_leaves_results_unchanged(tiny_pair):
    """``check`` is called after every block of the DCAE and the vocoder, many times per window
    (an interrupt is noticed inside a long window), and does not change the result."""
    dcae, vocoder, _, _ = tiny_pair
    codec = AudioCodec(dcae, vocoder)
    z = torch.randn(1, LATENT_CHANNELS, LATENT_HEIGHT, 6, generator=torch.Generator().manual_seed(9))
    calls = []
    checked = codec.decode(z, chunk_frames=None, check=lambda: calls.append(1))
    blocks = (sum(len(stage) for stage in dcae.decoder.up_blocks[:-1])
              + len(vocoder.head.ups) + len(vocoder.head.resblocks))
    assert len(calls) == blocks
    assert torch.equal(checked, codec.decode(z, chunk_frames=None))
    wave = _music(1, 6 * SAMPLES_PER_FRAME)
    calls.clear()
    assert torch.equal(codec.encode(wave, chunk_frames=None, check=lambda: calls.append(1)),
                       codec.encode(wave, chunk_frames=None))
    assert len(calls) == sum(len(stage) for stage in dcae.encoder.down_blocks[:-1])
