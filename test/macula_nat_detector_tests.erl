%% Detector API on real sockets over loopback (127.0.0.1 and 127.0.0.2 give
%% an RFC 5780 observer its two IPs). The NAT matrix runs in the lab tests.
-module(macula_nat_detector_tests).

-include_lib("eunit/include/eunit.hrl").

detector_test_() ->
    {foreach, fun setup/0, fun cleanup/1,
     [fun detects_open_internet/1,
      fun cached_unless_forced/1,
      fun concurrent_callers_share_one_detection/1,
      fun documented_errors/1,
      fun subscribers_see_changes/1,
      fun refresh_runs_in_background/1,
      fun lifetime_measured_in_background/1,
      fun one_lying_peer_cannot_flip_the_profile/1,
      fun a_move_the_rendezvous_reports_changes_the_profile/1]}.

setup() ->
    {ok, Obs} = macula_nat_observer:start(#{primary => {{127, 0, 0, 1}, 0},
                                            alternate => {{127, 0, 0, 2}, 0}}),
    #{primary := Primary} = macula_nat_observer:info(Obs),
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    #{obs => Obs, primary => Primary}.

cleanup(#{obs := Obs}) ->
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip),
    application:unset_env(macula_nat, observers),
    application:unset_env(macula_nat, mapping_lifetime_cap_ms),
    macula_nat_observer:stop(Obs).

