//! Connections as resources owned by a process.
//!
//! Each connection has one reader task that turns the peer's messages into
//! `{macula_connection, Conn, {message, Term}}` for the owner, in order,
//! tells it `{macula_connection, Conn, {method_changed, Method}}` when the
//! path changes (a relayed connection that got punched), and ends with
//! `{macula_connection, Conn, {closed, Reason}}`. Sends go through
//! one writer task per connection (a queue), so two `send/2` calls from one
//! process arrive in the order they were made. The owner is monitored: when
//! it dies the connection closes.
//!
//! Terms are decoded with the VM's safe decoder: a message that would
//! create atoms unknown on this node arrives as `{unsafe_message, Binary}`.

use crate::node_nif::NodeRes;
use crate::{atoms, convert, guard, reply};
use macula_nat_core::quic::{CloseReason, Connection};
use macula_nat_core::{Method, Node};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, Monitor, OwnedEnv, ResourceArc, Term};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, oneshot, watch};

type SendJob = (Vec<u8>, Option<oneshot::Sender<Result<(), String>>>);

/// Bytes that may wait ahead of the stream before `send/2` waits for the
/// writer: below it a send answers `ok` at once (queued, in order), which
/// took 1 KiB sends from ~20k to ~160k per second; above it the caller
/// waits, so a fast sender cannot grow the queue without bound.
const HIGH_WATER: usize = 4 << 20;

pub struct ConnRes {
    conn: Connection,
    /// To tell which relay a relayed connection goes through.
    node: Weak<Node>,
    owner: Mutex<(LocalPid, Option<Monitor>)>,
    writer: mpsc::UnboundedSender<SendJob>,
    queued: Arc<AtomicUsize>,
}

#[rustler::resource_impl]
impl rustler::Resource for ConnRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _mon: Monitor) {
        // Only the current owner's death closes: a monitor of a former
        // owner may still fire after `controlling_process`.
        let current = self.owner.lock().map(|o| o.0).ok();
        if current.map(|c| c == pid).unwrap_or(true) {
            self.conn.close("owner exited");
        }
    }
}

pub fn method_atom(m: Method) -> Atom {
    match m {
        Method::Direct => atoms::direct(),
        Method::Punched => atoms::punched(),
        Method::Relayed => atoms::relayed(),
    }
}

fn close_reason<'a>(env: Env<'a>, r: &CloseReason) -> Term<'a> {
    match r {
        CloseReason::Local { .. } => atoms::normal().encode(env),
        CloseReason::Peer { reason, .. } => (atoms::peer_closed(), convert::binary(env, reason.as_bytes())).encode(env),
        CloseReason::NodeClosed => atoms::node_closed().encode(env),
        CloseReason::TimedOut => atoms::timeout().encode(env),
        CloseReason::Reset => atoms::reset().encode(env),
        CloseReason::Failed(m) => (atoms::failed(), convert::binary(env, m.as_bytes())).encode(env),
    }
}

/// Wraps a fresh connection of `node` in a resource owned by `owner`,
/// starts its reader and writer. Its method is the connection's own (set by
/// the connector). Callable from runtime threads.
pub fn adopt(conn: Connection, node: &Arc<Node>, owner: LocalPid) -> Option<ResourceArc<ConnRes>> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Subscribed before anyone can change it, so no change goes unreported.
    let methods = conn.watch_method();
    let res = ResourceArc::new(ConnRes {
        conn: conn.clone(),
        node: Arc::downgrade(node),
        owner: Mutex::new((owner, None)),
        writer: tx,
        queued: Arc::new(AtomicUsize::new(0)),
    });
    let Some(mon) = res.monitor(None, &owner) else {
        // The owner is already gone.
        conn.close("owner exited");
        return None;
    };
    if let Ok(mut o) = res.owner.lock() {
        o.1 = Some(mon);
    }
    macula_nat_core::runtime::spawn(writer(conn, rx, res.queued.clone()));
    macula_nat_core::runtime::spawn(reader(res.clone(), methods));
    Some(res)
}

