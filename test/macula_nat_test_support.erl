%% @doc Helpers shared by the EUnit modules (not a test module itself).
-module(macula_nat_test_support).

-export([wait/2, repo_root/0]).

%% @doc Polls `F' every 20 ms until it returns `true' (`ok') or `Ms' run
%% out (`timeout', after one last look).
-spec wait(fun(() -> term()), integer()) -> ok | timeout.
wait(F, Ms) when Ms =< 0 ->
    case F() of
        true -> ok;
        _ -> timeout
    end;
wait(F, Ms) ->
    case F() of
        true -> ok;
        _ -> timer:sleep(20), wait(F, Ms - 20)
    end.

%% @doc The repository root (where Cargo.toml is), for the Rust binaries
%% the tests drive.
-spec repo_root() -> file:filename().
repo_root() ->
    root(filename:dirname(code:which(?MODULE))).

root("/") -> error(repo_root_not_found);
root(Dir) ->
    case filelib:is_regular(filename:join(Dir, "Cargo.toml")) of
        true -> Dir;
        false -> root(filename:dirname(Dir))
    end.
