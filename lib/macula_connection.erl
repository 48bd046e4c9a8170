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
%% <li>`{macula_connection, Conn, {closed, Reason}}' once, at the end;
%%     `Reason' is `normal' (closed here), `{peer_closed, Text}',
%%     `node_closed', `timeout' (peer silent past the idle timeout),
%%     `reset' or `{failed, Text}'.</li>
%% </ul>
%% The owner is monitored: when it dies, the connection closes.
-module(macula_connection).

-export([send/2, get_info/2, close/1, controlling_process/2, accept/0, accept/1, open/2, open/3]).

-opaque connection() :: reference().
-export_type([connection/0]).

-define(SEND_TIMEOUT, 30000).

%% @doc Sends any term; `ok' once it is queued, in call order, on the
%% connection (when more than 4 MiB are queued, once it has reached the
%% stream). `{error, closed}' after the connection closed.
-spec send(connection(), term()) -> ok | {error, term()}.
send(Conn, Term) when is_reference(Conn) ->
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
    case info(Conn) of
        #{Key := Value} -> Value;
        #{} -> {error, badarg};
        {error, _} = E -> E
    end;
get_info(_, _) ->
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
    try macula_nat_nif:conn_set_owner(Conn, Pid)
    catch error:badarg -> {error, badarg}
    end;
controlling_process(_, _) ->
    {error, badarg}.

%% @doc Waits for the next incoming connection; the caller owns it.
-spec accept() -> {ok, connection()} | {error, term()}.
accept() ->
    accept(infinity).

-spec accept(timeout()) -> {ok, connection()} | {error, term()}.
accept(Timeout) when Timeout =:= infinity; is_integer(Timeout), Timeout >= 0 ->
    %% Once the node has joined a rendezvous, incoming connections (from
    %% traversal sessions and unsolicited dials alike) come through it.
    case macula_nat_coordinator:signal() of
        {ok, Sig} ->
            macula_nat_async:call(fun(Ref) -> macula_nat_nif:signal_accept(Ref, Sig) end, Timeout);
        {error, _} ->
            with_node(fun(Node) ->
                              macula_nat_async:call(fun(Ref) -> macula_nat_nif:conn_accept(Ref, Node) end,
                                                    Timeout)
                      end)
    end;
accept(_) ->
    {error, badarg}.

%% @doc Dials a peer whose address is known (no traversal): the connection
%% is `direct'. `macula_nat_connector:connect/2' is the call that finds the
%% path; this one is for public peers and tests.
-spec open(macula_nat_endpoint:endpoint(), binary()) -> {ok, connection()} | {error, term()}.
open(Endpoint, PeerId) ->
    open(Endpoint, PeerId, #{}).

-spec open(macula_nat_endpoint:endpoint(), binary(), #{timeout => timeout()}) ->
    {ok, connection()} | {error, term()}.
open(Endpoint, PeerId, Opts) when is_binary(PeerId), is_map(Opts) ->
    case macula_nat_endpoint:parse(Endpoint) of
        {ok, Addr} ->
            with_node(fun(Node) ->
                              macula_nat_async:call(
                                fun(Ref) -> macula_nat_nif:conn_open(Ref, Node, Addr, PeerId) end,
                                maps:get(timeout, Opts, 10000))
                      end);
        {error, _} = E ->
            E
    end;
open(_, _, _) ->
    {error, badarg}.

with_node(Fun) ->
    case macula_nat_node:resource() of
        {ok, Node} -> Fun(Node);
        {error, _} = E -> E
    end.
