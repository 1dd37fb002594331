// Waveform region picker for AceStepRepaint and AceStepExtend (and their 1.5 nodes AceStep15Repaint,
// AceStep15Extend, whose inputs have the same names).
//
// The node's `samples` input is followed upstream to the audio it stands for (upstreamAudio: a
// LoadAudio file, else the audio the graph's last run decoded from that latent and saved); its
// waveform is drawn from GET /acestep/audio/peaks (nodes/routes.py), and it plays through
// ComfyUI's /view URL.
//   * AceStepRepaint: drag across the waveform to pick the part to regenerate; it is written
//     into start_seconds / end_seconds. Dragging near an edge of the region moves that edge.
//   * AceStepExtend: the song sits in the middle of a timeline with room on both sides; drag
//     the left / right handle outwards to set left_seconds / right_seconds.
// Editing the number widgets moves the region. With no audio yet a placeholder says what to
// connect, or to run the graph once. The number widgets stay the source of truth and keep
// working on their own.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PICKER_NODES = {
  AceStepRepaint: { mode: "repaint", a: "start_seconds", b: "end_seconds" },
  AceStepExtend: { mode: "extend", a: "left_seconds", b: "right_seconds" },
  AceStep15Repaint: { mode: "repaint", a: "start_seconds", b: "end_seconds" },
  AceStep15Extend: { mode: "extend", a: "left_seconds", b: "right_seconds" },
};
const WIDGET_NAME = "acestep_waveform";
const HEIGHT = 130;           // canvas height in CSS pixels
const PEAK_BINS = 1200;
const EDGE_GRAB_PX = 6;       // a press this close to a region edge moves that edge
const POLL_MS = 250;

// The canvas's flex basis is HEIGHT, not `auto`: the frontend's Nodes 2.0 (1.43) gives the panel
// no height of its own, and with `auto` the canvas took its pixel buffer's height there (494 px
// for a 494 px wide panel) and a drag across it set nothing.
const STYLE = `
.acestep-wave { box-sizing: border-box; width: 100%; height: 100%; display: flex; flex-direction: column;
  gap: 3px; font: 11px/1.3 system-ui, sans-serif; color: var(--input-text, #ddd); }
.acestep-wave canvas { width: 100%; flex: 1 1 ${HEIGHT}px; min-height: 60px; display: block; cursor: crosshair;
  background: var(--comfy-input-bg, #1c1c1c); border: 1px solid var(--border-color, #444); border-radius: 6px;
  touch-action: none; }
.acestep-wave-bar { display: flex; gap: 6px; align-items: center; min-height: 20px; }
.acestep-wave-bar button { flex: none; font: inherit; padding: 1px 8px; border-radius: 4px; cursor: pointer;
  color: var(--input-text, #ddd); background: var(--comfy-menu-bg, #333); border: 1px solid var(--border-color, #555); }
.acestep-wave-bar button:disabled { opacity: 0.4; cursor: default; }
.acestep-wave-info { opacity: 0.75; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.acestep-wave-problem { flex: none; font-weight: 600; white-space: nowrap; }
.acestep-wave-problem[data-level="error"] { color: #ff6b6b; }
.acestep-wave-problem[data-level="warning"] { color: #ffb86b; }
.acestep-wave[data-problem-level="error"] canvas { border-color: #ff6b6b; }
`;

function addStyle() {
  if (document.getElementById("acestep-waveform-style")) return;
  const style = document.createElement("style");
  style.id = "acestep-waveform-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function linkById(graph, id) {
  if (id == null || !graph) return null;
  return graph.links?.get ? graph.links.get(id) : graph.links?.[id];
}

const classOf = (node) => node?.comfyClass ?? node?.type;
// Legacy Reroute nodes only pass a link on; both walks below look through them.
const isReroute = (node) => classOf(node) === "Reroute";

// The node and output slot feeding `node`'s input (by name; the first input when null).
function originOf(node, inputName) {
  for (let hops = 0; node && hops < 16; hops++) {
    const input = inputName == null ? node.inputs?.[0] : node.inputs?.find((i) => i.name === inputName);
    const link = linkById(node.graph, input?.link);
    const origin = link ? node.graph.getNodeById(link.origin_id) : null;
    if (!origin || !isReroute(origin)) return origin ? { node: origin, slot: link.origin_slot } : null;
    node = origin;
    inputName = null;
  }
  return null;
}

