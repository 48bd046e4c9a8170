%% A stand-in for the `telemetry' library in tests only: `execute/3',
%% `attach/4', `attach_many/4', `detach/1' with telemetry's contracts
%% (handlers `fun(Event, Measurements, Metadata, Config)', run in the
%% emitting process; one that raises is detached). telemetry is not
%% installable here (no hex), and macula_nat has no dependency on it: it
%% emits when a module named `telemetry' is loaded.
%%
%% Compiled only by rebar3's test profile (`extra_src_dirs' test/ in
%% rebar.config); the default profile and Mix (`erlc_paths' lib/) never
%% build it, so it cannot shadow a real telemetry in an application.
-module(telemetry).

-export([execute/3, attach/4, attach_many/4, detach/1, list_handlers/1]).

-define(KEY, {?MODULE, stub_handlers}).

-type event_name() :: [atom(), ...].
-type handler_id() :: term().
-type handler() :: fun((event_name(), map(), map(), term()) -> any()).

-spec execute(event_name(), map(), map()) -> ok.
execute(Event, Measurements, Metadata) when is_list(Event), is_map(Measurements), is_map(Metadata) ->
    [try Fun(Event, Measurements, Metadata, Config)
     catch _:_ -> detach(Id)
     end || {Id, Events, Fun, Config} <- handlers(), lists:member(Event, Events)],
    ok.

-spec attach(handler_id(), event_name(), handler(), term()) -> ok | {error, already_exists}.
attach(Id, Event, Fun, Config) ->
    attach_many(Id, [Event], Fun, Config).

-spec attach_many(handler_id(), [event_name()], handler(), term()) -> ok | {error, already_exists}.
attach_many(Id, Events, Fun, Config) when is_function(Fun, 4) ->
    case lists:keymember(Id, 1, handlers()) of
        true -> {error, already_exists};
        false -> persistent_term:put(?KEY, [{Id, Events, Fun, Config} | handlers()])
    end.

-spec detach(handler_id()) -> ok | {error, not_found}.
detach(Id) ->
    case lists:keymember(Id, 1, handlers()) of
        true -> persistent_term:put(?KEY, lists:keydelete(Id, 1, handlers()));
        false -> {error, not_found}
    end.

-spec list_handlers(event_name() | []) -> [map()].
list_handlers(Prefix) ->
    [#{id => Id, event_name => E, function => F, config => C}
     || {Id, Events, F, C} <- handlers(), E <- Events, lists:prefix(Prefix, E)].

handlers() ->
    persistent_term:get(?KEY, []).
