//! Connection matrix benchmark (issue 6), run by `bench/lab_matrix.sh`.
//!
//! One lab: a public rendezvous host and, for every NAT type, two sites
//! (so same-type pairs have two distinct NATs): the 27 NATCracker types on
//! the userspace engine and the 4 kernel NATs, each site at the same one-way
//! delay (kernel sites get it from the lab's pass-through delay hop). Every
//! site host runs one `macula-connect agent`. For every unordered pair of
//! types (userspace x userspace, kernel x kernel) it runs N tries; a try =
//! both agents open a fresh node (new socket, so new NAT mappings and no
//! holes left by earlier tries) and join the rendezvous, then A connects to B
//! and sends a message; the time to first message is from A's connect call
//! until B has the message (CLOCK_MONOTONIC stamps from both agents).
//!
//! Tries of different pairs run concurrently (bounded); a node takes part in
//! one try at a time, and the tries of one pair run one after the other.
//! Ctrl-C / SIGTERM / a panic tear the lab down; a lab that cannot be built
//! exits non-zero.
//!
//! ```text
//! bench_matrix [--tries N] [--concurrency K] [--delay-ms D] [--timeout-ms T]
//!              [--types LIST] [--with LIST] [--strategies LIST] [--no-kernel] [--no-user]
//!              [--out FILE] [--command TEXT]
//! ```
//! LIST is comma-separated. Types are NATCracker `EI-PP-PD` or lab `ei-pd-pp`
//! notation (`*` matches any component, e.g. `*-RD-*`) or kernel names
//! (`full_cone`, `restricted_cone`, `port_restricted_cone`, `symmetric`,
//! or `kernel` for all four). `--types`: both sides must match; `--with`:
//! at least one side. Strategies are the table's names (`direct`,
//! `connection_reversal`, `simple_punch`, `predict_preservation`,
//! `predict_contiguity`, `birthday_probing`, `relay`).

use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::strategy::{choose, PeerNat, Strategy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const RDV_PORT: u16 = 4433;
/// Sites per NAT type: same-type pairs need two distinct NATs.
const SITES_PER_TYPE: usize = 2;
/// How long B may take to report the message after A reported success.
const MESSAGE_GRACE: Duration = Duration::from_secs(3);

static STOP: AtomicBool = AtomicBool::new(false);
/// Set with STOP when the run cannot go on (an agent died): exit non-zero.
static BROKEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Opts {
    tries: usize,
    concurrency: usize,
    delay_ms: f64,
    timeout_ms: u64,
    types: Option<Vec<String>>,
    with: Option<Vec<String>>,
    strategies: Option<Vec<String>>,
    kernel: bool,
    user: bool,
    out: Option<String>,
    command: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_matrix [--tries N] [--concurrency K] [--delay-ms D] [--timeout-ms T] [--types LIST] \
         [--with LIST] [--strategies LIST] [--no-kernel] [--no-user] [--out FILE] [--command TEXT]"
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
        user: true,
        out: None,
        command: "bench_matrix".into(),
    };
    let mut args = std::env::args().skip(1);
    let list = |v: String| Some(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-kernel" => o.kernel = false,
            "--no-user" => o.user = false,
            _ => {
                let v = args.next().unwrap_or_else(|| usage());
                let num = |v: &str| v.parse::<u64>().ok().filter(|n| *n > 0).unwrap_or_else(|| usage());
                match a.as_str() {
                    "--tries" => o.tries = num(&v) as usize,
                    "--concurrency" => o.concurrency = num(&v) as usize,
                    "--delay-ms" => o.delay_ms = v.parse().unwrap_or_else(|_| usage()),
                    "--timeout-ms" => o.timeout_ms = num(&v),
                    "--types" => o.types = list(v),
                    "--with" => o.with = list(v),
                    "--strategies" => o.strategies = list(v),
                    "--out" => o.out = Some(v),
                    "--command" => o.command = v,
                    _ => usage(),
                }
            }
        }
    }
    o
}

/// One NAT type of the matrix.
struct NatDef {
    /// NATCracker notation, or the kernel NAT's name.
    label: String,
    /// The lab's `nat` for its sites.
    lab_nat: String,
    /// The profile the agent gives (`--nat`): what detection reports for it.
    nat_arg: String,
    nat: NatType,
    kernel: bool,
    /// Lab site names, `SITES_PER_TYPE` of them.
    sites: Vec<String>,
}

