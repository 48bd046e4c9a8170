//! NAT profile maps <-> `PeerInfo`. One vocabulary for both directions:
//! the atoms of the guide's `nat_profile()` (`ei | hd | pd`, `pp | pc | rd`,
//! `high | medium | low`); endpoints are `<<"ip:port">>` binaries (or
//! `{Ip, Port}` tuples on input).

use crate::{atoms, convert};
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use macula_nat_proto::record::{PeerInfo, MAX_ADDRS};
use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, Term};
use std::net::SocketAddr;

pub fn mapping(m: Mapping) -> Atom {
    match m {
        Mapping::Ei => atoms::ei(),
        Mapping::Hd => atoms::hd(),
        Mapping::Pd => atoms::pd(),
    }
}

pub fn filtering(f: Filtering) -> Atom {
    match f {
        Filtering::Ei => atoms::ei(),
        Filtering::Hd => atoms::hd(),
        Filtering::Pd => atoms::pd(),
    }
}

pub fn allocation(a: Allocation) -> Atom {
    match a {
        Allocation::Pp => atoms::pp(),
        Allocation::Pc => atoms::pc(),
        Allocation::Rd => atoms::rd(),
    }
}

pub fn confidence(c: Confidence) -> Atom {
    match c {
        Confidence::High => atoms::high(),
        Confidence::Medium => atoms::medium(),
        Confidence::Low => atoms::low(),
    }
}

/// `<<"ip:port">>`. IPv4 is written by hand into a stack buffer: the
/// generic formatter and its String were a third of a cache read.
pub(crate) fn endpoint<'a>(env: Env<'a>, a: &SocketAddr) -> Term<'a> {
    match a {
        SocketAddr::V4(v4) => {
            let mut buf = [0u8; 21];
            let mut n = 0;
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                n += write_dec(&mut buf[n..], *o as u32);
            }
            buf[n] = b':';
            n += 1;
            n += write_dec(&mut buf[n..], v4.port() as u32);
            convert::binary(env, &buf[..n])
        }
        SocketAddr::V6(_) => convert::binary(env, a.to_string().as_bytes()),
    }
}

fn write_dec(out: &mut [u8], mut v: u32) -> usize {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

pub fn encode_peer_info<'a>(env: Env<'a>, p: &PeerInfo) -> Term<'a> {
    let undefined = atoms::undefined().encode(env);
    let list = |addrs: &[SocketAddr]| -> Term<'a> {
        addrs.iter().map(|a| endpoint(env, a)).collect::<Vec<Term>>().encode(env)
    };
    // Keys in Erlang term order (atoms sort by name): the VM then builds
    // the map without sorting, which was most of a read's cost.
    let keys = [
        atoms::allocation(),
        atoms::confidence(),
        atoms::detected_at(),
        atoms::endpoints(),
        atoms::filtering(),
        atoms::mapping(),
        atoms::no_nat(),
        atoms::port_delta(),
        atoms::public_ip(),
        atoms::public_port(),
        atoms::rendezvous(),
    ]
    .map(|k| k.encode(env));
    let vals = [
        allocation(p.allocation).encode(env),
        confidence(p.confidence).encode(env),
        p.detected_at.encode(env),
        list(&p.endpoints),
        filtering(p.filtering).encode(env),
        mapping(p.mapping).encode(env),
        p.no_nat.encode(env),
        p.port_delta.map(|d| d.encode(env)).unwrap_or(undefined),
        p.public_addr.map(|a| convert::encode_ip(env, a.ip())).unwrap_or(undefined),
        p.public_addr.map(|a| a.port().encode(env)).unwrap_or(undefined),
        list(&p.rendezvous),
    ];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or(undefined)
}

fn enum3<T: Copy>(v: Term, all: [(Atom, T); 3]) -> Option<T> {
    let a: Atom = v.decode().ok()?;
    all.iter().find(|(k, _)| *k == a).map(|(_, t)| *t)
}

