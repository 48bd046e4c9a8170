%% macula_connection throughput benchmark, run by bench/connection_throughput.sh.
%%
%% One run interleaves, per round and message size (1 KiB, 64 KiB):
%%   * BEAM -> BEAM: macula_connection:send/2 from this VM to a peer VM
%%     (started with `peer', loopback, each VM on its own node socket), one
%%     sender process, and 4 sender processes sharing the connection;
%%   * plain quinn and our node-socket QUIC in Rust: one cell of
%%     `bench_quic --mode plain|node --size N --secs S` (same framing).
%% Every cell sends for the same time, then waits until the receiver has
%% confirmed every message; rates count that whole time (as bench_quic does).
%% Writes markdown on stdout.
-module(connection_bench).
-export([main/1, receiver/0]).

-define(SIZES, [1024, 65536]).
-define(PATHS, [{beam, 1}, {beam, 4}, plain, node]).

main([SecsS, RoundsS, BenchQuic]) ->
    Secs = list_to_float_any(SecsS),
    Rounds = list_to_integer(RoundsS),
    LoadBefore = loadavg(),
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    {ok, B, _} = peer:start_link(#{connection => standard_io,
                                   args => ["-kernel", "logger_level", "warning", "-pa" | code:get_path()]}),
    ok = peer:call(B, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    {ok, _} = peer:call(B, application, ensure_all_started, [macula_nat]),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    Ctx = #{peer => B, id => BId, peer_os_pid => peer:call(B, os, getpid, []),
            ep => iolist_to_binary(["127.0.0.1:", integer_to_list(BPort)]),
            bench_quic => BenchQuic, secs => Secs},
    %% Warm-up: first connection, lazy statics, code loading on both VMs.
    _ = cell(Ctx, {beam, 1}, 1024, 0.5),
    _ = cell(Ctx, {beam, 4}, 65536, 0.5),
    Samples = lists:append(
                [begin
                     Order = rotate(?PATHS, R - 1),
                     [begin
                          S = cell(Ctx, P, Size, Secs),
                          out(standard_error, "~6w B  ~-32ts round ~w: ~10w msg/s ~9.1f MiB/s ~7.1f MiB/CPU-s~n",
                                    [Size, name(P), R, round(maps:get(msgs_per_s, S)), maps:get(mib_per_s, S),
                                     maps:get(mib_per_cpu_s, S)]),
                          S#{round => R}
                      end || P <- Order]
                 end || R <- lists:seq(1, Rounds), Size <- ?SIZES]),
    peer:stop(B),
    report(Samples, Secs, Rounds, LoadBefore),
    halt().

%% UTF-8 bytes, written as they are (the -noshell devices are latin1).
out(Fmt) -> out(Fmt, []).
out(Fmt, Args) -> out(standard_io, Fmt, Args).
out(Dev, Fmt, Args) -> ok = file:write(Dev, unicode:characters_to_binary(io_lib:format(Fmt, Args))).

rotate(L, 0) -> L;
rotate([H | T], N) -> rotate(T ++ [H], N - 1).

list_to_float_any(S) ->
    try list_to_float(S) catch error:badarg -> float(list_to_integer(S)) end.

name({beam, 1}) -> "BEAM→BEAM send/2, 1 sender";
name({beam, N}) -> lists:flatten(io_lib:format("BEAM→BEAM send/2, ~w senders", [N]));
name(plain) -> "Rust, plain quinn (own socket)";
name(node) -> "Rust, node socket (bench_quic)".

%% ---------------------------------------------------------------- cells

cell(Ctx, {beam, Senders}, Size, Secs) -> beam_cell(Ctx, Senders, Size, Secs);
cell(Ctx, Mode, Size, Secs) -> rust_cell(Ctx, Mode, Size, Secs).

rust_cell(#{bench_quic := Exe}, Mode, Size, Secs) ->
    Cmd = lists:flatten(io_lib:format("~s --mode ~s --size ~w --secs ~.3f 2>/dev/null",
                                      [Exe, Mode, Size, float(Secs)])),
    Out = os:cmd(Cmd),
    case [L || L <- string:split(Out, "\n", all), lists:prefix("cell ", L)] of
        [Line] ->
            KV = maps:from_list([list_to_tuple(string:split(F, "=")) || F <- tl(string:split(Line, " ", all))]),
            Num = fun(K) -> list_to_float_any(maps:get(K, KV)) end,
            #{path => Mode, size => Size, msgs_per_s => Num("msgs_per_s"), mib_per_s => Num("mib_per_s"),
              mib_per_cpu_s => Num("mib_per_cpu_s")};
        _ ->
            error({bench_quic_failed, Cmd, Out})
    end.

%% The receiver on the peer VM: accepts one connection, counts binaries
%% until `done', answers {got, Msgs, Bytes, FirstToLastNs} on the same
%% connection and waits for the close. (The peer VM is not distributed: it
%% reports through the connection only.)
receiver() ->
    {ok, C} = macula_connection:accept(30000),
    count(C, 0, 0, undefined, undefined).

count(C, N, Bytes, First, Last) ->
    receive
        {macula_connection, C, {message, Bin}} when is_binary(Bin) ->
            Now = erlang:monotonic_time(),
            F = case First of undefined -> Now; _ -> First end,
            count(C, N + 1, Bytes + byte_size(Bin), F, Now);
        {macula_connection, C, {message, done}} ->
            Span = case First of
                       undefined -> 0;
                       _ -> erlang:convert_time_unit(Last - First, native, nanosecond)
                   end,
            ok = macula_connection:send(C, {got, N, Bytes, Span}),
            receive {macula_connection, C, {closed, _}} -> ok after 10000 -> ok end;
        {macula_connection, C, {closed, _}} ->
            ok
    end.

beam_cell(#{peer := B, id := BId, ep := Ep, peer_os_pid := PeerOs}, Senders, Size, Secs) ->
    Self = self(),
    _ = peer:call(B, erlang, spawn, [?MODULE, receiver, []]),
    {ok, C} = macula_connection:open(Ep, BId),
    Bin = binary:copy(<<16#A5>>, Size),
    Cpu0 = {cpu_ticks(os:getpid()), cpu_ticks(PeerOs)},
    {Cs0Tx, Rt0Tx} = thread_stats(os:getpid()),
    {Cs0Rx, Rt0Rx} = thread_stats(PeerOs),
    T0 = erlang:monotonic_time(),
    Deadline = T0 + erlang:convert_time_unit(round(Secs * 1000000), microsecond, native),
    Pids = [spawn_link(fun() -> Self ! {sent, self(), send_loop(C, Bin, Deadline, 0, 0)} end)
            || _ <- lists:seq(1, Senders)],
    Sent = [receive {sent, P, {N, Wait}} -> {N, Wait} end || P <- Pids],
    ok = macula_connection:send(C, done),
    {got, N, Bytes, SpanNs} =
        receive {macula_connection, C, {message, {got, _, _, _} = G}} -> G
        after 60000 -> error(no_ack)
        end,
    T1 = erlang:monotonic_time(),
    Cpu1 = {cpu_ticks(os:getpid()), cpu_ticks(PeerOs)},
    {Cs1Tx, Rt1Tx} = thread_stats(os:getpid()),
    {Cs1Rx, Rt1Rx} = thread_stats(PeerOs),
    macula_connection:close(C),
    SentN = lists:sum([S || {S, _} <- Sent]),
    SentN = N,
    Elapsed = erlang:convert_time_unit(T1 - T0, native, nanosecond) / 1.0e9,
    Mib = Bytes / 1048576,
    CpuTx = (element(1, Cpu1) - element(1, Cpu0)) / 100,
    CpuRx = (element(2, Cpu1) - element(2, Cpu0)) / 100,
    #{path => {beam, Senders}, size => Size, msgs_per_s => N / Elapsed, mib_per_s => Mib / Elapsed,
      mib_per_cpu_s => Mib / max(0.01, CpuTx + CpuRx),
      %% Diagnostics: mean time one sender spends in send/2, receiver-side
      %% rate (first to last message), CPU of each VM per second of the cell,
      %% context switches of each VM (all its threads) per message.
      send_us => lists:sum([W || {_, W} <- Sent]) / max(1, SentN),
      rx_msgs_per_s => case SpanNs of 0 -> 0.0; _ -> N / (SpanNs / 1.0e9) end,
      cpu_tx => CpuTx / Elapsed, cpu_rx => CpuRx / Elapsed,
      cs_tx => (Cs1Tx - Cs0Tx) / max(1, N),
      cs_rx => (Cs1Rx - Cs0Rx) / max(1, N),
      %% Share of both VMs' CPU spent on the tokio runtime threads.
      runtime_share => (Rt1Tx - Rt0Tx + Rt1Rx - Rt0Rx) / 100 / max(0.01, CpuTx + CpuRx)}.

%% Sends until the deadline; returns {Count, MicrosecondsInsideSend}.
send_loop(C, Bin, Deadline, N, Wait) ->
    T = erlang:monotonic_time(),
    case T >= Deadline of
        true ->
            {N, erlang:convert_time_unit(Wait, native, microsecond)};
        false ->
            ok = macula_connection:send(C, Bin),
            send_loop(C, Bin, Deadline, N + 1, Wait + (erlang:monotonic_time() - T))
    end.

%% utime + stime of an OS process, in clock ticks (100 per second).
cpu_ticks(OsPid) ->
    {ok, Stat} = file:read_file(["/proc/", OsPid, "/stat"]),
    [_, After] = binary:split(Stat, <<") ">>),
    Fields = binary:split(After, <<" ">>, [global]),
    binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)).

