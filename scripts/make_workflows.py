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
harness (tests/comfyui/harness.py) starts the server and the browser.
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
sys.path.insert(0, str(REPO / "tests" / "comfyui"))
import harness  # noqa: E402  (tests/comfyui/harness.py: ComfyServer, ComfyPage)

REAL_CHECKPOINT = "ace_step_v1_3.5b.safetensors"
REAL_CHECKPOINT_URL = ("https://huggingface.co/Comfy-Org/ACE-Step_ComfyUI_repackaged/resolve/main/"
                       "all_in_one/ace_step_v1_3.5b.safetensors")
INPUT_AUDIO = "input_song.mp3"   # what audio2audio's LoadAudio names; the user picks their own

# Sampling values of ComfyUI's own ACE-Step templates (comfyui-workflow-templates,
# audio_ace_step_1_t2a_song / _m2m_editing): 50 Euler steps on the simple schedule, CFG 5,
# flow shift 5, Reinhard tone mapping of the CFG result.
STEPS, CFG, SHIFT = 50, 5.0, 5.0
SAMPLER, SCHEDULER = "euler", "simple"
TONEMAP_MULTIPLIER = 1.0
SONG_SECONDS = 120.0
EDIT_DENOISE = 0.3

# Viewport of the browser that builds the files (the frontend measures nodes in it).
VIEWPORT = (1600, 1000)

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

REMIX_TAGS = "lo-fi hip hop, mellow, jazzy electric piano, soft drums, vinyl crackle, relaxed, 80 bpm"
REMIX_LYRICS = "[instrumental]"

CHECKPOINT_NOTE = f"""### Checkpoint
Put the ACE-Step v1 (3.5B) checkpoint in `ComfyUI/models/checkpoints/` and pick it in **Load ACE-Step Checkpoint**:
- [{REAL_CHECKPOINT}]({REAL_CHECKPOINT_URL}) (7.7 GB, Comfy-Org's single file), or
- the original release ([ACE-Step/ACE-Step-v1-3.5B](https://huggingface.co/ACE-Step/ACE-Step-v1-3.5B)): one folder
  holding `ace_step_transformer/`, `music_dcae_f8c8/`, `music_vocoder/` and `umt5-base/`, under
  `models/checkpoints/` or `models/diffusion_models/`.

`acestep_tiny_RANDOM_WEIGHTS_demo.safetensors` (made by `scripts/run_comfyui.sh` when there is no real
checkpoint) has **random weights**: the workflow runs quickly with it, but it makes noise, not music."""

TEXT2MUSIC_NOTE = f"""## ACE-Step: text to music
- **tags**: the style (genre, instruments, mood, voice, tempo), comma separated.
- **lyrics**: one sung line per line, sections marked `[verse]`, `[chorus]`, `[bridge]`, `[outro]`;
  `[instrumental]` for no vocals.
- **seconds** (EmptyAceStepLatentAudio): the length; up to 240 s works best.
- Sampling as in ComfyUI's ACE-Step template: {STEPS} steps, CFG {CFG:g}, shift {SHIFT:g} (ModelSamplingSD3);
  the tone-mapping nodes keep CFG from over-saturating.
- The song is saved as FLAC in `ComfyUI/output/audio/`.

{CHECKPOINT_NOTE}"""

AUDIO2AUDIO_NOTE = f"""## ACE-Step: audio to audio (remix)
- **Load Audio**: the song to change. Upload it with the node's button, or put it in `ComfyUI/input/`
  (`{INPUT_AUDIO}` is only a placeholder name). Any sample rate, mono or stereo: the VAE resamples to
  44.1 kHz stereo.
- **tags** and **lyrics** describe the result: change the tags to restyle the song, write its lyrics
  to keep the vocals.
- **denoise** (KSampler) sets how much changes: 0.2-0.4 keeps the song and changes its sound, 0.6 and
  more keeps little of it.
- The result is saved as FLAC in `ComfyUI/output/audio/`.

{CHECKPOINT_NOTE}"""


