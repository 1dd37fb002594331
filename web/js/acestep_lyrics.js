// Lyric editor for ACE-Step: under the `lyrics` text box of TextEncodeAceStepAudio (ours and
// ComfyUI's built-in node share the id) and AceStepLyricsPreview, a panel shows what the lyric
// encoder will read: each line with its structure / [xx] language tags highlighted, the language
// used (detected, or forced by a tag), the normalised or romanized text, its token count, and the
// total against the trained limit.
//
// Everything shown comes from POST /acestep/lyrics/preview (nodes/routes.py), which runs the
// pack's Python LyricTokenizer, the code the CLIP itself runs: nothing about tokenization is
// re-implemented here. The text box itself is never replaced; if anything here fails, it keeps
// working as a plain textarea.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const LYRIC_NODES = new Set(["TextEncodeAceStepAudio", "AceStepLyricsPreview"]);
const PANEL_WIDGET = "acestep_lyrics_preview";
const DEBOUNCE_MS = 350;
// The panel's height range. The classic canvas sizes DOM widgets from getMin/MaxHeight; the
// frontend's Nodes 2.0 (1.43) lays them out as HTML and reads only the CSS.
const PANEL_MIN_HEIGHT = 90;
const PANEL_MAX_HEIGHT = 320;
const LOADER_CKPT_WIDGETS = ["ckpt_name", "checkpoint", "model_name"];

const STYLE = `
.acestep-lyrics { box-sizing: border-box; width: 100%; height: 100%; overflow: auto;
  min-height: ${PANEL_MIN_HEIGHT}px; max-height: ${PANEL_MAX_HEIGHT}px;
  font: 11px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #444); border-radius: 6px; padding: 4px 6px; }
.acestep-lyrics-summary { display: flex; gap: 8px; align-items: baseline; position: sticky; top: -4px;
  background: inherit; padding: 2px 0 3px; border-bottom: 1px solid var(--border-color, #444); margin-bottom: 3px; }
.acestep-token-count { font-weight: 600; color: #7fd17f; }
.acestep-token-count.acestep-over-limit { color: #ff7a7a; }
.acestep-lyrics-status { opacity: 0.7; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.acestep-lyrics-status.acestep-error { color: #ff9b6b; opacity: 1; }
.acestep-line { display: grid; grid-template-columns: 3.2em minmax(0, 1fr) minmax(0, 1fr) 2.6em;
  gap: 6px; padding: 1px 0; border-bottom: 1px dotted rgba(127,127,127,0.18); }
.acestep-line.acestep-cut { background: rgba(255, 80, 80, 0.12); }
.acestep-line-lang { color: #9ecbff; }
.acestep-line-lang.acestep-explicit { color: #ffd479; }
.acestep-line-source, .acestep-line-text { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.acestep-line-text { color: #c8c8c8; font-style: italic; }
.acestep-line-tokens { text-align: right; opacity: 0.8; }
.acestep-tag-structure { color: #ff9ef5; font-weight: 600; background: rgba(255,158,245,0.12); border-radius: 3px; }
.acestep-tag-language { color: #ffd479; font-weight: 600; background: rgba(255,212,121,0.12); border-radius: 3px; }
.acestep-tag-unknown { color: #ff7a7a; font-weight: 600; text-decoration: underline wavy #ff7a7a;
  background: rgba(255,80,80,0.12); border-radius: 3px; }
.acestep-unknown-chars { color: #ff7a7a; margin-left: 4px; }
.acestep-lyrics-warnings { margin: 0 0 3px; }
.acestep-line-empty { opacity: 0.4; }
.acestep-lyrics-warning { color: #ffb86b; white-space: normal; }
`;

