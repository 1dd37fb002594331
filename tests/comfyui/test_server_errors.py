"""Bad input through a real ComfyUI server: each case gives a readable error (ComfyUI's
validation answer, or the history's execution_error carrying our message) or a handled
result, and the server keeps working: a valid prompt queued right after succeeds.

Cases: an unknown checkpoint name, a file that is not an ACE-Step checkpoint, a truncated
checkpoint, input audio that is short (0.5 s), mono, 8 kHz or long, and a latent full of NaN.

The "long" input is 240 s (a full-length ACE-Step song, the model's limit) rather than 10
minutes: on a busy 2-core machine the tiny VAE took 77 s to encode a 10-minute file through
the server and 45-60 s for 240 s; both go through the same chunked code, and the 10-minute
file passed too. ACESTEP_LONG_AUDIO_SECONDS=600 runs the 10-minute case.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_harness import ComfyServer, WorkflowError
from .test_workflows import (SAMPLE_RATE, SAMPLES_PER_FRAME, audio_outputs, check_song, latent_frames,
                             write_test_song)

LONG_AUDIO_SECONDS = float(os.environ.get("ACESTEP_LONG_AUDIO_SECONDS", "240"))
_health_checks = itertools.count(1)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def loader(checkpoint: str) -> dict:
    return {"class_type": "LoadAceStepCheckpoint", "inputs": {"ckpt_name": checkpoint}}


def song_prompt(checkpoint: str, seconds: float = 1.0, steps: int = 1, seed: int = 0, prefix: str = "audio/ok") -> dict:
    """The smallest complete text-to-music graph."""
    return {
        "1": loader(checkpoint),
        "2": {"class_type": "TextEncodeAceStepAudio",
              "inputs": {"clip": ["1", 1], "tags": "pop, piano", "lyrics": "[verse]\nla la", "lyrics_strength": 1.0}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyAceStepLatentAudio", "inputs": {"seconds": seconds, "batch_size": 1}},
        "5": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                         "denoise": 1.0}},
        "6": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveAudio", "inputs": {"audio": ["6", 0], "filename_prefix": prefix}},
    }


def run_to_end(server: ComfyServer, prompt: dict, timeout: float = 600) -> dict:
    """Queue a prompt and wait for its history entry, failed or not (WorkflowError only if
    ComfyUI refuses to queue it)."""
    prompt_id = server.queue_prompt(prompt)
    try:
        return server.wait_for(prompt_id, timeout)
    except WorkflowError:
        return server.history(prompt_id)[prompt_id]


def execution_error(entry: dict) -> dict:
    """The execution_error message of a failed prompt (AssertionError if it did not fail)."""
    status = entry["status"]
    assert status["status_str"] == "error", f"the prompt did not fail: {json.dumps(status)[:2000]}"
    errors = [data for kind, data in status["messages"] if kind == "execution_error"]
    assert errors, status["messages"]
    return errors[-1]


def assert_server_still_works(server: ComfyServer, checkpoint: str) -> None:
    """A valid prompt queued now runs to the end and saves audio. Its seed is new each time,
    so ComfyUI really samples and decodes again (nothing comes from its cache)."""
    assert server.proc.poll() is None, "the ComfyUI server has exited\n" + server.log_tail()
    seed = next(_health_checks)
    entry = server.run_prompt(song_prompt(checkpoint, seed=seed, prefix=f"audio/health_{seed}"), timeout=600)
    (song,) = audio_outputs(server, entry)
    check_song(song, latent_frames(1.0))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def test_unknown_checkpoint_name(comfy_server, tiny_checkpoints):
    """ComfyUI refuses the prompt before running it (400) and names the missing value."""
    with pytest.raises(WorkflowError) as refused:
        comfy_server.queue_prompt(song_prompt("ace_step_v1_3.5b_not_downloaded.safetensors"))
    message = str(refused.value)
    assert "prompt refused (400)" in message
    body = json.loads(message.split(": ", 1)[1])
    (error,) = body["node_errors"]["1"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert "ace_step_v1_3.5b_not_downloaded.safetensors" in error["details"]
    assert body["node_errors"]["1"]["class_type"] == "LoadAceStepCheckpoint"
    assert_server_still_works(comfy_server, tiny_checkpoints["comfyui"])


def test_checkpoint_of_another_model(comfy_server, tiny_checkpoints, tmp_path):
    """A Stable Diffusion-like single file: our loader says what it is and what to use."""
    path = tmp_path / "sd15_like_model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 8)},
              str(path))
    comfy_server.add_checkpoint(path)
    error = execution_error(run_to_end(comfy_server, song_prompt(path.name)))
    assert error["node_type"] == "LoadAceStepCheckpoint"
    assert error["exception_type"].endswith("CheckpointError")
    message = error["exception_message"]
    assert "not an ACE-Step v1 checkpoint" in message and "Stable Diffusion" in message, message
    assert_server_still_works(comfy_server, tiny_checkpoints["comfyui"])


def test_truncated_checkpoint(comfy_server, tiny_checkpoints, tmp_path):
    """An interrupted download: the loader reports the missing bytes before reading weights."""
    whole = (comfy_server.base_dir / "models" / "checkpoints" / tiny_checkpoints["comfyui"]).read_bytes()
    path = tmp_path / "ace_step_half_downloaded.safetensors"
    path.write_bytes(whole[: len(whole) // 2])
    comfy_server.add_checkpoint(path)
    error = execution_error(run_to_end(comfy_server, song_prompt(path.name)))
    assert error["node_type"] == "LoadAceStepCheckpoint"
    message = error["exception_message"]
    assert "truncated" in message and "download" in message, message
    assert_server_still_works(comfy_server, tiny_checkpoints["comfyui"])


# ---------------------------------------------------------------------------------------------
# Input audio
# ---------------------------------------------------------------------------------------------
def roundtrip_prompt(checkpoint: str, audio_name: str, prefix: str) -> dict:
    """LoadAudio -> VAEEncodeAudio -> VAEDecodeAudio -> SaveAudio."""
    return {
        "1": loader(checkpoint),
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "3": {"class_type": "VAEEncodeAudio", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": prefix}},
    }


@pytest.mark.parametrize("seconds, rate, channels", [
    (0.5, SAMPLE_RATE, 2),      # shorter than a second: 5.4 latent frames, padded to 6
    (1.0, SAMPLE_RATE, 1),      # mono: both output channels from the one input channel
    (1.0, 8000, 2),             # 8 kHz: VAEEncodeAudio resamples to 44.1 kHz first
    (1.0, 8000, 1),             # both at once
], ids=["0.5s", "mono", "8kHz", "8kHz-mono"])
def test_unusual_input_audio_is_handled(seconds, rate, channels, comfy_server, tiny_checkpoints, tmp_path):
    """Encoded and decoded back: 44.1 kHz stereo, the 44.1 kHz length rounded up to whole
    latent frames (4096 samples), finite, not silent."""
    name = f"unusual_{seconds:g}s_{rate}Hz_{channels}ch.wav"
    comfy_server.add_input_file(write_test_song(tmp_path / name, seconds, rate=rate, channels=channels))
    entry = comfy_server.run_prompt(roundtrip_prompt(tiny_checkpoints["comfyui"], name, f"audio/{Path(name).stem}"),
                                    timeout=600)
    (song,) = audio_outputs(comfy_server, entry)
    resampled = round(seconds * rate) * SAMPLE_RATE // rate     # torchaudio's resample length
    check_song(song, math.ceil(resampled / SAMPLES_PER_FRAME))
    assert_server_still_works(comfy_server, tiny_checkpoints["comfyui"])


def test_long_input_audio_is_encoded(comfy_server, tiny_checkpoints, tmp_path):
    """A full-length song through VAEEncodeAudio (chunked): every frame is there and finite."""
    name = f"long_{LONG_AUDIO_SECONDS:g}s.wav"
    comfy_server.add_input_file(write_test_song(tmp_path / name, LONG_AUDIO_SECONDS))
    prompt = {
        "1": loader(tiny_checkpoints["comfyui"]),
        "2": {"class_type": "LoadAudio", "inputs": {"audio": name}},
        "3": {"class_type": "VAEEncodeAudio", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/long_input"}},
    }
    entry = comfy_server.run_prompt(prompt, timeout=1200)
    (saved,) = comfy_server.output_files(entry)
    latent = load_file(str(saved))["latent_tensor"]
    frames = math.ceil(round(LONG_AUDIO_SECONDS * SAMPLE_RATE) / SAMPLES_PER_FRAME)
    assert tuple(latent.shape) == (1, 8, 16, frames)
    assert torch.isfinite(latent).all()
    assert latent.std() > 0.01
    assert_server_still_works(comfy_server, tiny_checkpoints["comfyui"])


# ---------------------------------------------------------------------------------------------
# NaN latent
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def nan_latent(comfy_server, tmp_path) -> str:
    """A .latent file (what SaveLatent writes) full of NaN, in the server's input/."""
    path = tmp_path / "all_nan.latent"
    save_file({"latent_tensor": torch.full((1, 8, 16, 11), float("nan")),
               "latent_format_version_0": torch.tensor([])}, str(path))
    return comfy_server.add_input_file(path)


@pytest.mark.parametrize("through_sampler", [False, True], ids=["decode", "sample-then-decode"])
def test_nan_latent(through_sampler, nan_latent, comfy_server, tiny_checkpoints):
    """A NaN latent decoded directly, or used as KSampler's start (denoise 0.5): the VAE refuses
    it with a message that says so, instead of saving NaN audio."""
    checkpoint = tiny_checkpoints["comfyui"]
    prompt = song_prompt(checkpoint, seed=7, prefix="audio/nan")
    prompt["4"] = {"class_type": "LoadLatent", "inputs": {"latent": nan_latent}}
    if through_sampler:
        prompt["5"]["inputs"]["denoise"] = 0.5
    else:
        prompt["6"]["inputs"]["samples"] = ["4", 0]
        del prompt["5"]
    error = execution_error(run_to_end(comfy_server, prompt))
    assert error["node_type"] == "VAEDecodeAudio"
    assert "NaN" in error["exception_message"], error["exception_message"]
    assert not list((comfy_server.base_dir / "output" / "audio").glob("nan_*")), "NaN audio was saved"
    assert_server_still_works(comfy_server, checkpoint)
