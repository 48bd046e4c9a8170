//! Mapping lifetime (RFC 5780 section 4.6) measured against one observer,
//! on sockets of its own, following the sans-IO
//! [`LifetimePlan`](macula_nat_proto::detect::lifetime) (which ages to
//! probe, when to stop, the verdict).
//!
//! A documented exception to one socket per node: the probe sockets'
//! mappings must be left alone for up to the cap, which the node socket's
//! own traffic would refresh. Each epoch (one probe age) runs on a socket
//! X: X learns its mapping from the observer, and `age` later the shared
//! socket Y asks the observer, with RESPONSE-PORT, to answer at X's mapped
//! port; the answer reaching X proves the mapping alive. Y sends that
//! request twice, 200 ms apart, so that one lost datagram does not pass
//! for an expired mapping. A socket whose epoch reported starts another
//! after relearning its mapping (an outbound request, which refreshes or
//! recreates it on every NAT). Sockets come out of the fd budget.
//!
//! Cost with the defaults: at most 13 sockets (12 epochs at once, plus Y),
//! about 4 datagrams of 36-120 bytes per epoch and 20 to 40 epochs: some
//! 150 datagrams and 12 KB, over about 1.7 lifetimes (at most 920 s).

use macula_nat_proto::detect::lifetime::{LifetimeConfig, LifetimePlan, LifetimeVerdict};
use macula_nat_proto::stun::{Attribute, Class, Message};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a measurement found and what it cost.
#[derive(Clone, Debug)]
pub struct LifetimeReport {
    pub verdict: LifetimeVerdict,
    pub elapsed: Duration,
    /// Probe ages run (each one epoch on a socket).
    pub epochs: usize,
    /// Sockets opened, Y included (they are reused from epoch to epoch).
    pub sockets: usize,
    pub packets_sent: u64,
    pub bytes_sent: u64,
}

/// Y's request sent again after this, in case the first is lost.
const RESEND: Duration = Duration::from_millis(200);
/// Least wait for the observer's answer at X after Y's first request.
const ANSWER_WAIT_MIN: Duration = Duration::from_millis(800);
/// Learning a mapping: waits before each retransmission.
const LEARN_WAITS: [Duration; 3] = [Duration::from_millis(500), Duration::from_millis(1000), Duration::from_millis(2000)];

#[derive(Default)]
struct Sent {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Sent {
    async fn send(&self, sock: &UdpSocket, payload: &[u8], to: SocketAddr) {
        if sock.send_to(payload, to).await.is_ok() {
            self.packets.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    }
}

/// A socket and its fd permit, handed from epoch to epoch.
type Slot = (UdpSocket, crate::fd_budget::FdPermit);

/// What the epochs share.
struct Shared {
    observer: SocketAddr,
    y: UdpSocket,
    public_ip: IpAddr,
    sent: Sent,
}

/// Measures the lifetime of mappings towards `observer` for sockets bound
/// to `bind_ip`. `None` when it cannot: no answer from the observer, no
/// sockets, mappings on different public IPs (RESPONSE-PORT answers at the
/// requester's IP), or over the plan's longest duration.
pub async fn measure(observer: SocketAddr, bind_ip: IpAddr, cfg: LifetimeConfig) -> Option<LifetimeReport> {
    let started = Instant::now();
    let mut plan = LifetimePlan::new(cfg);
    let deadline = started + plan.max_duration() + Duration::from_secs(30);
    let y_permit = crate::fd_budget::take_one().ok()?;
    let y = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await.ok()?;
    let sent = Sent::default();
    let (mapped, rtt) = learn(&y, observer, &sent).await?;
    let shared = Arc::new(Shared { observer, y, public_ip: mapped.ip(), sent });
    let wait = (rtt * 4).max(ANSWER_WAIT_MIN);
    let mut sockets = 1usize;
    let mut epochs = 0usize;
    let mut free: Vec<Slot> = Vec::new();
    let mut running: HashMap<Duration, oneshot::Sender<()>> = HashMap::new();
    let mut set: JoinSet<(Duration, Outcome, Slot)> = JoinSet::new();
    // Ages to start; a cancelled epoch gives its socket back at once, so
    // while some are on their way none is opened.
    let mut queued = plan.begin();
    let mut cancelling = 0usize;
    let verdict = loop {
        while !queued.is_empty() && (!free.is_empty() || cancelling == 0) {
            let age = queued.remove(0);
            let slot = match free.pop() {
                Some(s) => s,
                None => {
                    let permit = crate::fd_budget::take_one().ok()?;
                    let sock = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await.ok()?;
                    sockets += 1;
                    (sock, permit)
                }
            };
            epochs += 1;
            let (cancel, cancelled) = oneshot::channel();
            running.insert(age, cancel);
            set.spawn(epoch(shared.clone(), slot, age, wait, cancelled));
        }
        let (age, outcome, slot) = match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(r))) => r,
            _ => return None,
        };
        free.push(slot);
        // Cancelled, possibly finishing before it heard so.
        if running.remove(&age).is_none() {
            cancelling -= 1;
            continue;
        }
        let alive = match outcome {
            Outcome::Cancelled => continue,
            // An epoch that could not learn its mapping says nothing.
            Outcome::Unknown => return None,
            Outcome::Alive(a) => a,
        };
        let step = plan.report(age, alive);
        for a in &step.cancel {
            queued.retain(|q| q != a);
            if let Some(c) = running.remove(a) {
                // Its result comes back exactly once, cancelled or not.
                let _ = c.send(());
                cancelling += 1;
            }
        }
        if let Some(v) = step.verdict {
            break v;
        }
        queued.extend(step.start);
    };
    drop(y_permit);
    Some(LifetimeReport {
        verdict,
        elapsed: started.elapsed(),
        epochs,
        sockets,
        packets_sent: shared.sent.packets.load(Ordering::Relaxed),
        bytes_sent: shared.sent.bytes.load(Ordering::Relaxed),
    })
}

