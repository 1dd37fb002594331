"""Every released ACE-Step 1.5 / 1.5 XL layout through one loader, and what each file is.

Layouts (what a file or folder holds is told from its keys and shapes, never from its name):

* Comfy-Org's all-in-one file (``checkpoints/ace_step_1.5_turbo_aio.safetensors``): the DiT under
  ``model.diffusion_model.``, the VAE under ``vae.``, the text encoder under
  ``text_encoders.qwen3_06b.transformer.model.`` and the planner under
  ``text_encoders.qwen3_2b|qwen3_4b.transformer.model.`` (ComfyUI 0.20.1 ``comfy/supported_models.py``,
  ``ACEStep15``; ``comfy/sd.py``, ``load_state_dict_guess_config``).
* Comfy-Org's split files: ``diffusion_models/acestep_v1.5_*.safetensors`` (bare DiT keys),
  ``text_encoders/qwen_0.6b_ace15.safetensors`` (Qwen3 under ``model.``; ``qwen_1.7b_ace15`` /
  ``qwen_4b_ace15`` are planners: recognised, never taken as the text encoder), and
  ``vae/ace_1.5_vae.safetensors`` (stable-audio-tools keys).
* The official Hugging Face folders: ``acestep-v15-*/`` (``config.json`` + ``model.safetensors``,
  ``silence_latent.pt``), ``vae/`` (diffusers ``AutoencoderOobleck``), ``Qwen3-Embedding-0.6B/``,
  ``acestep-5Hz-lm-*/``, alone or side by side under one parent folder.

A Qwen3 model is the text encoder when its vocabulary has no audio-code tokens (151669 rows) and
the planner when it has them (217204): ComfyUI routes by width instead (``ACE15TEModel.load_sd``),
which would take the 0.6B planner (width 1024) for the text encoder.

``silence_latent.pt`` is a PyTorch pickle: it is never unpickled. :func:`read_plain_tensor` reads
its zip archive and walks the pickle's opcodes without executing them, accepting only what a plain
saved tensor contains. Without that file the loader uses the silence latent ComfyUI 0.20.1
hard-codes (``comfy/ldm/ace/ace_step15.py``, ``get_silence_latent``), shipped as
``silence_latent_comfyui.safetensors`` (written by ``scripts/make_ace15_io_golden.py``).
"""
from __future__ import annotations

import json
import os
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, ComponentSource, read_safetensors_header, resolve_dtype
from ..config import ConfigError

DIT_SIGNATURE = "encoder.lyric_encoder.layers.0.input_layernorm.weight"
V1_SIGNATURE = "genre_embedder.weight"
QWEN3_SIGNATURE = "layers.0.self_attn.q_norm.weight"
AUDIO_CODE_VOCAB = 151669 + 64000          # a Qwen3 with at least this many tokens is the planner
COMFY_DIT_PREFIX = "model.diffusion_model."
COMFY_VAE_PREFIX = "vae."
COMFY_TEXT_ENCODER_PREFIX = "text_encoders.qwen3_06b.transformer.model."
SILENCE_FILE = "silence_latent.pt"
COMFY_SILENCE = Path(__file__).with_name("silence_latent_comfyui.safetensors")
WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")

ROLE_WORDS = {"dit": "diffusion model (DiT)", "vae": "VAE", "text_encoder": "text encoder"}


