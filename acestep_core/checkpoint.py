"""Reading the two released ACE-Step v1 checkpoint layouts into per-component state dicts.

Layouts:
  * ComfyUI's single file ``ace_step_v1_3.5b.safetensors``: every component in one file, under the
    prefixes ``model.diffusion_model.`` (transformer), ``vae.dcae.`` / ``vae.vocoder.`` (audio codec)
    and ``text_encoders.umt5base.transformer.`` (UMT5), plus the SentencePiece tokenizer as a uint8
    tensor ``text_encoders.spiece_model``.
  * The original repository's folders ``ace_step_transformer/``, ``music_dcae_f8c8/``,
    ``music_vocoder/``, ``umt5-base/``, each with a ``config.json`` and safetensors weights.

Both are turned into the same ``ComponentSource`` records (canonical keys without prefixes), so
everything downstream (config inference, module loading) is one code path. Tensors are read
lazily from safetensors files, one tensor at a time; nothing here uses pickle.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from itertools import islice
from typing import Callable, Iterator

import torch

COMPONENTS = ("transformer", "dcae", "vocoder", "text_encoder")

# Single-file prefixes of each component (ComfyUI's layout).
SINGLE_FILE_PREFIXES = {
    "transformer": "model.diffusion_model.",
    "dcae": "vae.dcae.",
    "vocoder": "vae.vocoder.",
    "text_encoder": "text_encoders.umt5base.transformer.",
}
SPIECE_KEY = "text_encoders.spiece_model"

# Original folder layout: component -> sub-folder name.
FOLDERS = {
    "transformer": "ace_step_transformer",
    "dcae": "music_dcae_f8c8",
    "vocoder": "music_vocoder",
    "text_encoder": "umt5-base",
}
# Preferred weight file names inside each folder (diffusers / transformers conventions).
FOLDER_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")

# One key that every real file of a component has: the cheapest way to tell what a file is.
SIGNATURE_KEYS = {
    "transformer": "genre_embedder.weight",
    "dcae": "encoder.conv_in.weight",
    "vocoder": "backbone.channel_layers.0.0.bias",
    "text_encoder": "shared.weight",
}

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "default": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}

_SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}



class CheckpointError(ValueError):
    """A checkpoint cannot be used. The message names the file, what is wrong and what to do."""


def resolve_dtype(dtype) -> torch.dtype:
    """Accept a torch dtype or one of the names in ``DTYPES``; anything else is a clear error."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
        raise CheckpointError(f"Unsupported weight dtype {dtype}: choose float32, bfloat16 or float16.")
    key = str(dtype).strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    if key not in DTYPES:
        raise CheckpointError(
            f"Unsupported weight dtype {dtype!r}: choose one of fp32, bf16, fp16 "
            "(or float32, bfloat16, float16).")
    return DTYPES[key]


# ---------------------------------------------------------------------------------------------
# safetensors header validation: clear errors before any tensor is touched
# ---------------------------------------------------------------------------------------------
@dataclass
class SafetensorsInfo:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)   # key -> byte range from data_start
    data_start: int = 0


