//! How much a STUN responder (every node, and `macula-observer`) may send,
//! and to whom: the guard that keeps it from being a reflector.
//!
//! A Binding request's source address is not verified (UDP, spoofable), so
//! an attacker can make us answer a third party. Three bounds, all checked
//! by [`ReplyBudget::admit`] before a request is answered:
//!
//! * **A per-destination byte ledger.** Per source IP (the address answers
//!   go to, whichever port RESPONSE-PORT names and whichever of our
//!   addresses CHANGE-REQUEST picks) the bytes we sent never exceed the
//!   bytes of requests received from it plus a one-off
//!   [`ReplyLimits::allowance`]. [`ReplyBudget::admit`] returns how many
//!   bytes the answer may have; the observer trims optional attributes to
//!   fit or stays silent ([`crate::observer`]). So an answer is as large as
//!   the request, once the allowance is spent: our own clients make their
//!   requests as large as the full answer they want
//!   ([`crate::stun::Message::sized_for_answer`]); other clients (coturn's
//!   `turnutils_natdiscovery`, RFC 3489 tools) get full answers from the
//!   allowance, then trimmed ones. Credit banked by large requests is capped
//!   ([`ReplyLimits::credit_cap`]), so an attacker cannot save up for a
//!   burst.
//! * **A per-source-IP rate limit** (token bucket, requests): bounds what we
//!   reflect towards one IP per second even at 1:1.
//! * **A global rate limit** (token bucket, requests), checked first and
//!   without touching the table, so a flood from many (spoofed) sources
//!   costs a counter, not a table insertion.
//!
//! The table holds at most [`ReplyLimits::table`] IPs (about 100 bytes
//! each). An entry idle for [`ReplyLimits::idle`] is forgotten; when the
//! table is full the oldest entry is evicted (insertion order: O(1), and an
//! attacker cannot keep an entry alive for its victim). A forgotten address
//! gets a new allowance, drawn from a global pool
//! ([`ReplyLimits::pool_rate`], [`ReplyLimits::pool_burst`]): so however an
//! attacker churns the table, all destinations together receive at most
//! `pool_burst + pool_rate * t` bytes more than they sent us.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The responder's bounds. [`ReplyLimits::default`] is what every node and
/// `macula-observer` use.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyLimits {
    /// Bytes an address may receive beyond what it sent, once per table
    /// entry (enough for a full RFC 5780 run of an unpadded client).
    pub allowance: u32,
    /// Most credit (received minus sent) an address can bank.
    pub credit_cap: u32,
    /// Refill of the pool new entries draw their allowance from, bytes/s.
    pub pool_rate: u32,
    /// Size of that pool.
    pub pool_burst: u32,
    /// Requests per second answered per source IP...
    pub per_ip_rate: u32,
    /// ...in bursts of at most this many.
    pub per_ip_burst: u32,
    /// Requests per second answered in total...
    pub global_rate: u32,
    /// ...in bursts of at most this many.
    pub global_burst: u32,
    /// Most source IPs remembered.
    pub table: usize,
    /// An entry not used for this long is forgotten.
    pub idle: Duration,
}

impl Default for ReplyLimits {
    fn default() -> ReplyLimits {
        ReplyLimits {
            allowance: 1024,
            credit_cap: 8192,
            pool_rate: 16 * 1024,
            pool_burst: 64 * 1024,
            // A detection sends some 20-40 requests to one observer within
            // a second or two; a few nodes behind one NAT share an IP.
            per_ip_rate: 50,
            per_ip_burst: 100,
            global_rate: 10_000,
            global_burst: 10_000,
            table: 4096,
            idle: Duration::from_secs(600),
        }
    }
}

/// Why a request gets no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Over [`ReplyLimits::global_rate`].
    GlobalRate,
    /// Over [`ReplyLimits::per_ip_rate`] for its source IP.
    PerIpRate,
    /// The answer would not fit in the IP's ledger (reported by the caller
    /// through [`ReplyBudget::refused_by_ledger`], counted here).
    Ledger,
}

impl Refused {
    /// Stable short name, suitable as a metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::GlobalRate => "global_rate",
            Refused::PerIpRate => "per_ip_rate",
            Refused::Ledger => "ledger",
        }
    }
}

/// Requests refused so far, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedCounts {
    pub global_rate: u64,
    pub per_ip_rate: u64,
    pub ledger: u64,
}