# ---------------------------------------------------------------------------------------------
# What a file holds
# ---------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One model found in a file: ``kind`` is ``dit``, ``vae``, ``text_encoder``, ``planner`` or a
    foreign kind (``v1``, ``v1_part``, ``other_vae``, ``unknown``); ``source`` reads its tensors."""

    kind: str
    source: ComponentSource | None
    description: str
    json_config: dict | None = None


@dataclass
class Inventory:
    """Everything found at one path (a file, or a folder and its sub-folders)."""

    path: Path
    parts: list[Part] = field(default_factory=list)
    silence_file: Path | None = None
    is_folder: bool = False

    def of(self, kind: str) -> list[Part]:
        return [p for p in self.parts if p.kind == kind]

    def describe(self) -> str:
        if not self.parts:
            return "no model weights"
        return " + ".join(p.description for p in self.parts)


def _under(shapes: dict, prefix: str) -> dict:
    return {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}


def _qwen_parts(path: Path, shapes: dict, metadata, json_config) -> list[Part]:
    parts = []
    stems = sorted({k[: -len(QWEN3_SIGNATURE)] for k in shapes if k.endswith(QWEN3_SIGNATURE)})
    for stem in stems:
        if stem.startswith((COMFY_DIT_PREFIX, "encoder.", "decoder.", "tokenizer.", "detokenizer.")):
            continue                    # the DiT's own attention stacks
        embed = shapes.get(stem + "embed_tokens.weight")
        if embed is None:
            continue
        prefix = stem[: -len("model.")] if stem.endswith("model.") else stem
        sub = {k: s for k, s in _under(shapes, prefix).items()
               if k.startswith(stem[len(prefix):]) or k == "lm_head.weight"}
        vocab, width = embed
        inner = stem[len(prefix):] + "layers."
        layers = len({k[len(inner):].split(".", 1)[0] for k in sub if k.startswith(inner)})
        if vocab >= AUDIO_CODE_VOCAB:
            parts.append(Part("planner", ComponentSource("planner", path, prefix, sub, json_config, metadata),
                              f"ACE-Step 1.5 5 Hz planner (Qwen3 LM, width {width}, {layers} layers, {vocab} tokens)",
                              json_config))
        else:
            parts.append(Part("text_encoder", ComponentSource("text_encoder", path, prefix, sub, json_config, metadata),
                              f"ACE-Step 1.5 text encoder (Qwen3-Embedding, width {width}, {layers} layers)",
                              json_config))
    return parts


def _vae_part(path: Path, shapes: dict, prefix: str, metadata, json_config) -> Part | None:
    from .vae import canonical_vae_keys, infer_vae_config

    sub = _under(shapes, prefix)
    if not ("decoder.layers.1.layers.0.beta" in sub or "decoder.block.0.snake1.alpha" in sub):
        return None
    source = ComponentSource("vae", path, prefix, sub, json_config, metadata)
    try:
        config = infer_vae_config(canonical_vae_keys(sub))
    except (ConfigError, KeyError, ValueError) as err:
        return Part("other_vae", source, f"an Oobleck-style VAE of an unknown layout ({err})")
    if config.hop != 1920:
        return Part("other_vae", source, f"a Stable Audio Oobleck VAE ({config.hop}x, 44.1 kHz), not ACE-Step 1.5's "
                                         "48 kHz VAE")
    return Part("vae", source, "ACE-Step 1.5 VAE (Oobleck, 48 kHz, 1920x)", json_config)


def _dit_part(path: Path, shapes: dict, prefix: str, metadata, json_config) -> Part | None:
    from .config import config_from_state_dict_shapes

    sub = _under(shapes, prefix)
    if DIT_SIGNATURE not in sub:
        return None
    sub = {k: s for k, s in sub.items() if k.split(".", 1)[0] in
           ("decoder", "encoder", "tokenizer", "detokenizer", "null_condition_emb")}
    source = ComponentSource("dit", path, prefix, sub, json_config, metadata)
    try:
        config = config_from_state_dict_shapes(sub)
    except ConfigError as err:
        raise CheckpointError(f"{path}: an ACE-Step 1.5 DiT with an unexpected layout: {err}") from err
    size = "XL" if config.is_xl else ("2B" if config.dit.hidden_size == 2048 else f"width {config.dit.hidden_size}")
    flavour = ""
    if json_config and "is_turbo" in json_config:
        flavour = ", turbo" if json_config["is_turbo"] else ", base/sft"
    return Part("dit", source, f"ACE-Step 1.5 DiT ({size}, {config.dit.num_layers} layers{flavour})", json_config)


def _v1_parts(path: Path, shapes: dict) -> list[Part]:
    if V1_SIGNATURE in shapes or COMFY_DIT_PREFIX + V1_SIGNATURE in shapes:
        return [Part("v1", None, "ACE-Step v1 (3.5B) " + ("checkpoint" if any(k.startswith("vae.") for k in shapes)
                                                         else "transformer"))]
    if "encoder.conv_in.weight" in shapes and any(k.startswith("decoder.") for k in shapes):
        return [Part("v1_part", None, "ACE-Step v1 VAE (music DCAE, 44.1 kHz)")]
    if "backbone.channel_layers.0.0.bias" in shapes:
        return [Part("v1_part", None, "ACE-Step v1 vocoder")]
    if "shared.weight" in shapes and any(k.startswith("encoder.block.") for k in shapes):
        return [Part("v1_part", None, "UMT5 text encoder (ACE-Step v1)")]
    return []


def inspect_file(path, json_config: dict | None = None) -> Inventory:
    """What a ``.safetensors`` file holds (headers only, no weights read). A pickle or truncated
    file raises :class:`CheckpointError` naming the problem."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin") and zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: a PyTorch pickle file, not safetensors. Pickles are never loaded (loading "
                              "them can run arbitrary code): use the .safetensors release of this model.")
    info = read_safetensors_header(path)
    shapes, meta = info.shapes, info.metadata
    inv = Inventory(path)
    inv.parts += _v1_parts(path, shapes)
    if inv.parts:
        return inv
    for prefix in ("", COMFY_DIT_PREFIX):
        part = _dit_part(path, shapes, prefix, meta, json_config)
        if part:
            inv.parts.append(part)
    for prefix in ("", COMFY_VAE_PREFIX):
        part = _vae_part(path, shapes, prefix, meta, json_config)
        if part:
            inv.parts.append(part)
    inv.parts += _qwen_parts(path, shapes, meta, json_config)
    if not inv.parts:
        sample = ", ".join(list(shapes)[:3]) or "no tensors"
        inv.parts.append(Part("unknown", None, f"not an ACE-Step model (first keys: {sample})"))
    return inv


