//! Allocator tests: one per rule and error message, plus property tests over random sequences
//! of requests, releases and pool changes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use herald_config::address::{IpFamily, IpRange, parse_address_entry};
use herald_config::pool::{IPAddressPoolSpec, ServiceAllocation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn ranges(entries: &[&str]) -> Vec<IpRange> {
    entries
        .iter()
        .map(|e| parse_address_entry(e).expect("test range"))
        .collect()
}

fn pool(name: &str, entries: &[&str]) -> Pool {
    Pool::new(name, ranges(entries))
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn auto4(name: &str) -> ServiceRequest {
    ServiceRequest::auto(key(name), IpFamily::V4)
}

fn explicit(name: &str, ips: &[&str]) -> ServiceRequest {
    let requested_ips: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
    let mut families: Vec<IpFamily> = requested_ips.iter().map(|i| IpFamily::of(*i)).collect();
    families.dedup();
    ServiceRequest {
        family_policy: if families.len() == 2 {
            FamilyPolicy::RequireDualStack
        } else {
            FamilyPolicy::SingleStack
        },
        ip_families: families,
        requested_ips,
        ..ServiceRequest::auto(key(name), IpFamily::V4)
    }
}

fn dual(name: &str, policy: FamilyPolicy) -> ServiceRequest {
    ServiceRequest {
        ip_families: vec![IpFamily::V4, IpFamily::V6],
        family_policy: policy,
        ..ServiceRequest::auto(key(name), IpFamily::V4)
    }
}

fn tcp(port: u16) -> ServicePort {
    ServicePort::new(Protocol::Tcp, port)
}

fn with_sharing(mut req: ServiceRequest, sharing_key: Option<&str>, ports: &[u16]) -> ServiceRequest {
    req.sharing = SharingInfo {
        key: sharing_key.map(str::to_string),
        backend: Backend::Cluster,
        ports: ports.iter().map(|p| tcp(*p)).collect(),
    };
    req
}

fn allocator(pools: Vec<Pool>) -> Allocator {
    let mut a = Allocator::new();
    assert!(a.set_pools(pools).is_empty());
    a
}

fn ok(a: &mut Allocator, req: &ServiceRequest) -> Vec<IpAddr> {
    let result = a.allocate(req);
    a.verify().expect("invariants hold");
    result.unwrap_or_else(|e| panic!("{} refused: {e}", req.key)).ips
}

fn err(a: &mut Allocator, req: &ServiceRequest) -> String {
    let before = a.ips_of(&req.key).map(<[IpAddr]>::to_vec);
    let result = a.allocate(req);
    a.verify().expect("invariants hold");
    assert_eq!(
        a.ips_of(&req.key).map(<[IpAddr]>::to_vec),
        before,
        "a refused request changed what {} holds",
        req.key
    );
    match result {
        Ok(alloc) => panic!("{} unexpectedly got {:?}", req.key, alloc.ips),
        Err(e) => {
            assert!(
                AllocError::REASONS.contains(&e.reason()),
                "{e:?}: its reason {} is listed (the metric's series are created from the list)",
                e.reason()
            );
            e.to_string()
        }
    }
}

#[test]
fn refusals_have_stable_reasons() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/32"])]);
    ok(&mut a, &auto4("s"));
    let reason = |a: &mut Allocator, req: &ServiceRequest| a.allocate(req).expect_err("refused").reason();
    assert_eq!(reason(&mut a, &auto4("t")), "pool_exhausted");
    assert_eq!(reason(&mut a, &explicit("t", &["10.0.0.0"])), "ip_in_use");
    assert_eq!(reason(&mut a, &explicit("t", &["192.0.2.1"])), "ip_not_in_pool");
    let mut named = auto4("t");
    named.pool = Some("nope".into());
    assert_eq!(reason(&mut a, &named), "unknown_pool");
    let unique: std::collections::BTreeSet<_> = AllocError::REASONS.iter().collect();
    assert_eq!(unique.len(), AllocError::REASONS.len(), "no reason listed twice");
}

fn restricted(name: &str, entries: &[&str], namespaces: &[&str], team: Option<&str>, priority: i32) -> Pool {
    let mut p = pool(name, entries);
    p.service_allocation = Some(ServiceAllocation {
        priority,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        namespace_selectors: vec![],
        service_selectors: team
            .map(|t| LabelSelector {
                match_labels: Some([("team".to_string(), t.to_string())].into()),
                ..Default::default()
            })
            .into_iter()
            .collect(),
    });
    p
}

// ---------------------------------------------------------------- allocation order and reuse

#[test]
fn lowest_free_address_first_and_reused_after_release() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    assert_eq!(ok(&mut a, &auto4("a")), [ip("10.0.0.0")]);
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.0.1")]);
    assert_eq!(ok(&mut a, &auto4("c")), [ip("10.0.0.2")]);
    a.release(&key("b"));
    assert_eq!(ok(&mut a, &auto4("d")), [ip("10.0.0.1")]);
    assert_eq!(a.pool_of(&key("d")), Some("p"));
}

