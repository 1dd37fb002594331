#!/usr/bin/env bash
# Retake the README's pictures (docs/images/*.png) in the real frontend: runs the tests that take
# them with ACESTEP_REFRESH_README_IMAGES=1, which is the only way they write into docs/images/
# (the normal suite puts its screenshots in a temporary folder). Review with `git diff --stat`.
#
# usage: bash scripts/refresh_readme_images.sh       (about 4 minutes on 2 CPU cores)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ACESTEP_REFRESH_README_IMAGES=1
exec bash "$REPO/scripts/test.sh" \
  "$REPO/tests/comfyui/test_workflows.py::test_workflow_runs_from_the_canvas" \
  "$REPO/tests/comfyui/test_workflows_v15.py::test_15_workflow_runs_from_the_canvas" \
  "$REPO/tests/comfyui/test_workflows_v15_tasks.py::test_task_workflow_runs_from_the_canvas" \
  "$REPO/tests/comfyui/test_web.py::test_region_picker_drag_sets_widgets_and_the_run_uses_them" \
  "$REPO/tests/comfyui/test_web.py::test_lyric_editor_matches_the_tokenizer" \
  "$REPO/tests/comfyui/test_web.py::test_region_picker_draws_the_decoded_output_of_the_same_latent"
