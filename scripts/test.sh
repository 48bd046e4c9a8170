#!/usr/bin/env bash
# Runs every test: cargo (Rust core, binding, lab), EUnit and Dialyzer via rebar3, ExUnit
# via Mix. Installs what is missing first. Exits non-zero if any suite fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh || exit 1

failed=()
run() {
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  if "$@"; then echo "=== $name: ok ($((SECONDS - t0)) s)"; else echo "=== $name: FAILED"; failed+=("$name"); fi
}
# Lab tests build network namespaces; clear any a killed run left behind.
[[ -x target/release/macula-lab ]] && target/release/macula-lab reap >/dev/null 2>&1 || true

# The BEAM suites go first: they include a scheduler-latency test, and the
# lab tests leave the kernel tearing down namespaces for a while after.
# The BEAM suites drive Rust binaries too (e.g. the private DHT swarm).
run bins   cargo build --release -p macula_nat_core --bins -p macula_nat_lab
run eunit  rebar3 eunit
# Specs checked (the first run builds the PLT, about 2 minutes).
run dialyzer rebar3 dialyzer
run exunit env MIX_ENV=test mix test
run cargo  cargo test --release --workspace --no-fail-fast
# BEAM nodes (Erlang and Elixir) inside the NAT lab connecting pairwise.
run lab-beam bash test/lab/lab_connect.sh
# Three operators (rendezvous + relay each), a private mainline swarm and an
# Elixir host DHT: every pair of nodes by node id, one operator killed.
run lab-operators bash test/lab/lab_operators.sh

if ((${#failed[@]})); then
  echo "FAILED suites: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
