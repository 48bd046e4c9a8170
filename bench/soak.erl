%% Soak (issue 18): one VM as the public node (rendezvous and relay), four
%% VMs with honest nodes joined at it, each on a loopback address of its own,
%% configured through sys.config files only; 100 connections between the
%% honest VMs (a ring, opened with macula_nat_connector:connect/3) exchange
%% sequenced terms for the whole run while the hostile peer
%% (native/macula_nat_core/examples/hostile_peer.rs, on an address of its
%% own) runs every attack at once against all of them. Probes connect every few
%% seconds during the attack (every fourth through the relay only).
%% Prints the markdown report (bench/soak.md) on stdout. Run by bench/soak.sh:
%%   erl -noshell -pa <dir of soak.beam> -run soak main Minutes HostileBin
%% This VM only drives and measures; the three nodes are peer VMs.
-module(soak).

-export([main/1]).
%% Run in the peer VMs.
-export([keeper/0, acceptor/0, open_conns/3, prober/2, stop_senders/0, stats/0, vm_sample/0]).

%% Honest VMs, each on a loopback address of its own (a node is a host;
%% the per-IP connection caps count per host), in a ring: each opens
%% ?CONNS_PER_VM connections to the next, 100 in all.
-define(HONEST, [{honest_a, {127, 0, 0, 2}}, {honest_b, {127, 0, 0, 3}},
                 {honest_c, {127, 0, 0, 4}}, {honest_d, {127, 0, 0, 5}}]).
