//! Prometheus text exposition (format 0.0.4) without a crate, and the HTTP request metrics.
//!
//! [`TextWriter`] writes families and samples with escaped label values; [`Family`] is a
//! labelled counter or gauge any component can register with [`Metrics::register`]; the
//! [`track`] middleware counts requests by method, route template and status and records their
//! latency in a histogram. [`parse_text`] is a strict reader used by the tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency histogram bucket bounds, seconds.
const LATENCY_BUCKETS_S: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Writes the text exposition format.
#[derive(Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// `# HELP` and `# TYPE` lines opening a family.
    pub fn family(&mut self, name: &str, kind: MetricType, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line: `name{k="v",…} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Label value escaping: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// HELP text escaping: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Anything that contributes families to `/metrics`.
pub trait MetricsSource: Send + Sync {
    fn write(&self, w: &mut TextWriter);
}

/// A labelled counter or gauge family: `Family::counter("onair_x_total", "help", &["kind"])`.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    label_names: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    pub fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self::new(name, help, MetricType::Counter, labels)
    }

    pub fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, help, MetricType::Gauge, labels)
    }

    fn new(
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        label_names: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            label_names,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `delta` to the series with these label values (in `label_names` order).
    pub fn add(&self, labels: &[&str], delta: f64) {
        let key = labels.iter().map(|s| (*s).to_owned()).collect();
        *lock(&self.values).entry(key).or_insert(0.0) += delta;
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Sets a gauge series.
    pub fn set(&self, labels: &[&str], value: f64) {
        let key = labels.iter().map(|s| (*s).to_owned()).collect();
        lock(&self.values).insert(key, value);
    }

    /// The current value of a series, 0 if never touched.
    pub fn get(&self, labels: &[&str]) -> f64 {
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        lock(&self.values).get(&key).copied().unwrap_or(0.0)
    }
}

impl MetricsSource for Family {
    fn write(&self, w: &mut TextWriter) {
        w.family(self.name, self.kind, self.help);
        for (values, v) in lock(&self.values).iter() {
            let labels: Vec<(&str, &str)> = self
                .label_names
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            w.sample(self.name, &labels, *v);
        }
    }
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, s: f64) {
        for (c, bound) in self.counts.iter_mut().zip(LATENCY_BUCKETS_S) {
            if s <= bound {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum_s += s;
    }
}

/// Request counts by (method, route template, status) and latency by (method, route).
/// Bounded: route templates are finite (unmatched paths share `route="unmatched"`).
#[derive(Default)]
struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    latency: Mutex<BTreeMap<(&'static str, String), Histogram>>,
}

impl HttpMetrics {
    fn record(&self, method: &'static str, route: &str, status: u16, elapsed_s: f64) {
        *lock(&self.requests)
            .entry((method, route.to_owned(), status))
            .or_insert(0) += 1;
        lock(&self.latency)
            .entry((method, route.to_owned()))
            .or_default()
            .observe(elapsed_s);
    }

    fn write(&self, w: &mut TextWriter) {
        let name = "onair_http_requests_total";
        w.family(
            name,
            MetricType::Counter,
            "HTTP requests by method, route and status.",
        );
        for ((method, route, status), n) in lock(&self.requests).iter() {
            let status = status.to_string();
            let labels = [
                ("method", *method),
                ("route", route.as_str()),
                ("status", &status),
            ];
            w.sample(name, &labels, *n as f64);
        }
        let name = "onair_http_request_duration_seconds";
        w.family(name, MetricType::Histogram, "HTTP request latency.");
        for ((method, route), h) in lock(&self.latency).iter() {
            for (bound, c) in LATENCY_BUCKETS_S.iter().zip(h.counts) {
                let le = format_value(*bound);
                let labels = [("method", *method), ("route", route.as_str()), ("le", &le)];
                w.sample(&format!("{name}_bucket"), &labels, c as f64);
            }
            let labels = [
                ("method", *method),
                ("route", route.as_str()),
                ("le", "+Inf"),
            ];
            w.sample(&format!("{name}_bucket"), &labels, h.count as f64);
            let labels = [("method", *method), ("route", route.as_str())];
            w.sample(&format!("{name}_sum"), &labels, h.sum_s);
            w.sample(&format!("{name}_count"), &labels, h.count as f64);
        }
    }
}

/// The registry behind `/metrics`.
#[derive(Default)]
pub struct Metrics {
    http: HttpMetrics,
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source whose families are written after the HTTP ones.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        lock(&self.sources).push(source);
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut w = TextWriter::new();
        self.http.write(&mut w);
        let sources = lock(&self.sources).clone();
        for s in sources {
            s.write(&mut w);
        }
        w.finish()
    }
}

/// A method as a bounded label value.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: counts the request and times it by its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed_s = start.elapsed().as_secs_f64();
    metrics
        .http
        .record(method, &route, resp.status().as_u16(), elapsed_s);
    resp
}

/// A parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the text format strictly: every line a `# HELP`/`# TYPE` comment or a sample with
/// valid names, quoted and escaped label values and a float value. For tests.
pub fn parse_text(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(c) = line.strip_prefix("# ") {
            let mut it = c.splitn(3, ' ');
            let (kw, name) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let ok = matches!(kw, "HELP" | "TYPE") && is_metric_name(name);
            let ok = ok
                && (kw == "HELP"
                    || matches!(
                        it.next(),
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                    ));
            if !ok {
                return Err(err("bad comment"));
            }
            continue;
        }
        out.push(parse_sample(line).ok_or_else(|| err("bad sample"))?);
    }
    Ok(out)
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            if !labels.is_empty() {
                rest = rest.strip_prefix(',')?;
            }
            let (k, r) = rest.split_once("=\"")?;
            if !is_metric_name(k) || k.contains(':') {
                return None;
            }
            let (v, r) = unescape_label(r)?;
            labels.push((k.to_owned(), v));
            rest = r;
        }
    }
    let value = match rest.strip_prefix(' ')? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads an escaped label value up to its closing quote; returns it and the rest.
