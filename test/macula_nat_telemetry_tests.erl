%% Telemetry events (README, "Telemetry") and printable NodeIds, over
%% loopback. `telemetry' here is the stub in test/telemetry.erl (the real
%% library's execute/attach contract). This VM is an observer's client,
%% the rendezvous and the relay; peer VMs A and B join it (B reachable
%% through this node's relay). Each VM records the events it emits in a
%% table (`record_start/0' attaches the recorder there).
-module(macula_nat_telemetry_tests).

-include_lib("eunit/include/eunit.hrl").


-import(macula_nat_test_support, [wait/2, echo_on/1, roundtrip/2]).

%% Run inside the peers too.
-export([record_start/0, recorded/0, record/4, clear/0]).

-define(EVENTS, [[macula_nat, detection, start], [macula_nat, detection, stop],
                 [macula_nat, detection, exception],
                 [macula_nat, connect, start], [macula_nat, connect, stop], [macula_nat, connect, exception],
                 [macula_nat, connection, method_changed], [macula_nat, punch, stop],
                 [macula_nat, relay, session, start], [macula_nat, relay, session, stop]]).

%% Conversions, no network.
node_ids_test() ->
    Id = crypto:strong_rand_bytes(32),
    Hex = macula:node_id_to_hex(Id),
    ?assertEqual(64, byte_size(Hex)),
    ?assertEqual(Hex, string:lowercase(Hex)),
    ?assertEqual({ok, Id}, macula:node_id_from_hex(Hex)),
    ?assertEqual({ok, Id}, macula:node_id_from_hex(string:uppercase(Hex))),
    ?assertEqual({ok, Id}, macula:node_id_from_hex(binary_to_list(Hex))),
    ?assertEqual({ok, Id}, macula:node_id_from_hex(<<"  ", Hex/binary, "\r\n">>)),
    ?assertEqual({ok, Id}, macula:node_id_from_hex(Id)),
    ?assertEqual(Hex, macula:node_id_to_hex(string:uppercase(Hex))),
    ?assertEqual(Hex, iolist_to_binary(io_lib:format("~s", [macula:node_id_to_hex(Id)]))),
    [?assertEqual({error, bad_node_id}, macula:node_id_from_hex(Bad))
     || Bad <- [<<>>, <<"zz">>, binary:copy(<<"g">>, 64), binary:part(Hex, 0, 63), <<Hex/binary, "0">>,
                <<Hex/binary, " x">>, <<1:248>>, "short", not_an_id, 42, [1 | 2], [256 | binary_to_list(Hex)]]],
    [?assertEqual({error, bad_node_id}, macula:node_id_to_hex(Bad)) || Bad <- [<<"x">>, undefined, 1]],
    %% Nothing made of input: a hex id that is not one fails without atoms.
    Atoms = erlang:system_info(atom_count),
    {error, bad_node_id} = macula:node_id_from_hex(binary:copy(<<"q">>, 64)),
    ?assertEqual(Atoms, erlang:system_info(atom_count)).