def read_safetensors_header(path: Path) -> SafetensorsInfo:
    """Parse and validate a safetensors header; raise CheckpointError for a file that is not
    safetensors or is truncated (a common result of an interrupted download)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is empty or too short ({size} bytes) to be a "
                                      "safetensors checkpoint. Download it again.")
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 1 or header_len > min(size - 8, 100 * 1024 * 1024):
                raise CheckpointError(_not_safetensors(path))
            raw = f.read(header_len)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err}). Check the path and its permissions.") from err
    if len(raw) < header_len:
        raise CheckpointError(f"{path}: the file is truncated inside its header. Download it again.")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(_not_safetensors(path)) from None
    metadata = header.pop("__metadata__", None) or {}
    shapes, dtypes, offsets = {}, {}, {}
    data_end = 0
    for key, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            shapes[key] = tuple(int(d) for d in entry["shape"])
            dtypes[key] = entry["dtype"]
            offsets[key] = (int(begin), int(end))
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(_not_safetensors(path)) from None
        data_end = max(data_end, int(end))
    available = size - 8 - header_len
    if data_end > available:
        missing_mb = (data_end - available) / 2**20
        raise CheckpointError(
            f"{path}: the file is truncated: its header describes {data_end + 8 + header_len} bytes "
            f"but only {size} are on disk ({missing_mb:.1f} MiB missing). The download or copy was "
            "interrupted: download the checkpoint again.")
    return SafetensorsInfo(path, shapes, dtypes, dict(metadata), offsets, 8 + header_len)


def _not_safetensors(path: Path) -> str:
    hint = ""
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        hint = (" Pickle checkpoints (.ckpt/.pt/.bin) are not loaded, because loading them can run "
                "arbitrary code; use the .safetensors release.")
    return (f"{path}: not a safetensors file (its header cannot be parsed).{hint} ACE-Step v1 is "
            "released as ace_step_v1_3.5b.safetensors (ComfyUI) or as the original folders "
            "(ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, umt5-base/).")


# ---------------------------------------------------------------------------------------------
# One component's weights, wherever they live
# ---------------------------------------------------------------------------------------------
@dataclass
class ComponentSource:
    """Where one component's tensors are: a safetensors file and a key prefix to strip."""

    name: str
    file: Path
    prefix: str
    shapes: dict[str, tuple[int, ...]]          # canonical key -> shape
    json_config: dict | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)   # canonical key -> safetensors dtype name

    def stored_float_dtype(self) -> torch.dtype | None:
        """The floating dtype most of this component's values are stored in (None if unknown)."""
        counts: dict[str, int] = {}
        for key, name in self.dtypes.items():
            if name in _SAFETENSORS_FLOATS:
                counts[name] = counts.get(name, 0) + math.prod(self.shapes.get(key, ()))
        return _SAFETENSORS_FLOATS[max(counts, key=counts.get)] if counts else None

    def state_dict(self, dtype: torch.dtype | None = None, device="cpu",
                   keep_dtype: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
        """Read this component's tensors with canonical keys, converting floating tensors to
        ``dtype`` one at a time so only one copy of each weight is ever held."""
        return dict(self.iter_tensors(dtype, device, keep_dtype))

    def iter_tensors(self, dtype=None, device="cpu", keep_dtype=None) -> Iterator[tuple[str, torch.Tensor]]:
        """Each tensor as the file stores it, on the CPU a view of a private memory map of the file
        (:data:`MAP_STORED_WEIGHTS`, :func:`_mapped_tensor`): the weights are the page cache's own
        pages, faulted in at first use, with no copy. Reading 6 GiB of warm page cache into fresh
        memory took 5-6 s on the 2-core test machine; mapping it and touching every page 0.5 s,
        and the machine then holds the weights once instead of twice (page cache + copy). Private
        (copy-on-write): a patch written in place never reaches the file.

        A tensor is read with ``os.preadv`` into a fresh tensor instead where it is converted to
        ``dtype`` (a mapped source would stay resident beside its converted copy), for another
        device, or where its bytes sit off the alignment a view needs: 4- and 8-byte values at file
        offsets that are not multiples of 64 bytes, since float32 matrix-vector products sum in
        another order on such memory (measured: MKL's single-row product differs in the last bits
        at offsets that are not multiples of 32 bytes; 16-bit products do not)."""
        info = read_safetensors_header(self.file)

        def converts(key: str) -> bool:
            stored = _STORED_DTYPES.get(info.dtypes.get(self.prefix + key))
            return (dtype is not None and stored is not None and stored.is_floating_point and stored != dtype
                    and not (keep_dtype and keep_dtype(key)))

        def read(key: str) -> torch.Tensor:
            if whole is not None and not converts(key):
                tensor = _mapped_tensor(whole, info, self.prefix + key)
                if tensor is not None:
                    return tensor
            tensor = _read_tensor(fd, info, self.prefix + key)
            return tensor.to(dtype) if converts(key) else tensor

        try:
            with open(self.file, "rb", buffering=0) as f, ThreadPoolExecutor(READ_THREADS) as pool:
                fd = f.fileno()
                whole = _map_file(fd, info) if MAP_STORED_WEIGHTS and str(device) == "cpu" else None
                keys = iter(self.shapes)
                # A few tensors read ahead on READ_THREADS threads (positional reads, so they share
                # the file): copying from the page cache and faulting in fresh pages is kernel
                # work one core cannot saturate; the window bounds what is held ahead.
                pending = deque((key, pool.submit(read, key)) for key in islice(keys, 2 * READ_THREADS))
                while pending:
                    key, future = pending.popleft()
                    following = next(keys, None)
                    if following is not None:
                        pending.append((following, pool.submit(read, following)))
                    tensor = future.result()
                    if str(device) != "cpu":
                        tensor = tensor.to(device)
                    yield key, tensor
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"{self.file}: reading the {self.name} weights failed ({err}). "
                                  "The file may be damaged: download it again.") from err


MAP_STORED_WEIGHTS = True
"""Whether CPU weights kept in the file's dtype are views of a memory map of the file (see
``ComponentSource.iter_tensors``); False reads every tensor into fresh memory."""

READ_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads reading a component's tensors (see ``ComponentSource.iter_tensors``)."""

_STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                  "U8": torch.uint8, "BOOL": torch.bool}