# ---------------------------------------------------------------------------------------------
# The graphs, in API format
# ---------------------------------------------------------------------------------------------
def link(node_id: int, output: int = 0) -> list:
    return [str(node_id), output]


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def ksampler(model: list, positive: list, negative: list, latent: list, denoise: float, seed: int) -> dict:
    return node("KSampler", model=model, seed=seed, control_after_generate="randomize", steps=STEPS, cfg=CFG,
                sampler_name=SAMPLER, scheduler=SCHEDULER, positive=positive, negative=negative,
                latent_image=latent, denoise=denoise)


def model_chain(loader: int, first_id: int) -> tuple[dict, list]:
    """ModelSamplingSD3 -> LatentApplyOperationCFG(Reinhard tone map): the model KSampler gets."""
    sampling, tonemap, cfg_op = first_id, first_id + 1, first_id + 2
    nodes = {
        sampling: node("ModelSamplingSD3", model=link(loader, 0), shift=SHIFT),
        tonemap: node("LatentOperationTonemapReinhard", multiplier=TONEMAP_MULTIPLIER),
        cfg_op: node("LatentApplyOperationCFG", model=link(sampling), operation=link(tonemap)),
    }
    return nodes, link(cfg_op)


def text2music() -> dict:
    chain, model = model_chain(1, 5)
    nodes = {
        1: node("LoadAceStepCheckpoint", ckpt_name=REAL_CHECKPOINT, weight_dtype="default"),
        2: node("TextEncodeAceStepAudio", clip=link(1, 1), tags=SONG_TAGS, lyrics=SONG_LYRICS, lyrics_strength=1.0),
        3: node("ConditioningZeroOut", conditioning=link(2)),
        4: node("EmptyAceStepLatentAudio", seconds=SONG_SECONDS, batch_size=1),
        **chain,                                                                      # 5, 6, 7
        8: ksampler(model, link(2), link(3), link(4), denoise=1.0, seed=1234),
        9: node("VAEDecodeAudio", samples=link(8), vae=link(1, 2)),
        10: node("SaveAudio", audio=link(9), filename_prefix="audio/ace_step_text2music"),
    }
    layout = {1: (0, 0, 440, 110), 2: (480, 0, 440, 520), 3: (480, 560, 300, 50),
              4: (960, 0, 300, 90), 5: (960, 140, 300, 60), 6: (960, 250, 300, 60), 7: (960, 360, 300, 50),
              8: (1300, 0, 300, 270), 9: (1300, 320, 300, 50), 10: (1300, 420, 300, 100)}
    return {"api": nodes, "layout": layout, "note": (TEXT2MUSIC_NOTE, (0, 160, 440, 340))}


def audio2audio() -> dict:
    chain, model = model_chain(1, 6)
    nodes = {
        1: node("LoadAceStepCheckpoint", ckpt_name=REAL_CHECKPOINT, weight_dtype="default"),
        2: node("TextEncodeAceStepAudio", clip=link(1, 1), tags=REMIX_TAGS, lyrics=REMIX_LYRICS, lyrics_strength=1.0),
        3: node("ConditioningZeroOut", conditioning=link(2)),
        4: node("LoadAudio", audio=INPUT_AUDIO),
        5: node("VAEEncodeAudio", audio=link(4), vae=link(1, 2)),
        **chain,                                                                      # 6, 7, 8
        9: ksampler(model, link(2), link(3), link(5), denoise=EDIT_DENOISE, seed=1234),
        10: node("VAEDecodeAudio", samples=link(9), vae=link(1, 2)),
        11: node("SaveAudio", audio=link(10), filename_prefix="audio/ace_step_audio2audio"),
    }
    layout = {1: (0, 0, 440, 110), 4: (0, 160, 440, 140),
              2: (480, 0, 440, 420), 3: (480, 460, 300, 50),
              5: (960, 0, 300, 50), 6: (960, 140, 300, 60), 7: (960, 250, 300, 60), 8: (960, 360, 300, 50),
              9: (1300, 0, 300, 270), 10: (1300, 320, 300, 50), 11: (1300, 420, 300, 100)}
    return {"api": nodes, "layout": layout, "note": (AUDIO2AUDIO_NOTE, (0, 350, 440, 340))}


