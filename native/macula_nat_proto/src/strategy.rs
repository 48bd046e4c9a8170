//! Which technique connects two peers, decided from both sides' NAT
//! behaviour alone (a pure function: no IO, no clock, no state).
//!
//! # Why a combination table
//!
//! NATCracker ("NAT Combinations Matter", Roverso, El-Ansary, Haridi, 2009)
//! showed that traversability is a property of the *pair* of NAT types, not
//! of each type alone: `f : T x T -> S`. [`choose`] is that function over the
//! 27 NATCracker types (plus hosts without NAT), and [`render_table`] prints
//! it for `bench/strategy_table.md`.
//!
//! # Input: [`PeerNat`], not [`NatProfile`]
//!
//! The table only needs the NAT type, whether the host is public (no NAT)
//! and the contiguity delta, so it takes the small [`PeerNat`]: it is `Copy`,
//! cheap to build for all 27x27 combinations, and it keeps addresses (which
//! change with every mapping) out of a decision that must not depend on
//! them. [`PeerNat::from_profile`] converts a detected profile.
//!
//! # Model (the same as `detect` and the lab NAT engine)
//!
//! * A packet from our mapping `M` to a peer endpoint `P` gets in when `P` is
//!   a live mapping of the peer's NAT and its filter admits `M` (EI: anyone;
//!   HD: `P` has sent to `M`'s IP; PD: `P` has sent to exactly `M`).
//! * A *connection* needs one symmetric 5-tuple: each side sends to the
//!   other's endpoint from the very endpoint the other sends to. QUIC needs
//!   this; a channel where A->B and B->A use different public ports is not
//!   a connection (QUIC clients drop packets from an unexpected address).
//! * Port preservation (PP) is what detection can observe: a socket's
//!   *first* mapping keeps the local port; later mappings of the same socket
//!   (HD/PD mapping) collide with it and get another port. (A NAT that keeps
//!   the port for every destination looks endpoint-independent to RFC 5780
//!   tests and is reported as EI mapping.) So a preserved port can only be
//!   predicted for a freshly bound socket, whose first packet goes to the
//!   peer.
//!
//! # How a side can be addressed ([`Aim`])
//!
//! EI mapping (or no NAT): its reflexive address. HD/PD mapping with PP: the
//! local port of a fresh socket. HD/PD mapping with PC: the last observed
//! port plus `k * delta`. HD/PD mapping with RD: not at all in advance; its
//! port is only learned from a packet it sends (ICE's peer-reflexive
//! candidate).
//!
//! # The decision, in order
//!
//! 1. **Direct**: a side that accepts unsolicited packets and answers from
//!    the address it was reached at (EI filtering with EI mapping, or a
//!    public host without filtering) can simply be dialed by the other.
//! 2. Both sides addressable: simultaneous open to each other's predicted
//!    endpoint works for every filtering. Labelled by the hardest
//!    prediction involved: **SimplePunch** (both reflexive),
//!    **PredictPreservation**, **PredictContiguity**.
//! 3. One side unaddressable ("hard", RD allocation with HD/PD mapping):
//!    * **ConnectionReversal** when the other side ("listener") can be
//!      addressed and its filter lets the hard side in once the listener has
//!      sent one packet towards the hard side's IP (filtering EI or HD): the
//!      rendezvous asks the listener to open its filter and the hard side to
//!      dial; the listener learns the hard side's port from that packet.
//!      With EI or HD mapping the listener answers from the port the hard
//!      side dialed. With PD mapping the answer leaves from a new mapping,
//!      from another port of the same IP: the hard side takes it as the
//!      answer of the port it dialed (the runtime aliases it, so QUIC sees
//!      one address) and keeps sending to the dialed port, which the
//!      listener's filter admits. That needs the hard side's filter to admit
//!      the new port: it filters by IP only, or it has HD mapping (one port
//!      towards the listener's IP) and has sent to the new port in advance
//!      from that port. The new port is known in advance: the listener's
//!      contiguity window (PC), or (PP) the preserved port of a second
//!      fresh socket, the *answer socket*, which the listener advertises
//!      next to the one the hard side dials and whose first packet is the
//!      answer (the "split path": the listener learns the hard side's port
//!      on the dialled socket and answers from the other).
//!    * **BirthdayProbing** when the listener filters by IP *and port* but
//!      has one exactly known endpoint towards the hard side's IP (EI
//!      mapping, or HD mapping with PP on a fresh socket): the hard side
//!      opens many sockets towards that endpoint, the easy side probes
//!      random ports of the hard side's IP until one hits (see
//!      [`crate::port_predictor`] for the numbers).
//!    * otherwise **Relay**.
//! 4. Both sides unaddressable (random ports behind HD/PD mapping):
//!    **ConnectionReversal** when neither filters by port and the listener
//!    filters endpoint-independently (seven pairs, see "Beyond NATCracker"
//!    below); otherwise **Relay**.
//!
//! # Deviations from NATCracker
//!
//! Our reading of NATCracker's result is: a combination is not traversable
//! exactly when one side has RD allocation with a non-EI mapping and the
//! other side either has the same or filters by IP and port (PD). (We could
//! not consult the paper's table cell by cell; this rule is its reasoning
//! re-derived, and the tests check the table against it.) We deviate in two
//! directions, both deliberate and both tested:
//!
//! * **Birthday probing** (24 pairs NATCracker calls relay-only): a hard side
//!   against a PD-filtering side with an exactly known endpoint. NATCracker
//!   restricted itself to deterministic prediction; probing random ports is
//!   a later technique (used in production by, e.g., Tailscale). It costs
//!   hundreds of packets and succeeds only with a chosen probability.
//! * **Relay instead of prediction** (4 pairs NATCracker calls traversable):
//!   a hard side with PD mapping that filters by port against a PD-*mapping*
//!   listener with PP or PC allocation that does not filter by port
//!   (PD-RD-PD against PD-PP-EI/HD and PD-PC-EI/HD). The listener cannot
//!   answer from the port the hard side dialed (its answer creates a fresh
//!   mapping), and the hard side's filter only admits the port it sent to
//!   from the dialing mapping; with PD mapping each packet it sends to
//!   another port of the listener leaves from yet another mapping. The
//!   listener in turn cannot send first to the hard side's dialing port
//!   (random, learned only from the dial). No packet of the answer gets in
//!   (short of a two-dimensional birthday search), so we relay. With an
//!   HD-mapping hard side the answer port is announced and opened in
//!   advance (the split path above), and with a hard side that filters by
//!   IP only the answer gets in anyway: those pairs are connection
//!   reversals.
//!
//! * **Beyond NATCracker, two random sides** (7 pairs NATCracker calls
//!   relay-only): neither filters by port and the listener filters
//!   endpoint-independently (HD-RD-EI or PD-RD-EI listening; HD-RD-EI,
//!   HD-RD-HD, PD-RD-EI or PD-RD-HD dialing). The dialer dials the
//!   listener's rendezvous mapping, which admits it (EI filtering), and
//!   keeps sending there from one mapping; the listener answers from a new
//!   mapping of its own (towards the dialer's mapping, so always the same
//!   one), which the dialer's filter admits (it filters by IP and sent to
//!   that IP) and takes as the dialed port's (the runtime's alias, as for a
//!   PD listener above). When either could listen, the HD-mapping side
//!   dials (else the first in type order); between two sides of the same
//!   type A does (the only cells
//!   whose strategy is not the mirror of the other order's). A
//!   simulation test (`relay_cells_do_not_connect_in_simulation`) pins that
//!   every remaining relay cell fails every way a runtime could try.

