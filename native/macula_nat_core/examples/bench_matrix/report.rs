//! The Markdown report: settings, summary per strategy, the targets, every pair.

use crate::agent::{Detected, TryResult};
use crate::pairs::{hard, natcracker_traversable, random_vs_eim, NatDef, Pair};
use crate::Opts;
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // nearest rank
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

pub(crate) fn ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

pub(crate) fn counts<S: AsRef<str>>(it: impl Iterator<Item = S>) -> String {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for k in it {
        *m.entry(k.as_ref().to_string()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

/// Pair-level figures.
pub(crate) struct Row<'a> {
    pub(crate) pair: &'a Pair,
    pub(crate) ok: usize,
    pub(crate) tries: usize,
    pub(crate) ttfm: Vec<f64>,
    /// Tries that connected without a relay, and their times.
    pub(crate) direct: usize,
    pub(crate) direct_ttfm: Vec<f64>,
    pub(crate) res: &'a [TryResult],
}

/// What the BEAM mode adds to the report.
pub(crate) struct BeamExtra {
    /// Per NAT type (index into defs): every profile its sites' nodes detected.
    pub(crate) detections: Vec<(usize, Vec<Detected>)>,
    /// The variants section (Markdown), if variants ran, and its pair count.
    pub(crate) variants: Option<(String, usize)>,
}

/// Connected without a relay (what the targets count).
pub(crate) fn is_direct(t: &TryResult) -> bool {
    t.ok && matches!(t.method.as_deref(), Some("direct" | "punched"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    o: &Opts,
    defs: &[NatDef],
    pairs: &[Pair],
    results: &[&Vec<TryResult>],
    elapsed: Duration,
    build_ms: u128,
    sites: usize,
    lab_counters: &BTreeMap<String, u64>,
    load_before: &str,
    beam: Option<&BeamExtra>,
) -> String {
    let rows: Vec<Row> = pairs
        .iter()
        .zip(results)
        .map(|(p, r)| Row {
            pair: p,
            ok: r.iter().filter(|t| t.ok).count(),
            tries: r.len(),
            ttfm: r.iter().filter_map(|t| t.ok.then_some(t.ttfm_ms).flatten()).collect(),
            direct: r.iter().filter(|t| is_direct(t)).count(),
            direct_ttfm: r.iter().filter_map(|t| is_direct(t).then_some(t.ttfm_ms).flatten()).collect(),
            res: r,
        })
        .collect();
    let rtt = 2.0 * (o.delay_ms + o.delay_ms);
    let bound = 2.0 * rtt + 100.0;
    let mut md = String::new();
    let w = &mut md;
    use std::fmt::Write as _;
    let _ = writeln!(w, "# Connection matrix: every pair of NAT types in the lab\n");
    let _ = writeln!(
        w,
        "Measured by `{}` on {} ({} cores shared with other work, kernel {}, release build); \
         {} pairs{} x {} tries in {:.0} s, {} tries at once; lab ({} nodes + a public rendezvous) up in {} ms.\n",
        o.command,
        date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel(),
        pairs.len(),
        match beam.and_then(|b| b.variants.as_ref()) {
            Some((_, n)) => format!(" (+ {n} pairs of topology variants)"),
            None => String::new(),
        },
        o.tries,
        elapsed.as_secs_f64(),
        o.concurrency,
        sites,
        build_ms
    );
    let _ = writeln!(w, "{}\n", o.tree);
    if o.beam {
        let _ = writeln!(
            w,
            "Settings: **profiles detected, nodes configured through the application environment (BEAM VMs)**. \
             Every NAT site at {} ms one-way delay in each direction, no jitter, no loss (userspace engine; the \
             kernel NATs through the lab's pass-through delay hop), so a path between two sites has a round trip \
             of {rtt:.0} ms and the rendezvous (a public host, no delay) is {:.0} ms round trip from each site. Every \
             NAT site is a plain router (masquerade, no input-chain filtering: the real-world default) on a \
             routed internet (a router between sites). Two sites per type (userspace: the 27 NATCracker types, \
             PC with delta 1; kernel: full cone, restricted cone, port-restricted cone, symmetric), one Erlang VM \
             per site host (OTP {}, `+S 1:1 +A 1`, about {} VMs on the 2 cores; Erlang only, no Elixir build is \
             needed here) running `test/lab/macula_lab_matrix_agent.erl`, configured through the application \
             environment only (a sys.config with `observers` = the lab's two RFC 5780 observers, `rendezvous`, \
             `relays`, `detection_timeout_ms` 3000); the rendezvous is such a VM too (`rendezvous_server`, \
             `macula_relay_node:enable/0`). A try: both nodes restart `macula_nat` (`application:stop/1` + \
             `ensure_all_started/1`: a new socket, new NAT mappings, a new detection) and wait until they have \
             detected, joined the rendezvous and reserved at the relay (not timed), then A (the row type) calls \
             `macula_nat_connector:connect/3` with a {} ms timeout and `macula_connection:send/2`s a message; \
             **time to first message** runs from A's connect call until B's owner process has the message \
             (`os:system_time(nanosecond)` stamps of both VMs, CLOCK_REALTIME shared by the host). A try succeeds \
             when B gets the message (by any method; the targets count only tries that connected without a \
             relay). {} Strategies are the table's (`macula_nat_proto::strategy::choose`, \
             `bench/strategy_table.md`) for the two profiles the nodes DETECTED in that try; a pair is listed \
             under the strategy most of its tries' detected profiles gave (the table's strategy for the lab's \
             configured types is shown where it differs). Methods and errors are what `connect/3` answered \
             (it reports no strategy).\n",
            o.delay_ms,
            2.0 * o.delay_ms,
            otp_release(),
            sites + 1,
            o.timeout_ms,
            if o.relay {
                "The rendezvous VM also relays: every node reserves there (`relays`) and `connect/3` falls back \
                 to it (`fallback_relay`, its default); a relayed connection keeps trying to upgrade to a punched \
                 path, the method shown is the one `connect/3` answered."
            } else {
                "No relay in the lab (`--no-relay`): relay pairs fail."
            }
        );
    } else {
        let _ = writeln!(
            w,
            "Settings: every NAT site at {} ms one-way delay in each direction, no jitter, no loss (userspace \
             engine; the kernel NATs through the lab's pass-through delay hop), so a path between two sites has \
             a round trip of {rtt:.0} ms and the rendezvous (a public host, no delay) is {:.0} ms round trip from \
             each site. Two sites per type (userspace: the 27 NATCracker types, PC with delta 1; kernel: full \
             cone, restricted cone, port-restricted cone, symmetric), one `macula-connect agent` per site host. \
             A try: both nodes open a fresh socket (new NAT mappings, nothing left open by earlier tries) and \
             join the rendezvous (not timed), then A (the row type) `connect_detailed`s B with a {} ms timeout \
             and sends a message; **time to first message** runs from A's connect call until B has the message \
             (CLOCK_MONOTONIC stamps of both nodes). A try succeeds when B gets the message (by any method; the targets count only tries that \
             connected without a relay). {} Profiles are given \
             (`--nat`, what detection reports for each NAT), not detected. Strategies are the table's \
             (`macula_nat_proto::strategy::choose`, `bench/strategy_table.md`); methods and errors are what \
             `connect_detailed` answered.\n",
            o.delay_ms,
            2.0 * o.delay_ms,
            o.timeout_ms,
            if o.relay {
                "The rendezvous host also relays: every node holds a reservation there and falls back to it \
                 (`allow_relay`, the default of `macula_nat_connector`); a relayed connection tries to upgrade \
                 to a punched path after 2 s, the method shown is the one `connect_detailed` answered."
            } else {
                "No relay in the lab (`--no-relay`): relay pairs fail at once."
            }
        );
    }
    let _ = writeln!(
        w,
        "Load average (1/5/15 min) before the tries: {load_before}; after: {}. The 2 cores are shared with \
         other work (other builds and tests), which shows in the slowest tries. NAT counters over the run, all \
         sites (filtering drops are expected while punching, `dropped_other` counts packets the NATs do not \
         translate such as ICMP and IPv6; `write_errors` would be trouble in the lab itself): {}.\n",
        loadavg(),
        lab_counters.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );

    // Summary per strategy.
    let order = ["direct", "connection_reversal", "simple_punch", "predict_preservation", "predict_contiguity", "birthday_probing", "relay"];
    let _ = writeln!(w, "## Summary per strategy\n");
    let _ = writeln!(
        w,
        "| strategy | pairs | tries | success | direct (no relay) | methods | time to first message median / p95 ms | failures |\n|---|---|---|---|---|---|---|---|"
    );
    let summary = |w: &mut String, name: &str, sel: &[&Row]| {
        let tries: usize = sel.iter().map(|r| r.tries).sum();
        let ok: usize = sel.iter().map(|r| r.ok).sum();
        let direct: usize = sel.iter().map(|r| r.direct).sum();
        let t: Vec<f64> = sel.iter().flat_map(|r| r.ttfm.iter().copied()).collect();
        let all = sel.iter().flat_map(|r| r.res.iter());
        let methods = counts(all.clone().filter(|t| t.ok).filter_map(|t| t.method.as_deref()));
        let fails = counts(all.filter(|t| !t.ok).filter_map(|t| t.error.as_deref()));
        let _ = writeln!(
            w,
            "| {name} | {} | {tries} | {ok}/{tries} ({:.0}%) | {direct}/{tries} ({:.0}%) | {} | {} / {} | {} |",
            sel.len(),
            if tries > 0 { 100.0 * ok as f64 / tries as f64 } else { 0.0 },
            if tries > 0 { 100.0 * direct as f64 / tries as f64 } else { 0.0 },
            if methods.is_empty() { "-".into() } else { methods },
            ms(pct(&t, 0.5)),
            ms(pct(&t, 0.95)),
            if fails.is_empty() { "-".into() } else { fails }
        );
    };
    for name in order {
        let sel: Vec<&Row> = rows.iter().filter(|r| r.pair.strategy.name() == name).collect();
        if !sel.is_empty() {
            summary(w, name, &sel);
        }
    }
    let all: Vec<&Row> = rows.iter().collect();
    summary(w, "**all**", &all);
    for (label, kernel) in [("userspace pairs", false), ("kernel pairs", true)] {
        let sel: Vec<&Row> = rows.iter().filter(|r| defs[r.pair.a].kernel == kernel).collect();
        if !sel.is_empty() && sel.len() != rows.len() {
            summary(w, label, &sel);
        }
    }

    if let Some(b) = beam {
        detection_section(w, defs, &rows, b);
        if let Some((v, _)) = &b.variants {
            let _ = write!(w, "{v}");
        }
    }

    // Targets.
    let _ = writeln!(w, "\n## Targets (issue 6)\n");
    let nat = |r: &Row| (defs[r.pair.a].nat, defs[r.pair.b].nat);
    let trav: Vec<&Row> = rows.iter().filter(|r| natcracker_traversable(nat(r).0, nat(r).1)).collect();
    let trav_full = trav.iter().filter(|r| r.direct == r.tries && r.tries > 0).count();
    let trav_relayed: Vec<&&Row> = trav.iter().filter(|r| r.pair.strategy.is_relay()).collect();
    let trav_relayed_full = trav_relayed.iter().filter(|r| r.direct == r.tries).count();
    let trav_tries: usize = trav.iter().map(|r| r.tries).sum();
    let trav_ok: usize = trav.iter().map(|r| r.direct).sum();
    let missed: Vec<String> = trav
        .iter()
        .filter(|r| r.direct < r.tries && !r.pair.strategy.is_relay())
        .map(|r| format!("{} x {} ({}/{})", defs[r.pair.a].label, defs[r.pair.b].label, r.direct, r.tries))
        .collect();
    let met = |b: bool| if b { "**met**" } else { "**not met**" };
    // Missed tries as "strategy: error" (or the method, e.g. relayed), to
    // see at a glance what a miss is.
    let misses = |sel: &[&Row], missed: &dyn Fn(&TryResult) -> bool| {
        let m = counts(sel.iter().flat_map(|r| {
            r.res.iter().filter(|t| missed(t)).map(move |t| {
                let why = t.error.as_deref().or(t.method.as_deref().filter(|_| t.ok)).unwrap_or("slow");
                format!("{}: {why}", r.pair.strategy.name())
            })
        }));
        if m.is_empty() { "none".to_string() } else { m }
    };
    let _ = writeln!(
        w,
        "1. Every pair NATCracker counts as traversable connects directly (direct or punched) in 100% of tries: \
         {}. {trav_full} of {} such pairs connected in every try ({trav_ok}/{trav_tries} tries). \
         {} of them are the strategy table's documented deviations to relay (a random side with PD mapping and port filtering \
         against a PD-mapping listener: no packet of the listener's answer can get in, see `strategy.rs`), \
         connected in every try: {trav_relayed_full}; the other {}: {} of them connected directly in every try. \
         Missed tries by strategy: {}. Traversable pairs below 100% besides those deviations: {}.",
        met(!trav.is_empty() && trav_full == trav.len()),
        trav.len(),
        trav_relayed.len(),
        trav.len() - trav_relayed.len(),
        trav_full - trav_relayed_full,
        misses(&trav, &|t| !is_direct(t)),
        if missed.is_empty() { "none".into() } else { missed.join(", ") }
    );
    let rvse: Vec<&Row> = rows.iter().filter(|r| random_vs_eim(nat(r).0, nat(r).1)).collect();
    let rvse_tries: usize = rvse.iter().map(|r| r.tries).sum();
    let in10 = |t: &TryResult| is_direct(t) && t.ttfm_ms.is_some_and(|x| x <= 10_000.0);
    let rvse_n = |r: &Row| r.res.iter().filter(|t| in10(t)).count();
    let rvse_ok: usize = rvse.iter().map(|r| rvse_n(r)).sum();
    let rvse_hard: Vec<&&Row> = rvse.iter().filter(|r| hard(nat(r).0) || hard(nat(r).1)).collect();
    let hard_tries: usize = rvse_hard.iter().map(|r| r.tries).sum();
    let hard_ok: usize = rvse_hard.iter().map(|r| rvse_n(r)).sum();
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let _ = writeln!(
        w,
        "2. Random-allocation vs endpoint-independent-mapping pairs connect directly in at least 95% of tries \
         within 10 s: {}. {rvse_ok}/{rvse_tries} tries ({:.1}%) over {} pairs (one side RD allocation, the \
         other EI mapping); of them, where the random side also has a non-EI mapping (its port toward the peer \
         is unknown): {hard_ok}/{hard_tries} ({:.1}%) over {} pairs. Misses by strategy: {}.",
        met(rvse_tries > 0 && share(rvse_ok, rvse_tries) >= 95.0),
        share(rvse_ok, rvse_tries),
        rvse.len(),
        share(hard_ok, hard_tries),
        rvse_hard.len(),
        misses(&rvse, &|t| !in10(t))
    );
    let direct: Vec<f64> = rows.iter().flat_map(|r| r.direct_ttfm.iter().copied()).collect();
    let med = pct(&direct, 0.5);
    let over: Vec<String> = rows
        .iter()
        .filter(|r| pct(&r.direct_ttfm, 0.5).is_some_and(|m| m > bound))
        .map(|r| format!("{} x {}", defs[r.pair.a].label, defs[r.pair.b].label))
        .collect();
    let with_direct = rows.iter().filter(|r| !r.direct_ttfm.is_empty()).count();
    let per_strategy: Vec<String> = order
        .iter()
        .filter_map(|n| {
            let t: Vec<f64> = rows.iter().filter(|r| r.pair.strategy.name() == *n).flat_map(|r| r.direct_ttfm.iter().copied()).collect();
            pct(&t, 0.5).map(|m| format!("{n} {m:.0} ms"))
        })
        .collect();
    let _ = writeln!(
        w,
        "3. Direct time to first message at most 2 round trips + 100 ms at the median ({bound:.0} ms at a \
         {rtt:.0} ms round trip between the peers): {}. Median over all {} tries that connected without a relay: {} ms; per \
         strategy: {}. Pairs whose own median is above {bound:.0} ms: {} of {with_direct}{}.",
        met(med.is_some_and(|m| m <= bound)),
        direct.len(),
        ms(med),
        per_strategy.join(", "),
        over.len(),
        if over.is_empty() || over.len() > 40 { String::new() } else { format!(" ({})", over.join(", ")) }
    );

    // Every pair.
    let _ = writeln!(w, "\n## Every pair\n");
    let _ = writeln!(
        w,
        "A = row type (initiator), B = column type. `ok` = tries where B got the message; times over \
         successful tries (nearest-rank p95; with 10 tries that is the slowest but one).\n"
    );
    let _ = writeln!(w, "| A | B | strategy | method | ok | first message median ms | p95 ms | connect median ms | failures |\n|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let methods = counts(r.res.iter().filter(|t| t.ok).filter_map(|t| t.method.as_deref()));
        let fails = counts(r.res.iter().filter(|t| !t.ok).filter_map(|t| t.error.as_deref()));
        let connect: Vec<f64> = r.res.iter().filter(|t| t.ok).filter_map(|t| t.connect_ms).collect();
        let mut mismatch = r
            .res
            .iter()
            .filter_map(|t| t.reported_strategy.as_deref())
            .find(|s| *s != r.pair.strategy.name())
            .map(|s| format!(" (reported {s}!)"))
            .unwrap_or_default();
        let other = counts(
            r.res.iter().filter_map(|t| t.detected_strategy).filter(|s| s.name() != r.pair.strategy.name()).map(|s| s.name()),
        );
        if !other.is_empty() {
            mismatch += &format!(" (detected profiles gave {other})");
        }
        if r.pair.configured.name() != r.pair.strategy.name() {
            mismatch += &format!(" (lab types: {})", r.pair.configured.name());
        }
        let _ = writeln!(
            w,
            "| {} | {} | {}{mismatch} | {} | {}/{} | {} | {} | {} | {} |",
            defs[r.pair.a].label,
            defs[r.pair.b].label,
            r.pair.strategy.name(),
            if methods.is_empty() { "-".into() } else { methods },
            r.ok,
            r.tries,
            ms(pct(&r.ttfm, 0.5)),
            ms(pct(&r.ttfm, 0.95)),
            ms(pct(&connect, 0.5)),
            if fails.is_empty() { "-".into() } else { fails }
        );
    }
    md
}

/// Detection agreement: per NAT type, what its nodes detected against what
/// the lab configured.
fn detection_section(w: &mut String, defs: &[NatDef], rows: &[Row], b: &BeamExtra) {
    use std::fmt::Write as _;
    let all: usize = b.detections.iter().map(|(_, v)| v.len()).sum();
    let agree = |d: usize, x: &Detected| !x.no_nat && x.nat == defs[d].nat;
    let ok: usize = b.detections.iter().map(|(d, v)| v.iter().filter(|x| agree(*d, x)).count()).sum();
    let types_all = b.detections.iter().filter(|(_, v)| !v.is_empty()).count();
    let types_ok = b.detections.iter().filter(|(d, v)| !v.is_empty() && v.iter().all(|x| agree(*d, x))).count();
    let tries: usize = rows.iter().map(|r| r.tries).sum();
    let off: usize = rows
        .iter()
        .flat_map(|r| r.res.iter().map(move |t| (r, t)))
        .filter(|(r, t)| t.detected_strategy.is_some_and(|s| s.name() != r.pair.configured.name()))
        .count();
    let _ = writeln!(w, "\n## Detection agreement\n");
    let _ = writeln!(
        w,
        "Every `fresh` node detects its NAT (two observers, the node's own socket plus the filter socket). \
         {ok}/{all} detections ({:.1}%) gave the lab's configured type (mapping, filtering, allocation; kernel \
         NATs: what `lab_detection.rs` measures behind them); {types_ok} of {types_all} types were read right \
         every time. Tries whose detected profiles gave another strategy than the lab's types: {off}/{tries}. \
         Confidence as the detector reported it.\n",
        if all == 0 { 0.0 } else { 100.0 * ok as f64 / all as f64 }
    );
    let _ = writeln!(w, "| lab type | configured (m-f-a) | detections | agree | confidence | detected otherwise |\n|---|---|---|---|---|---|");
    for (d, v) in &b.detections {
        if v.is_empty() {
            continue;
        }
        let good = v.iter().filter(|x| agree(*d, x)).count();
        let conf = counts(v.iter().map(|x| x.confidence.as_str()));
        let bad = counts(v.iter().filter(|x| !agree(*d, x)).map(|x| format!("{} ({})", x.code(), x.confidence)));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {good}/{} | {conf} | {} |",
            defs[*d].label,
            crate::pairs::lab_code(defs[*d].nat),
            v.len(),
            v.len(),
            if bad.is_empty() { "-".into() } else { bad }
        );
    }
}

fn otp_release() -> String {
    std::process::Command::new("erl")
        .args(["-noshell", "-eval", "io:put_chars(erlang:system_info(otp_release)), halt()."])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The commit measured, and what the working tree changed on top of it
/// (a checkout may be shared with concurrent work; the VMs load what
/// `rebar3 compile` built from the tree). Taken when the run starts.
pub(crate) fn tree() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty: Vec<String> = git(&["status", "--porcelain", "--untracked-files=no", "--", "lib", "native", "priv"])
        .lines()
        .map(|l| l.get(3..).unwrap_or("").to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if dirty.is_empty() {
        format!("Code: commit {head}, no uncommitted change under lib/ or native/.")
    } else {
        format!(
            "Code: commit {head} plus uncommitted changes in the tree when the run started ({}); \
             the VMs ran what `rebar3 compile` built from it.",
            dirty.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        )
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

pub(crate) fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
