%% @doc Real BEAM nodes (Erlang or Elixir VM) inside NAT lab hosts, driven
%% from a test.
%%
%% Why this and not `peer'/`slave'/`rpc': lab namespaces have no epmd and no
%% route to the test VM, and the remote VM may be an Elixir VM running other
%% code. So each peer is an OS process started with
%% `macula-lab exec LAB HOST -- sh -c ... erl|elixir ...' as an Erlang port,
%% and the test talks to `macula_lab_agent' inside it over the port's stdio
%% (`{packet, 4}' frames of `term_to_binary'; protocol in that module). The
%% remote VM dies with the test: when this VM (or the peer's owner process)
%% goes, the port closes, the agent sees EOF and halts.
%%
%% A peer is a process (`pid()') owned by the caller of `start/3'. The owner
%% receives `{macula_lab_peer, Peer, Msg}' for every message the remote agent
%% (registered `macula_lab_agent', see `macula_lab_agent:mailbox/0') receives,
%% and `{macula_lab_peer_down, Peer, ExitStatus}' if the remote VM exits
%% without `stop/1'.
%%
%% Remote pids, ports and refs come back looking like local ones (both VMs are
%% `nonode@nohost'): they are handles to pass back in later calls, nothing more.
-module(macula_lab_peer).
-behaviour(gen_server).

-export([start/3, call/4, call/5, call_mailbox/4, call_mailbox/5, info/1, stop/1,
         default_code_paths/0, repo_root/0]).
-export([boot/4, init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([peer/0, opts/0]).

-type peer() :: pid().
-type opts() :: #{
    lang => erlang | elixir,            % VM to run (default erlang)
    code_paths => [file:filename()],    % default: default_code_paths()
    env => #{atom() | {atom(), atom()} => term()},  % Key (macula_nat) or {App, Key}
    vm_args => [string()],              % extra emulator flags, e.g. ["+S", "1"]
    log => file:filename(),             % remote stdout+stderr (default: this VM's stderr)
    start_timeout => timeout(),         % until the agent says hello (default 60 s)
    owner => pid()}.                    % gets the messages (default self())

-define(CALL_TIMEOUT, 30000).
-define(STOP_GRACE, 5000).

%% @doc Start a VM in `Host' of lab `Lab', load the agent, apply `env'.
-spec start(string(), string(), opts()) -> {ok, peer()} | {error, term()}.
start(Lab, Host, Opts) ->
    Owner = maps:get(owner, Opts, self()),
    proc_lib:start(?MODULE, boot, [Lab, Host, Opts, Owner], infinity).

%% @doc `apply(M, F, A)' in a fresh remote process, 30 s timeout. Exceptions
%% come back as `{badrpc, {Class, Reason}}'; `{badrpc, timeout}' and
%% `{badrpc, nodedown}' are failures of the call itself.
-spec call(peer(), module(), atom(), [term()]) -> term().
call(Peer, M, F, A) -> call(Peer, M, F, A, ?CALL_TIMEOUT).

-spec call(peer(), module(), atom(), [term()], timeout()) -> term().
call(Peer, M, F, A, Timeout) -> request(Peer, {call, M, F, A, worker}, Timeout).

%% @doc Like `call/4' but runs inside the agent's mailbox process, so what
%% the call creates (a socket with `{active, true}', a subscription, a
%% monitor, a link) belongs to the mailbox, outlives the call, and its
%% messages are forwarded to the owner. Blocks forwarding while it runs.
-spec call_mailbox(peer(), module(), atom(), [term()]) -> term().
call_mailbox(Peer, M, F, A) -> call_mailbox(Peer, M, F, A, ?CALL_TIMEOUT).

-spec call_mailbox(peer(), module(), atom(), [term()], timeout()) -> term().
call_mailbox(Peer, M, F, A, Timeout) -> request(Peer, {call, M, F, A, mailbox}, Timeout).

%% @doc What the agent reported at start: `os_pid', `otp_release', `lang',
%% `elixir_version' (binary or `undefined'), `mailbox' (handle), plus `lab',
%% `host' and `start_ms' (port open to agent ready).
-spec info(peer()) -> map().
info(Peer) -> gen_server:call(Peer, info).

%% @doc Graceful stop (`init:stop()' remotely), `kill -9' after 5 s.
-spec stop(peer()) -> ok.
stop(Peer) ->
    try gen_server:call(Peer, stop, infinity)
    catch exit:_ -> ok
    end.

%% @doc `_build/default/lib/*/ebin' of the repository this module lives in.
-spec default_code_paths() -> [file:filename()].
default_code_paths() ->
    filelib:wildcard(filename:join([repo_root(), "_build", "default", "lib", "*", "ebin"])).

%% @doc The repository root, found from this module's source path (recorded
%% at compile time, so it holds wherever the .beam was written), else by
%% walking up from the .beam looking for rebar.config.
-spec repo_root() -> file:filename().
repo_root() ->
    Src = proplists:get_value(source, ?MODULE:module_info(compile), ""),
    FromSrc = filename:dirname(filename:dirname(filename:dirname(Src))),
    case filelib:is_regular(filename:join(FromSrc, "rebar.config")) of
        true -> FromSrc;
        false -> walk_up(filename:dirname(filename:absname(code:which(?MODULE))))
    end.

walk_up("/") -> error(repo_root_not_found);
walk_up(Dir) ->
    case filelib:is_regular(filename:join(Dir, "rebar.config")) of
        true -> Dir;
        false -> walk_up(filename:dirname(Dir))
    end.

%%% gen_server

%% @private Not gen_server:start/3: on OTP 25 a failing init/1 logs a crash
%% report; here a failed start is just `{error, Reason}'.
-spec boot(string(), string(), opts(), pid()) -> ok | no_return().
boot(Lab, Host, Opts, Owner) ->
    case setup(Lab, Host, Opts, Owner) of
        {ok, S} ->
            proc_lib:init_ack({ok, self()}),
            gen_server:enter_loop(?MODULE, [], S);
        {error, _} = E ->
            proc_lib:init_ack(E)
    end.

%% @private
-spec init(term()) -> {stop, not_used}.
init(_) -> {stop, not_used}.

setup(Lab, Host, Opts, Owner) ->
    process_flag(trap_exit, true),
    T0 = erlang:monotonic_time(millisecond),
    case {agent_dir(), macula_lab:bin()} of
        {_, false} ->
            {error, macula_lab_bin_not_found};
        {{ok, AgentDir}, Bin} ->
            Paths = [AgentDir | maps:get(code_paths, Opts, default_code_paths())],
            Argv = ["exec", Lab, Host, "--" | wrap(maps:get(log, Opts, undefined),
                                                 vm(maps:get(lang, Opts, erlang), Paths,
                                                    maps:get(vm_args, Opts, [])))],
            Port = open_port({spawn_executable, Bin},
                             [{args, Argv}, {packet, 4}, binary, exit_status, use_stdio]),
            Env = [env_entry(K, V) || {K, V} <- maps:to_list(maps:get(env, Opts, #{}))],
            Tmo = maps:get(start_timeout, Opts, 60000),
            case handshake(Port, Env, Tmo) of
                {ok, Hello} ->
                    _ = erlang:monitor(process, Owner),
                    Info = Hello#{lab => Lab, host => Host,
                                  start_ms => erlang:monotonic_time(millisecond) - T0},
                    {ok, #{port => Port, owner => Owner, info => Info,
                           pending => #{}, stopping => undefined}};
                {error, _} = E ->
                    catch port_close(Port),
                    E
            end;
        {{error, _} = E, _} ->
            E
    end.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()} | {noreply, map()}.
handle_call({Req, Timeout}, From, #{port := Port, pending := P} = S) ->
    Ref = make_ref(),
    {call, M, F, A, Where} = Req,
    port_command(Port, term_to_binary({call, Ref, M, F, A, Where})),
    TRef = case Timeout of
               infinity -> undefined;
               _ -> erlang:send_after(Timeout, self(), {call_timeout, Ref})
           end,
    {noreply, S#{pending := P#{Ref => {From, TRef}}}};
handle_call(info, _From, #{info := Info} = S) ->
    {reply, Info, S};
handle_call(stop, From, #{port := Port} = S) ->
    port_command(Port, term_to_binary(stop)),
    erlang:send_after(?STOP_GRACE, self(), stop_grace),
    {noreply, S#{stopping := From}}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_, S) -> {noreply, S}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()} | {stop, normal, map()}.
handle_info({Port, {data, Bin}}, #{port := Port} = S) ->
    case binary_to_term(Bin) of
        {reply, Ref, Result} ->
            {noreply, reply(Ref, Result, S)};
        {msg, Msg} ->
            maps:get(owner, S) ! {macula_lab_peer, self(), Msg},
            {noreply, S}
    end;
handle_info({call_timeout, Ref}, S) ->
    {noreply, reply(Ref, {badrpc, timeout}, S)};
handle_info({Port, {exit_status, St}}, #{port := Port, stopping := Stopping} = S) ->
    case Stopping of
        undefined -> maps:get(owner, S) ! {macula_lab_peer_down, self(), St};
        From -> gen_server:reply(From, ok)
    end,
    {stop, normal, S#{port := undefined}};
handle_info(stop_grace, #{stopping := From, info := #{os_pid := OsPid}} = S) ->
    %% Still alive after the grace period: kill the VM (same pid namespace).
    _ = os:cmd("kill -9 " ++ OsPid),
    gen_server:reply(From, ok),
    {stop, normal, S};
handle_info({'DOWN', _, process, Owner, _}, #{owner := Owner} = S) ->
    {stop, normal, S};
handle_info({'EXIT', _, _}, S) ->
    {noreply, S}.

%% @private
-spec terminate(term(), map()) -> ok.
terminate(_, #{pending := P} = S) ->
    [gen_server:reply(From, {badrpc, nodedown}) || {From, _} <- maps:values(P)],
    case S of
        #{port := Port} when is_port(Port) -> catch port_close(Port);  % agent halts on EOF
        _ -> ok
    end,
    ok.

%%% internals

request(Peer, Req, Timeout) ->
    try gen_server:call(Peer, {Req, Timeout}, infinity)
    catch exit:_ -> {badrpc, nodedown}
    end.

reply(Ref, Result, #{pending := P} = S) ->
    case maps:take(Ref, P) of
        {{From, TRef}, P1} ->
            _ = TRef =/= undefined andalso erlang:cancel_timer(TRef),
            gen_server:reply(From, Result),
            S#{pending := P1};
        error ->
            S   % late reply after a timeout
    end.

handshake(Port, Env, Tmo) ->
    case recv(Port, Tmo) of
        {ok, {hello, Hello}} ->
            port_command(Port, term_to_binary({setup, Env})),
            case recv(Port, Tmo) of
                {ok, {setup_done, ok}} -> {ok, Hello};
                Other -> {error, {setup, Other}}
            end;
        Other ->
            {error, {hello, Other}}
    end.

recv(Port, Tmo) ->
    receive
        {Port, {data, Bin}} -> {ok, binary_to_term(Bin)};
        {Port, {exit_status, St}} -> {exit_status, St}
    after Tmo -> timeout
    end.

env_entry({App, K}, V) -> {App, K, V};
env_entry(K, V) -> {macula_nat, K, V}.

%% The agent's .beam must be on this VM's path; its directory goes first on
%% the remote path.
agent_dir() ->
    case code:which(macula_lab_agent) of
        Path when is_list(Path) ->
            case filelib:is_regular(Path) of
                true -> {ok, filename:dirname(filename:absname(Path))};
                false -> {error, {agent_beam_not_found, Path}}
            end;
        Other -> {error, {agent_beam_not_found, Other}}
    end.

%% `-noinput': nothing but the agent touches stdin. Erlang from this VM's
%% own installation so both sides run the same OTP.
vm(erlang, Paths, VmArgs) ->
    [filename:join([code:root_dir(), "bin", "erl"]), "-noinput", "-pa" | Paths]
        ++ VmArgs ++ ["-s", "macula_lab_agent", "main"];
vm(elixir, Paths, VmArgs) ->
    Elixir = case os:find_executable("elixir") of
                 false -> "elixir";
                 E -> E
             end,
    [Elixir, "--erl", string:join(["-noinput" | VmArgs], " ")]
        ++ lists:append([["-pa", P] || P <- Paths])
        ++ ["--no-halt", "-e", ":macula_lab_agent.main()"].

%% Channel on fds 3/4, the VM's own stdout folded into stderr (or a log file).
wrap(undefined, Cmd) ->
    ["/bin/sh", "-c", "exec \"$@\" 3<&0 4>&1 0</dev/null 1>&2", "sh" | Cmd];
wrap(Log, Cmd) ->
    ["/bin/sh", "-c", "f=$1; shift; exec \"$@\" 3<&0 4>&1 0</dev/null 2>>\"$f\" 1>&2",
     "sh", Log | Cmd].
