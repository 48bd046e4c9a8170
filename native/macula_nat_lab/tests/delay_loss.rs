//! The userspace engine's one-way delay, jitter and loss, measured with bounded
//! UDP probe streams between lab hosts (timestamps share CLOCK_REALTIME).

mod common;

use macula_nat_lab::probe::SinkReport;
use macula_nat_lab::{Lab, LabSpec, SiteSpec};
use std::time::Duration;

const COUNT: u64 = 20_000;
const RATE: u64 = 4_000;

/// Start a probe sink on `to_host`:`port`.
fn sink(lab: &Lab, to_host: &str, port: u16) -> std::process::Child {
    lab.spawn(
        to_host,
        &[
            common::bin(),
            "probe-sink",
            "--bind",
            &format!("0.0.0.0:{port}"),
            "--count",
            &COUNT.to_string(),
            "--idle-ms",
            "3000",
            "--max-ms",
            "30000",
        ],
    )
    .unwrap()
}

fn send(lab: &Lab, from_host: &str, to: &str) -> std::process::Child {
    lab.spawn(
        from_host,
        &[
            common::bin(),
            "probe-send",
            "--to",
            to,
            "--count",
            &COUNT.to_string(),
            "--rate",
            &RATE.to_string(),
        ],
    )
    .unwrap()
}

