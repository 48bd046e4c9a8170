#!/usr/bin/env bash
# Profile cache benchmark: writes bench/cache.md. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p macula_nat_core --bin macula-dht-swarm
rebar3 compile >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [[ -n "${swarm_pid:-}" ]] && kill "$swarm_pid" 2>/dev/null || true' EXIT
erlc -o "$tmp" bench/cache_bench.erl
# The swarm runs until its stdin closes: feed it from a fifo we hold open.
mkfifo "$tmp/in"
target/release/macula-dht-swarm 20 < "$tmp/in" > "$tmp/swarm.out" &
swarm_pid=$!
exec 3> "$tmp/in"
for _ in $(seq 100); do grep -q '^bootstrap ' "$tmp/swarm.out" && break; sleep 0.1; done
boot=$(sed -n 's/^bootstrap //p' "$tmp/swarm.out")
erl -noshell +S 2 -pa _build/default/lib/macula_nat/ebin -pa "$tmp" \
  -kernel logger_level warning -run cache_bench main "$boot" > bench/cache.md
exec 3>&-
cat bench/cache.md
