%% @doc NAT traversal system supervisor (rest_for_one).
%%
%% ```
%% macula_nat_system
%% +-- macula_nat_node        - node identity and the one UDP socket
%% +-- macula_nat_cache       - NAT profile cache with TTL, own advertisement
%% +-- macula_nat_detector    - NAT type detection
%% +-- macula_nat_coordinator - rendezvous join, hole punch coordination
%% +-- macula_relay_registry  - known relays, measured and chosen
%% +-- macula_relay_node      - relay server (off until enabled)
%% +-- macula_connection_flow - mailbox checks for connections' flow control
%% +-- macula_nat_log         - the Rust core's diagnostics into logger (levels pushed in)
%% '''
%% Each child owns its Rust resources (they are closed when it dies) and
%% builds on what the children before it own, the node's socket first of
%% all. So a child that dies restarts together with every child after it
%% (`rest_for_one'), each from a clean slate and from its options: after a
%% restart of the node the profile is detected and advertised again, the
%% rendezvous joined again and the relays reserved again. What a child
%% keeps for its own restarts (the relay's options, relays registered by
%% hand) lasts until this supervisor starts afresh.
-module(macula_nat_system).
-behaviour(supervisor).

-export([start_link/0, start_link/1, init/1, ping/0]).

%% @doc Start the NAT system supervisor with default options.
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Start the NAT system supervisor with given options:
%% `cache_max_entries' (10000), `cache_ttl_seconds' (300),
%% `detection_timeout_ms' (2000), `listen_ip', `listen_port', `key_file',
%% `observers', `relay_refresh_ms' (5000), `relays' (`[#{node_id, endpoint}]')
%% and the rest of `macula_nat_config'. Options not given come from the
%% application environment.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) when is_map(Opts) ->
    case macula_nat_config:resolve(Opts) of
        {ok, Resolved} -> supervisor:start_link({local, ?MODULE}, ?MODULE, Resolved);
        {error, _} = Error -> Error
    end;
start_link(_) ->
    {error, badarg}.

%% @doc Initialize the supervisor with child specifications.
-spec init(map()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Opts) ->
    %% A system that starts (not a child that restarts) starts from nothing.
    ok = macula_relay_node:forget(),
    ok = macula_relay_registry:forget(),
    Flags = #{strategy => rest_for_one, intensity => 10, period => 10},
    Children = [child(M, Opts) || M <- [macula_nat_node, macula_nat_cache,
                                        macula_nat_detector, macula_nat_coordinator,
                                        macula_relay_registry, macula_relay_node,
                                        macula_connection_flow, macula_nat_log]],
    {ok, {Flags, Children}}.

child(Module, Opts) ->
    #{id => Module,
      start => {Module, start_link, [Opts]},
      restart => permanent,
      shutdown => 5000,
      type => worker,
      modules => [Module]}.

%% @doc Round trip through the Rust runtime: `{ok, Microseconds}'.
-spec ping() -> {ok, non_neg_integer()} | {error, term()}.
ping() ->
    macula_nat_async:call(fun macula_nat_nif:runtime_ping/1, 5000).
