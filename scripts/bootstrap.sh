#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv in the repo root), idempotently.
#
# - creates .venv with `python3 -m venv` when it is missing (or broken);
# - runs `pip install -e '.[dev]' -c docker/constraints.txt` when the venv is new or
#   pyproject.toml or the constraints changed since the last successful install (their sha256
#   kept in .venv/.bootstrap-stamp): the tests run on the dependency versions the image installs;
# - prints nothing when there is nothing to do, one line when it installs, and fails loudly
#   (non-zero exit, message on stderr) when anything goes wrong.
#
# Honours PYTHON (interpreter used to create the venv; default python3, must be >= 3.11).
# Works from any working directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.bootstrap-stamp"
PYTHON="${PYTHON:-python3}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
  echo "bootstrap: ERROR: $*" >&2
  exit 1
}

[[ -f pyproject.toml ]] || die "no pyproject.toml in $ROOT"

venv_ok() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

create_venv() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; install Python >= 3.11 or set PYTHON"
  # One question, its answer checked: a program that does not run as Python (PYTHON=/bin/false)
  # was reported as too old, its version blank.
  local version
  version="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" || true
  [[ "$version" =~ ^([0-9]+)\.([0-9]+)\.[0-9]+$ ]] \
    || die "'$PYTHON' could not be run as Python (it gave no version); install Python >= 3.11 or set PYTHON"
  (( BASH_REMATCH[1] > 3 || (BASH_REMATCH[1] == 3 && BASH_REMATCH[2] >= 11) )) \
    || die "Python $version is too old: Python >= 3.11 is required (set PYTHON=...)"
  if [[ -e "$VENV/pyvenv.cfg" ]]; then
    echo "bootstrap: $VENV is broken (its interpreter does not run); recreating it" >&2
    rm -rf "$VENV"
  fi
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed (on Debian: apt-get install python3-venv)"
}

sha256_of() {
  "$VENV/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# Serialise concurrent runs (e.g. scripts/demo.sh and scripts/test.sh started together).
mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV/.bootstrap.lock"
  flock 9
fi

if ! venv_ok; then
  rm -f "$STAMP"
  create_venv
fi

want="$(sha256_of pyproject.toml) $(sha256_of docker/constraints.txt)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" == "$have" ]]; then
  exit 0
fi

echo "bootstrap: installing the project and its dev tools into $VENV (pip install -e '.[dev]' -c docker/constraints.txt)" >&2
rm -f "$STAMP"
if ! "$VENV/bin/python" -m pip install -q -e '.[dev]' -c docker/constraints.txt; then
  die "pip install -e '.[dev]' into $VENV failed (see pip's output above); fix it and run $0 again"
fi
tmp="$STAMP.tmp.$$"
printf '%s\n' "$want" >"$tmp"
mv -f "$tmp" "$STAMP"
