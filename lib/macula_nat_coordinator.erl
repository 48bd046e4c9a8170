%% @doc Coordinates connections through a rendezvous.
%%
%% The server owns this node's signalling channel (a QUIC control connection
%% to a rendezvous node, kept alive so the NAT mapping stays open) and, when
%% `rendezvous_server' is set, the rendezvous service itself. Connection
%% requests run in the calling process, which owns the connection it gets:
%% the rendezvous exchanges both profiles and candidates, both sides pick
%% the same strategy from the table (direct, connection reversal, hole
%% punching with or without port prediction, relay), punch from the node's
%% one socket at a moment timed by the measured round trips, and QUIC runs
%% over the winning path.
%%
%% Options: `rendezvous' entries of the form
%% `#{endpoint => <<"ip:port">>, node_id => NodeId}' are joined, all of
%% them (at most 4) in one signal from the node's one socket: the node
%% stays reachable through any that lives, and its record names the live
%% ones; `rendezvous_server => true' makes this node a rendezvous;
%% `relays => [#{node_id => NodeId, endpoint => <<"ip:port">>}]' are the
%% relays this node stays reachable through (best first; see
%% `set_relays/1'), followed by the two best others `macula_relay_registry'
%% knows (updated when its choice changes): it keeps a reservation at each
%% and advertises the live ones to the peers it signals with, so a peer
%% that cannot punch through to it connects through one of them.
-module(macula_nat_coordinator).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, request_connection/2, request_connection/3,
         coordinate_punch/3, get_pending/0, join/2, serve_rendezvous/0, rendezvous_peers/0,
         signal/0, set_relays/1, reserved_relays/0, homes/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(TABLE, macula_nat_coordinator).
-define(PENDING, macula_nat_coordinator_pending).
-define(JOIN_RETRY_MS, 2000).
-define(DEFAULT_TIMEOUT, 10000).
-define(REGISTRY_RETRY_MS, 1000).
%% Relays taken from the registry on top of the configured ones.
-define(REGISTRY_RELAYS, 2).

