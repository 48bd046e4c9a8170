#!/usr/bin/env bash
# Mailbox flood (issue 18): 1 KiB terms sent with macula_connection:send/2
# as fast as it returns, between two BEAM VMs on loopback, for each
# receiving mode in one run (owners that never read, owners that read).
# Rewrites bench/mailbox_flood.md.
# Usage: bench/mailbox_flood.sh [seconds_per_case] [before_commit]
# With before_commit (e.g. 04876bf, the last one without flow control), the
# NIF and modules of that commit are built in /tmp (cargo, a few minutes the
# first time) and its default-mode rows are measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SECS="${1:-6}"
BEFORE="${2:-}"
rebar3 compile >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
erlc -o "$tmp" bench/mailbox_flood.erl
erl -noshell +S 2 -pa _build/default/lib/macula_nat/ebin -pa "$tmp" \
  -kernel logger_level warning \
  -run mailbox_flood main "$SECS" > "$tmp/table.md" 2> "$tmp/err.log" \
  || { cat "$tmp/table.md" "$tmp/err.log" >&2; exit 1; }
if [[ -n "$BEFORE" ]]; then
  src=/tmp/mailbox_flood_before/src; app=/tmp/mailbox_flood_before/app/macula_nat
  rm -rf "$src" "$app"; mkdir -p "$src" "$app/ebin" "$app/priv"
  git archive "$BEFORE" native Cargo.toml Cargo.lock lib | tar -x -C "$src"
  (cd "$src" && CARGO_TARGET_DIR=/tmp/mailbox_flood_before/target cargo build --quiet --release -p macula_nat_nif)
  cp /tmp/mailbox_flood_before/target/release/libmacula_nat_nif.so "$app/priv/"
  cp "$src/lib/macula_nat.app.src" "$app/ebin/macula_nat.app"
  erlc -o "$app/ebin" "$src"/lib/*.erl 2>/dev/null
  erl -noshell +S 2 -pa "$app/ebin" -pa "$tmp" -kernel logger_level warning \
    -run mailbox_flood main "$SECS" old > "$tmp/before.md" 2>> "$tmp/err.log" \
    || { cat "$tmp/before.md" "$tmp/err.log" >&2; exit 1; }
fi
{
  echo "# Mailbox flood: flow control of macula_connection"
  echo
  echo "\`bench/mailbox_flood.sh $SECS\`, $(date -u +%Y-%m-%d), $(nproc) cores (shared), loopback, two VMs."
  echo "A sender sends \`{seq, N, <<1 KiB>>}\` with \`send/2\` as fast as it returns; the receiving"
  echo "owner (second VM) runs in the mode of each row. Memory growth is the receiver's, from just"
  echo "before the flood to the largest of samples every 100 ms (RSS includes QUIC's buffers, which"
  echo "\`erlang:memory/1\` does not see). \"received and in order\": messages the owner had taken when"
  echo "the flood stopped, and whether their sequence numbers had no gap."
  echo
  cat "$tmp/table.md"
  if [[ -n "$BEFORE" ]]; then
    echo
    echo "Before flow control (commit $BEFORE, same run; it had no modes, so default rows only):"
    echo
    cat "$tmp/before.md"
  fi
} > bench/mailbox_flood.md
cat bench/mailbox_flood.md
