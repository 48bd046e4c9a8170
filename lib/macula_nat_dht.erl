%% @doc Behaviour for a host-provided DHT that stores peer records.
%%
%% Select it with the `dht' option `{module, Mod}'. Values are opaque signed
%% records (at most 1000 bytes); the library verifies them against the
%% NodeId on the way back, so the host DHT needs no trust and no parsing.
%% Callbacks run in a short-lived worker process, never in the cache
%% server, and are given `dht_timeout_ms' (default 5000) to answer.
-module(macula_nat_dht).

%% Store `Record' under `NodeId' for `TtlSeconds'; a later put replaces it.
-callback put(NodeId :: binary(), Record :: binary(), TtlSeconds :: pos_integer()) ->
    ok | {error, term()}.

%% The most recent record stored under `NodeId'.
-callback get(NodeId :: binary()) -> {ok, binary()} | {error, not_found} | {error, term()}.
