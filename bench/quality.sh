#!/usr/bin/env bash
# Connection quality, black-hole failover and network change (issue 19):
# what monitoring costs an idle connection (1,000 idle connections on
# loopback, three settings side by side); in the lab, time from a black
# hole to the relay, to traffic again, and back to direct after the block
# lifts; and time from a public address change (a renumbered router) to the
# node knowing it and to traffic again.
# Needs root (network namespaces). Rewrites bench/quality.md.
# Usage: bench/quality.sh [failover tries] [idle connections] [idle seconds] [renumber tries]
# QUALITY_PARTS="idle failover renumber" (the default) picks the parts run;
# a part not run keeps its section of the current bench/quality.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TRIES="${1:-20}"; CONNS="${2:-1000}"; SECS="${3:-20}"; RTRIES="${4:-20}"
PARTS="${QUALITY_PARTS:-idle failover renumber}"
cargo build -q --release -p macula_nat_core -p macula_nat_lab --bins
cargo build -q --release -p macula_nat_core --example bench_idle_quality --example bench_failover
TARGET="${CARGO_TARGET_DIR:-target}"
"$TARGET/release/macula-lab" reap >/dev/null
OUT=bench/quality.md
# The section of the current report that starts with heading $1 (to keep it).
old_section() {
  [ -f "$OUT" ] && awk -v h="$1" '/^## /{on=($0==h)} on' "$OUT" || true
}
run() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
H_IDLE="## Idle connections"
H_FAIL="## Black hole -> relay -> direct (lab)"
H_RENUM="## Public address change (renumbered router, lab)"
if run idle; then
  IDLE="$("$TARGET/release/examples/bench_idle_quality" "$CONNS" "$SECS")"
  IDLE_SECTION="$(cat <<MD
$H_IDLE

Measured at commit $(git rev-parse --short HEAD) ($(date -u '+%Y-%m-%d %H:%M') UTC, \`$CONNS\` connections, \`$SECS\` s).
$CONNS idle connections between two nodes on loopback in one process, measured over $SECS s after 3 s of
settling, one setting after the other in one run. Bytes are UDP payload sent by both nodes' sockets.
\`app+monitor\` is what every application connection costs now (1 s keep-alive from the dialler,
each side's quality monitor sampling 4x/s); \`control\` is a control connection's (rendezvous, relay).

$IDLE
MD
)"
else
  IDLE_SECTION="$(old_section "$H_IDLE")"
fi
if run failover; then
  FAIL="$("$TARGET/release/examples/bench_failover" "$TRIES")"
  FAIL_SECTION="$(cat <<MD
$H_FAIL

Measured at commit $(git rev-parse --short HEAD) ($(date -u '+%Y-%m-%d %H:%M') UTC, $TRIES tries).
Two kernel full cones behind plain routers on a routed internet, a public rendezvous that also relays,
both nodes reserved there (\`macula-connect\`). Per try: a fresh direct connection streams sequenced
messages, one every 2 ms, echoed; after 2 s the direct path is black-holed at the listener's router
(the relay spared) for 6 s, then lifted. Times are the test's, from the \`lab.blackhole\` call to the
stream's event lines (method changes, the first echo after a gap of 500 ms or more). Silent = 2.2 s
without a datagram; the rest of "traffic again" is QUIC's probe timeout backing off during the hole.

$FAIL
MD
)"
else
  FAIL_SECTION="$(old_section "$H_FAIL")"
fi
if run renumber; then
  RENUM="$("$TARGET/release/examples/bench_failover" "$RTRIES" renumber)"
  RENUM_SECTION="$(cat <<MD
$H_RENUM

Measured at commit $(git rev-parse --short HEAD) ($(date -u '+%Y-%m-%d %H:%M') UTC, $RTRIES tries).
The same lab. Per try: a fresh direct connection streams sequenced messages, one every 2 ms, echoed;
after 2 s one site's router gets a new public address (\`Lab::renumber\`: the ISP renumbers it, the
kernel NAT forgets its mappings, the old address is no longer routed), the dialler's and the
listener's alternately. Times are from the \`renumber\` call to: the renumbered node's
\`{"event":"netchange"}\` (its rendezvous reports the new address; on the BEAM the detector then
fires \`nat_profile_changed\`), the stream's first echo after a pause of 100 ms or more, and on the
listener's side its method changes. The dialler's QUIC carries on from its new address (the listener's
QUIC server follows it); the listener's QUIC server cannot move, so the dialler's path goes silent,
fails over to the relay, and the re-punch reaches the listener at its new address.

$RENUM
MD
)"
else
  RENUM_SECTION="$(old_section "$H_RENUM")"
fi
{
  echo "# Connection quality: monitoring cost, black-hole failover, network change"
  echo
  echo "Measured by \`bench/quality.sh $TRIES $CONNS $SECS $RTRIES\` (parts: $PARTS) at commit $(git rev-parse --short HEAD) ($(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores shared with other work, kernel $(uname -r), release build); each section says when it was measured."
  echo
  echo "$IDLE_SECTION"
  echo
  echo "$FAIL_SECTION"
  echo
  echo "$RENUM_SECTION"
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
