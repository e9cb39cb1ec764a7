//! `mcpsock bench`: a load generator for any MCP endpoint.
//!
//! N workers each hold one keep-alive connection (or, for a stdio server,
//! one lane of in-flight requests on its pipe), open their own session when
//! the era has sessions, and call one tool in a loop. Every response is
//! checked: the id must match and a result must be present and not an
//! error. After a warm-up, latencies are recorded and the CPU time of the
//! named server processes is sampled.

mod http;
mod stdio;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcpsock_api::{BenchReport, LatencySummary, ServerUsage};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::{ClientError, Endpoint};

/// The protocol era the load generator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// `initialize`, then requests in the session (2025-03-26 … 2025-11-25).
    Legacy,
    /// Stateless requests carrying their own protocol metadata.
    Stateless,
    /// Plain HTTP POSTs of the same body, checked only for a 2xx status:
    /// for measuring a server that does not speak MCP (the HTTP floor).
    Plain,
}

impl Era {
    fn label(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Stateless => http::STATELESS_VERSION,
            Self::Plain => "none",
        }
    }
}

/// What to load.
#[derive(Clone, Debug)]
pub enum BenchTarget {
    Endpoint(Endpoint),
    /// A stdio MCP server started as this command, called directly.
    Stdio(Vec<String>),
}

/// When the measured window ends.
#[derive(Clone, Copy, Debug)]
pub enum StopAfter {
    Duration(Duration),
    Requests(u64),
}

/// Settings of one benchmark run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BenchOptions {
    pub target: BenchTarget,
    pub tool: String,
    pub arguments: Map<String, Value>,
    pub connections: usize,
    pub stop_after: StopAfter,
    pub warmup: Duration,
    pub era: Era,
    pub server_pids: Vec<u32>,
}

impl BenchOptions {
    pub fn new(target: BenchTarget, tool: impl Into<String>) -> Self {
        Self {
            target,
            tool: tool.into(),
            arguments: Map::new(),
            connections: 1,
            stop_after: StopAfter::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(1),
            era: Era::Legacy,
            server_pids: Vec::new(),
        }
    }
}

/// Live counters for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
}

/// Shared state of the workers of one run.
struct Run {
    recording: AtomicBool,
    finished: AtomicBool,
    /// Requests still to send in a `Requests` run.
    remaining: AtomicU64,
    counted: bool,
    progress: Arc<Progress>,
    first_error: Mutex<Option<String>>,
}

impl Run {
    /// Whether the worker should send another request.
    fn keep_going(&self) -> bool {
        if self.finished.load(Ordering::Acquire) {
            return false;
        }
        if self.counted && self.recording.load(Ordering::Acquire) {
            return self
                .remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1))
                .is_ok();
        }
        true
    }

    async fn record_error(&self, error: String) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().await;
        if first.is_none() {
            *first = Some(error);
        }
    }
}

/// What one worker measured.
#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// One request/response round trip, as a worker does it.
trait Lane: Send + 'static {
    /// Sends one `tools/call` with this id and checks the answer.
    fn call(&mut self, id: u64) -> impl Future<Output = Result<(), String>> + Send;
}

async fn drive(mut lane: impl Lane, worker: u64, run: Arc<Run>) -> WorkerResult {
    let mut result = WorkerResult::default();
    let mut sequence = 0u64;
    while run.keep_going() {
        sequence += 1;
        // Ids are unique across workers, so a mixed-up answer is caught.
        let id = worker * 1_000_000_000 + sequence;
        let recording = run.recording.load(Ordering::Acquire);
        let started = Instant::now();
        let outcome = lane.call(id).await;
        let elapsed = started.elapsed();
        match outcome {
            Ok(()) => {
                run.progress.completed.fetch_add(1, Ordering::Relaxed);
                if recording {
                    result.latencies_us.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                }
            }
            Err(error) => {
                if recording {
                    result.errors += 1;
                }
                run.record_error(error).await;
                // A broken connection fails fast; do not spin on it.
                if run.progress.errors.load(Ordering::Relaxed) > 1_000 {
                    run.finished.store(true, Ordering::Release);
                }
            }
        }
    }
    result
}

