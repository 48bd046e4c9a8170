//! Peer-reported reflexive addresses, behind the sans-IO quorum of
//! `macula_nat_proto::observations`. Calls are a few microseconds under an
//! uncontended lock (only the detector process uses its resource).

use crate::{atoms, convert, guard};
use macula_nat_proto::observations::{ObservationConfig, Observations};
use rustler::{Binary, Encoder, Env, ResourceArc, Term};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ObservationsRes {
    inner: Mutex<Observations<Vec<u8>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ObservationsRes {}

/// `observations_new(Quorum, MaxAgeMs, MaxPeers)`.
#[rustler::nif]
fn observations_new<'a>(env: Env<'a>, quorum: Term<'a>, max_age_ms: Term<'a>, max_peers: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let (Some(quorum), Some(max_age_ms), Some(max_peers)) = (
            convert::decode_int::<u16>(quorum).filter(|q| *q > 0),
            convert::decode_int::<u32>(max_age_ms),
            convert::decode_int::<u16>(max_peers).filter(|m| *m > 0),
        ) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let cfg = ObservationConfig {
            quorum: quorum as usize,
            max_age: Duration::from_millis(max_age_ms as u64),
            max_peers: max_peers as usize,
        };
        let res = ResourceArc::new(ObservationsRes { inner: Mutex::new(Observations::new(cfg)) });
        (atoms::ok(), res).encode(env)
    })
}

/// `observations_add(Res, PeerKey :: binary(), {Ip, Port})` ->
/// `{changed, {Ip, Port}}` when the quorum moved the belief, else `unchanged`.
#[rustler::nif]
fn observations_add<'a>(env: Env<'a>, res: ResourceArc<ObservationsRes>, peer: Binary<'a>, addr: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(addr) = convert::decode_addr(addr) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Ok(mut o) = res.inner.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        match o.add_observation(peer.as_slice().to_vec(), addr, Instant::now()) {
            Some(new) => (atoms::changed(), convert::encode_addr(env, new)).encode(env),
            None => atoms::unchanged().encode(env),
        }
    })
}
