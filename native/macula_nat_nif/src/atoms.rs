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
    changed,
    unchanged,
    alternate,
    answered,
    dropped,
    // NAT profile
    ei, hd, pd, pp, pc, rd, high, medium, low,
    mapping, filtering, allocation, public_ip, public_port, detected_at,
    confidence, port_delta, mapping_lifetime, hairpin, no_nat, local_ip,
    local_port, detection_ms, detection_timeout, no_observers,
    between, at_least, below, not_measured,
    stun_answered, stun_dropped, relayed_bytes_out,
    // cache and DHT
    endpoints, rendezvous, profile, bad_profile, bad_node_id, stale, not_found,
    forged, expired, replayed, wrong_node, from_the_future, too_large, backend,
    size, hits, misses, stale_hits, evictions, expirations, dht_fetches, refreshes,
    dht, published, last_seq, macula_nat_dht, get, put, memory, mainline, erlang,
    // connections
    macula_connection, message, unsafe_message, direct, punched, relayed, normal,
    peer_closed, node_closed, reset, failed, peer_id_mismatch, quic, not_owner,
    connection_method, peer, remote_address, rtt_ms,
    punch_failed, symmetric_nat, no_relay, unknown_peer, no_rendezvous, rejected,
    // relays
    method_changed, relay, macula_relay_event, started, ended, stopped, peer_a, peer_b,
    bytes_transferred, reason, session, inactive, peer_gone, relay_disabled, max_sessions,
    no_reservation, declined, self_session, bad_request, bad_option, bandwidth_limit,
    session_timeout, max_queue_delay, unlimited, infinity, sessions, reservations, clients,
    frames_forwarded, bytes_forwarded, dropped_over_limit, dropped_not_a_leg, dropped_unknown,
    // relay bounds
    too_many_sessions, too_many_pending, rate_limited, control_dropped, clients_stalled,
    events_dropped, legs_moved, pending_timeout, max_sessions_per_key, max_pending_per_key,
    max_opens_per_minute, max_reservations, max_reservations_per_key,
    // relay registry
    macula_relay_registry, relays_changed, node_id, endpoint, latency_ms, load,
    // logger bridge
    macula_nat_log, warning, info, debug, already_set, macula_nat_node, macula_nat_detector,
    macula_nat_coordinator, macula_nat_connector, macula_relay_node, macula_nat_cache,
    reflexive_changed,
    // node stats keys
    datagrams_in,
    bytes_in,
    datagrams_out,
    bytes_out,
}