fn decode_endpoint(t: Term) -> Option<SocketAddr> {
    if let Ok(b) = t.decode::<Binary>() {
        return std::str::from_utf8(b.as_slice()).ok()?.parse().ok();
    }
    convert::decode_addr(t)
}

fn decode_endpoints(t: Term) -> Option<Vec<SocketAddr>> {
    let items: Vec<Term> = t.decode().ok()?;
    if items.len() > MAX_ADDRS {
        return None;
    }
    items.into_iter().map(decode_endpoint).collect()
}

fn is_undefined(t: Term) -> bool {
    t.decode::<Atom>().map(|a| a == atoms::undefined()).unwrap_or(false)
}

/// Decodes a profile map. `Err(Key)` names the first key that is missing or
/// has a bad value (the key term itself, so no atom is ever made). Keys this
/// schema does not know (`local_ip`, `detection_ms`, ...) are ignored.
pub fn decode_peer_info<'a>(map: Term<'a>, now_s: u64) -> Result<PeerInfo, Term<'a>> {
    let env = map.get_env();
    let iter = MapIterator::new(map).ok_or(atoms::profile().encode(env))?;
    let (mut m, mut f, mut a) = (None, None, None);
    let mut p = PeerInfo {
        mapping: Mapping::Ei,
        filtering: Filtering::Ei,
        allocation: Allocation::Pp,
        confidence: Confidence::Low,
        public_addr: None,
        port_delta: None,
        no_nat: false,
        detected_at: now_s,
        endpoints: vec![],
        rendezvous: vec![],
    };
    let (mut ip, mut port) = (None, None);
    for (k, v) in iter {
        let Ok(key) = k.decode::<Atom>() else { continue };
        let ok = if key == atoms::mapping() {
            m = enum3(v, [(atoms::ei(), Mapping::Ei), (atoms::hd(), Mapping::Hd), (atoms::pd(), Mapping::Pd)]);
            m.is_some()
        } else if key == atoms::filtering() {
            f = enum3(v, [(atoms::ei(), Filtering::Ei), (atoms::hd(), Filtering::Hd), (atoms::pd(), Filtering::Pd)]);
            f.is_some()
        } else if key == atoms::allocation() {
            a = enum3(v, [(atoms::pp(), Allocation::Pp), (atoms::pc(), Allocation::Pc), (atoms::rd(), Allocation::Rd)]);
            a.is_some()
        } else if key == atoms::confidence() {
            enum3(v, [(atoms::low(), Confidence::Low), (atoms::medium(), Confidence::Medium), (atoms::high(), Confidence::High)])
                .map(|c| p.confidence = c)
                .is_some()
        } else if key == atoms::public_ip() {
            is_undefined(v) || convert::decode_ip(v).map(|x| ip = Some(x)).is_some()
        } else if key == atoms::public_port() {
            is_undefined(v) || convert::decode_int::<u16>(v).map(|x| port = Some(x)).is_some()
        } else if key == atoms::port_delta() {
            is_undefined(v) || convert::decode_int::<i32>(v).map(|d| p.port_delta = Some(d)).is_some()
        } else if key == atoms::no_nat() {
            v.decode::<bool>().map(|b| p.no_nat = b).is_ok()
        } else if key == atoms::detected_at() {
            is_undefined(v) || convert::decode_int::<u64>(v).map(|d| p.detected_at = d).is_some()
        } else if key == atoms::endpoints() {
            decode_endpoints(v).map(|e| p.endpoints = e).is_some()
        } else if key == atoms::rendezvous() {
            decode_endpoints(v).map(|e| p.rendezvous = e).is_some()
        } else {
            true
        };
        if !ok {
            return Err(k);
        }
    }
    p.mapping = m.ok_or(atoms::mapping().encode(env))?;
    p.filtering = f.ok_or(atoms::filtering().encode(env))?;
    p.allocation = a.ok_or(atoms::allocation().encode(env))?;
    p.public_addr = match (ip, port) {
        (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
        (None, None) => None,
        (Some(_), None) => return Err(atoms::public_port().encode(env)),
        (None, Some(_)) => return Err(atoms::public_ip().encode(env)),
    };
    Ok(p)
}
