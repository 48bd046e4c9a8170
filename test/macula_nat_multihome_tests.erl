%% Several rendezvous per node through the documented API: this VM is
%% rendezvous R3 and node A (joined at R3 only); two peer BEAMs are
%% rendezvous R1 and R2; a fourth is node B, configured with
%% `rendezvous => [R1, R2]' in its application environment. They share
%% only a host DHT (records as files). B joins both. R1's VM is killed
%% (SIGKILL: no close reaches anyone): B's record stops naming R1 within
%% seconds, and `macula_nat_connector:connect/2' still reaches B by id,
%% through R2.
-module(macula_nat_multihome_tests).

-include_lib("eunit/include/eunit.hrl").

-import(macula_nat_test_support, [wait/2, echo_on/1, roundtrip/2]).

-define(PUBLIC, #{mapping => ei, filtering => ei, allocation => pp, confidence => high,
                  public_ip => {127, 0, 0, 1}, public_port => 1, detected_at => 1700000000}).

multihome_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 90, fun() -> reachable_when_one_rendezvous_dies(Ctx) end}] end}.

setup() ->
    Dir = filename:join("/tmp", "macula_multihome_dht_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_path(Dir),
    os:putenv("MACULA_TEST_DHT_DIR", Dir),
    application:set_env(macula_nat, dht, {module, macula_nat_file_dht}),
    {Me, Rv3} = macula_nat_test_support:serve_loopback_rendezvous(),
    ok = macula_nat_coordinator:join(Rv3, Me),
    {R1, R1Id, Rv1} = rendezvous(Dir),
    {R2, R2Id, Rv2} = rendezvous(Dir),
    {ok, B, _} = peer(Dir, [{rendezvous, [#{endpoint => Rv1, node_id => R1Id},
                                          #{endpoint => Rv2, node_id => R2Id}]},
                            {dht, {module, macula_nat_file_dht}}]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    #{dir => Dir, r1 => R1, r2 => R2, b => B, b_id => BId, r1_id => R1Id, r2_id => R2Id}.

%% Not linked: R1's VM is killed by the test.
peer(Dir, Env) ->
    {ok, P, Node} = peer:start(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    true = peer:call(P, os, putenv, ["MACULA_TEST_DHT_DIR", Dir]),
    ok = peer:call(P, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    [ok = peer:call(P, application, set_env, [macula_nat, K, V]) || {K, V} <- Env],
    {ok, _} = peer:call(P, application, ensure_all_started, [macula_nat]),
    {ok, P, Node}.

rendezvous(Dir) ->
    {ok, P, _} = peer(Dir, [{rendezvous_server, true}]),
    {ok, Id} = peer:call(P, macula, get_node_id, []),
    {ok, {_, Port}} = peer:call(P, macula_nat_node, local_addr, []),
    {P, Id, iolist_to_binary(["127.0.0.1:", integer_to_list(Port)])}.

cleanup(#{dir := Dir, r1 := R1, r2 := R2, b := B}) ->
    [catch peer:stop(P) || P <- [B, R2, R1]],
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip),
    application:unset_env(macula_nat, dht),
    file:del_dir_r(Dir).

registered(R, Id) ->
    lists:keymember(Id, 1, peer:call(R, macula_nat_coordinator, rendezvous_peers, [])).

%% The node ids B's record names as its rendezvous.
record_rendezvous(B) ->
    #{rendezvous := Rv} = peer:call(B, macula_nat_cache, contacts, []),
    [Id || #{node_id := Id} <- Rv].

reachable_when_one_rendezvous_dies(#{b := B, b_id := BId, r1 := R1, r2 := R2, r1_id := R1Id, r2_id := R2Id}) ->
    %% B joined both, from one socket, as its configuration says.
    ok = wait(fun() -> registered(R1, BId) andalso registered(R2, BId) end, 15000),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    Seen = [P || {Id, P} <- peer:call(R1, macula_nat_coordinator, rendezvous_peers, [])
                           ++ peer:call(R2, macula_nat_coordinator, rendezvous_peers, []), Id =:= BId],
    ?assertEqual([BPort, BPort], [element(2, ok(macula_nat_endpoint:parse(P))) || P <- Seen]),
    ?assertMatch([#{node_id := R1Id, live := true}, #{node_id := R2Id, live := true}],
                 peer:call(B, macula_nat_coordinator, homes, [])),
    %% No observers here, so no detection advertises B: it advertises by hand.
    {ok, _} = peer:call(B, macula_nat_cache, advertise, [?PUBLIC]),
    ok = wait(fun() -> record_rendezvous(B) =:= [R1Id, R2Id] end, 10000),
    echo_on(B),
    {ok, C} = macula_nat_connector:connect(BId, #{timeout => 15000}),
    ?assertEqual(ok, roundtrip(C, <<"before">>)),
    macula_connection:close(C),

    %% R1's VM dies without a word.
    OsPid = peer:call(R1, os, getpid, []),
    Killed = erlang:monotonic_time(millisecond),
    os:cmd("kill -9 " ++ OsPid),
    %% Reachable: our cached record names R1 (found silent, passed over) and R2.
    echo_on(B),
    {ok, C2} = macula_nat_connector:connect(BId, #{timeout => 20000}),
    Reachable = erlang:monotonic_time(millisecond) - Killed,
    ?assertEqual(ok, roundtrip(C2, <<"after the kill">>)),
    macula_connection:close(C2),
    ok = wait(fun() -> record_rendezvous(B) =:= [R2Id] end, 15000),
    Dropped = erlang:monotonic_time(millisecond) - Killed,
    ?assertMatch([#{node_id := R1Id, live := false}, #{node_id := R2Id, live := true}],
                 peer:call(B, macula_nat_coordinator, homes, [])),
    io:format(user, "~nR1 killed -> A reached B again: ~p ms; -> B's record without R1: ~p ms~n",
              [Reachable, Dropped]),
    %% And again, request_connection/2 through the record that names R2 only
    %% once the cache refreshed it; through the cached one meanwhile.
    echo_on(B),
    {ok, _Method, C3} = macula_nat_coordinator:request_connection(BId, #{timeout => 15000}),
    ?assertEqual(ok, roundtrip(C3, 3)),
    macula_connection:close(C3),
    replacing_the_signal_closes_the_old_one(R2, R2Id).

%% join/2 replaces our signal (at R3, this VM's own rendezvous) by one at
%% R2: the old one is closed at once, not when the coordinator's heap is
%% next collected (until then it stayed registered at R3 and went on
%% writing its rendezvous into our record over the new one's).
replacing_the_signal_closes_the_old_one(R2, R2Id) ->
    {ok, Me} = macula:get_node_id(),
    ?assert(lists:keymember(Me, 1, macula_nat_coordinator:rendezvous_peers())),
    {ok, {_, R2Port}} = peer:call(R2, macula_nat_node, local_addr, []),
    ok = macula_nat_coordinator:join(iolist_to_binary(["127.0.0.1:", integer_to_list(R2Port)]), R2Id),
    ?assertEqual(ok, wait(fun() -> not lists:keymember(Me, 1, macula_nat_coordinator:rendezvous_peers()) end, 2000)),
    ?assertMatch([#{node_id := R2Id, live := true}], macula_nat_coordinator:homes()),
    ?assertEqual(ok, wait(fun() -> [Id || #{node_id := Id} <- maps:get(rendezvous, macula_nat_cache:contacts())] =:= [R2Id] end, 2000)),
    ok.

ok({ok, V}) -> V.