use std::fmt::{self, Write as _};

use crate::nat::{Allocation, Filtering, Mapping, NatProfile, NatType};

/// One of the two peers of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Who opens a [`Strategy::Direct`] connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialer {
    A,
    B,
    /// Both sides are reachable; whoever wants the connection dials.
    Either,
}

impl Dialer {
    fn mirror(self) -> Dialer {
        match self {
            Dialer::A => Dialer::B,
            Dialer::B => Dialer::A,
            Dialer::Either => Dialer::Either,
        }
    }
}

/// How two peers connect. Sides are named relative to `choose(a, b)`.
///
/// The table does not know who wants the connection: when the side that
/// wants it is not the one that dials (Direct, ConnectionReversal), it asks
/// the dialer through the rendezvous first (RFC 5128 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The non-dialing side accepts unsolicited packets at its advertised
    /// address (public host without filtering, or EI mapping + EI
    /// filtering): the dialer just sends.
    Direct { dialer: Dialer },
    /// `dialer` cannot be addressed (random port); the other side opens its
    /// filter towards the dialer's IP and the dialer is asked, via the
    /// rendezvous, to dial the other side's (possibly predicted) endpoint.
    ConnectionReversal { dialer: Side },
    /// Both sides have EI mapping: simultaneous open to each other's
    /// reflexive address.
    SimplePunch,
    /// Simultaneous open where at least one side is aimed at by port
    /// preservation (the local port of a fresh socket) and none needs
    /// contiguity.
    PredictPreservation,
    /// Simultaneous open where at least one side is aimed at by port
    /// contiguity (last port + k * delta).
    PredictContiguity,
    /// `hard` (random ports) opens many sockets towards the other side's
    /// single endpoint; the other side probes random ports of `hard`'s IP,
    /// rate-capped, until the first hit.
    BirthdayProbing { hard: Side },
    /// No direct path: relay through a third node.
    Relay,
}