-define(CONNS_PER_VM, 25).
%% The attacker is another host too.
-define(ATTACKER_IP, "127.0.0.77").
%% Each end of each connection sends one sequenced term this often.
-define(SEND_INTERVAL_MS, 100).
-define(PAD, binary:copy(<<"s">>, 200)).
-define(PROBE_INTERVAL_MS, 3000).
-define(SAMPLE_MS, 10000).
%% A connection that is not one of ours (the hostile peer's) is held this
%% long without reading it, then closed.
-define(FOREIGN_HOLD_MS, 60000).
%% Counters of one end of an honest connection, one row per end: the
%% sender and the reader count in it atomically per field (a
%% read-modify-write of the row would lose counts).
-define(FIELDS, [sent, send_errors, recv, gaps, dups, closed]).

%% ------------------------------------------------------------ controller

main([MinStr, HostileBin]) ->
    Minutes = list_to_integer(MinStr),
    Secs = Minutes * 60,
    process_flag(trap_exit, true),
    Tmp = string:trim(os:cmd("mktemp -d")),
    Paths = code:get_path(),
    Public = start_vm(Tmp, public, [{listen_ip, {127, 0, 0, 1}}, {rendezvous_server, true}], Paths),
    ok = call(Public, macula_relay_node, enable, []),
    {ok, PubId} = call(Public, macula, get_node_id, []),
    {ok, {_, PubPort}} = call(Public, macula_nat_node, local_addr, []),
    PubEp = iolist_to_binary(["127.0.0.1:", integer_to_list(PubPort)]),
    Contact = #{node_id => binary:encode_hex(PubId), endpoint => PubEp},
    Honest = [{N, start_vm(Tmp, N, [{listen_ip, Ip}, {rendezvous, [Contact]}, {relays, [Contact]}], Paths), Ip}
              || {N, Ip} <- ?HONEST],
    VMs = [{public, Public} | [{N, V} || {N, V, _} <- Honest]],
    [wait_joined(N, V) || {N, V, _} <- Honest],
    [ok = call(V, soak, keeper, []) || {_, V} <- VMs],
    Info = [begin
                {ok, Id} = call(V, macula, get_node_id, []),
                {ok, {_, Port}} = call(V, macula_nat_node, local_addr, []),
                {N, V, Ip, Id, Port}
            end || {N, V, Ip} <- Honest],
    Peer = fun(Id, Ip, Port) ->
                   binary_to_list(binary:encode_hex(Id)) ++ "@" ++ inet:ntoa(Ip) ++ ":" ++ integer_to_list(Port)
           end,
    HostileArgs = ["--public", Peer(PubId, {127, 0, 0, 1}, PubPort)]
        ++ lists:append([["--honest", Peer(Id, Ip, Port)] || {_, _, Ip, Id, Port} <- Info])
        ++ ["--bind-ip", ?ATTACKER_IP, "--secs", integer_to_list(Secs)]
        ++ string:lexemes(os:getenv("SOAK_HOSTILE_ARGS", ""), " "),
    T0 = erlang:monotonic_time(millisecond),
    Hostile = open_port({spawn_executable, HostileBin},
                        [{args, HostileArgs}, {line, 4096}, exit_status, use_stdio, binary]),
    timer:sleep(3000),
    %% The honest traffic starts under attack: each honest VM opens its
    %% connections to the next one in the ring, and probes it.
    Ring = lists:zip(Info, tl(Info) ++ [hd(Info)]),
    [ok = call(V, soak, open_conns, [NextId, ?CONNS_PER_VM, N]) || {{N, V, _, _, _}, {_, _, _, NextId, _}} <- Ring],
    [ok = call(V, soak, prober, [NextId, N]) || {{N, V, _, _, _}, {_, _, _, NextId, _}} <- Ring],
    Samples = sample_loop(VMs, T0, T0 + Secs * 1000, []),
    {HostileRows, HostileExit} = hostile_output(Hostile, []),
    [catch call(V, soak, stop_senders, []) || {_, V, _} <- Honest],
    %% In-flight terms land before the counts are compared.
    timer:sleep(10000),
    StatsP = stats_of(Public),
    log("hostile connections' first deliveries: public ~p~n", [maps:get(foreign, StatsP)]),
    Stats = [{N, stats_of(V)} || {N, V, _} <- Honest],
    [log("~s ~p~n", [N, maps:get(foreign, S)]) || {N, S} <- Stats],
    Alive = [{N, is_alive(V)} || {N, V} <- VMs],
    report(Minutes, Samples, Stats, HostileRows, HostileExit, Alive, HostileArgs),
    [catch peer:stop(V) || {_, V} <- VMs],
    os:cmd("rm -rf " ++ Tmp),
    halt(0).

%% A VM that died still gets its report (its figures up to then).
stats_of(Vm) ->
    case catch call(Vm, soak, stats, []) of
        #{} = M -> M;
        E -> #{ends => #{}, connects => [], foreign => [], profile => {vm_unreachable, E}}
    end.

start_vm(Tmp, Name, Env, Paths) ->
    Config = filename:join(Tmp, atom_to_list(Name) ++ ".config"),
    ok = file:write_file(Config, io_lib:format("~p.~n", [[{macula_nat, Env},
                                                          {kernel, [{logger_level, warning}]}]])),
    {ok, Pid, _} = peer:start(#{connection => standard_io, name => Name,
                                args => ["-config", Config, "-pa" | Paths]}),
    erlang:monitor(process, Pid),
    {ok, _} = call(Pid, application, ensure_all_started, [macula_nat]),
    Pid.

call(Vm, M, F, A) ->
    peer:call(Vm, M, F, A, 60000).

is_alive(Vm) ->
    case catch peer:get_state(Vm) of
        running -> yes;
        Other -> iolist_to_binary(io_lib:format("NO (~p)", [Other]))
    end.

wait_joined(Name, Vm) ->
    wait_joined(Name, Vm, erlang:monotonic_time(millisecond) + 60000).

wait_joined(Name, Vm, Deadline) ->
    Joined = element(1, call(Vm, macula_nat_coordinator, signal, [])) =:= ok,
    Reserved = call(Vm, macula_nat_coordinator, reserved_relays, []) =/= [],
    case {Joined, Reserved} of
        {true, true} -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({not_joined, Name, Joined, Reserved});
                false -> timer:sleep(200), wait_joined(Name, Vm, Deadline)
            end
    end.

