//! A connection's quality monitor: samples its counters every
//! [`SAMPLE_EVERY`] into a [`Monitor`] (the rules are in
//! `macula_nat_proto::quality`) while it runs, and publishes whether the
//! path is degraded. Started on demand (`Connection::monitor_quality`):
//! application connections are monitored, control connections are not, so
//! a rendezvous with many joined nodes pays no timer per node. The
//! connection (`conn.rs`) owns a [`QualityCell`] and feeds it; this file
//! knows nothing of the connection.

use crate::lock::lock;
use macula_nat_proto::quality::{Degraded, Monitor, Report, Sample, SAMPLE_EVERY};
use once_cell::sync::Lazy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// The monitors' clock: milliseconds since the first use.
pub(crate) fn now_ms() -> u64 {
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

impl QualityCell {
    /// Marks the monitor running; `true` the first time (the caller starts
    /// the sampler then).
    pub(crate) fn start(&self) -> bool {
        !self.running.swap(true, Ordering::AcqRel)
    }

    /// Feeds a sample; a change between healthy and degraded is published.
    pub(crate) fn feed(&self, sample: Sample) {
        let mut m = lock(&self.monitor);
        if m.on_sample(sample).is_some() {
            let now = m.degraded();
            drop(m);
            self.degraded.send_replace(now);
        }
    }

    /// The figures with `fresh` in: fed to a running monitor; a one-off
    /// reading (RTTs and counters, no jitter or loss window) otherwise.
    pub(crate) fn report(&self, fresh: Sample) -> Report {
        if !self.running.load(Ordering::Acquire) {
            let mut m = Monitor::new();
            m.on_sample(fresh);
            return m.report();
        }
        self.feed(fresh);
        lock(&self.monitor).report()
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Degraded>> {
        self.degraded.subscribe()
    }
}

/// Calls `sample` every [`SAMPLE_EVERY`] until it answers `false` (its
/// connection is gone or closed).
pub(crate) fn spawn_sampler(mut sample: impl FnMut() -> bool + Send + 'static) {
    crate::runtime::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if !sample() {
                return;
            }
        }
    });
}
