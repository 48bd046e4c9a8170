#!/bin/sh
# Builds the NIF with cargo and installs it as priv/libmacula_nat_nif.so.
# Called by rebar3 (pre_hooks) and Mix (the :macula_nat_cargo compiler).
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
cargo build --quiet --release -p macula_nat_nif
mkdir -p priv
# Copy then rename: a running VM keeps the old file mapped and never sees a
# half-written library.
cp target/release/libmacula_nat_nif.so priv/.libmacula_nat_nif.so.tmp
mv priv/.libmacula_nat_nif.so.tmp priv/libmacula_nat_nif.so
