#!/bin/sh
# Mapping lifetime measured against configured binding timeouts
# (bench/lifetime.md): runs the lab test (one lab, six sites measured at
# once: kernel conntrack and the userspace engine at 30, 60 and 120 s) and
# keeps its per-site lines. Needs root (network namespaces); about 4 min.
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p macula_nat_lab -p macula_nat_core --bins
cargo test --release -p macula_nat_core --test lab_lifetime -- --nocapture 2>&1 | grep -E '^(k|u)[0-9]+ |all sites'
