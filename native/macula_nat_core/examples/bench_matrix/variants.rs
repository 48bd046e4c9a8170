//! Topology variants (BEAM mode): NAT set-ups seen in the wild that the
//! lab builds with `extra_hosts`, `carriers` and `upstream`
//! (native/macula_nat_lab/README.md). One agent per host; each variant
//! pair is reported under its variant.
//!
//! ```text
//! vpub            public host (no NAT)
//! vsym            kernel symmetric, plain router
//! vprc1, vprc2    kernel port-restricted cone, plain router       "plain PRC"
//! vovl, vovl2     two hosts behind one such router, both nodes    "overloaded"
//!                 on local port 4500 (`listen_port`)
//! vch1, vch2      homes (kernel PRC plain) behind carrier cgh     "cgnat-same" (hairpin on)
//!                 (userspace ei-pd-rd, hairpin on)
//! vcn1, vcn2      homes behind carrier cgn (ei-pd-rd, hairpin off) "cgnat-same" (hairpin off)
//!                 vch x vcn:                                       "cgnat-diff"
//! vhome           home (kernel PRC plain) with a Docker host on its LAN
//! vctr            container: kernel PRC plain (the Docker host's   "docker"
//!                 masquerade) upstream of vhome
//! ```
//! Every variant site has no added delay: the lab refuses a delay hop on a
//! kernel router with extra hosts or downstream sites.

use crate::agent::{Detected, TryResult};
use crate::pairs::{lab_code, NatDef, Pair};
use crate::report::{counts, is_direct, ms, pct};
use macula_nat_lab::{spec::CarrierSpec, LabSpec, SiteSpec};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::strategy::{choose, PeerNat};
use std::fmt::Write as _;

/// The local port both overloaded nodes are configured with.
pub(crate) const OVERLOAD_PORT: u16 = 4500;

/// One variant host: (host, its site (None: public host), what it is,
/// expected detection (None: public)).
struct Host {
    host: &'static str,
    site: Option<&'static str>,
    what: &'static str,
    expect: Option<NatType>,
}

fn t(m: Mapping, f: Filtering, a: Allocation) -> Option<NatType> {
    Some(NatType { mapping: m, allocation: a, filtering: f })
}

fn hosts() -> Vec<Host> {
    use Allocation::*;
    use Filtering as F;
    use Mapping as M;
    let prc = t(M::Ei, F::Pd, Pp);
    // A PRC home behind an ei-pd-rd carrier: the carrier's random ports.
    let cg = t(M::Ei, F::Pd, Rd);
    let h = |host, site, what, expect| Host { host, site, what, expect };
    vec![
        h("vpub", None, "public host", None),
        h("vsym", Some("vsym"), "kernel symmetric", t(M::Pd, F::Pd, Rd)),
        h("vprc1", Some("vprc1"), "plain PRC", prc),
        h("vprc2", Some("vprc2"), "plain PRC", prc),
        h("vovl", Some("vovl"), "overloaded (:4500)", prc),
        h("vovl2", Some("vovl"), "overloaded (:4500, 2nd host)", prc),
        h("vch1", Some("vch1"), "home behind CGNAT cgh (hairpin)", cg),
        h("vch2", Some("vch2"), "home behind CGNAT cgh (hairpin)", cg),
        h("vcn1", Some("vcn1"), "home behind CGNAT cgn (no hairpin)", cg),
        h("vcn2", Some("vcn2"), "home behind CGNAT cgn (no hairpin)", cg),
        h("vhome", Some("vhome"), "home host (Docker host's LAN)", prc),
        h("vctr", Some("vctr"), "docker container", prc),
    ]
}

/// (variant, A host, B host).
fn pair_list() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("plain PRC", "vprc1", "vprc2"),
        ("plain PRC", "vprc1", "vpub"),
        ("plain PRC", "vprc2", "vsym"),
        ("overloaded", "vovl", "vprc1"),
        ("overloaded", "vovl2", "vprc2"),
        ("overloaded", "vovl", "vpub"),
        ("overloaded", "vovl2", "vsym"),
        ("overloaded, same NAT", "vovl", "vovl2"),
        ("cgnat-same, hairpin on", "vch1", "vch2"),
        ("cgnat-same, hairpin off", "vcn1", "vcn2"),
        ("cgnat-diff", "vch1", "vcn1"),
        ("cgnat-diff", "vcn2", "vch2"),
        ("cgnat x public", "vch1", "vpub"),
        ("cgnat x symmetric", "vcn1", "vsym"),
        ("cgnat x plain PRC", "vch2", "vprc2"),
        ("docker", "vctr", "vpub"),
        ("docker", "vctr", "vsym"),
        ("docker", "vctr", "vprc1"),
        ("docker", "vctr", "vch1"),
        ("docker, same home", "vctr", "vhome"),
    ]
}

