"""Tests that run the real ComfyUI server with this pack (see scripts/comfyui_harness.py)."""
