"""ACE-Step 1.5's text side: Qwen3-Embedding-0.6B, its tokenizer, and the DiT prompt strings.

What the DiT reads (ComfyUI 0.20.1 ``comfy/text_encoders/ace15.py``, ``ACE15TEModel.encode_token_weights``;
the official ``acestep/handler.py`` does the same with ``AutoModel``):

* the caption prompt -> the encoder's last hidden state after its final norm, [B, S, 1024];
* the lyric prompt -> the raw token embeddings (no transformer layer, no norm), [B, L, 1024].

The prompt strings are those ComfyUI builds for text2music (``ACE15Tokenizer.tokenize_with_weights``,
``_metas_to_cap``), token for token: ComfyUI's templates spell out the ``<|endoftext|>`` that the
official Qwen3-Embedding tokenizer would append. ComfyUI encodes the caption with an attention mask
that is 0 from the first ``<|endoftext|>`` on (``comfy/sd1_clip.py``, ``SDClipModel.process_tokens``,
pad id 151643 used as the end token); :func:`caption_attention_mask` reproduces it.

The network is ``transformers.Qwen3Model`` built from a config we write (never ``from_pretrained``,
no hub access); every size comes from the tensor shapes. The tokenizer files (``vocab.json`` +
``merges.txt`` + ``tokenizer_config.json``, or ``tokenizer.json``) are found at run time by
:func:`find_qwen_tokenizer`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from ..config import ConfigError

ENDOFTEXT_ID = 151643            # <|endoftext|>: ComfyUI's pad / end token for this encoder
ENDOFTEXT = "<|endoftext|>"

# ComfyUI 0.20.1 comfy/text_encoders/ace15.py, ACE15Tokenizer.tokenize_with_weights: the DiT's
# caption and lyric templates (text2music, also used with generate_audio_codes false).
CAPTION_TEMPLATE = ("# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"
                    "# Caption\n{caption}\n\n# Metas\n{metas}\n<|endoftext|>\n<|endoftext|>")
LYRICS_TEMPLATE = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|><|endoftext|>"
DEFAULT_DURATION = 120           # seconds, ComfyUI's default when the node passes none

# The official pipeline tokenizes the caption prompt with ``max_length=256`` and the lyric prompt
# with ``max_length=2048``, ``truncation=True`` (ACE-Step-1.5 ``acestep/handler.py``, the text and
# lyric tokenization before the condition encoder). ComfyUI 0.20.1 does not cut; we cut where the
# official code does, so the lyric encoder's attention (quadratic in length) stays bounded.
CAPTION_TOKEN_LIMIT = 256
LYRIC_TOKEN_LIMIT = 2048

log = logging.getLogger("acestep_core")


# ---------------------------------------------------------------------------------------------
# Prompt strings
# ---------------------------------------------------------------------------------------------
def _meta_value(value) -> str:
    return "N/A" if value is None else str(value)


def metas_text(bpm=None, timesignature=None, keyscale=None, duration=DEFAULT_DURATION) -> str:
    """The ``# Metas`` block (ComfyUI ``ACE15Tokenizer._metas_to_cap``): bpm, time signature
    (a trailing ``/4`` dropped), key and ``ceil(duration)`` seconds; a missing value is ``N/A``,
    a missing duration ``30 seconds``."""
    if isinstance(timesignature, str) and timesignature.endswith("/4"):
        timesignature = timesignature[:-2]
    if duration is None:
        seconds = "30 seconds"
    else:
        if isinstance(duration, str):
            duration = float(duration.split(None, 1)[0])
        seconds = f"{math.ceil(float(duration))} seconds"
    return "\n".join((f"- bpm: {_meta_value(bpm)}", f"- timesignature: {_meta_value(timesignature)}",
                      f"- keyscale: {_meta_value(keyscale)}", f"- duration: {seconds}"))


# The instruction line ComfyUI writes for every prompt (the official app's cover instruction).
DEFAULT_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
_INSTRUCTION_HEADER = "# Instruction\n"


def caption_prompt(tags: str, bpm=None, timesignature=None, keyscale=None, duration=DEFAULT_DURATION,
                   instruction: str | None = None) -> str:
    """The caption prompt the DiT's text branch reads (tags stripped, as ComfyUI does).
    ``instruction``: the task's ``# Instruction`` line (acestep_core.ace15.tasks.task_instruction;
    a ``:`` is appended when missing, as the official app does); None keeps ComfyUI's line."""
    text = CAPTION_TEMPLATE.format(caption=tags.strip(), metas=metas_text(bpm, timesignature, keyscale, duration))
    if instruction is None:
        return text
    instruction = instruction if instruction.endswith(":") else instruction + ":"
    if "\n" in instruction:
        raise ValueError("the instruction is one line of text; it contains a line break")
    head = _INSTRUCTION_HEADER + DEFAULT_INSTRUCTION
    return _INSTRUCTION_HEADER + instruction + text[len(head):]


