//! What the CRDs' OpenAPI schemas make the API server refuse at `kubectl apply` time: the rules
//! of [`crate::validation`], [`crate::address`] and [`crate::selector`] that can be judged on one
//! object alone, as OpenAPI constraints (`enum`, `maxItems`, `x-kubernetes-list-type: set`) and
//! CEL `x-kubernetes-validations` whose messages repeat the controller's own.
//!
//! Each function here is a `#[schemars(transform = ...)]` of one spec struct and patches that
//! struct's generated schema by property name. The controller keeps its validation: these rules
//! only move the first refusal from a status condition to the `kubectl apply` that made it.
//! Left to the controller: overlaps between pools and the namespace Herald reads its objects
//! from (they need other objects), and the IPv6 half of two address rules, reversed IPv6 ranges
//! and overlapping IPv6 entries within a pool. CEL has no 128-bit integers and the `ip` library
//! no ordering; every IPv6 ordering tried (a bit-by-bit walk with `cidr()`, parsing the groups
//! into integers) exceeds the cost the API server estimates for a rule. Limits (`maxItems`,
//! `maxLength`, `maxProperties`) bound that estimated cost; each is far above what a real
//! configuration needs.

use schemars::Schema;
use serde_json::{Value, json};

/// Most entries in one pool's `spec.addresses`.
pub const MAX_ADDRESSES: u64 = 128;
/// Longest `spec.addresses` entry: an IPv6 range in full form with spaces fits easily.
pub const MAX_ADDRESS_LEN: u64 = 128;
/// Most selectors in one selector list, expressions in one selector, and labels in `matchLabels`.
pub const MAX_SELECTORS: u64 = 16;
/// Most values in one `matchExpressions` entry.
pub const MAX_SELECTOR_VALUES: u64 = 64;
/// Most names in a list of names (namespaces, pools, interfaces).
pub const MAX_NAMES: u64 = 256;
/// Longest label key: a 253-character prefix, `/` and a 63-character name.
const MAX_LABEL_KEY_LEN: u64 = 317;
/// Longest label value.
const MAX_LABEL_VALUE_LEN: u64 = 63;
/// Longest namespace or pool name (a DNS subdomain).
const MAX_NAME_LEN: u64 = 253;
/// Longest interface name the schema admits; the 15-byte Linux limit is a CEL rule with the
/// controller's message.
const MAX_INTERFACE_LEN: u64 = 64;

/// A CEL rule with a fixed message.
fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// A CEL rule whose message is computed by a CEL expression.
fn rule_expr(rule: &str, message_expression: &str) -> Value {
    json!({ "rule": rule, "messageExpression": message_expression })
}

/// The schema of property `name` of an object schema.
fn property<'a>(schema: &'a mut Schema, name: &str) -> &'a mut Value {
    schema
        .ensure_object()
        .get_mut("properties")
        .and_then(|p| p.get_mut(name))
        .unwrap_or_else(|| panic!("schema has a property {name:?}"))
}

fn object(value: &mut Value) -> &mut serde_json::Map<String, Value> {
    value.as_object_mut().expect("a schema is a JSON object")
}

/// Adds CEL rules to a schema.
fn add_rules(value: &mut Value, rules: Vec<Value>) {
    add_rules_to(object(value), rules);
}

fn add_rules_to(schema: &mut serde_json::Map<String, Value>, rules: Vec<Value>) {
    let list = schema.entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    list.as_array_mut()
        .expect("x-kubernetes-validations is a list")
        .extend(rules);
}

/// A list of unique names: `x-kubernetes-list-type: set`, so the API server refuses a repeat
/// with `Duplicate value: "NAME"`.
fn name_set(value: &mut Value, max_len: u64) {
    let v = object(value);
    v.insert("x-kubernetes-list-type".into(), json!("set"));
    v.insert("maxItems".into(), json!(MAX_NAMES));
    object(v.get_mut("items").expect("a list schema has items")).insert("maxLength".into(), json!(max_len));
}

