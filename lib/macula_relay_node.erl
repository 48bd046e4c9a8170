%% @doc Relay server functionality: this node forwards the (end-to-end
%% encrypted) QUIC packets of peers that cannot reach each other directly.
%%
%% Peers make themselves reachable through a relay by holding a reservation
%% there (`macula_nat_coordinator' option `relays', or `set_relays/1'); a
%% peer that cannot punch through to one of them opens a session at one of
%% its relays and talks through it. The forwarding happens in the node's
%% receive loop in Rust; this process owns the relay (a supervised child
%% of `macula_nat_system': when it dies the relay stops with it) and turns
%% session events into the application's callbacks.
%%
%% `enable/1' options:
%% <ul>
%% <li>`max_sessions' (default 100): sessions beyond it are refused; the
%%     peer asking through `request_relay/2' gets `{error, max_sessions}';</li>
%% <li>`bandwidth_limit' (bytes per second per session, both directions
%%     together, enforced by a token bucket; default `unlimited');</li>
%% <li>`session_timeout' (ms without a packet in either direction after
%%     which a session ends; default 1800000);</li>
%% <li>bounds on what one peer (node key) can hold, so that a few keys
%%     cannot take every slot: `max_sessions_per_key' (sessions it opened,
%%     pending and active; default 16; over it the opener gets
%%     `too_many_sessions'), `max_pending_per_key' (of those, not yet
%%     accepted; default 4; `too_many_pending'), `max_opens_per_minute'
%%     (default 60; `rate_limited'), `max_reservations_per_key' (reserving
%%     connections; default 2: a newer one takes the oldest one's place);
%%     `max_reservations' (reserved nodes in all; default 1000: a Reserve
%%     beyond it is refused) and `pending_timeout' (ms a session may wait
%%     for its target to accept; default 4000);</li>
%% <li>`on_session_start', `on_session_end': funs of arity 1 called with
%%     `#{peer_a, peer_b, session}' and `#{peer_a, peer_b, session,
%%     bytes_transferred, reason}' (`peer_a' opened the session, `peer_b'
%%     is the peer it reached, both NodeIds in lowercase hex so that `~s'
%%     and string interpolation print them (every call takes that form
%%     too); `reason': `closed', `inactive', `peer_gone'
%%     or `relay_disabled'). The calls run one at a time in a process of
%%     their own, never in this server or on the data path: one that
%%     crashes is logged, one that runs longer than 5 s is killed (and
%%     logged), and at most 1,000 wait; beyond that they are dropped and
%%     counted (`callbacks_dropped' in `stats/0').</li>
%% </ul>
%% Enabling again applies the new options to the running relay (sessions
%% go on; a new bandwidth limit applies to new sessions). The relay's load
%% (sessions per `max_sessions') goes to `macula_relay_registry:set_load/1'
%% whenever a session starts or ends, so a registered relay advertises it;
%% a disabled relay says 1.0 (full: never chosen). After a crash of
%% this process, or a restart of the node's socket (which restarts this
%% process too: `macula_nat_system' is `rest_for_one'), the relay comes
%% back with the options in force; `disable/0' forgets them, and so does
%% a fresh start of the system.
-module(macula_relay_node).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, enable/0, enable/1, disable/0, request_relay/2, stats/0, forget/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([session/0]).

%% A relayed connection to `peer', owned by the caller of request_relay/2.
-type session() :: #{connection := macula_connection:connection(),
                     peer := binary(),
                     relay := binary() | undefined}.

%% The options in force, so a restarted server relays again.
-define(ENABLED, {?MODULE, enabled}).
-define(RETRY_MS, 200).
-define(MAX_SESSIONS, 1000000).
-define(MAX_BANDWIDTH, 1000000000000).
-define(MAX_TIMEOUT_MS, 30 * 86400000).
-define(MAX_PENDING_TIMEOUT_MS, 60000).
-define(MAX_PER_KEY, 1000000).
%% Callbacks waiting for the callback runner, beyond which they are dropped.
-define(MAX_CALLBACKS_QUEUED, 1000).
%% Longest one callback may run before it is killed.
-define(CALLBACK_TIMEOUT_MS, 5000).
-define(LIMIT_KEYS, [max_sessions, bandwidth_limit, session_timeout, pending_timeout,
                     max_sessions_per_key, max_pending_per_key, max_opens_per_minute,
                     max_reservations, max_reservations_per_key]).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

-spec enable() -> ok | {error, term()}.
enable() -> enable(#{}).

%% @doc Starts relaying for other nodes (or applies new options to the
%% running relay). Errors: `{bad_option, Key}', `not_started', or why the
%% node could not relay.
-spec enable(map()) -> ok | {error, term()}.
enable(Opts) when is_map(Opts) ->
    case check(Opts) of
        {ok, Limits, Callbacks} -> call({enable, Limits, Callbacks});
        {error, _} = E -> E
    end;
enable(_) ->
    {error, badarg}.

%% @doc Stops relaying: every session ends (both peers are told, and
%% `on_session_end' fires for each), reservations are dropped.
-spec disable() -> ok | {error, term()}.
disable() ->
    call(disable).

%% @doc A relayed connection to `Target' through one of the relays it is
%% reachable through (asked through the rendezvous), owned by the caller
%% (or as `macula_connection' says under "Who owns a new connection";
%% `owner' option). `Target' is a NodeId, raw or hex; the session's `peer'
%% and `relay' are 32-byte ids.
%% Options are the coordinator's (`timeout', `upgrade_interval': the
%% connection still moves to a punched path when one opens, unless
%% `infinity'). Errors: `max_sessions' (the relay is full), `no_relay' (the
%% target advertises no relay), `no_reservation', `relay_disabled',
%% `unknown_peer', `no_rendezvous', `timeout', `{bad_option, Key}', `badarg'.
-spec request_relay(binary(), map()) -> {ok, session()} | {error, term()}.
request_relay(Target0, Opts) when is_binary(Target0), is_map(Opts) ->
    Target = macula_nat_id:normalize(Target0),
    case macula_nat_coordinator:request_connection(Target, Opts#{relay_only => true}) of
        {ok, _Method, Conn} ->
            {ok, #{connection => Conn, peer => Target,
                   relay => macula_connection:get_info(Conn, relay)}};
        {error, _} = E ->
            E
    end;
request_relay(_, _) ->
    {error, badarg}.

%% @doc The running relay's counters and limits: `sessions',
%% `reservations', `clients', `frames_forwarded', `bytes_forwarded',
%% `dropped_over_limit', `dropped_not_a_leg', `dropped_unknown',
%% `control_dropped' (control messages a client did not read in time),
%% `clients_stalled' (clients closed for it), `events_dropped',
%% `callbacks_dropped', `callbacks_timed_out', `legs_moved' (legs that
%% followed their peer to a new address), `load' (sessions per
%% `max_sessions', 0.0 .. 1.0) and the limits in force. `{error, disabled}'
%% when off.
-spec stats() -> {ok, map()} | {error, term()}.
stats() ->
    call(stats).

call(Request) ->
    try
        gen_server:call(?MODULE, Request, 10000)
    catch
        exit:{noproc, _} -> {error, not_started};
        exit:{timeout, _} -> {error, timeout}
    end.

%% Options -> {ok, Limits for the NIF, {OnStart, OnEnd}}.
check(Opts) ->
    Defaults = #{max_sessions => 100, bandwidth_limit => unlimited, session_timeout => 1800000,
                 on_session_start => undefined, on_session_end => undefined},
    Merged = maps:merge(Defaults, Opts),
    case [K || {K, V} <- lists:sort(maps:to_list(Merged)), not valid(K, V)] of
        [] ->
            {ok, maps:with(?LIMIT_KEYS, Merged),
             {maps:get(on_session_start, Merged), maps:get(on_session_end, Merged)}};
        [Bad | _] ->
            {error, {bad_option, Bad}}
    end.

valid(max_sessions, V) -> is_integer(V) andalso V >= 1 andalso V =< ?MAX_SESSIONS;
valid(bandwidth_limit, unlimited) -> true;
valid(bandwidth_limit, infinity) -> true;
valid(bandwidth_limit, V) -> is_integer(V) andalso V >= 1 andalso V =< ?MAX_BANDWIDTH;
valid(session_timeout, V) -> is_integer(V) andalso V >= 1 andalso V =< ?MAX_TIMEOUT_MS;
valid(pending_timeout, V) -> is_integer(V) andalso V >= 1 andalso V =< ?MAX_PENDING_TIMEOUT_MS;
valid(K, V) when K =:= max_sessions_per_key; K =:= max_pending_per_key; K =:= max_opens_per_minute;
                 K =:= max_reservations; K =:= max_reservations_per_key ->
    is_integer(V) andalso V >= 1 andalso V =< ?MAX_PER_KEY;
valid(on_session_start, F) -> F =:= undefined orelse is_function(F, 1);
valid(on_session_end, F) -> F =:= undefined orelse is_function(F, 1);
valid(_, _) -> false.

%% @private Forgets the options a restarted server would relay with
%% (`macula_nat_system' calls it when it starts).
-spec forget() -> ok.
forget() ->
    forget_enabled().

%% gen_server
%%
%% State: `relay' (the running relay resource or undefined), `enabled'
%% (its {Limits, Callbacks}), `callbacks' (per relay resource, until its
%% last event has arrived: a disabled relay still reports its last
%% sessions' ends, to the callbacks it was enabled with). The relay lives
%% on the node's socket; when the node restarts, the supervisor restarts
%% this server after it.

-spec init(map()) -> {ok, map()}.
init(_Opts) ->
    %% Trapping exits, a stop by the supervisor ends the sessions
    %% (terminate/2). The options stay for the restart: the supervisor
    %% stops this server the same way when it restarts it after the node.
    process_flag(trap_exit, true),
    Enabled = persistent_term:get(?ENABLED, undefined),
    case Enabled of
        undefined -> ok;
        _ -> self() ! restart_relay
    end,
    {ok, #{relay => undefined, enabled => Enabled, callbacks => #{}, sessions => #{},
           runner => undefined, queued => 0, callbacks_dropped => 0, callbacks_timed_out => 0}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({enable, Limits, Callbacks}, _From, #{relay := undefined} = State) ->
    case start_relay(Limits, Callbacks, State) of
        {ok, State1} -> report_load(State1), {reply, ok, State1};
        {error, _} = E -> {reply, E, State}
    end;
handle_call({enable, Limits, Callbacks}, _From, #{relay := Relay, callbacks := Cbs} = State) ->
    case macula_nat_nif:relay_set_limits(Relay, Limits) of
        ok ->
            persistent_term:put(?ENABLED, {Limits, Callbacks}),
            report_load(State),
            {reply, ok, State#{enabled := {Limits, Callbacks}, callbacks := Cbs#{Relay => Callbacks}}};
        {error, _} = E ->
            {reply, E, State}
    end;
handle_call(disable, _From, State) ->
    forget_enabled(),
    State1 = stop_relay(State),
    report_load(State1),
    {reply, ok, State1#{enabled := undefined}};
handle_call(stats, _From, #{relay := undefined} = State) ->
    {reply, {error, disabled}, State};
handle_call(stats, _From, #{relay := Relay, callbacks_dropped := Dropped,
                             callbacks_timed_out := TimedOut} = State) ->
    Reply = case macula_nat_nif:relay_stats(Relay) of
                {ok, Stats} -> {ok, Stats#{callbacks_dropped => Dropped, callbacks_timed_out => TimedOut}};
                Other -> Other
            end,
    {reply, Reply, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({macula_relay_event, Relay, started, Info0}, #{sessions := Ss} = State) ->
    Info = printable(Info0),
    {Start, _} = callbacks(Relay, State),
    State1 = run(on_session_start, Start, Info, State),
    Now = erlang:monotonic_time(),
    macula_nat_telemetry:execute([macula_nat, relay, session, start],
                                 #{system_time => erlang:system_time(), monotonic_time => Now}, Info),
    report_load(State1),
    {noreply, State1#{sessions := Ss#{{Relay, maps:get(session, Info, undefined)} => Now}}};
handle_info({macula_relay_event, Relay, ended, Info0}, #{sessions := Ss} = State) ->
    Info = printable(Info0),
    {_, End} = callbacks(Relay, State),
    State1 = run(on_session_end, End, Info, State),
    Key = {Relay, maps:get(session, Info, undefined)},
    Now = erlang:monotonic_time(),
    Duration = case maps:find(Key, Ss) of
                   {ok, Started} -> #{duration => Now - Started};
                   error -> #{}
               end,
    macula_nat_telemetry:execute([macula_nat, relay, session, stop],
                                 Duration#{bytes => maps:get(bytes_transferred, Info, 0),
                                           monotonic_time => Now},
                                 maps:remove(bytes_transferred, Info)),
    report_load(State1),
    {noreply, State1#{sessions := maps:remove(Key, Ss)}};
handle_info({macula_relay_event, Relay, stopped}, #{callbacks := Cbs} = State) ->
    {noreply, State#{callbacks := maps:remove(Relay, Cbs)}};
handle_info(restart_relay, #{relay := undefined, enabled := {Limits, Callbacks}} = State) ->
    case start_relay(Limits, Callbacks, State) of
        {ok, State1} ->
            report_load(State1),
            {noreply, State1};
        {error, R} ->
            ?LOG_INFO("relay not restarted yet (~p); retrying", [R]),
            erlang:send_after(?RETRY_MS, self(), restart_relay),
            {noreply, State}
    end;
handle_info({callback_done, Runner, TimedOut}, #{runner := Runner, queued := Q,
                                                 callbacks_timed_out := T} = State) ->
    {noreply, State#{queued := max(0, Q - 1), callbacks_timed_out := T + TimedOut}};
handle_info({'EXIT', Runner, _Reason}, #{runner := Runner} = State) ->
    %% Its queue went with it: those callbacks count as dropped.
    #{queued := Q, callbacks_dropped := D} = State,
    {noreply, State#{runner := undefined, queued := 0, callbacks_dropped := D + Q}};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), map()) -> ok.
terminate(_Reason, State) ->
    _ = stop_relay(State),
    ok.

start_relay(Limits, Callbacks, #{callbacks := Cbs} = State) ->
    case macula_nat_node:resource() of
        {ok, Node} ->
            case macula_nat_nif:relay_enable(Node, Limits, self()) of
                {ok, Relay} ->
                    persistent_term:put(?ENABLED, {Limits, Callbacks}),
                    ?LOG_INFO("relaying for other nodes: ~p", [Limits]),
                    {ok, State#{relay := Relay, enabled := {Limits, Callbacks},
                                callbacks := Cbs#{Relay => Callbacks}}};
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

stop_relay(#{relay := undefined} = State) ->
    State;
stop_relay(#{relay := Relay} = State) ->
    %% The sessions' `ended' events follow as messages, then `stopped'.
    {ok, _Ended} = macula_nat_nif:relay_disable(Relay),
    State#{relay := undefined}.

forget_enabled() ->
    _ = persistent_term:erase(?ENABLED),
    ok.

%% The registry advertises this load while this node is registered as a
%% relay (its call is a NIF read, never a wait on the registry process).
report_load(#{relay := undefined}) ->
    _ = macula_relay_registry:set_load(1.0),
    ok;
report_load(#{relay := Relay}) ->
    case macula_nat_nif:relay_stats(Relay) of
        {ok, #{load := Load}} -> _ = macula_relay_registry:set_load(min(1.0, Load));
        {error, _} -> ok
    end,
    ok.

%% NodeIds as the callbacks and telemetry give them: hex.
printable(Info) ->
    maps:map(fun(K, Id) when K =:= peer_a; K =:= peer_b -> macula_nat_id:format(Id);
                (_, V) -> V
             end, Info).

callbacks(Relay, #{callbacks := Cbs}) ->
    maps:get(Relay, Cbs, {undefined, undefined}).

%% Hands a callback to the runner (started on the first one): one process
%% runs them in order, each in a process of its own that it kills after
%% ?CALLBACK_TIMEOUT_MS, so at most two processes and ?MAX_CALLBACKS_QUEUED
%% waiting calls exist however fast events come.
run(_Which, undefined, _Info, State) ->
    State;
run(_Which, _Fun, _Info, #{queued := Q, callbacks_dropped := D} = State) when Q >= ?MAX_CALLBACKS_QUEUED ->
    State#{callbacks_dropped := D + 1};
run(Which, Fun, Info, #{queued := Q} = State) ->
    State1 = ensure_runner(State),
    #{runner := Runner} = State1,
    Runner ! {run, Which, Fun, Info},
    State1#{queued := Q + 1}.

ensure_runner(#{runner := undefined} = State) ->
    Server = self(),
    State#{runner := spawn_link(fun() -> runner_loop(Server) end)};
ensure_runner(State) ->
    State.

runner_loop(Server) ->
    receive
        {run, Which, Fun, Info} ->
            {Pid, Ref} = spawn_monitor(fun() -> call_logged(Which, Fun, Info) end),
            TimedOut =
                receive
                    {'DOWN', Ref, process, Pid, _} -> 0
                after ?CALLBACK_TIMEOUT_MS ->
                        exit(Pid, kill),
                        receive {'DOWN', Ref, process, Pid, _} -> ok end,
                        ?LOG_WARNING("relay ~p callback killed after ~p ms", [Which, ?CALLBACK_TIMEOUT_MS]),
                        1
                end,
            Server ! {callback_done, self(), TimedOut},
            runner_loop(Server)
    end.

call_logged(Which, Fun, Info) ->
    try Fun(Info)
    catch Class:Reason:Stack ->
            ?LOG_WARNING("relay ~p callback failed: ~p:~p~n~p", [Which, Class, Reason, Stack])
    end.