%% Every ?SAMPLE_MS: each VM's RSS, erlang:memory(total), fds, processes,
%% the largest mailbox of a hostile connection's (never reading) owner, and
%% the honest message counts.
sample_loop(VMs, T0, Until, Acc) ->
    Now = erlang:monotonic_time(millisecond),
    case Now >= Until of
        true ->
            lists:reverse(Acc);
        false ->
            timer:sleep(min(?SAMPLE_MS, Until - Now)),
            T = (erlang:monotonic_time(millisecond) - T0) / 1000,
            S = [{N, catch call(V, soak, vm_sample, [])} || {N, V} <- VMs],
            log("soak: ~b s ~p~n", [round(T), S]),
            sample_loop(VMs, T0, Until, [{T, S} | Acc])
    end.

hostile_output(Port, Rows) ->
    receive
        {Port, {data, {eol, <<"|", _/binary>> = Row}}} -> hostile_output(Port, [Row | Rows]);
        {Port, {data, _}} -> hostile_output(Port, Rows);
        {Port, {exit_status, S}} -> {lists:reverse(Rows), S}
    after 120000 ->
        {lists:reverse(Rows), timeout}
    end.

%% ------------------------------------------------------------ report

report(Minutes, Samples, Stats, HostileRows, HostileExit, Alive, HostileArgs) ->
    p("# Soak: 100 honest connections under every attack at once~n~n"),
    p("`bench/soak.sh ~b` at commit ~s, ~s UTC, ~s cores (shared), loopback, OTP ~s.~n~n",
      [Minutes, string:trim(os:cmd("git rev-parse --short HEAD")),
       string:trim(os:cmd("date -u '+%Y-%m-%d %H:%M'")), string:trim(os:cmd("nproc")),
       erlang:system_info(otp_release)]),
    p("~b VMs configured by sys.config only: **public** on 127.0.0.1 (`rendezvous_server`, "
      "`macula_relay_node:enable/0`) and ~b honest VMs (~s), each on a loopback address of its own "
      "(`listen_ip`; `rendezvous` and `relays` = public), in a ring: each opens ~b connections to the next "
      "(`macula_nat_connector:connect/3`), ~b in all, each end sending `{seq, N, <<200 bytes>>}` every ~b ms "
      "with `macula_connection:send/2` for the whole run and checking the sequence of what arrives. Probes connect "
      "every ~b s from each honest VM to the next during the attack (every fourth with `relay_only`). The hostile "
      "peer, on an address of its own (an attacker is another host, so the per-IP caps meet it and not the honest "
      "nodes) (`hostile_peer ~s`), starts 3 s before the honest connections and runs every attack for the whole "
      "run against the public node and every honest one.~n~n",
      [length(Stats) + 1, length(Stats),
       lists:join(", ", [io_lib:format("~s ~s", [N, inet:ntoa(Ip)]) || {N, Ip} <- ?HONEST]),
       ?CONNS_PER_VM, ?CONNS_PER_VM * length(Stats), ?SEND_INTERVAL_MS, ?PROBE_INTERVAL_MS div 1000,
       lists:join(" ", HostileArgs)]),
    p("## Verdict~n~n"),
    Verdicts = verdicts(Samples),
    AllEnds = lists:foldl(fun({_, S}, Acc) -> maps:merge(Acc, maps:get(ends, S)) end, #{}, Stats),
    {Lost, Dup, Sent, Recv, Closed, SendErr} = traffic(AllEnds),
    Gaps = lists:sum([maps:get(gaps, E) || {_, E} <- maps:to_list(AllEnds)]),
    p("* VMs alive at the end: ~s~n", [[io_lib:format("~s ~s; ", [N, A]) || {N, A} <- Alive]]),
    p("* honest nodes' detected profiles (no observers configured): ~s~n",
      [lists:join(", ", [io_lib:format("~s `~w`", [N, maps:get(profile, S)]) || {N, S} <- Stats])]),
    p("* honest terms sent ~b, received ~b, **lost ~b, duplicated or reordered ~b**; honest connections "
      "that closed during the run: ~b; sends that failed: ~b; sequence gaps seen by receivers: ~b~n",
      [Sent, Recv, Lost, Dup, Closed, SendErr, Gaps]),
    [p("* ~s~n", [V]) || V <- Verdicts],
    p("~n## Memory and resources, per minute (max of the samples every ~b s)~n~n", [?SAMPLE_MS div 1000]),
    p("| minute | VM | RSS MiB | erlang:memory(total) MiB | fds | processes | hostile owner mailbox max | "
      "honest terms received (cumulative) |~n|---|---|---|---|---|---|---|---|~n"),
    [p("| ~b | ~s | ~.1f | ~.1f | ~b | ~b | ~b | ~b |~n", [M, N, Rss, Mem, Fds, Procs, Q, Got])
     || {M, N, Rss, Mem, Fds, Procs, Q, Got} <- per_minute(Samples)],
    p("~n## Honest connects~n~n"),
    p("| connects | n | failed | p50 ms | p95 ms | max ms | methods |~n|---|---|---|---|---|---|---|~n"),
    Connects = lists:append([maps:get(connects, S) || {_, S} <- Stats]),
    Initial = [C || {initial, C} <- Connects],
    Probes = [C || {probe, C} <- Connects],
    RelayProbes = [C || {relay_probe, C} <- Connects],
    [connect_row(Name, Cs) || {Name, Cs} <- [{"the 100 connections (under attack)", Initial},
                                            {"probes during the attack", Probes},
                                            {"probes with `relay_only` during the attack", RelayProbes}]],
    p("~n## Attacks (hostile peer's own counts; exit status ~p)~n~n"
      "Amplification: bytes at the attack's third-party socket / bytes the attack sent (its IP and UDP "
      "headers included for spoofed datagrams, QUIC bytes on the attacker's node socket for Connects).~n~n",
      [HostileExit]),
    [p("~s~n", [R]) || R <- HostileRows],
    ok.

p(F) -> io:format(F).

%% Progress, for bench/soak.sh's log (stdout is the report).
log(F, A) ->
    file:write_file("/dev/stderr", io_lib:format(F, A), [append]).
p(F, A) -> io:format(F, A).

connect_row(Name, Cs) ->
    Ok = lists:sort([Ms || {ok, Ms, _} <- Cs]),
    Failed = [E || {error, E} <- Cs],
    Methods = lists:foldl(fun({ok, _, M}, Acc) -> maps:update_with(M, fun(X) -> X + 1 end, 1, Acc);
                             (_, Acc) -> Acc end, #{}, Cs),
    FailText = case Failed of
                   [] -> "0";
                   _ -> io_lib:format("~b (~p)", [length(Failed), lists:usort(Failed)])
               end,
    p("| ~s | ~b | ~s | ~s | ~s | ~s | ~s |~n",
      [Name, length(Cs), FailText, pct(Ok, 50), pct(Ok, 95), pct(Ok, 100),
       [io_lib:format("~s ~b ", [M, N]) || {M, N} <- maps:to_list(Methods)]]).

pct([], _) -> "-";
pct(Sorted, P) ->
    N = length(Sorted),
    integer_to_list(round(lists:nth(max(1, min(N, round(P / 100 * N))), Sorted))).

%% Losses and reorders, matched across the two VMs: what one end sent on a
%% connection against what the other end received on it.
traffic(Ends) ->
    lists:foldl(
      fun({{Tag, Side}, #{sent := S, send_errors := SE, closed := C}}, {L, D, Sn, R, Cl, Er}) ->
              Other = case Side of initiator -> acceptor; acceptor -> initiator end,
              #{recv := Got, dups := Dups} = maps:get({Tag, Other}, Ends, #{recv => 0, dups => 0}),
              {L + max(0, S - Got), D + Dups, Sn + S, R + Got, Cl + C, Er + SE}
      end, {0, 0, 0, 0, 0, 0}, maps:to_list(Ends)).

per_minute(Samples) ->
    Rows = [{ceil_min(T), N, X} || {T, S} <- Samples, {N, X} <- S, is_map(X)],
    Keys = lists:usort([{M, N} || {M, N, _} <- Rows]),
    [begin
         Xs = [X || {M1, N1, X} <- Rows, M1 =:= M, N1 =:= N],
         Max = fun(K) -> lists:max([maps:get(K, X) || X <- Xs]) end,
         {M, N, Max(rss) / 1048576, Max(memory) / 1048576, Max(fds), Max(processes), Max(foreign_qlen),
          Max(received)}
     end || {M, N} <- Keys].

ceil_min(T) -> max(1, ceil(T / 60)).

%% "Memory flat after the first minute": for each VM, the largest RSS of
%% minutes 2.. against the largest of minute 1, and the last minute's
%% against minute 2's (a slow leak shows there).
verdicts(Samples) ->
    Rows = per_minute(Samples),
    VMs = lists:usort([N || {_, N, _, _, _, _, _, _} <- Rows]),
    [begin
         Of = fun(Pred) -> [R || {M, N1, R, _, _, _, _, _} <- Rows, N1 =:= N, Pred(M)] end,
         MemOf = fun(Pred) -> [Mm || {M, N1, _, Mm, _, _, _, _} <- Rows, N1 =:= N, Pred(M)] end,
         Last = lists:max([M || {M, N1, _, _, _, _, _, _} <- Rows, N1 =:= N]),
         case {Of(fun(M) -> M =:= 1 end), Of(fun(M) -> M >= 2 end)} of
             {[R1], [_ | _] = Later} ->
                 Max2 = lists:max(Later),
                 [R2] = Of(fun(M) -> M =:= 2 end),
                 [RL] = Of(fun(M) -> M =:= Last end),
                 Flat = Max2 =< R1 * 1.10 + 16,
                 io_lib:format("~s: max RSS minutes 2-~b ~.1f MiB vs minute 1 ~.1f MiB (~.1f %); last minute "
                               "~.1f vs minute 2 ~.1f MiB; erlang:memory(total) max ~.1f MiB in minutes 2-~b vs "
                               "~.1f in minute 1: **~s**",
                               [N, Last, Max2, R1, (Max2 - R1) / R1 * 100, RL, R2,
                                lists:max(MemOf(fun(M) -> M >= 2 end)), Last,
                                hd(MemOf(fun(M) -> M =:= 1 end)),
                                case Flat of
                                    true -> "flat after the first minute (within 10 % + 16 MiB)";
                                    false -> "NOT flat after the first minute (over 10 % + 16 MiB)"
                                end]);
             _ ->
                 io_lib:format("~s: too few samples for a verdict", [N])
         end
     end || N <- VMs].

%% ------------------------------------------------------------ peer VMs

%% Owns the tables of this VM's figures and the set of hostile owners.
keeper() ->
    Self = self(),
    Pid = spawn(fun() ->
                        register(soak_keeper, self()),
                        ets:new(soak_ends, [named_table, public, set]),
                        ets:new(soak_connects, [named_table, public, duplicate_bag]),
                        ets:new(soak_foreign, [named_table, public, set]),
                        ets:new(soak_flags, [named_table, public, set]),
                        Self ! ready,
                        receive stop -> ok end
                end),
    receive
        ready ->
            spawn(fun acceptor/0),
            ok
    after 5000 ->
        {error, {keeper_not_ready, Pid}}
    end.

vm_sample() ->
    Foreign = [P || {P} <- ets:tab2list(soak_foreign)],
    Qs = [Q || P <- Foreign, {message_queue_len, Q} <- [erlang:process_info(P, message_queue_len)]],
    #{rss => rss(), memory => erlang:memory(total), fds => length(element(2, file:list_dir("/proc/self/fd"))),
      processes => erlang:system_info(process_count), foreign_qlen => lists:max([0 | Qs]),
      foreign_conns => length(Foreign),
      received => lists:sum([maps:get(recv, E) || {_, E} <- [ends_map(R) || R <- ets:tab2list(soak_ends)]])}.

rss() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb) * 1024.

soak_connects_kinds() -> soak_flags.

%% What a hostile connection's first delivery looked like, for the report.
first_kind({message, T}) when is_binary(T) -> {foreign_first, binary, min(byte_size(T), 2048)};
first_kind({message, T}) when is_tuple(T) -> {foreign_first, tuple, element(1, T)};
first_kind({message, _}) -> {foreign_first, other_term};
first_kind({unsafe_message, B}) -> {foreign_first, unsafe_message, binary:part(B, 0, min(6, byte_size(B)))};
first_kind(Other) when is_tuple(Other) -> {foreign_first, element(1, Other)};
first_kind(Other) -> {foreign_first, Other}.

stats() ->
    #{ends => maps:from_list([ends_map(R) || R <- ets:tab2list(soak_ends)]),
      profile => macula_nat_detector:get_local_profile(),
      foreign => [{K, N} || {K, N} <- ets:tab2list(soak_flags), element(1, K) =:= foreign_first],
      connects => [{K, C} || {K, C} <- ets:tab2list(soak_connects)]}.

stop_senders() ->
    ets:insert(soak_flags, {stop}),
    ok.

stopping() ->
    ets:member(soak_flags, stop).

%% One acceptor at a time; each accepted connection's first term says
%% whose it is.
acceptor() ->
    case macula_connection:accept(5000) of
        {ok, Conn} ->
            spawn(fun acceptor/0),
            classify(Conn);
        {error, timeout} ->
            acceptor();
        {error, _} ->
            timer:sleep(100),
            acceptor()
    end.

classify(Conn) ->
    receive
        {macula_connection, Conn, {message, {soak_hello, Tag}}} ->
            ends(Conn, Tag, acceptor);
        {macula_connection, Conn, {message, {soak_probe, _} = P}} ->
            _ = macula_connection:send(Conn, P),
            receive {macula_connection, Conn, {closed, _}} -> ok after 10000 -> ok end,
            macula_connection:close(Conn);
        {macula_connection, Conn, {closed, _}} ->
            ok;
        {macula_connection, Conn, First} ->
            foreign(Conn, First)
    after 10000 ->
        %% Hostile connections that say nothing.
        macula_connection:close(Conn)
    end.

%% The hostile peer's connections with something to say (the unsolicited
%% flood, oversized frames, compressed bombs): their owner never reads,
%% which is what flow control must hold.
foreign(Conn, First) ->
    ets:insert(soak_foreign, {self()}),
    ets:update_counter(soak_connects_kinds(), first_kind(First), 1, {first_kind(First), 0}),
    receive never -> ok after ?FOREIGN_HOLD_MS -> ok end,
    ets:delete(soak_foreign, self()),
    macula_connection:close(Conn).

