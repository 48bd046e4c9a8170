%% @doc Remote side of `macula_lab_peer': a tiny RPC agent that runs inside a
%% BEAM (Erlang or Elixir VM) started in a lab host.
%%
%% Why not distributed Erlang or the `peer' module: lab namespaces have no
%% epmd, the VMs may run different code (an Elixir VM, another build), and a
%% test must own the remote VM's lifetime. So the remote VM talks to the test
%% over the stdio of the Erlang port that started it, nothing else.
%%
%% Wiring: the launcher runs the VM as
%% `sh -c "exec VM... 3<&0 4>&1 0</dev/null 1>&2"', so the channel is fds 3
%% (in) and 4 (out), and everything the VM prints on stdout (io:format,
%% logger, crash reports) lands on stderr instead of corrupting the channel.
%%
%% Protocol (each frame `{packet, 4}' + `term_to_binary'):
%% ```
%% agent -> test  {hello, #{os_pid, otp_release, lang, elixir_version, mailbox}}
%% test -> agent  {setup, [{App, Key, Val}]}   (app loaded, then set_env)
%% agent -> test  {setup_done, ok}
%% test -> agent  {call, Ref, M, F, A, worker | mailbox}
%% agent -> test  {reply, Ref, Result}         Result = value | {badrpc, {Class, Reason}}
%% agent -> test  {msg, Msg}                   any other message to the agent
%% test -> agent  stop                         init:stop()
%% '''
%% `worker' calls run in a fresh process each (they may block, and run
%% concurrently); `mailbox' calls run inside the agent process itself, so what
%% they open or subscribe (sockets, monitors, `self()') belongs to the mailbox
%% and outlives the call. The agent is registered as `macula_lab_agent'; every
%% message it receives that is not protocol traffic is forwarded to the test.
%% On EOF of fd 3 (test VM gone, port closed) the VM halts at once.
-module(macula_lab_agent).
-export([main/0, mailbox/0, start_connect/2]).

%% @doc Entry point (`erl -s macula_lab_agent main', Elixir
%% `-e ":macula_lab_agent.main()" --no-halt'). Returns at once so the boot
%% sequence completes; the agent runs in its own process.
-spec main() -> ok.
main() ->
    _ = spawn(fun init/0),
    ok.

%% @doc The forwarding mailbox (the agent process), for remote code that
%% wants to send notifications to the test.
-spec mailbox() -> pid() | undefined.
mailbox() -> whereis(?MODULE).

%% @doc For the lab test of a connect issued at start: starts macula_nat
%% (configured through the application environment) and at once, with
%% nothing in between, connects to `Target' with `macula_nat_connector:connect/3'.
%% Says whether this node had joined its rendezvous and detected its NAT
%% when it connected, and how long start and connect took (ms). Run it in
%% the mailbox (the connection belongs to the caller).
-spec start_connect(binary(), map()) -> map().
start_connect(Target, Opts) ->
    T0 = erlang:monotonic_time(millisecond),
    {ok, _} = application:ensure_all_started(macula_nat),
    T1 = erlang:monotonic_time(millisecond),
    Joined = element(1, macula_nat_coordinator:signal()) =:= ok,
    Detected = element(1, macula_nat_detector:get_local_profile()) =:= ok,
    {ok, Me} = macula:get_node_id(),
    R = macula_nat_connector:connect(Me, Target, Opts),
    T2 = erlang:monotonic_time(millisecond),
    #{connect => R, joined_before => Joined, detected_before => Detected,
      start_ms => T1 - T0, connect_ms => T2 - T0}.

init() ->
    register(?MODULE, self()),
    process_flag(trap_exit, true),
    Port = open_port({fd, 3, 4}, [{packet, 4}, binary, eof]),
    send(Port, {hello, #{os_pid => os:getpid(),
                         otp_release => erlang:system_info(otp_release),
                         lang => lang(),
                         elixir_version => elixir_version(),
                         mailbox => self()}}),
    loop(Port).

loop(Port) ->
    receive
        {Port, {data, Bin}} ->
            handle(Port, binary_to_term(Bin)),
            loop(Port);
        {Port, eof} -> halt(0);
        {'EXIT', Port, _} -> halt(0);
        Msg ->
            send(Port, {msg, Msg}),
            loop(Port)
    end.

handle(Port, {setup, Env}) ->
    [begin _ = application:load(App), application:set_env(App, K, V) end
     || {App, K, V} <- Env],
    send(Port, {setup_done, ok});
handle(Port, {call, Ref, M, F, A, mailbox}) ->
    send(Port, {reply, Ref, run(M, F, A)});
handle(Port, {call, Ref, M, F, A, worker}) ->
    _ = spawn(fun() -> send(Port, {reply, Ref, run(M, F, A)}) end),
    ok;
handle(_Port, stop) ->
    init:stop().

run(M, F, A) ->
    try apply(M, F, A)
    catch Class:Reason -> {badrpc, {Class, Reason}}
    end.

%% port_command/2 works from any process, so workers reply directly; a frame
%% is written whole, so concurrent replies never interleave.
send(Port, Term) ->
    try erlang:port_command(Port, term_to_binary(Term)), ok
    catch error:badarg -> halt(0)   % channel closed: the test is gone
    end.

lang() ->
    case elixir_version() of
        undefined -> erlang;
        _ -> elixir
    end.

elixir_version() ->
    case lists:keyfind(elixir, 1, application:which_applications()) of
        {elixir, _, Vsn} -> list_to_binary(Vsn);
        false -> undefined
    end.
