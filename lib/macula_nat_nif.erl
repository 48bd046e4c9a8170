%% @doc The NIF library. Functions here never block a scheduler: those that
%% wait on the network return `{ok, Pending}' and answer later with
%% `{macula_nat_reply, Ref, Result}' (see `macula_nat_async').
%% Not for direct use: call the documented modules.
-module(macula_nat_nif).

%% One list for both attributes: the VM needs every NIF exported and
%% declared, and two hand-kept copies drift.
-define(NIFS,
        [node_open/1, node_id/1, node_local_addr/1, node_stats/1,
         node_close/1, node_send_to/4, node_set_profile/2, node_expect_profile/2,
         node_watch_reflexive/2,
         cancel/1, runtime_ping/1, runtime_tasks/0,
         debug_panic/1, debug_panic_async/1,
         log_attach/2, log_detach/1, log_levels/1, log_ack/0, log_burst/1,
         observer_start/2, observer_stop/1, observer_info/1,
         detect_start/4, lifetime_start/4, observations_new/3, observations_add/3,
         cache_new/2, cache_get/2, cache_put/4, cache_invalidate/2, cache_stats/1,
         cache_fetch/3, cache_advertise/3, cache_dht_reply/3, cache_close/1,
         cache_set_contacts/3, cache_contacts/1,
         conn_open/5, conn_accept/3, conn_send/3, conn_info/1, conn_close/1, conn_set_owner/2,
         conn_setopts/2, conn_quality/2, conn_recv/2, conn_recv_cancel/2, conn_credit/3,
         port_predict/4,
         rendezvous_serve/1, rendezvous_peers/1, signal_join/5, signal_join_homes/4,
         signal_close/1, signal_homes/1, signal_set_profile/2,
         signal_connect/4, signal_accept/3, signal_set_directory/2,
         %% relays
         relay_enable/3, relay_set_limits/2, relay_disable/1, relay_stats/1,
         signal_set_relays/2, signal_reserved_relays/1,
         %% relay registry
         relay_registry_new/3, relay_registry_register/3,
         relay_registry_unregister/2, relay_registry_report_failure/2, relay_registry_set_load/2,
         relay_registry_find/2, relay_registry_best/2, relay_registry_close/1]).

-export(?NIFS).
-nifs(?NIFS).

-on_load(load/0).

-type resource() :: reference().
-type pending() :: reference().
-type active() :: boolean() | once | -32768..32767.
-export_type([resource/0, pending/0, active/0]).

-spec load() -> ok | {error, term()}.
load() ->
    erlang:load_nif(filename:join(priv_dir(), "libmacula_nat_nif"), 0).

priv_dir() ->
    case code:priv_dir(macula_nat) of
        {error, bad_name} ->
            %% Loaded outside an OTP release (e.g. from a bare -pa path).
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-spec node_open(map()) -> {ok, resource()} | {error, term()}.
node_open(_Opts) -> erlang:nif_error(not_loaded).

-spec node_id(resource()) -> {ok, binary()} | {error, term()}.
node_id(_Node) -> erlang:nif_error(not_loaded).

-spec node_local_addr(resource()) -> {ok, {inet:ip_address(), inet:port_number()}} | {error, term()}.
node_local_addr(_Node) -> erlang:nif_error(not_loaded).

-spec node_stats(resource()) -> map().
node_stats(_Node) -> erlang:nif_error(not_loaded).

-spec node_close(resource()) -> ok.
node_close(_Node) -> erlang:nif_error(not_loaded).

%% The node's own profile as signalling reads it: a detection's result, or
%% `undefined' when the detection under way ended without one.
-spec node_set_profile(resource(), map() | undefined) -> ok | {error, term()}.
node_set_profile(_Node, _Profile) -> erlang:nif_error(not_loaded).

%% A detection started that reports within `WithinMs': until then (or its
%% result), signalling waits for the node's first profile.
-spec node_expect_profile(resource(), non_neg_integer()) -> ok | {error, badarg}.
node_expect_profile(_Node, _WithinMs) -> erlang:nif_error(not_loaded).

%% `Pid' gets `{macula_nat_node, reflexive_changed, Old, New}' (`{Ip, Port}'s)
%% when the rendezvous reports our public address moved.
-spec node_watch_reflexive(resource(), pid()) -> ok.
node_watch_reflexive(_Node, _Pid) -> erlang:nif_error(not_loaded).

