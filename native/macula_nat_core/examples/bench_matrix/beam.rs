//! BEAM agents (`--agent beam`, the default): Erlang VMs in the lab hosts
//! running `test/lab/macula_lab_matrix_agent.erl`, which speaks the line
//! protocol of `macula-connect agent`. Each VM is configured through the
//! application environment only (a sys.config written here: `observers`,
//! `rendezvous`, `relays`, `detection_timeout_ms`, `listen_port` where a
//! variant needs one) and detects its NAT through the lab's two observers;
//! the rendezvous is such a VM too (`rendezvous_server`, relay enabled).

use crate::Opts;
use macula_nat_lab::Lab;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The lab's RFC 5780 observers (two IPs each).
pub(crate) const OBSERVERS: [&str; 2] = ["obs1", "obs2"];
const OBS_PORT: u16 = 3478;
const OBS_ALT_PORT: u16 = 3479;
/// The detector's network budget (as test/lab/lab_connect.escript: 70 VMs
/// on 2 cores).
const DETECTION_TIMEOUT_MS: u64 = 3000;

fn erl() -> String {
    std::env::var("ERL").unwrap_or_else(|_| {
        std::process::Command::new("sh")
            .args(["-c", "command -v erl"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "erl".into())
    })
}

/// The command line of a lean VM (about 70 share 2 cores) running the agent
/// with `config`; the protocol on fds 3/4, the VM's own stdout on stderr.
fn vm_argv(o: &Opts, config: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["/bin/sh", "-c", "exec \"$@\" 3<&0 4>&1 0</dev/null 1>&2", "sh"].iter().map(|x| x.to_string()).collect();
    v.push(erl());
    for a in [
        "-noinput", "+S", "1:1", "+SDcpu", "1:1", "+SDio", "1", "+A", "1", "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none",
    ] {
        v.push(a.into());
    }
    for p in &o.beam_paths {
        v.push("-pa".into());
        v.push(p.clone());
    }
    v.push("-config".into());
    v.push(config.to_string_lossy().into_owned());
    v.extend(["-s", "macula_lab_matrix_agent", "main"].iter().map(|x| x.to_string()));
    if !extra.is_empty() {
        v.push("-extra".into());
        v.extend(extra.iter().map(|x| x.to_string()));
    }
    v
}

/// Starts `macula-observer` on every observer host.
pub(crate) fn start_observers(lab: &Lab, logs: &Path) -> Result<Vec<Child>, String> {
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("macula-observer");
    let mut v = Vec::new();
    for name in OBSERVERS {
        let [ip1, ip2] = lab.info.observers[name];
        let argv: Vec<String> = [
            bin.to_string_lossy().into_owned(),
            "--primary".into(),
            format!("{ip1}:{OBS_PORT}"),
            "--alternate".into(),
            format!("{ip2}:{OBS_ALT_PORT}"),
        ]
        .to_vec();
        let (mut cmd, _ns) = lab.command(name, &argv).map_err(|e| format!("observer {name}: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(logs.join(format!("{name}.log"))).expect("log"));
        let mut c = cmd.spawn().map_err(|e| format!("observer {name}: {e}"))?;
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        if !first.starts_with("macula-observer") {
            let _ = c.kill();
            return Err(format!("observer {name} did not start: {first:?}"));
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        v.push(c);
    }
    Ok(v)
}

/// The rendezvous VM (also the relay): the process and its node id (hex).
pub(crate) fn start_rendezvous(o: &Opts, lab: &Lab, ip: &str, port: u16, logs: &Path) -> Result<(Child, String), String> {
    let ip_t = ip.replace('.', ",");
    let cfg = format!("[{{macula_nat, [{{rendezvous_server, true}}, {{listen_ip, {{{ip_t}}}}}, {{listen_port, {port}}}]}}].\n");
    let path = logs.join("rdv.config");
    std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
    let argv = vm_argv(o, &path, &["rendezvous"]);
    let (mut cmd, _ns) = lab.command("rdv", &argv).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(std::fs::File::create(logs.join("rdv.log")).expect("log"));
    cmd.current_dir(logs);
    let mut c = cmd.spawn().map_err(|e| format!("rendezvous VM: {e}"))?;
    let out = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(l) = rx.recv_timeout(left) else { break };
        if let Some(id) = serde_json::from_str::<Value>(&l).ok().and_then(|v| v["node_id"].as_str().map(String::from)) {
            // Keep draining (a closed pipe would fail the VM's next print).
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ok((c, id));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
    Err(format!("the rendezvous VM did not start (log: {})", logs.join("rdv.log").display()))
}

/// Writes a node's sys.config: the observers, the rendezvous (and relay),
/// and `listen_port` when given. The path.
pub(crate) fn node_config(lab: &Lab, rdv_addr: &str, rdv_id: &str, relay: bool, listen_port: Option<u16>, logs: &Path) -> PathBuf {
    let id: Vec<String> = (0..rdv_id.len() / 2).map(|i| u8::from_str_radix(&rdv_id[2 * i..2 * i + 2], 16).unwrap().to_string()).collect();
    let id = format!("<<{}>>", id.join(","));
    let observers: Vec<String> = OBSERVERS.iter().map(|n| format!("<<\"{}:{OBS_PORT}\">>", lab.info.observers[*n][0])).collect();
    let mut env = vec![
        format!("{{observers, [{}]}}", observers.join(", ")),
        format!("{{rendezvous, [#{{endpoint => <<\"{rdv_addr}\">>, node_id => {id}}}]}}"),
        format!("{{detection_timeout_ms, {DETECTION_TIMEOUT_MS}}}"),
    ];
    if relay {
        env.push(format!("{{relays, [#{{node_id => {id}, endpoint => <<\"{rdv_addr}\">>}}]}}"));
    }
    if let Some(p) = listen_port {
        env.push(format!("{{listen_port, {p}}}"));
    }
    let name = match listen_port {
        Some(p) => format!("node_port{p}.config"),
        None => "node.config".into(),
    };
    let path = logs.join(name);
    // The logger at warning: each `fresh` stops the application, which
    // would log a notice every time.
    std::fs::write(&path, format!("[{{kernel, [{{logger_level, warning}}]}},\n {{macula_nat, [\n  {}\n]}}].\n", env.join(",\n  ")))
        .expect("write sys.config");
    path
}

/// The agent's command line and environment (the connect timeout).
pub(crate) fn agent_argv(o: &Opts, config: &Path, _variant: bool) -> (Vec<String>, Vec<(&'static str, String)>) {
    (vm_argv(o, config, &[]), vec![("MACULA_MATRIX_TIMEOUT_MS", o.timeout_ms.to_string())])
}
