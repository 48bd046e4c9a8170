#!/usr/bin/env escript
%%! -pa _build_lab
%% Smoke of macula_lab_peer: an Erlang VM behind a full-cone NAT, an Elixir VM
%% behind a port-restricted-cone NAT and an Erlang VM on a public host; start
%% macula_nat on both NATed peers, UDP ping public <-> sites and site <-> site
%% through the NATs with sockets owned by the remote mailboxes. Run by peer_smoke.sh.
-mode(compile).

-define(LAB, "peer").

main(_) ->
    ok = macula_lab:available(),
    macula_lab:reap(),
    Spec = <<"{\"name\":\"peer\",\"public\":[\"pub\"],\"sites\":["
             "{\"name\":\"a\",\"nat\":\"kernel:full_cone\"},"
             "{\"name\":\"b\",\"nat\":\"kernel:port_restricted_cone\"}]}">>,
    {T0, {ok, _}} = timer:tc(macula_lab, up, [Spec]),
    io:format("lab up in ~b ms~n", [T0 div 1000]),
    try run() after macula_lab:down(?LAB) end.

run() ->
    Env = #{detection_timeout_ms => 1000},
    {ok, Pub} = macula_lab_peer:start(?LAB, "pub", #{}),
    {ok, A} = macula_lab_peer:start(?LAB, "a", #{env => Env}),
    {ok, B} = macula_lab_peer:start(?LAB, "b", #{lang => elixir, env => Env}),
    [io:format("peer ~s: ~p start ~b ms (os pid ~s)~n",
               [H, L, Ms, Os]) || P <- [Pub, A, B],
     #{host := H, lang := L, start_ms := Ms, os_pid := Os} <- [macula_lab_peer:info(P)]],

    %% It is an Elixir VM: call Elixir modules there.
    Vsn = macula_lab_peer:call(B, 'Elixir.System', version, []),
    <<"macula">> = macula_lab_peer:call(B, 'Elixir.String', downcase, [<<"MACULA">>]),
    3 = macula_lab_peer:call(B, 'Elixir.Kernel', length, [[a, b, c]]),
    erlang = maps:get(lang, macula_lab_peer:info(A)),
    io:format("b runs Elixir ~s~n", [Vsn]),

    %% env applied before start; the app starts; node ids differ.
    {ok, 1000} = macula_lab_peer:call(A, application, get_env, [macula_nat, detection_timeout_ms]),
    Ids = [begin
               {ok, Started} = macula_lab_peer:call(P, application, ensure_all_started, [macula_nat]),
               {ok, Id} = macula_lab_peer:call(P, macula, get_node_id, []),
               32 = byte_size(Id),
               io:format("~s: started ~p, node id ~s...~n",
                         [host(P), Started, binary:encode_hex(binary:part(Id, 0, 8))]),
               Id
           end || P <- [A, B]],
    2 = length(lists:usort(Ids)),

    %% Exceptions and timeouts come back as badrpc.
    {badrpc, {error, undef}} = macula_lab_peer:call(A, no_such_module, f, []),
    {badrpc, timeout} = macula_lab_peer:call(A, timer, sleep, [1000], 100),

    %% UDP through the NATs: sockets owned by the mailboxes, {active, true},
    %% so datagrams come back to us as {macula_lab_peer, Peer, {udp, ...}}.
    PubIp = ip(macula_lab:host_addr(?LAB, "pub")),
    AIp = ip(macula_lab:public_ip(?LAB, "a")),
    BIp = ip(macula_lab:public_ip(?LAB, "b")),
    [SPub, SA, SB] = [udp_open(P) || P <- [Pub, A, B]],
    {ok, PubPort} = macula_lab_peer:call(Pub, inet, port, [SPub]),
    ok = macula_lab_peer:call(A, gen_udp, send, [SA, PubIp, PubPort, <<"ping a">>]),
    {AIp, APort} = expect_udp(Pub, <<"ping a">>),
    ok = macula_lab_peer:call(B, gen_udp, send, [SB, PubIp, PubPort, <<"ping b">>]),
    {BIp, BPort} = expect_udp(Pub, <<"ping b">>),
    io:format("pub sees a as ~s:~b, b as ~s:~b (NAT public addresses)~n",
              [inet:ntoa(AIp), APort, inet:ntoa(BIp), BPort]),
    ok = macula_lab_peer:call(Pub, gen_udp, send, [SPub, AIp, APort, <<"pong a">>]),
    {PubIp, PubPort} = expect_udp(A, <<"pong a">>),
    ok = macula_lab_peer:call(Pub, gen_udp, send, [SPub, BIp, BPort, <<"pong b">>]),
    {PubIp, PubPort} = expect_udp(B, <<"pong b">>),
    io:format("public <-> site: ok both ways~n"),

    %% Site <-> site with the mappings pub observed: a is full cone (anyone
    %% may reach its mapping); b's reply is let in because b sent to a first.
    ok = macula_lab_peer:call(B, gen_udp, send, [SB, AIp, APort, <<"b to a">>]),
    {BIp, BPort} = expect_udp(A, <<"b to a">>),
    ok = macula_lab_peer:call(A, gen_udp, send, [SA, BIp, BPort, <<"a to b">>]),
    {AIp, APort} = expect_udp(B, <<"a to b">>),
    io:format("site a <-> site b through both NATs: ok~n"),

    [begin H = host(P),
           {T, ok} = timer:tc(macula_lab_peer, stop, [P]),
           io:format("stop ~s: ~b ms~n", [H, T div 1000]) end || P <- [A, B, Pub]],
    {badrpc, nodedown} = macula_lab_peer:call(A, erlang, node, []),
    ok.

host(P) -> maps:get(host, macula_lab_peer:info(P)).

udp_open(P) ->
    {ok, S} = macula_lab_peer:call_mailbox(P, gen_udp, open, [0, [binary, {active, true}]]),
    S.

expect_udp(P, Data) ->
    receive
        {macula_lab_peer, P, {udp, _, Ip, Port, Data}} -> {Ip, Port}
    after 5000 ->
        error({no_udp, Data, process_info(self(), messages)})
    end.

ip(S) ->
    {ok, Ip} = inet:parse_address(S),
    Ip.
