%% Mailbox flood (issue 18): a sender in this VM sends 1 KiB terms with
%% macula_connection:send/2 as fast as it returns to a connection owned by
%% a process in a second VM (peer, loopback), for each receiving mode:
%% owners that never read (default, {active, false}) and owners that read
%% as fast as they can (default receive loop, {active, 100} re-armed on
%% passive, {active, once}, {active, false} + recv/2). Prints a markdown
%% table: the receiver's growth (erlang:memory(total) and RSS), the
%% owner's largest mailbox, sends completed and the sender's rate.
%% Run by bench/mailbox_flood.sh.
-module(mailbox_flood).

-export([main/1, owner/2, owner_stats/0, owner_qlen/0]).

-define(PAYLOAD, 1024).

main([SecsStr]) ->
    main([SecsStr, "new"]);
main([SecsStr, Which]) ->
    Secs = list_to_integer(SecsStr),
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    {ok, B, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    ok = peer:call(B, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    {ok, _} = peer:call(B, application, ensure_all_started, [macula_nat]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    BEp = iolist_to_binary(["127.0.0.1:", integer_to_list(BPort)]),
    BOs = peer:call(B, os, getpid, []),
    Cases = [{"default `{active, true}`, owner never reads", true, none},
             {"`{active, false}`, owner never reads", false, none},
             {"default `{active, true}`, owner reads (`receive` loop)", true, receive_loop},
             {"`{active, 100}`, re-armed on `passive`", 100, active_n},
             {"`{active, once}`, re-armed after each message", once, once},
             {"`{active, false}` + `recv/2`", false, recv}],
    %% "old": the code before flow control (no modes): default rows only.
    Run = case Which of
              "old" -> [C || {_, true, _} = C <- Cases];
              _ -> Cases
          end,
    io:format("| receiving owner (~b s, 1 KiB terms) | receiver memory growth (erlang:memory / RSS, MiB, max) "
              "| owner mailbox max | sends completed | sender rate (sends/s) | received and in order |~n"
              "| --- | --- | --- | --- | --- | --- |~n", [Secs]),
    [run_case(Case, Secs, B, BId, BEp, BOs) || Case <- Run],
    peer:stop(B),
    halt(0).

run_case({Name, Active, Style}, Secs, B, BId, BEp, BOs) ->
    _ = peer:call(B, erlang, spawn, [?MODULE, owner, [Active, Style]]),
    timer:sleep(200),
    {ok, C} = macula_connection:open(BEp, BId),
    timer:sleep(300),
    Mem0 = peer:call(B, erlang, memory, [total]),
    Rss0 = rss(BOs),
    Sent = counters:new(1, []),
    Self = self(),
    Sender = spawn_link(fun() -> send_loop(C, Sent, Self, 1, binary:copy(<<7>>, ?PAYLOAD)) end),
    T0 = erlang:monotonic_time(millisecond),
    Samples = sample(B, BOs, T0 + Secs * 1000, []),
    N = counters:get(Sent, 1),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    Sender ! stop,
    {Got, InOrder} = peer:call(B, ?MODULE, owner_stats, []),
    MaxMem = lists:max([M || {M, _, _} <- Samples]),
    MaxRss = lists:max([R || {_, R, _} <- Samples]),
    MaxQ = lists:max([Q || {_, _, Q} <- Samples]),
    io:format("| ~s | ~.1f / ~.1f | ~b | ~b | ~b | ~b, ~s |~n",
              [Name, (MaxMem - Mem0) / 1048576, (MaxRss - Rss0) / 1048576, MaxQ, N,
               round(N * 1000 / Elapsed), Got, InOrder]),
    macula_connection:close(C),
    receive {sent, _} -> ok after 35000 -> ok end,
    peer:call(B, erlang, exit, [peer:call(B, erlang, whereis, [mf_owner]), kill]),
    timer:sleep(500).

send_loop(C, Sent, Parent, N, Pad) ->
    receive
        stop -> Parent ! {sent, N - 1}
    after 0 ->
        case macula_connection:send(C, {seq, N, Pad}) of
            ok ->
                counters:add(Sent, 1, 1),
                send_loop(C, Sent, Parent, N + 1, Pad);
            {error, _} ->
                receive stop -> Parent ! {sent, N - 1} end
        end
    end.

sample(B, BOs, Until, Acc) ->
    case erlang:monotonic_time(millisecond) >= Until of
        true ->
            Acc;
        false ->
            S = {peer:call(B, erlang, memory, [total]), rss(BOs), peer:call(B, ?MODULE, owner_qlen, [])},
            timer:sleep(100),
            sample(B, BOs, Until, [S | Acc])
    end.

rss(OsPid) ->
    {ok, Status} = file:read_file("/proc/" ++ OsPid ++ "/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb) * 1024.

%% On the receiver.
owner(Active, Style) ->
    register(mf_owner, self()),
    {ok, C} = case Active of
                  true -> macula_connection:accept(30000);
                  _ -> macula_connection:accept(#{timeout => 30000, active => Active})
              end,
    put(stats, {0, true}),
    read(C, Style).

owner_qlen() ->
    {message_queue_len, Q} = erlang:process_info(whereis(mf_owner), message_queue_len),
    Q.

owner_stats() ->
    mf_owner ! {stats, self()},
    receive {stats, S} -> S after 10000 -> {-1, timeout} end.

got(M) ->
    {N, Ok} = get(stats),
    put(stats, {N + 1, Ok andalso M =:= N + 1}).

stats(From) ->
    {N, Ok} = get(stats),
    From ! {stats, {N, case Ok of true -> "yes"; false -> "NO" end}}.

read(C, none) ->
    receive {stats, From} -> stats(From), read(C, none) end;
read(C, recv) ->
    receive
        {stats, From} -> stats(From), read(C, recv)
    after 0 ->
        case macula_connection:recv(C, 100) of
            {ok, {seq, M, _}} -> got(M), read(C, recv);
            {error, timeout} -> read(C, recv);
            {error, _} -> read(C, none)
        end
    end;
read(C, Style) ->
    receive
        {macula_connection, C, {message, {seq, M, _}}} ->
            got(M),
            Style =:= once andalso macula_connection:setopts(C, [{active, once}]),
            read(C, Style);
        {macula_connection, C, passive} ->
            ok = macula_connection:setopts(C, [{active, 100}]),
            read(C, Style);
        {stats, From} ->
            stats(From),
            read(C, Style)
    end.
