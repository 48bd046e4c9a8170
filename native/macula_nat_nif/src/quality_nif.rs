//! Connection quality as terms: the figures of `macula_connection:stats/1`
//! and `get_info/2`, and the messages of the `{quality, Interval}`
//! subscription, which the connection's reader in `conn_nif` sends (it is
//! the one sender of a connection's messages, so no report follows
//! `closed`). `conn_nif` calls this file, never the other way.

use crate::{atoms, convert};
use macula_nat_core::quic::Connection;
use macula_nat_core::{Method, Node};
use macula_nat_proto::quality::{Degraded, MIN_REPORT_INTERVAL};
use rustler::{Encoder, Env, Term};
use std::sync::Weak;
use std::time::Duration;

mod q_atoms {
    rustler::atoms! {
        quality, path_degraded, path_recovered, silent, lossy, srtt_ms, min_rtt_ms, jitter_ms, loss,
        lost_packets, sent_packets, bytes_in, bytes_out, datagrams_in, datagrams_out, messages_in,
        messages_out, silent_ms, local_address, degraded, false_ = "false",
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The path and quality keys, as `(key, value)` pairs (`conn_info` adds
/// them to its map; `stats/1` is the same map).
pub(crate) fn quality_pairs<'a>(env: Env<'a>, conn: &Connection, node: &Weak<Node>) -> Vec<(Term<'a>, Term<'a>)> {
    let r = conn.quality();
    let s = r.last;
    let node = node.upgrade();
    let local = node.as_ref().and_then(|n| n.local_addr().ok()).map(|a| a.to_string());
    let remote_addr = conn.remote_address();
    let relay = match (conn.method(), node.as_ref()) {
        (Method::Relayed, Some(n)) => n.relay_of(&remote_addr),
        _ => None,
    };
    let undefined = || atoms::undefined().encode(env);
    vec![
        (q_atoms::srtt_ms().encode(env), ms(s.srtt_us).encode(env)),
        (q_atoms::min_rtt_ms().encode(env), ms(s.min_rtt_us).encode(env)),
        (q_atoms::jitter_ms().encode(env), ms(r.jitter_us).encode(env)),
        (q_atoms::loss().encode(env), (r.loss_permille as f64 / 1000.0).encode(env)),
        (q_atoms::lost_packets().encode(env), s.lost_packets.encode(env)),
        (q_atoms::sent_packets().encode(env), s.sent_packets.encode(env)),
        (q_atoms::bytes_in().encode(env), s.bytes_in.encode(env)),
        (q_atoms::bytes_out().encode(env), s.bytes_out.encode(env)),
        (q_atoms::datagrams_in().encode(env), s.datagrams_in.encode(env)),
        (q_atoms::datagrams_out().encode(env), s.datagrams_out.encode(env)),
        (q_atoms::messages_in().encode(env), s.messages_in.encode(env)),
        (q_atoms::messages_out().encode(env), s.messages_out.encode(env)),
        (q_atoms::silent_ms().encode(env), r.silent_ms.encode(env)),
        (q_atoms::degraded().encode(env), degraded_term(env, r.degraded)),
        (q_atoms::local_address().encode(env), local.map_or_else(undefined, |a| convert::binary(env, a.as_bytes()))),
        (atoms::relay().encode(env), relay.map_or_else(undefined, |id| convert::binary(env, &id))),
    ]
}

/// `false`, `silent` or `{lossy, LossFraction}`.
fn degraded_term(env: Env<'_>, d: Option<Degraded>) -> Term<'_> {
    match d {
        None => q_atoms::false_().encode(env),
        Some(Degraded::Silent { .. }) => q_atoms::silent().encode(env),
        Some(Degraded::Lossy { permille }) => (q_atoms::lossy(), permille as f64 / 1000.0).encode(env),
    }
}

/// `{macula_connection, Conn, {quality, Map}}`.
pub(crate) fn report<'a>(env: Env<'a>, conn: Term<'a>, map: Term<'a>) -> Term<'a> {
    (atoms::macula_connection(), conn, (q_atoms::quality(), map)).encode(env)
}

/// `{macula_connection, Conn, {path_degraded, silent | {lossy, Loss}}}` or
/// `{macula_connection, Conn, path_recovered}`.
pub(crate) fn event<'a>(env: Env<'a>, conn: Term<'a>, d: Option<Degraded>) -> Term<'a> {
    match d {
        Some(d) => (atoms::macula_connection(), conn, (q_atoms::path_degraded(), degraded_term(env, Some(d)))).encode(env),
        None => (atoms::macula_connection(), conn, q_atoms::path_recovered()).encode(env),
    }
}

/// The interval of `{quality, IntervalMs | false}`: `Ok(None)` for
/// `false`, `Err(())` for anything else than 100..=86,400,000 ms.
pub(crate) fn decode_interval(t: Term<'_>) -> Result<Option<Duration>, ()> {
    if matches!(t.decode::<bool>(), Ok(false)) {
        return Ok(None);
    }
    match t.decode::<u64>() {
        Ok(ms) if Duration::from_millis(ms) >= MIN_REPORT_INTERVAL && ms <= 86_400_000 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(()),
    }
}