%% Over all threads of an OS process: {voluntary + involuntary context
%% switches, CPU ticks of the tokio runtime's threads ("macula-nat")}.
thread_stats(OsPid) ->
    Dir = "/proc/" ++ OsPid ++ "/task/",
    {ok, Tids} = file:list_dir(Dir),
    lists:foldl(
      fun(T, {Cs, Rt}) ->
              case {file:read_file(Dir ++ T ++ "/status"), file:read_file(Dir ++ T ++ "/stat")} of
                  {{ok, St}, {ok, Stat}} ->
                      {match, Ns} = re:run(St, "ctxt_switches:\\s+(\\d+)", [global, {capture, all_but_first, binary}]),
                      [_, Rest] = binary:split(Stat, <<" (">>),
                      [Name, After] = binary:split(Rest, <<") ">>),
                      F = binary:split(After, <<" ">>, [global]),
                      Ticks = case Name of
                                  <<"macula-nat">> -> binary_to_integer(lists:nth(12, F)) + binary_to_integer(lists:nth(13, F));
                                  _ -> 0
                              end,
                      {Cs + lists:sum([binary_to_integer(X) || [X] <- Ns]), Rt + Ticks};
                  _ ->
                      {Cs, Rt}   % thread gone
              end
      end, {0, 0}, Tids).

%% --------------------------------------------------------------- report

median(L) -> lists:nth(length(L) div 2 + 1, lists:sort(L)).

loadavg() ->
    {ok, L} = file:read_file("/proc/loadavg"),
    lists:join(" ", lists:sublist(string:split(string:trim(binary_to_list(L)), " ", all), 3)).

report(Samples, Secs, Rounds, LoadBefore) ->
    Of = fun(P, Size) -> [S || S = #{path := P1, size := S1} <- Samples, P1 =:= P, S1 =:= Size] end,
    Med = fun(P, Size, K) -> median([maps:get(K, S) || S <- Of(P, Size)]) end,
    out("# macula_connection throughput: BEAM→BEAM send/2 next to plain quinn~n~n"
              "_Generated by `bench/connection_throughput.sh ~s ~w` on ~s: ~w cores shared with other work, "
              "kernel ~s, Erlang/OTP ~s, release build, loopback 127.0.0.1._~n~n",
              [fmt_secs(Secs), Rounds, date_utc(), erlang:system_info(logical_processors_available),
               string:trim(os:cmd("uname -r")), erlang:system_info(otp_release)]),
    out("Load average (1/5/15 min) before the run: ~s; after: ~s. Other processes share the cores, "
              "so single rounds vary; compare medians and ranges.~n~n", [LoadBefore, loadavg()]),
    out("Each cell sends messages of one size for ~s s on one fresh connection, then waits until the "
              "receiver has confirmed every message; rates count that whole time. Cells interleave: each round "
              "runs every path once per size, in an order rotated from round to round.~n~n"
              "* **BEAM→BEAM**: this VM's sender process(es) call `macula_connection:send(Conn, Bin)` with a "
              "binary of the size in a loop; the receiving process on a second VM (started with `peer`, "
              "each VM with its own node socket and its own 2-worker tokio runtime) counts the "
              "`{message, Bin}` messages, then answers `done` with its counts over the same connection. "
              "A binary term is 6 bytes longer on the wire (external term format header); MiB/s counts the "
              "binary's bytes. \"4 senders\" is four processes sharing the connection, since each `send/2` "
              "waits for its own enqueue.~n"
              "* **Rust**: one cell of `bench_quic --mode plain|node --size N --secs ~s` (a separate OS process; "
              "sender and receiver in that one process, on the library's 2-worker runtime); \"plain quinn\" "
              "is quinn on its own UDP socket, \"node socket\" our `Connection` on the node's shared socket, "
              "same TLS, transport settings and framing as the BEAM path.~n~n",
              [fmt_secs(Secs), fmt_secs(Secs)]),
    out("| message | path | messages/s | MiB/s | MiB/s range | vs plain quinn | MiB per CPU-s | vs plain |~n"
              "|---|---|---|---|---|---|---|---|~n"),
    [begin
         PlainMib = Med(plain, Size, mib_per_s),
         PlainEff = Med(plain, Size, mib_per_cpu_s),
         [begin
              Mibs = [maps:get(mib_per_s, S) || S <- Of(P, Size)],
              out("| ~w KiB | ~ts | ~s | ~.1f | ~.1f–~.1f | ~w% | ~.1f | ~w% |~n",
                        [Size div 1024, name(P), fmt(Med(P, Size, msgs_per_s)), median(Mibs),
                         lists:min(Mibs), lists:max(Mibs), round(100 * median(Mibs) / PlainMib),
                         Med(P, Size, mib_per_cpu_s), round(100 * Med(P, Size, mib_per_cpu_s) / PlainEff)])
          end || P <- ?PATHS]
     end || Size <- ?SIZES],
    out("~nMedian of ~w rounds. MiB per CPU-s: data moved per second of CPU used (user + system) by "
              "the processes involved: both VMs for BEAM→BEAM (their schedulers' busy-waiting included), "
              "the one bench_quic process for Rust.~n~n", [Rounds]),
    out("BEAM→BEAM diagnostics (medians): mean time a sender spends inside one `send/2` call; the "
        "receiving process's rate from its first to its last message; CPU used by each VM (1.0 = one core "
        "busy); context switches per message, all threads of each VM.~n~n"
        "| message | senders | µs per send/2 call | receiver msgs/s (first→last) | sender VM CPU | receiver VM CPU "
        "| sender VM ctx switches/msg | receiver VM ctx switches/msg |~n"
        "|---|---|---|---|---|---|---|---|~n"),
    [out("| ~w KiB | ~w | ~.1f | ~s | ~.2f | ~.2f | ~.2f | ~.2f |~n",
         [Size div 1024, N, Med({beam, N}, Size, send_us), fmt(Med({beam, N}, Size, rx_msgs_per_s)),
          Med({beam, N}, Size, cpu_tx), Med({beam, N}, Size, cpu_rx),
          Med({beam, N}, Size, cs_tx), Med({beam, N}, Size, cs_rx)])
     || Size <- ?SIZES, {beam, N} <- ?PATHS],
    Ratio = fun(P, Size) -> Med(P, Size, mib_per_s) / Med(plain, Size, mib_per_s) end,
    out("~n**Target** (BEAM→BEAM at 64 KiB at least half of plain quinn): one sender ~w%, "
        "4 senders ~w% of plain quinn — ~s. At 1 KiB: ~w% and ~w%.~n",
        [round(100 * Ratio({beam, 1}, 65536)), round(100 * Ratio({beam, 4}, 65536)),
         case Ratio({beam, 1}, 65536) >= 0.5 of true -> "met"; false -> "**not met**" end,
         round(100 * Ratio({beam, 1}, 1024)), round(100 * Ratio({beam, 4}, 1024))]),
    case Ratio({beam, 1}, 1024) < 0.5 orelse Ratio({beam, 1}, 65536) < 0.5 of
        true -> limits(Med);
        false -> ok
    end.

%% Where the BEAM path loses, from this run's figures.
limits(Med) ->
    Us = fun(Size) -> Med({beam, 1}, Size, send_us) end,
    PlainUs = fun(Size) -> 1.0e6 / Med(plain, Size, msgs_per_s) end,
    Gain = fun(Size) -> Med({beam, 4}, Size, msgs_per_s) / Med({beam, 1}, Size, msgs_per_s) end,
    Cores = Med({beam, 1}, 65536, cpu_tx) + Med({beam, 1}, 65536, cpu_rx),
    out("~n**What limits the BEAM path.** Each `send/2` is a round trip through the tokio runtime: the NIF "
        "copies the encoded term into the connection's writer queue and returns a pending reference, the "
        "writer task puts the bytes in the QUIC stream, a second task then sends `{macula_nat_reply, Ref, ok}` "
        "to the caller, and only then does the caller encode and send the next term. With one sender a 1 KiB "
        "call took ~.1f µs, where plain quinn spends ~.2f µs per message (its `send().await` returns at once "
        "while the stream buffer has room), and the sending VM's threads were switched out ~.1f times per message: "
        "the scheduler, the writer task and the reply task hand each message over and wake each other. Four "
        "senders overlap those round trips (~.1f× the one-sender rate at 1 KiB) but each call still waits for "
        "its own reply. At 64 KiB the round trip is a smaller share of the time per message (~.1f µs per call "
        "against ~.1f µs per message for plain quinn; four senders: ~.1f× the one-sender rate); the rest is CPU on a shared 2-core machine: the two VMs kept "
        "~.2f cores busy for ~.1f MiB/s (~.1f MiB per CPU-s, plain quinn in one process ~.1f), ~w% of it "
        "on the tokio runtime threads (the two QUIC stacks), with three more copies per message than bench_quic (`term_to_binary`, the "
        "NIF's copy into the queue, the receiver's `binary_to_term` into a new binary) and the per-message "
        "hand-offs between the schedulers and the runtime on both sides.~n",
        [Us(1024), PlainUs(1024), Med({beam, 1}, 1024, cs_tx), Gain(1024),
         Us(65536), PlainUs(65536), Gain(65536),
         Cores, Med({beam, 1}, 65536, mib_per_s), Med({beam, 1}, 65536, mib_per_cpu_s),
         Med(plain, 65536, mib_per_cpu_s), round(100 * Med({beam, 1}, 65536, runtime_share))]).

fmt_secs(S) when S == trunc(S) -> integer_to_list(trunc(S));
fmt_secs(S) -> float_to_list(S, [{decimals, 2}, compact]).

date_utc() -> string:trim(os:cmd("date -u +%Y-%m-%dT%H:%MZ")).

fmt(N) when is_float(N) -> fmt(round(N));
fmt(N) ->
    S = integer_to_list(N),
    lists:reverse(string:join(chunks(lists:reverse(S)), ",")).
chunks([A, B, C | Rest]) when Rest =/= [] -> [[A, B, C] | chunks(Rest)];
chunks(L) -> [L].
