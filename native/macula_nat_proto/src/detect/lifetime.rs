//! Sans-IO plan for measuring a NAT's UDP mapping (binding) lifetime, RFC
//! 5780 section 4.6, and the keep-alive interval chosen from it.
//!
//! # The probe
//!
//! A socket X learns its mapping from an observer; after a wait `T` another
//! socket Y sends a Binding request with RESPONSE-PORT set to X's mapped
//! port, so the observer answers at X's mapping. The answer reaching X
//! shows the mapping lived at least `T`; silence, that it did not (or the
//! packets were lost, which the runtime makes unlikely by sending Y's
//! request twice). An answer may refresh the mapping, so one epoch of X
//! tests one `T`; afterwards the runtime relearns X's mapping (an outbound
//! request, which refreshes or recreates it on every NAT) and the socket
//! starts a new epoch: sockets are reused, probes are not.
//!
//! # The plan
//!
//! Probe *ages* (the `T`s) are what this planner chooses; the runtime runs
//! each one on a socket in a fresh epoch and reports alive or expired.
//!
//! * **Ladder.** At the start, every rung `first, 2 first, 4 first, ...`,
//!   the last one clamped to the cap, runs at once (all epochs start now).
//!   Rung `a` reports at time `a`.
//! * **Fine round, speculative.** When rung `a` reports alive the lifetime
//!   is at least `a` and maybe less than the next rung `b`; the fine points
//!   splitting `(a, b)` into steps of at most [`LifetimeConfig::ratio`]
//!   start at once, not when `b` reports: so the points report at
//!   `a + point < 2b` instead of `b + point`. If `b` then reports alive too,
//!   the fine points below it are cancelled and `(b, next)` gets its own.
//! * **Verdict** as soon as an alive age `lo` and an expired age `hi` are
//!   within [`LifetimeConfig::ratio`] of each other: the estimate is their
//!   geometric mean, within `sqrt(ratio) - 1` (7.2% at 1.15) of the truth.
//!   An alive answer is proof; an expired one may be loss, so an expiry
//!   below an alive age is discounted.
//!
//! With the defaults (first rung 5 s, factor 2, cap 600 s, ratio 1.15) a
//! lifetime `L` is known after at most about `2.2 L` (a lifetime just above
//! a rung: its first fine point expires at `a + 1.15 a`), 1.7 L for 30, 60
//! and 120 s; at most 12 epochs run at once (at 5 s: seven rungs pending and
//! four fine points); above the cap the verdict is a lower bound.

use std::time::Duration;

/// The plan's parameters; [`LifetimeConfig::default`] is what nodes use.
#[derive(Clone, Debug, PartialEq)]
pub struct LifetimeConfig {
    /// The lowest rung; a mapping that does not live this long is reported
    /// as [`LifetimeVerdict::Below`] it.
    pub first: Duration,
    /// Longest age probed; a mapping alive then is reported as
    /// [`LifetimeVerdict::AtLeast`] it.
    pub cap: Duration,
    /// Widest bracket (hi / lo) the verdict accepts; also the fine step.
    pub ratio: f64,
}

impl Default for LifetimeConfig {
    fn default() -> Self {
        LifetimeConfig { first: Duration::from_secs(5), cap: Duration::from_secs(600), ratio: 1.15 }
    }
}

/// Ladder factor: each rung is twice the one below.
const FACTOR: u32 = 2;
/// At most this many fine points per bracket, whatever the ratio asks.
const MAX_FINE: usize = 6;

/// What the measurement concluded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LifetimeVerdict {
    /// Alive at `lo`, expired at `hi`.
    Between { lo: Duration, hi: Duration },
    /// Alive at the cap (or at every age probed): a lower bound.
    AtLeast(Duration),
    /// Expired at the lowest rung: an upper bound.
    Below(Duration),
}

impl LifetimeVerdict {
    /// One figure for the profile: the bracket's geometric mean, the bound
    /// itself for `AtLeast` (the most the keep-alives may rely on) and half
    /// of it for `Below`.
    pub fn estimate(&self) -> Duration {
        match *self {
            LifetimeVerdict::Between { lo, hi } => Duration::from_secs_f64((lo.as_secs_f64() * hi.as_secs_f64()).sqrt()),
            LifetimeVerdict::AtLeast(d) => d,
            LifetimeVerdict::Below(d) => d / 2,
        }
    }
}