-spec node_send_to(reference(), resource(), {inet:ip_address(), inet:port_number()}, binary()) ->
    {ok, pending()} | {error, term()}.
node_send_to(_Ref, _Node, _Dst, _Payload) -> erlang:nif_error(not_loaded).

-spec cancel(pending()) -> ok | sent.
cancel(_Pending) -> erlang:nif_error(not_loaded).

-spec runtime_ping(reference()) -> {ok, pending()} | {error, term()}.
runtime_ping(_Ref) -> erlang:nif_error(not_loaded).

-spec runtime_tasks() -> {ok, non_neg_integer()}.
runtime_tasks() -> erlang:nif_error(not_loaded).

-spec debug_panic(atom()) -> {error, {internal, binary()}}.
debug_panic(_Where) -> erlang:nif_error(not_loaded).

-spec debug_panic_async(reference()) -> {ok, pending()} | {error, term()}.
debug_panic_async(_Ref) -> erlang:nif_error(not_loaded).

%% The core's tracing events to logger (macula_nat_log).
-spec log_attach(pid(), [{module(), 0..4}]) -> ok | {error, already_set}.
log_attach(_Pid, _Levels) -> erlang:nif_error(not_loaded).

-spec log_detach(pid()) -> ok.
log_detach(_Pid) -> erlang:nif_error(not_loaded).

-spec log_levels([{module(), 0..4}]) -> ok.
log_levels(_Levels) -> erlang:nif_error(not_loaded).

-spec log_ack() -> ok.
log_ack() -> erlang:nif_error(not_loaded).

-spec log_burst(non_neg_integer()) -> ok.
log_burst(_N) -> erlang:nif_error(not_loaded).

-spec observer_start({inet:ip_address(), inet:port_number()},
                     {inet:ip_address(), inet:port_number()} | undefined) ->
    {ok, resource()} | {error, term()}.
observer_start(_Primary, _Alternate) -> erlang:nif_error(not_loaded).

-spec observer_stop(resource()) -> ok.
observer_stop(_Observer) -> erlang:nif_error(not_loaded).

-spec observer_info(resource()) -> map().
observer_info(_Observer) -> erlang:nif_error(not_loaded).

-spec detect_start(reference(), resource(), [{inet:ip_address(), inet:port_number()}], pos_integer()) ->
    {ok, pending()} | {error, term()}.
detect_start(_Ref, _Node, _Observers, _TimeoutMs) -> erlang:nif_error(not_loaded).

%% The reply: `{ok, Ms, between | at_least | below}' or `{error, not_measured}'.
-spec lifetime_start(reference(), resource(), {inet:ip_address(), inet:port_number()}, pos_integer()) ->
    {ok, pending()} | {error, term()}.
lifetime_start(_Ref, _Node, _Observer, _CapMs) -> erlang:nif_error(not_loaded).

-spec observations_new(pos_integer(), non_neg_integer(), pos_integer()) -> {ok, resource()} | {error, term()}.
observations_new(_Quorum, _MaxAgeMs, _MaxPeers) -> erlang:nif_error(not_loaded).

-spec observations_add(resource(), binary(), {inet:ip_address(), inet:port_number()}) ->
    {changed, {inet:ip_address(), inet:port_number()}} | unchanged | {error, term()}.
observations_add(_Res, _Peer, _Addr) -> erlang:nif_error(not_loaded).

-spec cache_new(resource(), map()) -> {ok, resource()} | {error, term()}.
cache_new(_Node, _Opts) -> erlang:nif_error(not_loaded).

-spec cache_get(resource(), binary()) -> {ok, map()} | {stale, map()} | {error, not_found}.
cache_get(_Cache, _NodeId) -> erlang:nif_error(not_loaded).

-spec cache_put(resource(), binary(), map(), pos_integer()) -> ok | {error, term()}.
cache_put(_Cache, _NodeId, _Profile, _TtlS) -> erlang:nif_error(not_loaded).

-spec cache_invalidate(resource(), binary()) -> ok.
cache_invalidate(_Cache, _NodeId) -> erlang:nif_error(not_loaded).

-spec cache_stats(resource()) -> map().
cache_stats(_Cache) -> erlang:nif_error(not_loaded).

