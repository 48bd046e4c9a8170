%% @doc High-level connection establishment with automatic strategy
%% selection. Not built yet (issue: connections and hole punching).
-module(macula_nat_connector).

-export([connect/2, connect/3, disconnect/1]).

-type connection() :: macula_connection:connection().

%% @doc Options: `timeout', `prefer_direct', `fallback_relay', `max_attempts'.
-spec connect(binary(), map()) -> {ok, connection()} | {error, term()}.
connect(Target, Opts) when is_binary(Target), is_map(Opts) -> {error, not_implemented};
connect(_, _) -> {error, badarg}.

%% @doc As `connect/2', naming the local node; also returns the method.
-spec connect(binary(), binary(), map()) ->
    {ok, connection(), direct | punched | relayed} | {error, term()}.
connect(Local, Target, Opts) when is_binary(Local), is_binary(Target), is_map(Opts) ->
    {error, not_implemented};
connect(_, _, _) -> {error, badarg}.

-spec disconnect(connection()) -> ok | {error, term()}.
disconnect(_Conn) -> {error, not_implemented}.
