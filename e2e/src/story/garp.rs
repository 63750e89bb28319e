//! Gratuitous ARP seen by the client: `tcpdump -l -tt -n -e arp` lines parsed into
//! (time, sender MAC, address), so a failover measures when the new owner's announcement
//! reached the client, on the wire.

/// A gratuitous ARP request (sender address = target address) as captured.
#[derive(Debug, Clone, PartialEq)]
pub struct Gratuitous {
    /// Capture time, Unix seconds.
    pub at_unix_s: f64,
    pub sender_mac: String,
    pub address: String,
}

/// Parses one line of `tcpdump -tt -n -e arp` output; `None` for anything that is not a
/// gratuitous ARP request.
pub fn parse_line(line: &str) -> Option<Gratuitous> {
    // 1795698713.174045 52:4a:de:30:99:2f > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.203.0.200 tell 10.203.0.200, length 28
    let mut fields = line.split_whitespace();
    let at_unix_s: f64 = fields.next()?.parse().ok()?;
    let sender_mac = fields.next()?.to_string();
    let rest = line.split_once("Request who-has ")?.1;
    let (target, rest) = rest.split_once(" tell ")?;
    let sender_ip = rest.split(|c: char| c == ',' || c.is_whitespace()).next()?;
    (target == sender_ip).then(|| Gratuitous {
        at_unix_s,
        sender_mac,
        address: target.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gratuitous_requests_count() {
        let garp = "1795698713.174045 52:4a:de:30:99:2f > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.203.0.200 tell 10.203.0.200, length 28";
        assert_eq!(
            parse_line(garp),
            Some(Gratuitous {
                at_unix_s: 1795698713.174045,
                sender_mac: "52:4a:de:30:99:2f".into(),
                address: "10.203.0.200".into(),
            })
        );
        let request = "1795698713.2 52:4a:de:30:99:2f > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.203.0.200 tell 10.203.0.100, length 28";
        assert_eq!(parse_line(request), None);
        let reply = "1795698713.3 ce:f1:ac:dc:35:30 > 52:4a:de:30:99:2f, ethertype ARP (0x0806), length 42: Reply 10.203.0.200 is-at ce:f1:ac:dc:35:30, length 28";
        assert_eq!(parse_line(reply), None);
        assert_eq!(parse_line("tcpdump: listening on eth0"), None);
    }
}
