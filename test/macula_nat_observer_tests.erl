%% The observer started from Erlang, checked with a client nobody here
%% wrote: coturn's RFC 5780 client (turnutils_natdiscovery), on loopback
%% where 127.0.0.1 and 127.0.0.2 give the two IPs and there is no NAT.
-module(macula_nat_observer_tests).

-include_lib("eunit/include/eunit.hrl").

coturn_client_against_our_observer_test_() ->
    {timeout, 60, fun() ->
        {ok, Obs} = macula_nat_observer:start(#{primary => {{127, 0, 0, 1}, 0},
                                                alternate => {{127, 0, 0, 2}, 0}}),
        try
            #{primary := {_, Port}, alternate := {{127, 0, 0, 2}, _}} = macula_nat_observer:info(Obs),
            case os:find_executable("turnutils_natdiscovery") of
                false ->
                    error(turnutils_natdiscovery_missing);
                Exe ->
                    Out = os:cmd(Exe ++ " -m -f 127.0.0.1 -p " ++ integer_to_list(Port) ++ " 2>&1"),
                    ?assertMatch({match, _}, re:run(Out, "Endpoint Independent Mapping", [caseless])),
                    ?assertMatch({match, _}, re:run(Out, "Endpoint Independent Filtering", [caseless])),
                    #{answered := Answered} = macula_nat_observer:info(Obs),
                    ?assert(Answered >= 4)
            end
        after
            macula_nat_observer:stop(Obs)
        end
    end}.

garbage_is_dropped_and_counted_test() ->
    {ok, Obs} = macula_nat_observer:start(#{primary => {{127, 0, 0, 1}, 0}}),
    #{primary := Primary, alternate := undefined} = macula_nat_observer:info(Obs),
    {ok, S} = gen_udp:open(0, [binary, {ip, {127, 0, 0, 1}}, {active, false}]),
    ok = gen_udp:send(S, Primary, <<"definitely not stun">>),
    %% A valid Binding request (RFC 5769-style, no attributes) is answered.
    Tx = crypto:strong_rand_bytes(12),
    ok = gen_udp:send(S, Primary, <<1:16, 0:16, 16#2112A442:32, Tx/binary>>),
    {ok, {_, _, <<16#0101:16, _Len:16, 16#2112A442:32, Tx:12/binary, _/binary>>}} = gen_udp:recv(S, 0, 2000),
    timer:sleep(50),
    #{answered := 1, dropped := Dropped} = macula_nat_observer:info(Obs),
    ?assertEqual(1, lists:sum(maps:values(Dropped))),
    gen_udp:close(S),
    macula_nat_observer:stop(Obs).

bad_options_test() ->
    ?assertMatch({error, _}, macula_nat_observer:start(#{})),
    ?assertMatch({error, _}, macula_nat_observer:start(#{primary => <<"nope">>})),
    ?assertEqual({error, badarg}, macula_nat_observer:start(not_a_map)).
