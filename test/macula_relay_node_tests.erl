%% Relays from Erlang over loopback, three BEAM nodes: this VM is the
%% rendezvous and the relay (macula_relay_node, with callbacks that message
%% the test process); peers A and B (`peer' over stdio) join the rendezvous,
%% B stays reachable through the relay (the `relays' option). Each peer
%% owns its connections in a "holder" process that records every message it
%% gets (the test reads them with peer:call).
-module(macula_relay_node_tests).

-include_lib("eunit/include/eunit.hrl").

-import(macula_nat_test_support, [wait/2]).

%% Run inside the peers.
-export([holder_start/2, holder_get/2, holder_do/2, holder_do/3, holder_await/3, holder_stop/1,
         holder_seq/3, send_seq/2, set_profile/1]).

relay_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 90, fun() -> relayed_between_symmetric_peers(Ctx) end},
                  {timeout, 60, fun() -> max_sessions_and_disable(Ctx) end},
                  {timeout, 90, fun() -> upgrade_to_punched(Ctx) end},
                  {timeout, 60, fun() -> killed_relay_restarts_clean(Ctx) end},
                  {timeout, 60, fun() -> registry_relays_are_reserved(Ctx) end},
                  {timeout, 30, fun() -> bad_options(Ctx) end},
                  %% Last: the rendezvous on this node goes with the socket.
                  {timeout, 30, fun() -> follows_a_node_restart(Ctx) end}]
     end}.

