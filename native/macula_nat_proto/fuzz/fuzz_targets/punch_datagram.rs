//! Hostile datagrams fed to a running punch (both roles, several sockets)
//! must never panic, and the punch must still end by its deadline.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::id::{NodeId, SessionId};
use macula_nat_proto::punch::{answer_request, session_of, Punch, PunchConfig, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let peer: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    let _ = session_of(data);
    let (session, a, b) = (SessionId::from_bytes([1; 16]), NodeId::from_bytes([2; 32]), NodeId::from_bytes([3; 32]));
    let _ = answer_request(data, peer, &session, &a, &b, true);
    for role in [Role::Initiator, Role::Responder] {
        let t0 = Instant::now();
        let cfg = PunchConfig::new(role, a, b, session, vec![(0, peer), (1, peer)], Duration::from_millis(50));
        let deadline = t0 + cfg.start_delay() + cfg.timeout;
        let mut p = Punch::new(cfg, t0);
        for (i, chunk) in data.chunks(64).enumerate() {
            let now = t0 + Duration::from_millis(i as u64 * 10);
            p.handle_datagram(now, i % 3, peer, chunk);
            p.handle_datagram(now, 0, peer, data);
            while p.poll_transmit(now).is_some() {}
            p.handle_timeout(now);
        }
        p.handle_timeout(deadline);
        assert!(p.is_finished());
    }
});
