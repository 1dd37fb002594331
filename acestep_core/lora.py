"""ACE-Step LoRA files: parse, resolve the scale, and apply to transformer weights.

The released LoRAs come from ACE-Step's trainer (PEFT ``LoraConfig`` from
config/zh_rap_lora_config.json, saved with diffusers' ``save_lora_adapter``), so a file holds,
per adapted module, ``<module path>.lora_A.weight`` [r, in] and ``<module path>.lora_B.weight``
[out, r] with module paths of the transformer (``transformer_blocks.3.attn.to_q``,
``lyric_encoder.encoders.0.self_attn.linear_q``, ``speaker_embedder``). A LoRA changes a weight
W [out, in] to

    W + strength * scale * B @ A,   scale = alpha / r, or alpha / sqrt(r) with rsLoRA.

Accepted key layouts: PEFT/diffusers ``.lora_A.weight``/``.lora_B.weight`` (also with an adapter
name, ``.lora_A.default.weight``), ``.lora_down.weight``/``.lora_up.weight`` and
``.lora.down.weight``/``.lora.up.weight``, optional ``<module>.alpha`` scalars; module paths may
carry a ``base_model.model.``, ``transformer.``, ``model.diffusion_model.`` or
``diffusion_model.`` prefix. Linear and conv LoRAs (A [r, in, k...], B [out, r, 1...]) work.

Where the scale comes from, per module, first match wins:
1. a ``<module>.alpha`` tensor (alpha / r; / sqrt(r) if a config below says rsLoRA);
2. the adapter config: safetensors metadata ``lora_adapter_metadata`` (what diffusers >= 0.34
   embeds), else ``adapter_config.json`` beside the file (PEFT's ``save_pretrained``):
   ``lora_alpha``, ``use_rslora``, ``alpha_pattern``;
3. ``default_config``. By default that is the released training config, r = 256, alpha = 32,
   rsLoRA, i.e. scale 32 / sqrt(r) = 2.0 for the released rank: the scale the weights were
   trained under. NOTE: the original app and ComfyUI do not do this. The trainer's diffusers
   (0.33 era) saved no alpha and no config, and diffusers' ``load_lora_adapter`` then sets
   lora_alpha = r (``get_peft_kwargs``: ``r = lora_alpha = rank``), so the original app applies
   such a file with scale 1.0 (its ``with_alpha=True`` argument is not a diffusers parameter);
   ComfyUI also uses 1.0 without an ``.alpha`` tensor. So for the released rank-256 file,
   strength s here equals strength 2s in the original app and in ComfyUI; pass
   ``default_config=PLAIN_LORA_CONFIG`` to reproduce their scale instead.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = [
    "LoraError", "LoraConfig", "LoraPatch", "LoraWeights", "RELEASED_LORA_CONFIG", "PLAIN_LORA_CONFIG",
    "ACE_STEP_LORA_TARGETS", "lora_scale", "lora_delta", "load_lora", "lora_target_keys",
    "write_tiny_lora",
]


class LoraError(ValueError):
    """A LoRA file that cannot be used with this model, with the reason."""


# PEFT target module names of the released LoRA training config (config/zh_rap_lora_config.json):
# lyric-encoder attention (linear_*), transformer self/cross attention (to_*), speaker embedding.
ACE_STEP_LORA_TARGETS = ("speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class LoraConfig:
    """The parts of a PEFT LoraConfig that set the scale. ``lora_alpha`` None means alpha = r."""
    lora_alpha: float | None = None
    use_rslora: bool = False
    r: int | None = None
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dict(cls, d: Mapping, source: str) -> "LoraConfig":
        def number(name, kind):
            value = d.get(name)
            if value is None:
                return None
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise LoraError(f"{source}: '{name}' is not a number ({value!r})") from None
        return cls(lora_alpha=number("lora_alpha", float), use_rslora=bool(d.get("use_rslora", False)),
                   r=number("r", int), alpha_pattern=dict(d.get("alpha_pattern") or {}),
                   rank_pattern=dict(d.get("rank_pattern") or {}), source=source)


RELEASED_LORA_CONFIG = LoraConfig(lora_alpha=32.0, use_rslora=True, r=256,
                                  source="default: released ACE-Step LoRA training config (r=256, alpha=32, rsLoRA)")
PLAIN_LORA_CONFIG = LoraConfig(lora_alpha=None, use_rslora=False,
                               source="default: alpha = rank, scale 1.0 (what diffusers and ComfyUI assume)")


def lora_scale(rank: int, alpha: float | None = None, use_rslora: bool = False) -> float:
    """alpha / r, or alpha / sqrt(r) for rsLoRA; alpha None means alpha = r."""
    alpha = float(rank) if alpha is None else float(alpha)
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class LoraPatch(NamedTuple):
    """One adapted weight: W += strength * scale * B @ A. Unpacks as (A, B, scale)."""
    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self, strength: float = 1.0, shape=None) -> torch.Tensor:
        return lora_delta(self.A, self.B, self.scale, strength, shape)


@dataclass
class LoraWeights(Mapping):
    """Model weight key (canonical transformer key, e.g. ``transformer_blocks.0.attn.to_q.weight``)
    -> LoraPatch(A, B, scale). ``unmatched``: LoRA modules with no weight in the model
    (ignored); ``warnings``: other things worth showing the user."""
    patches: dict
    path: str = ""
    config_source: str = ""
    unmatched: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def __getitem__(self, key: str) -> LoraPatch:
        return self.patches[key]

    def __iter__(self):
        return iter(self.patches)

    def __len__(self) -> int:
        return len(self.patches)


def lora_delta(A: torch.Tensor, B: torch.Tensor, scale: float, strength: float = 1.0, shape=None) -> torch.Tensor:
    """strength * scale * B @ A in float32 (float64 if A or B is), reshaped to ``shape`` (the
    target weight's) if given. Conv LoRAs: A [r, in, k...] and B [out, r, 1...] give
    B[:, :, 0...] @ A.flatten(1), reshaped to [out, in, k...]."""
    dtype = torch.float64 if torch.float64 in (A.dtype, B.dtype) else torch.float32
    a = A.to(dtype).flatten(1)
    b = B.to(device=A.device, dtype=dtype).flatten(1)
    delta = (b @ a) * (float(strength) * float(scale))
    return delta.reshape(shape) if shape is not None else delta


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
_PAIR_PATTERNS = (
    re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$"),
    re.compile(r"^(?P<module>.+)\.lora_(?P<part>down|up)\.weight$"),
    re.compile(r"^(?P<module>.+)\.lora\.(?P<part>down|up)\.weight$"),
)
_ALPHA_PATTERN = re.compile(r"^(?P<module>.+)\.alpha$")
_PART = {"A": "A", "down": "A", "B": "B", "up": "B"}
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
_METADATA_KEY = "lora_adapter_metadata"


def _shape_of(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(int(v) for v in value)


def _prefix_candidates(module: str) -> list[str]:
    """``module`` and every version of it with known prefixes stripped from the front."""
    out, current = [module], module
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if current.startswith(prefix) and len(current) > len(prefix):
                current = current[len(prefix):]
                out.append(current)
                changed = True
                break
    return out


def _pattern_value(patterns: Mapping, module: str):
    for pattern, value in patterns.items():
        if module == pattern or module.endswith("." + pattern):
            return value
        try:
            if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
                return value
        except re.error:
            continue
    return None


def _read_safetensors(path: Path):
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise LoraError(f"{path.name} is not a readable safetensors file ({e}); LoRAs are loaded from "
                        ".safetensors files only") from None
    return tensors, metadata


def _config_from_files(path: Path, metadata: Mapping, warnings: list) -> LoraConfig | None:
    raw = metadata.get(_METADATA_KEY)
    if raw:
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LoraError(f"{path.name}: embedded '{_METADATA_KEY}' is not valid JSON ({e})") from None
        if isinstance(d, dict) and "r" not in d and "lora_alpha" not in d:
            # pipeline-level saves prefix every entry with the component name ("transformer.r")
            for prefix in ("transformer.", "unet."):
                stripped = {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
                if stripped:
                    d = stripped
                    break
        if isinstance(d, dict):
            return LoraConfig.from_dict(d, f"embedded {_METADATA_KEY}")
        warnings.append(f"ignored embedded '{_METADATA_KEY}': not a JSON object")
    beside = path.parent / "adapter_config.json"
    if beside.is_file():
        try:
            d = json.loads(beside.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise LoraError(f"{beside} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise LoraError(f"{beside} does not hold a JSON object")
        return LoraConfig.from_dict(d, str(beside.name))
    return None


def load_lora(path, model_keys, *, default_config: LoraConfig | None = RELEASED_LORA_CONFIG) -> LoraWeights:
    """Read a LoRA safetensors file for the ACE-Step transformer.

    ``model_keys``: the transformer's canonical weight keys - a set of names, or a mapping of
    name -> shape / tensor (then every A/B pair is checked against its weight's shape here,
    otherwise when the patch is applied). ``default_config`` sets the scale of modules that have
    neither an ``.alpha`` tensor nor an adapter config (module docstring); None means
    ``PLAIN_LORA_CONFIG``.

    Raises FileNotFoundError, or LoraError when the file is not a safetensors LoRA, is a DoRA /
    unsupported adapter, has unpaired or mismatched A/B matrices, targets no weight of this model
    ("LoRA for another model"), or does not fit a weight's shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    tensors, metadata = _read_safetensors(path)
    if isinstance(model_keys, Mapping):
        shapes = {k: _shape_of(v) for k, v in model_keys.items()}
    else:
        shapes = {k: None for k in model_keys}
    warnings: list[str] = []

    # -- group the file's keys by module ---------------------------------------------------
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    adapters: set[str] = set()
    unsupported, unknown = [], []
    for key, tensor in tensors.items():
        if "lora_magnitude_vector" in key or key.endswith(".dora_scale"):
            raise LoraError(f"{path.name} is a DoRA adapter ({key}); only plain LoRA is supported")
        for pattern in _PAIR_PATTERNS:
            m = pattern.match(key)
            if m:
                module = m["module"]
                part = _PART[m["part"]]
                if "adapter" in m.groupdict() and m["adapter"]:
                    adapters.add(m["adapter"])
                if part in pairs.setdefault(module, {}):
                    raise LoraError(f"{path.name} has two {part} matrices for {module}")
                pairs[module][part] = tensor
                break
        else:
            m = _ALPHA_PATTERN.match(key)
            if m and tensor.numel() == 1:
                alphas[m["module"]] = float(tensor.float().item())
            elif "lora_" in key:
                unsupported.append(key)
            else:
                unknown.append(key)
    if len(adapters) > 1:
        raise LoraError(f"{path.name} holds several adapters ({', '.join(sorted(adapters))}); save one per file")
    if not pairs:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors at all"
        raise LoraError(f"{path.name} is not a LoRA: no '<module>.lora_A.weight' / '<module>.lora_B.weight' "
                        f"pairs (keys look like: {sample})")
    if unsupported:
        warnings.append(f"ignored {len(unsupported)} unsupported LoRA tensors, e.g. {unsupported[0]}")
    if unknown:
        warnings.append(f"ignored {len(unknown)} non-LoRA tensors, e.g. {unknown[0]}")

    config = _config_from_files(path, metadata, warnings)
    fallback = config or default_config or PLAIN_LORA_CONFIG
    patches: dict[str, LoraPatch] = {}
    unmatched: list[str] = []
    n_alpha_tensors = 0
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            missing = ({"A", "B"} - set(parts)).pop()
            raise LoraError(f"{path.name}: {module} has no lora_{missing} matrix")
        A, B = parts["A"], parts["B"]
        if A.ndim < 2 or B.ndim < 2:
            raise LoraError(f"{path.name}: {module} lora_A/lora_B must be matrices (got {tuple(A.shape)}, "
                            f"{tuple(B.shape)})")
        rank = A.shape[0]
        if B.shape[1] != rank:
            raise LoraError(f"{path.name}: rank mismatch at {module}: lora_A has rank {rank} "
                            f"(shape {tuple(A.shape)}) but lora_B has {B.shape[1]} (shape {tuple(B.shape)})")
        if any(s != 1 for s in B.shape[2:]):
            raise LoraError(f"{path.name}: {module} lora_B has a {tuple(B.shape[2:])} kernel; only 1x1 "
                            "up-projections are supported")
        target = next((c + ".weight" for c in _prefix_candidates(module) if c + ".weight" in shapes), None)
        if target is None:
            unmatched.append(module)
            continue
        _check_fits(path.name, module, A, B, shapes[target])

        if module in alphas:
            alpha = alphas[module]
            n_alpha_tensors += 1
            use_rslora = config.use_rslora if config else False
        else:
            short = target[:-len(".weight")]
            alpha = _pattern_value(fallback.alpha_pattern, short)
            alpha = fallback.lora_alpha if alpha is None else float(alpha)
            use_rslora = fallback.use_rslora
            expected = _pattern_value(fallback.rank_pattern, short) or fallback.r
            if config is not None and expected is not None and int(expected) != rank:
                warnings.append(f"{module}: the config says rank {expected} but the matrices have rank {rank}; "
                                "using the matrices' rank")
        patches[target] = LoraPatch(A, B, lora_scale(rank, alpha, use_rslora))

    if not patches:
        example = ", ".join(unmatched[:3])
        raise LoraError(f"{path.name} is a LoRA for another model: none of its {len(unmatched)} modules "
                        f"(e.g. {example}) is a weight of the ACE-Step transformer")
    if unmatched:
        warnings.append(f"{len(unmatched)} LoRA modules have no matching ACE-Step weight and were skipped, "
                        f"e.g. {unmatched[0]}")
    sources = [".alpha tensors"] if n_alpha_tensors else []
    if n_alpha_tensors < len(patches):
        sources.append(fallback.source)
    return LoraWeights(patches, str(path), " + ".join(sources), unmatched, warnings)


def _check_fits(name: str, module: str, A: torch.Tensor, B: torch.Tensor, shape) -> None:
    if shape is None:
        return
    out_dim, in_rest = shape[0], tuple(shape[1:])
    a_rest = tuple(A.shape[1:])
    fits = B.shape[0] == out_dim and (a_rest == in_rest or (len(a_rest) == 1 and a_rest[0] == math.prod(in_rest)))
    if not fits:
        raise LoraError(f"{name}: {module} does not fit the model weight {tuple(shape)}: B@A would be "
                        f"[{B.shape[0]}, {', '.join(map(str, a_rest))}] (lora_A {tuple(A.shape)}, "
                        f"lora_B {tuple(B.shape)}) - a LoRA for a different model size?")


# ---------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Target selection and a writer for tests
# ---------------------------------------------------------------------------------------------
def lora_target_keys(model_keys: Iterable[str], targets: Iterable[str] = ACE_STEP_LORA_TARGETS) -> list[str]:
    """Weight keys whose module PEFT would adapt for ``targets`` (a module matches a target name
    when it equals it or ends with '.' + name)."""
    targets = tuple(targets)
    out = []
    for key in model_keys:
        if not key.endswith(".weight"):
            continue
        module = key[:-len(".weight")]
        if any(module == t or module.endswith("." + t) for t in targets):
            out.append(key)
    return sorted(out)


def write_tiny_lora(path, model_state_dict_shapes: Mapping, rank: int, alpha: float | None = None,
                    rslora: bool = False, *, targets: Iterable[str] = ACE_STEP_LORA_TARGETS,
                    config: str | None = "metadata", prefix: str = "", seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> dict:
    """Write a random LoRA for the given model weights (name -> shape or tensor) and return its
    tensors. A is [rank, in, ...] and B is [out, rank, 1...], both random (unlike training,
    where B starts at 0) so every delta is non-zero.

    ``config`` says how alpha/rsLoRA are stored: "metadata" (diffusers-style safetensors
    metadata), "adapter_config" (``adapter_config.json`` beside the file), "alpha_tensors"
    (``<module>.alpha`` scalars; rsLoRA cannot be expressed that way), or None (nothing: the
    loader's default applies). ``prefix`` is put before every module path."""
    from safetensors.torch import save_file
    path = Path(path)
    shapes = {k: _shape_of(v) for k, v in model_state_dict_shapes.items()}
    keys = [k for k in lora_target_keys(shapes, targets) if len(shapes[k]) >= 2]
    if not keys:
        raise ValueError("no weight of the given model matches the LoRA targets")
    if config not in ("metadata", "adapter_config", "alpha_tensors", None):
        raise ValueError(f"unknown config storage {config!r}")
    if config == "alpha_tensors" and rslora:
        raise ValueError("rsLoRA cannot be stored as .alpha tensors; use config='metadata' or 'adapter_config'")
    gen = torch.Generator().manual_seed(int(seed))
    tensors = {}
    for key in keys:
        shape = shapes[key]
        module = prefix + key[:-len(".weight")]
        a = torch.randn((rank,) + tuple(shape[1:]), generator=gen) * 0.1
        b = torch.randn((shape[0], rank) + (1,) * (len(shape) - 2), generator=gen) * 0.1
        tensors[f"{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = b.to(dtype).contiguous()
        if config == "alpha_tensors":
            tensors[f"{module}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    peft_config = {"r": int(rank), "lora_alpha": float(rank if alpha is None else alpha),
                   "use_rslora": bool(rslora), "target_modules": list(targets)}
    metadata = {"format": "pt"}
    if config == "metadata":
        metadata[_METADATA_KEY] = json.dumps(peft_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    if config == "adapter_config":
        (path.parent / "adapter_config.json").write_text(json.dumps(peft_config, indent=2), encoding="utf-8")
    return tensors
