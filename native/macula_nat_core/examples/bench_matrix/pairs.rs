//! The NAT types of the matrix, their pairs, the filters and the
//! pair classes the targets are about.

use crate::Opts;
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::strategy::{choose, PeerNat, Strategy};

/// Sites per NAT type: same-type pairs need two distinct NATs.
const SITES_PER_TYPE: usize = 2;

/// One NAT type of the matrix.
pub(crate) struct NatDef {
    /// NATCracker notation, or the kernel NAT's name.
    pub(crate) label: String,
    /// The lab's `nat` for its sites.
    pub(crate) lab_nat: String,
    /// The profile the agent gives (`--nat`): what detection reports for it.
    pub(crate) nat_arg: String,
    pub(crate) nat: NatType,
    pub(crate) kernel: bool,
    /// Lab site names, `SITES_PER_TYPE` of them (a variant: its one host).
    pub(crate) sites: Vec<String>,
    /// A topology variant's host (see variants.rs), not a matrix type.
    pub(crate) variant: Option<crate::variants::VariantHost>,
}

pub(crate) fn lab_code(t: NatType) -> String {
    let d = |x: &str| x.to_ascii_lowercase();
    let s = t.to_string(); // MAPPING-ALLOCATION-FILTERING
    let p: Vec<&str> = s.split('-').collect();
    format!("{}-{}-{}", d(p[0]), d(p[2]), d(p[1]))
}

pub(crate) fn defs(o: &Opts) -> Vec<NatDef> {
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
                variant: None,
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
                variant: None,
            });
        }
    }
    v
}

/// `pat` (NATCracker or lab notation, `*` wildcards, or a kernel name)
/// matches `d`.
pub(crate) fn matches(pat: &str, d: &NatDef) -> bool {
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

pub(crate) use macula_nat_proto::strategy::{is_hard as hard, natcracker_traversable};

/// The second target: one side allocates ports at random, the other
/// has an endpoint-independent mapping.
pub(crate) fn random_vs_eim(a: NatType, b: NatType) -> bool {
    let one = |x: NatType, y: NatType| x.allocation == Allocation::Rd && y.mapping == Mapping::Ei;
    one(a, b) || one(b, a)
}

pub(crate) struct Pair {
    pub(crate) a: usize,
    pub(crate) b: usize,
    /// The strategy the pair is reported under: the table's for the lab's
    /// types (profiles given), or, once the run is over, the one the
    /// detected profiles gave in most tries (profiles detected).
    pub(crate) strategy: Strategy,
    /// The table's strategy for the two NAT types as the lab configured them.
    pub(crate) configured: Strategy,
    /// The topology variant this pair is reported under (variants.rs).
    pub(crate) variant: Option<String>,
}

pub(crate) fn pairs(o: &Opts, d: &[NatDef]) -> Vec<Pair> {
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
            v.push(Pair { a, b, strategy, configured: strategy, variant: None });
        }
    }
    v
}
