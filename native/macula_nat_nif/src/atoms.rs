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
    // node stats keys
    datagrams_in,
    bytes_in,
    datagrams_out,
    bytes_out,
}
