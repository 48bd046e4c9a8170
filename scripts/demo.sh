#!/usr/bin/env bash
# The main job: start a macula_nat node and show what it knows about itself.
# Then, when run as root with the lab built (target/release/macula-lab and
# macula-node, the public host), two nodes behind different real NATs (network-namespace
# lab) detect their NAT, meet at a rendezvous and connect: see
# test/lab/demo_lab.escript. The lab is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh >/dev/null
rebar3 compile >/dev/null
erl -noshell -pa _build/default/lib/macula_nat/ebin -eval '
  logger:set_primary_config(level, warning),
  {ok, _} = application:ensure_all_started(macula_nat),
  {ok, Id} = macula:get_node_id(),
  {ok, Addr} = macula_nat_node:local_addr(),
  {ok, Rtt} = macula_nat_system:ping(),
  io:format("macula_nat node~n"),
  io:format("  node id          ~s~n", [binary:encode_hex(Id)]),
  io:format("  socket           ~s~n", [macula_nat_endpoint:format(Addr)]),
  io:format("  public endpoint  ~p~n", [macula:get_public_endpoint()]),
  io:format("  nat profile      ~p~n", [macula_nat_detector:get_local_profile()]),
  io:format("  supervisor       ~p~n", [[{C, is_pid(P)} || {C, P, _, _} <- supervisor:which_children(macula_nat_system)]]),
  io:format("  runtime ping     ~p us~n", [Rtt]),
  halt().'

# The lab part: only as root; it builds the lab binaries first.
if [ "$(id -u)" = 0 ] && [ -z "${MACULA_LAB_BIN:-}" ]; then
    cargo build --release --quiet -p macula_nat_lab -p macula_nat_core --bins || true
fi
lab_bin=${MACULA_LAB_BIN:-$PWD/target/release/macula-lab}
if [ "$(id -u)" = 0 ] && [ -x "$lab_bin" ] && [ -x "$(dirname "$lab_bin")/macula-node" ]; then
    export MACULA_LAB_BIN="$lab_bin"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"; "$MACULA_LAB_BIN" reap >/dev/null 2>&1 || true' EXIT
    erlc -o "$tmp" test/lab/macula_lab.erl test/lab/macula_lab_peer.erl test/lab/macula_lab_agent.erl
    sed "s|_build_lab|$tmp|" test/lab/demo_lab.escript > "$tmp/demo_lab.escript"
    # Lab VMs log to stderr (warnings only); keep the demo output readable.
    escript "$tmp/demo_lab.escript" 2>"$tmp/vm.log" || { cat "$tmp/vm.log" >&2; exit 1; }
else
    echo
    echo "(lab demo skipped: needs root and target/release/macula-lab + macula-node;"
    echo " build them with: cargo build --release -p macula_nat_lab -p macula_nat_core)"
fi