#[test]
fn allocation_is_idempotent_and_does_not_renumber() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    ok(&mut a, &auto4("a"));
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.0.1")]);
    a.release(&key("a"));
    // 10.0.0.0 is free and lower, but b keeps what it has.
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.0.1")]);
    // A higher-priority pool appearing does not move it either.
    assert!(
        a.set_pools(vec![
            pool("p", &["10.0.0.0/30"]),
            restricted("q", &["10.1.0.0/30"], &[], None, 1)
        ])
        .is_empty()
    );
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.0.1")]);
    assert_eq!(ok(&mut a, &auto4("c")), [ip("10.1.0.0")]);
}

#[test]
fn buggy_addresses_are_skipped_only_with_avoid_buggy_ips() {
    let mut p = pool("p", &["10.0.0.254-10.0.1.1"]);
    p.avoid_buggy_ips = true;
    let mut a = allocator(vec![p]);
    assert_eq!(ok(&mut a, &auto4("a")), [ip("10.0.0.254")]);
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.1.1")]);
    assert_eq!(
        err(&mut a, &auto4("c")),
        "no free IPv4 address in any IPAddressPool this Service may use (tried \"p\")"
    );
    let mut a = allocator(vec![pool("p", &["10.0.0.255-10.0.1.0"])]);
    assert_eq!(ok(&mut a, &auto4("a")), [ip("10.0.0.255")]);
    assert_eq!(ok(&mut a, &auto4("b")), [ip("10.0.1.0")]);
}

#[test]
fn automatic_order_is_priority_then_zero_then_unrestricted_by_name() {
    let mut a = allocator(vec![
        pool("z-open", &["10.9.0.0/32"]),
        pool("a-open", &["10.8.0.0/32"]),
        restricted("prio-0", &["10.0.0.0/32"], &[], None, 0),
        restricted("prio-5", &["10.5.0.0/32"], &[], None, 5),
        restricted("prio-2", &["10.2.0.0/32"], &[], None, 2),
        restricted("other-ns", &["10.7.0.0/32"], &["elsewhere"], None, 1),
    ]);
    let order: Vec<IpAddr> = (0..5).map(|i| ok(&mut a, &auto4(&format!("s{i}")))[0]).collect();
    assert_eq!(
        order,
        [
            ip("10.2.0.0"),
            ip("10.5.0.0"),
            ip("10.0.0.0"),
            ip("10.8.0.0"),
            ip("10.9.0.0")
        ]
    );
    // The pool reserved to another namespace is never the fallback.
    assert_eq!(
        err(&mut a, &auto4("s5")),
        "no free IPv4 address in any IPAddressPool this Service may use (tried \"prio-2\", \"prio-5\", \"prio-0\", \"a-open\", \"z-open\")"
    );
}

#[test]
fn auto_assign_false_serves_only_explicit_requests() {
    let mut manual = pool("manual", &["10.0.0.0/30"]);
    manual.auto_assign = false;
    let mut a = allocator(vec![manual]);
    assert_eq!(
        err(&mut a, &auto4("a")),
        "no IPAddressPool may give this Service an address automatically: none has autoAssign enabled and a serviceAllocation (if any) that admits it; name a pool with herald.io/address-pool or an address with herald.io/loadBalancerIPs"
    );
    assert_eq!(ok(&mut a, &explicit("a", &["10.0.0.2"])), [ip("10.0.0.2")]);
    let mut named = auto4("b");
    named.pool = Some("manual".into());
    assert_eq!(ok(&mut a, &named), [ip("10.0.0.0")]);
}

