%% @doc Owner of the node: its identity (ed25519 key, NodeId = public key)
%% and the one UDP socket that carries STUN, punch packets and QUIC.
%%
%% The Rust side monitors this process and closes the socket the moment it
%% dies, so a restart binds afresh. Readers never go through this process's
%% mailbox: they read the protected ETS table it owns.
-module(macula_nat_node).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, node_id/0, resource/0, local_addr/0, stats/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TABLE, ?MODULE).
%% A killed predecessor's socket is closed by the VM asynchronously; give it
%% a moment before declaring the port taken.
-define(BIND_RETRIES, 20).
-define(BIND_RETRY_MS, 25).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc The 32-byte NodeId of this node.
-spec node_id() -> {ok, binary()} | {error, not_started}.
node_id() -> lookup(node_id).

%% @doc The node's Rust resource, for the other children of the system.
-spec resource() -> {ok, macula_nat_nif:resource()} | {error, not_started}.
resource() -> lookup(resource).

%% @doc Local address of the node's UDP socket.
-spec local_addr() -> {ok, {inet:ip_address(), inet:port_number()}} | {error, not_started}.
local_addr() -> lookup(local_addr).

%% @doc Datagram and byte counters of the node's socket, and its port
%% mapping: `port_mapping' is `undefined' or
%% `#{protocol => pcp | natpmp | upnp, external => {Ip, Port}}'.
-spec stats() -> {ok, map()} | {error, not_started}.
stats() ->
    case resource() of
        {ok, Res} -> {ok, macula_nat_nif:node_stats(Res)};
        Error -> Error
    end.

lookup(Key) ->
    try ets:lookup(?TABLE, Key) of
        [{Key, Value}] -> {ok, Value};
        [] -> {error, not_started}
    catch
        error:badarg -> {error, not_started}
    end.

%% gen_server

-spec init(map()) -> {ok, map()} | {stop, term()}.
init(Opts) ->
    NifOpts = #{ip => maps:get(listen_ip, Opts),
                ip6 => maps:get(listen_ip6, Opts, undefined),
                port => maps:get(listen_port, Opts),
                key_file => key_file(maps:get(key_file, Opts)),
                port_mapping => maps:get(port_mapping, Opts, true),
                max_message_bytes => maps:get(max_message_bytes, Opts, 8388608),
                max_connections => maps:get(max_connections, Opts, 1024),
                max_connections_per_ip => maps:get(max_connections_per_ip, Opts, 32),
                fd_budget => maps:get(fd_budget, Opts, auto)},
    case open(NifOpts, ?BIND_RETRIES) of
        {ok, Res} ->
            {ok, NodeId} = macula_nat_nif:node_id(Res),
            {ok, Addr} = macula_nat_nif:node_local_addr(Res),
            ?TABLE = ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
            true = ets:insert(?TABLE, [{node_id, NodeId}, {resource, Res}, {local_addr, Addr}]),
            ?LOG_INFO("macula_nat node ~s listening on ~s",
                      [macula_nat_id:format(NodeId), macula_nat_endpoint:format(Addr)]),
            {ok, #{resource => Res}};
        {error, Reason} ->
            ?LOG_ERROR("macula_nat node failed to open: ~p", [Reason]),
            {stop, Reason}
    end.

key_file(undefined) -> undefined;
key_file(Path) -> unicode:characters_to_binary(Path).

open(NifOpts, Retries) ->
    case macula_nat_nif:node_open(NifOpts) of
        {error, {io, _}} when Retries > 0 ->
            timer:sleep(?BIND_RETRY_MS),
            open(NifOpts, Retries - 1);
        Other ->
            Other
    end.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% The node's socket failed for good (its receive loop ended on an error)
%% and the node closed: stop, so the supervisor restarts the node (and,
%% `rest_for_one', everything built on it) on a fresh socket.
-spec handle_info(term(), map()) -> {noreply, map()} | {stop, term(), map()}.
handle_info({macula_nat_node, failed, Reason}, State) ->
    ?LOG_ERROR("macula_nat node socket failed: ~ts", [Reason]),
    {stop, {socket_failed, Reason}, State};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{resource := Res}) ->
    macula_nat_nif:node_close(Res).
