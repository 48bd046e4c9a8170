%% @private Emits this library's `telemetry' events (see README,
%% "Telemetry") through `telemetry:execute/3' when the host application
%% has the `telemetry' module available; without it every call here is a
%% cheap no-op. There is no dependency on telemetry: whether it is there is
%% looked up once (`code:ensure_loaded/1') and kept in a `persistent_term';
%% a module loaded later is noticed by `erlang:module_loaded/1' (a BIF).
%% Nothing here raises: a failing `execute/3' is ignored (telemetry
%% itself detaches handlers that crash).
-module(macula_nat_telemetry).

-export([enabled/0, execute/3, span_start/2, span_stop/3, span_exception/4, reset/0]).

-define(KEY, {?MODULE, telemetry}).

-type event() :: [atom(), ...].
-type span() :: {event(), integer(), map()}.
-export_type([span/0]).

%% @doc Whether events go anywhere.
-spec enabled() -> boolean().
enabled() ->
    case persistent_term:get(?KEY, undefined) of
        true ->
            true;
        false ->
            %% Loaded since we looked (e.g. its application started after
            %% ours): from now on, emit.
            erlang:module_loaded(telemetry) andalso remember(true);
        undefined ->
            remember(code:ensure_loaded(telemetry) =:= {module, telemetry})
    end.

remember(Bool) ->
    persistent_term:put(?KEY, Bool),
    Bool.

%% @doc Forgets what was looked up (tests that load or purge a telemetry).
-spec reset() -> ok.
reset() ->
    _ = persistent_term:erase(?KEY),
    ok.

-spec execute(event(), map(), map()) -> ok.
execute(Event, Measurements, Metadata) ->
    case enabled() of
        true ->
            try telemetry:execute(Event, Measurements, Metadata)
            catch _:_ -> ok
            end,
            ok;
        false ->
            ok
    end.

%% @doc `Prefix ++ [start]' with `#{system_time, monotonic_time}', as
%% `telemetry:span/3' does; the span to end with `span_stop/3' or
%% `span_exception/4'. Metadata gets a `telemetry_span_context'.
-spec span_start(event(), map()) -> span().
span_start(Prefix, Meta0) ->
    Start = erlang:monotonic_time(),
    Meta = Meta0#{telemetry_span_context => make_ref()},
    execute(Prefix ++ [start], #{system_time => erlang:system_time(), monotonic_time => Start}, Meta),
    {Prefix, Start, Meta}.

%% @doc `Prefix ++ [stop]' with `#{duration, monotonic_time}' (native
%% units) and the start's metadata merged with `Meta'.
-spec span_stop(span(), map(), map()) -> ok.
span_stop({Prefix, Start, Meta0}, Measurements, Meta) ->
    Now = erlang:monotonic_time(),
    execute(Prefix ++ [stop], Measurements#{duration => Now - Start, monotonic_time => Now},
            maps:merge(Meta0, Meta)).

%% @doc `Prefix ++ [exception]' with `#{duration, monotonic_time}' and
%% `kind', `reason', `stacktrace' in the metadata.
-spec span_exception(span(), atom(), term(), list()) -> ok.
span_exception({Prefix, Start, Meta0}, Kind, Reason, Stack) ->
    Now = erlang:monotonic_time(),
    execute(Prefix ++ [exception], #{duration => Now - Start, monotonic_time => Now},
            Meta0#{kind => Kind, reason => Reason, stacktrace => Stack}).
