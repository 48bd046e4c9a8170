%% macula_nat_cache from Erlang: every documented return shape, TTL and the
%% stale window, one refresh under 100 concurrent readers, the LRU bound,
%% and refusal of forged records; with the in-memory and the Erlang
%% behaviour DHT backends.
-module(macula_nat_cache_tests).

-include_lib("eunit/include/eunit.hrl").

-import(macula_nat_test_support, [wait/2]).

-define(P, #{mapping => ei, filtering => pd, allocation => pp, confidence => high,
             public_ip => {203, 0, 113, 5}, public_port => 4433, detected_at => 1700000000}).

start(Env) ->
    [application:set_env(macula_nat, K, V) || {K, V} <- Env],
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    Env.

stop(Env) ->
    application:stop(macula_nat),
    [application:unset_env(macula_nat, K) || {K, _} <- [{listen_ip, x} | Env]],
    ok.

id(N) -> <<N:256>>.

memory_test_() ->
    {foreach, fun() -> start([]) end, fun stop/1,
     [fun shapes/1, fun bad_input/1, fun ttl_then_stale/1, fun own_record_from_the_dht/1]}.

shapes(_) ->
    fun() ->
        Id = id(1),
        ?assertEqual({error, not_found}, macula_nat_cache:get(Id)),
        ?assertEqual(ok, macula_nat_cache:put(Id, ?P)),
        {ok, P} = macula_nat_cache:get(Id),
        ?assertMatch(#{mapping := ei, filtering := pd, allocation := pp, confidence := high,
                       public_ip := {203, 0, 113, 5}, public_port := 4433,
                       detected_at := 1700000000, port_delta := undefined,
                       endpoints := [], rendezvous := []}, P),
        ?assertEqual(ok, macula_nat_cache:put(Id, ?P#{allocation => pc, port_delta => 2,
                                                      endpoints => [<<"203.0.113.5:4433">>, {{203, 0, 113, 6}, 9}]}, 600)),
        {ok, P2} = macula_nat_cache:get(Id),
        ?assertMatch(#{allocation := pc, port_delta := 2,
                       endpoints := [<<"203.0.113.5:4433">>, <<"203.0.113.6:9">>]}, P2),
        ?assertEqual(ok, macula_nat_cache:invalidate(Id)),
        ?assertEqual({error, not_found}, macula_nat_cache:get(Id)),
        ?assertEqual(ok, macula_nat_cache:invalidate(Id)),
        S = macula_nat_cache:stats(),
        ?assertMatch(#{size := 0, hits := 2, misses := 2, stale_hits := 0, evictions := 0}, S),
        %% The detector's own profile map is accepted as it is.
        ?assertEqual(ok, macula_nat_cache:put(id(2), ?P#{local_ip => {10, 0, 0, 1}, local_port => 1,
                                                         detection_ms => 1.5, hairpin => undefined,
                                                         mapping_lifetime => undefined, no_nat => false}))
    end.

