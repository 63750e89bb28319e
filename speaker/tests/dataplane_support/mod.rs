//! The speaker's part of the routed lab ([`herald_testkit::routed`]): its dataplane, started
//! in a node.

use herald_speaker::dataplane::{Dataplane, DataplaneConfig, DataplaneError, Forwarding, SnatPorts};
use herald_testkit::in_netns;
use herald_testkit::routed::RoutedLab;

/// Starts the dataplane in node `i` of `lab` on its eth0, pins under the lab's bpffs.
pub fn start_dataplane(lab: &RoutedLab, i: u8) -> Result<Dataplane, DataplaneError> {
    let config = dataplane_config(lab, i);
    in_netns(&lab.node(i), move || Dataplane::start(config))
}

/// What [`start_dataplane`] starts, for a test to change first.
pub fn dataplane_config(lab: &RoutedLab, i: u8) -> DataplaneConfig {
    DataplaneConfig {
        interfaces: vec!["eth0".into()],
        pin_dir: lab.pin_dir(i),
        node_name: format!("node{i}"),
        node_addresses: vec![lab.node_addr(i, false), lab.node_addr(i, true)],
        forwarding: Forwarding::Dsr,
        snat_ports: SnatPorts::default(),
    }
}