def lyrics_prompt(lyrics: str, language: str | None = "en") -> str:
    """The lyric prompt (lyrics as given, not stripped; ``language`` None -> empty)."""
    return LYRICS_TEMPLATE.format(language="" if language is None else language, lyrics=lyrics)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
class TokenizerNotFound(FileNotFoundError):
    """No Qwen tokenizer files where we looked; the message lists the places and what to do."""


TOKENIZER_ENV = "ACESTEP_QWEN_TOKENIZER"
HF_TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
COMFY_TOKENIZER_FOLDER = "qwen25_tokenizer"      # ComfyUI ships it in comfy/text_encoders/


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "tokenizer.json").is_file() or
                              ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()
                               and (path / "tokenizer_config.json").is_file()))


def _comfyui_tokenizer_dirs() -> list[Path]:
    """comfy/text_encoders/qwen25_tokenizer of the ComfyUI this process runs in (or COMFYUI_DIR)."""
    found = []
    with contextlib.suppress(Exception):
        import importlib.util
        spec = importlib.util.find_spec("comfy.text_encoders")
        if spec is not None and spec.submodule_search_locations:
            found += [Path(p) / COMFY_TOKENIZER_FOLDER for p in spec.submodule_search_locations]
    if os.environ.get("COMFYUI_DIR"):
        found.append(Path(os.environ["COMFYUI_DIR"]) / "comfy" / "text_encoders" / COMFY_TOKENIZER_FOLDER)
    return found


def tokenizer_candidates(near: Iterable[os.PathLike | str] = ()) -> list[Path]:
    """Where :func:`find_qwen_tokenizer` looks, in order: $ACESTEP_QWEN_TOKENIZER; for each path
    in ``near`` (a checkpoint file or folder): the folder itself, its ``Qwen3-Embedding-0.6B/``,
    and the same next to it (the official Hugging Face download puts that folder beside the DiT
    folder); then the installed ComfyUI's ``comfy/text_encoders/qwen25_tokenizer``."""
    places: list[Path] = []
    if os.environ.get(TOKENIZER_ENV):
        places.append(Path(os.environ[TOKENIZER_ENV]))
    for item in near:
        path = Path(item)
        folder = path if path.is_dir() else path.parent
        for base in (folder, folder.parent):
            places += [base, base / HF_TEXT_ENCODER_FOLDER, base / "tokenizer"]
    places += _comfyui_tokenizer_dirs()
    unique = []
    for p in places:
        if p not in unique:
            unique.append(p)
    return unique


def find_qwen_tokenizer(near: Iterable[os.PathLike | str] = ()) -> Path:
    """The first folder of :func:`tokenizer_candidates` that holds a Qwen tokenizer."""
    places = tokenizer_candidates(near)
    for place in places:
        if _is_tokenizer_dir(place):
            return place
    listed = "\n  ".join(str(p) for p in places) or "(nowhere: no checkpoint path and no ComfyUI)"
    raise TokenizerNotFound(
        "ACE-Step 1.5 needs the Qwen tokenizer of its text encoder (tokenizer.json, or vocab.json + "
        "merges.txt + tokenizer_config.json) and none was found. Looked in:\n  " + listed +
        f"\nPut the Hugging Face folder {HF_TEXT_ENCODER_FOLDER}/ next to the checkpoint, set "
        f"{TOKENIZER_ENV} to a folder with those files, or run inside ComfyUI (it ships "
        f"comfy/text_encoders/{COMFY_TOKENIZER_FOLDER}).")


