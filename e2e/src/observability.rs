//! Herald's Grafana dashboard (`config/grafana/herald.json`) and Prometheus alert rules
//! (`config/prometheus/herald-rules.yaml`) read the way Grafana and Prometheus read them: every
//! PromQL expression parsed (with `promql-parser`), the rule file's shape checked, and the
//! metric names each expression selects listed, so a test can compare them with what a running
//! lab's `/metrics` exports.

use std::collections::BTreeSet;
use std::path::PathBuf;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;

/// One PromQL expression and where it comes from (`panel "…"`, `alert …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub source: String,
    pub expr: String,
}

/// The repository's `config/` directory.
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Every target expression of every panel of a Grafana dashboard (rows' nested panels too).
pub fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    fn walk(panels: &Value, out: &mut Vec<Query>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(Query {
                        source: format!("panel {title:?}"),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every expression of a Prometheus rule file, after checking what Prometheus checks of its
/// shape: groups with names, each rule an `alert` or a `record` with an `expr`, `for` a
/// duration, alerts with a `summary` annotation (Herald's own convention).
pub fn rule_queries(yaml: &str) -> Result<Vec<Query>, String> {
    let file: Value = serde_yaml::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let groups = file["groups"].as_array().ok_or("no groups")?;
    let mut out = Vec::new();
    for group in groups {
        let name = group["name"].as_str().ok_or("a group has no name")?;
        let rules = group["rules"].as_array().ok_or(format!("group {name} has no rules"))?;
        for rule in rules {
            let source = match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(alert), None) => format!("alert {alert}"),
                (None, Some(record)) => format!("record {record}"),
                _ => return Err(format!("group {name}: a rule needs exactly one of alert and record")),
            };
            let expr = rule["expr"].as_str().ok_or(format!("{source}: no expr"))?;
            if let Some(duration) = rule.get("for") {
                let text = duration.as_str().ok_or(format!("{source}: for is not a string"))?;
                promql_parser::util::parse_duration(text).map_err(|e| format!("{source}: for {text:?}: {e}"))?;
            }
            if rule["alert"].is_string() && rule["annotations"]["summary"].as_str().is_none() {
                return Err(format!("{source}: no summary annotation"));
            }
            out.push(Query {
                source,
                expr: expr.to_string(),
            });
        }
    }
    Ok(out)
}

/// Grafana's interval variables, as Grafana replaces them before a query reaches Prometheus.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [("$__rate_interval", "1m"), ("$__interval", "30s"), ("$__range", "1h")];

/// The metric names `expr` selects; an error says why it does not parse.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let mut text = expr.to_string();
    for (variable, value) in GRAFANA_VARIABLES {
        text = text.replace(variable, value);
    }
    let ast = parser::parse(&text)?;
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(vs) = selector {
                let name = vs
                    .name
                    .clone()
                    .ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

/// The names of the samples in a Prometheus text exposition (`name{labels} value`).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The dashboard's and the rules' queries, read from `config/`.
pub fn shipped_queries() -> Result<Vec<Query>, String> {
    let dashboard_path = config_dir().join("grafana/herald.json");
    let rules_path = config_dir().join("prometheus/herald-rules.yaml");
    let read = |path: &PathBuf| std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
    let dashboard: Value =
        serde_json::from_str(&read(&dashboard_path)?).map_err(|e| format!("{}: {e}", dashboard_path.display()))?;
    let mut queries = dashboard_queries(&dashboard);
    queries.extend(rule_queries(&read(&rules_path)?).map_err(|e| format!("{}: {e}", rules_path.display()))?);
    Ok(queries)
}

/// Every metric the shipped queries select that `exported` lacks, with the query naming it.
pub fn missing_metrics(queries: &[Query], exported: &BTreeSet<String>) -> Result<Vec<(String, String)>, String> {
    let mut missing = Vec::new();
    for query in queries {
        let names = metric_names(&query.expr).map_err(|e| format!("{}: {e}", query.source))?;
        missing.extend(
            names
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(|name| (name, query.source.clone())),
        );
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_every_selector_and_grafana_variables_are_replaced() {
        let names = metric_names(
            "sum by (reason) (rate(a_total[$__rate_interval])) / on() group_left b + histogram_quantile(0.9, rate(c_bucket[5m]))",
        )
        .unwrap();
        assert_eq!(names, BTreeSet::from(["a_total".into(), "b".into(), "c_bucket".into()]));
        assert!(
            metric_names("sum(rate(a[5m])").is_err(),
            "unbalanced parentheses are an error"
        );
        assert!(
            metric_names("histogram_quantile(0.9, c_bucket[5m])").is_err(),
            "types are checked"
        );
        assert!(metric_names(r#"{job="x"}"#).is_err(), "a selector must name its metric");
    }

    #[test]
    fn rule_files_are_checked_for_shape() {
        let good = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 5m\n    annotations: {summary: s}\n  - record: r\n    expr: sum(up)\n";
        assert_eq!(rule_queries(good).unwrap().len(), 2);
        for (bad, why) in [
            (
                "groups:\n- name: g\n  rules:\n  - expr: up\n",
                "exactly one of alert and record",
            ),
            (
                "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    for: soon\n    annotations: {summary: s}\n",
                "for \"soon\"",
            ),
            (
                "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n",
                "no summary",
            ),
            ("rules: []\n", "no groups"),
        ] {
            let e = rule_queries(bad).expect_err(bad);
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn exposition_names_are_sample_names() {
        let text = "# HELP a_total x\n# TYPE a counter\na_total{x=\"1\"} 3\nb 1\nc_bucket{le=\"+Inf\"} 2\n";
        assert_eq!(
            exported_names(text),
            BTreeSet::from(["a_total".into(), "b".into(), "c_bucket".into()])
        );
    }

    /// What the lab test checks against a running lab, in its offline half: every shipped
    /// expression parses and selects only Herald's metrics.
    #[test]
    fn shipped_dashboard_and_rules_parse() {
        let queries = shipped_queries().unwrap();
        assert!(queries.len() >= 25, "{} queries", queries.len());
        for query in &queries {
            let names = metric_names(&query.expr).unwrap_or_else(|e| panic!("{}: {e}", query.source));
            assert!(!names.is_empty(), "{} selects no metric", query.source);
            assert!(
                names.iter().all(|n| n.starts_with("herald_")),
                "{}: {names:?}",
                query.source
            );
        }
    }
}
