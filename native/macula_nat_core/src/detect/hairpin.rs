//! Hairpinning (RFC 5780 section 4.5), on a socket of its own: learn its
//! mapped address from an observer, send a Binding request to that address,
//! and see whether the request comes back. It does only if the NAT
//! translates a packet from inside to its own public address back inside
//! (and from the public side, so the socket's filter admits it): what two
//! nodes behind the same NAT need when their LAN path is closed.
//!
//! It runs beside the main detection (started with it, joined at its end)
//! and costs one socket (out of the fd budget) and three datagrams per
//! detection. A hairpinned
//! packet crosses only the NAT, so the wait for our own request is short:
//! one round trip to the observer, at least [`BACK_WAIT_MIN`]; that is what
//! a detection behind a NAT that does not hairpin takes longer (100 ms on
//! a LAN-close observer), no more.

use macula_nat_proto::stun::{Class, Message, METHOD_BINDING};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// How long the observer's answer may take.
pub(crate) const HAIRPIN_WAIT: Duration = Duration::from_millis(700);
/// The least wait for our own request to come back.
const BACK_WAIT_MIN: Duration = Duration::from_millis(100);

/// `Some(true)` when our own request came back through our mapped address,
/// `Some(false)` when it did not in time, `None` when the
/// mapping could not be learnt (no answer from `observer`) or no socket
/// (none bound, or none left in the fd budget).
pub(crate) async fn hairpins(observer: SocketAddr, bind_ip: IpAddr) -> Option<bool> {
    let _permit = crate::fd_budget::take_one().ok()?;
    let sock = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await.ok()?;
    let ask = crate::txid::csprng();
    let t = tokio::time::Instant::now();
    sock.send_to(&Message::binding_request(ask).sized_for_answer().encode(), observer).await.ok()?;
    let mapped = recv_until(&sock, HAIRPIN_WAIT, |m| (m.class == Class::SuccessResponse && m.transaction_id == ask).then(|| m.mapped_address()).flatten()).await?;
    let rtt = t.elapsed();
    let own = crate::txid::csprng();
    sock.send_to(&Message::binding_request(own).encode(), mapped).await.ok()?;
    let back = recv_until(&sock, rtt.clamp(BACK_WAIT_MIN, HAIRPIN_WAIT), |m| {
        (m.class == Class::Request && m.method == METHOD_BINDING && m.transaction_id == own).then_some(())
    })
    .await;
    Some(back.is_some())
}

/// The first datagram on `sock` within `wait` that decodes as STUN and
/// that `want` accepts.
async fn recv_until<T>(sock: &UdpSocket, wait: Duration, want: impl Fn(&Message) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; 1500];
    let until = tokio::time::Instant::now() + wait;
    loop {
        let (n, _) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await.ok()?.ok()?;
        if let Some(t) = Message::decode(&buf[..n]).ok().as_ref().and_then(&want) {
            return Some(t);
        }
    }
}
