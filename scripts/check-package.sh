#!/usr/bin/env bash
# CI's check of what users install: `cargo install` from the repository, and the .deb
# (built by scripts/package-deb.sh) installed with dpkg, its files in place and working, then
# removed without a trace. Runs as root on a throwaway machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

fail() { echo "check-package: FAILED: $*" >&2; exit 1; }

bash scripts/package-deb.sh
deb=$(ls -t target/debian/backpocket_*.deb | head -1)

# cargo install from the repository (sharing the release build just made).
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
CARGO_TARGET_DIR=target cargo install --path . --root "$root" --locked --quiet
"$root/bin/backpocket" --version | grep -q '^backpocket ' || fail "cargo install gave no working binary"
echo "check-package: ok cargo install --path ."

dpkg -i "$deb" >/dev/null
for f in /usr/bin/backpocket \
    /usr/lib/udev/rules.d/90-backpocket.rules \
    /usr/lib/systemd/system/backpocket-attach@.service \
    /usr/lib/systemd/user/backpocket.service \
    /usr/share/man/man1/backpocket.1.gz \
    /usr/share/man/man1/backpocket-eject.1.gz \
    /usr/share/bash-completion/completions/backpocket \
    /usr/share/zsh/vendor-completions/_backpocket \
    /usr/share/fish/vendor_completions.d/backpocket.fish; do
    [ -e "$f" ] || fail "the package did not install $f"
done
grep -q '^ExecStart=/usr/bin/backpocket service attach /dev/%I$' /usr/lib/systemd/system/backpocket-attach@.service \
    || fail "the attach unit does not run the installed binary"
grep -q '^ExecStart=/usr/bin/backpocket service run --mountpoint %h/Pocket$' /usr/lib/systemd/user/backpocket.service \
    || fail "the user unit does not run the installed binary"
/usr/bin/backpocket --version | grep -q '^backpocket ' || fail "the installed binary does not run"
zcat /usr/share/man/man1/backpocket-eject.1.gz | grep -q 'keep\\-drive\\-mounted' || fail "the eject man page is incomplete"
bash -c 'source /usr/share/bash-completion/completions/backpocket && complete -p backpocket' >/dev/null \
    || fail "the bash completion does not load"
dpkg -r backpocket >/dev/null
[ ! -e /usr/bin/backpocket ] && [ ! -e /usr/lib/udev/rules.d/90-backpocket.rules ] || fail "dpkg -r left files behind"
echo "check-package: ok $(basename "$deb") installs, works and removes cleanly"
