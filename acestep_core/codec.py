"""Audio codec: 44.1 kHz stereo waveform <-> ACE-Step latent [B, 8, 16, T], T = samples / 4096.

    encode: pad right to a multiple of 4096 -> log-mel per channel -> map [-11, 3] to [-1, 1]
            -> DCAE encoder -> z = (z_raw - LATENT_SHIFT) * LATENT_SCALE
    decode: z_raw = z / LATENT_SCALE + LATENT_SHIFT -> DCAE decoder -> mel back to [-11, 3]
            -> vocoder on each channel

(ACE-Step music_dcae_pipeline.py; ComfyUI comfy/ldm/ace/vae/music_dcae_pipeline.py.)

Long inputs are processed in overlapping windows of latent frames so that peak memory is set by
the window, not by the song. The split is chosen so that windowing does not change the result:

* the DCAE's deepest stage (latent resolution) contains its only non-local operation, linear
  attention over the whole song. It runs over the full (small: 1024 x 16 x T) feature map, piece
  by piece, with the attention state summed over all pieces (acestep_core.models.dcae.run_stage);
* everything at higher resolution (the DCAE's upsampling stages, the vocoder; on the encode side
  the mel front end and the DCAE's downsampling stages) is convolutional, with a receptive field
  of at most ~19 latent frames each way for the released decoder (upsampling stages ~7, vocoder
  ~11.5). Each window is decoded with
  overlap_frames of shared context, so away from the window edges it is exact;
* decode stitches adjacent windows with a linear cross-fade over the middle quarter of their
  overlap (>= 3/8 of the overlap away from either window's edge: 24 frames with the defaults), so
  the two signals being faded agree to float rounding and no seam can be heard; encode simply
  cuts each overlap at its middle.

A latent that fits in one window is decoded in one piece, exactly as without windowing.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .constants import LATENT_SCALE, LATENT_SHIFT, MEL_MAX, MEL_MIN

ProgressFn = Callable[[int, int], None]

# Peak activation memory of a one-piece decode per latent frame at the released sizes in float32:
# 1.96 MiB measured on the CPU for a 30 s decode (benchmarks/bench_core.py), rounded up for the
# kernels' workspaces. Windows are sized from it and a memory budget.
DECODE_BYTES_PER_FRAME = 5 << 19      # 2.5 MiB
CPU_WINDOW_BUDGET = 4 << 30           # a CPU decode's activations: 240 s fits in two windows
CUDA_FREE_MEMORY_SHARE = 0.5          # a CUDA decode's window may use this share of free memory
DEFAULT_OVERLAP_FRAMES = 64           # ~5.9 s shared by adjacent windows
LATENT_PIECE_FRAMES = 128             # piece size of the whole-song latent-resolution pass
_DEFAULT = object()            # "use the default" (None means "no windowing")


def window_frames_for_budget(budget_bytes: float, dtype: torch.dtype = torch.float32,
                             overlap: int = DEFAULT_OVERLAP_FRAMES,
                             bytes_per_frame: int = DECODE_BYTES_PER_FRAME) -> int:
    """The longest window (latent frames) whose activations fit in `budget_bytes`, at
    `bytes_per_frame` in float32 (default: this codec's decode); never shorter than two overlaps,
    the least a window can be."""
    per_frame = bytes_per_frame * torch.finfo(dtype).bits / 32
    return max(2 * overlap, int(budget_bytes // per_frame))


def default_window_frames(device: torch.device, dtype: torch.dtype = torch.float32) -> int:
    """Window for a decode on `device`: a share of the free memory on CUDA (songs of any usual
    length then decode in one piece, which is fastest), a fixed budget elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return window_frames_for_budget(free * CUDA_FREE_MEMORY_SHARE, dtype)
    return window_frames_for_budget(CPU_WINDOW_BUDGET, dtype)


def plan_windows(total: int, chunk: int | None, overlap: int) -> list[tuple[int, int]]:
    """Equal windows [start, end) of at most `chunk` frames covering [0, total), adjacent ones
    sharing at least `overlap` frames; the fewest that do, spread evenly. One window when
    `chunk` is None or the total fits."""
    if chunk is None or total <= chunk:
        return [(0, total)]
    if chunk < 1 or not 0 <= overlap or 2 * overlap > chunk:
        raise ValueError(f"need chunk_frames >= 2 * overlap_frames >= 0 (got {chunk} and {overlap})")
    count = math.ceil((total - overlap) / (chunk - overlap))
    length = math.ceil((total + (count - 1) * overlap) / count)    # <= chunk
    starts = [k * (total - length) // (count - 1) for k in range(count)]
    return [(s, s + length) for s in starts]


def seam_spans(windows: list[tuple[int, int]], fade_frames: int, frame: int) -> list[tuple[int, int]]:
    """Cross-fade span [begin, end) in samples between windows k and k + 1: centred in their
    overlap, `fade_frames` long (shorter if the overlap or the spacing of seams requires)."""
    centres = [(windows[k + 1][0] + windows[k][1]) * frame // 2 for k in range(len(windows) - 1)]
    spans = []
    for k, c in enumerate(centres):
        length = min(fade_frames, windows[k][1] - windows[k + 1][0]) * frame
        if k > 0:
            length = min(length, c - centres[k - 1])
        if k + 1 < len(centres):
            length = min(length, centres[k + 1] - c)
        spans.append((c - length // 2, c - length // 2 + length))
    return spans


def add_faded(out: torch.Tensor, piece: torch.Tensor, offset: int, left, right) -> None:
    """out += piece weighted 0 -> 1 across the left seam, 1 between the seams, 1 -> 0 across
    the right seam, 0 outside. Weights of the two windows sharing a seam sum to 1."""
    begin = left[0] if left else offset
    end = right[1] if right else offset + piece.shape[-1]
    weight = torch.ones(end - begin, device=out.device)
    for span, rising in ((left, True), (right, False)):
        if span and span[1] > span[0]:
            n = span[1] - span[0]
            ramp = (torch.arange(n, device=out.device, dtype=torch.float32) + 0.5) / n
            weight[span[0] - begin:span[1] - begin] = ramp if rising else 1.0 - ramp
    out[:, begin:end] += piece[:, begin - offset:end - offset] * weight


class AudioCodec(nn.Module):
    """Waveform <-> latent through the Music DCAE and the vocoder (both kept in their own dtype)."""

    def __init__(self, dcae: nn.Module, vocoder: nn.Module):
        super().__init__()
        self.dcae = dcae
        self.vocoder = vocoder
        self.mel_hop = vocoder.config.hop_length
        self.frame_samples = self.mel_hop * dcae.downsample       # 4096
        self.sample_rate = vocoder.config.sampling_rate
        self.channels = dcae.config.in_channels                  # 2: stereo as image channels

    @property
    def device(self) -> torch.device:
        return self.dcae.encoder.conv_in.weight.device

    # -----------------------------------------------------------------------------------------
    # decode
    # -----------------------------------------------------------------------------------------
    def _mel_to_wave(self, mel_norm: torch.Tensor, check=None) -> torch.Tensor:
        """Normalised mel [1, channels, n_mels, F] from the DCAE -> waveform [channels, F * hop],
        float32."""
        mel = mel_norm.float() * 0.5 + 0.5
        mel = mel * (MEL_MAX - MEL_MIN) + MEL_MIN
        return self.vocoder.decode(mel[0], check).squeeze(1).float()   # both channels as a batch of 2

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, chunk_frames: int | None = _DEFAULT,
               overlap_frames: int = DEFAULT_OVERLAP_FRAMES, on_progress: ProgressFn | None = None,
               check: Callable[[], None] | None = None) -> torch.Tensor:
        """latent [B, 8, 16, T] -> waveform [B, 2, T * 4096], float32, on the latent's device.

        chunk_frames: window length in latent frames (default: default_window_frames); None
        decodes in one piece.
        on_progress(done, total) is called after every window of every item, check() also inside
        a window, after every block of the DCAE and the vocoder (a long window takes a while); an
        exception raised by either (e.g. an interrupt) stops the decode and propagates."""
        if latent.ndim != 4 or latent.shape[-1] == 0:
            raise ValueError(f"expected a latent [B, 8, 16, T >= 1], got shape {tuple(latent.shape)}")
        decoder, dtype = self.dcae.decoder, self.dcae.dtype
        chunk = default_window_frames(self.device, dtype) if chunk_frames is _DEFAULT else chunk_frames
        batch, frames = latent.shape[0], latent.shape[-1]
        windows = plan_windows(frames, chunk, overlap_frames)
        seams = seam_spans(windows, overlap_frames // 4, self.frame_samples)
        total, done = batch * len(windows), 0
        out = torch.zeros(batch, self.channels, frames * self.frame_samples, device=self.device)
        for b in range(batch):
            z = latent[b:b + 1].to(self.device).float() / LATENT_SCALE + LATENT_SHIFT
            z = z.to(dtype)
            if len(windows) == 1:
                out[b] = self._mel_to_wave(decoder(z, check), check)
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
                continue
            features = decoder.latent_part(z, chunk=min(chunk, LATENT_PIECE_FRAMES))
            for k, (start, end) in enumerate(windows):
                piece = self._mel_to_wave(decoder.local_part(features[..., start:end], check), check)
                add_faded(out[b], piece, start * self.frame_samples,
                                seams[k - 1] if k > 0 else None, seams[k] if k < len(seams) else None)
                del piece
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        return out.to(latent.device)

    # -----------------------------------------------------------------------------------------
    # encode
    # -----------------------------------------------------------------------------------------
    def _normalise(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel in ~[MEL_MIN, MEL_MAX] -> ~[-1, 1], as the DCAE was trained."""
        m = (log_mel - MEL_MIN) / (MEL_MAX - MEL_MIN)
        return (m - 0.5) / 0.5

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, chunk_frames: int | None = _DEFAULT,
               overlap_frames: int = DEFAULT_OVERLAP_FRAMES, on_progress: ProgressFn | None = None,
               check: Callable[[], None] | None = None) -> torch.Tensor:
        """waveform [B, 2, S] at 44.1 kHz (mono [B, 1, S] is duplicated) -> latent
        [B, 8, 16, ceil(S / 4096)], float32, on the waveform's device. Windowing, progress and
        check as in decode: the activations are those of one window whatever the length; what
        grows with the length is the input and the latent-resolution features (64 KiB per frame
        at the released width)."""
        if waveform.ndim != 3 or waveform.shape[1] not in (1, self.channels):
            raise ValueError(f"expected a waveform [B, {self.channels}, samples], got shape {tuple(waveform.shape)}")
        chunk = default_window_frames(self.device, self.dcae.dtype) if chunk_frames is _DEFAULT else chunk_frames
        wave = waveform.to(self.device).float()
        if wave.shape[1] != self.channels:
            wave = wave.expand(-1, self.channels, -1)
        remainder = wave.shape[-1] % self.frame_samples
        if remainder or wave.shape[-1] == 0:
            wave = torch.nn.functional.pad(wave, (0, self.frame_samples - remainder))
        frames = wave.shape[-1] // self.frame_samples
        windows = plan_windows(frames, chunk, overlap_frames)
        mel_per_frame = self.dcae.downsample
        encoder, dtype, front = self.dcae.encoder, self.dcae.dtype, self.vocoder.mel_transform
        total, done = wave.shape[0] * len(windows), 0
        latents = []
        for b in range(wave.shape[0]):
            if len(windows) == 1:
                z = encoder(self._normalise(self.vocoder.mel(wave[b]))[None].to(dtype), check)
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
            else:
                padded = front.pad(wave[b])
                cuts = [0] + [(windows[k + 1][0] + windows[k][1]) // 2 for k in range(len(windows) - 1)] + [frames]
                parts = []
                for k, (start, end) in enumerate(windows):
                    lo, hi = front.frame_span(start * mel_per_frame, end * mel_per_frame)
                    mel = self._normalise(front.from_padded(padded[:, lo:hi]))[None].to(dtype)
                    features = encoder.local_part(mel, check)
                    parts.append(features[..., cuts[k] - start:cuts[k + 1] - start])
                    done += 1
                    if on_progress is not None:
                        on_progress(done, total)
                z = encoder.latent_part(torch.cat(parts, dim=-1), chunk=min(chunk, LATENT_PIECE_FRAMES))
            latents.append((z.float() - LATENT_SHIFT) * LATENT_SCALE)
        return torch.cat(latents).to(waveform.device)
