//! Term <-> Rust conversions for addresses and core errors.

use crate::atoms;
use macula_nat_core::{Error, NodeId};
use rustler::{Encoder, Env, Term};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `{A,B,C,D}` or `{A,B,C,D,E,F,G,H}`, as `inet:ip_address()`.
pub fn decode_ip(term: Term) -> Option<IpAddr> {
    let t = rustler::types::tuple::get_tuple(term).ok()?;
    match t.len() {
        4 => {
            let mut o = [0u8; 4];
            for (i, x) in t.iter().enumerate() {
                o[i] = decode_int(*x)?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        8 => {
            let mut seg = [0u16; 8];
            for (i, x) in t.iter().enumerate() {
                seg[i] = decode_int(*x)?;
            }
            Some(IpAddr::V6(Ipv6Addr::from(seg)))
        }
        _ => None,
    }
}

pub fn encode_ip<'a>(env: Env<'a>, ip: IpAddr) -> Term<'a> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a, b, c, d).encode(env)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let terms: Vec<Term> = s.iter().map(|x| x.encode(env)).collect();
            rustler::types::tuple::make_tuple(env, &terms)
        }
    }
}

/// `{Ip, Port}`
pub fn encode_addr<'a>(env: Env<'a>, addr: SocketAddr) -> Term<'a> {
    (encode_ip(env, addr.ip()), addr.port()).encode(env)
}

pub fn decode_addr(term: Term) -> Option<SocketAddr> {
    let (ip, port): (Term, Term) = term.decode().ok()?;
    Some(SocketAddr::new(decode_ip(ip)?, decode_int(port)?))
}

/// An integer that must fit `T` exactly. rustler's own narrow-integer
/// decoders truncate (70000 would become port 4464), so go through i64.
pub fn decode_int<T: TryFrom<i64>>(term: Term) -> Option<T> {
    T::try_from(term.decode::<i64>().ok()?).ok()
}

/// `{error, Reason}` for a core error. Reasons that carry text keep it in a
/// binary: `{error, {io, <<"...">>}}`.
pub fn encode_error<'a>(env: Env<'a>, e: &Error) -> Term<'a> {
    let reason = match e {
        Error::Closed => atoms::closed().encode(env),
        Error::Timeout => atoms::timeout().encode(env),
        Error::Io(io) => (atoms::io(), crate::guard::msg_binary(env, &io.to_string())).encode(env),
        Error::BadKeyFile(m) => (atoms::bad_key_file(), crate::guard::msg_binary(env, m)).encode(env),
        Error::Internal(m) => (atoms::internal(), crate::guard::msg_binary(env, m)).encode(env),
    };
    (atoms::error(), reason).encode(env)
}

/// A NodeId: a 32-byte binary (the ed25519 public key).
pub fn decode_node_id(term: Term) -> Option<NodeId> {
    term.decode::<rustler::Binary>().ok().and_then(|b| NodeId::from_slice(b.as_slice()))
}

/// Bytes as a binary term; ids (`NodeId`) go out through here as their raw bytes.
pub fn binary<'a>(env: Env<'a>, bytes: impl AsRef<[u8]>) -> Term<'a> {
    let bytes = bytes.as_ref();
    let mut bin = rustler::NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    Term::from(bin)
}

/// `[{NodeId, Endpoint}]` (raw or hex ids, `<<"ip:port">>` or `{Ip, Port}`)
/// as contacts; `None` if any is malformed.
pub fn decode_contacts(t: Term) -> Option<Vec<macula_nat_proto::record::Contact>> {
    let list = t.decode::<Vec<(Term, Term)>>().ok()?;
    list.iter()
        .map(|(id, ep)| Some(macula_nat_proto::record::Contact { node_id: decode_node_id(*id)?, addr: decode_endpoint(*ep)? }))
        .collect()
}

pub fn decode_endpoint(t: Term) -> Option<std::net::SocketAddr> {
    if let Ok(b) = t.decode::<rustler::Binary>() {
        return std::str::from_utf8(b.as_slice()).ok()?.parse().ok().filter(|a: &std::net::SocketAddr| a.port() != 0);
    }
    decode_addr(t).filter(|a| a.port() != 0)
}
