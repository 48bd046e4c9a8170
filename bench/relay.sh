#!/usr/bin/env bash
# Relay benchmark in one lab run: single-session QUIC throughput direct vs
# through our relay vs through coturn (TURN), and N concurrent sessions
# through each relay (process RSS and CPU from /proc). Rewrites bench/relay.md.
# Needs root and coturn (`apt-get install -y coturn`).
# Usage: bench/relay.sh [secs_per_cell] [rounds] [sessions] [window_secs]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-3}"
ROUNDS="${2:-5}"
SESSIONS="${3:-1000}"
WINDOW="${4:-10}"
command -v turnserver >/dev/null || apt-get install -y coturn >/dev/null
cargo build --release --quiet -p macula_nat_core --bins --example bench_relay -p macula_nat_lab
TARGET="${CARGO_TARGET_DIR:-target}"
"$TARGET/release/macula-lab" reap >/dev/null 2>&1 || true
# 1,000 TURN allocations need 1,000 sockets in the benchmark and in coturn.
ulimit -n 65536 2>/dev/null || ulimit -n 20000 || true
LOG="$(mktemp)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
TABLES="$("$TARGET/release/examples/bench_relay" "$SECS" "$ROUNDS" "$SESSIONS" "$WINDOW" 2>"$LOG")"
{
  echo "# Relay: throughput and concurrent sessions, ours vs direct vs coturn"
  echo
  echo "Measured by \`bench/relay.sh $SECS $ROUNDS $SESSIONS $WINDOW\` ($(date -u +%Y-%m-%d), $(nproc) cores shared with other work,"
  echo "kernel $(uname -r), release build, $(turnserver --version 2>/dev/null | head -1 | sed 's/^/coturn /')). One NAT lab"
  echo "(network namespaces on one Linux bridge, veth links, no NAT in the way and no delay): nodes on public"
  echo "hosts \`n1\` and \`n2\` (both in the benchmark process, their sockets in the hosts' namespaces), our relay"
  echo "(\`macula-relay\`, its own process) on host \`relay\`, coturn's \`turnserver\` (\`--no-auth\`, UDP only) on host \`turn\`."
  echo
  echo "What each path is. All three carry the same QUIC connection: our node's QUIC (quinn, ed25519 node"
  echo "certificates, the same transport settings and message framing), A on n1 sending to B on n2."
  echo
  echo "* **direct QUIC**: A dials B's address; GSO/GRO batches straight between the two node sockets."
  echo "* **QUIC via our relay**: B holds a reservation at the relay, A opens a session there and dials B's node"
  echo "  key at a virtual address routed into the session; every QUIC packet travels as a relay frame"
  echo "  (0x90 + session id, 9 bytes) A -> relay -> B and back, on the nodes' own sockets."
  echo "* **QUIC via coturn (TURN)**: A allocates on coturn and binds a channel to B (RFC 8656 ChannelData, 4 bytes);"
  echo "  A's QUIC datagrams go through a TURN client socket of A's (not the node socket: ChannelData looks"
  echo "  like QUIC to the node's demultiplexer) and are injected into A's QUIC endpoint on the way back; B"
  echo "  talks plain UDP with coturn's relayed address. One allocation: each packet crosses coturn once, as"
  echo "  each crosses our relay once. Like our nodes' relay frames, A's ChannelData leave as GSO batches."
  echo
  echo "Throughput: A sends 64 KiB messages for ${SECS} s, then waits until B has received every one; the rate"
  echo "counts that whole time (payload bytes, MiB = 2^20). Fresh nodes, link and allocation per cell; the"
  echo "three paths run in a rotating order in every round. CPU-s per GiB: CPU seconds (user + system from"
  echo "/proc) per GiB delivered, for the benchmark process (both nodes) and for the relay process."
  echo "Sessions: ${SESSIONS} QUIC connections from 10 nodes on n1 to 10 nodes on n2 through a fresh relay process"
  echo "(ours: one control connection per node plus sessions; coturn: one allocation and channel per"
  echo "connection). Idle = QUIC keep-alives only (every 5 s per end); light = each connection also sends one"
  echo "1 KiB message per second, echoed back. RSS = VmRSS of the relay process at the end of the window, CPU ="
  echo "its user + system time over the ${WINDOW} s window; packets/s = datagrams in + out at the 10 target nodes"
  echo "(each relayed packet arrives at or leaves one of them once; ours also carry the nodes' relay control"
  echo "connections), with our relay's own forwarded-frame count next to it (from its stats line every"
  echo "500 ms, so its window is off by up to half a second)."
  echo
  echo "Load average (1/5/15 min) before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Other processes share the 2 cores, so single rounds vary; compare medians and ranges."
  echo
  echo "$TABLES"
  echo
  echo "Before the relay data path sent GSO batches (commits \"relay data path, sender\" and \"relay data"
  echo "path, relay\"), the same run measured ours at 57.4 MiB/s, 18 % of direct (312.5 MiB/s), with the"
  echo "relay process at 5.57 CPU-s per GiB and the nodes at 8.35: one sendto per frame on the sender and"
  echo "on the relay was three quarters of their CPU (perf)."
  echo
  echo "Every round:"
  echo
  echo '```'
  cat "$LOG"
  echo '```'
} > bench/relay.md
rm -f "$LOG"
cat bench/relay.md
