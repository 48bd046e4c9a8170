%% @doc Options of the NAT system: defaults, application environment and
%% explicit options, merged in that order and checked once at start.
-module(macula_nat_config).

-export([defaults/0, resolve/1]).

-export_type([opts/0]).

-type opts() :: #{
    cache_max_entries := pos_integer(),
    cache_ttl_seconds := pos_integer(),
    detection_timeout_ms := pos_integer(),
    listen_ip := inet:ip_address(),
    listen_ip6 := undefined | inet:ip6_address(),
    listen_port := inet:port_number(),
    key_file := undefined | file:filename_all(),
    port_mapping := boolean() | [pcp | natpmp | upnp],
    observers := [term()],
    cache_grace_seconds := non_neg_integer(),
    dht := memory | {mainline, map()} | {module, module()},
    dht_timeout_ms := pos_integer(),
    advertise_ttl_seconds := pos_integer(),
    rendezvous := [term()],
    rendezvous_server := boolean(),
    refresh_interval_ms := non_neg_integer(),
    observation_quorum := pos_integer(),
    relay_refresh_ms := pos_integer(),
    max_message_bytes := pos_integer(),
    max_connections := pos_integer(),
    max_connections_per_ip := pos_integer(),
    fd_budget := auto | non_neg_integer(),
    measure_mapping_lifetime := boolean(),
    mapping_lifetime_cap_ms := pos_integer(),
    relays := [#{node_id := binary(), endpoint := macula_nat_endpoint:endpoint()}]
}.

-spec defaults() -> opts().
defaults() ->
    #{cache_max_entries => 10000,
      cache_ttl_seconds => 300,
      detection_timeout_ms => 2000,
      listen_ip => {0, 0, 0, 0},
      listen_ip6 => undefined,
      listen_port => 0,
      key_file => undefined,
      port_mapping => true,
      observers => [],
      cache_grace_seconds => 60,
      dht => memory,
      dht_timeout_ms => 5000,
      advertise_ttl_seconds => 3600,
      rendezvous => [],
      rendezvous_server => false,
      refresh_interval_ms => 300000,
      observation_quorum => 3,
      relay_refresh_ms => 5000,
      max_message_bytes => 8388608,
      max_connections => 1024,
      max_connections_per_ip => 32,
      fd_budget => auto,
      measure_mapping_lifetime => true,
      mapping_lifetime_cap_ms => 600000,
      relays => []}.

%% @doc Explicit options win over the application environment, which wins
%% over the defaults. Unknown keys are kept (children may read them), known
%% keys are type-checked so a typo fails at start, not at first use.
-spec resolve(map()) -> {ok, opts()} | {error, {bad_option, atom(), term()}}.
resolve(Opts) when is_map(Opts) ->
    Env = maps:from_list(application:get_all_env(macula_nat)),
    Merged = maps:merge(maps:merge(defaults(), maps:without([included_applications], Env)), Opts),
    check(maps:to_list(Merged), normalize_ids(Merged)).

%% NodeIds in `relays' and `rendezvous' may be written in hex (config
%% files): the children get the 32-byte form.
normalize_ids(Opts) ->
    maps:map(fun(K, L) when (K =:= relays orelse K =:= rendezvous), is_list(L) ->
                     [case E of
                          #{node_id := Id} -> E#{node_id := macula_nat_id:normalize(Id)};
                          _ -> E
                      end || E <- L];
                (_, V) -> V
             end, Opts).

check([], #{listen_ip6 := V6, listen_ip := V4}) when V6 =/= undefined, tuple_size(V4) =/= 4 ->
    %% A second socket for IPv6 beside an IPv4 one; an IPv6 `listen_ip'
    %% alone is an IPv6-only node.
    {error, {bad_option, listen_ip6, V6}};
check([], Merged) ->
    {ok, Merged};
check([{K, V} | Rest], Merged) ->
    case valid(K, V) of
        true -> check(Rest, Merged);
        false -> {error, {bad_option, K, V}}
    end.

valid(cache_max_entries, V) -> is_integer(V) andalso V > 0;
valid(cache_ttl_seconds, V) -> is_integer(V) andalso V > 0;
valid(detection_timeout_ms, V) -> is_integer(V) andalso V > 0;
valid(listen_port, V) -> is_integer(V) andalso V >= 0 andalso V =< 65535;
valid(listen_ip, V) -> is_tuple(V) andalso (tuple_size(V) =:= 4 orelse tuple_size(V) =:= 8);
valid(listen_ip6, V) -> V =:= undefined orelse (is_tuple(V) andalso tuple_size(V) =:= 8);
valid(key_file, V) -> V =:= undefined orelse is_list(V) orelse is_binary(V);
valid(port_mapping, V) ->
    is_boolean(V) orelse
        (is_list(V) andalso V =/= [] andalso lists:all(fun(P) -> lists:member(P, [pcp, natpmp, upnp]) end, V));
valid(observers, V) -> is_list(V);
valid(cache_grace_seconds, V) -> is_integer(V) andalso V >= 0;
valid(dht, memory) -> true;
valid(dht, {mainline, M}) -> is_map(M);
valid(dht, {module, M}) -> is_atom(M);
valid(dht, _) -> false;
valid(dht_timeout_ms, V) -> is_integer(V) andalso V > 0;
valid(advertise_ttl_seconds, V) -> is_integer(V) andalso V >= 2;
valid(rendezvous, V) -> is_list(V) andalso lists:all(fun valid_rendezvous/1, V);
valid(rendezvous_server, V) -> is_boolean(V);
valid(refresh_interval_ms, V) -> is_integer(V) andalso V >= 0 andalso V =< 4294967295;
valid(observation_quorum, V) -> is_integer(V) andalso V >= 1 andalso V =< 64;
valid(relay_refresh_ms, V) -> is_integer(V) andalso V > 0 andalso V =< 4294967295;
valid(relays, V) -> is_list(V) andalso lists:all(fun valid_relay/1, V);
valid(max_message_bytes, V) -> is_integer(V) andalso V > 0 andalso V =< 4294967295;
valid(max_connections, V) -> is_integer(V) andalso V > 0 andalso V =< 1048576;
valid(max_connections_per_ip, V) -> is_integer(V) andalso V > 0 andalso V =< 1048576;
valid(fd_budget, V) -> V =:= auto orelse (is_integer(V) andalso V >= 0 andalso V =< 4294967295);
valid(measure_mapping_lifetime, V) -> is_boolean(V);
valid(mapping_lifetime_cap_ms, V) -> is_integer(V) andalso V >= 1000 andalso V =< 3600000;
valid(_, _) -> true.

%% `#{node_id => Id, endpoint => E}': a relay known from the start.
valid_relay(#{endpoint := E, node_id := Id0}) ->
    Id = macula_nat_id:normalize(Id0),
    is_binary(Id) andalso byte_size(Id) =:= 32 andalso element(1, macula_nat_endpoint:parse(E)) =:= ok;
valid_relay(_) ->
    false.

%% `Endpoint' (advertised only) or `#{endpoint => E, node_id => Id}' (joined).
valid_rendezvous(#{endpoint := E, node_id := Id0}) ->
    Id = macula_nat_id:normalize(Id0),
    is_binary(Id) andalso byte_size(Id) =:= 32 andalso valid_rendezvous(E);
valid_rendezvous(E) ->
    element(1, macula_nat_endpoint:parse(E)) =:= ok.
