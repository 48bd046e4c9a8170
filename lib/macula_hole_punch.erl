%% @doc Simultaneous-open hole punching from the node's socket. Not built
%% yet (issue: connections and hole punching).
-module(macula_hole_punch).

-export([punch/2]).

%% @doc Punch towards the peer's candidate endpoints.
-spec punch([macula_nat_endpoint:endpoint()], map()) -> {ok, term()} | {error, term()}.
punch(Candidates, Opts) when is_list(Candidates), is_map(Opts) -> {error, not_implemented};
punch(_, _) -> {error, badarg}.