/// What a report changes: epochs to start now, pending ones to drop, and
/// the verdict once there is one (then nothing more starts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub start: Vec<Duration>,
    pub cancel: Vec<Duration>,
    pub verdict: Option<LifetimeVerdict>,
}

/// The planner. Ages are identifiers too: no two pending ones are equal.
#[derive(Clone, Debug)]
pub struct LifetimePlan {
    cfg: LifetimeConfig,
    ladder: Vec<Duration>,
    pending: Vec<Duration>,
    alive: Vec<Duration>,
    expired: Vec<Duration>,
    /// Rungs whose fine points have been started.
    refined: Vec<Duration>,
    done: Option<LifetimeVerdict>,
}

impl LifetimePlan {
    pub fn new(cfg: LifetimeConfig) -> LifetimePlan {
        // A cap below the first rung lowers the rung: a quick check that
        // mappings outlive the cap (e.g. with no NAT) stays quick.
        let cap = cfg.cap.max(Duration::from_millis(100));
        let cfg = LifetimeConfig {
            first: cfg.first.clamp(Duration::from_millis(100), cap),
            cap,
            ratio: if cfg.ratio.is_finite() && cfg.ratio > 1.01 { cfg.ratio } else { 1.15 },
        };
        let mut ladder = Vec::new();
        let mut a = cfg.first;
        while a < cfg.cap {
            ladder.push(a);
            a *= FACTOR;
        }
        ladder.push(cfg.cap);
        LifetimePlan { cfg, ladder, pending: Vec::new(), alive: Vec::new(), expired: Vec::new(), refined: Vec::new(), done: None }
    }

    /// The ladder: every rung starts now.
    pub fn begin(&mut self) -> Vec<Duration> {
        if !self.pending.is_empty() || self.done.is_some() {
            return Vec::new();
        }
        self.pending = self.ladder.clone();
        self.pending.clone()
    }

    /// Ages started and not reported or cancelled.
    pub fn pending(&self) -> &[Duration] {
        &self.pending
    }

    pub fn verdict(&self) -> Option<LifetimeVerdict> {
        self.done
    }

    /// The most epochs that can run at once (the sockets the runtime needs).
    pub fn max_concurrent(&self) -> usize {
        let fine = self.fine_points(self.cfg.first, self.cfg.first * FACTOR).len();
        (self.ladder.len() - 1 + fine).max(self.ladder.len())
    }

    /// Longest the measurement can run: the cap, plus the fine points of
    /// the last bracket, which start when the rung below the cap reports.
    pub fn max_duration(&self) -> Duration {
        let below = self.ladder.len().checked_sub(2).map_or(Duration::ZERO, |i| self.ladder[i]);
        self.cfg.cap.max(below + self.cfg.cap)
    }

    /// The largest alive age, and the smallest expired one above it.
    fn bracket(&self) -> (Option<Duration>, Option<Duration>) {
        let lo = self.alive.iter().copied().max();
        let hi = self.expired.iter().copied().filter(|e| lo.is_none_or(|l| *e > l)).min();
        (lo, hi)
    }

