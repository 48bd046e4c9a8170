%% @doc Endpoints as users write them: `{Ip, Port}', `<<"host:port">>' or
%% `"host:port"' (IPv6 as `[addr]:port'). `format/1' gives the binary form
%% that `macula:get_public_endpoint/0' and the relay registry use.
-module(macula_nat_endpoint).

-export([parse/1, format/1]).

-type endpoint() :: {inet:ip_address(), inet:port_number()} | binary() | string().
-export_type([endpoint/0]).

-spec parse(term()) -> {ok, {inet:ip_address(), inet:port_number()}} | {error, bad_endpoint}.
parse({Ip, Port} = Ep) when is_tuple(Ip), is_integer(Port), Port > 0, Port =< 65535 ->
    case inet:ntoa(Ip) of
        {error, _} -> {error, bad_endpoint};
        _ -> {ok, Ep}
    end;
parse(Bin) when is_binary(Bin) ->
    try unicode:characters_to_list(Bin) of
        L when is_list(L) -> parse(L);
        _ -> {error, bad_endpoint}
    catch
        _:_ -> {error, bad_endpoint}
    end;
parse(Str) when is_list(Str) ->
    try split(Str) of
        {Host, PortStr} ->
            case {resolve(Host), string:to_integer(PortStr)} of
                {{ok, Ip}, {Port, []}} when Port > 0, Port =< 65535 -> {ok, {Ip, Port}};
                _ -> {error, bad_endpoint}
            end;
        error ->
            {error, bad_endpoint}
    catch
        _:_ -> {error, bad_endpoint}
    end;
parse(_) ->
    {error, bad_endpoint}.

split([$[ | Rest]) ->
    case string:split(Rest, "]:") of
        [Host, Port] -> {Host, Port};
        _ -> error
    end;
split(Str) ->
    case string:split(Str, ":", trailing) of
        [Host, Port] when Host =/= [] -> {Host, Port};
        _ -> error
    end.

resolve(Host) ->
    case inet:parse_address(Host) of
        {ok, Ip} -> {ok, Ip};
        {error, _} -> inet:getaddr(Host, inet)
    end.

-spec format({inet:ip_address(), inet:port_number()}) -> binary().
format({Ip, Port}) when tuple_size(Ip) =:= 8 ->
    iolist_to_binary(["[", inet:ntoa(Ip), "]:", integer_to_list(Port)]);
format({Ip, Port}) ->
    iolist_to_binary([inet:ntoa(Ip), ":", integer_to_list(Port)]).
