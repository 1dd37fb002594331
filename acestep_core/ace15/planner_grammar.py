"""What the ACE-Step 1.5 planner (the 5 Hz language model) reads and may write, as text and as tokens.

* The prompts, character for character as ComfyUI 0.20.1 renders them
  (``comfy/text_encoders/ace15.py``, ``ACE15Tokenizer.tokenize_with_weights``: the chat template with
  the metadata "thinking" block, the unconditional prompt with an empty one) and, for the metadata
  pass that ComfyUI does not have, as the official ``acestep/llm_inference.py`` renders them
  (``build_formatted_prompt``: caption and lyrics, unconditional = lyrics only).
* The metadata grammar of the official constrained decoder
  (``acestep/constrained_logits_processor.py``, ``MetadataConstrainedLogitsProcessor``): the fields
  in the order bpm, duration, keyscale, language, timesignature (caption and genres skipped, as
  its ``skip_caption`` / ``skip_genres`` options do), each ``name: value`` line with the value from
  the valid set (``acestep/constants.py``), then ``</think>``. The valid lines are tokenised once
  and kept as token tries, so decoding only ever chooses among the tokens that continue a valid
  line, and a field the user set is injected token for token.
* The audio-code vocabulary: code ``c`` (0..63999, one FSQ index of the DiT's tokenizer) is token
  ``151669 + c``, the mapping ComfyUI uses (``sample_manual_loop_no_classes``: ``audio_start_id``
  151669, ``audio_end_id`` 215669, ``token - audio_start_id``) and the official tokenizer's
  ``<|audio_code_N|>`` tokens follow.
* The Qwen tokenizer, built from the byte-level BPE files every ComfyUI ships
  (``comfy/text_encoders/qwen25_tokenizer/vocab.json`` + ``merges.txt``) or read from an official
  ``acestep-5Hz-lm-*`` folder's ``tokenizer.json``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

# --- token ids ---------------------------------------------------------------------------------
TEXT_VOCAB_SIZE = 151669          # the Qwen3 vocabulary incl. its added tokens; audio codes follow
AUDIO_CODE_OFFSET = 151669        # token id of audio code 0 (ComfyUI ace15.py audio_start_id)
NUM_AUDIO_CODES = 64000           # FSQ levels [8, 8, 8, 5, 5, 5] -> 64000 codes (0..63999)
AUDIO_CODE_END = AUDIO_CODE_OFFSET + NUM_AUDIO_CODES   # 215669, ComfyUI's audio_end_id
PAD_ID = 151643                   # <|endoftext|>, ComfyUI's left-padding token for the shorter prompt
IM_END_ID = 151645                # <|im_end|>, the end-of-sequence token of the chat format
THINK_ID = 151667                 # <think>
THINK_END_ID = 151668             # </think>
CODES_PER_SECOND = 5

# The added tokens of the Qwen3 tokenizer, ids 151643..151668 in this order (the 0.20.1
# qwen25_tokenizer/tokenizer_config.json; ComfyUI 0.3.75 ships the Qwen2.5 names for the last
# four ids, so they are set here rather than read from whatever file is at hand).
QWEN3_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
# The pre-tokeniser split of the Qwen2/Qwen3 byte-level BPE (digits one by one).
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# --- valid metadata (acestep/constants.py) -----------------------------------------------------
BPM_RANGE = (30, 300)
DURATION_RANGE = (10, 600)
VALID_TIME_SIGNATURES = ("2", "3", "4", "6")
VALID_LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi",
    "hr", "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl",
    "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi",
    "yue", "zh", "unknown")
VALID_KEYSCALES = tuple(f"{note}{accidental} {mode}" for note in "ABCDEFG"
                        for accidental in ("", "#", "b", "\u266f", "\u266d") for mode in ("major", "minor"))
METADATA_FIELDS = ("bpm", "duration", "keyscale", "language", "timesignature")
"""The fields the metadata pass writes, in the order of the official grammar (alphabetical, as
the CoT YAML is sorted)."""

SYSTEM_PROMPT = "# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"


def codes_for_duration(duration: float) -> int:
    """Audio codes a song of ``duration`` seconds takes: 5 per second of the duration rounded up
    (ComfyUI ``ACE15Tokenizer.tokenize_with_weights``: ``math.ceil(duration) * 5``)."""
    return math.ceil(float(duration)) * CODES_PER_SECOND


# --- metadata values ---------------------------------------------------------------------------
def normalize_metadata(metadata: dict | None) -> dict:
    """The user's metadata with unset fields removed and values in the forms the prompt uses:
    bpm int, duration number, keyscale / language str, timesignature without a trailing ``/4``.
    ``None``, ``""``, ``"auto"``, ``"unspecified"`` and ``"N/A"`` mean "let the planner write it"."""
    out = {}
    for key, value in (metadata or {}).items():
        if key not in METADATA_FIELDS:
            raise ValueError(f"unknown metadata field {key!r}; the planner knows {', '.join(METADATA_FIELDS)}")
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "unspecified", "n/a")):
            continue
        if key == "bpm":
            value = int(round(float(value)))
        elif key == "duration":
            value = float(str(value).split(None, 1)[0]) if isinstance(value, str) else float(value)
            if not value > 0:
                raise ValueError(f"duration must be positive, got {value}")
            value = int(value) if value == int(value) else value
        elif key == "timesignature":
            value = str(value).strip()
            if value.endswith("/4"):
                value = value[:-2]
        else:
            value = str(value).strip()
        out[key] = value
    return out


def _yaml_scalar(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, float) else str(value)
    try:
        import yaml  # ComfyUI and the official code format the CoT with PyYAML
        return yaml.dump(value, allow_unicode=True).strip().removesuffix("\n...").strip()
    except ImportError:  # pragma: no cover - PyYAML ships with ComfyUI
        return str(value)


def metas_to_cot(metadata: dict, keys=("bpm", "duration", "keyscale", "timesignature")) -> str:
    """The assistant's thinking block: ``<think>\\n{yaml}\\n</think>`` with the given fields sorted,
    digit strings as numbers (ComfyUI ``ACE15Tokenizer._metas_to_cot``; the official
    ``_format_metadata_as_cot`` also writes ``language``, which ``keys`` adds after a metadata pass)."""
    items = {}
    for key in sorted(keys):
        if key not in metadata:
            continue
        value = metadata[key]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = "\n".join(f"{key}: {_yaml_scalar(value)}" for key, value in items.items())
    return f"<think>\n{body}\n</think>"


def chat_prompt(caption: str, lyrics: str, assistant: str | None) -> str:
    """The chat-format prompt: system instruction, user turn with caption and lyrics, then either a
    closed assistant turn holding ``assistant`` (ComfyUI's ``lm_template``) or, with
    ``assistant=None``, an open one for the model to write the thinking block into."""
    head = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n# Caption\n{caption}\n\n# Lyric\n{lyrics}\n<|im_end|>\n<|im_start|>assistant\n")
    return head if assistant is None else f"{head}{assistant}\n\n<|im_end|>\n"


def codes_prompts(caption: str, lyrics: str, metadata: dict, cot_keys=("bpm", "duration", "keyscale", "timesignature"),
                  caption_negative: str | None = None, lyrics_negative: str | None = None) -> tuple[str, str]:
    """(conditional, unconditional) prompt texts of the audio-code pass, exactly ComfyUI 0.20.1's
    ``lm_prompt`` / ``lm_prompt_negative``: caption stripped, lyrics stripped, the duration in the
    thinking block rounded up; the unconditional one has the same caption and lyrics (unless
    negatives are given) and an empty thinking block."""
    caption = caption.strip()
    meta = dict(metadata)
    if "duration" in meta:
        meta["duration"] = math.ceil(float(meta["duration"]))
    negative_caption = caption if caption_negative is None else caption_negative.strip()
    negative_lyrics = lyrics if lyrics_negative is None else lyrics_negative
    return (chat_prompt(caption, lyrics.strip(), metas_to_cot(meta, cot_keys)),
            chat_prompt(negative_caption, negative_lyrics.strip(), "<think>\n\n</think>"))


def metadata_prompts(caption: str, lyrics: str, caption_negative: str | None = None) -> tuple[str, str]:
    """(conditional, unconditional) prompt texts of the metadata pass (official
    ``build_formatted_prompt``, phase "cot"): an open assistant turn; the unconditional user turn
    holds only the lyrics, or the negative caption and the lyrics when one is given."""
    caption = caption.strip()
    lyrics = lyrics.strip()
    head = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n"
    cond = f"{head}# Caption\n{caption}\n\n# Lyric\n{lyrics}\n{tail}"
    if caption_negative:
        uncond = f"{head}# Caption\n{caption_negative.strip()}\n\n# Lyric\n{lyrics}\n{tail}"
    else:
        uncond = f"{head}# Lyric\n{lyrics}\n{tail}"
    return cond, uncond


# --- tokenizer ---------------------------------------------------------------------------------
class PlannerTokenizer:
    """The Qwen3 byte-level BPE (``tokenizers`` library): ``encode(text) -> ids`` with the chat
    tokens (``<|im_start|>``, ``<think>`` ...) as single ids and no tokens added around the text,
    the way ComfyUI's ``Qwen3Tokenizer`` (``has_start_token=False``) tokenises a prompt."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def from_bpe_files(cls, vocab_json, merges_txt) -> "PlannerTokenizer":
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
        tok = Tokenizer(models.BPE.from_file(os.fspath(vocab_json), os.fspath(merges_txt)))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        base = tok.get_vocab_size(with_added_tokens=False)
        if base != PAD_ID:
            raise ValueError(f"{vocab_json} holds {base} tokens; the Qwen3 vocabulary has {PAD_ID} before its "
                             "added tokens. Point the planner at ComfyUI's comfy/text_encoders/qwen25_tokenizer "
                             "or an official acestep-5Hz-lm folder.")
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN3_ADDED_TOKENS])
        return cls(tok)

    @classmethod
    def from_tokenizer_json(cls, path) -> "PlannerTokenizer":
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.fspath(path))
        code0 = tok.token_to_id("<|audio_code_0|>")
        if code0 is not None and code0 != AUDIO_CODE_OFFSET:
            raise ValueError(f"{path}: <|audio_code_0|> is token {code0}, not {AUDIO_CODE_OFFSET}; "
                             "this is not an ACE-Step 1.5 planner tokenizer")
        return cls(tok)

    @classmethod
    def load(cls, path) -> "PlannerTokenizer":
        """From a ``tokenizer.json`` (file or folder holding one) or a folder with ``vocab.json`` +
        ``merges.txt`` (ComfyUI's ``qwen25_tokenizer``)."""
        path = Path(path)
        if path.is_file():
            return cls.from_tokenizer_json(path)
        if (path / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(path / "tokenizer.json")
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return cls.from_bpe_files(path / "vocab.json", path / "merges.txt")
        raise FileNotFoundError(f"no Qwen tokenizer at {path}: expected tokenizer.json, or vocab.json and merges.txt")

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        for think in ("<think>", "</think>"):   # a tokenizer without the Qwen3 names would split them
            if think in text and self._tok.token_to_id(think) not in (THINK_ID, THINK_END_ID):
                raise ValueError(f"this tokenizer does not map {think} to the Qwen3 id")
        return ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def comfyui_tokenizer_dir(comfyui_dir=None) -> Path | None:
    """ComfyUI's Qwen tokenizer folder (``comfy/text_encoders/qwen25_tokenizer``), from
    ``comfyui_dir`` or the importable ``comfy`` package; ``None`` if neither has it."""
    candidates = []
    if comfyui_dir is not None:
        candidates.append(Path(comfyui_dir) / "comfy" / "text_encoders" / "qwen25_tokenizer")
    try:
        import comfy  # noqa: F401  (only to find the folder; a namespace package, no __file__)
        candidates += [Path(p) / "text_encoders" / "qwen25_tokenizer" for p in getattr(comfy, "__path__", [])]
    except ImportError:
        pass
    for candidate in candidates:
        if (candidate / "vocab.json").is_file():
            return candidate
    return None


# --- the metadata grammar ----------------------------------------------------------------------
@dataclass
class FieldTrie:
    """Token continuations of one field's ``name: value\\n`` line after the forced ``name:``
    tokens: ``children[node]`` maps a token to the next node; a node in ``values`` ends a line."""
    name: str
    prefix: list[int]
    children: list[dict] = field(default_factory=lambda: [{}])
    values: dict = field(default_factory=dict)
    depth: int = 0

    def add(self, tokens: list[int], value: str) -> None:
        self.depth = max(self.depth, len(tokens))
        node = 0
        for token in tokens:
            nxt = self.children[node].get(token)
            if nxt is None:
                nxt = len(self.children)
                self.children.append({})
                self.children[node][token] = nxt
            node = nxt
        if self.children[node]:
            raise ValueError(f"{self.name}: the tokens of {value!r} are a prefix of another value's")
        self.values[node] = value


def field_values(name: str) -> list[str]:
    if name == "bpm":
        return [str(v) for v in range(BPM_RANGE[0], BPM_RANGE[1] + 1)]
    if name == "duration":
        return [str(v) for v in range(DURATION_RANGE[0], DURATION_RANGE[1] + 1)]
    if name == "keyscale":
        return list(VALID_KEYSCALES)
    if name == "language":
        return list(VALID_LANGUAGES)
    if name == "timesignature":
        return list(VALID_TIME_SIGNATURES)
    raise KeyError(name)


class MetadataGrammar:
    """Token tries of the metadata lines, built once per tokenizer.

    A line's tokens do not depend on the line before it (the pre-tokeniser always splits the
    newline that ends the previous line off on its own), so each ``name: value\\n`` line is
    tokenised alone and the thinking block is the concatenation of its lines."""

    def __init__(self, tokenizer: PlannerTokenizer):
        self.tokenizer = tokenizer
        self.think_open = tokenizer.encode("<think>\n")
        self.think_close = tokenizer.encode("</think>")
        self.fields = {}
        for name in METADATA_FIELDS:
            prefix = tokenizer.encode(f"{name}:")
            trie = FieldTrie(name, prefix)
            for value in field_values(name):
                tokens = tokenizer.encode(f"{name}: {value}\n")
                if tokens[:len(prefix)] != prefix:
                    raise ValueError(f"{name}: the line for {value!r} does not start with the tokens of '{name}:'")
                trie.add(tokens[len(prefix):], value)
            self.fields[name] = trie

    def user_line(self, name: str, value) -> list[int]:
        """The tokens of a line the user set (injected, not sampled)."""
        return self.tokenizer.encode(f"{name}: {_yaml_scalar(value)}\n")
