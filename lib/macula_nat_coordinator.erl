%% @doc Coordinates hole punching between peers. Punching is not built yet
%% (issue: connections and hole punching): the connection calls answer
%% `{error, not_implemented}'; `get_pending/0' is real (there is nothing
%% pending).
-module(macula_nat_coordinator).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, request_connection/2, request_connection/3,
         coordinate_punch/3, get_pending/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc Options: `timeout', `max_punch_attempts', `allow_relay'.
-spec request_connection(binary(), map()) ->
    {ok, direct | punched | relayed, term()} | {error, term()}.
request_connection(Target, Opts) when is_binary(Target), is_map(Opts) ->
    {error, not_implemented};
request_connection(_, _) ->
    {error, badarg}.

%% @doc As `request_connection/2', naming the local node explicitly.
-spec request_connection(binary(), binary(), map()) ->
    {ok, direct | punched | relayed, term()} | {error, term()}.
request_connection(Local, Target, Opts) when is_binary(Local), is_binary(Target), is_map(Opts) ->
    {error, not_implemented};
request_connection(_, _, _) ->
    {error, badarg}.

%% @doc Low-level punch coordination; the result is sent as a message.
-spec coordinate_punch(binary(), binary(), map()) -> {ok, reference()} | {error, term()}.
coordinate_punch(A, B, Opts) when is_binary(A), is_binary(B), is_map(Opts) ->
    {error, not_implemented};
coordinate_punch(_, _, _) ->
    {error, badarg}.

%% @doc Punch attempts in flight.
-spec get_pending() -> [map()].
get_pending() ->
    try
        gen_server:call(?MODULE, get_pending)
    catch
        exit:{noproc, _} -> []
    end.

-spec init(map()) -> {ok, map()}.
init(Opts) -> {ok, #{opts => Opts, pending => #{}}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(get_pending, _From, #{pending := P} = State) ->
    {reply, maps:values(P), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(_Info, State) -> {noreply, State}.
