"""ACE-Step 1.5's text side cuts the caption and lyric prompts where the official pipeline does
(ACE-Step-1.5 acestep/handler.py: max_length 256 / 2048 with truncation), so a huge lyric never
reaches the quadratic lyric encoder at full length."""
import logging

import torch

from acestep_core.ace15 import text_encoder as te


class OneTokenPerCharacter:
    """Stands in for the Qwen tokenizer: one id per character, so lengths are easy to reason about."""

    def __call__(self, text):
        return [ord(c) % 1000 + 1 for c in text]


class RecordingEncoder:
    hidden = 4

    def __init__(self):
        self.lengths = []

    def encode_caption(self, ids, mask):
        assert ids.shape == mask.shape
        self.lengths.append(("caption", ids.shape[1]))
        return torch.zeros(1, ids.shape[1], self.hidden)

    def embed_lyrics(self, ids):
        self.lengths.append(("lyrics", ids.shape[1]))
        return torch.zeros(1, ids.shape[1], self.hidden)


def test_short_prompts_are_kept_whole():
    encoder, tokenizer = RecordingEncoder(), OneTokenPerCharacter()
    cond = te.encode_text(encoder, tokenizer, "pop", "la la")
    assert cond.caption_ids == tokenizer(te.caption_prompt("pop"))
    assert cond.lyric_ids == tokenizer(te.lyrics_prompt("la la"))
    assert cond.warnings == ()


def test_100kb_of_lyrics_and_long_tags_are_cut_at_the_official_limits(caplog):
    encoder, tokenizer = RecordingEncoder(), OneTokenPerCharacter()
    lyrics = ("[verse]\n" + "a long line of words to sing\n" * 3600)[:100_000]
    tags = "rock, " * 200
    with caplog.at_level(logging.WARNING, logger="acestep_core"):
        cond = te.encode_text(encoder, tokenizer, tags, lyrics)
    assert encoder.lengths == [("caption", te.CAPTION_TOKEN_LIMIT), ("lyrics", te.LYRIC_TOKEN_LIMIT)]
    assert cond.lyric_ids == tokenizer(te.lyrics_prompt(lyrics))[:te.LYRIC_TOKEN_LIMIT]
    assert cond.caption_ids == tokenizer(te.caption_prompt(tags))[:te.CAPTION_TOKEN_LIMIT]
    assert len(cond.warnings) == 2
    assert "The lyrics: " in cond.warnings[1] and "at most 2048" in cond.warnings[1]
    assert "caption" in cond.warnings[0] and "at most 256" in cond.warnings[0]
    assert [r.getMessage() for r in caplog.records] == list(cond.warnings)
