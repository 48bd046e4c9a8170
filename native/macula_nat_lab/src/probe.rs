//! Bounded UDP probes for measuring one-way delay and loss between lab hosts.
//! All namespaces share the host's CLOCK_REALTIME, so one-way delay is
//! receive time minus the send timestamp carried in the payload.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAGIC: u32 = 0x4d4c_5052; // "MLPR"

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendReport {
    pub sent: u64,
    pub elapsed_ms: f64,
}

/// Send `count` probes to `to` at `rate` packets/s. `bind` optional local address.
pub fn send(bind: Option<SocketAddr>, to: SocketAddr, count: u64, rate: f64, size: usize) -> Result<SendReport> {
    let sock = UdpSocket::bind(bind.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()))?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; size.max(16)];
    for i in 0..count {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        let n = Instant::now();
        if due > n {
            std::thread::sleep(due - n);
        }
        buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        buf[4..8].copy_from_slice(&(i as u32).to_be_bytes());
        buf[8..16].copy_from_slice(&now_ns().to_be_bytes());
        sock.send_to(&buf, to).context("send_to")?;
    }
    Ok(SendReport { sent: count, elapsed_ms: t0.elapsed().as_secs_f64() * 1e3 })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SinkReport {
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub loss: f64,
    pub delay_ms_mean: f64,
    pub delay_ms_min: f64,
    pub delay_ms_p50: f64,
    pub delay_ms_p99: f64,
    pub delay_ms_max: f64,
    pub delay_ms_stddev: f64,
}

/// Receive probes until `expected` arrived, `idle_ms` passed without one
/// (after the first), or `max_ms` passed overall.
pub fn sink(bind: SocketAddr, expected: u64, idle_ms: u64, max_ms: u64) -> Result<SinkReport> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let t0 = Instant::now();
    let mut seen = vec![false; expected as usize];
    let mut delays = vec![];
    let mut dups = 0;
    let mut last = None::<Instant>;
    let mut buf = [0u8; 2048];
    while (delays.len() as u64) < expected && t0.elapsed() < Duration::from_millis(max_ms) {
        if let Some(l) = last {
            if l.elapsed() > Duration::from_millis(idle_ms) {
                break;
            }
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 16 && buf[0..4] == MAGIC.to_be_bytes() => {
                let rx = now_ns();
                let seq = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
                let tx = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                last = Some(Instant::now());
                if seq < seen.len() {
                    if seen[seq] {
                        dups += 1;
                        continue;
                    }
                    seen[seq] = true;
                    delays.push(rx.saturating_sub(tx) as f64 / 1e6);
                }
            }
            _ => {}
        }
    }
    let received = delays.len() as u64;
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = if delays.is_empty() { 0.0 } else { delays.iter().sum::<f64>() / delays.len() as f64 };
    let var = if delays.is_empty() {
        0.0
    } else {
        delays.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / delays.len() as f64
    };
    Ok(SinkReport {
        expected,
        received,
        duplicates: dups,
        loss: if expected == 0 { 0.0 } else { 1.0 - received as f64 / expected as f64 },
        delay_ms_mean: mean,
        delay_ms_min: delays.first().copied().unwrap_or(0.0),
        delay_ms_p50: delays.get(delays.len() / 2).copied().unwrap_or(0.0),
        delay_ms_p99: delays.get(delays.len() * 99 / 100).copied().unwrap_or(0.0),
        delay_ms_max: delays.last().copied().unwrap_or(0.0),
        delay_ms_stddev: var.sqrt(),
    })
}