    /// An epoch of age `age` reported: the answer arrived (`alive`) or not.
    pub fn report(&mut self, age: Duration, alive: bool) -> Step {
        let mut step = Step::default();
        if self.done.is_some() {
            return step;
        }
        let Some(i) = self.pending.iter().position(|p| *p == age) else {
            return step;
        };
        self.pending.swap_remove(i);
        if alive {
            self.alive.push(age);
        } else {
            self.expired.push(age);
        }
        let (lo, hi) = self.bracket();
        // Pending ages outside the bracket can no longer change it.
        let (keep, cancel): (Vec<_>, Vec<_>) =
            self.pending.iter().partition(|p| lo.is_none_or(|l| **p > l) && hi.is_none_or(|h| **p < h));
        self.pending = keep;
        step.cancel = cancel;
        if let Some(v) = self.settled(lo, hi) {
            step.cancel.append(&mut self.pending);
            self.done = Some(v);
            step.verdict = Some(v);
            return step;
        }
        // A rung proved alive: split the bracket up to the next rung.
        if alive && self.ladder.contains(&age) && !self.refined.contains(&age) && lo == Some(age) {
            self.refined.push(age);
            if let Some(next) = self.ladder.iter().copied().find(|r| *r > age) {
                let upper = hi.map_or(next, |h| h.min(next));
                for p in self.fine_points(age, upper) {
                    if !self.pending.contains(&p) {
                        self.pending.push(p);
                        step.start.push(p);
                    }
                }
            }
        }
        if self.pending.is_empty() {
            let v = self.verdict_now(lo, hi);
            self.done = Some(v);
            step.verdict = Some(v);
        }
        step
    }

    /// The verdict the bracket already settles, if any.
    fn settled(&self, lo: Option<Duration>, hi: Option<Duration>) -> Option<LifetimeVerdict> {
        match (lo, hi) {
            (Some(l), Some(h)) if h.as_secs_f64() <= l.as_secs_f64() * self.cfg.ratio => Some(LifetimeVerdict::Between { lo: l, hi: h }),
            (Some(l), _) if l >= self.cfg.cap => Some(LifetimeVerdict::AtLeast(l)),
            (None, Some(h)) if h <= self.cfg.first => Some(LifetimeVerdict::Below(h)),
            _ => None,
        }
    }

    /// Nothing pending: the best the reports say.
    fn verdict_now(&self, lo: Option<Duration>, hi: Option<Duration>) -> LifetimeVerdict {
        match (lo, hi) {
            (Some(l), Some(h)) => LifetimeVerdict::Between { lo: l, hi: h },
            (Some(l), None) => LifetimeVerdict::AtLeast(l),
            (None, Some(h)) => LifetimeVerdict::Below(h),
            (None, None) => LifetimeVerdict::Below(self.cfg.first),
        }
    }

    /// Points splitting `(lo, hi)` geometrically into steps of at most the
    /// ratio (at most [`MAX_FINE`] of them), rounded to milliseconds.
    fn fine_points(&self, lo: Duration, hi: Duration) -> Vec<Duration> {
        let span = hi.as_secs_f64() / lo.as_secs_f64();
        if span <= self.cfg.ratio {
            return Vec::new();
        }
        let steps = ((span.ln() / self.cfg.ratio.ln()).ceil() as usize).clamp(2, MAX_FINE + 1);
        let r = span.powf(1.0 / steps as f64);
        (1..steps).map(|k| Duration::from_millis((lo.as_secs_f64() * r.powi(k as i32) * 1000.0).round() as u64)).filter(|p| *p > lo && *p < hi).collect()
    }
}

/// Keep-alive spacing for control connections and registration refreshes:
/// the fixed `default` until a lifetime is measured, then the lifetime over
/// [`KEEPALIVE_MARGIN`] (a mapping then sees at least two keep-alives per
/// lifetime, so one lost packet does not let it expire), never above
/// `ceiling` and never below [`KEEPALIVE_FLOOR`].
pub fn keepalive_interval(lifetime: Option<Duration>, default: Duration, ceiling: Duration) -> Duration {
    match lifetime {
        None => default,
        Some(l) => l.div_f64(KEEPALIVE_MARGIN).min(ceiling).max(KEEPALIVE_FLOOR),
    }
}