fn report(ch: std::process::Child) -> SinkReport {
    let o = ch.wait_with_output().unwrap();
    assert!(o.status.success(), "sink failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn within(what: &str, got: f64, want: f64, rel: f64) {
    let err = (got - want).abs() / want;
    println!("{what}: measured {got:.4}, configured {want:.4}, error {:.1}%", err * 100.0);
    assert!(err <= rel, "{what}: measured {got} vs configured {want} (> {:.0}% off)", rel * 100.0);
}

/// A fixed one-way delay: nothing arrives sooner than the setting, the
/// fastest datagrams arrive within 10 % of it, and the median within 25 %.
/// The mean is printed, not checked: on a loaded 2-core machine the
/// scheduler holds some datagrams up (a CI run with builds beside it saw a
/// 63 ms mean for a 40 ms hop whose datagrams were all at least 40 ms late),
/// which says nothing about the hop.
fn fixed_delay(what: &str, r: &SinkReport, want: f64) {
    println!("{what}: mean {:.2} ms", r.delay_ms_mean);
    assert!(r.delay_ms_min >= want - 0.5, "{what}: a datagram arrived after {} ms, sooner than the {want} ms set", r.delay_ms_min);
    within(&format!("{what} (fastest)"), r.delay_ms_min, want, 0.10);
    within(&format!("{what} (median)"), r.delay_ms_p50, want, 0.25);
}

/// Runs a measurement, and once more if it was off: a stream measured
/// while the 2 cores are starved says nothing about the engine (a suite
/// run beside three builds and lab tests saw 27 % of datagrams lost in
/// the sink's socket buffer for 5 % set, and a 40 ms hop's fastest
/// datagram at 112 ms). Both tries off fails; the lab is torn down by its
/// drop either way.
fn measured(f: fn()) {
    if std::panic::catch_unwind(f).is_err() {
        println!("first measurement off (see above); measuring again");
        f();
    }
}

#[test]
fn delay_jitter_and_loss_match_the_setting() {
    if !common::lab_ready(&[]) {
        return;
    }
    measured(delay_jitter_and_loss);
}

fn delay_jitter_and_loss() {
    let mut spec = LabSpec::new("dl");
    spec.public.push("pub".into());
    spec.seed = Some(7);
    // NATed site: 50 ms one-way, 5 % loss in each direction
    let mut nat = SiteSpec::new("natd", "user:ei-ei-pp").unwrap();
    nat.delay_ms = 50.0;
    nat.loss = 0.05;
    // public host behind the pass-through engine: same impairment
    let mut pt = SiteSpec::new("ptd", "none").unwrap();
    pt.delay_ms = 50.0;
    pt.loss = 0.05;
    // jitter: 30 ms +/- 10 ms uniform, no loss
    let mut jit = SiteSpec::new("jit", "none").unwrap();
    jit.delay_ms = 30.0;
    jit.jitter_ms = 10.0;
    spec.sites = vec![nat, pt, jit];
    let lab = Lab::up(spec).unwrap();
    let pub_ip = lab.host_addr("pub").unwrap().to_string();
    let pt_ip = lab.site("ptd").unwrap().host_addr.to_string();

    // sinks first: natd->pub (outbound through the NAT), pub->ptd (inbound), jit->pub
    let s1 = sink(&lab, "pub", 9001);
    let s2 = sink(&lab, "ptd", 9002);
    let s3 = sink(&lab, "pub", 9003);
    std::thread::sleep(Duration::from_millis(300));
    let senders = [
        send(&lab, "natd", &format!("{pub_ip}:9001")),
        send(&lab, "pub", &format!("{pt_ip}:9002")),
        send(&lab, "jit", &format!("{pub_ip}:9003")),
    ];
    for s in senders {
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "sender: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (r1, r2, r3) = (report(s1), report(s2), report(s3));
    println!("natd -> pub (NAT egress): {r1:?}");
    println!("pub -> ptd (pass-through ingress): {r2:?}");
    println!("jit -> pub (jitter): {r3:?}");
    let st = lab.router_stats("natd").unwrap();
    println!("natd router: {st:?}");

    fixed_delay("NAT egress one-way delay ms", &r1, 50.0);
    // The engine's own drop counter is what the setting controls; the sink
    // can also lose a few datagrams in the host's socket buffers when the
    // machine is busy, so it only has to be close.
    within("NAT egress loss (engine)", st.counters["dropped_loss_out"] as f64 / COUNT as f64, 0.05, 0.10);
    within("NAT egress loss (sink)", r1.loss, 0.05, 0.25);
    fixed_delay("pass-through ingress one-way delay ms", &r2, 50.0);
    within("pass-through ingress loss", r2.loss, 0.05, 0.25);
    within("jittered delay mean ms", r3.delay_ms_mean, 30.0, 0.25);
    // uniform +/- 10 ms => stddev 10/sqrt(3)
    // The spread is there (a fixed delay has none) and bounded; the
    // scheduler's tail on a busy 2-core host only adds to it (seen: 9.2
    // for 5.8 with the other delay test running beside this one).
    let sd = 10.0 / 3f64.sqrt();
    assert!(r3.delay_ms_stddev >= 0.8 * sd && r3.delay_ms_stddev <= 3.0 * sd, "jitter stddev {} vs {sd}", r3.delay_ms_stddev);
    assert!(r3.loss < 0.001, "jitter site lost packets: {}", r3.loss);
    // Uniform over 20..40 ms: nothing below 20, the median at 30. The
    // tail says little about the setting: datagrams held up by the
    // scheduler (3 x 4000 pps on 2 cores) made a 52 ms maximum on a busy
    // CI host and a 47 ms 99th percentile with four builds running beside
    // the suite; 60 ms still catches a jitter that is not bounded.
    assert!(
        r3.delay_ms_min >= 19.5 && (r3.delay_ms_p50 - 30.0).abs() <= 3.0 && r3.delay_ms_p99 <= 60.0,
        "jitter range {r3:?}"
    );
    // engine counters agree with what arrived
    assert_eq!(st.counters["dropped_loss_out"] + st.packets_out, COUNT);
    assert!(r1.received <= st.packets_out && r1.received * 100 >= st.packets_out * 99, "sink {} vs engine {}", r1.received, st.packets_out);
    lab.down().unwrap();
}

/// Kernel NATs take their delay from a pass-through engine hop between host
/// and router: both directions are delayed, and the router's nftables still
/// translate (the inbound stream only arrives through the full cone's DNAT).
#[test]
fn kernel_nat_site_delay_comes_from_the_hop() {
    if !common::lab_ready(&[]) {
        return;
    }
    measured(kernel_nat_site_delay);
}

fn kernel_nat_site_delay() {
    const N: u64 = 2_000;
    let mut spec = LabSpec::new("dlk");
    spec.public.push("pub".into());
    let mut k = SiteSpec::new("kfd", "kernel:full_cone").unwrap();
    k.delay_ms = 40.0;
    spec.sites = vec![k];
    let lab = Lab::up(spec).unwrap();
    assert_eq!(lab.site("kfd").unwrap().delay_hop.as_deref(), Some("kfd-dly"));
    let pub_ip = lab.host_addr("pub").unwrap().to_string();
    let public = lab.site("kfd").unwrap().public_ip.to_string();
    let stream = |from: &str, to: &str, port: u16| {
        let sink = lab
            .spawn(
                if from == "pub" { "kfd" } else { "pub" },
                &[common::bin(), "probe-sink", "--bind", &format!("0.0.0.0:{port}"), "--count", &N.to_string(), "--idle-ms", "2000", "--max-ms", "20000"],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let argv = [common::bin(), "probe-send", "--to", &format!("{to}:{port}"), "--count", &N.to_string(), "--rate", "1000"];
        let o = lab.exec(from, &argv).unwrap();
        assert!(o.status.success(), "sender: {}", String::from_utf8_lossy(&o.stderr));
        report(sink)
    };
    let out = stream("kfd", &pub_ip, 9101);
    // Open the full cone for port 9102 (one packet out from it), then stream in.
    let o = lab
        .exec("kfd", &[common::bin(), "probe-send", "--to", &format!("{pub_ip}:9"), "--count", "1", "--bind", "0.0.0.0:9102"])
        .unwrap();
    assert!(o.status.success());
    std::thread::sleep(Duration::from_millis(200));
    let inb = stream("pub", &public, 9102);
    println!("kernel NAT egress: {out:?}\nkernel NAT ingress: {inb:?}");
    fixed_delay("kernel NAT egress one-way delay ms", &out, 40.0);
    fixed_delay("kernel NAT ingress one-way delay ms", &inb, 40.0);
    assert!(out.loss < 0.01 && inb.loss < 0.01, "loss {} / {}", out.loss, inb.loss);
    let st = lab.router_stats("kfd").unwrap();
    assert_eq!(st.kind, "kernel");
    assert!(st.packets_out > N && st.packets_in >= inb.received, "nft counters {st:?}");
    lab.down().unwrap();
}