#[test]
fn sharing_key_joins_an_existing_address_first() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/29"])]);
    ok(&mut a, &auto4("plain"));
    let web = ok(&mut a, &with_sharing(auto4("web"), Some("k"), &[80]));
    assert_eq!(web, [ip("10.0.0.1")]);
    assert_eq!(ok(&mut a, &with_sharing(auto4("dns"), Some("k"), &[53])), web);
    // Same port: cannot join, gets the next free address.
    assert_eq!(
        ok(&mut a, &with_sharing(auto4("web2"), Some("k"), &[80])),
        [ip("10.0.0.2")]
    );
    assert_eq!(a.holders_of(ip("10.0.0.1")), [key("web"), key("dns")]);
    // Counted once.
    assert_eq!(a.pool_stats("p").map(|s| s.assigned_v4), Some(3));
    a.release(&key("web"));
    assert_eq!(a.pool_stats("p").map(|s| s.assigned_v4), Some(3));
    a.release(&key("dns"));
    assert_eq!(a.pool_stats("p").map(|s| s.assigned_v4), Some(2));
}

#[test]
fn sole_holder_may_change_its_sharing_key_but_a_sharer_may_not() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    ok(&mut a, &with_sharing(explicit("a", &["10.0.0.1"]), Some("one"), &[80]));
    ok(&mut a, &with_sharing(explicit("a", &["10.0.0.1"]), Some("two"), &[80]));
    ok(&mut a, &with_sharing(explicit("b", &["10.0.0.1"]), Some("two"), &[443]));
    assert_eq!(
        err(
            &mut a,
            &with_sharing(explicit("b", &["10.0.0.1"]), Some("three"), &[443])
        ),
        "10.0.0.1 is in use by default/a and cannot be shared: the herald.io/allow-shared-ip keys differ (\"three\" on this Service, \"two\" on that one)"
    );
}

#[test]
fn refused_change_keeps_the_old_addresses() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    ok(&mut a, &explicit("a", &["10.0.0.1"]));
    ok(&mut a, &explicit("b", &["10.0.0.2"]));
    err(&mut a, &explicit("a", &["10.0.0.2"]));
    assert_eq!(a.ips_of(&key("a")), Some([ip("10.0.0.1")].as_slice()));
    // A satisfiable change moves it and frees the old address.
    assert_eq!(ok(&mut a, &explicit("a", &["10.0.0.3"])), [ip("10.0.0.3")]);
    assert_eq!(ok(&mut a, &auto4("c")), [ip("10.0.0.0")]);
    assert_eq!(ok(&mut a, &auto4("d")), [ip("10.0.0.1")]);
}

// ---------------------------------------------------------------- dual stack

#[test]
fn dual_stack_pairs_come_from_one_pool() {
    let mut a = allocator(vec![
        pool("a-v4only", &["10.0.0.0/32"]),
        pool("b-both", &["10.1.0.0/31", "fd00::/127"]),
    ]);
    let got = ok(&mut a, &dual("s", FamilyPolicy::RequireDualStack));
    assert_eq!(got, [ip("10.1.0.0"), ip("fd00::")]);
    assert_eq!(a.pool_of(&key("s")), Some("b-both"));
    // ipFamilies order is the order of the addresses.
    let mut v6_first = dual("t", FamilyPolicy::RequireDualStack);
    v6_first.ip_families = vec![IpFamily::V6, IpFamily::V4];
    assert_eq!(ok(&mut a, &v6_first), [ip("fd00::1"), ip("10.1.0.1")]);
    // b-both is now full; a-v4only cannot give a pair.
    assert_eq!(
        err(&mut a, &dual("u", FamilyPolicy::RequireDualStack)),
        "no free IPv4 and IPv6 addresses in any IPAddressPool this Service may use (tried \"a-v4only\", \"b-both\")"
    );
    // PreferDualStack settles for what one pool can give now.
    assert_eq!(ok(&mut a, &dual("u", FamilyPolicy::PreferDualStack)), [ip("10.0.0.0")]);
}

#[test]
fn prefer_dual_stack_gains_the_missing_family_later_from_the_same_pool() {
    let mut a = allocator(vec![
        pool("p", &["10.0.0.0/30"]),
        pool("q", &["10.1.0.0/30", "fd01::/126"]),
    ]);
    let mut req = dual("s", FamilyPolicy::PreferDualStack);
    req.pool = Some("p".into());
    assert_eq!(ok(&mut a, &req), [ip("10.0.0.0")]);
    assert!(a.set_pools(vec![pool("p", &["10.0.0.0/30", "fd00::/126"])]).is_empty());
    assert_eq!(ok(&mut a, &req), [ip("10.0.0.0"), ip("fd00::")]);
    // Automatic PreferDualStack prefers a pool that has both families.
    let mut a = allocator(vec![
        pool("p", &["10.0.0.0/30"]),
        pool("q", &["10.1.0.0/30", "fd01::/126"]),
    ]);
    assert_eq!(
        ok(&mut a, &dual("s", FamilyPolicy::PreferDualStack)),
        [ip("10.1.0.0"), ip("fd01::")]
    );
}

