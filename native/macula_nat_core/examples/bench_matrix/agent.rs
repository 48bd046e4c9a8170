//! One `macula-connect agent` per lab site host, and one try between two.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use macula_nat_lab::Lab;

/// How long B may take to report the message after A reported success.
const MESSAGE_GRACE: Duration = Duration::from_secs(3);

/// A `macula-connect agent` in one lab host, driven by stdin lines.
pub(crate) struct Agent {
    pub(crate) site: String,
    pub(crate) public_ip: String,
    pub(crate) stdin: Mutex<ChildStdin>,
    pub(crate) lines: Mutex<Receiver<String>>,
    pub(crate) child: Mutex<Child>,
    /// Whether each fresh node must hold a relay reservation.
    pub(crate) reserves: bool,
}

impl Agent {
    pub(crate) fn send(&self, cmd: &str) -> bool {
        let mut s = self.stdin.lock().unwrap();
        writeln!(s, "{cmd}").and_then(|_| s.flush()).is_ok()
    }

    /// The next line whose JSON satisfies `want`, before `deadline`; other
    /// lines (left over from earlier tries) are skipped.
    pub(crate) fn wait(&self, deadline: Instant, want: impl Fn(&Value) -> bool) -> Option<Value> {
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
    pub(crate) fn exited(&self) -> Option<String> {
        match self.child.lock().unwrap().try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Opens a fresh node and joins; the node id.
    pub(crate) fn joined(&self, deadline: Instant) -> Result<String, String> {
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
        if self.reserves && v["relays"].as_u64().unwrap_or(0) == 0 {
            return Err("no_reservation".into());
        }
        Ok(v["node_id"].as_str().unwrap_or("").to_string())
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TryResult {
    pub(crate) ok: bool,
    pub(crate) method: Option<String>,
    pub(crate) reported_strategy: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) ttfm_ms: Option<f64>,
    pub(crate) connect_ms: Option<f64>,
}

pub(crate) fn fail(e: impl Into<String>) -> TryResult {
    TryResult { error: Some(e.into()), ..Default::default() }
}

pub(crate) fn run_try(a: &Agent, b: &Agent, tag: &str, timeout: Duration) -> TryResult {
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

pub(crate) fn spawn_agent(lab: &Lab, site: &str, argv: &[String], logs: &std::path::Path, reserves: bool) -> Agent {
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
        reserves,
    }
}
