#!/usr/bin/env escript
%%! -pa _build_lab
main(_) ->
    ok = macula_lab:available(),
    macula_lab:reap(),
    Spec = <<"{\"name\":\"erl\",\"observers\":[\"obs\"],\"sites\":[{\"name\":\"a\",\"nat\":\"user:ei-pd-rd\"}]}">>,
    {ok, _Info} = macula_lab:up(Spec),
    {Ip1, Ip2} = macula_lab:observer_ips("erl", "obs"),
    Port = macula_lab:spawn_port("erl", "obs", ["turnserver", "-L", Ip1, "-L", Ip2,
        "--no-auth", "--no-tls", "--no-dtls", "--no-cli", "-n", "--log-file", "/dev/null"]),
    timer:sleep(1000),
    {0, Out} = macula_lab:exec("erl", "a", ["turnutils_natdiscovery", "-m", "-f", Ip1]),
    [io:format("~s~n", [L]) || L <- binary:split(Out, <<"\n">>, [global]), binary:match(L, <<"NAT with">>) =/= nomatch],
    {ok, St} = macula_lab:stats("erl", "a"),
    io:format("public ip ~s, stats ~s~n", [macula_lab:public_ip("erl", "a"), St]),
    catch port_close(Port),
    {0, _} = macula_lab:down("erl"),
    io:format("netns left: ~s~n", [os:cmd("ip netns list | grep -c ml-erl- || true")]).
