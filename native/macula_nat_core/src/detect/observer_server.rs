//! RFC 5780 observer server: binds the observer's 2 IPs x 2 ports and
//! answers Binding requests from whichever socket the sans-IO
//! [`Observer`](macula_nat_proto::observer::Observer) chooses (that is how
//! CHANGE-REQUEST is honoured). Malformed datagrams are dropped and counted
//! by reason, never answered. The four sockets share one
//! [`ReplyBudget`]: a spoofed source gets no more bytes from the four
//! together than it sent, whichever socket the requests arrive on and
//! whichever the answers leave from. Answers are sent without waiting
//! (`try_send_to`): a full socket buffer drops the answer (counted as
//! `send_failed`) rather than stalling the requests behind it.

use crate::lock::lock;
use crate::{runtime, Error};
use macula_nat_proto::observer::{NoAnswer, Observer, ObserverConfig};
use macula_nat_proto::reply_budget::{ReplyBudget, ReplyLimits};
use macula_nat_proto::stun::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct ObserverStats {
    pub answered: AtomicU64,
    pub dropped: Mutex<HashMap<&'static str, u64>>,
}

impl ObserverStats {
    fn drop_reason(&self, reason: &'static str) {
        {
            let mut m = lock(&self.dropped);
            *m.entry(reason).or_insert(0) += 1;
        }
    }

    pub fn snapshot(&self) -> (u64, Vec<(&'static str, u64)>) {
        let dropped = lock(&self.dropped).iter().map(|(k, v)| (*k, *v)).collect();
        (self.answered.load(Ordering::Relaxed), dropped)
    }
}

pub struct ObserverServer {
    primary: SocketAddr,
    alternate: Option<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<ObserverStats>,
}

impl ObserverServer {
    /// Binds every address the observer needs. Port 0 in `primary` or
    /// `alternate` picks a free port (handy on loopback, where 127.0.0.1 and
    /// 127.0.0.2 give the two IPs).
    pub fn start(primary: SocketAddr, alternate: Option<SocketAddr>, software: Option<String>) -> Result<ObserverServer, Error> {
        let p_sock = bind(primary)?;
        let primary = p_sock.local_addr()?;
        let mut socks = vec![p_sock];
        let alternate = match alternate {
            Some(a) => {
                // The alternate port must differ from the primary one and be
                // free on both IPs (the crossed pairs bind it too).
                let a_sock = bind(a)?;
                let a = a_sock.local_addr()?;
                socks.push(a_sock);
                Some(a)
            }
            None => None,
        };
        let observer = Observer::new(ObserverConfig { primary, alternate, software })
            .map_err(|e| Error::Internal(format!("observer config: {e:?}")))?;
        for addr in observer.local_addrs().into_iter().skip(socks.len()) {
            socks.push(bind(addr)?);
        }
        let _guard = runtime::handle().enter();
        let mut by_addr = HashMap::new();
        for s in socks {
            let addr = s.local_addr()?;
            by_addr.insert(addr, Arc::new(UdpSocket::from_std(s)?));
        }
        let by_addr = Arc::new(by_addr);
        let stats = Arc::new(ObserverStats::default());
        let observer = Arc::new(observer);
        let budget = Arc::new(Mutex::new(ReplyBudget::new(ReplyLimits::default(), Instant::now())));
        let tasks = by_addr
            .iter()
            .map(|(local, sock)| {
                let ctx = Serve { all: by_addr.clone(), observer: observer.clone(), budget: budget.clone(), stats: stats.clone() };
                runtime::spawn(serve(*local, sock.clone(), ctx))
            })
            .collect();
        Ok(ObserverServer { primary, alternate, tasks: Mutex::new(tasks), stats })
    }

    pub fn primary(&self) -> SocketAddr {
        self.primary
    }

    pub fn alternate(&self) -> Option<SocketAddr> {
        self.alternate
    }

    pub fn stop(&self) {
        {
            let mut tasks = lock(&self.tasks);
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

impl Drop for ObserverServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// What every socket's task shares.
struct Serve {
    all: Arc<HashMap<SocketAddr, Arc<UdpSocket>>>,
    observer: Arc<Observer>,
    budget: Arc<Mutex<ReplyBudget>>,
    stats: Arc<ObserverStats>,
}

async fn serve(local: SocketAddr, sock: Arc<UdpSocket>, ctx: Serve) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        answer(&ctx, local, &sock, from, &buf[..n]);
    }
}

fn answer(ctx: &Serve, local: SocketAddr, sock: &Arc<UdpSocket>, from: SocketAddr, data: &[u8]) {
    let req = match Message::decode_any(data) {
        Ok(m) => m,
        Err(e) => return ctx.stats.drop_reason(e.reason()),
    };
    // One lock for the decision and the charge: the four tasks' answers to
    // one address cannot overtake each other's accounting.
    let mut budget = lock(&ctx.budget);
    let room = match budget.admit(from.ip(), data.len(), Instant::now()) {
        Ok(room) => room,
        Err(refused) => return ctx.stats.drop_reason(refused.reason()),
    };
    match ctx.observer.answer(local, from, &req, data.len(), room) {
        Ok(reply) => {
            let out = ctx.all.get(&reply.from).unwrap_or(sock);
            match crate::socket::recv_loop::send_now(out, &reply.payload, reply.to) {
                Ok(sent) => {
                    budget.spent(reply.to.ip(), sent);
                    ctx.stats.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => ctx.stats.drop_reason("send_failed"),
            }
        }
        Err(NoAnswer::OverBudget) => {
            budget.refused_by_ledger();
            ctx.stats.drop_reason("ledger");
        }
        Err(NoAnswer::Ignored) => ctx.stats.drop_reason("not_a_binding_request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use macula_nat_proto::stun::{Attribute, Class};
    use std::time::Duration;

    fn request(tx: u8, change: Option<(bool, bool)>) -> Vec<u8> {
        let mut m = Message::binding_request([tx; 12]);
        if let Some((change_ip, change_port)) = change {
            m = m.with(Attribute::ChangeRequest { change_ip, change_port });
        }
        m.with_fingerprint().encode()
    }

    #[test]
    fn answers_from_the_changed_address_on_loopback() {
        let srv = ObserverServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.2:0".parse().unwrap()),
            Some("macula-test".into()),
        )
        .unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let alt = srv.alternate().unwrap();
        let cases = [
            (None, srv.primary()),
            (Some((true, true)), alt),
            (Some((false, true)), SocketAddr::new(srv.primary().ip(), alt.port())),
            (Some((true, false)), SocketAddr::new(alt.ip(), srv.primary().port())),
        ];
        for (i, (change, expect_from)) in cases.iter().enumerate() {
            client.send_to(&request(i as u8, *change), srv.primary()).unwrap();
            let mut buf = [0u8; 1500];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, *expect_from, "case {i}");
            let resp = Message::decode(&buf[..n]).unwrap();
            assert_eq!(resp.class, Class::SuccessResponse);
            assert_eq!(resp.mapped_address(), Some(client.local_addr().unwrap()));
            if change.is_none() {
                assert_eq!(resp.other_address(), Some(alt));
            }
        }
        client.send_to(b"garbage that is not stun", srv.primary()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (answered, dropped) = srv.stats.snapshot();
        assert_eq!(answered, 4);
        assert_eq!(dropped.iter().map(|(_, n)| n).sum::<u64>(), 1);
    }
}
