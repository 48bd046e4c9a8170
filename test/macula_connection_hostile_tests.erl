%% Hostile peers against macula_connection and the node (issue 18, items 1
%% and 12), between this VM (the attacker, and one end of the honest pair)
%% and a second one started with `peer' (the victim):
%% <ul>
%% <li>a compressed term declaring 4 GiB once inflated is refused before the
%%     VM inflates it: the victim's owner gets `{closed, {too_large, Size,
%%     Limit}}', its VM grows by less than the message limit, and an honest
%%     connection to it still works;</li>
%% <li>a node whose socket failed stops its `macula_nat_node' process, which
%%     the supervisor restarts on a fresh socket;</li>
%% <li>the key file is created exclusively under a random temporary name:
%%     a symlink planted at the old predictable name is not followed.</li>
%% </ul>
%% Each appends a row to `$MACULA_HOSTILE_REPORT' when it is set.
-module(macula_connection_hostile_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").


%% Run inside the peer.
-export([bomb_victim/0, victim_result/0, bomb_victim_echo/0, accept_all/0]).

-define(GiB4, 4294967295).

hostile_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) ->
             [{timeout, 120, fun() -> compressed_bomb(Ctx) end},
              {timeout, 60, fun() -> failed_socket_restarts_the_node(Ctx) end},
              {timeout, 60, fun() -> key_file_is_written_exclusively(Ctx) end},
              {timeout, 60, fun per_ip_cap_from_the_environment/0}]
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

%% `max_connections_per_ip' set the way a user sets it (the application
%% environment of a fresh VM): a third connection from this host is refused
%% before its handshake, and a place freed is taken again.
per_ip_cap_from_the_environment() ->
    {ok, V, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    try
        ok = peer:call(V, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
        ok = peer:call(V, application, set_env, [macula_nat, max_connections_per_ip, 2]),
        {ok, _} = peer:call(V, application, ensure_all_started, [macula_nat]),
        _ = peer:call(V, erlang, spawn, [?MODULE, accept_all, []]),
        {ok, VId} = peer:call(V, macula, get_node_id, []),
        {ok, {_, VPort}} = peer:call(V, macula_nat_node, local_addr, []),
        Ep = iolist_to_binary(["127.0.0.1:", integer_to_list(VPort)]),
        {ok, C1} = macula_connection:open(Ep, VId),
        {ok, C2} = macula_connection:open(Ep, VId),
        T0 = erlang:monotonic_time(microsecond),
        Third = macula_connection:open(Ep, VId),
        Ms = (erlang:monotonic_time(microsecond) - T0) / 1000,
        ?assertEqual({error, {quic, <<"refused">>}}, Third),
        ok = macula_connection:close(C1),
        {ok, C3} = until(fun() -> case macula_connection:open(Ep, VId) of
                                      {ok, C} -> {ok, C};
                                      {error, _} -> false
                                  end
                         end, 10000),
        row("connections from one host over `max_connections_per_ip` (2, set in the application environment)",
            "`max_connections_per_ip` incoming connections per source IP",
            io_lib:format("third refused in ~.1f ms (~p); accepted again once one closed", [Ms, Third]), Ms),
        [macula_connection:close(C) || C <- [C2, C3]]
    after
        peer:stop(V)
    end.

%% Run inside a peer: takes every connection and holds it.
accept_all() ->
    case macula_connection:accept(60000) of
        {ok, _Conn} -> accept_all();
        {error, _} -> ok
    end.

%% F's first answer other than `false' within Ms, or `timeout'.
until(F, Ms) ->
    case F() of
        false when Ms =< 0 -> timeout;
        false -> timer:sleep(20), until(F, Ms - 20);
        V -> V
    end.

