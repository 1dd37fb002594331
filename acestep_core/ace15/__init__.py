"""ACE-Step 1.5 and 1.5 XL on plain PyTorch: the generation model (DiT, condition encoder, FSQ
audio tokenizer / detokenizer) built from :mod:`acestep_core.ops`, with sizes read from tensor
shapes so the 2B, XL and tiny test models share one code path."""
from .config import (Ace15Config, AudioTokenizerConfig, ConditionEncoderConfig, DiTConfig,
                     config_from_state_dict_shapes, released_2b, released_xl, tiny_config)
from .model import Ace15Model

__all__ = ["Ace15Config", "Ace15Model", "AudioTokenizerConfig", "ConditionEncoderConfig", "DiTConfig",
           "config_from_state_dict_shapes", "released_2b", "released_xl", "tiny_config"]
