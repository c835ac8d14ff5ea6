#!/usr/bin/env bash
# Build .venv-prefect: a separate venv with a pinned Prefect 3 server, used by the tests to deliver
# events to a real Prefect server and to validate events with Prefect's own model. Separate from
# .venv because Prefect's dependency pins conflict with faust's.
#
# Also migrates an empty SQLite database once (template/prefect.db) so a test server started from
# a copy of it skips ~4 s of migrations.
#
# Idempotent: a stamp records the pin; a second run with the same pin does nothing.
set -euo pipefail

PREFECT_VERSION="${PREFECT_VERSION:-3.9.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREFECT_VENV:-$ROOT/.venv-prefect}"
STAMP="$VENV/.stamp"
WANT="prefect==$PREFECT_VERSION template-db"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/prefect" \
      && -f "$VENV/template/prefect.db" ]]; then
  exit 0
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
echo "prefect-venv: building $VENV with prefect==$PREFECT_VERSION ($PYTHON)" >&2
rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "prefect==$PREFECT_VERSION"

rm -rf "$VENV/template"
mkdir -p "$VENV/template"
env -u PREFECT_API_URL -u PREFECT_API_DATABASE_CONNECTION_URL PREFECT_HOME="$VENV/template" \
  PREFECT_SERVER_ANALYTICS_ENABLED=false \
  "$VENV/bin/prefect" server database upgrade -y >"$VENV/template/upgrade.log" 2>&1 \
  || { cat "$VENV/template/upgrade.log" >&2; exit 1; }
test -f "$VENV/template/prefect.db"

echo "$WANT" > "$STAMP"
echo "prefect-venv: ready ($("$VENV/bin/prefect" version 2>/dev/null | head -1 | tr -s ' '))" >&2