#[test]
fn huge_ipv6_pools_are_not_enumerated() {
    let mut a = allocator(vec![pool("big", &["fd00::/48", "10.0.0.0/8"])]);
    let req = ServiceRequest::auto(key("s"), IpFamily::V6);
    assert_eq!(ok(&mut a, &req), [ip("fd00::")]);
    let stats = a.pool_stats("big").expect("pool exists");
    assert_eq!(stats.available_v6, i64::MAX);
    assert_eq!(stats.assigned_v6, 1);
    assert_eq!(stats.available_v4, 1 << 24);
    ok(&mut a, &explicit("t", &["fd00:0:0:ffff:ffff:ffff:ffff:ffff"]));
    a.verify().expect("invariants hold");
}

// ---------------------------------------------------------------- pool changes

#[test]
fn pool_changes_keep_what_still_fits_and_report_the_rest() {
    let mut a = allocator(vec![pool("old", &["10.0.0.0/29", "fd00::/126"])]);
    ok(&mut a, &explicit("v4", &["10.0.0.0"]));
    ok(&mut a, &explicit("v6", &["fd00::"]));
    ok(&mut a, &explicit("gone", &["10.0.0.7"]));
    ok(&mut a, &explicit("pair", &["10.0.0.3", "fd00::3"]));
    let mut renamed = pool("new", &["10.0.0.0/30"]);
    renamed.avoid_buggy_ips = true;
    let displaced = a.set_pools(vec![renamed, pool("six", &["fd00::/126"])]);
    let messages: Vec<String> = displaced.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        messages,
        [
            "default/gone lost 10.0.0.7: 10.0.0.7 is no longer in any IPAddressPool",
            "default/pair lost 10.0.0.3 and fd00::3: its addresses are now in different IPAddressPools (\"new\", \"six\"); a Service's addresses must come from one pool",
            "default/v4 lost 10.0.0.0: 10.0.0.0 ends in .0 or .255 and IPAddressPool \"new\" now has avoidBuggyIPs enabled",
        ]
    );
    assert_eq!(a.pool_of(&key("v6")), Some("six"));
    assert_eq!(a.pool_of(&key("v4")), None);
    a.verify().expect("invariants hold");
    assert_eq!(
        a.pool_stats("new"),
        Some(PoolStats {
            assigned_v4: 0,
            assigned_v6: 0,
            available_v4: 3,
            available_v6: 0
        })
    );
}

#[test]
fn overlapping_pools_never_hand_out_an_address_twice() {
    let mut a = allocator(vec![
        pool("a", &["10.0.0.0/30"]),
        pool("b", &["10.0.0.2/31", "10.0.0.4/31"]),
    ]);
    let mut from_b = auto4("x");
    from_b.pool = Some("b".into());
    let mut from_a = auto4("y");
    from_a.pool = Some("a".into());
    assert_eq!(ok(&mut a, &from_b), [ip("10.0.0.2")]);
    for (i, expected) in ["10.0.0.0", "10.0.0.1", "10.0.0.3"].iter().enumerate() {
        from_a.key = key(&format!("y{i}"));
        assert_eq!(ok(&mut a, &from_a), [ip(expected)]);
    }
    from_a.key = key("y9");
    assert_eq!(err(&mut a, &from_a), "no free IPv4 address left in IPAddressPool \"a\"");
    // Counters: b's available excludes 10.0.0.3, held through a.
    assert_eq!(a.pool_stats("b").map(|s| (s.assigned_v4, s.available_v4)), Some((1, 2)));
}

// ---------------------------------------------------------------- rebuild

#[test]
fn restore_rebuilds_state_and_allocate_then_keeps_it() {
    let mut a = allocator(vec![
        pool("p", &["10.0.0.0/24"]),
        restricted("r", &["10.1.0.0/24"], &["other"], None, 0),
    ]);
    let shared_a = with_sharing(auto4("a"), Some("k"), &[80]);
    let shared_b = with_sharing(auto4("b"), Some("k"), &[443]);
    a.restore(&shared_a, &[ip("10.0.0.9")]).expect("restores");
    a.restore(&shared_b, &[ip("10.0.0.9")]).expect("restores shared");
    // Lenient: a namespace restriction is left to the next allocate.
    a.restore(&auto4("c"), &[ip("10.1.0.5")]).expect("restores");
    assert_eq!(
        a.restore(&auto4("d"), &[ip("10.0.0.9")]).map_err(|e| e.to_string()),
        Err("10.0.0.9 is in use by default/a and cannot be shared: this Service has no herald.io/allow-shared-ip annotation".to_string())
    );
    assert_eq!(
        a.restore(&auto4("d"), &[]).map_err(|e| e.to_string()),
        Err("no addresses given".to_string())
    );
    a.verify().expect("invariants hold");
    assert_eq!(ok(&mut a, &shared_a), [ip("10.0.0.9")]);
    // c is not admitted by r any more: it moves to p.
    assert_eq!(ok(&mut a, &auto4("c")), [ip("10.0.0.0")]);
}

