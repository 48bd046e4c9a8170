%% @doc Node-level API.
-module(macula).

-export([get_node_id/0, get_public_endpoint/0, node_id_to_hex/1, node_id_from_hex/1]).

-type node_id() :: <<_:256>>.
-export_type([node_id/0]).

%% @doc The node's id: the 32-byte ed25519 public key of its node key
%% (`node_id_to_hex/1' prints it).
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

%% @doc The printable form of a NodeId: 64 lowercase hex digits, as a
%% binary (for `~s', string interpolation, forms and config files). Takes
%% the 32-byte id or its hex form (either case). `{error, bad_node_id}'
%% for anything else. Every call that takes a NodeId takes this form too.
-spec node_id_to_hex(node_id() | binary() | string()) -> binary() | {error, bad_node_id}.
node_id_to_hex(Id) ->
    macula_nat_id:to_hex(Id).

%% @doc The 32-byte NodeId from its hex form: 64 hex digits, either case,
%% as a binary or a string (ASCII whitespace around them is ignored, as a
%% pasted id may carry it); a 32-byte id is returned as it is.
%% `{error, bad_node_id}' for anything else (no atom is made from input).
-spec node_id_from_hex(binary() | string()) -> {ok, node_id()} | {error, bad_node_id}.
node_id_from_hex(Hex) ->
    macula_nat_id:from_hex(Hex).
