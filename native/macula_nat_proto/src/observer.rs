//! Sans-IO STUN observer (server) logic for NAT behaviour discovery.
//!
//! A full RFC 5780 observer listens on 2 IPs x 2 ports: the primary
//! address `(IP1, P1)` and the alternate `(IP2, P2)`, plus the crossed
//! `(IP1, P2)` and `(IP2, P1)`. The runtime binds every address in
//! [`Observer::local_addrs`], feeds each received datagram to
//! [`Observer::handle_datagram`] together with the local address it arrived
//! on, and sends the returned [`Reply`] from `reply.from` to `reply.to`.
//!
//! A plain node with one address (`alternate: None`) still answers Binding
//! requests. When such a node receives a CHANGE-REQUEST that asks for a
//! change it cannot honour, it answers **420 (Unknown Attribute)** listing
//! CHANGE-REQUEST, as RFC 5780 §6.1 prescribes for servers without an
//! alternate address, rather than staying silent: silence would look
//! exactly like a filtering NAT to the client and make it wait for nothing,
//! whereas a 420 tells it at once to use another observer. A CHANGE-REQUEST
//! with both flags clear asks for nothing, so it is answered normally.
//!
//! RFC 3489 clients (no magic cookie, 128-bit transaction id) are answered
//! as RFC 8489 §12 and coturn answer them: the response carries the
//! request's whole transaction id and the RFC 3489 attributes MAPPED-ADDRESS
//! (never the XOR form), SOURCE-ADDRESS (the address the answer leaves
//! from) and, with an alternate address, CHANGED-ADDRESS (the alternate,
//! like OTHER-ADDRESS); CHANGE-REQUEST is honoured exactly as for RFC 5780
//! clients. Nothing a classic client could choke on goes in: no
//! FINGERPRINT, no SOFTWARE (RFC 3489 parsers such as Debian's `stun` 0.97
//! reject a string attribute whose length is not a multiple of 4), and an
//! error's reason phrase and UNKNOWN-ATTRIBUTES list are padded the RFC 3489
//! way (spaces, a repeated attribute). RFC 3489's RESPONSE-ADDRESS is not
//! supported (RFC 8489 §12 drops it): such a request gets a 420, so the
//! observer cannot be aimed at a third party.
//!
//! Anything that is not a well-formed Binding request (responses,
//! indications, other methods, malformed data, datagrams to an address we
//! do not own) gets no answer at all: an observer must not be usable as a
//! reflector for garbage.
//!
//! # No amplification (RFC 5780's safeguards)
//!
//! A request's source may be spoofed, so every answer fits a byte budget
//! the runtime gets from [`crate::reply_budget`] (what the destination IP
//! sent us, plus a one-off allowance): the XOR-MAPPED-ADDRESS (classic:
//! MAPPED-ADDRESS) is required, and OTHER-ADDRESS, RESPONSE-ORIGIN,
//! MAPPED-ADDRESS, SOFTWARE and FINGERPRINT follow in that order of
//! usefulness while they fit; if the required part does not fit there is
//! no answer. The same budget covers an answer sent to the port
//! RESPONSE-PORT names (always of the request's source IP) and one sent
//! from the address CHANGE-REQUEST picks (always to the request's source):
//! neither can aim more bytes at an address than it sent us. PADDING is
//! honoured by padding the answer up to the request's own size, never
//! beyond; a request with both PADDING and RESPONSE-PORT is refused (400),
//! as RFC 5780 asks. Our clients make their requests as large as the full
//! answer ([`crate::stun::Message::sized_for_answer`]).

use std::net::{IpAddr, SocketAddr};

use crate::stun::{attr, Attribute, Class, Message, METHOD_BINDING};

/// Observer addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverConfig {
    /// Primary IP and port.
    pub primary: SocketAddr,
    /// Alternate IP and port; must differ from `primary` in both and be of
    /// the same address family. `None` for a plain single-address node.
    pub alternate: Option<SocketAddr>,
    /// SOFTWARE attribute to include in responses, if any.
    pub software: Option<String>,
}

