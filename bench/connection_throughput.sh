#!/usr/bin/env bash
# macula_connection:send/2 throughput between two BEAM VMs on loopback, in
# one run with plain quinn and our node-socket QUIC in Rust (bench_quic, one
# cell per call), rounds interleaved. Rewrites bench/connection_throughput.md.
# Usage: bench/connection_throughput.sh [seconds_per_cell] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-3}"
ROUNDS="${2:-5}"
cargo build --release --quiet -p macula_nat_core --example bench_quic
rebar3 compile >/dev/null
TARGET="${CARGO_TARGET_DIR:-target}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
erlc -o "$tmp" bench/connection_bench.erl
erl -noshell +S 2 -pa _build/default/lib/macula_nat/ebin -pa "$tmp" \
  -kernel logger_level warning \
  -run connection_bench main "$SECS" "$ROUNDS" "$(realpath "$TARGET/release/examples/bench_quic")" \
  > "$tmp/table.md" 2> "$tmp/rounds.log" || { cat "$tmp/table.md" "$tmp/rounds.log" >&2; exit 1; }
{
  cat "$tmp/table.md"
  echo
  echo "Every round:"
  echo
  echo '```'
  cat "$tmp/rounds.log"
  echo '```'
} > bench/connection_throughput.md
cat bench/connection_throughput.md