/// Token bucket counting requests. Not the relay's byte shaper
/// (`relay::TokenBucket`): this one has an explicit burst and never goes
/// into debt.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(burst), last: now }
    }

    fn take(&mut self, n: f64, rate: u32, burst: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Up to `n` tokens, as many as there are.
    fn take_up_to(&mut self, n: f64, rate: u32, burst: u32, now: Instant) -> f64 {
        self.take(0.0, rate, burst, now);
        let got = self.tokens.min(n).max(0.0);
        self.tokens -= got;
        got
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Bytes this IP may still receive: its allowance plus what it sent us
    /// minus what we sent it, at most `credit_cap`.
    credit: i64,
    requests: Bucket,
    last: Instant,
}

/// The responder's ledger and rate limits. One per responder (a node's
/// receive loop; an observer's sockets share one).
#[derive(Debug)]
pub struct ReplyBudget {
    limits: ReplyLimits,
    global: Bucket,
    pool: Bucket,
    entries: HashMap<IpAddr, Entry>,
    /// Entries in insertion order, for eviction.
    order: VecDeque<IpAddr>,
    refused: RefusedCounts,
}

impl ReplyBudget {
    pub fn new(limits: ReplyLimits, now: Instant) -> ReplyBudget {
        ReplyBudget {
            global: Bucket::full(limits.global_burst, now),
            pool: Bucket::full(limits.pool_burst, now),
            entries: HashMap::new(),
            order: VecDeque::new(),
            refused: RefusedCounts::default(),
            limits,
        }
    }

    pub fn limits(&self) -> &ReplyLimits {
        &self.limits
    }

    /// A request of `len` bytes arrived from `ip` at `now`: `Ok(n)`, the
    /// most bytes its answer may have (whatever port or local address it
    /// goes to or leaves from), or why it gets none.
    pub fn admit(&mut self, ip: IpAddr, len: usize, now: Instant) -> Result<usize, Refused> {
        // An IPv6 sender's /64 is one ledger (`limits::host_key`): spoofed
        // sources spread over a victim's /64 draw on one allowance.
        let ip = crate::limits::host_key(ip);
        let l = &self.limits;
        if !self.global.take(1.0, l.global_rate, l.global_burst, now) {
            self.refused.global_rate += 1;
            return Err(Refused::GlobalRate);
        }
        self.expire(now);
        if !self.entries.contains_key(&ip) {
            if self.entries.len() >= self.limits.table.max(1) {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
            let l = &self.limits;
            let allowance = self.pool.take_up_to(f64::from(l.allowance), l.pool_rate, l.pool_burst, now) as i64;
            self.order.push_back(ip);
            self.entries.insert(ip, Entry { credit: allowance, requests: Bucket::full(l.per_ip_burst, now), last: now });
        }
        let Some(e) = self.entries.get_mut(&ip) else { return Err(Refused::Ledger) };
        let l = &self.limits;
        e.last = now;
        // Bytes received count even when the request is not answered: they
        // are bytes the address sent us all the same.
        e.credit = (e.credit + len as i64).min(i64::from(l.credit_cap));
        if !e.requests.take(1.0, l.per_ip_rate, l.per_ip_burst, now) {
            self.refused.per_ip_rate += 1;
            return Err(Refused::PerIpRate);
        }
        Ok(e.credit.max(0) as usize)
    }

    /// `n` bytes were sent to `ip` (after a successful [`ReplyBudget::admit`]).
    pub fn spent(&mut self, ip: IpAddr, n: usize) {
        let ip = crate::limits::host_key(ip);
        if let Some(e) = self.entries.get_mut(&ip) {
            e.credit -= n as i64;
        }
    }

    /// The answer to an admitted request did not fit its budget.
    pub fn refused_by_ledger(&mut self) {
        self.refused.ledger += 1;
    }

    pub fn refused(&self) -> RefusedCounts {
        self.refused
    }

    /// Source IPs remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets idle entries at the front of the insertion order: at most two
    /// per call, so a request costs O(1); the table bound does the rest.
    fn expire(&mut self, now: Instant) {
        for _ in 0..2 {
            let Some(ip) = self.order.front() else { return };
            match self.entries.get(ip) {
                Some(e) if now.saturating_duration_since(e.last) < self.limits.idle => return,
                _ => {
                    let ip = *ip;
                    self.order.pop_front();
                    self.entries.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
