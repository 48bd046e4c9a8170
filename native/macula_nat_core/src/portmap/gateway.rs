//! The network a mapping is asked on: the default route's gateway (IPv4,
//! from `/proc/net/route`) and our own address towards it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where mappings are asked for, and from which of our addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub gateway: Ipv4Addr,
    pub local: Ipv4Addr,
}

/// The IPv4 default route's gateway in a `/proc/net/route` table (the
/// lowest metric wins).
pub fn parse_route_table(table: &str) -> Option<Ipv4Addr> {
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
            continue;
        }
        let (Ok(gw), Ok(flags), Ok(metric)) = (u32::from_str_radix(f[2], 16), u16::from_str_radix(f[3], 16), f[6].parse::<u32>()) else { continue };
        // RTF_UP | RTF_GATEWAY
        if flags & 0x3 != 0x3 || gw == 0 {
            continue;
        }
        // The kernel prints the address in host order of a little-endian
        // machine: bytes reversed.
        let ip = Ipv4Addr::from(gw.to_le_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

/// The default gateway now and our address towards it; `None` without an
/// IPv4 default route.
pub fn current() -> Option<Network> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let gateway = parse_route_table(&table)?;
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect(SocketAddr::new(IpAddr::V4(gateway), macula_nat_proto::portmap::SERVER_PORT)).ok()?;
    match probe.local_addr().ok()?.ip() {
        IpAddr::V4(local) => Some(Network { gateway, local }),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t011212C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth0\t001212C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
wlan0\t00000000\t0100A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0\n";

    #[test]
    fn default_route_with_the_lowest_metric() {
        assert_eq!(parse_route_table(TABLE), Some(Ipv4Addr::new(192, 168, 0, 1)));
        let one = TABLE.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_route_table(&one), Some(Ipv4Addr::new(198, 18, 18, 1)));
    }

    #[test]
    fn no_default_route() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n eth0\t001212C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(parse_route_table(t), None);
        assert_eq!(parse_route_table(""), None);
        // A default route without the gateway flag (a point-to-point link).
        assert_eq!(parse_route_table("h\ntun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n"), None);
    }
}
