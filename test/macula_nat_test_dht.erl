%% A host DHT for tests, implementing the `macula_nat_dht' behaviour over a
%% public ETS table: counts lookups, can answer slowly, can serve forgeries.
-module(macula_nat_test_dht).
-behaviour(macula_nat_dht).

-export([start/0, stop/0, set/2, count/1, put/3, get/1]).

-define(T, ?MODULE).

-spec start() -> ok.
start() ->
    Parent = self(),
    Pid = spawn(fun() ->
                        ets:new(?T, [named_table, public, set]),
                        Parent ! {self(), ready},
                        receive stop -> ok end
                end),
    receive {Pid, ready} -> ok after 5000 -> error(test_dht_not_started) end,
    ets:insert(?T, {owner, Pid}),
    ok.

-spec stop() -> ok.
stop() ->
    [{owner, Pid}] = ets:lookup(?T, owner),
    Ref = monitor(process, Pid),
    Pid ! stop,
    receive {'DOWN', Ref, _, _, _} -> ok end.

-spec set(atom(), term()) -> true.
set(Key, Value) -> ets:insert(?T, {Key, Value}).

-spec count(put | get) -> non_neg_integer().
count(Op) ->
    case ets:lookup(?T, {count, Op}) of
        [{_, N}] -> N;
        [] -> 0
    end.

-spec put(binary(), binary(), pos_integer()) -> ok.
put(NodeId, Record, TtlS) ->
    ets:update_counter(?T, {count, put}, 1, {{count, put}, 0}),
    ets:insert(?T, [{{record, NodeId}, Record}, {{ttl, NodeId}, TtlS}]),
    ok.

-spec get(binary()) -> {ok, binary()} | {error, not_found}.
get(NodeId) ->
    ets:update_counter(?T, {count, get}, 1, {{count, get}, 0}),
    case ets:lookup(?T, delay) of
        [{delay, Ms}] -> timer:sleep(Ms);
        [] -> ok
    end,
    case ets:lookup(?T, {forge, NodeId}) of
        [{_, Bytes}] -> {ok, Bytes};
        [] ->
            case ets:lookup(?T, {record, NodeId}) of
                [{_, Record}] -> {ok, Record};
                [] -> {error, not_found}
            end
    end.
