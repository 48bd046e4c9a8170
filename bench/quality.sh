#!/usr/bin/env bash
# Connection quality and black-hole failover (issue 19): what monitoring
# costs an idle connection (1,000 idle connections on loopback, three
# settings side by side) and, in the lab, time from a black hole to the
# relay, to traffic again, and back to direct after the block lifts.
# Needs root (network namespaces). Rewrites bench/quality.md.
# Usage: bench/quality.sh [failover tries] [idle connections] [idle seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TRIES="${1:-20}"; CONNS="${2:-1000}"; SECS="${3:-20}"
cargo build -q --release -p macula_nat_core -p macula_nat_lab --bins
cargo build -q --release -p macula_nat_core --example bench_idle_quality --example bench_failover
TARGET="${CARGO_TARGET_DIR:-target}"
"$TARGET/release/macula-lab" reap >/dev/null
IDLE="$("$TARGET/release/examples/bench_idle_quality" "$CONNS" "$SECS")"
FAIL="$("$TARGET/release/examples/bench_failover" "$TRIES")"
{
  echo "# Connection quality: monitoring cost and black-hole failover"
  echo
  echo "Measured by \`bench/quality.sh $TRIES $CONNS $SECS\` at commit $(git rev-parse --short HEAD) ($(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores shared with other work, kernel $(uname -r), release build)."
  echo
  echo "## Idle connections"
  echo
  echo "$CONNS idle connections between two nodes on loopback in one process, measured over $SECS s after 3 s of"
  echo "settling, one setting after the other in one run. Bytes are UDP payload sent by both nodes' sockets."
  echo "\`app+monitor\` is what every application connection costs now (1 s keep-alive from the dialler,"
  echo "each side's quality monitor sampling 4x/s); \`control\` is a control connection's (rendezvous, relay)."
  echo
  echo "$IDLE"
  echo
  echo "## Black hole -> relay -> direct (lab)"
  echo
  echo "Two kernel full cones behind plain routers on a routed internet, a public rendezvous that also relays,"
  echo "both nodes reserved there (\`macula-connect\`). Per try: a fresh direct connection streams sequenced"
  echo "messages, one every 2 ms, echoed; after 2 s the direct path is black-holed at the listener's router"
  echo "(the relay spared) for 6 s, then lifted. Times are the test's, from the \`lab.blackhole\` call to the"
  echo "stream's event lines (method changes, the first echo after a gap of 500 ms or more). Silent = 2.2 s"
  echo "without a datagram; the rest of \"traffic again\" is QUIC's probe timeout backing off during the hole."
  echo
  echo "$FAIL"
} > bench/quality.md
cat bench/quality.md
