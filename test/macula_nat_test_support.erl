%% @doc Helpers shared by the EUnit modules (not a test module itself).
-module(macula_nat_test_support).

-export([wait/2, repo_root/0, serve_loopback_rendezvous/0, start_dht_swarm/0, start_peer/1,
         echo_on/1, roundtrip/2]).

%% @doc Polls `F' every 20 ms until it returns `true' (`ok') or `Ms' run
%% out (`timeout', after one last look).
-spec wait(fun(() -> term()), integer()) -> ok | timeout.
wait(F, Ms) when Ms =< 0 ->
    case F() of
        true -> ok;
        _ -> timeout
    end;
wait(F, Ms) ->
    case F() of
        true -> ok;
        _ -> timer:sleep(20), wait(F, Ms - 20)
    end.

%% @doc Starts macula_nat on 127.0.0.1 in this VM and makes it a rendezvous:
%% {NodeId, <<"127.0.0.1:Port">>} to join it with.
-spec serve_loopback_rendezvous() -> {binary(), binary()}.
serve_loopback_rendezvous() ->
    application:set_env(macula_nat, listen_ip, {127, 0, 0, 1}),
    {ok, _} = application:ensure_all_started(macula_nat),
    ok = macula_nat_coordinator:serve_rendezvous(),
    {ok, Me} = macula:get_node_id(),
    {ok, {_, Port}} = macula_nat_node:local_addr(),
    {Me, iolist_to_binary(["127.0.0.1:", integer_to_list(Port)])}.

%% @doc Starts a peer VM with this code path whose macula_nat is
%% configured as a user would: the application environment only (`Env',
%% on 127.0.0.1), then started.
-spec start_peer([{atom(), term()}]) -> pid().
start_peer(Env) ->
    {ok, P, _} = peer:start_link(#{connection => standard_io, args => ["-pa" | code:get_path()]}),
    ok = peer:call(P, application, set_env, [macula_nat, listen_ip, {127, 0, 0, 1}]),
    [ok = peer:call(P, application, set_env, [macula_nat, K, V]) || {K, V} <- Env],
    {ok, _} = peer:call(P, application, ensure_all_started, [macula_nat]),
    P.

%% @doc Starts a private mainline DHT swarm of 20 nodes on loopback
%% (`macula-dht-swarm'; closing the port ends it): the port and the
%% swarm's bootstrap addresses.
-spec start_dht_swarm() -> #{port := port(), bootstrap := [binary()]}.
start_dht_swarm() ->
    Bin = filename:join([repo_root(), "target", "release", "macula-dht-swarm"]),
    %% scripts/test.sh builds it; a missing binary is a failure, not a skip.
    true = filelib:is_regular(Bin),
    Port = open_port({spawn_executable, Bin}, [{args, ["20"]}, {line, 65536}, binary, exit_status]),
    receive
        {Port, {data, {eol, <<"bootstrap ", Boot/binary>>}}} ->
            #{port => Port, bootstrap => binary:split(Boot, <<",">>, [global])}
    after 30000 ->
        error(swarm_not_ready)
    end.

%% @doc The repository root (where Cargo.toml is), for the Rust binaries
%% the tests drive.
-spec repo_root() -> file:filename().
repo_root() ->
    root(filename:dirname(code:which(?MODULE))).

root("/") -> error(repo_root_not_found);
root(Dir) ->
    case filelib:is_regular(filename:join(Dir, "Cargo.toml")) of
        true -> Dir;
        false -> root(filename:dirname(Dir))
    end.

%% @doc In peer VM `B': accepts one connection and echoes its first term
%% back as `{echo, T}', then holds the connection until it closes (30 s).
%% `T' must decode safely in the peer: an atom the peer has never seen
%% arrives as `{unsafe_message, Bin}' and is not echoed.
-spec echo_on(node() | pid()) -> pid().
echo_on(B) ->
    peer:call(B, erlang, spawn, [fun() ->
        {ok, C} = macula_connection:accept(30000),
        receive {macula_connection, C, {message, T}} -> ok = macula_connection:send(C, {echo, T}) end,
        receive {macula_connection, C, {closed, _}} -> ok after 30000 -> ok end
    end]).

%% @doc Sends `T' on `C' and waits (10 s) for the peer's `{echo, T}'.
-spec roundtrip(term(), term()) -> ok | timeout.
roundtrip(C, T) ->
    ok = macula_connection:send(C, T),
    receive {macula_connection, C, {message, {echo, T}}} -> ok after 10000 -> timeout end.
