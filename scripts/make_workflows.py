"""Generate the pack's UI-format workflows (workflows/*.json) with the real ComfyUI frontend.

Each workflow is written here as an API-format prompt (node ids, class types, input values and
links: easy to read and review) plus a layout (where each node sits) and the text of a Note.
The script starts a real ComfyUI server with this pack, opens its frontend in headless
Chromium and, for each workflow:

  1. loads the API prompt with the frontend's own loader (``app.loadApiJson``, what happens
     when a user drops an API-format file on the canvas), which creates the nodes with the
     widgets that the server's node definitions describe and links them;
  2. moves the nodes to their places, adds the Note, and attaches to the checkpoint loader the
     model-download metadata (``properties.models``) that ComfyUI's missing-models dialog reads;
  3. runs the frontend's Export command (menu Workflow > Export) and keeps the file it downloads.

So every file in workflows/ is exactly what ComfyUI's frontend saves for that graph, and
running the script again gives the same files.

    python scripts/make_workflows.py            # (re)write workflows/*.json
    python scripts/make_workflows.py --check    # exit 1 if a file differs from what it would write
    python scripts/make_workflows.py --only text2music --out /tmp/wf

Needs the environment of scripts/setup_env.sh (ComfyUI, playwright, Chromium); the test-suite
harness (scripts/comfyui_harness.py, shared with the tests) starts the server and the browser.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / "workflows"
sys.path.insert(0, str(REPO / "scripts"))
import comfyui_harness as harness  # noqa: E402  (scripts/comfyui_harness.py: ComfyServer, ComfyPage)

REAL_CHECKPOINT = "ace_step_v1_3.5b.safetensors"
REAL_CHECKPOINT_URL = ("https://huggingface.co/Comfy-Org/ACE-Step_ComfyUI_repackaged/resolve/main/"
                       "all_in_one/ace_step_v1_3.5b.safetensors")
INPUT_AUDIO = "input_song.mp3"   # what LoadAudio names in the workflows that change a song
LORA_FILE = "ace_step_v1_chinese_rap_lora.safetensors"   # the RapMachine LoRA, saved under this name
LORA_URL = "https://huggingface.co/ACE-Step/ACE-Step-v1-chinese-rap-LoRA/resolve/main/pytorch_lora_weights.safetensors"

# ComfyUI's own ACE-Step templates (comfyui-workflow-templates, audio_ace_step_1_t2a_song /
# _m2m_editing) sample with 50 Euler steps on the simple schedule, CFG 5, flow shift 5 and
# Reinhard tone mapping of the CFG result: text2music and audio2audio use these values.
STEPS, CFG, SHIFT = 50, 5.0, 5.0
SAMPLER, SCHEDULER = "euler", "simple"
TONEMAP_MULTIPLIER = 1.0
SONG_SECONDS = 120.0
EDIT_DENOISE = 0.3
# The ACE-Step app's own recipe (its Gradio defaults): 60 Euler steps, guidance scale 15 with
# APG, guidance interval, ERG and omega (AceStepGuidance's defaults), flow shift 3 (the model's
# default, so no ModelSamplingSD3). The task workflows and text2music_apg use it.
APP_STEPS, APP_CFG = 60, 15.0
RETAKE_VARIANCE = REPAINT_VARIANCE = 0.2
REPAINT_RANGE = (20.0, 30.0)
EXTEND_SECONDS = (0.0, 30.0)
SEED = 1234

# Viewport of the browser that builds the files.
VIEWPORT = (1600, 1000)
COLUMN_GAP, ROW_GAP = 40, 40

SONG_TAGS = "pop, synth-pop, female vocals, bright piano, punchy drums, warm bass, catchy, uplifting, 118 bpm"
SONG_LYRICS = """[verse]
Streetlights humming in the rain
Every window holds a flame
I keep walking, counting stars
Singing softly to the cars

[chorus]
Turn it up and let the night begin
Open every door and let the music in
Hold on tight, we are flying high
Dancing underneath a neon sky

[verse]
Paper planes across the bay
Carry all we couldn't say
Every heartbeat keeps the time
Every echo finds a rhyme

[chorus]
Turn it up and let the night begin
Open every door and let the music in
Hold on tight, we are flying high
Dancing underneath a neon sky

[bridge]
When the morning comes around
We will still be holding ground

[chorus]
Turn it up and let the night begin
Open every door and let the music in

[outro]
Neon sky, neon sky"""
# The same song with its first verse rewritten (lyric_edit's target).
EDITED_LYRICS = SONG_LYRICS.replace("""Streetlights humming in the rain
Every window holds a flame
I keep walking, counting stars
Singing softly to the cars""", """Summer thunder on the bay
Every color starts to play
I keep running, chasing light
Singing loudly through the night""", 1)
RESTYLE_TAGS = "lo-fi hip hop, mellow, jazzy electric piano, soft drums, vinyl crackle, relaxed, 80 bpm"
REMIX_TAGS = "rock, electric guitar, driving drums, distorted bass, male vocals, energetic, 140 bpm"
RAP_TAGS = "rap, hip hop, male vocals, boom bap, deep bass, punchy drums, confident, 92 bpm"
RAP_LYRICS = """[verse]
Step into the room and the beat drops low
Every single line is a story that I know
Counting every bar like it's money in the bank
Never slowing down, never running on a blank

