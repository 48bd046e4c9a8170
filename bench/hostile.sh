#!/usr/bin/env bash
# Hostile peers (issue 18): runs the adversarial suite (every
# native/macula_nat_core/tests/hostile_*.rs, one attack per test, each with
# an honest pair connecting during the attack) and the Erlang ones that
# write a row (eunit modules *_hostile_tests), and rewrites bench/hostile.md
# from the rows they report. The same tests run in the full suite (they
# assert their bounds); this only collects their figures.
# Usage: bench/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
export MACULA_HOSTILE_REPORT="$rows"
cargo test --release -q -p macula_nat_core --test 'hostile_*' -- --test-threads=1 >&2
if ls test/*_hostile_tests.erl >/dev/null 2>&1; then
  mods=$(ls test/*_hostile_tests.erl | xargs -n1 basename | sed 's/\.erl$//' | paste -sd, -)
  sh native/build_nif.sh >&2
  rebar3 eunit --module="$mods" >&2
fi
{
  echo "# Hostile peers: one row per attack"
  echo
  echo "\`bench/hostile.sh\` at commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores (shared), loopback."
  echo "Each row is one test of the adversarial suite (\`native/macula_nat_core/tests/hostile_*.rs\`,"
  echo "\`test/*_hostile_tests.erl\`): a hostile peer speaking the real protocols attacks while an honest"
  echo "pair connects and exchanges a message each way. **Bound**: what holds the attack (documented in the"
  echo "README's limits section). **Measured**: what the attack got against that bound. **Amplification**:"
  echo "bytes that reached the third party the attack aims at / bytes the attacker sent (\`-\`: no third party)."
  echo "**Honest connect**: the honest pair's worst connect time (connect call to the answer back) during the attack."
  echo
  echo "| attack | bound | measured | amplification | honest connect ms |"
  echo "|---|---|---|---|---|"
  cat "$rows"
} > bench/hostile.md
cat bench/hostile.md
