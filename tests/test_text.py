"""Text side of ACE-Step: the UMT5 tag encoder, the tag tokenizer, the lyric tokenizer and the
lyric vocabulary lookup, checked against ComfyUI's own implementations (and, for the English
number words, against the original pipeline's num2words-based cleaners)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from acestep_core.config import ConfigError, TextEncoderConfig
from acestep_core.models.text_encoder import ERG_TAG_QUERY_SCALES, TextEncoder, infer_text_encoder_config
from acestep_core.text.lyrics import STRUCTURE_TAGS, SUPPORTED_LANGUAGES, LyricTokenizer
from acestep_core.text.normalize import clean_english, spell_cardinal, spell_float, spell_ordinal
from acestep_core.text.tags import TagTokenizer, make_tiny_spiece_model
from acestep_core.text.vocab import LyricVocabNotFoundError, find_lyric_vocab

TINY = TextEncoderConfig(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def _comfy_t5(config_dict: dict, device):
    import comfy.ops
    import comfy.text_encoders.t5
    return comfy.text_encoders.t5.T5(config_dict, torch.float32, device, comfy.ops.disable_weight_init)


def _comfy_config(config: TextEncoderConfig) -> dict:
    return {"num_layers": config.num_layers, "d_model": config.d_model, "d_kv": config.d_kv,
            "num_heads": config.num_heads, "d_ff": config.d_ff, "dense_act_fn": "gelu_pytorch_tanh",
            "is_gated_act": True, "model_type": "umt5", "vocab_size": config.vocab_size}


def _random_state(module: torch.nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        if value.ndim == 2 and "relative_attention_bias" not in key and key != "shared.weight":
            out[key] = torch.randn(value.shape, generator=g) / value.shape[1] ** 0.5
        elif value.ndim == 1:  # RMS norm weights
            out[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=g)
        else:  # embedding table and relative position biases: O(1) entries
            out[key] = torch.randn(value.shape, generator=g)
    return out


# ---------------------------------------------------------------------------------------------
# UMT5 text encoder
# ---------------------------------------------------------------------------------------------
def test_released_keys_and_shapes_match_comfyui(comfyui_dir):
    import comfy.text_encoders.ace

    ours = TextEncoder(TextEncoderConfig.released(), device="meta")
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}

    comfy_json = json.loads((comfyui_dir / "comfy/text_encoders/umt5_config_base.json").read_text())
    t5_shapes = {k: tuple(v.shape) for k, v in _comfy_t5(comfy_json, "meta").state_dict().items()}
    # The full CLIP object ComfyUI loads the single file into: keys under umt5base.transformer.
    ace = comfy.text_encoders.ace.AceT5Model(device="meta", dtype=torch.float32)
    prefix = "umt5base.transformer."
    ace_shapes = {k[len(prefix):]: tuple(v.shape) for k, v in ace.state_dict().items() if k.startswith(prefix)}

    assert ours_shapes == t5_shapes == ace_shapes
    assert len(ours_shapes) == 122
    assert sum(torch.Size(s).numel() for s in ours_shapes.values()) == 281_861_376
    assert "encoder.embed_tokens.weight" not in ours_shapes
    # The shapes alone give back the released config.
    assert infer_text_encoder_config(ours_shapes) == TextEncoderConfig.released()


def test_infer_config_from_tiny_shapes_and_errors():
    shapes = {k: tuple(v.shape) for k, v in TextEncoder(TINY, device="meta").state_dict().items()}
    assert infer_text_encoder_config(shapes) == TINY
    # Shapes override a config.json; fields shapes cannot show (max distance) come from the json.
    from_json = infer_text_encoder_config(shapes, {"d_model": 768, "num_layers": 12,
                                                   "relative_attention_max_distance": 64})
    assert from_json.d_model == 32 and from_json.num_layers == 2 and from_json.relative_attention_max_distance == 64
    for missing in ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                    "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"):
        broken = {k: v for k, v in shapes.items() if k != missing}
        with pytest.raises(ConfigError, match="lack"):
            infer_text_encoder_config(broken)


def test_meta_build_and_assign_load():
    source = TextEncoder(TINY)
    state = {k: v.clone() for k, v in _random_state(source).items()}
    source.load_state_dict(state, strict=True)

    loaded = TextEncoder(TINY, device="meta")
    loaded.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
    assert not any(p.is_meta for p in loaded.parameters())
    ids = torch.tensor([[5, 17, 42, 1]])
    assert torch.equal(source(ids), loaded(ids))
    # One embedding table: changing shared.weight changes the output (nothing else holds a copy).
    with torch.no_grad():
        loaded.shared.weight[17] += 1.0
    assert not torch.allclose(source(ids), loaded(ids))
    # A transformers-written file may also carry the tied alias; it is accepted and dropped.
    with_alias = dict(state, **{"encoder.embed_tokens.weight": state["shared.weight"]})
    again = TextEncoder(TINY, device="meta")
    again.load_state_dict(with_alias, strict=True, assign=True)
    assert torch.equal(source(ids), again(ids))
    # dtype argument
    assert TextEncoder(TINY, dtype=torch.bfloat16).shared.weight.dtype == torch.bfloat16


def test_forward_matches_comfyui_with_mask_and_query_scaling():
    ours = TextEncoder(TINY)
    state = _random_state(ours, seed=1)
    ours.load_state_dict(state, strict=True)
    theirs = _comfy_t5(_comfy_config(TINY), "cpu")
    theirs.load_state_dict(state, strict=True)

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, TINY.vocab_size, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0  # second prompt is shorter: padded keys must be ignored
    ids[1, 5:] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = theirs(ids, attention_mask=mask)[0]
        # The padded row must not depend on what sits in the padding.
        ids_other_pad = ids.clone()
        ids_other_pad[1, 5:] = 7
        a_other = ours(ids_other_pad, attention_mask=mask)
    diff = (a - b).abs().max().item()
    pad_diff = (a[1, :5] - a_other[1, :5]).abs().max().item()
    print(f"\nUMT5 tiny vs ComfyUI T5: max|Δ| = {diff:.3e} (output max |x| = {a.abs().max():.2f}); "
          f"padding-content sensitivity {pad_diff:.3e}")
    assert a.shape == (2, 9, TINY.d_model)
    assert diff <= 1e-4
    assert pad_diff <= 1e-5

    # Query scaling (ERG for tags) == the original's forward hook on SelfAttention.q, applied to
    # ComfyUI's model; hooks are removed afterwards.
    scales = {0: 0.01, 1: 0.5}
    handles = [theirs.encoder.block[i].layer[0].SelfAttention.q.register_forward_hook(
        lambda m, inp, out, s=s: out * s) for i, s in scales.items()]
    with torch.no_grad():
        b_scaled = theirs(ids, attention_mask=mask)[0]
        a_scaled = ours.encode(ids, attention_mask=mask, query_scale_blocks=scales)
        a_after = ours(ids, attention_mask=mask)
    for h in handles:
        h.remove()
    scaled_diff = (a_scaled - b_scaled).abs().max().item()
    effect = (a_scaled - a).abs().max().item()
    print(f"query-scaled: max|Δ| vs ComfyUI+hooks = {scaled_diff:.3e}; change from scaling = {effect:.3f}")
    assert scaled_diff <= 1e-4
    assert effect > 1e-2
    assert torch.equal(a_after, a)
    assert ERG_TAG_QUERY_SCALES == {8: 0.01, 9: 0.01}
    with pytest.raises(IndexError):
        ours.encode(ids, query_scale_blocks={5: 0.1})


# ---------------------------------------------------------------------------------------------
# Tag tokenizer
# ---------------------------------------------------------------------------------------------
TAG_STRINGS = ["pop, piano, female vocals, 120 bpm", "Dreamy synthwave, 1985, warm analog pads",
               "", "rock", "  lead   guitar  ", "jazz; lofi - chill: ÄÖ ü ñ"]


@pytest.fixture(scope="module")
def tiny_spiece() -> bytes:
    return make_tiny_spiece_model(384)


def test_tiny_spiece_model_is_deterministic(tiny_spiece):
    import sentencepiece
    assert make_tiny_spiece_model(384) == tiny_spiece
    sp = sentencepiece.SentencePieceProcessor(model_proto=tiny_spiece)
    assert sp.get_piece_size() == 384
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)


def test_tag_tokenizer_matches_comfyui(tiny_spiece):
    from comfy.text_encoders.ace import UMT5BaseTokenizer
    from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer

    ours = TagTokenizer(tiny_spiece)
    theirs = SPieceTokenizer(tiny_spiece)
    stored = torch.frombuffer(bytearray(tiny_spiece), dtype=torch.uint8)  # as in the single file
    full = UMT5BaseTokenizer(tokenizer_data={"spiece_model": stored})
    for text in TAG_STRINGS:
        ids = ours.encode(text)
        assert ids[-1] == 1 and ids.count(1) == 1
        assert ids == ours.encode(text) == TagTokenizer(stored).encode(text)
        assert ids == theirs(text)["input_ids"]
        assert ids == [t[0] for t in full.tokenize_with_weights(text)[0]]
    assert ours.encode("") == [1]
    assert ours.encode_with_mask("rock") == (ours.encode("rock"), [1] * len(ours.encode("rock")))


def test_tag_tokenizer_truncates_like_the_original(tiny_spiece):
    long_text = ", ".join(["ambient piano", "dark synth"] * 150)
    untruncated = TagTokenizer(tiny_spiece, max_length=None).encode(long_text)
    from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer
    assert untruncated == SPieceTokenizer(tiny_spiece)(long_text)["input_ids"]  # ComfyUI: no limit
    assert len(untruncated) > 256
    ids = TagTokenizer(tiny_spiece).encode(long_text)
    assert len(ids) == 256 and ids[-1] == 1 and ids[:255] == untruncated[:255]
    counted, cut = TagTokenizer(tiny_spiece).encode_counted(long_text)
    assert counted == ids and cut == len(untruncated) - 256
    assert TagTokenizer(tiny_spiece).encode_counted("pop, piano") == (TagTokenizer(tiny_spiece).encode("pop, piano"), 0)
    warning = TagTokenizer(tiny_spiece).cut_warning(cut, len(untruncated))
    assert f"{len(untruncated)} tokens, the model reads at most 256" in warning and f"last {cut} are ignored" in warning


def _tokenizer_json_from_spiece(spiece: bytes, path: Path) -> Path:
    """A Hugging Face tokenizer.json with the same unigram pieces (what an original umt5-base
    folder may ship instead of spiece.model)."""
    import sentencepiece
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    sp = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.save(str(path))
    return path


def test_tag_tokenizer_from_tokenizer_json(tiny_spiece, tmp_path):
    path = _tokenizer_json_from_spiece(tiny_spiece, tmp_path / "tokenizer.json")
    from_json = TagTokenizer.from_tokenizer_json(path)
    from_spiece = TagTokenizer(tiny_spiece)
    for text in ["pop, piano, female vocals, 120 bpm", "Dreamy synthwave, warm analog pads", "rock", ""]:
        assert from_json.encode(text) == from_spiece.encode(text)
    assert from_json.serialized_model() is None and from_spiece.serialized_model() == tiny_spiece


# ---------------------------------------------------------------------------------------------
# Lyric tokenizer
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab_path(comfyui_dir) -> Path:
    return comfyui_dir / "comfy/text_encoders/ace_lyrics_tokenizer/vocab.json"


@pytest.fixture(scope="module")
def lyric_tok(vocab_path) -> LyricTokenizer:
    # Detection pinned to English: these tests compare with ComfyUI's tokenizer, which has no
    # language detection (the original's detection is tested in test_lyrics_multilingual.py).
    return LyricTokenizer(vocab_path, detect_language=lambda line: "en")


@pytest.fixture(scope="module")
def comfy_bpe(vocab_path):
    from comfy.text_encoders.ace import VoiceBpeTokenizer
    return VoiceBpeTokenizer(str(vocab_path))


# English lyrics without numbers and parentheses: ComfyUI's cleaners agree with the original here.
ENGLISH_LYRICS = """[Verse]
Walking down the empty street tonight
I can hear the city breathing, Mr. Moon & me
  Every   light is fading, every sound is gone

