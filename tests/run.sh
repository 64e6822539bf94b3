#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs the Rust tests (unit, store, black-box
# against a real `tarmac serve`, the store contract on SQLite and on DynamoDB in a local AWS
# emulator), the pulumi-cloud-sdk compatibility tests, schemathesis against the API's OpenAPI
# document, the console's browser tests and a smoke run of each fuzz target.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tools="$(bash tests/setup.sh)"
export TARMAC_TEST_TOOLS="$tools"
export CHECKPOINT_DISABLE=1
# Here every test runs: one whose tools or emulator are missing fails instead of skipping.
export TARMAC_REQUIRE_ALL_TESTS=1
# A one-off build (CI) gains nothing from incremental caches, which take gigabytes of disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# The local AWS emulator, on a free loopback port, stopped whatever happens.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p target/emulator
# Functions deployed to it run as its child processes and inherit its environment: the endpoint
# to call back, and a PATH with the terraform shim (Lambda layers provide the engines in AWS).
# IOT_MTLS_ENABLED=0: its IoT listener would otherwise bind all interfaces.
IOT_MTLS_ENABLED=0 BIND_HOST=127.0.0.1 GATEWAY_PORT="$port" MINISTACK_ACCOUNT_ID=123456789012 \
  TMPDIR="$root/target/emulator" AWS_ENDPOINT_URL="http://127.0.0.1:$port" PATH="$tools/bin:$PATH" \
  "$tools/emu/bin/ministack" >target/emulator/ministack.log 2>&1 &
emulator=$!
trap 'kill "$emulator" 2>/dev/null; wait "$emulator" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/_ministack/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/_ministack/health" >/dev/null || { echo "the AWS emulator did not start" >&2; cat target/emulator/ministack.log >&2; exit 1; }
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

# The template lints clean (cfn-lint), and its IAM is least privilege (tests/infra/).
"$tools/venv/bin/cfn-lint" infra/template.yaml
"$tools/emu/bin/python" -m pytest -q -p no:cacheprovider tests/infra

cargo build --bins
# The real function zips (x86_64 here), through the deploy command's own build, so the infra
# test's deploy finds them built. Profile `lambda-test`: the shipped code without the
# whole-program optimisation of `lambda-zip`, which would add about ten minutes to a cold run.
export TARMAC_LAMBDA_PROFILE=lambda-test
bash infra/deploy build --arch x86_64
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

TARMAC_BIN="$root/target/debug/tarmac" "$tools/venv/bin/python" -m pytest -q tests/compat

# Schemathesis against a real `tarmac serve`, from its own OpenAPI document (at least 2,000
# cases; no 5xx, every response in the schema).
TARMAC_BIN="$root/target/debug/tarmac" "$tools/st/bin/python" tests/schemathesis/run.py

# The console in Debian's Chromium, through playwright-core, against a real `tarmac serve`.
TARMAC_BIN="$root/target/debug/tarmac" node tests/console/run.mjs

# The fuzz targets (cargo fuzz, libFuzzer), a short smoke run each; README has the long run.
FUZZ_SECONDS=10 bash tests/fuzz.sh
