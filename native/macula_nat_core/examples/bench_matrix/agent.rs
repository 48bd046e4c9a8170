//! One `macula-connect agent` per lab site host, and one try between two.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use macula_nat_lab::Lab;
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::strategy::{choose, PeerNat, Strategy};

/// How long B may take to report the message after A reported success.
const MESSAGE_GRACE: Duration = Duration::from_secs(3);

/// A `macula-connect agent` in one lab host, driven by stdin lines.
pub(crate) struct Agent {
    pub(crate) site: String,
    /// The host name in the lab (the site's name, or one of its extra hosts).
    pub(crate) host: String,
    /// The public IP the rendezvous / observers must see this node at
    /// (`None`: not checked, e.g. behind a carrier whose address is not the site's).
    pub(crate) public_ip: Option<String>,
    /// What every `fresh` node detected (BEAM agents), in order.
    pub(crate) detections: Mutex<Vec<Detected>>,
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

    /// Opens a fresh node and joins; the node id and, from a BEAM agent,
    /// the profile it detected.
    pub(crate) fn joined(&self, deadline: Instant) -> Result<(String, Option<Detected>), String> {
        let v = self
            .wait(deadline, |v| matches!(v["event"].as_str(), Some("joined" | "join_failed")))
            .ok_or_else(|| "join_no_answer".to_string())?;
        if v["event"] == "join_failed" {
            return Err(format!("join_{}", v["error"].as_str().unwrap_or("?")));
        }
        // The rendezvous must see the NAT's public address: traffic really
        // crosses the NAT (a wrong lab would make every figure meaningless).
        let observed = v["observed"].as_str().unwrap_or("");
        if let Some(ip) = &self.public_ip {
            if !observed.starts_with(&format!("{ip}:")) {
                panic!("{}: observed {observed}, expected the NAT's public IP {ip}", self.host);
            }
        }
        if self.reserves && v["relays"].as_u64().unwrap_or(0) == 0 {
            return Err("no_reservation".into());
        }
        let det = Detected::from_json(&v);
        if let Some(d) = &det {
            self.detections.lock().unwrap().push(d.clone());
        }
        Ok((v["node_id"].as_str().unwrap_or("").to_string(), det))
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct TryResult {
    pub(crate) ok: bool,
    pub(crate) method: Option<String>,
    pub(crate) reported_strategy: Option<String>,
    /// The table's strategy for the two profiles the nodes detected (BEAM).
    pub(crate) detected_strategy: Option<Strategy>,
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
    let ((_a_id, a_det), (b_id, b_det)) = match (a_id, b_id) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let detected_strategy = match (&a_det, &b_det) {
        (Some(x), Some(y)) => Some(choose(&x.peer_nat(), &y.peer_nat())),
        _ => None,
    };
    let fail = |e: &str| TryResult { detected_strategy: detected_strategy.clone(), ..fail(e) };
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
        detected_strategy: detected_strategy.clone(),
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

/// An agent in lab host `host` of site `site`.
pub(crate) fn spawn_agent(
    lab: &Lab,
    site: &str,
    host: &str,
    public_ip: Option<String>,
    argv: &[String],
    env: &[(&str, String)],
    logs: &std::path::Path,
    reserves: bool,
) -> Agent {
    let (mut cmd, _ns) = lab.command(host, argv).expect("agent command");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A VM that crashes writes erl_crash.dump there, not into the checkout.
    cmd.current_dir(logs);
    let log = std::fs::File::create(logs.join(format!("{host}.log"))).expect("agent log");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn agent in {host}: {e}"));
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
        host: host.to_string(),
        public_ip,
        detections: Mutex::new(Vec::new()),
        stdin: Mutex::new(stdin),
        lines: Mutex::new(rx),
        child: Mutex::new(child),
        reserves,
    }
}

/// A profile a BEAM node detected, as its `joined` line reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Detected {
    pub(crate) nat: NatType,
    pub(crate) confidence: String,
    pub(crate) port_delta: Option<i32>,
    pub(crate) no_nat: bool,
}

impl Detected {
    fn from_json(v: &Value) -> Option<Detected> {
        let dep = |k: &str| v[k].as_str();
        let m = match dep("mapping")? {
            "ei" => Mapping::Ei,
            "hd" => Mapping::Hd,
            "pd" => Mapping::Pd,
            _ => return None,
        };
        let f = match dep("filtering")? {
            "ei" => Filtering::Ei,
            "hd" => Filtering::Hd,
            "pd" => Filtering::Pd,
            _ => return None,
        };
        let a = match dep("allocation")? {
            "pp" => Allocation::Pp,
            "pc" => Allocation::Pc,
            "rd" => Allocation::Rd,
            _ => return None,
        };
        Some(Detected {
            nat: NatType { mapping: m, allocation: a, filtering: f },
            confidence: v["confidence"].as_str().unwrap_or("?").to_string(),
            port_delta: v["port_delta"].as_i64().map(|d| d as i32),
            no_nat: v["no_nat"].as_bool().unwrap_or(false),
        })
    }

    /// As the node signals it (the table's input).
    pub(crate) fn peer_nat(&self) -> PeerNat {
        if self.no_nat {
            return PeerNat::public(self.nat.filtering);
        }
        PeerNat { nat: self.nat, public: false, port_delta: self.port_delta }
    }

    /// `public` or the lab's `mapping-filtering-allocation`, `:delta=N` for PC.
    pub(crate) fn code(&self) -> String {
        if self.no_nat {
            return format!("public ({} filtering)", format!("{:?}", self.nat.filtering).to_ascii_lowercase());
        }
        let c = crate::pairs::lab_code(self.nat);
        match (self.nat.allocation, self.port_delta) {
            (Allocation::Pc, Some(d)) if d != 1 => format!("{c}:delta={d}"),
            _ => c,
        }
    }
}
