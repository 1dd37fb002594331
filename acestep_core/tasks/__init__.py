"""Task math on latents: retake / repaint / extend (``repaint``) and flow-edit (``edit``).

Pure tensor functions with no model inside: callers pass velocities or velocity functions."""
from .edit import (EDIT_PRESETS, edit_phase, edit_step_range, flowedit_sample, flowedit_step,
                   flowedit_target_start, flowedit_velocity)
from .repaint import (MAX_EXTEND_FRAMES, ExtendPlan, check_variance, extend_assemble, extend_frames, extend_latent,
                      extend_noise, repaint_mask, repaint_noise, repaint_start_step, retake_noise,
                      seconds_to_frame)

__all__ = [
    "EDIT_PRESETS", "edit_phase", "edit_step_range", "flowedit_sample", "flowedit_step",
    "flowedit_target_start", "flowedit_velocity",
    "MAX_EXTEND_FRAMES", "ExtendPlan", "check_variance", "extend_assemble", "extend_frames", "extend_latent", "extend_noise",
    "repaint_mask", "repaint_noise", "repaint_start_step", "retake_noise", "seconds_to_frame",
]
