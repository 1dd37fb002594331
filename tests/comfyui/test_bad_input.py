"""Bad input through a real ComfyUI server, as one table: every case is what a user can send
(a wrong checkpoint, lyrics or tags far too long, odd or broken audio, regions outside the song,
foreign latents, broken LoRAs, Cancel in the middle of a run). For each case the test checks

  * the message the user sees: ComfyUI's validation answer (HTTP 400, shown on the node), the
    execution error (the error dialog), or the warning text shown on the node for input that runs;
  * that the server still answers (GET /system_stats) and the process is alive;
  * that a valid prompt queued right after runs to the end and saves audio (a new seed each time,
    so nothing comes from ComfyUI's cache).

All cases share the session's one server (tests/comfyui/conftest.py). The README lists the cases.

The "long" input audio is 240 s (a full-length ACE-Step song, the model's limit) rather than 10
minutes: on a busy 2-core machine the tiny VAE took 45-60 s for 240 s through the server and 77 s
for 10 minutes; both go through the same windowed code. ACESTEP_LONG_AUDIO_SECONDS=600 runs the
10-minute case.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from comfyui_harness import ComfyServer, WorkflowError

from .test_workflows import SAMPLE_RATE, SAMPLES_PER_FRAME, audio_outputs, check_song, latent_frames, write_test_song

LONG_AUDIO_SECONDS = float(os.environ.get("ACESTEP_LONG_AUDIO_SECONDS", "240"))
# The lyric encoder's attention is quadratic in the lyric length: 4096 ids (the limit) in the tiny
# model, batch 2 (positive + zeroed negative), 4 heads, fp32 are 512 MiB per score tensor. The
# whole run must stay within this much above the server's resident memory before it; 100 KB of
# uncut lyrics (about 60,000 ids) would need about 115 GiB per score tensor.
LYRICS_RUN_MEMORY_BOUND_GIB = 4.0
_health_seeds = itertools.count(1)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def loader(checkpoint: str, weight_dtype: str = "default") -> dict:
    return {"class_type": "LoadAceStepCheckpoint", "inputs": {"ckpt_name": checkpoint, "weight_dtype": weight_dtype}}


def song_prompt(checkpoint: str, seconds: float = 1.0, steps: int = 1, seed: int = 0, prefix: str = "audio/ok",
                tags: str = "pop, piano", lyrics: str = "[verse]\nla la", denoise: float = 1.0) -> dict:
    """The smallest complete text-to-music graph (node 2 encodes the text, 5 samples)."""
    return {
        "1": loader(checkpoint),
        "2": {"class_type": "TextEncodeAceStepAudio",
              "inputs": {"clip": ["1", 1], "tags": tags, "lyrics": lyrics, "lyrics_strength": 1.0}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyAceStepLatentAudio", "inputs": {"seconds": seconds, "batch_size": 1}},
        "5": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
                         "denoise": denoise}},
        "6": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveAudio", "inputs": {"audio": ["6", 0], "filename_prefix": prefix}},
    }


def roundtrip_prompt(checkpoint: str, audio_name: str, prefix: str) -> dict:
    """LoadAudio -> VAEEncodeAudio -> VAEDecodeAudio -> SaveAudio."""
    return {
        "1": loader(checkpoint),
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "3": {"class_type": "VAEEncodeAudio", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 0], "filename_prefix": prefix}},
    }


def task_prompt(checkpoint: str, task: dict, prefix: str, seconds: float = 2.0) -> dict:
    """A generated song's latent through a Repaint / Extend node (node 10), sampled, restored,
    decoded and saved. ``task`` is the node's class_type and inputs other than samples."""
    prompt = song_prompt(checkpoint, seconds=seconds, prefix=prefix)
    prompt["10"] = {"class_type": task["class_type"], "inputs": {"samples": ["4", 0], **task["inputs"]}}
    prompt["11"] = {"class_type": "KSampler",
                    "inputs": {**prompt["5"]["inputs"], "latent_image": ["10", 0], "denoise": 1.0}}
    prompt["12"] = {"class_type": "AceStepRestoreSource", "inputs": {"samples": ["11", 0]}}
    prompt["6"]["inputs"]["samples"] = ["12", 0]
    del prompt["5"]
    return prompt


