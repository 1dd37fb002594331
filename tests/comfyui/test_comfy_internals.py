"""Every ComfyUI internal nodes/comfy_bridge.py relies on (its module docstring lists them), one
test each: when a ComfyUI release moves or renames one, the failure names it and the bridge code
that needs it, instead of a pack that breaks at run time."""
from __future__ import annotations

import inspect
import re

import pytest

from .pack_import import COMFYUI_DIR, comfy_nodes_module


def _version() -> str:
    text = (COMFYUI_DIR / "comfyui_version.py").read_text() if (COMFYUI_DIR / "comfyui_version.py").exists() else ""
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return found.group(1) if found else "?"


def _moved(what: str, why: str) -> str:
    return f"ComfyUI {_version()} at {COMFYUI_DIR} no longer has {what}; nodes/comfy_bridge.py uses it for {why}"


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


@pytest.fixture(scope="module", autouse=True)
def comfy_loaded():
    comfy_nodes_module()


FUNCTIONS = [
    # (module, attribute path, parameters the bridge passes (by position order or name), why)
    ("comfy.ops", "pick_operations", ["weight_dtype", "compute_dtype", "load_device"], "choosing layer classes"),
    ("comfy.ops", "cast_bias_weight", ["s", "input", "dtype", "device", "bias_dtype"],
     "the core's fast paths reading offloaded / patched weights"),
    ("comfy.ops", "run_every_op", [], "the CPU block-upcast Linear forward checks for Cancel as ComfyUI's does"),
    ("comfy.patcher_extension", "WrapperExecutor.new_class_executor", ["original", "class_obj", "wrappers"],
     "running DIFFUSION_MODEL wrappers"),
    ("comfy.patcher_extension", "get_all_wrappers", ["wrapper_type", "transformer_options"], "finding wrappers"),
    ("comfy.model_base", "BaseModel.__init__", ["self", "model_config", "model_type", "device", "unet_model"],
     "building the MODEL the supported way"),
    ("comfy.model_base", "BaseModel.extra_conds", ["self"], "conditioning"),
    ("comfy.supported_models_base", "BASE.set_inference_dtype", ["self", "dtype", "manual_cast_dtype"],
     "weight / compute dtypes"),
    ("comfy.model_patcher", "ModelPatcher.__init__", ["self", "model", "load_device", "offload_device"],
     "MODEL and VAE patchers"),
    ("comfy.sd", "CLIP.__init__", ["self", "target"], "the CLIP object"),
    ("comfy.model_management", "get_torch_device", [], "devices"),
    ("comfy.model_management", "unet_offload_device", [], "devices"),
    ("comfy.model_management", "text_encoder_offload_device", [], "devices"),
    ("comfy.model_management", "vae_device", [], "devices"),
    ("comfy.model_management", "vae_offload_device", [], "devices"),
    ("comfy.model_management", "intermediate_device", [], "devices"),
    ("comfy.model_management", "get_free_memory", [], "VAE windows"),
    ("comfy.model_management", "load_models_gpu", [], "loading the VAE"),
    ("comfy.model_management", "dtype_size", [], "VAE memory estimates"),
    ("comfy.model_management", "throw_exception_if_processing_interrupted", [], "Cancel"),
    ("comfy.utils", "ProgressBar.__init__", ["self", "total"], "progress"),
    ("comfy.ldm.modules.attention", "optimized_attention", ["heads", "mask", "skip_reshape"],
     "the cross-attention (comfy_attention: ComfyUI's chosen attention backend)"),
]


@pytest.mark.parametrize("module,path,params,why", FUNCTIONS, ids=[f"{m}.{p}" for m, p, _, _ in FUNCTIONS])
def test_function_is_where_the_bridge_calls_it(module, path, params, why):
    import importlib
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part, None)
        assert obj is not None, _moved(f"{module}.{path}", why)
    assert callable(obj), _moved(f"{module}.{path} as a function", why)
    have = _params(obj)
    missing = [p for p in params if p not in have]
    assert not missing, _moved(f"the parameters {missing} of {module}.{path} (it takes {have})", why)


@pytest.mark.parametrize("module,name,why", [
    ("comfy.ops", "CastWeightBiasOp", "recognising ComfyUI layers"),
    ("comfy.ops", "disable_weight_init", "layer classes"),
    ("comfy.ops", "manual_cast", "layer classes that cast weights at use"),
    ("comfy.patcher_extension", "WrappersMP", "the DIFFUSION_MODEL wrapper type"),
    ("comfy.model_base", "ModelType", "ModelType.FLOW"),
    ("comfy.model_base", "ACEStep", "LoRA key mapping for ACE-Step (comfy/lora.py checks isinstance)"),
    ("comfy.conds", "CONDRegular", "conditioning"),
    ("comfy.conds", "CONDConstant", "conditioning"),
    ("comfy.latent_formats", "ACEAudio", "the latent format"),
])
def test_class_exists(module, name, why):
    import importlib
    assert hasattr(importlib.import_module(module), name), _moved(f"{module}.{name}", why)


