%% @doc A STUN observer (RFC 8489 Binding server with the RFC 5780
%% behaviour-discovery attributes) run from Erlang or Elixir. With an
%% alternate address it listens on 2 IPs x 2 ports and honours
%% CHANGE-REQUEST, so any RFC 5780 client (ours, coturn's
%% turnutils_natdiscovery) can discover a NAT's behaviour through it.
%% Operators can run the same server standalone: `macula-observer'.
-module(macula_nat_observer).
-behaviour(gen_server).

-export([start/1, start_link/1, stop/1, info/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% @doc Options: `primary' (endpoint, required; port 0 picks one) and
%% `alternate' (endpoint with another IP and port; omit for a plain server).
-spec start(map()) -> {ok, pid()} | {error, term()}.
start(Opts) when is_map(Opts) -> gen_server:start(?MODULE, Opts, []);
start(_) -> {error, badarg}.

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) when is_map(Opts) -> gen_server:start_link(?MODULE, Opts, []);
start_link(_) -> {error, badarg}.

-spec stop(pid()) -> ok.
stop(Pid) -> gen_server:stop(Pid).

%% @doc `#{primary, alternate, answered, dropped}'; `dropped' counts
%% unanswered datagrams by reason.
-spec info(pid()) -> map().
info(Pid) -> gen_server:call(Pid, info).

-spec init(map()) -> {ok, map()} | {stop, term()}.
init(Opts) ->
    case {endpoint(maps:get(primary, Opts, undefined)), endpoint(maps:get(alternate, Opts, undefined))} of
        {{ok, P}, {ok, A}} ->
            case macula_nat_nif:observer_start(P, A) of
                {ok, Res} -> {ok, #{resource => Res}};
                {error, Reason} -> {stop, Reason}
            end;
        _ ->
            {stop, bad_endpoint}
    end.

endpoint(undefined) -> {ok, undefined};
endpoint({Ip, 0}) when is_tuple(Ip) -> {ok, {Ip, 0}};
endpoint(Ep) -> macula_nat_endpoint:parse(Ep).

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(info, _From, #{resource := Res} = State) ->
    {reply, macula_nat_nif:observer_info(Res), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(_Info, State) -> {noreply, State}.

-spec terminate(term(), map()) -> ok.
terminate(_Reason, #{resource := Res}) -> macula_nat_nif:observer_stop(Res).
