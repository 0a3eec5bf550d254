#!/usr/bin/env bash
# The main job, end to end on this machine: a pocket on a "USB drive" with a vault on a
# "backup disk", mounted; work in it and watch the journal drain to the vault by itself; then
# restore and check. Needs FUSE (root, or an ordinary user with fuse3 installed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --locked
bp="$PWD/target/release/backpocket"
demo=$(mktemp -d /tmp/backpocket-demo.XXXXXX)
trap 'mountpoint -q "$demo/mnt" && "$bp" unmount "$demo/mnt" >/dev/null; rm -rf "$demo"' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
# The demo's passphrase and remembered key stay inside the demo folder.
export XDG_CONFIG_HOME="$demo/config"
export BACKPOCKET_PASSPHRASE="demo passphrase, not a good one"

mkdir -p "$demo/usb/pocket" "$demo/backupdisk" "$demo/mnt"
echo "notes from before backpocket" > "$demo/usb/pocket/notes.txt"

say backpocket init "$demo/usb/pocket"
"$bp" init "$demo/usb/pocket"
cd "$demo/usb/pocket"
say backpocket dest add home-disk "$demo/backupdisk/vault"
"$bp" dest add home-disk "$demo/backupdisk/vault"
say backpocket dest add office-copy "$demo/backupdisk/mirror" --mode mirror
"$bp" dest add office-copy "$demo/backupdisk/mirror" --mode mirror
say backpocket mount --daemon "$demo/usb/pocket" "$demo/mnt"
"$bp" mount --daemon "$demo/usb/pocket" "$demo/mnt"

say "work in the mount: write, make folders, rename, link"
cd "$demo/mnt"
mkdir -p docs/2026
printf 'quarterly report\n' > docs/2026/report.txt
head -c 50000000 /dev/urandom > docs/photo.raw
mv notes.txt docs/notes.txt
ln -s docs/2026/report.txt latest
say backpocket journal status      "# right after the writes"
"$bp" journal status
sleep 2
say backpocket journal status      "# two seconds later: drained by the mount's replicator"
"$bp" journal status
say backpocket journal status --json
"$bp" journal status --json

say "edit the report again; the vault keeps both versions"
printf 'quarterly report, revised\n' > docs/2026/report.txt
sleep 1
say backpocket log docs/2026/report.txt
"$bp" log docs/2026/report.txt
cd /

say backpocket journal status --watch "# a live view while a bigger file goes out (in place at a terminal; Ctrl-C ends it)"
"$bp" journal status --watch --interval 0.25 --pocket "$demo/mnt" > "$demo/watch.txt" &
watch_pid=$!
head -c 200000000 /dev/urandom > "$demo/mnt/docs/video.raw"
sleep 3
kill -INT "$watch_pid"
wait "$watch_pid" || true
# The last refresh that measured a rate while sending, else one while sending, else the last.
awk -v RS= '/sending[^\n]*\/s/ {best=$0} /sending/ {some=$0} {last=$0}
    END {print (best != "" ? best : (some != "" ? some : last))}' "$demo/watch.txt"

say backpocket eject "$demo/mnt"   "# last drain, unmount, flush; then the verdict"
"$bp" eject "$demo/mnt"

say "the drive is lost: restore from the vault with only the passphrase, and check"
say backpocket restore --from "$demo/backupdisk/vault" --to "$demo/restored"
(cd / && "$bp" restore --from "$demo/backupdisk/vault" --to "$demo/restored")
say diff -r "$demo/usb/pocket" "$demo/restored"
diff -r --exclude=.backpocket "$demo/usb/pocket" "$demo/restored" && echo "identical"
say backpocket verify "$demo/backupdisk/vault" --read-data
(cd / && "$bp" verify "$demo/backupdisk/vault" --read-data)
say ls "$demo/backupdisk/mirror/docs"   "# the mirror: plain files anyone can open"
ls -l "$demo/backupdisk/mirror/docs"
