//! Lab lifecycle: teardown on panic, reap after the owner died, several labs at
//! once, CLI exec/stats, binding timeout and hairpinning in the engine.

mod common;

use macula_nat_lab::{netns, Lab, LabSpec, SiteSpec};
use std::process::Command;
use std::time::Duration;

fn lab_namespaces(lab: &str) -> Vec<String> {
    let p = format!("ml-{lab}-");
    netns::list_netns().into_iter().filter(|n| n.starts_with(&p)).collect()
}

fn spec(name: &str) -> LabSpec {
    let mut s = LabSpec::new(name);
    s.public.push("pub".into());
    s.sites.push(SiteSpec::new("k", "kernel:port_restricted_cone").unwrap());
    s.sites.push(SiteSpec::new("u", "user:pd-pd-rd").unwrap());
    s
}

/// Send `n` probes from `from` (optionally bound to a local port) to `to`, and
/// count how many a sink on `sink_host`:`sink_port` received.
fn probe(lab: &Lab, from: &str, bind: Option<u16>, to: &str, sink_host: &str, sink_port: u16, n: u64) -> u64 {
    let sink = lab
        .spawn(
            sink_host,
            &[
                common::bin(),
                "probe-sink",
                "--bind",
                &format!("0.0.0.0:{sink_port}"),
                "--count",
                &n.to_string(),
                "--max-ms",
                "1500",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    send(lab, from, bind, to, n);
    let o = sink.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["received"].as_u64().unwrap()
}

fn send(lab: &Lab, from: &str, bind: Option<u16>, to: &str, n: u64) {
    let mut argv = vec![
        common::bin().to_string(),
        "probe-send".into(),
        "--to".into(),
        to.into(),
        "--count".into(),
        n.to_string(),
        "--rate".into(),
        "100".into(),
    ];
    if let Some(b) = bind {
        argv.push("--bind".into());
        argv.push(format!("0.0.0.0:{b}"));
    }
    let o = lab.exec(from, &argv).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn drop_tears_down_even_on_panic() {
    if !common::lab_ready(&[]) {
        return;
    }
    let r = std::panic::catch_unwind(|| {
        let _lab = Lab::up(spec("lcpanic")).unwrap();
        assert!(!lab_namespaces("lcpanic").is_empty());
        panic!("test failure inside a lab");
    });
    assert!(r.is_err());
    assert!(lab_namespaces("lcpanic").is_empty(), "left: {:?}", lab_namespaces("lcpanic"));
    assert!(!macula_nat_lab::lab::state_file("lcpanic").exists());
}

#[test]
fn cli_up_exec_stats_and_reap_after_owner_death() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut owner = Command::new("sleep").arg("60").spawn().unwrap();
    let json = serde_json::to_string(&spec("lcreap")).unwrap();
    let out = Command::new(common::bin())
        .args(["up", "--json", &json, "--owner", &owner.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["hosts"]["u"]["netns"], "ml-lcreap-u");
    assert_eq!(info["observers"], serde_json::json!({}));
    let engine_pid = info["sites"]["u"]["engine_pid"].as_u64().unwrap() as u32;
    assert!(netns::proc_alive(engine_pid, None));
    // exec passes stdout and exit code through
    let o = Command::new(common::bin())
        .args(["exec", "lcreap", "u", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("198.18.2.2/24"));
    let o = Command::new(common::bin()).args(["exec", "lcreap", "u", "--", "false"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    // stats is JSON for both router kinds
    for site in ["k", "u"] {
        let o = Command::new(common::bin()).args(["stats", "lcreap", site]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["packets_out"].is_u64());
    }
    // a lab owned by a live process survives reap
    let live = Lab::up(spec("lclive")).unwrap();
    let o = Command::new(common::bin()).arg("reap").output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("lcreap"));
    assert!(!lab_namespaces("lcreap").is_empty());
    // owner dies -> reap removes the lab, its namespaces and its engine
    owner.kill().unwrap();
    owner.wait().unwrap();
    let o = Command::new(common::bin()).arg("reap").output().unwrap();
    let removed: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(removed.contains(&"lcreap".to_string()), "{removed:?}");
    assert!(lab_namespaces("lcreap").is_empty());
    // Killed by reap; on a busy machine the kernel may take a moment to
    // finish the process off (and its new parent to collect it).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while netns::proc_alive(engine_pid, None) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!netns::proc_alive(engine_pid, None), "engine survived reap");
    assert!(!lab_namespaces("lclive").is_empty(), "live lab was reaped");
    drop(live);
    assert!(lab_namespaces("lclive").is_empty());
}

#[test]
fn two_labs_at_once_are_isolated() {
    if !common::lab_ready(&[]) {
        return;
    }
    let h1 = std::thread::spawn(|| Lab::up(spec("lcone")).unwrap());
    let h2 = std::thread::spawn(|| Lab::up(spec("lctwo")).unwrap());
    let (a, b) = (h1.join().unwrap(), h2.join().unwrap());
    // same addressing plan in both, no interference
    assert_eq!(a.host_addr("pub").unwrap(), b.host_addr("pub").unwrap());
    for lab in [&a, &b] {
        let pubip = lab.host_addr("pub").unwrap();
        let got = probe(lab, "u", None, &format!("{pubip}:9200"), "pub", 9200, 5);
        assert_eq!(got, 5, "lab {}", lab.name());
        let got = probe(lab, "k", None, &format!("{pubip}:9201"), "pub", 9201, 5);
        assert_eq!(got, 5, "lab {}", lab.name());
        let st = lab.router_stats("k").unwrap();
        assert!(st.packets_out >= 5, "{st:?}");
    }
}

#[test]
fn engine_binding_timeout_and_hairpin() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut s = LabSpec::new("lcbind");
    s.public.push("pub".into());
    let mut a = SiteSpec::new("a", "user:ei-ei-pp").unwrap();
    a.binding_timeout_s = Some(2);
    a.hairpin = true;
    let b = SiteSpec::new("b", "user:ei-ei-pp").unwrap();
    s.sites = vec![a, b];
    let lab = Lab::up(s).unwrap();
    let pubip = lab.host_addr("pub").unwrap();
    for site in ["a", "b"] {
        let p = lab.site(site).unwrap().public_ip;
        // open a binding for 40000 (PP keeps the port), then reach it from pub
        send(&lab, site, Some(40000), &format!("{pubip}:9300"), 1);
        let got = probe(&lab, "pub", None, &format!("{p}:40000"), site, 40000, 3);
        assert_eq!(got, 3, "inbound via binding on {site}");
        // hairpin: the site host reaches its own public endpoint
        send(&lab, site, Some(40000), &format!("{pubip}:9300"), 1);
        let got = probe(&lab, site, Some(40001), &format!("{p}:40000"), site, 40000, 3);
        std::thread::sleep(Duration::from_millis(300)); // engine rewrites stats every 100 ms
        let st = lab.router_stats(site).unwrap();
        if site == "a" {
            assert_eq!(got, 3, "hairpin on");
            assert_eq!(st.counters["hairpinned"], 3);
        } else {
            assert_eq!(got, 0, "hairpin off");
            assert_eq!(st.counters["dropped_hairpin"], 3);
        }
    }
    // binding timeout: 2 s idle on a -> inbound no longer passes
    let p = lab.site("a").unwrap().public_ip;
    send(&lab, "a", Some(40000), &format!("{pubip}:9300"), 1);
    std::thread::sleep(Duration::from_millis(3000));
    let before = lab.router_stats("a").unwrap().counters["dropped_no_binding"];
    let got = probe(&lab, "pub", None, &format!("{p}:40000"), "a", 40000, 3);
    assert_eq!(got, 0, "binding should have expired");
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.router_stats("a").unwrap();
    assert_eq!(after.counters["dropped_no_binding"] - before, 3, "{after:?}");
    assert!(after.counters["bindings_expired"] >= 1);
}

/// A state file this version cannot parse (another version of the lab wrote
/// it, e.g. a new host role) still protects its live owner's namespaces from
/// `reap`: only the owner's liveness decides.
#[test]
fn reap_spares_a_live_lab_whose_state_file_it_cannot_read() {
    if !common::lab_ready(&[]) {
        return;
    }
    let lab = Lab::up(spec("lcfuture")).unwrap();
    let path = macula_nat_lab::lab::state_file("lcfuture");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["hosts"]["pub"]["role"] = "from_the_future".into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(macula_nat_lab::lab::read_state("lcfuture").is_err());
    let removed = macula_nat_lab::reap(false);
    assert!(!removed.iter().any(|r| r.contains("lcfuture")), "reaped {removed:?}");
    assert_eq!(lab_namespaces("lcfuture").len(), lab.info.namespaces.len());
    lab.down().unwrap();
    assert!(lab_namespaces("lcfuture").is_empty());
}

/// The kernel's ARP table is shared by all namespaces; a big lab must not
/// overflow it (see `netns::neighbour_room`). Limits are raised to fit and
/// never lowered.
#[test]
fn neighbour_table_has_room_for_the_lab() {
    let read = |k: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/neigh/default/{k}")).unwrap().trim().parse().unwrap()
    };
    let before = read("gc_thresh3");
    netns::neighbour_room(70);
    assert!(read("gc_thresh3") >= 4 * 70 * 70, "gc_thresh3 {}", read("gc_thresh3"));
    assert!(read("gc_thresh2") >= 2 * 70 * 70);
    assert!(read("gc_thresh1") >= 70 * 70);
    // A smaller lab afterwards leaves the higher limits alone.
    netns::neighbour_room(2);
    assert!(read("gc_thresh3") >= before.max(4 * 70 * 70));
}
