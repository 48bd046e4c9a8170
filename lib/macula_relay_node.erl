%% @doc Relay server functionality. Not built yet (issue: relays).
-module(macula_relay_node).

-export([enable/0, enable/1, disable/0, request_relay/2]).

-spec enable() -> ok | {error, term()}.
enable() -> enable(#{}).

%% @doc Options: `max_sessions', `bandwidth_limit' (bytes/s per session),
%% `session_timeout' (ms), `on_session_start', `on_session_end'.
-spec enable(map()) -> ok | {error, term()}.
enable(Opts) when is_map(Opts) -> {error, not_implemented};
enable(_) -> {error, badarg}.

-spec disable() -> ok | {error, term()}.
disable() -> {error, not_implemented}.

-spec request_relay(binary(), map()) -> {ok, term()} | {error, term()}.
request_relay(Target, Opts) when is_binary(Target), is_map(Opts) -> {error, not_implemented};
request_relay(_, _) -> {error, badarg}.