# ---------------------------------------------------------------------------------------------
# What the user sees
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one case gave: refused (validation), failed (execution error), or ran."""
    refused: dict | None = None          # node_errors of a 400
    error: dict | None = None            # the execution_error message
    status: dict | None = None
    entry: dict | None = None
    node_text: dict[str, str] = field(default_factory=dict)   # node id -> text shown on it
    seconds: float = 0.0


def run_case(server: ComfyServer, prompt: dict, during: Callable | None = None, timeout: float = 900) -> Outcome:
    outcome = Outcome()
    with server.listen() as messages:
        started = time.time()
        try:
            prompt_id = server.queue_prompt(prompt, client_id=messages.client_id)
        except WorkflowError as refused:
            outcome.refused = json.loads(str(refused).split(": ", 1)[1])
            return outcome
        if during is not None:
            during(server, messages, prompt_id)
        deadline = time.time() + timeout
        while (entry := server.history(prompt_id).get(prompt_id)) is None or not (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
            assert server.proc.poll() is None, "the server exited\n" + server.log_tail()
            assert time.time() < deadline, f"not finished within {timeout} s"
            time.sleep(0.25)
        outcome.seconds = time.time() - started
        time.sleep(0.3)   # the last websocket messages
    outcome.entry, outcome.status = entry, entry["status"]
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    outcome.error = errors[-1] if errors else None
    for node, text in messages.node_text:
        outcome.node_text[node] = (outcome.node_text.get(node, "") + "\n" + text).strip()
    return outcome


def refused_with(node: str, error_type: str, *words: str):
    def check(outcome: Outcome, ctx) -> None:
        assert outcome.refused is not None, f"the prompt was not refused: {outcome.status}"
        errors = outcome.refused["node_errors"][node]["errors"]
        assert any(e["type"] == error_type for e in errors), errors
        text = json.dumps(errors)
        for word in words:
            assert word in text, (word, text)
    return check


def failed_with(node_type: str, *words: str, absent: tuple[str, ...] = ()):
    def check(outcome: Outcome, ctx) -> None:
        assert outcome.error is not None, f"the prompt did not fail: {json.dumps(outcome.status)[:2000]}"
        assert outcome.error["node_type"] == node_type, outcome.error
        message = outcome.error["exception_message"]
        for word in words:
            assert word in message, (word, message)
        for word in absent:
            assert word not in message, (word, message)
    return check


def ran(frames: int | None = None, node_text: dict[str, tuple[str, ...]] | None = None, log: tuple[str, ...] = ()):
    """It ran to the end, saved decodable audio of ``frames`` frames, and showed ``node_text``."""
    def check(outcome: Outcome, ctx) -> None:
        assert outcome.refused is None and outcome.error is None, (outcome.refused, outcome.error)
        assert outcome.status["status_str"] == "success", outcome.status
        songs = audio_outputs(ctx.server, outcome.entry)
        assert songs, outcome.entry["outputs"]
        for song in songs:
            check_song(song, frames)
        for node, words in (node_text or {}).items():
            shown = outcome.node_text.get(node, "")
            for word in words:
                assert word in shown, (node, word, outcome.node_text)
        server_log = ctx.server.log()
        for word in log:
            assert word in server_log, word
    return check


# ---------------------------------------------------------------------------------------------
# Inputs the cases need
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    server: ComfyServer
    checkpoint: str            # the tiny single-file checkpoint's name
    folders: str               # the tiny original-layout folder's name
    tmp: Path


def long_lyrics(size: int = 100_000) -> str:
    rng = random.Random(0)
    words = "love night dream fire heart sky rain dance light shadow river stone".split()
    lines = ["[verse]"]
    while sum(len(line) + 1 for line in lines) < size:
        lines.append(" ".join(rng.choice(words) for _ in range(8)))
    return "\n".join(lines)


def sd_like_checkpoint(ctx: Context) -> str:
    path = ctx.tmp / "sd15_like_model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
               "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 8)},
              str(path))
    return ctx.server.add_checkpoint(path).name


def truncated_checkpoint(ctx: Context) -> str:
    whole = (ctx.server.base_dir / "models" / "checkpoints" / ctx.checkpoint).read_bytes()
    path = ctx.tmp / "ace_step_half_downloaded.safetensors"
    path.write_bytes(whole[: len(whole) // 2])
    return ctx.server.add_checkpoint(path).name


def empty_checkpoint(ctx: Context) -> str:
    path = ctx.tmp / "ace_step_zero_bytes.safetensors"
    path.write_bytes(b"")
    return ctx.server.add_checkpoint(path).name


def folder_without_vocoder(ctx: Context) -> str:
    import shutil
    source = (ctx.server.base_dir / "models" / "checkpoints" / ctx.folders).resolve()
    copy = ctx.tmp / "ACE-Step-no-vocoder"
    shutil.copytree(source, copy)
    shutil.rmtree(copy / "music_vocoder")
    return ctx.server.add_checkpoint(copy).name


def input_song(ctx: Context, seconds: float, rate: int = SAMPLE_RATE, channels: int = 2) -> str:
    name = f"in_{seconds:g}s_{rate}Hz_{channels}ch.wav"
    return ctx.server.add_input_file(write_test_song(ctx.tmp / name, seconds, rate=rate, channels=channels))


def not_audio(ctx: Context) -> str:
    path = ctx.tmp / "notes_not_audio.wav"
    path.write_text("these are my lyrics, not a sound file\n" * 50)
    return ctx.server.add_input_file(path)


def nan_latent(ctx: Context) -> str:
    path = ctx.tmp / "all_nan.latent"
    save_file({"latent_tensor": torch.full((1, 8, 16, 11), float("nan")),
               "latent_format_version_0": torch.tensor([])}, str(path))
    return ctx.server.add_input_file(path)


def lora_file(ctx: Context, kind: str) -> str:
    folder = ctx.server.base_dir / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bad_{kind}.safetensors"
    if kind == "not_a_lora":
        save_file({"some.weight": torch.zeros(4, 4)}, str(path))
    else:
        path.write_bytes(b"\x00garbage, not safetensors" * 10)
    return path.name


def with_lora(checkpoint: str, lora: str) -> dict:
    prompt = song_prompt(checkpoint, prefix="audio/lora")
    prompt["20"] = {"class_type": "AceStepLoraLoader", "inputs": {"model": ["1", 0], "lora_name": lora, "strength": 1.0}}
    prompt["5"]["inputs"]["model"] = ["20", 0]
    return prompt


def with_latent(prompt: dict, latent_node: dict, into: tuple[str, str]) -> dict:
    prompt["30"] = latent_node
    node, name = into
    prompt[node]["inputs"][name] = ["30", 0]
    return prompt


IMAGE_LATENT = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}


def load_latent(name: str) -> dict:
    return {"class_type": "LoadLatent", "inputs": {"latent": name}}


def decode_only(prompt: dict) -> dict:
    """The prompt without its sampler (node 5): the latent goes straight to the decoder."""
    return {k: v for k, v in prompt.items() if k != "5"}


def encode_to_file(checkpoint: str, audio_name: str) -> dict:
    """LoadAudio -> VAEEncodeAudio -> SaveLatent."""
    return {"1": loader(checkpoint),
            "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
            "3": {"class_type": "VAEEncodeAudio", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
            "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "latents/long"}}}


def interrupt_when_sampling(server: ComfyServer, messages, prompt_id: str) -> None:
    """Press Cancel once the sampler has made a step."""
    deadline = time.time() + 300
    while not any(m.get("type") == "progress" and m["data"].get("node") == "5" for m in list(messages.json)):
        assert time.time() < deadline, "the sampler never reported progress"
        time.sleep(0.1)
    server.interrupt()


def interrupted_quickly(outcome: Outcome, ctx) -> None:
    kinds = [kind for kind, _ in outcome.status["messages"]]
    assert "execution_interrupted" in kinds, outcome.status
    data = dict(outcome.status["messages"])["execution_interrupted"]
    assert data["node_type"] == "KSampler", data
    assert not audio_outputs(ctx.server, outcome.entry)


def long_audio_encoded(outcome: Outcome, ctx) -> None:
    assert outcome.error is None and outcome.status["status_str"] == "success", outcome.status
    (saved,) = ctx.server.output_files(outcome.entry)
    latent = load_file(str(saved))["latent_tensor"]
    frames = math.ceil(round(LONG_AUDIO_SECONDS * SAMPLE_RATE) / SAMPLES_PER_FRAME)
    assert tuple(latent.shape) == (1, 8, 16, frames) and torch.isfinite(latent).all() and latent.std() > 0.01


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
LYRICS_100K = long_lyrics()
TAGS_20K = ", ".join(["dreamy synthwave", "warm analog pads", "female vocals", "120 bpm"] * 400)[:20_000]

# id -> (make the prompt from the context, check the outcome[, run during the prompt])
CASES: dict[str, tuple] = {
    # Checkpoints
    "checkpoint-name-unknown": (
        lambda c: song_prompt("ace_step_v1_3.5b_not_downloaded.safetensors"),
        refused_with("1", "value_not_in_list", "ace_step_v1_3.5b_not_downloaded.safetensors")),
    "checkpoint-of-another-model": (
        lambda c: song_prompt(sd_like_checkpoint(c)),
        failed_with("LoadAceStepCheckpoint", "not an ACE-Step v1 checkpoint", "Stable Diffusion")),
    "checkpoint-half-downloaded": (
        lambda c: song_prompt(truncated_checkpoint(c)),
        failed_with("LoadAceStepCheckpoint", "truncated", "download", "ace_step_half_downloaded.safetensors")),
    "checkpoint-zero-bytes": (
        lambda c: song_prompt(empty_checkpoint(c)),
        failed_with("LoadAceStepCheckpoint", "ace_step_zero_bytes.safetensors")),
    "checkpoint-folder-without-vocoder": (
        lambda c: song_prompt(folder_without_vocoder(c)),   # not offered in the list: refused by name
        refused_with("1", "value_not_in_list", "ACE-Step-no-vocoder")),
    "checkpoint-weight-dtype-unknown": (
        lambda c: {**song_prompt(c.checkpoint), "1": loader(c.checkpoint, "int4")},
        refused_with("1", "value_not_in_list", "int4")),
    # Lyrics
    "lyrics-100KB": (
        lambda c: song_prompt(c.checkpoint, lyrics=LYRICS_100K, prefix="audio/lyrics_100k"),
        ran(latent_frames(1.0), node_text={"2": ("lyrics too long", "the model reads at most 4096")},
            log=("lyrics too long",))),
    "lyrics-binary-garbage": (
        lambda c: song_prompt(c.checkpoint, prefix="audio/garbage",
                              lyrics=bytes(random.Random(1).randrange(256) for _ in range(3000)).decode("latin-1")),
        ran(latent_frames(1.0))),
    "lyrics-empty": (
        lambda c: song_prompt(c.checkpoint, lyrics="", prefix="audio/no_lyrics"),
        ran(latent_frames(1.0))),
    # Tags
    "tags-20KB": (
        lambda c: song_prompt(c.checkpoint, tags=TAGS_20K, prefix="audio/tags_20k"),
        ran(latent_frames(1.0), node_text={"2": ("tags too long", "at most 256")})),
    "tags-empty": (
        lambda c: song_prompt(c.checkpoint, tags="", prefix="audio/no_tags"),
        ran(latent_frames(1.0))),
    # Audio
    "audio-half-second": (
        lambda c: roundtrip_prompt(c.checkpoint, input_song(c, 0.5), "audio/half_second"),
        ran(math.ceil(round(0.5 * SAMPLE_RATE) / SAMPLES_PER_FRAME))),
    "audio-mono-8kHz": (
        lambda c: roundtrip_prompt(c.checkpoint, input_song(c, 1.0, rate=8000, channels=1), "audio/mono_8k"),
        ran(math.ceil(8000 * SAMPLE_RATE // 8000 / SAMPLES_PER_FRAME))),
    "audio-file-missing": (
        lambda c: roundtrip_prompt(c.checkpoint, "song_never_uploaded.wav", "audio/missing"),
        refused_with("2", "custom_validation_failed", "song_never_uploaded.wav")),
    "audio-file-not-audio": (
        lambda c: roundtrip_prompt(c.checkpoint, not_audio(c), "audio/not_audio"),
        failed_with("LoadAudio")),
    f"audio-{LONG_AUDIO_SECONDS:g}s-encoded": (
        lambda c: encode_to_file(c.checkpoint, input_song(c, LONG_AUDIO_SECONDS)),
        long_audio_encoded),
    # Regions
    "repaint-start-after-end": (
        lambda c: task_prompt(c.checkpoint, {"class_type": "AceStepRepaint", "inputs": {
            "start_seconds": 30.0, "end_seconds": 10.0, "variance": 0.2}}, "audio/swapped"),
        failed_with("AceStepRepaint", "start (30 s) must be before the end (10 s)")),
    "repaint-after-the-song": (
        lambda c: task_prompt(c.checkpoint, {"class_type": "AceStepRepaint", "inputs": {
            "start_seconds": 20.0, "end_seconds": 30.0, "variance": 0.2}}, "audio/after"),
        failed_with("AceStepRepaint", "starts past the end of the song (1.95 s)", absent=("frames",))),
    "repaint-partly-after-the-song": (
        lambda c: task_prompt(c.checkpoint, {"class_type": "AceStepRepaint", "inputs": {
            "start_seconds": 1.0, "end_seconds": 30.0, "variance": 0.2}}, "audio/partly"),
        ran(latent_frames(2.0), log=("repaint end 30 s is past the end of the song (1.95 s); using the end",))),
    "repaint-variance-above-1": (
        lambda c: task_prompt(c.checkpoint, {"class_type": "AceStepRepaint", "inputs": {
            "start_seconds": 0.5, "end_seconds": 1.0, "variance": 1.5}}, "audio/variance"),
        refused_with("10", "value_bigger_than_max", "variance")),
    "extend-by-nothing": (
        lambda c: task_prompt(c.checkpoint, {"class_type": "AceStepExtend", "inputs": {
            "left_seconds": 0.0, "right_seconds": 0.0}}, "audio/extend_nothing"),
        ran(latent_frames(2.0), log=("both extensions are shorter than one frame",))),
    # Latents
    "latent-NaN-decoded": (
        lambda c: decode_only(with_latent(song_prompt(c.checkpoint, prefix="audio/nan"), load_latent(nan_latent(c)),
                                          ("6", "samples"))),
        failed_with("VAEDecodeAudio", "NaN")),
    "latent-NaN-sampled": (
        lambda c: with_latent(song_prompt(c.checkpoint, prefix="audio/nan_sampled", denoise=0.5),
                              load_latent(nan_latent(c)), ("5", "latent_image")),
        failed_with("VAEDecodeAudio", "NaN")),
    "latent-of-an-image-decoded": (
        lambda c: decode_only(with_latent(song_prompt(c.checkpoint, prefix="audio/image_latent"), IMAGE_LATENT,
                                          ("6", "samples"))),
        failed_with("VAEDecodeAudio", "[batch, 8, 16, frames]")),
    "latent-of-an-image-repainted": (
        lambda c: with_latent(task_prompt(c.checkpoint, {"class_type": "AceStepRepaint", "inputs": {
            "start_seconds": 0.5, "end_seconds": 1.0, "variance": 0.2}}, "audio/image_repaint"),
            IMAGE_LATENT, ("10", "samples")),
        failed_with("AceStepRepaint", "this latent has shape", "[batch, 8, 16, frames]")),
    "latent-seconds-too-long": (
        lambda c: {**song_prompt(c.checkpoint),
                   "4": {"class_type": "EmptyAceStepLatentAudio", "inputs": {"seconds": 100000.0, "batch_size": 1}}},
        refused_with("4", "value_bigger_than_max", "seconds")),
    # LoRAs
    "lora-name-unknown": (
        lambda c: with_lora(c.checkpoint, "rap_lora_not_downloaded.safetensors"),
        refused_with("20", "value_not_in_list", "rap_lora_not_downloaded.safetensors")),
    "lora-file-not-a-lora": (
        lambda c: with_lora(c.checkpoint, lora_file(c, "not_a_lora")),
        failed_with("AceStepLoraLoader", "is not a LoRA")),
    "lora-file-garbage": (
        lambda c: with_lora(c.checkpoint, lora_file(c, "garbage")),
        failed_with("AceStepLoraLoader", "not a readable safetensors")),
    # Interrupt
    "interrupt-while-sampling": (
        lambda c: song_prompt(c.checkpoint, seconds=30.0, steps=10_000, seed=99, prefix="audio/interrupted"),
        interrupted_quickly, interrupt_when_sampling),
}


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------
def server_rss(server: ComfyServer) -> tuple[int, int]:
    """(resident, peak resident) bytes of the server process."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
              if line.startswith(("VmRSS", "VmHWM"))}
    return values["VmRSS"], values["VmHWM"]


