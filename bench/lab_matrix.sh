#!/usr/bin/env bash
# Connection matrix benchmark (issue 6): every pair of the 27 NATCracker NAT
# types (userspace engine) and of the 4 kernel NATs, two sites per type, every
# site at 25 ms one-way delay, a public rendezvous; per pair N tries of
# "A connects to B through the rendezvous and sends a message". Reports the
# strategy, the method, successes, median/p95 time to first message, the
# failure reasons and the issue's three targets. Needs root. The program is
# native/macula_nat_core/examples/bench_matrix/.
#
# Nodes (default, --agent beam): Erlang VMs in the lab hosts running
# test/lab/macula_lab_matrix_agent.erl, each configured through the
# application environment only (a sys.config with `observers`,
# `rendezvous`, `relays`), detecting its NAT through the lab's two RFC 5780
# observers (profiles detected, not given); every NAT site is a plain router
# on a routed internet; the rendezvous (also the relay) is such a VM too.
# --agent rust: `macula-connect agent`s given their profiles (`--nat`), the
# earlier setup (no observers, filtering routers, flat internet).
#
# Usage: bench/lab_matrix.sh [options]
#   --tries N          tries per pair (default 10)
#   --concurrency K    tries running at once, each on its own two nodes (12)
#   --delay-ms D       one-way delay of every NAT site, both directions (25)
#   --timeout-ms T     connect timeout of one try (10000)
#   --types LIST       only pairs whose two types are both listed
#   --with LIST        only pairs with at least one listed type
#                      LIST: comma-separated, NATCracker `EI-PP-PD` or lab
#                      `ei-pd-pp` notation, `*` for any component (`*-RD-*`),
#                      kernel NAT names (`symmetric`, ...) or `kernel`
#   --strategies LIST  only pairs the strategy table gives one of: direct,
#                      connection_reversal, simple_punch, predict_preservation,
#                      predict_contiguity, birthday_probing, relay
#   --no-kernel        only the userspace types
#   --no-user          only the kernel NATs
#   --out FILE         where the Markdown report goes. Default: bench/lab_matrix.md
#                      for a run without filters, stdout otherwise.
#   --agent beam|rust  the nodes (default beam, see above)
#   --no-variants      (beam) leave out the topology variants (plain PRC,
#                      port overloading, carrier-grade NAT, Docker-style;
#                      they run with an unfiltered run only)
#   --variants-only    (beam) only the topology variants
# Examples:
#   bench/lab_matrix.sh                                   # the full matrix (~10 min)
#   bench/lab_matrix.sh --strategies birthday_probing --tries 3
#   bench/lab_matrix.sh --with PD-RD-PD --no-kernel
# Diagnostics: MACULA_TRACE=debug keeps every node's log (its punch
# failures say where they aimed and what they heard); MACULA_LAB_TRACE=1
# also keeps every NAT's mapping log (see macula_nat_lab::engine).
# Exit status: non-zero if the lab cannot be built or the run fails; the lab
# is torn down on exit, Ctrl-C and panics (`target/release/macula-lab reap`
# clears what a SIGKILL leaves).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=""
filtered=0
beam=1
prev=""
for a in "$@"; do
  case "$a" in
    --types|--with|--strategies|--no-kernel|--no-user|--out|--no-variants|--variants-only) filtered=1 ;;
  esac
  [ "$prev" = "--agent" ] && [ "$a" = rust ] && beam=0
  prev="$a"
done
[ "$filtered" = 0 ] && out=bench/lab_matrix.md
cargo build --release --quiet -p macula_nat_lab -p macula_nat_core --bins
cargo build --release --quiet -p macula_nat_core --example bench_matrix
TARGET="${CARGO_TARGET_DIR:-target}"
cmd="bench/lab_matrix.sh${*:+ $*}"
beam_args=()
if [ "$beam" = 1 ]; then
  # The app the VMs load: _build/default/lib/macula_nat/ebin + priv/ NIF.
  # The tree is shared with other work in progress: retry a failing
  # compile a few times.
  for i in 1 2 3 4 5 6; do
    rebar3 compile >/tmp/lab_matrix_compile.$$ 2>&1 && break
    [ "$i" = 6 ] && { cat /tmp/lab_matrix_compile.$$; rm -f /tmp/lab_matrix_compile.$$; exit 1; }
    echo "rebar3 compile failed (attempt $i), retrying in 20 s"; sleep 20
  done
  rm -f /tmp/lab_matrix_compile.$$
  agent_dir=$(mktemp -d)
  trap 'rm -rf "$agent_dir"' EXIT
  erlc -o "$agent_dir" test/lab/macula_lab_matrix_agent.erl
  beam_args=(--beam-path "$agent_dir" --beam-path "$PWD/_build/default/lib/macula_nat/ebin")
fi
if [ -n "$out" ]; then
  "$TARGET/release/examples/bench_matrix" --command "$cmd" --out "$out" "${beam_args[@]}" "$@"
  cat "$out"
else
  "$TARGET/release/examples/bench_matrix" --command "$cmd" "${beam_args[@]}" "$@"
fi
