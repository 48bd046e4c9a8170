%% @doc Simultaneous-open hole punching from the node's one socket, through
%% the coordinator's rendezvous: both sides exchange their profiles and
%% candidate addresses there, start together at a moment derived from the
%% measured round trips, and send STUN Binding requests carrying a shared
%% PUNCH-TOKEN to each other's candidates (predicted ports included) until
%% a path answers both ways; QUIC then runs over that path.
-module(macula_hole_punch).

-export([punch/2]).

%% @doc Punches to the peer named by `peer' in `Opts' (its NodeId) and
%% returns the connection over the punched path. The candidates come from
%% the rendezvous exchange (the peer's observed and advertised addresses);
%% `Candidates' given here are not used yet. Other options as
%% `macula_nat_coordinator:request_connection/2'.
-spec punch([macula_nat_endpoint:endpoint()], map()) ->
    {ok, macula_connection:connection()} | {error, term()}.
punch(Candidates, #{peer := Peer} = Opts) when is_list(Candidates), is_binary(Peer) ->
    case macula_nat_coordinator:request_connection(Peer, maps:remove(peer, Opts#{prefer_direct => false})) of
        {ok, _Method, Conn} -> {ok, Conn};
        {error, _} = E -> E
    end;
punch(_, _) ->
    {error, badarg}.