enum Outcome {
    Alive(bool),
    /// The mapping could not be learnt, or is on another public IP than Y's.
    Unknown,
    Cancelled,
}

/// One epoch on `slot`, unless cancelled first; the slot comes back either
/// way, for the next epoch.
async fn epoch(sh: Arc<Shared>, slot: Slot, age: Duration, wait: Duration, cancelled: oneshot::Receiver<()>) -> (Duration, Outcome, Slot) {
    let outcome = tokio::select! {
        a = probe(&sh, &slot.0, age, wait) => a.map_or(Outcome::Unknown, Outcome::Alive),
        _ = cancelled => Outcome::Cancelled,
    };
    (age, outcome, slot)
}

/// Learn X's mapping, wait `age`, have Y ask for an answer at it.
async fn probe(sh: &Shared, x: &UdpSocket, age: Duration, wait: Duration) -> Option<bool> {
    let (mapped, _) = learn(x, sh.observer, &sh.sent).await?;
    if mapped.ip() != sh.public_ip {
        return None;
    }
    tokio::time::sleep(age).await;
    let ask = crate::txid::csprng();
    let req = Message::binding_request(ask).with(Attribute::ResponsePort(mapped.port())).with_fingerprint().encode();
    let until = Instant::now() + wait;
    // Y's mapping may have expired since its last request: counted, but not
    // held back (that would age X's mapping past `age`).
    crate::detect::alloc_probe::count_mapping_outside_sessions();
    sh.sent.send(&sh.y, &req, sh.observer).await;
    let resend = async {
        tokio::time::sleep(RESEND).await;
        sh.sent.send(&sh.y, &req, sh.observer).await;
        std::future::pending::<()>().await
    };
    let answered = tokio::select! {
        a = recv_until(x, until, |m| (m.class == Class::SuccessResponse && m.transaction_id == ask).then_some(())) => a.is_some(),
        _ = resend => false,
    };
    Some(answered)
}

/// The mapped address of `sock` towards `observer`, and the round trip.
async fn learn(sock: &UdpSocket, observer: SocketAddr, sent: &Sent) -> Option<(SocketAddr, Duration)> {
    let ask = crate::txid::csprng();
    let req = Message::binding_request(ask).sized_for_answer().encode();
    let t = Instant::now();
    for w in LEARN_WAITS {
        // A new mapping (or the old one again) on a NAT that may allocate
        // contiguously: not while a session predicts from its counter.
        crate::detect::alloc_probe::mapping_outside_sessions().await;
        sent.send(sock, &req, observer).await;
        let got = recv_until(sock, Instant::now() + w, |m| {
            (m.class == Class::SuccessResponse && m.transaction_id == ask).then(|| m.mapped_address()).flatten()
        })
        .await;
        if let Some(a) = got {
            return Some((a, t.elapsed()));
        }
    }
    None
}

/// The first datagram on `sock` before `until` that decodes as STUN and
/// that `want` accepts.
async fn recv_until<T>(sock: &UdpSocket, until: Instant, want: impl Fn(&Message) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await.ok()?.ok()?;
        if let Some(t) = Message::decode(&buf[..n]).ok().as_ref().and_then(&want) {
            return Some(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::observer_server::ObserverServer;

    #[test]
    fn loopback_never_expires_so_the_cap_is_a_lower_bound() {
        let srv = ObserverServer::start("127.0.0.1:0".parse().unwrap(), Some("127.0.0.2:0".parse().unwrap()), None).unwrap();
        let cfg = LifetimeConfig { first: Duration::from_millis(300), cap: Duration::from_millis(1200), ratio: 1.15 };
        let r = crate::runtime::handle().block_on(measure(srv.primary(), "127.0.0.1".parse().unwrap(), cfg)).unwrap();
        assert_eq!(r.verdict, LifetimeVerdict::AtLeast(Duration::from_millis(1200)), "{r:?}");
        assert!(r.elapsed < Duration::from_secs(5), "{r:?}");
        // Rungs 0.3, 0.6, 1.2 s, four fine points at once, and Y.
        assert!(r.sockets <= 7, "{r:?}");
        assert!(r.packets_sent >= r.epochs as u64, "{r:?}");
    }

    #[test]
    fn a_silent_observer_gives_no_verdict() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = LifetimeConfig { first: Duration::from_millis(300), cap: Duration::from_millis(600), ratio: 1.15 };
        let r = crate::runtime::handle().block_on(measure(silent.local_addr().unwrap(), "127.0.0.1".parse().unwrap(), cfg));
        assert!(r.is_none());
    }
}
