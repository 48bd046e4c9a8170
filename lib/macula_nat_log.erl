%% @doc The Rust core's diagnostics in `logger'.
%%
%% The core's `tracing' events are attributed to the Erlang module whose
%% calls cause them and logged with that module's metadata (`mfa'), so
%% `logger:set_module_level/2' works on them as on `?LOG_DEBUG' in the
%% module itself:
%%
%% | Rust (macula_nat_core::…)                  | Erlang module            |
%% |--------------------------------------------|--------------------------|
%% | connect::*, punch::*                       | macula_nat_connector     |
%% | connect::signalling, rendezvous, relay::client | macula_nat_coordinator |
%% | detect::*, local_profile                   | macula_nat_detector      |
%% | relay::* (the relay server)                | macula_relay_node        |
%% | relay_registry                             | macula_relay_registry    |
%% | profile_cache, advertiser, dht             | macula_nat_cache         |
%% | anything else (quic, socket, node)         | macula_nat_node          |
%%
%% This process tells the NIF which levels each of those modules allows
%% (`logger:allow/2': the module level, else the primary level) when it
%% starts, every `?REFRESH_MS', and on `refresh/0'. A Rust event whose
%% level is off is never formatted. Enabled events reach this process in
%% batches, one at a time (the next is sent when this one is logged), and a
%% burst beyond the core's buffer of 1024 events is dropped and counted:
%% one warning, a second after the first drop, says how many.
%%
%% Last child of `macula_nat_system': a restart of it restarts nothing else.
-module(macula_nat_log).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, refresh/0, modules/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(REFRESH_MS, 1000).
-define(DROPS_MS, 1000).
-define(MODULES, [macula_nat_node, macula_nat_detector, macula_nat_coordinator,
                  macula_nat_connector, macula_relay_node, macula_relay_registry,
                  macula_nat_cache]).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(_Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Pushes the current logger levels to the core now (they are also
%% looked at every second): after `logger:set_module_level/2', events of
%% the new level flow from the next one on.
-spec refresh() -> ok.
refresh() ->
    gen_server:call(?MODULE, refresh).

%% @doc The Erlang modules the core's events are attributed to.
-spec modules() -> [module()].
modules() -> ?MODULES.

-spec init([]) -> {ok, map()}.
init([]) ->
    process_flag(trap_exit, true),
    Levels = levels(),
    case macula_nat_nif:log_attach(self(), Levels) of
        ok -> ok;
        {error, Reason} ->
            %% Another tracing subscriber owns the VM: no core events.
            ?LOG_WARNING("macula_nat: core diagnostics not forwarded to logger (~p)", [Reason])
    end,
    erlang:send_after(?REFRESH_MS, self(), refresh),
    {ok, #{levels => Levels, dropped => 0}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(refresh, _From, S) ->
    {reply, ok, push(S)};
handle_call(_Req, _From, S) ->
    {reply, {error, badarg}, S}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, S) ->
    {noreply, S}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({macula_nat_log, Lines, Dropped}, S) ->
    lists:foreach(fun log/1, Lines),
    ok = macula_nat_nif:log_ack(),
    {noreply, dropped(Dropped, S)};
handle_info(report_dropped, #{dropped := N} = S) ->
    ?LOG_WARNING("macula_nat: ~b core log events dropped (burst over the 1024-event buffer)", [N]),
    {noreply, S#{dropped := 0}};
handle_info(refresh, S) ->
    erlang:send_after(?REFRESH_MS, self(), refresh),
    {noreply, push(S)};
handle_info(_Msg, S) ->
    {noreply, S}.

-spec terminate(term(), map()) -> ok.
terminate(_Reason, _S) ->
    _ = macula_nat_nif:log_detach(self()),
    ok.

%% Internal

push(#{levels := Old} = S) ->
    case levels() of
        Old -> S;
        New ->
            ok = macula_nat_nif:log_levels(New),
            S#{levels := New}
    end.

%% Drops are added up and reported once, `?DROPS_MS' after the first: a
%% burst is one warning, however many batches it took.
dropped(0, S) -> S;
dropped(D, #{dropped := 0} = S) ->
    erlang:send_after(?DROPS_MS, self(), report_dropped),
    S#{dropped := D};
dropped(D, #{dropped := N} = S) ->
    S#{dropped := N + D}.

%% For each module, how many of error, warning, info, debug logger lets
%% through for it (the levels are ordered: a prefix is allowed).
levels() ->
    [{M, length(lists:takewhile(fun(L) -> logger:allow(L, M) end,
                                [error, warning, info, debug]))}
     || M <- ?MODULES].

log({Mod, Level, Target, File, Line, Text}) ->
    %% What ?LOG_DEBUG in Mod does: the module's level decides.
    case logger:allow(Level, Mod) of
        true ->
            logger:macro_log(#{mfa => {Mod, core, 0}, file => binary_to_list(File), line => Line},
                             Level, "~ts", [Text],
                             #{domain => [macula_nat, core], rust_target => Target});
        false ->
            ok
    end.
