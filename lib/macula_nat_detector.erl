%% @doc Detects the local NAT's mapping, filtering and allocation behaviour
%% with STUN (RFC 8489 + RFC 5780), from the node's one UDP socket.
%%
%% The current profile lives in a protected ETS table so that
%% `get_local_profile/0' never waits on this process. Subscribers are
%% monitored and forgotten when they die.
%%
%% Every profile stored (first detection, periodic, forced, network change,
%% an address moved by peers' observations) is also published on the node
%% (`macula_nat_nif:node_set_profile/2'), where signalling reads it each
%% time it tells a peer or the rendezvous about this node; while the first
%% detection runs, the node is told to expect one
%% (`node_expect_profile/2'), so a connect or an answer issued meanwhile
%% waits for it instead of signalling a guess. Followers (`follow/1',
%% internal) get `{macula_nat_detector, profile, Profile, Changed}' after
%% every stored profile, the first included.
%%
%% The mapping lifetime (RFC 5780 section 4.6) is measured off the connect
%% path: after the first stored profile with observers configured, and
%% again when the public address changes, a background measurement
%% (`macula_nat_nif:lifetime_start/4', sockets of its own, about 1.7
%% lifetimes) starts against the first observer of the node socket's
%% family; `detect/0' never waits for
%% it. Its result fills `mapping_lifetime' (ms) and `mapping_lifetime_bound'
%% (`estimate', or `at_least' when the mapping outlived the cap, e.g. no NAT
%% and no stateful firewall, or `at_most' when it died before the lowest
%% age probed) in the stored profile, which later detections carry over. A
%% lifetime arriving does not fire `nat_profile_changed' (not an identity
%% key). Options: `measure_mapping_lifetime' (default true) and
%% `mapping_lifetime_cap_ms' (default 600000).
-module(macula_nat_detector).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, detect/0, detect/1, get_local_profile/0,
         add_observation/2, add_observation/3, refresh/0, subscribe/1, unsubscribe/1,
         follow/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([nat_profile/0]).

-type nat_profile() :: #{
    mapping := ei | hd | pd,
    filtering := ei | hd | pd,
    allocation := pp | pc | rd,
    public_ip := inet:ip_address(),
    public_port := inet:port_number(),
    detected_at := integer(),
    confidence := high | medium | low,
    atom() => term()
}.

