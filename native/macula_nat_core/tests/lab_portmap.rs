//! Port mapping against miniupnpd (Debian's, nftables backend) on a lab
//! router, for UPnP IGD, NAT-PMP and PCP in turn: a node behind the
//! router (kernel port-restricted cone) gets a mapping (the router's
//! miniupnpd chain gains the DNAT rule), a peer behind a kernel symmetric
//! NAT connects `direct` to it, and once the node closes the rule is gone.
//! The PCP run is granted a 4 s lifetime (miniupnpd's min/max_lifetime)
//! and checks the mapping outlives it, renewed at half the lifetime.
//! A control run without port mapping shows what the pair needs
//! otherwise: birthday probing (measured: ~2.9 s, ~550 probes filtered at
//! the router), never `direct`.
//!
//! The listener is this test binary itself, run inside the lab host with
//! `MACULA_PORTMAP_CHILD` set (see [`portmap_child_listener`]): it uses the
//! core API (`Node`, `PortMapper`, `Signal`), no extra binary.
//!
//! miniupnpd 2.3.1 refuses to forward when the WAN interface's address is
//! reserved ("Reserved / private IP address 203.0.113.11 on ext interface
//! wan: Port forwarding is impossible"; `ext_ip=` with such an address is a
//! config error), and the lab's internet is 203.0.113.0/24 (TEST-NET-3).
//! The test therefore puts an extra, non-reserved address (11.0.113.1/32,
//! never routed: the router namespace has no route to anything outside the
//! lab) first on the router's `wan`: miniupnpd takes it as its external
//! address and reports it to clients, the lab keeps routing 203.0.113.x.
//! The node's signalled public address then names 11.0.113.1 (the peer
//! dials the rendezvous-observed 203.0.113.x address at the mapped port,
//! which masquerade keeps as the socket's own port).

mod common;
use macula_nat_core::portmap::{PortMapConfig, PortMapper, Protocol};
use macula_nat_core::{runtime, Identity, Node, NodeConfig, Signal, SignalConfig};
use macula_nat_lab::{Lab, LabSpec, SiteSpec};
use macula_nat_proto::connect::profile_of;
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{field, lines};

const RDV_PORT: u16 = 4433;
const CHILD_ENV: &str = "MACULA_PORTMAP_CHILD";
/// The router's extra WAN address miniupnpd reports (see the module docs).
const EXT_IP: &str = "11.0.113.1";

fn ready() -> bool {
    common::ready(env!("CARGO_BIN_EXE_macula-connect"))
}

