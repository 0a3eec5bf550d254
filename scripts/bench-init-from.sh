#!/usr/bin/env bash
# init --from onto an exFAT stick (through the new pocket's private mount) against a plain
# restore onto the same stick and cp -a of the same files onto it; each timing ends with
# `sync`, the outputs are removed and flushed between timings, 3 rounds alternating.
# Needs root (loop device), exfatprogs and exfat-fuse, and a release build:
#   cargo build --release && sudo scripts/bench-init-from.sh
set -euo pipefail
B=${B:-$(dirname "$0")/../target/release/backpocket}
T=$(mktemp -d /var/tmp/bp-bench-init-from.XXXXXX)
L=
cleanup() {
    mountpoint -q "$T/ex" && umount "$T/ex"
    [ -n "$L" ] && losetup -d "$L"
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$T/src" "$T/ex"
export BACKPOCKET_PASSPHRASE=bench
"$B" init "$T/src" >/dev/null
"$B" dest add v "$T/vault" --pocket "$T/src" >/dev/null 2>&1
# A source tree (/usr/include, without its links, which exFAT cannot hold) and four 32 MiB files.
cp -a /usr/include "$T/src/include"
find "$T/src/include" -type l -delete
for i in 1 2 3 4; do head -c 32M /dev/urandom >"$T/src/big$i"; done
"$B" sync --pocket "$T/src" >/dev/null 2>&1
echo "data: $(du -sh --exclude=.backpocket "$T/src" | cut -f1), $(find "$T/src" -path "$T/src/.backpocket" -prune -o -type f -print | wc -l) files"
truncate -s 2G "$T/ex.img"
mkfs.exfat "$T/ex.img" >/dev/null
L=$(losetup -f --show "$T/ex.img")
mount.exfat-fuse "$L" "$T/ex"
timed() {
    local s e
    s=$(date +%s.%N)
    "$@" >"$T/out" 2>&1 || { cat "$T/out" >&2; return 1; }
    sync
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
# (/usr/include holds names that differ only in case, xt_RATEEST.h and xt_rateest.h: cp fails
# on the second of each, which exFAT takes for the first, and goes on.)
copy() {
    mkdir "$T/ex/cp"
    cp -r --preserve=timestamps "$T/src/include" "$T/src"/big* "$T/ex/cp/" 2>/dev/null || true
}
for r in 1 2 3; do
    a=$(timed "$B" init --from "$T/vault" "$T/ex/pocket"); rm -rf "$T/ex/pocket"; sync
    b=$(timed "$B" restore --from "$T/vault" --to "$T/ex/plain"); rm -rf "$T/ex/plain"; sync
    c=$(timed copy); rm -rf "$T/ex/cp"; sync
    echo "round $r: init --from $a s, restore $b s, cp $c s"
done
