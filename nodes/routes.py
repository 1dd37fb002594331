"""HTTP routes of comfyui-acestep for its frontend extension (web/js/).

    POST /acestep/lyrics/preview   {"lyrics": str, "ckpt_name"?: str, "limit"?: int}
        -> what the lyric encoder will read, line by line: language (detected or from a "[xx]"
           tag), the normalised / romanized text, token counts, and the total against the
           trained limit. Computed by acestep_core.text.lyrics.LyricTokenizer, the same code the
           CLIP runs, with the same vocab.json (acestep_core.text.vocab.find_lyric_vocab).

    GET  /acestep/audio/peaks?filename=&subfolder=&type=input|output|temp&bins=
        -> {"duration", "sample_rate", "channels", "peaks": [[min, max], ...]} of an audio file
           that ComfyUI serves through /view, for drawing its waveform.

Imported by nodes/__init__.py once the server exists; without a PromptServer (our in-process
tests, the CLI) it registers nothing.
"""
from __future__ import annotations

import asyncio
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from .common import log
from .lyric_tokenizers import lyric_tokenizer, tokenizer_lock

MAX_LYRICS_CHARS = 200_000      # a preview request larger than this is refused (413)
DEFAULT_PEAK_BINS = 1000
MAX_PEAK_BINS = 8000
AUDIO_TYPES = ("input", "output", "temp")

# ---------------------------------------------------------------------------------------------
# Lyrics preview
# ---------------------------------------------------------------------------------------------
def lyrics_preview(lyrics: str, ckpt_name: str | None = None, limit: int | None = None) -> dict:
    """JSON-ready preview of ``lyrics`` (see the module docstring)."""
    from acestep_core.text.lyrics import LYRIC_TOKEN_LIMIT

    tokenizer = lyric_tokenizer(ckpt_name)
    with tokenizer_lock:
        preview = tokenizer.preview(lyrics, limit=int(limit or LYRIC_TOKEN_LIMIT))
    lines = [{
        "source": line.source,
        "language": line.language,
        "detected": line.detected,
        "explicit_language": line.explicit_language,
        "structure": line.structure,
        "text": line.text,
        "tokens": line.token_count,
        "unknown": line.unknown_count,
        "unknown_characters": tokenizer.unknown_characters(line.text) if line.unknown_count else [],
        "tag": line.leading_tag,
        "unknown_tag": line.unknown_tag,
        "note": line.note,
    } for line in preview.lines]
    return {"lines": lines, "total_tokens": preview.total_tokens, "limit": preview.limit,
            "cut_tokens": preview.cut_tokens, "first_cut_line": preview.first_cut_line,
            "warnings": list(preview.warnings), "vocab": os.path.basename(tokenizer.vocab_path)}


# ---------------------------------------------------------------------------------------------
# Waveform peaks
# ---------------------------------------------------------------------------------------------
class AudioFileError(ValueError):
    """The request names no readable audio file (the message says why)."""


def resolve_audio_path(filename: str, subfolder: str = "", kind: str = "input") -> Path:
    """The file /view would serve for these query values; refuses anything outside the folder."""
    import folder_paths

    if kind not in AUDIO_TYPES:
        raise AudioFileError(f"type must be one of {', '.join(AUDIO_TYPES)} (got {kind!r})")
    if not filename:
        raise AudioFileError("no filename given")
    root = folder_paths.get_directory_by_type(kind)
    if root is None:
        raise AudioFileError(f"ComfyUI has no {kind} folder")
    root = Path(root).resolve()
    path = (root / subfolder / filename).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise AudioFileError("the path leaves the folder")
    if not path.is_file():
        raise AudioFileError(f"{kind}/{Path(subfolder, filename).as_posix()} does not exist")
    return path


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """(samples [S, C] float32, sample rate): soundfile for WAV/FLAC/OGG, PyAV (what ComfyUI's
    LoadAudio uses) for everything else."""
    try:
        import soundfile
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except Exception:
        pass
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path.name} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            chunks = []
            for frame in container.decode(stream):
                array = frame.to_ndarray()            # planar [C, n] or packed [1, n * C]
                channels = len(frame.layout.channels)
                if frame.format.is_planar:
                    array = array.reshape(channels, -1)
                else:
                    array = array.reshape(-1, channels).T
                if np.issubdtype(array.dtype, np.integer):
                    array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
                chunks.append(array.astype(np.float32))
    except AudioFileError:
        raise
    except Exception as err:
        raise AudioFileError(f"{path.name} could not be decoded ({type(err).__name__}: {err})") from None
    if not chunks:
        raise AudioFileError(f"{path.name} holds no audio samples")
    return np.concatenate(chunks, axis=1).T, int(rate)


