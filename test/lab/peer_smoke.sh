#!/usr/bin/env bash
# Smoke of test/lab/macula_lab_peer.erl: real BEAM nodes (Erlang and Elixir)
# inside lab hosts behind two kernel NATs, driven over the port RPC; see
# peer_smoke.escript. Needs root, erlang, elixir, cargo, rebar3.
# Usage: test/lab/peer_smoke.sh
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
(cd "$root" && cargo build -q --release -p macula_nat_lab --bin macula-lab)
export MACULA_LAB_BIN="$root/target/release/macula-lab"
# The app the peers load: _build/default/lib/*/ebin + priv/ NIF. The tree is
# shared with other work in progress: retry a failing compile a few times.
for i in 1 2 3 4 5 6; do
    (cd "$root" && rebar3 compile >/tmp/peer_smoke_compile.$$ 2>&1) && break
    [ "$i" = 6 ] && { cat /tmp/peer_smoke_compile.$$; rm -f /tmp/peer_smoke_compile.$$; exit 1; }
    echo "rebar3 compile failed (attempt $i), retrying in 20 s"; sleep 20
done
rm -f /tmp/peer_smoke_compile.$$
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; "$MACULA_LAB_BIN" reap >/dev/null' EXIT
erlc -o "$tmp" macula_lab.erl macula_lab_peer.erl macula_lab_agent.erl
sed "s|_build_lab|$tmp|" peer_smoke.escript > "$tmp/peer_smoke.escript"
escript "$tmp/peer_smoke.escript"
left=$(ip netns list | grep -c 'ml-' || true)
[ "$left" = 0 ] || { echo "namespaces left: $(ip netns list | grep ml-)"; exit 1; }
echo "peer smoke: ok"
