#!/usr/bin/env bash
# QUIC message throughput on loopback: plain quinn (own socket) next to QUIC on
# the node's shared STUN socket, same TLS/transport/framing. Rewrites
# bench/quic_throughput.md. Usage: bench/quic_throughput.sh [seconds_per_run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-3}"
ROUNDS="${2:-5}"
cargo build --release --quiet -p macula_nat_core --example bench_quic
TARGET="${CARGO_TARGET_DIR:-target}"
LOG="$(mktemp)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
TABLE="$("$TARGET/release/examples/bench_quic" "$SECS" "$ROUNDS" 2>"$LOG")"
{
  echo "# QUIC throughput: node socket vs plain quinn"
  echo
  echo "Measured by \`bench/quic_throughput.sh $SECS $ROUNDS\` ($(date -u +%Y-%m-%d), $(nproc) cores shared with other work,"
  echo "kernel $(uname -r), release build, loopback 127.0.0.1). One sender connection, one receiver,"
  echo "both in this process on the library's 2-worker tokio runtime. Each cell sends messages of the"
  echo "given size on one connection for ${SECS} s, then waits until the receiver has acknowledged all"
  echo "of them; rates count that whole time. Both paths use the same TLS (ed25519 node certificates),"
  echo "transport settings and message framing (\`Connection\`): \"plain quinn\" runs on quinn's own UDP"
  echo "socket code (\`QuicEndpoint::standalone\`), \"node socket\" on the node's socket where the node's"
  echo "receive loop demultiplexes STUN from QUIC (\`Node::quic\`)."
  echo
  echo "Load average (1/5/15 min) before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Other processes share the 2 cores, so single rounds vary; compare medians and ranges."
  echo
  echo "$TABLE"
  echo
  echo "Every round:"
  echo
  echo '```'
  cat "$LOG"
  echo '```'
} > bench/quic_throughput.md
rm -f "$LOG"
cat bench/quic_throughput.md
