%% @private NodeIds as callers write them: the 32-byte binary (the ed25519
%% public key) or its 64-character hex form, either case. Every documented
%% call that takes a NodeId goes through `normalize/1'; `macula' exports
%% the conversions. No atoms are made from input.
-module(macula_nat_id).

-export([normalize/1, from_hex/1, to_hex/1, format/1]).

%% @doc The 32-byte id for a 32-byte id or its hex form; anything else is
%% returned as it is, so each call answers a bad id as it always did
%% (`bad_node_id', `not_found', `badarg').
-spec normalize(term()) -> term().
normalize(<<_:32/binary>> = Id) ->
    Id;
normalize(Bin) when is_binary(Bin), byte_size(Bin) >= 64 ->
    case from_hex(Bin) of
        {ok, Id} -> Id;
        {error, _} -> Bin
    end;
normalize(Other) ->
    Other.

%% @doc 64 hex digits (either case; ASCII whitespace around them is
%% ignored, as a pasted id may carry it) as a binary or a string, or the
%% 32-byte id itself: `{ok, Id}'; `{error, bad_node_id}' otherwise.
-spec from_hex(term()) -> {ok, <<_:256>>} | {error, bad_node_id}.
from_hex(<<_:32/binary>> = Id) ->
    {ok, Id};
from_hex(Bin) when is_binary(Bin) ->
    case trim(Bin) of
        <<Hex:64/binary>> -> decode(Hex, <<>>);
        _ -> {error, bad_node_id}
    end;
from_hex(List) when is_list(List) ->
    try unicode:characters_to_binary(List) of
        Bin when is_binary(Bin), byte_size(Bin) =/= 32 -> from_hex(Bin);
        _ -> {error, bad_node_id}
    catch
        _:_ -> {error, bad_node_id}
    end;
from_hex(_) ->
    {error, bad_node_id}.

%% @doc The lowercase hex form of an id (given raw or as hex);
%% `{error, bad_node_id}' for anything else.
-spec to_hex(term()) -> binary() | {error, bad_node_id}.
to_hex(Id) ->
    case from_hex(Id) of
        {ok, Raw} -> << <<(digit(N))>> || <<N:4>> <= Raw >>;
        {error, _} = E -> E
    end.

%% @doc For log lines and callbacks: the hex form of an id; any other
%% term printed (`~0p'), so `~s' always has something readable.
-spec format(term()) -> binary().
format(Id) ->
    case to_hex(Id) of
        Hex when is_binary(Hex) -> Hex;
        {error, _} -> iolist_to_binary(io_lib:format("~0p", [Id]))
    end.

trim(<<C, Rest/binary>>) when C =:= $\s; C =:= $\t; C =:= $\r; C =:= $\n ->
    trim(Rest);
trim(Bin) ->
    trim_end(Bin, byte_size(Bin)).

trim_end(Bin, N) when N > 0 ->
    case binary:at(Bin, N - 1) of
        C when C =:= $\s; C =:= $\t; C =:= $\r; C =:= $\n -> trim_end(Bin, N - 1);
        _ -> binary:part(Bin, 0, N)
    end;
trim_end(_, _) ->
    <<>>.

decode(<<>>, Acc) ->
    {ok, Acc};
decode(<<A, B, Rest/binary>>, Acc) ->
    case {value(A), value(B)} of
        {H, L} when is_integer(H), is_integer(L) -> decode(Rest, <<Acc/binary, (H * 16 + L)>>);
        _ -> {error, bad_node_id}
    end.

value(C) when C >= $0, C =< $9 -> C - $0;
value(C) when C >= $a, C =< $f -> C - $a + 10;
value(C) when C >= $A, C =< $F -> C - $A + 10;
value(_) -> error.

digit(N) when N < 10 -> $0 + N;
digit(N) -> $a + N - 10.