/// The first line with `"event":"<event>"` within `max`.
fn wait_event(rx: &mpsc::Receiver<String>, event: &str, max: Duration) -> Option<String> {
    let until = Instant::now() + max;
    let pat = format!("\"event\":\"{event}\"");
    // "mapped" also stops at "not_mapped" (the listener goes on to join).
    let or_not = format!("\"event\":\"not_{event}\"");
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(&pat) || l.contains(&or_not) => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// The listener inside the lab (only with `MACULA_PORTMAP_CHILD` =
/// "PROTOCOL|none RDV_ADDR RDV_ID_HEX"; a no-op otherwise): opens a node,
/// maps its port with that one protocol, joins the rendezvous as a
/// port-restricted cone (what the router is), echoes what peers send;
/// "close" on stdin closes the node and waits for the mapper to delete.
#[test]
fn portmap_child_listener() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let w: Vec<&str> = spec.split_whitespace().collect();
    let proto = Protocol::parse(w[0]);
    let rdv = w[1].parse().unwrap();
    let rdv_id = macula_nat_core::NodeId::from_hex(w[2]).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines().map_while(Result::ok) {
            if l.trim() == "close" {
                let _ = tx.send(());
                return;
            }
        }
    });
    runtime::handle().block_on(async move {
        let node = Node::open(NodeConfig { bind: "0.0.0.0:0".parse().unwrap() }, Identity::generate()).unwrap();
        let port = node.local_addr().unwrap().port();
        let pm = proto.map(|p| PortMapper::start(&node, PortMapConfig { protocols: vec![p], retry: Duration::from_secs(2) }));
        if let Some(pm) = &pm {
            let t0 = Instant::now();
            while pm.mapped().is_none() && t0.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match pm.mapped() {
                Some(m) => println!(
                    "{{\"event\":\"mapped\",\"protocol\":\"{}\",\"external\":\"{}\",\"port\":{port},\"lifetime_s\":{},\"map_ms\":{:.1}}}",
                    m.protocol.name(),
                    m.external,
                    m.lifetime_s,
                    t0.elapsed().as_secs_f64() * 1000.0
                ),
                None => println!("{{\"event\":\"not_mapped\",\"port\":{port}}}"),
            }
        }
        let profile = profile_of(NatType { mapping: Mapping::Ei, filtering: Filtering::Pd, allocation: Allocation::Pp }, None, false);
        let signal = Signal::join_with(node.clone(), rdv, rdv_id, SignalConfig::new(profile)).await.unwrap();
        let id = node.node_id().to_hex();
        println!("{{\"event\":\"joined\",\"node_id\":\"{id}\",\"port\":{port}}}");
        let accepting = runtime::spawn(async move {
            while let Some(c) = signal.accept().await {
                println!("{{\"event\":\"accepted\",\"remote\":\"{}\"}}", c.remote_address());
                runtime::spawn(async move {
                    while let Some(m) = c.recv().await {
                        if c.send(m).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let _ = rx.await;
        accepting.abort();
        // What an owner's death does too (the NIF closes the node).
        let t0 = Instant::now();
        node.close();
        let ended = match &pm {
            Some(pm) => pm.wait(Duration::from_secs(10)).await,
            None => true,
        };
        println!("{{\"event\":\"closed\",\"mapper_ended\":{ended},\"delete_ms\":{:.1}}}", t0.elapsed().as_secs_f64() * 1000.0);
    });
}

/// Runs `sh -c script` in `host`; its stdout.
fn sh(lab: &Lab, host: &str, script: &str) -> String {
    let out = lab.exec(host, &["sh", "-c", script]).expect("exec");
    assert!(out.status.success(), "{host}: {script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The miniupnpd DNAT rules on the router.
fn upnp_rules(lab: &Lab) -> String {
    sh(lab, "pm-nat", "nft list chain inet filter prerouting_miniupnpd")
}

const TABLES: &str = "table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
";

/// `pcp_lifetime`: PCP lifetimes are clamped to [min_lifetime,
/// max_lifetime]; a short one makes the renewal happen during the run.
fn miniupnpd_conf(upnp: bool, natpmp: bool, pcp_lifetime: Option<u32>, dir: &str) -> String {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let lifetime = pcp_lifetime.map_or(String::new(), |l| format!("min_lifetime={}\nmax_lifetime={l}\n", l / 2));
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\nenable_upnp={}\nenable_natpmp={}\nsecure_mode=yes\nsystem_uptime=yes\n\
         ipv6_disable=yes\nlease_file={dir}/leases\nuuid=3f5d3a66-1c4b-4b53-9a3e-6d1f2a0c7e01\n{lifetime}\
         allow 1024-65535 198.18.0.0/15 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        yn(upnp),
        yn(natpmp)
    )
}

/// The PCP run's granted lifetime: renewed at half of it, 2 s in.
const PCP_LIFETIME_S: u32 = 4;

#[test]
fn miniupnpd_maps_for_upnp_natpmp_and_pcp() {
    if std::env::var(CHILD_ENV).is_ok() || !ready() {
        return;
    }
    if std::process::Command::new("miniupnpd").arg("--version").output().is_err() {
        eprintln!("SKIPPED: miniupnpd is not installed (apt-get install miniupnpd)");
        return;
    }
    let mut spec = LabSpec::new("pmap");
    spec.public.push("rdv".into());
    spec.sites.push(SiteSpec::new("pm", "kernel:port_restricted_cone").unwrap());
    spec.sites.push(SiteSpec::new("sy", "kernel:symmetric").unwrap());
    let lab = Lab::up(spec).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let wan_ip = lab.site("pm").unwrap().public_ip.to_string();
    // The extra WAN address first (see the module docs), then miniupnpd's
    // nftables chains (what Debian's nft_init.sh makes, with an accepting
    // forward chain: the lab's own `forward_f` admits DNATed traffic).
    sh(&lab, "pm-nat", &format!("ip addr del {wan_ip}/24 dev wan && ip addr add {EXT_IP}/32 dev wan && ip addr add {wan_ip}/24 dev wan"));
    let dir = format!("/run/macula-lab/pmap-miniupnpd-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/tables.nft"), TABLES).unwrap();
    sh(&lab, "pm-nat", &format!("nft -f {dir}/tables.nft"));

    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:{RDV_PORT}");
    let mut rdv = lab.spawn("rdv", &[bin, "rendezvous", "--bind", &rdv_addr]).expect("rendezvous");
    let rdv_id = field(&wait_event(&lines(&mut rdv), "ready", Duration::from_secs(5)).expect("rendezvous ready"), "node_id").unwrap();

    let me = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    let mut failures = Vec::new();
    let mut table = String::from("| protocol | mapped | map ms | strategy | method | connect ms | rule removed after close, ms |\n|---|---|---|---|---|---|---|\n");
    // (client protocol, miniupnpd: enable_upnp, enable_natpmp (NAT-PMP and PCP))
    let runs: [(&str, bool, bool); 4] = [("upnp", true, false), ("natpmp", false, true), ("pcp", false, true), ("none", true, true)];
    for (proto, upnp, natpmp) in runs {
        let _ = std::fs::remove_file(format!("{dir}/leases"));
        let pcp_lifetime = (proto == "pcp").then_some(PCP_LIFETIME_S);
        std::fs::write(format!("{dir}/miniupnpd.conf"), miniupnpd_conf(upnp, natpmp, pcp_lifetime, &dir)).unwrap();
        let mut mu = lab.spawn("pm-nat", &["miniupnpd", "-d", "-f", &format!("{dir}/miniupnpd.conf"), "-P", &format!("{dir}/miniupnpd.pid")]).expect("miniupnpd");
        let mu_err = mu.stderr.take().unwrap();
        let mu_log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(mu_err), &mut s);
            s
        });
        std::thread::sleep(Duration::from_millis(500));

        let argv = vec![me.clone(), "portmap_child_listener".into(), "--exact".into(), "--nocapture".into(), "--test-threads=1".into()];
        let (mut cmd, _f) = lab.command("pm", &argv).unwrap();
        cmd.env(CHILD_ENV, format!("{proto} {rdv_addr} {rdv_id}")).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("listener");
        let out = lines(&mut child);
        let mut row = format!("| {proto} ");
        let mut mapped_port = None;
        if proto != "none" {
            match wait_event(&out, "mapped", Duration::from_secs(20)).filter(|l| !l.contains("not_mapped")) {
                Some(l) => {
                    let ext = field(&l, "external").unwrap();
                    let port = field(&l, "port").unwrap();
                    row += &format!("| {ext} (socket port {port}) | {} ", field(&l, "map_ms").unwrap());
                    if field(&l, "protocol").as_deref() != Some(proto) {
                        failures.push(format!("{proto}: mapped by {l}"));
                    }
                    mapped_port = ext.rsplit(':').next().map(str::to_string);
                    let rules = upnp_rules(&lab);
                    let dport = format!("dport {}", mapped_port.as_deref().unwrap());
                    if !rules.lines().any(|r| r.contains(&dport) && r.contains("dnat")) {
                        failures.push(format!("{proto}: no DNAT rule for {dport} on the router:\n{rules}"));
                    }
                }
                None => {
                    failures.push(format!("{proto}: no mapping"));
                    row += "| none | - ";
                }
            }
        } else {
            row += "| (port mapping off) | - ";
        }
        let joined = wait_event(&out, "joined", Duration::from_secs(10)).expect("listener joined");
        let id = field(&joined, "node_id").unwrap();
        let before = lab.router_stats("pm").ok();
        let argv = [bin, "connect", &id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "pd-pd-rd", "--timeout-ms", "6000"];
        let o = lab.exec_timeout("sy", &argv, Duration::from_secs(15)).expect("connect");
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let after = lab.router_stats("pm").ok();
        eprintln!("{proto}: connect: {line}; router pm before {before:?} after {after:?}");
        let (ok, method, strategy) = (field(&line, "ok"), field(&line, "method"), field(&line, "strategy"));
        row += &format!(
            "| {} | {} | {} ",
            strategy.as_deref().unwrap_or("-"),
            if ok.as_deref() == Some("true") { method.as_deref().unwrap_or("-") } else { "failed" },
            field(&line, "connect_ms").unwrap_or_default()
        );
        if proto == "none" {
            if ok.as_deref() == Some("true") && method.as_deref() == Some("direct") {
                failures.push(format!("control: direct without port mapping? {line}"));
            }
        } else if ok.as_deref() != Some("true") || method.as_deref() != Some("direct") || strategy.as_deref() != Some("direct") {
            failures.push(format!("{proto}: expected a direct connect, got {line}"));
        }

        if pcp_lifetime.is_some() {
            // Past the renewal (half the lifetime) and the lifetime itself:
            // the rule must still be there, renewed.
            std::thread::sleep(Duration::from_millis(PCP_LIFETIME_S as u64 * 1000 + 1500));
            let p = mapped_port.as_deref().unwrap_or("?");
            if !upnp_rules(&lab).lines().any(|r| r.contains(&format!("dport {p}"))) {
                failures.push(format!("pcp: mapping of {p} gone after its {PCP_LIFETIME_S} s lifetime (not renewed)"));
            }
        }
        // Close the node; the rule must go.
        let t0 = Instant::now();
        let _ = writeln!(child.stdin.as_mut().unwrap(), "close");
        let closed = wait_event(&out, "closed", Duration::from_secs(15));
        let mut removed_ms = None;
        if let Some(p) = &mapped_port {
            let dport = format!("dport {p}");
            while t0.elapsed() < Duration::from_secs(10) {
                if !upnp_rules(&lab).lines().any(|r| r.contains(&dport)) {
                    removed_ms = Some(t0.elapsed().as_millis());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if removed_ms.is_none() {
                failures.push(format!("{proto}: rule for {dport} still there 10 s after close ({closed:?}):\n{}", upnp_rules(&lab)));
            }
        }
        row += &format!("| {} |\n", removed_ms.map_or("-".to_string(), |m| m.to_string()));
        table += &row;
        let _ = child.kill();
        let _ = child.wait();
        let _ = mu.kill();
        let _ = mu.wait();
        let log = mu_log.join().unwrap_or_default();
        eprintln!("--- miniupnpd ({proto}) ---\n{log}");
        if pcp_lifetime.is_some() {
            // Map, at least two renewals (at 2 s and 4 s), delete.
            let requests = log.matches("PCP request received").count();
            eprintln!("pcp: {requests} PCP requests in {:?} (lifetime {PCP_LIFETIME_S} s)", t0.elapsed());
            if requests < 4 {
                failures.push(format!("pcp: {requests} PCP requests, expected map + renewals + delete"));
            }
        }
        sh(&lab, "pm-nat", "nft flush chain inet filter prerouting_miniupnpd; nft flush chain inet filter postrouting_miniupnpd; nft flush chain inet filter miniupnpd");
    }
    let _ = rdv.kill();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
