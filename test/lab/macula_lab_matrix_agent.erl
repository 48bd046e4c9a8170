%% @doc A BEAM node for the connection matrix benchmark (bench/lab_matrix.sh,
%% native/macula_nat_core/examples/bench_matrix): speaks the line protocol
%% of `macula-connect agent' on the VM's stdin/stdout, so the Rust harness
%% drives Erlang VMs in lab hosts as it drives `macula-connect'.
%%
%% The node is configured through the application environment only: the VM
%% is started with `-config FILE' (a sys.config the harness writes:
%% `observers', `rendezvous', `relays', `detection_timeout_ms', and
%% `listen_port' where a variant needs one), then
%% `application:ensure_all_started(macula_nat)'. Nothing else is handed to
%% the library: the node detects its NAT through the observers and joins
%% the rendezvous by itself, as the README's configuration table says.
%%
%% Wiring: the harness runs the VM as
%% `sh -c "exec erl ... 3<&0 4>&1 0</dev/null 1>&2"', so the protocol is on
%% fds 3 (in) and 4 (out) and whatever the VM prints itself (logger, crash
%% reports) goes to stderr (the harness's per-site log). EOF on fd 3: halt.
%%
%% Lines in (one command a line):
%% ```
%% fresh               stop macula_nat and start it again (new socket, so new
%%                     NAT mappings and a new detection); once the node has
%%                     detected, joined and reserved at its relay:
%%   {"event":"joined","node_id":HEX,"observed":"IP:PORT","relays":N,
%%    "mapping":..,"filtering":..,"allocation":..,"confidence":..,
%%    "port_delta":N|null,"no_nat":B,"ready_ms":MS}
%%   | {"event":"join_failed","error":KIND,"message":..}
%% connect HEX TRY     macula_nat_connector:connect/3 to HEX, then
%%                     macula_connection:send/2 of the binary TRY
%%   {"event":"connected","try":TRY,"t0_ns":..,"method":..,"connect_ms":..,"sent":B}
%%   | {"event":"failed","try":TRY,"t0_ns":..,"error":KIND,"message":..,"connect_ms":..}
%% quit
%% '''
%% and for the first message of every accepted connection:
%% `{"event":"message","try":TRY,"t_ns":..,"peer":HEX}'.
%% Times `t0_ns' / `t_ns' are `os:system_time(nanosecond)' (CLOCK_REALTIME,
%% shared by every VM on the host): B's `t_ns' minus A's `t0_ns' is the time
%% to first message. The API reports no strategy; the harness computes it
%% from the two detected profiles.
%%
%% With `-extra rendezvous' the VM is the lab's rendezvous instead
%% (`rendezvous_server' in its environment) and relays too
%% (`macula_relay_node:enable/0'); it prints
%% `{"event":"ready","node_id":HEX}' and then only answers `quit'.
-module(macula_lab_matrix_agent).
-export([main/0]).

-define(READY_TIMEOUT_MS, 14000).
-define(CONNECT_TIMEOUT_MS, 10000).

-spec main() -> ok.
main() ->
    _ = spawn(fun init/0),
    ok.

init() ->
    register(?MODULE, self()),
    Port = open_port({fd, 3, 4}, [{line, 65536}, binary, eof]),
    persistent_term:put({?MODULE, port}, Port),
    Role = case init:get_plain_arguments() of
               ["rendezvous" | _] -> rendezvous;
               _ -> agent
           end,
    Timeout = case os:getenv("MACULA_MATRIX_TIMEOUT_MS") of
                  false -> ?CONNECT_TIMEOUT_MS;
                  T -> list_to_integer(T)
              end,
    case Role of
        rendezvous -> start_rendezvous();
        agent -> ok
    end,
    loop(Port, #{epoch => undefined, timeout => Timeout, fresh => undefined}).

start_rendezvous() ->
    case application:ensure_all_started(macula_nat) of
        {ok, _} ->
            ok = macula_relay_node:enable(),
            {ok, Id} = macula:get_node_id(),
            out([{event, ready}, {node_id, hex(Id)}]);
        {error, E} ->
            out([{event, start_failed}, {message, fmt(E)}]),
            halt(1)
    end.

loop(Port, S) ->
    receive
        {Port, {data, {eol, Line}}} ->
            loop(Port, command(string:split(string:trim(Line), <<" ">>, all), S));
        {Port, {data, {noeol, _}}} ->
            loop(Port, S);
        {Port, eof} ->
            halt(0);
        {fresh_done, Pid, Epoch} when Pid =:= map_get(fresh, S) ->
            loop(Port, S#{epoch := Epoch, fresh := undefined});
        _ ->
            loop(Port, S)
    end.

command([<<"fresh">>], #{epoch := Old} = S) ->
    %% Everything of the last node (acceptors, connection owners) goes.
    _ = is_pid(Old) andalso exit(Old, kill),
    Me = self(),
    Pid = spawn(fun() -> Me ! {fresh_done, self(), fresh()} end),
    S#{epoch := undefined, fresh := Pid};
command([<<"connect">>, Hex, Try], #{epoch := Epoch, timeout := T} = S) when is_pid(Epoch) ->
    _ = spawn(fun() -> link(Epoch), connect(Hex, Try, T) end),
    S;
command([<<"connect">>, _, Try], S) ->
    out([{event, failed}, {'try', Try}, {t0_ns, os:system_time(nanosecond)}, {error, not_joined},
         {message, <<"connect before joined">>}, {connect_ms, 0}]),
    S;
command([<<"quit">>], _S) ->
    halt(0);
command(_, S) ->
    S.

%% Stops the application (its node socket closes) and starts it again from
%% the environment; waits until it has detected its NAT, joined the
%% rendezvous and holds a reservation at its relay (when `relays' is set).
%% Returns the epoch process the new node's workers are linked to.
fresh() ->
    _ = application:stop(macula_nat),
    T0 = erlang:monotonic_time(millisecond),
    Epoch = spawn(fun() -> receive never -> ok end end),
    case application:ensure_all_started(macula_nat) of
        {ok, _} ->
            WantRelay = application:get_env(macula_nat, relays, []) =/= [],
            case wait_ready(WantRelay, T0 + ?READY_TIMEOUT_MS) of
                {ok, Prof} ->
                    {ok, Id} = macula:get_node_id(),
                    Observed = case macula:get_public_endpoint() of
                                   {ok, Ep} -> Ep;
                                   _ -> <<>>
                               end,
                    Acceptor = spawn(fun() -> link(Epoch), acceptor(Epoch) end),
                    _ = Acceptor,
                    out([{event, joined}, {node_id, hex(Id)}, {observed, Observed},
                         {relays, length(macula_nat_coordinator:reserved_relays())},
                         {mapping, maps:get(mapping, Prof)},
                         {filtering, maps:get(filtering, Prof)},
                         {allocation, maps:get(allocation, Prof)},
                         {confidence, maps:get(confidence, Prof, null)},
                         {port_delta, maps:get(port_delta, Prof, null)},
                         {no_nat, maps:get(no_nat, Prof, false)},
                         {ready_ms, erlang:monotonic_time(millisecond) - T0}]);
                {error, Why} ->
                    out([{event, join_failed}, {error, Why},
                         {message, fmt({Why, macula_nat_detector:get_local_profile(),
                                        macula_nat_coordinator:signal()})}])
            end;
        {error, E} ->
            out([{event, join_failed}, {error, start}, {message, fmt(E)}])
    end,
    Epoch.

wait_ready(WantRelay, Deadline) ->
    Detected = macula_nat_detector:get_local_profile(),
    Joined = element(1, macula_nat_coordinator:signal()) =:= ok,
    Reserved = not WantRelay orelse macula_nat_coordinator:reserved_relays() =/= [],
    case {Detected, Joined, Reserved} of
        {{ok, Prof}, true, true} ->
            {ok, Prof};
        _ ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    {error, case {Detected, Joined} of
                                {{ok, _}, true} -> no_reservation;
                                {{ok, _}, false} -> not_joined;
                                _ -> not_detected
                            end};
                false ->
                    timer:sleep(20),
                    wait_ready(WantRelay, Deadline)
            end
    end.

%% One accept at a time; the process that accepted owns the connection (its
%% messages come here from the start) and a new acceptor takes over.
acceptor(Epoch) ->
    case macula_connection:accept(5000) of
        {ok, Conn} ->
            _ = spawn(fun() -> link(Epoch), acceptor(Epoch) end),
            first_message(Conn);
        {error, timeout} ->
            acceptor(Epoch);
        {error, _} ->
            timer:sleep(100),
            acceptor(Epoch)
    end.

first_message(Conn) ->
    receive
        {macula_connection, Conn, {message, Term}} ->
            T = os:system_time(nanosecond),
            Peer = case macula_connection:get_info(Conn, peer) of
                       P when is_binary(P) -> hex(P);
                       _ -> <<>>
                   end,
            Try = case is_binary(Term) of true -> Term; false -> fmt(Term) end,
            out([{event, message}, {'try', Try}, {t_ns, T}, {peer, Peer}]),
            hold(Conn);
        {macula_connection, Conn, {closed, Reason}} ->
            io:format(standard_error, "accepted connection closed before a message: ~0p~n", [Reason])
    after 60000 ->
            ok
    end.

%% Keeps the connection open (its owner is monitored) until it closes or
%% the node is replaced.
hold(Conn) ->
    receive
        {macula_connection, Conn, {closed, _}} -> ok;
        _ -> hold(Conn)
    after 120000 -> ok
    end.

connect(Hex, Try, Timeout) ->
    Target = binary:decode_hex(Hex),
    {ok, Me} = macula:get_node_id(),
    T0 = os:system_time(nanosecond),
    M0 = erlang:monotonic_time(microsecond),
    R = macula_nat_connector:connect(Me, Target, #{timeout => Timeout}),
    Ms = (erlang:monotonic_time(microsecond) - M0) / 1000,
    case R of
        {ok, Conn, Method} ->
            Sent = macula_connection:send(Conn, Try) =:= ok,
            out([{event, connected}, {'try', Try}, {t0_ns, T0}, {method, Method},
                 {connect_ms, Ms}, {sent, Sent}]),
            hold(Conn);
        {error, Reason} ->
            out([{event, failed}, {'try', Try}, {t0_ns, T0}, {error, kind(Reason)},
                 {message, fmt(Reason)}, {connect_ms, Ms}])
    end.

kind(A) when is_atom(A) -> A;
kind(T) when is_tuple(T), is_atom(element(1, T)) -> element(1, T);
kind(_) -> other.

%%% output: one JSON object a line on fd 4

out(Fields) ->
    Line = [${, lists:join($,, [[json(atom_to_binary(K)), $:, json(V)] || {K, V} <- Fields]), $}, $\n],
    Port = persistent_term:get({?MODULE, port}),
    try port_command(Port, Line), ok
    catch error:badarg -> halt(0)
    end.

json(true) -> <<"true">>;
json(false) -> <<"false">>;
json(null) -> <<"null">>;
json(undefined) -> <<"null">>;
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_binary(I);
json(F) when is_float(F) -> float_to_binary(F, [{decimals, 3}, compact]);
json(B) when is_binary(B) -> [$", escape(B), $"];
json(L) when is_list(L) -> json(unicode:characters_to_binary(L)).

escape(B) ->
    << <<(case C of
              $" -> <<"\\\"">>;
              $\\ -> <<"\\\\">>;
              _ when C < 32 -> <<"?">>;
              _ -> <<C>>
          end)/binary>> || <<C>> <= B >>.

fmt(T) -> unicode:characters_to_binary(io_lib:format("~0p", [T])).

hex(B) -> << <<(hexd(N))>> || <<N:4>> <= B >>.
hexd(N) when N < 10 -> $0 + N;
hexd(N) -> $a + N - 10.