-type method() :: direct | punched | relayed.

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc Connects to `Target' (a NodeId) by the best method for both NATs.
%% Options: `timeout' (ms, default 10000), `max_punch_attempts',
%% `allow_relay' (default false: relaying is asked for explicitly here; the
%% connector's `fallback_relay' defaults to true), `prefer_direct' (default
%% true), `relay_only' (default false: go through one of the target's relays
%% whatever the NATs), `upgrade_interval' (ms before a relayed connection
%% first tries to punch in the background, doubling up to 30 s; default
%% 2000; `infinity': stay relayed). With `allow_relay', a pair that cannot
%% punch, or whose punch failed, answers `{ok, relayed, Conn}'; when a punch
%% later succeeds the connection moves to it without losing or reordering a
%% message, and the owner gets `{macula_connection, Conn, {method_changed,
%% punched}}'. Errors: `punch_failed', `symmetric_nat' (both sides allocate
%% ports at random and relay is not allowed), `no_relay' (a relay was
%% needed and the target advertises none that takes the session), the
%% relay's refusal with `relay_only' (`max_sessions', `no_reservation',
%% `relay_disabled', `declined'), `timeout', `unknown_peer' (not registered
%% at our rendezvous, and its signed record, from the cache or the DHT,
%% names no rendezvous that knows it), `no_rendezvous' (not joined),
%% `{bad_option, Key}',
%% `bad_node_id', `badarg'.
%%
%% Right after the node started, the configured rendezvous may not be
%% joined yet and the first NAT detection may still run: the request waits
%% for both, within its `timeout' (the profile this node signals is the one
%% detected, read when the request is sent; see `macula_nat_detector').
%%
%% `Target' is the 32-byte NodeId or its hex form. The connection belongs
%% to the caller, to the process that started it when the caller has
%% `$callers' (an Elixir `Task'), or to the `owner' option's process (see
%% `macula_connection', "Who owns a new connection"); a bad `owner' is
%% `{error, {bad_option, owner}}'.
-spec request_connection(binary(), map()) ->
    {ok, method(), macula_connection:connection()} | {error, term()}.
request_connection(Target0, Opts0) when is_binary(Target0), is_map(Opts0) ->
    Target = macula_nat_id:normalize(Target0),
    case macula_connection:owner(Opts0) of
        {ok, Owner} ->
            Opts = maps:remove(owner, Opts0),
            Span = macula_nat_telemetry:span_start(
                     [macula_nat, connect],
                     #{peer => macula_nat_id:format(Target), via => traversal,
                       relay_only => maps:get(relay_only, Opts, false),
                       allow_relay => maps:get(allow_relay, Opts, false)}),
            Result = try traverse(Target, Opts)
                     catch
                         Class:Reason:Stack ->
                             macula_nat_telemetry:span_exception(Span, Class, Reason, Stack),
                             erlang:raise(Class, Reason, Stack)
                     end,
            Final = case Result of
                        {ok, Method, Conn} ->
                            case macula_connection:hand_over(Conn, Owner, true) of
                                {ok, Conn} -> {ok, Method, Conn};
                                {error, _} = E -> E
                            end;
                        {error, _} = E ->
                            E
                    end,
            connect_events(Span, Target, Opts, Final),
            Final;
        {error, _} ->
            {error, {bad_option, owner}}
    end;
request_connection(_, _) ->
    {error, badarg}.

%% The connect span's end, the punch outcome when the result tells it, and
%% a watch on a relayed connection that may still move to a punched path.
connect_events(Span, Target, Opts, {ok, Method, Conn}) ->
    Relay = case Method of
                relayed ->
                    case macula_connection:get_info(Conn, relay) of
                        <<_:32/binary>> = R -> macula_nat_id:format(R);
                        _ -> undefined
                    end;
                _ ->
                    undefined
            end,
    macula_nat_telemetry:span_stop(Span, #{}, #{method => Method, relay => Relay}),
    Method =:= punched andalso punch_event(Span, Target, success, #{method => punched}),
    case Method =:= relayed andalso maps:get(upgrade_interval, Opts, 2000) =/= infinity
        andalso macula_nat_telemetry:enabled() of
        true -> macula_connection_flow:watch(Conn, #{peer => macula_nat_id:format(Target)});
        false -> ok
    end;
connect_events(Span, Target, _Opts, {error, Reason}) ->
    macula_nat_telemetry:span_stop(Span, #{}, #{error => Reason}),
    Reason =:= punch_failed andalso punch_event(Span, Target, failure, #{error => Reason}),
    ok.

punch_event({_, Start, _}, Target, Outcome, Meta) ->
    macula_nat_telemetry:execute([macula_nat, punch, stop],
                                 #{duration => erlang:monotonic_time() - Start},
                                 Meta#{peer => macula_nat_id:format(Target), outcome => Outcome,
                                       upgrade => false}).

traverse(Target, Opts) ->
    Started = erlang:monotonic_time(millisecond),
    case {signal(), joining(), maps:get(timeout, Opts, ?DEFAULT_TIMEOUT)} of
        {{error, _} = E, false, _} ->
            E;
        {_, _, Timeout} when not is_integer(Timeout); Timeout =< 0 ->
            {error, {bad_option, timeout}};
        {_, _, Timeout} ->
            Ref = make_ref(),
            ets:insert(?PENDING, {{self(), Ref}, #{target => Target, started_at => Started}}),
            try
                case await_signal(Timeout) of
                    {ok, Sig} ->
                        Left = Timeout - (erlang:monotonic_time(millisecond) - Started),
                        connect(Sig, Target, Opts, Left);
                    {error, _} = E ->
                        E
                end
            after
                ets:delete(?PENDING, {self(), Ref})
            end
    end.

connect(_Sig, _Target, _Opts, Left) when Left =< 0 ->
    {error, timeout};
connect(Sig, Target, Opts, Left) ->
    macula_nat_async:call(
      fun(R) -> macula_nat_nif:signal_connect(R, Sig, Target, Opts#{timeout => Left}) end,
      Left + 2000).

%% The signal, waiting (at most `Timeout' ms) for the configured
%% rendezvous' first join when it is still under way.
await_signal(Timeout) ->
    case signal() of
        {ok, _} = Ok ->
            Ok;
        {error, _} = E ->
            case joining() of
                true ->
                    try gen_server:call(?MODULE, await_signal, Timeout)
                    catch exit:_ -> E
                    end;
                false ->
                    E
            end
    end.

