#!/usr/bin/env bash
# Run the coturn RFC 5780 test and record its verdict table in bench/lab_coturn_verdicts.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-lab}"
OUT="$(cargo test -q -p macula_nat_lab --test coturn_natdiscovery -- --nocapture 2>&1)"
{
  echo "# coturn turnutils_natdiscovery verdicts behind every lab NAT"
  echo
  echo "From \`bench/lab_coturn.sh\` ($(date -u +%Y-%m-%d), $(turnserver --version 2>/dev/null | head -1 || echo coturn))."
  echo "turnserver listens on the observer's two IPs; \`turnutils_natdiscovery -m -f\` runs on every site host at once."
  echo "AD = address dependent, APD = address and port dependent. PC sites use delta=2. The test also checks"
  echo "port allocation (PP keeps the port, PC steps by delta, RD does not keep it) from the reflexive ports."
  echo "Router columns: packets LAN->WAN / WAN->LAN / inbound dropped by filtering (or no binding)."
  echo
  echo "$OUT" | grep -E '^\|'
  echo
  echo "$OUT" | grep -E 'lab with|natdiscovery on|test result'
} > bench/lab_coturn_verdicts.md
cat bench/lab_coturn_verdicts.md
