"""ACE-Step v1 (3.5B) in plain PyTorch: models, checkpoint loading, tokenizers, sampling, tasks.

Importable and testable without ComfyUI; the node pack in ``nodes/`` is a thin layer on top.
"""
__version__ = "0.1.0"