row(Attack, Bound, Measured, HonestMs) ->
    Line = io_lib:format("| ~ts | ~ts | ~ts | - | ~B |~n", [Attack, Bound, Measured, round(HonestMs)]),
    io:format(user, "HOSTILE-ROW ~ts", [Line]),
    case os:getenv("MACULA_HOSTILE_REPORT") of
        false -> ok;
        Path -> file:write_file(Path, Line, [append])
    end.

%% On the victim: accepts one connection, keeps the first thing it hears of
%% it, answers victim_result/0 with it.
bomb_victim() ->
    Pid = spawn(fun() ->
                        {ok, C} = macula_connection:accept(30000),
                        Got = receive {macula_connection, C, What} -> What after 20000 -> nothing end,
                        hold(Got)
                end),
    register(bomb_victim, Pid),
    ok.

hold(Got) ->
    receive
        {get, From} -> From ! {bomb_victim, Got}, hold(Got)
    end.

%% On the victim: accepts one connection and echoes one message.
bomb_victim_echo() ->
    spawn(fun() ->
                  {ok, C} = macula_connection:accept(30000),
                  receive {macula_connection, C, {message, T}} -> macula_connection:send(C, {echo, T})
                  after 20000 -> ok
                  end,
                  receive {macula_connection, C, {closed, _}} -> ok after 20000 -> ok end
          end),
    ok.

victim_result() ->
    bomb_victim ! {get, self()},
    receive {bomb_victim, Got} -> Got after 5000 -> no_answer end.

%% A real zlib stream of `Zeros' zero bytes, behind a header that declares
%% `Declared' bytes: what the VM allocates before it inflates.
bomb(Declared, Zeros) ->
    Z = zlib:open(),
    ok = zlib:deflateInit(Z, best_compression),
    Chunk = binary:copy(<<0>>, 1 bsl 20),
    Body = [zlib:deflate(Z, Chunk) || _ <- lists:seq(1, Zeros bsr 20)],
    Last = zlib:deflate(Z, <<>>, finish),
    zlib:close(Z),
    iolist_to_binary([<<131, 80, Declared:32>>, Body, Last]).

