"""The lyric tokenizers the pack's previews use (the editor's HTTP route and the
AceStepLyricsPreview node): one per vocabulary file, built once and shared."""
from __future__ import annotations

import os
import threading
from functools import lru_cache

# Tokenizers are built once per vocab file; LyricTokenizer is not documented as thread-safe
# (it keeps an lru_cache of lines), so calls into it are serialised.
tokenizer_lock = threading.Lock()


@lru_cache(maxsize=4)
def _tokenizer_for(vocab_path: str):
    from acestep_core.text.lyrics import LyricTokenizer
    return LyricTokenizer(vocab_path)


def _checkpoint_path(ckpt_name: str | None) -> str | None:
    """Full path of a checkpoint name as the loader widgets list it (its vocab.json, if any,
    lies next to it); None when unknown."""
    if not ckpt_name:
        return None
    try:
        import folder_paths
    except ImportError:
        return None
    for folder in ("checkpoints", "diffusion_models"):
        try:
            path = folder_paths.get_full_path(folder, ckpt_name)
        except Exception:  # an unknown folder name in older ComfyUI versions
            path = None
        if path:
            return path
    return None


def lyric_tokenizer(ckpt_name: str | None = None):
    """The LyricTokenizer the CLIP of ``ckpt_name`` would use (the vocab.json next to it, else
    ComfyUI's own copy)."""
    from acestep_core.text.vocab import find_lyric_vocab
    return _tokenizer_for(os.fspath(find_lyric_vocab(_checkpoint_path(ckpt_name))))