-define(TABLE, ?MODULE).
-define(DEFAULT_TIMEOUT, 5000).
-define(CALL_MARGIN_MS, 500).
%% How often the interface list is compared, to notice network changes.
-define(NETCHECK_MS, 5000).
-define(DEFAULT_REFRESH_MS, 300000).
%% How long past its timeout a detection may take to report, for those
%% waiting for the first profile.
-define(REPORT_MARGIN_MS, 1000).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc Detect local NAT characteristics (cached profile unless `force').
-spec detect() -> {ok, nat_profile()} | {error, term()}.
detect() ->
    detect(#{}).

%% @doc Options: `force' (boolean), `timeout' (ms, default 5000),
%% `observers' (list of `{Ip, Port}', `<<"host:port">>' or `"host:port"';
%% default: the system's `observers' option). Concurrent callers share one
%% detection. Errors: `detection_timeout', `no_observers', `bad_endpoint'.
%% A re-detection on the same socket does not count answers the last run's
%% sends may have let through the filter (see README).
-spec detect(map()) -> {ok, nat_profile()} | {error, term()}.
detect(Opts) when is_map(Opts) ->
    Force = maps:get(force, Opts, false),
    Timeout = maps:get(timeout, Opts, ?DEFAULT_TIMEOUT),
    case {is_boolean(Force), is_integer(Timeout) andalso Timeout > 0, observers(Opts)} of
        {true, true, {ok, Observers}} ->
            case {Force, get_local_profile()} of
                {false, {ok, Profile}} ->
                    {ok, Profile};
                _ ->
                    try
                        gen_server:call(?MODULE, {detect, Observers, Timeout}, Timeout + ?CALL_MARGIN_MS)
                    catch
                        exit:{timeout, _} -> {error, detection_timeout};
                        exit:{noproc, _} -> {error, not_started}
                    end
            end;
        {_, _, {error, _} = Error} ->
            Error;
        _ ->
            {error, badarg}
    end;
detect(_) ->
    {error, badarg}.

%% Observers are parsed (and host names resolved) in the caller, never in
%% the detector process.
observers(#{observers := List}) when is_list(List) ->
    parse_all(List, []);
observers(#{observers := _}) ->
    {error, bad_endpoint};
observers(_) ->
    {ok, default}.

parse_all([], Acc) ->
    {ok, lists:reverse(Acc)};
parse_all([Ep | Rest], Acc) ->
    case macula_nat_endpoint:parse(Ep) of
        {ok, Addr} -> parse_all(Rest, [Addr | Acc]);
        {error, _} = Error -> Error
    end.

%% @doc The last detected profile, without touching the network.
-spec get_local_profile() -> {ok, nat_profile()} | {error, not_detected}.
get_local_profile() ->
    try ets:lookup(?TABLE, profile) of
        [{profile, P}] -> {ok, P};
        [] -> {error, not_detected}
    catch
        error:badarg -> {error, not_detected}
    end.

%% @doc Reflexive address of this node as reported by a peer. The report
%% is attributed to the calling process (one connection process per peer is
%% one vote); use `add_observation/3' to name the peer. The believed public
%% address moves only when `observation_quorum' (3) distinct peers agree and
%% outnumber the current belief, so one lying peer cannot flip it.
-spec add_observation(inet:ip_address(), inet:port_number()) -> ok | {error, badarg}.
add_observation(Ip, Port) ->
    add_observation(Ip, Port, term_to_binary(self())).

%% @doc As `add_observation/2', from the peer with node id `PeerId'.
-spec add_observation(inet:ip_address(), inet:port_number(), binary()) -> ok | {error, badarg}.
add_observation(Ip, Port, PeerId) when is_binary(PeerId) ->
    case macula_nat_endpoint:parse({Ip, Port}) of
        {ok, Addr} -> gen_server:cast(?MODULE, {observation, macula_nat_id:normalize(PeerId), Addr});
        {error, _} -> {error, badarg}
    end;
add_observation(_, _, _) ->
    {error, badarg}.

%% @doc Trigger a background re-detection (e.g. after a network change).
-spec refresh() -> ok.
refresh() ->
    gen_server:cast(?MODULE, refresh).

%% @doc `Pid' receives `{nat_profile_changed, Old, New}' whenever the
%% profile changes, until it unsubscribes or dies.
-spec subscribe(pid()) -> ok | {error, term()}.
subscribe(Pid) when is_pid(Pid) ->
    call({subscribe, Pid});
subscribe(_) ->
    {error, badarg}.

-spec unsubscribe(pid()) -> ok | {error, term()}.
unsubscribe(Pid) when is_pid(Pid) ->
    call({unsubscribe, Pid});
unsubscribe(_) ->
    {error, badarg}.

%% @private Internal (the profile cache's advertisement): `Pid' receives
%% `{macula_nat_detector, profile, Profile, Changed}' after every stored
%% profile, the first one included (`Changed' is true for the first and
%% for a change as `subscribe/1' reports it), and at once the current one
%% if there is one. Monitored.
-spec follow(pid()) -> ok | {error, term()}.
follow(Pid) when is_pid(Pid) ->
    call({follow, Pid});
follow(_) ->
    {error, badarg}.

call(Request) ->
    try
        gen_server:call(?MODULE, Request)
    catch
        exit:{noproc, _} -> {error, not_started}
    end.

%% gen_server

-spec init(map()) -> {ok, map()}.
init(Opts) ->
    ?TABLE = ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    Configured = case parse_all(maps:get(observers, Opts, []), []) of
                     {ok, L} -> L;
                     {error, _} ->
                         ?LOG_WARNING("ignoring unparsable observers ~p", [maps:get(observers, Opts)]),
                         []
                 end,
    {ok, Observations} = macula_nat_nif:observations_new(
                           maps:get(observation_quorum, Opts, 3), 600000, 64),
    State = #{opts => Opts,
              observations => Observations,
              observers => Configured,
              subscribers => #{},
              followers => #{},
              inflight => undefined,
              lifetime => undefined,
              lifetime_for => undefined,
              ifaddrs => ifaddrs()},
    %% The rendezvous sees our public address move (a renumbered router, a
    %% rebinding NAT) before anything on this host can.
    case macula_nat_node:resource() of
        {ok, Node} -> ok = macula_nat_nif:node_watch_reflexive(Node, self());
        {error, _} -> ok
    end,
    case Configured of
        [] -> ok;
        _ ->
            %% Auto-detect at start, then keep the profile fresh. From now
            %% on signalling waits for that first profile.
            expect_profile(maps:get(detection_timeout_ms, Opts, 2000)),
            self() ! {background_detect, start},
            erlang:send_after(?NETCHECK_MS, self(), netcheck)
    end,
    {ok, State}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()} | {noreply, map()}.
handle_call({detect, Observers, Timeout}, From, State) ->
    start_detection(Observers, Timeout, {caller, From}, State);
handle_call({subscribe, Pid}, _From, #{subscribers := Subs} = State) ->
    case maps:is_key(Pid, Subs) of
        true ->
            {reply, ok, State};
        false ->
            Mon = erlang:monitor(process, Pid),
            ?LOG_DEBUG("subscriber ~p added", [Pid]),
            {reply, ok, State#{subscribers := Subs#{Pid => Mon}}}
    end;
handle_call({follow, Pid}, _From, #{followers := Fs} = State) ->
    Fs1 = case maps:is_key(Pid, Fs) of
              true -> Fs;
              false -> Fs#{Pid => erlang:monitor(process, Pid)}
          end,
    case get_local_profile() of
        {ok, P} -> Pid ! {macula_nat_detector, profile, P, true};
        {error, _} -> ok
    end,
    {reply, ok, State#{followers := Fs1}};
handle_call({unsubscribe, Pid}, _From, #{subscribers := Subs} = State) ->
    case maps:take(Pid, Subs) of
        {Mon, Rest} ->
            erlang:demonitor(Mon, [flush]),
            {reply, ok, State#{subscribers := Rest}};
        error ->
            {reply, ok, State}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(refresh, State) ->
    background(refresh, State);
handle_cast({observation, Peer, Addr}, #{observations := Obs} = State) ->
    case macula_nat_nif:observations_add(Obs, Peer, Addr) of
        {changed, New} -> observed_change(New, State);
        _ -> {noreply, State}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({background_detect, Why}, State) ->
    background(Why, State);
handle_info(netcheck, #{ifaddrs := Old} = State) ->
    erlang:send_after(?NETCHECK_MS, self(), netcheck),
    case ifaddrs() of
        Old ->
            {noreply, State};
        New ->
            ?LOG_INFO("network interfaces changed, re-detecting NAT profile"),
            background(network_change, State#{ifaddrs := New})
    end;
handle_info({macula_nat_node, reflexive_changed, Old, New}, State) ->
    ?LOG_INFO("the rendezvous sees us at a new public address ~s (was ~s)",
              [macula_nat_endpoint:format(New), macula_nat_endpoint:format(Old)]),
    public_address_moved(New, State);
handle_info({macula_nat_reply, Ref, Result}, #{inflight := #{ref := Ref, waiters := Waiters} = In} = State) ->
    State1 = State#{inflight := undefined},
    macula_nat_telemetry:span_stop(maps:get(span, In), #{},
                                   case Result of
                                       {ok, P} -> maps:with([mapping, filtering, allocation, confidence], P);
                                       {error, R} -> #{error => R}
                                   end),
    State2 = case Result of
                 {ok, Profile} ->
                     ?LOG_DEBUG("detected ~p", [Profile]),
                     maybe_measure_lifetime(store(carry_lifetime(Profile), State1));
                 {error, Reason} ->
                     ?LOG_DEBUG("detection failed: ~p", [Reason]),
                     %% Nobody waits any longer for a first profile from
                     %% this run (a known one stays).
                     publish_on_node(undefined),
                     State1
             end,
    [gen_server:reply(From, Result) || {caller, From} <- Waiters],
    {noreply, State2};
handle_info({macula_nat_reply, Ref, Result}, #{lifetime := #{ref := Ref}} = State) ->
    State1 = State#{lifetime := undefined},
    case {Result, get_local_profile()} of
        {{ok, Ms, Kind}, {ok, Profile}} ->
            ?LOG_INFO("NAT mapping lifetime ~s ~b ms", [Kind, Ms]),
            State2 = store(Profile#{mapping_lifetime => Ms, mapping_lifetime_bound => bound(Kind)}, State1),
            %% The address may have moved while it ran: measure again.
            {noreply, maybe_measure_lifetime(State2)};
        {Other, _} ->
            ?LOG_DEBUG("mapping lifetime not measured: ~p", [Other]),
            %% Tried for this address; the next change tries again.
            {noreply, maybe_measure_lifetime(State1)}
    end;
handle_info({'DOWN', _Mon, process, Pid, _Reason}, #{subscribers := Subs, followers := Fs} = State) ->
    ?LOG_DEBUG("subscriber ~p gone", [Pid]),
    {noreply, State#{subscribers := maps:remove(Pid, Subs), followers := maps:remove(Pid, Fs)}};
handle_info(_Info, State) ->
    {noreply, State}.

%% Peers agree that our public address moved. Observers are the better
%% witnesses, so with observers we re-detect; without them we take the
%% peers' word, with low confidence.
observed_change(New, State) ->
    ?LOG_INFO("peers report a new public address ~s", [macula_nat_endpoint:format(New)]),
    public_address_moved(New, State).

%% Our public address moved (peers' quorum, or our rendezvous, which needs
%% no quorum: it is configured, and it sees the control connection move).
public_address_moved({Ip, Port} = New, #{observers := Observers} = State) ->
    case {Observers, get_local_profile()} of
        {[_ | _], _} ->
            background(network_change, State);
        {[], {ok, #{public_ip := Ip, public_port := Port}}} ->
            {noreply, State};
        {[], {ok, Profile}} ->
            {noreply, store(Profile#{public_ip := Ip, public_port := Port, confidence := low}, State)};
        {[], {error, not_detected}} ->
            true = ets:insert(?TABLE, {observed_endpoint, New}),
            {noreply, State}
    end.

%% Background detections (start, refresh/0, periodic, network change) use
%% the configured observers and the system's detection_timeout_ms.
background(Why, #{opts := Opts} = State) ->
    Interval = maps:get(refresh_interval_ms, Opts, ?DEFAULT_REFRESH_MS),
    case Why of
        network_change -> ok;
        _ -> schedule_refresh(Interval)
    end,
    case start_detection(default, maps:get(detection_timeout_ms, Opts), background, State) of
        {reply, _, S} -> {noreply, S};
        {noreply, S} -> {noreply, S}
    end.

schedule_refresh(Interval) when is_integer(Interval), Interval > 0 ->
    erlang:send_after(Interval, self(), {background_detect, periodic});
schedule_refresh(_) ->
    ok.

%% One detection at a time: later callers join the one in flight.
start_detection(_Observers, _Timeout, Waiter, #{inflight := #{waiters := W} = In} = State) ->
    {noreply, State#{inflight := In#{waiters := [Waiter | W]}}};
start_detection(Observers0, Timeout, Waiter, #{observers := Configured} = State) ->
    Observers = case Observers0 of
                    default -> Configured;
                    L -> L
                end,
    case {Observers, macula_nat_node:resource()} of
        {[], _} ->
            {reply, {error, no_observers}, State};
        {_, {error, _} = Error} ->
            {reply, Error, State};
        {_, {ok, Node}} ->
            Ref = make_ref(),
            Span = macula_nat_telemetry:span_start(
                     [macula_nat, detection],
                     #{trigger => case Waiter of background -> background; _ -> call end,
                       observers => [macula_nat_endpoint:format(O) || O <- Observers]}),
            Started = try macula_nat_nif:detect_start(Ref, Node, Observers, Timeout)
                      catch
                          Class:Reason:Stack ->
                              macula_nat_telemetry:span_exception(Span, Class, Reason, Stack),
                              erlang:raise(Class, Reason, Stack)
                      end,
            case Started of
                {ok, Pending} ->
                    %% Only matters while no profile is known yet.
                    expect_profile(Timeout),
                    ?LOG_DEBUG("detecting with observers ~p", [Observers]),
                    {noreply, State#{inflight := #{ref => Ref, pending => Pending, waiters => [Waiter],
                                                   span => Span}}};
                {error, R} = Error ->
                    macula_nat_telemetry:span_stop(Span, #{}, #{error => R}),
                    {reply, Error, State}
            end
    end.

%% A fresh detection knows nothing of the lifetime: the last measured one
%% holds until a new measurement (started on an address change) replaces it.
carry_lifetime(#{mapping_lifetime := Ms} = Profile) when is_integer(Ms) ->
    Profile;
carry_lifetime(Profile) ->
    case get_local_profile() of
        {ok, #{mapping_lifetime := Ms} = Old} when is_integer(Ms) ->
            Profile#{mapping_lifetime => Ms,
                     mapping_lifetime_bound => maps:get(mapping_lifetime_bound, Old, estimate)};
        _ ->
            Profile
    end.

bound(between) -> estimate;
bound(at_least) -> at_least;
bound(below) -> at_most.

%% Once per public address, one at a time, in the background.
maybe_measure_lifetime(#{lifetime := undefined, observers := Observers, opts := Opts,
                         lifetime_for := For} = State) ->
    case {maps:get(measure_mapping_lifetime, Opts, true), get_local_profile(), macula_nat_node:resource()} of
        {true, {ok, #{public_ip := Ip, public_port := Port} = P}, {ok, Node}} when For =/= {Ip, Port} ->
            %% The first observer of the measured socket's family.
            Family = tuple_size(maps:get(local_ip, P, Ip)),
            start_lifetime([O || {OIp, _} = O <- Observers, tuple_size(OIp) =:= Family],
                           Node, {Ip, Port}, Opts, State);
        _ ->
            State
    end;
maybe_measure_lifetime(State) ->
    State.

start_lifetime([], _Node, _For, _Opts, State) ->
    State;
start_lifetime([Observer | _], Node, For, Opts, State) ->
    Ref = make_ref(),
    Cap = maps:get(mapping_lifetime_cap_ms, Opts, 600000),
    case macula_nat_nif:lifetime_start(Ref, Node, Observer, Cap) of
        {ok, Pending} ->
            ?LOG_DEBUG("measuring the mapping lifetime against ~s", [macula_nat_endpoint:format(Observer)]),
            State#{lifetime := #{ref => Ref, pending => Pending}, lifetime_for := For};
        {error, R} ->
            ?LOG_WARNING("mapping lifetime not measured: ~p", [R]),
            State
    end.

store(Profile, #{subscribers := Subs, followers := Fs} = State) ->
    Old = case ets:lookup(?TABLE, profile) of
              [{profile, P}] -> P;
              [] -> undefined
          end,
    true = ets:insert(?TABLE, {profile, Profile}),
    %% What peers and the rendezvous are told from now on.
    publish_on_node(Profile),
    Changed = Old =/= undefined andalso changed(Old, Profile),
    case Changed of
        true ->
            ?LOG_INFO("NAT profile changed: ~p -> ~p", [summary(Old), summary(Profile)]),
            [Pid ! {nat_profile_changed, Old, Profile} || Pid <- maps:keys(Subs)];
        false ->
            ok
    end,
    [Pid ! {macula_nat_detector, profile, Profile, Changed orelse Old =:= undefined}
     || Pid <- maps:keys(Fs)],
    State.

%% The node's profile slot (native/macula_nat_core/src/local_profile.rs),
%% which signalling reads.
publish_on_node(Profile) ->
    case macula_nat_node:resource() of
        {ok, Node} ->
            case macula_nat_nif:node_set_profile(Node, Profile) of
                ok -> ok;
                {error, R} -> ?LOG_WARNING("profile not published for signalling: ~p", [R])
            end;
        {error, _} ->
            ok
    end.

%% A detection started: until it reports (or its time is up), a node that
%% has no profile yet makes signalling wait for it.
expect_profile(TimeoutMs) ->
    case macula_nat_node:resource() of
        {ok, Node} -> _ = macula_nat_nif:node_expect_profile(Node, TimeoutMs + ?REPORT_MARGIN_MS), ok;
        {error, _} -> ok
    end.

%% What a peer's strategy depends on; timestamps and confidence are not a
%% change of the NAT.
-define(IDENTITY_KEYS, [mapping, filtering, allocation, public_ip, public_port, port_delta]).

changed(Old, New) ->
    maps:with(?IDENTITY_KEYS, Old) =/= maps:with(?IDENTITY_KEYS, New).

summary(P) ->
    maps:with(?IDENTITY_KEYS, P).

ifaddrs() ->
    case inet:getifaddrs() of
        {ok, Ifs} -> lists:sort([{Name, lists:sort([A || {addr, A} <- Props])} || {Name, Props} <- Ifs]);
        _ -> []
    end.
