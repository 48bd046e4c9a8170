%% Reach by node id through the documented API: this VM is rendezvous R1
%% and node A (joined at R1); a second BEAM is rendezvous R2, a third is
%% node B, joined at R2. A and B share only a host DHT (the
%% `macula_nat_dht' behaviour, records as files). A connects to B by its id
%% alone: R1 does not know B, B's signed record names R2 with its node id,
%% and A signals through R2 from its own socket.
-module(macula_nat_reach_tests).

-include_lib("eunit/include/eunit.hrl").
-import(macula_nat_test_support, [wait/2, echo_on/1, roundtrip/2]).

-define(PUBLIC, #{mapping => ei, filtering => ei, allocation => pp, confidence => high,
                  public_ip => {127, 0, 0, 1}, public_port => 1, detected_at => 1700000000}).

reach_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 60, fun() -> by_id_across_rendezvous(Ctx) end}] end}.

setup() ->
    Dir = filename:join("/tmp", "macula_reach_dht_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_path(Dir),
    os:putenv("MACULA_TEST_DHT_DIR", Dir),
    application:set_env(macula_nat, dht, {module, macula_nat_file_dht}),
    {Me, Rv1} = macula_nat_test_support:serve_loopback_rendezvous(),
    ok = macula_nat_coordinator:join(Rv1, Me),
    R2 = peer([{rendezvous_server, true}], Dir),
    {ok, R2Id} = peer:call(R2, macula, get_node_id, []),
    {ok, {_, R2Port}} = peer:call(R2, macula_nat_node, local_addr, []),
    Rv2 = iolist_to_binary(["127.0.0.1:", integer_to_list(R2Port)]),
    B = peer([{rendezvous, [#{endpoint => Rv2, node_id => R2Id}]},
              {dht, {module, macula_nat_file_dht}}], Dir),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    ok = wait(fun() -> lists:keymember(BId, 1, peer:call(R2, macula_nat_coordinator, rendezvous_peers, [])) end, 10000),
    %% No observers here, so no detection advertises B: it advertises by hand.
    {ok, _} = peer:call(B, macula_nat_cache, advertise, [?PUBLIC]),
    #{dir => Dir, r2 => R2, b => B, b_id => BId, r2_id => R2Id}.

peer(Env, Dir) ->
    {ok, P, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    true = peer:call(P, os, putenv, ["MACULA_TEST_DHT_DIR", Dir]),
    ok = peer:call(P, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    [ok = peer:call(P, application, set_env, [macula_nat, K, V]) || {K, V} <- Env],
    {ok, _} = peer:call(P, application, ensure_all_started, [macula_nat]),
    P.

cleanup(#{dir := Dir, r2 := R2, b := B}) ->
    peer:stop(B),
    peer:stop(R2),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip),
    application:unset_env(macula_nat, dht),
    file:del_dir_r(Dir).

by_id_across_rendezvous(#{b := B, b_id := BId, r2 := R2, r2_id := R2Id}) ->
    %% B is not at our rendezvous.
    ?assertNot(lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers())),
    %% Its record is in the host DHT.
    ?assertMatch({ok, #{}}, macula_nat_cache:get_from_dht(BId)),
    echo_on(B),
    T0 = erlang:monotonic_time(millisecond),
    {ok, C} = macula_nat_connector:connect(BId, #{timeout => 15000}),
    Took = erlang:monotonic_time(millisecond) - T0,
    ?assertEqual(BId, macula_connection:get_info(C, peer)),
    ?assertEqual(ok, roundtrip(C, {<<"hello">>, B})),
    io:format(user, "~ncross-rendezvous connect (record cached) ~p ms~n", [Took]),
    macula_connection:close(C),
    %% request_connection/2 reaches it too, through the same guest signalling.
    echo_on(B),
    {ok, Method, C2} = macula_nat_coordinator:request_connection(BId, #{timeout => 15000}),
    ?assert(lists:member(Method, [direct, punched])),
    ?assertEqual(ok, roundtrip(C2, 2)),
    macula_connection:close(C2),
    %% Our guest registration: R2 knows us now, R1 (ours) still does not know B.
    {ok, Me} = macula:get_node_id(),
    ?assert(lists:keymember(Me, 1, peer:call(R2, macula_nat_coordinator, rendezvous_peers, []))),
    ?assertNot(lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers())),
    _ = R2Id,
    ok.
