#!/usr/bin/env bash
# Runs every test of backpocket: the workspace's unit and end-to-end tests (real mounts, loop
# devices, kill -9, power cuts), the endurance harness's short profile, then pjdfstest
# against a real mount next to the plain folder, the package check and the Windows
# cross-check. Prints how long each stage took.
#
# On a fresh Debian or Ubuntu machine as root it first installs what the tests need. As an
# ordinary user it runs what it can; tests that need root say SKIPPED, loudly. As root nothing
# may be skipped: a SKIPPED line fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
source scripts/stages.sh

if [ "$(id -u)" = 0 ]; then
    stage "install test dependencies" bash scripts/install-test-deps.sh
else
    echo "NOTE: not root: the loop-device, power-cut and ordinary-user tests will be SKIPPED" >&2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# One debug build serves every test, pjdfstest's mount included: the fault-injection feature
# only adds hooks that stay inert unless BACKPOCKET_FAULTS or BACKPOCKET_CRASH_AT asks for a
# fault (the endurance harness does).
build=(cargo test --workspace --locked --features fault-injection)
stage "build the tests" "${build[@]}" --no-run

# Every test program, the endurance harness's short profile among them: rounds of random work
# through a real mount with every kind of fault injected at least once, each round restored
# and compared, on a pocket on XFS and then on exFAT (its seed is fixed here so that CI is
# repeatable: run it with --minutes N for new schedules; so is the seed of the random work on
# an exFAT pocket in tests/drives.rs, and of the two devices' random work in tests/devices.rs).
# The end-to-end tests mount many filesystems at once; two test threads keep the machine's
# two cores busy without starving the FUSE daemons.
all_tests() {
    BACKPOCKET_ENDURANCE_SEED=1 BACKPOCKET_EXFAT_SEED=1 BACKPOCKET_DEVICES_SEED=945308358 "${build[@]}" --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
}
# What failed, repeated at the end: CI shows only the tail of a long log, and a failure in an
# early test program would otherwise scroll out of it.
failure_digest() {
    echo "---- what failed ----" >&2
    grep -E '^(endurance: (FAILED|round [0-9]+: FAILED|kept)|---- .* stdout ----|test .* \.\.\. FAILED|thread .* panicked at|Difference|error: test failed)' "$log" | head -60 >&2 || true
    # The lines a failing test printed about itself (its assertion message and the context
    # after it), bounded.
    grep -A12 -E "panicked at|^endurance: FAILED" "$log" | head -200 >&2 || true
}
stage "unit, end-to-end and endurance tests" all_tests || { failure_digest; exit 1; }
cargo_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
endurance_rounds=$(grep -Eo '^endurance: [0-9]+ passed' "$log" | awk '{s+=$2} END {print s+0}')

run_pjdfstest() { bash tests/pjdfstest/run.sh 2>&1 | tee -a "$log"; }
stage "pjdfstest" run_pjdfstest
pjd_runs=$(grep -c '^pjdfstest-compare: ok' "$log" || true)

# What users install: `cargo install` from the repository and the .deb, installed with dpkg
# and removed again (root only: dpkg writes to the machine).
pkg_runs=0
if [ "$(id -u)" = 0 ]; then
    package() { bash scripts/check-package.sh 2>&1 | tee -a "$log"; }
    stage "package check" package
    pkg_runs=$(grep -c '^check-package: ok' "$log" || true)
else
    echo "SKIPPED scripts/check-package.sh: dpkg -i needs root; CI runs it as root" >&2
fi

# Windows: the WinFsp front-end, the journal and platform cross-checked for the Windows
# target, their tests run under wine (root installs mingw-w64 and wine).
win_runs=0
if [ "$(id -u)" = 0 ] || { command -v wine >/dev/null && command -v x86_64-w64-mingw32-gcc >/dev/null; }; then
    windows() { bash scripts/windows-check.sh 2>&1 | tee -a "$log"; }
    stage "windows cross-check" windows
    win_runs=$(grep -Eo '^windows-check: ok [0-9]+ tests passed' "$log" | awk '{s+=$3} END {print s+0}')
else
    echo "SKIPPED scripts/windows-check.sh: needs wine and mingw-w64 (root installs them); CI runs it" >&2
fi

stage_report
passed=$((cargo_passed + endurance_rounds + pjd_runs + pkg_runs + win_runs))
if [ "$(id -u)" = 0 ] && grep -q 'SKIPPED' "$log"; then
    echo "FAILED: as root nothing may be skipped, and these were:" >&2
    grep 'SKIPPED' "$log" | sort -u >&2
    echo "tests: $passed passed, 1 failed"
    exit 1
fi
echo "tests: $passed passed, 0 failed"
