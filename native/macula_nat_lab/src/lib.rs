//! NAT lab toolkit (see issue 3 and README.md).
//!
//! Builds topologies of network namespaces joined by veth links: an "internet"
//! bridge, observer/relay/public hosts, and sites (a host behind a NAT router:
//! nftables NATs or the userspace NAT engine over TUN with delay/jitter/loss).

pub mod engine;
pub mod impair;
pub mod lab;
pub mod natdiscovery;
pub mod netns;
pub mod probe;
pub mod spec;

pub use lab::{reap, HostInfo, Lab, LabInfo, Role, RouterStats, SiteInfo, UpOptions};
pub use spec::{Alloc, Dep, KernelNat, LabSpec, NatKind, SiteSpec, UserNat};

/// True when this process can build labs (root, `ip` and `nft` present, /dev/net/tun).
/// Returns the reason when it cannot.
pub fn can_run() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for t in ["ip", "nft"] {
        if which(t).is_none() {
            return Err(format!("{t} not found in PATH"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun missing".into());
    }
    Ok(())
}

/// Locate an executable in PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