class QwenTokenizer:
    """Text -> ids as ComfyUI's ``Qwen3Tokenizer`` (``comfy/text_encoders/anima.py``) feeds the
    encoder: no start / end token added, ``\\(`` / ``\\)`` unescaped to ``(`` / ``)``
    (``comfy/sd1_clip.py``, ``escape_important``), text split before each ``embedding:`` word that
    follows a space or newline (``SDTokenizer.tokenize_with_weights``; embedding files are not
    supported, the word stays text), and at least one token (the pad id) for empty text."""

    def __init__(self, folder: os.PathLike | str):
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        if not _is_tokenizer_dir(self.folder):
            raise TokenizerNotFound(f"{self.folder}: not a Qwen tokenizer folder (needs tokenizer.json, or "
                                    "vocab.json + merges.txt + tokenizer_config.json)")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True,
                                                            trust_remote_code=False)
        except Exception as err:
            raise TokenizerNotFound(f"{self.folder}: the tokenizer files cannot be read ({err}). "
                                    "Download them again.") from err
        ids = self._tokenizer(ENDOFTEXT, add_special_tokens=False)["input_ids"]
        if ids != [ENDOFTEXT_ID]:
            raise TokenizerNotFound(f"{self.folder}: not the Qwen tokenizer ACE-Step 1.5 uses "
                                    f"('{ENDOFTEXT}' gives ids {ids[:4]}, expected [{ENDOFTEXT_ID}])")

    def __call__(self, text: str) -> list[int]:
        text = text.replace("\\)", ")").replace("\\(", "(")
        pieces = re.split(" embedding:|\nembedding:", text)
        pieces = [pieces[0]] + ["embedding:" + p for p in pieces[1:]]
        ids: list[int] = []
        for piece in pieces:
            if piece:
                ids += self._tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids or [ENDOFTEXT_ID]


def caption_attention_mask(ids: list[int]) -> list[int]:
    """ComfyUI's mask for the caption pass (``SDClipModel.process_tokens`` with only a pad token
    defined): 1 up to the first ``<|endoftext|>``, 0 from it on; a sequence that starts with pad
    tokens has them masked too (left padding)."""
    mask, ended, left_pad = [], False, False
    for index, token in enumerate(ids):
        if index == 0 and token == ENDOFTEXT_ID:
            left_pad = True
        if ended or (left_pad and token == ENDOFTEXT_ID):
            mask.append(0)
        else:
            mask.append(1)
            left_pad = False
        if not ended and token == ENDOFTEXT_ID and not left_pad:
            mask[-1] = 0
            ended = True
    return mask


# ---------------------------------------------------------------------------------------------
# The encoder network
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Qwen3EncoderConfig:
    """Sizes of the Qwen3 text model; ``released()`` is Qwen3-Embedding-0.6B (ComfyUI 0.20.1
    ``comfy/text_encoders/llama.py``, ``Qwen3_06B_ACE15_Config``)."""

    vocab_size: int = 151669
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768

    @classmethod
    def released(cls) -> "Qwen3EncoderConfig":
        return cls()


def _hf_config(config: Qwen3EncoderConfig):
    import inspect

    from transformers import Qwen3Config

    kwargs = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                  head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, hidden_act="silu",
                  max_position_embeddings=config.max_position_embeddings, attention_bias=False,
                  attention_dropout=0.0, use_sliding_window=False, use_cache=False, tie_word_embeddings=False,
                  pad_token_id=ENDOFTEXT_ID)
    # transformers 5 names the RoPE settings rope_parameters; 4.x takes rope_theta.
    if "rope_parameters" in inspect.signature(Qwen3Config.__init__).parameters:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta}
    else:
        kwargs["rope_theta"] = config.rope_theta
    hf = Qwen3Config(**kwargs)
    hf._attn_implementation = "sdpa"
    return hf


