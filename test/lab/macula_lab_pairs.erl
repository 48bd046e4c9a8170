%% @doc What the BEAM lab tests (lab_connect.escript, lab_operators.escript)
%% share: lab VMs configured through the application environment, waiting
%% for a node's detection and reservation, the strategy the table gives
%% for two detected profiles, and the checks of one connected pair
%% (method on both ends, a term each way).
-module(macula_lab_pairs).

-export([start_vm/5, start_vm_only/5, await_ready/3, await_ready/4, slots/2, with_slot/3,
         strategy_table/0, table_strategy/3, prof/1, flat/1,
         check/7, close_both/4, exchange/5, expect_msg/3, flush/0,
         pmap/2, wait/2, now_ms/0]).

%% Detections per node until the verdict is the lab's NAT.
-define(DETECTIONS, 3).

%%% ---------------------------------------------------------------- VMs

%% @doc A VM in host `H' of lab `Lab' with `Env' as macula_nat's
%% application environment, macula_nat started.
start_vm(Lab, H, Lang, Env, Owner) ->
    P = start_vm_only(Lab, H, Lang, Env, Owner),
    {ok, _} = macula_lab_peer:call(P, application, ensure_all_started, [macula_nat]),
    P.

%% @doc The VM with its environment set, macula_nat not started.
start_vm_only(Lab, H, Lang, Env, Owner) ->
    %% No scheduler busy-waiting: dozens of VMs share a couple of cores.
    VmArgs = ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"],
    {ok, P} = macula_lab_peer:start(Lab, H, #{lang => Lang, env => Env, owner => Owner,
                                              vm_args => VmArgs}),
    %% Elixir's Logger starts at debug; Erlang's logger at notice. Same
    %% level on both, or the Elixir VMs flood the run's output.
    ok = case Lang of
             elixir -> macula_lab_peer:call(P, 'Elixir.Logger', configure, [[{level, notice}]]);
             erlang -> ok
         end,
    P.

%% @doc Waits for the node's detected profile; detects again until the
%% verdict is `Want' (the lab's NAT, or `any'; at most ?DETECTIONS in
%% all): on a loaded machine a detection can time out, and these tests are
%% about connecting (lab_detection.rs is about detecting). Every
%% detection, the forced ones included, is what the node signals from then
%% on, so a pair's table check sees the profile its peer is told. Then
%% waits (at most 30 s) for the relay reservation the environment
%% configured. `Slots' (from slots/2, key `detect') bounds the detections
%% at once; `none' runs it at once.
await_ready(Slots, Peer, Want) ->
    await_ready(Slots, Peer, Want, fun(_) -> true end).

%% @doc await_ready/3, then until `Reserved(ReservedRelays)' (at most 30 s).
await_ready(Slots, Peer, Want, Reserved) ->
    with_slot(Slots, detect,
              fun() ->
                      {Prof, Verdicts} = detect(Peer, Want, []),
                      {ok, Id} = macula_lab_peer:call(Peer, macula, get_node_id, []),
                      _ = wait(fun() ->
                                       Rs = macula_lab_peer:call(Peer, macula_nat_coordinator,
                                                                 reserved_relays, []),
                                       Rs =/= [] andalso Reserved(Rs)
                               end, 30000),
                      #{id => Id, profile => Prof, detections => Verdicts}
              end).

