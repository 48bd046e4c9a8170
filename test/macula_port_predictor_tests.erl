-module(macula_port_predictor_tests).
-include_lib("eunit/include/eunit.hrl").

-define(P, #{mapping => pd, filtering => pd, allocation => pc, port_delta => 2,
             public_ip => {203, 0, 113, 5}, public_port => 40000}).

contiguity_test() ->
    ?assertEqual({ok, [40002, 40004, 40006]}, macula_port_predictor:predict(?P, 3)).

wraps_at_the_top_test() ->
    ?assertEqual({ok, [65535, 1024, 1025]},
                 macula_port_predictor:predict(?P#{public_port => 65534, port_delta => 1}, 3)).

preservation_uses_the_local_port_test() ->
    ?assertEqual({ok, [5000]},
                 macula_port_predictor:predict(?P#{allocation => pp, local_port => 5000}, 5)).

endpoint_independent_mapping_is_the_known_port_test() ->
    ?assertEqual({ok, [40000]}, macula_port_predictor:predict(?P#{mapping => ei}, 5)).

random_gives_distinct_ports_test() ->
    {ok, Ports} = macula_port_predictor:predict(?P#{allocation => rd}, 500),
    ?assertEqual(500, length(lists:usort(Ports))),
    ?assert(lists:all(fun(P) -> P >= 1024 andalso P =< 65535 end, Ports)).

bad_input_test() ->
    ?assertEqual({error, badarg}, macula_port_predictor:predict(?P, 0)),
    ?assertEqual({error, badarg}, macula_port_predictor:predict(?P, 100000)),
    ?assertEqual({error, badarg}, macula_port_predictor:predict(not_a_map, 3)),
    ?assertEqual({error, {bad_profile, allocation}},
                 macula_port_predictor:predict(maps:remove(allocation, ?P), 3)).
