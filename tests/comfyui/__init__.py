"""Tests that run the real ComfyUI server with this pack (see harness.py)."""
