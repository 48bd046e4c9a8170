//! A tiny `tracing` subscriber for the command-line tools: with
//! `MACULA_TRACE=debug` (or `info`, `trace`) in the environment, events of
//! this crate go to stderr with a CLOCK_MONOTONIC stamp, comparable between
//! the processes of one host (the lab's agents). The library itself never
//! installs a subscriber (the NIF leaves diagnostics to Erlang's logger);
//! pulling in tracing-subscriber for a debugging aid did not pay.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct StderrTrace {
    max: Level,
    /// Target prefixes shown (`MACULA_TRACE_TARGETS`, comma-separated;
    /// default `macula`).
    targets: Vec<String>,
    next_span: AtomicU64,
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

fn monotonic_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

impl Subscriber for StderrTrace {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max && self.targets.iter().any(|t| m.target().starts_with(t.as_str()))
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = Line(format!("{:.1} {} {}:", monotonic_ms(), e.metadata().level(), e.metadata().target()));
        e.record(&mut line);
        eprintln!("{}", line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Installs the subscriber when `MACULA_TRACE` names a level; otherwise
/// does nothing.
pub fn init_from_env() {
    let max = match std::env::var("MACULA_TRACE").as_deref() {
        Ok("trace") => Level::TRACE,
        Ok("debug") => Level::DEBUG,
        Ok("info") => Level::INFO,
        _ => return,
    };
    let targets = std::env::var("MACULA_TRACE_TARGETS").unwrap_or_else(|_| "macula".into());
    let targets = targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    let _ = tracing::subscriber::set_global_default(StderrTrace { max, targets, next_span: AtomicU64::new(1) });
}