function addStyle() {
  if (document.getElementById("acestep-lyrics-style")) return;
  const style = document.createElement("style");
  style.id = "acestep-lyrics-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The checkpoint name of the loader that feeds this node's `clip` input, if the link leads
// straight to a loader with a checkpoint widget (its vocab.json is used when it has one).
function upstreamCheckpoint(node) {
  try {
    const input = node.inputs?.find((i) => i.name === "clip");
    if (input?.link == null) return null;
    const link = node.graph?.links?.get ? node.graph.links.get(input.link) : node.graph?.links?.[input.link];
    const origin = link && node.graph.getNodeById(link.origin_id);
    const widget = origin?.widgets?.find((w) => LOADER_CKPT_WIDGETS.includes(w.name));
    return typeof widget?.value === "string" ? widget.value : null;
  } catch {
    return null;
  }
}

// The line as written, with the tags the tokenizer recognised wrapped in highlight spans:
// a leading [xx] language tag when line.explicit_language, then a leading [...] group when the
// tokenizer took the line as a structure line.
function highlightedSource(line) {
  const span = el("span", "acestep-line-source");
  let rest = line.source;
  if (line.explicit_language && /^\[..\]/.test(rest)) {
    span.appendChild(el("span", "acestep-tag-language", rest.slice(0, 4)));
    rest = rest.slice(4);
    const lead = rest.match(/^\s*/)[0];
    if (lead) span.appendChild(document.createTextNode(lead));
    rest = rest.slice(lead.length);
  }
  if (line.structure) {
    const close = rest.indexOf("]");
    if (rest.startsWith("[") && close > 0) {
      // A tag the model does not know ([badtag], [zz], [Verse 1]) is read as plain text: say so.
      const unknown = Boolean(line.unknown_tag);
      const tag = el("span", unknown ? "acestep-tag-unknown" : "acestep-tag-structure", rest.slice(0, close + 1));
      if (unknown) {
        tag.title = `unknown tag ${line.unknown_tag}: not one of the model's structure or language tags, read as text`;
      }
      span.appendChild(tag);
      rest = rest.slice(close + 1);
    }
  }
  if (rest) span.appendChild(document.createTextNode(rest));
  span.title = line.source;
  return span;
}

function render(panel, result) {
  const { summary, count, status, list, warnings } = panel.parts;
  count.textContent = `${result.total_tokens} / ${result.limit} tokens`;
  count.dataset.total = String(result.total_tokens);
  count.dataset.limit = String(result.limit);
  count.classList.toggle("acestep-over-limit", result.cut_tokens > 0);
  count.title = result.cut_tokens > 0
    ? `${result.cut_tokens} tokens lie beyond the ${result.limit} the model was trained on`
    : `the model was trained on lyrics of at most ${result.limit} tokens`;
  status.classList.remove("acestep-error");
  status.textContent = result.vocab ? `vocab: ${result.vocab}` : "";
  list.replaceChildren();
  let running = 1; // the start id
  result.lines.forEach((line, index) => {
    running += line.tokens;
    const row = el("div", "acestep-line");
    row.dataset.index = String(index);
    if (line.language == null) {
      row.classList.add("acestep-line-empty");
      row.append(el("span", "acestep-line-lang", ""), el("span", "acestep-line-source", "(empty line)"),
                 el("span", "acestep-line-text", ""), el("span", "acestep-line-tokens", String(line.tokens)));
    } else {
      const lang = el("span", "acestep-line-lang", line.language + (line.explicit_language ? "*" : ""));
      lang.dataset.language = line.language;
      if (line.explicit_language) lang.classList.add("acestep-explicit");
      lang.title = line.explicit_language ? "language set by a [xx] tag"
        : line.structure ? "structure line (read as English)"
        : `detected: ${line.detected ?? "?"}`;
      const text = el("span", "acestep-line-text", line.text);
      text.title = line.note ? `${line.text}\n${line.note}` : line.text;
      const source = highlightedSource(line);
      const unknownChars = line.unknown_characters ?? [];
      if (unknownChars.length) {
        const mark = el("span", "acestep-unknown-chars", `[UNK: ${unknownChars.join(" ")}]`);
        mark.title = "not in the lyric vocabulary: each reads as [UNK]";
        source.appendChild(mark);
        row.dataset.unknownCharacters = unknownChars.join("");
      }
      if (line.unknown_tag) row.dataset.unknownTag = line.unknown_tag;
      row.dataset.language = line.language;
      row.append(lang, source, text, el("span", "acestep-line-tokens", String(line.tokens)));
    }
    if (result.cut_tokens > 0 && running > result.limit) row.classList.add("acestep-cut");
    list.appendChild(row);
  });
  // Warnings at the top, under the count (the over-limit one first): seen without scrolling.
  warnings.replaceChildren(...(result.warnings ?? []).map((w) => el("div", "acestep-lyrics-warning", `⚠ ${w}`)));
  summary.title = "What ACE-Step's lyric encoder reads (from the pack's tokenizer)";
}

function showError(panel, message) {
  const { status } = panel.parts;
  status.textContent = message;
  status.classList.add("acestep-error");
}

function attachLyricEditor(node) {
  const lyrics = node.widgets?.find((w) => w.name === "lyrics");
  // (`element` first: frontend 1.43 warns that `inputEl` is deprecated.)
  const textarea = lyrics?.element ?? lyrics?.inputEl;
  if (!(textarea instanceof HTMLTextAreaElement) || typeof node.addDOMWidget !== "function") return;
  if (node.widgets.some((w) => w.name === PANEL_WIDGET)) return;
  addStyle();

  const panel = el("div", "acestep-lyrics");
  const summary = el("div", "acestep-lyrics-summary");
  const count = el("span", "acestep-token-count", "… tokens");
  const status = el("span", "acestep-lyrics-status", "");
  const list = el("div", "acestep-lyrics-lines");
  const warnings = el("div", "acestep-lyrics-warnings");
  summary.append(count, status);
  panel.append(summary, warnings, list);
  panel.parts = { summary, count, status, list, warnings };
  // Scrolling the panel must not zoom the canvas.
  panel.addEventListener("wheel", (e) => e.stopPropagation(), { passive: true });

  const widget = node.addDOMWidget(PANEL_WIDGET, "acestep-lyrics-preview", panel, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => PANEL_MIN_HEIGHT,
    getMaxHeight: () => PANEL_MAX_HEIGHT,
  });
  widget.serialize = false;

  let timer = null;
  let sequence = 0;
  let lastKey = null;
  // The widget's value is the lyrics the prompt gets. With the frontend's Nodes 2.0 (1.43) the
  // box the user edits is not this textarea (that one is then detached, kept in step by the
  // frontend), so the value, not the element, is read.
  const currentText = () => (typeof lyrics.value === "string" ? lyrics.value : textarea.value);
  const refresh = async () => {
    const text = currentText();
    const ckpt = upstreamCheckpoint(node);
    const key = `${ckpt}\u0000${text}`;
    if (key === lastKey) return;
    lastKey = key;
    const mine = ++sequence;
    panel.dataset.state = "loading";
    try {
      const response = await api.fetchApi("/acestep/lyrics/preview", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(ckpt ? { lyrics: text, ckpt_name: ckpt } : { lyrics: text }),
      });
      const result = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (mine !== sequence) return; // a newer request is under way
      if (!response.ok || result.error) {
        lastKey = null;
        showError(panel, result.error ?? `HTTP ${response.status}`);
        panel.dataset.state = "error";
        return;
      }
      render(panel, result);
      panel.dataset.state = "ready";
      panel.dataset.text = text;
    } catch (err) {
      if (mine !== sequence) return;
      lastKey = null;
      showError(panel, `preview unavailable: ${err?.message ?? err}`);
      panel.dataset.state = "error";
    }
  };
  const refreshAfter = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; refresh(); }, ms);
  };
  // Typing: one request once the user pauses (the classic textarea's events; Nodes 2.0's box
  // reports edits through the widget's callback).
  textarea.addEventListener("input", () => refreshAfter(DEBOUNCE_MS));
  const callback = lyrics.callback;
  lyrics.callback = function () {
    refreshAfter(DEBOUNCE_MS);
    return callback?.apply(this, arguments);
  };
  // A workflow being loaded creates the node first (this function runs then, with the box still
  // empty) and sets its widget values and links afterwards, in node.configure: ask once that is
  // done, never for the empty box (frontend 1.43 showed "1 / 4096 tokens, no lyrics" for a loaded
  // song until the poll below came round).
  const onConfigure = node.onConfigure;
  node.onConfigure = function () {
    const result = onConfigure?.apply(this, arguments);
    refreshAfter(0);
    return result;
  };
  // Values set by code (widget.value = ...) fire no event at all: poll cheaply.
  const poll = setInterval(() => {
    if (!node.graph || timer !== null) return;
    if (`${upstreamCheckpoint(node)}\u0000${currentText()}` !== lastKey) refresh();
  }, 1000);

  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(poll);
    clearTimeout(timer);
    return onRemoved?.apply(this, arguments);
  };
  // A node added by hand has no configure step: ask once the current task (where a workflow
  // load would configure it) is over.
  refreshAfter(0);
}

app.registerExtension({
  name: "comfyui-acestep.lyrics",
  nodeCreated(node) {
    if (!LYRIC_NODES.has(node.comfyClass)) return;
    try {
      attachLyricEditor(node);
    } catch (err) {
      console.warn("comfyui-acestep: lyric editor not available on this node", err);
    }
  },
});
