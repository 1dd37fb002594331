"""The pack's frontend extension (web/js/) in the real ComfyUI frontend, headless Chromium.

  * the waveform region picker on AceStepRepaint / AceStepExtend: a graph LoadAudio (a
    generated WAV in input/) -> VAEEncodeAudio -> AceStepRepaint -> KSampler -> VAEDecodeAudio
    -> SaveAudio on the tiny checkpoint; the mouse drags across the drawn waveform, the widgets
    must hold the dragged times, the prompt the Run button sends must carry them, and the run
    must succeed;
  * the picker on a generated song: text2music -> VAEDecodeAudio -> SaveAudio with a repaint of
    the same latent (through a Reroute): a placeholder until the first run, then the saved
    song's waveform at its length, redrawn when a later run saves a new one;
  * an older frontend without node.addDOMWidget (hidden from our modules before they load):
    no panels, no errors, and the plain widgets still set what the run uses;
  * the lyric editor on TextEncodeAceStepAudio: lyrics with structure and language tags and a
    Chinese and a Japanese line are typed; the highlighted tags, the token count and the
    per-line language / romanized text must equal the Python LyricTokenizer's own output;
  * the HTTP routes behind them (nodes/routes.py), including their refusals.

Screenshots of both widgets (for docs/images/, only with scripts/refresh_readme_images.sh: lyric_editor.png, region_picker.png,
region_picker_decoded.png).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from comfyui_harness import CHROMIUM_FLAGS, REPO, ComfyPage, find_chromium

SAMPLE_RATE = 44100
FRAME_SECONDS = 4096 / SAMPLE_RATE     # one latent frame: the finest time step the nodes use
SONG_SECONDS = 3.0
SCREEN = (1500, 950)

LYRICS = ("[verse]\n"
          "Streetlights humming in the rain, 2 times\n"
          "[fr]Bonjour mes amis\n"
          "我爱你中国\n"
          "東京の夜はきれいです\n"
          "\n"
          "[chorus]\n"
          "Dancing underneath a neon sky")

# Node ids of the test graph (API format; loaded with app.loadApiJson, as a pasted API prompt).
CKPT, TEXT, ZERO, LOAD, ENCODE, REPAINT, SAMPLER, DECODE, SAVE, EXTEND = range(1, 11)
LAYOUT = {  # id: (x, y, width, height) in canvas units; the view is reset to scale 1
    TEXT: (20, 40, 560, 560), REPAINT: (620, 40, 520, 330), EXTEND: (620, 420, 520, 300),
    CKPT: (1200, 40, 300, 100), ZERO: (1200, 200, 250, 50), LOAD: (1200, 300, 300, 150),
    ENCODE: (1200, 500, 250, 50), SAMPLER: (1550, 40, 300, 270), DECODE: (1550, 350, 250, 50),
    SAVE: (1550, 450, 300, 100),
}


def link(node: int, output: int = 0) -> list:
    return [str(node), output]


def repaint_graph(checkpoint: str, audio_name: str) -> dict:
    nodes = {
        CKPT: ("LoadAceStepCheckpoint", {"ckpt_name": checkpoint, "weight_dtype": "default"}),
        TEXT: ("TextEncodeAceStepAudio", {"clip": link(CKPT, 1), "tags": "pop, piano", "lyrics": "[verse]\nla la la",
                                          "lyrics_strength": 1.0}),
        ZERO: ("ConditioningZeroOut", {"conditioning": link(TEXT)}),
        LOAD: ("LoadAudio", {"audio": audio_name}),
        ENCODE: ("VAEEncodeAudio", {"audio": link(LOAD), "vae": link(CKPT, 2)}),
        REPAINT: ("AceStepRepaint", {"samples": link(ENCODE), "start_seconds": 0.0, "end_seconds": 1.0,
                                     "variance": 0.5}),
        SAMPLER: ("KSampler", {"model": link(CKPT), "positive": link(TEXT), "negative": link(ZERO),
                               "latent_image": link(REPAINT), "seed": 7, "steps": 2, "cfg": 3.0,
                               "sampler_name": "euler", "scheduler": "simple", "denoise": 0.5}),
        DECODE: ("VAEDecodeAudio", {"samples": link(SAMPLER), "vae": link(CKPT, 2)}),
        SAVE: ("SaveAudio", {"audio": link(DECODE), "filename_prefix": "audio/acestep_web_repaint"}),
        EXTEND: ("AceStepExtend", {"samples": link(ENCODE), "left_seconds": 0.0, "right_seconds": 0.5}),
    }
    return {str(i): {"class_type": kind, "inputs": inputs} for i, (kind, inputs) in nodes.items()}


BUILD_JS = """([api, layout]) => {
    const app = window.app;
    app.loadApiJson(api, 'acestep_web_test.json');
    for (const [id, [x, y, w, h]] of Object.entries(layout)) {
        const n = app.graph.getNodeById(Number(id));
        n.pos = [x, y];
        n.setSize([w, h]);
    }
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [80, 110];  // clear of the side bar and the menu
    app.graph.setDirtyCanvas(true, true);
    return app.graph.nodes.length;
}"""

# The page rectangle of a node, title bar included (for screenshots).
NODE_RECT_JS = """(id) => {
    const app = window.app, n = app.graph.getNodeById(id), ds = app.canvas.ds;
    const box = app.canvas.canvas.getBoundingClientRect();
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    return {x: box.left + (n.pos[0] + ds.offset[0]) * ds.scale,
            y: box.top + (n.pos[1] - title + ds.offset[1]) * ds.scale,
            width: n.size[0] * ds.scale, height: (n.size[1] + title) * ds.scale};
}"""

WIDGETS_JS = """(id) => Object.fromEntries(window.app.graph.getNodeById(id).widgets
    .filter(w => w.serialize !== false).map(w => [w.name, w.value]))"""

# The names of our panels (DOM widgets) on each of the given nodes.
OUR_WIDGETS_JS = """(ids) => ids.map(id => window.app.graph.getNodeById(id).widgets
    .filter(w => w.name.startsWith('acestep_')).map(w => w.name))"""


def write_song(path: Path, seconds: float) -> Path:
    """Three seconds of a tone that fades in, so the drawn waveform has a visible shape."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    envelope = np.minimum(1.0, t / seconds * 1.5)
    left = 0.5 * envelope * np.sin(2 * np.pi * 220.0 * t)
    right = 0.4 * envelope * np.sin(2 * np.pi * 277.0 * t)
    soundfile.write(str(path), np.stack([left, right], axis=1).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def song(comfy_server, tmp_path_factory) -> str:
    path = write_song(tmp_path_factory.mktemp("web-audio") / "acestep_web_song.wav", SONG_SECONDS)
    return comfy_server.add_input_file(path)


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's pages (a page each: a fresh frontend and storage)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def graph_page(chromium, server, api_prompt: dict, layout: dict, init_script: str = ""):
    """The frontend with an API-format graph on the canvas (no minimap / fps overlay), laid out
    by `layout`; `init_script` runs in the page before any of the frontend's scripts."""
    changes = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
    before = requests.get(server.url + "/settings", timeout=30).json()
    requests.post(server.url + "/settings", json=changes, timeout=30).raise_for_status()
    page = chromium.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
    try:
        # No 'Try Nodes 2.0' banner over the canvas (read when the page loads).
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true');\n" + init_script)
        ui = ComfyPage(server, page)
        ui.open()
        count = ui.evaluate(BUILD_JS, [api_prompt, {str(k): list(v) for k, v in layout.items()}])
        assert count == len(layout)
        yield ui
        assert ui.page_errors == [], f"errors in the page: {ui.page_errors}"
    finally:
        page.close()
        restore = {key: before.get(key, True) for key in changes}
        requests.post(server.url + "/settings", json=restore, timeout=30).raise_for_status()


@pytest.fixture(scope="module")
def page(chromium, comfy_server, tiny_checkpoints, song):
    """The frontend with the LoadAudio repaint test graph on the canvas."""
    with graph_page(chromium, comfy_server, repaint_graph(tiny_checkpoints["comfyui"], song), LAYOUT) as ui:
        yield ui


def wave_selector(mode: str) -> str:
    return f".acestep-wave[data-mode={mode}]"


def wait_for_waveform(ui, mode: str) -> dict:
    ui.page.wait_for_function(f"document.querySelector('{wave_selector(mode)}')?.dataset.state === 'ready'",
                              timeout=60_000)
    box = ui.page.locator(f"{wave_selector(mode)} canvas").bounding_box()
    data = ui.evaluate(f"() => ({{...document.querySelector('{wave_selector(mode)}').dataset}})")
    return {"box": box, "duration": float(data["duration"]), "view": json.loads(data["view"])}


def drag(ui, box: dict, f0: float, f1: float, y_frac: float = 0.5) -> tuple[float, float]:
    """Press at fraction f0 of the canvas width, move to f1 in small steps, release; returns
    the page x of both points."""
    y = box["y"] + box["height"] * y_frac
    x0, x1 = box["x"] + box["width"] * f0, box["x"] + box["width"] * f1
    ui.page.mouse.move(x0, y)
    ui.page.mouse.down()
    ui.page.mouse.move(x1, y, steps=12)
    ui.page.mouse.up()
    return x0, x1


def node_screenshot(ui, node_id: int, path: Path) -> None:
    """A picture of one node as it is on the canvas (nothing selected, so no selection toolbox)."""
    ui.evaluate("() => { window.app.canvas.deselectAll(); window.app.graph.setDirtyCanvas(true, true); }")
    ui.page.wait_for_timeout(500)
    rect = ui.evaluate(NODE_RECT_JS, node_id)
    ui.page.screenshot(path=str(path), clip={k: rect[k] + d for k, d in (("x", -8), ("y", -8), ("width", 16),
                                                                              ("height", 16))})


def test_routes(comfy_server, song):
    """Peaks equal the file's own min/max per slice; bad requests are refused with a reason."""
    r = comfy_server.get("/acestep/audio/peaks", params={"filename": song, "type": "input", "bins": 100})
    data = r.json()
    samples, rate = soundfile.read(str(comfy_server.base_dir / "input" / song), dtype="float32", always_2d=True)
    assert data["sample_rate"] == rate and data["channels"] == 2
    assert data["duration"] == pytest.approx(samples.shape[0] / rate)
    mono = samples.mean(axis=1)
    edges = np.linspace(0, len(mono), 101).astype(int)
    expected = [[mono[a:b].min(), mono[a:b].max()] for a, b in zip(edges[:-1], edges[1:])]
    assert np.allclose(data["peaks"], expected, atol=1e-4)

    def status(method, path, **kw):
        return requests.request(method, comfy_server.url + path, timeout=30, **kw).status_code

    assert status("GET", "/acestep/audio/peaks", params={"filename": "missing.wav"}) == 404
    assert status("GET", "/acestep/audio/peaks", params={"filename": "../server.log"}) == 400
    assert status("GET", "/acestep/audio/peaks", params={"filename": song, "type": "models"}) == 400
    assert status("POST", "/acestep/lyrics/preview", data="not json") == 400
    assert status("POST", "/acestep/lyrics/preview", json={"lyrics": 3}) == 400
    empty = requests.post(comfy_server.url + "/acestep/lyrics/preview", json={"lyrics": ""}, timeout=30).json()
    assert empty["lines"] == [] and empty["total_tokens"] == 1


def test_region_picker_drag_sets_widgets_and_the_run_uses_them(comfy_server, page, song, readme_images):
    ui = page
    wave = wait_for_waveform(ui, "repaint")
    assert ui.evaluate(OUR_WIDGETS_JS, [TEXT, REPAINT, EXTEND]) == [["acestep_lyrics_preview"], ["acestep_waveform"],
                                                                    ["acestep_waveform"]]
    assert wave["duration"] == pytest.approx(SONG_SECONDS, abs=1e-3)
    x0, x1 = drag(ui, wave["box"], 0.62, 0.21)  # right to left: the region is still start < end
    box, duration = wave["box"], wave["duration"]
    expected = sorted((x - box["x"]) / box["width"] * duration for x in (x0, x1))
    values = ui.evaluate(WIDGETS_JS, REPAINT)
    measured = [values["start_seconds"], values["end_seconds"]]
    error = max(abs(m - e) for m, e in zip(measured, expected))
    print(f"repaint drag: expected {expected}, widgets {measured}, max |error| {error:.4f} s")
    assert error <= FRAME_SECONDS, (measured, expected)
    assert measured[0] != 0.0 and measured[1] != 1.0  # moved from the graph's values

    # The extend picker: drag the right handle outwards from the song's end.
    ext = wait_for_waveform(ui, "extend")
    v0, v1 = ext["view"]
    end_frac = (ext["duration"] - v0) / (v1 - v0)
    _, x_end = drag(ui, ext["box"], end_frac + 0.02, min(0.97, end_frac + 0.15))
    right_expected = v0 + (x_end - ext["box"]["x"]) / ext["box"]["width"] * (v1 - v0) - ext["duration"]
    ext_values = ui.evaluate(WIDGETS_JS, EXTEND)
    print(f"extend drag: right_seconds {ext_values['right_seconds']} expected {right_expected:.4f}")
    assert abs(ext_values["right_seconds"] - right_expected) <= FRAME_SECONDS
    assert ext_values["left_seconds"] == 0.0 and ext_values["right_seconds"] > 1.0  # was 0.5

    # Editing a widget moves the drawn region (the canvas pixels change where the region went).
    before = ui.page.locator(f"{wave_selector('repaint')} canvas").screenshot()
    ui.evaluate(f"""() => {{ const n = window.app.graph.getNodeById({REPAINT});
        const w = n.widgets.find(w => w.name === 'end_seconds'); w.value = {measured[1]} + 0.8;
        w.callback?.(w.value); }}""")
    ui.page.wait_for_function(f"""document.querySelector('{wave_selector('repaint')} canvas')
        && JSON.parse(document.querySelector('{wave_selector('repaint')}').dataset.view)[1] > 0""")
    ui.page.wait_for_timeout(600)
    after = ui.page.locator(f"{wave_selector('repaint')} canvas").screenshot()
    assert before != after
    ui.evaluate(f"""() => {{ const n = window.app.graph.getNodeById({REPAINT});
        const w = n.widgets.find(w => w.name === 'end_seconds'); w.value = {measured[1]}; w.callback?.(w.value); }}""")
    ui.page.wait_for_timeout(600)

    node_screenshot(ui, REPAINT, readme_images / "region_picker.png")

    prompt = ui.graph_to_prompt()
    inputs = prompt[str(REPAINT)]["inputs"]
    assert (inputs["start_seconds"], inputs["end_seconds"]) == (measured[0], measured[1])
    assert prompt[str(EXTEND)]["inputs"]["right_seconds"] == ext_values["right_seconds"]
    assert not any(k.startswith("acestep_") for node in prompt.values() for k in node["inputs"])

    # Playback source: the file itself through ComfyUI's /view.
    src = ui.evaluate(f"() => document.querySelector('{wave_selector('repaint')}').dataset.src")
    assert "/view?" in src and song in src
    played = requests.get(src, timeout=30)
    assert played.ok and played.content == (comfy_server.base_dir / "input" / song).read_bytes()

    prompt_id = ui.run()
    entry = comfy_server.wait_for(prompt_id, timeout=600)
    queued = entry["prompt"][2][str(REPAINT)]["inputs"]
    assert (queued["start_seconds"], queued["end_seconds"]) == (measured[0], measured[1])
    saved = [p for p in comfy_server.output_files(entry) if p.suffix == ".flac"]
    assert saved, entry["outputs"]
    data, rate = soundfile.read(str(saved[0]), always_2d=True)
    assert rate == SAMPLE_RATE and np.isfinite(data).all() and data.shape[0] > 0


SET_REGION_JS = """([id, start, end]) => { const n = window.app.graph.getNodeById(id);
    for (const [name, value] of [['start_seconds', start], ['end_seconds', end]]) {
        const w = n.widgets.find(w => w.name === name); w.value = value; w.callback?.(value); } }"""
# The canvas' pixel (red, green, blue) at time t, near its bottom edge (below the waveform).
PIXEL_AT_JS = """([selector, t]) => { const root = document.querySelector(selector);
    const canvas = root.querySelector('canvas'); const view = JSON.parse(root.dataset.view);
    const f = (t - view[0]) / (view[1] - view[0]);
    const d = canvas.getContext('2d').getImageData(Math.round(f * (canvas.width - 1)), canvas.height - 3, 1, 1).data;
    return [d[0], d[1], d[2]]; }"""


def test_region_picker_shows_regions_outside_the_song(page):
    """Past the end of the song, and start after end, are shown where the user looks: the part
    beyond the song is marked on the waveform, the bar says "past the end of the song (3.00 s)"
    (seconds, no frame numbers), and start >= end is an error state, not a swapped region."""
    ui = page
    wave = wait_for_waveform(ui, "repaint")
    song = wave["duration"]
    selector = wave_selector("repaint")
    state_js = f"""() => {{ const r = document.querySelector('{selector}');
        return {{problem: r.dataset.problem, level: r.dataset.problemLevel, view: JSON.parse(r.dataset.view),
                 text: r.querySelector('.acestep-wave-problem').textContent}}; }}"""

    def region(start, end):
        ui.evaluate(SET_REGION_JS, [REPAINT, start, end])
        ui.page.wait_for_timeout(700)   # the picker polls the widgets every 250 ms
        return ui.evaluate(state_js)

    shown = region(20.0, 30.0)                                   # all of it after a 3 s song
    assert shown["problem"] == "after-the-song" and shown["level"] == "error", shown
    assert shown["text"] == f"⚠ region starts past the end of the song ({song:.2f} s)"
    assert shown["view"][1] > 30.0                                  # the region is on the canvas

    shown = region(30.0, 10.0)                                   # start after end
    assert shown["problem"] == "start-after-end" and shown["level"] == "error", shown
    assert "start 30.00 s is not before end 10.00 s" in shown["text"]
    assert ui.evaluate(WIDGETS_JS, REPAINT)["start_seconds"] == 30.0   # nothing swapped behind the user's back

    shown = region(1.0, 2 * song)                                # ends after the song: clamped at run time
    assert shown["problem"] == "ends-after-the-song" and shown["level"] == "warning", shown
    assert f"past the end of the song ({song:.2f} s)" in shown["text"] and "frame" not in shown["text"]
    inside = ui.evaluate(PIXEL_AT_JS, [selector, 0.5 * (1.0 + song)])
    beyond = ui.evaluate(PIXEL_AT_JS, [selector, 1.5 * song])
    print(f"region pixel inside the song {inside}, past its end {beyond}")
    assert beyond[0] - beyond[1] > inside[0] - inside[1] + 10, (inside, beyond)   # redder: marked

    # A drag that starts past the end (the view reaches 31.5 s for a region at 20-30 s) starts at the
    # song's end: start <= end, both inside the song, never a reversed region.
    shown = region(20.0, 30.0)
    view_end = shown["view"][1]
    drag(ui, wave["box"], 0.9, 0.05)
    ui.page.wait_for_timeout(300)
    widgets = ui.evaluate(WIDGETS_JS, REPAINT)
    print(f"drag from past the end: widgets {widgets}, view end {view_end:.2f} s, song {song:.2f} s")
    assert widgets["end_seconds"] == pytest.approx(song, abs=0.01)
    assert widgets["start_seconds"] == pytest.approx(0.05 * view_end, abs=0.05 * view_end)
    assert widgets["start_seconds"] < widgets["end_seconds"]
    region(20.0, 30.0)
    drag(ui, wave["box"], 0.85, 0.95)                            # all of it past the end
    ui.page.wait_for_timeout(300)
    widgets = ui.evaluate(WIDGETS_JS, REPAINT)
    assert widgets["start_seconds"] <= widgets["end_seconds"] <= song + 0.01, widgets

    shown = region(0.5, 1.5)
    assert shown["problem"] == "" and shown["text"] == "" and shown["view"] == [0, pytest.approx(song)]


def test_lyric_editor_matches_the_tokenizer(comfy_server, tiny_checkpoints, page, readme_images):
    from acestep_core.text.lyrics import LyricTokenizer
    from acestep_core.text.vocab import find_lyric_vocab

    ui = page
    ui.evaluate(f"""() => {{
        const w = window.app.graph.getNodeById({TEXT}).widgets.find(w => w.name === 'lyrics');
        w.inputEl.id = 'acestep-test-lyrics'; }}""")
    box = ui.page.locator("#acestep-test-lyrics")
    box.click()
    box.press("Control+A")
    box.press("Delete")
    # Typed as a user does; CJK lines arrive the way an input method commits them.
    for index, line in enumerate(LYRICS.split("\n")):
        if index:
            box.press("Enter")
        if line.isascii():
            box.type(line, delay=2)
        else:
            ui.page.keyboard.insert_text(line)
    ui.page.wait_for_function("(text) => document.querySelector('.acestep-lyrics')?.dataset.state === 'ready'"
                              " && document.querySelector('.acestep-lyrics').dataset.text === text",
                              arg=LYRICS, timeout=60_000)
    shown = ui.evaluate("""() => {
        const panel = document.querySelector('.acestep-lyrics');
        const q = (sel) => [...panel.querySelectorAll(sel)].map(e => e.textContent);
        return {count: panel.querySelector('.acestep-token-count').textContent,
                total: Number(panel.querySelector('.acestep-token-count').dataset.total),
                structure: q('.acestep-tag-structure'), language: q('.acestep-tag-language'),
                rows: [...panel.querySelectorAll('.acestep-line')].map(r => ({
                    lang: r.dataset.language ?? null,
                    text: r.querySelector('.acestep-line-text').textContent,
                    tokens: Number(r.querySelector('.acestep-line-tokens').textContent)}))};
    }""")
    assert ui.evaluate(f"() => window.app.graph.getNodeById({TEXT}).widgets.find(w => w.name === 'lyrics').value"
                       ) == LYRICS

    checkpoint = comfy_server.base_dir / "models" / "checkpoints" / tiny_checkpoints["comfyui"]
    preview = LyricTokenizer(find_lyric_vocab(checkpoint)).preview(LYRICS)
    print(preview.format())
    assert shown["total"] == preview.total_tokens
    assert shown["count"] == f"{preview.total_tokens} / {preview.limit} tokens"
    assert shown["rows"] == [{"lang": line.language, "text": line.text, "tokens": line.token_count}
                             for line in preview.lines]
    assert shown["structure"] == ["[verse]", "[chorus]"]
    assert shown["language"] == ["[fr]"]
    by_source = {line.source: line for line in preview.lines}
    assert by_source["我爱你中国"].language == "zh" and by_source["東京の夜はきれいです"].language == "ja"
    # The romanized lines are Latin text (pinyin, romaji) in the panel.
    for source in ("我爱你中国", "東京の夜はきれいです"):
        text = shown["rows"][LYRICS.split("\n").index(source)]["text"]
        assert text and text.isascii(), text

    node_screenshot(ui, TEXT, readme_images / "lyric_editor.png")


def test_lyric_editor_marks_unknown_tags_and_characters_and_puts_warnings_on_top(page):
    """[badtag] and [zz] are drawn as unknown tags (not like [verse] / [fr]); the vocabulary
    warning names the characters; over the limit, the explanation with the count is the first
    thing in the panel, above the lines, visible without scrolling."""
    lyrics = "\n".join(["[badtag]", "[zz] hello there", "[verse]", "[fr] bonjour", "snow \u2603 and a plane \u2708"]
                       + ["Walking down the empty street tonight under every shining light"] * 500)
    ui = page
    ui.evaluate("""([id, text]) => { const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === 'lyrics');
                    w.value = text; }""", [TEXT, lyrics])
    ui.page.wait_for_function("(text) => document.querySelector('.acestep-lyrics')?.dataset.state === 'ready'"
                              " && document.querySelector('.acestep-lyrics').dataset.text === text",
                              arg=lyrics, timeout=60_000)
    shown = ui.evaluate("""() => {
        const panel = document.querySelector('.acestep-lyrics');
        panel.scrollTop = 0;
        const q = (sel) => [...panel.querySelectorAll(sel)].map(e => e.textContent);
        const warnings = [...panel.querySelectorAll('.acestep-lyrics-warning')];
        const firstRow = panel.querySelector('.acestep-line');
        const box = panel.getBoundingClientRect();
        return {unknown: q('.acestep-tag-unknown'), structure: q('.acestep-tag-structure'),
                language: q('.acestep-tag-language'), warnings: warnings.map(w => w.textContent),
                firstWarningAboveLines: warnings.length > 0 && Boolean(
                    warnings[0].compareDocumentPosition(firstRow) & Node.DOCUMENT_POSITION_FOLLOWING),
                firstWarningVisible: warnings.length > 0 && warnings[0].getBoundingClientRect().top < box.bottom
                                     && warnings[0].getBoundingClientRect().bottom > box.top,
                unknownChars: [...panel.querySelectorAll('.acestep-line')].map(r => r.dataset.unknownCharacters)
                                  .filter(Boolean),
                count: Number(panel.querySelector('.acestep-token-count').dataset.total)};
    }""")
    assert shown["unknown"] == ["[badtag]", "[zz]"], shown
    assert shown["structure"] == ["[verse]"] and shown["language"] == ["[fr]"], shown
    assert shown["count"] > 4096
    first = shown["warnings"][0]
    assert f"the lyrics are {shown['count']} tokens long" in first and "cut off" in first, shown["warnings"]
    assert shown["firstWarningAboveLines"] and shown["firstWarningVisible"], shown
    vocabulary = next(w for w in shown["warnings"] if "not in the lyric vocabulary" in w)
    assert "'\u2603'" in vocabulary and "'\u2708'" in vocabulary, vocabulary
    assert "\u2603\u2708" in shown["unknownChars"], shown["unknownChars"]
    assert any("unknown tags [badtag] (line 1), [zz] (line 2)" in w for w in shown["warnings"]), shown["warnings"]
    ui.evaluate("""(id) => { window.app.graph.getNodeById(id).widgets.find(w => w.name === 'lyrics').value =
                    '[verse]\\nla la la'; }""", TEXT)   # what the module's graph had


def test_region_picker_placeholder_without_audio(page):
    """A repaint node with nothing connected explains what to connect instead of a waveform."""
    ui = page
    node_id = ui.evaluate("""() => {
        const n = LiteGraph.createNode('AceStepRepaint');
        n.pos = [1200, 650];
        window.app.graph.add(n);
        return n.id;
    }""")
    try:
        ui.page.wait_for_function("""(id) => {
            const n = window.app.graph.getNodeById(id);
            const w = n.widgets.find(w => w.name === 'acestep_waveform');
            return w && w.element.dataset.state === 'empty' && w.element.dataset.origin === 'none';
        }""", arg=node_id, timeout=30_000)
        message = ui.evaluate("(id) => window.app.graph.getNodeById(id).widgets"
                              ".find(w => w.name === 'acestep_waveform').element.dataset.message", node_id)
        assert message.startswith("No audio: connect LoadAudio"), message
    finally:
        ui.evaluate("(id) => window.app.graph.remove(window.app.graph.getNodeById(id))", node_id)


# -- the picker on a generated song: text2music -> decode -> save, and a repaint of its latent ------
# Node ids of that graph; the repaint's samples come from the text2music sampler through a Reroute.
(G_CKPT, G_TEXT, G_ZERO, G_EMPTY, G_GENERATE, G_DECODE, G_SAVE, G_REPAINT, G_SAMPLER, G_DECODE2,
 G_SAVE2) = range(1, 12)
GENERATED_LAYOUT = {
    G_REPAINT: (620, 160, 520, 330), G_TEXT: (20, 40, 560, 300), G_CKPT: (20, 400, 300, 100),
    G_ZERO: (20, 560, 250, 50), G_EMPTY: (340, 400, 250, 80), G_GENERATE: (1200, 40, 300, 270),
    G_DECODE: (1200, 350, 250, 50), G_SAVE: (1200, 450, 300, 100), G_SAMPLER: (1550, 40, 300, 270),
    G_DECODE2: (1550, 350, 250, 50), G_SAVE2: (1550, 450, 300, 100),
}
GENERATED_SECONDS = (2.0, 3.0)  # the first run's song, then a longer one: the picker must follow


def generated_repaint_graph(checkpoint: str, seconds: float) -> dict:
    nodes = {
        G_CKPT: ("LoadAceStepCheckpoint", {"ckpt_name": checkpoint, "weight_dtype": "default"}),
        G_TEXT: ("TextEncodeAceStepAudio", {"clip": link(G_CKPT, 1), "tags": "pop, piano",
                                            "lyrics": "[verse]\nla la la", "lyrics_strength": 1.0}),
        G_ZERO: ("ConditioningZeroOut", {"conditioning": link(G_TEXT)}),
        G_EMPTY: ("EmptyAceStepLatentAudio", {"seconds": seconds, "batch_size": 1}),
        G_GENERATE: ("KSampler", {"model": link(G_CKPT), "positive": link(G_TEXT), "negative": link(G_ZERO),
                                  "latent_image": link(G_EMPTY), "seed": 3, "steps": 2, "cfg": 3.0,
                                  "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}),
        G_DECODE: ("VAEDecodeAudio", {"samples": link(G_GENERATE), "vae": link(G_CKPT, 2)}),
        G_SAVE: ("SaveAudio", {"audio": link(G_DECODE), "filename_prefix": "audio/acestep_web_generated"}),
        G_REPAINT: ("AceStepRepaint", {"samples": link(G_GENERATE), "start_seconds": 0.0, "end_seconds": 1.0,
                                       "variance": 0.5}),
        G_SAMPLER: ("KSampler", {"model": link(G_CKPT), "positive": link(G_TEXT), "negative": link(G_ZERO),
                                 "latent_image": link(G_REPAINT), "seed": 7, "steps": 2, "cfg": 3.0,
                                 "sampler_name": "euler", "scheduler": "simple", "denoise": 0.5}),
        G_DECODE2: ("VAEDecodeAudio", {"samples": link(G_SAMPLER), "vae": link(G_CKPT, 2)}),
        G_SAVE2: ("SaveAudio", {"audio": link(G_DECODE2), "filename_prefix": "audio/acestep_web_repainted"}),
    }
    return {str(i): {"class_type": kind, "inputs": inputs} for i, (kind, inputs) in nodes.items()}


# A legacy Reroute node between the text2music sampler and the repaint's samples input.
INSERT_REROUTE_JS = """([source, target]) => {
    const graph = window.app.graph, reroute = LiteGraph.createNode('Reroute');
    reroute.pos = [1160, 400];
    graph.add(reroute);
    const from = graph.getNodeById(source), to = graph.getNodeById(target);
    from.connect(0, reroute, 0);
    reroute.connect(0, to, to.inputs.findIndex(i => i.name === 'samples'));
    const input = to.inputs.find(i => i.name === 'samples');
    return graph.links.get ? graph.links.get(input.link).origin_id : graph.links[input.link].origin_id;
}"""

# Two pickers fed by latent nodes downstream of `source` (a repaint and an extend of it), for a
# moment: the origin each one settles on, once it has loaded.
CHAINED_PICKERS_JS = """async (source) => {
    const graph = window.app.graph, from = graph.getNodeById(source), made = [];
    const origins = {};
    for (const kind of ['AceStepRepaint', 'AceStepExtend']) {
        const between = LiteGraph.createNode(kind), picker = LiteGraph.createNode('AceStepRepaint');
        graph.add(between); graph.add(picker); made.push(between, picker);
        from.connect(0, between, between.inputs.findIndex(i => i.name === 'samples'));
        between.connect(0, picker, picker.inputs.findIndex(i => i.name === 'samples'));
        const element = picker.widgets.find(w => w.name === 'acestep_waveform').element;
        const settled = () => element.dataset.origin && element.dataset.state !== 'loading';
        for (let i = 0; i < 100 && !settled(); i++) await new Promise(r => setTimeout(r, 100));
        await new Promise(r => setTimeout(r, 600));  // a few more polls: the answer must stay
        origins[kind] = settled() ? element.dataset.origin : element.dataset.state;
    }
    for (const node of made) graph.remove(node);
    return origins;
}"""

WAVE_DATA_JS = f"() => ({{...document.querySelector('{wave_selector('repaint')}').dataset}})"


def saved_audio(server, entry: dict, node_id: int) -> Path:
    (item,) = entry["outputs"][str(node_id)]["audio"]
    return server.base_dir / item["type"] / item["subfolder"] / item["filename"]


def test_region_picker_draws_the_decoded_output_of_the_same_latent(chromium, comfy_server, tiny_checkpoints,
                                                                   artifacts_dir, readme_images):
    """text2music -> VAEDecodeAudio -> SaveAudio, and an AceStepRepaint fed (through a Reroute) by
    the same sampler: a placeholder asks for a run; after it, the picker draws the saved song,
    dragging sets the widgets, and the next run (a longer song) redraws it at its new length."""
    first, second = GENERATED_SECONDS
    graph = generated_repaint_graph(tiny_checkpoints["comfyui"], first)
    with graph_page(chromium, comfy_server, graph, GENERATED_LAYOUT) as ui:
        reroute_origin = ui.evaluate(INSERT_REROUTE_JS, [G_GENERATE, G_REPAINT])
        assert reroute_origin not in (G_GENERATE, G_EMPTY)  # samples now come from the Reroute

        # Before any run: the placeholder names the node whose saved audio will be drawn.
        ui.page.wait_for_function(f"document.querySelector('{wave_selector('repaint')}')?.dataset.origin"
                                  " === 'waiting'", timeout=30_000)
        data = ui.evaluate(WAVE_DATA_JS)
        assert data["state"] == "empty" and data["message"].startswith("Run the graph once"), data
        assert f"#{G_SAVE} " in data["message"], data
        node_screenshot(ui, G_REPAINT, artifacts_dir / "region_picker_before_the_first_run.png")

        entry = comfy_server.wait_for(ui.run(), timeout=600)
        song = saved_audio(comfy_server, entry, G_SAVE)
        samples, rate = soundfile.read(str(song), always_2d=True)
        ui.page.wait_for_function(f"document.querySelector('{wave_selector('repaint')}').dataset.origin"
                                  " === 'decoded'", timeout=30_000)
        wave = wait_for_waveform(ui, "repaint")
        print(f"decoded song {song.name}: {samples.shape[0] / rate:.4f} s, picker {wave['duration']:.4f} s")
        assert wave["duration"] == pytest.approx(samples.shape[0] / rate, abs=1e-6)
        assert wave["duration"] == pytest.approx(first, abs=2 * FRAME_SECONDS)
        data = ui.evaluate(WAVE_DATA_JS)
        assert song.name in data["src"] and "type=output" in data["src"], data
        assert requests.get(data["src"], timeout=30).content == song.read_bytes()

        # Further down the same latent (through another latent node) the same song is drawn;
        # after an AceStepExtend, which changes the length, it is not.
        origins = ui.evaluate(CHAINED_PICKERS_JS, G_REPAINT)
        assert origins == {"AceStepRepaint": "decoded", "AceStepExtend": "none"}, origins

        x0, x1 = drag(ui, wave["box"], 0.2, 0.7)
        box, duration = wave["box"], wave["duration"]
        expected = sorted((x - box["x"]) / box["width"] * duration for x in (x0, x1))
        values = ui.evaluate(WIDGETS_JS, G_REPAINT)
        measured = [values["start_seconds"], values["end_seconds"]]
        print(f"repaint drag on the decoded song: expected {expected}, widgets {measured}")
        assert max(abs(m - e) for m, e in zip(measured, expected)) <= FRAME_SECONDS, (measured, expected)
        node_screenshot(ui, G_REPAINT, readme_images / "region_picker_decoded.png")

        # A new run of a longer song: the picker follows the newly saved file.
        ui.evaluate(f"""() => {{ const w = window.app.graph.getNodeById({G_EMPTY}).widgets
            .find(w => w.name === 'seconds'); w.value = {second}; w.callback?.(w.value); }}""")
        entry = comfy_server.wait_for(ui.run(), timeout=600)
        queued = entry["prompt"][2][str(G_REPAINT)]["inputs"]
        assert (queued["start_seconds"], queued["end_seconds"]) == tuple(measured)
        longer = saved_audio(comfy_server, entry, G_SAVE)
        assert longer != song
        ui.page.wait_for_function(f"""(name) => {{ const d = document.querySelector('{wave_selector('repaint')}')
            .dataset; return d.state === 'ready' && d.src.includes(name); }}""", arg=longer.name, timeout=30_000)
        samples, rate = soundfile.read(str(longer), always_2d=True)
        duration = float(ui.evaluate(WAVE_DATA_JS)["duration"])
        print(f"second run {longer.name}: {samples.shape[0] / rate:.4f} s, picker {duration:.4f} s")
        assert duration == pytest.approx(samples.shape[0] / rate, abs=1e-6)
        assert duration == pytest.approx(second, abs=2 * FRAME_SECONDS)
        assert saved_audio(comfy_server, entry, G_SAVE2).is_file()


# -- a shipped workflow dropped on the canvas, with the frontend's Nodes 2.0 off and on --------------
# The setting behind Settings > Comfy > Nodes 2.0, "Modern Node Design (Nodes 2.0)" (frontends
# 1.27 and later: 1.32.9 in ComfyUI 0.3.75, 1.43.18 in 0.20.1). With it on, nodes and their
# widgets are HTML (Vue) elements instead of drawings on the canvas.
NODES_2_SETTING = "Comfy.VueNodes.Enabled"

# Every token count a lyric panel shows, in order, from the page's first moment on.
RECORD_LYRIC_COUNTS_JS = """window.__acestepCounts = [];
new MutationObserver(() => {
    for (const panel of document.querySelectorAll('.acestep-lyrics')) {
        const shown = panel.querySelector('.acestep-token-count')?.textContent;
        if (shown && panel.__acestepShown !== shown) {
            panel.__acestepShown = shown;
            window.__acestepCounts.push(shown);
        }
    }
}).observe(document, {subtree: true, childList: true, characterData: true});"""

# Node `id` at full size near the top left of the screen, as a user zooms in to edit it (when the
# whole graph is fitted to the screen, Nodes 2.0 hides widgets of small nodes).
SHOW_NODE_JS = """(id) => {
    const app = window.app, n = app.graph.getNodeById(id);
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [120 - n.pos[0], 150 - n.pos[1]];
    app.graph.setDirtyCanvas(true, true);
}"""

# The lyric box a user sees for node `id` (the classic textarea, or Nodes 2.0's own), given an id.
MARK_LYRICS_BOX_JS = """(id) => {
    const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === 'lyrics');
    const shown = [...document.querySelectorAll('textarea')].filter(t => t.value === w.value && t.offsetParent);
    if (shown.length !== 1) return shown.length;
    shown[0].id = 'acestep-test-lyrics';
    return 1;
}"""


@pytest.mark.parametrize("nodes_2", [False, True], ids=["classic", "nodes_2"])
def test_dropped_repaint_workflow_with_nodes_2_off_and_on(nodes_2, chromium, comfy_server, song):
    """workflows/repaint.json dropped on a fresh frontend: the lyric panel shows the file's lyrics
    from its first answer on (frontend 1.43 showed "1 / 4096 tokens, no lyrics", the empty box's
    preview, until the panel's poll came round); typing in the lyric box the user sees updates it;
    with LoadAudio set to a song, the region picker draws it and a drag sets the repaint range; the
    prompt Run sends carries the typed lyrics and the dragged range."""
    from acestep_core.text.lyrics import LyricTokenizer
    from acestep_core.text.vocab import find_lyric_vocab

    workflow = json.loads((REPO / "workflows" / "repaint.json").read_text())
    by_type = {node["type"]: node for node in workflow["nodes"]}
    text_id, repaint_id = by_type["TextEncodeAceStepAudio"]["id"], by_type["AceStepRepaint"]["id"]
    file_lyrics = by_type["TextEncodeAceStepAudio"]["widgets_values"][1]
    # The file's checkpoint is not on the test server: the panel reads ComfyUI's own vocabulary.
    tokenizer = LyricTokenizer(find_lyric_vocab())

    def expected_count(text):
        preview = tokenizer.preview(text)
        return f"{preview.total_tokens} / {preview.limit} tokens"

    changes = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False, NODES_2_SETTING: nodes_2}
    before = requests.get(comfy_server.url + "/settings", timeout=30).json()
    requests.post(comfy_server.url + "/settings", json=changes, timeout=30).raise_for_status()
    page = chromium.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
    try:
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true');\n" + RECORD_LYRIC_COUNTS_JS)
        ui = ComfyPage(comfy_server, page)
        ui.open()
        version = ui.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? '?'")
        known = ui.evaluate(f"() => Boolean(window.app.ui.settings.settingsLookup?.['{NODES_2_SETTING}'])")
        if not known:
            # Only a frontend without Nodes 2.0 lacks the setting; classic nodes are all it has.
            assert nodes_2, f"frontend {version} does not know {NODES_2_SETTING}, yet ran the classic case"
            pytest.skip(f"frontend {version} has no Nodes 2.0 ({NODES_2_SETTING} is not one of its settings)")
        ui.load_workflow(REPO / "workflows" / "repaint.json", drag_drop=True)
        # The mode really is the one asked for: Nodes 2.0 draws each node as an element.
        vue_nodes = ui.evaluate("() => document.querySelectorAll('[data-node-id]').length")
        assert (vue_nodes > 0) == nodes_2, f"frontend {version}: {vue_nodes} node elements with {changes}"

        # The lyric panel: the file's lyrics, and never the empty box's count before them.
        ui.page.wait_for_function("(text) => document.querySelector('.acestep-lyrics')?.dataset.state === 'ready'"
                                  " && document.querySelector('.acestep-lyrics').dataset.text === text",
                                  arg=file_lyrics, timeout=60_000)
        shown = [c for c in ui.evaluate("() => window.__acestepCounts") if not c.startswith("…")]
        print(f"frontend {version}, Nodes 2.0 {'on' if nodes_2 else 'off'}: counts shown {shown}")
        assert shown == [expected_count(file_lyrics)], shown

        # Typing in the box the user sees (Nodes 2.0 has its own textarea).
        ui.evaluate(SHOW_NODE_JS, text_id)
        ui.page.wait_for_timeout(500)
        assert ui.evaluate(MARK_LYRICS_BOX_JS, text_id) == 1
        typed = "[verse]\nneon rain on the window\n[chorus]\nla la la"
        box = ui.page.locator("#acestep-test-lyrics")
        box.click()
        box.press("Control+A")
        box.press("Delete")
        box.type(typed, delay=2)
        ui.page.wait_for_function("(text) => document.querySelector('.acestep-lyrics').dataset.text === text"
                                  " && document.querySelector('.acestep-lyrics').dataset.state === 'ready'",
                                  arg=typed, timeout=30_000)
        count = ui.evaluate("() => document.querySelector('.acestep-lyrics .acestep-token-count').textContent")
        assert count == expected_count(typed)

        # The region picker on the song LoadAudio is set to (and a range inside that short song).
        ui.evaluate("""([song, repaint]) => {
            const set = (n, name, value) => { const w = n.widgets.find(w => w.name === name);
                                              w.value = value; w.callback?.(value); };
            set(window.app.graph.nodes.find(n => n.type === 'LoadAudio'), 'audio', song);
            const node = window.app.graph.getNodeById(repaint);
            set(node, 'start_seconds', 0.0);
            set(node, 'end_seconds', 1.0); }""", [song, repaint_id])
        ui.evaluate(SHOW_NODE_JS, repaint_id)
        ui.page.wait_for_timeout(500)
        wave = wait_for_waveform(ui, "repaint")
        assert wave["duration"] == pytest.approx(SONG_SECONDS, abs=1e-3)
        x0, x1 = drag(ui, wave["box"], 0.3, 0.8)
        box_, (v0, v1) = wave["box"], wave["view"]
        expected = sorted(v0 + (x - box_["x"]) / box_["width"] * (v1 - v0) for x in (x0, x1))
        values = ui.evaluate(WIDGETS_JS, repaint_id)
        measured = [values["start_seconds"], values["end_seconds"]]
        print(f"drag: expected {expected}, widgets {measured}")
        assert max(abs(m - e) for m, e in zip(measured, expected)) <= FRAME_SECONDS, (measured, expected)

        prompt = ui.graph_to_prompt()
        assert prompt[str(text_id)]["inputs"]["lyrics"] == typed
        inputs = prompt[str(repaint_id)]["inputs"]
        assert [inputs["start_seconds"], inputs["end_seconds"]] == measured
        assert ui.page_errors == [], f"errors in the page: {ui.page_errors}"
    finally:
        page.close()
        restore = {key: before.get(key, default) for key, default in
                   (("Comfy.Minimap.Visible", True), ("Comfy.Graph.CanvasInfo", True), (NODES_2_SETTING, False))}
        requests.post(comfy_server.url + "/settings", json=restore, timeout=30).raise_for_status()


# -- an older frontend: the APIs the extensions use are missing -------------------------------------
# Both extensions add their panels with node.addDOMWidget (and feature-check it). The frontend's
# own multiline text box is built with it too, so deleting it outright would break the plain
# widgets themselves, which an older frontend draws its own way. Instead the method is hidden from
# our extension modules only (the getter looks at who asks), the way an older frontend lacks it.
HIDE_DOM_WIDGET_API = r"""(() => {
    const fromOurExtension = () => /\/extensions\/comfyui-acestep\//.test(new Error().stack);
    window.__acestepApiRefusals = 0;
    let nodeClass;
    Object.defineProperty(window, 'LGraphNode', {configurable: true, get: () => nodeClass, set(value) {
        nodeClass = value;
        let method = value.prototype.addDOMWidget;  // assigned before or after this class is exposed
        Object.defineProperty(value.prototype, 'addDOMWidget', {configurable: true,
            get() { if (fromOurExtension()) { window.__acestepApiRefusals++; return undefined; } return method; },
            set(f) { method = f; }});
    }});
})()"""


def test_without_the_dom_widget_api_the_plain_widgets_still_work(chromium, comfy_server, tiny_checkpoints, song):
    graph = repaint_graph(tiny_checkpoints["comfyui"], song)
    with graph_page(chromium, comfy_server, graph, LAYOUT, init_script=HIDE_DOM_WIDGET_API) as ui:
        ui.page.wait_for_timeout(1500)  # a few polls of the panels, were they attached
        refusals = ui.evaluate("() => window.__acestepApiRefusals")
        assert refusals >= 3, refusals  # our code asked on TEXT, REPAINT and EXTEND and got nothing
        assert ui.evaluate(OUR_WIDGETS_JS, [TEXT, REPAINT, EXTEND]) == [[], [], []]
        assert ui.evaluate("() => document.querySelectorAll('.acestep-wave, .acestep-lyrics').length") == 0

        # The plain widgets: the lyrics text box (typed into) and the seconds widgets.
        ui.evaluate(f"""() => {{ window.app.graph.getNodeById({TEXT}).widgets
            .find(w => w.name === 'lyrics').inputEl.id = 'acestep-test-lyrics'; }}""")
        box = ui.page.locator("#acestep-test-lyrics")
        box.click()
        box.press("Control+A")
        box.press("Delete")
        lyrics = "[verse]\nplain text box"
        box.type(lyrics, delay=2)
        edits = {REPAINT: {"start_seconds": 0.5, "end_seconds": 2.25}, EXTEND: {"right_seconds": 1.5}}
        for node_id, values in edits.items():
            for name, value in values.items():
                ui.evaluate(f"""() => {{ const w = window.app.graph.getNodeById({node_id}).widgets
                    .find(w => w.name === '{name}'); w.value = {value}; w.callback?.(w.value); }}""")

        entry = comfy_server.wait_for(ui.run(), timeout=600)
        queued = entry["prompt"][2]
        assert queued[str(TEXT)]["inputs"]["lyrics"] == lyrics
        for node_id, values in edits.items():
            assert {k: queued[str(node_id)]["inputs"][k] for k in values} == values
        assert [p for p in comfy_server.output_files(entry) if p.suffix == ".flac"], entry["outputs"]
        ours = [m for m in ui.console_errors if "acestep" in m.lower()]
        assert ours == [], ours


def test_region_picker_on_the_15_repaint_and_extend_nodes(page):
    """AceStep15Repaint / AceStep15Extend get the same picker (their inputs have v1's names): fed by
    the graph's VAEEncodeAudio, each draws the LoadAudio song in its mode, and follows its widgets."""
    ui = page
    made = ui.evaluate("""(encode) => {
        const graph = window.app.graph, from = graph.getNodeById(encode), ids = [];
        for (const [i, kind] of ['AceStep15Repaint', 'AceStep15Extend'].entries()) {
            const n = LiteGraph.createNode(kind);
            n.pos = [1300 + 40 * i, 700 + 40 * i];
            graph.add(n);
            from.connect(0, n, n.inputs.findIndex(i => i.name === 'samples'));
            ids.push(n.id);
        }
        return ids;
    }""", ENCODE)
    try:
        states = """(ids) => ids.map(id => { const n = window.app.graph.getNodeById(id);
            const w = n.widgets.find(w => w.name === 'acestep_waveform');
            return w ? {...w.element.dataset} : null; })"""
        ui.page.wait_for_function(f"({states})({json.dumps(made)}).every(d => d && d.state === 'ready')",
                                  timeout=60_000)
        repaint, extend = ui.evaluate(states, made)
        assert (repaint["mode"], extend["mode"]) == ("repaint", "extend")
        assert float(repaint["duration"]) == pytest.approx(SONG_SECONDS, abs=1e-3)
        assert float(extend["duration"]) == pytest.approx(SONG_SECONDS, abs=1e-3)
        set_widget = """([id, name, value]) => { const w = window.app.graph.getNodeById(id).widgets
            .find(w => w.name === name); w.value = value; w.callback?.(value); }"""
        dataset = """([id, key]) => window.app.graph.getNodeById(id).widgets
            .find(w => w.name === 'acestep_waveform').element.dataset[key]"""
        ui.evaluate(set_widget, [made[1], "right_seconds", 8.0])       # the view makes room: 1.15 x 8 s after
        ui.page.wait_for_function(f"() => ({dataset})([{made[1]}, 'view']) === JSON.stringify([-9.2, "
                                  f"{SONG_SECONDS} + 9.2])", timeout=10_000)
        ui.evaluate(set_widget, [made[0], "end_seconds", SONG_SECONDS + 1.0])
        ui.page.wait_for_function(f"() => ({dataset})([{made[0]}, 'problem']) === 'ends-after-the-song'",
                                  timeout=10_000)
        ui.evaluate(set_widget, [made[0], "start_seconds", SONG_SECONDS + 2.0])
        ui.page.wait_for_function(f"() => ({dataset})([{made[0]}, 'problem']) === 'start-after-end'",
                                  timeout=10_000)
    finally:
        ui.evaluate("(ids) => ids.forEach(id => window.app.graph.remove(window.app.graph.getNodeById(id)))", made)
