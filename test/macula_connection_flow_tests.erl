%% Flow control of macula_connection (issue 18), real QUIC on loopback
%% between this VM (A) and a second one started with `peer' (B):
%% the mailbox flood with default options is bounded and slows the sender,
%% `{active, N}' delivers exactly N before `passive', `once', `false' +
%% `recv', timeouts, handover, bad options.
-module(macula_connection_flow_tests).

-include_lib("eunit/include/eunit.hrl").

-export([flood_owner/0, flood_read/0, flood_qlen/0, flood_start/0, burst_peer/0, passive_then_default/1]).

-define(FLOOD_MS, 6000).
-define(PAYLOAD, 1024).

flow_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) ->
             [{timeout, 180, fun() -> mailbox_flood_default(Ctx) end},
              {timeout, 60, fun() -> active_n_exact(Ctx) end},
              {timeout, 60, fun() -> once_false_recv(Ctx) end},
              {timeout, 60, fun() -> handover_keeps_mode(Ctx) end},
              {timeout, 60, fun() -> bad_options(Ctx) end}]
     end}.

%% Through a rendezvous: the accept goes through the signalling connection
%% (its own NIF) and the dial through the connector, which never calls
%% this module: modes and the default window hold there too.
rendezvous_test_() ->
    {setup, fun rv_setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 120, fun() -> rendezvous_modes(Ctx) end}] end}.

rv_setup() ->
    {Me, Rv} = macula_nat_test_support:serve_loopback_rendezvous(),
    B = macula_nat_test_support:start_peer([{rendezvous, [#{endpoint => Rv, node_id => Me}]}]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    ok = macula_nat_coordinator:join(Rv, Me),
    ok = macula_nat_test_support:wait(
           fun() -> lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers()) end, 10000),
    #{b => B, b_id => BId}.

-define(RV_COUNT, 2500).

%% On B: accepts passive, takes 5 with recv (nothing reaches the mailbox
%% meanwhile), then goes back to the default and reads the rest with a
%% plain receive; sends ?RV_COUNT terms back and reports.
-spec passive_then_default(pos_integer()) -> ok.
passive_then_default(N) ->
    {ok, C} = macula_connection:accept(#{timeout => 30000, active => false}),
    First = [macula_connection:recv(C, 10000) || _ <- lists:seq(1, 5)],
    timer:sleep(300),
    {message_queue_len, Q} = erlang:process_info(self(), message_queue_len),
    ok = macula_connection:setopts(C, #{active => true}),
    Rest = [receive {macula_connection, C, {message, T}} -> T after 10000 -> timeout end
            || _ <- lists:seq(6, N)],
    [ok = macula_connection:send(C, {back, I}) || I <- lists:seq(1, ?RV_COUNT)],
    ok = macula_connection:send(C, {report, First, Q, Rest =:= [{i, I} || I <- lists:seq(6, N)]}),
    receive {macula_connection, C, {closed, _}} -> ok after 30000 -> ok end.

rendezvous_modes(#{b := B, b_id := BId}) ->
    N = ?RV_COUNT,
    peer:call(B, erlang, spawn, [?MODULE, passive_then_default, [N]]),
    {ok, C} = macula_nat_connector:connect(BId, #{timeout => 10000}),
    [ok = macula_connection:send(C, {i, I}) || I <- lists:seq(1, N)],
    %% Our side is the connector's connection in the default mode: more
    %% than two windows come back, read with a plain receive.
    Back = [receive {macula_connection, C, {message, T}} -> T after 10000 -> timeout end
            || _ <- lists:seq(1, N)],
    ?assertEqual([{back, I} || I <- lists:seq(1, N)], Back),
    receive
        {macula_connection, C, {message, {report, First, Q, RestOk}}} ->
            ?assertEqual([{ok, {i, I}} || I <- lists:seq(1, 5)], First),
            ?assertEqual(0, Q),
            ?assert(RestOk)
    after 10000 -> error(no_report)
    end,
    macula_connection:close(C).

setup() ->
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    B = macula_nat_test_support:start_peer([]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    #{b => B, b_id => BId, b_ep => iolist_to_binary(["127.0.0.1:", integer_to_list(BPort)])}.

cleanup(#{b := B}) ->
    peer:stop(B),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip).

%% --- (1) the flood -------------------------------------------------------

%% On B: accepts one connection with the default options and never reads
%% it until told `start_reading'; then reads in order, counting.
-spec flood_owner() -> no_return().
flood_owner() ->
    %% By name: pids do not travel between these two unnamed VMs.
    register(macula_flood_owner, self()),
    {ok, C} = macula_connection:accept(30000),
    receive start_reading -> ok end,
    flood_loop(C, 0, true).

