"""The style-tag ("prompt") tokenizer: UMT5's SentencePiece model.

ACE-Step reads the tag string ("pop, piano, female vocals, 120 bpm") with the UMT5-base
tokenizer as one plain string: no template, no start token, the end-of-sequence id 1 appended.

Two places hold the tokenizer:
  * ComfyUI's single file stores the SentencePiece model proto as a uint8 tensor
    ``text_encoders.spiece_model``; the original ``umt5-base/`` folder may have ``spiece.model``
    (the same proto as a file). Both are read with the ``sentencepiece`` package.
  * The original folder may instead only have a Hugging Face ``tokenizer.json`` (what the original
    pipeline's ``AutoTokenizer`` reads); ``TagTokenizer.from_tokenizer_json`` uses the
    ``tokenizers`` package for it.

Length: the original pipeline tokenizes with ``truncation=True, max_length=256``, i.e. at most
255 pieces plus the end id. ComfyUI does not truncate at all. We truncate like the original by
default (``max_length=256``); ``max_length=None`` gives ComfyUI's behaviour.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

# T5 / UMT5 special ids (the real umt5-base model and the tiny test model agree on these).
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
DEFAULT_MAX_LENGTH = 256


def _as_bytes(data) -> bytes:
    """SentencePiece proto from bytes-like data, a numpy array or a uint8 torch tensor."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "detach"):  # torch tensor, as stored in the single-file checkpoint
        data = data.detach().cpu().numpy()
    if hasattr(data, "tobytes"):
        return data.tobytes()
    raise TypeError(f"expected SentencePiece model bytes (or a uint8 tensor), got {type(data).__name__}")


class TagTokenizer:
    """Tags string -> UMT5 token ids (pieces + end id 1).

    ``encode`` truncates to ``max_length`` ids including the end id (256 in the original
    pipeline; ComfyUI never truncates: pass ``max_length=None`` for that)."""

    def __init__(self, spiece_model, max_length: int | None = DEFAULT_MAX_LENGTH):
        import sentencepiece

        proto = _as_bytes(spiece_model)
        if not proto:
            raise ValueError("empty SentencePiece model: the checkpoint's tokenizer data is missing or damaged")
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(proto)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError depending on the version
            raise ValueError(f"not a SentencePiece model ({err}); the checkpoint's tokenizer data is damaged") from err
        self._proto = proto
        # Pieces only: the end id is appended by encode(), so both backends behave the same.
        self._pieces: Callable[[str], list[int]] = lambda text: list(processor.encode(text))
        self.eos_id = processor.eos_id() if processor.eos_id() >= 0 else EOS_ID
        self.vocab_size = processor.get_piece_size()
        self.max_length = max_length

    @classmethod
    def from_file(cls, path, max_length: int | None = DEFAULT_MAX_LENGTH) -> "TagTokenizer":
        """From a ``spiece.model`` file."""
        return cls(Path(path).read_bytes(), max_length=max_length)

    @classmethod
    def from_tokenizer_json(cls, path, max_length: int | None = DEFAULT_MAX_LENGTH) -> "TagTokenizer":
        """From a Hugging Face ``tokenizer.json`` (the original pipeline's AutoTokenizer input).
        Its own post-processor is not used: the end id is appended by ``encode`` as for spiece."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.fspath(path))
        self = cls.__new__(cls)
        self._proto = None
        self._pieces = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
        eos = tokenizer.token_to_id("</s>")
        self.eos_id = EOS_ID if eos is None else eos
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.max_length = max_length
        return self

    def encode(self, text: str) -> list[int]:
        """Token ids of one tags string: SentencePiece pieces, then the end id 1."""
        return self.encode_counted(text)[0]

    def encode_counted(self, text: str) -> tuple[list[int], int]:
        """(ids as ``encode`` gives them, how many pieces the ``max_length`` cut dropped)."""
        ids = self._pieces(text)
        total = len(ids) + 1
        if self.max_length is not None:
            ids = ids[: self.max_length - 1]  # keep room for the end id, as HF truncation does
        return ids + [self.eos_id], total - len(ids) - 1

    def cut_warning(self, cut: int, total: int) -> str:
        """What to tell the user when ``cut`` of the tags' ``total`` tokens were dropped."""
        return (f"tags too long: {total} tokens, the model reads at most {self.max_length} (the original "
                f"pipeline's tokenizer limit): the last {cut} are ignored. Shorten the tags.")

    def encode_with_mask(self, text: str) -> tuple[list[int], list[int]]:
        """(ids, mask); a single string is never padded, so the mask is all ones."""
        ids = self.encode(text)
        return ids, [1] * len(ids)

    def serialized_model(self) -> bytes | None:
        """The SentencePiece proto (None when built from tokenizer.json)."""
        return self._proto