fn unescape_label(s: &str) -> Option<(String, &str)> {
    let mut v = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((v, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                '\\' => v.push('\\'),
                '"' => v.push('"'),
                'n' => v.push('\n'),
                _ => return None,
            },
            '\n' => return None,
            c => v.push(c),
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's failure report
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_through_parser() {
        let f = Family::counter("onair_test_total", "Help with \\ and\nnewline.", &["path"]);
        f.inc(&["a\"b\\c\nd"]);
        f.add(&["plain"], 2.5);
        let mut w = TextWriter::new();
        f.write(&mut w);
        let text = w.finish();
        assert!(text.contains(r#"path="a\"b\\c\nd""#), "{text}");
        let samples = parse_text(&text).unwrap();
        assert_eq!(samples.len(), 2);
        let odd = samples.iter().find(|s| s.value == 1.0).unwrap();
        assert_eq!(odd.label("path"), Some("a\"b\\c\nd"));
    }

    #[test]
    fn parser_rejects_garbage() {
        assert!(parse_text("metric{a=\"unterminated} 1\n").is_err());
        assert!(parse_text("1bad 1\n").is_err());
        assert!(parse_text("ok{a=\"x\"} notanumber\n").is_err());
        assert!(parse_text("# TYPE x wrongtype\n").is_err());
        assert!(parse_text("ok{a=\"x\",b=\"y\"} 1\nok 2\n").is_ok());
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = HttpMetrics::default();
        m.record("GET", "/healthz", 200, 0.002);
        m.record("GET", "/healthz", 200, 0.2);
        let mut w = TextWriter::new();
        m.write(&mut w);
        let samples = parse_text(&w.finish()).unwrap();
        let bucket = |le: &str| {
            samples
                .iter()
                .find(|s| s.name.ends_with("_bucket") && s.label("le") == Some(le))
                .map(|s| s.value)
        };
        assert_eq!(bucket("0.001"), Some(0.0));
        assert_eq!(bucket("0.005"), Some(1.0));
        assert_eq!(bucket("0.25"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
    }
}
