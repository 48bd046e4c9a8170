#!/usr/bin/env bash
# Capacity of one rendezvous and one relay on this machine, in one command:
# examples/bench_capacity joins 1,000 and then 10,000 node identities (one
# process, one UDP socket and ed25519 key each) to a rendezvous running as
# its own macula-node process; at 10,000 also Connect throughput, a relay
# taken to 10,000 reservations in steps, and cross- vs same-rendezvous time
# to first message (private mainline swarm). Rewrites bench/capacity.md.
# About 9 to 10 minutes.
# Usage: bench/capacity.sh [idle_secs] [cross_connects]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
IDLE="${1:-30}"
CROSS="${2:-50}"
RATES="50,100,200,400,800,1200"
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
run() {
  "$BIN/examples/bench_capacity" --bin "$BIN" "$@" 2>>"$LOG" || { cat "$LOG" >&2; exit 1; }
}
# Nodes as they are built (pinging their home every second), then the
# rest at 10,000 without the pings (see the reading: with them this machine
# does not hold 10,000).
run --nodes 1000 --idle-secs "$IDLE" >"$OUT1"
run --nodes 5000 --idle-secs "$IDLE" >>"$OUT1"
run --nodes 10000 --idle-secs "$IDLE" >>"$OUT1"
run --nodes 10000 --idle-secs "$IDLE" --no-home-ping --rates "$RATES" --step-secs 4 --relay --cross "$CROSS" >"$OUT2"
TOOK=$(( $(date +%s) - START ))
{
  echo "# Capacity: one rendezvous and one relay"
  echo
  echo "Measured by \`bench/capacity.sh $IDLE $CROSS\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores"
  echo "shared with other work ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB), kernel $(uname -r),"
  echo "release build; RLIMIT_NOFILE $(ulimit -n)); ${TOOK} s in all. Load average (1/5/15 min) before: $LOAD_BEFORE;"
  echo "after: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "Four runs of \`examples/bench_capacity\`: \`--nodes 1000\`, \`5000\` and \`10000\` with \`--idle-secs $IDLE\`"
  echo "(nodes as built: each pings its home rendezvous every second), then"
  echo "\`--nodes 10000 --idle-secs $IDLE --no-home-ping --rates $RATES --step-secs 4 --relay --cross $CROSS\`"
  echo "(\`SignalConfig::ping_every\` None: with the pings this machine does not hold 10,000, see the reading)."
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
  echo "What the tables count. Idle: the nodes' control connections only: each node pings its home"
  echo "rendezvous every second (\`Ping\`, answered \`Pong\`; \`macula_nat_proto::homes::PING_EVERY\`, so that a dead"
  echo "home is noticed within 3 s) and its QUIC keep-alive (\`QuicConfig::keep_alive\`, 5 s) covers silences;"
  echo "without the pings about 0.2 datagrams/s each way per node. Connect latency: \`connect_detailed\` from call to connection, i.e. \`Connect\` -> \`Incoming\` ->"
  echo "\`Answer\` -> \`Answered\` + \`Go\` through the rendezvous, then the pair's own QUIC handshake (a direct"
  echo "dial: public profiles on loopback). The load process runs both ends of every session (two handshakes'"
  echo "crypto per session), so compare its CPU with the rendezvous': whichever saturates first sets the"
  echo "rate where latency doubles. Relay: each reservation is a control connection whose client pings every"
  echo "1.5 s while no session runs on it (\`relay::client\` \`IDLE_PING_EVERY\`, 7.5 s without a Pong = dead;"
  echo "500 ms and 2.5 s once sessions run on it), so about 1.3 datagrams/s in and 0.7 out per idle"
  echo "reservation (ping, pong, acknowledgements). Time to first"
  echo "message: from \`connect_detailed\` to the target's accepted connection receiving the initiator's"
  echo "first message; every cross-rendezvous connect is the first of a fresh initiator (empty profile"
  echo "cache, no guest connection yet) to a target of its own (no lookup helps the next), so each pays R1's"
  echo "\`Unknown\`, a full mainline lookup of the target's signed record, a QUIC handshake and registration"
  echo "at R2 as a guest, then the session; the same-rendezvous connects alternate with them, from fresh"
  echo "initiators too."
  echo
  cat "$OUT1"
  cat "$OUT2"
  # Written for the committed run; the mechanisms hold on any run, the
  # figures quoted are that run's (the tables above are this one's).
  cat <<'READING'
## Reading

* **The homes' 1 s `Ping` (917b9ca) is most of a rendezvous' idle cost.** Each node pings each home
  rendezvous every second (`macula_nat_proto::homes::PING_EVERY`) and rejoins it after 3 s without a
  message (`SILENT_AFTER`): 2 datagrams/s in and 1 out per node (Ping, Pong, acknowledgements)
  against about 0.3 each way without the pings. At 10,000 nodes that is about 43 % of one core at
  idle against 15 % without the pings (about 0.03 ms of CPU per ping), and 41 KiB of RSS per node
  against 34; they held here (10,000 registrations, no rejoin). A first version of this benchmark
  (run at load average ~6, other engineers' builds and lab VMs on the 2 cores) saw them collapse:
  5,000 nodes ended with 3,500 registered after 27,293 registrations, 10,000 with 6,340 after
  27,294. Pongs (or the load process's pings) ran late by 3 s, every node judged its rendezvous
  silent within the same second and rejoined at once, and the handshakes fed the overload. Since
  then (this run) a node waits 0.5-1 s drawn at random before its first rejoin and backs off
  with jitter (each wait drawn from the upper half of a backoff doubling from 250 ms to 8 s;
  `homes::first_rejoin_wait`, `jittered`), so the rejoins of a silent rendezvous' nodes are
  spread out rather than a storm. Not done: a slower ping, and answering `Ping` without the
  rendezvous' global state lock (every message of every peer takes it).
* **Rendezvous memory and idle cost without the pings are linear and small.** About 34 KiB of RSS
  per joined node at 10,000 (one QUIC connection with its TLS keys, the peer's entry, its reader and
  writer tasks and send queue); nothing else grows with the node count. At idle each node costs
  about 0.24-0.3 datagrams/s each way (its 5 s keep-alive and the acknowledgement), 10,000 nodes
  about 9-13 % of one core. Part of that is per second, not per packet: `tell_moved` compares every
  peer's connection address with the one it was told once a second (`MOVED_SCAN`), 10,000
  lock-and-compare steps per tick; no code path scans the peers per packet or per message.
* **Connect throughput is not limited by the rendezvous here.** p50 stays at 1-2 ms up to 400
  sessions/s; at 800 offered the load process, which runs both ends of every session (two QUIC
  handshakes per session besides signalling), saturates its share of the 2 cores and latency
  grows, while the rendezvous uses about 20-25 % of one core. Its CPU rises from about 10-13 % at
  idle to 14-21 % at 400 sessions/s (runs so far): at most about 0.2 ms of CPU per session (five
  messages relayed: `Incoming`, `Answer` -> `Answered`, two `Go`s), so a rendezvous core would
  relay thousands of sessions/s; 50 Connects/s per peer (`RendezvousLimits`) never binds when many
  peers connect.
* **Joins.** 256 nodes joining at once: under load some joins of the burst are refused once (the
  rendezvous' accept backlog, 64 handshaken connections not yet taken, closes the overflow with
  `BUSY`) and succeed on the retry 250 ms later, as a node's reconnect backoff does.
* **One relay holds 10,000 reservations** (this run: all 10,000 held, 30 % of one core at idle,
  about 41 KiB each, a relayed connect 5 ms p50 at that load). A first version of this benchmark
  saw it collapse at the 5,000 or 10,000 step: every link pinged every 500 ms (4 datagrams/s in
  and 2 out per reservation, 12-14 % of one core per 1,000), pongs came late by more than 2.5 s
  under load, clients declared the relay dead and re-dialled every 500 ms with no backoff, and
  the handshakes fed the overload. Now a link with no session on it pings every 1.5 s and is
  dead after 7.5 s of silence (a dead relay leaves the node's reservations and record within
  about 8 s; links carrying sessions keep 500 ms and 2.5 s, so relayed connections fail over as
  fast as before), and a wanted relay that could not be reached is dialled again after a
  jittered, doubling backoff (0.5 s to 30 s, each wait from the upper half;
  `relay::client::REDIAL_FIRST`, `REDIAL_MAX`). About 1.3 datagrams/s in and 0.7 out per idle
  reservation, 3-4 % of one core per 1,000. An operator raises `max_reservations` (default
  1,000) and `[node] max_connections` together.
* **Cross-rendezvous costs one DHT lookup.** On loopback with a private mainline swarm, a first
  cross-rendezvous connect (fresh initiator, cold cache, guest join at R2) reaches its first message
  in about 110-115 ms p50 (p95 about 120-125 ms) against 2-3 ms p50 for a same-rendezvous connect in
  the same run: the difference is the mainline lookup, which completes in steps of mainline's
  50 ms receive loop on loopback (`bench/dht_fetch.md`); on the public DHT add its real round trips.
READING
  echo
  echo "Progress log:"
  echo
  echo "($(grep -c 'join refused' "$LOG" || true) lines \"join refused (...); trying again\" left out: first join tries refused and retried.)"
  echo
  echo '```'
  grep -v 'join refused' "$LOG" || true
  echo '```'
} > bench/capacity.md
cat bench/capacity.md
