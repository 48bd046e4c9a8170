%% @doc Cache of peers' NAT profiles with TTL and stale-while-revalidate,
%% and this node's profile advertisement in the DHT.
%%
%% The server owns the Rust cache (closed when it dies) and publishes it in
%% `persistent_term', so reads (`get/1', `put/2,3', `invalidate/1',
%% `stats/0') go straight from the calling process to the Rust structure:
%% no mailbox on the read path. A stale read starts exactly one background
%% refresh from the DHT, on the Rust runtime.
%%
%% The server also advertises this node: whenever the detector reports a
%% profile (at start and on change) it publishes a record signed with the
%% node key, carrying the profile, the public endpoint and the configured
%% `rendezvous' contacts; the runtime republishes it at half its TTL.
%%
%% DHT backends (option `dht'): `memory' (default, one table per VM),
%% `{mainline, #{bootstrap => [<<"ip:port">>], port => P}}' (BitTorrent
%% mainline DHT, BEP 44), or `{module, Mod}' with `Mod' implementing
%% `macula_nat_dht'.
%%
%% Every call here takes a NodeId as the 32-byte binary or its 64-character
%% hex form (either case).
-module(macula_nat_cache).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, get/1, get_from_dht/1, put/2, put/3, invalidate/1, stats/0,
         advertise/1, contacts/0, resource/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type nat_profile() :: macula_nat_detector:nat_profile().

-define(KEY, {?MODULE, resource}).
-define(RESUBSCRIBE_MS, 100).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc The cached profile of `NodeId': `{ok, P}' while fresh, `{stale, P}'
%% during the grace period after its TTL (a refresh from the DHT is then
%% running), `{error, not_found}' otherwise (also when the cache is not
%% running, or `NodeId' is not a 32-byte node key).
-spec get(binary()) -> {ok, nat_profile()} | {stale, nat_profile()} | {error, not_found | badarg}.
get(NodeId) when is_binary(NodeId) ->
    case persistent_term:get(?KEY, undefined) of
        {Res, _Ttl, _Timeout} -> macula_nat_nif:cache_get(Res, macula_nat_id:normalize(NodeId));
        undefined -> {error, not_found}
    end;
get(_) ->
    {error, badarg}.

%% @doc A fresh cached profile, or else the record fetched from the DHT,
%% verified against `NodeId' and cached. Concurrent calls for one NodeId
%% share one lookup. Errors: `not_found', `forged', `replayed', `expired',
%% `timeout', `bad_node_id', `not_running'.
-spec get_from_dht(binary()) -> {ok, nat_profile()} | {error, term()}.
get_from_dht(NodeId) when is_binary(NodeId) ->
    with_cache(fun(Res, _Ttl, Timeout) ->
                       macula_nat_async:call(
                         fun(Ref) -> macula_nat_nif:cache_fetch(Ref, Res, macula_nat_id:normalize(NodeId)) end,
                         Timeout + 1000)
               end);
get_from_dht(_) ->
    {error, badarg}.

%% @doc Stores `Profile' for `cache_ttl_seconds'.
-spec put(binary(), nat_profile()) -> ok | {error, term()}.
put(NodeId, Profile) when is_binary(NodeId), is_map(Profile) ->
    with_cache(fun(Res, Ttl, _) -> macula_nat_nif:cache_put(Res, macula_nat_id:normalize(NodeId), Profile, Ttl) end);
put(_, _) ->
    {error, badarg}.

%% @doc Stores `Profile' for `Ttl' seconds. Errors: `bad_node_id' (not a
%% 32-byte key), `{bad_profile, Key}' (missing `mapping', `filtering' or
%% `allocation', or a key with a value of the wrong type).
-spec put(binary(), nat_profile(), pos_integer()) -> ok | {error, term()}.
put(NodeId, Profile, Ttl) when is_binary(NodeId), is_map(Profile), is_integer(Ttl), Ttl > 0 ->
    with_cache(fun(Res, _, _) -> macula_nat_nif:cache_put(Res, macula_nat_id:normalize(NodeId), Profile, Ttl) end);
put(_, _, _) ->
    {error, badarg}.

-spec invalidate(binary()) -> ok | {error, term()}.
invalidate(NodeId) when is_binary(NodeId) ->
    with_cache(fun(Res, _, _) -> macula_nat_nif:cache_invalidate(Res, macula_nat_id:normalize(NodeId)) end);
invalidate(_) ->
    {error, badarg}.

%% @doc `#{size, hits, misses, stale_hits, evictions}' plus `expirations'
%% (dropped after their grace), `forged' and `replayed' (DHT records
%% refused), `dht_fetches', `refreshes' and `published' (own records).
-spec stats() -> #{atom() => non_neg_integer()} | {error, not_running}.
stats() ->
    with_cache(fun(Res, _, _) -> macula_nat_nif:cache_stats(Res) end).