fn lab_code(t: NatType) -> String {
    let d = |x: &str| x.to_ascii_lowercase();
    let s = t.to_string(); // MAPPING-ALLOCATION-FILTERING
    let p: Vec<&str> = s.split('-').collect();
    format!("{}-{}-{}", d(p[0]), d(p[2]), d(p[1]))
}

fn defs(o: &Opts) -> Vec<NatDef> {
    let mut v = Vec::new();
    if o.user {
        for t in NatType::all() {
            let code = lab_code(t);
            // PC sites allocate with delta 1 (the lab's default), and say so.
            let nat_arg = if t.allocation == Allocation::Pc { format!("{code}:delta=1") } else { code.clone() };
            let short = code.replace('-', "");
            v.push(NatDef {
                label: t.to_string(),
                lab_nat: format!("user:{code}"),
                nat_arg,
                nat: t,
                kernel: false,
                sites: (1..=SITES_PER_TYPE).map(|i| format!("u{short}{i}")).collect(),
            });
        }
    }
    if o.kernel {
        // The profiles lab_detection measures behind these NATs.
        for (name, short, m, f, a) in [
            ("full_cone", "fc", Mapping::Ei, Filtering::Ei, Allocation::Pp),
            ("restricted_cone", "rc", Mapping::Ei, Filtering::Hd, Allocation::Pp),
            ("port_restricted_cone", "prc", Mapping::Ei, Filtering::Pd, Allocation::Pp),
            ("symmetric", "sym", Mapping::Pd, Filtering::Pd, Allocation::Rd),
        ] {
            let t = NatType { mapping: m, allocation: a, filtering: f };
            v.push(NatDef {
                label: format!("kernel {name}"),
                lab_nat: format!("kernel:{name}"),
                nat_arg: lab_code(t),
                nat: t,
                kernel: true,
                sites: (1..=SITES_PER_TYPE).map(|i| format!("k{short}{i}")).collect(),
            });
        }
    }
    v
}

/// `pat` (NATCracker or lab notation, `*` wildcards, or a kernel name)
/// matches `d`.
fn matches(pat: &str, d: &NatDef) -> bool {
    let p = pat.to_ascii_lowercase();
    if d.kernel {
        return p == "kernel" || d.lab_nat == format!("kernel:{p}");
    }
    let parts: Vec<&str> = p.split('-').collect();
    if parts.len() != 3 {
        return false;
    }
    // NATCracker notation has the allocation in the middle, the lab's last.
    let (m, a, f) = if ["pp", "pc", "rd"].contains(&parts[2]) { (parts[0], parts[2], parts[1]) } else { (parts[0], parts[1], parts[2]) };
    let own: Vec<String> = d.label.to_ascii_lowercase().split('-').map(String::from).collect();
    [m, a, f].iter().zip(&own).all(|(want, have)| *want == "*" || want == have)
}

/// Random allocation behind a non-EI mapping: the port towards a new peer
/// cannot be known in advance.
fn hard(t: NatType) -> bool {
    t.mapping != Mapping::Ei && t.allocation == Allocation::Rd
}

/// NATCracker's traversability as the strategy table reads it (the same
/// rule as `natcracker_traversable` in `macula_nat_proto`'s strategy tests):
/// untraversable iff one side is hard and the other is hard too or filters
/// by port.
fn natcracker_traversable(a: NatType, b: NatType) -> bool {
    let blocked = |x: NatType, y: NatType| hard(x) && (hard(y) || y.filtering == Filtering::Pd);
    !(blocked(a, b) || blocked(b, a))
}

/// The issue's second target: one side allocates ports at random, the other
/// has an endpoint-independent mapping.
fn random_vs_eim(a: NatType, b: NatType) -> bool {
    let one = |x: NatType, y: NatType| x.allocation == Allocation::Rd && y.mapping == Mapping::Ei;
    one(a, b) || one(b, a)
}

struct Pair {
    a: usize,
    b: usize,
    strategy: Strategy,
}