// The nodes that take `node`'s output `slot` as an input.
function consumersOf(node, slot, hops = 0) {
  const found = [];
  for (const id of node.outputs?.[slot]?.links ?? []) {
    const link = linkById(node.graph, id);
    const target = link && node.graph.getNodeById(link.target_id);
    if (!target) continue;
    if (isReroute(target) && hops < 16) found.push(...consumersOf(target, 0, hops + 1));
    else found.push(target);
  }
  return found;
}

// The file of a LoadAudio whose encoding is exactly the latent at `samples` (through
// VAEEncodeAudio): {filename, subfolder, type} or null. Known before anything has run.
function loadedFile(node) {
  let at = originOf(node, "samples");
  if (classOf(at?.node) === "VAEEncodeAudio") at = originOf(at.node, "audio");
  if (classOf(at?.node) !== "LoadAudio") return null;
  const widget = at.node.widgets?.find((w) => w.name === "audio");
  const value = typeof widget?.value === "string" ? widget.value.trim() : "";
  if (!value) return null;
  // LoadAudio values look like "name.wav", "sub/name.wav" or "name.wav [output]".
  const annotated = value.match(/^(.*?)\s*\[(input|output|temp)\]$/);
  const path = annotated ? annotated[1] : value;
  const cut = path.lastIndexOf("/");
  return { filename: path.slice(cut + 1), subfolder: cut >= 0 ? path.slice(0, cut) : "",
           type: annotated ? annotated[2] : "input" };
}

// The first audio file an output node (SaveAudio, PreviewAudio, ...) showed after the last run,
// from the outputs the app keeps per node (keyed like the frontend's node locator ids), or null.
function savedAudio(node) {
  const key = node.graph?.isRootGraph === false ? `${node.graph.id}:${node.id}` : String(node.id);
  const item = app.nodeOutputs?.[key]?.audio?.[0];
  return item?.filename ? { filename: item.filename, subfolder: item.subfolder ?? "", type: item.type ?? "output" }
    : null;
}

// Output nodes that show the audio of `node`'s output `slot`: the ones fed by it directly for
// an AUDIO output, the ones fed by a decoder of it (a consumer with an AUDIO output) for a LATENT.
function audioViewers(node, slot) {
  let sources = [{ node, slot }];
  if (node.outputs?.[slot]?.type === "LATENT") {
    sources = consumersOf(node, slot).map((d) => ({ node: d, slot: d.outputs?.findIndex((o) => o.type === "AUDIO") }))
      .filter((d) => d.slot >= 0);
  }
  return sources.flatMap((s) => consumersOf(s.node, s.slot))
    .filter((v) => v.constructor?.nodeData?.output_node || savedAudio(v));
}

const NO_AUDIO = { source: null, origin: "none",
  label: "No audio: connect LoadAudio → VAEEncodeAudio → samples,\n"
    + "or decode the latent feeding samples into SaveAudio / PreviewAudio and run" };

// Nodes whose output is not the same timeline as their input: the walk below stops there, or
// it would draw a song of another length under the picker.
const CHANGES_LENGTH = new Set(["AceStepExtend"]);

