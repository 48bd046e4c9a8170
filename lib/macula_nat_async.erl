%% @doc Turns a NIF that answers by message into a synchronous call with a
%% timeout, without leaving a late reply in the caller's mailbox.
-module(macula_nat_async).

-export([call/2, call/3]).

%% @doc `Start' is given a fresh reference and must call a NIF that returns
%% `{ok, Pending}'. On timeout the work is cancelled; a reply already on its
%% way when the cancel came is still returned, never dropped nor left behind.
-spec call(fun((reference()) -> {ok, reference()} | {error, term()}), timeout()) -> term().
call(Start, Timeout) ->
    call(Start, make_ref(), Timeout).

%% @doc As `call/2' with the caller's own reference (for NIFs that may
%% answer at once or by message).
-spec call(fun((reference()) -> {ok, reference()} | {error, term()}), reference(), timeout()) -> term().
call(Start, Ref, Timeout) ->
    case Start(Ref) of
        {ok, Pending} ->
            receive
                {macula_nat_reply, Ref, Reply} -> Reply
            after Timeout ->
                case macula_nat_nif:cancel(Pending) of
                    ok ->
                        {error, timeout};
                    sent ->
                        %% Lost the race: the reply is already on its way
                        %% and will arrive; take it rather than drop it.
                        receive {macula_nat_reply, Ref, Reply} -> Reply end
                end
            end;
        {error, _} = Error ->
            Error
    end.
