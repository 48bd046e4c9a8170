%% A host DHT for tests shared by several VMs on one machine: the
%% `macula_nat_dht' behaviour with each record a file, named by the hex
%% NodeId, in the directory `MACULA_TEST_DHT_DIR' names.
-module(macula_nat_file_dht).
-behaviour(macula_nat_dht).

-export([put/3, get/1]).

-spec put(binary(), binary(), pos_integer()) -> ok | {error, term()}.
put(NodeId, Record, _TtlS) ->
    %% Written aside and renamed: a reader never sees half a record.
    Path = path(NodeId),
    Tmp = Path ++ ".tmp",
    case file:write_file(Tmp, Record) of
        ok -> file:rename(Tmp, Path);
        {error, _} = E -> E
    end.

-spec get(binary()) -> {ok, binary()} | {error, not_found}.
get(NodeId) ->
    case file:read_file(path(NodeId)) of
        {ok, Bin} -> {ok, Bin};
        {error, _} -> {error, not_found}
    end.

path(NodeId) ->
    filename:join(os:getenv("MACULA_TEST_DHT_DIR"), binary_to_list(macula:node_id_to_hex(NodeId))).
