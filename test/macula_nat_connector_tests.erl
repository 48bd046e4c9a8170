%% Traversal from Erlang over loopback: this VM is the rendezvous and node
%% A; a second BEAM (peer over stdio) is node B. Both join; A connects to
%% B through the coordinator, the connector and the hole puncher.
-module(macula_nat_connector_tests).

-include_lib("eunit/include/eunit.hrl").


-import(macula_nat_test_support, [wait/2, echo_on/1, roundtrip/2]).

connector_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 60, fun() -> through_rendezvous(Ctx) end},
                  {timeout, 30, fun() -> errors(Ctx) end}]
     end}.

setup() ->
    {Me, Rv} = macula_nat_test_support:serve_loopback_rendezvous(),
    {ok, B, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    ok = peer:call(B, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    ok = peer:call(B, application, set_env, [macula_nat, rendezvous, [#{endpoint => Rv, node_id => Me}]]),
    {ok, _} = peer:call(B, application, ensure_all_started, [macula_nat]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    %% A (this node) joins its own rendezvous.
    ok = macula_nat_coordinator:join(Rv, Me),
    ok = wait(fun() -> lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers()) end, 10000),
    #{b => B, b_id => BId, me => Me}.

cleanup(#{b := B}) ->
    peer:stop(B),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip).

through_rendezvous(#{b := B, b_id := BId, me := Me}) ->
    echo_on(B),
    {ok, Method, C1} = macula_nat_coordinator:request_connection(BId, #{timeout => 10000}),
    ?assertEqual(direct, Method),
    ?assertEqual(Method, macula_connection:get_info(C1, connection_method)),
    ?assertEqual(BId, macula_connection:get_info(C1, peer)),
    ?assertEqual(ok, roundtrip(C1, <<"hello">>)),
    ok = macula_nat_connector:disconnect(C1),

    echo_on(B),
    {ok, C2} = macula_nat_connector:connect(BId, #{timeout => 10000, prefer_direct => false}),
    ?assertEqual(punched, macula_connection:get_info(C2, connection_method)),
    ?assertEqual(ok, roundtrip(C2, {punched, 1})),
    macula_connection:close(C2),

    echo_on(B),
    {ok, C3, M3} = macula_nat_connector:connect(Me, BId, #{}),
    ?assert(lists:member(M3, [direct, punched])),
    ?assertEqual(ok, roundtrip(C3, 3)),
    macula_connection:close(C3),

    echo_on(B),
    {ok, Ref} = macula_nat_coordinator:coordinate_punch(Me, BId, #{predicted_ports => {1, 2}}),
    receive
        {macula_nat_punch, Ref, {ok, punched, C4}} ->
            ?assertEqual(ok, roundtrip(C4, 4)),
            macula_connection:close(C4)
    after 15000 -> error(no_punch_result)
    end,

    echo_on(B),
    {ok, C5} = macula_hole_punch:punch([], #{peer => BId}),
    ?assertEqual(ok, roundtrip(C5, 5)),
    macula_connection:close(C5),
    ?assertEqual([], macula_nat_coordinator:get_pending()).

errors(#{me := Me}) ->
    ?assertEqual({error, unknown_peer}, macula_nat_connector:connect(<<7:256>>, #{timeout => 3000})),
    ?assertEqual({error, not_local}, macula_nat_connector:connect(<<1:256>>, Me, #{})),
    ?assertEqual({error, bad_node_id}, macula_nat_coordinator:request_connection(<<"short">>, #{})),
    ?assertEqual({error, badarg}, macula_nat_connector:connect(not_binary, #{})),
    ?assertEqual({error, badarg}, macula_hole_punch:punch([], #{})).