%% Opens N connections to Target from this VM, one after the other; each
%% one's ends exchange sequenced terms until `stop_senders/0'.
open_conns(Target, N, Side) ->
    {ok, Me} = macula:get_node_id(),
    spawn(fun() ->
                  [begin
                       Tag = {Side, I},
                       spawn(fun() -> initiate(Me, Target, Tag) end),
                       timer:sleep(50)
                   end || I <- lists:seq(1, N)]
          end),
    ok.

initiate(Me, Target, Tag) ->
    T0 = erlang:monotonic_time(microsecond),
    case macula_nat_connector:connect(Me, Target, #{timeout => 10000}) of
        {ok, Conn, Method} ->
            ets:insert(soak_connects, {initial, {ok, (erlang:monotonic_time(microsecond) - T0) / 1000, Method}}),
            ok = macula_connection:send(Conn, {soak_hello, Tag}),
            ends(Conn, Tag, initiator);
        {error, E} ->
            ets:insert(soak_connects, {initial, {error, kind(E)}})
    end.

kind(E) when is_atom(E) -> E;
kind(E) when is_tuple(E), is_atom(element(1, E)) -> element(1, E);
kind(_) -> other.

%% One end of an honest connection: this process owns and reads it; a
%% linked sender sends.
ends(Conn, Tag, Side) ->
    Key = {Tag, Side},
    ets:insert(soak_ends, list_to_tuple([Key | [0 || _ <- ?FIELDS]])),
    Me = self(),
    spawn_link(fun() -> sender(Conn, Key, 1, Me) end),
    reader(Conn, Key, 1).

reader(Conn, Key, Expect) ->
    receive
        {macula_connection, Conn, {message, {seq, N, _}}} when N =:= Expect ->
            bump(Key, recv, 1),
            reader(Conn, Key, Expect + 1);
        {macula_connection, Conn, {message, {seq, N, _}}} when N > Expect ->
            bump(Key, recv, 1),
            bump(Key, gaps, N - Expect),
            reader(Conn, Key, N + 1);
        {macula_connection, Conn, {message, {seq, _, _}}} ->
            bump(Key, recv, 1),
            bump(Key, dups, 1),
            reader(Conn, Key, Expect);
        {macula_connection, Conn, {closed, _}} ->
            bump(Key, closed, 1);
        {macula_connection, Conn, _} ->
            reader(Conn, Key, Expect)
    end.

sender(Conn, Key, N, Owner) ->
    case stopping() of
        true ->
            ok;
        false ->
            case macula_connection:send(Conn, {seq, N, ?PAD}) of
                ok ->
                    bump(Key, sent, 1),
                    timer:sleep(?SEND_INTERVAL_MS),
                    sender(Conn, Key, N + 1, Owner);
                {error, _} ->
                    %% A failed send may or may not have queued its term:
                    %% the next one repeats nothing, the receiver sees a gap.
                    bump(Key, send_errors, 1),
                    timer:sleep(?SEND_INTERVAL_MS),
                    sender(Conn, Key, N + 1, Owner)
            end
    end.

bump(Key, Field, By) ->
    ets:update_counter(soak_ends, Key, {field_pos(Field, ?FIELDS, 2), By}).

field_pos(F, [F | _], P) -> P;
field_pos(F, [_ | T], P) -> field_pos(F, T, P + 1).

ends_map(Row) ->
    [Key | Counts] = tuple_to_list(Row),
    {Key, maps:from_list(lists:zip(?FIELDS, Counts))}.

%% Every ?PROBE_INTERVAL_MS a fresh connection to Target and one term each
%% way (the time from the connect call to the echo), every fourth through
%% the relay only.
prober(Target, Side) ->
    {ok, Me} = macula:get_node_id(),
    spawn(fun() -> probe_loop(Me, Target, Side, 1) end),
    ok.

probe_loop(Me, Target, Side, I) ->
    case stopping() of
        true -> ok;
        false ->
            {Kind, Opts} = case I rem 4 of
                               0 -> {relay_probe, #{timeout => 10000, relay_only => true}};
                               _ -> {probe, #{timeout => 10000}}
                           end,
            T0 = erlang:monotonic_time(microsecond),
            R = case macula_nat_connector:connect(Me, Target, Opts) of
                    {ok, Conn, Method} ->
                        ok = macula_connection:send(Conn, {soak_probe, {Side, I}}),
                        receive
                            {macula_connection, Conn, {message, {soak_probe, _}}} ->
                                macula_connection:close(Conn),
                                {ok, (erlang:monotonic_time(microsecond) - T0) / 1000, Method}
                        after 10000 ->
                            macula_connection:close(Conn),
                            {error, no_echo}
                        end;
                    {error, E} ->
                        {error, kind(E)}
                end,
            ets:insert(soak_connects, {Kind, R}),
            timer:sleep(?PROBE_INTERVAL_MS),
            probe_loop(Me, Target, Side, I + 1)
    end.
