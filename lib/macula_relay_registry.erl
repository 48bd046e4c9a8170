%% @doc Distributed registry of relay-capable nodes. Not built yet (issue:
%% relays).
-module(macula_relay_registry).

-export([register/2, find_relay/1]).

-type relay_info() :: #{node_id := binary(), endpoint := binary(),
                        latency_ms := non_neg_integer(), load := float()}.
-export_type([relay_info/0]).

-spec register(binary(), binary()) -> ok | {error, term()}.
register(NodeId, Endpoint) when is_binary(NodeId), is_binary(Endpoint) -> {error, not_implemented};
register(_, _) -> {error, badarg}.

-spec find_relay(binary()) -> {ok, relay_info()} | {error, term()}.
find_relay(Target) when is_binary(Target) -> {error, not_implemented};
find_relay(_) -> {error, badarg}.