-spec cache_fetch(reference(), resource(), binary()) -> {ok, pending()} | {error, term()}.
cache_fetch(_Ref, _Cache, _NodeId) -> erlang:nif_error(not_loaded).

-spec cache_advertise(reference(), resource(), map()) -> {ok, pending()} | {error, term()}.
cache_advertise(_Ref, _Cache, _Profile) -> erlang:nif_error(not_loaded).

-spec cache_dht_reply(resource(), non_neg_integer(), term()) -> ok | {error, badarg}.
cache_dht_reply(_Cache, _Id, _Answer) -> erlang:nif_error(not_loaded).

-spec cache_close(resource()) -> ok.
cache_close(_Cache) -> erlang:nif_error(not_loaded).

-spec conn_open(reference(), resource(), {inet:ip_address(), inet:port_number()}, binary(), active()) ->
    {ok, pending()} | {error, term()}.
conn_open(_Ref, _Node, _Addr, _PeerId, _Active) -> erlang:nif_error(not_loaded).

-spec conn_accept(reference(), resource(), active()) -> {ok, pending()} | {error, term()}.
conn_accept(_Ref, _Node, _Active) -> erlang:nif_error(not_loaded).

-spec conn_send(reference(), resource(), binary()) -> ok | {ok, pending()} | {error, term()}.
conn_send(_Ref, _Conn, _Bin) -> erlang:nif_error(not_loaded).

-spec conn_info(resource()) -> map().
conn_info(_Conn) -> erlang:nif_error(not_loaded).

-spec conn_close(resource()) -> ok.
conn_close(_Conn) -> erlang:nif_error(not_loaded).

-spec conn_set_owner(resource(), pid()) -> ok | {error, term()}.
conn_set_owner(_Conn, _Pid) -> erlang:nif_error(not_loaded).

-spec conn_setopts(resource(), active()) -> ok | {error, term()}.
conn_setopts(_Conn, _Active) -> erlang:nif_error(not_loaded).

-spec conn_quality(resource(), pos_integer() | false) -> ok | {error, badarg}.
conn_quality(_Conn, _Interval) -> erlang:nif_error(not_loaded).

-spec conn_recv(reference(), resource()) -> {wait, pos_integer()} | {error, term()}.
conn_recv(_Ref, _Conn) -> erlang:nif_error(not_loaded).

-spec conn_recv_cancel(resource(), pos_integer()) -> ok | sent.
conn_recv_cancel(_Conn, _Id) -> erlang:nif_error(not_loaded).

-spec conn_credit(resource(), pos_integer(), non_neg_integer()) -> ok | wait.
conn_credit(_Conn, _Token, _QueueLen) -> erlang:nif_error(not_loaded).

-spec port_predict(map(), pos_integer(), undefined | inet:port_number(), non_neg_integer()) ->
    {ok, [inet:port_number()]} | {error, term()}.
port_predict(_Profile, _Count, _LocalPort, _Seed) -> erlang:nif_error(not_loaded).

-spec rendezvous_serve(resource()) -> {ok, resource()} | {error, term()}.
rendezvous_serve(_Node) -> erlang:nif_error(not_loaded).

-spec rendezvous_peers(resource()) -> [{binary(), binary()}].
rendezvous_peers(_Rv) -> erlang:nif_error(not_loaded).

-spec signal_join(reference(), resource(), {inet:ip_address(), inet:port_number()}, binary(),
                  map() | undefined) -> {ok, pending()} | {error, term()}.
signal_join(_Ref, _Node, _Addr, _RvId, _Profile) -> erlang:nif_error(not_loaded).

%% Joins every rendezvous of the list (preferred first, at most 4) in one
%% signal: the node stays reachable through any that lives.
-spec signal_join_homes(reference(), resource(), [{{inet:ip_address(), inet:port_number()}, binary()}],
                        map() | undefined) -> {ok, pending()} | {error, term()}.
signal_join_homes(_Ref, _Node, _Homes, _Profile) -> erlang:nif_error(not_loaded).

%% Leaves the signal's rendezvous, relays and guests now.
-spec signal_close(resource()) -> ok.
signal_close(_Signal) -> erlang:nif_error(not_loaded).

%% The rendezvous the signal joins and whether each is connected now.
-spec signal_homes(resource()) -> [{binary(), binary(), boolean()}].
signal_homes(_Signal) -> erlang:nif_error(not_loaded).