[chorus]
Keep it moving, keep it real
Every rhythm is the way I feel
Keep it moving, hear the sound
Feet on the floor and the bass pounding"""

CHECKPOINT_NOTE = f"""### Checkpoint
Put the ACE-Step v1 (3.5B) checkpoint in `ComfyUI/models/checkpoints/` and pick it in **Load ACE-Step Checkpoint**:
- [{REAL_CHECKPOINT}]({REAL_CHECKPOINT_URL}) (7.7 GB, Comfy-Org's single file), or
- the original release ([ACE-Step/ACE-Step-v1-3.5B](https://huggingface.co/ACE-Step/ACE-Step-v1-3.5B)): one folder
  holding `ace_step_transformer/`, `music_dcae_f8c8/`, `music_vocoder/` and `umt5-base/`, under
  `models/checkpoints/` or `models/diffusion_models/`.

When the file opens, ComfyUI's **Missing Models** dialog lists `{REAL_CHECKPOINT}` if you do not have it:
**Download** fetches it from the address above, or close the dialog (×) to try the workflow first.

To try it without the download: in **Load ACE-Step Checkpoint** click `ckpt_name`, choose
`acestep_tiny_RANDOM_WEIGHTS_demo.safetensors` (made by `scripts/run_comfyui.sh` when there is no real
checkpoint) and press **Run**. It has **random weights**: the workflow runs quickly, but makes noise, not music."""

INPUT_NOTE = f"""- **Load Audio**: the song to work on. Upload it with the node's button, or put it in `ComfyUI/input/`
  (`{INPUT_AUDIO}` is only a placeholder name). Any sample rate, mono or stereo: the VAE resamples to
  44.1 kHz stereo."""

APP_RECIPE_NOTE = f"""- Sampling as the ACE-Step app: **ACE-Step Guidance** (APG, guidance interval 0.5, ERG, omega 10)
  with KSampler's `cfg` {APP_CFG:g} as the guidance scale, {APP_STEPS} Euler steps, flow shift 3 (the model's own)."""

SAVE_NOTE = "- The result is saved as FLAC in `ComfyUI/output/audio/`."

TEXT2MUSIC_NOTE = f"""## ACE-Step: text to music
- **tags**: the style (genre, instruments, mood, voice, tempo), comma separated.
- **lyrics**: one sung line per line, sections marked `[verse]`, `[chorus]`, `[bridge]`, `[outro]`;
  `[instrumental]` for no vocals.
- **seconds** (EmptyAceStepLatentAudio): the length; up to 240 s works best.
- Sampling as in ComfyUI's ACE-Step template: {STEPS} steps, CFG {CFG:g}, shift {SHIFT:g} (ModelSamplingSD3);
  the tone-mapping nodes keep CFG from over-saturating.
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

AUDIO2AUDIO_NOTE = f"""## ACE-Step: audio to audio (restyle a song)
{INPUT_NOTE}
- **tags** and **lyrics** describe the result: change the tags to restyle the song, write its lyrics
  to keep the vocals.
- **denoise** (KSampler) sets how much changes: 0.2-0.4 keeps the song and changes its sound, 0.6 and
  more keeps little of it.
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

TEXT2MUSIC_APG_NOTE = f"""## ACE-Step: text to music, the app's guidance
The same song as `text2music`, sampled the way the ACE-Step app samples:
{APP_RECIPE_NOTE}
- **ACE-Step Guidance** switches: `cfg_type` apg / cfg / cfg_star; `guidance_interval` (fraction of
  the steps that get guidance) and its decay; `guidance_scale_text` and `guidance_scale_lyric` above 1
  for separate tag and lyric scales; ERG for tags, lyrics and the diffusion model; `omega_scale`
  ("granularity"). All off gives the plain model.
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

LORA_NOTE = f"""## ACE-Step: text to music with a LoRA
- **ACE-Step LoRA Loader** applies a LoRA from `ComfyUI/models/loras/`, with the scale it was trained
  with (rsLoRA). The released RapMachine LoRA: download
  [pytorch_lora_weights.safetensors]({LORA_URL}) and save it as `models/loras/{LORA_FILE}`.
- **strength**: 1 as trained (the app allows -3 to 3); chain loaders to stack LoRAs.
{APP_RECIPE_NOTE}
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

RETAKE_NOTE = f"""## ACE-Step: retake (a variation of a song)
- Set **KSampler**'s `seed` to the seed of the song you want to vary (with the same tags, lyrics and
  length); **ACE-Step Retake**'s `retake_seed` picks the variation (a new one every run).
- **variance**: how far the retake moves away, 0 = the same song, 1 = an unrelated one
  (the app's default {RETAKE_VARIANCE:g}).
{APP_RECIPE_NOTE}
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

REPAINT_NOTE = f"""## ACE-Step: repaint (regenerate a part of a song)
{INPUT_NOTE}
- **ACE-Step Repaint**: `start_seconds` / `end_seconds` of the part to regenerate; the rest stays as it
  was. `variance` (sent to KSampler's `denoise`) is how much the part may change (the app's default
  {REPAINT_VARIANCE:g}; 1 = new from scratch).
- **tags** and **lyrics** describe the song; change them for the repainted part.
- **ACE-Step Restore Source** puts the untouched part back bit for bit after sampling.
{APP_RECIPE_NOTE}
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

EXTEND_NOTE = f"""## ACE-Step: extend (add music before or after a song)
{INPUT_NOTE}
- **ACE-Step Extend**: `left_seconds` of new music before the song, `right_seconds` after it. The
  sampled window is at most 240 s; **ACE-Step Restore Source** puts the song back around the new parts.
- **tags** and **lyrics** describe the music to add.
{APP_RECIPE_NOTE}
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

LYRIC_EDIT_NOTE = f"""## ACE-Step: edit the lyrics of a song
{INPUT_NOTE}
- **source**: the song's own tags and lyrics. **target**: the same tags with the new lyrics.
- **ACE-Step Edit** (flow-edit, mode `only_lyrics`: edits the last 40% of the steps) keeps the music
  and changes the words. `custom` mode uses `n_min` / `n_max`; `cfg` {APP_CFG:g} as the app.
- SamplerCustomAdvanced samples from the source latent: {APP_STEPS} Euler steps, `simple` schedule.
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""

REMIX_NOTE = f"""## ACE-Step: remix (change the style, keep the song)
{INPUT_NOTE}
- **source**: the song's own tags and lyrics. **target**: new tags, the same lyrics.
- **ACE-Step Edit** in mode `remix` edits 20%-40% of the steps towards the target, then samples the
  rest freely: the song's structure and melody stay, its sound follows the new tags.
- SamplerCustomAdvanced samples from the source latent: {APP_STEPS} Euler steps, `simple` schedule.
{SAVE_NOTE}

{CHECKPOINT_NOTE}"""


# ---------------------------------------------------------------------------------------------
# The graphs, in API format
# ---------------------------------------------------------------------------------------------
# Each workflow is {"api": {id: node}, "columns": [[(id, width, height), ...], ...], "note": text}.
# Columns are laid out left to right, nodes top to bottom, with the sizes the frontend needs
# where they are larger; "note" in a column is the Note's place.
LOADER, TEXT, NEGATIVE = 1, 2, 3


def link(node_id: int, output: int = 0) -> list:
    return [str(node_id), output]


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def base_nodes(tags: str, lyrics: str) -> dict:
    """Loader (1), the positive text encode (2) and its ConditioningZeroOut negative (3)."""
    return {
        LOADER: node("LoadAceStepCheckpoint", ckpt_name=REAL_CHECKPOINT, weight_dtype="default"),
        TEXT: node("TextEncodeAceStepAudio", clip=link(LOADER, 1), tags=tags, lyrics=lyrics, lyrics_strength=1.0),
        NEGATIVE: node("ConditioningZeroOut", conditioning=link(TEXT)),
    }


def ksampler(model: list, latent: list, denoise, steps: int, cfg: float, seed_control: str = "randomize",
             positive: list = link(TEXT), negative: list = link(NEGATIVE)) -> dict:
    return node("KSampler", model=model, seed=SEED, control_after_generate=seed_control, steps=steps, cfg=cfg,
                sampler_name=SAMPLER, scheduler=SCHEDULER, positive=positive, negative=negative,
                latent_image=latent, denoise=denoise)


def decode_and_save(first_id: int, latent: list, name: str) -> dict:
    return {first_id: node("VAEDecodeAudio", samples=latent, vae=link(LOADER, 2)),
            first_id + 1: node("SaveAudio", audio=link(first_id), filename_prefix=f"audio/ace_step_{name}")}


def guidance(model: list) -> dict:
    """AceStepGuidance with its defaults (the ACE-Step app's guidance)."""
    return node("AceStepGuidance", model=model)


# Column sizes shared by the layouts.
LOADER_BOX = (LOADER, 440, 110)
NOTE_BOX = ("note", 440, 340)
TEXT_BOX = (TEXT, 440, 520)
NEGATIVE_BOX = (NEGATIVE, 300, 50)


def text2music() -> dict:
    api = {
        **base_nodes(SONG_TAGS, SONG_LYRICS),
        4: node("EmptyAceStepLatentAudio", seconds=SONG_SECONDS, batch_size=1),
        5: node("ModelSamplingSD3", model=link(LOADER, 0), shift=SHIFT),
        6: node("LatentOperationTonemapReinhard", multiplier=TONEMAP_MULTIPLIER),
        7: node("LatentApplyOperationCFG", model=link(5), operation=link(6)),
        8: ksampler(link(7), link(4), denoise=1.0, steps=STEPS, cfg=CFG),
        **decode_and_save(9, link(8), "text2music"),
    }
    columns = [[LOADER_BOX, NOTE_BOX], [TEXT_BOX, NEGATIVE_BOX],
               [(4, 300, 90), (5, 300, 60), (6, 300, 60), (7, 300, 50)],
               [(8, 300, 270), (9, 300, 50), (10, 300, 100)]]
    return {"api": api, "columns": columns, "note": TEXT2MUSIC_NOTE}


def audio2audio() -> dict:
    api = {
        **base_nodes(RESTYLE_TAGS, "[instrumental]"),
        4: node("LoadAudio", audio=INPUT_AUDIO),
        5: node("VAEEncodeAudio", audio=link(4), vae=link(LOADER, 2)),
        6: node("ModelSamplingSD3", model=link(LOADER, 0), shift=SHIFT),
        7: node("LatentOperationTonemapReinhard", multiplier=TONEMAP_MULTIPLIER),
        8: node("LatentApplyOperationCFG", model=link(6), operation=link(7)),
        9: ksampler(link(8), link(5), denoise=EDIT_DENOISE, steps=STEPS, cfg=CFG),
        **decode_and_save(10, link(9), "audio2audio"),
    }
    columns = [[LOADER_BOX, (4, 440, 140), NOTE_BOX], [(TEXT, 440, 420), NEGATIVE_BOX],
               [(5, 300, 50), (6, 300, 60), (7, 300, 60), (8, 300, 50)],
               [(9, 300, 270), (10, 300, 50), (11, 300, 100)]]
    return {"api": api, "columns": columns, "note": AUDIO2AUDIO_NOTE}


def text2music_apg() -> dict:
    api = {
        **base_nodes(SONG_TAGS, SONG_LYRICS),
        4: node("EmptyAceStepLatentAudio", seconds=SONG_SECONDS, batch_size=1),
        5: guidance(link(LOADER, 0)),
        6: ksampler(link(5), link(4), denoise=1.0, steps=APP_STEPS, cfg=APP_CFG),
        **decode_and_save(7, link(6), "text2music_apg"),
    }
    columns = [[LOADER_BOX, NOTE_BOX], [TEXT_BOX, NEGATIVE_BOX], [(4, 340, 90), (5, 340, 420)],
               [(6, 300, 270), (7, 300, 50), (8, 300, 100)]]
    return {"api": api, "columns": columns, "note": TEXT2MUSIC_APG_NOTE}


def text2music_lora() -> dict:
    api = {
        **base_nodes(RAP_TAGS, RAP_LYRICS),
        4: node("EmptyAceStepLatentAudio", seconds=60.0, batch_size=1),
        5: node("AceStepLoraLoader", model=link(LOADER, 0), lora_name=LORA_FILE, strength=1.0),
        6: guidance(link(5)),
        7: ksampler(link(6), link(4), denoise=1.0, steps=APP_STEPS, cfg=APP_CFG),
        **decode_and_save(8, link(7), "text2music_lora"),
    }
    columns = [[LOADER_BOX, (5, 440, 90), NOTE_BOX], [(TEXT, 440, 440), NEGATIVE_BOX],
               [(4, 340, 90), (6, 340, 420)], [(7, 300, 270), (8, 300, 50), (9, 300, 100)]]
    return {"api": api, "columns": columns, "note": LORA_NOTE,
            "models": {5: [{"name": LORA_FILE, "url": LORA_URL, "directory": "loras"}]}}


def retake() -> dict:
    api = {
        **base_nodes(SONG_TAGS, SONG_LYRICS),
        4: node("EmptyAceStepLatentAudio", seconds=SONG_SECONDS, batch_size=1),
        5: guidance(link(LOADER, 0)),
        6: node("AceStepRetakeModel", model=link(5), retake_seed=1, control_after_generate="randomize",
                variance=RETAKE_VARIANCE),
        7: ksampler(link(6), link(4), denoise=1.0, steps=APP_STEPS, cfg=APP_CFG, seed_control="fixed"),
        **decode_and_save(8, link(7), "retake"),
    }
    columns = [[LOADER_BOX, NOTE_BOX], [TEXT_BOX, NEGATIVE_BOX], [(4, 340, 90), (5, 340, 420)],
               [(6, 300, 110), (7, 300, 270), (8, 300, 50), (9, 300, 100)]]
    return {"api": api, "columns": columns, "note": RETAKE_NOTE}


def repaint() -> dict:
    api = {
        **base_nodes(SONG_TAGS, SONG_LYRICS),
        4: node("LoadAudio", audio=INPUT_AUDIO),
        5: node("VAEEncodeAudio", audio=link(4), vae=link(LOADER, 2)),
        6: node("AceStepRepaint", samples=link(5), start_seconds=REPAINT_RANGE[0], end_seconds=REPAINT_RANGE[1],
                variance=REPAINT_VARIANCE),
        7: guidance(link(LOADER, 0)),
        8: ksampler(link(7), link(6, 0), denoise=link(6, 1), steps=APP_STEPS, cfg=APP_CFG),
        9: node("AceStepRestoreSource", samples=link(8)),
        **decode_and_save(10, link(9), "repaint"),
    }
    columns = [[LOADER_BOX, (4, 440, 140), NOTE_BOX], [(TEXT, 440, 420), NEGATIVE_BOX],
               [(5, 340, 50), (6, 340, 130), (7, 340, 420)],
               [(8, 300, 270), (9, 300, 50), (10, 300, 50), (11, 300, 100)]]
    return {"api": api, "columns": columns, "note": REPAINT_NOTE}


def extend() -> dict:
    api = {
        **base_nodes(SONG_TAGS, SONG_LYRICS),
        4: node("LoadAudio", audio=INPUT_AUDIO),
        5: node("VAEEncodeAudio", audio=link(4), vae=link(LOADER, 2)),
        6: node("AceStepExtend", samples=link(5), left_seconds=EXTEND_SECONDS[0], right_seconds=EXTEND_SECONDS[1]),
        7: guidance(link(LOADER, 0)),
        8: ksampler(link(7), link(6), denoise=1.0, steps=APP_STEPS, cfg=APP_CFG),
        9: node("AceStepRestoreSource", samples=link(8)),
        **decode_and_save(10, link(9), "extend"),
    }
    columns = [[LOADER_BOX, (4, 440, 140), NOTE_BOX], [(TEXT, 440, 420), NEGATIVE_BOX],
               [(5, 340, 50), (6, 340, 90), (7, 340, 420)],
               [(8, 300, 270), (9, 300, 50), (10, 300, 50), (11, 300, 100)]]
    return {"api": api, "columns": columns, "note": EXTEND_NOTE}


def flow_edit(name: str, mode: str, target_tags: str, target_lyrics: str, note: str) -> dict:
    """Source song -> AceStepEdit guider (source vs target conditioning) -> SamplerCustomAdvanced."""
    api = {
        LOADER: node("LoadAceStepCheckpoint", ckpt_name=REAL_CHECKPOINT, weight_dtype="default"),
        2: node("TextEncodeAceStepAudio", clip=link(LOADER, 1), tags=SONG_TAGS, lyrics=SONG_LYRICS,
                lyrics_strength=1.0),
        3: node("TextEncodeAceStepAudio", clip=link(LOADER, 1), tags=target_tags, lyrics=target_lyrics,
                lyrics_strength=1.0),
        4: node("LoadAudio", audio=INPUT_AUDIO),
        5: node("VAEEncodeAudio", audio=link(4), vae=link(LOADER, 2)),
        6: node("AceStepEdit", model=link(LOADER, 0), source_conditioning=link(2), target_conditioning=link(3),
                mode=mode, cfg=APP_CFG),
        7: node("RandomNoise", noise_seed=SEED, control_after_generate="randomize"),
        8: node("KSamplerSelect", sampler_name=SAMPLER),
        9: node("BasicScheduler", model=link(LOADER, 0), scheduler=SCHEDULER, steps=APP_STEPS, denoise=1.0),
        10: node("SamplerCustomAdvanced", noise=link(7), guider=link(6), sampler=link(8), sigmas=link(9),
                 latent_image=link(5)),
        **decode_and_save(11, link(10, 0), name),
    }
    columns = [[LOADER_BOX, (4, 440, 140), NOTE_BOX], [(2, 440, 330), (3, 440, 330)],
               [(5, 300, 50), (6, 340, 250), (7, 340, 90), (8, 340, 60), (9, 340, 110)],
               [(10, 300, 110), (11, 300, 50), (12, 300, 100)]]
    return {"api": api, "columns": columns, "note": note,
            "titles": {2: "Source: the song as it is", 3: "Target: what it should become"}}


def lyric_edit() -> dict:
    return flow_edit("lyric_edit", "only_lyrics", SONG_TAGS, EDITED_LYRICS, LYRIC_EDIT_NOTE)


def remix() -> dict:
    return flow_edit("remix", "remix", REMIX_TAGS, SONG_LYRICS, REMIX_NOTE)


# ---------------------------------------------------------------------------------------------
# ACE-Step 1.5
# ---------------------------------------------------------------------------------------------
# Files and addresses as ComfyUI 0.20.1's own 1.5 templates name them (comfyui-workflow-templates
# 0.9.73: media_image audio_ace_step_1_5_checkpoint.json / _split.json, media_other
# audio_ace_step1_5_xl_base.json): Comfy-Org's repository ace_step_1.5_ComfyUI_files.
V15_FILES = "https://huggingface.co/Comfy-Org/ace_step_1.5_ComfyUI_files/resolve/main/"
V15_AIO = "ace_step_1.5_turbo_aio.safetensors"
V15_AIO_MODEL = {"name": V15_AIO, "url": V15_FILES + "checkpoints/" + V15_AIO, "directory": "checkpoints"}
V15_BASE_DIT = "acestep_v1.5_xl_base_bf16.safetensors"
V15_TEXT_ENCODER = "qwen_0.6b_ace15.safetensors"
V15_PLANNER_4B = "qwen_4b_ace15.safetensors"
V15_VAE = "ace_1.5_vae.safetensors"
V15_SPLIT_MODELS = [
    {"name": V15_BASE_DIT, "url": V15_FILES + "split_files/diffusion_models/" + V15_BASE_DIT,
     "directory": "diffusion_models"},
    {"name": V15_TEXT_ENCODER, "url": V15_FILES + "split_files/text_encoders/" + V15_TEXT_ENCODER,
     "directory": "text_encoders"},
    {"name": V15_PLANNER_4B, "url": V15_FILES + "split_files/text_encoders/" + V15_PLANNER_4B,
     "directory": "text_encoders"},
    {"name": V15_VAE, "url": V15_FILES + "split_files/vae/" + V15_VAE, "directory": "vae"},
]
V15_OFFICIAL_REPO = "https://huggingface.co/ACE-Step/Ace-Step1.5"   # acestep/model_downloader.py MAIN_MODEL_REPO

# Sampling as ComfyUI's templates: turbo (audio_ace_step_1_5_checkpoint.json, _split.json,
# audio_ace_step1_5_xl_turbo.json) 8 Euler steps on the simple schedule, CFG 1, shift 3 through
# ModelSamplingAuraFlow; base (audio_ace_step1_5_xl_base.json) 50 steps, CFG 6, shift 3.
V15_TURBO_STEPS, V15_TURBO_CFG = 8, 1.0
V15_BASE_STEPS, V15_BASE_CFG = 50, 6.0
V15_SHIFT = 3.0
# The planner's sampling (TextEncodeAceStepAudio1.5's defaults, which every 1.5 template keeps).
V15_PLANNER = {"cfg_scale": 2.0, "temperature": 0.85, "top_p": 0.9, "top_k": 0, "min_p": 0.0}
V15_SONG = {"bpm": 118, "timesignature": "4", "language": "en", "keyscale": "G major"}
REFERENCE_TAGS = "indie folk, acoustic guitar, warm male vocals, gentle percussion, heartfelt, 96 bpm"
REFERENCE_LYRICS = """[verse]
Morning light on the kitchen floor
Coffee steam and an open door

[chorus]
Stay a while, the day is long
Hum along to an easy song"""

V15_TINY_NOTE = """To try it without the download: from the pack's folder run
`python -m acestep_core make-tiny --generation 1.5 --layout aio --planner --out <ComfyUI>/models/checkpoints`,
press R in ComfyUI and pick `ace_step_1.5_tiny_aio.safetensors`. It has **random weights**: the workflow runs
quickly, but makes noise, not music."""

V15_AIO_NOTE = f"""### Model
Put Comfy-Org's all-in-one ACE-Step 1.5 file in `ComfyUI/models/checkpoints/` and pick it in **Load ACE-Step Checkpoint**:
- [{V15_AIO}]({V15_AIO_MODEL["url"]}) (the turbo diffusion model, the Qwen3-Embedding-0.6B text
  encoder, the 1.7B planner and the 48 kHz VAE in one file), or
- the official release ([ACE-Step/Ace-Step1.5]({V15_OFFICIAL_REPO})): the folder holding `acestep-v15-turbo/`,
  `vae/`, `Qwen3-Embedding-0.6B/` and `acestep-5Hz-lm-1.7B/`, under `models/checkpoints/` or
  `models/diffusion_models/`.

When the file opens, ComfyUI's **Missing Models** dialog lists `{V15_AIO}` if you do not have it:
**Download** fetches it from the address above, or close the dialog (×).

{V15_TINY_NOTE}"""

V15_SPLIT_NOTE = f"""### Models
**Load ACE-Step 1.5 (split files)** takes Comfy-Org's separate files (the Missing Models dialog offers each):
- `models/diffusion_models/`: [{V15_BASE_DIT}]({V15_SPLIT_MODELS[0]["url"]}) (XL base)
- `models/text_encoders/`: [{V15_TEXT_ENCODER}]({V15_SPLIT_MODELS[1]["url"]}) (text encoder) and
  [{V15_PLANNER_4B}]({V15_SPLIT_MODELS[2]["url"]}) (the 4B planner, `planner_name`)
- `models/vae/`: [{V15_VAE}]({V15_SPLIT_MODELS[3]["url"]})

Without the planner: set `planner_name` to `none` and `generate_audio_codes` to false. The all-in-one
file (`text2music_v15_turbo`) has the turbo model only."""

V15_SAVE_NOTE = ("- The result is saved as FLAC in `ComfyUI/output/audio/`: 48 kHz on ComfyUI 0.20 and later, "
                 "44.1 kHz on older ComfyUI (its audio nodes assume 44.1 kHz; the VAE resamples).")
V15_TEXT_NOTE = """- **TextEncodeAceStepAudio1.5**: `tags` (the style), `lyrics` (`[verse]`, `[chorus]`, ... or
  `[instrumental]`), `bpm`, `timesignature`, `language`, `keyscale`.
- **Seconds** sets the length of the song (the latent and the text encoder's `duration`); **Seed** picks
  the song (sampler and planner): change it, or set its control to `randomize`, for another one."""
V15_CODES_OFF_NOTE = """- `generate_audio_codes` is off: the diffusion model runs without the planner's audio codes, so any 1.5
  checkpoint works (with or without a planner). Turn it on for the planner's melody and structure
  (see `text2music_v15_planner`)."""

TEXT2MUSIC_V15_TURBO_NOTE = f"""## ACE-Step 1.5 turbo: text to music
{V15_TEXT_NOTE}
{V15_CODES_OFF_NOTE}
- Sampling as ComfyUI's 1.5 turbo template: {V15_TURBO_STEPS} Euler steps, `simple` schedule, CFG {V15_TURBO_CFG:g},
  shift {V15_SHIFT:g} (ModelSamplingAuraFlow).
{V15_SAVE_NOTE}

{V15_AIO_NOTE}"""

TEXT2MUSIC_V15_PLANNER_NOTE = f"""## ACE-Step 1.5 turbo with the planner
ComfyUI's own 1.5 template (audio_ace_step_1_5_checkpoint) on this pack's loader:
{V15_TEXT_NOTE}
- `generate_audio_codes` is on: the 5 Hz planner (a Qwen3 language model, in the all-in-one file) first
  writes audio codes for the song (5 per second; `cfg_scale`, `temperature`, `top_p`, `top_k`, `min_p`
  are its sampling), then the diffusion model renders them. Slower, and more structured songs.
- {V15_TURBO_STEPS} Euler steps, `simple` schedule, CFG {V15_TURBO_CFG:g}, shift {V15_SHIFT:g} (ModelSamplingAuraFlow).
{V15_SAVE_NOTE}

{V15_AIO_NOTE}"""

TEXT2MUSIC_V15_BASE_NOTE = f"""## ACE-Step 1.5 base: text to music with CFG
The base model (not distilled) as ComfyUI's 1.5 XL base template samples it: {V15_BASE_STEPS} Euler steps,
`simple` schedule, CFG {V15_BASE_CFG:g} against the zeroed conditioning, shift {V15_SHIFT:g}
(ModelSamplingAuraFlow), the planner's audio codes on.
{V15_TEXT_NOTE}
{V15_SAVE_NOTE}

{V15_SPLIT_NOTE}"""

REFERENCE_TIMBRE_V15_NOTE = f"""## ACE-Step 1.5: a song in the timbre of a reference
- **Load Audio**: the reference whose sound (voice, instruments) the new song takes. Upload it with the
  node's button, or put it in `ComfyUI/input/` (`{INPUT_AUDIO}` is only a placeholder name).
- **VAEEncodeAudio** -> **Reference Audio** (ReferenceTimbreAudio) adds it to the conditioning; the
  negative is the same conditioning zeroed.
- `generate_audio_codes` is off, as the node's tooltip asks with a reference.
{V15_TEXT_NOTE}
- {V15_TURBO_STEPS} Euler steps, `simple` schedule, CFG {V15_TURBO_CFG:g}, shift {V15_SHIFT:g} (ModelSamplingAuraFlow).
{V15_SAVE_NOTE}

{V15_AIO_NOTE}"""

# Node ids of the 1.5 graphs.
SECONDS_ID, SEED_ID = 4, 5


def v15_text(tags: str, lyrics: str, codes: bool, bpm: int = V15_SONG["bpm"]) -> dict:
    return node("TextEncodeAceStepAudio1.5", clip=link(LOADER, 1), tags=tags, lyrics=lyrics, seed=link(SEED_ID),
                duration=link(SECONDS_ID), **{**V15_SONG, "bpm": bpm}, generate_audio_codes=codes, **V15_PLANNER)


def v15_graph(name: str, loader: dict, text: dict, steps: int, cfg: float, extra: dict | None = None,
              positive: int = TEXT, negative_of: int = TEXT) -> dict:
    """Loader (1), text (2), zeroed negative (3), Seconds (4), Seed (5), empty latent (6),
    ModelSamplingAuraFlow (7), KSampler (8), decode (9), save (10), then `extra`."""
    return {
        LOADER: loader,
        TEXT: text,
        NEGATIVE: node("ConditioningZeroOut", conditioning=link(negative_of)),
        SECONDS_ID: node("PrimitiveFloat", value=SONG_SECONDS),
        # "fixed", as in ComfyUI's 1.5 templates (and what frontend 1.43 keeps for PrimitiveInt
        # whatever the API prompt says): a Run gives the same song until the seed changes.
        SEED_ID: node("PrimitiveInt", value=SEED, control_after_generate="fixed"),
        6: node("EmptyAceStep1.5LatentAudio", seconds=link(SECONDS_ID), batch_size=1),
        7: node("ModelSamplingAuraFlow", model=link(LOADER, 0), shift=V15_SHIFT),
        8: node("KSampler", model=link(7), seed=link(SEED_ID), control_after_generate="fixed", steps=steps, cfg=cfg,
                sampler_name=SAMPLER, scheduler=SCHEDULER, positive=link(positive), negative=link(NEGATIVE), latent_image=link(6),
                denoise=1.0),
        **decode_and_save(9, link(8), name),
        **(extra or {}),
    }


def v15_aio_loader() -> dict:
    return node("LoadAceStepCheckpoint", ckpt_name=V15_AIO, weight_dtype="default")


V15_TITLES = {SECONDS_ID: "Seconds", SEED_ID: "Seed"}
V15_TEXT_BOX = (TEXT, 440, 560)
V15_NOTE_BOX = ("note", 440, 620)     # the 1.5 notes are longer: no scrolling to the end


def v15_columns(first: list, second: list) -> list:
    return [first, second, [(SECONDS_ID, 300, 60), (SEED_ID, 300, 80), (6, 300, 60), (7, 300, 60)],
            [(8, 300, 270), (9, 300, 50), (10, 300, 100)]]


def text2music_v15_turbo() -> dict:
    api = v15_graph("text2music_v15_turbo", v15_aio_loader(), v15_text(SONG_TAGS, SONG_LYRICS, codes=False),
                    V15_TURBO_STEPS, V15_TURBO_CFG)
    return {"api": api, "columns": v15_columns([LOADER_BOX, V15_NOTE_BOX], [V15_TEXT_BOX, NEGATIVE_BOX]),
            "note": TEXT2MUSIC_V15_TURBO_NOTE, "titles": V15_TITLES, "loader_models": [V15_AIO_MODEL]}


def text2music_v15_planner() -> dict:
    api = v15_graph("text2music_v15_planner", v15_aio_loader(), v15_text(SONG_TAGS, SONG_LYRICS, codes=True),
                    V15_TURBO_STEPS, V15_TURBO_CFG)
    return {"api": api, "columns": v15_columns([LOADER_BOX, V15_NOTE_BOX], [V15_TEXT_BOX, NEGATIVE_BOX]),
            "note": TEXT2MUSIC_V15_PLANNER_NOTE, "titles": V15_TITLES, "loader_models": [V15_AIO_MODEL]}


def text2music_v15_base() -> dict:
    loader = node("LoadAceStep15Split", unet_name=V15_BASE_DIT, text_encoder_name=V15_TEXT_ENCODER, vae_name=V15_VAE,
                  planner_name=V15_PLANNER_4B, weight_dtype="default")
    api = v15_graph("text2music_v15_base", loader, v15_text(SONG_TAGS, SONG_LYRICS, codes=True),
                    V15_BASE_STEPS, V15_BASE_CFG)
    return {"api": api, "columns": v15_columns([(LOADER, 440, 180), V15_NOTE_BOX], [V15_TEXT_BOX, NEGATIVE_BOX]),
            "note": TEXT2MUSIC_V15_BASE_NOTE, "titles": V15_TITLES, "loader_models": V15_SPLIT_MODELS}


def reference_timbre_v15() -> dict:
    extra = {11: node("LoadAudio", audio=INPUT_AUDIO),
             12: node("VAEEncodeAudio", audio=link(11), vae=link(LOADER, 2)),
             13: node("ReferenceTimbreAudio", conditioning=link(TEXT), latent=link(12))}
    api = v15_graph("reference_timbre_v15", v15_aio_loader(),
                    v15_text(REFERENCE_TAGS, REFERENCE_LYRICS, codes=False, bpm=96),
                    V15_TURBO_STEPS, V15_TURBO_CFG, extra, positive=13, negative_of=13)
    columns = [[LOADER_BOX, (11, 440, 140), V15_NOTE_BOX], [V15_TEXT_BOX, (12, 300, 50), (13, 300, 60), NEGATIVE_BOX],
               [(SECONDS_ID, 300, 60), (SEED_ID, 300, 80), (6, 300, 60), (7, 300, 60)],
               [(8, 300, 270), (9, 300, 50), (10, 300, 100)]]
    return {"api": api, "columns": columns, "note": REFERENCE_TIMBRE_V15_NOTE, "titles": V15_TITLES,
            "loader_models": [V15_AIO_MODEL]}


# ---------------------------------------------------------------------------------------------
# ACE-Step 1.5 tasks (nodes/ace15_tasks.py)
# ---------------------------------------------------------------------------------------------
# The official app's defaults (acestep/inference.py GenerationParams): audio_cover_strength 1.0,
# repainting 0 s to the end (here a 20-30 s region, as the v1 repaint workflow), lego / extract on
# the base model; the turbo tasks sample as ComfyUI's 1.5 turbo template (8 steps, CFG 1, shift 3),
# the base ones as its XL base template (50 steps, CFG 6, shift 3). Flow-edit: the 1.5 app's
# default window 0-1 (AceStepEdit mode full) on the base model.
V15_COVER_STRENGTH = 1.0
V15_REPAINT_RANGE = (20.0, 30.0)
V15_EXTEND_SECONDS = (0.0, 30.0)
V15_LEGO_STEM, V15_EXTRACT_STEM, V15_COMPLETE_STEMS = "guitar", "vocals", "drums, bass"
V15_BASE_TASK_MODELS = [m for m in V15_SPLIT_MODELS if m["name"] != V15_PLANNER_4B]
COVER_TAGS = "jazz, smoky lounge, upright bass, brushed drums, muted trumpet, female vocals, 118 bpm"
LEGO_TAGS = "warm clean electric guitar, funky rhythm guitar"

V15_BASE_TASK_NOTE = f"""### Models (the base model)
This task needs the ACE-Step 1.5 **base** model: turbo and sft were not trained for it (the node refuses a model
whose official `config.json` says turbo, before any sampling). **Load ACE-Step 1.5 (split files)** takes
Comfy-Org's files (the Missing Models dialog offers each):
- `models/diffusion_models/`: [{V15_BASE_DIT}]({V15_SPLIT_MODELS[0]["url"]}) (XL base)
- `models/text_encoders/`: [{V15_TEXT_ENCODER}]({V15_SPLIT_MODELS[1]["url"]})
- `models/vae/`: [{V15_VAE}]({V15_SPLIT_MODELS[3]["url"]})

Or the official 2B base: the folder `acestep-v15-base` of [ACE-Step/acestep-v15-base](https://huggingface.co/ACE-Step/acestep-v15-base)
beside `vae/` and `Qwen3-Embedding-0.6B/` (as in [ACE-Step/Ace-Step1.5]({V15_OFFICIAL_REPO})), picked in
**Load ACE-Step Checkpoint**; its `config.json` tells the node which variant it is (single files cannot, so the
node shows a reminder). No planner is needed.

To try the graph without the download: `python -m acestep_core make-tiny --generation 1.5 --layout split --out <folder>`
writes tiny split files with **random weights** (noise, not music) in `diffusion_models/`, `text_encoders/` and
`vae/` of `<folder>`; their text encoder and VAE have the real files' names, so do not copy them over real ones."""

V15_TASK_TURBO_NOTE = f"""### Model
Any ACE-Step 1.5 model does this task; the workflow loads Comfy-Org's all-in-one turbo file in
`models/checkpoints/`: [{V15_AIO}]({V15_AIO_MODEL["url"]}) (the Missing Models dialog offers it), or the
official folder ([ACE-Step/Ace-Step1.5]({V15_OFFICIAL_REPO})). With the base or sft model use 50 steps and
CFG 6 (as `text2music_v15_base`).

{V15_TINY_NOTE}"""

V15_TASK_IO_NOTE = f"""- **Load Audio**: the song to work on (upload it with the node's button, or put it in `ComfyUI/input/`;
  `{INPUT_AUDIO}` is only a placeholder name). Any rate, mono or stereo: **VAEEncodeAudio** with the 1.5 VAE
  resamples it to 48 kHz stereo. Up to 600 s.
- The task node gives the sampler its `positive`, `negative` and `latent`; **ACE-Step 1.5 Restore Source** after
  the sampler puts back what the task keeps and cuts the padding (songs under 5.12 s are padded)."""
V15_TASK_TEXT_NOTE = """- **tags** / **lyrics** on the task node describe the result; `bpm`, `timesignature`, `keyscale` (0 / N/A:
  not given) and `language` as in TextEncodeAceStepAudio1.5. The song's length comes from the source."""
V15_TURBO_SAMPLING_NOTE = (f"- Sampling as ComfyUI's 1.5 turbo template: {V15_TURBO_STEPS} Euler steps, `simple` "
                           f"schedule, CFG {V15_TURBO_CFG:g}, shift {V15_SHIFT:g} (ModelSamplingAuraFlow).")
V15_BASE_SAMPLING_NOTE = (f"- Sampling as ComfyUI's 1.5 XL base template: {V15_BASE_STEPS} Euler steps, `simple` "
                          f"schedule, CFG {V15_BASE_CFG:g} (the negative is the null condition), shift {V15_SHIFT:g}.")

COVER_V15_NOTE = f"""## ACE-Step 1.5: cover (a new song over the structure of a song)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Cover** turns the source into the 5 Hz semantic hints the model follows (melody, structure);
  the tags and lyrics say what the new song is. `audio_cover_strength` (the app's, default {V15_COVER_STRENGTH:g}):
  the share of the steps that follow the source, the rest is plain text to music; set `sampler_steps` to the
  KSampler's steps for the app's exact switch step.
- From a plan instead of a song: connect **ACE-Step Planner**'s `audio_codes` to the node's `audio_codes`
  input (the source song is then not used), as the app covers given audio codes.
{V15_TASK_TEXT_NOTE}
{V15_TURBO_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_TASK_TURBO_NOTE}"""

REPAINT_V15_NOTE = f"""## ACE-Step 1.5: repaint (regenerate part of a song)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Repaint**: `start_seconds` / `end_seconds` of the part to regenerate (drag on the waveform
  to pick it); every other latent frame is kept exactly. A region ending after the song stops at its end.
{V15_TASK_TEXT_NOTE}
{V15_TURBO_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_TASK_TURBO_NOTE}"""

EXTEND_V15_NOTE = f"""## ACE-Step 1.5: extend (more song before or after)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Extend**: `left_seconds` of new music before the song, `right_seconds` after it (any length,
  600 s in all at most); the song itself is kept exactly.
{V15_TASK_TEXT_NOTE}
{V15_TURBO_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_TASK_TURBO_NOTE}"""

LEGO_V15_NOTE = f"""## ACE-Step 1.5: lego (add one stem to a song)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Lego**: `stem` is the track to generate in the context of the song (vocals, backing_vocals,
  drums, bass, guitar, keyboard, percussion, strings, synth, fx, brass, woodwinds), between `start_seconds`
  and `end_seconds` (-1: the song's end). The result is the new stem; mix it with the song yourself.
- **tags** describe the stem.
{V15_BASE_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_BASE_TASK_NOTE}"""

EXTRACT_V15_NOTE = f"""## ACE-Step 1.5: extract (separate one stem)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Extract**: `stem` is the track to take out of the mix; the result is that track alone.
{V15_BASE_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_BASE_TASK_NOTE}"""

COMPLETE_V15_NOTE = f"""## ACE-Step 1.5: complete (accompany a stem)
{V15_TASK_IO_NOTE}
- **ACE-Step 1.5 Complete**: the source is a single stem (a vocal, a guitar part); `stems` lists the tracks to
  add around it, comma separated (empty: the model chooses). The result is the whole arrangement.
{V15_TASK_TEXT_NOTE}
{V15_BASE_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_BASE_TASK_NOTE}"""

FLOW_EDIT_V15_NOTE = f"""## ACE-Step 1.5: flow-edit (new tags or lyrics, the same music)
- **Load Audio** -> **VAEEncodeAudio**: the song to edit (up to 600 s; `{INPUT_AUDIO}` is a placeholder name).
- **Source**: the song's own tags and lyrics; **Target**: what it should become (here the first verse
  rewritten). Set `duration` on both to the song's length.
- **ACE-Step Edit** on a 1.5 model runs the 1.5 app's flow-edit (2026-04): mode `full` edits over the whole
  schedule (the app's default window 0-1), `custom` with `n_min` / `n_max`; `cfg` {V15_BASE_CFG:g}.
- SamplerCustomAdvanced samples from the source latent: {V15_BASE_STEPS} Euler steps, `simple` schedule,
  shift {V15_SHIFT:g}. The app refuses turbo for flow-edit: base or sft.
{V15_SAVE_NOTE}

{V15_BASE_TASK_NOTE.replace("the ACE-Step 1.5 **base** model: turbo and sft were", "the ACE-Step 1.5 **base** (or sft) model: turbo was")}"""

RETAKE_V15_NOTE = f"""## ACE-Step 1.5: retake (a variation of a song)
The song of `text2music_v15_turbo`, varied: keep **Seed** (the song's seed) and change **ACE-Step Retake**'s
`retake_seed` (a new variation every run). `variance` is how far it moves away (0 = the same song, 1 = an
unrelated one; {RETAKE_VARIANCE:g} as the v1 app). Works on any 1.5 model.
{V15_TEXT_NOTE}
{V15_TURBO_SAMPLING_NOTE}
{V15_SAVE_NOTE}

{V15_AIO_NOTE}"""

# Node ids of the 1.5 task graphs.
AUDIO_ID, ENCODE_ID, TASK_ID, SHIFT_ID, SAMPLER_ID, RESTORE_ID = 4, 5, 6, 7, 8, 9
V15_META = {"language": "en", "bpm": 0, "timesignature": "N/A", "keyscale": "N/A"}


def v15_split_loader(planner: str = "none") -> dict:
    return node("LoadAceStep15Split", unet_name=V15_BASE_DIT, text_encoder_name=V15_TEXT_ENCODER, vae_name=V15_VAE,
                planner_name=planner, weight_dtype="default")


def v15_task(name: str, task_node: str, widgets: dict, note: str, base: bool, tags: str = SONG_TAGS,
             lyrics: str = SONG_LYRICS) -> dict:
    """LoadAudio -> VAEEncodeAudio -> the task node -> KSampler -> AceStep15RestoreSource ->
    VAEDecodeAudio -> SaveAudio; the turbo all-in-one file or the base split files."""
    steps, cfg = (V15_BASE_STEPS, V15_BASE_CFG) if base else (V15_TURBO_STEPS, V15_TURBO_CFG)
    api = {
        LOADER: v15_split_loader() if base else v15_aio_loader(),
        AUDIO_ID: node("LoadAudio", audio=INPUT_AUDIO),
        ENCODE_ID: node("VAEEncodeAudio", audio=link(AUDIO_ID), vae=link(LOADER, 2)),
        TASK_ID: node(task_node, model=link(LOADER, 0), clip=link(LOADER, 1), samples=link(ENCODE_ID), tags=tags,
                      lyrics=lyrics, **widgets, **V15_META),
        SHIFT_ID: node("ModelSamplingAuraFlow", model=link(LOADER, 0), shift=V15_SHIFT),
        SAMPLER_ID: node("KSampler", model=link(SHIFT_ID), seed=SEED, control_after_generate="randomize",
                         steps=steps, cfg=cfg, sampler_name=SAMPLER, scheduler=SCHEDULER, positive=link(TASK_ID, 0),
                         negative=link(TASK_ID, 1), latent_image=link(TASK_ID, 2), denoise=1.0),
        RESTORE_ID: node("AceStep15RestoreSource", samples=link(SAMPLER_ID)),
        **decode_and_save(10, link(RESTORE_ID), name),
    }
    loader_box = (LOADER, 440, 180) if base else LOADER_BOX
    # The note goes last, under the outputs: the graph stays short enough for the frontend to open
    # it above the zoom where LiteGraph stops drawing the widgets' text.
    columns = [[loader_box, (AUDIO_ID, 440, 140), (ENCODE_ID, 440, 50)], [(TASK_ID, 440, 700)],
               [(SHIFT_ID, 300, 60), (SAMPLER_ID, 300, 270)],
               [(RESTORE_ID, 440, 50), (10, 440, 50), (11, 440, 100), V15_NOTE_BOX]]
    return {"api": api, "columns": columns, "note": note,
            "loader_models": V15_BASE_TASK_MODELS if base else [V15_AIO_MODEL]}


def cover_v15() -> dict:
    return v15_task("cover_v15", "AceStep15Cover", {"audio_cover_strength": V15_COVER_STRENGTH,
                                                    "sampler_steps": V15_TURBO_STEPS},
                    COVER_V15_NOTE, base=False, tags=COVER_TAGS)


def repaint_v15() -> dict:
    return v15_task("repaint_v15", "AceStep15Repaint", {"start_seconds": V15_REPAINT_RANGE[0],
                                                        "end_seconds": V15_REPAINT_RANGE[1]}, REPAINT_V15_NOTE,
                    base=False)


def extend_v15() -> dict:
    return v15_task("extend_v15", "AceStep15Extend", {"left_seconds": V15_EXTEND_SECONDS[0],
                                                      "right_seconds": V15_EXTEND_SECONDS[1]}, EXTEND_V15_NOTE,
                    base=False)


def lego_v15() -> dict:
    return v15_task("lego_v15", "AceStep15Lego", {"stem": V15_LEGO_STEM, "start_seconds": 0.0, "end_seconds": -1.0},
                    LEGO_V15_NOTE, base=True, tags=LEGO_TAGS, lyrics="[Instrumental]")


def extract_v15() -> dict:
    return v15_task("extract_v15", "AceStep15Extract", {"stem": V15_EXTRACT_STEM}, EXTRACT_V15_NOTE, base=True)


def complete_v15() -> dict:
    return v15_task("complete_v15", "AceStep15Complete", {"stems": V15_COMPLETE_STEMS}, COMPLETE_V15_NOTE, base=True)


def flow_edit_v15() -> dict:
    """Source song -> AceStepEdit (1.5 flow-edit) -> SamplerCustomAdvanced, on the base model."""
    def text(lyrics: str) -> dict:
        return node("TextEncodeAceStepAudio1.5", clip=link(LOADER, 1), tags=SONG_TAGS, lyrics=lyrics, seed=SEED,
                    control_after_generate="fixed", duration=SONG_SECONDS, **V15_SONG, generate_audio_codes=False,
                    **V15_PLANNER)
    api = {
        LOADER: v15_split_loader(),
        2: text(SONG_LYRICS),
        3: text(EDITED_LYRICS),
        AUDIO_ID: node("LoadAudio", audio=INPUT_AUDIO),
        ENCODE_ID: node("VAEEncodeAudio", audio=link(AUDIO_ID), vae=link(LOADER, 2)),
        SHIFT_ID: node("ModelSamplingAuraFlow", model=link(LOADER, 0), shift=V15_SHIFT),
        6: node("AceStepEdit", model=link(SHIFT_ID), source_conditioning=link(2), target_conditioning=link(3),
                mode="full", cfg=V15_BASE_CFG),
        8: node("RandomNoise", noise_seed=SEED, control_after_generate="randomize"),
        9: node("KSamplerSelect", sampler_name=SAMPLER),
        10: node("BasicScheduler", model=link(SHIFT_ID), scheduler=SCHEDULER, steps=V15_BASE_STEPS, denoise=1.0),
        11: node("SamplerCustomAdvanced", noise=link(8), guider=link(6), sampler=link(9), sigmas=link(10),
                 latent_image=link(ENCODE_ID)),
        **decode_and_save(12, link(11, 0), "flow_edit_v15"),
    }
    columns = [[(LOADER, 440, 180), (AUDIO_ID, 440, 140), (ENCODE_ID, 440, 50), (SHIFT_ID, 440, 60)],
               [(2, 440, 440), (3, 440, 440)], [(6, 340, 250), (8, 340, 90), (9, 340, 60), (10, 340, 110)],
               [(11, 440, 110), (12, 440, 50), (13, 440, 100), V15_NOTE_BOX]]
    return {"api": api, "columns": columns, "note": FLOW_EDIT_V15_NOTE, "loader_models": V15_BASE_TASK_MODELS,
            "titles": {2: "Source: the song as it is", 3: "Target: what it should become"}}


def retake_v15() -> dict:
    """text2music_v15_turbo with v1's AceStepRetakeModel between the model and KSampler."""
    retake_id = 11
    extra = {retake_id: node("AceStepRetakeModel", model=link(7), retake_seed=1, control_after_generate="randomize",
                             variance=RETAKE_VARIANCE)}
    api = v15_graph("retake_v15", v15_aio_loader(), v15_text(SONG_TAGS, SONG_LYRICS, codes=False),
                    V15_TURBO_STEPS, V15_TURBO_CFG, extra)
    api[8]["inputs"]["model"] = link(retake_id)
    columns = [[LOADER_BOX, V15_NOTE_BOX], [V15_TEXT_BOX, NEGATIVE_BOX],
               [(SECONDS_ID, 300, 60), (SEED_ID, 300, 80), (6, 300, 60), (7, 300, 60), (retake_id, 300, 110)],
               [(8, 300, 270), (9, 300, 50), (10, 300, 100)]]
    return {"api": api, "columns": columns, "note": RETAKE_V15_NOTE, "titles": V15_TITLES,
            "loader_models": [V15_AIO_MODEL]}


V15_TASK_WORKFLOWS = {"cover_v15": cover_v15, "repaint_v15": repaint_v15, "extend_v15": extend_v15,
                      "lego_v15": lego_v15, "extract_v15": extract_v15, "complete_v15": complete_v15,
                      "flow_edit_v15": flow_edit_v15, "retake_v15": retake_v15}


V15_WORKFLOWS = {"text2music_v15_turbo": text2music_v15_turbo, "text2music_v15_planner": text2music_v15_planner,
                 "text2music_v15_base": text2music_v15_base, "reference_timbre_v15": reference_timbre_v15}


WORKFLOWS = {"text2music": text2music, "audio2audio": audio2audio, "text2music_apg": text2music_apg,
             "text2music_lora": text2music_lora, "retake": retake, "repaint": repaint, "extend": extend,
             "lyric_edit": lyric_edit, "remix": remix, **V15_WORKFLOWS, **V15_TASK_WORKFLOWS}


def api_prompt(spec: dict) -> dict:
    """The spec's graph as an API-format prompt (string node ids)."""
    return {str(k): v for k, v in spec["api"].items()}


# ---------------------------------------------------------------------------------------------
# Building the files in the frontend
# ---------------------------------------------------------------------------------------------
# Settings for the page that builds the files: export without a file-name prompt, and without
# the view (pan / zoom) of this browser, so that ComfyUI fits the graph to the user's screen
# when the file is opened.
EXPORT_SETTINGS = {"Comfy.PromptFilename": False, "Comfy.EnableWorkflowViewRestore": False,
                   "Comfy.Minimap.Visible": False}   # no minimap in the Templates pictures
SETTING_DEFAULTS = {"Comfy.PromptFilename": True, "Comfy.EnableWorkflowViewRestore": True,
                    "Comfy.Minimap.Visible": True}   # frontend 1.32.9

BUILD_GRAPH_JS = """async ([api, name, columns, note, titles, models, gaps]) => {
    const app = window.app;
    const [columnGap, rowGap] = gaps;
    app.loadApiJson(api, name + '.json');
    for (const [id, title] of Object.entries(titles)) app.graph.getNodeById(Number(id)).title = title;
    for (const [id, entries] of Object.entries(models)) app.graph.getNodeById(Number(id)).properties.models = entries;
    const noteNode = LiteGraph.createNode('MarkdownNote');
    noteNode.title = 'Read me';
    app.graph.add(noteNode);
    // The text is set once the node is in the graph: frontend 1.43 keeps widget values per graph
    // and node id, and a value set before add() gave way to the previous workflow's note.
    noteNode.widgets[0].value = note;
    // Columns left to right, nodes top to bottom; a node is never made smaller than the
    // frontend needs. pos is the top left of the body: the title bar sits above it. Panels
    // (the waveform picker, the lyric editor) give their nodes their height only once the
    // canvas has drawn them: lay out, let the frontend draw, and lay out again until no node
    // changes size, so that no node covers another when the file is opened.
    const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
    const settle = async () => {
        for (let i = 0; i < 3; i++) {
            app.graph.setDirtyCanvas(true, true);
            app.canvas.draw(true, true);
            await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)));
        }
    };
    const layout = () => {
        let x = 0;
        for (const column of columns) {
            let y = 0, width = 0;
            for (const [id, w, h] of column) {
                const n = id === 'note' ? noteNode : app.graph.getNodeById(Number(id));
                if (!n) throw new Error('node ' + id + ' is missing after loadApiJson');
                const least = n.computeSize();
                n.setSize([Math.max(w, n.size[0], least[0]), Math.max(h, n.size[1], least[1])]);
                n.pos = [x, y];
                y += n.size[1] + titleHeight + rowGap;
                width = Math.max(width, n.size[0]);
            }
            x += width + columnGap;
        }
        return JSON.stringify(app.graph.nodes.map((n) => [n.id, n.size[0], n.size[1]]));
    };
    let sizes = null;
    for (let round = 0; round < 5; round++) {
        await settle();
        const now = layout();
        if (now === sizes) break;
        sizes = now;
    }
    delete app.graph.extra.ds;
    app.graph.setDirtyCanvas(true, true);
    return app.graph.nodes.length;
}"""


def build_in_page(page, name: str, spec: dict) -> str:
    """The frontend's export of one workflow (JSON text) in an open ComfyUI page."""
    placed = sorted(str(i) for column in spec["columns"] for i, _, _ in column)
    if placed != sorted([str(k) for k in spec["api"]] + ["note"]):
        raise RuntimeError(f"{name}: the layout places {placed}, the graph has {sorted(spec['api'])} and a note")
    loader_models = spec.get("loader_models",
                             [{"name": REAL_CHECKPOINT, "url": REAL_CHECKPOINT_URL, "directory": "checkpoints"}])
    models = {LOADER: loader_models, **spec.get("models", {})}
    columns = [[[str(i), w, h] for i, w, h in column] for column in spec["columns"]]
    count = page.evaluate(BUILD_GRAPH_JS, [api_prompt(spec), name, columns, spec["note"],
                                           {str(k): v for k, v in spec.get("titles", {}).items()},
                                           {str(k): v for k, v in models.items()}, [COLUMN_GAP, ROW_GAP]])
    if count != len(spec["api"]) + 1:
        raise RuntimeError(f"{name}: the frontend built {count} nodes, expected {len(spec['api']) + 1}")
    with page.expect_download() as download:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.ExportWorkflow')")
    text = Path(download.value.path()).read_text()
    return text if text.endswith("\n") else text + "\n"


THUMBNAIL_WIDTH, THUMBNAIL_QUALITY = 480, 70
# Screen margins (left, top, right, bottom) that the frontend's own bars may cover.
THUMBNAIL_MARGINS = (70, 110, 20, 30)
# Zoom and pan so the whole graph fills the screen inside the margins; returns its screen box.
FRAME_GRAPH_JS = """([[left, top, right, bottom], pad]) => {
    const app = window.app, canvas = app.canvas, title = LiteGraph.NODE_TITLE_HEIGHT;
    canvas.deselectAll();
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of app.graph.nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const r = canvas.canvas.getBoundingClientRect();
    const width = r.width - left - right, height = r.height - top - bottom;
    const scale = Math.min(width / (x1 - x0 + 2 * pad), height / (y1 - y0 + 2 * pad));
    canvas.ds.scale = scale;
    canvas.ds.offset = [(left + (width - (x1 - x0) * scale) / 2) / scale - x0,
                        (top + (height - (y1 - y0) * scale) / 2) / scale - y0];
    app.graph.setDirtyCanvas(true, true);
    canvas.draw(true, true);
    const sx = (x) => r.x + (x + canvas.ds.offset[0]) * scale, sy = (y) => r.y + (y + canvas.ds.offset[1]) * scale;
    return {x: sx(x0 - pad), y: sy(y0 - pad), width: (x1 - x0 + 2 * pad) * scale, height: (y1 - y0 + 2 * pad) * scale};
}"""


def thumbnail(page) -> bytes:
    """The Templates dialog's picture of the graph now on the canvas: the frontend's own drawing,
    fitted to the window, as a small JPEG (ComfyUI 0.3.75 and 0.20.1 both ask for <name>.jpg
    beside an extension's workflow)."""
    import io

    from PIL import Image

    box = page.evaluate(FRAME_GRAPH_JS, [THUMBNAIL_MARGINS, 24])
    page.wait_for_timeout(800)   # DOM widgets (lyrics, waveform panels) follow the new view
    picture = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
    picture.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()


def generate(server: "harness.ComfyServer", names=None, ui: "harness.ComfyPage | None" = None,
             thumbnails: dict | None = None) -> dict[str, str]:
    """{name: JSON text} of the workflows, built in the frontend of a running server (in a new
    headless browser, or in the open page `ui`, which is reloaded before and after). With a
    ``thumbnails`` dict, each workflow's picture (JPEG bytes) is put in it by name."""
    names = list(names or WORKFLOWS)
    before = requests.get(server.url + "/settings", timeout=30).json()
    requests.post(server.url + "/settings", json=EXPORT_SETTINGS, timeout=30).raise_for_status()
    try:
        with (server.browser(*VIEWPORT) if ui is None else _reloaded(ui)) as page:
            built = {}
            for name in names:
                built[name] = build_in_page(page.page, name, WORKFLOWS[name]())
                if thumbnails is not None:
                    thumbnails[name] = thumbnail(page.page)
            return built
    finally:  # the server may be shared (the test session's): leave its settings as they were
        restore = {key: before.get(key, default) for key, default in SETTING_DEFAULTS.items()}
        requests.post(server.url + "/settings", json=restore, timeout=30).raise_for_status()
        if ui is not None:
            _reload(ui)


def _reload(ui) -> None:
    ui.page.reload()
    ui.page.wait_for_function("window.app && window.app.graph")


@contextlib.contextmanager
def _reloaded(ui):
    _reload(ui)          # the page reads the settings when it loads
    yield ui


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=WORKFLOWS_DIR, help="folder to write (default: workflows/)")
    ap.add_argument("--only", action="append", choices=sorted(WORKFLOWS), help="only this workflow (repeatable)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file in --out differs")
    args = ap.parse_args(argv)

    with harness.ComfyServer(base_dir=tempfile.mkdtemp(prefix="acestep-make-workflows-")) as server:
        pictures = {} if not args.check else None
        built = generate(server, args.only, thumbnails=pictures)
    stale = []
    for name, text in built.items():
        path = args.out / f"{name}.json"
        old = path.read_text() if path.exists() else ""
        if args.check:
            if old != text:
                stale.append(name)
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                           str(path), f"{name} (generated)", n=2))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.with_suffix(".jpg").write_bytes(pictures[name])   # the Templates dialog's picture
        print(f"{'unchanged' if old == text else 'wrote'} {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python scripts/make_workflows.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