%% @doc Publishes `Profile' as this node's record now (the server does this
%% by itself from the detector's profile; this is for hosts that learn
%% their reachability elsewhere). Answers `{ok, Seq}'.
-spec advertise(nat_profile()) -> {ok, non_neg_integer()} | {error, term()}.
advertise(Profile) when is_map(Profile) ->
    with_cache(fun(Res, _, Timeout) ->
                       macula_nat_async:call(
                         fun(Ref) -> macula_nat_nif:cache_advertise(Ref, Res, Profile) end,
                         Timeout + 1000)
               end);
advertise(_) ->
    {error, badarg}.

%% @doc What this node's signed record names now (published within about
%% a second of a change): the rendezvous it is joined at and live there
%% (all configured ones while none is), and the relays holding a live
%% reservation of it; each `#{node_id => NodeId, endpoint => <<"ip:port">>}'.
-spec contacts() -> #{rendezvous := [map()], reserved := [map()]} | {error, not_running}.
contacts() ->
    with_cache(fun(Res, _, _) ->
                       {Rv, Rs} = macula_nat_nif:cache_contacts(Res),
                       F = fun(L) -> [#{node_id => Id, endpoint => Ep} || {Id, Ep} <- L] end,
                       #{rendezvous => F(Rv), reserved => F(Rs)}
               end).

%% @doc The cache's Rust resource (the profile cache and this node's
%% advertiser), for the other children of the system.
-spec resource() -> {ok, macula_nat_nif:resource()} | {error, not_running}.
resource() ->
    with_cache(fun(Res, _, _) -> {ok, Res} end).

with_cache(Fun) ->
    case persistent_term:get(?KEY, undefined) of
        {Res, Ttl, Timeout} -> Fun(Res, Ttl, Timeout);
        undefined -> {error, not_running}
    end.

%% gen_server

-spec init(map()) -> {ok, map()} | {stop, term()}.
init(Opts) ->
    process_flag(trap_exit, true),
    Timeout = maps:get(dht_timeout_ms, Opts, 5000),
    Ttl = maps:get(cache_ttl_seconds, Opts, 300),
    Base = #{max_entries => maps:get(cache_max_entries, Opts, 10000),
             ttl_s => Ttl,
             grace_s => maps:get(cache_grace_seconds, Opts, 60),
             dht_timeout_ms => Timeout,
             record_ttl_s => maps:get(advertise_ttl_seconds, Opts, 3600)},
    case backend(maps:get(dht, Opts, memory)) of
        {ok, Backend, Module} ->
            {ok, Node} = macula_nat_node:resource(),
            case macula_nat_nif:cache_new(Node, maps:merge(Base, Backend)) of
                {ok, Res} ->
                    persistent_term:put(?KEY, {Res, Ttl, Timeout}),
                    %% The record names the configured rendezvous with
                    %% their node ids: what a node registered elsewhere
                    %% needs to signal us through one of them.
                    ok = macula_nat_nif:cache_set_contacts(Res, rendezvous_contacts(Opts), []),
                    self() ! subscribe,
                    ?LOG_DEBUG("cache up: ~p, dht ~p", [Base, maps:get(dht, Opts, memory)]),
                    {ok, #{res => Res, module => Module, opts => Opts, timeout => Timeout,
                           detector => undefined, advertising => undefined}};
                {error, Reason} ->
                    {stop, {cache_new, Reason}}
            end;
        {error, Reason} ->
            {stop, Reason}
    end.

backend(memory) ->
    {ok, #{dht => memory}, undefined};
backend({mainline, Cfg}) when is_map(Cfg) ->
    Bootstrap = [iolist_to_binary(B) || B <- maps:get(bootstrap, Cfg, [])],
    {ok, #{dht => {mainline, Cfg#{bootstrap => Bootstrap}}}, undefined};
backend({module, Mod}) when is_atom(Mod) ->
    {ok, #{bridge => self()}, Mod};
backend(Other) ->
    {error, {bad_option, dht, Other}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({macula_nat_dht, Id, put, NodeId, Record, TtlS}, #{module := Mod} = State) ->
    {noreply, host_call(Id, fun() -> Mod:put(NodeId, Record, TtlS) end, State)};
handle_info({macula_nat_dht, Id, get, NodeId}, #{module := Mod} = State) ->
    {noreply, host_call(Id, fun() -> Mod:get(NodeId) end, State)};
handle_info({kill_worker, Pid}, State) ->
    exit(Pid, kill),
    {noreply, State};
handle_info(subscribe, State) ->
    {noreply, subscribe(State)};
%% Every detection is reported; the first and the changes are advertised.
handle_info({macula_nat_detector, profile, New, true}, State) ->
    {noreply, advertise_profile(New, State)};
handle_info({'DOWN', Mon, process, _, _}, #{detector := Mon} = State) ->
    %% The detector restarted: subscribe to the new one.
    erlang:send_after(?RESUBSCRIBE_MS, self(), subscribe),
    {noreply, State#{detector := undefined}};
handle_info({macula_nat_reply, Ref, Result}, #{advertising := {Ref, _Pending}} = State) ->
    case Result of
        {ok, Seq} -> ?LOG_DEBUG("advertised own record, seq ~p", [Seq]);
        {error, Reason} -> ?LOG_WARNING("advertising own record failed: ~p", [Reason])
    end,
    {noreply, State#{advertising := undefined}};
handle_info(_Info, State) ->
    {noreply, State}.

-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{res := Res}) ->
    macula_nat_nif:cache_close(Res),
    %% Only on an orderly stop: a crashed server leaves the term for its
    %% successor to replace (readers keep working on the closed cache).
    persistent_term:erase(?KEY),
    ok.

%% The host DHT's callback runs in a worker so a slow host never stalls
%% this server; the worker is killed when the Rust side has given up.
host_call(Id, Call, #{res := Res, timeout := Timeout} = State) ->
    Pid = spawn(fun() ->
                        Answer = try Call() catch Class:Reason -> {error, {Class, Reason}} end,
                        macula_nat_nif:cache_dht_reply(Res, Id, Answer)
                end),
    erlang:send_after(Timeout + 100, self(), {kill_worker, Pid}),
    State.

subscribe(#{detector := undefined} = State) ->
    case whereis(macula_nat_detector) of
        undefined ->
            erlang:send_after(?RESUBSCRIBE_MS, self(), subscribe),
            State;
        Pid ->
            Mon = erlang:monitor(process, Pid),
            %% Following, not subscribing: subscribers hear of changes
            %% only, and the first detection (usually after this) must be
            %% advertised too. The current profile, if any, comes at once.
            case macula_nat_detector:follow(self()) of
                ok ->
                    State#{detector := Mon};
                {error, _} ->
                    %% Lost a race with a detector restart; the 'DOWN'
                    %% of this monitor brings us back here.
                    State#{detector := Mon}
            end
    end;
subscribe(State) ->
    State.

rendezvous_contacts(Opts) ->
    [{Id, Addr} || #{endpoint := E, node_id := Id0} <- maps:get(rendezvous, Opts, []),
                   <<_:32/binary>> = Id <- [macula_nat_id:normalize(Id0)],
                   {ok, Addr} <- [macula_nat_endpoint:parse(E)]].

rendezvous_endpoint(#{endpoint := E}) -> E;
rendezvous_endpoint(E) -> E.

advertise_profile(Profile, #{res := Res, opts := Opts} = State) ->
    Endpoints = case Profile of
                    #{public_ip := Ip, public_port := Port} when is_tuple(Ip), is_integer(Port) ->
                        [macula_nat_endpoint:format({Ip, Port})];
                    _ ->
                        []
                end,
    Rendezvous = [macula_nat_endpoint:format(Ep)
                  || R <- maps:get(rendezvous, Opts, []),
                     {ok, Ep} <- [macula_nat_endpoint:parse(rendezvous_endpoint(R))]],
    Advert = Profile#{endpoints => Endpoints, rendezvous => Rendezvous},
    Ref = make_ref(),
    case macula_nat_nif:cache_advertise(Ref, Res, Advert) of
        {ok, Pending} ->
            %% Keep the handle: dropping it would cancel the publication.
            State#{advertising := {Ref, Pending}};
        {error, Reason} ->
            ?LOG_WARNING("own profile not advertisable: ~p", [Reason]),
            State
    end.