/// Why an [`ObserverConfig`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObserverConfigError {
    /// Alternate IP equals primary IP.
    SameIp,
    /// Alternate port equals primary port.
    SamePort,
    /// Alternate and primary are of different address families.
    MixedFamilies,
}

/// A response to send: from which of our local addresses, to where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// The observer. Stateless apart from its configuration.
#[derive(Clone, Debug)]
pub struct Observer {
    cfg: ObserverConfig,
}

impl Observer {
    pub fn new(cfg: ObserverConfig) -> Result<Observer, ObserverConfigError> {
        if let Some(alt) = cfg.alternate {
            if alt.is_ipv4() != cfg.primary.is_ipv4() {
                return Err(ObserverConfigError::MixedFamilies);
            }
            if alt.ip() == cfg.primary.ip() {
                return Err(ObserverConfigError::SameIp);
            }
            if alt.port() == cfg.primary.port() {
                return Err(ObserverConfigError::SamePort);
            }
        }
        Ok(Observer { cfg })
    }

    pub fn config(&self) -> &ObserverConfig {
        &self.cfg
    }

    /// The addresses the runtime must bind: 1 without an alternate, else 4
    /// (primary, alternate, then the two crossed combinations).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let p = self.cfg.primary;
        match self.cfg.alternate {
            None => vec![p],
            Some(a) => vec![
                p,
                a,
                SocketAddr::new(p.ip(), a.port()),
                SocketAddr::new(a.ip(), p.port()),
            ],
        }
    }

    /// For a local address, the one that differs in IP and/or port.
    fn changed(&self, local: SocketAddr, change_ip: bool, change_port: bool) -> Option<SocketAddr> {
        let alt = self.cfg.alternate?;
        let p = self.cfg.primary;
        let other_ip = |ip: IpAddr| if ip == p.ip() { alt.ip() } else { p.ip() };
        let other_port = |port: u16| if port == p.port() { alt.port() } else { p.port() };
        let ip = if change_ip { other_ip(local.ip()) } else { local.ip() };
        let port = if change_port { other_port(local.port()) } else { local.port() };
        Some(SocketAddr::new(ip, port))
    }

    /// Answer one datagram that arrived on `local` from `from` with at most
    /// `budget` bytes (what [`crate::reply_budget::ReplyBudget::admit`]
    /// allows towards `from`'s IP).
    pub fn answer_datagram(&self, local: SocketAddr, from: SocketAddr, data: &[u8], budget: usize) -> Result<Reply, NoAnswer> {
        let req = Message::decode_any(data).map_err(|_| NoAnswer::Ignored)?;
        self.answer(local, from, &req, data.len(), budget)
    }

    /// Like [`Observer::answer_datagram`] for a request already decoded
    /// from `len` bytes.
    pub fn answer(&self, local: SocketAddr, from: SocketAddr, req: &Message, len: usize, budget: usize) -> Result<Reply, NoAnswer> {
        if !self.local_addrs().contains(&local) {
            return Err(NoAnswer::Ignored);
        }
        if req.class != Class::Request || req.method != METHOD_BINDING {
            return Err(NoAnswer::Ignored);
        }
        if !req.unknown_required.is_empty() {
            return self.error(local, from, req, 420, "Unknown Attribute", req.unknown_required.clone(), budget);
        }
        // RFC 5780 does not allow the two together: a padded answer sent
        // to a port the request did not come from.
        if req.padding().is_some() && req.response_port().is_some() {
            return self.error(local, from, req, 400, "Bad Request", Vec::new(), budget);
        }
        let (change_ip, change_port) = req.change_request().unwrap_or((false, false));
        let src = if change_ip || change_port {
            match self.changed(local, change_ip, change_port) {
                Some(s) => s,
                None => return self.error(local, from, req, 420, "Unknown Attribute", vec![attr::CHANGE_REQUEST], budget),
            }
        } else {
            local
        };
        let dst = match req.response_port() {
            // Port 0 cannot be sent to; treat the request as malformed.
            Some(0) => return Err(NoAnswer::Ignored),
            Some(port) => SocketAddr::new(from.ip(), port),
            None => from,
        };
        let pad_to = req.padding().map(|_| len);
        if req.classic.is_some() {
            let base = reply_to(req, Class::SuccessResponse).with(Attribute::MappedAddress(from));
            let mut optional = Vec::new();
            if let Some(alt) = self.cfg.alternate {
                optional.push((2, Part::Attr(Attribute::ChangedAddress(alt))));
            }
            optional.push((1, Part::Attr(Attribute::SourceAddress(src))));
            return Ok(Reply { from: src, to: dst, payload: fit(base, optional, pad_to, budget)? });
        }
        let base = Message::new(Class::SuccessResponse, METHOD_BINDING, req.transaction_id).with(Attribute::XorMappedAddress(from));
        // Most useful first (what is left out when the budget is short);
        // the numbers are the wire order.
        let mut optional = Vec::new();
        // OTHER-ADDRESS is always the observer's configured alternate
        // address, as coturn reports it. RFC 5780 can also be read as "the
        // address opposite the responding socket", but the widely deployed
        // client (turnutils_natdiscovery) aims mapping test III at the
        // OTHER-ADDRESS of the test II response: with the opposite-socket
        // reading that lands on the primary IP, and an address-dependent
        // mapping is misreported as address-and-port-dependent (seen in the
        // lab). Our own detector only uses test I's answer, where both
        // readings agree.
        if let Some(alt) = self.cfg.alternate {
            optional.push((3, Part::Attr(Attribute::OtherAddress(alt))));
        }
        optional.push((2, Part::Attr(Attribute::ResponseOrigin(src))));
        optional.push((1, Part::Attr(Attribute::MappedAddress(from))));
        optional.push((5, Part::Fingerprint));
        if let Some(sw) = &self.cfg.software {
            optional.push((4, Part::Attr(Attribute::Software(sw.clone()))));
        }
        Ok(Reply { from: src, to: dst, payload: fit(base, optional, pad_to, budget)? })
    }

    /// The answer without a byte budget (tests of what a full answer is).
    #[cfg(test)]
    pub(crate) fn handle_datagram(&self, local: SocketAddr, from: SocketAddr, data: &[u8]) -> Option<Reply> {
        self.answer_datagram(local, from, data, usize::MAX).ok()
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &self,
        local: SocketAddr,
        from: SocketAddr,
        req: &Message,
        code: u16,
        reason: &str,
        mut unknown: Vec<u16>,
        budget: usize,
    ) -> Result<Reply, NoAnswer> {
        if req.classic.is_some() {
            // RFC 3489 §11.2.9/§11.2.10: the reason phrase is a multiple of
            // 4 bytes (padded with spaces) and an odd list of unknown
            // attributes repeats one of them.
            let mut reason = reason.to_string();
            while (4 + reason.len()) % 4 != 0 {
                reason.push(' ');
            }
            if unknown.len() % 2 == 1 {
                unknown.push(unknown[unknown.len() - 1]);
            }
            let mut resp = reply_to(req, Class::ErrorResponse).with(Attribute::ErrorCode { code, reason });
            if !unknown.is_empty() {
                resp = resp.with(Attribute::UnknownAttributes(unknown));
            }
            return Ok(Reply { from: local, to: from, payload: fit(resp, Vec::new(), None, budget)? });
        }
        let mut resp = Message::new(Class::ErrorResponse, METHOD_BINDING, req.transaction_id).with(Attribute::ErrorCode { code, reason: reason.into() });
        if !unknown.is_empty() {
            resp = resp.with(Attribute::UnknownAttributes(unknown));
        }
        let mut optional = vec![(1, Part::Fingerprint)];
        if let Some(sw) = &self.cfg.software {
            optional.push((0, Part::Attr(Attribute::Software(sw.clone()))));
        }
        Ok(Reply { from: local, to: from, payload: fit(resp, optional, None, budget)? })
    }
}

