//! Port prediction: the sans-IO predictor over a profile map.

use crate::profile_term::decode_peer_info;
use crate::{atoms, convert, guard};
use macula_nat_proto::port_predictor::{predict, PortHint, PredictOpts};
use rustler::{Encoder, Env, Term};

/// Largest candidate list one call builds (keeps the call well under 1 ms).
const MAX_COUNT: usize = 4096;

/// `port_predict(Profile, Count, LocalPort | undefined, Seed)` ->
/// `{ok, [Port]}` | `{error, badarg | {bad_profile, Key}}`.
#[rustler::nif]
fn port_predict<'a>(env: Env<'a>, profile: Term<'a>, count: Term<'a>, local: Term<'a>, seed: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let (Some(count), Some(seed)) = (
            convert::decode_int::<u32>(count).filter(|c| *c > 0 && (*c as usize) <= MAX_COUNT),
            convert::decode_int::<u64>(seed),
        ) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let local_port = if local.is_atom() {
            None
        } else {
            match convert::decode_int::<u16>(local) {
                Some(p) => Some(p),
                None => return (atoms::error(), atoms::badarg()).encode(env),
            }
        };
        let info = match decode_peer_info(profile, 0) {
            Ok(i) => i,
            Err(key) => return (atoms::error(), (atoms::bad_profile(), key)).encode(env),
        };
        let hint = PortHint {
            mapping: info.mapping,
            allocation: info.allocation,
            observed: info.public_addr.map(|a| a.port()).into_iter().collect(),
            port_delta: info.port_delta,
            local_port,
        };
        let ports = predict(&hint, &PredictOpts { count: count as usize, seed });
        (atoms::ok(), ports).encode(env)
    })
}
