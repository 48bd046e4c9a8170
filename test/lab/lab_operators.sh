#!/usr/bin/env bash
# Nodes of three operators reaching each other by node id (issue 20): three
# public operator hosts (rendezvous + relay each), a private mainline swarm,
# six BEAM nodes behind kernel NATs configured through the application
# environment only; every pair connects by node id with the method the
# strategy table gives, messages both ways; one operator killed, the pairs
# again; then the same with a host DHT written in Elixir
# (macula_lab_file_dht.ex). See lab_operators.escript. Writes
# bench/lab_operators.md.
# Needs root, erlang, elixir, cargo, rebar3.
# Usage: test/lab/lab_operators.sh
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
(cd "$root" && cargo build -q --release -p macula_nat_lab --bin macula-lab)
(cd "$root" && cargo build -q --release -p macula_nat_core --bin macula-observer --bin macula-dht-swarm)
export MACULA_LAB_BIN="$root/target/release/macula-lab"
# The app the peers load: _build/default/lib/*/ebin + priv/ NIF. The tree is
# shared with other work in progress: retry a failing compile a few times.
for i in 1 2 3 4 5 6; do
    (cd "$root" && rebar3 compile >/tmp/lab_operators_compile.$$ 2>&1) && break
    [ "$i" = 6 ] && { cat /tmp/lab_operators_compile.$$; rm -f /tmp/lab_operators_compile.$$; exit 1; }
    echo "rebar3 compile failed (attempt $i), retrying in 20 s"; sleep 20
done
rm -f /tmp/lab_operators_compile.$$
tmp=$(mktemp -d)
# One lab name per run ([a-z0-9_], at most 16): leftovers are ours only.
export MACULA_LAB_NAME="lrops$$"
# The lab belongs to the escript's VM: once that VM is gone, reap removes
# the lab (namespaces, the lab VMs, the swarm). Killed, this script stops
# the VM first so the reap finds its lab ownerless.
trap 'rm -rf "$tmp"; "$MACULA_LAB_BIN" reap >/dev/null' EXIT
pid=
trap '[ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null; wait "$pid"; }; exit 130' INT TERM
erlc -o "$tmp" macula_lab.erl macula_lab_peer.erl macula_lab_agent.erl macula_lab_pairs.erl
# The Elixir host DHT, beside the agent: the lab VMs (Erlang and Elixir)
# load it from there (it calls only OTP, so an Erlang VM needs no Elixir).
(cd "$tmp" && elixirc -pa "$root/_build/default/lib/macula_nat/ebin" -o "$tmp" \
    "$root/test/lab/macula_lab_file_dht.ex" >/dev/null)
sed "s|_build_lab|$tmp|" lab_operators.escript > "$tmp/lab_operators.escript"
rc=0
escript "$tmp/lab_operators.escript" "$root/bench/lab_operators.md" &
pid=$!
wait "$pid" || rc=$?
pid=
left=$(ip netns list | grep -c "^ml-$MACULA_LAB_NAME-" || true)
[ "$left" = 0 ] || { echo "namespaces left: $(ip netns list | grep "^ml-$MACULA_LAB_NAME-")"; exit 1; }
[ "$rc" = 0 ] || { echo "lab operators: FAILED"; exit "$rc"; }
echo "lab operators: ok"