%% Whether the configured rendezvous is still being joined for the first time.
joining() ->
    try ets:member(?TABLE, joining)
    catch error:badarg -> false
    end.

%% @doc As `request_connection/2', naming the local node, which must be
%% this node (`{error, not_local}' otherwise).
-spec request_connection(binary(), binary(), map()) ->
    {ok, method(), macula_connection:connection()} | {error, term()}.
request_connection(Local, Target, Opts) when is_binary(Local), is_binary(Target), is_map(Opts) ->
    Me = macula_nat_id:normalize(Local),
    case macula:get_node_id() of
        {ok, Me} -> request_connection(Target, Opts);
        {ok, _} -> {error, not_local};
        {error, _} = E -> E
    end;
request_connection(_, _, _) ->
    {error, badarg}.

%% @doc Starts a punch between this node and the other peer (one of `A'
%% and `B' must be this node) and answers at once; the result comes as
%% `{macula_nat_punch, Ref, {ok, Method, Conn}}' (the caller owns `Conn',
%% or the process that started it when the caller has `$callers', or the
%% `owner' option's process) or `{macula_nat_punch, Ref, {error, Reason}}'.
%% `A' and `B' are NodeIds, raw or hex. Punching is forced even
%% where a direct dial would do. `predicted_ports' is accepted for
%% compatibility; the ports come from the exchanged profiles.
-spec coordinate_punch(binary(), binary(), map()) -> {ok, reference()} | {error, term()}.
coordinate_punch(A0, B0, Opts) when is_binary(A0), is_binary(B0), is_map(Opts) ->
    A = macula_nat_id:normalize(A0),
    B = macula_nat_id:normalize(B0),
    case {macula:get_node_id(), macula_connection:owner(Opts)} of
        {_, {error, _}} ->
            {error, {bad_option, owner}};
        {{ok, Me}, {ok, Owner}} when A =:= Me; B =:= Me ->
            Peer = case A of Me -> B; _ -> A end,
            Caller = self(),
            Ref = make_ref(),
            %% The connection goes straight to its owner (the caller
            %% unless told otherwise), from the process that makes it.
            spawn(fun() ->
                          Result = request_connection(Peer, Opts#{prefer_direct => false, owner => Owner}),
                          Caller ! {macula_nat_punch, Ref, Result}
                  end),
            {ok, Ref};
        {{ok, _}, _} ->
            {error, not_local};
        {{error, _} = E, _} ->
            E
    end;
coordinate_punch(_, _, _) ->
    {error, badarg}.

%% @doc Connection requests in flight on this node.
-spec get_pending() -> [map()].
get_pending() ->
    try ets:tab2list(?PENDING) of
        L -> [Info#{pid => Pid} || {{Pid, _}, Info} <- L]
    catch
        error:badarg -> []
    end.

%% @doc Joins the rendezvous at `Endpoint' whose node key is `NodeId' (raw
%% or hex), replacing any current one.
-spec join(macula_nat_endpoint:endpoint(), binary()) -> ok | {error, term()}.
join(Endpoint, NodeId) ->
    call({join, Endpoint, NodeId}, 30000).

%% @doc Makes this node a rendezvous for others (idempotent).
-spec serve_rendezvous() -> ok | {error, term()}.
serve_rendezvous() ->
    call(serve_rendezvous, 5000).

%% @doc Peers registered at this node's rendezvous: `[{NodeId, <<"ip:port">>}]'
%% (the address is the one the rendezvous observes).
-spec rendezvous_peers() -> [{binary(), binary()}].
rendezvous_peers() ->
    case ets:lookup(?TABLE, rendezvous) of
        [{rendezvous, Rv}] -> macula_nat_nif:rendezvous_peers(Rv);
        [] -> []
    end.

