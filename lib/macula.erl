%% @doc Node-level API.
-module(macula).

-export([get_node_id/0, get_public_endpoint/0]).

%% @doc The node's id: the 32-byte ed25519 public key of its node key.
-spec get_node_id() -> {ok, binary()} | {error, not_started}.
get_node_id() ->
    macula_nat_node:node_id().

%% @doc The node's reflexive (public) endpoint as `<<"ip:port">>', once NAT
%% detection has seen it.
-spec get_public_endpoint() -> {ok, binary()} | {error, not_detected}.
get_public_endpoint() ->
    case macula_nat_detector:get_local_profile() of
        {ok, #{public_ip := Ip, public_port := Port}} ->
            {ok, macula_nat_endpoint:format({Ip, Port})};
        _ ->
            %% No detection yet, but a quorum of peers may have told us.
            try ets:lookup(macula_nat_detector, observed_endpoint) of
                [{observed_endpoint, Addr}] -> {ok, macula_nat_endpoint:format(Addr)};
                [] -> {error, not_detected}
            catch
                error:badarg -> {error, not_detected}
            end
    end.