/// Why [`Observer::answer`] gives no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoAnswer {
    /// Not a well-formed Binding request to one of our addresses.
    Ignored,
    /// Even the shortest answer is larger than the budget.
    OverBudget,
}

/// An optional part of an answer.
enum Part {
    Attr(Attribute),
    Fingerprint,
}

/// `base` (whose attributes are all required) and as many of `optional`
/// as fit in `budget` bytes, taken in the order given (most useful first)
/// and written in the wire order of their numbers; then, when `pad_to` is
/// set (the request had PADDING), PADDING up to `pad_to` bytes within the
/// budget. RFC 5780 lets a client pad its request to test fragmentation;
/// padding the answer to the request's size keeps that test working both
/// ways without ever answering more than was sent.
fn fit(mut base: Message, optional: Vec<(u8, Part)>, pad_to: Option<usize>, budget: usize) -> Result<Vec<u8>, NoAnswer> {
    let mut len = base.encode().len();
    if len > budget {
        return Err(NoAnswer::OverBudget);
    }
    let mut chosen = Vec::new();
    for (at, part) in optional {
        let n = match &part {
            Part::Attr(a) => a.encoded_len(),
            Part::Fingerprint => 8,
        };
        if len + n > budget {
            continue;
        }
        len += n;
        match part {
            Part::Attr(a) => chosen.push((at, a)),
            Part::Fingerprint => base.fingerprint = true,
        }
    }
    chosen.sort_by_key(|(at, _)| *at);
    base.attributes.extend(chosen.into_iter().map(|(_, a)| a));
    if let Some(target) = pad_to {
        let room = target.min(budget).min(u16::MAX as usize).saturating_sub(len);
        if room >= 4 {
            base.attributes.push(Attribute::Padding(((room - 4) & !3) as u16));
        }
    }
    Ok(base.encode())
}