/// Runs the benchmark and reports. Setup failures (no daemon, a refused
/// handshake, a command that does not start) are errors; failures of
/// individual requests are counted in the report.
pub async fn run(options: BenchOptions, progress: Arc<Progress>) -> Result<BenchReport, ClientError> {
    let counted = matches!(options.stop_after, StopAfter::Requests(_));
    let run = Arc::new(Run {
        recording: AtomicBool::new(options.warmup.is_zero()),
        finished: AtomicBool::new(false),
        remaining: AtomicU64::new(match options.stop_after {
            StopAfter::Requests(count) => count,
            StopAfter::Duration(_) => 0,
        }),
        counted,
        progress,
        first_error: Mutex::new(None),
    });
    let params = serde_json::json!({"name": options.tool, "arguments": options.arguments});
    let connections = options.connections.max(1);
    let mut workers = tokio::task::JoinSet::new();
    let target_label;
    match &options.target {
        BenchTarget::Endpoint(endpoint) => {
            target_label = endpoint.to_string();
            for worker in 0..connections {
                let lane = http::HttpLane::connect(endpoint, options.era, &params).await?;
                workers.spawn(drive(lane, worker as u64 + 1, run.clone()));
            }
        }
        BenchTarget::Stdio(command) => {
            target_label = format!("stdio:{}", command.join(" "));
            let server = stdio::StdioServer::start(command).await?;
            for worker in 0..connections {
                workers.spawn(drive(server.lane(&params), worker as u64 + 1, run.clone()));
            }
        }
    }

    if !options.warmup.is_zero() {
        tokio::time::sleep(options.warmup).await;
    }
    let cpu_before = cpu_seconds(&options.server_pids);
    let started = Instant::now();
    run.recording.store(true, Ordering::Release);
    if let StopAfter::Duration(duration) = options.stop_after {
        tokio::time::sleep(duration).await;
        run.finished.store(true, Ordering::Release);
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(result) = workers.join_next().await {
        let result = result.unwrap_or_default();
        latencies.extend(result.latencies_us);
        errors += result.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(&options.server_pids);
    let requests = latencies.len() as u64;
    let server = (!options.server_pids.is_empty()).then(|| {
        let cpu = (cpu_after - cpu_before).max(0.0);
        ServerUsage {
            pids: options.server_pids.clone(),
            cpu_seconds: cpu,
            cpu_us_per_request: if requests == 0 { 0.0 } else { cpu * 1e6 / requests as f64 },
            peak_rss_kib: options.server_pids.iter().filter_map(|&pid| peak_rss_kib(pid)).sum(),
        }
    });
    let first_error = run.first_error.lock().await.clone();
    Ok(BenchReport {
        target: target_label,
        tool: options.tool,
        era: options.era.label().into(),
        connections,
        requests,
        errors,
        seconds,
        requests_per_second: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        latency_us: summarize(&mut latencies),
        server,
        first_error,
    })
}

/// Opens `count` legacy sessions (`initialize` and `initialized`) over
/// `connections` connections and leaves them open on the server, for
/// measuring what an idle session costs. Returns how many were opened.
pub async fn open_sessions(endpoint: &Endpoint, count: u64, connections: usize) -> Result<u64, ClientError> {
    let remaining = Arc::new(AtomicU64::new(count));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let mut lane = http::HttpLane::open_plain(endpoint).await?;
        let remaining = remaining.clone();
        let endpoint = endpoint.clone();
        workers.spawn(async move {
            let mut opened = 0u64;
            while remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1))
                .is_ok()
            {
                lane.initialize()
                    .await
                    .map_err(|message| ClientError::Protocol { endpoint: endpoint.clone(), message })?;
                lane.forget_session();
                opened += 1;
            }
            Ok::<u64, ClientError>(opened)
        });
    }
    let mut opened = 0;
    while let Some(result) = workers.join_next().await {
        opened += result.unwrap_or(Ok(0))?;
    }
    Ok(opened)
}

fn summarize(latencies: &mut [u32]) -> LatencySummary {
    if latencies.is_empty() {
        return LatencySummary::default();
    }
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let index = ((latencies.len() as f64 * quantile).ceil() as usize).clamp(1, latencies.len()) - 1;
        u64::from(latencies[index])
    };
    let total: u64 = latencies.iter().map(|&latency| u64::from(latency)).sum();
    LatencySummary {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: u64::from(latencies[latencies.len() - 1]),
        mean: total / latencies.len() as u64,
    }
}

/// User plus system CPU seconds of the processes so far (0 for a process
/// that cannot be read).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks_per_second = rustix::param::clock_ticks_per_second() as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields of the whole line.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some((user + system) as f64 / ticks_per_second)
        })
        .sum()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Checks a JSON-RPC response to request `id`: a result that is not a tool
/// error.
fn check_response(message: &Value, id: u64) -> Result<(), String> {
    if message.get("id").and_then(Value::as_u64) != Some(id) {
        return Err(format!("answer for id {:?} where {id} was expected", message.get("id")));
    }
    if let Some(error) = message.get("error") {
        return Err(format!("JSON-RPC error: {error}"));
    }
    let result = message.get("result").ok_or("a response with neither result nor error")?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(format!("the tool reported an error: {result}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percentiles() {
        let mut latencies: Vec<u32> = (1..=100).rev().collect();
        let summary = summarize(&mut latencies);
        assert_eq!(summary, LatencySummary { p50: 50, p90: 90, p99: 99, max: 100, mean: 50 });
        assert_eq!(summarize(&mut []), LatencySummary::default());
        assert_eq!(summarize(&mut [7]).p99, 7);
    }

    #[test]
    fn responses_are_checked() {
        assert!(check_response(&json!({"id": 3, "result": {"content": []}}), 3).is_ok());
        assert!(check_response(&json!({"id": 4, "result": {}}), 3).unwrap_err().contains("expected"));
        assert!(
            check_response(&json!({"id": 3, "error": {"code": -1}}), 3)
                .unwrap_err()
                .contains("JSON-RPC error")
        );
        assert!(
            check_response(&json!({"id": 3, "result": {"isError": true}}), 3)
                .unwrap_err()
                .contains("tool reported")
        );
        assert!(check_response(&json!({"id": 3}), 3).is_err());
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_seconds(&[std::process::id()]) >= 0.0);
        assert!(peak_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert_eq!(cpu_seconds(&[u32::MAX]), 0.0);
    }
}
