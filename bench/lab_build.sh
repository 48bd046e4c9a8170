#!/usr/bin/env bash
# Measure how long macula_nat_lab labs take to build and tear down; rewrites bench/lab_build.md.
# Needs root (network namespaces). Usage: bench/lab_build.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-lab}"
cargo build -q --release -p macula_nat_lab --bin macula-lab
BIN="$CARGO_TARGET_DIR/release/macula-lab"
"$BIN" reap >/dev/null
TABLE="$("$BIN" bench-build --runs "$RUNS")"
{
  echo "# NAT lab build / teardown time"
  echo
  echo "Measured by \`bench/lab_build.sh $RUNS\` ($(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r), release build)."
  echo "Every lab also has one observer (2 IPs), one public host and the internet bridge namespace;"
  echo "each site is a host namespace plus a router namespace. \"up\" = \`Lab::up\` returns with every"
  echo "router configured and every userspace engine ready; \"down\" = \`Lab::down\` returns (processes"
  echo "killed, namespaces deleted; the kernel frees namespace memory asynchronously afterwards)."
  echo
  echo "$TABLE"
} > bench/lab_build.md
cat bench/lab_build.md
