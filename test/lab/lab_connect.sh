#!/usr/bin/env bash
# Traversal between BEAM nodes (Erlang and Elixir VMs) across real NATs,
# through a rendezvous on a public lab host: every pair of the kernel NATs
# {full_cone, restricted_cone, port_restricted_cone, symmetric} and a public
# host, 33 userspace-NAT pairs covering every strategy of the table, and 3
# kernel pairs connecting right after start, and pairs across NAT shapes of
# the wild (plain routers, port overloading, carrier-grade NATs, a Docker-
# style host); every node configured through
# the application environment only. See lab_connect.escript. Writes
# bench/lab_connect_beam.md.
# Needs root, erlang, elixir, cargo, rebar3.
# Usage: test/lab/lab_connect.sh
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
(cd "$root" && cargo build -q --release -p macula_nat_lab --bin macula-lab)
(cd "$root" && cargo build -q --release -p macula_nat_core --bin macula-observer)
export MACULA_LAB_BIN="$root/target/release/macula-lab"
# The app the peers load: _build/default/lib/*/ebin + priv/ NIF. The tree is
# shared with other work in progress: retry a failing compile a few times.
for i in 1 2 3 4 5 6; do
    (cd "$root" && rebar3 compile >/tmp/lab_connect_compile.$$ 2>&1) && break
    [ "$i" = 6 ] && { cat /tmp/lab_connect_compile.$$; rm -f /tmp/lab_connect_compile.$$; exit 1; }
    echo "rebar3 compile failed (attempt $i), retrying in 20 s"; sleep 20
done
rm -f /tmp/lab_connect_compile.$$
tmp=$(mktemp -d)
# One lab name per run ([a-z0-9_], at most 16): leftovers are ours only.
export MACULA_LAB_NAME="lconn$$"
# The lab belongs to the escript's VM: once that VM is gone, reap removes
# the lab (namespaces, engines, the lab VMs). Killed, this script stops the
# VM first so the reap finds its lab ownerless.
trap 'rm -rf "$tmp"; "$MACULA_LAB_BIN" reap >/dev/null' EXIT
pid=
trap '[ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null; wait "$pid"; }; exit 130' INT TERM
erlc -o "$tmp" macula_lab.erl macula_lab_peer.erl macula_lab_agent.erl macula_lab_pairs.erl
sed "s|_build_lab|$tmp|" lab_connect.escript > "$tmp/lab_connect.escript"
rc=0
escript "$tmp/lab_connect.escript" "$root/bench/lab_connect_beam.md" &
pid=$!
wait "$pid" || rc=$?
pid=
left=$(ip netns list | grep -c "^ml-$MACULA_LAB_NAME-" || true)
[ "$left" = 0 ] || { echo "namespaces left: $(ip netns list | grep "^ml-$MACULA_LAB_NAME-")"; exit 1; }
[ "$rc" = 0 ] || { echo "lab connect: FAILED"; exit "$rc"; }
echo "lab connect: ok"