def waveform_peaks(samples: np.ndarray, bins: int) -> list[list[float]]:
    """[min, max] of the channel mean in each of ``bins`` equal slices of the samples."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    n = mono.shape[0]
    bins = max(1, min(bins, n))
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    # Every slice is non-empty because bins <= n; reduceat takes min/max from each left edge.
    lows = np.minimum.reduceat(mono, edges[:-1])
    highs = np.maximum.reduceat(mono, edges[:-1])
    return np.round(np.stack([lows, highs], axis=1).astype(np.float64), 4).tolist()


@lru_cache(maxsize=32)
def _peaks_cached(path: str, mtime_ns: int, size: int, bins: int) -> dict:
    samples, rate = decode_audio(Path(path))
    if samples.shape[0] == 0:
        raise AudioFileError(f"{Path(path).name} holds no audio samples")
    return {"duration": samples.shape[0] / rate, "sample_rate": rate, "channels": int(samples.shape[1]),
            "samples": int(samples.shape[0]), "peaks": waveform_peaks(samples, bins)}


def audio_peaks(filename: str, subfolder: str = "", kind: str = "input", bins: int = DEFAULT_PEAK_BINS) -> dict:
    path = resolve_audio_path(filename, subfolder, kind)
    stat = path.stat()
    bins = max(16, min(int(bins), MAX_PEAK_BINS))
    return dict(_peaks_cached(str(path), stat.st_mtime_ns, stat.st_size, bins), filename=filename,
                subfolder=subfolder, type=kind)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
def register(routes) -> None:
    from aiohttp import web

    @routes.post("/acestep/lyrics/preview")
    async def _lyrics_preview(request):
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": "the body must be JSON: {\"lyrics\": ...}"}, status=400)
        lyrics = body.get("lyrics") if isinstance(body, dict) else None
        if not isinstance(lyrics, str):
            return web.json_response({"error": "\"lyrics\" must be a string"}, status=400)
        if len(lyrics) > MAX_LYRICS_CHARS:
            return web.json_response({"error": f"lyrics longer than {MAX_LYRICS_CHARS} characters"}, status=413)
        ckpt_name = body.get("ckpt_name") if isinstance(body.get("ckpt_name"), str) else None
        limit = body.get("limit") if isinstance(body.get("limit"), int) and body.get("limit") > 0 else None
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, lyrics_preview, lyrics, ckpt_name, limit)
        except FileNotFoundError as err:  # no vocab.json anywhere
            return web.json_response({"error": str(err)}, status=404)
        except Exception as err:
            log.exception("comfyui-acestep: lyrics preview failed")
            return web.json_response({"error": f"{type(err).__name__}: {err}"}, status=500)
        return web.json_response(result)

    @routes.get("/acestep/audio/peaks")
    async def _audio_peaks(request):
        query = request.rel_url.query
        try:
            bins = int(query.get("bins", DEFAULT_PEAK_BINS))
        except ValueError:
            return web.json_response({"error": "bins must be an integer"}, status=400)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, audio_peaks, query.get("filename", ""),
                                                 query.get("subfolder", ""), query.get("type", "input"), bins)
        except AudioFileError as err:
            status = 404 if "does not exist" in str(err) else 400
            return web.json_response({"error": str(err)}, status=status)
        except Exception as err:
            log.exception("comfyui-acestep: waveform peaks failed")
            return web.json_response({"error": f"{type(err).__name__}: {err}"}, status=500)
        return web.json_response(result)


def _register_with_server() -> bool:
    # ComfyUI's main.py has imported its `server` module before it loads custom nodes; importing
    # it here ourselves would drag the whole server into in-process tests and the CLI.
    server = sys.modules.get("server")
    prompt_server = getattr(server, "PromptServer", None)
    instance = getattr(prompt_server, "instance", None)
    if instance is None:
        return False
    register(instance.routes)
    return True


ROUTES_REGISTERED = _register_with_server()

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
