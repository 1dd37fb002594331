"""Fixed facts of ACE-Step v1's audio representation, shared by every component.

These are properties of the trained model (its mel front end and latent normalisation), not
sizes of a network, so they are not read from checkpoints.
"""
SAMPLE_RATE = 44100          # Hz; the model only knows 44.1 kHz stereo
AUDIO_CHANNELS = 2
MEL_HOP = 512                # waveform samples per mel frame
LATENT_DOWNSAMPLE = 8        # DCAE compression along mel time (and mel bins)
SAMPLES_PER_FRAME = MEL_HOP * LATENT_DOWNSAMPLE  # 4096 waveform samples per latent frame
LATENT_CHANNELS = 8
LATENT_HEIGHT = 16           # 128 mel bins / 8

# The DCAE latent is normalised as z = (z_raw - LATENT_SHIFT) * LATENT_SCALE.
LATENT_SHIFT = -1.9091
LATENT_SCALE = 0.1786
# Log-mel values are mapped from [MEL_MIN, MEL_MAX] to [-1, 1] before the DCAE.
MEL_MIN = -11.0
MEL_MAX = 3.0

MAX_SECONDS = 240.0          # the longest song the original app generates or extends to


def _frames_exact(seconds: float) -> float:
    return seconds * SAMPLE_RATE / MEL_HOP / LATENT_DOWNSAMPLE


def frames_for_seconds(seconds: float) -> int:
    """Latent frames for a duration, truncating toward zero exactly as the original app and
    ComfyUI's EmptyAceStepLatentAudio do: int(seconds * 44100 / 512 / 8)."""
    return int(_frames_exact(seconds))


def seconds_to_frame(seconds: float) -> int:
    """The latent frame containing time ``seconds``: floor(seconds * 44100 / 512 / 8).

    Equal to ``frames_for_seconds`` for seconds >= 0 (same expression, same float rounding);
    negative times are floored too, so frame(x) + k == frame(x + k frames) on both sides of 0.
    """
    import math
    seconds = float(seconds)
    if not math.isfinite(seconds):
        raise ValueError(f"time must be a finite number of seconds (got {seconds})")
    return math.floor(_frames_exact(seconds))


def samples_for_frames(frames: int) -> int:
    """Waveform samples the decoder produces for ``frames`` latent frames."""
    return int(frames) * SAMPLES_PER_FRAME


def seconds_for_frames(frames: int) -> float:
    return samples_for_frames(frames) / SAMPLE_RATE
