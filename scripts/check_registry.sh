#!/usr/bin/env bash
# The Comfy Registry's own pre-publish check, `comfy node validate` (comfy-cli from PyPI), run on
# this repository; fails on any warning. comfy-cli only warns (exit 0) about `exec`, `eval` and
# several statements on one line (ruff S102, S307, E702) and says these become errors soon, so a
# warning fails here already.
#
# usage: bash scripts/check_registry.sh
# comfy-cli goes into its own small virtual environment (ACESTEP_COMFY_CLI_VENV, default
# ~/.cache/comfyui-acestep/comfy-cli), installed once (about 15 s from PyPI) and reused; the check
# itself takes under a second, runs without a terminal and sends nothing (--no-enable-telemetry;
# its config goes to a temporary HOME).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ACESTEP_COMFY_CLI_VENV:-$HOME/.cache/comfyui-acestep/comfy-cli}"
COMFY_CLI_VERSION="1.23.0"   # the version the registry's check was read in; bump deliberately

if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('comfy-cli') == '$COMFY_CLI_VERSION'" 2>/dev/null; then
  echo "check_registry.sh: installing comfy-cli $COMFY_CLI_VERSION into $VENV"
  python3 -m venv --clear "$VENV"
  log="$(mktemp)"
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "comfy-cli==$COMFY_CLI_VERSION" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd "$REPO"
# comfy-cli runs ruff through its own interpreter: put the venv first on PATH as well.
set +e
out="$(PATH="$VENV/bin:$PATH" HOME="$scratch" XDG_CONFIG_HOME="$scratch/.config" \
       "$VENV/bin/comfy" --skip-prompt --no-enable-telemetry node validate </dev/null 2>&1)"
rc=$?
set -e
echo "$out"
if [ "$rc" -ne 0 ] || ! grep -q "All validation checks passed" <<<"$out" || grep -qi "warning" <<<"$out"; then
  echo "check_registry.sh: FAILED: comfy node validate reported problems (above)" >&2
  exit 1
fi
echo "check_registry.sh: PASSED: comfy node validate, no warnings"
