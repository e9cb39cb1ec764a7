//! `GET /metrics`: counters and a latency histogram in the Prometheus text
//! exposition format (version 0.0.4), written by hand.
//!
//! The metric set is small and fixed, and the text format is simple and
//! stable, so a registry crate would add a dependency and a process-global
//! registry (two daemons in one process, as in tests, would share it) for
//! no gain. Requests are counted where the in-flight tracker sees them (see
//! `http::track_requests`): the method from the request body, the outcome
//! from the status and the JSON-RPC reply, the time until the reply's last
//! byte.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Methods are named by the client; past this many distinct names, new
/// ones are counted as `other` so a client cannot grow the table forever.
const MAX_METHODS: usize = 64;

#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative; summed when rendered).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What is counted for one method.
#[derive(Debug, Default)]
struct MethodStats {
    /// Requests by outcome.
    outcomes: BTreeMap<&'static str, u64>,
    latency: Histogram,
}

/// By method. A method's name is copied in once, when first seen, not at
/// every request.
#[derive(Debug, Default)]
struct Table {
    methods: BTreeMap<String, MethodStats>,
}

/// Request counters of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    table: Mutex<Table>,
}

impl Metrics {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn observe(&self, method: &str, outcome: &'static str, seconds: f64) {
        let mut table = self.table();
        let method = if table.methods.contains_key(method) || table.methods.len() < MAX_METHODS {
            method
        } else {
            "other"
        };
        if !table.methods.contains_key(method) {
            table.methods.insert(method.to_string(), MethodStats::default());
        }
        let stats = table.methods.get_mut(method).expect("inserted above");
        *stats.outcomes.entry(outcome).or_default() += 1;
        let histogram = &mut stats.latency;
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            histogram.counts[bucket] += 1;
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Appends the request metrics to `out`.
    pub(crate) fn render_requests(&self, out: &mut String) {
        let table = self.table();
        header(out, "mcpsock_requests_total", "counter", "MCP requests handled, by method and outcome.");
        for (method, stats) in &table.methods {
            let method = escape(method);
            for (outcome, count) in &stats.outcomes {
                let _ = writeln!(
                    out,
                    "mcpsock_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        }
        header(
            out,
            "mcpsock_request_duration_seconds",
            "histogram",
            "Time to answer an MCP request, by method.",
        );
        for (method, MethodStats { latency: histogram, .. }) in &table.methods {
            let method = escape(method);
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "mcpsock_request_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "mcpsock_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "mcpsock_request_duration_seconds_sum{{method=\"{method}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "mcpsock_request_duration_seconds_count{{method=\"{method}\"}} {}",
                histogram.count
            );
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// Set on a response by a route that parsed its request's body: the
/// request's method, which the metrics then need not parse out again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parsed(pub(crate) &'static str);

/// The JSON-RPC method of a request body: the `method` of a single
/// message, `batch` for an array, `invalid` for anything else.
pub(crate) fn method_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        method: Option<String>,
    }
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => "batch".into(),
        _ => match serde_json::from_slice::<Message>(body) {
            Ok(Message { method: Some(method) }) => method,
            Ok(Message { method: None }) => "response".into(),
            Err(_) => "invalid".into(),
        },
    }
}

/// What a response says about its request, refined as its body passes:
/// the HTTP status first, then a JSON-RPC error or a tool's `isError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    ToolError,
    Error,
    Rejected,
    /// The client left before the reply began.
    Cancelled,
}

impl Outcome {
    pub(crate) fn from_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            400..=499 => Self::Rejected,
            500.. => Self::Error,
            _ => Self::Ok,
        }
    }

    /// Looks at one chunk of the response body: an `"error":{` anywhere
    /// makes it an error, else an `"isError":true` a tool's error. Only the
    /// places after a quote are compared, found with `memchr` (a plain
    /// search at every byte for each pattern cost more than writing the
    /// chunk).
    pub(crate) fn see(&mut self, chunk: &[u8]) {
        if *self != Self::Ok {
            return;
        }
        let mut tool_error = false;
        for quote in memchr::memchr_iter(b'"', chunk) {
            let rest = &chunk[quote..];
            if rest.starts_with(b"\"error\":{") || rest.starts_with(b"\"error\": {") {
                *self = Self::Error;
                return;
            }
            tool_error |= rest.starts_with(b"\"isError\":true");
        }
        if tool_error {
            *self = Self::ToolError;
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::Error => "error",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe("tools/call", "ok", 0.0004);
        metrics.observe("tools/call", "ok", 0.003);
        metrics.observe("tools/call", "error", 100.0);
        let mut out = String::new();
        metrics.render_requests(&mut out);
        for line in [
            "mcpsock_requests_total{method=\"tools/call\",outcome=\"ok\"} 2",
            "mcpsock_requests_total{method=\"tools/call\",outcome=\"error\"} 1",
            "mcpsock_request_duration_seconds_bucket{method=\"tools/call\",le=\"0.0005\"} 1",
            "mcpsock_request_duration_seconds_bucket{method=\"tools/call\",le=\"0.001\"} 1",
            "mcpsock_request_duration_seconds_bucket{method=\"tools/call\",le=\"0.005\"} 2",
            "mcpsock_request_duration_seconds_bucket{method=\"tools/call\",le=\"60\"} 2",
            "mcpsock_request_duration_seconds_bucket{method=\"tools/call\",le=\"+Inf\"} 3",
            "mcpsock_request_duration_seconds_count{method=\"tools/call\"} 3",
            "# TYPE mcpsock_request_duration_seconds histogram",
        ] {
            assert!(out.lines().any(|got| got == line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn method_names_are_bounded_and_escaped() {
        let metrics = Metrics::default();
        for n in 0..(MAX_METHODS + 10) {
            metrics.observe(&format!("custom/{n}"), "ok", 0.01);
        }
        metrics.observe("a\"b\\c\nd", "ok", 0.01);
        let mut out = String::new();
        metrics.render_requests(&mut out);
        assert!(out.contains("method=\"other\",outcome=\"ok\"} 11"), "{out}");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn methods_and_outcomes_are_read_from_the_messages() {
        assert_eq!(
            method_of(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"method":"x"}}"#),
            "tools/call"
        );
        assert_eq!(method_of(b" [{}]"), "batch");
        assert_eq!(method_of(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), "response");
        assert_eq!(method_of(b"\xff{"), "invalid");
        let outcome = |chunks: &[&[u8]]| {
            let mut outcome = Outcome::Ok;
            chunks.iter().for_each(|chunk| outcome.see(chunk));
            outcome
        };
        assert_eq!(outcome(&[b"data: {\"result\":{\"content\":[]}}"]), Outcome::Ok);
        assert_eq!(outcome(&[b"data: {\"result\":{\"isError\":true}}"]), Outcome::ToolError);
        assert_eq!(outcome(&[b"x", b"{\"error\":{\"code\":-32602}}"]), Outcome::Error);
        // An error anywhere in a chunk outweighs a tool's error before it.
        assert_eq!(outcome(&[b"{\"isError\":true} {\"error\": {\"code\":1}}"]), Outcome::Error);
        assert_eq!(outcome(&[b"{\"isError\":true}", b"{\"error\":{}}"]), Outcome::ToolError);
        assert_eq!(outcome(&[b"{\"text\":\"error\"} \"error\":\"x\""]), Outcome::Ok);
        assert_eq!(Outcome::from_status(http::StatusCode::NOT_FOUND), Outcome::Rejected);
    }
}
