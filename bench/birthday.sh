#!/usr/bin/env bash
# Birthday probing across the lab's NATs, repeated: hit rate, time to
# connect, mappings and packets it cost; rewrites bench/birthday.md.
# Needs root (network namespaces). Usage: bench/birthday.sh [tries per case]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-20}"
cargo build -q --release -p macula_nat_core -p macula_nat_lab --bins
cargo build -q --release -p macula_nat_core --example bench_birthday
TARGET="${CARGO_TARGET_DIR:-target}"
"$TARGET/release/macula-lab" reap >/dev/null
TABLE="$("$TARGET/release/examples/bench_birthday" "$RUNS")"
{
  echo "# Birthday probing in the lab"
  echo
  echo "Measured by \`bench/birthday.sh $RUNS\` ($(date -u +%Y-%m-%d), $(nproc) cores shared with other builds, kernel $(uname -r), release build)."
  echo "Each try: a fresh listener (B) and a fresh connecting node (A) behind the named NATs (lab notation"
  echo "\`mapping-filtering-allocation\`), rendezvous on a public host, \`macula-connect connect --timeout-ms 10000\`;"
  echo "a try counts when the strategy is \`birthday_probing\`, the method \`punched\` and a message went A -> B -> A."
  echo "\"one-way\" is the delay between the peers (each site's engine adds half of it in each direction)."
  echo "Schedule (\`BirthdaySchedule::standard\`): 508 sockets on the hard side (507 extra + the node socket),"
  echo "up to 580 probes from the easy side, 200 requests per second per side, planned hit probability 0.99."
  echo "Connect time includes signalling and the QUIC handshake; the hard side spends its first ~2.6 s"
  echo "opening mappings before any probe leaves. \"hard NAT mappings\" is the hard site engine's"
  echo "\`bindings_created\` per try (userspace NATs only; with HD mapping a socket whose ephemeral port an"
  echo "earlier try used finds that try's mapping towards the same easy IP still alive, so fewer are created);"
  echo "\"easy site packets out\" is probes plus a few"
  echo "answers, nominations and QUIC packets. The last column is the listener's open file descriptors"
  echo "1.5 s after A exited minus before the try (0 = every extra socket was closed)."
  echo
  echo "$TABLE"
} > bench/birthday.md
cat bench/birthday.md
