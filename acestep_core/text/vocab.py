"""Finding the lyric BPE vocabulary (``vocab.json``) on disk.

The lyric tokenizer's vocabulary is not inside any checkpoint: the original repository ships it
as ``acestep/models/lyrics_utils/vocab.json`` and ComfyUI as
``comfy/text_encoders/ace_lyrics_tokenizer/vocab.json`` (the same 364,005-byte file). We never
download it and never keep a copy in this repository; ``find_lyric_vocab`` looks, in order:

  1. ``$ACESTEP_LYRIC_VOCAB`` (a path to the file), when set;
  2. next to the checkpoint: in the checkpoint's folder (a file's parent, or the checkpoint folder
     itself for the original layout), as ``vocab.json``, ``lyrics_utils/vocab.json``,
     ``ace_lyrics_tokenizer/vocab.json`` or ``ace_step_transformer/vocab.json``;
  3. in ComfyUI: the importable ``comfy`` package (found without importing it), then
     ``$COMFYUI_DIR``.

Every candidate is checked to be ACE-Step's vocabulary (a Hugging Face ``tokenizers`` file whose
added tokens include ``[START]`` at 261 and ``[SPACE]`` at 2), so an unrelated ``vocab.json``
(a CLIP vocabulary, say) next to a checkpoint is skipped rather than used.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

VOCAB_FILE_NAME = "vocab.json"
COMFYUI_VOCAB_SUBPATH = Path("text_encoders") / "ace_lyrics_tokenizer" / VOCAB_FILE_NAME
# Sub-folders of a checkpoint folder that may hold the vocabulary.
_NEXT_TO_CHECKPOINT = (Path(VOCAB_FILE_NAME), Path("lyrics_utils") / VOCAB_FILE_NAME,
                       Path("ace_lyrics_tokenizer") / VOCAB_FILE_NAME,
                       Path("ace_step_transformer") / VOCAB_FILE_NAME)
# Tokens and ids that identify ACE-Step's lyric vocabulary.
_SIGNATURE_TOKENS = {"[STOP]": 0, "[SPACE]": 2, "[en]": 259, "[START]": 261}


class LyricVocabNotFoundError(FileNotFoundError):
    """ACE-Step's lyric vocabulary (vocab.json) is nowhere we look. The message says where to put it."""


def is_lyric_vocab(path) -> bool:
    """True when ``path`` is ACE-Step's lyric BPE vocabulary (checked by its added tokens)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        added = {token["content"]: token["id"] for token in data.get("added_tokens", [])}
        return data.get("model", {}).get("type") == "BPE" and all(
            added.get(content) == token_id for content, token_id in _SIGNATURE_TOKENS.items())
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def _checkpoint_candidates(checkpoint_path) -> list[Path]:
    if checkpoint_path is None:
        return []
    path = Path(os.fspath(checkpoint_path)).expanduser()
    folder = path if path.is_dir() else path.parent
    return [folder / sub for sub in _NEXT_TO_CHECKPOINT]


def _comfyui_candidates() -> list[Path]:
    out = []
    try:
        # find_spec locates the package without running ComfyUI's import-time code.
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            out.append(Path(location) / COMFYUI_VOCAB_SUBPATH)
    comfyui_dir = os.environ.get("COMFYUI_DIR")
    if comfyui_dir:
        out.append(Path(comfyui_dir).expanduser() / "comfy" / COMFYUI_VOCAB_SUBPATH)
    return out


def lyric_vocab_candidates(checkpoint_path=None) -> list[Path]:
    """Every place ``find_lyric_vocab`` looks, in order."""
    out = []
    explicit = os.environ.get("ACESTEP_LYRIC_VOCAB")
    if explicit:
        out.append(Path(explicit).expanduser())
    out += _checkpoint_candidates(checkpoint_path)
    out += _comfyui_candidates()
    return out


def find_lyric_vocab(checkpoint_path=None) -> Path:
    """Path of ACE-Step's lyric ``vocab.json``; raise LyricVocabNotFoundError when absent."""
    candidates = lyric_vocab_candidates(checkpoint_path)
    rejected = []
    for candidate in candidates:
        if candidate.is_file():
            if is_lyric_vocab(candidate):
                return candidate
            rejected.append(candidate)
    looked = "\n  ".join(str(c) for c in candidates) or "(nowhere: no checkpoint path, no ComfyUI found)"
    note = ""
    if rejected:
        note = ("\nThese files exist but are not ACE-Step's lyric vocabulary: "
                + ", ".join(str(r) for r in rejected) + ".")
    where = (Path(os.fspath(checkpoint_path)).expanduser() if checkpoint_path is not None else None)
    target = (f"next to the checkpoint, as {(where if where.is_dir() else where.parent) / VOCAB_FILE_NAME}"
              if where is not None else "next to your checkpoint, as vocab.json")
    raise LyricVocabNotFoundError(
        "ACE-Step's lyric vocabulary (vocab.json, 364,005 bytes) was not found. Looked in:\n  "
        f"{looked}{note}\nIt ships with ComfyUI (comfy/text_encoders/ace_lyrics_tokenizer/vocab.json) and with "
        "the original ACE-Step repository (acestep/models/lyrics_utils/vocab.json). Copy that file "
        f"{target}, set COMFYUI_DIR to a ComfyUI folder, or set ACESTEP_LYRIC_VOCAB to the file's path.")


__all__ = ["find_lyric_vocab", "is_lyric_vocab", "lyric_vocab_candidates", "LyricVocabNotFoundError"]