%% Verdicts: what each attempt gave, last first. The first call waits for
%% the detection the node started by itself (or takes its result).
detect(Peer, Want, Verdicts) ->
    R = macula_lab_peer:call(Peer, macula_nat_detector, detect,
                             [#{force => Verdicts =/= [], timeout => 10000}], 15000),
    V = case R of {ok, Pr} -> flat(prof(Pr)); _ -> flat(io_lib:format("~p", [R])) end,
    case R of
        {ok, Prof} when V =:= Want; Want =:= any; length(Verdicts) + 1 >= ?DETECTIONS -> {Prof, [V | Verdicts]};
        _ when length(Verdicts) + 1 >= ?DETECTIONS -> error({detect, lists:reverse([V | Verdicts])});
        _ -> detect(Peer, Want, [V | Verdicts])
    end.

%% @doc A counting semaphore process with `Free' slots.
slots(Free, [Pid | Queue]) when Free > 0 ->
    Pid ! {slot, self()},
    slots(Free - 1, Queue);
slots(Free, Queue) ->
    receive
        {take, Pid} -> slots(Free, Queue ++ [Pid]);
        {give, _} -> slots(Free + 1, Queue)
    end.

%% @doc `F()' holding a slot of `maps:get(Kind, Slots)'.
with_slot(none, _, F) -> F();
with_slot(Slots, Kind, F) ->
    S = maps:get(Kind, Slots),
    S ! {take, self()},
    receive {slot, S} -> ok end,
    try F() after S ! {give, self()} end.

%%% ---------------------------------------------------------------- strategy table

%% @doc bench/strategy_table.md is generated from
%% macula_nat_proto::strategy::choose and a proto unit test fails when it
%% is stale, so reading it here is reading the connector's decision.
%% Returns #{{RowType, ColType} => Code} over both tables (NAT x NAT, and
%% NAT x "public").
strategy_table() ->
    File = filename:join([macula_lab_peer:repo_root(), "bench", "strategy_table.md"]),
    {ok, Bin} = file:read_file(File),
    parse_table(string:split(Bin, "\n", all), undefined, #{}).

parse_table([], _, Acc) -> Acc;
parse_table([<<"| A \\ B |", _/binary>> = L | Rest], _, Acc) ->
    [_ | Cols] = cells(L),
    parse_table(Rest, Cols, Acc);
parse_table([<<"| **", _/binary>> = L | Rest], Cols, Acc) when Cols =/= undefined ->
    [Row | Codes] = cells(L),
    RowType = string:trim(Row, both, "*"),
    parse_table(Rest, Cols, maps:merge(Acc, maps:from_list([{{RowType, C}, V} || {C, V} <- lists:zip(Cols, Codes)])));
parse_table([_ | Rest], Cols, Acc) -> parse_table(Rest, Cols, Acc).

cells(L) ->
    [string:trim(C) || C <- string:split(string:trim(L, both, "| \r"), "|", all)].

%% @doc The strategy the table gives for initiator profile A and responder B.
table_strategy(T, #{no_nat := true}, #{no_nat := true}) ->
    code_strategy(maps:get({<<"EI-PP-EI">>, <<"public">>}, T));
table_strategy(T, A, #{no_nat := true}) -> code_strategy(maps:get({nat_type(A), <<"public">>}, T));
table_strategy(T, #{no_nat := true}, B) -> code_strategy(maps:get({nat_type(B), <<"public">>}, T));
table_strategy(T, A, B) -> code_strategy(maps:get({nat_type(A), nat_type(B)}, T)).

nat_type(#{mapping := M, filtering := F, allocation := A}) ->
    string:uppercase(iolist_to_binary([atom_to_list(M), "-", atom_to_list(A), "-", atom_to_list(F)])).

code_strategy(<<"D", _/binary>>) -> direct;
code_strategy(<<"CR", _/binary>>) -> connection_reversal;
code_strategy(<<"SP">>) -> simple_punch;
code_strategy(<<"PP">>) -> predict_preservation;
code_strategy(<<"PC">>) -> predict_contiguity;
code_strategy(<<"BD", _/binary>>) -> birthday_probing;
code_strategy(<<"R">>) -> relay.

%% @doc A profile in the lab's notation mapping-filtering-allocation.
prof(#{mapping := M, filtering := F, allocation := pc} = P) ->
    io_lib:format("~s-~s-pc:delta=~p", [M, F, maps:get(port_delta, P, undefined)]);
prof(#{mapping := M, filtering := F, allocation := A}) ->
    io_lib:format("~s-~s-~s", [M, F, A]);
prof(Other) -> io_lib:format("~p", [Other]).

flat(IoList) -> lists:flatten(IoList).

%%% ---------------------------------------------------------------- one pair

%% @doc A connected pair, `{ok, Methods}' expected: the method connect
%% answered must be in `Methods', A's get_info must say it, B's one of
%% `ResponderMethods(M)'; then a term each way. Closes both.
%% {Ok, Detail, BMethod}.
check(Exp, Got, AccRes, PA, PB, Name, ResponderMethods) ->
    case {Exp, Got, AccRes} of
        {{ok, Methods}, {ok, CA, M}, {ok, CB}} ->
            InfoA = macula_lab_peer:call(PA, macula_connection, get_info, [CA, connection_method]),
            InfoB = macula_lab_peer:call(PB, macula_connection, get_info, [CB, connection_method]),
            Check = case {lists:member(M, Methods), InfoA,
                          lists:member(InfoB, ResponderMethods(M))} of
                        {true, M, true} -> exchange(PA, CA, PB, CB, Name);
                        {true, _, _} -> {false, {get_info, a, InfoA, b, InfoB, connect, M}};
                        {false, _, _} -> {false, {unexpected_method, M}}
                    end,
            close_both(Got, AccRes, PA, PB),
            {element(1, Check), element(2, Check), InfoB};
        _ ->
            close_both(Got, AccRes, PA, PB),
            {false, {connect, Got, accept, AccRes}, none}
    end.

close_both(Got, AccRes, PA, PB) ->
    _ = case Got of {ok, CA, _} -> macula_lab_peer:call(PA, macula_connection, close, [CA]); _ -> ok end,
    _ = case AccRes of {ok, CB} -> macula_lab_peer:call(PB, macula_connection, close, [CB]); _ -> ok end,
    ok.

%% @doc A term A -> B, then one B -> A (B's connection accepted in its
%% mailbox, A's opened in its mailbox: the messages come to the peers'
%% owner, this process).
exchange(PA, CA, PB, CB, Name) ->
    %% Only atoms both VMs already have: a term with unknown atoms arrives
    %% as {unsafe_message, Bin} (atoms are never created from peer input).
    TA = {<<"from a">>, list_to_binary(Name), lists:seq(1, 10)},
    ok = macula_lab_peer:call(PA, macula_connection, send, [CA, TA]),
    R1 = expect_msg(PB, CB, TA),
    TB = {<<"from b">>, #{ok => <<"reply">>}, 3.5},
    ok = macula_lab_peer:call(PB, macula_connection, send, [CB, TB]),
    R2 = expect_msg(PA, CA, TB),
    case {R1, R2} of
        {ok, ok} -> {true, ok};
        _ -> {false, {a_to_b, R1, b_to_a, R2}}
    end.

expect_msg(Peer, C, T) ->
    receive {macula_lab_peer, Peer, {macula_connection, C, {message, T}}} -> ok
    after 5000 -> {timeout, process_info(self(), messages)}
    end.

flush() ->
    receive {macula_lab_peer, _, _} -> flush() after 0 -> ok end.

%%% ---------------------------------------------------------------- helpers

pmap(F, L) ->
    Me = self(),
    Refs = [begin
                R = make_ref(),
                spawn_link(fun() -> Me ! {R, catch F(X)} end),
                R
            end || X <- L],
    [receive {R, {'EXIT', E}} -> error(E); {R, V} -> V end || R <- Refs].

wait(F, Ms) when Ms =< 0 -> F() orelse timeout;
wait(F, Ms) ->
    case F() of
        true -> ok;
        false -> timer:sleep(50), wait(F, Ms - 50)
    end.

now_ms() -> erlang:monotonic_time(millisecond).
