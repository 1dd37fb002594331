"""TextEncodeAceStepAudio, for ComfyUI versions that do not have it built in.

Same id, inputs, defaults, output and behaviour as ComfyUI's own node (comfy_extras/nodes_ace.py
in 0.3.75). Where the built-in exists ComfyUI keeps it and ignores this one; both work with the
CLIP from LoadAceStepCheckpoint and with ComfyUI's own ACE-Step CLIP.
"""
from __future__ import annotations


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


NODE_CLASS_MAPPINGS = {"TextEncodeAceStepAudio": TextEncodeAceStepAudio}
# No display name: the built-in has none either, and a mapping here would rename the built-in.
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