/// Adds the variants' sites, carriers and public host to the lab.
pub(crate) fn add_to_spec(spec: &mut LabSpec) {
    spec.public.push("vpub".into());
    let mut cg = CarrierSpec::new("cgh", "user:ei-pd-rd").expect("carrier");
    cg.hairpin = true;
    spec.carriers.push(cg);
    spec.carriers.push(CarrierSpec::new("cgn", "user:ei-pd-rd").expect("carrier"));
    let site = |name: &str, nat: &str| {
        let mut s = SiteSpec::new(name, nat).expect("site");
        s.plain_router = true;
        s
    };
    let prc = "kernel:port_restricted_cone";
    spec.sites.push(site("vsym", "kernel:symmetric"));
    spec.sites.push(site("vprc1", prc));
    spec.sites.push(site("vprc2", prc));
    let mut ovl = site("vovl", prc);
    ovl.extra_hosts = vec!["vovl2".into()];
    spec.sites.push(ovl);
    for (n, c) in [("vch1", "cgh"), ("vch2", "cgh"), ("vcn1", "cgn"), ("vcn2", "cgn")] {
        let mut s = site(n, prc);
        s.upstream = Some(c.into());
        spec.sites.push(s);
    }
    spec.sites.push(site("vhome", prc));
    let mut ctr = site("vctr", prc);
    ctr.upstream = Some("vhome".into());
    spec.sites.push(ctr);
}

/// Appends one def per variant host and the variant pairs.
pub(crate) fn add(defs: &mut Vec<NatDef>, pairs: &mut Vec<Pair>) {
    let first = defs.len();
    let hs = hosts();
    for h in &hs {
        let nat = h.expect.unwrap_or(NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering: Filtering::Ei });
        defs.push(NatDef {
            label: format!("{} ({})", h.what, h.host),
            lab_nat: String::new(),
            nat_arg: String::new(),
            nat,
            kernel: true,
            sites: vec![h.host.to_string()],
            variant: Some(VariantHost { site: h.site.map(String::from), public: h.expect.is_none() }),
        });
    }
    let ix = |host: &str| first + hs.iter().position(|h| h.host == host).expect("variant host");
    let peer = |h: &Host| match h.expect {
        Some(n) => PeerNat::behind(n),
        None => PeerNat::public(Filtering::Ei),
    };
    for (v, a, b) in pair_list() {
        let (ia, ib) = (ix(a), ix(b));
        let s = choose(&peer(&hs[ia - first]), &peer(&hs[ib - first]));
        pairs.push(Pair { a: ia, b: ib, strategy: s, configured: s, variant: Some(v.to_string()) });
    }
}

/// What a variant def is.
#[derive(Clone, Debug)]
pub(crate) struct VariantHost {
    /// The lab site the host is on (None: the public host).
    pub(crate) site: Option<String>,
    pub(crate) public: bool,
}

fn expected(d: &NatDef) -> String {
    match &d.variant {
        Some(v) if v.public => "public".into(),
        _ => lab_code(d.nat),
    }
}

fn agrees(d: &NatDef, x: &Detected) -> bool {
    match &d.variant {
        Some(v) if v.public => x.no_nat,
        _ => !x.no_nat && x.nat == d.nat,
    }
}

