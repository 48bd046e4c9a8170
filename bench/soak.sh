#!/usr/bin/env bash
# Soak (issue 18): five BEAM VMs on loopback (a public node serving as
# rendezvous and relay, four honest nodes joined at it, each on a loopback
# address of its own, sys.config only),
# 100 connections between the honest ones (a ring) exchanging sequenced terms for the
# whole run, and the hostile peer (examples/hostile_peer.rs) running every
# attack at once against all of them from an address of its own. Rewrites bench/soak.md: per-minute
# memory of each VM, losses and reorders (must be 0), honest connect times,
# amplification and attack volumes, and the verdict on memory.
# Usage: bench/soak.sh [minutes] [report]   (default 10, bench/soak.md)
# Root (the hostile peer spoofs 127.0.0.66 through a raw socket).
# SOAK_HOSTILE_ARGS="--attacks a,b --scale 0.5" passes options to the
# hostile peer (e.g. one attack at a time, to tell their effects apart).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
MIN="${1:-10}"
OUT="${2:-bench/soak.md}"
sh native/build_nif.sh >&2
rebar3 compile >/dev/null
cargo build --release --quiet -p macula_nat_core --example hostile_peer >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
erlc -o "$tmp" bench/soak.erl
erl -noshell -pa _build/default/lib/macula_nat/ebin -pa "$tmp" -kernel logger_level warning \
  -run soak main "$MIN" "$PWD/target/release/examples/hostile_peer" > "$tmp/report.md" 2> "$tmp/soak.log" \
  || { cat "$tmp/report.md"; tail -50 "$tmp/soak.log" >&2; exit 1; }
cp "$tmp/report.md" "$OUT"
tail -5 "$tmp/soak.log" >&2
cat "$OUT"
