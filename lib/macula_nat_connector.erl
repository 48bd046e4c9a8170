%% @doc High-level connection establishment with automatic strategy
%% selection: the coordinator's traversal (direct, connection reversal, hole
%% punching with port prediction), with the connector's option names.
-module(macula_nat_connector).

-export([connect/2, connect/3, disconnect/1]).

-type connection() :: macula_connection:connection().

%% @doc Options: `timeout' (ms, default 10000), `prefer_direct' (default
%% true; false punches even where a direct dial would do), `fallback_relay'
%% (default true: when punching is impossible or fails, go through one of
%% the target's relays; `{error, no_relay}' if it has none that takes the
%% session), `max_attempts' (punch attempts), and the coordinator's
%% `relay_only' and `upgrade_interval'. A relayed connection keeps trying
%% to punch in the background and moves to the punched path when it can
%% (the owner gets `{macula_connection, Conn, {method_changed, punched}}').
%% `Target' is the 32-byte NodeId or its 64-character hex form (either
%% case). The connection belongs to the caller, or, called from a process
%% with `$callers' (an Elixir `Task'), to the process that started it; an
%% `owner' option (a pid) names the owner (see `macula_connection', "Who
%% owns a new connection").
-spec connect(binary(), map()) -> {ok, connection()} | {error, term()}.
connect(Target, Opts) when is_binary(Target), is_map(Opts) ->
    case macula_nat_coordinator:request_connection(Target, coordinator_opts(Opts)) of
        {ok, _Method, Conn} -> {ok, Conn};
        {error, _} = E -> E
    end;
connect(_, _) ->
    {error, badarg}.

%% @doc As `connect/2', naming the local node (raw or hex, like
%% `Target'); also returns the method.
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

%% The guide's quick start lets connect/2 fall back to a relay without
%% asking, so the connector allows it unless told otherwise.
coordinator_opts(Opts) ->
    Renames = [{fallback_relay, allow_relay}, {max_attempts, max_punch_attempts}],
    Renamed = lists:foldl(fun({From, To}, Acc) ->
                                  case maps:take(From, Acc) of
                                      {V, Rest} -> Rest#{To => V};
                                      error -> Acc
                                  end
                          end, Opts, Renames),
    maps:merge(#{allow_relay => true}, Renamed).
