//! Connection matrix benchmark (issue 6), run by `bench/lab_matrix.sh`.
//!
//! One lab: a public rendezvous host and, for every NAT type, two sites
//! (so same-type pairs have two distinct NATs): the 27 NATCracker types on
//! the userspace engine and the 4 kernel NATs, each site at the same one-way
//! delay (kernel sites get it from the lab's pass-through delay hop). Every
//! site host runs one agent. For every unordered pair of types (userspace x
//! userspace, kernel x kernel) it runs N tries; a try = both agents open a
//! fresh node (new socket, so new NAT mappings and no holes left by earlier
//! tries) and join the rendezvous, then A connects to B and sends a message;
//! the time to first message is from A's connect call until B has the
//! message (stamps from both agents on one host clock).
//!
//! Agents (`--agent`): `beam` (default) = Erlang VMs running
//! test/lab/macula_lab_matrix_agent.erl (beam.rs), configured through the
//! application environment only and DETECTING their NAT through the lab's
//! two observers; every NAT site is then a plain router on a routed
//! internet, the rendezvous (and relay) is a VM too, stamps are
//! CLOCK_REALTIME (`os:system_time/1`). `rust` = `macula-connect agent`s
//! given their profiles (`--nat`), filtering routers on a flat internet,
//! CLOCK_MONOTONIC stamps. With `beam`, an unfiltered run (or
//! `--variants-only`) adds the topology variants of variants.rs (port
//! overloading, carrier-grade NAT, Docker-style nesting); `--no-variants`
//! leaves them out.
//!
//! Tries of different pairs run concurrently (bounded); a node takes part in
//! one try at a time, and the tries of one pair run one after the other.
//! Ctrl-C / SIGTERM / a panic tear the lab down; a lab that cannot be built
//! exits non-zero.
//!
//! ```text
//! bench_matrix [--tries N] [--concurrency K] [--delay-ms D] [--timeout-ms T]
//!              [--types LIST] [--with LIST] [--strategies LIST] [--no-kernel] [--no-user]
//!              [--no-relay] [--out FILE] [--command TEXT]
//!              [--agent beam|rust] [--beam-path DIR]... [--no-variants] [--variants-only]
//! ```
//! LIST is comma-separated. Types are NATCracker `EI-PP-PD` or lab `ei-pd-pp`
//! notation (`*` matches any component, e.g. `*-RD-*`) or kernel names
//! (`full_cone`, `restricted_cone`, `port_restricted_cone`, `symmetric`,
//! or `kernel` for all four). `--types`: both sides must match; `--with`:
//! at least one side. Strategies are the table's names (`direct`,
//! `connection_reversal`, `simple_punch`, `predict_preservation`,
//! `predict_contiguity`, `birthday_probing`, `relay`). The rendezvous host
//! also relays; every node reserves there and may fall back to it
//! (`--no-relay`: no relay in the lab, relay pairs fail at once).

mod agent;
mod beam;
mod pairs;
mod report;
mod sched;
mod variants;

use agent::{run_try, spawn_agent, TryResult};
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use pairs::{defs, pairs, NatDef, Pair};
use report::{loadavg, ms, report};
use sched::{pick, PairState, Sched};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const RDV_PORT: u16 = 4433;