/// `IPAddressPoolSpec`: at least one address; each entry a CIDR naming a network or a range of
/// one family, first address not after the last (the rules of
/// [`crate::address::parse_address_entry`], in its order, with its messages).
pub fn pool_spec(schema: &mut Schema) {
    add_rules_to(
        schema.ensure_object(),
        vec![json!({
            "rule": "has(self.addresses) && size(self.addresses) > 0",
            "message": "spec.addresses is empty: a pool needs at least one CIDR or range",
            "fieldPath": ".addresses",
            "reason": "FieldValueRequired",
        })],
    );
    let addresses = object(property(schema, "addresses"));
    // An absent list defaults to [] for the controller; the schema has no default, so an absent
    // list is refused by the rule above (a default must itself pass the schema's rules).
    addresses.remove("default");
    addresses.insert("maxItems".into(), json!(MAX_ADDRESSES));
    let list_rules = address_list_rules();
    let items = addresses.get_mut("items").expect("addresses has items");
    object(items).insert("maxLength".into(), json!(MAX_ADDRESS_LEN));
    add_rules(items, address_entry_rules());
    add_rules_to(addresses, list_rules);
}

/// CEL over one `spec.addresses` entry, the CEL string expression it holds.
struct Entry(&'static str);

impl Entry {
    fn range(&self) -> String {
        format!("{}.contains('-')", self.0)
    }

    /// A range's first address, as written minus spaces.
    fn first(&self) -> String {
        let e = self.0;
        format!("{e}.substring(0, {e}.indexOf('-')).trim()")
    }

    fn last(&self) -> String {
        let e = self.0;
        format!("{e}.substring({e}.indexOf('-') + 1).trim()")
    }

    /// A CIDR's address part.
    fn cidr_address(&self) -> String {
        let e = self.0;
        format!("{e}.substring(0, {e}.indexOf('/'))")
    }

    fn both_ips(&self) -> String {
        format!("isIP({}) && isIP({})", self.first(), self.last())
    }

    fn one_family(&self) -> String {
        format!("ip({}).family() == ip({}).family()", self.first(), self.last())
    }

    /// First address not after the last, judged for IPv4 only (see the module's note on IPv6).
    fn ordered(&self) -> String {
        format!(
            "ip({}).family() == 6 || {} <= {}",
            self.first(),
            v4_integer(&self.first()),
            v4_integer(&self.last())
        )
    }

    fn host_bits_clear(&self) -> String {
        let e = self.0;
        format!("cidr({e}).ip() == cidr({e}).masked().ip()")
    }

    /// Whether the entry passes every rule of [`address_entry_rules`].
    fn valid(&self) -> String {
        let e = self.0;
        format!(
            "({e}.trim() != '' && ({} ? ({} && {} && ({})) : (isCIDR({e}) && {})))",
            self.range(),
            self.both_ips(),
            self.one_family(),
            self.ordered(),
            self.host_bits_clear()
        )
    }

    /// For a valid entry: its first and last address as integers when it is IPv4, else
    /// `[-1, -2]`, which overlaps nothing.
    fn v4_bounds(&self) -> String {
        let e = self.0;
        let is_v4 = format!(
            "({} ? ip({}).family() == 4 : cidr({e}).ip().family() == 4)",
            self.range(),
            self.first()
        );
        let net = v4_integer(&self.cidr_address());
        let powers: Vec<String> = (0..=32).map(|p| (1u64 << p).to_string()).collect();
        let size = format!("[{}][32 - cidr({e}).prefixLength()]", powers.join(", "));
        format!(
            "({is_v4} ? ({} ? [{}, {}] : [{net}, {net} + {size} - 1]) : [-1, -2])",
            self.range(),
            v4_integer(&self.first()),
            v4_integer(&self.last())
        )
    }
}

/// A dotted-quad IPv4 address (CEL string expression `x`) as an integer.
fn v4_integer(x: &str) -> String {
    format!("lists.range(4).map(k, int({x}.split('.')[k]) * [16777216, 65536, 256, 1][k]).sum()")
}

/// The rule over the whole list: no IPv4 entry overlaps an earlier one (judged once every entry
/// is valid; the rules on entries report the others). `[list].all(l, ...)` binds `l` to the
/// entries' bounds, computed once: the pairwise loop then only compares integers, which keeps
/// the estimated cost within the API server's budget. IPv6 entries are the controller's (see
/// the module's note).
pub fn address_list_rules() -> Vec<Value> {
    let bounds = format!("self.map(e, {})", Entry("e").v4_bounds());
    let overlap = "i < j && x[0] <= y[1] && y[0] <= x[1]";
    let first = format!("l.transformList(i, x, {overlap}, i)[0]");
    vec![rule_expr(
        &format!(
            "!self.all(e, {}) || [{bounds}].all(l, l.all(j, y, !l.exists(i, x, {overlap})))",
            Entry("e").valid()
        ),
        &format!(
            "[{bounds}].map(l, l.transformList(j, y, l.exists(i, x, {overlap}), 'spec.addresses[%d] (%s) overlaps spec.addresses[%d] (%s)'.format([j, self[j], {first}, self[{first}]]))[0])[0]"
        ),
    )]
}

/// The rules over one `spec.addresses` entry (`self` is the entry). Each rule holds vacuously
/// when an earlier one fails, so a bad entry gets exactly one message, the controller's.
pub fn address_entry_rules() -> Vec<Value> {
    let e = Entry("self");
    let (range, a, b) = (e.range(), e.first(), e.last());
    let (both_ips, one_family) = (e.both_ips(), e.one_family());
    vec![
        rule("self.trim() != ''", "address entry is empty"),
        rule_expr(
            &format!("!{range} || ({both_ips})"),
            &format!(
                "strings.quote(self) + ': ' + strings.quote(isIP({a}) ? {b} : {a}) + ' is not a valid IP address'"
            ),
        ),
        rule_expr(
            &format!("!{range} || !({both_ips}) || {one_family}"),
            "strings.quote(self) + ' mixes IPv4 and IPv6: a range must stay within one family'",
        ),
        rule_expr(
            &format!("!{range} || !({both_ips}) || !({one_family}) || {}", e.ordered()),
            "strings.quote(self) + ' is a reversed range: the first address must not be after the last'",
        ),
        rule_expr(
            &format!("{range} || self.trim() == '' || isCIDR(self)"),
            "strings.quote(self) + ' is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)'",
        ),
        rule_expr(
            &format!("{range} || !isCIDR(self) || {}", e.host_bits_clear()),
            // `format`, not `+`: the estimator gives `string(cidr)` no size bound, and refuses a
            // concatenation with it.
            "'%s has host bits set: did you mean %s (the whole prefix) or %s%s (only that address)?'.format([strings.quote(self), string(cidr(self).masked()), string(cidr(self).ip()), cidr(self).ip().family() == 4 ? '/32' : '/128'])",
        ),
    ]
}

/// `ServiceAllocation`: namespaces listed once, selectors valid and listed once.
pub fn service_allocation(schema: &mut Schema) {
    name_set(property(schema, "namespaces"), MAX_NAME_LEN);
    selector_list(property(schema, "namespaceSelectors"), "namespaceSelectors");
    selector_list(property(schema, "serviceSelectors"), "serviceSelectors");
}

/// `L2AdvertisementSpec`: pools and interfaces listed once, interface names Linux accepts,
/// selectors valid and listed once.
pub fn l2_advertisement_spec(schema: &mut Schema) {
    name_set(property(schema, "ipAddressPools"), MAX_NAME_LEN);
    for field in ["ipAddressPoolSelectors", "nodeSelectors", "serviceSelectors"] {
        selector_list(property(schema, field), field);
    }
    let interfaces = property(schema, "interfaces");
    name_set(interfaces, MAX_INTERFACE_LEN);
    add_rules(
        interfaces.get_mut("items").expect("interfaces has items"),
        interface_name_rules(),
    );
}

/// The rules of `interface_name_problem` in [`crate::validation`] (`self` is the name).
pub fn interface_name_rules() -> Vec<Value> {
    let not_a_name = |why: &str| format!("strings.quote(self) + \" is not a Linux interface name ({why})\"");
    // Rust's `char::is_whitespace` is Unicode White_Space: ASCII controls, U+0085 and \p{Z}.
    let bad_char = r"[/:\\t\\n\\v\\f\\r\\x{85}\\p{Z}]";
    vec![
        rule_expr("size(self) > 0", &not_a_name("empty")),
        rule_expr("size(bytes(self)) <= 15", &not_a_name("longer than 15 bytes")),
        rule_expr(
            "size(bytes(self)) > 15 || (self != '.' && self != '..')",
            &not_a_name("reserved name"),
        ),
        rule_expr(
            &format!("size(bytes(self)) > 15 || self == '.' || self == '..' || !self.matches('{bad_char}')"),
            &not_a_name("contains '/', ':' or whitespace"),
        ),
    ]
}

/// Label-key syntax as [`crate::selector`] checks it, for the key in CEL expression `k`:
/// `(rule, message)` pairs, each rule holding vacuously when an earlier one fails.
fn label_key_checks(k: &str) -> Vec<(String, &'static str)> {
    let prefix = format!("{k}.substring(0, {k}.indexOf('/'))");
    let name = format!("({k}.contains('/') ? {k}.substring({k}.indexOf('/') + 1) : {k})");
    let prefix_len_ok = format!("(!{k}.contains('/') || (size({prefix}) >= 1 && size({prefix}) <= 253))");
    let prefix_ok = format!(
        "(!{k}.contains('/') || (size({prefix}) >= 1 && size({prefix}) <= 253 && {prefix}.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')))"
    );
    vec![
        (
            prefix_len_ok.clone(),
            "the prefix must be a DNS subdomain of 1 to 253 characters",
        ),
        (
            format!("!{prefix_len_ok} || {prefix_ok}"),
            "the prefix must be a lowercase DNS subdomain",
        ),
        (
            format!("!{prefix_ok} || size({name}) > 0"),
            "the name part must not be empty",
        ),
        (
            format!("!{prefix_ok} || size({name}) == 0 || {name}.matches('{LABEL_NAME_RE}')"),
            "the name part must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        ),
    ]
}

/// A label name or value: at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
const LABEL_NAME_RE: &str = "^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
const LABEL_VALUE_MESSAGE: &str =
    "a value must be empty or at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric";

/// A list of `LabelSelector`s named `field`: each selector valid, none listed twice.
fn selector_list(list: &mut Value, field: &str) {
    object(list).insert("maxItems".into(), json!(MAX_SELECTORS));
    // The index of the repeat is not in the message: finding it is an object comparison per
    // pair, which the CEL cost estimator refuses in a message expression.
    add_rules(
        list,
        vec![rule(
            "self.all(i, s, !self.exists(j, t, j < i && t == s))",
            &format!("{field} lists the same selector more than once"),
        )],
    );
    let selector = list.get_mut("items").expect("a selector list has items");
    let labels = selector
        .get_mut("properties")
        .and_then(|p| p.get_mut("matchLabels"))
        .expect("LabelSelector has matchLabels");
    object(labels).insert("maxProperties".into(), json!(MAX_SELECTORS));
    object(
        labels
            .get_mut("additionalProperties")
            .expect("matchLabels has value schemas"),
    )
    .insert("maxLength".into(), json!(MAX_LABEL_VALUE_LEN));
    let mut label_rules = Vec::new();
    for (check, why) in label_key_checks("k") {
        label_rules.push(rule_expr(
            &format!("self.all(k, {check})"),
            &format!("'invalid label key ' + strings.quote(self.filter(k, !({check})).sort()[0]) + ': {why}'"),
        ));
    }
    let value_ok = format!("(self[k] == '' || self[k].matches('{LABEL_NAME_RE}'))");
    label_rules.push(rule_expr(
        &format!("self.all(k, {value_ok})"),
        &format!(
            "'invalid label value ' + strings.quote(self[self.filter(k, !{value_ok}).sort()[0]]) + ' for key ' + strings.quote(self.filter(k, !{value_ok}).sort()[0]) + ': {LABEL_VALUE_MESSAGE}'"
        ),
    ));
    add_rules(labels, label_rules);

    let expressions = selector
        .get_mut("properties")
        .and_then(|p| p.get_mut("matchExpressions"))
        .expect("LabelSelector has matchExpressions");
    object(expressions).insert("maxItems".into(), json!(MAX_SELECTORS));
    let requirement = expressions.get_mut("items").expect("matchExpressions has items");
    add_rules(requirement, requirement_rules());
    let props = object(requirement.get_mut("properties").expect("a requirement has properties"));
    let operator = object(props.get_mut("operator").expect("a requirement has an operator"));
    operator.insert("enum".into(), json!(["In", "NotIn", "Exists", "DoesNotExist"]));
    let key = props.get_mut("key").expect("a requirement has a key");
    object(key).insert("maxLength".into(), json!(MAX_LABEL_KEY_LEN));
    add_rules(
        key,
        label_key_checks("self")
            .into_iter()
            .map(|(check, why)| {
                rule_expr(
                    &check,
                    &format!("'invalid label key ' + strings.quote(self) + ': {why}'"),
                )
            })
            .collect(),
    );
    let values = object(props.get_mut("values").expect("a requirement has values"));
    values.insert("maxItems".into(), json!(MAX_SELECTOR_VALUES));
    values.insert("x-kubernetes-list-type".into(), json!("set"));
    object(values.get_mut("items").expect("values has items")).insert("maxLength".into(), json!(MAX_LABEL_VALUE_LEN));
}

/// One `matchExpressions` entry (`self` is the requirement): values present for In/NotIn and
/// absent for Exists/DoesNotExist, each value a label value. The operator itself is an `enum`.
pub fn requirement_rules() -> Vec<Value> {
    let set_op = "(self.operator == 'In' || self.operator == 'NotIn')";
    let exists_op = "(self.operator == 'Exists' || self.operator == 'DoesNotExist')";
    let has_values = "(has(self.values) && size(self.values) > 0)";
    let value_ok = format!("(v == '' || v.matches('{LABEL_NAME_RE}'))");
    let key = "'matchExpressions for key ' + strings.quote(self.key) + ': operator ' + self.operator";
    vec![
        rule_expr(
            &format!("!{set_op} || {has_values}"),
            &format!("{key} + ' needs at least one value'"),
        ),
        rule_expr(
            &format!("!{exists_op} || !{has_values}"),
            &format!("{key} + ' takes no values'"),
        ),
        rule_expr(
            &format!("!{set_op} || !has(self.values) || self.values.all(v, {value_ok})"),
            &format!(
                "'invalid label value ' + strings.quote(self.values.filter(v, !{value_ok})[0]) + ' for key ' + strings.quote(self.key) + ': {LABEL_VALUE_MESSAGE}'"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::Value;

    use crate::{IPAddressPool, L2Advertisement};

    /// The schema at a dotted path of property names under `spec`; `[]` steps into list items.
    fn at(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        path: &str,
    ) -> Value {
        let root = serde_json::to_value(&crd.spec.versions[0].schema).unwrap()["openAPIV3Schema"]["properties"]["spec"]
            .clone();
        path.split('.')
            .filter(|s| !s.is_empty())
            .fold(root, |schema, step| match step {
                "[]" => schema["items"].clone(),
                name => schema["properties"][name].clone(),
            })
    }

    fn rules(schema: &Value) -> Vec<String> {
        schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} => {}{}",
                    r["rule"].as_str().unwrap(),
                    r["message"].as_str().unwrap_or(""),
                    r["messageExpression"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    fn has_rule(schema: &Value, rule_part: &str, message_part: &str) -> bool {
        rules(schema).iter().any(|r| {
            let (rule, message) = r.split_once(" => ").unwrap();
            rule.contains(rule_part) && message.contains(message_part)
        })
    }

    #[test]
    fn pool_schema_judges_addresses() {
        let crd = IPAddressPool::crd();
        let spec = at(&crd, "");
        assert!(has_rule(
            &spec,
            "size(self.addresses) > 0",
            "spec.addresses is empty: a pool needs at least one CIDR or range"
        ));
        let addresses = at(&crd, "addresses");
        assert_eq!(
            addresses.get("default"),
            None,
            "a default [] would itself break the rule"
        );
        assert_eq!(addresses["maxItems"], 128);
        assert!(has_rule(
            &addresses,
            "l.exists(i, x,",
            "'spec.addresses[%d] (%s) overlaps spec.addresses[%d] (%s)'"
        ));
        let entry = at(&crd, "addresses.[]");
        assert_eq!(entry["maxLength"], 128);
        for (rule, message) in [
            ("self.trim() != ''", "address entry is empty"),
            ("isIP(", "is not a valid IP address"),
            (
                "family() ==",
                "mixes IPv4 and IPv6: a range must stay within one family",
            ),
            (
                "<=",
                "is a reversed range: the first address must not be after the last",
            ),
            (
                "isCIDR(self)",
                "is not a valid CIDR (expected e.g. 192.168.10.0/24 or fd00::/120)",
            ),
            (
                "cidr(self).ip() == cidr(self).masked().ip()",
                "has host bits set: did you mean %s (the whole prefix)",
            ),
        ] {
            assert!(
                has_rule(&entry, rule, message),
                "{rule} / {message} in {:#?}",
                rules(&entry)
            );
        }
    }

    #[test]
    fn name_lists_are_sets() {
        let pool = IPAddressPool::crd();
        let adv = L2Advertisement::crd();
        for schema in [
            at(&pool, "serviceAllocation.namespaces"),
            at(&adv, "ipAddressPools"),
            at(&adv, "interfaces"),
        ] {
            assert_eq!(schema["x-kubernetes-list-type"], "set");
        }
        let interface = at(&adv, "interfaces.[]");
        for why in [
            "(empty)",
            "(longer than 15 bytes)",
            "(reserved name)",
            "(contains '/', ':' or whitespace)",
        ] {
            assert!(
                has_rule(&interface, "self", &format!("is not a Linux interface name {why}")),
                "{why}"
            );
        }
    }

    #[test]
    fn every_selector_list_judges_selector_shapes() {
        let pool = IPAddressPool::crd();
        let adv = L2Advertisement::crd();
        let lists = [
            (at(&pool, "serviceAllocation.namespaceSelectors"), "namespaceSelectors"),
            (at(&pool, "serviceAllocation.serviceSelectors"), "serviceSelectors"),
            (at(&adv, "ipAddressPoolSelectors"), "ipAddressPoolSelectors"),
            (at(&adv, "nodeSelectors"), "nodeSelectors"),
            (at(&adv, "serviceSelectors"), "serviceSelectors"),
        ];
        for (list, field) in lists {
            assert!(
                has_rule(
                    &list,
                    "t == s",
                    &format!("{field} lists the same selector more than once")
                ),
                "{field}"
            );
            let requirement = &list["items"]["properties"]["matchExpressions"]["items"];
            assert_eq!(
                requirement["properties"]["operator"]["enum"],
                serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]),
                "{field}"
            );
            assert_eq!(
                requirement["properties"]["values"]["x-kubernetes-list-type"], "set",
                "{field}"
            );
            assert!(
                has_rule(requirement, "self.operator == 'In'", "needs at least one value"),
                "{field}"
            );
            assert!(
                has_rule(requirement, "self.operator == 'Exists'", "takes no values"),
                "{field}"
            );
            assert!(has_rule(requirement, "v.matches(", "invalid label value"), "{field}");
            let key = &requirement["properties"]["key"];
            for why in [
                "the prefix must be a DNS subdomain of 1 to 253 characters",
                "the prefix must be a lowercase DNS subdomain",
                "the name part must not be empty",
                "the name part must be at most 63 characters",
            ] {
                assert!(has_rule(key, "self", why), "{field}: key: {why}");
            }
            let labels = &list["items"]["properties"]["matchLabels"];
            assert!(has_rule(labels, "self.all(k,", "invalid label key"), "{field}");
            assert!(has_rule(labels, "self.all(k,", "invalid label value"), "{field}");
        }
    }
}
