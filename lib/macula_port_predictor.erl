%% @doc Predicts the ports a peer's NAT will allocate next. Not built yet
%% (issue: connections and hole punching).
-module(macula_port_predictor).

-export([predict/2]).

-spec predict(macula_nat_detector:nat_profile(), pos_integer()) ->
    {ok, [inet:port_number()]} | {error, term()}.
predict(Profile, Count) when is_map(Profile), is_integer(Count), Count > 0 -> {error, not_implemented};
predict(_, _) -> {error, badarg}.
