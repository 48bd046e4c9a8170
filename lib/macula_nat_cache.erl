%% @doc Cache of peers' NAT profiles with TTL and stale-while-revalidate.
%% Not built yet (issue: NAT profile cache and the DHT): every call answers
%% `{error, not_implemented}'; the process is in the tree so the supervision
%% shape is final.
-module(macula_nat_cache).
-behaviour(gen_server).

-export([start_link/1, get/1, get_from_dht/1, put/2, put/3, invalidate/1, stats/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-type nat_profile() :: macula_nat_detector:nat_profile().

-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

-spec get(binary()) -> {ok, nat_profile()} | {stale, nat_profile()} | {error, term()}.
get(NodeId) when is_binary(NodeId) -> {error, not_implemented};
get(_) -> {error, badarg}.

-spec get_from_dht(binary()) -> {ok, nat_profile()} | {error, term()}.
get_from_dht(NodeId) when is_binary(NodeId) -> {error, not_implemented};
get_from_dht(_) -> {error, badarg}.

-spec put(binary(), nat_profile()) -> ok | {error, term()}.
put(NodeId, Profile) when is_binary(NodeId), is_map(Profile) -> {error, not_implemented};
put(_, _) -> {error, badarg}.

-spec put(binary(), nat_profile(), pos_integer()) -> ok | {error, term()}.
put(NodeId, Profile, Ttl) when is_binary(NodeId), is_map(Profile), is_integer(Ttl), Ttl > 0 ->
    {error, not_implemented};
put(_, _, _) -> {error, badarg}.

-spec invalidate(binary()) -> ok | {error, term()}.
invalidate(NodeId) when is_binary(NodeId) -> {error, not_implemented};
invalidate(_) -> {error, badarg}.

-spec stats() -> map() | {error, term()}.
stats() -> {error, not_implemented}.

-spec init(map()) -> {ok, map()}.
init(Opts) -> {ok, #{opts => Opts}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(_Request, _From, State) -> {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.

-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(_Info, State) -> {noreply, State}.