bad_input(_) ->
    fun() ->
        ?assertEqual({error, badarg}, macula_nat_cache:get(not_a_binary)),
        ?assertEqual({error, not_found}, macula_nat_cache:get(<<"short">>)),
        ?assertEqual({error, bad_node_id}, macula_nat_cache:put(<<"short">>, ?P)),
        ?assertEqual({error, badarg}, macula_nat_cache:put(id(1), ?P, 0)),
        ?assertEqual({error, badarg}, macula_nat_cache:put(id(1), ?P, -5)),
        ?assertEqual({error, badarg}, macula_nat_cache:put(id(1), not_a_map)),
        ?assertEqual({error, {bad_profile, mapping}}, macula_nat_cache:put(id(1), maps:remove(mapping, ?P))),
        ?assertEqual({error, {bad_profile, filtering}}, macula_nat_cache:put(id(1), ?P#{filtering => weird})),
        ?assertEqual({error, {bad_profile, public_port}}, macula_nat_cache:put(id(1), ?P#{public_port => 70000})),
        ?assertEqual({error, {bad_profile, endpoints}}, macula_nat_cache:put(id(1), ?P#{endpoints => [<<"nope">>]})),
        ?assertEqual({error, {bad_profile, endpoints}},
                     macula_nat_cache:put(id(1), ?P#{endpoints => lists:duplicate(17, <<"1.2.3.4:5">>)})),
        ?assertEqual({error, not_found}, macula_nat_cache:get(id(1))),
        ?assertEqual({error, bad_node_id}, macula_nat_cache:get_from_dht(<<"short">>)),
        ?assertEqual({error, badarg}, macula_nat_cache:get_from_dht(42)),
        ?assertEqual({error, badarg}, macula_nat_cache:invalidate(42)),
        %% The system is still fine.
        ?assertEqual(ok, macula_nat_cache:put(id(1), ?P))
    end.

ttl_then_stale(_) ->
    fun() ->
        Id = id(3),
        ok = macula_nat_cache:put(Id, ?P, 1),
        ?assertMatch({ok, _}, macula_nat_cache:get(Id)),
        timer:sleep(1100),
        %% Past its TTL, inside the 60 s grace: stale, a refresh is tried
        %% (the DHT has no record for this id, so it stays stale).
        ?assertMatch({stale, #{mapping := ei}}, macula_nat_cache:get(Id)),
        ?assertMatch({stale, _}, macula_nat_cache:get(Id)),
        ?assertMatch(#{stale_hits := 2, refreshes := 1}, macula_nat_cache:stats())
    end.

own_record_from_the_dht(_) ->
    fun() ->
        {ok, Me} = macula:get_node_id(),
        ?assertEqual({error, not_found}, macula_nat_cache:get_from_dht(id(77))),
        {ok, Seq} = macula_nat_cache:advertise(?P#{endpoints => [<<"203.0.113.5:4433">>],
                                                   rendezvous => [<<"198.51.100.1:3478">>]}),
        ?assert(is_integer(Seq)),
        {ok, P} = macula_nat_cache:get_from_dht(Me),
        ?assertMatch(#{mapping := ei, filtering := pd, public_port := 4433,
                       endpoints := [<<"203.0.113.5:4433">>],
                       rendezvous := [<<"198.51.100.1:3478">>]}, P),
        %% ... and it is cached now.
        ?assertEqual({ok, P}, macula_nat_cache:get(Me)),
        ?assertMatch(#{published := 1, dht_fetches := 2}, macula_nat_cache:stats())
    end.

%% The Erlang-behaviour backend, a short grace, and a small bound.
host_dht_test_() ->
    {foreach,
     fun() ->
             ok = macula_nat_test_dht:start(),
             start([{dht, {module, macula_nat_test_dht}}, {cache_grace_seconds, 1},
                    {cache_max_entries, 100}])
     end,
     fun(Env) -> stop(Env), macula_nat_test_dht:stop() end,
     [fun one_refresh_for_100_stale_readers/1, fun grace_runs_out/1, fun lru_bound/1,
      fun forged_records_refused/1, fun host_dht_errors/1]}.

one_refresh_for_100_stale_readers(_) ->
    {timeout, 30, fun() ->
        {ok, Me} = macula:get_node_id(),
        {ok, _} = macula_nat_cache:advertise(?P#{public_port => 5000}),
        ?assertEqual(1, macula_nat_test_dht:count(put)),
        %% An older profile of ours, about to go stale.
        ok = macula_nat_cache:put(Me, ?P#{public_port => 1000}, 1),
        timer:sleep(1050),
        macula_nat_test_dht:set(delay, 300),
        Gets0 = macula_nat_test_dht:count(get),
        Parent = self(),
        Readers = [spawn(fun() ->
                                 receive go -> ok end,
                                 Parent ! {self(), macula_nat_cache:get(Me)}
                         end) || _ <- lists:seq(1, 100)],
        [R ! go || R <- Readers],
        Results = [receive {R, Res} -> Res end || R <- Readers],
        ?assert(lists:all(fun({stale, #{public_port := 1000}}) -> true; (_) -> false end, Results)),
        %% The refresh lands from the record.
        ?assertEqual(ok, wait(fun() -> element(1, macula_nat_cache:get(Me)) =:= ok end, 3000)),
        ?assertMatch({ok, #{public_port := 5000}}, macula_nat_cache:get(Me)),
        ?assertEqual(1, macula_nat_test_dht:count(get) - Gets0),
        ?assertMatch(#{refreshes := 1}, macula_nat_cache:stats())
    end}.

grace_runs_out(_) ->
    fun() ->
        Id = id(4),
        ok = macula_nat_cache:put(Id, ?P, 1),
        timer:sleep(1100),
        ?assertMatch({stale, _}, macula_nat_cache:get(Id)),
        timer:sleep(1000),
        ?assertEqual({error, not_found}, macula_nat_cache:get(Id)),
        ?assertMatch(#{size := 0}, macula_nat_cache:stats())
    end.

lru_bound(_) ->
    fun() ->
        [ok = macula_nat_cache:put(id(N), ?P) || N <- lists:seq(1, 100)],
        %% Touch the oldest so it survives; id(2) becomes the least recent.
        {ok, _} = macula_nat_cache:get(id(1)),
        ok = macula_nat_cache:put(id(101), ?P),
        ?assertMatch({ok, _}, macula_nat_cache:get(id(1))),
        ?assertEqual({error, not_found}, macula_nat_cache:get(id(2))),
        %% Updating existing keys never evicts.
        [ok = macula_nat_cache:put(id(N), ?P#{public_port => 9}) || N <- [1, 3, 4, 101]],
        ?assertMatch(#{size := 100, evictions := 1}, macula_nat_cache:stats()),
        [ok = macula_nat_cache:put(id(N), ?P) || N <- lists:seq(200, 249)],
        ?assertMatch(#{size := 100, evictions := 51}, macula_nat_cache:stats())
    end.

forged_records_refused(_) ->
    fun() ->
        {ok, Me} = macula:get_node_id(),
        {ok, _} = macula_nat_cache:advertise(?P),
        [{_, Good}] = ets:lookup(macula_nat_test_dht, {record, Me}),
        %% Our valid record served as someone else's.
        Victim = id(5),
        macula_nat_test_dht:set({forge, Victim}, Good),
        ?assertEqual({error, forged}, macula_nat_cache:get_from_dht(Victim)),
        %% Our record with one bit flipped in the body.
        <<Head:20/binary, B, Tail/binary>> = Good,
        macula_nat_test_dht:set({forge, Me}, <<Head/binary, (B bxor 1), Tail/binary>>),
        ?assertEqual({error, forged}, macula_nat_cache:get_from_dht(Me)),
        macula_nat_test_dht:set({forge, id(6)}, <<"garbage">>),
        ?assertEqual({error, forged}, macula_nat_cache:get_from_dht(id(6))),
        ?assertMatch(#{forged := 3}, macula_nat_cache:stats()),
        ?assertEqual({error, not_found}, macula_nat_cache:get(Victim)),
        ?assertEqual({error, not_found}, macula_nat_cache:get(Me))
    end.

host_dht_errors(_) ->
    fun() ->
        macula_nat_test_dht:set({forge, id(7)}, not_a_binary),
        ?assertEqual({error, backend}, macula_nat_cache:get_from_dht(id(7))),
        ?assertEqual({error, not_found}, macula_nat_cache:get_from_dht(id(8)))
    end.