flood_loop(C, N, InOrder) ->
    receive
        {macula_connection, C, {message, {seq, M, Pad}}} ->
            flood_loop(C, N + 1, InOrder andalso M =:= N + 1 andalso byte_size(Pad) =:= ?PAYLOAD);
        {count, From} ->
            From ! {count, N, InOrder},
            flood_loop(C, N, InOrder)
    end.

%% On B: what the owner has read so far: {Count, InOrder}.
-spec flood_read() -> {non_neg_integer(), boolean()} | timeout.
flood_read() ->
    macula_flood_owner ! {count, self()},
    receive {count, N, InOrder} -> {N, InOrder} after 10000 -> timeout end.

%% On B: the owner's mailbox length.
-spec flood_qlen() -> non_neg_integer().
flood_qlen() ->
    {message_queue_len, Q} = erlang:process_info(whereis(macula_flood_owner), message_queue_len),
    Q.

-spec flood_start() -> ok.
flood_start() ->
    macula_flood_owner ! start_reading,
    ok.

mailbox_flood_default(#{b := B, b_id := BId, b_ep := BEp}) ->
    peer:call(B, erlang, spawn, [?MODULE, flood_owner, []]),
    {ok, C} = macula_connection:open(BEp, BId),
    %% Let B settle before its baseline.
    timer:sleep(300),
    Mem0 = peer:call(B, erlang, memory, [total]),
    %% The whole process too: QUIC's buffers live outside erlang:memory/1.
    BOsPid = peer:call(B, os, getpid, []),
    Rss0 = rss(BOsPid),
    Sent = counters:new(1, []),
    Parent = self(),
    Sender = spawn_link(fun() -> flood_send(C, Sent, Parent) end),
    Samples = sample(B, BOsPid, Sent, erlang:monotonic_time(millisecond) + ?FLOOD_MS, []),
    Sender ! stop,
    MaxRss = lists:max([R || {_, _, _, R} <- Samples]),
    MaxMem = lists:max([M || {M, _, _, _} <- Samples]),
    MaxQ = lists:max([Q || {_, Q, _, _} <- Samples]),
    Counts = [S || {_, _, S, _} <- Samples],
    %% The sender is stalled by back-pressure (it can only have filled
    %% the window, QUIC's receive window and its own 4 MiB queue).
    SentAtStop = counters:get(Sent, 1),
    Half = lists:nth(length(Counts) div 2, Counts),
    io:format(user, "~nflood (default options, owner not reading, ~b s): receiver erlang:memory(total) "
              "+~.1f MiB (max), RSS +~.1f MiB (max), owner mailbox max ~b, sends completed ~b "
              "(~b at half time)~n",
              [?FLOOD_MS div 1000, (MaxMem - Mem0) / 1048576, (MaxRss - Rss0) / 1048576, MaxQ,
               SentAtStop, Half]),
    ?assert(MaxMem - Mem0 =< 128 * 1048576),
    ?assert(MaxRss - Rss0 =< 128 * 1048576),
    ?assert(MaxQ < 10000),
    ?assert(SentAtStop < 60000),
    %% Stalled: little progress in the second half of the flood.
    ?assert(SentAtStop - Half < 10000),
    %% Now the owner reads: everything arrives, in order, and the sender's
    %% blocked send completes.
    ok = peer:call(B, ?MODULE, flood_start, []),
    Total = receive {sent, T} -> T after 60000 -> error(sender_stuck) end,
    ?assert(Total >= SentAtStop),
    ?assertEqual(ok, macula_nat_test_support:wait(
                       fun() -> peer:call(B, ?MODULE, flood_read, []) =:= {Total, true} end,
                       60000)),
    macula_connection:close(C).

flood_send(C, Sent, Parent) ->
    Pad = binary:copy(<<7>>, ?PAYLOAD),
    flood_send(C, Sent, Parent, Pad, 1).

flood_send(C, Sent, Parent, Pad, N) ->
    receive
        stop -> Parent ! {sent, N - 1}
    after 0 ->
        ok = macula_connection:send(C, {seq, N, Pad}),
        counters:add(Sent, 1, 1),
        flood_send(C, Sent, Parent, Pad, N + 1)
    end.

sample(B, OsPid, Sent, Until, Acc) ->
    case erlang:monotonic_time(millisecond) >= Until of
        true ->
            lists:reverse(Acc);
        false ->
            Mem = peer:call(B, erlang, memory, [total]),
            Q = peer:call(B, ?MODULE, flood_qlen, []),
            Rss = rss(OsPid),
            timer:sleep(100),
            sample(B, OsPid, Sent, Until, [{Mem, Q, counters:get(Sent, 1), Rss} | Acc])
    end.

%% Resident set size of an OS process, bytes.
rss(OsPid) ->
    {ok, Status} = file:read_file("/proc/" ++ OsPid ++ "/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb) * 1024.

%% --- (2) (3) modes --------------------------------------------------------

%% On B: accepts one connection; on `{burst, K}' sends `{n, I}' for I in
%% 1..K; on `stop' closes.
-spec burst_peer() -> ok.
burst_peer() ->
    {ok, C} = macula_connection:accept(30000),
    burst_loop(C).

burst_loop(C) ->
    receive
        {macula_connection, C, {message, {burst, From, K}}} ->
            [ok = macula_connection:send(C, {n, I}) || I <- lists:seq(From, From + K - 1)],
            burst_loop(C);
        {macula_connection, C, {message, stop}} ->
            macula_connection:close(C);
        {macula_connection, C, {closed, _}} ->
            ok
    end.

open_burst(#{b := B, b_id := BId, b_ep := BEp}, Opts) ->
    peer:call(B, erlang, spawn, [?MODULE, burst_peer, []]),
    {ok, C} = macula_connection:open(BEp, BId, Opts),
    C.

%% The data messages of C now in the mailbox, in order, after Ms of quiet.
take(C, Ms) ->
    receive
        {macula_connection, C, {message, T}} -> [T | take(C, Ms)];
        {macula_connection, C, passive} -> [passive | take(C, Ms)]
    after Ms -> []
    end.

%% Waits for K data messages (and a `passive' if one comes right after).
take_n(_C, 0) -> [];
take_n(C, K) ->
    receive
        {macula_connection, C, {message, T}} -> [T | take_n(C, K - 1)];
        {macula_connection, C, passive} -> [passive | take_n(C, K)]
    after 10000 -> [timeout]
    end.

active_n_exact(Ctx) ->
    C = open_burst(Ctx, #{active => false}),
    ok = macula_connection:send(C, {burst, 1, 100}),
    %% Passive: nothing arrives although the peer sent 100.
    ?assertEqual([], take(C, 500)),
    ok = macula_connection:setopts(C, [{active, 10}]),
    ?assertEqual([{n, I} || I <- lists:seq(1, 10)] ++ [passive], take_n(C, 10) ++ take(C, 500)),
    %% N adds to a running counter: 3 + 4 = 7.
    ok = macula_connection:setopts(C, [{active, 3}]),
    ok = macula_connection:setopts(C, #{active => 4}),
    Got = take_n(C, 7) ++ take(C, 500),
    %% The first batch may have turned passive before the second setopts
    %% (then 3, passive, 4, passive) or not (7, passive).
    ?assertEqual([{n, I} || I <- lists:seq(11, 17)], [T || T <- Got, T =/= passive]),
    ?assertEqual(passive, lists:last(Got)),
    %% {active, 0}: passive at once, with the message.
    ok = macula_connection:setopts(C, [{active, 0}]),
    ?assertEqual([passive], take(C, 300)),
    %% A counter made to go non-positive goes passive too.
    ok = macula_connection:setopts(C, [{active, 5}]),
    ok = macula_connection:setopts(C, [{active, -5}]),
    Drained = [T || T <- take(C, 500), T =/= passive],
    %% Up to 5 may have been delivered before the -5 landed; none after.
    Next = 18 + length(Drained),
    ?assertEqual([{n, I} || I <- lists:seq(18, Next - 1)], Drained),
    {ok, {n, Next}} = macula_connection:recv(C, 5000),
    %% Over 32767: badarg, nothing changed; the rest (to 100) arrives.
    ok = macula_connection:setopts(C, [{active, 32767}]),
    ?assertEqual({error, badarg}, macula_connection:setopts(C, [{active, 1}])),
    ?assertEqual([{n, I} || I <- lists:seq(Next + 1, 100)], take(C, 1000)),
    ok = macula_connection:setopts(C, [{active, false}]),
    ok = macula_connection:send(C, stop),
    drain_to_closed(C).

drain_to_closed(C) ->
    case macula_connection:recv(C, 10000) of
        {ok, _} -> drain_to_closed(C);
        {error, closed} ->
            receive {macula_connection, C, {closed, R}} -> ?assertMatch({peer_closed, _}, R)
            after 5000 -> error(no_closed_message)
            end
    end.

once_false_recv(Ctx) ->
    C = open_burst(Ctx, #{active => once}),
    ok = macula_connection:send(C, {burst, 1, 20}),
    %% once: exactly one, no `passive'.
    ?assertEqual([{n, 1}], take_n(C, 1) ++ take(C, 500)),
    ok = macula_connection:setopts(C, [{active, once}]),
    ?assertEqual([{n, 2}], take_n(C, 1) ++ take(C, 500)),
    %% Passive after once: recv takes the rest, in order.
    ?assertEqual({ok, {n, 3}}, macula_connection:recv(C, 5000)),
    ok = macula_connection:setopts(C, [{active, false}]),
    [?assertEqual({ok, {n, I}}, macula_connection:recv(C, 5000)) || I <- lists:seq(4, 20)],
    %% Nothing more: timeout, and a message sent after a timeout is not lost.
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout}, macula_connection:recv(C, 300)),
    ?assert(erlang:monotonic_time(millisecond) - T0 >= 300),
    ?assertEqual({error, timeout}, macula_connection:recv(C, 0)),
    ok = macula_connection:send(C, {burst, 21, 1}),
    ?assertEqual({ok, {n, 21}}, macula_connection:recv(C, 5000)),
    %% recv with gen_tcp's shape.
    ok = macula_connection:send(C, {burst, 22, 1}),
    ?assertEqual({ok, {n, 22}}, macula_connection:recv(C, 0, 5000)),
    %% recv is for the owner, in passive mode.
    Parent = self(),
    spawn(fun() -> Parent ! {other, macula_connection:recv(C, 100)} end),
    ?assertEqual({error, not_owner}, receive {other, R} -> R after 5000 -> none end),
    ok = macula_connection:setopts(C, [{active, true}]),
    ?assertEqual({error, not_passive}, macula_connection:recv(C, 100)),
    %% Back to the default: messages flow again.
    ok = macula_connection:send(C, {burst, 23, 3}),
    ?assertEqual([{n, 23}, {n, 24}, {n, 25}], take_n(C, 3)),
    ok = macula_connection:setopts(C, [{active, false}]),
    ok = macula_connection:send(C, stop),
    ?assertEqual({error, closed}, macula_connection:recv(C, 10000)),
    ?assertEqual({error, closed}, macula_connection:recv(C, 100)),
    receive {macula_connection, C, {closed, _}} -> ok after 5000 -> error(no_closed_message) end.

handover_keeps_mode(Ctx) ->
    C = open_burst(Ctx, #{active => 3}),
    Parent = self(),
    New = spawn(fun() ->
                        receive go -> ok end,
                        Parent ! {new_got, take_n(C, 3) ++ take(C, 500)},
                        receive stop -> ok end
                end),
    ok = macula_connection:controlling_process(C, New),
    New ! go,
    ok = macula_connection:send(C, {burst, 1, 10}),
    ?assertEqual({new_got, [{n, 1}, {n, 2}, {n, 3}, passive]},
                 receive {new_got, _} = M -> M after 15000 -> timeout end),
    %% Nothing came to the old owner.
    ?assertEqual([], take(C, 200)),
    New ! stop.

%% --- (4) bad options -------------------------------------------------------

bad_options(#{b_id := BId, b_ep := BEp} = Ctx) ->
    C = open_burst(Ctx, #{}),
    [?assertEqual({error, badarg}, macula_connection:setopts(C, Bad))
     || Bad <- [[{active, maybe}], [{active, 32768}], [{active, -32769}], [{active, 1.0}],
                [{bogus, 1}], [active], #{bogus => 1}, not_a_list, [{active, true} | bad]]],
    ?assertEqual({error, badarg}, macula_connection:setopts(not_a_conn, [{active, true}])),
    ?assertEqual({error, badarg}, macula_connection:setopts(make_ref(), [{active, true}])),
    ?assertEqual({error, badarg}, macula_connection:recv(make_ref(), 10)),
    ?assertEqual({error, badarg}, macula_connection:recv(C, -1)),
    ?assertEqual({error, badarg}, macula_connection:recv(C, 5, 100)),
    ?assertEqual({error, badarg}, macula_connection:recv(not_a_conn)),
    ?assertEqual({error, badarg}, macula_connection:open(BEp, BId, #{active => sometimes})),
    ?assertEqual({error, badarg}, macula_connection:accept(#{active => 1 bsl 20})),
    ?assertEqual({error, badarg}, macula_connection:accept(#{bogus => 1})),
    ?assertEqual({error, timeout}, macula_connection:accept(#{timeout => 50, active => false})),
    %% Still a working connection in the default mode.
    ok = macula_connection:setopts(C, []),
    ok = macula_connection:send(C, {burst, 1, 1}),
    ?assertEqual([{n, 1}], take_n(C, 1)),
    ok = macula_connection:send(C, stop),
    receive {macula_connection, C, {closed, _}} -> ok after 10000 -> error(no_closed_message) end,
    ?assertEqual({error, closed}, macula_connection:setopts(C, [{active, once}])),
    ?assertEqual({error, closed}, macula_connection:recv(C, 100)).