setup() ->
    {Me, Ep} = macula_nat_test_support:serve_loopback_rendezvous(),
    Rv = [#{endpoint => Ep, node_id => Me}],
    A = macula_nat_test_support:start_peer([{rendezvous, Rv}]),
    %% The relay runs on this node's socket too.
    B = macula_nat_test_support:start_peer([{rendezvous, Rv}, {relays, [#{node_id => Me, endpoint => Ep}]}]),
    {ok, AId} = peer:call(A, macula, get_node_id, []),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    ok = wait(fun() -> lists:keymember(AId, 1, macula_nat_coordinator:rendezvous_peers()) andalso
                           lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers()) end, 15000),
    #{a => A, b => B, a_id => AId, b_id => BId, me => Me,
      a_hex => macula:node_id_to_hex(AId), b_hex => macula:node_id_to_hex(BId)}.

cleanup(#{a := A, b := B}) ->
    peer:stop(A),
    peer:stop(B),
    _ = macula_relay_node:disable(),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip).

%% The callbacks message the test process.
callbacks() ->
    Self = self(),
    #{on_session_start => fun(I) -> Self ! {relay_start, I} end,
      on_session_end => fun(I) -> Self ! {relay_end, I} end}.

relayed_between_symmetric_peers(#{a := A, b := B, a_id := AId, b_id := BId, me := Me} = Ctx) ->
    %% The callbacks give NodeIds in hex (printable with ~s).
    #{a_hex := AHex, b_hex := BHex} = Ctx,
    flush(),
    ok = macula_relay_node:enable(callbacks()),
    %% The relay's load goes to the registry (traced: its advertisement
    %% needs a DHT, see macula_relay_registry_tests).
    trace_set_load(true),
    ok = call(A, ?MODULE, set_profile, [symmetric]),
    ok = call(B, ?MODULE, set_profile, [symmetric]),
    wait_reserved(B, Me),

    %% What the peers put into relay sessions so far (earlier tests).
    Relayed0 = relayed_out(A) + relayed_out(B),
    %% Both sides allocate ports at random: only a relay connects them.
    ok = call(B, ?MODULE, holder_start, [b1, fun() -> macula_connection:accept(30000) end]),
    T0 = now_ms(),
    ok = call(A, ?MODULE, holder_start,
              [a1, fun() -> macula_nat_coordinator:request_connection(BId, #{allow_relay => true}) end]),
    ?assertMatch({ok, relayed, _}, hresult(A, a1)),
    ?debugFmt("request_connection (relayed, symmetric pair): ~b ms", [now_ms() - T0]),
    ?assertMatch({ok, _}, hresult(B, b1)),
    ?assertEqual(relayed, hinfo(A, a1, connection_method)),
    ?assertEqual(relayed, hinfo(B, b1, connection_method)),
    ?assertEqual(Me, hinfo(A, a1, relay)),
    ?assertEqual(Me, hinfo(B, b1, relay)),
    receive
        {relay_start, Start} -> ?assertMatch(#{peer_a := AHex, peer_b := BHex}, Start)
    after 10000 -> error(no_session_start)
    end,
    ?assertEqual(ok, receive_load(0.01)),

    %% ~1 MB A -> B, acknowledged B -> A.
    Chunk = binary:copy(<<7>>, 50000),
    Sent = lists:sum([begin
                          T = {data, I, Chunk},
                          ok = call(A, ?MODULE, holder_do, [a1, fun(R, _) -> macula_connection:send(conn(R), T) end]),
                          byte_size(term_to_binary(T))
                      end || I <- lists:seq(1, 20)]),
    {ok, _} = call(B, ?MODULE, holder_await, [b1, fun(M) -> is_message(M, {data, 20, Chunk}) end, 20000]),
    ok = call(B, ?MODULE, holder_do, [b1, fun(R, _) -> macula_connection:send(conn(R), {ack, 20}) end]),
    {ok, _} = call(A, ?MODULE, holder_await, [a1, fun(M) -> is_message(M, {ack, 20}) end, 10000]),
    {ok, Events} = call(B, ?MODULE, holder_get, [b1, 5000]),
    ?assertEqual(lists:seq(1, 20), [I || {macula_connection, _, {message, {data, I, _}}} <- Events]),

    ok = call(A, ?MODULE, holder_stop, [a1]),
    receive
        {relay_end, End} ->
            ?assertMatch(#{peer_a := AHex, peer_b := BHex, bytes_transferred := _}, End),
            #{bytes_transferred := Bytes} = End,
            ?debugFmt("relay counted ~b bytes for ~b bytes of terms sent", [Bytes, Sent]),
            ?assert(Bytes >= Sent),
            %% Exactly what the two peers put into the session, but for the
            %% close packets that reach the relay after the session ended.
            Put = relayed_out(A) + relayed_out(B) - Relayed0,
            ?debugFmt("peers put ~b bytes into the session", [Put]),
            ?assert(Bytes =< Put andalso Put - Bytes =< 4 * 1500)
    after 10000 -> error(no_session_end)
    end,
    ok = call(B, ?MODULE, holder_stop, [b1]),
    ?assertEqual(ok, receive_load(0.0)),
    trace_set_load(false),

    %% The connector falls back to the relay by default.
    ok = call(B, ?MODULE, holder_start, [b2, fun() -> macula_connection:accept(30000) end]),
    ok = call(A, ?MODULE, holder_start, [a2, fun() -> macula_nat_connector:connect(AId, BId, #{}) end]),
    ?assertMatch({ok, _, relayed}, hresult(A, a2)),
    ?assertEqual(relayed, hinfo(A, a2, connection_method)),
    ok = call(A, ?MODULE, holder_do, [a2, fun(R, _) -> macula_connection:send(conn(R), via_connector) end]),
    {ok, _} = call(B, ?MODULE, holder_await, [b2, fun(M) -> is_message(M, via_connector) end, 10000]),
    receive {relay_start, #{peer_a := AHex, peer_b := BHex}} -> ok after 10000 -> error(no_session_start) end,
    ok = call(A, ?MODULE, holder_stop, [a2]),
    ok = call(B, ?MODULE, holder_stop, [b2]),
    receive {relay_end, #{peer_a := AHex, peer_b := BHex}} -> ok after 10000 -> error(no_session_end) end,
    ok = wait(fun() -> match_sessions(0, macula_relay_node:stats()) end, 10000).

max_sessions_and_disable(#{a := A, b := B, b_id := BId, me := Me} = Ctx) ->
    %% The callbacks give NodeIds in hex (printable with ~s).
    #{a_hex := AHex, b_hex := BHex} = Ctx,
    flush(),
    Self = self(),
    %% A crashing callback is logged and harms nothing.
    ok = macula_relay_node:enable(#{max_sessions => 1,
                                    on_session_start => fun(_) -> exit(crash_on_purpose) end,
                                    on_session_end => fun(I) -> Self ! {relay_end, I} end}),
    Pid = whereis(macula_relay_node),
    ?assertMatch({ok, #{max_sessions := 1}}, macula_relay_node:stats()),
    wait_reserved(B, Me),
    ok = call(B, ?MODULE, holder_start, [b3, fun() -> macula_connection:accept(30000) end]),
    ok = call(A, ?MODULE, holder_start,
              [a3, fun() -> macula_relay_node:request_relay(BId, #{upgrade_interval => infinity}) end]),
    {ok, Session} = hresult(A, a3),
    ?assertMatch(#{peer := BId, relay := Me, connection := _}, Session),
    %% The relay is full.
    ?assertEqual({error, max_sessions}, call(A, macula_relay_node, request_relay, [BId, #{}])),
    ?assertEqual({error, no_relay}, call(A, macula_nat_connector, connect, [BId, #{}])),
    ?assertEqual(Pid, whereis(macula_relay_node)),
    ?assertMatch({ok, #{sessions := 1, load := 1.0}}, macula_relay_node:stats()),

    %% Disabling ends the session, and says so.
    ok = macula_relay_node:disable(),
    receive
        {relay_end, End} -> ?assertMatch(#{peer_a := AHex, peer_b := BHex, reason := relay_disabled}, End)
    after 10000 -> error(no_session_end_on_disable)
    end,
    ?assertEqual({error, disabled}, macula_relay_node:stats()),
    ?assertEqual(ok, macula_relay_node:disable()),
    ok = wait(fun() -> [] =:= call(B, macula_nat_coordinator, reserved_relays, []) end, 10000),
    ?assertMatch({error, _}, call(A, macula_relay_node, request_relay, [BId, #{}])),
    ok = call(A, ?MODULE, holder_stop, [a3]),
    ok = call(B, ?MODULE, holder_stop, [b3]).

%% Two open peers forced through the relay move to a punched path in the
%% background; 10,000 sequenced terms sent across the switch arrive once
%% and in order.
upgrade_to_punched(#{a := A, b := B, b_id := BId, me := Me}) ->
    ok = macula_relay_node:enable(callbacks()),
    ok = call(A, ?MODULE, set_profile, [public]),
    ok = call(B, ?MODULE, set_profile, [public]),
    wait_reserved(B, Me),
    ok = call(B, ?MODULE, holder_start, [b4, fun() -> macula_connection:accept(30000) end]),
    T0 = now_ms(),
    ok = call(A, ?MODULE, holder_start,
              [a4, fun() -> macula_relay_node:request_relay(BId, #{upgrade_interval => 500}) end]),
    {ok, #{peer := BId, relay := Me}} = hresult(A, a4),
    ?debugFmt("request_relay: ~b ms", [now_ms() - T0]),
    N = 10000,
    {I, punched, SwitchMs} = call(A, ?MODULE, holder_do, [a4, fun(R, _) -> send_seq(conn(R), N) end]),
    ?debugFmt("method_changed -> punched ~b ms after sending began (right after the relayed connect), at term ~b of ~b",
              [SwitchMs, I, N]),
    ?assert(I > 0 andalso I < N),
    {InOrder, _} = call(B, ?MODULE, holder_seq, [b4, N, 60000]),
    ?assert(InOrder),
    %% The responder follows when its QUIC sees the peer's new address.
    {ok, _} = call(B, ?MODULE, holder_await,
                   [b4, fun({macula_connection, _, {method_changed, punched}}) -> true; (_) -> false end, 15000]),
    ?assertMatch({_, [punched]}, call(B, ?MODULE, holder_seq, [b4, N, 1000])),
    ?assertEqual(punched, hinfo(A, a4, connection_method)),
    ?assertEqual(punched, hinfo(B, b4, connection_method)),
    ?assertEqual(undefined, hinfo(A, a4, relay)),
    %% Still one working connection, both ways.
    ok = call(B, ?MODULE, holder_do, [b4, fun(R, _) -> macula_connection:send(conn(R), after_switch) end]),
    {ok, _} = call(A, ?MODULE, holder_await, [a4, fun(M) -> is_message(M, after_switch) end, 10000]),
    ok = call(A, ?MODULE, holder_stop, [a4]),
    ok = call(B, ?MODULE, holder_stop, [b4]).

killed_relay_restarts_clean(#{a := A, b := B, b_id := BId, me := Me}) ->
    ok = macula_relay_node:enable(#{max_sessions => 7}),
    #{relay := Old} = sys:get_state(macula_relay_node),
    %% The children before the relay keep their pids (rest_for_one; the
    %% flow helper and the log forwarder after it restart with it).
    Others = [{Id, P} || {Id, P, _, _} <- supervisor:which_children(macula_nat_system),
                         Id =/= macula_relay_node, Id =/= macula_connection_flow,
                         Id =/= macula_nat_log],
    OldPid = whereis(macula_relay_node),
    exit(OldPid, kill),
    ok = wait(fun() -> is_pid(whereis(macula_relay_node)) andalso whereis(macula_relay_node) =/= OldPid end, 5000),
    %% The old relay is closed with its owner; the new process relays
    %% again with the options in force.
    ?assertEqual({error, closed}, macula_nat_nif:relay_stats(Old)),
    ok = wait(fun() -> element(1, macula_relay_node:stats()) =:= ok end, 5000),
    ?assertMatch({ok, #{max_sessions := 7}}, macula_relay_node:stats()),
    ?assertEqual(Others, [{Id, P} || {Id, P, _, _} <- supervisor:which_children(macula_nat_system),
                                     Id =/= macula_relay_node, Id =/= macula_connection_flow,
                                     Id =/= macula_nat_log]),
    wait_reserved(B, Me),
    ok = call(B, ?MODULE, holder_start, [b5, fun() -> macula_connection:accept(30000) end]),
    ok = call(A, ?MODULE, holder_start, [a5, fun() -> macula_relay_node:request_relay(BId, #{}) end]),
    ?assertMatch({ok, #{relay := Me}}, hresult(A, a5)),
    ok = call(A, ?MODULE, holder_stop, [a5]),
    ok = call(B, ?MODULE, holder_stop, [b5]),
    ok = macula_relay_node:disable().

%% A has no `relays' option; once its relay registry knows this node as a
%% relay, its coordinator reserves there, and stops when it is forgotten.
registry_relays_are_reserved(#{a := A, me := Me}) ->
    ok = macula_relay_node:enable(),
    {ok, {_, Port}} = macula_nat_node:local_addr(),
    Ep = iolist_to_binary(["127.0.0.1:", integer_to_list(Port)]),
    ?assertEqual([], call(A, macula_nat_coordinator, reserved_relays, [])),
    ok = call(A, macula_relay_registry, register, [Me, Ep]),
    ok = wait(fun() -> [#{node_id => Me, endpoint => Ep}] =:= call(A, macula_nat_coordinator, reserved_relays, [])
              end, 30000),
    ok = call(A, macula_relay_registry, unregister, [Me]),
    ok = wait(fun() -> [] =:= call(A, macula_nat_coordinator, reserved_relays, []) end, 30000),
    ok = macula_relay_node:disable().

bad_options(#{a := A, b_id := BId}) ->
    ok = macula_relay_node:disable(),
    Pid = whereis(macula_relay_node),
    [?assertEqual({error, {bad_option, K}}, macula_relay_node:enable(#{K => V}))
     || {K, V} <- [{max_sessions, 0}, {max_sessions, 1.5}, {max_sessions, 10000001},
                   {bandwidth_limit, -1}, {bandwidth_limit, lots}, {session_timeout, 0},
                   {session_timeout, soon}, {on_session_start, fun() -> ok end},
                   {on_session_end, not_a_fun}, {unknown_option, 1}]],
    ?assertEqual({error, badarg}, macula_relay_node:enable(not_a_map)),
    ?assertEqual({error, badarg}, macula_relay_node:request_relay(not_a_binary, #{})),
    ?assertEqual({error, {bad_option, upgrade_interval}},
                 call(A, macula_relay_node, request_relay, [BId, #{upgrade_interval => 0}])),
    ?assertEqual({error, {bad_option, allow_relay}},
                 call(A, macula_nat_coordinator, request_connection, [BId, #{allow_relay => maybe}])),
    ?assertEqual({error, {bad_option, timeout}},
                 call(A, macula_nat_coordinator, request_connection, [BId, #{timeout => soon}])),
    ?assertEqual({error, bad_node_id}, call(A, macula_relay_node, request_relay, [<<"short">>, #{}])),
    ?assertMatch({error, {bad_relay, _}},
                 macula_nat_coordinator:set_relays([#{node_id => <<1>>, endpoint => <<"127.0.0.1:9">>}])),
    ?assertMatch({error, {bad_relay, _}},
                 macula_nat_coordinator:set_relays([#{node_id => <<1:256>>, endpoint => <<"nowhere">>}])),
    ?assertEqual({error, badarg}, macula_nat_coordinator:set_relays(not_a_list)),
    ?assertMatch({error, {bad_option, relays, _}}, macula_nat_config:resolve(#{relays => [bad]})),
    %% The NIF checks ranges itself, and names the key it was given.
    {ok, Node} = macula_nat_node:resource(),
    ?assertEqual({error, {bad_option, max_sessions}}, macula_nat_nif:relay_enable(Node, #{max_sessions => 0}, self())),
    ?assertEqual({error, {bad_option, <<"key">>}}, macula_nat_nif:relay_enable(Node, #{<<"key">> => 1}, self())),
    ?assertEqual({error, badarg}, macula_nat_nif:relay_enable(Node, [], self())),
    ?assertEqual(Pid, whereis(macula_relay_node)),
    ?assertEqual({error, disabled}, macula_relay_node:stats()).

%% The relay lives on the node's socket: when macula_nat_node restarts, the
%% relay server restarts after it (rest_for_one) and relays on the new
%% socket with the same options.
follows_a_node_restart(_Ctx) ->
    ok = macula_relay_node:enable(#{max_sessions => 5}),
    #{relay := Old} = sys:get_state(macula_relay_node),
    RelayPid = whereis(macula_relay_node),
    NodePid = whereis(macula_nat_node),
    exit(NodePid, kill),
    ok = wait(fun() -> case whereis(macula_relay_node) of
                           Pid when is_pid(Pid), Pid =/= RelayPid ->
                               try sys:get_state(Pid) of
                                   #{relay := R} when R =/= undefined, R =/= Old -> true;
                                   _ -> false
                               catch exit:_ -> false
                               end;
                           _ -> false
                       end
              end, 10000),
    ?assertEqual({error, closed}, macula_nat_nif:relay_stats(Old)),
    ?assertMatch({ok, #{max_sessions := 5, sessions := 0}}, macula_relay_node:stats()),
    ok = macula_relay_node:disable().

%% helpers (test side)

relayed_out(Peer) ->
    {ok, #{relayed_bytes_out := N}} = call(Peer, macula_nat_node, stats, []),
    N.

call(Peer, M, F, Args) ->
    peer:call(Peer, M, F, Args, 90000).

hresult(Peer, Name) ->
    call(Peer, ?MODULE, holder_do, [Name, fun(R, _) -> R end]).

hinfo(Peer, Name, Key) ->
    call(Peer, ?MODULE, holder_do, [Name, fun(R, _) -> macula_connection:get_info(conn(R), Key) end]).

%% The peer holds a reservation at this node's relay, both say so (after a
%% relay restart the peer may still believe in its old reservation).
wait_reserved(Peer, Relay) ->
    ok = wait(fun() ->
                      lists:any(fun(#{node_id := Id}) -> Id =:= Relay end,
                                call(Peer, macula_nat_coordinator, reserved_relays, []))
                          andalso case macula_relay_node:stats() of
                                      {ok, #{reservations := R}} -> R >= 1;
                                      _ -> false
                                  end
              end, 15000).

trace_set_load(On) ->
    erlang:trace_pattern({macula_relay_registry, set_load, 1}, On, [global]),
    erlang:trace(whereis(macula_relay_node), On, [call]).

receive_load(Load) ->
    receive {trace, _, call, {macula_relay_registry, set_load, [Load]}} -> ok
    after 10000 -> {no_set_load, Load}
    end.

%% Callback messages a previous case left behind.
flush() ->
    receive {relay_start, _} -> flush(); {relay_end, _} -> flush()
    after 0 -> ok
    end.

match_sessions(N, {ok, #{sessions := N}}) -> true;
match_sessions(_, _) -> false.

is_message({macula_connection, _, {message, T}}, T) -> true;
is_message(_, _) -> false.

conn({ok, _, C}) when is_reference(C) -> C;
conn({ok, C, _}) when is_reference(C) -> C;
conn({ok, #{connection := C}}) -> C;
conn({ok, C}) when is_reference(C) -> C.

now_ms() -> erlang:monotonic_time(millisecond).


%% helpers (peer side)

-spec set_profile(symmetric | public) -> ok | {error, term()}.
set_profile(Kind) ->
    {ok, Sig} = macula_nat_coordinator:signal(),
    P = case Kind of
            symmetric -> #{mapping => pd, filtering => pd, allocation => rd, confidence => high};
            public -> #{mapping => ei, filtering => ei, allocation => pp, no_nat => true, confidence => high}
        end,
    macula_nat_nif:signal_set_profile(Sig, P).

%% A process registered as `Name' that runs `Fun' (so it owns the
%% connection `Fun' makes), keeps its result and records every message.
-spec holder_start(atom(), fun(() -> term())) -> ok.
holder_start(Name, Fun) ->
    Self = self(),
    Pid = spawn(fun() ->
                        register(Name, self()),
                        Self ! {registered, self()},
                        R = Fun(),
                        holder_loop(R, [])
                end),
    receive {registered, Pid} -> ok after 5000 -> error(holder_not_registered) end.

holder_loop(R, Acc) ->
    receive
        {holder_do, From, Ref, F} ->
            From ! {Ref, catch F(R, lists:reverse(Acc))},
            holder_loop(R, Acc);
        holder_stop ->
            ok;
        M ->
            holder_loop(R, [M | Acc])
    end.

%% Runs F(Result, Events) in the holder (waits until Fun has returned).
-spec holder_do(atom(), fun((term(), [term()]) -> term()), timeout()) -> term().
holder_do(Name, F, Timeout) ->
    Ref = make_ref(),
    Name ! {holder_do, self(), Ref, F},
    receive {Ref, X} -> X after Timeout -> {error, holder_timeout} end.

-spec holder_do(atom(), fun((term(), [term()]) -> term())) -> term().
holder_do(Name, F) -> holder_do(Name, F, 60000).

-spec holder_get(atom(), timeout()) -> {ok, [term()]}.
holder_get(Name, Timeout) ->
    {ok, holder_do(Name, fun(_, Events) -> Events end, Timeout)}.

-spec holder_await(atom(), fun((term()) -> boolean()), non_neg_integer()) -> {ok, term()} | {error, timeout}.
holder_await(Name, Pred, Timeout) ->
    Deadline = now_ms() + Timeout,
    await_loop(Name, Pred, Deadline).

await_loop(Name, Pred, Deadline) ->
    case [E || E <- holder_do(Name, fun(_, Es) -> Es end), Pred(E)] of
        [E | _] -> {ok, E};
        [] ->
            case now_ms() > Deadline of
                true -> {error, timeout};
                false -> timer:sleep(20), await_loop(Name, Pred, Deadline)
            end
    end.

-spec holder_stop(atom()) -> ok.
holder_stop(Name) ->
    Name ! holder_stop,
    ok.

%% Waits for `N' sequenced terms: {whether they are 0..N-1 in order, the
%% method changes seen}.
-spec holder_seq(atom(), pos_integer(), non_neg_integer()) -> {boolean(), [atom()]}.
holder_seq(Name, N, Timeout) ->
    {ok, _} = holder_await(Name, fun(M) -> is_message(M, {seq, N - 1}) end, Timeout),
    Events = holder_do(Name, fun(_, Es) -> Es end),
    Seq = [I || {macula_connection, _, {message, {seq, I}}} <- Events],
    {Seq =:= lists:seq(0, N - 1), [M || {macula_connection, _, {method_changed, M}} <- Events]}.

%% Sends {seq, 0} .. {seq, N-1}, 10 terms per 10 ms until the method
%% changes, then at full speed: {term index at the change, new method, ms
%% since the start}.
-spec send_seq(macula_connection:connection(), pos_integer()) -> undefined | {non_neg_integer(), atom(), integer()}.
send_seq(C, N) ->
    send_seq(C, 0, N, undefined, now_ms()).

send_seq(_C, I, N, Switch, _T0) when I >= N ->
    Switch;
send_seq(C, I, N, Switch0, T0) ->
    ok = macula_connection:send(C, {seq, I}),
    Switch = case Switch0 of
                 undefined when I rem 10 =:= 9 ->
                     receive {macula_connection, C, {method_changed, M}} -> {I, M, now_ms() - T0}
                     after 10 -> undefined
                     end;
                 _ ->
                     Switch0
             end,
    send_seq(C, I + 1, N, Switch, T0).
