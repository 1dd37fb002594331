"""Drive a real ComfyUI server with this pack loaded: start it on a fresh base directory, run
API-format prompts, and run UI-format workflows the way a user does (the file dropped on the
canvas of the real frontend in headless Chromium, then Run).

Library use::

    with ComfyServer(comfyui_dir, packs=[REPO], checkpoints=[tiny]) as server:
        entry = server.run_prompt(api_prompt)          # history entry; raises WorkflowError
        files = server.output_files(entry)
        with server.browser() as ui:                   # headless Chromium on the real frontend
            ui.load_workflow(workflow_json)            # drag and drop, like a user
            api = ui.graph_to_prompt()                 # what the Run button would send
            ui.screenshot("canvas.png")

Command line::

    python scripts/comfyui_harness.py serve  [--checkpoint PATH ...]      # until Ctrl-C
    python scripts/comfyui_harness.py run-api PROMPT_API.json [--checkpoint PATH ...]
    python scripts/comfyui_harness.py run-ui  WORKFLOW.json [--screenshot out.png] [...]

The one home of this code: scripts/make_workflows.py and the tests (tests/comfyui/) both import
it (tests/conftest.py puts scripts/ on sys.path).

Only 127.0.0.1 is ever contacted: the browser aborts every request for any other host.
Needs `requests`; the browser parts also need `playwright` and a Chromium (Debian's chromium,
or $CHROMIUM).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

import requests

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui-acestep"  # the folder name the pack gets under custom_nodes/
DEFAULT_ENV = Path(os.environ.get("ACESTEP_ENV_DIR", Path.home() / ".cache" / "comfyui-acestep" / "env"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras")
# Settings that keep first-run dialogs (tutorial, missing-models list) off the canvas.
QUIET_UI_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False}


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or os.environ.get("ACESTEP_COMFYUI_DIR") or DEFAULT_ENV / "ComfyUI")


def default_python() -> str:
    """The interpreter that runs ComfyUI: the one scripts/test.sh chose, else this one."""
    return os.environ.get("ACESTEP_PYTHON") or os.environ.get("COMFYUI_PYTHON") or sys.executable


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), os.environ.get("ACESTEP_CHROMIUM"), "chromium",
                      "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise FileNotFoundError("no Chromium found: run scripts/setup_env.sh (apt-get install chromium), "
                            "or set CHROMIUM=/path/to/chromium")


def make_tiny_checkpoint(out: Path, layout: str = "comfyui", python: str | None = None, seed: int = 0) -> Path:
    """Write a tiny random-weight ACE-Step checkpoint with the pack's own CLI (kept if present)."""
    out = Path(out)
    cmd = [python or default_python(), "-m", "acestep_core", "make-tiny", "--out", str(out),
           "--layout", layout, "--seed", str(seed)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return out


class WorkflowError(RuntimeError):
    """ComfyUI refused or failed a prompt; the message is ComfyUI's own."""


class ServerError(RuntimeError):
    """The server did not start, or did not load the pack; the message ends with the log."""


class ComfyServer:
    """A ComfyUI server process with its own base directory.

    The base directory gets custom_nodes/ (a symlink to each pack), models/checkpoints/
    (the given checkpoints, symlinked), input/, output/ and user/ (settings and the database),
    so runs never share state with each other or with a user's ComfyUI.
    """

    def __init__(self, comfyui_dir: str | Path | None = None, base_dir: str | Path | None = None,
                 packs: Iterable[str | Path] = (REPO,), checkpoints: Iterable[str | Path] = (),
                 port: int | None = None, python: str | None = None, cpu: bool | None = None,
                 extra_args: Iterable[str] = (), required_packs: Iterable[str] = (PACK_NAME,)):
        self.comfyui_dir = Path(comfyui_dir or default_comfyui_dir()).resolve()
        if not (self.comfyui_dir / "main.py").is_file():
            raise ServerError(f"{self.comfyui_dir} is not a ComfyUI tree (no main.py): run scripts/setup_env.sh "
                              "or set COMFYUI_DIR")
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="comfy-base-")).resolve()
        self.packs = [Path(p).resolve() for p in packs]
        self.checkpoints = [Path(c).resolve() for c in checkpoints]
        self.port = port or free_port()
        self.python = python or default_python()
        self.cpu = cpu
        self.extra_args = list(extra_args)
        self.required_packs = list(required_packs)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle ------------------------------------------------------------------------------
    def pack_link_name(self, pack: Path) -> str:
        return PACK_NAME if pack == REPO else pack.name

    def prepare_base_dir(self) -> None:
        # The model folders exist before the server starts, so that files added later are listed
        # (ComfyUI re-reads a folder whose modification time changed).
        for sub in ("custom_nodes", "input", "output", "user", *(f"models/{kind}" for kind in MODEL_FOLDERS)):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for pack in self.packs:
            self._link(self.base_dir / "custom_nodes" / self.pack_link_name(pack), pack)
        for ckpt in self.checkpoints:
            self.add_checkpoint(ckpt)

    def add_checkpoint(self, path: str | Path, name: str | None = None) -> Path:
        """Make a checkpoint file (or original-layout folder) visible in models/checkpoints/."""
        return self.add_model("checkpoints", path, name)

    def add_model(self, kind: str, path: str | Path, name: str | None = None) -> Path:
        """Make a model file or folder visible in models/<kind>/ (checkpoints, diffusion_models,
        text_encoders, vae, loras)."""
        if kind not in MODEL_FOLDERS:
            raise ValueError(f"kind must be one of {MODEL_FOLDERS}, not {kind!r}")
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(path)
        link = self.base_dir / "models" / kind / (name or path.name)
        self._link(link, path)
        return link

    def add_input_file(self, path: str | Path, name: str | None = None) -> str:
        """Copy a file into input/ (where LoadAudio and friends look); returns its name there."""
        target = self.base_dir / "input" / (name or Path(path).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return target.name

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        if link.is_symlink() or link.exists():
            if link.resolve() == target:
                return
            raise FileExistsError(f"{link} exists and is not a link to {target}")
        link.symlink_to(target, target_is_directory=target.is_dir())

    def command(self) -> list[str]:
        cpu = self.cpu
        if cpu is None:
            import torch
            cpu = not torch.cuda.is_available()
        return [self.python, str(self.comfyui_dir / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir),
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
                *(["--cpu"] if cpu else []), *self.extra_args]

    def start(self, timeout: float = 300) -> "ComfyServer":
        """Start the server and wait until it answers and has loaded every required pack."""
        self.prepare_base_dir()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self._log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), cwd=self.comfyui_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while starting\n"
                                  + self.log_tail())
            if self._answers():
                break
            if time.time() > deadline:
                self.stop()
                raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s\n" + self.log_tail())
            time.sleep(0.5)
        problems = self.pack_problems()
        if problems:
            self.stop()
            raise ServerError("\n".join(problems) + "\n" + self.log_tail())
        requests.post(self.url + "/settings", json=QUIET_UI_SETTINGS, timeout=10).raise_for_status()
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/system_stats", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the log --------------------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return f"--- last {chars} characters of {self.log_path} ---\n" + self.log()[-chars:]

    def import_failures(self) -> list[str]:
        """Every line where ComfyUI reports a failed import (any pack, or its own extras)."""
        return [line.strip() for line in self.log().splitlines() if "IMPORT FAILED" in line]

    def startup_log(self) -> str:
        """The log up to 'Starting server': where import-time problems of packs show up. Later
        tracebacks come from prompts (tests that feed bad input on purpose make some)."""
        log = self.log()
        end = log.find("Starting server")
        return log if end < 0 else log[:end]

    def tracebacks(self, log: str | None = None) -> list[str]:
        """Every Python traceback in the log (or the given part of it), each as one string
        (header, frames, exception)."""
        blocks, current = [], None
        for line in (self.log() if log is None else log).splitlines():
            if line.startswith("Traceback (most recent call last):"):
                current = [line]
            elif current is not None:
                current.append(line)
                if line and not line[0].isspace():  # the exception line ends the block
                    blocks.append("\n".join(current))
                    current = None
        return blocks

    def pack_problems(self) -> list[str]:
        """Why a required pack is not (fully) loaded: missing from, or IMPORT FAILED in, ComfyUI's
        'Import times for custom nodes' list ('<seconds> seconds[ (IMPORT FAILED)]: <path>'), or
        a traceback through the pack's files logged while packs load (a pack may catch an error
        in one of its modules, log it and load the rest: the user would then miss nodes)."""
        lines = self.log().splitlines()
        problems = []
        packs_by_name = {self.pack_link_name(p): p for p in self.packs}
        for name in self.required_packs:
            link = self.base_dir / "custom_nodes" / name
            listed = [ln for ln in lines if "seconds" in ln and ln.rstrip().endswith(str(link))]
            if not listed:
                problems.append(f"custom node pack {name!r} was not loaded at all (not in ComfyUI's import list)")
            elif any("IMPORT FAILED" in ln for ln in listed):
                problems.append(f"custom node pack {name!r}: IMPORT FAILED")
            roots = {str(link) + os.sep}
            if name in packs_by_name:
                roots.add(str(packs_by_name[name]) + os.sep)
            for block in self.tracebacks(self.startup_log()):
                if any(root in block for root in roots):
                    problems.append(f"custom node pack {name!r}: a traceback through its files was logged:\n{block}")
        return problems

    # -- HTTP API -------------------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        r = requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r

    def object_info(self, node_type: str | None = None) -> dict:
        """Node definitions as the frontend sees them (all, or one node type's)."""
        info = self.get("/object_info" + (f"/{node_type}" if node_type else "")).json()
        return info[node_type] if node_type else info

    def queue_prompt(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        """Queue an API-format prompt; returns its prompt_id. WorkflowError when refused (its
        node_errors say which input of which node failed validation)."""
        body = {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())}
        if extra_data:
            body["extra_data"] = extra_data
        r = requests.post(self.url + "/prompt", json=body, timeout=60)
        if r.status_code != 200:
            raise WorkflowError(f"prompt refused ({r.status_code}): {r.text[:4000]}")
        return r.json()["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict:
        return self.get("/history" + (f"/{prompt_id}" if prompt_id else "")).json()

    def queue(self) -> dict:
        return self.get("/queue").json()

    def wait_for(self, prompt_id: str, timeout: float = 1800) -> dict:
        """Wait until a prompt has finished; returns its history entry (outputs, status).
        WorkflowError with ComfyUI's execution_error when it failed."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.history(prompt_id).get(prompt_id)
            if entry is not None:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    messages = [m for m in status.get("messages", []) if m[0] in ("execution_error",
                                                                                   "execution_interrupted")]
                    detail = messages[-1] if messages else status
                    raise WorkflowError(json.dumps(detail, indent=1)[:6000])
                if status.get("completed"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} while running {prompt_id}\n"
                                  + self.log_tail())
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} not finished within {timeout:.0f} s")

    def run_prompt(self, prompt: dict, timeout: float = 1800, **queue_kw) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry."""
        return self.wait_for(self.queue_prompt(prompt, **queue_kw), timeout)

    def interrupt(self) -> None:
        """Stop the prompt that is running now (what the frontend's Cancel button does)."""
        requests.post(self.url + "/interrupt", timeout=10).raise_for_status()

    @contextlib.contextmanager
    def listen(self, client_id: str | None = None) -> Iterator["ServerMessages"]:
        """What the frontend of ``client_id`` is told while the block runs: the websocket's JSON
        messages and the text ComfyUI shows on nodes (``progress_text``, binary type 3). Queue
        prompts with ``client_id=messages.client_id``. Uses aiohttp, which ComfyUI needs anyway."""
        import asyncio
        import struct
        import threading

        messages = ServerMessages(client_id or str(uuid.uuid4()))
        ready, stop = threading.Event(), threading.Event()
        url = self.url.replace("http://", "ws://") + f"/ws?clientId={messages.client_id}"

        async def receive():
            import aiohttp
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url) as ws:
                    ready.set()
                    while not stop.is_set():
                        try:
                            msg = await ws.receive(timeout=0.2)
                        except asyncio.TimeoutError:
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            messages.json.append(json.loads(msg.data))
                        elif msg.type == aiohttp.WSMsgType.BINARY and len(msg.data) >= 8:
                            (kind,) = struct.unpack(">I", msg.data[:4])
                            if kind == 3:   # BinaryEventTypes.TEXT: node id length, node id, text
                                (n,) = struct.unpack(">I", msg.data[4:8])
                                messages.node_text.append((msg.data[8:8 + n].decode(), msg.data[8 + n:].decode()))
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break

        thread = threading.Thread(target=lambda: asyncio.run(receive()), daemon=True)
        thread.start()
        if not ready.wait(30):
            raise ServerError("could not open the websocket /ws of the server")
        try:
            yield messages
        finally:
            stop.set()
            thread.join(10)

    def output_files(self, entry: dict) -> list[Path]:
        """Files that the prompt's output nodes saved (audio, images, ...), as local paths."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for items in node_output.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        folder = self.base_dir / item.get("type", "output") / item.get("subfolder", "")
                        files.append(folder / item["filename"])
        return files

    # -- the real frontend ----------------------------------------------------------------------
    @contextlib.contextmanager
    def browser(self, width: int = 1600, height: int = 1000) -> Iterator["ComfyPage"]:
        """Headless Chromium with the server's page open and the app ready."""
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": width, "height": height})
                ui = ComfyPage(self, page)
                ui.open()
                yield ui
            finally:
                browser.close()

    def run_ui_workflow(self, workflow: dict | str | Path, screenshot: str | Path | None = None,
                        timeout: float = 1800, drag_drop: bool = True,
                        edit_prompt: Callable[[dict], dict] | None = None) -> dict:
        """Load a UI-format workflow in the real frontend as a user does, press Run, wait.

        drag_drop=True drops the file on the canvas; False calls app.loadGraphData. With
        edit_prompt(api_prompt) -> api_prompt, the prompt the frontend built is changed before
        it is queued (e.g. fewer steps). Returns the history entry; WorkflowError on failure."""
        with self.browser() as ui:
            ui.load_workflow(workflow, drag_drop=drag_drop)
            try:
                prompt_id = ui.run(edit_prompt)
                entry = self.wait_for(prompt_id, timeout)
            finally:
                if screenshot:
                    ui.screenshot(screenshot)
        return entry

    def ui_to_api(self, workflow: dict | str | Path) -> dict:
        """The API-format prompt that the frontend builds from a UI-format workflow
        (app.graphToPrompt, exactly what the Run button sends)."""
        with self.browser() as ui:
            ui.load_workflow(workflow, drag_drop=False)
            return ui.graph_to_prompt()


