#!/usr/bin/env escript
%%! -pa _build_lab
%% The lab part of scripts/demo.sh: two BEAM nodes behind different real NATs
%% (kernel port-restricted cone: Erlang VM; kernel restricted cone: Elixir VM
%% when elixir is installed) detect their NAT through a STUN observer, join a
%% rendezvous on a public host, connect (hole punched) and exchange messages
%% both ways, then connect once more through the relay (relay only). The
%% public host runs one macula-node (observer on two addresses, rendezvous
%% and relay, configured by a TOML file, Prometheus metrics on a local
%% address, read at the end). Prints each node's NAT profile, the method,
%% the time to connect, message round trips and the public node's counters.
%% The lab is removed at the end, also on failure.
-mode(compile).

-define(LAB, "demo").
-define(PORT, 4433).
-define(ROUNDTRIPS, 20).
-define(METRICS, 9464).

main(_) ->
    case macula_lab:available() of
        ok -> ok;
        {skip, Why} -> io:format("lab demo skipped: ~s~n", [Why]), halt(0)
    end,
    macula_lab:reap(),
    Spec = <<"{\"name\":\"demo\",\"observers\":[\"pub\"],\"sites\":["
             "{\"name\":\"a\",\"nat\":\"kernel:port_restricted_cone\"},"
             "{\"name\":\"b\",\"nat\":\"kernel:restricted_cone\"}]}">>,
    T0 = now_ms(),
    {ok, _} = macula_lab:up(Spec),
    Rc = try run(T0)
         catch C:R:St -> io:format("lab demo FAILED: ~p:~p~n~p~n", [C, R, St]), 1
         after macula_lab:down(?LAB)
         end,
    halt(Rc).

run(T0) ->
    io:format("~nmacula_nat across real NATs (network-namespace lab)~n"),
    %% The public host: one macula-node, as an operator runs it.
    {ObsIp, ObsAlt} = macula_lab:observer_ips(?LAB, "pub"),
    Dir = string:trim(os:cmd("mktemp -d /tmp/macula-node-demo.XXXXXX")),
    Cfg = filename:join(Dir, "macula-node.toml"),
    ok = file:write_file(Cfg, [
        "log_level = \"warn\"\n",
        "identity_key = \"", filename:join(Dir, "node.key"), "\"\n\n",
        "[observer]\nprimary = \"", ObsIp, ":3478\"\nalternate = \"", ObsAlt, ":3479\"\n\n",
        "[node]\nlisten = \"", ObsIp, ":", integer_to_list(?PORT), "\"\n\n",
        "[relay]\nmax_sessions = 100\nsession_timeout_secs = 600\n\n",
        "[metrics]\nlisten = \"127.0.0.1:", integer_to_list(?METRICS), "\"\n"]),
    try run(T0, ObsIp, Cfg)
    after os:cmd("rm -rf " ++ Dir)
    end.

