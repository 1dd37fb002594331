"""TextEncodeAceStepAudio (for ComfyUI versions that do not have it built in) and the lyrics preview.

Same id, inputs, defaults, output and behaviour as ComfyUI's own node (comfy_extras/nodes_ace.py
in 0.3.75). Where the built-in exists ComfyUI keeps it and ignores this one; both work with the
CLIP from LoadAceStepCheckpoint and with ComfyUI's own ACE-Step CLIP.
"""
from __future__ import annotations

from .common import CATEGORY, log


def set_conditioning_values(conditioning, values: dict):
    """Copy of each conditioning entry with ``values`` set in its options dict (what ComfyUI's
    node_helpers.conditioning_set_values does without append)."""
    out = []
    for cond, options in conditioning:
        options = options.copy()
        options.update(values)
        out.append([cond, options])
    return out


class TextEncodeAceStepAudio:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The ACE-Step text encoder (CLIP output of the loader)."}),
                "tags": ("STRING", {
                    "multiline": True, "dynamicPrompts": True,
                    "tooltip": "Comma-separated style tags: genre, instruments, mood, tempo, voice "
                               "(e.g. 'pop, piano, upbeat, female vocal, 120 bpm')."}),
                "lyrics": ("STRING", {
                    "multiline": True, "dynamicPrompts": True,
                    "tooltip": "Lyrics, one line per sung line, with structure tags such as [verse], "
                               "[chorus], [bridge]; [inst] or empty for instrumental music."}),
                "lyrics_strength": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                    "tooltip": "Scale of the lyric conditioning: 1.0 as trained; lower lets the "
                               "tags dominate, 0 ignores the lyrics."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, tags, lyrics, lyrics_strength):
        tokens = clip.tokenize(tags, lyrics=lyrics)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        return (set_conditioning_values(conditioning, {"lyrics_strength": lyrics_strength}),)


class AceStepLyricsPreview:
    """What the model will read: per line the language, the normalised / romanized text and the
    token count, and the total against the limit, before minutes of sampling are spent."""

    @classmethod
    def INPUT_TYPES(cls):
        from acestep_core.text.lyrics import LYRIC_TOKEN_LIMIT
        return {
            "required": {
                "lyrics": ("STRING", {
                    "multiline": True,
                    "tooltip": "The lyrics exactly as given to TextEncodeAceStepAudio; `[xx]` at the "
                               "start of a line (e.g. [ja]) sets its language instead of detection."}),
                "limit": ("INT", {
                    "default": LYRIC_TOKEN_LIMIT, "min": 1, "max": 1_000_000,
                    "tooltip": "Token budget to check against (4096 is the longest lyric sequence the "
                               "model was trained on); lines beyond it are marked."}),
            },
            "optional": {
                "ckpt_name": ("STRING", {
                    "default": "",
                    "tooltip": "Optional checkpoint name whose own vocab.json should be used; empty "
                               "uses the vocabulary ComfyUI ships."}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("preview",)
    OUTPUT_NODE = True
    FUNCTION = "preview"
    CATEGORY = CATEGORY

    def preview(self, lyrics, limit, ckpt_name=""):
        from .lyric_tokenizers import lyric_tokenizer, tokenizer_lock

        with tokenizer_lock:
            result = lyric_tokenizer(ckpt_name or None).preview(lyrics, limit=int(limit))
        table = result.format()
        if result.over_limit:
            log.warning(
                "AceStepLyricsPreview: lyrics use %d tokens, %d over the limit of %d",
                result.total_tokens, result.cut_tokens, result.limit)
        return {"ui": {"text": [table]}, "result": (table,)}


NODE_CLASS_MAPPINGS = {"TextEncodeAceStepAudio": TextEncodeAceStepAudio,
                       "AceStepLyricsPreview": AceStepLyricsPreview}
# No display name: the built-in has none either, and a mapping here would rename the built-in.
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"AceStepLyricsPreview": "ACE-Step Lyrics Preview"}