static STOP: AtomicBool = AtomicBool::new(false);
/// Set with STOP when the run cannot go on (an agent died): exit non-zero.
static BROKEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) struct Opts {
    pub(crate) tries: usize,
    pub(crate) concurrency: usize,
    pub(crate) delay_ms: f64,
    pub(crate) timeout_ms: u64,
    pub(crate) types: Option<Vec<String>>,
    pub(crate) with: Option<Vec<String>>,
    pub(crate) strategies: Option<Vec<String>>,
    pub(crate) kernel: bool,
    pub(crate) relay: bool,
    pub(crate) user: bool,
    pub(crate) out: Option<String>,
    pub(crate) command: String,
    /// BEAM VMs (profiles detected, configured through the application
    /// environment; the default) or `macula-connect agent`s (profiles given).
    pub(crate) beam: bool,
    /// Code paths of the BEAM agents (the agent's .beam dir, macula_nat's ebin).
    pub(crate) beam_paths: Vec<String>,
    /// The topology variants (BEAM only; default: on for a run without filters).
    pub(crate) variants: bool,
    /// Only the variants.
    pub(crate) variants_only: bool,
    /// The code measured (commit, uncommitted changes), at start.
    pub(crate) tree: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_matrix [--tries N] [--concurrency K] [--delay-ms D] [--timeout-ms T] [--types LIST] \
         [--with LIST] [--strategies LIST] [--no-kernel] [--no-user] [--no-relay] [--out FILE] [--command TEXT] \
         [--agent beam|rust] [--beam-path DIR]... [--no-variants] [--variants-only]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        tries: 10,
        concurrency: 12,
        delay_ms: 25.0,
        timeout_ms: 10_000,
        types: None,
        with: None,
        strategies: None,
        kernel: true,
        relay: true,
        user: true,
        out: None,
        command: "bench_matrix".into(),
        beam: true,
        beam_paths: Vec::new(),
        variants: true,
        variants_only: false,
        tree: report::tree(),
    };
    let mut filtered = false;
    let mut args = std::env::args().skip(1);
    let list = |v: String| Some(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-kernel" => {
                o.kernel = false;
                filtered = true
            }
            "--no-relay" => o.relay = false,
            "--no-user" => {
                o.user = false;
                filtered = true
            }
            "--no-variants" => o.variants = false,
            "--variants-only" => o.variants_only = true,
            _ => {
                let v = args.next().unwrap_or_else(|| usage());
                let num = |v: &str| v.parse::<u64>().ok().filter(|n| *n > 0).unwrap_or_else(|| usage());
                match a.as_str() {
                    "--tries" => o.tries = num(&v) as usize,
                    "--concurrency" => o.concurrency = num(&v) as usize,
                    "--delay-ms" => o.delay_ms = v.parse().unwrap_or_else(|_| usage()),
                    "--timeout-ms" => o.timeout_ms = num(&v),
                    "--types" => {
                        o.types = list(v);
                        filtered = true
                    }
                    "--with" => {
                        o.with = list(v);
                        filtered = true
                    }
                    "--strategies" => {
                        o.strategies = list(v);
                        filtered = true
                    }
                    "--out" => o.out = Some(v),
                    "--command" => o.command = v,
                    "--agent" => {
                        o.beam = match v.as_str() {
                            "beam" => true,
                            "rust" => false,
                            _ => usage(),
                        }
                    }
                    "--beam-path" => o.beam_paths.push(v),
                    _ => usage(),
                }
            }
        }
    }
    // Filters select matrix pairs: the variants come with an unfiltered run
    // (or --variants-only, which leaves the matrix out).
    o.variants = o.beam && (o.variants_only || (o.variants && !filtered));
    if o.variants_only {
        o.user = false;
        o.kernel = false;
    }
    o
}

fn main() {
    let o = parse_opts();
    macula_nat_lab::can_run().unwrap_or_else(|e| {
        eprintln!("bench_matrix: the lab cannot run here: {e}");
        std::process::exit(1)
    });
    let bin_dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    std::env::set_var("MACULA_LAB_BIN", bin_dir.join("macula-lab"));
    let connect = bin_dir.join("macula-connect").to_string_lossy().to_string();
    if o.beam && o.beam_paths.is_empty() {
        eprintln!("bench_matrix: --agent beam needs --beam-path (the agent's .beam dir and macula_nat's ebin; bench/lab_matrix.sh gives them)");
        std::process::exit(2);
    }
    if !std::path::Path::new(&connect).is_file() {
        eprintln!("bench_matrix: {connect} missing (cargo build --release -p macula_nat_core --bins)");
        std::process::exit(1);
    }
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    macula_nat_lab::reap(false);

    let mut defs = defs(&o);
    let mut pairs = pairs(&o, &defs);
    if o.variants {
        variants::add(&mut defs, &mut pairs);
    }
    if pairs.is_empty() {
        eprintln!("bench_matrix: no pair matches the filters");
        std::process::exit(2);
    }
    // Only the types some selected pair uses get sites.
    let used: Vec<bool> = (0..defs.len()).map(|i| pairs.iter().any(|p| p.a == i || p.b == i)).collect();
    // Per process, so two runs (e.g. two engineers' subsets) do not collide.
    let mut spec = LabSpec::new(&format!("mx{}", std::process::id()));
    spec.public.push("rdv".into());
    spec.seed = Some(6);
    if o.beam {
        // Profiles detected: two RFC 5780 observers; the real-world
        // default of plain routers on a routed internet.
        spec.observers = beam::OBSERVERS.iter().map(|x| x.to_string()).collect();
        spec.routed_internet = true;
    }
    if o.variants {
        variants::add_to_spec(&mut spec);
    }
    for d in defs.iter().zip(&used).filter(|(_, u)| **u).map(|(d, _)| d) {
        if d.variant.is_some() {
            continue;
        }
        for s in &d.sites {
            let mut site = SiteSpec::new(s, &d.lab_nat).expect("site spec");
            site.delay_ms = o.delay_ms;
            site.plain_router = o.beam;
            spec.sites.push(site);
        }
    }
    let build = Instant::now();
    let lab = match Lab::up_with(spec, UpOptions::default()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench_matrix: cannot build the lab: {e:#}");
            std::process::exit(1)
        }
    };
    let build_ms = build.elapsed().as_millis();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&o, &lab, &defs, &used, &pairs, &connect, build_ms)));
    // Explicitly: exit() skips destructors.
    let _ = lab.down();
    std::process::exit(run.unwrap_or(1));
}

