//! Round trips measured with STUN Binding requests from the node's own
//! socket: every node answers them (see `node.rs`), so any peer can be
//! timed without a connection, on the very path its traffic would take.

use crate::Node;
use macula_nat_proto::stun::{Class, Message};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// After the first send, unanswered targets are asked again at a quarter
/// and at half of `timeout` (a lost datagram should not make a relay look
/// dead): the divisors of `timeout`.
const RETRIES_AT: [u32; 2] = [4, 2];

/// The round trip to each of `targets`, `None` for those that did not
/// answer within `timeout`. Each transmission has its own transaction id,
/// so a late answer to an earlier send is never timed from a later one
/// (Karn's rule).
pub async fn measure(node: &Node, targets: &[SocketAddr], timeout: Duration) -> Vec<Option<Duration>> {
    let mut out = vec![None; targets.len()];
    if targets.is_empty() {
        return out;
    }
    let mut sub = node.subscribe_stun();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut sends = std::iter::once(start).chain(RETRIES_AT.iter().map(|d| start + timeout / *d));
    let mut next_send = sends.next();
    // transaction id -> (target index, sent at)
    let mut sent: HashMap<[u8; 12], (usize, Instant)> = HashMap::new();
    loop {
        if next_send.is_some_and(|at| at <= Instant::now()) {
            for (i, dst) in targets.iter().enumerate().filter(|(i, _)| out[*i].is_none()) {
                let txid = crate::txid::csprng();
                sent.insert(txid, (i, Instant::now()));
                // A failed send is a lost probe; the retries and the
                // deadline deal with it.
                // Sized for a full answer from responders that answer no
                // more than they receive (ours).
                let _ = node.send_to(&Message::binding_request(txid).sized_for_answer().encode(), *dst).await;
            }
            next_send = sends.next();
        }
        let wake = next_send.map_or(deadline, |n| n.min(deadline));
        tokio::select! {
            got = sub.rx.recv() => {
                let Some((_, data)) = got else { break };
                let Ok(msg) = Message::decode(&data) else { continue };
                if msg.class != Class::SuccessResponse {
                    continue;
                }
                if let Some((i, at)) = sent.get(&msg.transaction_id).copied() {
                    out[i].get_or_insert(at.elapsed());
                }
                if out.iter().all(Option::is_some) {
                    break;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runtime, Identity, NodeConfig};

    fn node() -> std::sync::Arc<Node> {
        Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
    }

    #[test]
    fn answering_nodes_are_timed_silent_ones_are_not() {
        let a = node();
        let b = node();
        let c = node();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let targets = [b.local_addr().unwrap(), silent.local_addr().unwrap(), c.local_addr().unwrap()];
        let got = runtime::handle().block_on(measure(&a, &targets, Duration::from_millis(400)));
        assert!(got[0].is_some() && got[2].is_some(), "{got:?}");
        assert_eq!(got[1], None);
        // The silent one saw the first send and both retries.
        silent.set_nonblocking(true).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 1500];
        while silent.recv(&mut buf).is_ok() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(b.stats().stun_answered, 1, "answered at the first send: no retries");
        assert!(runtime::handle().block_on(measure(&a, &[], Duration::from_millis(10))).is_empty());
    }

    #[test]
    fn a_closed_node_measures_nothing() {
        let a = node();
        let b = node();
        a.close();
        let got = runtime::handle().block_on(measure(&a, &[b.local_addr().unwrap()], Duration::from_millis(100)));
        assert_eq!(got, vec![None]);
    }
}