WORKFLOWS = {"text2music": text2music, "audio2audio": audio2audio}


def api_prompt(spec: dict) -> dict:
    """The spec's graph as an API-format prompt (string node ids)."""
    return {str(k): v for k, v in spec["api"].items()}


# ---------------------------------------------------------------------------------------------
# Building the files in the frontend
# ---------------------------------------------------------------------------------------------
# Settings for the page that builds the files: export without a file-name prompt, and without
# the view (pan / zoom) of this browser, so that ComfyUI fits the graph to the user's screen
# when the file is opened.
EXPORT_SETTINGS = {"Comfy.PromptFilename": False, "Comfy.EnableWorkflowViewRestore": False}
SETTING_DEFAULTS = {"Comfy.PromptFilename": True, "Comfy.EnableWorkflowViewRestore": True}   # frontend 1.32.9

BUILD_GRAPH_JS = """async ([api, name, layout, note, models]) => {
    const app = window.app;
    app.loadApiJson(api, name + '.json');
    for (const [id, [x, y, w, h]] of Object.entries(layout)) {
        const n = app.graph.getNodeById(Number(id));
        if (!n) throw new Error('node ' + id + ' is missing after loadApiJson');
        n.pos = [x, y];
        n.setSize([Math.max(w, n.size[0]), Math.max(h, n.size[1])]);
    }
    for (const [id, entries] of Object.entries(models)) app.graph.getNodeById(Number(id)).properties.models = entries;
    const [text, [x, y, w, h]] = note;
    const n = LiteGraph.createNode('MarkdownNote');
    n.title = 'Read me';
    n.pos = [x, y];
    n.setSize([w, h]);
    n.widgets[0].value = text;
    app.graph.add(n);
    delete app.graph.extra.ds;
    app.graph.setDirtyCanvas(true, true);
    return app.graph.nodes.length;
}"""


def build_in_page(page, name: str, spec: dict) -> str:
    """The frontend's export of one workflow (JSON text) in an open ComfyUI page."""
    layout = {str(k): list(v) for k, v in spec["layout"].items()}
    models = {"1": [{"name": REAL_CHECKPOINT, "url": REAL_CHECKPOINT_URL, "directory": "checkpoints"}]}
    count = page.evaluate(BUILD_GRAPH_JS, [api_prompt(spec), name, layout, [spec["note"][0], list(spec["note"][1])],
                                           models])
    if count != len(spec["api"]) + 1:
        raise RuntimeError(f"{name}: the frontend built {count} nodes, expected {len(spec['api']) + 1}")
    with page.expect_download() as download:
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.ExportWorkflow')")
    text = Path(download.value.path()).read_text()
    return text if text.endswith("\n") else text + "\n"


def generate(server: "harness.ComfyServer", names=None, ui: "harness.ComfyPage | None" = None) -> dict[str, str]:
    """{name: JSON text} of the workflows, built in the frontend of a running server (in a new
    headless browser, or in the open page `ui`, which is reloaded before and after)."""
    names = list(names or WORKFLOWS)
    before = requests.get(server.url + "/settings", timeout=30).json()
    requests.post(server.url + "/settings", json=EXPORT_SETTINGS, timeout=30).raise_for_status()
    try:
        with (server.browser(*VIEWPORT) if ui is None else _reloaded(ui)) as page:
            return {name: build_in_page(page.page, name, WORKFLOWS[name]()) for name in names}
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
        built = generate(server, args.only)
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
        print(f"{'unchanged' if old == text else 'wrote'} {path}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python scripts/make_workflows.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
