#!/usr/bin/env bash
# Start ComfyUI with this pack, ready to use: builds the environment if needed
# (scripts/setup_env.sh), prepares a base directory, and makes sure there is a checkpoint.
#
# usage: scripts/run_comfyui.sh [EXTRA COMFYUI ARGS...]     e.g. --preview-method auto
# Environment:
#   PORT=8188                        the port (ComfyUI listens on 127.0.0.1 only)
#   ACESTEP_BASE_DIR=~/comfyui-acestep-base
#                                    ComfyUI's base directory: custom_nodes/, models/, input/,
#                                    output/, user/. Point it at your own ComfyUI folder to use
#                                    the models you already have (the pack gets linked into
#                                    its custom_nodes/).
#   COMFYUI_DIR, COMFYUI_PYTHON, ACESTEP_ENV_DIR, SKIP_BROWSER: see setup_env.sh
#
# With no real checkpoint in BASE/models/checkpoints (ace_step_v1_3.5b.safetensors, or a folder
# in the original layout), a tiny checkpoint with RANDOM weights is made so that the nodes and
# workflows can be tried at once; it produces noise, not music.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${ACESTEP_ENV_DIR:-$HOME/.cache/comfyui-acestep/env}"
BASE="${ACESTEP_BASE_DIR:-$HOME/comfyui-acestep-base}"
PORT="${PORT:-8188}"
PACK_NAME=comfyui-acestep
TINY_NAME=acestep_tiny_RANDOM_WEIGHTS_demo.safetensors

say() { echo "run_comfyui.sh: $*" >&2; }

# SKIP_BROWSER: running ComfyUI needs no Chromium (only the browser tests do).
STAMP="$(SKIP_BROWSER="${SKIP_BROWSER:-1}" bash "$REPO/scripts/setup_env.sh" "$ENV_DIR")"
# shellcheck disable=SC1090
. "$STAMP"
PY="$ACESTEP_PYTHON"
COMFY="$ACESTEP_COMFYUI_DIR"

# ---- base directory -------------------------------------------------------------------------
mkdir -p "$BASE"/{custom_nodes,models/checkpoints,input,output,user}
BASE="$(cd "$BASE" && pwd)"
link="$BASE/custom_nodes/$PACK_NAME"
if [ -L "$link" ] || [ ! -e "$link" ]; then
  ln -sfn "$REPO" "$link"
elif [ "$(cd "$link" && pwd -P)" != "$(cd "$REPO" && pwd -P)" ]; then
  say "note: $link is a real folder, not this checkout; ComfyUI will load that copy"
fi

# ---- a checkpoint ---------------------------------------------------------------------------
CKPTS="$BASE/models/checkpoints"
real_checkpoint() {
  # the released single file, anywhere under checkpoints/ ...
  find -L "$CKPTS" -maxdepth 3 -name 'ace_step_v1_3.5b.safetensors' -print -quit 2>/dev/null | grep -q . && return 0
  # ... or a folder holding the four original sub-folders
  local d
  for d in "$CKPTS"/*/ "$CKPTS"/; do
    [ -d "$d/ace_step_transformer" ] && [ -d "$d/music_dcae_f8c8" ] && [ -d "$d/music_vocoder" ] \
      && [ -d "$d/umt5-base" ] && return 0
  done
  return 1
}
if real_checkpoint; then
  checkpoint_note="real ACE-Step checkpoint found in $CKPTS"
else
  checkpoint_note="no real checkpoint in $CKPTS: using $TINY_NAME (RANDOM weights: noise, not music)"
  if [ ! -e "$CKPTS/$TINY_NAME" ]; then
    say "making a tiny demo checkpoint with random weights (a few seconds)"
    if ! (cd "$REPO" && "$PY" -m acestep_core make-tiny --out "$CKPTS/$TINY_NAME" --layout comfyui); then
      say "warning: could not make the demo checkpoint; starting ComfyUI without it"
      checkpoint_note="no checkpoint in $CKPTS (put ace_step_v1_3.5b.safetensors there)"
    fi
  fi
fi

# ---- start ComfyUI --------------------------------------------------------------------------
args=(--listen 127.0.0.1 --port "$PORT" --base-directory "$BASE"
      --database-url "sqlite:///$BASE/user/comfyui.db")
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  args+=(--cpu)
  device="CPU"
else
  device="GPU"
fi
say "$checkpoint_note"
say "starting ComfyUI on http://127.0.0.1:$PORT ($device; base directory $BASE); Ctrl-C stops it"
cd "$COMFY"
exec "$PY" main.py "${args[@]}" "$@"
