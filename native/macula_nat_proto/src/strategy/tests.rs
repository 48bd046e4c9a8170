use super::*;
use super::is_hard as hard;
use std::collections::HashMap;

fn types() -> Vec<NatType> {
    NatType::all().collect()
}

fn ty(s: &str) -> NatType {
    types().into_iter().find(|t| t.to_string() == s).unwrap_or_else(|| panic!("no type {s}"))
}

fn pick(a: &str, b: &str) -> Strategy {
    choose(&PeerNat::behind(ty(a)), &PeerNat::behind(ty(b)))
}

/// All peers the table is tested on: the 27 types behind a NAT, public
/// hosts with each firewall filtering, and PC types without a usable delta.
fn peers() -> Vec<PeerNat> {
    let mut v: Vec<PeerNat> = types().into_iter().map(PeerNat::behind).collect();
    v.extend(Filtering::ALL.into_iter().map(PeerNat::public));
    for t in types().into_iter().filter(|t| t.allocation == Allocation::Pc) {
        v.push(PeerNat { port_delta: None, ..PeerNat::behind(t) });
        v.push(PeerNat { port_delta: Some(-2), ..PeerNat::behind(t) });
    }
    v
}

fn unordered_pairs() -> Vec<(NatType, NatType)> {
    let t = types();
    let mut v = Vec::new();
    for (i, a) in t.iter().enumerate() {
        for b in &t[i..] {
            v.push((*a, *b));
        }
    }
    v
}

/// The documented deviations towards relay: a PD-mapping, port-filtering
/// hard side against a PD-mapping, PP/PC, non-port-filtering listener.
fn deviation_to_relay(a: NatType, b: NatType) -> bool {
    let dev = |easy: NatType, h: NatType| {
        hard(h)
            && !hard(easy)
            && easy.mapping == Mapping::Pd
            && easy.allocation != Allocation::Rd
            && easy.filtering != Filtering::Pd
            && h.filtering == Filtering::Pd
            && h.mapping == Mapping::Pd
    };
    dev(a, b) || dev(b, a)
}

#[test]
fn there_are_378_unordered_pairs() {
    assert_eq!(unordered_pairs().len(), 27 * 28 / 2);
}

