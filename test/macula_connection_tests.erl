%% macula_connection between two BEAM nodes over loopback: this VM and a
%% second one started with `peer' (over stdio). QUIC on each node's one
%% socket, authenticated by node key.
-module(macula_connection_tests).

-include_lib("eunit/include/eunit.hrl").

-import(macula_nat_test_support, [wait/2]).

conn_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) ->
             [{timeout, 60, fun() -> messages_both_ways(Ctx) end},
              {timeout, 60, fun() -> owner_death_closes(Ctx) end},
              {timeout, 60, fun() -> handover_and_errors(Ctx) end},
              {timeout, 60, fun() -> quality_stats_and_reports(Ctx) end}]
     end}.

setup() ->
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    {ok, B, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    ok = peer:call(B, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    {ok, _} = peer:call(B, application, ensure_all_started, [macula_nat]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    #{b => B, b_id => BId, b_ep => iolist_to_binary(["127.0.0.1:", integer_to_list(BPort)])}.

cleanup(#{b := B}) ->
    peer:stop(B),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip).

%% On B: a process that accepts one connection and echoes every message
%% back as {echo, Term} until closed; it reports what it saw to the test
%% through peer:call results.
start_echo(B) ->
    peer:call(B, erlang, spawn, [fun() ->
        {ok, C} = macula_connection:accept(30000),
        Loop = fun L() ->
                   receive
                       {macula_connection, C, {message, stop}} -> macula_connection:close(C);
                       {macula_connection, C, {message, T}} -> ok = macula_connection:send(C, {echo, T}), L();
                       {macula_connection, C, {closed, _}} -> ok
                   end
               end,
        Loop()
    end]).

messages_both_ways(#{b := B, b_id := BId, b_ep := BEp}) ->
    start_echo(B),
    {ok, C} = macula_connection:open(BEp, BId),
    ?assertEqual(direct, macula_connection:get_info(C, connection_method)),
    ?assertEqual(BId, macula_connection:get_info(C, peer)),
    ?assertEqual(BEp, macula_connection:get_info(C, remote_address)),
    ?assert(is_float(macula_connection:get_info(C, rtt_ms))),
    Terms = [{n, N, lists:seq(1, N rem 50), <<N:32>>, #{k => N}} || N <- lists:seq(1, 500)]
            ++ [binary:copy(<<"x">>, 1 bsl 20)],
    [ok = macula_connection:send(C, T) || T <- Terms],
    Got = [receive {macula_connection, C, {message, {echo, T}}} -> T after 10000 -> timeout end
           || _ <- Terms],
    ?assertEqual(Terms, Got),
    ok = macula_connection:send(C, stop),
    receive {macula_connection, C, {closed, R}} -> ?assertMatch({peer_closed, _}, R)
    after 10000 -> error(no_close)
    end,
    ?assertEqual(true, macula_connection:get_info(C, closed)),
    ?assertEqual({error, closed}, macula_connection:send(C, late)).

owner_death_closes(#{b := B, b_id := BId, b_ep := BEp}) ->
    start_echo(B),
    Parent = self(),
    Owner = spawn(fun() ->
                          {ok, C} = macula_connection:open(BEp, BId),
                          Parent ! {conn, C},
                          receive never -> ok end
                  end),
    C = receive {conn, X} -> X after 10000 -> error(no_conn) end,
    exit(Owner, kill),
    ?assertEqual(ok, wait(fun() -> macula_connection:get_info(C, closed) end, 5000)).

handover_and_errors(#{b := B, b_id := BId, b_ep := BEp}) ->
    start_echo(B),
    {ok, C} = macula_connection:open(BEp, BId),
    Parent = self(),
    New = spawn(fun() ->
                        receive {macula_connection, C, {message, M}} -> Parent ! {new_owner_got, M} end
                end),
    ok = macula_connection:controlling_process(C, New),
    %% Not the owner any more.
    ?assertEqual({error, not_owner}, macula_connection:controlling_process(C, self())),
    ok = macula_connection:send(C, hello),
    receive {new_owner_got, M} -> ?assertEqual({echo, hello}, M) after 10000 -> error(no_handover) end,
    macula_connection:close(C),
    %% Wrong identity: the handshake is refused.
    {ok, Wrong} = {ok, <<0:256>>},
    ?assertMatch({error, _}, macula_connection:open(BEp, Wrong)),
    ?assertEqual({error, badarg}, macula_connection:send(not_a_conn, x)),
    ?assertEqual({error, badarg}, macula_connection:get_info(make_ref(), peer)),
    ?assertEqual({error, bad_endpoint}, macula_connection:open(<<"nowhere">>, BId)),
    ?assertEqual({error, timeout}, macula_connection:accept(50)).


%% stats/1 and get_info/2 answer the quality figures; {quality, Interval}
%% sends reports to the owner until `false'; a healthy idle connection is
%% not degraded (its keep-alives arrive every second).
quality_stats_and_reports(#{b := B, b_id := BId, b_ep := BEp}) ->
    start_echo(B),
    {ok, C} = macula_connection:open(BEp, BId),
    [ok = macula_connection:send(C, {n, N}) || N <- lists:seq(1, 100)],
    [receive {macula_connection, C, {message, {echo, {n, N}}}} -> ok after 10000 -> error({no_echo, N}) end
     || N <- lists:seq(1, 100)],
    {ok, S} = macula_connection:stats(C),
    ?assertMatch(#{messages_out := 100, messages_in := 100, connection_method := direct,
                   degraded := false, relay := undefined, closed := false}, S),
    #{srtt_ms := Srtt, min_rtt_ms := MinRtt, bytes_in := BIn, bytes_out := BOut, loss := Loss,
      local_address := Local, jitter_ms := J} = S,
    ?assert(is_float(Srtt) andalso Srtt > 0 andalso MinRtt =< Srtt),
    ?assert(BIn > 100 * 10 andalso BOut > 100 * 10),
    ?assert(is_float(Loss) andalso is_float(J)),
    ?assertMatch(<<"127.0.0.1:", _/binary>>, Local),
    ?assertEqual(100, macula_connection:get_info(C, messages_out)),
    ?assertEqual({error, badarg}, macula_connection:setopts(C, [{quality, 10}])),
    ?assertEqual({error, badarg}, macula_connection:setopts(C, [{quality, nope}])),
    ?assertEqual({error, badarg}, macula_connection:stats(not_a_conn)),
    ok = macula_connection:setopts(C, [{quality, 200}]),
    Reports = [receive {macula_connection, C, {quality, M}} -> M after 5000 -> error(no_report) end
               || _ <- lists:seq(1, 3)],
    [?assertMatch(#{srtt_ms := _, messages_out := 100, degraded := false}, M) || M <- Reports],
    %% Idle for 4 s (past the 2.5 s a silent path takes): still healthy,
    %% no path event.
    timer:sleep(4000),
    ?assertEqual(false, macula_connection:get_info(C, degraded)),
    ?assert(macula_connection:get_info(C, silent_ms) < 2000),
    ok = macula_connection:setopts(C, #{quality => false}),
    flush_quality(C),
    receive {macula_connection, C, {quality, _}} -> error(report_after_false);
            {macula_connection, C, {path_degraded, D}} -> error({degraded, D})
    after 600 -> ok
    end,
    ok = macula_connection:send(C, stop),
    receive {macula_connection, C, {closed, _}} -> ok after 10000 -> error(no_close) end.

flush_quality(C) ->
    receive {macula_connection, C, {quality, _}} -> flush_quality(C);
            {macula_connection, C, path_recovered} -> flush_quality(C)
    after 0 -> ok
    end.