def _map_file(fd: int, info: SafetensorsInfo) -> torch.Tensor | None:
    """The whole file as one uint8 tensor over a private (copy-on-write) memory map; None where
    the file cannot be mapped or is shorter than its header says (reading then gives the error:
    a mapped page past the end of the file would kill the process when touched)."""
    needed = info.data_start + max((end for _, end in info.offsets.values()), default=0)
    try:
        if needed <= info.data_start or os.fstat(fd).st_size < needed:
            return None
        mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, OverflowError):
        return None
    return torch.frombuffer(mapping, dtype=torch.uint8)   # the tensor keeps the mapping alive


def _mapped_tensor(whole: torch.Tensor, info: SafetensorsInfo, name: str) -> torch.Tensor | None:
    """Tensor ``name`` as a view of the mapped file ``whole``; None where it must be read instead
    (unknown name or dtype, a size that does not match the shape, no bytes, or an offset off the
    alignment the view needs, see ``ComponentSource.iter_tensors``)."""
    stored = _STORED_DTYPES.get(info.dtypes.get(name))
    if stored is None or name not in info.offsets:
        return None
    begin, end = info.offsets[name]
    itemsize = torch.empty((), dtype=stored).element_size()
    nbytes = math.prod(info.shapes[name]) * itemsize
    start = info.data_start + begin
    if nbytes == 0 or end - begin != nbytes or start % (itemsize if itemsize <= 2 else 64):
        return None
    return whole[start:start + nbytes].view(stored).view(info.shapes[name])


def _read_tensor(fd: int, info: SafetensorsInfo, name: str) -> torch.Tensor:
    """One tensor of a safetensors file (little-endian, C order) read into a fresh tensor, with
    positional reads on the open file descriptor ``fd`` (safe from several threads at once)."""
    if name not in info.offsets:
        raise CheckpointError(f"{info.path}: tensor '{name}' is not in the file.")
    stored = info.dtypes[name]
    if stored not in _STORED_DTYPES:
        raise CheckpointError(f"{info.path}: tensor '{name}' has dtype {stored}, which is not supported here.")
    begin, end = info.offsets[name]
    tensor = torch.empty(info.shapes[name], dtype=_STORED_DTYPES[stored])
    nbytes = tensor.numel() * tensor.element_size()
    if end - begin != nbytes:
        raise CheckpointError(f"{info.path}: tensor '{name}' takes {end - begin} bytes in the file, but its shape "
                              f"{list(info.shapes[name])} and dtype {stored} need {nbytes}. Download it again.")
    if nbytes:
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], info.data_start + begin + done)
            if not got:
                raise CheckpointError(f"{info.path}: the file ends inside tensor '{name}'. Download it again.")
            done += got
    return tensor


@dataclass
class CheckpointSource:
    """A located, validated checkpoint: the four components and the tokenizer data."""

    path: Path
    layout: str                                  # "single_file" or "folders"
    components: dict[str, ComponentSource]
    spiece_model: bytes | None = None            # SentencePiece proto of the tag tokenizer
    tokenizer_json: Path | None = None           # HF tokenizer.json alternative (folder layout)

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self.components]
        if missing:
            raise CheckpointError(_missing_message(self, missing))


_COMPONENT_WORDS = {
    "transformer": "diffusion transformer",
    "dcae": "VAE (music DCAE)",
    "vocoder": "VAE (vocoder)",
    "text_encoder": "text encoder (UMT5)",
}


def _missing_message(src: CheckpointSource, missing: list[str]) -> str:
    words = ", ".join(_COMPONENT_WORDS[m] for m in missing)
    if src.layout == "single_file":
        prefixes = ", ".join(f"'{SINGLE_FILE_PREFIXES[m]}*'" for m in missing)
        return (f"{src.path}: this checkpoint has no {words} (no keys {prefixes}). Use the complete "
                "ace_step_v1_3.5b.safetensors, which contains the transformer, the VAE and the text "
                "encoder.")
    folders = ", ".join(f"{FOLDERS[m]}/" for m in missing)
    return (f"{src.path}: the {words} folder is missing or has no safetensors weights ({folders}). "
            "The original layout needs ace_step_transformer/, music_dcae_f8c8/, music_vocoder/ and "
            "umt5-base/ side by side, each with config.json and its .safetensors file.")


def open_checkpoint(path) -> CheckpointSource:
    """Locate and validate a checkpoint in either layout without reading any weights."""
    path = Path(os.fspath(path)).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or folder. Put ace_step_v1_3.5b.safetensors (or the original "
            "ACE-Step folders) in ComfyUI/models/checkpoints, or pass the right path.")
    if path.is_dir():
        return _open_folders(path)
    return _open_single_file(path)


