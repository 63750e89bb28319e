//! The part of PromQL the shipped dashboard uses, evaluated over scrapes the lab recorded:
//! selectors with `=`/`!=`/regex matchers, `rate` and `increase` over a range, `sum`, `max`,
//! `min`, `avg` and `count` by or without labels, `histogram_quantile`, and binary operators
//! between vectors (one-to-one on all labels) or a vector and a number, comparisons filtering
//! as Prometheus' do. Anything else is an error naming it, so a panel is never drawn wrong.

use std::collections::BTreeMap;

use promql_parser::parser::{self, Expr, LabelModifier};

/// Labels of a series (without `__name__` once a function or an aggregation applied).
pub type Labels = BTreeMap<String, String>;

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, `instance` included.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

/// Every component's samples at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scrape {
    /// Seconds since the recording started.
    pub at: f64,
    /// The samples.
    pub samples: Vec<Sample>,
}

/// Parses a Prometheus text exposition, adding `instance` to every sample.
pub fn parse_exposition(text: &str, instance: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, mut labels) = match series.split_once('{') {
            Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
            None => (series.to_string(), Labels::new()),
        };
        labels.insert("instance".into(), instance.into());
        out.push(Sample { name, labels, value });
    }
    out
}

/// `a="x",b="y\"z"` → labels.
fn parse_labels(text: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(match escaped {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end.min(after.len())..];
    }
    labels
}

/// An instant vector: labels → value.
pub type Vector = Vec<(Labels, f64)>;

enum Value {
    Vector(Vector),
    Scalar(f64),
}

/// Evaluates `expr` (Grafana variables already replaced) at scrape `at` of `history`.
pub fn evaluate(expr: &str, history: &[Scrape], at: usize) -> Result<Vector, String> {
    let ast = parser::parse(expr)?;
    match eval(&ast, history, at)? {
        Value::Vector(v) => Ok(v),
        Value::Scalar(s) => Ok(vec![(Labels::new(), s)]),
    }
}

fn selects(vs: &parser::VectorSelector, sample: &Sample) -> bool {
    if vs.name.as_deref().is_some_and(|n| n != sample.name) {
        return false;
    }
    vs.matchers.matchers.iter().all(|m| {
        let value = if m.name == "__name__" {
            sample.name.as_str()
        } else {
            sample.labels.get(&m.name).map(String::as_str).unwrap_or("")
        };
        m.is_match(value)
    })
}

fn with_name(sample: &Sample) -> Labels {
    let mut labels = sample.labels.clone();
    labels.insert("__name__".into(), sample.name.clone());
    labels
}

fn without_name(mut labels: Labels) -> Labels {
    labels.remove("__name__");
    labels
}