/// Lifetime / keep-alive interval.
pub const KEEPALIVE_MARGIN: f64 = 2.5;
/// Closest keep-alive spacing, whatever the lifetime (a NAT that forgets in
/// under 2.5 s is kept open by traffic, not keep-alives).
pub const KEEPALIVE_FLOOR: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// Runs the plan against a NAT whose mappings live `truth` seconds
    /// (alive iff age <= truth), in time order; `lose` decides which alive
    /// answers are lost. Returns (verdict, time of verdict, epochs run,
    /// most concurrent).
    fn run(cfg: LifetimeConfig, truth: f64, lose: impl Fn(Duration) -> bool) -> (LifetimeVerdict, f64, usize, usize) {
        let mut p = LifetimePlan::new(cfg);
        // (report time, age)
        let mut q: Vec<(f64, Duration)> = p.begin().into_iter().map(|a| (a.as_secs_f64(), a)).collect();
        let (mut epochs, mut most) = (q.len(), q.len());
        loop {
            q.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            let (t, age) = q.pop().expect("the plan must end before its epochs run out");
            let alive = age.as_secs_f64() <= truth && !lose(age);
            let step = p.report(age, alive);
            q.retain(|(_, a)| !step.cancel.contains(a));
            for a in &step.start {
                q.push((t + a.as_secs_f64(), *a));
            }
            epochs += step.start.len();
            // The reported epoch's socket is free again.
            most = most.max(q.len());
            assert_eq!(q.len(), p.pending().len());
            if let Some(v) = step.verdict {
                assert!(p.pending().is_empty());
                return (v, t, epochs, most);
            }
        }
    }

    #[test]
    fn every_lifetime_from_6_to_590_s_is_within_8_percent_in_under_2_3_lifetimes() {
        let mut t = 5.5;
        while t < 590.0 {
            let (v, at, epochs, most) = run(LifetimeConfig::default(), t, |_| false);
            let est = v.estimate().as_secs_f64();
            assert!(matches!(v, LifetimeVerdict::Between { .. }), "{t}: {v:?}");
            assert!((est - t).abs() / t < 0.075, "{t}: {v:?} est {est}");
            assert!(at <= 2.2 * t, "{t}: verdict at {at}");
            assert!(most <= 12, "{t}: {most} at once");
            assert!(epochs <= 8 + 4 * 8, "{t}: {epochs} epochs");
            t *= 1.013;
        }
    }

    #[test]
    fn the_lab_timeouts_take_under_1_85_lifetimes() {
        for t in [30.0, 60.0, 120.0, 30.4, 60.4, 120.4] {
            let (v, at, _, _) = run(LifetimeConfig::default(), t, |_| false);
            assert!((v.estimate().as_secs_f64() - t).abs() / t < 0.075, "{t}: {v:?}");
            assert!(at < 1.85 * t, "{t}: {at}");
        }
    }

    #[test]
    fn above_the_cap_is_a_lower_bound_reached_at_the_cap() {
        let (v, at, _, most) = run(LifetimeConfig::default(), 1e9, |_| false);
        assert_eq!(v, LifetimeVerdict::AtLeast(s(600.0)));
        assert_eq!(at, 600.0);
        assert!(most <= 12);
        assert_eq!(v.estimate(), s(600.0));
        // Just below the cap: the last bracket (320, 600) is refined.
        let (v, _, _, _) = run(LifetimeConfig::default(), 590.0, |_| false);
        let LifetimeVerdict::Between { lo, hi } = v else { panic!("{v:?}") };
        assert!(lo.as_secs_f64() <= 590.0 && hi.as_secs_f64() > 590.0 && hi.as_secs_f64() / lo.as_secs_f64() <= 1.15, "{v:?}");
    }

    #[test]
    fn below_the_first_rung_is_an_upper_bound() {
        let (v, at, epochs, _) = run(LifetimeConfig::default(), 3.0, |_| false);
        assert_eq!(v, LifetimeVerdict::Below(s(5.0)));
        assert_eq!(at, 5.0);
        assert_eq!(epochs, 8);
        assert_eq!(v.estimate(), s(2.5));
    }

    #[test]
    fn a_small_cap_measures_quickly_where_nothing_expires() {
        // Loopback, no NAT: nothing expires; a 2 s cap says so after 2 s.
        let cfg = LifetimeConfig { first: s(0.5), cap: s(2.0), ratio: 1.15 };
        let (v, at, _, _) = run(cfg.clone(), 1e9, |_| false);
        assert_eq!((v, at), (LifetimeVerdict::AtLeast(s(2.0)), 2.0));
        let p = LifetimePlan::new(cfg);
        assert_eq!(p.ladder, vec![s(0.5), s(1.0), s(2.0)]);
        assert!(p.max_duration() >= s(2.0));
        // A cap under the first rung: one rung, at the cap.
        let p = LifetimePlan::new(LifetimeConfig { cap: s(1.0), ..LifetimeConfig::default() });
        assert_eq!(p.ladder, vec![s(1.0)]);
        let (v, at, _, _) = run(LifetimeConfig { cap: s(1.0), ..LifetimeConfig::default() }, 1e9, |_| false);
        assert_eq!((v, at), (LifetimeVerdict::AtLeast(s(1.0)), 1.0));
    }

    #[test]
    fn an_expiry_below_an_alive_age_is_discounted() {
        // Reports out of time order (a late, lost-looking 20 s expiry after
        // the 40 s rung answered): the answer is proof, the silence is not.
        let mut p = LifetimePlan::new(LifetimeConfig::default());
        p.begin();
        p.report(s(5.0), true);
        p.report(s(10.0), true);
        p.report(s(40.0), true);
        assert_eq!(p.bracket(), (Some(s(40.0)), None));
        p.report(s(20.0), false);
        assert_eq!(p.bracket(), (Some(s(40.0)), None));
        let st = p.report(s(80.0), false);
        assert_eq!(p.bracket(), (Some(s(40.0)), Some(s(80.0))));
        assert!(st.cancel.contains(&s(160.0)) && st.verdict.is_none());
    }

    #[test]
    fn a_lost_answer_gives_a_bracket_below_the_truth_never_above() {
        // The runtime sends each probe's request twice so that this is
        // rare; when it happens, the lifetime is underestimated (keep-alives
        // closer than needed), never overestimated.
        for truth in [7.0, 30.0, 61.0, 119.0, 250.0] {
            let mut p = LifetimePlan::new(LifetimeConfig::default());
            let ages = p.begin();
            for lost in ages {
                let (v, _, _, most) = run(LifetimeConfig::default(), truth, |a| a == lost);
                assert!(most <= 12);
                assert!(v.estimate().as_secs_f64() <= truth * 1.08, "{truth} lost {lost:?}: {v:?}");
            }
        }
    }

    #[test]
    fn reports_of_unknown_or_cancelled_ages_and_after_the_verdict_do_nothing() {
        let mut p = LifetimePlan::new(LifetimeConfig::default());
        p.begin();
        assert_eq!(p.begin(), Vec::<Duration>::new(), "begins once");
        assert_eq!(p.report(s(7.0), true), Step::default());
        let st = p.report(s(5.0), false);
        assert_eq!(st.verdict, Some(LifetimeVerdict::Below(s(5.0))));
        assert_eq!(st.cancel.len(), 7);
        assert_eq!(p.report(s(10.0), true), Step::default());
        assert_eq!(p.verdict(), Some(LifetimeVerdict::Below(s(5.0))));
    }

    #[test]
    fn bounds_on_sockets_and_duration() {
        let p = LifetimePlan::new(LifetimeConfig::default());
        assert_eq!(p.ladder.len(), 8);
        assert!(p.max_concurrent() <= 13);
        assert_eq!(p.max_duration(), s(920.0));
        // A degenerate config is made sane, not trusted.
        let p = LifetimePlan::new(LifetimeConfig { first: Duration::ZERO, cap: Duration::ZERO, ratio: f64::NAN });
        assert_eq!(p.ladder, vec![Duration::from_millis(100)]);
        assert_eq!(p.cfg.ratio, 1.15);
    }

    #[test]
    fn keepalive_spacing() {
        let d = s(5.0);
        let c = s(25.0);
        assert_eq!(keepalive_interval(None, d, c), d);
        assert_eq!(keepalive_interval(Some(s(30.0)), d, c), s(12.0));
        assert_eq!(keepalive_interval(Some(s(60.0)), d, c), s(24.0));
        assert_eq!(keepalive_interval(Some(s(120.0)), d, c), c);
        assert_eq!(keepalive_interval(Some(s(600.0)), d, c), c);
        assert_eq!(keepalive_interval(Some(s(2.0)), d, c), KEEPALIVE_FLOOR);
        assert_eq!(keepalive_interval(Some(s(10.0)), d, c), s(4.0));
    }
}