def _folder_weights(folder: Path) -> list[Path]:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    return sorted(folder.glob("*.safetensors"))


def inspect_path(path) -> Inventory:
    """What a file, a model folder (``config.json`` + weights) or a folder of model folders holds."""
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    if path.is_file():
        return inspect_file(path)
    inv = Inventory(path, is_folder=True)
    if all((path / d).is_dir() for d in ("ace_step_transformer", "music_dcae_f8c8")):
        inv.parts.append(Part("v1", None, "ACE-Step v1 checkpoint folder"))
        return inv
    folders = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    for folder in folders:
        files = _folder_weights(folder)
        if not files:
            continue
        json_config = None
        if (folder / "config.json").is_file():
            try:
                json_config = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{folder / 'config.json'}: not valid JSON ({err}). Download it again.") from err
        # Sharded planners: the first shard is enough to tell what the folder is.
        found = inspect_file(files[0], json_config)
        for part in found.parts:
            if len(files) > 1 and part.kind != "planner":
                raise CheckpointError(f"{folder}: {len(files)} .safetensors files; expected one weight file "
                                      f"({' or '.join(WEIGHT_NAMES)}).")
        inv.parts += found.parts
        if (folder / SILENCE_FILE).is_file() and any(p.kind == "dit" for p in found.parts):
            inv.silence_file = folder / SILENCE_FILE
    return inv


# ---------------------------------------------------------------------------------------------
# One model out of several paths, with one message for a wrong mix
# ---------------------------------------------------------------------------------------------
@dataclass
class Ace15Sources:
    dit: Part
    vae: Part | None
    text_encoder: Part | None
    planner: Part | None
    silence_file: Path | None
    paths: list[Path]


