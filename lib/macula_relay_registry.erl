%% @doc Distributed registry of relay-capable nodes.
%%
%% A relay registers itself (`register(MyNodeId, MyEndpoint)'): its signed
%% record in the DHT then says "I relay", with its load (0.0 .. 1.0, in
%% steps of 0.05, republished when it moves a step and at half the record's
%% TTL). Every node learns relays from `register/2' calls for other nodes,
%% from the `relays' option, and from any relay's record its cache fetches
%% (e.g. `macula_nat_cache:get_from_dht/1'). Every `relay_refresh_ms' (5000)
%% it fetches each relay's record again (load; a relay whose record stops
%% saying "I relay" is dropped) and times it with a STUN Binding request
%% from the node's own socket; a relay that stops answering is dropped from
%% the choice after two rounds.
%%
%% Choice: score = smoothed RTT (ms) + 20 / (1 - load), lower is better
%% (an idle relay costs its path plus 20 ms of forwarding; at load 0.9 the
%% forwarding term is 200 ms); a full relay is never chosen. The current
%% relay is kept until another scores at least 20% lower in two consecutive
%% rounds, so nodes do not flap between relays; a current relay that dies
%% is replaced at once.
%%
%% Reads (`find_relay/1', `relays/0') go from the caller to the Rust
%% registry (one short lock), never through this process and never waiting
%% on the network.
%%
%% For the relay server: `set_load/1' (the advertised load),
%% `unregister/1' (stop advertising; or forget another relay),
%% `report_failure/1' (a relay that could not be used is not chosen again
%% until it answers a probe), `subscribe/0' (`{macula_relay_registry,
%% relays_changed}' when the chosen relay or the set of usable relays
%% changes; subscribers are monitored).
%%
%% Registrations survive a restart of this process (they are replayed:
%% after a crash, or after the node or cache it is built on restarted,
%% which restarts it too: `macula_nat_system' is `rest_for_one') but not a
%% fresh start of the system.
%%
%% Calls take NodeIds as 32-byte binaries or their 64-character hex form
%% (either case); `relay_info()' gives the 32-byte form
%% (`macula:node_id_to_hex/1' prints it).
-module(macula_relay_registry).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, register/2, find_relay/1, relays/0, subscribe/0, unsubscribe/0,
         unregister/1, set_load/1, report_failure/1, forget/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type relay_info() :: #{node_id := binary(), endpoint := binary(),
                        latency_ms := non_neg_integer(), load := float()}.
-export_type([relay_info/0]).

-define(KEY, {?MODULE, resource}).
%% Registrations made through this module, replayed by a restarted server.
-define(REGISTERED, {?MODULE, registered}).
%% More than any node will ever know of; `relays/0' returns them all.
-define(ALL, 1000).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc `NodeId' relays at `Endpoint' (`<<"ip:port">>' as
%% `macula:get_public_endpoint/0' gives it, or `{Ip, Port}'). This node's
%% own id: advertise this node as a relay. Errors: `bad_node_id' (not a
%% 32-byte node key), `bad_endpoint', `not_running'.
-spec register(binary(), binary() | {inet:ip_address(), inet:port_number()}) -> ok | {error, term()}.
register(NodeId0, Endpoint) when is_binary(NodeId0) ->
    NodeId = macula_nat_id:normalize(NodeId0),
    case {byte_size(NodeId), macula_nat_endpoint:parse(Endpoint)} of
        {32, {ok, Addr}} -> call({register, NodeId, Addr});
        {32, {error, _} = Error} -> Error;
        _ -> {error, bad_node_id}
    end;
register(_, _) ->
    {error, badarg}.

%% @doc Forgets relay `NodeId'; this node's own id: stop advertising it as
%% a relay.
-spec unregister(binary()) -> ok | {error, term()}.
unregister(NodeId) when is_binary(NodeId) ->
    case macula_nat_id:normalize(NodeId) of
        <<_:32/binary>> = Id -> call({unregister, Id});
        _ -> {error, bad_node_id}
    end;
unregister(_) ->
    {error, badarg}.

%% @doc The relay to reach `TargetNodeId' through: one that the target's
%% cached record names as its contact if any is usable, else the best
%% relay; never the target itself. `latency_ms' is the smoothed round trip
%% from this node, `load' what the relay advertises.
-spec find_relay(binary()) -> {ok, relay_info()} | {error, no_relay | bad_node_id | badarg}.
find_relay(Target) when is_binary(Target) ->
    with_registry(fun(Res) -> macula_nat_nif:relay_registry_find(Res, macula_nat_id:normalize(Target)) end,
                  {error, no_relay});
find_relay(_) ->
    {error, badarg}.

%% @doc Every usable relay, best first (the current choice, then by score).
-spec relays() -> [relay_info()].
relays() ->
    with_registry(fun(Res) -> macula_nat_nif:relay_registry_best(Res, ?ALL) end, []).