def reset_peak_rss(server: ComfyServer) -> bool:
    """Start the peak-RSS count afresh (Linux: 5 > /proc/PID/clear_refs)."""
    try:
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def assert_server_still_works(ctx: Context) -> None:
    assert ctx.server.proc.poll() is None, "the ComfyUI server has exited\n" + ctx.server.log_tail()
    assert requests.get(ctx.server.url + "/system_stats", timeout=10).status_code == 200
    seed = next(_health_seeds)
    entry = ctx.server.run_prompt(song_prompt(ctx.checkpoint, seed=seed, prefix=f"audio/health_{seed}"), timeout=600)
    (song,) = audio_outputs(ctx.server, entry)
    check_song(song, latent_frames(1.0))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, comfy_server, tiny_checkpoints, tmp_path):
    make_prompt, check, *during = CASES[case]
    ctx = Context(comfy_server, tiny_checkpoints["comfyui"], tiny_checkpoints["folders"], tmp_path)
    prompt = make_prompt(ctx)
    rss_before, _ = server_rss(comfy_server)
    peak_measured = reset_peak_rss(comfy_server)
    outcome = run_case(comfy_server, prompt, during[0] if during else None)
    check(outcome, ctx)
    if case == "lyrics-100KB":
        _, peak = server_rss(comfy_server)
        assert peak_measured, "cannot reset the peak RSS counter (/proc/PID/clear_refs)"
        grown = (peak - rss_before) / 2**30
        print(f"lyrics-100KB: server peak RSS {peak / 2**30:.2f} GiB, {grown:+.2f} GiB over the "
              f"{rss_before / 2**30:.2f} GiB before the run, {outcome.seconds:.1f} s")
        assert grown <= LYRICS_RUN_MEMORY_BOUND_GIB, f"peak RSS grew by {grown:.2f} GiB"
    if case == "interrupt-while-sampling":
        print(f"interrupt: prompt ended {outcome.seconds:.1f} s after queueing")
    assert_server_still_works(ctx)
