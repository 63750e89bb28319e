//! Which links announce (and carry the dataplane): the default selection rules, an explicit
//! list, and the per-IP narrowing by an `L2Advertisement`'s `interfaces`.
//!
//! Invariant: an explicitly named interface (the announcer's `interfaces` setting or an IP's
//! own list) wins over the default exclusions, because in labs and some CNIs the only path to
//! the L2 segment is a veth. Being up, running (carrier) and broadcast-capable is always
//! required: announcing from a NIC that is down keeps traffic away from a live node.

use super::LinkInfo;

/// Name patterns excluded by default: container, CNI, tunnel and loopback devices. A trailing
/// `*` matches any suffix; otherwise the name must be equal.
pub const DEFAULT_EXCLUDED_INTERFACES: &[&str] = &[
    "lo",
    "veth*",
    "docker*",
    "cni*",
    "lxc*",
    "cali*",
    "flannel*",
    "kube-ipvs*",
    "kube-bridge*",
    "cilium*",
    "vxlan*",
    "tunl*",
    "tun*",
    "tap*",
    "wg*",
    "genev*",
    "nodelocaldns*",
    "virbr*",
    "weave*",
];

/// How the node-wide set of announcing interfaces is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePolicy {
    /// When set, exactly these interfaces (if they can announce), exclusions notwithstanding.
    pub explicit: Option<Vec<String>>,
    /// Patterns ([`DEFAULT_EXCLUDED_INTERFACES`] syntax) left out of the default selection.
    pub excluded: Vec<String>,
}

impl Default for InterfacePolicy {
    fn default() -> Self {
        InterfacePolicy {
            explicit: None,
            excluded: DEFAULT_EXCLUDED_INTERFACES
                .iter()
                .map(|pattern| pattern.to_string())
                .collect(),
        }
    }
}

impl InterfacePolicy {
    /// The node-wide announcing interfaces among `links`, sorted by name.
    pub fn usable<'a>(&self, links: &'a [LinkInfo]) -> Vec<&'a LinkInfo> {
        let mut usable: Vec<&LinkInfo> = links
            .iter()
            .filter(|link| link.can_announce())
            .filter(|link| match &self.explicit {
                Some(names) => names.contains(&link.name),
                None => !link.has_master && !self.is_excluded(&link.name),
            })
            .collect();
        usable.sort_by(|a, b| a.name.cmp(&b.name));
        usable
    }

    /// The links that could announce but are outside the node-wide selection (excluded by
    /// name, enslaved, or not named by [`InterfacePolicy::explicit`]): an advertisement may
    /// still name them. Sorted by name.
    pub fn others<'a>(&self, links: &'a [LinkInfo]) -> Vec<&'a LinkInfo> {
        let usable = self.usable(links);
        let mut others: Vec<&LinkInfo> = links
            .iter()
            .filter(|link| link.can_announce() && !usable.iter().any(|u| u.name == link.name))
            .collect();
        others.sort_by(|a, b| a.name.cmp(&b.name));
        others
    }

    fn is_excluded(&self, name: &str) -> bool {
        self.excluded.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        })
    }
}

/// The interfaces one IP is announced on: the node-wide set, or, when the IP's advertisement
/// names interfaces, those of them that can announce (even if excluded by default).
pub fn interfaces_for_ip(links: &[LinkInfo], usable: &[&LinkInfo], only: Option<&[String]>) -> Vec<String> {
    match only {
        None => usable.iter().map(|link| link.name.clone()).collect(),
        Some(names) => {
            let mut chosen: Vec<String> = links
                .iter()
                .filter(|link| link.can_announce() && names.contains(&link.name))
                .map(|link| link.name.clone())
                .collect();
            chosen.sort();
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcer::MacAddr;

    fn link(name: &str, index: u32) -> LinkInfo {
        LinkInfo {
            name: name.to_string(),
            index,
            mac: Some(MacAddr([2, 0, 0, 0, 0, index as u8])),
            up: true,
            running: true,
            broadcast: true,
            loopback: false,
            has_master: false,
        }
    }

    fn names(links: &[&LinkInfo]) -> Vec<String> {
        links.iter().map(|link| link.name.clone()).collect()
    }

    #[test]
    fn default_selection_skips_container_devices_members_and_dead_links() {
        let mut links = vec![
            link("eth0", 2),
            link("veth1234", 3),
            link("cali99", 4),
            link("cni0", 5),
            link("kube-ipvs0", 6),
            link("bond0", 7),
            link("ens3", 8),
            link("ens4", 9),
            link("ens5", 10),
            link("lo", 1),
            link("ens6", 11),
        ];
        links[7].has_master = true; // ens4 enslaved to bond0
        links[8].running = false; // ens5 has no carrier
        links[9].loopback = true;
        links[10].up = false;
        let usable = InterfacePolicy::default().usable(&links);
        assert_eq!(names(&usable), ["bond0", "ens3", "eth0"]);
        // What an advertisement may still name: capable links outside the selection, never a
        // link without carrier, down, or loopback.
        let others = InterfacePolicy::default().others(&links);
        assert_eq!(names(&others), ["cali99", "cni0", "ens4", "kube-ipvs0", "veth1234"]);
    }

    #[test]
    fn explicit_list_wins_over_exclusions_but_not_over_link_state() {
        let mut links = vec![link("eth0", 2), link("veth-a", 3), link("veth-b", 4)];
        links[2].up = false;
        let policy = InterfacePolicy {
            explicit: Some(vec!["veth-a".into(), "veth-b".into(), "missing".into()]),
            ..InterfacePolicy::default()
        };
        assert_eq!(names(&policy.usable(&links)), ["veth-a"]);
    }

    #[test]
    fn per_ip_list_narrows_or_reaches_excluded_links() {
        let links = vec![link("eth0", 2), link("eth1", 3), link("veth-a", 4)];
        let usable = InterfacePolicy::default().usable(&links);
        assert_eq!(interfaces_for_ip(&links, &usable, None), ["eth0", "eth1"]);
        let only = vec!["eth1".to_string()];
        assert_eq!(interfaces_for_ip(&links, &usable, Some(&only)), ["eth1"]);
        let only = vec!["veth-a".to_string(), "gone".to_string()];
        assert_eq!(interfaces_for_ip(&links, &usable, Some(&only)), ["veth-a"]);
    }

    #[test]
    fn exact_patterns_do_not_match_prefixes() {
        let links = vec![link("lom1", 2)];
        assert_eq!(names(&InterfacePolicy::default().usable(&links)), ["lom1"]);
    }
}