impl Strategy {
    /// The same decision with sides A and B swapped.
    pub fn mirror(self) -> Strategy {
        match self {
            Strategy::Direct { dialer } => Strategy::Direct { dialer: dialer.mirror() },
            Strategy::ConnectionReversal { dialer } => Strategy::ConnectionReversal { dialer: dialer.other() },
            Strategy::BirthdayProbing { hard } => Strategy::BirthdayProbing { hard: hard.other() },
            other => other,
        }
    }

    pub fn is_relay(self) -> bool {
        self == Strategy::Relay
    }

    /// Stable snake_case name, suitable as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Direct { .. } => "direct",
            Strategy::ConnectionReversal { .. } => "connection_reversal",
            Strategy::SimplePunch => "simple_punch",
            Strategy::PredictPreservation => "predict_preservation",
            Strategy::PredictContiguity => "predict_contiguity",
            Strategy::BirthdayProbing { .. } => "birthday_probing",
            Strategy::Relay => "relay",
        }
    }

    /// Short code used in the rendered table.
    pub fn code(self) -> &'static str {
        match self {
            Strategy::Direct { dialer: Dialer::A } => "D>A",
            Strategy::Direct { dialer: Dialer::B } => "D>B",
            Strategy::Direct { dialer: Dialer::Either } => "D",
            Strategy::ConnectionReversal { dialer: Side::A } => "CR>A",
            Strategy::ConnectionReversal { dialer: Side::B } => "CR>B",
            Strategy::SimplePunch => "SP",
            Strategy::PredictPreservation => "PP",
            Strategy::PredictContiguity => "PC",
            Strategy::BirthdayProbing { hard: Side::A } => "BD!A",
            Strategy::BirthdayProbing { hard: Side::B } => "BD!B",
            Strategy::Relay => "R",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the strategy table needs to know about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerNat {
    pub nat: NatType,
    /// No NAT: the host's address is public. Its filtering (a firewall) still
    /// counts; mapping and allocation are ignored.
    pub public: bool,
    /// Port delta between consecutive fresh mappings, for PC allocation.
    /// Without a usable delta a PC side cannot be predicted.
    pub port_delta: Option<i32>,
}

impl PeerNat {
    /// A host behind a NAT of this type. PC types get delta 1, the common
    /// case, so that the table can be rendered from types alone.
    pub fn behind(nat: NatType) -> PeerNat {
        let port_delta = (nat.allocation == Allocation::Pc).then_some(1);
        PeerNat { nat, public: false, port_delta }
    }

    /// A host with a public address, possibly behind a filtering firewall.
    pub fn public(filtering: Filtering) -> PeerNat {
        PeerNat {
            nat: NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering },
            public: true,
            port_delta: None,
        }
    }

    pub fn from_profile(p: &NatProfile) -> PeerNat {
        PeerNat { nat: p.nat_type(), public: p.no_nat, port_delta: p.port_delta }
    }
}

/// How the other side aims its packets at this peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aim {
    /// Its reflexive (or public) address: the same for every destination.
    Reflexive,
    /// The local port of a freshly bound socket (PP keeps a first mapping's
    /// port).
    Preserved,
    /// Last observed public port + k * delta, k = 1, 2, ...
    Contiguous(i32),
    /// Unknown until it sends a packet.
    Unpredictable,
}

/// Whether a connection-reversal listener `p` answers the dial from
/// another port than the one dialed, which the dialer then follows: with PD
/// mapping its answer leaves from a new mapping, and a random one is dialed
/// at its rendezvous mapping (see the module docs).
pub fn answers_from_new_port(p: &PeerNat) -> bool {
    !p.public && (p.nat.mapping == Mapping::Pd || aim(p) == Aim::Unpredictable)
}

