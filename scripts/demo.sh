#!/usr/bin/env bash
# The main job: start a macula_nat node and show what it knows about itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh >/dev/null
rebar3 compile >/dev/null
exec erl -noshell -pa _build/default/lib/macula_nat/ebin -eval '
  logger:set_primary_config(level, warning),
  {ok, _} = application:ensure_all_started(macula_nat),
  {ok, Id} = macula:get_node_id(),
  {ok, Addr} = macula_nat_node:local_addr(),
  {ok, Rtt} = macula_nat_system:ping(),
  io:format("macula_nat node~n"),
  io:format("  node id          ~s~n", [binary:encode_hex(Id)]),
  io:format("  socket           ~s~n", [macula_nat_endpoint:format(Addr)]),
  io:format("  public endpoint  ~p~n", [macula:get_public_endpoint()]),
  io:format("  nat profile      ~p~n", [macula_nat_detector:get_local_profile()]),
  io:format("  supervisor       ~p~n", [[{C, is_pid(P)} || {C, P, _, _} <- supervisor:which_children(macula_nat_system)]]),
  io:format("  runtime ping     ~p us~n", [Rtt]),
  halt().'