/// The report's variants section.
pub(crate) fn section(defs: &[NatDef], pairs: &[Pair], results: &[&Vec<TryResult>], detections: &[(usize, Vec<Detected>)]) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "\n## Topology variants\n");
    let _ = writeln!(
        w,
        "NAT set-ups seen in the wild, in the same lab and run (the lab's `extra_hosts`, `carriers` and \
         `upstream`, see `native/macula_nat_lab/README.md`), BEAM nodes configured and detecting as above. \
         Every router here is a **kernel port-restricted cone plain router** (masquerade, no input rule) \
         unless stated, with **no added delay** (the lab refuses a delay hop on a kernel router with extra \
         hosts or downstream sites), so times are not comparable with the 25 ms sites above. \
         *plain PRC*: `vprc1`, `vprc2`. *overloaded*: two hosts (`vovl`, `vovl2`) behind one router, both \
         nodes configured with `listen_port` {OVERLOAD_PORT} (the same local port: Linux keeps the source \
         port while the tuple is unique, so both share public port {OVERLOAD_PORT} towards different \
         destinations and the second gets another port towards the same one, e.g. the observers and the \
         rendezvous). *cgnat-same*: two homes behind one carrier-grade NAT (userspace `ei-pd-rd` on \
         100.64.0.0/10; `cgh` hairpins, `cgn` does not); *cgnat-diff*: homes behind the two different \
         carriers. *docker*: a container (`vctr`, behind the Docker host's masquerade, itself a host on the \
         home LAN of `vhome`) behind the home router. Peers: a public host `vpub` and a kernel symmetric \
         plain router `vsym`. Strategy: the table's for the detected profiles (most tries).\n"
    );
    // Per variant.
    let mut names: Vec<&str> = Vec::new();
    for p in pairs {
        let v = p.variant.as_deref().unwrap_or("");
        if !names.contains(&v) {
            names.push(v);
        }
    }
    let _ = writeln!(
        w,
        "| variant | pairs | tries | success | direct (no relay) | methods | time to first message median / p95 ms | failures |\n|---|---|---|---|---|---|---|---|"
    );
    let line = |w: &mut String, name: &str, sel: &[usize]| {
        let res: Vec<&TryResult> = sel.iter().flat_map(|&i| results[i].iter()).collect();
        let tries = res.len();
        let ok = res.iter().filter(|t| t.ok).count();
        let direct = res.iter().filter(|t| is_direct(t)).count();
        let ttfm: Vec<f64> = res.iter().filter(|t| t.ok).filter_map(|t| t.ttfm_ms).collect();
        let methods = counts(res.iter().filter(|t| t.ok).filter_map(|t| t.method.as_deref()));
        let fails = counts(res.iter().filter(|t| !t.ok).filter_map(|t| t.error.as_deref()));
        let share = |a: usize| if tries == 0 { 0.0 } else { 100.0 * a as f64 / tries as f64 };
        let _ = writeln!(
            w,
            "| {name} | {} | {tries} | {ok}/{tries} ({:.0}%) | {direct}/{tries} ({:.0}%) | {} | {} / {} | {} |",
            sel.len(),
            share(ok),
            share(direct),
            if methods.is_empty() { "-".into() } else { methods },
            ms(pct(&ttfm, 0.5)),
            ms(pct(&ttfm, 0.95)),
            if fails.is_empty() { "-".into() } else { fails }
        );
    };
    for n in &names {
        let sel: Vec<usize> = (0..pairs.len()).filter(|&i| pairs[i].variant.as_deref() == Some(*n)).collect();
        line(&mut w, &format!("{n}"), &sel);
    }
    let all: Vec<usize> = (0..pairs.len()).collect();
    line(&mut w, "**all variants**", &all);

    let _ = writeln!(w, "\nEvery variant pair (A initiates):\n");
    let _ = writeln!(
        w,
        "| variant | A | B | strategy | method | ok | direct | first message median ms | p95 ms | failures |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, p) in pairs.iter().enumerate() {
        let r = results[i];
        let ok = r.iter().filter(|t| t.ok).count();
        let direct = r.iter().filter(|t| is_direct(t)).count();
        let ttfm: Vec<f64> = r.iter().filter(|t| t.ok).filter_map(|t| t.ttfm_ms).collect();
        let methods = counts(r.iter().filter(|t| t.ok).filter_map(|t| t.method.as_deref()));
        let fails = counts(r.iter().filter(|t| !t.ok).filter_map(|t| t.error.as_deref()));
        let other = counts(r.iter().filter_map(|t| t.detected_strategy).filter(|s| s.name() != p.strategy.name()).map(|s| s.name()));
        let mut strat = p.strategy.name().to_string();
        if !other.is_empty() {
            strat += &format!(" (detected profiles gave {other})");
        }
        if p.configured.name() != p.strategy.name() {
            strat += &format!(" (expected profiles: {})", p.configured.name());
        }
        let _ = writeln!(
            w,
            "| {} | {} | {} | {strat} | {} | {ok}/{} | {direct}/{} | {} | {} | {} |",
            p.variant.as_deref().unwrap_or(""),
            defs[p.a].label,
            defs[p.b].label,
            if methods.is_empty() { "-".into() } else { methods },
            r.len(),
            r.len(),
            ms(pct(&ttfm, 0.5)),
            ms(pct(&ttfm, 0.95)),
            if fails.is_empty() { "-".into() } else { fails }
        );
    }

    let _ = writeln!(w, "\nDetection per variant host (expected: what the NATs in front of it add up to):\n");
    let _ = writeln!(w, "| host | expected (m-f-a) | detections | agree | confidence | detected otherwise |\n|---|---|---|---|---|---|");
    for (d, v) in detections {
        if v.is_empty() || defs[*d].variant.is_none() {
            continue;
        }
        let good = v.iter().filter(|x| agrees(&defs[*d], x)).count();
        let conf = counts(v.iter().map(|x| x.confidence.as_str()));
        let bad = counts(v.iter().filter(|x| !agrees(&defs[*d], x)).map(|x| format!("{} ({})", x.code(), x.confidence)));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {good}/{} | {conf} | {} |",
            defs[*d].label,
            expected(&defs[*d]),
            v.len(),
            v.len(),
            if bad.is_empty() { "-".into() } else { bad }
        );
    }
    w
}
