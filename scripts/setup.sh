#!/usr/bin/env bash
# Installs what macula_nat needs on a fresh Debian 12 machine (as root) and
# builds it. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have erl        || need+=(erlang-base erlang-dev erlang-eunit erlang-crypto erlang-tools
                          erlang-syntax-tools erlang-parsetools erlang-inets erlang-ssl
                          erlang-public-key erlang-asn1 erlang-runtime-tools)
[[ -f /usr/lib/erlang/usr/include/erl_nif.h ]] || need+=(erlang-dev)
have elixir     || need+=(elixir)
have rebar3     || need+=(rebar3)
have nft        || need+=(nftables)
have ip         || need+=(iproute2)
have turnserver || need+=(coturn)
have miniupnpd  || need+=(miniupnpd)   # port mapping lab test (UPnP IGD, NAT-PMP, PCP; nftables backend)
have stun && have stund || need+=(stun-client stun-server)   # classic (RFC 3489) STUN client and server for the lab tests
have cargo      || need+=(cargo rustc)   # fallback only: the machine's rustup toolchain is preferred
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# coturn's package may start a turnserver on 3478; tests start their own.
if have systemctl && systemctl is-active --quiet coturn 2>/dev/null; then systemctl stop coturn || true; fi
echo "setup: $(erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().' | sed 's/^/OTP /'), $(elixir --version | tail -1), $(rebar3 version), $(cargo --version)"
sh native/build_nif.sh
