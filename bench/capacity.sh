#!/usr/bin/env bash
# Capacity of one rendezvous and one relay on this machine, in one command:
# examples/bench_capacity joins 1,000 and then 10,000 node identities (one
# process, one UDP socket and ed25519 key each) to a rendezvous running as
# its own macula-node process; at 10,000 also Connect throughput, a relay
# holding 10,000 reservations, and cross- vs same-rendezvous time to first
# message (private mainline swarm). Rewrites bench/capacity.md. About 6 min.
# Usage: bench/capacity.sh [idle_secs] [cross_connects]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
IDLE="${1:-30}"
CROSS="${2:-50}"
RATES="50,100,200,400,800,1600"
cargo build --release --quiet -p macula_nat_core --bins --example bench_capacity
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/release"
# 10,000 node sockets in one process: the usual 1024 descriptors are not
# enough. As many as the hard limit allows (raising that needs
# CAP_SYS_RESOURCE).
ulimit -n "$(ulimit -Hn)"
LOG="$(mktemp)"
OUT1="$(mktemp)"
OUT2="$(mktemp)"
# Every server is a child of bench_capacity, killed when it exits; the trap
# covers an interrupted run.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$LOG" "$OUT1" "$OUT2"' EXIT
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START=$(date +%s)
"$BIN/examples/bench_capacity" --bin "$BIN" --nodes 1000 --idle-secs "$IDLE" >"$OUT1" 2>>"$LOG"
"$BIN/examples/bench_capacity" --bin "$BIN" --nodes 10000 --idle-secs "$IDLE" --rates "$RATES" --step-secs 4 --relay --cross "$CROSS" >"$OUT2" 2>>"$LOG"
TOOK=$(( $(date +%s) - START ))
{
  echo "# Capacity: one rendezvous and one relay"
  echo
  echo "Measured by \`bench/capacity.sh $IDLE $CROSS\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores"
  echo "shared with other work ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB), kernel $(uname -r),"
  echo "release build; RLIMIT_NOFILE $(ulimit -n)); ${TOOK} s in all. Load average (1/5/15 min) before: $LOAD_BEFORE;"
  echo "after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "Two runs of \`examples/bench_capacity\`: \`--nodes 1000 --idle-secs $IDLE\`, then"
  echo "\`--nodes 10000 --idle-secs $IDLE --rates $RATES --step-secs 4 --relay --cross $CROSS\`."
  echo "The load process holds every node identity: each its own ed25519 key and its own UDP socket"
  echo "(a \`Node\`), joined with \`Signal::join_with\`, the code nodes join with (QUIC handshake with node"
  echo "certificates, \`Hello(Control)\`, \`Registered\`, then the control connection's keep-alive). The"
  echo "nodes bind 127.1.x.y, four per address, so the servers see many source IPs with a few nodes behind"
  echo "each, as on the Internet. The rendezvous (R1), the relay and the second rendezvous (R2) are"
  echo "\`macula-node\` processes of their own (\`log_level = \"error\"\`), so their RSS (VmRSS) and CPU"
  echo "(user + system) come from \`/proc/<pid>\` alone, their datagrams from their metrics"
  echo "(\`macula_node_socket_datagrams_total\`). RSS per joined node = (RSS after the idle window - RSS"
  echo "before the first join) / nodes. Primer TTL probes are off in the load process (\`primers = false\`):"
  echo "they are ICMP-limited probes of each node's own path, no work of the rendezvous."
  echo
  echo "Limits raised, and why: each joined node and each relay client holds one incoming QUIC connection"
  echo "at the server, whose default cap is 1024 in total (\`ConnLimits\`): the servers run with"
  echo "\`[node] max_connections\` = nodes + 2048 (new in macula-node's config; an operator serving more"
  echo "than ~1,000 nodes must raise it too). The per-IP cap (32) stays at its default (4 nodes per IP"
  echo "here). The load process needs one descriptor per node socket: \`ulimit -n\` at the hard limit"
  echo "($(ulimit -Hn) here). The rendezvous itself needs one socket whatever the node count; the fd budget"
  echo "(\`fd_budget\`: extra sockets for birthday punching and detection) is not touched by joins,"
  echo "Connects or reservations."
  echo
  cat "$OUT1"
  cat "$OUT2"
  echo "Progress log:"
  echo
  echo '```'
  cat "$LOG"
  echo '```'
} > bench/capacity.md
cat bench/capacity.md