/// How the other side can address `p` (see the module docs).
pub fn aim(p: &PeerNat) -> Aim {
    if p.public || p.nat.mapping == Mapping::Ei {
        return Aim::Reflexive;
    }
    match p.nat.allocation {
        Allocation::Pp => Aim::Preserved,
        Allocation::Pc => match p.port_delta {
            // A delta that is a multiple of the port range predicts nothing.
            Some(d) if d.rem_euclid(crate::port_predictor::PORT_RANGE as i32) != 0 => Aim::Contiguous(d),
            _ => Aim::Unpredictable,
        },
        Allocation::Rd => Aim::Unpredictable,
    }
}

/// Accepts unsolicited packets and answers from the address it was reached at.
fn open(p: &PeerNat) -> bool {
    p.nat.filtering == Filtering::Ei && (p.public || p.nat.mapping == Mapping::Ei)
}

/// One endpoint, known exactly, for all ports of the peer's IP.
fn exact_single_endpoint(p: &PeerNat) -> bool {
    match aim(p) {
        Aim::Reflexive => true,
        Aim::Preserved => p.nat.mapping == Mapping::Hd,
        _ => false,
    }
}

/// Random allocation behind a non-EI mapping: the port such a NAT gives
/// towards a new peer cannot be known in advance.
pub fn is_hard(t: NatType) -> bool {
    t.mapping != Mapping::Ei && t.allocation == Allocation::Rd
}

/// Our reading of NATCracker's result (see the module docs): a pair is
/// untraversable iff one side is hard and the other is hard too or filters
/// by port. Benchmarks and tests measure the table against it.
pub fn natcracker_traversable(a: NatType, b: NatType) -> bool {
    let blocked = |x: NatType, y: NatType| is_hard(x) && (is_hard(y) || y.filtering == Filtering::Pd);
    !(blocked(a, b) || blocked(b, a))
}

/// The strategy for peers `a` and `b`. Pure and total;
/// `choose(b, a) == choose(a, b).mirror()`.
pub fn choose(a: &PeerNat, b: &PeerNat) -> Strategy {
    let (a, b) = (&normalize(a), &normalize(b));
    match (open(a), open(b)) {
        (true, true) => return Strategy::Direct { dialer: Dialer::Either },
        (true, false) => return Strategy::Direct { dialer: Dialer::B },
        (false, true) => return Strategy::Direct { dialer: Dialer::A },
        (false, false) => {}
    }
    let (aa, ab) = (aim(a), aim(b));
    match (aa == Aim::Unpredictable, ab == Aim::Unpredictable) {
        (false, false) => match rank(aa).max(rank(ab)) {
            0 => Strategy::SimplePunch,
            1 => Strategy::PredictPreservation,
            _ => Strategy::PredictContiguity,
        },
        (true, false) => one_sided(b, a, Side::A),
        (false, true) => one_sided(a, b, Side::B),
        (true, true) => both_hard(a, b),
    }
}

/// Two unaddressable sides (see the module docs: beyond NATCracker). When
/// either could listen, the HD-mapping side dials, else the first in type
/// order (a choice by type, so the table is the same from both ends), and
/// between equal types A.
fn both_hard(a: &PeerNat, b: &PeerNat) -> Strategy {
    let meets = |dialer: &PeerNat, listener: &PeerNat| dialer.nat.filtering != Filtering::Pd && listener.nat.filtering == Filtering::Ei;
    let order = |p: &PeerNat| (p.nat.mapping != Mapping::Hd, p.nat.to_string());
    match (meets(a, b), meets(b, a)) {
        (true, true) if order(b) < order(a) => Strategy::ConnectionReversal { dialer: Side::B },
        (true, _) => Strategy::ConnectionReversal { dialer: Side::A },
        (false, true) => Strategy::ConnectionReversal { dialer: Side::B },
        (false, false) => Strategy::Relay,
    }
}

/// A public host's mapping and allocation are meaningless (there is no NAT):
/// make them EI-PP so that no rule reads them by accident.
fn normalize(p: &PeerNat) -> PeerNat {
    if p.public {
        PeerNat::public(p.nat.filtering)
    } else {
        *p
    }
}

fn rank(a: Aim) -> u8 {
    match a {
        Aim::Reflexive => 0,
        Aim::Preserved => 1,
        Aim::Contiguous(_) | Aim::Unpredictable => 2,
    }
}

