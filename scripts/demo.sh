#!/usr/bin/env bash
# Run the demo: set up .venv (scripts/bootstrap.sh), then `prefect-events demo`.
# Without KAFKA_BOOTSTRAP_SERVERS the demo starts its own embedded broker; with it, it uses that
# cluster. Extra arguments are passed on to `prefect-events demo` (try --help).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh
exec .venv/bin/prefect-events demo "$@"