class Qwen3TextEncoder(nn.Module):
    """Qwen3-Embedding: caption ids -> last hidden state; lyric ids -> token embeddings.

    State-dict keys are ``transformers.Qwen3Model``'s (``embed_tokens.weight``,
    ``layers.{i}.self_attn.q_proj.weight``, ..., ``norm.weight``): the split file's keys without
    their ``model.`` prefix."""

    def __init__(self, config: Qwen3EncoderConfig | None = None, dtype=None, device=None, operations=None):
        super().__init__()
        from transformers import Qwen3Model

        # `operations` is accepted for the common model signature; transformers builds its own
        # torch.nn layers (inside ComfyUI the pack casts the loaded weights instead).
        self.config = config or Qwen3EncoderConfig.released()
        self._hf_config = _hf_config(self.config)
        context = torch.device(device) if device is not None else contextlib.nullcontext()
        with context:
            hf_model = Qwen3Model(self._hf_config)
        # The Hugging Face model runs the math; its parts are registered as our own children so
        # the state-dict keys are exactly Qwen3Model's, with no wrapper prefix.
        object.__setattr__(self, "model", hf_model.eval())
        self.embed_tokens = hf_model.embed_tokens
        self.layers = hf_model.layers
        self.norm = hf_model.norm
        self.rotary_emb = hf_model.rotary_emb
        if dtype is not None:
            self.to(dtype=dtype)

    def materialize_buffers(self, device="cpu") -> None:
        """Rebuild the RoPE frequency buffer (in no checkpoint) after a meta-device build."""
        if any(b.is_meta for b in self.rotary_emb.buffers()):
            with torch.device(device):      # the constructor's signature differs across versions
                rotary = type(self.rotary_emb)(self._hf_config)
            self.model.rotary_emb = self.rotary_emb = rotary

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @torch.no_grad()
    def encode_caption(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, S] -> last hidden state after the final norm [B, S, hidden], float32."""
        ids = ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state.float()

    @torch.no_grad()
    def embed_lyrics(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L] -> token embeddings [B, L, hidden], float32 (no layers, no norm)."""
        return self.embed_tokens(ids.to(self.device)).float()


# ---------------------------------------------------------------------------------------------
# Keys and config from shapes
# ---------------------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^layers\.(\d+)\.")
QWEN3_SIGNATURE = "layers.0.self_attn.q_norm.weight"


def canonical_text_encoder_keys(state: Mapping) -> dict:
    """Split file / official folder spellings -> Qwen3Model keys (``model.`` prefix dropped; an
    ``lm_head`` of a causal-LM export dropped: the encoder never uses it)."""
    out = {}
    for key, value in state.items():
        new = key[len("model."):] if key.startswith("model.") else key
        if new.startswith("lm_head."):
            continue
        out[new] = value
    return out


def infer_text_encoder_config(shapes: Mapping[str, tuple], json_config: dict | None = None) -> Qwen3EncoderConfig:
    """Qwen3EncoderConfig from canonical-key shapes: vocab and width from ``embed_tokens``, layers
    from the keys, head size from ``q_norm``, heads from the projections, MLP from ``gate_proj``.
    ``rms_norm_eps`` / ``rope_theta`` come from ``json_config`` when given (a HF config.json),
    else the released values."""
    def need(key: str) -> tuple:
        if key not in shapes:
            raise ConfigError(f"the text encoder weights lack '{key}' (not a Qwen3 text model)")
        return tuple(shapes[key])

    vocab, hidden = need("embed_tokens.weight")
    need("norm.weight")
    layers = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_RE.match(k))})
    if not layers or layers != list(range(len(layers))):
        raise ConfigError(f"the text encoder layers are not numbered 0..n-1 (found {layers[:8]})")
    (head_dim,) = need("layers.0.self_attn.q_norm.weight")
    q_out, _ = need("layers.0.self_attn.q_proj.weight")
    kv_out, _ = need("layers.0.self_attn.k_proj.weight")
    mlp, _ = need("layers.0.mlp.gate_proj.weight")
    if q_out % head_dim or kv_out % head_dim:
        raise ConfigError(f"projection widths {q_out}/{kv_out} are not multiples of the head size {head_dim}")
    json_config = json_config or {}
    released = Qwen3EncoderConfig.released()
    rope = json_config.get("rope_theta") or (json_config.get("rope_parameters") or {}).get("rope_theta")
    return Qwen3EncoderConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), intermediate_size=int(mlp), num_hidden_layers=len(layers),
        num_attention_heads=int(q_out // head_dim), num_key_value_heads=int(kv_out // head_dim),
        head_dim=int(head_dim), rms_norm_eps=float(json_config.get("rms_norm_eps", released.rms_norm_eps)),
        rope_theta=float(rope or released.rope_theta),
        max_position_embeddings=int(json_config.get("max_position_embeddings", released.max_position_embeddings)))