# ---------------------------------------------------------------------------------------------
# A tiny SentencePiece model for test checkpoints
# ---------------------------------------------------------------------------------------------
# Words of the kind that appear in ACE-Step tag prompts. Only used to train the tiny model.
_TAG_WORDS = """
pop rock jazz blues funk soul disco house techno trance ambient chill lofi hiphop rap trap drill
grime dubstep drum bass reggae ska punk metal grunge indie folk country bluegrass gospel choir
classical orchestral cinematic epic soundtrack opera baroque romantic minimal experimental
electronic synthwave vaporwave chiptune edm dance club garage breakbeat jungle afrobeat latin
salsa bossa nova samba tango flamenco kpop jpop cpop ballad acoustic unplugged live studio
piano guitar electric bass violin cello viola strings brass trumpet trombone saxophone flute
clarinet oboe harp organ synth synthesizer pad arpeggio lead pluck bell marimba vibraphone
xylophone ukulele banjo mandolin accordion harmonica sitar koto erhu guzheng shamisen drums
kick snare hihat cymbal percussion claps shaker tambourine congas bongos timpani beatbox
male female vocals vocal voice singer duet harmony backing whisper falsetto choir rapper
happy sad melancholic dark bright uplifting energetic calm relaxing dreamy nostalgic romantic
aggressive angry peaceful mysterious epic emotional hopeful lonely groovy funky smooth warm
fast slow medium tempo bpm upbeat downtempo midtempo heavy soft loud quiet atmospheric lush
reverb delay distorted clean crunchy fuzzy vintage modern retro analog digital warm wide mono
stereo major minor key chord progression melody hook verse chorus bridge intro outro solo
summer winter night morning rain ocean city road love heart dream fire light shadow star
""".split()

_TAG_NUMBERS = "60 70 80 90 100 110 120 128 130 140 150 160 174 1970s 1980s 1990s 2000s".split()


def _tag_corpus() -> list[str]:
    """Deterministic comma-separated tag lines built from the word list (no randomness)."""
    words = _TAG_WORDS
    n = len(words)
    lines = []
    for i in range(n):
        # Three strides through the list give varied but reproducible combinations.
        picks = [words[i], words[(i * 7 + 3) % n], words[(i * 13 + 5) % n], words[(i * 29 + 11) % n]]
        number = _TAG_NUMBERS[i % len(_TAG_NUMBERS)]
        lines.append(", ".join(picks) + f", {number} bpm")
        lines.append(" ".join(picks).capitalize() + ".")
    return lines


def make_tiny_spiece_model(vocab_size: int = 384) -> bytes:
    """Train a small, deterministic SentencePiece (unigram) model in memory and return its
    serialized proto. Special ids follow T5: pad 0, eos 1, unk 2, no bos. For tiny test
    checkpoints only; it tokenizes like the real one structurally, not in its vocabulary."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_tag_corpus()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        normalization_rule_name="identity",  # no NFKC table: keeps the proto a few kB
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        num_threads=1,                 # one thread: the EM steps are then reproducible
        input_sentence_size=0,         # use every line, no sampling
        shuffle_input_sentence=False,
        minloglevel=2,                 # silence the trainer's progress log
    )
    return model.getvalue()


__all__ = ["TagTokenizer", "make_tiny_spiece_model", "PAD_ID", "EOS_ID", "UNK_ID", "DEFAULT_MAX_LENGTH"]