/// A response with the request's transaction id (all 128 bits of a classic
/// one).
fn reply_to(req: &Message, class: Class) -> Message {
    let mut m = Message::new(class, METHOD_BINDING, req.transaction_id);
    m.classic = req.classic;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn full() -> Observer {
        Observer::new(ObserverConfig {
            primary: sa("198.51.100.1:3478"),
            alternate: Some(sa("198.51.100.2:3479")),
            software: Some("macula-observer".into()),
        })
        .unwrap()
    }

    fn single() -> Observer {
        Observer::new(ObserverConfig { primary: sa("198.51.100.9:3478"), alternate: None, software: None }).unwrap()
    }

    fn client() -> SocketAddr {
        sa("203.0.113.5:40000")
    }

    fn decode(r: &Reply) -> Message {
        Message::decode(&r.payload).unwrap()
    }

    #[test]
    fn config_validation() {
        let p = sa("198.51.100.1:3478");
        let mk = |alt: &str| Observer::new(ObserverConfig { primary: p, alternate: Some(sa(alt)), software: None });
        assert_eq!(mk("198.51.100.1:3479").unwrap_err(), ObserverConfigError::SameIp);
        assert_eq!(mk("198.51.100.2:3478").unwrap_err(), ObserverConfigError::SamePort);
        assert_eq!(mk("[2001:db8::1]:3479").unwrap_err(), ObserverConfigError::MixedFamilies);
        assert_eq!(full().local_addrs().len(), 4);
        assert_eq!(single().local_addrs(), vec![sa("198.51.100.9:3478")]);
    }

    #[test]
    fn plain_binding_gets_all_discovery_attributes() {
        let obs = full();
        let req = Message::binding_request(TID).encode();
        let r = obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap();
        assert_eq!(r.from, sa("198.51.100.1:3478"));
        assert_eq!(r.to, client());
        let m = decode(&r);
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(m.transaction_id, TID);
        assert!(m.fingerprint);
        assert_eq!(m.mapped_address(), Some(client()));
        assert!(m.attributes.contains(&Attribute::MappedAddress(client())));
        assert!(m.attributes.contains(&Attribute::ResponseOrigin(sa("198.51.100.1:3478"))));
        assert_eq!(m.other_address(), Some(sa("198.51.100.2:3479")));
        assert!(m.attributes.contains(&Attribute::Software("macula-observer".into())));
    }

    #[test]
    fn change_request_picks_the_right_source_from_every_local_address() {
        let obs = full();
        let (ip1, ip2): (IpAddr, IpAddr) = ("198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
        let (p1, p2) = (3478, 3479);
        for local in obs.local_addrs() {
            for (ci, cp) in [(false, false), (true, false), (false, true), (true, true)] {
                let req = Message::binding_request(TID)
                    .with(Attribute::ChangeRequest { change_ip: ci, change_port: cp })
                    .encode();
                let r = obs.handle_datagram(local, client(), &req).unwrap();
                let want_ip = match (ci, local.ip() == ip1) {
                    (false, _) => local.ip(),
                    (true, true) => ip2,
                    (true, false) => ip1,
                };
                let want_port = if cp { if local.port() == p1 { p2 } else { p1 } } else { local.port() };
                assert_eq!(r.from, SocketAddr::new(want_ip, want_port), "{local} {ci} {cp}");
                assert!(obs.local_addrs().contains(&r.from));
                let m = decode(&r);
                assert!(m.attributes.contains(&Attribute::ResponseOrigin(r.from)));
                // OTHER-ADDRESS is the configured alternate, whoever answers.
                assert_eq!(m.other_address(), Some(SocketAddr::new(ip2, p2)));
            }
        }
    }

    #[test]
    fn response_port_redirects_to_source_ip() {
        let obs = full();
        let req = Message::binding_request(TID).with(Attribute::ResponsePort(5555)).encode();
        let r = obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap();
        assert_eq!(r.to, sa("203.0.113.5:5555"));
        assert_eq!(decode(&r).mapped_address(), Some(client()));
        let zero = Message::binding_request(TID).with(Attribute::ResponsePort(0)).encode();
        assert!(obs.handle_datagram(sa("198.51.100.1:3478"), client(), &zero).is_none());
    }

    #[test]
    fn padding_fills_the_answer_up_to_the_request() {
        let obs = full();
        let req = Message::binding_request(TID).with(Attribute::Padding(600)).encode();
        let r = obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap();
        let m = decode(&r);
        assert!(m.padding().is_some());
        assert!(m.other_address().is_some());
        assert_eq!(r.payload.len(), req.len(), "as large as the request, no larger");
        // Within a smaller budget the padding shrinks first.
        let r = obs.answer_datagram(sa("198.51.100.1:3478"), client(), &req, 300).unwrap();
        assert!(r.payload.len() <= 300 && r.payload.len() > 296);
        assert!(decode(&r).other_address().is_some());
    }

    #[test]
    fn padding_with_response_port_is_refused() {
        let obs = full();
        let req = Message::binding_request(TID).with(Attribute::Padding(600)).with(Attribute::ResponsePort(5555)).encode();
        let r = obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap();
        assert_eq!(r.to, client(), "the error goes to the source");
        let m = decode(&r);
        assert_eq!(m.error_code().map(|e| e.0), Some(400));
        assert!(r.payload.len() < req.len());
    }

    #[test]
    fn answers_fit_the_budget_most_useful_attributes_first() {
        let obs = full();
        let local = sa("198.51.100.1:3478");
        let req = Message::binding_request(TID).encode();
        let full_len = obs.handle_datagram(local, client(), &req).unwrap().payload.len();
        let mut last = 0;
        for budget in 0..=full_len + 8 {
            match obs.answer_datagram(local, client(), &req, budget) {
                Err(NoAnswer::OverBudget) => assert!(budget < 32, "XOR-MAPPED-ADDRESS alone is 32 bytes: {budget}"),
                Err(e) => panic!("{e:?}"),
                Ok(r) => {
                    assert!(r.payload.len() <= budget, "{budget}");
                    assert!(r.payload.len() >= last, "more budget never gives less");
                    last = r.payload.len();
                    let m = decode(&r);
                    assert_eq!(m.mapped_address(), Some(client()));
                    if budget >= 44 {
                        assert_eq!(m.other_address(), Some(sa("198.51.100.2:3479")), "{budget}");
                    }
                    if budget >= 56 {
                        assert!(m.attributes.contains(&Attribute::ResponseOrigin(local)), "{budget}");
                    }
                }
            }
        }
        assert_eq!(last, full_len);
        // A request made as large as the answer gets all of it within a
        // budget of its own size.
        let sized = Message::binding_request(TID).with_fingerprint().sized_for_answer().encode();
        assert_eq!(sized.len(), crate::stun::ANSWER_ROOM);
        let r = obs.answer_datagram(local, client(), &sized, sized.len()).unwrap();
        assert_eq!(r.payload, obs.handle_datagram(local, client(), &sized).unwrap().payload);
        // So does an IPv6 client of an IPv6 observer, SOFTWARE aside.
        let obs6 = Observer::new(ObserverConfig {
            primary: sa("[2001:db8::1]:3478"),
            alternate: Some(sa("[2001:db8::2]:3479")),
            software: Some("macula-observer".into()),
        })
        .unwrap();
        let c6 = sa("[2001:db8:ffff::5]:50000");
        let r = obs6.answer_datagram(sa("[2001:db8::1]:3478"), c6, &sized, sized.len()).unwrap();
        let m = decode(&r);
        assert!(m.fingerprint && m.other_address().is_some() && m.attributes.contains(&Attribute::MappedAddress(c6)));
        // Classic answers too: MAPPED-ADDRESS, then CHANGED-ADDRESS.
        let classic = classic(None).encode();
        assert_eq!(obs.answer_datagram(local, client(), &classic, 31), Err(NoAnswer::OverBudget));
        let m = decode_classic(&obs.answer_datagram(local, client(), &classic, 44).unwrap());
        assert_eq!(m.attributes, vec![Attribute::MappedAddress(client()), Attribute::ChangedAddress(sa("198.51.100.2:3479"))]);
        // Errors too.
        let change = Message::binding_request(TID).with(Attribute::ChangeRequest { change_ip: true, change_port: false }).encode();
        assert_eq!(single().answer_datagram(sa("198.51.100.9:3478"), client(), &change, 20), Err(NoAnswer::OverBudget));
    }

    #[test]
    fn single_address_node_answers_binding_but_420s_change_request() {
        let obs = single();
        let local = sa("198.51.100.9:3478");
        let req = Message::binding_request(TID).encode();
        let m = decode(&obs.handle_datagram(local, client(), &req).unwrap());
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(m.other_address(), None, "no OTHER-ADDRESS without an alternate");

        let noop = Message::binding_request(TID).with(Attribute::ChangeRequest { change_ip: false, change_port: false });
        let m = decode(&obs.handle_datagram(local, client(), &noop.encode()).unwrap());
        assert_eq!(m.class, Class::SuccessResponse);

        for (ci, cp) in [(true, false), (false, true), (true, true)] {
            let req = Message::binding_request(TID).with(Attribute::ChangeRequest { change_ip: ci, change_port: cp });
            let r = obs.handle_datagram(local, client(), &req.encode()).unwrap();
            assert_eq!((r.from, r.to), (local, client()));
            let m = decode(&r);
            assert_eq!(m.class, Class::ErrorResponse);
            assert_eq!(m.error_code().map(|e| e.0), Some(420));
            assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![attr::CHANGE_REQUEST])));
        }
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        let obs = full();
        let mut req = Message::binding_request(TID).encode();
        // Append an unknown comprehension-required attribute 0x0030.
        req.extend_from_slice(&[0x00, 0x30, 0, 4, 1, 2, 3, 4]);
        let len = (req.len() - 20) as u16;
        req[2..4].copy_from_slice(&len.to_be_bytes());
        let m = decode(&obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap());
        assert_eq!(m.error_code().map(|e| e.0), Some(420));
        assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![0x0030])));
    }

    #[test]
    fn non_requests_and_garbage_get_nothing() {
        let obs = full();
        let local = sa("198.51.100.1:3478");
        for class in [Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
            let m = Message::new(class, METHOD_BINDING, TID).encode();
            assert!(obs.handle_datagram(local, client(), &m).is_none());
        }
        let other_method = Message::new(Class::Request, 0x003, TID).encode();
        assert!(obs.handle_datagram(local, client(), &other_method).is_none());
        assert!(obs.handle_datagram(local, client(), b"hello").is_none());
        assert!(obs.handle_datagram(local, client(), &[]).is_none());
        let mut bad_fp = Message::binding_request(TID).with_fingerprint().encode();
        let n = bad_fp.len();
        bad_fp[n - 1] ^= 1;
        assert!(obs.handle_datagram(local, client(), &bad_fp).is_none());
        let good = Message::binding_request(TID).encode();
        assert!(obs.handle_datagram(sa("192.0.2.99:3478"), client(), &good).is_none(), "not our address");
    }

    const CLASSIC_ID: [u8; 16] = [0x5a, 0xa5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

    fn classic(change: Option<(bool, bool)>) -> Message {
        let mut m = Message::classic(Class::Request, METHOD_BINDING, CLASSIC_ID);
        if let Some((change_ip, change_port)) = change {
            m = m.with(Attribute::ChangeRequest { change_ip, change_port });
        }
        m
    }

    fn decode_classic(r: &Reply) -> Message {
        assert_eq!(Message::decode(&r.payload).unwrap_err(), crate::stun::StunError::BadMagicCookie);
        let m = Message::decode_any(&r.payload).unwrap();
        assert_eq!(m.classic_transaction_id(), Some(CLASSIC_ID), "the whole 128-bit id comes back");
        m
    }

    #[test]
    fn classic_request_gets_a_classic_answer() {
        let obs = full();
        // The bytes Debian's `stun` 0.97 sends for test I.
        let mut req = vec![0, 1, 0, 0];
        req.extend_from_slice(&CLASSIC_ID);
        let r = obs.handle_datagram(sa("198.51.100.1:3478"), client(), &req).unwrap();
        assert_eq!((r.from, r.to), (sa("198.51.100.1:3478"), client()));
        let m = decode_classic(&r);
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(
            m.attributes,
            vec![
                Attribute::MappedAddress(client()),
                Attribute::SourceAddress(sa("198.51.100.1:3478")),
                Attribute::ChangedAddress(sa("198.51.100.2:3479")),
            ],
            "RFC 3489 attributes only: no XOR form, no SOFTWARE"
        );
        assert!(!m.fingerprint);
        // Byte layout: MAPPED-ADDRESS first, IPv4, port 40000, not XORed.
        assert_eq!(&r.payload[..4], &[0x01, 0x01, 0, 36]);
        assert_eq!(&r.payload[4..20], &CLASSIC_ID);
        assert_eq!(&r.payload[20..32], &[0, 1, 0, 8, 0, 1, 0x9c, 0x40, 203, 0, 113, 5]);
    }

    #[test]
    fn classic_change_request_is_honoured_from_every_local_address() {
        let obs = full();
        for local in obs.local_addrs() {
            for (ci, cp) in [(false, false), (true, false), (false, true), (true, true)] {
                let modern = Message::binding_request(TID).with(Attribute::ChangeRequest { change_ip: ci, change_port: cp });
                let want = obs.handle_datagram(local, client(), &modern.encode()).unwrap();
                let r = obs.handle_datagram(local, client(), &classic(Some((ci, cp))).encode()).unwrap();
                assert_eq!((r.from, r.to), (want.from, want.to), "{local} {ci} {cp}: same source as for RFC 5780");
                let m = decode_classic(&r);
                assert_eq!(m.mapped_address(), Some(client()));
                assert!(m.attributes.contains(&Attribute::SourceAddress(r.from)));
                assert_eq!(m.other_address(), Some(sa("198.51.100.2:3479")));
            }
        }
    }

    #[test]
    fn classic_request_to_a_single_address_node() {
        let obs = single();
        let local = sa("198.51.100.9:3478");
        let m = decode_classic(&obs.handle_datagram(local, client(), &classic(None).encode()).unwrap());
        assert_eq!(m.class, Class::SuccessResponse);
        assert_eq!(m.attributes, vec![Attribute::MappedAddress(client()), Attribute::SourceAddress(local)]);
        // A change it cannot make: a classic 420, padded the RFC 3489 way.
        let r = obs.handle_datagram(local, client(), &classic(Some((true, true))).encode()).unwrap();
        assert_eq!((r.from, r.to), (local, client()));
        let m = decode_classic(&r);
        assert_eq!(m.class, Class::ErrorResponse);
        assert_eq!(m.error_code(), Some((420, "Unknown Attribute   ")));
        assert!(m.attributes.contains(&Attribute::UnknownAttributes(vec![attr::CHANGE_REQUEST, attr::CHANGE_REQUEST])));
        assert!(!m.fingerprint);
        // Every attribute length is a multiple of 4, as RFC 3489 parsers expect.
        let mut pos = 20;
        while pos < r.payload.len() {
            let len = u16::from_be_bytes([r.payload[pos + 2], r.payload[pos + 3]]) as usize;
            assert_eq!(len % 4, 0, "attribute at {pos}");
            pos += 4 + len;
        }
    }

    #[test]
    fn classic_response_address_is_refused_and_garbage_ignored() {
        let obs = full();
        let local = sa("198.51.100.1:3478");
        // RESPONSE-ADDRESS (0x0002) would aim the answer at a third party.
        let mut req = classic(None).encode();
        req.extend_from_slice(&[0, 2, 0, 8, 0, 1, 0x13, 0x88, 192, 0, 2, 1]);
        let body = (req.len() - 20) as u16;
        req[2..4].copy_from_slice(&body.to_be_bytes());
        let r = obs.handle_datagram(local, client(), &req).unwrap();
        assert_eq!(r.to, client());
        assert_eq!(decode_classic(&r).error_code().map(|e| e.0), Some(420));
        // Classic responses and other methods get nothing.
        let resp = Message::classic(Class::SuccessResponse, METHOD_BINDING, CLASSIC_ID).encode();
        assert!(obs.handle_datagram(local, client(), &resp).is_none());
        let other = Message::classic(Class::Request, 0x003, CLASSIC_ID).encode();
        assert!(obs.handle_datagram(local, client(), &other).is_none());
    }

    #[test]
    fn ipv6_observer_works() {
        let obs = Observer::new(ObserverConfig {
            primary: sa("[2001:db8::1]:3478"),
            alternate: Some(sa("[2001:db8::2]:3479")),
            software: None,
        })
        .unwrap();
        let c = sa("[2001:db8:ffff::5]:50000");
        let req = Message::binding_request(TID).with(Attribute::ChangeRequest { change_ip: true, change_port: true });
        let r = obs.handle_datagram(sa("[2001:db8::1]:3478"), c, &req.encode()).unwrap();
        assert_eq!(r.from, sa("[2001:db8::2]:3479"));
        assert_eq!(decode(&r).mapped_address(), Some(c));
    }
}
