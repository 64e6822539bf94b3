#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer): builds every target in shared/fuzz once, then runs each
# for FUZZ_SECONDS seconds, and fails if any finds a crash (a panic, a broken invariant, a hang).
#   bash tests/fuzz.sh                15 s a target, a debug build (CI: FUZZ_SECONDS=10)
#   FUZZ_SECONDS=600 FUZZ_PROFILE=release bash tests/fuzz.sh
#                                     the long run: 10 minutes a target, an optimised build
#   bash tests/fuzz.sh log_masking settings    some targets only
# Each target's corpus grows in target/fuzz/corpus/<target>, from the seeds committed in
# shared/fuzz/seeds/<target>; a crashing input is kept in shared/fuzz/artifacts/<target>/, and
#   cd shared && PATH=../target/test-tools/bin:$PATH CARGO_TARGET_DIR=../target/fuzz \
#     cargo fuzz run -s none --dev <target> fuzz/artifacts/<target>/<file>
# replays it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tools="${TARMAC_TEST_TOOLS:-$(bash tests/setup.sh)}"
export PATH="$tools/bin:$PATH"
seconds="${FUZZ_SECONDS:-15}"

# The stable toolchain, as everywhere else: CI has that one toolchain and can fetch no other.
# Without a sanitizer (`-s none`: the library forbids unsafe code, so there is nothing for one to
# find that a panic would not), cargo fuzz passes rustc no `-Z` flag, so stable builds the
# targets as they are; no nightly and no RUSTC_BOOTSTRAP.
# A debug build by default: cold (all of `tarmac` and its dependencies, instrumented) it takes
# about 3.5 minutes on 2 cores where a release build takes 13 (cargo fuzz builds that with one
# codegen unit). A release build runs each target 15 to 30 times faster, which pays for itself
# in a long run, not in a smoke run of seconds. Both check debug assertions and overflows.
case "${FUZZ_PROFILE:-dev}" in
  dev) profile=(--dev) ;;
  release) profile=(--release) ;;
  *) echo "FUZZ_PROFILE is dev or release, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac
# Its own target directory: the instrumented build shares nothing with target/debug.
export CARGO_TARGET_DIR="$root/target/fuzz"
# A one-off build (CI) gains nothing from incremental caches, which take gigabytes of disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
# The targets build exactly the dependency versions the workspace's lock file pins (and the
# fuzzing crates it lacks, pinned in shared/fuzz/Cargo.toml).
cp Cargo.lock shared/fuzz/Cargo.lock

cd shared
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  # Listed first: a failure inside a process substitution would go unseen.
  listed="$(cargo fuzz list)"
  mapfile -t targets <<<"$listed"
fi
[ "${#targets[@]}" -gt 0 ] && [ -n "${targets[0]}" ] || { echo "fuzz: no targets" >&2; exit 1; }
mkdir -p "$CARGO_TARGET_DIR"
start=$SECONDS
cargo fuzz build -s none "${profile[@]}" 2>"$CARGO_TARGET_DIR/build.log" \
  || { cat "$CARGO_TARGET_DIR/build.log" >&2; exit 1; }
echo "fuzz: built the targets in $((SECONDS - start)) s"

logs="$CARGO_TARGET_DIR/logs"
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
  corpus="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  # New inputs go to the first corpus directory only: the seeds stay as committed.
  if cargo fuzz run -s none "${profile[@]}" "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1 >"$logs/$t.log" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log")"
    echo "fuzz: $t: ${runs:-?} runs in $seconds s (${rate:-?}/s), no crash"
  else
    echo "fuzz: $t FAILED" >&2
    tail -n 60 "$logs/$t.log" >&2
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in shared/fuzz/artifacts/" >&2
  exit 1
fi