// The audio the picker draws: {source: {filename, subfolder, type} | null, label, origin:
// "file" | "decoded" | "waiting" (for a run) | "none"}. In order of preference:
//   1. a LoadAudio file that `samples` is the encoding of (exact, and known before any run);
//   2. else the audio saved in the last run from a decoder of the latent that feeds `samples`,
//      or of the latent it was made from (walking up through reroutes and other latent nodes):
//      the usual text2music -> decode -> save graph with a repaint of the generated song;
//   3. else nothing, with a hint: run the graph once, or what to connect.
export function upstreamAudio(node) {
  const file = loadedFile(node);
  if (file) return { source: file, origin: "file", label: "LoadAudio" };
  let waitingFor = null;
  let at = originOf(node, "samples");
  for (let hops = 0; at && hops < 16; hops++) {
    for (const viewer of audioViewers(at.node, at.slot)) {
      const saved = savedAudio(viewer);
      if (saved) return { source: saved, origin: "decoded", label: `${viewer.title} #${viewer.id}, last run` };
      waitingFor ??= viewer;
    }
    if (CHANGES_LENGTH.has(classOf(at.node))) break;
    const next = at.node.inputs?.find((i) => i.type === "LATENT" || i.type === "AUDIO");
    at = next ? originOf(at.node, next.name) : null;
  }
  if (!waitingFor) return NO_AUDIO;
  return { source: null, origin: "waiting",
           label: `Run the graph once:\nthe audio that ${waitingFor.title} #${waitingFor.id} saves will be drawn here` };
}

function fmt(seconds) {
  return `${seconds.toFixed(2)} s`;
}

function round2(x) {
  return Math.round(x * 100) / 100;
}