def resolve_sources(paths, require=("dit", "vae", "text_encoder"), single_files: bool = False) -> Ace15Sources:
    """Pick the DiT, VAE, text encoder (and planner) out of ``paths``; anything that does not make
    one 1.5 model raises one :class:`CheckpointError` naming each path and what it is.

    ``single_files``: the caller's slots take files (a loader node listing ``.safetensors``), so a
    folder is an error too."""
    paths = [Path(os.fspath(p)).expanduser() for p in paths if p is not None and str(p) != ""]
    inventories = [inspect_path(p) for p in paths]
    problems: list[str] = []
    found: dict[str, list[Part]] = {"dit": [], "vae": [], "text_encoder": [], "planner": []}
    for inv in inventories:
        if single_files and inv.is_folder:
            problems.append(f"{inv.path} is a folder ({inv.describe()}) where a single .safetensors file is expected: "
                            "pick the model file itself, or load the folder with the checkpoint loader")
        for part in inv.parts:
            if part.kind in found:
                found[part.kind].append(part)
            elif part.kind in ("v1", "v1_part"):
                problems.append(f"{inv.path} is {part.description}: ACE-Step v1 files cannot be mixed with 1.5 ones")
            elif part.kind == "other_vae":
                problems.append(f"{inv.path} is {part.description}")
            else:
                problems.append(f"{inv.path} is {part.description}")
    for kind in ("dit", "vae", "text_encoder"):
        if len(found[kind]) > 1:
            problems.append(f"{len(found[kind])} {ROLE_WORDS[kind]}s given (" +
                            ", ".join(str(p.source.file) for p in found[kind]) + "): give one")
    missing = [k for k in require if not found[k]]
    if missing and not problems:
        for kind in missing:
            hint = {"dit": "diffusion_models/acestep_v1.5_*.safetensors or an acestep-v15-*/ folder",
                    "vae": "vae/ace_1.5_vae.safetensors or the official vae/ folder",
                    "text_encoder": "text_encoders/qwen_0.6b_ace15.safetensors or the Qwen3-Embedding-0.6B/ folder"}[kind]
            extra = ""
            if kind == "text_encoder" and found["planner"]:
                extra = (" (the Qwen3 model given is the 5 Hz planner, not the text encoder: "
                         f"{found['planner'][0].source.file.name})")
            problems.append(f"no ACE-Step 1.5 {ROLE_WORDS[kind]}{extra}: add {hint}")
    if problems:
        listing = "\n".join(f"  - {inv.path}: {inv.describe()}" for inv in inventories)
        raise CheckpointError("These files do not make one ACE-Step 1.5 model:\n" + listing + "\nProblems:\n" +
                              "\n".join(f"  * {p}" for p in problems))
    silence = next((inv.silence_file for inv in inventories if inv.silence_file), None)
    first = lambda k: found[k][0] if found[k] else None  # noqa: E731
    return Ace15Sources(first("dit"), first("vae"), first("text_encoder"), first("planner"), silence, paths)


def detect_generation(path) -> str:
    """``"v1"`` or ``"1.5"`` for a checkpoint file or folder (from its keys), else CheckpointError."""
    inv = inspect_path(path)
    kinds = {p.kind for p in inv.parts}
    if kinds & {"v1", "v1_part"}:
        return "v1"
    if kinds & {"dit", "vae", "text_encoder", "planner"}:
        return "1.5"
    raise CheckpointError(f"{path}: {inv.describe()}")


# ---------------------------------------------------------------------------------------------
# silence_latent.pt without unpickling
# ---------------------------------------------------------------------------------------------
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "BFloat16Storage": torch.bfloat16, "HalfStorage": torch.float16,
                   "DoubleStorage": torch.float64}
_ALLOWED_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                    *(("torch", name) for name in _STORAGE_DTYPES)}