fn pairs(o: &Opts, d: &[NatDef]) -> Vec<Pair> {
    let listed = |l: &Option<Vec<String>>, x: &NatDef| l.as_ref().map(|l| l.iter().any(|p| matches(p, x)));
    let mut v = Vec::new();
    for a in 0..d.len() {
        for b in a..d.len() {
            if d[a].kernel != d[b].kernel {
                continue;
            }
            let strategy = choose(&PeerNat::behind(d[a].nat), &PeerNat::behind(d[b].nat));
            if let (Some(x), Some(y)) = (listed(&o.types, &d[a]), listed(&o.types, &d[b])) {
                if !(x && y) {
                    continue;
                }
            }
            if let (Some(x), Some(y)) = (listed(&o.with, &d[a]), listed(&o.with, &d[b])) {
                if !(x || y) {
                    continue;
                }
            }
            if let Some(s) = &o.strategies {
                if !s.iter().any(|n| n == strategy.name()) {
                    continue;
                }
            }
            v.push(Pair { a, b, strategy });
        }
    }
    v
}

/// A `macula-connect agent` in one lab host, driven by stdin lines.
struct Agent {
    site: String,
    public_ip: String,
    stdin: Mutex<ChildStdin>,
    lines: Mutex<Receiver<String>>,
    child: Mutex<Child>,
}

impl Agent {
    fn send(&self, cmd: &str) -> bool {
        let mut s = self.stdin.lock().unwrap();
        writeln!(s, "{cmd}").and_then(|_| s.flush()).is_ok()
    }

    /// The next line whose JSON satisfies `want`, before `deadline`; other
    /// lines (left over from earlier tries) are skipped.
    fn wait(&self, deadline: Instant, want: impl Fn(&Value) -> bool) -> Option<Value> {
        let rx = self.lines.lock().unwrap();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = rx.recv_timeout(left).ok()?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if want(&v) {
                    return Some(v);
                }
            }
        }
    }

    /// Why the agent process is gone, if it is.
    fn exited(&self) -> Option<String> {
        match self.child.lock().unwrap().try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Opens a fresh node and joins; the node id.
    fn joined(&self, deadline: Instant) -> Result<String, String> {
        let v = self
            .wait(deadline, |v| matches!(v["event"].as_str(), Some("joined" | "join_failed")))
            .ok_or_else(|| "join_no_answer".to_string())?;
        if v["event"] == "join_failed" {
            return Err(format!("join_{}", v["error"].as_str().unwrap_or("?")));
        }
        // The rendezvous must see the NAT's public address: traffic really
        // crosses the NAT (a wrong lab would make every figure meaningless).
        let observed = v["observed"].as_str().unwrap_or("");
        if !observed.starts_with(&format!("{}:", self.public_ip)) {
            panic!("{}: rendezvous observed {observed}, expected the NAT's public IP {}", self.site, self.public_ip);
        }
        Ok(v["node_id"].as_str().unwrap_or("").to_string())
    }
}

#[derive(Clone, Debug, Default)]
struct TryResult {
    ok: bool,
    method: Option<String>,
    reported_strategy: Option<String>,
    error: Option<String>,
    ttfm_ms: Option<f64>,
    connect_ms: Option<f64>,
}

fn fail(e: impl Into<String>) -> TryResult {
    TryResult { error: Some(e.into()), ..Default::default() }
}

fn run_try(a: &Agent, b: &Agent, tag: &str, timeout: Duration) -> TryResult {
    if !(a.send("fresh") && b.send("fresh")) {
        return fail("agent_gone");
    }
    let join_deadline = Instant::now() + Duration::from_secs(15);
    let a_id = a.joined(join_deadline);
    let b_id = b.joined(join_deadline);
    let (_a_id, b_id) = match (a_id, b_id) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    if !a.send(&format!("connect {b_id} {tag}")) {
        return fail("agent_gone");
    }
    let for_tag = |v: &Value| v["try"].as_str() == Some(tag);
    let Some(r) = a.wait(Instant::now() + timeout + Duration::from_secs(5), |v| {
        for_tag(v) && matches!(v["event"].as_str(), Some("connected" | "failed"))
    }) else {
        return fail("no_answer");
    };
    let connect_ms = r["connect_ms"].as_f64();
    if r["event"] == "failed" {
        return TryResult { connect_ms, ..fail(r["error"].as_str().unwrap_or("?")) };
    }
    let base = TryResult {
        method: r["method"].as_str().map(String::from),
        reported_strategy: r["strategy"].as_str().map(String::from),
        connect_ms,
        ..Default::default()
    };
    if r["sent"] != true {
        return TryResult { error: Some("send_failed".into()), ..base };
    }
    let Some(m) = b.wait(Instant::now() + MESSAGE_GRACE, |v| for_tag(v) && v["event"] == "message") else {
        return TryResult { error: Some("no_message".into()), ..base };
    };
    let (t0, t1) = (r["t0_ns"].as_u64().unwrap_or(0), m["t_ns"].as_u64().unwrap_or(0));
    TryResult { ok: true, ttfm_ms: Some(t1.saturating_sub(t0) as f64 / 1e6), ..base }
}

