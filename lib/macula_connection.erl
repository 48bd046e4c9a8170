%% @doc An end-to-end QUIC connection between two node identities, on the
%% node's one UDP socket, authenticated by node key on both sides.
%%
%% The owning process (the one that connected or accepted; see
%% `controlling_process/2') receives, in order:
%% <ul>
%% <li>`{macula_connection, Conn, {message, Term}}' for each term the peer
%%     sent with `send/2' (reliable, ordered);</li>
%% <li>`{macula_connection, Conn, {unsafe_message, Binary}}' when a term
%%     would need atoms that do not exist on this node (they are never
%%     created from peer input);</li>
%% <li>`{macula_connection, Conn, {method_changed, Method}}' when the path
%%     changes, e.g. a relayed connection that moved to a punched path
%%     (`get_info(Conn, connection_method)' says the same from then on;
%%     no message is lost or reordered by the move);</li>
%% <li>`{macula_connection, Conn, passive}' when an `{active, N}' counter
%%     runs out (after the Nth message);</li>
%% <li>`{macula_connection, Conn, {closed, Reason}}' once, at the end,
%%     after the last message delivered (in passive mode: after the last
%%     one taken with `recv'); `Reason' is `normal' (closed here),
%%     `{peer_closed, Text}', `node_closed', `timeout' (peer silent past
%%     the idle timeout), `reset', `{failed, Text}' or
%%     `{too_large, Size, Limit}' (the peer sent a message over the
%%     maximum message size, `max_message_bytes', 8 MiB by default, or a
%%     compressed term that declares more than that once inflated; it is
%%     refused before anything that size is allocated, and the peer sees
%%     `{peer_closed, Text}').</li>
%% </ul>
%% The owner is monitored: when it dies, the connection closes.
%%
%% == Who owns a new connection ==
%% The process that asked for it (`open/2,3', `accept/0,1',
%% `macula_nat_connector:connect/2,3' and the other calls that make a
%% connection), with two exceptions that fit Elixir:
%% <ul>
%% <li>an `owner' option (`owner => Pid', a local process) names the owner
%%     outright;</li>
%% <li>a caller with `$callers' in its process dictionary (an Elixir
%%     `Task', or any process started on behalf of another) makes it for
%%     the first of them, the process that started the task: a LiveView or
%%     GenServer that does `Task.async(fn -> connect(...) end)' gets a
%%     connection that outlives the task, and its messages. `owner =>
%%     self()' keeps it in the calling process.</li>
%% </ul>
%% The connection is handed over before the call returns, so nothing the
%% peer sends is lost or reordered (the reader pauses while the caller's
%% mailbox is emptied of the connection's messages, which go first). An
%% owner that is no longer alive: `{error, closed}' (the connection is
%% closed). `controlling_process/2' moves it later.
%%
%% == Flow control ==
%% Like `gen_tcp', the `active' option says who receives (`setopts/2', or
%% `active' in the options of `open/3' and `accept/1'):
%% <ul>
%% <li>`true' (the default): messages as above, but no more than 1,000
%%     messages nor 4 MiB of encoded terms (plus one message, if larger)
%%     from this connection in the owner's mailbox that the owner has not
%%     taken (give or take the few in transit when the mailbox is looked
%%     at: 1,005 at most in the flood test); then the connection stops reading from the network until the
%%     owner is down to half of that. The rest waits in QUIC's receive
%%     window (16 MiB for the message stream, outside the BEAM's heap),
%%     then the peer's `send/2' waits (see `send/2'). So an owner that
%%     stops reading holds at most that much per connection (decoded
%%     terms can take more room than their encoding, up to ~16x for a
%%     list of small integers), and the guide's plain `receive' loops
%%     work unchanged. (An owner that leaves over 500 unrelated messages in its
%%     mailbox while waiting for one from this connection will wait: use
%%     `{active, N}' or `recv' there.)</li>
%% <li>`once': one message, then passive (no `passive' message).</li>
%% <li>`N' (-32768..32767): N more messages, then
%%     `{macula_connection, Conn, passive}'; setting N while a counter runs
%%     adds to it; a counter at 0 or below turns passive at once (and sends
%%     `passive').</li>
%% <li>`false': nothing is sent; take messages with `recv/1,2'.</li>
%% </ul>
%% `method_changed' and `closed' arrive in every mode; they are not
%% counted. The mode (and an `{active, N}' counter) goes with the
%% connection through `controlling_process/2'; the new owner's window
%% starts empty (messages already in the old owner's mailbox stay there,
%% as with `gen_tcp').
%%
%% == Quality ==
%% Every connection is monitored (its QUIC counters are sampled four
%% times a second; no extra packet): `stats/1' answers the figures below,
%% and `get_info/2' answers each of them by its key. `setopts(Conn,
%% [{quality, IntervalMs}])' (at least 100 ms; `false' stops it) makes the
%% owner receive, in every mode and not counted against `active':
%% <ul>
%% <li>`{macula_connection, Conn, {quality, Map}}' every `IntervalMs';</li>
%% <li>`{macula_connection, Conn, {path_degraded, silent | {lossy, Loss}}}'
%%     when the path stops delivering (no datagram for 2.2 s on a
%%     connection that exchanges a keep-alive every second: a black hole)
%%     or loses more than 10 % of its packets over 5 s;</li>
%% <li>`{macula_connection, Conn, path_recovered}' when it delivers again
%%     (the loss under 5 %).</li>
%% </ul>
%% `Map': `srtt_ms', `min_rtt_ms', `jitter_ms' (mean deviation between
%% successive RTT readings), `loss' (lost/sent over the last 5 s, 0.0-1.0),
%% `lost_packets', `sent_packets', `bytes_in', `bytes_out', `datagrams_in',
%% `datagrams_out' (UDP, QUIC's overhead included), `messages_in',
%% `messages_out', `silent_ms' (since the last datagram), `degraded'
%% (`false', `silent' or `{lossy, Loss}'), and the path: `connection_method',
%% `local_address', `remote_address', `relay' (the relay's node id or
%% `undefined'), with `peer', `rtt_ms' and `closed'.
-module(macula_connection).

-export([send/2, get_info/2, stats/1, close/1, controlling_process/2, accept/0, accept/1, open/2, open/3,
         setopts/2, recv/1, recv/2, recv/3]).
%% Internal: the connector, coordinator and relay node make connections too.
-export([owner/1, hand_over/3]).

-on_load(on_load/0).

-opaque connection() :: reference().
-type active() :: boolean() | once | -32768..32767.
-type option() :: {active, active()} | {quality, pos_integer() | false}.
-export_type([connection/0, active/0, option/0]).

-define(SEND_TIMEOUT, 30000).

%% @doc Sends any term; `ok' once it is queued, in call order, on the
%% connection. Back-pressure: while more than 4 MiB are queued (the peer
%% is slower than us, or its owner stopped reading and QUIC's windows are
%% full), the call waits until its term has reached the stream, at most 30
%% s, then answers `{error, timeout}' (the term stays queued and is sent
%% when the peer reads again). So a sender holds at most 4 MiB queued plus
%% QUIC's 32 MiB send window, plus one term per waiting caller (and one
%% per timed-out call until the peer reads).
%% `{error, closed}' after the connection closed, `{error, too_large}' over
%% the maximum message size (`max_message_bytes', 8 MiB by default; the
%% encoded term counts, compressed or not).
-spec send(connection(), term()) -> ok | {error, term()}.
send(Conn, Term) when is_reference(Conn) ->
    ok = macula_connection_flow:ensure_started(),
    try term_to_binary(Term) of
        Bin ->
            %% `ok' at once while the connection's queue is short; past
            %% its high-water mark the NIF answers later, by message.
            Ref = make_ref(),
            case macula_nat_nif:conn_send(Ref, Conn, Bin) of
                ok -> ok;
                {error, _} = E -> E;
                {ok, _} = Started ->
                    macula_nat_async:call(fun(_) -> Started end, Ref, ?SEND_TIMEOUT)
            end
    catch
        error:badarg -> {error, badarg}
    end;
send(_, _) ->
    {error, badarg}.

%% @doc One property of the connection: `connection_method' (`direct',
%% `punched' or `relayed', now), `peer' (the peer's NodeId),
%% `remote_address' (`<<"ip:port">>' of the current path; a relayed path
%% shows a virtual 240.x.y.z address), `rtt_ms', `closed' (boolean),
%% `relay' (the NodeId of the relay a relayed connection goes through now,
%% `undefined' when it is not relayed).
-spec get_info(connection(), atom()) -> term() | {error, term()}.
get_info(Conn, Key) when is_reference(Conn), is_atom(Key) ->
    ok = macula_connection_flow:ensure_started(),
    case info(Conn) of
        #{Key := Value} -> Value;
        #{} -> {error, badarg};
        {error, _} = E -> E
    end;
get_info(_, _) ->
    {error, badarg}.

%% @doc The connection's quality and path figures (see Quality above).
%% Errors: `badarg'.
-spec stats(connection()) -> {ok, map()} | {error, term()}.
stats(Conn) when is_reference(Conn) ->
    case info(Conn) of
        #{} = M -> {ok, M};
        {error, _} = E -> E
    end;
stats(_) ->
    {error, badarg}.

info(Conn) ->
    try macula_nat_nif:conn_info(Conn)
    catch error:badarg -> {error, badarg}
    end.

-spec close(connection()) -> ok | {error, term()}.
close(Conn) when is_reference(Conn) ->
    try macula_nat_nif:conn_close(Conn)
    catch error:badarg -> {error, badarg}
    end;
close(_) ->
    {error, badarg}.

%% @doc Hands the connection to `Pid' (called by the current owner, like
%% `gen_tcp:controlling_process/2'); later messages go to `Pid', which is
%% monitored from now on. Errors: `not_owner', `closed', `badarg'.
-spec controlling_process(connection(), pid()) -> ok | {error, term()}.
controlling_process(Conn, Pid) when is_reference(Conn), is_pid(Pid) ->
    ok = macula_connection_flow:ensure_started(),
    try macula_nat_nif:conn_set_owner(Conn, Pid)
    catch error:badarg -> {error, badarg}
    end;
controlling_process(_, _) ->
    {error, badarg}.

%% @doc Sets the connection's options, like `inet:setopts/2': a list
%% (`[{active, true | false | once | N}, {quality, IntervalMs | false}]')
%% or a map (`#{active => A}'); `quality': see Quality above.
%% Any process may call it. Errors: `badarg' (an unknown option, a bad
%% value, an `{active, N}' counter that would pass 32767), `closed'.
-spec setopts(connection(), [option()] | #{active => active(), quality => pos_integer() | false}) ->
    ok | {error, term()}.
setopts(Conn, Opts) when is_reference(Conn), is_map(Opts) ->
    setopts(Conn, maps:to_list(Opts));
setopts(Conn, Opts) when is_reference(Conn), is_list(Opts) ->
    ok = macula_connection_flow:ensure_started(),
    case valid_opts(Opts) of
        true -> lists:foldl(fun(Opt, ok) -> setopt(Conn, Opt); (_, E) -> E end, ok, Opts);
        false -> {error, badarg}
    end;
setopts(_, _) ->
    {error, badarg}.

valid_opts([]) -> true;
valid_opts([{active, A} | Rest]) -> valid_active(A) andalso valid_opts(Rest);
valid_opts([{quality, false} | Rest]) -> valid_opts(Rest);
valid_opts([{quality, I} | Rest]) when is_integer(I), I >= 100, I =< 86400000 -> valid_opts(Rest);
valid_opts(_) -> false.

valid_active(A) when is_boolean(A); A =:= once -> true;
valid_active(N) when is_integer(N), N >= -32768, N =< 32767 -> true;
valid_active(_) -> false.

setopt(Conn, {active, A}) ->
    try macula_nat_nif:conn_setopts(Conn, A)
    catch error:badarg -> {error, badarg}
    end;
setopt(Conn, {quality, I}) ->
    try macula_nat_nif:conn_quality(Conn, I)
    catch error:badarg -> {error, badarg}
    end.

%% @doc `recv(Conn, infinity)'.
-spec recv(connection()) -> {ok, term()} | {error, term()}.
recv(Conn) ->
    recv(Conn, infinity).

%% @doc The next message of a passive connection (`{active, false}'), for
%% its owner: `{ok, Term}' for a term the peer sent;
%% `{error, {unsafe_message, Binary}}' for a term that would need atoms
%% unknown here (the connection stays usable); `{error, timeout}' when
%% nothing came in `Timeout' ms (nothing is lost: the message, if it comes
%% later, is for the next `recv'); `{error, closed}' once the connection
%% has ended and every message received before has been taken (the owner
%% also gets `{closed, Reason}' then, with the reason); `{error,
%% not_passive}' in an active mode, `{error, not_owner}', `{error,
%% badarg}'. `method_changed' stays a message to the owner in every mode.
-spec recv(connection(), timeout()) -> {ok, term()} | {error, term()}.
recv(Conn, Timeout) when is_reference(Conn),
                         (Timeout =:= infinity orelse (is_integer(Timeout) andalso Timeout >= 0)) ->
    ok = macula_connection_flow:ensure_started(),
    Ref = make_ref(),
    try macula_nat_nif:conn_recv(Ref, Conn) of
        {wait, Id} ->
            receive
                {macula_nat_reply, Ref, Reply} -> Reply
            after Timeout ->
                case macula_nat_nif:conn_recv_cancel(Conn, Id) of
                    ok -> {error, timeout};
                    %% Lost the race: the message is on its way; take it.
                    sent -> receive {macula_nat_reply, Ref, Reply} -> Reply end
                end
            end;
        {error, _} = E ->
            E
    catch
        error:badarg -> {error, badarg}
    end;
recv(_, _) ->
    {error, badarg}.

%% @doc `gen_tcp:recv/3' shaped: `Length' must be 0 (a whole message).
-spec recv(connection(), 0, timeout()) -> {ok, term()} | {error, term()}.
recv(Conn, 0, Timeout) ->
    recv(Conn, Timeout);
recv(_, _, _) ->
    {error, badarg}.

%% @doc Waits for the next incoming connection; the caller owns it.
-spec accept() -> {ok, connection()} | {error, term()}.
accept() ->
    accept(infinity).

%% @doc `accept(Timeout)', or `accept(#{timeout => Timeout, active => A,
%% owner => Pid})': the connection starts in mode `A' (default `true'; see
%% the module doc), so no message slips past it; `owner' as in the module
%% doc ("Who owns a new connection").
-spec accept(timeout() | #{timeout => timeout(), active => active(), owner => pid()}) ->
    {ok, connection()} | {error, term()}.
accept(Opts) when is_map(Opts) ->
    Timeout = maps:get(timeout, Opts, infinity),
    Active = maps:get(active, Opts, true),
    case (Timeout =:= infinity orelse (is_integer(Timeout) andalso Timeout >= 0))
        andalso valid_active(Active)
        andalso maps:size(maps:without([timeout, active, owner], Opts)) =:= 0
        andalso owner(Opts) of
        {ok, Owner} -> accept(Timeout, Active, Owner);
        _ -> {error, badarg}
    end;
accept(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    {ok, Owner} = owner(#{}),
    accept(Timeout, true, Owner);
accept(_) ->
    {error, badarg}.

accept(Timeout, Active, Owner) when Owner =:= self() ->
    watched(do_accept(Timeout, Active));
accept(Timeout, Active, Owner) ->
    %% Made passive (nothing delivered here), then handed over.
    case do_accept(Timeout, false) of
        {ok, Conn} -> watched(hand_over(Conn, Owner, Active));
        Other -> Other
    end.

%% A relayed connection may move to a punched path: telemetry hears of it
%% from the flow helper's watch (the owner's message is the NIF's).
watched({ok, Conn} = Ok) ->
    case macula_nat_telemetry:enabled() andalso info(Conn) of
        #{connection_method := relayed, peer := Peer} ->
            macula_connection_flow:watch(Conn, #{peer => macula_nat_id:format(Peer)});
        _ ->
            ok
    end,
    Ok;
watched(Other) ->
    Other.

do_accept(Timeout, Active) ->
    ok = macula_connection_flow:ensure_started(),
    %% Once the node has joined a rendezvous, incoming connections (from
    %% traversal sessions and unsolicited dials alike) come through it.
    case macula_nat_coordinator:signal() of
        {ok, Sig} ->
            macula_nat_async:call(fun(Ref) -> macula_nat_nif:signal_accept(Ref, Sig, Active) end, Timeout);
        {error, _} ->
            with_node(fun(Node) ->
                              macula_nat_async:call(fun(Ref) -> macula_nat_nif:conn_accept(Ref, Node, Active) end,
                                                    Timeout)
                      end)
    end.

%% @doc Dials a peer whose address is known (no traversal): the connection
%% is `direct'. `macula_nat_connector:connect/2' is the call that finds the
%% path; this one is for public peers and tests.
-spec open(macula_nat_endpoint:endpoint(), binary()) -> {ok, connection()} | {error, term()}.
open(Endpoint, PeerId) ->
    open(Endpoint, PeerId, #{}).

%% @doc As `open/2' with options: `timeout' (ms, default 10000), `active'
%% (the mode the connection starts in, default `true'; see the module
%% doc), `owner' (see the module doc). A bad `active' or `owner' is
%% `{error, badarg}'. `PeerId' is the 32-byte NodeId or its hex form.
-spec open(macula_nat_endpoint:endpoint(), binary(),
           #{timeout => timeout(), active => active(), owner => pid()}) ->
    {ok, connection()} | {error, term()}.
open(Endpoint, PeerId0, Opts) when is_binary(PeerId0), is_map(Opts) ->
    PeerId = macula_nat_id:normalize(PeerId0),
    Active = maps:get(active, Opts, true),
    case {valid_active(Active), owner(Opts), macula_nat_endpoint:parse(Endpoint)} of
        {true, {ok, Owner}, {ok, Addr}} ->
            ok = macula_connection_flow:ensure_started(),
            %% Made passive when it goes to another owner (nothing is
            %% delivered here), then handed over.
            Initial = case Owner =:= self() of true -> Active; false -> false end,
            Span = macula_nat_telemetry:span_start([macula_nat, connect],
                                                   #{peer => macula_nat_id:format(PeerId), via => open,
                                                     endpoint => macula_nat_endpoint:format(Addr)}),
            Result = try
                         with_node(fun(Node) ->
                                           macula_nat_async:call(
                                             fun(Ref) -> macula_nat_nif:conn_open(Ref, Node, Addr, PeerId, Initial) end,
                                             maps:get(timeout, Opts, 10000))
                                   end)
                     catch
                         Class:Reason:Stack ->
                             macula_nat_telemetry:span_exception(Span, Class, Reason, Stack),
                             erlang:raise(Class, Reason, Stack)
                     end,
            Final = case Result of
                        {ok, Conn} when Owner =/= self() -> hand_over(Conn, Owner, Active);
                        _ -> Result
                    end,
            macula_nat_telemetry:span_stop(Span, #{}, case Final of
                                                          {ok, _} -> #{method => direct};
                                                          {error, R} -> #{error => R}
                                                      end),
            Final;
        {true, {ok, _}, {error, _} = E} ->
            E;
        _ ->
            {error, badarg}
    end;
open(_, _, _) ->
    {error, badarg}.

%% @private The owner of a connection the calling process makes with
%% options `Opts' (see the module doc): `{ok, Pid}' or `{error, badarg}'.
-spec owner(map()) -> {ok, pid()} | {error, badarg}.
owner(#{owner := Pid}) when is_pid(Pid), node(Pid) =:= node() ->
    {ok, Pid};
owner(#{owner := _}) ->
    {error, badarg};
owner(_) ->
    case get('$callers') of
        [Caller | _] when is_pid(Caller), node(Caller) =:= node() -> {ok, Caller};
        _ -> {ok, self()}
    end.

%% @private Hands `Conn', owned by the calling process, to `Owner' and
%% sets mode `Active', losing and reordering nothing: deliveries are
%% paused (`{active, 0}'), and the reader's `passive' notice (or the
%% `closed' message) says every message it sent here has arrived; the
%% owner changes; the connection's messages still here go to `Owner'
%% first, then `Active' resumes deliveries, to `Owner'. `{error, closed}'
%% (the connection is closed) when `Owner' is not alive.
-spec hand_over(connection(), pid(), active()) -> {ok, connection()} | {error, term()}.
hand_over(Conn, Owner, _Active) when Owner =:= self() ->
    {ok, Conn};
hand_over(Conn, Owner, Active) ->
    Ended = case macula_nat_nif:conn_setopts(Conn, 0) of
                ok -> fence(Conn);
                {error, closed} -> true
            end,
    case macula_nat_nif:conn_set_owner(Conn, Owner) of
        ok ->
            Closed = forward(Conn, Owner, Ended),
            case Closed orelse macula_nat_nif:conn_setopts(Conn, Active) of
                true -> ok;
                ok -> ok;
                {error, closed} ->
                    %% Ended meanwhile: its `closed' went here or to Owner.
                    forward(Conn, Owner, true)
            end,
            {ok, Conn};
        {error, _} ->
            _ = macula_nat_nif:conn_close(Conn),
            flush(Conn),
            {error, closed}
    end.

%% Waits for the reader's `passive' notice (or the end: `true').
fence(Conn) ->
    receive
        {macula_connection, Conn, passive} -> false;
        {macula_connection, Conn, {closed, _}} = Closed -> self() ! Closed, true
    after 5000 ->
        false
    end.

%% Sends `Owner' this connection's messages from our mailbox, in order;
%% true when `closed' was among them. `Ended': the reader is done, its
%% `closed' message may be on its way here (it chose the owner under the
%% lock that ended it, then sends).
forward(Conn, Owner, Ended) ->
    receive
        {macula_connection, Conn, {closed, _}} = M -> Owner ! M, true;
        {macula_connection, Conn, passive} -> forward(Conn, Owner, Ended);
        {macula_connection, Conn, _} = M -> Owner ! M, forward(Conn, Owner, Ended)
    after 0 ->
        Ended andalso wait_closed(Conn, Owner)
    end.

wait_closed(Conn, Owner) ->
    receive
        {macula_connection, Conn, {closed, _}} = M -> Owner ! M, true
    after 1000 ->
        %% It went to Owner.
        true
    end.

flush(Conn) ->
    receive {macula_connection, Conn, _} -> flush(Conn)
    after 0 -> ok
    end.

%% The flow helper runs as soon as this module is loaded (connections made
%% by the connector reach their owners without a call here); every call
%% makes sure it still does.
on_load() ->
    %% In a process of its own: this module is not callable until this
    %% returns, and loading another one from here could wait on the code
    %% server.
    _ = spawn(macula_connection_flow, ensure_started, []),
    ok.

with_node(Fun) ->
    case macula_nat_node:resource() of
        {ok, Node} -> Fun(Node);
        {error, _} = E -> E
    end.