[Chorus]
Hold on, hold on! Don't let "go" of my hand
We're dancing @ the edge of time: 50% fear, all heart

[Bridge]
[Outro]
goodbye"""


def test_lyrics_match_comfyui_on_english(lyric_tok, comfy_bpe):
    ours = lyric_tok.encode(ENGLISH_LYRICS)
    # ComfyUI's number words differ from num2words in general, but "50" is "fifty" in both.
    assert ours == comfy_bpe(ENGLISH_LYRICS)["input_ids"]
    assert ours[0] == 261 and ours[-1] == 2
    n_lines = len(ENGLISH_LYRICS.split("\n"))
    assert sum(1 for line in lyric_tok.tokenize_lines(ENGLISH_LYRICS) if not line.ids) == 2
    assert len(lyric_tok.tokenize_lines(ENGLISH_LYRICS)) == n_lines
    ids, mask = lyric_tok.encode_with_mask(ENGLISH_LYRICS)
    assert ids == ours and mask == [1] * len(ours)


def test_structure_tags_are_single_ids(lyric_tok, comfy_bpe):
    for tag, token_id in STRUCTURE_TAGS.items():
        written = tag[:2].upper() + tag[2:]  # "[Verse]": tags are matched after lowercasing
        ids = lyric_tok.encode(written)
        assert ids == [261, 259, token_id, 2] == comfy_bpe(written)["input_ids"]
    assert sorted(STRUCTURE_TAGS.values()) == list(range(6681, 6693))
    # "[Verse 1]" is cleaned to "[verse one]", which is not an added token: BPE splits it.
    line = lyric_tok.tokenize_line("[Verse 1]")
    assert line.structure and line.language == "en" and line.text == "[verse one]"
    assert 6683 not in line.ids and line.ids[0] == 259
    assert lyric_tok.encode("[Verse 1]") == comfy_bpe("[Verse 1]")["input_ids"]
    # Text after a structure tag is still cleaned as English.
    assert lyric_tok.tokenize_line("[chorus] Hello").ids[:3] == (259, 6684, 2)


def test_explicit_language_tags(lyric_tok, comfy_bpe):
    for text in ["[fr]bonjour tout le monde", "[FR]Bonjour tout le monde", "[de]guten morgen, welt",
                 "[zh]ni hao", "[xx]unknown tag stays english"]:
        assert lyric_tok.encode(text) == comfy_bpe(text)["input_ids"], text
    fr = lyric_tok.tokenize_line("[fr]Bonjour tout le monde")
    assert fr.language == "fr" and fr.explicit_language and fr.ids[0] == SUPPORTED_LANGUAGES["fr"] == 262
    assert lyric_tok.tokenize_line("[zh]ni hao").ids[0] == 5023  # the [zh-cn] token
    assert lyric_tok.tokenize_line("[xx]unknown").ids[0] == 259
    # A space after the tag is not kept (ComfyUI keeps it for non-English lines: "[fr][SPACE]...").
    assert lyric_tok.encode("[fr] bonjour") == lyric_tok.encode("[fr]bonjour")
    # A structure line after a language tag is still English.
    assert lyric_tok.tokenize_line("[fr][Chorus]").ids == (259, 6684)
    # Pluggable detection: only lines without an explicit tag use it; unsupported codes -> en.
    german = LyricTokenizer(lyric_tok.vocab_path, detect_language=lambda line: "de")
    assert german.tokenize_line("hallo welt").ids[0] == 260
    assert german.tokenize_line("[fr]salut").ids[0] == 262
    assert LyricTokenizer(lyric_tok.vocab_path, detect_language=lambda l: "xx").tokenize_line("hi").ids[0] == 259
    seen = []
    custom = LyricTokenizer(lyric_tok.vocab_path, normalize=lambda text, lang: seen.append((text, lang)) or text)
    custom.encode("[fr]Salut\nHello")
    assert seen == [("Salut", "fr"), ("Hello", "en")]


def test_parentheses_are_kept(lyric_tok, comfy_bpe):
    from comfy.text_encoders.ace import LyricsTokenizer

    text = "Oh baby (ooh ooh) stay with me\n(la la la)"
    ours = lyric_tok.encode(text)
    assert ours == comfy_bpe(text)["input_ids"]  # ComfyUI's BPE step itself keeps them...
    paren_ids = {lyric_tok.bpe.token_to_id("("), lyric_tok.bpe.token_to_id(")")}
    assert paren_ids <= set(ours)
    # ...but ComfyUI's node path runs the prompt-weight parser first, which removes them.
    via_node = [t[0] for t in LyricsTokenizer().tokenize_with_weights(text)[0]]
    assert not paren_ids & set(via_node) and via_node != ours
    assert "(ooh ooh)" in lyric_tok.decode(ours)


def test_empty_lyrics_and_lines(lyric_tok, comfy_bpe):
    assert lyric_tok.encode_with_mask("") == ([0], [0])
    assert lyric_tok.encode("") == [0]
    assert lyric_tok.encode("\n") == [261, 2, 2] == comfy_bpe("\n")["input_ids"]
    assert lyric_tok.encode("   ") == [261, 2]
    hello = lyric_tok.encode("hello")  # [261, <line ids>, 2]
    assert lyric_tok.encode("hello\n\nhello") == [261] + hello[1:] + [2] + hello[1:]


def test_english_cleaners_match_the_original():
    # Expected strings: the original's multilingual_cleaners(text, "en") with num2words 0.5.14
    # (the version its requirements.txt pins), run once and recorded here.
    cases = {
        "In 12.5 seconds.": "in twelve point five seconds.",
        "There were 50 soldiers.": "there were fifty soldiers.",
        "This is a 1st test": "this is a first test",
        "That will be $20 sir.": "that will be twenty dollars sir.",
        "That will be 20.15€ sir.": "that will be twenty euro, fifteen cents sir.",
        "That's 100,000.5.": "that's one hundred thousand point five.",
        "1234 roads, 101 nights": "one thousand, two hundred and thirty-four roads, one hundred and one nights",
        "the 21st night of the 100th year": "the twenty-first night of the one hundredth year",
        "£5 for 1 ride": "five pounds sterling for one ride",
        "$1 and 1€": "one dollar and one euro",
        "12.0 and 12.50 and 0.05": "twelve and twelve point five and zero point zero five",
        'Mr. Smith & Dr. "Who" @ 5% #1': "mister smith and doctor who at five percent hash one",
        "It's 2:30 on the 3rd": "it's two:thirty on the third",
        "1,000,000 ways": "one million ways",
        "$1.2.3 then £2": "dollar one point two.three then two pounds sterling",
    }
    for text, expected in cases.items():
        assert clean_english(text) == expected, text
    # A number too long for num2words leaves the whole line's digits unexpanded, as the original.
    assert clean_english("1" * 310 + " and 5") == "1" * 310 + " and 5"


def test_number_speller():
    assert spell_cardinal(0) == "zero"
    assert spell_cardinal(15) == "fifteen"
    assert spell_cardinal(42) == "forty-two"
    assert spell_cardinal(100) == "one hundred"
    assert spell_cardinal(1001) == "one thousand and one"
    assert spell_cardinal(1100) == "one thousand, one hundred"
    assert spell_cardinal(2_000_005) == "two million and five"
    assert spell_cardinal(123_456_789) == ("one hundred and twenty-three million, four hundred and "
                                           "fifty-six thousand, seven hundred and eighty-nine")
    assert spell_cardinal(10 ** 33) == "one decillion"
    assert spell_cardinal(10 ** 303) == "one centillion"
    with pytest.raises(OverflowError):
        spell_cardinal(10 ** 306)
    assert [spell_ordinal(n) for n in (1, 2, 3, 12, 20, 21, 40, 100, 1000)] == [
        "first", "second", "third", "twelfth", "twentieth", "twenty-first", "fortieth",
        "one hundredth", "one thousandth"]
    assert spell_float(3.14159) == "three point one four one five nine"
    assert spell_float(0.00001) == "zero point zero zero zero zero one"


def test_lyric_line_records(lyric_tok):
    lines = lyric_tok.tokenize_lines('[Chorus]\n\nI said "hi" to 2 friends')
    assert [l.language for l in lines] == ["en", None, "en"]
    assert lines[0].structure and not lines[2].structure
    assert lines[2].text == "i said hi to two friends"
    assert lines[2].ids == tuple(lyric_tok.encode_text(lines[2].text, "en"))
    assert lyric_tok.decode(lyric_tok.encode('I said "hi"')) == "[START][en]i said hi "


def test_wrong_vocab_is_rejected(tmp_path, tiny_spiece):
    bad = tmp_path / "vocab.json"
    bad.write_text(json.dumps({"hello": 0, "world": 1}))  # not a tokenizers file at all
    with pytest.raises(ValueError, match="cannot read the lyric vocabulary"):
        LyricTokenizer(bad)
    other = _tokenizer_json_from_spiece(tiny_spiece, tmp_path / "tokenizer.json")  # another tokenizer
    with pytest.raises(ValueError, match="not ACE-Step's lyric vocabulary"):
        LyricTokenizer(other)
    with pytest.raises(ValueError, match="SentencePiece"):
        TagTokenizer(b"definitely not a model proto")


# ---------------------------------------------------------------------------------------------
# Finding vocab.json
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_explicit_vocab(monkeypatch):
    monkeypatch.delenv("ACESTEP_LYRIC_VOCAB", raising=False)


def test_vocab_next_to_checkpoint_wins(tmp_path, vocab_path, no_explicit_vocab):
    # A single-file checkpoint with vocab.json beside it.
    (tmp_path / "ace_step_v1_3.5b.safetensors").write_bytes(b"")
    shutil.copy(vocab_path, tmp_path / "vocab.json")
    assert find_lyric_vocab(tmp_path / "ace_step_v1_3.5b.safetensors") == tmp_path / "vocab.json"
    # An original-layout folder with lyrics_utils/vocab.json.
    folder = tmp_path / "ACE-Step-v1-3.5B"
    (folder / "lyrics_utils").mkdir(parents=True)
    shutil.copy(vocab_path, folder / "lyrics_utils" / "vocab.json")
    assert find_lyric_vocab(folder) == folder / "lyrics_utils" / "vocab.json"
    # Without a checkpoint path: ComfyUI's copy (the comfy package is importable in tests).
    assert find_lyric_vocab().resolve() == vocab_path.resolve()


def test_unrelated_vocab_json_is_skipped(tmp_path, vocab_path, no_explicit_vocab):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.json").write_text(json.dumps({"a</w>": 0, "b</w>": 1}))  # a CLIP-style vocab
    assert find_lyric_vocab(tmp_path / "model.safetensors").resolve() == vocab_path.resolve()


def test_vocab_via_comfyui_dir_and_missing_everywhere(tmp_path, comfyui_dir, monkeypatch, no_explicit_vocab):
    monkeypatch.setitem(sys.modules, "comfy", None)  # "import comfy" now fails; find_spec -> None
    with pytest.raises(ImportError):
        import comfy  # noqa: F401
    monkeypatch.setenv("COMFYUI_DIR", str(comfyui_dir))
    assert find_lyric_vocab(tmp_path / "x.safetensors") == comfyui_dir / "comfy/text_encoders/ace_lyrics_tokenizer/vocab.json"

    empty = tmp_path / "empty_comfyui"
    empty.mkdir()
    monkeypatch.setenv("COMFYUI_DIR", str(empty))
    with pytest.raises(LyricVocabNotFoundError) as err:
        find_lyric_vocab(tmp_path / "x.safetensors")
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert str(tmp_path / "vocab.json") in message and str(empty) in message
    assert "ace_lyrics_tokenizer/vocab.json" in message and "lyrics_utils/vocab.json" in message