#[derive(Default)]
struct PairState {
    started: usize,
    running: bool,
    results: Vec<TryResult>,
}

struct Sched {
    pairs: Vec<PairState>,
    busy: Vec<bool>,
    next: usize,
    done: usize,
}

/// Picks a pair that is not running and has free sites, among those with
/// the most tries left (round robin among equals): pairs whose tries are
/// slow (timeouts) then keep running from the start instead of piling up
/// at the end, since one pair's tries run one at a time.
fn pick(s: &mut Sched, pairs: &[Pair], defs: &[NatDef], site_ix: &BTreeMap<String, usize>, tries: usize) -> Option<(usize, usize, usize)> {
    let n = pairs.len();
    let mut best: Option<(usize, usize, usize)> = None;
    for k in 0..n {
        let p = (s.next + k) % n;
        let st = &s.pairs[p];
        if st.running || st.started >= tries || best.is_some_and(|(q, _, _)| s.pairs[q].started <= st.started) {
            continue;
        }
        let free = |d: usize, not: Option<usize>| {
            defs[d].sites.iter().map(|x| site_ix[x]).find(|&i| !s.busy[i] && Some(i) != not)
        };
        let Some(a) = free(pairs[p].a, None) else { continue };
        let Some(b) = free(pairs[p].b, Some(a)) else { continue };
        best = Some((p, a, b));
    }
    let (p, a, b) = best?;
    s.busy[a] = true;
    s.busy[b] = true;
    s.pairs[p].running = true;
    s.pairs[p].started += 1;
    s.next = p + 1;
    Some((p, a, b))
}

fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // nearest rank
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

fn ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