%% @doc The calling process gets `{macula_relay_registry, relays_changed}'
%% whenever the chosen relay or the set of usable relays changes, until it
%% unsubscribes or dies.
-spec subscribe() -> ok | {error, not_running}.
subscribe() ->
    call({subscribe, self()}).

-spec unsubscribe() -> ok | {error, not_running}.
unsubscribe() ->
    call({unsubscribe, self()}).

%% @doc This node's load as a relay, 0.0 (idle) .. 1.0 (full), advertised
%% while it is registered as one. The relay server calls it.
-spec set_load(number()) -> ok | {error, badarg | not_running}.
set_load(Load) when is_number(Load), Load >= 0, Load =< 1 ->
    with_registry(fun(Res) -> macula_nat_nif:relay_registry_set_load(Res, Load) end, {error, not_running});
set_load(_) ->
    {error, badarg}.

%% @doc Relay `NodeId' could not be used (reservation refused, connection
%% failed): not chosen again until it answers a probe.
-spec report_failure(binary()) -> ok | {error, term()}.
report_failure(NodeId) when is_binary(NodeId) ->
    with_registry(fun(Res) -> macula_nat_nif:relay_registry_report_failure(Res, macula_nat_id:normalize(NodeId)) end,
                  {error, not_running});
report_failure(_) ->
    {error, badarg}.

%% @private Forgets the registrations a restarted server would replay
%% (`macula_nat_system' calls it when it starts).
-spec forget() -> ok.
forget() ->
    _ = persistent_term:erase(?REGISTERED),
    ok.

%% The running registry's resource (kept in a persistent term so that reads
%% skip the server process) given to `F'; `IfNotRunning' otherwise.
with_registry(F, IfNotRunning) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> IfNotRunning;
        Res -> F(Res)
    end.

call(Request) ->
    try
        gen_server:call(?MODULE, Request)
    catch
        exit:{noproc, _} -> {error, not_running};
        exit:{shutdown, _} -> {error, not_running}
    end.

%% gen_server

-spec init(map()) -> {ok, map()} | {stop, term()}.
init(Opts) ->
    process_flag(trap_exit, true),
    %% Built on the node's socket and the cache (its advertiser publishes
    %% our record); when either restarts, the supervisor restarts this
    %% server after them.
    case {macula_nat_node:resource(), macula_nat_cache:resource()} of
        {{ok, Node}, {ok, Cache}} ->
            NifOpts = #{refresh_ms => maps:get(relay_refresh_ms, Opts, 5000)},
            case macula_nat_nif:relay_registry_new(Node, Cache, NifOpts) of
                {ok, Res} ->
                    persistent_term:put(?KEY, Res),
                    State = #{res => Res, subs => #{}},
                    replay(Res, maps:get(relays, Opts, [])),
                    {ok, State};
                {error, Reason} ->
                    {stop, {relay_registry_new, Reason}}
            end;
        _ ->
            {stop, sources_not_running}
    end.

%% Static relays from the options, then what was registered before a crash.
replay(Res, Static) ->
    Configured = [{Id, Addr} || #{node_id := Id, endpoint := E} <- Static,
                                {ok, Addr} <- [macula_nat_endpoint:parse(E)]],
    Registered = maps:to_list(persistent_term:get(?REGISTERED, #{})),
    [ok = macula_nat_nif:relay_registry_register(Res, Id, Addr) || {Id, Addr} <- Configured ++ Registered],
    ok.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({register, NodeId, Addr}, _From, #{res := Res} = State) ->
    Reply = macula_nat_nif:relay_registry_register(Res, NodeId, Addr),
    Reply =:= ok andalso remember(fun(M) -> M#{NodeId => Addr} end),
    {reply, Reply, State};
handle_call({unregister, NodeId}, _From, #{res := Res} = State) ->
    Reply = macula_nat_nif:relay_registry_unregister(Res, NodeId),
    remember(fun(M) -> maps:remove(NodeId, M) end),
    {reply, Reply, State};
handle_call({subscribe, Pid}, _From, #{subs := Subs} = State) ->
    case Subs of
        #{Pid := _} -> {reply, ok, State};
        _ -> {reply, ok, State#{subs := Subs#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, #{subs := Subs} = State) ->
    case maps:take(Pid, Subs) of
        {Mon, Rest} ->
            erlang:demonitor(Mon, [flush]),
            {reply, ok, State#{subs := Rest}};
        error ->
            {reply, ok, State}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

remember(Update) ->
    Old = persistent_term:get(?REGISTERED, #{}),
    case Update(Old) of
        Old -> ok;
        New -> persistent_term:put(?REGISTERED, New)
    end.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({macula_relay_registry, relays_changed} = Msg, #{subs := Subs} = State) ->
    ?LOG_DEBUG("relays changed: ~p", [[R#{node_id := macula_nat_id:format(Id)} || #{node_id := Id} = R <- relays()]]),
    [Pid ! Msg || Pid <- maps:keys(Subs)],
    {noreply, State};
handle_info({'DOWN', _Mon, process, Pid, _}, #{subs := Subs} = State) ->
    {noreply, State#{subs := maps:remove(Pid, Subs)}};
handle_info(_Info, State) ->
    {noreply, State}.

%% The registrations stay for the restart (a `rest_for_one' restart after
%% the node or the cache is a shutdown too).
-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{res := Res}) ->
    macula_nat_nif:relay_registry_close(Res),
    persistent_term:erase(?KEY),
    ok.