%% The stub telemetry gone (not in the code path, not loaded): events are
%% no-ops and nothing fails; back, they flow again.
telemetry_absent_test() ->
    Beam = code:which(telemetry),
    Dir = filename:dirname(Beam),
    InPath = code:del_path(Dir),
    try
        code:purge(telemetry),
        _ = code:delete(telemetry),
        code:purge(telemetry),
        ok = macula_nat_telemetry:reset(),
        ?assertNot(macula_nat_telemetry:enabled()),
        ?assertEqual(ok, macula_nat_telemetry:execute([macula_nat, test], #{}, #{})),
        Span = macula_nat_telemetry:span_start([macula_nat, test], #{}),
        ?assertEqual(ok, macula_nat_telemetry:span_stop(Span, #{}, #{})),
        ?assertEqual(ok, macula_nat_telemetry:span_exception(Span, error, x, []))
    after
        _ = InPath andalso code:add_patha(Dir),
        {module, telemetry} = code:load_abs(filename:rootname(Beam)),
        ok = macula_nat_telemetry:reset()
    end,
    ?assert(macula_nat_telemetry:enabled()),
    %% A telemetry whose execute/3 fails does not fail us either.
    ok = telemetry:attach(crashing, [macula_nat, test], fun(_, _, _, _) -> error(boom) end, []),
    ?assertEqual(ok, macula_nat_telemetry:execute([macula_nat, test], #{}, #{})),
    ?assertEqual({error, not_found}, telemetry:detach(crashing)).

events_test_() ->
    {setup, fun setup/0, fun cleanup/1,
     fun(Ctx) -> [{timeout, 30, fun() -> detection(Ctx) end},
                  {timeout, 60, fun() -> connect_direct_and_punched(Ctx) end},
                  {timeout, 90, fun() -> relayed_method_change_and_sessions(Ctx) end}]
     end}.

setup() ->
    {ok, Obs} = macula_nat_observer:start(#{primary => {{127, 0, 0, 1}, 0},
                                            alternate => {{127, 0, 0, 2}, 0}}),
    #{primary := Primary} = macula_nat_observer:info(Obs),
    {Me, Ep} = macula_nat_test_support:serve_loopback_rendezvous(),
    MeHex = macula:node_id_to_hex(Me),
    %% Ids in hex where a config file would have them.
    Rv = [#{endpoint => Ep, node_id => MeHex}],
    A = macula_nat_test_support:start_peer([{rendezvous, Rv}]),
    B = macula_nat_test_support:start_peer([{rendezvous, Rv}, {relays, [#{node_id => MeHex, endpoint => Ep}]}]),
    {ok, AId} = peer:call(A, macula, get_node_id, []),
    {ok, BId} = peer:call(B, macula, get_node_id, []),
    %% This node connects too: it joins its own rendezvous (in hex).
    ok = macula_nat_coordinator:join(Ep, string:uppercase(MeHex)),
    ok = wait(fun() -> lists:keymember(AId, 1, macula_nat_coordinator:rendezvous_peers()) andalso
                           lists:keymember(BId, 1, macula_nat_coordinator:rendezvous_peers()) end, 15000),
    [ok = peer:call(P, ?MODULE, record_start, []) || P <- [A, B]],
    ok = record_start(),
    #{obs => Obs, primary => Primary, a => A, b => B, a_id => AId, b_id => BId, me => Me}.

cleanup(#{obs := Obs, a := A, b := B}) ->
    _ = telemetry:detach(?MODULE),
    peer:stop(A),
    peer:stop(B),
    _ = macula_relay_node:disable(),
    application:stop(macula_nat),
    application:unset_env(macula_nat, listen_ip),
    macula_nat_observer:stop(Obs).

detection(#{primary := P}) ->
    ok = clear(),
    {ok, Profile} = macula_nat_detector:detect(#{observers => [P], force => true}),
    [{[macula_nat, detection, start], M0, Meta0}, {[macula_nat, detection, stop], M1, Meta1}] =
        events([macula_nat, detection]),
    ?assertMatch(#{system_time := T, monotonic_time := _} when is_integer(T), M0),
    ?assertMatch(#{trigger := call, observers := [_], telemetry_span_context := _}, Meta0),
    ?assertMatch(#{duration := D, monotonic_time := _} when is_integer(D) andalso D >= 0, M1),
    ?assertEqual(maps:with([mapping, filtering, allocation, confidence], Profile),
                 maps:with([mapping, filtering, allocation, confidence], Meta1)),
    ?assertEqual(maps:get(telemetry_span_context, Meta0), maps:get(telemetry_span_context, Meta1)),
    %% A detection that fails stops with the error.
    ok = clear(),
    {error, _} = macula_nat_detector:detect(#{observers => [{{127, 0, 0, 1}, 9}], force => true, timeout => 300}),
    ?assertMatch([{[macula_nat, detection, start], _, _},
                  {[macula_nat, detection, stop], #{duration := _}, #{error := _}}],
                 events([macula_nat, detection])).

connect_direct_and_punched(#{b := B, b_id := BId}) ->
    BHex = macula:node_id_to_hex(BId),
    %% Direct on loopback, the target named in hex (upper case).
    ok = clear(),
    echo_on(B),
    {ok, direct, C1} = macula_nat_coordinator:request_connection(string:uppercase(BHex), #{}),
    ?assertEqual(BId, macula_connection:get_info(C1, peer)),
    ok = roundtrip(C1, 1),
    [{[macula_nat, connect, start], M0, Meta0}, {[macula_nat, connect, stop], M1, Meta1}] =
        events([macula_nat, connect]),
    ?assertMatch(#{system_time := _, monotonic_time := _}, M0),
    ?assertMatch(#{peer := BHex, via := traversal, relay_only := false, allow_relay := false}, Meta0),
    ?assertMatch(#{duration := D} when is_integer(D) andalso D > 0, M1),
    ?assertMatch(#{peer := BHex, method := direct}, Meta1),
    ?assertEqual([], events([macula_nat, punch])),
    macula_connection:close(C1),

    %% Punched (the connector, forced to punch): the punch outcome too.
    ok = clear(),
    echo_on(B),
    {ok, C2} = macula_nat_connector:connect(BHex, #{prefer_direct => false}),
    ok = roundtrip(C2, 2),
    ?assertMatch([{[macula_nat, connect, start], _, #{peer := BHex, allow_relay := true}},
                  {[macula_nat, connect, stop], #{duration := _}, #{method := punched}}],
                 events([macula_nat, connect])),
    ?assertMatch([{[macula_nat, punch, stop], #{duration := _},
                   #{peer := BHex, outcome := success, upgrade := false}}],
                 events([macula_nat, punch])),
    macula_connection:close(C2),

    %% Direct dial by address (open/3): via open.
    ok = clear(),
    echo_on(B),
    {ok, {_, BPort}} = peer:call(B, macula_nat_node, local_addr, []),
    {ok, C3} = macula_connection:open({{127, 0, 0, 1}, BPort}, BHex, #{}),
    ok = roundtrip(C3, 3),
    ?assertMatch([{[macula_nat, connect, start], _, #{peer := BHex, via := open}},
                  {[macula_nat, connect, stop], _, #{method := direct}}],
                 events([macula_nat, connect])),
    macula_connection:close(C3),

    %% A failed connect stops with its error.
    ok = clear(),
    {error, unknown_peer} = macula_nat_connector:connect(binary:copy(<<"ab">>, 32), #{timeout => 3000}),
    Unknown = binary:copy(<<"ab">>, 32),
    ?assertMatch([{[macula_nat, connect, start], _, #{peer := Unknown}},
                  {[macula_nat, connect, stop], _, #{error := unknown_peer}}],
                 events([macula_nat, connect])).

%% A relayed connect from A through this node's relay, which upgrades to a
%% punched path: A emits connect (relayed), method_changed and the punch
%% outcome; this node (the relay) the session's start and stop with bytes.
relayed_method_change_and_sessions(#{a := A, b := B, a_id := AId, b_id := BId, me := Me}) ->
    {AHex, BHex, MeHex} = {macula:node_id_to_hex(AId), macula:node_id_to_hex(BId), macula:node_id_to_hex(Me)},
    ok = clear(),
    [ok = peer:call(P, ?MODULE, clear, []) || P <- [A, B]],
    ok = macula_relay_node:enable(#{}),
    ok = peer:call(A, macula_relay_node_tests, set_profile, [public]),
    ok = peer:call(B, macula_relay_node_tests, set_profile, [public]),
    ok = wait(fun() -> lists:any(fun(#{node_id := Id}) -> Id =:= Me end,
                                 peer:call(B, macula_nat_coordinator, reserved_relays, [])) end, 15000),
    ok = peer:call(B, macula_relay_node_tests, holder_start, [tb, fun() -> macula_connection:accept(30000) end]),
    ok = peer:call(A, macula_relay_node_tests, holder_start,
                   [ta, fun() -> macula_relay_node:request_relay(BHex, #{upgrade_interval => 500}) end]),
    {ok, #{peer := BId, relay := Me}} = peer:call(A, macula_relay_node_tests, holder_do, [ta, fun(R, _) -> R end]),
    ok = wait(fun() -> [] =/= events_in(A, [macula_nat, connection]) end, 20000),
    ?assertMatch([{[macula_nat, connect, start], _, #{peer := BHex, relay_only := true}},
                  {[macula_nat, connect, stop], _, #{method := relayed, relay := MeHex}}],
                 events_in(A, [macula_nat, connect])),
    ?assertMatch([{[macula_nat, connection, method_changed], #{duration := _, system_time := _},
                   #{peer := BHex, from := relayed, to := punched}}],
                 events_in(A, [macula_nat, connection])),
    ?assertMatch([{[macula_nat, punch, stop], #{duration := _},
                   #{peer := BHex, outcome := success, upgrade := true}}],
                 events_in(A, [macula_nat, punch])),
    %% The side that accepted sees the move once packets come the new way.
    [ok = peer:call(A, macula_relay_node_tests, holder_do,
                    [ta, fun(R, _) -> macula_connection:send(maps:get(connection, element(2, R)), {n, I}) end])
     || I <- lists:seq(1, 20)],
    ok = wait(fun() -> [] =/= events_in(B, [macula_nat, connection]) end, 15000),
    ?assertMatch([{[macula_nat, connection, method_changed], #{duration := _, system_time := _},
                   #{peer := AHex, from := relayed, to := punched}}],
                 events_in(B, [macula_nat, connection])),
    ok = peer:call(A, macula_relay_node_tests, holder_stop, [ta]),
    ok = peer:call(B, macula_relay_node_tests, holder_stop, [tb]),
    ok = wait(fun() -> length(events([macula_nat, relay])) >= 2 end, 15000),
    ?assertMatch([{[macula_nat, relay, session, start], #{system_time := _, monotonic_time := _},
                   #{peer_a := AHex, peer_b := BHex, session := _}},
                  {[macula_nat, relay, session, stop], #{bytes := Bytes, duration := _},
                   #{peer_a := AHex, peer_b := BHex, reason := _}}] when Bytes > 0,
                 events([macula_nat, relay])),
    ok = macula_relay_node:disable().

%% The recorder: a table owned by a process of its own, filled by a
%% handler (telemetry runs it in the emitting process).

-spec record_start() -> ok.
record_start() ->
    Self = self(),
    spawn(fun() ->
                  ets:new(?MODULE, [named_table, public, ordered_set]),
                  Self ! {?MODULE, ready},
                  receive stop -> ok end
          end),
    receive {?MODULE, ready} -> ok after 5000 -> error(recorder_not_ready) end,
    ok = telemetry:attach_many(?MODULE, ?EVENTS, fun ?MODULE:record/4, ?MODULE).

-spec record(list(), map(), map(), atom()) -> true.
record(Event, Measurements, Metadata, Tab) ->
    ets:insert(Tab, {erlang:unique_integer([monotonic]), Event, Measurements, Metadata}).

-spec recorded() -> [{list(), map(), map()}].
recorded() ->
    [{E, M, Meta} || {_, E, M, Meta} <- ets:tab2list(?MODULE)].

-spec clear() -> ok.
clear() ->
    true = ets:delete_all_objects(?MODULE),
    ok.

events(Prefix) ->
    [E || {Name, _, _} = E <- recorded(), lists:prefix(Prefix, Name)].

events_in(Peer, Prefix) ->
    [E || {Name, _, _} = E <- peer:call(Peer, ?MODULE, recorded, []), lists:prefix(Prefix, Name)].
