"""Log-mel front end of the ACE-Step vocoder (waveform -> log-mel), shared by audio encoding.

The recipe (ACE-Step music_log_mel.py, ComfyUI comfy/ldm/ace/vae/music_log_mel.py):

    reflect-pad (n_fft - hop) // 2 left and (n_fft - hop + 1) // 2 right   (768 / 768)
    STFT, Hann window, center=False, onesided, not normalised, in float32
    magnitude  sqrt(re^2 + im^2 + 1e-6)
    Slaney-scale, Slaney-area-normalised triangular mel filterbank (40 .. 16000 Hz)
    log(clamp(mel, 1e-5))

so a waveform of S samples (S a multiple of the hop) gives exactly S / hop frames.

The window and the filterbank are persistent buffers (``spectrogram.window``, ``mel_scale.fb``)
because checkpoints carry them; they are pure functions of the config, so we compute them here and
can rebuild them when a file lacks them (``materialize_``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAG_EPS = 1e-6       # added under the square root of the STFT power
LOG_FLOOR = 1e-5     # mel energies are clamped to this before the log


# ---------------------------------------------------------------------------------------------
# Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa / torchaudio define it
# ---------------------------------------------------------------------------------------------
_HZ_PER_MEL = 200.0 / 3.0                 # linear part: 3 mels per 200 Hz
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL
_MEL_LOG_STEP = math.log(6.4) / 27.0      # 27 mels per factor 6.4 in frequency


def hz_to_mel(hz: float) -> float:
    if hz < _LOG_START_HZ:
        return hz / _HZ_PER_MEL
    return _LOG_START_MEL + math.log(hz / _LOG_START_HZ) / _MEL_LOG_STEP


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    linear = mels * _HZ_PER_MEL
    logarithmic = _LOG_START_HZ * torch.exp(_MEL_LOG_STEP * (mels - _LOG_START_MEL))
    return torch.where(mels >= _LOG_START_MEL, logarithmic, linear)


def slaney_mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float,
                          device=None) -> torch.Tensor:
    """[n_freqs, n_mels] triangular filters with Slaney area normalisation, in float32.

    Computed in the same float32 steps as torchaudio.functional.melscale_fbanks(norm="slaney",
    mel_scale="slaney") so the result matches the buffer stored in the released checkpoint."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, device=device)             # STFT bin centres
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, device=device)
    edges = mel_to_hz(mel_points)                # filter m spans edges[m] .. edges[m+2], peak at m+1
    widths = edges[1:] - edges[:-1]
    offsets = edges[None, :] - freqs[:, None]    # [n_freqs, n_mels + 2]: edge minus bin frequency
    rising = -offsets[:, :-2] / widths[:-1]      # 0 at the left edge, 1 at the peak
    falling = offsets[:, 2:] / widths[1:]        # 1 at the peak, 0 at the right edge
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)
    area_norm = 2.0 / (edges[2:] - edges[:-2])   # equal area per filter
    return triangles * area_norm[None, :]


def _is_meta(device) -> bool:
    # True when new tensors would land on the meta device (explicit argument or a
    # `with torch.device("meta")` context around construction).
    return torch.empty(0, device=device).is_meta


class STFTMagnitude(nn.Module):
    """|STFT| with the ACE-Step padding; holds the Hann window buffer."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int, device=None):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.empty(win_length, device=device))
        if not _is_meta(device):
            self.materialize_(device)

    def materialize_(self, device=None):
        self.window = torch.hann_window(self.win_length, periodic=True, device=device)

    def pad(self, wave: torch.Tensor) -> torch.Tensor:
        """Reflect-pad [N, S] so that frame f covers padded samples [f * hop, f * hop + n_fft)."""
        pad_left = (self.win_length - self.hop_length) // 2
        pad_right = (self.win_length - self.hop_length + 1) // 2
        return F.pad(wave.float()[:, None], (pad_left, pad_right), mode="reflect")[:, 0]

    def from_padded(self, padded: torch.Tensor) -> torch.Tensor:
        """Padded wave [N, L] -> magnitude [N, n_fft // 2 + 1, 1 + (L - n_fft) // hop], float32."""
        spec = torch.stft(padded.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window.to(device=padded.device, dtype=torch.float32), center=False,
                          normalized=False, onesided=True, return_complex=True)
        spec = torch.view_as_real(spec)
        return torch.sqrt(spec.pow(2).sum(-1) + MAG_EPS)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave [N, S] -> magnitude [N, n_fft // 2 + 1, frames] in float32."""
        return self.from_padded(self.pad(wave))


class MelFilterbank(nn.Module):
    """Projects a linear spectrogram onto mel bands; holds the filterbank buffer ``fb``."""

    def __init__(self, n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float, device=None):
        super().__init__()
        self.n_freqs, self.n_mels, self.sample_rate = n_freqs, n_mels, sample_rate
        self.f_min, self.f_max = f_min, f_max
        self.register_buffer("fb", torch.empty(n_freqs, n_mels, device=device))
        if not _is_meta(device):
            self.materialize_(device)

    def materialize_(self, device=None):
        self.fb = slaney_mel_filterbank(self.n_freqs, self.n_mels, self.sample_rate, self.f_min, self.f_max,
                                        device=device)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec [N, n_freqs, frames] -> [N, n_mels, frames] (float32 filterbank)."""
        fb = self.fb.to(device=spec.device, dtype=spec.dtype)
        return torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)


class LogMelSpectrogram(nn.Module):
    """waveform [N, S] -> log-mel [N, n_mels, S // hop] (S a multiple of hop)."""

    def __init__(self, sample_rate: int = 44100, n_fft: int = 2048, win_length: int = 2048,
                 hop_length: int = 512, n_mels: int = 128, f_min: float = 40.0, f_max: float = 16000.0,
                 device=None):
        super().__init__()
        self.hop_length = hop_length
        self.spectrogram = STFTMagnitude(n_fft, win_length, hop_length, device=device)
        self.mel_scale = MelFilterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, device=device)

    def pad(self, wave: torch.Tensor) -> torch.Tensor:
        return self.spectrogram.pad(wave)

    def frame_span(self, first: int, last: int) -> tuple[int, int]:
        """Slice of the padded wave that yields exactly the frames first .. last - 1."""
        return first * self.hop_length, (last - 1) * self.hop_length + self.spectrogram.n_fft

    def from_padded(self, padded: torch.Tensor) -> torch.Tensor:
        mel = self.mel_scale(self.spectrogram.from_padded(padded))
        return torch.log(torch.clamp(mel, min=LOG_FLOOR))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Computed in float32 throughout; returned in float32."""
        return self.from_padded(self.pad(wave))
