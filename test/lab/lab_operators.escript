#!/usr/bin/env escript
%%! -pa _build_lab
%% A default that works across operators (issue 20): three operators, each
%% a public lab host running one Erlang VM that is both its rendezvous
%% (`rendezvous_server => true') and its relay (`macula_relay_node'), a
%% private mainline swarm on a fourth public host (`macula-dht-swarm
%% --bind'), a STUN observer, and six nodes behind different NATs spread
%% over the operators (two each). Every node is a BEAM VM (Erlang or
%% Elixir) configured through the application environment only:
%% `observers', `rendezvous' (its own operator's first, a second
%% operator's next), `relays' (the same two operators) and `dht'. It
%% detects its NAT, joins its rendezvous and advertises its signed record
%% (which names both rendezvous with their node ids) by itself.
%%
%% Per pair, B accepts (`macula_connection:accept/1') and A calls
%% `macula_nat_connector:connect(BId, #{timeout => 10000})' with nothing
%% but B's node id: B at A's own rendezvous is reached through it; B at
%% another operator's is found through its record in the DHT and reached
%% through that operator's rendezvous (guest signalling). The method must
%% be the one the strategy table gives for the two detected profiles
%% (outcome/1), on both ends, and a term goes A -> B and one B -> A.
%%
%% Two rounds, each on fresh VMs:
%%   1. dht = mainline (the private swarm): every ordered pair; then
%%      operator op1's VM is killed (rendezvous and relay), and every
%%      unordered pair is connected again at once (every node is joined
%%      at both rendezvous it lists, and reserved at both relays).
%%   2. dht = {module, 'Elixir.MaculaLab.FileDht'} (a host DHT written in
%%      Elixir, records as files: the namespaces share the filesystem):
%%      every unordered pair; then op2 is killed and every unordered pair
%%      connects again.
%% Prints the rows, writes them as markdown to the file named by the first
%% argument, exits 1 on any failure. Run by lab_operators.sh.
-mode(compile).

-import(macula_lab_pairs, [start_vm/5, await_ready/4, slots/2, strategy_table/0,
                           table_strategy/3, prof/1, flat/1, close_both/4, expect_msg/3,
                           flush/0, pmap/2, wait/2, now_ms/0]).

-define(PORT, 4433).
-define(OBS_PORT, 3478).
-define(OBS_ALT_PORT, 3479).
-define(CONNECT_TIMEOUT, 10000).
-define(DETECTIONS_AT_ONCE, 3).
-define(SWARM_NODES, 20).
-define(ELIXIR_DHT, 'Elixir.MaculaLab.FileDht').

lab() -> os:getenv("MACULA_LAB_NAME", "lrops").

operators() -> ["op1", "op2", "op3"].

%% {host, lab NAT, VM, own operator, second operator}. Names [a-z0-9_].
lab_nodes() ->
    [{"fc", full_cone, erlang, "op1", "op2"},
     {"prc", port_restricted_cone, elixir, "op1", "op3"},
     {"sym", symmetric, erlang, "op2", "op3"},
     {"rc", restricted_cone, elixir, "op2", "op1"},
     {"sym2", symmetric, erlang, "op3", "op1"},
     {"pub", public, erlang, "op3", "op2"}].

hosts() -> [H || {H, _, _, _, _} <- lab_nodes()].
node_of(H) -> lists:keyfind(H, 1, lab_nodes()).

%% What each kernel kind detects as (lab_detection.rs).
want(H) ->
    case element(2, node_of(H)) of
        full_cone -> "ei-ei-pp";
        restricted_cone -> "ei-hd-pp";
        port_restricted_cone -> "ei-pd-pp";
        symmetric -> "pd-pd-rd";
        public -> "ei-ei-pp"
    end.

%% Methods connect/2 may answer for the table's strategy (its relay
%% fallback is on by default; every node reserves at two operators' relays).
outcome(direct) -> [direct];
%% The random-port side dials the addressable one, which opened its filter.
outcome(connection_reversal) -> [direct];
outcome(simple_punch) -> [punched];
outcome(predict_preservation) -> [punched];
outcome(predict_contiguity) -> [punched];
%% p = 0.99 by design; a miss falls back to the relay.
outcome(birthday_probing) -> [punched, relayed];
outcome(relay) -> [relayed].

%% Round: {name, dht, which pairs before the kill, operator killed}.
rounds(Bootstrap, DhtDir) ->
    [#{name => "mainline", dht => {mainline, #{bootstrap => Bootstrap}}, extra_env => #{},
       before => ordered, kill => "op1"},
     #{name => "host DHT in Elixir", dht => {module, ?ELIXIR_DHT},
       extra_env => #{{macula_lab, dht_dir} => DhtDir}, before => unordered, kill => "op2"}].

%%% ---------------------------------------------------------------- main

main(Args) ->
    Out = case Args of [F | _] -> F; [] -> undefined end,
    ok = macula_lab:available(),
    macula_lab:reap(),
    Sites = [io_lib:format("{\"name\":\"~s\",\"nat\":\"kernel:~s\"}", [H, K])
             || {H, K, _, _, _} <- lab_nodes(), K =/= public],
    Public = operators() ++ ["dht" | [H || {H, public, _, _, _} <- lab_nodes()]],
    Spec = iolist_to_binary(["{\"name\":\"", lab(), "\",\"seed\":20,\"routed_internet\":true,"
                             "\"observers\":[\"obs\"],\"public\":[",
                             lists:join(",", ["\"" ++ P ++ "\"" || P <- Public]), "],\"sites\":[",
                             lists:join(",", Sites), "]}"]),
    T0 = now_ms(),
    {ok, _} = macula_lab:up(Spec),
    io:format("lab up in ~b ms~n", [now_ms() - T0]),
    DhtDir = filename:join("/tmp", "macula_lab_ops_dht_" ++ os:getpid()),
    ok = filelib:ensure_path(DhtDir),
    Rc = try run(Out, T0, DhtDir)
         catch C:R:St -> io:format("FAILED: ~p:~p~n~p~n", [C, R, St]), 1
         after
             macula_lab:down(lab()),
             file:del_dir_r(DhtDir)
         end,
    io:format("total ~b ms~n", [now_ms() - T0]),
    halt(Rc).

run(Out, T0, DhtDir) ->
    Table = strategy_table(),
    {ObsIp, ObsAlt} = macula_lab:observer_ips(lab(), "obs"),
    Bin = filename:dirname(macula_lab:bin()),
    ObsPort = macula_lab:spawn_port(lab(), "obs",
                                    [filename:join(Bin, "macula-observer"),
                                     "--primary", ObsIp ++ ":" ++ integer_to_list(?OBS_PORT),
                                     "--alternate", ObsAlt ++ ":" ++ integer_to_list(?OBS_ALT_PORT)]),
    receive {ObsPort, {data, {eol, <<"macula-observer", _/binary>>}}} -> ok
    after 10000 -> error(observer_not_ready)
    end,
    %% The private mainline swarm on its public host: the nodes bootstrap
    %% from its addresses (what `bootstrap' is for: a private swarm).
    DhtIp = macula_lab:host_addr(lab(), "dht"),
    SwarmPort = macula_lab:spawn_port(lab(), "dht", [filename:join(Bin, "macula-dht-swarm"),
                                                     integer_to_list(?SWARM_NODES), "--bind", DhtIp]),
    Bootstrap = receive
                    {SwarmPort, {data, {eol, <<"bootstrap ", B/binary>>}}} ->
                        binary:split(B, <<",">>, [global])
                after 30000 -> error(swarm_not_ready)
                end,
    io:format("observer ~s, swarm of ~b nodes on ~s, ready ~b ms after the start~n",
              [ObsIp, ?SWARM_NODES, DhtIp, now_ms() - T0]),
    Observer = iolist_to_binary([ObsIp, ":", integer_to_list(?OBS_PORT)]),
    Base = #{listen_ip => {0, 0, 0, 0}, listen_port => ?PORT, detection_timeout_ms => 3000,
             observers => [Observer]},
    Results = [round(R, Base, Table) || R <- rounds(Bootstrap, DhtDir)],
    Rows = lists:append([Rs || #{rows := Rs} <- Results]),
    [print_rows(N, Rs) || #{name := N, rows := Rs} <- Results],
    Fails = [R || #{ok := false} = R <- Rows],
    [io:format("FAIL ~s ~s: ~p~n", [Ph, N, D]) || #{phase := Ph, name := N, detail := D} <- Fails],
    io:format("~b pairs: ~b ok, ~b failed~n", [length(Rows), length(Rows) - length(Fails), length(Fails)]),
    write_md(Out, Results, now_ms() - T0),
    catch port_close(SwarmPort),
    catch port_close(ObsPort),
    case Fails of [] -> 0; _ -> 1 end.

%%% ---------------------------------------------------------------- one round

round(#{name := Name, dht := Dht, extra_env := Extra, before := Before, kill := Kill}, Base, Table) ->
    Me = self(),
    T0 = now_ms(),
    OpEnv = maps:merge(Base#{rendezvous_server => true, dht => Dht}, Extra),
    Ops = maps:from_list(pmap(fun(O) -> {O, start_vm(lab(), O, erlang, OpEnv, Me)} end, operators())),
    OpIds = maps:map(fun(_, P) ->
                             ok = macula_lab_peer:call(P, macula_relay_node, enable, []),
                             {ok, Id} = macula_lab_peer:call(P, macula, get_node_id, []),
                             Id
                     end, Ops),
    Contact = fun(O) -> #{endpoint => iolist_to_binary([macula_lab:host_addr(lab(), O), ":",
                                                         integer_to_list(?PORT)]),
                          node_id => maps:get(O, OpIds)}
              end,
    Env = fun(H) ->
                  {_, _, _, Own, Second} = node_of(H),
                  maps:merge(Base#{rendezvous => [Contact(Own), Contact(Second)],
                                   relays => [Contact(Own), Contact(Second)], dht => Dht}, Extra)
          end,
    Nodes = maps:from_list(pmap(fun({H, _, Lang, _, _}) -> {H, start_vm(lab(), H, Lang, Env(H), Me)} end,
                                lab_nodes())),
    T1 = now_ms(),
    Slots = #{detect => spawn_link(fun() -> slots(?DETECTIONS_AT_ONCE, []) end)},
    %% Ready: detected (as the lab's NAT), reserved at both relays listed.
    Info = maps:from_list(
             pmap(fun(H) ->
                          {_, _, _, Own, Second} = node_of(H),
                          Want = [maps:get(Own, OpIds), maps:get(Second, OpIds)],
                          Reserved = fun(Rs) -> Want -- [I || #{node_id := I} <- Rs] =:= [] end,
                          {H, await_ready(Slots, maps:get(H, Nodes), want(H), Reserved)}
                  end, hosts())),
    Id = fun(H) -> maps:get(id, maps:get(H, Info)) end,
    %% Joined at its own operator's rendezvous, and its record in the DHT
    %% (fetched by an operator's VM, so no node's cache holds it).
    Registered = fun(O) -> [I || {I, _} <- macula_lab_peer:call(maps:get(O, Ops), macula_nat_coordinator,
                                                                 rendezvous_peers, [])]
                 end,
    ok = wait(fun() -> lists:all(fun({H, _, _, Own, _}) -> lists:member(Id(H), Registered(Own)) end,
                                 lab_nodes())
              end, 30000),
    Fetcher = maps:get("op3", Ops),
    ok = wait(fun() -> lists:all(fun(H) -> ok =:= element(1, macula_lab_peer:call(Fetcher, macula_nat_cache,
                                                                                 get_from_dht, [Id(H)], 15000))
                                 end, hosts())
              end, 30000),
    %% A node joins every rendezvous it lists: at the second one too
    %% (in the background, retrying with backoff).
    AtBoth = wait(fun() -> lists:all(fun({H, _, _, _, Second}) -> lists:member(Id(H), Registered(Second)) end,
                                     lab_nodes())
                  end, 15000),
    Joined = maps:from_list([{H, [O || O <- operators(), lists:member(Id(H), Registered(O))]}
                             || H <- hosts()]),
    AtBoth =:= ok orelse error({not_joined_at_both, Joined}),
    io:format("~n== round ~s: ~b VMs up in ~b ms, detected, reserved, joined and advertised ~b ms later~n",
              [Name, 3 + length(hosts()), T1 - T0, now_ms() - T1]),
    [io:format("  ~-5s ~-7s ~-21s profile ~-10s joined at ~s, listed ~s+~s, detections ~s~n",
               [H, L, K, prof(maps:get(profile, maps:get(H, Info))), lists:join("+", maps:get(H, Joined)),
                Own, Second, lists:join(", ", lists:reverse(maps:get(detections, maps:get(H, Info))))])
     || {H, K, L, Own, Second} <- lab_nodes()],
    Ctx = #{nodes => Nodes, info => Info, table => Table},
    Pairs = case Before of
                ordered -> [{A, B} || A <- hosts(), B <- hosts(), A =/= B];
                unordered -> unordered()
            end,
    T2 = now_ms(),
    Rows1 = [pair(Ctx#{phase => Name, via => via(Joined, A, B)}, A, B) || {A, B} <- Pairs],
    io:format("~b pairs in ~b ms~n", [length(Rows1), now_ms() - T2]),
    %% An operator's VM dies (rendezvous and relay with it).
    KillPeer = maps:get(Kill, Ops),
    #{os_pid := OsPid} = macula_lab_peer:info(KillPeer),
    _ = os:cmd("kill -9 " ++ OsPid),
    receive {macula_lab_peer_down, KillPeer, _} -> ok after 5000 -> error({not_killed, Kill}) end,
    T3 = now_ms(),
    KillPhase = flat(io_lib:format("~s, ~s killed", [Name, Kill])),
    %% Nodes joined at two stay reachable: every pair must connect, at
    %% once (no wait for the nodes to notice the death). The node that
    %% listed the dead rendezvous is B where the other did not:
    %% reachability is what is checked.
    Listed = [H || {H, _, _, Own, Second} <- lab_nodes(), Own =:= Kill orelse Second =:= Kill],
    Pairs2 = [case lists:member(A, Listed) andalso not lists:member(B, Listed) of
                  true -> {B, A};
                  false -> {A, B}
              end || {A, B} <- unordered()],
    Rows2 = [pair(Ctx#{phase => KillPhase, via => via(Joined, A, B)}, A, B) || {A, B} <- Pairs2],
    io:format("~b pairs after ~s died in ~b ms~n", [length(Rows2), Kill, now_ms() - T3]),
    [macula_lab_peer:stop(P) || P <- maps:values(Nodes) ++ maps:values(maps:remove(Kill, Ops))],
    flush(),
    #{name => Name, kill => Kill, info => Info, joined => Joined, rows => Rows1 ++ Rows2,
      ms => now_ms() - T0}.

%% Whether A's first rendezvous (its primary) knew B before the kill: then
%% A signals through it; else it finds B through B's record in the DHT.
via(Joined, A, B) ->
    case lists:member(element(4, node_of(A)), maps:get(B, Joined)) of
        true -> "A's";
        false -> "B's record"
    end.

unordered() ->
    Hs = hosts(),
    [{A, B} || {I, A} <- lists:enumerate(Hs), {J, B} <- lists:enumerate(Hs), I < J].

%%% ---------------------------------------------------------------- one pair

pair(#{nodes := Nodes, info := Info, table := Table, phase := Phase} = Ctx, A, B) ->
    Name = flat(io_lib:format("~s (~s) -> ~s (~s)", [A, element(4, node_of(A)), B, element(4, node_of(B))])),
    Via = maps:get(via, Ctx),
    Row = try pair1(Nodes, Info, Table, A, B, Name, ?CONNECT_TIMEOUT) of
              R0 -> R0#{phase => Phase, via => Via}
          catch C:R:St ->
                  #{phase => Phase, name => Name, strategy => undefined, expect => [], got => {crash, C, R},
                    b_method => none, connect_ms => 0, first_ms => 0, ok => false, detail => {C, R, St}}
          end,
    #{strategy := S, expect := E, got := G, connect_ms := CMs, first_ms := FMs, ok := Ok} = Row,
    io:format("  ~-26s ~-20s ~-16s ~-10s ~5b ms ~5b ms  ~s~n",
              [Name, S, fmt_expect(E), fmt(G), CMs, FMs, okfail(Ok)]),
    Row.

pair1(Nodes, Info, Table, A, B, Name, Tmo) ->
    PA = maps:get(A, Nodes), PB = maps:get(B, Nodes),
    #{profile := ProfA} = maps:get(A, Info),
    #{id := BId, profile := ProfB} = maps:get(B, Info),
    S = table_strategy(Table, ProfA, ProfB),
    Methods = outcome(S),
    Me = self(),
    %% B's mailbox is busy until its accept returns: not much longer
    %% than the connect may take.
    AccTmo = Tmo + 2000,
    %% B accepts in its mailbox: the connection belongs to the mailbox and
    %% its messages are forwarded to us.
    Acc = spawn_link(fun() ->
                             R = macula_lab_peer:call_mailbox(PB, macula_connection, accept,
                                                              [AccTmo], AccTmo + 5000),
                             Me ! {accepted, self(), R}
                     end),
    timer:sleep(100),
    T = now_ms(),
    %% By node id alone: the documented connect/2.
    Got = macula_lab_peer:call_mailbox(PA, macula_nat_connector, connect,
                                       [BId, #{timeout => Tmo}], Tmo + 10000),
    ConnMs = now_ms() - T,
    AccRes = receive {accepted, Acc, R} -> R after AccTmo + 10000 -> accept_timeout end,
    {Ok, Detail, BMethod, FirstMs, AMethod} =
        case {Got, AccRes} of
            {{ok, CA}, {ok, CB}} ->
                %% The first message goes at once: its arrival at B (seen
                %% here) is the pair's time to first message.
                TA = {<<"from a">>, list_to_binary(Name)},
                ok = macula_lab_peer:call(PA, macula_connection, send, [CA, TA]),
                R1 = expect_msg(PB, CB, TA),
                First = now_ms() - T,
                %% connect/2 answers the connection only: the method is
                %% what A's and B's connections say.
                M = macula_lab_peer:call(PA, macula_connection, get_info, [CA, connection_method]),
                InfoA = M,
                InfoB = macula_lab_peer:call(PB, macula_connection, get_info, [CB, connection_method]),
                TB = {<<"from b">>, #{ok => <<"reply">>}},
                ok = macula_lab_peer:call(PB, macula_connection, send, [CB, TB]),
                R2 = expect_msg(PA, CA, TB),
                close_both({ok, CA, M}, AccRes, PA, PB),
                case {lists:member(M, Methods), InfoA =:= M, InfoB =:= M, R1, R2} of
                    {true, true, true, ok, ok} -> {true, ok, InfoB, First, M};
                    {false, _, _, _, _} -> {false, {unexpected_method, M}, InfoB, First, M};
                    {_, _, _, ok, ok} -> {false, {get_info, a, InfoA, b, InfoB}, InfoB, First, M};
                    _ -> {false, {a_to_b, R1, b_to_a, R2}, InfoB, First, M}
                end;
            _ ->
                close_both(Got, AccRes, PA, PB),
                {false, {connect, Got, accept, AccRes}, none, 0, Got}
        end,
    timer:sleep(100),
    flush(),
    #{name => Name, strategy => S, expect => Methods, got => AMethod, b_method => BMethod,
      connect_ms => ConnMs, first_ms => FirstMs, ok => Ok, detail => Detail}.

%%% ---------------------------------------------------------------- report

print_rows(Round, Rows) ->
    io:format("~nround ~s:~n~-34s ~-26s ~-20s ~-16s ~-10s ~8s ~8s  ~s~n",
              [Round, "phase", "pair (A -> B)", "strategy", "expected", "got", "connect", "1st msg", "result"]),
    [io:format("~-34s ~-26s ~-20s ~-16s ~-10s ~5b ms ~5b ms  ~s~n",
               [Ph, N, S, fmt_expect(E), fmt(G), C, F, okfail(Ok)])
     || #{phase := Ph, name := N, strategy := S, expect := E, got := G, connect_ms := C,
          first_ms := F, ok := Ok} <- Rows].

write_md(undefined, _, _) -> ok;
write_md(File, Results, Total) ->
    {{Y, Mo, D}, _} = calendar:universal_time(),
    Rows = lists:append([Rs || #{rows := Rs} <- Results]),
    Md = [io_lib:format("_Generated by `test/lab/lab_operators.sh` on ~4..0b-~2..0b-~2..0b, "
                        "~b cores shared with other work; do not edit by hand._~n~n",
                        [Y, Mo, D, erlang:system_info(logical_processors)]),
          "# Nodes of three operators reaching each other by node id\n\n"
          "One NAT lab (`test/lab/lab_operators.escript`, routed internet): three operators "
          "`op1`..`op3`, each a public host running one Erlang VM that is its rendezvous "
          "(`rendezvous_server => true`) and its relay (`macula_relay_node:enable/0`); a STUN "
          "observer; a private mainline swarm of 20 nodes on a public host `dht` "
          "(`macula-dht-swarm --bind`); six nodes behind kernel NATs (and one public), two per "
          "operator. Each node is a VM configured through the application environment only: "
          "`observers`, `rendezvous` = its own operator's rendezvous then a second operator's "
          "(with node ids), `relays` = the same two operators, `dht`. Per pair B runs "
          "`macula_connection:accept/1` and A `macula_nat_connector:connect(BId, #{timeout => "
          "10000})`, B's node id being all A knows of it: a B of another operator is found "
          "through its signed record in the DHT and reached through a rendezvous it names. "
          "The method must be the one the strategy table (`bench/strategy_table.md`) gives for "
          "the two detected profiles, on both ends; a term goes each way. `connect`: wall time of "
          "`connect/2`; `1st msg`: from the connect call to A's first message arriving at B "
          "(both seen from the test, which adds an RPC hop into each VM, well under 1 ms). "
          "Sequential pairs; each round on fresh VMs.\n\n"
          "Round 1 uses the mainline swarm (`dht => {mainline, #{bootstrap => [...]}}`), "
          "round 2 a host DHT written in Elixir (`test/lab/macula_lab_file_dht.ex`, "
          "`dht => {module, 'Elixir.MaculaLab.FileDht'}`: records as files, the namespaces "
          "share the filesystem). In each round, after the pairs, one operator's VM is killed "
          "(`kill -9`: its rendezvous and its relay) and every unordered pair connects again, "
          "the node that listed the dead operator being B when only one did (reachability is "
          "what is checked), at once after the kill. Every node must be joined at both "
          "rendezvous it lists before the kill (`joined at`).\n\n",
          [round_md(R) || R <- Results],
          io_lib:format("~n~b pairs: ~b ok, ~b failed. Whole run (lab up, swarm, ~b VMs in two "
                        "rounds, detection, joins, pairs; teardown excluded): ~.1f s.~n",
                        [length(Rows), length([R || #{ok := true} = R <- Rows]),
                         length([R || #{ok := false} = R <- Rows]), 2 * (3 + length(hosts())),
                         Total / 1000])],
    ok = file:write_file(File, Md).

round_md(#{name := Name, kill := Kill, info := Info, joined := Joined, rows := Rows, ms := Ms}) ->
    [io_lib:format("## Round: ~s (~.1f s)~n~n", [Name, Ms / 1000]),
     "| node | VM | lab NAT | detected | rendezvous listed | joined at |\n|---|---|---|---|---|---|\n",
     [io_lib:format("| ~s | ~s | ~s | ~s | ~s, ~s | ~s |~n",
                    [H, L, K, prof(maps:get(profile, maps:get(H, Info))), Own, Second,
                     lists:join(", ", maps:get(H, Joined))])
      || {H, K, L, Own, Second} <- lab_nodes()],
     io_lib:format("~nPairs (A's operator in brackets); then ~s killed.~n~n", [Kill]),
     "`rendezvous`: `A's` when B was joined at A's first rendezvous (before the kill), else "
     "`B's record` (found through B's record in the DHT).\n\n"
     "| phase | pair (A -> B) | rendezvous | strategy | expected | method (A) | B's get_info | connect ms | 1st msg ms | result |\n"
     "|---|---|---|---|---|---|---|---|---|---|\n",
     [io_lib:format("| ~s | ~s | ~s | ~s | ~s | ~s | ~s | ~b | ~b | ~s |~n",
                    [Ph, N, maps:get(via, R, "-"), S, fmt_expect(E), fmt(G), fmt_b(B), C, F, okfail(Ok)])
      || #{phase := Ph, name := N, strategy := S, expect := E, got := G, b_method := B,
           connect_ms := C, first_ms := F, ok := Ok} = R <- Rows],
     summary_md(Rows),
     "\n"].

%% Medians of the connected pairs, same operator's rendezvous vs another's.
summary_md(Rows) ->
    Phases = lists:usort([Ph || #{phase := Ph} <- Rows]),
    [summary_md(Ph, [R || #{phase := P} = R <- Rows, P =:= Ph]) || Ph <- Phases].

summary_md(Phase, Rows) ->
    Line = fun(Label, Rs) ->
                   case [R || #{ok := true} = R <- Rs] of
                       [] -> [];
                       Ok -> io_lib:format("~s, ~s: ~b pairs, connect median ~b ms (max ~b), first message "
                                           "median ~b ms.~n",
                                           [Phase, Label, length(Ok), median([C || #{connect_ms := C} <- Ok]),
                                            lists:max([C || #{connect_ms := C} <- Ok]),
                                            median([F || #{first_ms := F} <- Ok])])
                   end
           end,
    ["\n", Line("B at A's first rendezvous", [R || #{via := "A's"} = R <- Rows]),
     "\n", Line("B found through its record in the DHT", [R || #{via := "B's record"} = R <- Rows])].

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

fmt_b(none) -> "-";
fmt_b(M) -> io_lib:format("~p", [M]).

fmt(M) when is_atom(M) -> atom_to_list(M);
fmt({error, E}) -> io_lib:format("{error,~p}", [E]);
fmt(Other) -> io_lib:format("~p", [Other]).

fmt_expect(Ms) -> string:join([atom_to_list(M) || M <- Ms], " or ").

okfail(true) -> "ok";
okfail(false) -> "FAIL".
