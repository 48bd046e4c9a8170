//! The node resource: identity plus the one UDP socket. Its owner process
//! is monitored; when the owner dies the socket is closed at once, so a
//! restarted owner starts from a clean slate. With `port_mapping` the
//! socket's port is mapped at the gateway (`macula_nat_core::portmap`);
//! the mapping is deleted when the node closes (owner death included).

use crate::{atoms, convert, guard, owner};
use macula_nat_core::portmap::{PortMapConfig, PortMapper, Protocol};
use macula_nat_core::{Identity, Node, NodeConfig, QuicConfig};
use rustler::{Encoder, Env, LocalPid, Monitor, ResourceArc, Term};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub struct NodeRes {
    pub node: Arc<Node>,
    /// Runs while the node is open; deletes its mapping when it closes.
    pub portmap: Option<PortMapper>,
}

#[rustler::resource_impl]
impl rustler::Resource for NodeRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for NodeRes {
    fn close(&self) {
        self.node.close();
    }
}

struct OpenOpts {
    bind: SocketAddr,
    /// A dual-stack node's IPv6 socket (`ip6`, at `port` too).
    bind6: Option<SocketAddr>,
    key_file: Option<PathBuf>,
    /// Protocols to map the port with, in order (none: no mapping).
    port_mapping: Vec<Protocol>,
    /// The largest message of a connection (`max_message_bytes`).
    max_message: Option<usize>,
    /// Incoming connections in total and per source IP
    /// (`max_connections`, `max_connections_per_ip`).
    max_conns: Option<usize>,
    max_conns_per_ip: Option<usize>,
    /// The process's fd budget (`fd_budget`); `None`: as it is (a quarter
    /// of RLIMIT_NOFILE, at most 4096, unless set before).
    fd_budget: Option<usize>,
}

/// `port_mapping`: `true` (PCP, NAT-PMP, UPnP IGD), `false`, or a list of
/// `pcp | natpmp | upnp` in the order to try.
fn decode_port_mapping(v: Term) -> Option<Vec<Protocol>> {
    if let Ok(b) = v.decode::<bool>() {
        return Some(if b { Protocol::ALL.to_vec() } else { Vec::new() });
    }
    let list: Vec<Term> = v.decode().ok()?;
    list.into_iter().map(|t| Protocol::parse(&t.atom_to_string().ok()?)).collect()
}

fn decode_open_opts(opts: Term) -> Option<OpenOpts> {
    let map = rustler::types::map::MapIterator::new(opts)?;
    let mut ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut ip6 = None;
    let mut port = 0u16;
    let mut key_file = None;
    let mut port_mapping = Vec::new();
    let mut max_message = None;
    let mut max_conns = None;
    let mut max_conns_per_ip = None;
    let mut fd_budget = None;
    for (k, v) in map {
        let Ok(key) = k.atom_to_string() else { return None };
        match key.as_str() {
            "ip" => ip = convert::decode_ip(v)?,
            // `undefined`: no IPv6 socket.
            "ip6" if v.is_atom() => {}
            "ip6" => ip6 = Some(convert::decode_ip(v).filter(IpAddr::is_ipv6)?),
            "port" => port = convert::decode_int(v)?,
            "key_file" => {
                if v.is_atom() {
                    // `undefined`: no key file, use the VM's identity.
                    continue;
                }
                let bytes: rustler::Binary = v.decode().ok()?;
                let s = std::str::from_utf8(bytes.as_slice()).ok()?;
                key_file = Some(PathBuf::from(s));
            }
            "port_mapping" => port_mapping = decode_port_mapping(v)?,
            "max_message_bytes" => max_message = Some(convert::decode_int::<u32>(v).filter(|&n| n > 0)? as usize),
            "max_connections" => max_conns = Some(convert::decode_int::<u32>(v).filter(|&n| n > 0)? as usize),
            "max_connections_per_ip" => max_conns_per_ip = Some(convert::decode_int::<u32>(v).filter(|&n| n > 0)? as usize),
            // `auto`: leave the budget as it is.
            "fd_budget" if v.is_atom() => {}
            "fd_budget" => fd_budget = Some(convert::decode_int::<u32>(v)? as usize),
            _ => {}
        }
    }
    Some(OpenOpts { bind: SocketAddr::new(ip, port), bind6: ip6.map(|i| SocketAddr::new(i, port)), key_file, port_mapping, max_message, max_conns, max_conns_per_ip, fd_budget })
}