// ---------------------------------------------------------------- error messages, one per rule

#[test]
fn a_service_naming_an_invalid_pool_is_told_the_pool_is_invalid() {
    let mut a = allocator(vec![pool("p", &["10.0.0.0/30"])]);
    a.set_invalid_pools(BTreeMap::from([(
        "typo".to_string(),
        "spec.addresses[0]: \"10.0.0.0/33\" is not a valid CIDR".to_string(),
    )]));
    let mut named = auto4("s");
    named.pool = Some("typo".into());
    assert_eq!(
        err(&mut a, &named),
        "IPAddressPool \"typo\" (named by the herald.io/address-pool annotation) is invalid: spec.addresses[0]: \"10.0.0.0/33\" is not a valid CIDR"
    );
    named.pool = Some("nope".into());
    assert_eq!(
        err(&mut a, &named),
        "IPAddressPool \"nope\" (named by the herald.io/address-pool annotation) does not exist"
    );
    // Once valid (given to set_pools), the pool serves.
    assert!(
        a.set_pools(vec![pool("p", &["10.0.0.0/30"]), pool("typo", &["10.9.0.0/30"])])
            .is_empty()
    );
    a.set_invalid_pools(BTreeMap::new());
    named.pool = Some("typo".into());
    assert_eq!(ok(&mut a, &named), [ip("10.9.0.0")]);
}

