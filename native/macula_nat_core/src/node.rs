//! A node: one identity and the one UDP socket that carries STUN probes,
//! punch packets and QUIC. Detection measures the mapping of this very socket,
//! so it must never be swapped for another while the node lives.

use crate::{runtime, Error, Identity, NodeId};
use macula_nat_proto::observer::{Observer, ObserverConfig};
use macula_nat_proto::stun::{self, Class, Message};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A STUN response that arrived on the node's socket: (source, bytes).
pub type StunDatagram = (SocketAddr, Vec<u8>);

/// Who wants STUN responses. Each subscriber ignores transaction ids that
/// are not its own, so a broadcast is enough and keeps the loop simple.
#[derive(Default)]
struct StunSinks {
    next: u64,
    sinks: Vec<(u64, mpsc::UnboundedSender<StunDatagram>)>,
}

/// Receives the STUN responses arriving on the node's socket until dropped.
pub struct StunSubscription {
    id: u64,
    sinks: Arc<Mutex<StunSinks>>,
    pub rx: mpsc::UnboundedReceiver<StunDatagram>,
}

impl Drop for StunSubscription {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sinks.lock() {
            s.sinks.retain(|(id, _)| *id != self.id);
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub bind: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0) }
    }
}

#[derive(Default)]
struct Counters {
    datagrams_in: AtomicU64,
    bytes_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_out: AtomicU64,
    stun_answered: AtomicU64,
    stun_dropped: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Binding requests this node answered (every node is a plain STUN
    /// server for its peers).
    pub stun_answered: u64,
    /// Malformed or unexpected STUN datagrams dropped.
    pub stun_dropped: u64,
}

pub struct Node {
    identity: Identity,
    local_addr: SocketAddr,
    // Behind a lock so `close` can release the port even while other
    // handles to the node still exist: a restarted owner must be able to
    // bind the same configured port again. The receive task holds the last
    // reference until the runtime drops the aborted task (microseconds
    // later), so the release is prompt but not synchronous; close never
    // blocks (it may run on a BEAM scheduler) and openers retry briefly.
    socket: RwLock<Option<Arc<UdpSocket>>>,
    recv_task: RwLock<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    counters: Arc<Counters>,
    stun_sinks: Arc<Mutex<StunSinks>>,
}

impl Node {
    /// Binds the socket and starts its receive loop. Binding is a quick
    /// syscall, so this may run on a BEAM scheduler.
    pub fn open(config: NodeConfig, identity: Identity) -> Result<Arc<Node>, Error> {
        let std_sock = std::net::UdpSocket::bind(config.bind)?;
        std_sock.set_nonblocking(true)?;
        let local_addr = std_sock.local_addr()?;
        let _guard = runtime::handle().enter();
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        let counters = Arc::new(Counters::default());
        let stun_sinks = Arc::new(Mutex::new(StunSinks::default()));
        let observer = Observer::new(ObserverConfig {
            primary: local_addr,
            alternate: None,
            software: Some(format!("macula_nat {}", env!("CARGO_PKG_VERSION"))),
        })
        .map_err(|e| Error::Internal(format!("{e:?}")))?;
        let task = runtime::spawn(recv_loop(socket.clone(), local_addr, observer, counters.clone(), stun_sinks.clone()));
        Ok(Arc::new(Node {
            identity,
            local_addr,
            socket: RwLock::new(Some(socket)),
            recv_task: RwLock::new(Some(task)),
            closed: AtomicBool::new(false),
            counters,
            stun_sinks,
        }))
    }

    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.check_open()?;
        Ok(self.local_addr)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub fn socket(&self) -> Result<Arc<UdpSocket>, Error> {
        self.socket.read().map_err(|_| Error::Closed)?.clone().ok_or(Error::Closed)
    }

    pub async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> Result<(), Error> {
        let sock = self.socket()?;
        let n = sock.send_to(payload, dst).await?;
        self.counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Subscribe to STUN responses arriving on the node's socket.
    pub fn subscribe_stun(&self) -> StunSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sinks = self.stun_sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.next += 1;
        let id = sinks.next;
        sinks.sinks.push((id, tx));
        StunSubscription { id, sinks: self.stun_sinks.clone(), rx }
    }

    pub fn stats(&self) -> NodeStats {
        let c = &self.counters;
        NodeStats {
            datagrams_in: c.datagrams_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            datagrams_out: c.datagrams_out.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            stun_answered: c.stun_answered.load(Ordering::Relaxed),
            stun_dropped: c.stun_dropped.load(Ordering::Relaxed),
        }
    }

    /// Idempotent. Stops the receive loop and releases the port.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut t) = self.recv_task.write() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
        if let Ok(mut s) = self.socket.write() {
            s.take();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.close();
    }
}

async fn recv_loop(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    observer: Observer,
    counters: Arc<Counters>,
    sinks: Arc<Mutex<StunSinks>>,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
                counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                let data = &buf[..n];
                if stun::is_stun(data) {
                    on_stun(&socket, local, &observer, &counters, &sinks, from, data).await;
                }
                // Not STUN: punch packets and QUIC, demultiplexed here once
                // those layers exist.
            }
            // ICMP errors from earlier sends surface here on Linux; they say
            // nothing about this socket's health, so keep receiving.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::debug!("recv loop ends: {e}");
                return;
            }
        }
    }
}

async fn on_stun(
    socket: &UdpSocket,
    local: SocketAddr,
    observer: &Observer,
    counters: &Counters,
    sinks: &Mutex<StunSinks>,
    from: SocketAddr,
    data: &[u8],
) {
    let Ok(msg) = Message::decode(data) else {
        counters.stun_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match msg.class {
        Class::Request => {
            if let Some(reply) = observer.handle_datagram(local, from, data) {
                if socket.send_to(&reply.payload, reply.to).await.is_ok() {
                    counters.stun_answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Class::SuccessResponse | Class::ErrorResponse => {
            let Ok(mut s) = sinks.lock() else { return };
            s.sinks.retain(|(_, tx)| tx.send((from, data.to_vec())).is_ok());
        }
        Class::Indication => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> NodeConfig {
        NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }
    }

    #[test]
    fn open_send_receive_close_releases_port() {
        let a = Node::open(loopback(), Identity::generate()).unwrap();
        let b = Node::open(loopback(), Identity::generate()).unwrap();
        let b_addr = b.local_addr().unwrap();
        runtime::handle().block_on(async {
            for _ in 0..5 {
                a.send_to(b"hello", b_addr).await.unwrap();
            }
            for _ in 0..100 {
                if b.stats().datagrams_in == 5 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert_eq!(b.stats().datagrams_in, 5);
        assert_eq!(b.stats().bytes_in, 25);
        assert_eq!(a.stats().datagrams_out, 5);
        b.close();
        assert!(matches!(b.local_addr(), Err(Error::Closed)));
        // The port is free again (promptly) although `b` is still referenced.
        let mut again = None;
        for _ in 0..100 {
            match Node::open(NodeConfig { bind: b_addr }, Identity::generate()) {
                Ok(n) => {
                    again = Some(n);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        let again = again.expect("port released within 500 ms");
        assert_eq!(again.local_addr().unwrap(), b_addr);
    }
}