fn counts<S: AsRef<str>>(it: impl Iterator<Item = S>) -> String {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for k in it {
        *m.entry(k.as_ref().to_string()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
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
    if !std::path::Path::new(&connect).is_file() {
        eprintln!("bench_matrix: {connect} missing (cargo build --release -p macula_nat_core --bins)");
        std::process::exit(1);
    }
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    macula_nat_lab::reap(false);

    let defs = defs(&o);
    let pairs = pairs(&o, &defs);
    if pairs.is_empty() {
        eprintln!("bench_matrix: no pair matches the filters");
        std::process::exit(2);
    }
    // Only the types some selected pair uses get sites.
    let used: Vec<bool> = (0..defs.len()).map(|i| pairs.iter().any(|p| p.a == i || p.b == i)).collect();
    let mut spec = LabSpec::new("matrix");
    spec.public.push("rdv".into());
    spec.seed = Some(6);
    for d in defs.iter().zip(&used).filter(|(_, u)| **u).map(|(d, _)| d) {
        for s in &d.sites {
            let mut site = SiteSpec::new(s, &d.lab_nat).expect("site spec");
            site.delay_ms = o.delay_ms;
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

fn spawn_agent(lab: &Lab, site: &str, argv: &[String], logs: &std::path::Path) -> Agent {
    let (mut cmd, _ns) = lab.command(site, argv).expect("agent command");
    let log = std::fs::File::create(logs.join(format!("{site}.log"))).expect("agent log");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn agent in {site}: {e}"));
    let stdin = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    Agent {
        site: site.to_string(),
        public_ip: lab.site(site).unwrap().public_ip.to_string(),
        stdin: Mutex::new(stdin),
        lines: Mutex::new(rx),
        child: Mutex::new(child),
    }
}

fn run(o: &Opts, lab: &Lab, defs: &[NatDef], used: &[bool], pairs: &[Pair], connect: &str, build_ms: u128) -> i32 {
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:{RDV_PORT}");
    let logs = std::env::temp_dir().join(format!("bench_matrix.{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let argv: Vec<String> = [connect, "rendezvous", "--bind", &rdv_addr].iter().map(|x| x.to_string()).collect();
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

    let mut agents = Vec::new();
    let mut site_ix = BTreeMap::new();
    for (d, _) in defs.iter().zip(used).filter(|(_, u)| **u) {
        for s in &d.sites {
            let argv: Vec<String> = [connect, "agent", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", &d.nat_arg]
                .iter()
                .map(|x| x.to_string())
                .chain(["--timeout-ms".into(), o.timeout_ms.to_string()])
                .collect();
            site_ix.insert(s.clone(), agents.len());
            agents.push(spawn_agent(lab, s, &argv, &logs));
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
    let s = sched.0.lock().unwrap();
    let results: Vec<&Vec<TryResult>> = s.pairs.iter().map(|p| &p.results).collect();
    let md = report(o, defs, pairs, &results, elapsed, build_ms, agents.len(), &lab_counters, &load_before);
    // Keep the agents' and the rendezvous' logs only when they have something.
    let noisy = std::fs::read_dir(&logs).into_iter().flatten().flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0));
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

/// Pair-level figures.
struct Row<'a> {
    pair: &'a Pair,
    ok: usize,
    tries: usize,
    ttfm: Vec<f64>,
    res: &'a [TryResult],
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Opts,
    defs: &[NatDef],
    pairs: &[Pair],
    results: &[&Vec<TryResult>],
    elapsed: Duration,
    build_ms: u128,
    sites: usize,
    lab_counters: &BTreeMap<String, u64>,
    load_before: &str,
) -> String {
    let rows: Vec<Row> = pairs
        .iter()
        .zip(results)
        .map(|(p, r)| Row {
            pair: p,
            ok: r.iter().filter(|t| t.ok).count(),
            tries: r.len(),
            ttfm: r.iter().filter_map(|t| t.ok.then_some(t.ttfm_ms).flatten()).collect(),
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
         {} pairs x {} tries in {:.0} s, {} tries at once; lab ({} sites + a public rendezvous) up in {} ms.\n",
        o.command,
        date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        kernel(),
        pairs.len(),
        o.tries,
        elapsed.as_secs_f64(),
        o.concurrency,
        sites,
        build_ms
    );
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
         (CLOCK_MONOTONIC stamps of both nodes). A try succeeds when B gets the message. Profiles are given \
         (`--nat`, what detection reports for each NAT), not detected. Strategies are the table's \
         (`macula_nat_proto::strategy::choose`, `bench/strategy_table.md`); methods and errors are what \
         `connect_detailed` answered.\n",
        o.delay_ms,
        2.0 * o.delay_ms,
        o.timeout_ms
    );
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
    let _ = writeln!(w, "| strategy | pairs | tries | success | methods | time to first message median / p95 ms | failures |\n|---|---|---|---|---|---|---|");
    let summary = |w: &mut String, name: &str, sel: &[&Row]| {
        let tries: usize = sel.iter().map(|r| r.tries).sum();
        let ok: usize = sel.iter().map(|r| r.ok).sum();
        let t: Vec<f64> = sel.iter().flat_map(|r| r.ttfm.iter().copied()).collect();
        let all = sel.iter().flat_map(|r| r.res.iter());
        let methods = counts(all.clone().filter(|t| t.ok).filter_map(|t| t.method.as_deref()));
        let fails = counts(all.filter(|t| !t.ok).filter_map(|t| t.error.as_deref()));
        let _ = writeln!(
            w,
            "| {name} | {} | {tries} | {ok}/{tries} ({:.0}%) | {} | {} / {} | {} |",
            sel.len(),
            if tries > 0 { 100.0 * ok as f64 / tries as f64 } else { 0.0 },
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

    // Targets.
    let _ = writeln!(w, "\n## Targets (issue 6)\n");
    let nat = |r: &Row| (defs[r.pair.a].nat, defs[r.pair.b].nat);
    let trav: Vec<&Row> = rows.iter().filter(|r| natcracker_traversable(nat(r).0, nat(r).1)).collect();
    let trav_full = trav.iter().filter(|r| r.ok == r.tries && r.tries > 0).count();
    let trav_relayed: Vec<&&Row> = trav.iter().filter(|r| r.pair.strategy.is_relay()).collect();
    let trav_relayed_full = trav_relayed.iter().filter(|r| r.ok == r.tries).count();
    let trav_tries: usize = trav.iter().map(|r| r.tries).sum();
    let trav_ok: usize = trav.iter().map(|r| r.ok).sum();
    let missed: Vec<String> = trav
        .iter()
        .filter(|r| r.ok < r.tries && !r.pair.strategy.is_relay())
        .map(|r| format!("{} x {} ({}/{})", defs[r.pair.a].label, defs[r.pair.b].label, r.ok, r.tries))
        .collect();
    let met = |b: bool| if b { "**met**" } else { "**not met**" };
    // Failed tries as "strategy: error", to see at a glance what a miss is.
    let misses = |sel: &[&Row], failed: &dyn Fn(&TryResult) -> bool| {
        let m = counts(sel.iter().flat_map(|r| {
            r.res.iter().filter(|t| failed(t)).map(move |t| format!("{}: {}", r.pair.strategy.name(), t.error.as_deref().unwrap_or("slow")))
        }));
        if m.is_empty() { "none".to_string() } else { m }
    };
    let _ = writeln!(
        w,
        "1. Every pair NATCracker counts as traversable connects directly (direct or punched) in 100% of tries: \
         {}. {trav_full} of {} such pairs connected in every try ({trav_ok}/{trav_tries} tries). \
         {} of them are the strategy table's documented deviations to relay (a PD-mapping listener cannot \
         answer from the port the random side dialed, see `strategy.rs`), connected in every try: \
         {trav_relayed_full}. Failed tries by strategy: {}. Traversable pairs below 100% besides those deviations: {}.",
        met(!trav.is_empty() && trav_full == trav.len()),
        trav.len(),
        trav_relayed.len(),
        misses(&trav, &|t| !t.ok),
        if missed.is_empty() { "none".into() } else { missed.join(", ") }
    );
    let rvse: Vec<&Row> = rows.iter().filter(|r| random_vs_eim(nat(r).0, nat(r).1)).collect();
    let rvse_tries: usize = rvse.iter().map(|r| r.tries).sum();
    let in10 = |r: &Row| r.res.iter().filter(|t| t.ok && t.ttfm_ms.is_some_and(|x| x <= 10_000.0)).count();
    let rvse_ok: usize = rvse.iter().map(|r| in10(r)).sum();
    let rvse_hard: Vec<&&Row> = rvse.iter().filter(|r| hard(nat(r).0) || hard(nat(r).1)).collect();
    let hard_tries: usize = rvse_hard.iter().map(|r| r.tries).sum();
    let hard_ok: usize = rvse_hard.iter().map(|r| in10(r)).sum();
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
        misses(&rvse, &|t| !(t.ok && t.ttfm_ms.is_some_and(|x| x <= 10_000.0)))
    );
    let direct: Vec<f64> = rows.iter().flat_map(|r| r.ttfm.iter().copied()).collect();
    let med = pct(&direct, 0.5);
    let over: Vec<String> = rows
        .iter()
        .filter(|r| pct(&r.ttfm, 0.5).is_some_and(|m| m > bound))
        .map(|r| format!("{} x {}", defs[r.pair.a].label, defs[r.pair.b].label))
        .collect();
    let with_direct = rows.iter().filter(|r| !r.ttfm.is_empty()).count();
    let per_strategy: Vec<String> = order
        .iter()
        .filter_map(|n| {
            let t: Vec<f64> = rows.iter().filter(|r| r.pair.strategy.name() == *n).flat_map(|r| r.ttfm.iter().copied()).collect();
            pct(&t, 0.5).map(|m| format!("{n} {m:.0} ms"))
        })
        .collect();
    let _ = writeln!(
        w,
        "3. Direct time to first message at most 2 round trips + 100 ms at the median ({bound:.0} ms at a \
         {rtt:.0} ms round trip between the peers): {}. Median over all {} successful tries: {} ms; per \
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
        let mismatch = r
            .res
            .iter()
            .filter_map(|t| t.reported_strategy.as_deref())
            .find(|s| *s != r.pair.strategy.name())
            .map(|s| format!(" (reported {s}!)"))
            .unwrap_or_default();
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
