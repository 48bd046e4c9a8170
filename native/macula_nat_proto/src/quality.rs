//! Connection quality, sans-IO: what a path's counters say about it.
//!
//! The runtime samples a connection's counters (QUIC's smoothed and
//! minimum RTT, packets sent and lost, datagrams and bytes each way,
//! messages each way) every [`SAMPLE_EVERY`] and feeds them to a
//! [`Monitor`], which keeps the derived figures (jitter, loss over the last
//! [`LOSS_WINDOW`]) and says when the path degrades or recovers.
//!
//! A path is **silent** when no datagram arrived for [`SILENT_AFTER`]
//! although it should have: the connection keeps itself alive with a QUIC
//! PING every keep-alive interval (1 s on application connections), and
//! the peer acknowledges it, so a live path delivers at least one datagram
//! a second even when both owners are idle. That is consent freshness
//! (RFC 7675) with QUIC's own probes: about 40 bytes each way per second on
//! an idle connection, nothing extra on a busy one. A path is **lossy**
//! when more than [`LOSSY_PERMILLE`] of the packets sent in the last window
//! were declared lost (and at least [`LOSS_MIN_PACKETS`] were sent, so a
//! single loss on an idle connection is not an event). It **recovers** when
//! a datagram arrives again (silent) or the loss falls under half the
//! threshold (lossy): the gap stops a path at the threshold from flapping.

use std::time::Duration;

/// How often the runtime samples a monitored connection.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// No datagram for this long on a connection that sends keep-alives every
/// second: the path is black-holed. A healthy idle path is heard at least
/// every keep-alive plus one probe timeout when a PING is lost (~1.4 s at
/// 200 ms RTT); 2.2 s plus the sampling period keeps detection under 3 s
/// (measured: `tests/lab_quality.rs`, `bench/quality.md`).
pub const SILENT_AFTER: Duration = Duration::from_millis(2200);
/// The loss window.
pub const LOSS_WINDOW: Duration = Duration::from_secs(5);
/// Lost/sent above this (per mille) over the window: lossy.
pub const LOSSY_PERMILLE: u32 = 100;
/// Fewer packets sent in the window than this: no loss verdict.
pub const LOSS_MIN_PACKETS: u64 = 20;
/// Smallest interval between two `{quality, Map}` reports a subscriber may
/// ask for (each report is one message to its mailbox).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// One reading of a connection's counters, cumulative since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds on the runtime's monotonic clock.
    pub at_ms: u64,
    pub srtt_us: u64,
    pub min_rtt_us: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// No datagram for at least [`SILENT_AFTER`] (the duration it has been).
    Silent { for_ms: u64 },
    /// Lost per mille over the loss window.
    Lossy { permille: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Degraded(Degraded),
    Recovered,
}

/// What a subscriber and `stats/1` see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub last: Sample,
    /// Mean deviation between successive smoothed-RTT readings (RFC 3550's
    /// estimator, gain 1/16, over the samples): how much the RTT moves.
    pub jitter_us: u64,
    /// Lost/sent per mille over the last loss window.
    pub loss_permille: u32,
    /// Milliseconds since the last datagram arrived.
    pub silent_ms: u64,
    pub degraded: Option<Degraded>,
}

/// Derived figures and the degraded/recovered decision for one path.
#[derive(Clone, Debug, Default)]
pub struct Monitor {
    last: Option<Sample>,
    /// When `datagrams_in` last moved.
    last_rx_ms: u64,
    /// Samples at least a window old are dropped; the oldest kept is the
    /// window's base. Bounded: one per sample period in a window.
    window: std::collections::VecDeque<Sample>,
    jitter_us16: u64,
    degraded: Option<Degraded>,
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// Feeds the next sample (counters never go down; a sample older than
    /// the last is ignored); returns the event it causes, if any.
    pub fn on_sample(&mut self, s: Sample) -> Option<Event> {
        match self.last {
            None => self.last_rx_ms = s.at_ms,
            Some(prev) if s.at_ms < prev.at_ms => return None,
            Some(prev) => {
                if s.datagrams_in > prev.datagrams_in {
                    self.last_rx_ms = s.at_ms;
                }
                if prev.srtt_us > 0 && s.srtt_us > 0 {
                    let d = s.srtt_us.abs_diff(prev.srtt_us) * 16;
                    // J += (|D| - J) / 16, kept scaled by 16.
                    self.jitter_us16 = self.jitter_us16 + d / 16 - self.jitter_us16 / 16;
                }
            }
        }
        self.last = Some(s);
        self.window.push_back(s);
        while self.window.len() > 1 && s.at_ms.saturating_sub(self.window[1].at_ms) >= LOSS_WINDOW.as_millis() as u64 {
            self.window.pop_front();
        }
        self.decide(s)
    }

    fn loss_permille(&self) -> (u32, u64) {
        let (Some(first), Some(last)) = (self.window.front(), self.window.back()) else { return (0, 0) };
        let sent = last.sent_packets.saturating_sub(first.sent_packets);
        let lost = last.lost_packets.saturating_sub(first.lost_packets);
        if sent == 0 {
            return (0, 0);
        }
        (((lost.min(sent) * 1000) / sent) as u32, sent)
    }

    fn decide(&mut self, s: Sample) -> Option<Event> {
        let silent = s.at_ms.saturating_sub(self.last_rx_ms);
        let (loss, sent) = self.loss_permille();
        let now = if silent >= SILENT_AFTER.as_millis() as u64 {
            Some(Degraded::Silent { for_ms: silent })
        } else {
            match self.degraded {
                // A lossy path recovers only under half the threshold.
                Some(Degraded::Lossy { .. }) if sent >= LOSS_MIN_PACKETS && loss > LOSSY_PERMILLE / 2 => {
                    Some(Degraded::Lossy { permille: loss })
                }
                _ if sent >= LOSS_MIN_PACKETS && loss > LOSSY_PERMILLE => Some(Degraded::Lossy { permille: loss }),
                _ => None,
            }
        };
        let was = self.degraded;
        self.degraded = now;
        match (was, now) {
            (None, Some(d)) => Some(Event::Degraded(d)),
            // Silent -> lossy (or back) is still degraded: one event per episode.
            (Some(_), None) => Some(Event::Recovered),
            _ => None,
        }
    }

    pub fn report(&self) -> Report {
        let last = self.last.unwrap_or_default();
        Report {
            last,
            jitter_us: self.jitter_us16 / 16,
            loss_permille: self.loss_permille().0,
            silent_ms: last.at_ms.saturating_sub(self.last_rx_ms),
            degraded: self.degraded,
        }
    }

    /// Whether the path is degraded now.
    pub fn degraded(&self) -> Option<Degraded> {
        self.degraded
    }
}

#[cfg(test)]
mod tests;