compressed_bomb(#{b := B, b_id := BId, b_ep := BEp}) ->
    ok = peer:call(B, ?MODULE, bomb_victim, []),
    Bomb = bomb(?GiB4, 64 bsl 20),
    {ok, C} = macula_connection:open(BEp, BId),
    MemBefore = peer:call(B, erlang, memory, [total]),
    %% The attacker bypasses term_to_binary: the bytes go as they are.
    ok = macula_nat_nif:conn_send(make_ref(), C, Bomb),
    Got = until(fun() -> case peer:call(B, ?MODULE, victim_result, []) of
                            nothing -> false;
                            R -> R
                        end
               end, 20000),
    MemAfter = peer:call(B, erlang, memory, [total]),
    Limit = 8388608,
    ?assertEqual({closed, {too_large, ?GiB4, Limit}}, Got),
    receive {macula_connection, C, {closed, Why}} -> ?assertMatch({peer_closed, _}, Why)
    after 10000 -> error(attacker_not_told)
    end,
    Grew = MemAfter - MemBefore,
    ?assert(Grew < Limit),
    %% The honest pair: a fresh connection to the victim and a round trip.
    T0 = erlang:monotonic_time(microsecond),
    ok = peer:call(B, ?MODULE, bomb_victim_echo, []),
    {ok, C2} = macula_connection:open(BEp, BId),
    ok = macula_connection:send(C2, ping),
    receive {macula_connection, C2, {message, {echo, ping}}} -> ok
    after 10000 -> error(honest_roundtrip)
    end,
    HonestMs = (erlang:monotonic_time(microsecond) - T0) / 1000,
    macula_connection:close(C2),
    row("compressed term declaring 4 GiB (zlib of 64 MiB of zeros)",
        "max message 8 MiB: a compressed term's declared size checked before inflating",
        io_lib:format("refused ({too_large, ~B, ~B}) with ~B KiB on the wire; victim VM grew ~B KiB",
                      [?GiB4, Limit, byte_size(Bomb) bsr 10, max(0, Grew) bsr 10]),
        HonestMs).

%% The receive loop's failure reaches the node's process as
%% `{macula_nat_node, failed, Reason}' (sent by the binding; the Rust test
%% `hostile_bounds::a_failing_receive_loop_closes_the_node_visibly' makes
%% a real socket fail): the process stops and the supervisor restarts it
%% on a fresh socket, from which the node connects again.
failed_socket_restarts_the_node(#{b := B, b_id := BId, b_ep := BEp}) ->
    Old = whereis(macula_nat_node),
    {ok, OldRes} = macula_nat_node:resource(),
    T0 = erlang:monotonic_time(microsecond),
    Old ! {macula_nat_node, failed, <<"Socket operation on non-socket (os error 88)">>},
    ?assertEqual(ok, until(fun() -> case whereis(macula_nat_node) of
                                        P when is_pid(P), P =/= Old -> ok;
                                        _ -> false
                                    end
                          end, 10000)),
    {ok, NewRes} = until(fun() -> case macula_nat_node:resource() of
                                     {ok, R} when R =/= OldRes -> {ok, R};
                                     _ -> false
                                 end
                        end, 10000),
    ?assertNotEqual(OldRes, NewRes),
    ok = peer:call(B, ?MODULE, bomb_victim_echo, []),
    {ok, C} = until(fun() -> case macula_connection:open(BEp, BId) of
                                {ok, _} = Ok -> Ok;
                                _ -> false
                            end
                   end, 10000),
    ok = macula_connection:send(C, ping),
    receive {macula_connection, C, {message, {echo, ping}}} -> ok
    after 10000 -> error(no_roundtrip_after_restart)
    end,
    Ms = (erlang:monotonic_time(microsecond) - T0) / 1000,
    macula_connection:close(C),
    row("node socket fails (receive loop error)", "macula_nat_node stops, the supervisor restarts it",
        "restarted on a fresh socket, connects again", Ms).

%% The key file: a symlink planted at the old, predictable temporary name
%% (`node.tmp') is not followed; the key is 0600 and nothing is left beside
%% it.
key_file_is_written_exclusively(_) ->
    Dir = filename:join(["/tmp", "mnat-key-" ++ os:getpid() ++ "-" ++ integer_to_list(erlang:unique_integer([positive]))]),
    ok = filelib:ensure_path(Dir),
    Victim = filename:join(Dir, "victim"),
    ok = file:write_file(Victim, <<"untouched">>),
    ok = file:make_symlink(Victim, filename:join(Dir, "node.tmp")),
    Key = filename:join(Dir, "node.key"),
    Open = fun() -> macula_nat_nif:node_open(#{ip => {127, 0, 0, 1}, port => 0,
                                               key_file => list_to_binary(Key),
                                               port_mapping => false}) end,
    {ok, N1} = Open(),
    {ok, Id1} = macula_nat_nif:node_id(N1),
    ok = macula_nat_nif:node_close(N1),
    {ok, N2} = Open(),
    ?assertEqual({ok, Id1}, macula_nat_nif:node_id(N2)),
    ok = macula_nat_nif:node_close(N2),
    ?assertEqual({ok, <<"untouched">>}, file:read_file(Victim)),
    {ok, #file_info{mode = Mode}} = file:read_file_info(Key),
    ?assertEqual(8#600, Mode band 8#777),
    ?assertEqual(["node.key", "node.tmp", "victim"], lists:sort(element(2, file:list_dir(Dir)))),
    [file:delete(filename:join(Dir, F)) || F <- ["node.key", "node.tmp", "victim"]],
    file:del_dir(Dir),
    row("key file: symlink planted at the temporary name", "random O_EXCL temporary name, mode 0600, dirty IO scheduler",
        "symlink not followed, key 0600, nothing left beside it", 0).