#[test]
fn error_messages() {
    let mut buggy = pool("buggy", &["10.3.0.0/24"]);
    buggy.avoid_buggy_ips = true;
    let mut a = allocator(vec![
        pool("p", &["10.0.0.0/31", "fd00::/127"]),
        pool("v4only", &["10.1.0.0/30"]),
        pool("v6only", &["fd01::/126"]),
        restricted("team", &["10.2.0.0/30"], &["ns1"], Some("blue"), 0),
        buggy,
    ]);

    let mut named = auto4("s");
    named.pool = Some("nope".into());
    assert_eq!(
        err(&mut a, &named),
        "IPAddressPool \"nope\" (named by the herald.io/address-pool annotation) does not exist"
    );

    named.pool = Some("team".into());
    assert_eq!(
        err(&mut a, &named),
        "IPAddressPool \"team\" may not serve default/s: its serviceAllocation admits only Services in namespace ns1 that are also labelled team=blue"
    );
    assert_eq!(
        err(&mut a, &explicit("s", &["10.2.0.1"])),
        "IPAddressPool \"team\" may not serve default/s: its serviceAllocation admits only Services in namespace ns1 that are also labelled team=blue"
    );
    let mut admitted = explicit("s", &["10.2.0.1"]);
    admitted.key = ServiceKey::new("ns1", "s");
    admitted.labels = [("team".to_string(), "blue".to_string())].into();
    assert_eq!(ok(&mut a, &admitted), [ip("10.2.0.1")]);

    named.pool = Some("v6only".into());
    assert_eq!(err(&mut a, &named), "IPAddressPool \"v6only\" has no IPv4 addresses");
    let mut pair = dual("s", FamilyPolicy::RequireDualStack);
    pair.pool = Some("v4only".into());
    assert_eq!(
        err(&mut a, &pair),
        "the Service requires dual stack (ipFamilyPolicy RequireDualStack) but IPAddressPool \"v4only\" has only IPv4 addresses"
    );

    named.pool = Some("p".into());
    ok(&mut a, &named);
    named.key = key("s2");
    ok(&mut a, &named);
    named.key = key("s3");
    assert_eq!(err(&mut a, &named), "no free IPv4 address left in IPAddressPool \"p\"");

    assert_eq!(
        err(&mut a, &explicit("t", &["192.0.2.1"])),
        "192.0.2.1 is not in any IPAddressPool"
    );
    let mut wrong_pool = explicit("t", &["10.1.0.1"]);
    wrong_pool.pool = Some("p".into());
    assert_eq!(
        err(&mut a, &wrong_pool),
        "10.1.0.1 is not in IPAddressPool \"p\" named by the herald.io/address-pool annotation"
    );
    assert_eq!(
        err(&mut a, &explicit("t", &["10.0.0.1"])),
        "10.0.0.1 is in use by default/s2 and cannot be shared: this Service has no herald.io/allow-shared-ip annotation"
    );
    assert_eq!(
        err(&mut a, &with_sharing(explicit("t", &["10.0.0.1"]), Some("k"), &[80])),
        "10.0.0.1 is in use by default/s2 and cannot be shared: that Service has no herald.io/allow-shared-ip annotation"
    );
    ok(&mut a, &with_sharing(explicit("web", &["10.1.0.1"]), Some("k"), &[80]));
    assert_eq!(
        err(
            &mut a,
            &with_sharing(explicit("t", &["10.1.0.1"]), Some("k"), &[8080, 80])
        ),
        "10.1.0.1 is in use by default/web and cannot be shared: both use port TCP/80"
    );
    let mut local = with_sharing(explicit("t", &["10.1.0.1"]), Some("k"), &[443]);
    local.sharing.backend = Backend::Local {
        selector: [("app".to_string(), "t".to_string())].into(),
    };
    assert_eq!(
        err(&mut a, &local),
        "10.1.0.1 is in use by default/web and cannot be shared: the backends differ (externalTrafficPolicy Local with selector app=t on this Service, externalTrafficPolicy Cluster on that one); Services sharing an address with externalTrafficPolicy Local must select the same pods"
    );

    let mut mismatch = explicit("t", &["fd00::1"]);
    mismatch.ip_families = vec![IpFamily::V4];
    assert_eq!(
        err(&mut a, &mismatch),
        "fd00::1 is an IPv6 address but the Service's ipFamilies allow only IPv4"
    );
    let mut too_many = dual("t", FamilyPolicy::RequireDualStack);
    too_many.requested_ips = vec![ip("10.1.0.2"), ip("fd00::1"), ip("10.1.0.3")];
    assert_eq!(
        err(&mut a, &too_many),
        "3 addresses requested; at most two are allowed, one IPv4 and one IPv6"
    );
    too_many.requested_ips = vec![ip("10.1.0.2"), ip("10.1.0.3")];
    assert_eq!(
        err(&mut a, &too_many),
        "10.1.0.2 and 10.1.0.3 are both IPv4 addresses; request at most one address per family"
    );
    too_many.requested_ips = vec![ip("10.1.0.2")];
    assert_eq!(
        err(&mut a, &too_many),
        "the Service requires dual stack (ipFamilyPolicy RequireDualStack) but requests only 10.1.0.2; request one IPv4 and one IPv6 address"
    );
    assert_eq!(
        err(&mut a, &explicit("t", &["10.1.0.2", "fd01::1"])),
        "10.1.0.2 (IPAddressPool \"v4only\") and fd01::1 (IPAddressPool \"v6only\") are in different pools; a dual-stack Service's addresses must come from one pool"
    );
    assert_eq!(
        err(&mut a, &explicit("t", &["10.3.0.255"])),
        "10.3.0.255 ends in .0 or .255 and IPAddressPool \"buggy\" has avoidBuggyIPs enabled"
    );
    let mut no_family = auto4("t");
    no_family.ip_families.clear();
    assert_eq!(
        err(&mut a, &no_family),
        "spec.ipFamilies is empty, so the Service's IP family is unknown"
    );

    let spec = IPAddressPoolSpec::with_addresses(["10.20.30.40/24"]);
    assert_eq!(
        Pool::from_spec("host-bits", &spec).map(|_| ()).map_err(|e| e.to_string()),
        Err("IPAddressPool \"host-bits\": \"10.20.30.40/24\" has host bits set: did you mean 10.20.30.0/24 (the whole prefix) or 10.20.30.40/32 (only that address)?".to_string())
    );
}

#[test]
fn from_spec_reads_every_field() {
    let spec = IPAddressPoolSpec {
        addresses: vec!["10.0.0.0/30".into(), "fd00::1 - fd00::4".into()],
        auto_assign: false,
        avoid_buggy_ips: true,
        service_allocation: Some(ServiceAllocation {
            priority: 3,
            ..Default::default()
        }),
    };
    let p = Pool::from_spec("p", &spec).expect("valid spec");
    assert_eq!(p.ranges, ranges(&["10.0.0.0/30", "fd00::1-fd00::4"]));
    assert!(!p.auto_assign && p.avoid_buggy_ips);
    assert_eq!(p.service_allocation.map(|s| s.priority), Some(3));
}