fn run(o: &Opts, lab: &Lab, defs: &[NatDef], used: &[bool], pairs: &[Pair], connect: &str, build_ms: u128) -> i32 {
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:{RDV_PORT}");
    let logs = std::env::temp_dir().join(format!("bench_matrix.{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut obs_children = Vec::new();
    let (mut rdv, rdv_id) = if o.beam {
        match beam::start_observers(lab, &logs).and_then(|c| {
            obs_children = c;
            beam::start_rendezvous(o, lab, &rdv_ip.to_string(), RDV_PORT, &logs)
        }) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("bench_matrix: {e}");
                for mut c in obs_children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return 1;
            }
        }
    } else {
        let mut argv: Vec<String> = [connect, "rendezvous", "--bind", &rdv_addr].iter().map(|x| x.to_string()).collect();
        if o.relay {
            argv.push("--serve-relay".into());
        }
        let (mut cmd, _ns) = lab.command("rdv", &argv).expect("rendezvous command");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(logs.join("rdv.log")).expect("log"));
        let mut rdv = cmd.spawn().expect("rendezvous");
        let mut out = BufReader::new(rdv.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).expect("rendezvous ready line");
        // Keep the pipe open: a closed stdout would fail its next print.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let rdv_id = serde_json::from_str::<Value>(&first).ok().and_then(|v| v["node_id"].as_str().map(String::from));
        let Some(rdv_id) = rdv_id else {
            eprintln!("bench_matrix: rendezvous did not start: {first:?}");
            let _ = rdv.kill();
            let _ = rdv.wait();
            return 1;
        };
        (rdv, rdv_id)
    };
    let beam_config = o.beam.then(|| beam::node_config(lab, &rdv_addr, &rdv_id, o.relay, None, &logs));
    let ovl_config = o.variants.then(|| beam::node_config(lab, &rdv_addr, &rdv_id, o.relay, Some(variants::OVERLOAD_PORT), &logs));

    let mut agents = Vec::new();
    let mut site_ix = BTreeMap::new();
    for (d, _) in defs.iter().zip(used).filter(|(_, u)| **u) {
        for s in &d.sites {
            site_ix.insert(s.clone(), agents.len());
            if let Some(v) = &d.variant {
                // s is the host; the rendezvous must see the outermost NAT's address.
                let (site, public_ip) = match &v.site {
                    Some(site) => (site.clone(), lab.site(site).unwrap().reflexive_ip.to_string()),
                    None => (s.clone(), lab.host_addr(s).unwrap().to_string()),
                };
                // The overloaded hosts' config (same local port) is written
                // once, before their VMs start; the others share node.config.
                let cfg = match (site == "vovl", &ovl_config, &beam_config) {
                    (true, Some(c), _) => c.clone(),
                    (_, _, Some(c)) => c.clone(),
                    _ => unreachable!("variants run with BEAM agents"),
                };
                let (argv, env) = beam::agent_argv(o, &cfg, true);
                agents.push(spawn_agent(lab, &site, s, Some(public_ip), &argv, &env, &logs, o.relay));
                continue;
            }
            let public_ip = Some(lab.site(s).unwrap().public_ip.to_string());
            if let Some(cfg) = &beam_config {
                let (argv, env) = beam::agent_argv(o, cfg, false);
                agents.push(spawn_agent(lab, s, s, public_ip, &argv, &env, &logs, o.relay));
                continue;
            }
            let mut argv: Vec<String> = [connect, "agent", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", &d.nat_arg]
                .iter()
                .map(|x| x.to_string())
                .chain(["--timeout-ms".into(), o.timeout_ms.to_string()])
                .collect();
            if o.relay {
                // As macula_nat_connector: reserve at the relay, fall back to it.
                argv.extend(["--relay".into(), rdv_addr.clone(), "--relay-id".into(), rdv_id.clone(), "--allow-relay".into()]);
            }
            agents.push(spawn_agent(lab, s, s, public_ip, &argv, &[], &logs, o.relay));
        }
    }

    let total = pairs.len() * o.tries;
    let load_before = loadavg();
    eprintln!(
        "bench_matrix: lab up in {build_ms} ms ({} sites, {} agents); {} pairs x {} tries, {} at once",
        agents.len(),
        agents.len(),
        pairs.len(),
        o.tries,
        o.concurrency
    );
    let sched = Arc::new((
        Mutex::new(Sched {
            pairs: (0..pairs.len()).map(|_| PairState::default()).collect(),
            busy: vec![false; agents.len()],
            next: 0,
            done: 0,
        }),
        Condvar::new(),
    ));
    let timeout = Duration::from_millis(o.timeout_ms);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..o.concurrency)
            .map(|_| {
                let sched = sched.clone();
                let (agents, site_ix) = (&agents, &site_ix);
                scope.spawn(move || loop {
                    let (lock, cv) = &*sched;
                    let job = {
                        let mut s = lock.lock().unwrap();
                        loop {
                            if STOP.load(Ordering::SeqCst) || s.done == total {
                                return;
                            }
                            if let Some(j) = pick(&mut s, pairs, defs, site_ix, o.tries) {
                                break j;
                            }
                            s = cv.wait_timeout(s, Duration::from_millis(200)).unwrap().0;
                        }
                    };
                    let (p, a, b) = job;
                    let n = lock.lock().unwrap().pairs[p].started;
                    let tag = format!("p{p}t{n}");
                    let r = run_try(&agents[a], &agents[b], &tag, timeout);
                    if let Some((site, why)) = [&agents[a], &agents[b]].iter().find_map(|x| x.exited().map(|w| (&x.site, w))) {
                        // Not a connection failure: the lab broke (e.g. its
                        // namespaces were removed underneath). Stop loudly.
                        if !STOP.load(Ordering::SeqCst) {
                            eprintln!("bench_matrix: the agent in {site} exited ({why}); aborting");
                            BROKEN.store(true, Ordering::SeqCst);
                            STOP.store(true, Ordering::SeqCst);
                        }
                        return;
                    }
                    let mut s = lock.lock().unwrap();
                    s.busy[a] = false;
                    s.busy[b] = false;
                    s.pairs[p].running = false;
                    s.pairs[p].results.push(r.clone());
                    s.done += 1;
                    let (done, pair) = (s.done, &pairs[p]);
                    drop(s);
                    cv.notify_all();
                    if done % 50 == 0 || done == total || !r.ok && r.error.as_deref() == Some("no_answer") {
                        eprintln!(
                            "[{done}/{total} {:.0}s] {} x {}: {}",
                            started.elapsed().as_secs_f64(),
                            defs[pair.a].label,
                            defs[pair.b].label,
                            if r.ok { format!("{} {} ms", r.method.as_deref().unwrap_or("?"), ms(r.ttfm_ms)) } else { r.error.clone().unwrap_or_default() }
                        );
                    }
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("bench_matrix: stopped, tearing the lab down");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if STOP.load(Ordering::SeqCst) {
            // Workers notice the flag between tries; do not wait for the
            // ones in a try.
            lab_teardown_and_exit(lab);
        }
        for w in workers {
            if w.join().is_err() {
                lab_teardown_and_exit(lab);
            }
        }
    });
    let elapsed = started.elapsed();
    for a in &agents {
        a.send("quit");
    }
    // Drops inside the lab itself (engines), next to the figures they could
    // explain.
    let mut lab_counters: BTreeMap<String, u64> = BTreeMap::new();
    for a in &agents {
        if let Ok(st) = lab.router_stats(&a.site) {
            for k in ["dropped_other", "write_errors", "dropped_no_binding", "dropped_filtered", "port_collisions", "filtered_packets"] {
                *lab_counters.entry(k.to_string()).or_default() += st.counters.get(k).copied().unwrap_or(0);
            }
        }
    }
    let _ = rdv.kill();
    let _ = rdv.wait();
    for mut c in obs_children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let s = sched.0.lock().unwrap();
    let results: Vec<&Vec<TryResult>> = s.pairs.iter().map(|p| &p.results).collect();
    // Profiles detected: each pair goes under the strategy its tries'
    // detected profiles gave most often.
    let pairs: Vec<Pair> = pairs
        .iter()
        .zip(&results)
        .map(|(p, r)| {
            let mut n: Vec<(macula_nat_proto::strategy::Strategy, usize)> = Vec::new();
            for s in r.iter().filter_map(|t| t.detected_strategy) {
                match n.iter_mut().find(|(x, _)| x.name() == s.name()) {
                    Some(e) => e.1 += 1,
                    None => n.push((s, 1)),
                }
            }
            let strategy = n.iter().max_by_key(|e| e.1).map_or(p.configured, |e| e.0);
            Pair { a: p.a, b: p.b, strategy, configured: p.configured, variant: p.variant.clone() }
        })
        .collect();
    // The variants get a section of their own; the rest of the report is the matrix.
    let (vpairs, vresults): (Vec<Pair>, Vec<&Vec<TryResult>>) = {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (p, r) in pairs.iter().zip(&results) {
            if let Some(v) = &p.variant {
                a.push(Pair { a: p.a, b: p.b, strategy: p.strategy, configured: p.configured, variant: Some(v.clone()) });
                b.push(*r);
            }
        }
        (a, b)
    };
    let keep: Vec<bool> = pairs.iter().map(|p| p.variant.is_none()).collect();
    let results: Vec<&Vec<TryResult>> = results.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| *r).collect();
    let pairs: Vec<Pair> = pairs.into_iter().filter(|p| p.variant.is_none()).collect();
    let extra = o.beam.then(|| {
        let mut det: Vec<(usize, Vec<agent::Detected>)> = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let v: Vec<agent::Detected> =
                d.sites.iter().filter_map(|s| site_ix.get(s)).flat_map(|&a| agents[a].detections.lock().unwrap().clone()).collect();
            det.push((i, v));
        }
        let variants = (!vpairs.is_empty()).then(|| (variants::section(defs, &vpairs, &vresults, &det), vpairs.len()));
        let det = det.into_iter().filter(|(i, _)| defs[*i].variant.is_none()).collect();
        report::BeamExtra { detections: det, variants }
    });
    let md = report(o, defs, &pairs, &results, elapsed, build_ms, agents.len(), &lab_counters, &load_before, extra.as_ref());
    // Keep the agents' and the rendezvous' logs only when they have something.
    let noisy = std::fs::read_dir(&logs).into_iter().flatten().flatten().any(|e| e.path().extension().is_some_and(|x| x == "log") && e.metadata().is_ok_and(|m| m.len() > 0));
    if noisy {
        eprintln!("bench_matrix: node logs in {}", logs.display());
    } else {
        let _ = std::fs::remove_dir_all(&logs);
    }
    match &o.out {
        Some(f) => std::fs::write(f, &md).unwrap_or_else(|e| panic!("write {f}: {e}")),
        None => print!("{md}"),
    }
    0
}

fn lab_teardown_and_exit(lab: &Lab) -> ! {
    macula_nat_lab::lab::teardown(&lab.info);
    std::process::exit(if BROKEN.load(Ordering::SeqCst) { 1 } else { 130 })
}
