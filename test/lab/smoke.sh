#!/usr/bin/env bash
# End-to-end smoke of the lab from Erlang (test/lab/macula_lab.erl via the CLI):
# builds a lab, runs coturn's natdiscovery behind a userspace NAT, reads stats, tears down.
# Needs root, coturn, erlang. Usage: test/lab/smoke.sh
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-lab}"
(cd ../.. && cargo build -q -p macula_nat_lab --bin macula-lab)
export MACULA_LAB_BIN="$CARGO_TARGET_DIR/debug/macula-lab"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; "$MACULA_LAB_BIN" reap >/dev/null' EXIT
erlc -o "$tmp" macula_lab.erl
sed "s|_build_lab|$tmp|" erlang_smoke.escript > "$tmp/smoke.escript"
escript "$tmp/smoke.escript"
left=$(ip netns list | grep -c '^ml-erl-' || true)
[ "$left" = 0 ] || { echo "namespaces left: $left"; exit 1; }
echo "erlang lab smoke: ok"
