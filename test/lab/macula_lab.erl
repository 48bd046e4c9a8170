%% Thin Erlang driver for the macula-lab CLI (native/macula_nat_lab).
%% The lab is owned by this VM (os:getpid()): `macula-lab reap` removes it
%% once the VM is gone, so a killed test run leaves nothing behind.
-module(macula_lab).
-export([bin/0, available/0, reap/0, up/1, down/1, exec/3, exec/4, spawn_port/3,
         stats/2, get/2, host_addr/2, observer_ips/2, public_ip/2]).

%% Path of the macula-lab binary: $MACULA_LAB_BIN or PATH.
bin() ->
    case os:getenv("MACULA_LAB_BIN") of
        false -> os:find_executable("macula-lab");
        B -> B
    end.

%% ok | {skip, Reason}
available() ->
    case bin() of
        false -> {skip, "macula-lab binary not found (set MACULA_LAB_BIN)"};
        _ ->
            case string:trim(os:cmd("id -u")) of
                "0" -> ok;
                _ -> {skip, "lab needs root"}
            end
    end.

reap() -> run(["reap"]).

%% Spec is a JSON binary/string (see README). Returns the lab description:
%% a map on OTP >= 27 (json module), else the raw JSON binary (use get/2).
up(SpecJson) ->
    case run(["up", "--json", iolist_to_binary(SpecJson), "--owner", os:getpid()]) of
        {0, Out} -> {ok, decode(Out)};
        {_, Err} -> {error, Err}
    end.

down(Lab) -> run(["down", Lab]).

stats(Lab, Site) ->
    case run(["stats", Lab, Site]) of
        {0, Out} -> {ok, decode(Out)};
        {_, Err} -> {error, Err}
    end.

%% {ExitCode, Output} of Argv run inside Host (stdout and stderr merged).
exec(Lab, Host, Argv) -> exec(Lab, Host, Argv, 60000).
exec(Lab, Host, Argv, Timeout) -> run(["exec", Lab, Host, "--" | Argv], Timeout).

%% Long-running program in Host as an Erlang port (killed at lab teardown).
spawn_port(Lab, Host, Argv) ->
    open_port({spawn_executable, bin()},
              [{args, ["exec", Lab, Host, "--" | Argv]}, binary, exit_status,
               stderr_to_stdout, {line, 4096}]).

%% One value of the lab description by JSON pointer (strings come back raw),
%% e.g. get("lab1", "/sites/a/public_ip") -> "203.0.113.13". Works without a JSON library.
get(Lab, Pointer) ->
    case run(["get", Lab, Pointer]) of
        {0, Out} -> string:trim(binary_to_list(Out));
        {_, Err} -> error({macula_lab_get, Lab, Pointer, Err})
    end.

host_addr(Lab, Host) -> get(Lab, "/hosts/" ++ to_list(Host) ++ "/addrs/0").
public_ip(Lab, Site) -> get(Lab, "/sites/" ++ to_list(Site) ++ "/public_ip").
observer_ips(Lab, Obs) ->
    {get(Lab, "/observers/" ++ to_list(Obs) ++ "/0"), get(Lab, "/observers/" ++ to_list(Obs) ++ "/1")}.

run(Args) -> run(Args, 120000).
run(Args, Timeout) ->
    P = open_port({spawn_executable, bin()},
                  [{args, [to_list(A) || A <- Args]}, binary, exit_status,
                   stderr_to_stdout, hide]),
    collect(P, [], Timeout).

collect(P, Acc, Timeout) ->
    receive
        {P, {data, D}} -> collect(P, [Acc, D], Timeout);
        {P, {exit_status, S}} -> {S, iolist_to_binary(Acc)}
    after Timeout ->
        catch port_close(P),
        {timeout, iolist_to_binary(Acc)}
    end.

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(I) when is_integer(I) -> integer_to_list(I);
to_list(L) -> L.

decode(Bin) ->
    case erlang:function_exported(json, decode, 1) orelse
         (code:ensure_loaded(json) =:= {module, json}) of
        true -> json:decode(Bin);
        false -> Bin
    end.