%% Sets the signal's configured profile, which it advertises only while
%% the node has no detected one (tests give profiles by hand with it).
-spec signal_set_profile(resource(), map()) -> ok | {error, term()}.
signal_set_profile(_Signal, _Profile) -> erlang:nif_error(not_loaded).

-spec signal_connect(reference(), resource(), binary(), map()) -> {ok, pending()} | {error, term()}.
signal_connect(_Ref, _Signal, _Target, _Opts) -> erlang:nif_error(not_loaded).

-spec signal_accept(reference(), resource(), active()) -> {ok, pending()} | {error, term()}.
signal_accept(_Ref, _Signal, _Active) -> erlang:nif_error(not_loaded).

%% Relay registry (macula_relay_registry owns the resource).

-spec relay_registry_new(resource(), resource(), map()) -> {ok, resource()} | {error, term()}.
relay_registry_new(_Node, _Cache, _Opts) -> erlang:nif_error(not_loaded).

-spec relay_registry_register(resource(), binary(), {inet:ip_address(), inet:port_number()}) ->
    ok | {error, bad_node_id | badarg}.
relay_registry_register(_Registry, _NodeId, _Addr) -> erlang:nif_error(not_loaded).

-spec relay_registry_unregister(resource(), binary()) -> ok | {error, bad_node_id}.
relay_registry_unregister(_Registry, _NodeId) -> erlang:nif_error(not_loaded).

-spec relay_registry_report_failure(resource(), binary()) -> ok | {error, bad_node_id}.
relay_registry_report_failure(_Registry, _NodeId) -> erlang:nif_error(not_loaded).

-spec relay_registry_set_load(resource(), number()) -> ok | {error, badarg}.
relay_registry_set_load(_Registry, _Load) -> erlang:nif_error(not_loaded).

-spec relay_registry_find(resource(), binary() | undefined) ->
    {ok, map()} | {error, no_relay | bad_node_id}.
relay_registry_find(_Registry, _Target) -> erlang:nif_error(not_loaded).

-spec relay_registry_best(resource(), non_neg_integer()) -> [map()] | {error, badarg}.
relay_registry_best(_Registry, _N) -> erlang:nif_error(not_loaded).

-spec relay_registry_close(resource()) -> ok.
relay_registry_close(_Registry) -> erlang:nif_error(not_loaded).

%% Relays. The relay resource is owned by (and sends its session events to)
%% the process given to relay_enable/3: see native/macula_nat_nif/src/relay_nif.rs.

-spec relay_enable(resource(), map(), pid()) -> {ok, resource()} | {error, term()}.
relay_enable(_Node, _Limits, _Owner) -> erlang:nif_error(not_loaded).

-spec relay_set_limits(resource(), map()) -> ok | {error, term()}.
relay_set_limits(_Relay, _Limits) -> erlang:nif_error(not_loaded).

-spec relay_disable(resource()) -> {ok, [map()]}.
relay_disable(_Relay) -> erlang:nif_error(not_loaded).

-spec relay_stats(resource()) -> {ok, map()} | {error, term()}.
relay_stats(_Relay) -> erlang:nif_error(not_loaded).

-spec signal_set_directory(resource(), resource()) -> ok.
signal_set_directory(_Signal, _Cache) -> erlang:nif_error(not_loaded).

-spec cache_set_contacts(resource(), [{binary(), binary() | {inet:ip_address(), inet:port_number()}}],
                         [{binary(), binary() | {inet:ip_address(), inet:port_number()}}]) ->
          ok | {error, badarg}.
cache_set_contacts(_Cache, _Rendezvous, _Reserved) -> erlang:nif_error(not_loaded).

%% What this node's record names now: {Rendezvous, Reserved}.
-spec cache_contacts(resource()) -> {[{binary(), binary()}], [{binary(), binary()}]}.
cache_contacts(_Cache) -> erlang:nif_error(not_loaded).

-spec signal_set_relays(resource(), [{binary(), binary() | {inet:ip_address(), inet:port_number()}}]) ->
    ok | {error, badarg}.
signal_set_relays(_Signal, _Relays) -> erlang:nif_error(not_loaded).

-spec signal_reserved_relays(resource()) -> [{binary(), binary()}].
signal_reserved_relays(_Signal) -> erlang:nif_error(not_loaded).