#[test]
fn choose_is_symmetric_on_every_ordered_pair() {
    let p = peers();
    for a in &p {
        for b in &p {
            if a == b {
                // Nothing tells two equal sides apart: the initiator (A)
                // dials when one must (see the module docs).
                continue;
            }
            assert_eq!(choose(b, a), choose(a, b).mirror(), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn mirror_is_an_involution_and_keeps_the_name() {
    let p = peers();
    for a in &p {
        for b in &p {
            let s = choose(a, b);
            assert_eq!(s.mirror().mirror(), s);
            assert_eq!(s.mirror().name(), s.name());
        }
    }
}

#[test]
fn every_natcracker_traversable_pair_gets_a_non_relay_strategy_except_documented_deviations() {
    let mut deviations = 0;
    for (a, b) in unordered_pairs() {
        let s = choose(&PeerNat::behind(a), &PeerNat::behind(b));
        if natcracker_traversable(a, b) {
            if deviation_to_relay(a, b) {
                deviations += 1;
                assert_eq!(s, Strategy::Relay, "{a} vs {b}: documented deviation must relay");
            } else {
                assert!(!s.is_relay(), "{a} vs {b}: NATCracker-traversable but {s}");
            }
        }
    }
    assert_eq!(deviations, 4, "the module docs promise 4 deviations");
}

#[test]
fn pairs_natcracker_relays_are_relayed_birthday_probed_or_reversed() {
    let (mut birthday, mut reversal) = (0, 0);
    for (a, b) in unordered_pairs() {
        if natcracker_traversable(a, b) {
            continue;
        }
        match choose(&PeerNat::behind(a), &PeerNat::behind(b)) {
            Strategy::Relay => {}
            Strategy::BirthdayProbing { .. } => birthday += 1,
            Strategy::ConnectionReversal { .. } if hard(a) && hard(b) => reversal += 1,
            s => panic!("{a} vs {b}: NATCracker says relay, we say {s}"),
        }
    }
    assert_eq!(birthday, 24, "the module docs promise 24 birthday pairs");
    assert_eq!(reversal, 7, "the module docs promise 7 random-random reversals");
}

#[test]
fn rd_vs_rd_with_non_ei_mapping_is_a_reversal_towards_an_ei_filter_or_relay() {
    let listens = |l: NatType, d: NatType| l.filtering == Filtering::Ei && d.filtering != Filtering::Pd;
    for a in types().into_iter().filter(|t| hard(*t)) {
        for b in types().into_iter().filter(|t| hard(*t)) {
            let order = |t: NatType| (t.mapping != Mapping::Hd, t.to_string());
            let hd_b_dials = listens(a, b) && order(b) < order(a);
            let want = if listens(b, a) && !hd_b_dials {
                Strategy::ConnectionReversal { dialer: Side::A }
            } else if listens(a, b) {
                Strategy::ConnectionReversal { dialer: Side::B }
            } else {
                Strategy::Relay
            };
            assert_eq!(choose(&PeerNat::behind(a), &PeerNat::behind(b)), want, "{a} vs {b}");
        }
    }
}

#[test]
fn public_hosts() {
    for t in types() {
        let n = PeerNat::behind(t);
        // an unfiltered public host is dialed by anyone
        let s = choose(&n, &PeerNat::public(Filtering::Ei));
        let want = if t.mapping == Mapping::Ei && t.filtering == Filtering::Ei { Dialer::Either } else { Dialer::A };
        assert_eq!(s, Strategy::Direct { dialer: want }, "{t}");
        // a firewalled public host behaves like an EI-mapping NAT with that filtering
        for f in [Filtering::Hd, Filtering::Pd] {
            let like = NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering: f };
            assert_eq!(choose(&n, &PeerNat::public(f)), choose(&n, &PeerNat::behind(like)), "{t} vs public {f:?}");
        }
    }
    assert_eq!(
        choose(&PeerNat::public(Filtering::Ei), &PeerNat::public(Filtering::Ei)),
        Strategy::Direct { dialer: Dialer::Either }
    );
    assert_eq!(choose(&PeerNat::public(Filtering::Pd), &PeerNat::public(Filtering::Hd)), Strategy::SimplePunch);
}

#[test]
fn the_public_flag_ignores_mapping_and_allocation() {
    for t in types() {
        let p = PeerNat { nat: t, public: true, port_delta: None };
        assert_eq!(aim(&p), Aim::Reflexive);
        for u in types() {
            let other = PeerNat::behind(u);
            assert_eq!(choose(&p, &other), choose(&PeerNat::public(t.filtering), &other));
        }
    }
}

#[test]
fn representative_cells() {
    // full cone is dialed by anyone, even a random symmetric NAT
    assert_eq!(pick("EI-RD-EI", "PD-RD-PD"), Strategy::Direct { dialer: Dialer::B });
    assert_eq!(pick("EI-PP-EI", "EI-PC-EI"), Strategy::Direct { dialer: Dialer::Either });
    // both EI mapping: simple punch, whatever the filtering and allocation
    assert_eq!(pick("EI-PP-PD", "EI-RD-PD"), Strategy::SimplePunch);
    assert_eq!(pick("EI-RD-HD", "EI-PC-PD"), Strategy::SimplePunch);
    // prediction
    assert_eq!(pick("PD-PP-PD", "EI-PP-PD"), Strategy::PredictPreservation);
    assert_eq!(pick("HD-PP-PD", "PD-PP-PD"), Strategy::PredictPreservation);
    assert_eq!(pick("PD-PC-PD", "EI-PP-PD"), Strategy::PredictContiguity);
    assert_eq!(pick("PD-PC-PD", "PD-PC-PD"), Strategy::PredictContiguity);
    assert_eq!(pick("PD-PC-PD", "HD-PP-HD"), Strategy::PredictContiguity);
    // one hard side
    assert_eq!(pick("PD-RD-PD", "EI-PP-HD"), Strategy::ConnectionReversal { dialer: Side::A });
    assert_eq!(pick("HD-PP-EI", "PD-RD-PD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("HD-PC-HD", "PD-RD-PD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("PD-PC-HD", "HD-RD-PD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("PD-PP-HD", "HD-RD-HD"), Strategy::ConnectionReversal { dialer: Side::B });
    // a PD-mapping listener's answer from a new port is followed
    assert_eq!(pick("PD-PP-HD", "PD-RD-HD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("PD-RD-EI", "PD-PC-EI"), Strategy::ConnectionReversal { dialer: Side::A });
    // ... and announced and opened in advance for a port-filtering
    // HD-mapping dialer (the split path)
    assert_eq!(pick("PD-PP-HD", "HD-RD-PD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("HD-RD-PD", "PD-PP-EI"), Strategy::ConnectionReversal { dialer: Side::A });
    assert_eq!(pick("PD-RD-PD", "EI-PP-PD"), Strategy::BirthdayProbing { hard: Side::A });
    assert_eq!(pick("HD-PP-PD", "HD-RD-EI"), Strategy::BirthdayProbing { hard: Side::B });
    // relay
    assert_eq!(pick("PD-RD-PD", "PD-RD-PD"), Strategy::Relay);
    // Two random sides: beyond NATCracker when one can listen (EI filter)
    // and the other does not filter by port.
    assert_eq!(pick("HD-RD-EI", "PD-RD-EI"), Strategy::ConnectionReversal { dialer: Side::A });
    assert_eq!(pick("PD-RD-EI", "HD-RD-EI"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("PD-RD-HD", "HD-RD-EI"), Strategy::ConnectionReversal { dialer: Side::A });
    assert_eq!(pick("HD-RD-EI", "PD-RD-HD"), Strategy::ConnectionReversal { dialer: Side::B });
    assert_eq!(pick("PD-RD-EI", "PD-RD-EI"), Strategy::ConnectionReversal { dialer: Side::A });
    assert_eq!(pick("HD-RD-HD", "HD-RD-HD"), Strategy::Relay);
    assert_eq!(pick("PD-RD-PD", "HD-RD-EI"), Strategy::Relay);
    assert_eq!(pick("PD-PC-PD", "PD-RD-EI"), Strategy::Relay);
    assert_eq!(pick("HD-PC-PD", "HD-RD-HD"), Strategy::Relay);
    assert_eq!(pick("PD-PP-HD", "PD-RD-PD"), Strategy::Relay);
    assert_eq!(pick("PD-PC-EI", "PD-RD-PD"), Strategy::Relay);
}

#[test]
fn pc_without_a_usable_delta_is_treated_as_random() {
    for t in types().into_iter().filter(|t| t.allocation == Allocation::Pc && t.mapping != Mapping::Ei) {
        let rd = NatType { allocation: Allocation::Rd, ..t };
        for d in [None, Some(0), Some(PORT_RANGE_I32), Some(-PORT_RANGE_I32)] {
            let p = PeerNat { nat: t, public: false, port_delta: d };
            assert_eq!(aim(&p), Aim::Unpredictable);
            for u in types() {
                assert_eq!(choose(&p, &PeerNat::behind(u)), choose(&PeerNat::behind(rd), &PeerNat::behind(u)), "{t} {d:?} vs {u}");
            }
        }
        let p = PeerNat { nat: t, public: false, port_delta: Some(-3) };
        assert_eq!(aim(&p), Aim::Contiguous(-3));
    }
}

const PORT_RANGE_I32: i32 = crate::port_predictor::PORT_RANGE as i32;

#[test]
fn from_profile_keeps_what_the_table_needs() {
    let prof = NatProfile {
        mapping: Mapping::Pd,
        filtering: Filtering::Hd,
        allocation: Allocation::Pc,
        public_addr: "192.0.2.1:4000".parse().unwrap(),
        port_delta: Some(2),
        confidence: crate::nat::Confidence::High,
        mapping_lifetime: None,
        hairpin: None,
        no_nat: false,
    };
    let p = PeerNat::from_profile(&prof);
    assert_eq!(p, PeerNat { nat: ty("PD-PC-HD"), public: false, port_delta: Some(2) });
    let p = PeerNat::from_profile(&NatProfile { no_nat: true, ..prof });
    assert!(p.public);
}

#[test]
fn counts_cover_all_pairs_and_match_a_recount() {
    let counts = pair_counts();
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), 378);
    let mut recount: HashMap<&str, usize> = HashMap::new();
    for (a, b) in unordered_pairs() {
        *recount.entry(pick(&a.to_string(), &b.to_string()).name()).or_default() += 1;
    }
    for (name, n) in counts {
        assert_eq!(recount.get(name).copied().unwrap_or(0), n, "{name}");
    }
}

#[test]
fn codes_are_distinct_per_variant() {
    let all = [
        Strategy::Direct { dialer: Dialer::A },
        Strategy::Direct { dialer: Dialer::B },
        Strategy::Direct { dialer: Dialer::Either },
        Strategy::ConnectionReversal { dialer: Side::A },
        Strategy::ConnectionReversal { dialer: Side::B },
        Strategy::SimplePunch,
        Strategy::PredictPreservation,
        Strategy::PredictContiguity,
        Strategy::BirthdayProbing { hard: Side::A },
        Strategy::BirthdayProbing { hard: Side::B },
        Strategy::Relay,
    ];
    let codes: std::collections::HashSet<_> = all.iter().map(|s| s.code()).collect();
    assert_eq!(codes.len(), all.len());
    assert_eq!(Strategy::Relay.to_string(), "relay");
}

#[test]
fn rendered_table_has_every_cell() {
    let md = render_table();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| **")).collect();
    assert_eq!(rows.len(), 27 + 27);
    for r in &rows[..27] {
        assert_eq!(r.matches('|').count(), 27 + 2, "{r}");
    }
    for t in types() {
        assert!(md.contains(&format!("| **{t}** |")));
    }
    assert!(md.contains("| relay |"));
}

#[test]
fn committed_table_is_up_to_date() {
    // bench/strategy_table.md is generated; fail if the table changed
    // without regenerating it.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/strategy_table.md");
    if let Ok(committed) = std::fs::read_to_string(path) {
        assert_eq!(committed, render_table(), "regenerate bench/strategy_table.md (see its header)");
    }
}