run(T0, ObsIp, Cfg) ->
    NodeBin = filename:join(filename:dirname(macula_lab:bin()), "macula-node"),
    NodePort = macula_lab:spawn_port(?LAB, "pub", [NodeBin, "--config", Cfg]),
    Ready = receive {NodePort, {data, {eol, <<"{\"event\":\"ready\"", _/binary>> = L}}} -> L;
                    {NodePort, {exit_status, St}} -> error({macula_node_exited, St})
            after 10000 -> error(macula_node_not_ready)
            end,
    {match, [RvHex, RvEp]} = re:run(Ready, "\"node_id\":\"([0-9a-f]{64})\",\"node\":\"([^\"]+)\"",
                                    [{capture, all_but_first, binary}]),
    io:format("  public node      macula-node ~s...: observer ~s:3478 + :3479, rendezvous and relay ~s~n",
              [binary:part(RvHex, 0, 8), ObsIp, RvEp]),
    Env = #{listen_ip => {0, 0, 0, 0}, listen_port => ?PORT, detection_timeout_ms => 3000},
    BLang = case os:find_executable("elixir") of false -> erlang; _ -> elixir end,
    Me = self(),
    Start = fun({H, L, E}) ->
                    {ok, P} = macula_lab_peer:start(?LAB, H, #{lang => L, env => E, owner => Me}),
                    {ok, _} = macula_lab_peer:call(P, application, ensure_all_started, [macula_nat]),
                    {ok, P}
            end,
    %% Every node is configured as a user would: the application
    %% environment only (the public node's hex id in `rendezvous' and
    %% `relays').
    Site = Env#{observers => [list_to_binary(ObsIp ++ ":3478")],
                rendezvous => [#{endpoint => RvEp, node_id => RvHex}],
                relays => [#{endpoint => RvEp, node_id => RvHex}]},
    [{ok, A}, {ok, B}] = pmap(Start, [{"a", erlang, Site}, {"b", BLang, Site}]),
    [{AId, AProf}, {BId, BProf}] =
        pmap(fun(P) ->
                     {ok, Prof} = macula_lab_peer:call(P, macula_nat_detector, detect, []),
                     {ok, Id} = macula_lab_peer:call(P, macula, get_node_id, []),
                     {Id, Prof}
             end, [A, B]),
    %% Both registered at its rendezvous and reserved at its relay, as its
    %% metrics say.
    ok = wait(fun() ->
                      M0 = metrics(),
                      metric(M0, "macula_node_rendezvous_peers") == 2 andalso
                          metric(M0, "macula_node_relay_reservations") == 2
              end, 10000),
    describe("node a", A, "kernel:port_restricted_cone", AProf, AId),
    describe("node b", B, "kernel:restricted_cone", BProf, BId),

    %% b accepts in its agent's mailbox (which then owns the connection);
    %% a connects from its mailbox, timed inside its VM.
    Acc = spawn_link(fun() ->
                             Me ! {accepted, self(), macula_lab_peer:call_mailbox(
                                                       B, macula_connection, accept, [15000], 20000)}
                     end),
    timer:sleep(100),
    {Us, {ok, CA, Method}} = macula_lab_peer:call_mailbox(
                               A, timer, tc, [macula_nat_connector, connect,
                                              [AId, BId, #{timeout => 10000}]], 20000),
    {ok, CB} = receive {accepted, Acc, R} -> R after 20000 -> error(accept_timeout) end,
    io:format("  connect a -> b   ~s in ~.1f ms~n", [Method, Us / 1000]),

    %% One message each way, delivered to the owners (the mailboxes,
    %% forwarded here).
    HelloA = <<"hello from a (Erlang)">>,
    HelloB = case BLang of elixir -> <<"hello from b (Elixir)">>; erlang -> <<"hello from b (Erlang)">> end,
    ok = macula_lab_peer:call(A, macula_connection, send, [CA, HelloA]),
    HelloA = recv_msg(B, CB),
    ok = macula_lab_peer:call(B, macula_connection, send, [CB, HelloB]),
    HelloB = recv_msg(A, CA),
    io:format("  a -> b           ~p~n  b -> a           ~p~n", [HelloA, HelloB]),

    %% Round trips measured inside a's VM: b's connection goes to an echo
    %% process, a's mailbox sends and waits for each echo.
    {value, Echo, _} = macula_lab_peer:call(B, erl_eval, exprs, [parse(
        "spawn(fun() ->
             receive {go, C} -> ok end,
             Loop = fun L() ->
                        receive
                            {macula_connection, C, {message, T}} ->
                                ok = macula_connection:send(C, T), L();
                            {macula_connection, C, {closed, _}} -> ok
                        after 30000 -> ok
                        end
                    end,
             Loop()
         end)."), []]),
    ok = macula_lab_peer:call_mailbox(B, macula_connection, controlling_process, [CB, Echo]),
    {go, CB} = macula_lab_peer:call(B, erlang, send, [Echo, {go, CB}]),
    {value, Rtts, _} = macula_lab_peer:call_mailbox(A, erl_eval, exprs, [parse(
        "[begin
              T0 = erlang:monotonic_time(microsecond),
              ok = macula_connection:send(C, {<<\"ping\">>, I, <<0:8000>>}),
              receive {macula_connection, C, {message, {<<\"ping\">>, I, _}}} ->
                  erlang:monotonic_time(microsecond) - T0
              after 5000 -> error(no_echo)
              end
          end || I <- lists:seq(1, N)]."), [{'C', CA}, {'N', ?ROUNDTRIPS}]]),
    S = lists:sort(Rtts),
    io:format("  round trip a<->b ~b messages (1 kB): min ~.2f ms, median ~.2f ms, max ~.2f ms~n",
              [length(S), hd(S) / 1000, lists:nth((length(S) + 1) div 2, S) / 1000,
               lists:last(S) / 1000]),
    _ = macula_lab_peer:call(A, macula_connection, close, [CA]),

    %% Once more through the public node's relay (relay only, no upgrade).
    Acc2 = spawn_link(fun() ->
                              Me ! {accepted, self(), macula_lab_peer:call_mailbox(
                                                        B, macula_connection, accept, [15000], 20000)}
                      end),
    timer:sleep(100),
    {Us2, {ok, RA, relayed}} = macula_lab_peer:call_mailbox(
                                 A, timer, tc, [macula_nat_connector, connect,
                                                [AId, BId, #{timeout => 10000, relay_only => true,
                                                             upgrade_interval => infinity}]], 20000),
    {ok, RB} = receive {accepted, Acc2, R2} -> R2 after 20000 -> error(accept_timeout) end,
    Big = binary:copy(<<"r">>, 10000),
    ok = macula_lab_peer:call(A, macula_connection, send, [RA, Big]),
    Big = recv_msg(B, RB),
    ok = macula_lab_peer:call(B, macula_connection, send, [RB, HelloB]),
    HelloB = recv_msg(A, RA),
    io:format("  connect a -> b   relayed (relay_only) in ~.1f ms, 10 kB a -> b and a reply~n",
              [Us2 / 1000]),
    M = metrics(),
    io:format("  public node      metrics: ~b STUN answers, ~b rendezvous peers, "
              "~b Connects passed on, ~b relay session(s), ~b bytes relayed, ~b refusals~n",
              [round(metric(M, "macula_node_stun_answers_total")),
               round(metric(M, "macula_node_rendezvous_peers")),
               round(metric(M, "macula_node_rendezvous_messages_total{kind=\"connect\"}")),
               round(metric(M, "macula_node_relay_sessions_started_total")),
               round(metric(M, "macula_node_relay_bytes_total")),
               round(lists:sum([V || {"macula_node_relay_refusals_total" ++ _, V} <- M]))]),
    true = metric(M, "macula_node_relay_sessions_started_total") >= 1,
    true = metric(M, "macula_node_relay_bytes_total") >= 10000,
    _ = macula_lab_peer:call(A, macula_connection, close, [RA]),
    [macula_lab_peer:stop(P) || P <- [A, B]],
    catch port_close(NodePort),
    io:format("  lab              up, macula-node + 2 VMs, detect, join, connect, messages: ~.1f s~n",
              [(now_ms() - T0) / 1000]),
    0.

%% The public node's metrics, read inside its host (they listen on
%% 127.0.0.1 there) with bash's /dev/tcp: [{Series, Value}].
metrics() ->
    Get = "exec 3<>/dev/tcp/127.0.0.1/" ++ integer_to_list(?METRICS) ++
          " && printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3",
    {0, Out} = macula_lab:exec(?LAB, "pub", ["bash", "-c", Get]),
    [_Head, Body] = binary:split(Out, <<"\r\n\r\n">>),
    [case string:split(L, " ", trailing) of
         [K, V] -> {K, to_num(V)}
     end || L <- string:lexemes(binary_to_list(Body), "\n"), hd(L) =/= $#].

metric(M, Series) ->
    case lists:keyfind(Series, 1, M) of
        {_, V} -> V;
        false -> error({no_metric, Series})
    end.

to_num(S) ->
    try list_to_integer(S) catch error:badarg -> list_to_float(S) end.

describe(Label, P, LabNat, Prof, Id) ->
    #{lang := Lang} = Info = macula_lab_peer:info(P),
    Vm = case Lang of
             elixir -> ["Elixir ", maps:get(elixir_version, Info)];
             erlang -> ["Erlang/OTP ", maps:get(otp_release, Info)]
         end,
    #{mapping := M, filtering := F, allocation := Al, public_ip := Ip, public_port := Port} = Prof,
    io:format("  ~-16s ~s VM, node ~s..., behind ~s~n", [Label, Vm, binary:encode_hex(binary:part(Id, 0, 4)), LabNat]),
    io:format("  ~-16s detected ~s-~s-~s (mapping-filtering-allocation), public ~s:~b~n",
              ["", M, F, Al, inet:ntoa(Ip), Port]).

recv_msg(P, C) ->
    receive {macula_lab_peer, P, {macula_connection, C, {message, T}}} -> T
    after 5000 -> error({no_message, process_info(self(), messages)})
    end.

parse(Src) ->
    {ok, Toks, _} = erl_scan:string(Src),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    Exprs.

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
