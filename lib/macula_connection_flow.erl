%% @doc Flow control helper for `macula_connection' in `{active, true}'
%% (the default): looks at connection owners' mailboxes for the NIF, which
%% cannot.
%%
%% A connection's reader hands messages to its owner within a window
%% (1,000 messages, 4 MiB of wire bytes) not yet known to be consumed. At
%% half a window it sends this process `{macula_connection_flow, check,
%% Conn, Owner, Token}'; the answer is `process_info(Owner,
%% message_queue_len)' passed to `macula_nat_nif:conn_credit/3': at most
%% that many of the reader's latest deliveries can still be queued, so the
%% older ones are confirmed consumed. While the window is full the NIF
%% answers `wait' and this process looks again after 1, 2, 4 .. 64 ms until
%% the owner is down to half a window. One O(1) look per ~500 messages
%% while the owner keeps up; a stalled owner costs at most ~16 looks a
%% second and its mailbox stops growing.
%%
%% It is one registered process, a child of `macula_nat_system' after
%% the relay node (a restart of it restarts only the log forwarder after
%% it, and a connection whose
%% owner only receives gets it back), also started on demand by
%% `macula_connection' (when loaded and on each call, a `whereis' when
%% running) for connections used before the system is up; the supervisor
%% adopts one started that way. A reader that
%% finds it missing waits with its messages on the QUIC stream (bounded)
%% and asks again every 50 ms; a check it lost (this process restarted) is
%% asked again after 1 s. Nothing here can block on a peer.
%%
%% It also watches relayed connections for telemetry (`watch/2', while a
%% `telemetry' module is there): the path change goes to the owner by
%% message from the NIF, which no library code sees, so their method is
%% read every 250 ms and a change is emitted as
%% `[macula_nat, connection, method_changed]' (and a punch outcome); a
%% watch ends when the connection closes.
-module(macula_connection_flow).
-behaviour(gen_server).

-export([ensure_started/0, start/0, start_link/1, watch/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(MAX_DELAY_MS, 64).
-define(WATCH_MS, 250).

%% @doc Starts the helper unless it runs; never blocks on another process.
-spec ensure_started() -> ok.
ensure_started() ->
    case whereis(?MODULE) of
        undefined -> _ = start(), ok;
        _ -> ok
    end.

%% @doc Starts the helper (not linked to the caller, which may be any
%% process): `{ok, Pid}', or the running one's pid.
-spec start() -> {ok, pid()}.
start() ->
    case gen_server:start({local, ?MODULE}, ?MODULE, [], []) of
        {ok, Pid} -> {ok, Pid};
        {error, {already_started, Pid}} -> {ok, Pid}
    end.

%% @doc Emits `[macula_nat, connection, method_changed]' when `Conn''s
%% method changes (read every 250 ms) until it closes; `Meta' (with the
%% peer) goes into the event's metadata.
-spec watch(macula_connection:connection(), map()) -> ok.
watch(Conn, Meta) ->
    ok = ensure_started(),
    gen_server:cast(?MODULE, {watch, Conn, Meta, erlang:monotonic_time()}).

%% @doc Supervisor entry (`macula_nat_system'): the helper, linked to the
%% supervisor; one already running (started on demand) is adopted.
-spec start_link(map()) -> {ok, pid()}.
start_link(_Opts) ->
    {ok, Pid} = start(),
    link(Pid),
    ok = gen_server:call(Pid, {supervised_by, self()}),
    {ok, Pid}.

%% @private
-spec init([]) -> {ok, map()}.
init([]) ->
    %% An exit signal from a tool that sweeps processes should not stall
    %% every default connection: only the supervisor's exit ends it.
    process_flag(trap_exit, true),
    {ok, #{supervisor => undefined, watched => #{}, polling => false}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({supervised_by, Sup}, _From, State) ->
    {reply, ok, State#{supervisor := Sup}};
handle_call(_, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast({watch, Conn, Meta, Since}, #{watched := W} = State) ->
    case method(Conn) of
        closed -> {noreply, State};
        M -> {noreply, poll_soon(State#{watched := W#{Conn => {M, Since, Meta}}})}
    end;
handle_cast(_, State) ->
    {noreply, State}.

poll_soon(#{polling := true} = State) ->
    State;
poll_soon(State) ->
    erlang:send_after(?WATCH_MS, self(), poll),
    State#{polling := true}.

method(Conn) ->
    try macula_nat_nif:conn_info(Conn) of
        #{closed := true} -> closed;
        #{connection_method := M} -> M;
        _ -> closed
    catch
        _:_ -> closed
    end.

poll(Watched) ->
    maps:fold(fun(Conn, {Old, Since, Meta}, Acc) ->
                      case method(Conn) of
                          closed ->
                              Acc;
                          Old ->
                              Acc#{Conn => {Old, Since, Meta}};
                          New ->
                              Now = erlang:monotonic_time(),
                              Meas = #{duration => Now - Since, system_time => erlang:system_time()},
                              macula_nat_telemetry:execute([macula_nat, connection, method_changed], Meas,
                                                           Meta#{from => Old, to => New}),
                              _ = New =:= punched andalso
                                  macula_nat_telemetry:execute(
                                    [macula_nat, punch, stop], #{duration => Now - Since},
                                    Meta#{outcome => success, method => punched, upgrade => true}),
                              Acc#{Conn => {New, Now, Meta}}
                      end
              end, #{}, Watched).

%% @private
-spec handle_info(term(), map()) -> {noreply, map()} | {stop, term(), map()}.
handle_info({macula_connection_flow, check, Conn, Owner, Token}, State) ->
    look(Conn, Owner, Token, 1),
    {noreply, State};
handle_info({look, Conn, Owner, Token, Delay}, State) ->
    look(Conn, Owner, Token, Delay),
    {noreply, State};
handle_info(poll, #{watched := W} = State) ->
    W1 = poll(W),
    State1 = State#{watched := W1, polling := false},
    case map_size(W1) of
        0 -> {noreply, State1};
        _ -> {noreply, poll_soon(State1)}
    end;
handle_info({'EXIT', Sup, Reason}, #{supervisor := Sup} = State) ->
    {stop, Reason, State};
handle_info(_, State) ->
    {noreply, State}.

look(Conn, Owner, Token, Delay) ->
    Len = case erlang:process_info(Owner, message_queue_len) of
              {message_queue_len, L} -> L;
              %% Gone: the connection is closing; nothing to hold back.
              undefined -> 0
          end,
    try macula_nat_nif:conn_credit(Conn, Token, Len) of
        wait ->
            erlang:send_after(Delay, self(), {look, Conn, Owner, Token, min(2 * Delay, ?MAX_DELAY_MS)}),
            ok;
        _ ->
            ok
    catch
        _:_ -> ok
    end.
