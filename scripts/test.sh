#!/usr/bin/env bash
# Run the test suite in the environment that scripts/setup_env.sh builds (and builds first,
# if needed; a second run only checks a fingerprint). Tests run the real ComfyUI.
#
# usage: scripts/test.sh [--without-comfyui] [PYTEST ARGS...]      default: the whole suite (tests/)
#   e.g. scripts/test.sh tests/comfyui/test_server_smoke.py -x
# --without-comfyui: the core's tests in a Python that cannot import ComfyUI (its source is not put
#   on sys.path and an import is refused: an error from acestep_core, a skip for a test that uses
#   ComfyUI as its reference); tests/comfyui is not collected. .ci/run runs this first.
# Environment: the same as setup_env.sh (ACESTEP_ENV_DIR, COMFYUI_DIR, COMFYUI_PYTHON, SKIP_BROWSER).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${ACESTEP_ENV_DIR:-$HOME/.cache/comfyui-acestep/env}"

STAMP="$(bash "$REPO/scripts/setup_env.sh" "$ENV_DIR")"
# shellcheck disable=SC1090
. "$STAMP"
export ACESTEP_ENV_DIR ACESTEP_PYTHON ACESTEP_CHROMIUM
export COMFYUI_DIR="$ACESTEP_COMFYUI_DIR"

cd "$REPO"
if [ "${1:-}" = "--without-comfyui" ]; then
  shift
  export ACESTEP_WITHOUT_COMFYUI=1
  echo "test.sh: the core's tests without ComfyUI"
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
"$ACESTEP_PYTHON" -m pytest -q "${@:-tests}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

# pytest's last line is its summary, e.g. "12 passed, 1 warning in 80.31s" (none with -qq, i.e. -q given
# once more on top of the -q above: then the exit status alone is reported).
summary="$(grep -E '^=*\s*[0-9]+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed)|no tests ran' "$out" | tail -n 1 | sed -E 's/^=+ *//; s/ *=+$//' || true)"
case "$rc" in
  0) echo "test.sh: PASSED: ${summary:-?}" ;;
  5) echo "test.sh: FAILED: pytest collected no tests (${*:-tests}); that is treated as a failure" >&2
     rc=1 ;;
  *) echo "test.sh: FAILED (pytest exit $rc): ${summary:-no summary line; see the output above}" >&2 ;;
esac
exit "$rc"
