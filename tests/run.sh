#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs the Rust tests (unit, store, black-box
# against a real `tarmac serve`) and the pulumi-cloud-sdk compatibility tests.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tools="$(bash tests/setup.sh)"
export TARMAC_TEST_TOOLS="$tools"
export CHECKPOINT_DISABLE=1

cargo build --bins
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

TARMAC_BIN="$root/target/debug/tarmac" "$tools/venv/bin/python" -m pytest -q tests/compat