detects_open_internet(#{primary := P}) ->
    fun() ->
        {ok, Profile} = macula_nat_detector:detect(#{observers => [P]}),
        {ok, {_, Port}} = macula_nat_node:local_addr(),
        ?assertMatch(#{mapping := ei, filtering := ei, allocation := pp, no_nat := true,
                       confidence := high, public_ip := {127, 0, 0, 1}, public_port := Port}, Profile),
        ?assert(is_integer(maps:get(detected_at, Profile))),
        ?assertEqual({ok, Profile}, macula_nat_detector:get_local_profile()),
        ?assertEqual({ok, iolist_to_binary(["127.0.0.1:", integer_to_list(Port)])},
                     macula:get_public_endpoint())
    end.

cached_unless_forced(#{obs := Obs, primary := P}) ->
    fun() ->
        {ok, First} = macula_nat_detector:detect(#{observers => [P]}),
        A1 = settled_answered(Obs),
        ?assertEqual({ok, First}, macula_nat_detector:detect(#{observers => [P]})),
        ?assertEqual({ok, First}, macula_nat_detector:detect()),
        #{answered := A1} = macula_nat_observer:info(Obs),
        {ok, _} = macula_nat_detector:detect(#{observers => [P], force => true}),
        #{answered := A2} = macula_nat_observer:info(Obs),
        ?assert(A2 > A1)
    end.

concurrent_callers_share_one_detection(#{obs := Obs, primary := P}) ->
    fun() ->
        #{answered := A0} = macula_nat_observer:info(Obs),
        {ok, _} = macula_nat_detector:detect(#{observers => [P], force => true}),
        #{answered := A1} = macula_nat_observer:info(Obs),
        OneDetection = A1 - A0,
        Self = self(),
        [spawn(fun() -> Self ! {r, macula_nat_detector:detect(#{observers => [P], force => true})} end)
         || _ <- lists:seq(1, 20)],
        Results = [receive {r, R} -> R after 5000 -> timeout end || _ <- lists:seq(1, 20)],
        ?assert(lists:all(fun({ok, #{mapping := ei}}) -> true; (_) -> false end, Results)),
        #{answered := A2} = macula_nat_observer:info(Obs),
        %% 20 callers, at most a couple of detections' worth of traffic.
        ?assert(A2 - A1 =< 2 * OneDetection, {A2 - A1, OneDetection})
    end.

documented_errors(_) ->
    fun() ->
        ?assertEqual({error, no_observers}, macula_nat_detector:detect(#{observers => [], force => true})),
        ?assertEqual({error, no_observers}, macula_nat_detector:detect(#{force => true})),
        {ok, Silent} = gen_udp:open(0, [{ip, {127, 0, 0, 1}}]),
        {ok, SilentPort} = inet:port(Silent),
        T0 = erlang:monotonic_time(millisecond),
        ?assertEqual({error, detection_timeout},
                     macula_nat_detector:detect(#{observers => [{{127, 0, 0, 1}, SilentPort}],
                                                  force => true, timeout => 300})),
        ?assert(erlang:monotonic_time(millisecond) - T0 < 1500),
        gen_udp:close(Silent),
        ?assertEqual({error, bad_endpoint}, macula_nat_detector:detect(#{observers => [<<"nope">>]})),
        ?assertEqual({error, bad_endpoint}, macula_nat_detector:detect(#{observers => nope})),
        ?assertEqual({error, badarg}, macula_nat_detector:detect(#{timeout => -1})),
        ?assertEqual({error, badarg}, macula_nat_detector:detect(#{force => maybe})),
        ?assertEqual({error, badarg}, macula_nat_detector:detect(not_a_map))
    end.

subscribers_see_changes(_) ->
    fun() ->
        %% A plain STUN server that reports whatever mapped port we tell it:
        %% moving it is a NAT change as far as the node can see.
        Liar = start_liar(40000),
        ok = macula_nat_detector:subscribe(self()),
        {ok, #{public_port := 40000}} = macula_nat_detector:detect(#{observers => [liar_addr(Liar)], force => true}),
        receive {nat_profile_changed, _, _} = M0 -> error({unexpected, M0}) after 0 -> ok end,
        Liar ! {port, 40001},
        {ok, #{public_port := 40001}} = macula_nat_detector:detect(#{observers => [liar_addr(Liar)], force => true}),
        receive
            {nat_profile_changed, Old, New} ->
                ?assertEqual(40000, maps:get(public_port, Old)),
                ?assertEqual(40001, maps:get(public_port, New))
        after 1000 -> error(no_change_notification)
        end,
        %% Same answer again: not a change.
        {ok, _} = macula_nat_detector:detect(#{observers => [liar_addr(Liar)], force => true}),
        receive {nat_profile_changed, _, _} = M1 -> error({unexpected, M1}) after 100 -> ok end,
        Liar ! stop
    end.

refresh_runs_in_background(#{obs := Obs, primary := P}) ->
    fun() ->
        {ok, _} = macula_nat_detector:detect(#{observers => [P]}),
        application:stop(macula_nat),
        %% With observers configured the system detects at start by itself.
        application:set_env(macula_nat, observers, [P]),
        {ok, _} = application:ensure_all_started(macula_nat),
        {ok, #{detected_at := _}} = wait_profile(100),
        #{answered := A1} = macula_nat_observer:info(Obs),
        ok = macula_nat_detector:refresh(),
        timer:sleep(300),
        #{answered := A2} = macula_nat_observer:info(Obs),
        ?assert(A2 > A1)
    end.

%% As users start it (observers in the application environment): the
%% first profile comes without waiting for the lifetime, which fills it in
%% the background. Loopback has no NAT: nothing expires, so the profile
%% says the mappings outlived the cap (a lower bound), and no
%% nat_profile_changed fires for it.
lifetime_measured_in_background(#{primary := P}) ->
    fun() ->
        application:stop(macula_nat),
        application:set_env(macula_nat, observers, [P]),
        application:set_env(macula_nat, mapping_lifetime_cap_ms, 1000),
        {ok, _} = application:ensure_all_started(macula_nat),
        ok = macula_nat_detector:subscribe(self()),
        {ok, First} = wait_profile(100),
        ?assertEqual(undefined, maps:get(mapping_lifetime, First)),
        {ok, Measured} = wait_lifetime(200),
        ?assertMatch(#{mapping_lifetime := 1000, mapping_lifetime_bound := at_least, no_nat := true}, Measured),
        receive {nat_profile_changed, _, _} = M -> error({unexpected, M}) after 0 -> ok end,
        %% A later detection keeps it.
        {ok, _} = macula_nat_detector:detect(#{force => true}),
        ?assertMatch({ok, #{mapping_lifetime := 1000}}, macula_nat_detector:get_local_profile()),
        ?assertEqual({error, {bad_option, mapping_lifetime_cap_ms, 10}},
                     macula_nat_config:resolve(#{mapping_lifetime_cap_ms => 10})),
        ?assertEqual({error, {bad_option, measure_mapping_lifetime, yes}},
                     macula_nat_config:resolve(#{measure_mapping_lifetime => yes}))
    end.

wait_lifetime(0) -> error(no_lifetime);
wait_lifetime(N) ->
    case macula_nat_detector:get_local_profile() of
        {ok, #{mapping_lifetime := Ms}} = Ok when is_integer(Ms) -> Ok;
        _ -> timer:sleep(20), wait_lifetime(N - 1)
    end.

one_lying_peer_cannot_flip_the_profile(#{primary := P}) ->
    fun() ->
        {ok, #{public_port := Port}} = macula_nat_detector:detect(#{observers => [P]}),
        ok = macula_nat_detector:subscribe(self()),
        [ok = macula_nat_detector:add_observation({9, 9, 9, 9}, 1234, <<"liar">>) || _ <- lists:seq(1, 10)],
        %% Many calls from one process are one vote too.
        [ok = macula_nat_detector:add_observation({9, 9, 9, 9}, 1234) || _ <- lists:seq(1, 10)],
        _ = sys:get_state(macula_nat_detector),
        ?assertMatch({ok, #{public_ip := {127, 0, 0, 1}, public_port := Port}},
                     macula_nat_detector:get_local_profile()),
        receive {nat_profile_changed, _, _} = M -> error({unexpected, M}) after 0 -> ok end,
        %% Three distinct peers agree: the belief moves.
        [ok = macula_nat_detector:add_observation({198, 51, 100, 7}, 5555, Peer)
         || Peer <- [<<"peer-a">>, <<"peer-b">>, <<"peer-c">>]],
        _ = sys:get_state(macula_nat_detector),
        ?assertMatch({ok, #{public_ip := {198, 51, 100, 7}, public_port := 5555, confidence := low}},
                     macula_nat_detector:get_local_profile()),
        receive
            {nat_profile_changed, #{public_port := Port}, #{public_port := 5555}} -> ok
        after 1000 -> error(no_change_notification)
        end,
        ?assertEqual({ok, <<"198.51.100.7:5555">>}, macula:get_public_endpoint()),
        ?assertEqual({error, badarg}, macula_nat_detector:add_observation(not_an_ip, 1)),
        ?assertEqual({error, badarg}, macula_nat_detector:add_observation({1, 2, 3, 4}, 70000)),
        ?assertEqual({error, badarg}, macula_nat_detector:add_observation({1, 2, 3, 4}, 1, not_a_binary))
    end.

wait_profile(0) -> error(no_auto_detection);
wait_profile(N) ->
    case macula_nat_detector:get_local_profile() of
        {ok, _} = Ok -> Ok;
        _ -> timer:sleep(20), wait_profile(N - 1)
    end.

%% A STUN Binding server in plain Erlang that answers with a fixed mapped
%% port (XOR-MAPPED-ADDRESS only, no RFC 5780 attributes).
start_liar(Port) ->
    Parent = self(),
    Pid = spawn_link(fun() ->
        {ok, S} = gen_udp:open(0, [binary, {ip, {127, 0, 0, 1}}, {active, true}]),
        {ok, LPort} = inet:port(S),
        Parent ! {liar_port, self(), LPort},
        liar_loop(S, Port)
    end),
    receive {liar_port, Pid, LPort} -> put({liar, Pid}, LPort) end,
    Pid.

%% The observer's answer count once it stops moving: a retransmission sent
%% just before the verdict may still be answered after detect/1 returned
%% (seen once on a loaded machine), which is not a detection.
settled_answered(Obs) ->
    #{answered := A} = macula_nat_observer:info(Obs),
    timer:sleep(200),
    case macula_nat_observer:info(Obs) of
        #{answered := A} -> A;
        _ -> settled_answered(Obs)
    end.

liar_addr(Pid) -> {{127, 0, 0, 1}, get({liar, Pid})}.

liar_loop(S, Port) ->
    receive
        {port, P} -> liar_loop(S, P);
        stop -> gen_udp:close(S);
        {udp, S, Ip, SrcPort, <<1:16, _Len:16, 16#2112A442:32, Tx:12/binary, _/binary>>} ->
            {A, B, C, D} = Ip,
            XPort = Port bxor 16#2112,
            XAddr = <<A, B, C, D>>,
            <<X:32>> = XAddr,
            Attr = <<16#0020:16, 8:16, 0, 1, XPort:16, (X bxor 16#2112A442):32>>,
            gen_udp:send(S, Ip, SrcPort, <<16#0101:16, (byte_size(Attr)):16, 16#2112A442:32, Tx/binary, Attr/binary>>),
            liar_loop(S, Port);
        {udp, _, _, _, _} ->
            liar_loop(S, Port)
    end.

%% What the node passes on when its rendezvous sees our public address move
%% (`macula_nat_nif:node_watch_reflexive/2', watched from the detector's
%% start): one report is enough (the rendezvous is configured, not a peer);
%% without configured observers the address is adopted with low confidence
%% (with them, the detector re-detects). The lab test
%% native/macula_nat_core/tests/lab_netchange.rs renumbers a real router.
a_move_the_rendezvous_reports_changes_the_profile(#{primary := P}) ->
    fun() ->
        {ok, #{public_port := Port}} = macula_nat_detector:detect(#{observers => [P]}),
        ok = macula_nat_detector:subscribe(self()),
        macula_nat_detector ! {macula_nat_node, reflexive_changed, {{127, 0, 0, 1}, Port},
                               {{198, 51, 100, 9}, 6000}},
        receive
            {nat_profile_changed, #{public_port := Port}, #{public_ip := {198, 51, 100, 9}, public_port := 6000,
                                                           confidence := low}} -> ok
        after 1000 -> error(no_change_notification)
        end,
        ?assertEqual({ok, <<"198.51.100.9:6000">>}, macula:get_public_endpoint())
    end.
