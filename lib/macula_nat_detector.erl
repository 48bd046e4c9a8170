%% @doc Detects the local NAT's mapping, filtering and allocation behaviour
%% with STUN (RFC 8489 + RFC 5780), from the node's one UDP socket.
%%
%% The current profile lives in a protected ETS table so that
%% `get_local_profile/0' never waits on this process. Subscribers are
%% monitored and forgotten when they die.
-module(macula_nat_detector).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/1, detect/0, detect/1, get_local_profile/0,
         add_observation/2, refresh/0, subscribe/1, unsubscribe/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([nat_profile/0]).

-type nat_profile() :: #{
    mapping := ei | hd | pd,
    filtering := ei | hd | pd,
    allocation := pp | pc | rd,
    public_ip := inet:ip_address(),
    public_port := inet:port_number(),
    detected_at := integer(),
    confidence := high | medium | low,
    atom() => term()
}.

-define(TABLE, ?MODULE).

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc Detect local NAT characteristics (cached profile unless `force').
-spec detect() -> {ok, nat_profile()} | {error, term()}.
detect() ->
    detect(#{}).

%% @doc Options: `force' (boolean), `timeout' (ms, default 5000),
%% `observers' (list of `{Ip, Port}', `<<"host:port">>' or `"host:port"').
-spec detect(map()) -> {ok, nat_profile()} | {error, term()}.
detect(Opts) when is_map(Opts) ->
    {error, not_implemented};
detect(_) ->
    {error, badarg}.

%% @doc The last detected profile, without touching the network.
-spec get_local_profile() -> {ok, nat_profile()} | {error, not_detected}.
get_local_profile() ->
    try ets:lookup(?TABLE, profile) of
        [{profile, P}] -> {ok, P};
        [] -> {error, not_detected}
    catch
        error:badarg -> {error, not_detected}
    end.

%% @doc Reflexive address of this node as reported by a peer.
-spec add_observation(inet:ip_address(), inet:port_number()) -> ok | {error, term()}.
add_observation(Ip, Port) when is_tuple(Ip), is_integer(Port) ->
    {error, not_implemented};
add_observation(_, _) ->
    {error, badarg}.

%% @doc Trigger a background re-detection (e.g. after a network change).
-spec refresh() -> ok | {error, term()}.
refresh() ->
    {error, not_implemented}.

%% @doc `Pid' receives `{nat_profile_changed, Old, New}' whenever the
%% profile changes, until it unsubscribes or dies.
-spec subscribe(pid()) -> ok | {error, term()}.
subscribe(Pid) when is_pid(Pid) ->
    call({subscribe, Pid});
subscribe(_) ->
    {error, badarg}.

-spec unsubscribe(pid()) -> ok | {error, term()}.
unsubscribe(Pid) when is_pid(Pid) ->
    call({unsubscribe, Pid});
unsubscribe(_) ->
    {error, badarg}.

call(Request) ->
    try
        gen_server:call(?MODULE, Request)
    catch
        exit:{noproc, _} -> {error, not_started}
    end.

%% gen_server

-spec init(map()) -> {ok, map()}.
init(Opts) ->
    ?TABLE = ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #{opts => Opts, subscribers => #{}}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({subscribe, Pid}, _From, #{subscribers := Subs} = State) ->
    case maps:is_key(Pid, Subs) of
        true ->
            {reply, ok, State};
        false ->
            Mon = erlang:monitor(process, Pid),
            ?LOG_DEBUG("subscriber ~p added", [Pid]),
            {reply, ok, State#{subscribers := Subs#{Pid => Mon}}}
    end;
handle_call({unsubscribe, Pid}, _From, #{subscribers := Subs} = State) ->
    case maps:take(Pid, Subs) of
        {Mon, Rest} ->
            erlang:demonitor(Mon, [flush]),
            {reply, ok, State#{subscribers := Rest}};
        error ->
            {reply, ok, State}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'DOWN', _Mon, process, Pid, _Reason}, #{subscribers := Subs} = State) ->
    ?LOG_DEBUG("subscriber ~p gone", [Pid]),
    {noreply, State#{subscribers := maps:remove(Pid, Subs)}};
handle_info(_Info, State) ->
    {noreply, State}.
