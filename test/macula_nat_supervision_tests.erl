%% Supervision restores service (issue 16): every child of macula_nat_system
%% killed in turn while the node is joined, and the node is reachable again.
%%
%% Three BEAM nodes over loopback. This VM is the STUN observer, the
%% rendezvous and the relay. Peer B, the node under test, is configured as a
%% user configures it (application environment: `rendezvous', `observers',
%% `relays'; nothing joined by hand) and runs an echo server. Peer A, also
%% configured through its environment, connects to B. For each child of B's
%% macula_nat_system, killed with exit(Pid, kill): A's
%% macula_nat_connector:connect/2 and a message round trip succeed again
%% within 5 s, and within a few seconds more B is joined at the rendezvous
%% from its current socket, reserved at its relay (a relayed connection
%% through it works), and its record in the DHT names its current endpoint
%% (detected and published again when the detector restarted).
-module(macula_nat_supervision_tests).

-include_lib("eunit/include/eunit.hrl").

-import(macula_nat_test_support, [wait/2]).

%% Run inside the peers.
-export([echo_start/0, roundtrip/2, state/1]).

-define(CHILDREN, [macula_nat_node, macula_nat_cache, macula_nat_detector, macula_nat_coordinator,
                   macula_relay_registry, macula_relay_node, macula_connection_flow,
                   macula_nat_log]).
%% The issue's bound on reachability after a kill.
-define(RECOVER_MS, 5000).
%% Then joined, reserved and advertised again within this (from the kill).
-define(SETTLE_MS, 10000).

supervision_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 120, fun() -> each_child_killed(Ctx) end}] end}.

setup() ->
    {ok, Obs} = macula_nat_observer:start(#{primary => {{127, 0, 0, 1}, 0},
                                            alternate => {{127, 0, 0, 2}, 0}}),
    #{primary := Primary} = macula_nat_observer:info(Obs),
    {Me, Ep} = macula_nat_test_support:serve_loopback_rendezvous(),
    ok = macula_relay_node:enable(),
    Rv = [#{endpoint => Ep, node_id => Me}],
    B = macula_nat_test_support:start_peer([{rendezvous, Rv}, {observers, [Primary]}, {relays, [#{node_id => Me, endpoint => Ep}]}]),
    A = macula_nat_test_support:start_peer([{rendezvous, Rv}]),
    {ok, BId} = call(B, macula, get_node_id, []),
    ok = call(B, ?MODULE, echo_start, []),
    #{a => A, b => B, b_id => BId, me => Me, obs => Obs}.

cleanup(#{a := A, b := B, obs := Obs}) ->
    peer:stop(A),
    peer:stop(B),
    _ = macula_relay_node:disable(),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip),
    macula_nat_observer:stop(Obs).

each_child_killed(#{a := A, b := B, b_id := BId} = Ctx) ->
    Sup = call(B, erlang, whereis, [macula_nat_system]),
    %% Up as configured before anything is killed.
    ?assertEqual(ok, wait(fun() -> healthy(Ctx, #{}) end, ?SETTLE_MS)),
    ?assertMatch({ok, _}, call(A, ?MODULE, roundtrip, [BId, #{}])),
    Times = [kill_and_recover(Child, Ctx) || Child <- ?CHILDREN],
    io:format(user, "~nrecovery after killing each child of macula_nat_system (ms from the kill):~n", []),
    [io:format(user, "  ~-24s connect + round trip ~5b (~p), joined/reserved/advertised ~5b~n",
               [Child, Connect, Method, Settled])
     || {Child, Connect, Method, Settled} <- Times],
    %% One supervisor all along: no restart escalated.
    ?assertEqual(Sup, call(B, erlang, whereis, [macula_nat_system])).

kill_and_recover(Child, #{a := A, b := B, b_id := BId} = Ctx) ->
    Before = call(B, ?MODULE, state, [BId]),
    Answered = answered(Ctx),
    Old = call(B, erlang, whereis, [Child]),
    T0 = erlang:monotonic_time(millisecond),
    true = call(B, erlang, exit, [Old, kill]),
    %% A connects to B through the rendezvous (any method) and B echoes.
    {Connect, Method} = retry(fun() -> call(A, ?MODULE, roundtrip, [BId, #{}]) end, T0, ?RECOVER_MS,
                              {not_reachable, Child}),
    ?assertNotEqual(Old, call(B, erlang, whereis, [Child])),
    %% Joined from the current socket, reserved at the relay, advertised.
    Expect = #{before => Before, redetect => restarts_detector(Child), answered => Answered},
    case wait(fun() -> healthy(Ctx, Expect) end, T0 + ?SETTLE_MS - now_ms()) of
        ok -> ok;
        timeout -> error({not_restored, Child, checks(Ctx, Expect)})
    end,
    %% Through the relay it holds a reservation at, too.
    retry(fun() -> call(A, ?MODULE, roundtrip, [BId, #{relay_only => true}]) end, T0, ?SETTLE_MS,
          {not_reachable_through_relay, Child}),
    {Child, Connect, Method, now_ms() - T0}.

%% With rest_for_one, killing any child up to the detector restarts it.
restarts_detector(Child) ->
    lists:member(Child, [macula_nat_node, macula_nat_cache, macula_nat_detector]).

retry(F, T0, Bound, What) ->
    case F() of
        {ok, Method} ->
            {now_ms() - T0, Method};
        Error ->
            case now_ms() - T0 > Bound of
                true -> error({What, now_ms() - T0, Error});
                false -> timer:sleep(50), retry(F, T0, Bound, What)
            end
    end.

healthy(Ctx, Expect) ->
    checks(Ctx, Expect) =:= [].

%% The failed checks, empty when B is joined, reserved and advertised.
checks(#{b := B, b_id := BId, me := Me} = Ctx, Expect) ->
    #{addr := Addr, reserved := Reserved, profile := Profile, record := Record, published := Published,
      cache := Cache} = S = call(B, ?MODULE, state, [BId]),
    {Endpoint, Port} = case Addr of
                           {_, P} -> {macula_nat_endpoint:format(Addr), P};
                           undefined -> {undefined, undefined}
                       end,
    Joined = lists:member({BId, Endpoint}, macula_nat_coordinator:rendezvous_peers()),
    IsReserved = lists:any(fun(#{node_id := Id}) -> Id =:= Me end, Reserved),
    Detected = case Profile of
                   {ok, #{public_port := Port}} -> true;
                   _ -> false
               end,
    Advertised = case Record of
                     {ok, #{public_port := Port, endpoints := [Endpoint]}} -> true;
                     _ -> false
                 end,
    Fresh = case Expect of
                #{redetect := true, before := #{cache := Cache, published := P0}, answered := A0} ->
                    %% Detected again (the observer answered) and published
                    %% again (by the same cache, or by a new one).
                    answered(Ctx) > A0 andalso Published > P0;
                #{redetect := true, answered := A0} ->
                    answered(Ctx) > A0 andalso Published >= 1;
                _ ->
                    true
            end,
    [{K, S} || {K, false} <- [{joined, Joined}, {reserved, IsReserved}, {detected, Detected},
                              {advertised, Advertised}, {fresh, Fresh}]].

answered(#{obs := Obs}) ->
    maps:get(answered, macula_nat_observer:info(Obs)).

now_ms() ->
    erlang:monotonic_time(millisecond).

call(Peer, M, F, Args) ->
    peer:call(Peer, M, F, Args, 30000).

%% In the peers.

%% An echo server that outlives every child of the system: it accepts with
%% a short timeout (so it follows a restarted coordinator or node) and
%% answers each message with `{echo, Message}'.
-spec echo_start() -> ok.
echo_start() ->
    _ = spawn(fun echo_loop/0),
    ok.

echo_loop() ->
    receive
        {macula_connection, C, {message, T}} ->
            _ = macula_connection:send(C, {echo, T}),
            echo_loop();
        {macula_connection, _, _} ->
            echo_loop()
    after 0 ->
        case macula_connection:accept(100) of
            {ok, _} -> ok;
            {error, timeout} -> ok;
            {error, _} -> timer:sleep(20)
        end,
        echo_loop()
    end.

%% Connects to `Target' as an application does and exchanges one message:
%% `{ok, Method}' or what failed.
-spec roundtrip(binary(), map()) -> {ok, atom()} | {error, term()}.
roundtrip(Target, Opts) ->
    case macula_nat_connector:connect(Target, Opts#{timeout => 2000}) of
        {ok, C} ->
            Ref = make_ref(),
            Result = case macula_connection:send(C, Ref) of
                         ok ->
                             receive
                                 {macula_connection, C, {message, {echo, Ref}}} ->
                                     {ok, macula_connection:get_info(C, connection_method)}
                             after 2000 -> {error, no_echo}
                             end;
                         {error, _} = E ->
                             E
                     end,
            macula_connection:close(C),
            Result;
        {error, _} = E ->
            E
    end.

%% What B says about itself: its socket, reservations, profile, its record
%% as the DHT holds it now, and its cache's publication count.
-spec state(binary()) -> map().
state(Me) ->
    Addr = case macula_nat_node:local_addr() of
               {ok, A} -> A;
               {error, _} -> undefined
           end,
    Record = case macula_nat_cache:invalidate(Me) of
                 ok -> macula_nat_cache:get_from_dht(Me);
                 E -> E
             end,
    Published = case macula_nat_cache:stats() of
                    #{published := N} -> N;
                    _ -> 0
                end,
    #{addr => Addr, reserved => macula_nat_coordinator:reserved_relays(),
      profile => macula_nat_detector:get_local_profile(), record => Record,
      published => Published, cache => whereis(macula_nat_cache)}.
