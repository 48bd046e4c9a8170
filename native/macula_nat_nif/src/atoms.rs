// The complete set of atoms this library can produce. Errors from the core
// map onto these by a fixed table; nothing builds an atom from input.
rustler::atoms! {
    ok,
    error,
    closed,
    internal,
    timeout,
    io,
    bad_key_file,
    badarg,
    macula_nat_reply,
    cancelled,
    sent,
    undefined,
    sync,
    r#async = "async",
    primary,
    alternate,
    answered,
    dropped,
    // NAT profile
    ei, hd, pd, pp, pc, rd, high, medium, low,
    mapping, filtering, allocation, public_ip, public_port, detected_at,
    confidence, port_delta, mapping_lifetime, hairpin, no_nat, local_ip,
    local_port, detection_ms, detection_timeout, no_observers,
    stun_answered, stun_dropped,
    // node stats keys
    datagrams_in,
    bytes_in,
    datagrams_out,
    bytes_out,
}
