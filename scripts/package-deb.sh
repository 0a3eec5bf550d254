#!/usr/bin/env bash
# Builds target/debian/backpocket_<version>_<arch>.deb: a release build, then the files the
# package carries, each generated from the source of truth (the units and rule by
# `service install --package`, the man pages and completions from the command-line
# definition), then cargo-deb (installed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked --quiet
cargo build --release --locked
bin=target/release/backpocket
out=target/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$bin" service install --package --root "$out/root" --bin /usr/bin/backpocket >/dev/null
"$bin" man "$out/man"
"$bin" completions bash >"$out/completions/backpocket"
"$bin" completions zsh >"$out/completions/_backpocket"
"$bin" completions fish >"$out/completions/backpocket.fish"
# Stripped: the release profile keeps line tables for benchmarks and backtraces.
cargo deb --no-build --locked --strip --output target/debian/