async fn writer(conn: Connection, mut rx: mpsc::UnboundedReceiver<SendJob>, queued: Arc<AtomicUsize>) {
    while let Some((bytes, done)) = rx.recv().await {
        let len = bytes.len();
        let r = conn.send(bytes).await.map_err(|e| e.kind().to_string());
        queued.fetch_sub(len, Ordering::AcqRel);
        let failed = r.is_err();
        if let Some(done) = done {
            let _ = done.send(r);
        }
        if failed {
            // Later sends answer {error, closed} at once.
            rx.close();
        }
    }
}

async fn reader(res: ResourceArc<ConnRes>, mut methods: watch::Receiver<Method>) {
    let mut env = OwnedEnv::new();
    let mut reported = *methods.borrow_and_update();
    let mut watching = true;
    loop {
        // `recv` is cancel-safe (its state lives in the connection), so
        // losing the race to a method change drops nothing.
        let event = tokio::select! {
            biased;
            m = res.conn.recv() => match m {
                Some(bytes) => Ok(bytes),
                None => break,
            },
            changed = methods.changed(), if watching => match changed {
                Ok(()) => Err(*methods.borrow_and_update()),
                Err(_) => {
                    watching = false;
                    continue;
                }
            },
        };
        let owner = match res.owner.lock() {
            Ok(o) => o.0,
            Err(_) => break,
        };
        let r = res.clone();
        match event {
            Ok(bytes) => {
                let _ = env.send_and_clear(&owner, move |env| {
                    let payload = match env.binary_to_term(&bytes) {
                        Some((t, n)) if n == bytes.len() => (atoms::message(), t).encode(env),
                        _ => (atoms::unsafe_message(), convert::binary(env, &bytes)).encode(env),
                    };
                    (atoms::macula_connection(), r, payload).encode(env)
                });
            }
            Err(m) if m != reported => {
                reported = m;
                let _ = env.send_and_clear(&owner, move |env| {
                    (atoms::macula_connection(), r, (atoms::method_changed(), method_atom(m))).encode(env)
                });
            }
            Err(_) => {}
        }
    }
    let reason = res.conn.closed().await;
    if let Ok(o) = res.owner.lock().map(|o| o.0) {
        let r = res.clone();
        let _ = env.send_and_clear(&o, move |env| {
            (atoms::macula_connection(), r, (atoms::closed(), close_reason(env, &reason))).encode(env)
        });
    }
}

/// `conn_open(Ref, Node, {Ip, Port}, PeerId) -> {ok, Pending}`: a direct
/// QUIC dial by address; replies `{ok, Conn}` owned by the caller.
#[rustler::nif]
fn conn_open<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>, addr: Term<'a>, peer: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(addr) = convert::decode_addr(addr) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Some(peer) = convert::decode_node_id(peer) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let owner = env.pid();
        let node = node.node.clone();
        reply::spawn_reply(env, reference, async move {
            let ep = match node.quic() {
                Ok(ep) => ep,
                Err(e) => return quic_error(e.kind()),
            };
            match ep.connect(addr, peer).await {
                Ok(conn) => adopted(conn, &node, owner),
                Err(e) => quic_error(e.kind()),
            }
        })
    })
}

/// `conn_accept(Ref, Node) -> {ok, Pending}`; replies `{ok, Conn}` for the
/// next incoming connection, owned by the caller.
#[rustler::nif]
fn conn_accept<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || {
        let owner = env.pid();
        let node = node.node.clone();
        reply::spawn_reply(env, reference, async move {
            let ep = match node.quic() {
                Ok(ep) => ep,
                Err(e) => return quic_error(e.kind()),
            };
            match ep.accept().await {
                Some(conn) => adopted(conn, &node, owner),
                None => quic_error("closed"),
            }
        })
    })
}

/// `{ok, Conn}` for a connection now owned by `owner`, `{error, closed}`
/// when the owner is already gone.
pub fn adopted(conn: Connection, node: &Arc<Node>, owner: LocalPid) -> reply::Encode {
    match adopt(conn, node, owner) {
        Some(res) => reply::ok_with(res),
        None => quic_error("closed"),
    }
}

fn quic_error(kind: &'static str) -> reply::Encode {
    reply::encode_with(move |env| {
        let reason = match kind {
            "closed" => atoms::closed().encode(env),
            "timed_out" | "timeout" => atoms::timeout().encode(env),
            "peer_id_mismatch" => atoms::peer_id_mismatch().encode(env),
            other => (atoms::quic(), convert::binary(env, other.as_bytes())).encode(env),
        };
        (atoms::error(), reason).encode(env)
    })
}