/// `node_open(#{ip, ip6, port, key_file, port_mapping, max_message_bytes,
/// max_connections, max_connections_per_ip, fd_budget}) -> {ok, Node} | {error, Reason}`. `ip6` (an IPv6 address or
/// `undefined`): a second socket for IPv6 on the same port number, a
/// dual-stack node (`ip` IPv4 then). The calling process
/// becomes the owner. `port_mapping` defaults to `false` here (the
/// application's default, `true`, comes from `macula_nat_config`); a node
/// bound to a loopback address never maps. On a dirty IO scheduler: the
/// key file is read, or written and synced, here.
///
/// If the node's socket fails for good later (its receive loop ends on an
/// error), the node closes and the owner gets
/// `{macula_nat_node, failed, Reason}` (`Reason` a binary).
#[rustler::nif(schedule = "DirtyIo")]
fn node_open<'a>(env: Env<'a>, opts: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(o) = decode_open_opts(opts) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let identity = match o.key_file {
            Some(p) => match Identity::load_or_create(&p) {
                Ok(i) => i,
                Err(e) => return convert::encode_error(env, &e),
            },
            None => Identity::vm_default(),
        };
        if let Some(n) = o.fd_budget {
            macula_nat_core::fd_budget::set_limit(n);
        }
        match Node::open_dual(NodeConfig { bind: o.bind }, o.bind6, identity) {
            Ok(node) => {
                let mut cfg = QuicConfig::default();
                if let Some(max) = o.max_message {
                    cfg.max_frame = max;
                }
                if let Some(n) = o.max_conns {
                    cfg.conn_limits.total = n;
                }
                if let Some(n) = o.max_conns_per_ip {
                    cfg.conn_limits.per_ip = n;
                }
                node.set_quic_config(cfg);
                let portmap = (!o.port_mapping.is_empty() && !o.bind.ip().is_loopback())
                    .then(|| PortMapper::start(&node, PortMapConfig { protocols: o.port_mapping, ..Default::default() }));
                report_failure(env.pid(), node.failure());
                owner::owned_by_caller(env, NodeRes { node, portmap })
            }
            Err(e) => convert::encode_error(env, &e),
        }
    })
}

/// Tells `owner` when the node fails (see `node_open`). The watcher holds
/// only the receiving end: it ends when the node is dropped.
fn report_failure(owner: LocalPid, mut failure: tokio::sync::watch::Receiver<Option<String>>) {
    macula_nat_core::runtime::spawn(async move {
        let why = match failure.wait_for(Option::is_some).await {
            Ok(w) => w.clone().unwrap_or_default(),
            Err(_) => return,
        };
        let mut env = rustler::OwnedEnv::new();
        let _ = env.send_and_clear(&owner, move |env| {
            (atoms::macula_nat_node(), atoms::failed(), convert::binary(env, why.as_bytes())).encode(env)
        });
    });
}

#[rustler::nif]
fn node_id<'a>(env: Env<'a>, res: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || (atoms::ok(), convert::binary(env, &res.node.node_id())).encode(env))
}

#[rustler::nif]
fn node_local_addr<'a>(env: Env<'a>, res: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || match res.node.local_addr() {
        Ok(a) => (atoms::ok(), convert::encode_addr(env, a)).encode(env),
        Err(e) => convert::encode_error(env, &e),
    })
}

#[rustler::nif]
fn node_stats<'a>(env: Env<'a>, res: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || {
        let s = res.node.stats();
        let pairs = [
            (atoms::datagrams_in(), s.datagrams_in),
            (atoms::bytes_in(), s.bytes_in),
            (atoms::datagrams_out(), s.datagrams_out),
            (atoms::bytes_out(), s.bytes_out),
            (atoms::stun_answered(), s.stun_answered),
            (atoms::stun_dropped(), s.stun_dropped),
            (atoms::relayed_bytes_out(), s.relayed_bytes_out),
        ];
        let mut keys: Vec<Term> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
        let mut vals: Vec<Term> = pairs.iter().map(|(_, v)| v.encode(env)).collect();
        // port_mapping: undefined | #{protocol => pcp | natpmp | upnp, external => {Ip, Port}}
        let atom = |s: &str| rustler::types::atom::Atom::from_str(env, s).map(|a| a.encode(env));
        let mapped = res.portmap.as_ref().and_then(|p| p.mapped()).and_then(|m| {
            let k = [atom("protocol").ok()?, atom("external").ok()?];
            let v = [atom(m.protocol.name()).ok()?, convert::encode_addr(env, m.external)];
            Term::map_from_arrays(env, &k, &v).ok()
        });
        if let (Ok(k), Ok(undefined)) = (atom("port_mapping"), atom("undefined")) {
            keys.push(k);
            vals.push(mapped.unwrap_or(undefined));
        }
        Term::map_from_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
    })
}