function attachPicker(node, spec) {
  const wa = node.widgets?.find((w) => w.name === spec.a);
  const wb = node.widgets?.find((w) => w.name === spec.b);
  if (!wa || !wb || typeof node.addDOMWidget !== "function") return;
  if (node.widgets.some((w) => w.name === WIDGET_NAME)) return;
  addStyle();

  const root = document.createElement("div");
  root.className = "acestep-wave";
  root.dataset.mode = spec.mode;
  const canvas = document.createElement("canvas");
  canvas.className = "acestep-wave-canvas";
  const bar = document.createElement("div");
  bar.className = "acestep-wave-bar";
  const play = document.createElement("button");
  play.className = "acestep-wave-play";
  play.textContent = "▶ Play";
  play.disabled = true;
  const info = document.createElement("span");
  info.className = "acestep-wave-info";
  const problemText = document.createElement("span");
  problemText.className = "acestep-wave-problem";
  bar.append(play, problemText, info);
  root.append(canvas, bar);
  const audio = new Audio();
  audio.preload = "none";

  const widget = node.addDOMWidget(WIDGET_NAME, "acestep-waveform", root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => HEIGHT + 26,
    getMaxHeight: () => HEIGHT + 80,
  });
  widget.serialize = false;

  // state.view: the time range drawn across the canvas (the song for repaint; the song with
  // room on both sides for extend, frozen while dragging so the handles do not run away).
  // state.found: what upstreamAudio last answered (source, origin, label).
  const state = { found: NO_AUDIO, key: null,
                  peaks: null, level: 0, duration: 0, error: null, loading: false,
                  view: [0, 1], drag: null, lastDrawn: null, playing: false };

  const getA = () => Number(wa.value) || 0;
  const getB = () => Number(wb.value) || 0;
  const setWidget = (w, v) => {
    const value = round2(v);
    if (w.value === value) return;
    w.value = value;
    w.callback?.(value, app.canvas, node);
  };

  function extendView() {
    const pad = Math.max(state.duration * 0.5, getA() * 1.15, getB() * 1.15, 5);
    return [-pad, state.duration + pad];
  }
  // Repaint: the song, and past its end as far as the region reaches (that part is marked).
  function repaintView() {
    const reach = Math.max(getA(), getB());
    return reach > state.duration ? [0, reach + Math.max(0.05 * reach, 0.2)] : [0, state.duration];
  }
  function currentView() {
    if (state.drag?.view) return state.drag.view;
    return spec.mode === "extend" ? extendView() : repaintView();
  }
  // What is wrong with the repaint region, in the words the run would use (seconds only):
  // {level: "error" | "warning", code, text} or null.
  function repaintProblem() {
    if (spec.mode !== "repaint" || !state.peaks) return null;
    const start = getA(), end = getB(), song = fmt(state.duration);
    if (start >= end) {
      return { level: "error", code: "start-after-end",
               text: `start ${fmt(start)} is not before end ${fmt(end)}` };
    }
    if (start >= state.duration) {
      return { level: "error", code: "after-the-song", text: `region starts past the end of the song (${song})` };
    }
    if (end > state.duration) {
      return { level: "warning", code: "ends-after-the-song",
               text: `end is past the end of the song (${song}): repainted up to the end` };
    }
    return null;
  }
  // Region in song time: repaint [start, end]; extend [-left, duration + right].
  function region() {
    return spec.mode === "extend" ? [-getA(), state.duration + getB()] : [getA(), getB()];
  }
  function timeAt(clientX, view) {
    const rect = canvas.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (clientX - rect.left) / rect.width));
    return view[0] + f * (view[1] - view[0]);
  }

  function draw() {
    const rect = canvas.getBoundingClientRect();
    const scale = rect.width > 0 ? canvas.clientWidth / rect.width : 1;  // the canvas zoom, undone
    const cssW = Math.max(1, canvas.clientWidth), cssH = Math.max(1, canvas.clientHeight);
    const dpr = (window.devicePixelRatio || 1) / (scale || 1);
    const W = Math.round(cssW * dpr), H = Math.round(cssH * dpr);
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "middle";
    if (!state.peaks) {
      g.fillStyle = "rgba(200,200,200,0.6)";
      g.textAlign = "center";
      const message = state.loading ? "Loading waveform…"
        : state.error ? `No waveform: ${state.error}`
        : state.found.label;
      const lines = message.split("\n");
      lines.forEach((line, i) => g.fillText(line, cssW / 2, cssH / 2 + (i - (lines.length - 1) / 2) * 16, cssW - 12));
      root.dataset.state = state.loading ? "loading" : state.error ? "error" : "empty";
      root.dataset.message = message;
      showProblem(null);
      return;
    }
    const view = currentView();
    root.dataset.view = JSON.stringify(view);  // the time range across the canvas, for tests
    const x = (t) => ((t - view[0]) / (view[1] - view[0])) * cssW;
    // Drawn normalised to the loudest peak (at most x50, so near-silence stays flat): a quiet
    // render still shows where its notes are, and the level is not what is picked here.
    const mid = cssH / 2, amp = (cssH / 2 - 4) / Math.max(state.level, 0.02);
    // The song's extent (extend mode shows room around it).
    if (spec.mode === "extend") {
      g.fillStyle = "rgba(255,255,255,0.04)";
      g.fillRect(x(0), 0, x(state.duration) - x(0), cssH);
    }
    // Waveform: one vertical line per pixel column, min..max of the peaks under it.
    const n = state.peaks.length;
    g.strokeStyle = "#6fa8dc";
    g.lineWidth = 1;
    g.beginPath();
    const x0 = Math.max(0, Math.floor(x(0))), x1 = Math.min(cssW, Math.ceil(x(state.duration)));
    for (let px = x0; px < x1; px++) {
      const t0 = view[0] + (px / cssW) * (view[1] - view[0]);
      const t1 = view[0] + ((px + 1) / cssW) * (view[1] - view[0]);
      const i0 = Math.max(0, Math.floor((t0 / state.duration) * n));
      const i1 = Math.min(n, Math.max(i0 + 1, Math.ceil((t1 / state.duration) * n)));
      let lo = 0, hi = 0;
      for (let i = i0; i < i1; i++) { lo = Math.min(lo, state.peaks[i][0]); hi = Math.max(hi, state.peaks[i][1]); }
      g.moveTo(px + 0.5, mid - hi * amp);
      g.lineTo(px + 0.5, mid - lo * amp + 0.5);
    }
    g.stroke();
    g.strokeStyle = "rgba(255,255,255,0.15)";
    g.beginPath(); g.moveTo(0, mid + 0.5); g.lineTo(cssW, mid + 0.5); g.stroke();

    // Past the end of the song (repaint): marked, so a region there is seen to be outside it.
    const problem = repaintProblem();
    if (spec.mode === "repaint" && view[1] > state.duration) {
      g.fillStyle = "rgba(255, 60, 60, 0.18)";
      g.fillRect(x(state.duration), 0, cssW - x(state.duration), cssH);
      g.fillStyle = "rgba(255, 120, 120, 0.9)";
      g.textAlign = "right";
      g.fillText(`past the end of the song (${fmt(state.duration)})`, cssW - 6, cssH - 10, cssW - x(state.duration) - 8);
    }
    // The region. Start after end is an error: drawn red between the two, never swapped.
    const [r0, r1] = region();
    const lo = Math.min(r0, r1), hi = Math.max(r0, r1);
    if (spec.mode === "repaint") {
      g.fillStyle = problem?.code === "start-after-end" ? "rgba(255, 60, 60, 0.30)" : "rgba(255, 170, 60, 0.28)";
      g.fillRect(x(lo), 0, x(hi) - x(lo), cssH);
    } else {
      g.fillStyle = "rgba(120, 220, 120, 0.22)";
      g.fillRect(x(lo), 0, x(0) - x(lo), cssH);
      g.fillRect(x(state.duration), 0, x(hi) - x(state.duration), cssH);
    }
    g.strokeStyle = problem?.level === "error" ? "#ff6b6b" : spec.mode === "repaint" ? "#ffaa3c" : "#78dc78";
    g.lineWidth = 2;
    for (const t of [lo, hi]) { g.beginPath(); g.moveTo(x(t), 0); g.lineTo(x(t), cssH); g.stroke(); }
    // Playhead.
    if (state.playing) {
      const t = audio.currentTime;
      g.strokeStyle = "#fff"; g.lineWidth = 1;
      g.beginPath(); g.moveTo(x(t), 0); g.lineTo(x(t), cssH); g.stroke();
    }
    g.fillStyle = "rgba(255,255,255,0.85)";
    g.textAlign = "left";
    const label = spec.mode === "repaint"
      ? `repaint ${fmt(getA())} → ${fmt(getB())}`
      : `+${fmt(getA())} before · +${fmt(getB())} after`;
    g.fillText(label, 6, 10);
    root.dataset.state = "ready";
    showProblem(problem);
  }

  function showProblem(problem) {
    problemText.textContent = problem ? `⚠ ${problem.text}` : "";
    problemText.title = problem
      ? (problem.level === "error" ? "The run will stop at this node with this error." : "The run clamps the region.")
      : "";
    problemText.dataset.level = problem?.level ?? "";
    root.dataset.problem = problem?.code ?? "";
    root.dataset.problemLevel = problem?.level ?? "";
  }

  function updateInfo() {
    const source = state.found.source;
    if (!source) { info.textContent = ""; return; }
    const name = source.subfolder ? `${source.subfolder}/${source.filename}` : source.filename;
    info.textContent = state.peaks ? `${state.found.label} · ${fmt(state.duration)} · ${name}` : name;
    info.title = info.textContent;
  }

  async function loadPeaks(found) {
    const key = JSON.stringify(found);
    const source = found.source;
    state.key = key;
    state.found = found;
    root.dataset.origin = found.origin;
    state.peaks = null;
    state.error = null;
    audio.pause();
    play.disabled = true;
    updateInfo();
    if (!source) { draw(); return; }
    state.loading = true;
    draw();
    const query = new URLSearchParams({ ...source, bins: String(PEAK_BINS) });
    try {
      const response = await api.fetchApi(`/acestep/audio/peaks?${query}`);
      const result = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (state.key !== key) return;
      if (!response.ok || result.error) throw new Error(result.error ?? `HTTP ${response.status}`);
      state.peaks = result.peaks;
      state.level = Math.max(...result.peaks.map(([lo, hi]) => Math.max(-lo, hi)));
      state.duration = result.duration;
      root.dataset.duration = String(result.duration);
      const view = new URLSearchParams({ filename: source.filename, subfolder: source.subfolder, type: source.type });
      audio.src = api.apiURL(`/view?${view}`);
      root.dataset.src = audio.src;
      play.disabled = false;
    } catch (err) {
      if (state.key !== key) return;
      state.error = err?.message ?? String(err);
    } finally {
      if (state.key === key) { state.loading = false; updateInfo(); draw(); }
    }
  }

  // Dragging. Repaint: a press near a region edge moves that edge, elsewhere starts a new region
  // at the press. Extend: the press takes the nearer handle (left of the song's middle: left).
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !state.peaks) return;
    e.preventDefault();
    e.stopPropagation();
    const view = currentView();
    const t = timeAt(e.clientX, view);
    const rect = canvas.getBoundingClientRect();
    const secondsPerPx = (view[1] - view[0]) / rect.width;
    let anchor = null, handle = null;
    if (spec.mode === "repaint") {
      const [s, en] = region();
      if (Math.abs(t - en) <= EDGE_GRAB_PX * secondsPerPx) anchor = s;
      else if (Math.abs(t - s) <= EDGE_GRAB_PX * secondsPerPx) anchor = en;
      else anchor = Math.min(state.duration, Math.max(0, t));   // a press past either end starts at that end
    } else {
      handle = t < state.duration / 2 ? "left" : "right";
    }
    state.drag = { view, anchor, handle, pointer: e.pointerId };
    canvas.setPointerCapture?.(e.pointerId);
    move(e);
  });
  function move(e) {
    if (!state.drag) return;
    e.preventDefault();
    e.stopPropagation();
    const t = timeAt(e.clientX, state.drag.view);
    if (spec.mode === "repaint") {
      // Both ends inside the song, start <= end, wherever the pointer goes.
      const inside = Math.min(state.duration, Math.max(0, t));
      const lo = Math.min(state.drag.anchor, inside);
      const hi = Math.max(state.drag.anchor, inside);
      setWidget(wa, lo);
      setWidget(wb, hi);
    } else if (state.drag.handle === "left") {
      setWidget(wa, Math.max(0, -t));
    } else {
      setWidget(wb, Math.max(0, t - state.duration));
    }
    draw();
    node.setDirtyCanvas?.(true, true);
  }
  canvas.addEventListener("pointermove", move);
  const end = (e) => {
    if (!state.drag) return;
    move(e);
    canvas.releasePointerCapture?.(state.drag.pointer);
    state.drag = null;
    draw();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  // Playback: repaint plays the region, extend plays the song (the new parts do not exist yet).
  let stopAt = null;
  play.addEventListener("click", (e) => {
    e.stopPropagation();
    if (!audio.paused) { audio.pause(); return; }
    const [s, en] = spec.mode === "repaint" ? [Math.min(getA(), getB()), Math.max(getA(), getB())] : [0, state.duration];
    const from = Math.max(0, Math.min(s, state.duration));
    stopAt = en > from ? Math.min(en, state.duration) : state.duration;
    audio.currentTime = from;
    audio.play().catch((err) => { info.textContent = `cannot play: ${err?.message ?? err}`; });
  });
  audio.addEventListener("play", () => { state.playing = true; play.textContent = "■ Stop"; tick(); });
  audio.addEventListener("pause", () => { state.playing = false; play.textContent = "▶ Play"; draw(); });
  audio.addEventListener("timeupdate", () => { if (stopAt != null && audio.currentTime >= stopAt) audio.pause(); });
  function tick() {
    if (!state.playing) return;
    draw();
    requestAnimationFrame(tick);
  }

  // Follow the graph: a new upstream file, or a new saved file after a run, reloads the peaks;
  // widget edits redraw the region.
  const poll = setInterval(() => {
    if (!node.graph) return;
    let found;
    try { found = upstreamAudio(node); } catch { found = NO_AUDIO; }
    if (JSON.stringify(found) !== state.key) { loadPeaks(found); return; }
    const drawn = `${getA()}|${getB()}|${canvas.clientWidth}|${canvas.clientHeight}`;
    if (drawn !== state.lastDrawn && !state.drag) { state.lastDrawn = drawn; draw(); }
  }, POLL_MS);

  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(poll);
    audio.pause();
    audio.removeAttribute("src");
    return onRemoved?.apply(this, arguments);
  };
  state.key = undefined;  // first poll loads
  draw();
}

app.registerExtension({
  name: "comfyui-acestep.waveform",
  nodeCreated(node) {
    const spec = PICKER_NODES[node.comfyClass];
    if (!spec) return;
    try {
      attachPicker(node, spec);
    } catch (err) {
      console.warn("comfyui-acestep: waveform picker not available on this node", err);
    }
  },
});
