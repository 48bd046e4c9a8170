%% @doc Predicts the public ports a peer's NAT will allocate for its next
%% mappings, from its profile (the sans-IO predictor in
%% `native/macula_nat_proto/src/port_predictor.rs'):
%% <ul>
%% <li>endpoint-independent mapping: the known public port;</li>
%% <li>port preservation (`pp'): the peer's local port (`local_port' in the
%%     profile) or else its public port;</li>
%% <li>port contiguity (`pc'): the next `Count' ports by `port_delta' from
%%     the public port, wrapping 65535 to 1024;</li>
%% <li>random (`rd'): `Count' distinct ports in a random order, the birthday
%%     set.</li>
%% </ul>
-module(macula_port_predictor).

-export([predict/2]).

-spec predict(macula_nat_detector:nat_profile(), pos_integer()) ->
    {ok, [inet:port_number()]} | {error, term()}.
predict(Profile, Count) when is_map(Profile), is_integer(Count), Count > 0 ->
    Local = case maps:get(local_port, Profile, undefined) of
                P when is_integer(P) -> P;
                _ -> undefined
            end,
    macula_nat_nif:port_predict(Profile, Count, Local, rand:uniform(1 bsl 62));
predict(_, _) ->
    {error, badarg}.
