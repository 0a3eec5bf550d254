#!/usr/bin/env bash
# The Windows cross-check, on Linux: the crates that build for Windows (fs-driver with its
# WinFsp front-end, the journal, platform, the replicator) are type-checked and linted for
# x86_64-pc-windows-gnu, then their tests run under wine. The front-end is checked against winfsp-sys's pre-generated
# bindings (fs-driver's `winfsp-check` feature): a real build needs the WinFsp SDK and the
# MSVC target, and mounting on Windows is not run here.
#
# As root it installs what it needs (the target through rustup, mingw-w64 and wine from
# Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
target=x86_64-pc-windows-gnu
crates=(-p fs-driver -p journal -p platform -p replicator)

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
need=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine wine64)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo clippy --target "$target" "${crates[@]}" --features fs-driver/winfsp-check \
    --all-targets --locked -- -D warnings
echo "windows-check: ok clippy for $target (fs-driver with the WinFsp front-end, journal, platform, replicator)"

# Debian's wine 8.0 lacks bcryptprimitives.dll, where Rust's std finds ProcessPrng: a shim.
shim=target/wine-shim
mkdir -p "$shim"
x86_64-w64-mingw32-gcc -O2 -shared -o "$shim/bcryptprimitives.dll" \
    scripts/wine/bcryptprimitives.c scripts/wine/bcryptprimitives.def -ladvapi32
export WINEPREFIX="$PWD/target/wine-prefix" WINEPATH="$PWD/$shim" WINEDEBUG=-all
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
log=$(mktemp)
# wineserver quits by itself a few seconds after its last program ends; a test program
# started in that moment loses its server ("wine client error: recvmsg: Connection reset by
# peer", which failed a CI run). So one server is kept alive for the whole run (-p) and ended
# when the script ends, however it ends.
#
# The server and the services wine starts beside the first program (winedevice, plugplay,
# explorer) then outlive every test program, and they keep the standard output they were
# started with: a pipe of ours would never see its end, and a `| tee` waited on it until CI's
# time ran out. So they are started here with no standard I/O at all, and the tests write to
# a file, under a time limit, so no wine process can hold this script up again.
trap 'rm -f "$log"; wineserver -k 2>/dev/null || true' EXIT
wineboot --init </dev/null >/dev/null 2>&1 || true
wineserver -w
wineserver -p </dev/null >/dev/null 2>&1
wineboot </dev/null >/dev/null 2>&1 || true
status=0
timeout --kill-after=30 1800 cargo test --target "$target" "${crates[@]}" --locked \
    </dev/null >"$log" 2>&1 || status=$?
cat "$log"
if [ "$status" != 0 ]; then
    why="ended with status $status"
    [ "$status" = 124 ] && why="took longer than 30 minutes and were stopped"
    echo "windows-check: FAILED: the tests under wine $why" >&2
    exit 1
fi
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
echo "windows-check: ok $passed tests passed under wine"