#[test]
fn namespace_selectors_match_namespace_labels() {
    let mut p = pool("prod", &["10.0.0.0/30"]);
    p.service_allocation = Some(ServiceAllocation {
        namespace_selectors: vec![LabelSelector {
            match_labels: Some([("env".to_string(), "prod".to_string())].into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut a = allocator(vec![p]);
    let mut req = auto4("s");
    assert_eq!(
        err(&mut a, &explicit("s", &["10.0.0.1"])),
        "IPAddressPool \"prod\" may not serve default/s: its serviceAllocation admits only Services in namespaces labelled env=prod"
    );
    req.namespace_labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    assert_eq!(ok(&mut a, &req), [ip("10.0.0.0")]);
}

// ---------------------------------------------------------------- properties

/// Pool sets the property test switches between: plain, renamed + split + autoAssign off,
/// overlapping (validation would refuse it), and empty.
fn pool_set(variant: u8) -> Vec<Pool> {
    match variant % 4 {
        0 => {
            let mut a = pool("a", &["10.0.0.250-10.0.0.255", "fd00::-fd00::3"]);
            a.avoid_buggy_ips = true;
            vec![
                a,
                pool("b", &["10.0.1.0-10.0.1.5", "fd00::4-fd00::7"]),
                restricted("c", &["10.0.2.0/30"], &["ns1"], None, 1),
            ]
        }
        1 => {
            let mut b = pool("b2", &["10.0.1.3-10.0.1.5", "fd00::/125"]);
            b.auto_assign = false;
            vec![
                pool("a2", &["10.0.0.250-10.0.1.2"]),
                b,
                restricted("c", &["10.0.2.0/31"], &[], Some("blue"), 0),
            ]
        }
        2 => vec![
            pool("x", &["10.0.0.250-10.0.1.5"]),
            pool("y", &["10.0.1.0-10.0.1.10", "fd00::/125"]),
        ],
        _ => vec![],
    }
}

#[derive(Clone, Debug)]
enum Op {
    Auto {
        svc: u8,
        policy: u8,
        share: Option<u8>,
        port: u8,
    },
    Named {
        svc: u8,
        pool: u8,
        share: Option<u8>,
        port: u8,
    },
    Explicit {
        svc: u8,
        v4: Option<u8>,
        v6: Option<u8>,
        share: Option<u8>,
        port: u8,
    },
    Restore {
        svc: u8,
        v4: u8,
    },
    Release {
        svc: u8,
    },
    SetPools {
        variant: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let svc = 0u8..8;
    let share = proptest::option::of(0u8..2);
    prop_oneof![
        4 => (svc.clone(), 0u8..4, share.clone(), 0u8..3)
            .prop_map(|(svc, policy, share, port)| Op::Auto { svc, policy, share, port }),
        2 => (svc.clone(), 0u8..6, share.clone(), 0u8..3)
            .prop_map(|(svc, pool, share, port)| Op::Named { svc, pool, share, port }),
        3 => (svc.clone(), proptest::option::of(0u8..20), proptest::option::of(0u8..10), share, 0u8..3)
            .prop_map(|(svc, v4, v6, share, port)| Op::Explicit { svc, v4, v6, share, port }),
        1 => (svc.clone(), 0u8..20).prop_map(|(svc, v4)| Op::Restore { svc, v4 }),
        2 => svc.prop_map(|svc| Op::Release { svc }),
        1 => (0u8..4).prop_map(|variant| Op::SetPools { variant }),
    ]
}

fn v4_of(i: u8) -> IpAddr {
    // 10.0.0.250 .. 10.0.1.13: crosses .255/.0 and the pool edges.
    let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 250));
    IpAddr::V4((base + i as u32).into())
}

fn v6_of(i: u8) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16))
}

fn prop_request(svc: u8, share: Option<u8>, port: u8) -> ServiceRequest {
    let namespace = if svc.is_multiple_of(3) { "ns1" } else { "default" };
    let mut req = ServiceRequest::auto(ServiceKey::new(namespace, format!("s{svc}")), IpFamily::V4);
    if svc.is_multiple_of(2) {
        req.labels = [("team".to_string(), "blue".to_string())].into();
    }
    req.sharing = SharingInfo {
        key: share.map(|k| format!("key{k}")),
        backend: Backend::Cluster,
        ports: vec![tcp(80 + port as u16)],
    };
    req
}

proptest! {
    /// Whatever happens, invariants hold (no address held by two Services that may not share,
    /// nothing held outside a pool, counters equal a recount), refused requests change nothing
    /// for the Service, and granted ones are recorded as returned.
    #[test]
    fn random_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = Allocator::new();
        a.set_pools(pool_set(0));
        let pool_names = ["a", "b", "c", "a2", "b2", "x"];
        for op in ops {
            let (req, result) = match op {
                Op::Auto { svc, policy, share, port } => {
                    let mut req = prop_request(svc, share, port);
                    (req.ip_families, req.family_policy) = match policy {
                        0 => (vec![IpFamily::V4], FamilyPolicy::SingleStack),
                        1 => (vec![IpFamily::V6], FamilyPolicy::SingleStack),
                        2 => (vec![IpFamily::V4, IpFamily::V6], FamilyPolicy::PreferDualStack),
                        _ => (vec![IpFamily::V6, IpFamily::V4], FamilyPolicy::RequireDualStack),
                    };
                    let before = a.ips_of(&req.key).map(<[IpAddr]>::to_vec);
                    let result = a.allocate(&req);
                    (Some((req, before)), result)
                }
                Op::Named { svc, pool, share, port } => {
                    let mut req = prop_request(svc, share, port);
                    req.pool = Some(pool_names[pool as usize].to_string());
                    let before = a.ips_of(&req.key).map(<[IpAddr]>::to_vec);
                    let result = a.allocate(&req);
                    (Some((req, before)), result)
                }
                Op::Explicit { svc, v4, v6, share, port } => {
                    let mut req = prop_request(svc, share, port);
                    req.requested_ips = v4.map(v4_of).into_iter().chain(v6.map(v6_of)).collect();
                    req.ip_families = vec![IpFamily::V4, IpFamily::V6];
                    req.family_policy = FamilyPolicy::PreferDualStack;
                    let before = a.ips_of(&req.key).map(<[IpAddr]>::to_vec);
                    let result = a.allocate(&req);
                    (Some((req, before)), result)
                }
                Op::Restore { svc, v4 } => {
                    let req = prop_request(svc, None, 0);
                    let before = a.ips_of(&req.key).map(<[IpAddr]>::to_vec);
                    let result = a.restore(&req, &[v4_of(v4)]);
                    (Some((req, before)), result)
                }
                Op::Release { svc } => {
                    let req = prop_request(svc, None, 0);
                    a.release(&req.key);
                    prop_assert_eq!(a.ips_of(&req.key), None);
                    (None, Err(AllocError::NoAddresses))
                }
                Op::SetPools { variant } => {
                    let held: Vec<ServiceKey> = (0..8).map(|s| prop_request(s, None, 0).key).filter(|k| a.ips_of(k).is_some()).collect();
                    let displaced = a.set_pools(pool_set(variant));
                    for k in held {
                        let lost = displaced.iter().any(|d| d.service == k);
                        prop_assert_eq!(a.ips_of(&k).is_none(), lost, "{} displaced iff reported", k);
                    }
                    (None, Err(AllocError::NoAddresses))
                }
            };
            if let Err(violation) = a.verify() {
                prop_assert!(false, "invariant broken: {}", violation);
            }
            if let Some((req, before)) = req {
                match result {
                    Ok(alloc) => {
                        prop_assert_eq!(a.ips_of(&req.key), Some(alloc.ips.as_slice()));
                        prop_assert_eq!(a.pool_of(&req.key), Some(alloc.pool.as_str()));
                        if !req.requested_ips.is_empty() {
                            let mut want = req.requested_ips.clone();
                            want.sort();
                            let mut got = alloc.ips.clone();
                            got.sort();
                            prop_assert_eq!(got, want);
                        }
                    }
                    Err(_) => prop_assert_eq!(a.ips_of(&req.key).map(<[IpAddr]>::to_vec), before),
                }
            }
        }
    }
}

#[test]
fn overlapping_pools_serve_an_explicit_address_from_the_pool_that_can() {
    let mut strict = pool("a-strict", &["10.0.0.0/24"]);
    strict.avoid_buggy_ips = true;
    let mut a = allocator(vec![strict, pool("b-lenient", &["10.0.0.0/24"])]);
    let got = a.allocate(&explicit("s", &["10.0.0.0"])).expect("b-lenient serves .0");
    assert_eq!((got.ips, got.pool.as_str()), (vec![ip("10.0.0.0")], "b-lenient"));
    a.verify().expect("invariants hold");
}