/// `conn_send(Ref, Conn, Binary) -> ok | {ok, Pending} | {error, _}`: `ok`
/// at once while the connection's queue is short, else `{ok, Pending}` and
/// a reply `ok` once the message is in the connection's stream, in call
/// order.
#[rustler::nif]
fn conn_send<'a>(env: Env<'a>, reference: Term<'a>, res: ResourceArc<ConnRes>, bin: Binary<'a>) -> Term<'a> {
    guard::guard(env, || {
        let len = bin.len();
        if len > res.conn.max_frame() {
            return (atoms::error(), atoms::too_large()).encode(env);
        }
        if res.conn.close_reason().is_some() {
            return (atoms::error(), atoms::closed()).encode(env);
        }
        if res.queued.fetch_add(len, Ordering::AcqRel) + len <= HIGH_WATER {
            if res.writer.send((bin.as_slice().to_vec(), None)).is_err() {
                res.queued.fetch_sub(len, Ordering::AcqRel);
                return (atoms::error(), atoms::closed()).encode(env);
            }
            return atoms::ok().encode(env);
        }
        let (tx, rx) = oneshot::channel();
        if res.writer.send((bin.as_slice().to_vec(), Some(tx))).is_err() {
            res.queued.fetch_sub(len, Ordering::AcqRel);
            return (atoms::error(), atoms::closed()).encode(env);
        }
        reply::spawn_reply(env, reference, async move {
            match rx.await {
                Ok(Ok(())) => reply::encode_with(|env| atoms::ok().encode(env)),
                Ok(Err(kind)) if kind == "frame_too_large" => {
                    reply::encode_with(|env| (atoms::error(), atoms::too_large()).encode(env))
                }
                _ => reply::encode_with(|env| (atoms::error(), atoms::closed()).encode(env)),
            }
        })
    })
}

/// `conn_info(Conn) -> #{connection_method, peer, remote_address, rtt_ms,
/// closed, relay}`; `relay` is the NodeId of the relay a relayed connection
/// goes through now, `undefined` otherwise.
#[rustler::nif]
fn conn_info<'a>(env: Env<'a>, res: ResourceArc<ConnRes>) -> Term<'a> {
    guard::guard(env, || {
        let c = &res.conn;
        let method = c.method();
        let remote_addr = c.remote_address();
        let remote = remote_addr.to_string();
        let relay = match (method, res.node.upgrade()) {
            (Method::Relayed, Some(node)) => node.relay_of(&remote_addr),
            _ => None,
        };
        let keys = [
            atoms::closed(),
            atoms::connection_method(),
            atoms::peer(),
            atoms::remote_address(),
            atoms::rtt_ms(),
            atoms::relay(),
        ]
        .map(|k| k.encode(env));
        let vals = [
            c.close_reason().is_some().encode(env),
            method_atom(method).encode(env),
            convert::binary(env, &c.peer_id()),
            convert::binary(env, remote.as_bytes()),
            (c.rtt().as_micros() as f64 / 1000.0).encode(env),
            relay.map_or_else(|| atoms::undefined().encode(env), |id| convert::binary(env, &id)),
        ];
        Term::map_from_term_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
    })
}

#[rustler::nif]
fn conn_close<'a>(env: Env<'a>, res: ResourceArc<ConnRes>) -> Term<'a> {
    guard::guard(env, || {
        res.conn.close("closed by application");
        atoms::ok().encode(env)
    })
}

/// `conn_set_owner(Conn, Pid) -> ok | {error, not_owner | closed}`: only
/// the current owner may hand the connection over.
#[rustler::nif]
fn conn_set_owner<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, pid: LocalPid) -> Term<'a> {
    guard::guard(env, || {
        let Ok(mut o) = res.owner.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        if o.0 != env.pid() {
            return (atoms::error(), atoms::not_owner()).encode(env);
        }
        let Some(mon) = res.monitor(Some(env), &pid) else {
            return (atoms::error(), atoms::closed()).encode(env);
        };
        if let Some(old) = o.1.take() {
            res.demonitor(Some(env), &old);
        }
        *o = (pid, Some(mon));
        atoms::ok().encode(env)
    })
}
