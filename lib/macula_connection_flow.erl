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
%% It is one registered process, started on demand by `macula_connection'
%% (when loaded and on each call, a `whereis' when running). It is not in
%% the `macula_nat_system' tree (adding a child there changes the tree
%% other code and tests inspect); killed with `kill', it comes back at the
%% next `macula_connection' call. A reader that
%% finds it missing waits with its messages on the QUIC stream (bounded)
%% and asks again every 50 ms; a check it lost (this process restarted) is
%% asked again after 1 s. Nothing here can block on a peer.
-module(macula_connection_flow).

-export([ensure_started/0, start/0, init/1, loop/0]).

-define(MAX_DELAY_MS, 64).

%% @doc Starts the helper unless it runs; never blocks on another process.
-spec ensure_started() -> ok.
ensure_started() ->
    case whereis(?MODULE) of
        undefined -> start(), ok;
        _ -> ok
    end.

%% @doc Starts the helper (not linked to the caller, which may be any
%% process): `{ok, Pid}', or the running one's pid.
-spec start() -> {ok, pid()}.
start() ->
    Parent = self(),
    Ref = make_ref(),
    Pid = proc_lib:spawn(?MODULE, init, [{Parent, Ref}]),
    MRef = monitor(process, Pid),
    receive
        {Ref, started} ->
            demonitor(MRef, [flush]),
            {ok, Pid};
        {'DOWN', MRef, process, Pid, _} ->
            %% Lost the race to register: another one runs.
            case whereis(?MODULE) of
                undefined -> start();
                Other -> {ok, Other}
            end
    end.

%% @private
-spec init({pid(), reference()}) -> no_return().
init({Parent, Ref}) ->
    case catch register(?MODULE, self()) of
        true ->
            %% Nothing links to it, but an exit signal from a tool that
            %% sweeps processes should not stall every default connection.
            process_flag(trap_exit, true),
            Parent ! {Ref, started},
            loop();
        _ ->
            %% Another one started first.
            exit(normal)
    end.

%% @private
-spec loop() -> no_return().
loop() ->
    receive
        {macula_connection_flow, check, Conn, Owner, Token} ->
            look(Conn, Owner, Token, 1);
        {look, Conn, Owner, Token, Delay} ->
            look(Conn, Owner, Token, Delay);
        _ ->
            ok
    end,
    %% Fully qualified: a reloaded module does not kill the helper.
    ?MODULE:loop().

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