def read_plain_tensor(path) -> torch.Tensor:
    """The one tensor a ``torch.save(tensor)`` file holds, read from its zip archive. The pickle
    inside is walked with ``pickletools.genops`` (a disassembler: nothing is executed) and must
    consist of a single ``torch._utils._rebuild_tensor_v2`` call on one storage; any other global,
    call or structure raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a PyTorch zip file ({err}).") from err
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}.")
        root = pickles[0][: -len("data.pkl")]
        record = _walk_tensor_pickle(archive.read(pickles[0]), path)
        dtype, key, offset, size, stride = record
        raw = archive.read(f"{root}data/{key}")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype)
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if size else offset + 1
    if needed > flat.numel():
        raise CheckpointError(f"{path}: the tensor needs {needed} values, the storage has {flat.numel()}.")
    return torch.as_strided(flat, size, stride, offset).clone()


def _walk_tensor_pickle(data: bytes, path: Path):
    stack: list = []
    memo: dict = {}
    mark = object()

    def fail(why: str):
        raise CheckpointError(f"{path}: not a plain saved tensor ({why}); refusing to read it.")

    def pop_mark():
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is mark:
                items = stack[i + 1:]
                del stack[i:]
                return items
        fail("unbalanced MARK")

    try:
        ops = list(pickletools.genops(data))
    except Exception as err:  # malformed pickle
        fail(f"unreadable pickle: {err}")
    for opcode, arg, _ in ops:
        name = opcode.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "GLOBAL":
            module, qual = arg.split(" ", 1)
            if (module, qual) not in _ALLOWED_GLOBALS:
                fail(f"it references {module}.{qual}")
            stack.append(("global", module, qual))
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "MARK":
            stack.append(mark)
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2", "LONG1"):
            stack.append(arg)
        elif name in ("NEWFALSE", "NEWTRUE", "NONE"):
            stack.append({"NEWFALSE": False, "NEWTRUE": True, "NONE": None}[name])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "BINPERSID":
            pid = stack.pop()
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], tuple)
                    and pid[1][0] == "global" and pid[1][2] in _STORAGE_DTYPES):
                fail("unexpected persistent id")
            stack.append(("storage", _STORAGE_DTYPES[pid[1][2]], str(pid[2])))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if func == ("global", "collections", "OrderedDict") and args == ():
                stack.append(("ordereddict",))
            elif func == ("global", "torch._utils", "_rebuild_tensor_v2"):
                if len(args) < 4 or not (isinstance(args[0], tuple) and args[0][:1] == ("storage",)):
                    fail("unexpected tensor record")
                storage, offset, size, stride = args[:4]
                if not all(isinstance(v, int) for v in (offset, *size, *stride)):
                    fail("non-integer tensor geometry")
                stack.append(("tensor", storage[1], storage[2], offset, tuple(size), tuple(stride)))
            else:
                fail(f"it calls {func!r}")
        elif name == "EMPTY_DICT":
            stack.append({})
        else:
            fail(f"pickle opcode {name}")
    if len(stack) != 1 or not (isinstance(stack[0], tuple) and stack[0][:1] == ("tensor",)):
        fail("it does not hold exactly one tensor")
    return stack[0][1:]


def silence_latent(frames: int, silence_file: Path | None = None) -> torch.Tensor:
    """[1, 64, frames] silence latent: from the official ``silence_latent.pt`` ([1, 64, 15000],
    channels first as the file stores it) when given, else ComfyUI 0.20.1's hard-coded one (4 head
    frames, then one frame repeated; ``get_silence_latent``)."""
    if silence_file is not None:
        latent = read_plain_tensor(silence_file).float()
        if latent.ndim != 3 or latent.shape[1] != 64:
            raise CheckpointError(f"{silence_file}: expected a [1, 64, T] silence latent, got {tuple(latent.shape)}")
        if frames <= latent.shape[-1]:
            return latent[..., :frames].clone()
        return torch.cat([latent, latent[..., -1:].expand(-1, -1, frames - latent.shape[-1])], dim=-1)
    from safetensors.torch import load_file

    data = load_file(str(COMFY_SILENCE))
    head, frame = data["head"], data["frame"]          # [1, 64, 4], [1, 64, 1]
    out = frame.expand(1, 64, frames).clone()
    n = min(frames, head.shape[-1])
    out[..., :n] = head[..., :n]
    return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@dataclass
class Ace15Models:
    sources: Ace15Sources
    model: torch.nn.Module | None = None            # acestep_core.ace15.model.Ace15Model
    codec: object | None = None                     # acestep_core.ace15.vae.AudioCodec15
    text_encoder: torch.nn.Module | None = None     # acestep_core.ace15.text_encoder.Qwen3TextEncoder
    dtype: torch.dtype = torch.float32
    _tokenizer: object | None = field(default=None, repr=False)

    @property
    def tokenizer(self):
        """The Qwen tokenizer, found next to the files given, in the HF folder or the installed ComfyUI."""
        if self._tokenizer is None:
            from .text_encoder import QwenTokenizer, find_qwen_tokenizer
            near = [p.source.file for p in (self.sources.text_encoder, self.sources.dit) if p is not None]
            self._tokenizer = QwenTokenizer(find_qwen_tokenizer(near + self.sources.paths))
        return self._tokenizer

    def silence(self, frames: int) -> torch.Tensor:
        return silence_latent(frames, self.sources.silence_file)


def _assign(module: torch.nn.Module, state: dict, part: Part) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{part.source.file}: the {part.description} does not match the expected key layout: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(unexpected[:3])}).")
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{part.source.file}: unexpected tensor shapes ({str(err)[:400]})") from err


def build_dit(part: Part, dtype=torch.float32, device="cpu", operations=None):
    from .config import config_from_state_dict_shapes
    from .model import Ace15Model

    config = config_from_state_dict_shapes(part.source.shapes)
    with torch.device("meta"):
        model = Ace15Model(config, operations=operations, dtype=dtype)
    _assign(model, part.source.state_dict(dtype=dtype, device=device), part)
    return model.eval().requires_grad_(False)


def build_vae(part: Part, dtype=torch.float32, device="cpu", operations=None):
    from .vae import AudioCodec15, OobleckVAE, canonical_vae_keys, infer_vae_config

    config = infer_vae_config(canonical_vae_keys(part.source.shapes))
    with torch.device("meta"):
        vae = OobleckVAE(config, operations=operations, dtype=dtype)
    _assign(vae, canonical_vae_keys(part.source.state_dict(dtype=dtype, device=device)), part)
    return AudioCodec15(vae.eval().requires_grad_(False))


def build_text_encoder(part: Part, dtype=torch.float32, device="cpu"):
    from .text_encoder import Qwen3TextEncoder, canonical_text_encoder_keys, infer_text_encoder_config

    config = infer_text_encoder_config(canonical_text_encoder_keys(part.source.shapes), part.json_config)
    with torch.device("meta"):
        encoder = Qwen3TextEncoder(config, dtype=dtype)
    _assign(encoder, canonical_text_encoder_keys(part.source.state_dict(dtype=dtype, device=device)), part)
    encoder.materialize_buffers(device)
    return encoder.eval().requires_grad_(False)


def load_ace15(paths, dtype="fp32", vae_dtype=None, device="cpu", components=("dit", "vae", "text_encoder"),
               single_files: bool = False) -> Ace15Models:
    """Load ACE-Step 1.5 from one or more paths in any released layout (see the module docstring).
    ``components`` picks what to build; all three must be found either way, so a wrong mix is
    reported before any weight is read."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    weight_dtype = resolve_dtype(dtype)
    vae_weight_dtype = resolve_dtype(vae_dtype) if vae_dtype is not None else torch.float32
    sources = resolve_sources(paths, single_files=single_files)
    models = Ace15Models(sources, dtype=weight_dtype)
    if "dit" in components:
        models.model = build_dit(sources.dit, weight_dtype, device)
    if "vae" in components:
        models.codec = build_vae(sources.vae, vae_weight_dtype, device)
    if "text_encoder" in components:
        models.text_encoder = build_text_encoder(sources.text_encoder, weight_dtype, device)
    return models


__all__ = ["Ace15Models", "Ace15Sources", "Inventory", "Part", "detect_generation", "inspect_file", "inspect_path",
           "load_ace15", "read_plain_tensor", "resolve_sources", "silence_latent"]
