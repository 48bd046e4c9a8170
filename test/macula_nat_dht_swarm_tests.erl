%% Profile advertisement over a private BitTorrent mainline DHT swarm of 20
%% nodes on loopback (the macula-dht-swarm binary): node A (this VM)
%% publishes its signed profile, node B (a second BEAM started with `peer',
%% over stdio, no distribution needed) fetches it from the DHT, verifies it
%% against A's NodeId and caches it.
-module(macula_nat_dht_swarm_tests).

-include_lib("eunit/include/eunit.hrl").

-define(P, #{mapping => ei, filtering => hd, allocation => pc, port_delta => 2,
             confidence => high, public_ip => {203, 0, 113, 7}, public_port => 40000}).

swarm_test_() ->
    {setup, fun start_swarm/0, fun stop_swarm/1,
     fun(Swarm) -> {timeout, 120, fun() -> a_publishes_b_fetches(Swarm) end} end}.


start_swarm() ->
    macula_nat_test_support:start_dht_swarm().

stop_swarm(#{port := Port}) ->
    %% Closing stdin ends the swarm.
    catch port_close(Port),
    application:stop(macula_nat),
    [application:unset_env(macula_nat, K) || K <- [dht, listen_ip]],
    ok.

a_publishes_b_fetches(#{bootstrap := Boot}) ->
    Dht = {mainline, #{bootstrap => Boot}},
    application:set_env(macula_nat, dht, Dht),
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    {ok, A} = macula:get_node_id(),
    {ok, _Seq} = macula_nat_cache:advertise(?P#{endpoints => [<<"203.0.113.7:40000">>],
                                                rendezvous => [<<"203.0.113.1:4433">>]}),

    {ok, B, _} = peer:start_link(#{connection => standard_io,
                                   args => ["-pa" | code:get_path()]}),
    try
        ok = peer:call(B, application, set_env, [macula_nat, dht, Dht]),
        ok = peer:call(B, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
        {ok, _} = peer:call(B, application, ensure_all_started, [macula_nat]),
        {ok, BId} = peer:call(B, macula, get_node_id, []),
        ?assertNotEqual(A, BId),
        ?assertEqual({error, not_found}, peer:call(B, macula_nat_cache, get, [A])),
        T0 = erlang:monotonic_time(microsecond),
        {ok, Got} = peer:call(B, macula_nat_cache, get_from_dht, [A], 30000),
        Ms = (erlang:monotonic_time(microsecond) - T0) / 1000,
        ?debugFmt("B fetched A's record from the 20-node swarm in ~.1f ms", [Ms]),
        ?assertMatch(#{mapping := ei, filtering := hd, allocation := pc, port_delta := 2,
                       public_ip := {203, 0, 113, 7}, public_port := 40000,
                       endpoints := [<<"203.0.113.7:40000">>],
                       rendezvous := [<<"203.0.113.1:4433">>]}, Got),
        ?assertEqual({ok, Got}, peer:call(B, macula_nat_cache, get, [A])),
        %% A record is only ever accepted for the key that signed it: A's
        %% record is not B's, and an unknown key is not found.
        ?assertMatch({error, _}, peer:call(B, macula_nat_cache, get_from_dht, [<<0:256>>], 30000)),
        ?assertMatch(#{dht_fetches := 2, forged := 0}, peer:call(B, macula_nat_cache, stats, []))
    after
        peer:stop(B)
    end.