def _open_single_file(path: Path) -> CheckpointSource:
    info = read_safetensors_header(path)
    components: dict[str, ComponentSource] = {}
    for name, prefix in SINGLE_FILE_PREFIXES.items():
        shapes = {k[len(prefix):]: s for k, s in info.shapes.items() if k.startswith(prefix)}
        if shapes:
            dtypes = {k[len(prefix):]: d for k, d in info.dtypes.items() if k.startswith(prefix)}
            components[name] = ComponentSource(name, path, prefix, shapes, None, info.metadata, dtypes)
    if "transformer" not in components or SIGNATURE_KEYS["transformer"] not in components["transformer"].shapes:
        raise CheckpointError(_not_ace_message(path, info.shapes))
    _check_signatures(path, components)
    spiece = None
    if SPIECE_KEY in info.shapes:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as f:
            spiece = f.get_tensor(SPIECE_KEY).numpy().tobytes()
    return CheckpointSource(path, "single_file", components, spiece_model=spiece)


def _not_ace_message(path: Path, shapes: dict) -> str:
    keys = list(shapes)
    guess = ""
    joined = " ".join(keys[:2000])
    if "model.diffusion_model.input_blocks" in joined:
        guess = " It looks like a Stable Diffusion (UNet) checkpoint."
    elif "model.diffusion_model.double_blocks" in joined:
        guess = " It looks like a Flux checkpoint."
    elif "model.diffusion_model.transformer_blocks" in joined:
        guess = " It has a diffusion transformer, but not ACE-Step's (no genre_embedder)."
    elif any(k.startswith(SIGNATURE_KEYS["transformer"]) for k in keys):
        guess = (" It looks like a bare ACE-Step transformer without the ComfyUI prefixes; use the "
                 "full ace_step_v1_3.5b.safetensors or the original folder layout.")
    sample = ", ".join(keys[:3]) or "no tensors at all"
    return (f"{path}: not an ACE-Step v1 checkpoint: key 'model.diffusion_model.genre_embedder.weight' "
            f"is missing (first keys: {sample}), and it is no ACE-Step 1.5 file either.{guess} Load this "
            "file with ComfyUI's own checkpoint loader, and use ace_step_v1_3.5b.safetensors or an "
            "ACE-Step 1.5 file (ace_step_1.5_turbo_aio.safetensors) here.")


def _check_signatures(path: Path, components: dict[str, ComponentSource]) -> None:
    for name, comp in components.items():
        if SIGNATURE_KEYS[name] not in comp.shapes:
            raise CheckpointError(
                f"{path}: the {_COMPONENT_WORDS[name]} weights do not have ACE-Step's key layout "
                f"('{comp.prefix}{SIGNATURE_KEYS[name]}' is missing). This file was not made from "
                "ACE-Step v1; use the released ace_step_v1_3.5b.safetensors.")


def _folder_weights(folder: Path) -> Path | None:
    for name in FOLDER_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    return found[0] if len(found) == 1 else None


def _open_folders(path: Path) -> CheckpointSource:
    root = path
    if not any((root / d).is_dir() for d in FOLDERS.values()):
        # Allow pointing at one of the sub-folders by mistake.
        if path.name in FOLDERS.values() and any((path.parent / d).is_dir() for d in FOLDERS.values()):
            root = path.parent
        else:
            raise CheckpointError(
                f"{path}: this folder holds no ACE-Step checkpoint: expected the original layout "
                "(ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, umt5-base/) or a "
                "single ace_step_v1_3.5b.safetensors file.")
    components: dict[str, ComponentSource] = {}
    for name, sub in FOLDERS.items():
        folder = root / sub
        weights = _folder_weights(folder) if folder.is_dir() else None
        if weights is None:
            continue
        info = read_safetensors_header(weights)
        config_path = folder / "config.json"
        json_config = None
        if config_path.is_file():
            try:
                json_config = json.loads(config_path.read_text())
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{config_path}: not valid JSON ({err}). Download this file again.") from err
        shapes = dict(info.shapes)
        if name == "text_encoder":
            shapes.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight
        dtypes = {k: d for k, d in info.dtypes.items() if k in shapes}
        components[name] = ComponentSource(name, weights, "", shapes, json_config, info.metadata, dtypes)
    src = CheckpointSource(root, "folders", components)
    src.require(*COMPONENTS)
    _check_signatures(root, components)
    umt5 = root / FOLDERS["text_encoder"]
    if (umt5 / "spiece.model").is_file():
        src.spiece_model = (umt5 / "spiece.model").read_bytes()
    elif (umt5 / "tokenizer.json").is_file():
        src.tokenizer_json = umt5 / "tokenizer.json"
    return src


def is_folder_checkpoint(path: Path) -> bool:
    """True for a folder in the original layout (used to list folders next to files)."""
    path = Path(path)
    return path.is_dir() and all((path / d).is_dir() for d in FOLDERS.values())
