#!/usr/bin/env bash
# The main job, end to end on this machine: make a pocket, mount it, work in it, and watch the
# journal record every change; then change the drive behind backpocket's back and let a scan
# find it. Needs FUSE (root, or an ordinary user with fuse3 installed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --locked
bp="$PWD/target/release/backpocket"
demo=$(mktemp -d /tmp/backpocket-demo.XXXXXX)
trap 'mountpoint -q "$demo/mnt" && "$bp" unmount "$demo/mnt" >/dev/null; rm -rf "$demo"' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

mkdir -p "$demo/usb/pocket" "$demo/mnt"
echo "notes from before backpocket" > "$demo/usb/pocket/notes.txt"

say backpocket init "$demo/usb/pocket"
"$bp" init "$demo/usb/pocket"
say backpocket mount --daemon "$demo/usb/pocket" "$demo/mnt"
"$bp" mount --daemon "$demo/usb/pocket" "$demo/mnt"

say "work in the mount: write, make folders, rename, link"
cd "$demo/mnt"
mkdir -p docs/2026
printf 'quarterly report\n' > docs/2026/report.txt
head -c 5000000 /dev/urandom > docs/photo.raw
mv notes.txt docs/notes.txt
ln -s docs/2026/report.txt latest
sync docs/2026/report.txt
ls -lR "$demo/mnt"

say backpocket journal status
"$bp" journal status
say backpocket journal log
"$bp" journal log
say backpocket journal status --json
"$bp" journal status --json
cd /

say backpocket unmount "$demo/mnt"
"$bp" unmount "$demo/mnt"

say "the drive on a machine without backpocket: edit the pocket folder directly"
echo "edited elsewhere" >> "$demo/usb/pocket/docs/notes.txt"
rm "$demo/usb/pocket/docs/photo.raw"
say backpocket scan --pocket "$demo/usb/pocket"
"$bp" scan --pocket "$demo/usb/pocket"
say backpocket journal status --pocket "$demo/usb/pocket"
"$bp" journal status --pocket "$demo/usb/pocket"
