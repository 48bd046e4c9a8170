//! Hostile datagrams fed to the observer and to a running detection must
//! never panic, and the detection must still terminate by its deadline.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::detect::{DetectConfig, Detection, SocketId};
use macula_nat_proto::observer::{Observer, ObserverConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let p: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let obs = Observer::new(ObserverConfig {
        primary: p,
        alternate: Some("198.51.100.2:3479".parse().unwrap()),
        software: None,
    })
    .unwrap();
    let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    for local in obs.local_addrs() {
        let _ = obs.answer_datagram(local, client, data, data.len());
    }

    let t0 = Instant::now();
    let cfg = DetectConfig { observers: vec![p], ..DetectConfig::default() };
    let mut det = Detection::new(cfg, "10.0.0.2:5000".parse().unwrap(), t0, macula_nat_proto::rng::Txids::seeded(1));
    det.set_probe_local_addr(0, "10.0.0.2:6000".parse().unwrap());
    while det.poll_transmit(t0).is_some() {}
    for (i, chunk) in data.chunks(64).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 10);
        det.handle_datagram(SocketId::Primary, p, chunk, now);
        det.handle_datagram(SocketId::Probe(0), p, data, now);
        while det.poll_transmit(now).is_some() {}
    }
    let end = t0 + Duration::from_secs(3);
    det.handle_timeout(end);
    assert!(det.is_finished());
});