# ---------------------------------------------------------------------------------------------
# Text -> DiT conditioning
# ---------------------------------------------------------------------------------------------
@dataclass
class TextConditioning:
    """What the 1.5 condition encoder takes from the text side (batch of one)."""

    caption: torch.Tensor            # [1, S, hidden] float32, last hidden state
    caption_mask: torch.Tensor       # [1, S] long, ComfyUI's mask (the DiT does not use it)
    lyrics: torch.Tensor             # [1, L, hidden] float32, token embeddings
    caption_ids: list[int]
    lyric_ids: list[int]
    warnings: tuple[str, ...] = ()   # what was cut, for the node and the log


def cut_to_limit(ids: list[int], limit: int, what: str) -> tuple[list[int], str | None]:
    """``ids`` cut to ``limit`` tokens as the official tokenizer call truncates them, and a warning
    that says so (None when nothing was cut)."""
    if len(ids) <= limit:
        return ids, None
    warning = (f"{what}: {len(ids)} tokens; ACE-Step 1.5 reads at most {limit}, so the last "
               f"{len(ids) - limit} were cut (as the official pipeline does). Shorten it to keep them.")
    log.warning(warning)
    return ids[:limit], warning


def encode_text(encoder: Qwen3TextEncoder, tokenizer: QwenTokenizer, tags: str, lyrics: str = "",
                language: str | None = "en", bpm=None, timesignature=None, keyscale=None,
                duration=DEFAULT_DURATION) -> TextConditioning:
    """Tags, lyrics and metadata -> :class:`TextConditioning`, as ComfyUI's
    ``TextEncodeAceStepAudio1.5`` with ``generate_audio_codes`` false computes it."""
    caption_ids, caption_cut = cut_to_limit(
        tokenizer(caption_prompt(tags, bpm, timesignature, keyscale, duration)), CAPTION_TOKEN_LIMIT,
        "The caption (tags and metadata)")
    lyric_ids, lyric_cut = cut_to_limit(tokenizer(lyrics_prompt(lyrics, language)), LYRIC_TOKEN_LIMIT,
                                        "The lyrics")
    mask = torch.tensor([caption_attention_mask(caption_ids)], dtype=torch.long)
    caption = encoder.encode_caption(torch.tensor([caption_ids]), mask)
    lyric = encoder.embed_lyrics(torch.tensor([lyric_ids]))
    warnings = tuple(w for w in (caption_cut, lyric_cut) if w)
    return TextConditioning(caption.cpu(), mask, lyric.cpu(), caption_ids, lyric_ids, warnings)


__all__ = ["Qwen3TextEncoder", "Qwen3EncoderConfig", "QwenTokenizer", "TextConditioning", "TokenizerNotFound",
           "caption_prompt", "lyrics_prompt", "cut_to_limit", "CAPTION_TOKEN_LIMIT", "LYRIC_TOKEN_LIMIT", "metas_text", "caption_attention_mask", "encode_text",
           "find_qwen_tokenizer", "infer_text_encoder_config", "canonical_text_encoder_keys"]
