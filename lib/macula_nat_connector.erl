%% @doc High-level connection establishment with automatic strategy
%% selection: the coordinator's traversal (direct, connection reversal, hole
%% punching with port prediction), with the connector's option names.
-module(macula_nat_connector).

-export([connect/2, connect/3, disconnect/1]).

-type connection() :: macula_connection:connection().

%% @doc Options: `timeout' (ms, default 10000), `prefer_direct' (default
%% true; false punches even where a direct dial would do), `fallback_relay'
%% (default false until relays exist), `max_attempts' (punch attempts).
-spec connect(binary(), map()) -> {ok, connection()} | {error, term()}.
connect(Target, Opts) when is_binary(Target), is_map(Opts) ->
    case macula_nat_coordinator:request_connection(Target, coordinator_opts(Opts)) of
        {ok, _Method, Conn} -> {ok, Conn};
        {error, _} = E -> E
    end;
connect(_, _) ->
    {error, badarg}.

%% @doc As `connect/2', naming the local node; also returns the method.
-spec connect(binary(), binary(), map()) ->
    {ok, connection(), direct | punched | relayed} | {error, term()}.
connect(Local, Target, Opts) when is_binary(Local), is_binary(Target), is_map(Opts) ->
    case macula_nat_coordinator:request_connection(Local, Target, coordinator_opts(Opts)) of
        {ok, Method, Conn} -> {ok, Conn, Method};
        {error, _} = E -> E
    end;
connect(_, _, _) ->
    {error, badarg}.

-spec disconnect(connection()) -> ok | {error, term()}.
disconnect(Conn) ->
    macula_connection:close(Conn).

coordinator_opts(Opts) ->
    Renames = [{fallback_relay, allow_relay}, {max_attempts, max_punch_attempts}],
    lists:foldl(fun({From, To}, Acc) ->
                        case maps:take(From, Acc) of
                            {V, Rest} -> Rest#{To => V};
                            error -> Acc
                        end
                end, Opts, Renames).
