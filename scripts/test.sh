#!/usr/bin/env bash
# Run the whole test suite: set up .venv (scripts/bootstrap.sh), then ruff, mypy and pytest.
# Every step runs even when an earlier one failed; the exit status is non-zero if any failed.
# Extra arguments are passed on to pytest (e.g. scripts/test.sh -k artifacts -x).
# KAFKA_BOOTSTRAP_SERVERS, when set, is seen by the tests (see README, "Set-up").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh

failed=()

# run_step NAME COMMAND...: run it, print one summary line, remember failures.
run_step() {
  local name="$1"
  shift
  local start=$SECONDS rc=0
  echo "==> $name: $*"
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if [[ "$name" == pytest && $rc -eq 5 ]]; then
    echo "==> $name: FAILED: no tests were collected (pytest exit 5) (${took}s)"
    failed+=("$name")
  elif [[ $rc -ne 0 ]]; then
    echo "==> $name: FAILED (exit $rc) (${took}s)"
    failed+=("$name")
  else
    echo "==> $name: ok (${took}s)"
  fi
}

run_step ruff .venv/bin/ruff check streams topology tests bench
run_step mypy .venv/bin/mypy
run_step pytest .venv/bin/python -m pytest "$@"

if ((${#failed[@]})); then
  echo "==> test.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "==> test.sh: all steps passed (ruff, mypy, pytest)"
