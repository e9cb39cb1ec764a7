//! `mcpsock bench`: runs the load generator and prints its report.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use mcpsock_api::BenchReport;
use mcpsock_client::Endpoint;
use mcpsock_client::bench::{BenchOptions, BenchTarget, Era, Progress, StopAfter};
use rmcp::model::JsonObject;

use crate::exit::{Code, Failure};
use crate::flags::BenchFlags;

pub(crate) async fn run(target: BenchTarget, flags: &BenchFlags) -> Result<ExitCode, Failure> {
    if let (Some(count), BenchTarget::Endpoint(endpoint)) = (flags.open_sessions, &target) {
        return open_sessions(endpoint, count, flags).await;
    }
    let Some(tool) = flags.tool.clone() else {
        return Err(Failure::new(Code::Usage, anyhow!("--tool is required")));
    };
    let arguments = crate::call::build_arguments(flags.args_json.as_deref(), &flags.args, &JsonObject::new())
        .map_err(|error| Failure::new(Code::Usage, error))?;
    if flags.connections == 0 {
        return Err(Failure::new(Code::Usage, anyhow!("--connections must be at least 1")));
    }
    let mut options = BenchOptions::new(target, tool);
    options.arguments = arguments;
    options.connections = flags.connections;
    options.stop_after = match flags.requests {
        Some(count) => StopAfter::Requests(count),
        None => StopAfter::Duration(flags.duration),
    };
    options.warmup = flags.warmup;
    options.era = match flags.era.as_str() {
        "legacy" => Era::Legacy,
        "none" => Era::Plain,
        _ => Era::Stateless,
    };
    options.server_pids = flags.server_pid.clone();

    let progress = Arc::new(Progress::default());
    let ticker = std::io::stderr().is_terminal().then(|| tokio::spawn(show_progress(progress.clone())));
    let report = mcpsock_client::bench::run(options, progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
        eprint!("\r\x1b[2K");
    }
    let report = report.map_err(Failure::client)?;
    if flags.json {
        outln!("{}", serde_json::to_string_pretty(&report).map_err(|error| Failure::internal(error.into()))?);
    } else {
        out!("{}", render(&report));
    }
    let first = report.first_error.as_deref().unwrap_or("none was reported");
    if report.requests == 0 {
        return Err(Failure::internal(anyhow!("no request succeeded; the first error: {first}")));
    }
    if report.errors > 0 {
        return Err(Failure::internal(anyhow!(
            "{} of {} requests failed; the first error: {first}",
            report.errors,
            report.errors + report.requests
        )));
    }
    Ok(ExitCode::SUCCESS)
}

async fn open_sessions(endpoint: &Endpoint, count: u64, flags: &BenchFlags) -> Result<ExitCode, Failure> {
    let rss_before: u64 = flags.server_pid.iter().filter_map(|&pid| resident_kib(pid)).sum();
    let started = Instant::now();
    let opened = mcpsock_client::bench::open_sessions(endpoint, count, flags.connections)
        .await
        .map_err(Failure::client)?;
    let seconds = started.elapsed().as_secs_f64();
    let rss_after: u64 = flags.server_pid.iter().filter_map(|&pid| resident_kib(pid)).sum();
    let report = serde_json::json!({
        "target": endpoint.to_string(),
        "sessions": opened,
        "seconds": seconds,
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "kib_per_session": if opened == 0 { 0.0 } else { (rss_after as f64 - rss_before as f64) / opened as f64 },
    });
    if flags.json {
        outln!("{report:#}");
    } else {
        outln!(
            "opened {opened} idle sessions in {seconds:.2} s; server RSS {rss_before} KiB -> {rss_after} KiB ({:.1} KiB per session)",
            report["kib_per_session"].as_f64().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Current resident set size (VmRSS) of a process, in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|line| line.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn show_progress(progress: Arc<Progress>) {
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let completed = progress.completed.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        eprint!(
            "\r\x1b[2K{seconds:5.1}s  {completed} requests  {:.0}/s  {errors} errors",
            completed as f64 / seconds
        );
        let _ = std::io::stderr().flush();
    }
}

fn render(report: &BenchReport) -> String {
    let latency = &report.latency_us;
    let mut text = format!(
        "target     {}\ntool       {} ({} era, {} connections)\nrequests   {} in {:.2} s = {:.0} req/s, {} errors\nlatency    p50 {}  p90 {}  p99 {}  max {}  mean {}\n",
        report.target,
        report.tool,
        report.era,
        report.connections,
        report.requests,
        report.seconds,
        report.requests_per_second,
        report.errors,
        micros(latency.p50),
        micros(latency.p90),
        micros(latency.p99),
        micros(latency.max),
        micros(latency.mean),
    );
    if let Some(server) = &report.server {
        text.push_str(&format!(
            "server     cpu {:.2} s = {:.1} µs/request, peak RSS {:.1} MiB (pids {:?})\n",
            server.cpu_seconds,
            server.cpu_us_per_request,
            server.peak_rss_kib as f64 / 1024.0,
            server.pids
        ));
    }
    text
}

fn micros(value: u64) -> String {
    if value >= 10_000 { format!("{:.1} ms", value as f64 / 1000.0) } else { format!("{value} µs") }
}