#[rustler::nif]
fn node_close<'a>(env: Env<'a>, res: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || {
        res.node.close();
        atoms::ok().encode(env)
    })
}

/// Sends one datagram from the node's socket. Answers by message.
#[rustler::nif]
fn node_send_to<'a>(
    env: Env<'a>,
    reference: Term<'a>,
    res: ResourceArc<NodeRes>,
    dst: Term<'a>,
    payload: rustler::Binary<'a>,
) -> Term<'a> {
    guard::guard(env, || {
        let Some(dst) = convert::decode_addr(dst) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let data = payload.as_slice().to_vec();
        let node = res.node.clone();
        crate::reply::spawn_reply(env, reference, async move {
            match node.send_to(&data, dst).await {
                Ok(()) => crate::reply::encode_with(|env| atoms::ok().encode(env)),
                Err(e) => crate::reply::encode_with(move |env| convert::encode_error(env, &e)),
            }
        })
    })
}

/// `node_set_profile(Node, Profile | undefined) -> ok | {error, {bad_profile, Key}}`:
/// publishes a detection's result as the node's profile, which signalling
/// reads when it signals; `undefined`: the detection under way ended
/// without one (a known profile stays).
#[rustler::nif]
fn node_set_profile<'a>(env: Env<'a>, res: ResourceArc<NodeRes>, profile: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        if profile.is_atom() {
            res.node.local_profile().unavailable();
            return atoms::ok().encode(env);
        }
        match crate::profile_term::decode_peer_info(profile, 0) {
            Ok(info) => {
                // The measured lifetime spaces control keep-alives.
                let lifetime = profile
                    .map_get(atoms::mapping_lifetime().encode(env))
                    .ok()
                    .and_then(convert::decode_int::<u32>)
                    .map(|ms| std::time::Duration::from_millis(ms as u64));
                res.node.set_mapping_lifetime(lifetime);
                res.node.local_profile().publish(info);
                atoms::ok().encode(env)
            }
            Err(key) => (atoms::error(), (atoms::bad_profile(), key)).encode(env),
        }
    })
}

/// `node_expect_profile(Node, WithinMs) -> ok | {error, badarg}`: a
/// detection started that reports within `WithinMs`; while the node has no
/// profile yet, signalling waits for it.
#[rustler::nif]
fn node_expect_profile<'a>(env: Env<'a>, res: ResourceArc<NodeRes>, within_ms: Term<'a>) -> Term<'a> {
    guard::guard(env, || match convert::decode_int::<u32>(within_ms) {
        Some(ms) => {
            res.node.local_profile().expect(std::time::Duration::from_millis(ms as u64));
            atoms::ok().encode(env)
        }
        None => (atoms::error(), atoms::badarg()).encode(env),
    })
}

/// `node_watch_reflexive(Node, Pid) -> ok`: `Pid` gets
/// `{macula_nat_node, reflexive_changed, {OldIp, OldPort}, {Ip, Port}}`
/// whenever the rendezvous reports our public address moved
/// (`macula_nat_core::netchange`), until it dies or the node is gone. The
/// watcher holds only the receiving end, and ends at the first send to a
/// dead process.
#[rustler::nif]
fn node_watch_reflexive<'a>(env: Env<'a>, res: ResourceArc<NodeRes>, pid: LocalPid) -> Term<'a> {
    guard::guard(env, || {
        let mut rx = res.node.reflexive().subscribe();
        rx.borrow_and_update();
        macula_nat_core::runtime::spawn(async move {
            let mut env = rustler::OwnedEnv::new();
            while rx.changed().await.is_ok() {
                let Some(c) = *rx.borrow_and_update() else { continue };
                let sent = env.send_and_clear(&pid, move |env| {
                    (atoms::macula_nat_node(), atoms::reflexive_changed(), convert::encode_addr(env, c.old), convert::encode_addr(env, c.new))
                        .encode(env)
                });
                if sent.is_err() {
                    return;
                }
            }
        });
        atoms::ok().encode(env)
    })
}