/// `easy` can be addressed, `hard` (on side `hard_side`) cannot.
fn one_sided(easy: &PeerNat, hard: &PeerNat, hard_side: Side) -> Strategy {
    let e = easy.nat;
    if e.filtering != Filtering::Pd {
        let converges = match (e.mapping, aim(easy)) {
            (Mapping::Ei, _) | (Mapping::Hd, _) => true,
            // PD mapping: the answer leaves from a fresh mapping, whose port
            // the hard side must know in advance to admit it through a
            // port filter (see the module docs).
            (Mapping::Pd, _) => hard.nat.mapping == Mapping::Hd || hard.nat.filtering != Filtering::Pd,
        };
        if converges {
            return Strategy::ConnectionReversal { dialer: hard_side };
        }
    } else if exact_single_endpoint(easy) {
        return Strategy::BirthdayProbing { hard: hard_side };
    }
    Strategy::Relay
}

fn short(t: NatType) -> String {
    t.to_string()
}

/// The whole table as markdown: the 27x27 NAT-type matrix (row = A,
/// column = B), the 27 types against public hosts, a legend and the counts
/// over the 378 unordered pairs.
pub fn render_table() -> String {
    let types: Vec<NatType> = NatType::all().collect();
    let mut out = String::new();
    let _ = writeln!(out, "# Connection strategy table\n");
    let _ = writeln!(
        out,
        "Generated by `cargo run --release -p macula_nat_proto --example strategy_table` \
         from `macula_nat_proto::strategy::choose`; do not edit by hand. \
         Types are `MAPPING-ALLOCATION-FILTERING` (NATCracker notation); PC types use delta 1.\n"
    );
    let _ = writeln!(out, "## Legend\n");
    for (code, what) in [
        ("D", "Direct, either side dials (both reachable)"),
        ("D>A / D>B", "Direct, side A / B dials the other (reachable) side"),
        ("CR>A / CR>B", "Connection reversal: A / B (random ports) dials, the other side opens its filter first"),
        ("SP", "Simple punch: simultaneous open to reflexive addresses"),
        ("PP", "Punch with port-preservation prediction (fresh socket's local port)"),
        ("PC", "Punch with port-contiguity prediction (last port + k * delta)"),
        ("BD!A / BD!B", "Birthday probing, A / B is the hard (random) side"),
        ("R", "Relay"),
    ] {
        let _ = writeln!(out, "* `{code}`: {what}");
    }
    let _ = writeln!(out, "\n## Counts over the 378 unordered pairs of NAT types\n");
    let _ = writeln!(out, "| strategy | pairs |\n|---|---|");
    for (name, n) in pair_counts() {
        let _ = writeln!(out, "| {name} | {n} |");
    }
    let _ = writeln!(out, "\n## NAT type x NAT type (row = A, column = B)\n");
    let _ = write!(out, "| A \\ B |");
    for t in &types {
        let _ = write!(out, " {} |", short(*t));
    }
    let _ = write!(out, "\n|---|");
    for _ in &types {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    for a in &types {
        let _ = write!(out, "| **{}** |", short(*a));
        for b in &types {
            let _ = write!(out, " {} |", choose(&PeerNat::behind(*a), &PeerNat::behind(*b)).code());
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\n## NAT type (A) x public host (B)\n");
    let _ = writeln!(out, "| A \\ B | public | public, HD firewall | public, PD firewall |\n|---|---|---|---|");
    for a in &types {
        let _ = write!(out, "| **{}** |", short(*a));
        for f in Filtering::ALL {
            let _ = write!(out, " {} |", choose(&PeerNat::behind(*a), &PeerNat::public(f)).code());
        }
        let _ = writeln!(out);
    }
    out
}

/// `(strategy name, number of unordered NAT-type pairs)` in a fixed order,
/// counting mirrored variants (who dials, which side is hard) together.
pub fn pair_counts() -> Vec<(&'static str, usize)> {
    let names =
        ["direct", "connection_reversal", "simple_punch", "predict_preservation", "predict_contiguity", "birthday_probing", "relay"];
    let types: Vec<NatType> = NatType::all().collect();
    let mut counts = vec![0usize; names.len()];
    for (i, a) in types.iter().enumerate() {
        for b in &types[i..] {
            let s = choose(&PeerNat::behind(*a), &PeerNat::behind(*b));
            if let Some(k) = names.iter().position(|n| *n == s.name()) {
                counts[k] += 1;
            }
        }
    }
    names.into_iter().zip(counts).collect()
}

#[cfg(test)]
mod tests;
