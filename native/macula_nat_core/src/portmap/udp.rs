//! NAT-PMP and PCP exchanges with the gateway: one request, its response,
//! retransmitted on NAT-PMP's schedule (see `proto::portmap`). Each
//! exchange uses a fresh ephemeral socket connected to the gateway's port
//! 5351 (the node's socket carries QUIC; the server maps the port named in
//! the request, not the one the request came from).

use super::{Mapped, Network};
use macula_nat_proto::portmap::{natpmp, pcp, retransmit_wait, Protocol, SERVER_PORT};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tokio::net::UdpSocket;

/// Requests sent before giving up: 250 + 500 + 1000 ms.
const ATTEMPTS: u32 = 3;

/// Why a mapping request failed.
#[derive(Debug)]
pub enum Failure {
    /// No answer at all (nothing listens on 5351).
    NoAnswer,
    /// An answer refusing it.
    Refused(String),
    Io(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoAnswer => write!(f, "no answer"),
            Failure::Refused(why) => write!(f, "refused: {why}"),
            Failure::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Sends `req` until a datagram `accept` takes arrives, on the schedule.
async fn exchange<T>(net: Network, req: &[u8], mut accept: impl FnMut(&[u8]) -> Option<T>) -> Result<T, Failure> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(net.local), 0)).await.map_err(Failure::Io)?;
    sock.connect(SocketAddr::new(IpAddr::V4(net.gateway), SERVER_PORT)).await.map_err(Failure::Io)?;
    let mut buf = [0u8; pcp::MAX_MESSAGE];
    let mut n = 0;
    while let Some(wait) = retransmit_wait(n, ATTEMPTS) {
        n += 1;
        // An ICMP port unreachable from an earlier send shows up here.
        if sock.send(req).await.is_err() {
            continue;
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                Err(_) => break,
                // Connection refused: nothing on 5351; try the next send.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(until).await;
                    break;
                }
                Ok(Ok(len)) => {
                    if let Some(t) = accept(&buf[..len]) {
                        return Ok(t);
                    }
                }
            }
        }
    }
    Err(Failure::NoAnswer)
}

/// NAT-PMP: the external address, then a UDP mapping of `port`.
pub async fn natpmp_map(net: Network, port: u16, lifetime_s: u32) -> Result<Mapped, Failure> {
    let ext = natpmp::Request::ExternalAddress;
    let addr = match exchange(net, &ext.encode(), |b| natpmp::Response::decode(b).filter(|r| r.answers(&ext))).await? {
        natpmp::Response::ExternalAddress { result: natpmp::ResultCode::Success, addr, .. } => addr,
        r => return Err(Failure::Refused(format!("external address: {:?}", r.result()))),
    };
    let req = natpmp::Request::map_udp(port, lifetime_s);
    match exchange(net, &req.encode(), |b| natpmp::Response::decode(b).filter(|r| r.answers(&req))).await? {
        natpmp::Response::Map { result: natpmp::ResultCode::Success, external_port, lifetime_s, .. } if external_port != 0 => Ok(Mapped {
            protocol: Protocol::NatPmp,
            external: SocketAddr::new(IpAddr::V4(addr), external_port),
            internal_port: port,
            lifetime_s,
            network: net,
            obtained: Instant::now(),
            pcp_nonce: None,
        }),
        r => Err(Failure::Refused(format!("map: {:?}", r.result()))),
    }
}

pub async fn natpmp_delete(net: Network, port: u16) -> Result<(), Failure> {
    let req = natpmp::Request::delete_udp(port);
    match exchange(net, &req.encode(), |b| natpmp::Response::decode(b).filter(|r| r.answers(&req))).await?.result() {
        natpmp::ResultCode::Success => Ok(()),
        r => Err(Failure::Refused(format!("{r:?}"))),
    }
}

/// PCP: a MAP request for UDP `port` (`nonce` kept for renewals and the
/// delete).
pub async fn pcp_map(net: Network, port: u16, lifetime_s: u32, nonce: [u8; 12]) -> Result<Mapped, Failure> {
    let req = pcp::MapRequest::udp(IpAddr::V4(net.local), nonce, port, lifetime_s);
    let r = exchange(net, &req.encode(), |b| pcp::Response::decode(b).filter(|r| r.answers(&req))).await?;
    match (r.header.result, r.map) {
        (pcp::ResultCode::Success, Some(m)) if m.external_port != 0 => Ok(Mapped {
            protocol: Protocol::Pcp,
            external: SocketAddr::new(m.external_ip, m.external_port),
            internal_port: port,
            lifetime_s: r.header.lifetime_s,
            network: net,
            obtained: Instant::now(),
            pcp_nonce: Some(nonce),
        }),
        (res, _) => Err(Failure::Refused(format!("{res:?} (version {})", r.header.version))),
    }
}

pub async fn pcp_delete(net: Network, port: u16, nonce: [u8; 12]) -> Result<(), Failure> {
    let req = pcp::MapRequest::udp(IpAddr::V4(net.local), nonce, port, 0).delete();
    let r = exchange(net, &req.encode(), |b| pcp::Response::decode(b).filter(|r| r.answers(&req))).await?;
    match r.header.result {
        pcp::ResultCode::Success => Ok(()),
        res => Err(Failure::Refused(format!("{res:?}"))),
    }
}
