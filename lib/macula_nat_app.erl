%% @doc OTP application callback: starts the `macula_nat_system' tree with
%% the options from the application environment (sys.config / config.exs).
-module(macula_nat_app).
-behaviour(application).

-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    macula_nat_system:start_link(#{}).

-spec stop(term()) -> ok.
stop(_State) ->
    ok.
