//! Reading coturn's `turnutils_natdiscovery` output, shared by the lab's
//! tests, the detection tests and the benchmarks.

/// The behaviour `turnutils_natdiscovery` reports for `what` (`"mapping"` or
/// `"filtering"`) as `"ei"`, `"hd"` (address dependent) or `"pd"` (address
/// and port dependent). Handles both "NAT with Endpoint Independent
/// Mapping!" and "No NAT! (Endpoint Independent Mapping)".
pub fn behaviour(out: &str, what: &str) -> Option<&'static str> {
    let what = what.to_ascii_lowercase();
    for line in out.lines() {
        let l = line.trim().to_ascii_lowercase();
        if !l.contains(&what) || !l.contains("nat") {
            continue;
        }
        if l.contains("endpoint independent") {
            return Some("ei");
        }
        if l.contains("address and port dependent") {
            return Some("pd");
        }
        if l.contains("address dependent") {
            return Some("hd");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::behaviour;

    #[test]
    fn reads_both_forms() {
        let out = "NAT with Address Dependent Mapping!\nNo NAT! (Endpoint Independent Filtering)\n";
        assert_eq!(behaviour(out, "mapping"), Some("hd"));
        assert_eq!(behaviour(out, "filtering"), Some("ei"));
        assert_eq!(behaviour("NAT with Address and Port Dependent Filtering!", "filtering"), Some("pd"));
        assert_eq!(behaviour("nothing here", "mapping"), None);
    }
}