def test_operation_flags_and_wrapper_type():
    import comfy.model_base
    import comfy.ops
    import comfy.patcher_extension
    for flag in ("comfy_cast_weights", "weight_function", "bias_function"):
        assert hasattr(comfy.ops.CastWeightBiasOp, flag), _moved(f"CastWeightBiasOp.{flag}", "offload detection")
    for name in ("Linear", "Conv1d", "Conv2d", "LayerNorm", "GroupNorm", "Embedding"):
        assert issubclass(getattr(comfy.ops.manual_cast, name), comfy.ops.CastWeightBiasOp), \
            _moved(f"comfy.ops.manual_cast.{name}", "the core's layers")
    assert comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL == "diffusion_model", \
        _moved("WrappersMP.DIFFUSION_MODEL == 'diffusion_model'", "wrappers")
    assert hasattr(comfy.model_base.ModelType, "FLOW"), _moved("ModelType.FLOW", "flow matching")
    import comfy.supported_models_base as smb
    for attr in ("manual_cast_dtype", "custom_operations", "unet_config", "sampling_settings", "latent_format"):
        assert hasattr(smb.BASE, attr), _moved(f"supported_models_base.BASE.{attr}", "the model config")


def _unconditional_attributes(cls) -> set[str]:
    """Attributes ``cls.__init__`` assigns at the top level of its body (every instance has them)."""
    source = inspect.getsource(cls.__init__)
    indent = re.match(r"\s*", source.splitlines()[1]).group(0)
    return set(re.findall(rf"^{indent}self\.(\w+)\s*=", source, flags=re.M))


def test_our_vae_sets_every_attribute_comfyui_vae_init_sets(comfy_loaded):
    """AceStepVAE does not run comfy.sd.VAE.__init__ (it would build ComfyUI's own network), so it
    must set every attribute that __init__ always sets: the VAE methods and the audio nodes read
    them. A ComfyUI release that adds one makes this test name it."""
    import comfy.sd
    import torch

    from acestep_core.codec import AudioCodec
    from acestep_core.config import DCAEConfig  # noqa: F401  (the tiny config below)
    from acestep_core.models.dcae import DCAE
    from acestep_core.models.vocoder import Vocoder
    from acestep_core.testing import tiny_config
    from .pack_import import PACK, pack_module
    import importlib
    pack_module()
    bridge = importlib.import_module(f"{PACK}.nodes.comfy_bridge")
    config = tiny_config()
    codec = AudioCodec(DCAE(config.dcae), Vocoder(config.vocoder))
    ours = bridge.make_vae(codec, torch.float32)
    expected = _unconditional_attributes(comfy.sd.VAE)
    assert len(expected) > 10
    missing = sorted(a for a in expected if not hasattr(ours, a))
    assert not missing, _moved(f"a VAE without the attributes {missing} (VAE.__init__ now sets them)",
                               "AceStepVAE.__init__, which must set them too")


def test_what_the_15_bridge_reads_of_comfyui():
    """nodes/ace15_bridge.py: ComfyUI's 1.5 model class and latent format are optional (0.20+; the
    bridge has equivalents for 0.3.75), but where the model class exists its LoRA key mapping must
    still be by isinstance; the audio nodes' sample-rate behaviour is read from their source."""
    import importlib
    import comfy.model_base
    from .pack_import import PACK, pack_module
    pack_module()
    bridge = importlib.import_module(f"{PACK}.nodes.ace15_bridge")
    audio_source = (COMFYUI_DIR / "comfy_extras" / "nodes_audio.py").read_text()
    assert "VAEDecodeAudio" in audio_source, _moved("comfy_extras/nodes_audio.py with VAEDecodeAudio",
                                                    "the 1.5 VAE's sample rate (ace15_bridge)")
    # 0.3.75 hard-codes 44100 in VAEDecodeAudio; 0.20.1 reads vae.audio_sample_rate.
    hard_coded = '"sample_rate": 44100' in audio_source
    assert bridge.audio_nodes_read_vae_sample_rate() is (not hard_coded), \
        _moved("the audio nodes' 44.1 kHz assumption / audio_sample_rate reading the bridge detects",
               "the 1.5 VAE's sample rate")
    if hasattr(comfy.model_base, "ACEStep15"):
        lora_source = (COMFYUI_DIR / "comfy" / "lora.py").read_text()
        assert "isinstance(model, comfy.model_base.ACEStep15)" in lora_source, \
            _moved("the 1.5 LoRA key mapping by isinstance(model, ACEStep15)", "1.5 LoRAs on our MODEL")
        import comfy.latent_formats
        assert bridge.Ace15ModelConfig.latent_format is comfy.latent_formats.ACEAudio15