fn eval(expr: &Expr, history: &[Scrape], at: usize) -> Result<Value, String> {
    let now = history.get(at).ok_or("no scrape at that index")?;
    match expr {
        Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
        Expr::Paren(p) => eval(&p.expr, history, at),
        Expr::VectorSelector(vs) => Ok(Value::Vector(
            now.samples
                .iter()
                .filter(|s| selects(vs, s))
                .map(|s| (with_name(s), s.value))
                .collect(),
        )),
        Expr::Call(call) => match call.func.name {
            "rate" | "increase" => {
                let Some(Expr::MatrixSelector(ms)) = call.args.args.first().map(|a| a.as_ref()) else {
                    return Err(format!("{}() needs a range selector", call.func.name));
                };
                let window = ms.range.as_secs_f64();
                Ok(Value::Vector(range_delta(
                    &ms.vs,
                    history,
                    at,
                    window,
                    call.func.name == "rate",
                )))
            }
            "histogram_quantile" => {
                let [q, inner] = call.args.args.as_slice() else {
                    return Err("histogram_quantile takes two arguments".into());
                };
                let Value::Scalar(q) = eval(q, history, at)? else {
                    return Err("histogram_quantile's first argument must be a number".into());
                };
                let Value::Vector(buckets) = eval(inner, history, at)? else {
                    return Err("histogram_quantile's second argument must be a vector".into());
                };
                Ok(Value::Vector(histogram_quantile(q, &buckets)))
            }
            other => Err(format!("function {other}() is not evaluated here")),
        },
        Expr::Aggregate(agg) => {
            let Value::Vector(input) = eval(&agg.expr, history, at)? else {
                return Err("aggregation over a number".into());
            };
            let key = |labels: &Labels| -> Labels {
                match &agg.modifier {
                    Some(LabelModifier::Include(keep)) => labels
                        .iter()
                        .filter(|(k, _)| keep.labels.contains(*k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    Some(LabelModifier::Exclude(drop)) => without_name(labels.clone())
                        .into_iter()
                        .filter(|(k, _)| !drop.labels.contains(k))
                        .collect(),
                    None => Labels::new(),
                }
            };
            let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
            for (labels, value) in &input {
                groups.entry(key(labels)).or_default().push(*value);
            }
            let op = agg.op.to_string();
            let fold = |values: &[f64]| -> Result<f64, String> {
                Ok(match op.as_str() {
                    "sum" => values.iter().sum(),
                    "max" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                    "avg" => values.iter().sum::<f64>() / values.len() as f64,
                    "count" => values.len() as f64,
                    other => return Err(format!("aggregation {other} is not evaluated here")),
                })
            };
            groups
                .into_iter()
                .map(|(labels, values)| Ok((labels, fold(&values)?)))
                .collect::<Result<Vector, String>>()
                .map(Value::Vector)
        }
        Expr::Binary(bin) => {
            let op = bin.op.to_string();
            let lhs = eval(&bin.lhs, history, at)?;
            let rhs = eval(&bin.rhs, history, at)?;
            binary(&op, lhs, rhs)
        }
        other => Err(format!("{other} is not evaluated here")),
    }
}

fn apply(op: &str, a: f64, b: f64) -> Result<Option<f64>, String> {
    // Comparisons filter: Some(a) keeps the left-hand sample as it is.
    let keep = |ok: bool| if ok { Some(a) } else { None };
    Ok(match op {
        "+" => Some(a + b),
        "-" => Some(a - b),
        "*" => Some(a * b),
        "/" => Some(a / b),
        ">" => keep(a > b),
        "<" => keep(a < b),
        ">=" => keep(a >= b),
        "<=" => keep(a <= b),
        "==" => keep(a == b),
        "!=" => keep(a != b),
        other => return Err(format!("operator {other} is not evaluated here")),
    })
}

fn binary(op: &str, lhs: Value, rhs: Value) -> Result<Value, String> {
    let comparison = matches!(op, ">" | "<" | ">=" | "<=" | "==" | "!=");
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => Ok(Value::Scalar(apply(op, a, b)?.unwrap_or(f64::NAN))),
        (Value::Vector(v), Value::Scalar(b)) => {
            let mut out = Vector::new();
            for (labels, a) in v {
                if let Some(value) = apply(op, a, b)? {
                    out.push((if comparison { labels } else { without_name(labels) }, value));
                }
            }
            Ok(Value::Vector(out))
        }
        (Value::Scalar(a), Value::Vector(v)) => {
            let mut out = Vector::new();
            for (labels, b) in v {
                if let Some(value) = apply(op, a, b)? {
                    out.push((without_name(labels), if comparison { b } else { value }));
                }
            }
            Ok(Value::Vector(out))
        }
        (Value::Vector(l), Value::Vector(r)) => {
            let right: BTreeMap<Labels, f64> = r.into_iter().map(|(k, v)| (without_name(k), v)).collect();
            let mut out = Vector::new();
            for (labels, a) in l {
                let key = without_name(labels.clone());
                if let Some(b) = right.get(&key)
                    && let Some(value) = apply(op, a, *b)?
                {
                    out.push((if comparison { labels } else { key }, value));
                }
            }
            Ok(Value::Vector(out))
        }
    }
}

/// `increase` (or `rate`) of every series `vs` selects over the `window` seconds before scrape
/// `at`: the sum of the steps between its samples in the window, a counter reset counting
/// from zero. Unlike Prometheus, no extrapolation to the window's edges: with scrapes every
/// second over a 10 s window, `increase` reads at most a tenth low.
fn range_delta(vs: &parser::VectorSelector, history: &[Scrape], at: usize, window: f64, per_second: bool) -> Vector {
    let end = history[at].at;
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for scrape in history[..=at].iter().filter(|s| s.at >= end - window) {
        for sample in scrape.samples.iter().filter(|s| selects(vs, s)) {
            series
                .entry(sample.labels.clone())
                .or_default()
                .push((scrape.at, sample.value));
        }
    }
    series
        .into_iter()
        .filter(|(_, points)| points.len() >= 2)
        .map(|(labels, points)| {
            let mut increase = 0.0;
            for pair in points.windows(2) {
                let (prev, next) = (pair[0].1, pair[1].1);
                increase += if next >= prev { next - prev } else { next };
            }
            let covered = points[points.len() - 1].0 - points[0].0;
            let value = if per_second {
                increase / covered.max(f64::EPSILON)
            } else {
                increase
            };
            (labels, value)
        })
        .collect()
}

/// `histogram_quantile(q, buckets)`: per label set (without `le`), the value below which
/// a fraction `q` of the observations fall, interpolated linearly inside the bucket.
fn histogram_quantile(q: f64, buckets: &Vector) -> Vector {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for (labels, count) in buckets {
        let mut key = without_name(labels.clone());
        let Some(le) = key.remove("le") else { continue };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        groups.entry(key).or_default().push((bound, *count));
    }
    groups
        .into_iter()
        .filter_map(|(labels, mut bounds)| {
            bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total = bounds.last()?.1;
            if total <= 0.0 {
                return None;
            }
            let rank = q * total;
            let mut lower = (0.0, 0.0);
            for &(bound, count) in &bounds {
                if count >= rank {
                    if bound.is_infinite() {
                        return Some((labels, lower.0));
                    }
                    let inside = count - lower.1;
                    let fraction = if inside > 0.0 { (rank - lower.1) / inside } else { 1.0 };
                    return Some((labels, lower.0 + (bound - lower.0) * fraction));
                }
                lower = (bound, count);
            }
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(at: f64, text: &str) -> Scrape {
        Scrape {
            at,
            samples: parse_exposition(text, "node1"),
        }
    }

    fn value(v: &Vector, label: (&str, &str)) -> Option<f64> {
        v.iter()
            .find(|(l, _)| l.get(label.0).map(String::as_str) == Some(label.1))
            .map(|(_, x)| *x)
    }

    #[test]
    fn expositions_parse_with_escaped_labels() {
        let samples = parse_exposition(
            "# HELP x y\nherald_a{ip=\"10.0.0.1\",note=\"a \\\"b\\\"\"} 2\nherald_b 3.5\n",
            "node2",
        );
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["note"], "a \"b\"");
        assert_eq!(samples[0].labels["instance"], "node2");
        assert_eq!((samples[1].name.as_str(), samples[1].value), ("herald_b", 3.5));
    }

    #[test]
    fn aggregations_filters_and_ratios_are_prometheus_s() {
        let history = vec![scrape(
            0.0,
            "used{pool=\"a\"} 3\nused{pool=\"b\"} 0\nfree{pool=\"a\"} 1\nfree{pool=\"b\"} 4\n",
        )];
        let sum = evaluate("sum(used)", &history, 0).unwrap();
        assert_eq!(sum, vec![(Labels::new(), 3.0)]);
        let fill = evaluate(
            "max by (pool) (used) / (max by (pool) (used) + max by (pool) (free) > 0)",
            &history,
            0,
        )
        .unwrap();
        assert_eq!(value(&fill, ("pool", "a")), Some(0.75));
        assert_eq!(value(&fill, ("pool", "b")), Some(0.0));
        assert_eq!(
            evaluate("used > 0", &history, 0).unwrap().len(),
            1,
            "a comparison filters"
        );
        assert_eq!(evaluate("count by (pool) (used == 3)", &history, 0).unwrap().len(), 1);
        assert!(
            evaluate("topk(1, used)", &history, 0).is_err(),
            "unsupported is an error"
        );
    }

    #[test]
    fn increase_and_rate_survive_a_counter_reset() {
        let history = vec![
            scrape(0.0, "c_total 10\n"),
            scrape(1.0, "c_total 15\n"),
            scrape(2.0, "c_total 2\n"),
            scrape(3.0, "c_total 4\n"),
        ];
        let rate = evaluate("rate(c_total[5s])", &history, 3).unwrap();
        assert_eq!(rate[0].1, (5.0 + 2.0 + 2.0) / 3.0);
        let increase = evaluate("sum(increase(c_total[2s]))", &history, 3).unwrap();
        assert_eq!(increase[0].1, 2.0 + 2.0, "the reset at 2 s counts from zero");
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let history = vec![scrape(
            0.0,
            "h_bucket{le=\"0.1\"} 50\nh_bucket{le=\"0.2\"} 100\nh_bucket{le=\"+Inf\"} 100\n",
        )];
        let q = evaluate("histogram_quantile(0.75, sum by (le) (h_bucket))", &history, 0).unwrap();
        assert!((q[0].1 - 0.15).abs() < 1e-9, "{q:?}");
    }
}
