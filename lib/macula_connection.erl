%% @doc An end-to-end QUIC connection between two node identities. Not
%% built yet (issue: connections and hole punching).
-module(macula_connection).

-export([send/2, get_info/2, close/1, controlling_process/2]).

-opaque connection() :: reference().
-export_type([connection/0]).

-spec send(connection(), term()) -> ok | {error, term()}.
send(_Conn, _Term) -> {error, not_implemented}.

-spec get_info(connection(), atom()) -> term() | {error, term()}.
get_info(_Conn, _Key) -> {error, not_implemented}.

-spec close(connection()) -> ok | {error, term()}.
close(_Conn) -> {error, not_implemented}.

-spec controlling_process(connection(), pid()) -> ok | {error, term()}.
controlling_process(_Conn, _Pid) -> {error, not_implemented}.
