//! coturn's RFC 5780 client (turnutils_natdiscovery) behind every NAT kind,
//! against coturn's turnserver on an observer host: the reported mapping and
//! filtering behaviour must equal the configured one.

mod common;

use macula_nat_lab::{Dep, KernelNat, Lab, LabSpec, NatKind, SiteSpec};
use std::time::{Duration, Instant};

fn parse_behaviour(out: &str, what: &str) -> Option<Dep> {
    match macula_nat_lab::natdiscovery::behaviour(out, what)? {
        "ei" => Some(Dep::Ei),
        "hd" => Some(Dep::Hd),
        _ => Some(Dep::Pd),
    }
}

/// (local port, reflexive port) pairs in output order.
fn port_pairs(out: &str) -> Vec<(u16, u16)> {
    let port = |l: &str| l.trim().rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
    let mut refl = None;
    let mut v = vec![];
    for l in out.lines() {
        if l.contains("UDP reflexive addr:") {
            refl = port(l);
        } else if l.contains("Local addr:") {
            if let (Some(r), Some(lp)) = (refl.take(), port(l)) {
                v.push((lp, r));
            }
        }
    }
    v
}

/// Check the port allocation policy from the mapped ports natdiscovery saw.
fn check_allocation(k: &NatKind, out: &str) -> Result<(), String> {
    let pairs = port_pairs(out);
    if pairs.len() < 3 {
        return Err(format!("too few responses parsed: {pairs:?}"));
    }
    let mut distinct: Vec<u16> = vec![];
    for (_, r) in &pairs {
        if !distinct.contains(r) {
            distinct.push(*r);
        }
    }
    let (lp, rp) = pairs[0];
    match k {
        NatKind::User(u) => match u.allocation {
            macula_nat_lab::Alloc::Pp if rp != lp => Err(format!("PP: local {lp} mapped to {rp}")),
            macula_nat_lab::Alloc::Rd if rp == lp => Err(format!("RD: port {lp} preserved")),
            macula_nat_lab::Alloc::Pc => {
                for w in distinct.windows(2) {
                    if w[1] != w[0].wrapping_add(u.delta) {
                        return Err(format!("PC delta {}: ports {distinct:?}", u.delta));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        },
        NatKind::Kernel(KernelNat::Symmetric) => Ok(()),
        _ if rp != lp => Err(format!("port not preserved: {lp} -> {rp}")),
        _ => Ok(()),
    }
}

fn expected(k: &NatKind) -> (Dep, Dep) {
    match k {
        NatKind::None => (Dep::Ei, Dep::Ei),
        NatKind::Kernel(k) => k.behaviour(),
        NatKind::User(u) => (u.mapping, u.filtering),
    }
}

fn name(d: Option<Dep>) -> &'static str {
    match d {
        Some(Dep::Ei) => "EI",
        Some(Dep::Hd) => "AD",
        Some(Dep::Pd) => "APD",
        None => "??",
    }
}

#[test]
fn natdiscovery_reports_configured_behaviour_for_every_kind() {
    if !common::lab_ready(&["turnserver", "turnutils_natdiscovery"]) {
        return;
    }
    let mut spec = LabSpec::new("coturn");
    spec.observers.push("obs".into());
    spec.seed = Some(42);
    let mut kinds: Vec<NatKind> = KernelNat::ALL.iter().map(|k| NatKind::Kernel(*k)).collect();
    kinds.extend(NatKind::all_user(2));
    kinds.push(NatKind::None);
    for (i, k) in kinds.iter().enumerate() {
        spec.sites.push(SiteSpec { nat: *k, ..SiteSpec::new(&format!("s{i}"), "none").unwrap() });
    }
    // a public host behind the pass-through engine (delay only)
    let mut pt = SiteSpec::new("pt", "none").unwrap();
    pt.delay_ms = 5.0;
    spec.sites.push(pt);
    kinds.push(NatKind::None);

    let t0 = Instant::now();
    let lab = Lab::up(spec).expect("lab up");
    eprintln!("lab with {} sites up in {:?}", kinds.len(), t0.elapsed());
    let [ip1, ip2] = lab.info.observers["obs"];
    let argv: Vec<String> = [
        "turnserver", "-L", &ip1.to_string(), "-L", &ip2.to_string(), "--no-auth", "--no-tls",
        "--no-dtls", "--no-cli", "-n", "--log-file", "stdout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut c, _nsfd) = lab.command("obs", &argv).unwrap();
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut ts = c.spawn().expect("turnserver");
    // wait until the server answers (bounded)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = lab
            .exec_timeout("pt", &["turnutils_natdiscovery", "-m", &ip1.to_string()], Duration::from_secs(5))
            .unwrap();
        if parse_behaviour(&String::from_utf8_lossy(&o.stdout), "mapping").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "turnserver never answered");
        std::thread::sleep(Duration::from_millis(200));
    }

    let sites: Vec<String> = (0..kinds.len() - 1).map(|i| format!("s{i}")).chain(["pt".to_string()]).collect();
    // all sites at once, bounded by a timeout each
    let t1 = Instant::now();
    let handles: Vec<_> = sites
        .iter()
        .map(|s| {
            let ch = lab
                .spawn(s, &["turnutils_natdiscovery", "-m", "-f", &ip1.to_string()])
                .expect("spawn natdiscovery");
            (s.clone(), ch)
        })
        .collect();
    let mut outputs = vec![];
    for (s, mut ch) in handles {
        let t = Instant::now();
        while ch.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ch.kill();
        let o = ch.wait_with_output().unwrap();
        outputs.push((s, String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)));
    }
    eprintln!("natdiscovery on {} sites took {:?}", sites.len(), t1.elapsed());

    let mut failures = vec![];
    println!("| site | nat kind | expected mapping/filtering | natdiscovery says | router out/in/filtered |");
    println!("|---|---|---|---|---|");
    for ((s, out), k) in outputs.iter().zip(&kinds) {
        let m = parse_behaviour(out, "mapping");
        let f = parse_behaviour(out, "filtering");
        let (em, ef) = expected(k);
        let st = lab.router_stats(s).unwrap();
        println!(
            "| {s} | {k} | {}/{} | {}/{} | {}/{}/{} |",
            name(Some(em)),
            name(Some(ef)),
            name(m),
            name(f),
            st.packets_out,
            st.packets_in,
            st.dropped_filtered
        );
        if m != Some(em) || f != Some(ef) {
            failures.push(format!("{s} ({k}): got {}/{}\n{out}", name(m), name(f)));
        }
        if let Err(e) = check_allocation(k, out) {
            failures.push(format!("{s} ({k}): allocation: {e}\n{out}"));
        }
        if matches!(k, NatKind::Kernel(_) | NatKind::User(_)) {
            if st.packets_out == 0 || st.packets_in == 0 {
                failures.push(format!("{s} ({k}): router counters did not move: {st:?}"));
            }
            // a filtering NAT must have dropped the change-IP (and change-port) responses
            if ef != Dep::Ei && st.dropped_filtered == 0 {
                failures.push(format!("{s} ({k}): no filtered drops counted: {st:?}"));
            }
        }
    }
    let _ = ts.kill();
    let _ = ts.wait();
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    lab.down().unwrap();
}
