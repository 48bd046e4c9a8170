//! A connection's quality monitor: samples its counters every
//! [`SAMPLE_EVERY`] into a [`Monitor`] (the rules are in
//! `macula_nat_proto::quality`) while it runs, and publishes whether the
//! path is degraded. Started on demand ([`Connection::monitor_quality`]):
//! application connections are monitored, control connections are not, so
//! a rendezvous with many joined nodes pays no timer per node.

use super::conn::Connection;
use crate::lock::lock;
use macula_nat_proto::quality::{Degraded, Monitor, Report, SAMPLE_EVERY};
use once_cell::sync::Lazy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

pub(crate) struct QualityCell {
    monitor: Mutex<Monitor>,
    degraded: tokio::sync::watch::Sender<Option<Degraded>>,
    running: AtomicBool,
}

impl Default for QualityCell {
    fn default() -> Self {
        QualityCell { monitor: Mutex::new(Monitor::new()), degraded: tokio::sync::watch::Sender::new(None), running: AtomicBool::new(false) }
    }
}

impl Connection {
    /// Starts sampling this connection's quality (idempotent); the sampler
    /// ends with the connection.
    pub fn monitor_quality(&self) {
        if self.quality_cell().running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.sample_quality();
        let weak = self.downgrade();
        crate::runtime::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = weak.upgrade() else { return };
                if c.close_reason().is_some() {
                    return;
                }
                c.sample_quality();
            }
        });
    }

    fn sample_quality(&self) {
        let cell = self.quality_cell();
        let sample = self.quality_sample(now_ms());
        let event = lock(&cell.monitor).on_sample(sample);
        if event.is_some() {
            let now = lock(&cell.monitor).degraded();
            cell.degraded.send_replace(now);
        }
    }

    /// The quality figures now (a fresh sample on an unmonitored
    /// connection: its RTTs and counters, no jitter or loss window).
    pub fn quality(&self) -> Report {
        let cell = self.quality_cell();
        if !cell.running.load(Ordering::Acquire) {
            let mut m = Monitor::new();
            m.on_sample(self.quality_sample(now_ms()));
            return m.report();
        }
        self.sample_quality();
        lock(&cell.monitor).report()
    }

    /// Sees every change between a healthy and a degraded path (needs
    /// [`Connection::monitor_quality`]).
    pub fn watch_quality(&self) -> tokio::sync::watch::Receiver<Option<Degraded>> {
        self.quality_cell().degraded.subscribe()
    }
}
