//! UPnP IGD (v1 and v2 devices) through `igd-next`: SSDP discovery, then
//! SOAP AddPortMapping / DeletePortMapping on the WAN connection service.

use super::{Mapped, Network};
use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use macula_nat_proto::portmap::Protocol;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const DESCRIPTION: &str = "macula_nat";

async fn find(net: Network) -> Result<Gateway<Tokio>, String> {
    let mut opts = SearchOptions::default();
    opts.bind_addr = SocketAddr::new(IpAddr::V4(net.local), 0);
    opts.timeout = Some(Duration::from_secs(3));
    opts.single_search_timeout = Some(Duration::from_secs(2));
    search_gateway(opts).await.map_err(|e| format!("discovery: {e}"))
}

/// Maps UDP `port` (same external port asked; a lease of `lifetime_s`,
/// or a permanent one when the device only takes those, error 725).
pub async fn map(net: Network, port: u16, lifetime_s: u32) -> Result<Mapped, String> {
    let gw = find(net).await?;
    let ip = gw.get_external_ip().await.map_err(|e| format!("external address: {e}"))?;
    let local = SocketAddr::new(IpAddr::V4(net.local), port);
    let mut lease = lifetime_s;
    if let Err(e) = gw.add_port(PortMappingProtocol::UDP, port, local, lease, DESCRIPTION).await {
        match e {
            igd_next::AddPortError::OnlyPermanentLeasesSupported => {
                lease = 0;
                gw.add_port(PortMappingProtocol::UDP, port, local, 0, DESCRIPTION).await.map_err(|e| format!("add: {e}"))?;
            }
            e => return Err(format!("add: {e}")),
        }
    }
    Ok(Mapped {
        protocol: Protocol::Upnp,
        external: SocketAddr::new(ip, port),
        internal_port: port,
        // A permanent lease is still renewed now and then (an hour).
        lifetime_s: if lease == 0 { 7200 } else { lease },
        network: net,
        obtained: Instant::now(),
        pcp_nonce: None,
    })
}

pub async fn delete(net: Network, external_port: u16) -> Result<(), String> {
    let gw = find(net).await?;
    gw.remove_port(PortMappingProtocol::UDP, external_port).await.map_err(|e| format!("delete: {e}"))
}
