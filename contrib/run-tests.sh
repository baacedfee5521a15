#!/usr/bin/env bash
# Install the test needs (apt packages, ./.venv with the package editable) and run
# the whole suite as root. pytest's "no tests collected" (exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
contrib/install.sh --test || exit 1
.venv/bin/ruff check storagefs tests contrib || exit 1
.venv/bin/pytest -q "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests ran: failing"; exit 1; }
exit $rc