class ServerMessages:
    """Messages one client received (see ComfyServer.listen)."""

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.json: list[dict] = []
        self.node_text: list[tuple[str, str]] = []   # (node id, text shown on the node)

    def text_on(self, node_id: str) -> str:
        return "\n".join(text for node, text in self.node_text if node == str(node_id))


def _workflow_text(workflow: dict | str | Path) -> tuple[str, str]:
    """(json text, file name) for a workflow given as a dict, a JSON string or a path."""
    if isinstance(workflow, dict):
        return json.dumps(workflow), "workflow.json"
    if isinstance(workflow, Path) or (isinstance(workflow, str) and not workflow.lstrip().startswith("{")):
        path = Path(workflow)
        return path.read_text(), path.name
    return workflow, "workflow.json"


class ComfyPage:
    """The ComfyUI frontend in a headless browser page."""

    def __init__(self, server: ComfyServer, page):
        self.server = server
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []

    def open(self, timeout_ms: int = 120_000) -> None:
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        # Nothing but the local server: the frontend must work without the internet.
        self.page.route("**/*", lambda route: route.continue_()
                        if route.request.url.startswith(self.server.url) else route.abort())
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app && window.app.graph", timeout=timeout_ms)

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def node_count(self) -> int:
        return self.page.evaluate("() => window.app.graph._nodes.length")

    def load_workflow(self, workflow: dict | str | Path, drag_drop: bool = True, timeout_ms: int = 60_000) -> None:
        """Open a UI-format workflow: dropped on the canvas as a file (a user's drag and drop),
        or through app.loadGraphData. Waits until the graph has the file's nodes."""
        text, name = _workflow_text(workflow)
        data = json.loads(text)
        if drag_drop:
            self.page.evaluate("""([text, name]) => {
                const dt = new DataTransfer();
                dt.items.add(new File([text], name, {type: 'application/json'}));
                const canvas = document.querySelector('#graph-canvas');
                for (const type of ['dragenter', 'dragover', 'drop'])
                    canvas.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""", [text, name])
        else:
            self.page.evaluate("(wf) => window.app.loadGraphData(wf)", data)
        wanted = len(data.get("nodes", []))
        try:
            self.page.wait_for_function(f"window.app.graph._nodes.length === {wanted}", timeout=timeout_ms)
        except Exception as err:
            raise WorkflowError(f"the frontend shows {self.node_count()} nodes, the file has {wanted}; "
                                f"console errors: {self.console_errors[-5:]}; page errors: {self.page_errors[-5:]}"
                                ) from err

    def graph_to_prompt(self) -> dict:
        """API-format prompt for the graph on the canvas (what Run would send)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def graph_to_prompt_full(self) -> dict:
        """{'output': API prompt, 'workflow': UI workflow} as app.graphToPrompt returns them."""
        return self.page.evaluate("async () => await window.app.graphToPrompt()")

    def run(self, edit_prompt: Callable[[dict], dict] | None = None, timeout: float = 60) -> str:
        """Press Run (app.queuePrompt), or queue an edited copy of the frontend's prompt;
        returns the new prompt_id."""
        server = self.server
        if edit_prompt is not None:
            built = self.graph_to_prompt_full()
            return server.queue_prompt(edit_prompt(built["output"]),
                                       extra_data={"extra_pnginfo": {"workflow": built["workflow"]}})

        def known_ids() -> list[str]:
            queue = server.queue()
            queued = [item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])]
            return queued + list(server.history())

        before = set(known_ids())
        self.page.evaluate("() => window.app.queuePrompt(0, 1)")
        deadline = time.time() + timeout
        while time.time() < deadline:
            new = [pid for pid in known_ids() if pid not in before]
            if new:
                return new[0]
            time.sleep(0.25)
        raise WorkflowError("the frontend queued nothing; console errors: " + "; ".join(self.console_errors[-5:])
                            + "; page errors: " + "; ".join(self.page_errors[-5:]))

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve", "run-api", "run-ui"])
    ap.add_argument("workflow", nargs="?", help="API-format (run-api) or UI-format (run-ui) JSON file")
    ap.add_argument("--comfyui", help="ComfyUI source tree (default: $COMFYUI_DIR or the setup_env.sh one)")
    ap.add_argument("--checkpoint", action="append", default=[], help="a checkpoint file or folder to offer")
    ap.add_argument("--tiny", action="store_true", help="also offer a tiny random-weight checkpoint")
    ap.add_argument("--base-dir", help="ComfyUI base directory (default: a new temporary one)")
    ap.add_argument("--port", type=int)
    ap.add_argument("--screenshot", help="PNG path (run-ui)")
    args = ap.parse_args(argv)
    if args.mode != "serve" and not args.workflow:
        ap.error(f"{args.mode} needs a workflow file")
    checkpoints = list(args.checkpoint)
    if args.tiny:
        checkpoints.append(make_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="acestep-tiny-"))
                                                / "acestep_tiny_RANDOM_WEIGHTS_demo.safetensors"))
    with ComfyServer(args.comfyui, args.base_dir, checkpoints=checkpoints, port=args.port) as server:
        if args.mode == "serve":
            print(f"ComfyUI at {server.url} (base directory {server.base_dir}); Ctrl-C stops it", flush=True)
            try:
                server.proc.wait()
            except KeyboardInterrupt:
                pass
            return 0
        if args.mode == "run-api":
            entry = server.run_prompt(json.loads(Path(args.workflow).read_text()))
        else:
            entry = server.run_ui_workflow(Path(args.workflow), screenshot=args.screenshot)
        for path in server.output_files(entry):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