%% @doc The relays to stay reachable through, best first, each
%% `#{node_id => NodeId, endpoint => Endpoint}' (replaces the `relays'
%% option; kept across rejoins; the registry's best two still follow);
%% `NodeId' raw or hex. Errors: `{bad_relay, Entry}'.
-spec set_relays([#{node_id := binary(), endpoint := macula_nat_endpoint:endpoint()}]) ->
    ok | {error, term()}.
set_relays(Relays) when is_list(Relays) ->
    case parse_relays(Relays) of
        {ok, Parsed} -> call({set_relays, Parsed}, 5000);
        {error, _} = E -> E
    end;
set_relays(_) ->
    {error, badarg}.

%% @doc The relays this node holds a live reservation at (what it
%% advertises): `[#{node_id => NodeId, endpoint => <<"ip:port">>}]'.
-spec reserved_relays() -> [#{node_id := binary(), endpoint := binary()}].
reserved_relays() ->
    case signal() of
        {ok, Sig} -> [#{node_id => Id, endpoint => Ep} || {Id, Ep} <- macula_nat_nif:signal_reserved_relays(Sig)];
        {error, _} -> []
    end.

%% @doc The rendezvous this node joins (the `rendezvous' entries with a
%% `node_id', at most 4, or the one `join/2' named) and whether each is connected now:
%% `[#{node_id => NodeId, endpoint => <<"ip:port">>, live => boolean()}]'.
-spec homes() -> [#{node_id := binary(), endpoint := binary(), live := boolean()}].
homes() ->
    case signal() of
        {ok, Sig} -> [#{node_id => Id, endpoint => Ep, live => L} || {Id, Ep, L} <- macula_nat_nif:signal_homes(Sig)];
        {error, _} -> []
    end.

%% The signalling channel, for connection requests and accepts.
-spec signal() -> {ok, term()} | {error, no_rendezvous}.
signal() ->
    try ets:lookup(?TABLE, signal) of
        [{signal, Sig}] -> {ok, Sig};
        [] -> {error, no_rendezvous}
    catch
        error:badarg -> {error, no_rendezvous}
    end.


call(Request, Timeout) ->
    try
        gen_server:call(?MODULE, Request, Timeout)
    catch
        exit:{noproc, _} -> {error, not_started};
        exit:{timeout, _} -> {error, timeout}
    end.

%% gen_server

-spec init(map()) -> {ok, map()}.
init(Opts) ->
    ?TABLE = ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    ?PENDING = ets:new(?PENDING, [named_table, public, set]),
    %% macula_nat_config has validated the entries; one that does not
    %% resolve now is skipped rather than stopping the node.
    Relays = case parse_relays(maps:get(relays, Opts, [])) of
                 {ok, R} -> R;
                 {error, Bad} ->
                     ?LOG_WARNING("relays option not used: ~p", [printable(Bad)]),
                     []
             end,
    %% The registry starts after this process: subscribe once it is up.
    self() ! registry_subscribe,
    case maps:get(rendezvous_server, Opts, false) of
        true -> self() ! serve_rendezvous;
        false -> ok
    end,
    Waiter = case [{E, Id} || #{endpoint := E, node_id := Id} <- maps:get(rendezvous, Opts, [])] of
                 [] -> undefined;
                 Homes ->
                     %% Connection requests until the first join wait for it.
                     ets:insert(?TABLE, {joining, true}),
                     join_after_detection(Homes, Opts)
             end,
    {ok, #{opts => Opts, join => undefined, relays => Relays,
           registry => undefined, registry_relays => [], signal_waiters => [],
           detection_waiter => Waiter}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()} | {noreply, map()}.
handle_call({join, Endpoint, NodeId}, _From, State) ->
    case do_join([{Endpoint, NodeId}], 25000) of
        ok -> {reply, ok, apply_relays(joined(State))};
        {error, _} = E -> {reply, E, State}
    end;
handle_call(await_signal, From, #{signal_waiters := Ws} = State) ->
    case {signal(), joining()} of
        {{ok, _} = Ok, _} -> {reply, Ok, State};
        {E, false} -> {reply, E, State};
        {_, true} -> {noreply, State#{signal_waiters := [From | Ws]}}
    end;
handle_call({set_relays, Relays}, _From, State) ->
    {reply, ok, apply_relays(State#{relays := Relays})};
handle_call(serve_rendezvous, _From, State) ->
    {reply, serve(), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(serve_rendezvous, State) ->
    case serve() of
        ok -> ok;
        {error, R} -> ?LOG_WARNING("rendezvous service not started: ~p", [R])
    end,
    {noreply, State};
handle_info({join, Homes}, State) ->
    case do_join(Homes, 10000) of
        ok ->
            {noreply, apply_relays(joined(State))};
        {error, R} ->
            ?LOG_INFO("joining rendezvous ~p failed (~p); retrying", [[E || {E, _} <- Homes], R]),
            erlang:send_after(?JOIN_RETRY_MS, self(), {join, Homes}),
            {noreply, State}
    end;
handle_info(registry_subscribe, State) ->
    {noreply, registry_subscribe(State)};
handle_info({macula_relay_registry, relays_changed}, State) ->
    {noreply, apply_relays(registry_relays(State))};
handle_info({'DOWN', Mon, process, _, Reason}, #{detection_waiter := {Mon, Homes}} = State) ->
    %% The waiter sends the join itself when it ends normally; one that
    %% died (a detector gone mid-call) must not leave the node unjoined.
    Reason =:= normal orelse (self() ! {join, Homes}),
    {noreply, State#{detection_waiter := undefined}};
handle_info({'DOWN', Mon, process, _, _}, #{registry := Mon} = State) ->
    erlang:send_after(?REGISTRY_RETRY_MS, self(), registry_subscribe),
    {noreply, State#{registry := undefined}};
handle_info(_Info, State) ->
    {noreply, State}.

%% The configured rendezvous is joined once the first detection has
%% reported (or failed, or its time is up): the node socket's first
%% mappings belong to the detector, because a NAT that preserves ports
%% does so only for a socket's first mapping, and a join that dialled the
%% rendezvous first made detection read such a NAT as random (seen in the
%% lab). What the node signals does not depend on this order (it reads the
%% current profile when it signals).
%% Returns the monitored waiter `{Mon, Homes}', or `undefined' when the
%% join is sent at once.
join_after_detection(Homes, Opts) ->
    Self = self(),
    case maps:get(observers, Opts, []) of
        [] ->
            Self ! {join, Homes},
            undefined;
        _ ->
            Wait = maps:get(detection_timeout_ms, Opts, 2000) + 1000,
            {_, Mon} = spawn_monitor(fun() ->
                                             %% Joins the detection under way (or takes its
                                             %% result); the outcome does not matter here.
                                             _ = macula_nat_detector:detect(#{timeout => Wait}),
                                             Self ! {join, Homes}
                                     end),
            {Mon, Homes}
    end.

serve() ->
    case ets:lookup(?TABLE, rendezvous) of
        [_] -> ok;
        [] ->
            {ok, Node} = macula_nat_node:resource(),
            case macula_nat_nif:rendezvous_serve(Node) of
                {ok, Rv} ->
                    ets:insert(?TABLE, {rendezvous, Rv}),
                    ?LOG_INFO("serving as rendezvous"),
                    ok;
                {error, _} = E ->
                    E
            end
    end.

%% Joins `Homes' ([{Endpoint, NodeId}], preferred first) in one signal,
%% which replaces the current one.
do_join(Homes, Timeout) ->
    case parse_homes(Homes, []) of
        {ok, Parsed} ->
            {ok, Node} = macula_nat_node:resource(),
            %% Only the fallback: what this node signals is read from the
            %% node when it signals, where every detection publishes its
            %% profile (macula_nat_detector); this one serves while no
            %% detection has published (none configured, or all failed).
            Profile = case macula_nat_detector:get_local_profile() of
                          {ok, P} -> P;
                          _ -> undefined
                      end,
            case macula_nat_async:call(
                   fun(Ref) -> macula_nat_nif:signal_join_homes(Ref, Node, Parsed, Profile) end,
                   Timeout) of
                {ok, Sig} ->
                    %% Targets our rendezvous do not know are looked up in
                    %% the profile cache (their signed records) and
                    %% signalled through a rendezvous they advertise; our
                    %% record names our live homes and reservations.
                    case macula_nat_cache:resource() of
                        {ok, Cache} -> ok = macula_nat_nif:signal_set_directory(Sig, Cache);
                        {error, _} -> ok
                    end,
                    Old = signal(),
                    ets:insert(?TABLE, {signal, Sig}),
                    %% Closed now, not when collected: until then it would
                    %% go on writing its relays and rendezvous into our
                    %% record over the new signal's.
                    case Old of
                        {ok, OldSig} -> macula_nat_nif:signal_close(OldSig);
                        {error, _} -> ok
                    end,
                    [?LOG_INFO("joined rendezvous ~s at ~s",
                               [macula_nat_id:format(Id), macula_nat_endpoint:format(Addr)])
                     || {Addr, Id} <- Parsed],
                    ok;
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

parse_homes([], Acc) ->
    {ok, lists:reverse(Acc)};
parse_homes([{Endpoint, NodeId0} | Rest], Acc) ->
    NodeId = macula_nat_id:normalize(NodeId0),
    case macula_nat_endpoint:parse(Endpoint) of
        {ok, Addr} when is_binary(NodeId), byte_size(NodeId) =:= 32 -> parse_homes(Rest, [{Addr, NodeId} | Acc]);
        {ok, _} -> {error, bad_node_id};
        {error, _} = E -> E
    end.

%% Joined: requests that waited for the first join go on.
joined(#{signal_waiters := Ws} = State) ->
    ets:delete(?TABLE, joining),
    Sig = signal(),
    [gen_server:reply(W, Sig) || W <- Ws],
    State#{signal_waiters := []}.

%% The current signal holds reservations at the wanted relays (a fresh
%% signal after a rejoin starts without any).
apply_relays(#{relays := Configured, registry_relays := FromRegistry} = State) ->
    %% A node does not reserve at itself (one list of relays may be
    %% configured on every node, the relays included).
    Me = own_id(),
    Relays = [R || {Id, _} = R <- Configured, Id =/= Me] ++
             [R || {Id, _} = R <- FromRegistry, not lists:keymember(Id, 1, Configured)],
    case signal() of
        {ok, Sig} ->
            case macula_nat_nif:signal_set_relays(Sig, Relays) of
                ok -> ok;
                {error, R} -> ?LOG_WARNING("relays ~p not used: ~p",
                                           [[{macula_nat_id:format(Id), A} || {Id, A} <- Relays], R])
            end;
        {error, _} ->
            ok
    end,
    State.

%% For log lines: NodeIds in hex.
printable({bad_relay, #{node_id := Id} = R}) -> {bad_relay, R#{node_id := macula_nat_id:format(Id)}};
printable(Other) -> Other.

parse_relays(Relays) when is_list(Relays) ->
    Parsed = [parse_relay(R) || R <- Relays],
    case [R || {R, error} <- lists:zip(Relays, Parsed)] of
        [] -> {ok, Parsed};
        [Bad | _] -> {error, {bad_relay, Bad}}
    end;
parse_relays(Other) ->
    {error, {bad_relay, Other}}.

parse_relay(#{node_id := Id0, endpoint := E}) ->
    case {macula_nat_id:normalize(Id0), macula_nat_endpoint:parse(E)} of
        {<<_:32/binary>> = Id, {ok, Addr}} -> {Id, Addr};
        _ -> error
    end;
parse_relay(_) ->
    error.

registry_subscribe(State) ->
    Subscribed = try macula_relay_registry:subscribe() catch exit:_ -> {error, not_running} end,
    case {whereis(macula_relay_registry), Subscribed} of
        {Pid, ok} when is_pid(Pid) ->
            apply_relays(registry_relays(State#{registry := erlang:monitor(process, Pid)}));
        _ ->
            erlang:send_after(?REGISTRY_RETRY_MS, self(), registry_subscribe),
            State
    end.

%% The registry's best relays, this node excepted.
registry_relays(State) ->
    Me = own_id(),
    Best = [{Id, Addr} || #{node_id := Id, endpoint := E} <- macula_relay_registry:relays(),
                          Id =/= Me, {ok, Addr} <- [macula_nat_endpoint:parse(E)]],
    State#{registry_relays := lists:sublist(Best, ?REGISTRY_RELAYS)}.

own_id() ->
    case macula:get_node_id() of
        {ok, Id} -> Id;
        _ -> undefined
    end.
