"""ComfyUI's ``transformer_options`` as our DiTs (v1 and 1.5) read them, without importing ComfyUI.

Keys, as ComfyUI 0.20.1 writes and reads them:

- ``ModelPatcher.set_model_attn1_replace(patch, block_name, number, transformer_index=None)`` stores
  ``patches_replace["attn1"][(block_name, number)]`` (or ``(block_name, number, transformer_index)``)
  (``comfy/model_patcher.py`` ``set_model_options_patch_replace``); ``attn2`` likewise. The UNet
  reads them with ``transformer_options["block"]`` (``comfy/ldm/modules/attention.py``
  ``BasicTransformerBlock.forward``). No ComfyUI DiT reads attention replacements (only the UNet
  does), so our DiTs name their blocks as ComfyUI's DiTs do for block replacement:
  ``("double_block", i)``, i.e. ``set_model_attn1_replace(patch, "double_block", i)``.
- Block replacement: ``patches_replace["dit"][("double_block", i)]``, called with
  ``{"img", "txt", "vec", "pe", "transformer_options"}`` and ``{"original_block": fn}`` and returning
  ``{"img": ...}``, with ``transformer_options["block_index"]``, ``["total_blocks"]`` and
  ``["block_type"] = "double"`` set (``comfy/ldm/wan/model.py`` ``WanModel.forward_orig``;
  ``comfy/ldm/audio/dit.py`` ``ContinuousTransformer.forward`` uses the same call).
"""
from __future__ import annotations

BLOCK_NAME = "double_block"
"""The block name in ``patches_replace`` keys: ``(BLOCK_NAME, block index)``."""

BLOCK_TYPE = "double"
"""``transformer_options["block_type"]`` while a block runs (ComfyUI ``WanModel.forward_orig``)."""


def attention_replacement(transformer_options, name: str):
    """The ``patches_replace[name]`` entry (``"attn1"`` / ``"attn2"``) for the current block
    (``transformer_options["block"]``), or None.

    Looked up as ComfyUI's ``BasicTransformerBlock.forward`` does: first ``block + (index,)``, with
    ``transformer_options["transformer_index"]`` (0 here: one transformer per block), then
    ``block``; ``ModelPatcher.set_model_attn1_replace(patch, "double_block", i)`` registers the
    latter."""
    if not transformer_options:
        return None
    patches = transformer_options.get("patches_replace", {}).get(name)
    block = transformer_options.get("block")
    if not patches or block is None:
        return None
    with_index = tuple(block) + (transformer_options.get("transformer_index", 0),)
    return patches.get(with_index, patches.get(tuple(block)))


def block_replacements(transformer_options) -> dict:
    """``patches_replace["dit"]``: ``(BLOCK_NAME, i)`` -> the replacement of block i."""
    if not transformer_options:
        return {}
    return transformer_options.get("patches_replace", {}).get("dit", {})


__all__ = ["BLOCK_NAME", "BLOCK_TYPE", "attention_replacement", "block_replacements"]
