//! What a run measured: the report, its percentiles, and how it prints (a
//! JSON line, a readable table, and the suite's Markdown summary).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{BackendArg, ProviderArg};

// Measurements

#[derive(Debug, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(mut micros: Vec<u64>) -> Percentiles {
    if micros.is_empty() {
        return Percentiles::default();
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Percentiles { p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms: at(1.0) }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct QueryTiming {
    pub filter: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub label: String,
    pub backend: Option<BackendArg>,
    pub provider: Option<ProviderArg>,
    pub processes: usize,
    pub subscriptions: usize,
    /// Slow subscriptions beside the healthy ones, and requests they got.
    pub slow_subscriptions: usize,
    pub slow_received: usize,
    pub concurrency: usize,
    pub paced_rate: f64,
    pub preloaded_messages: usize,
    pub callbacks: usize,
    pub events: usize,
    pub load_seconds: f64,
    pub callbacks_per_second: f64,
    pub events_per_second: f64,
    pub overload_retries: usize,
    pub failed_callbacks: usize,
    pub ack: Percentiles,
    pub deliveries_expected: usize,
    pub deliveries_received: usize,
    pub deliveries_lost: usize,
    pub deliveries_duplicated: usize,
    pub deliveries_per_second: f64,
    pub delivery_seconds: f64,
    pub signatures_checked: usize,
    pub signatures_bad: usize,
    pub end_to_end: Percentiles,
    pub relay_peak_rss_mb: f64,
    pub relay_cpu_seconds: f64,
    pub db_write_transactions: f64,
    pub db_write_transactions_per_event: f64,
    /// Write transactions during the run by what they were for (ingest
    /// batches, delivery claims, delivery outcome batches).
    pub db_write_transactions_by_kind: BTreeMap<String, f64>,
    /// Mean events per ingest transaction (the group-commit batch).
    pub ingest_batch_mean: f64,
    /// Mean time to apply and commit one ingest batch.
    pub ingest_commit_mean_ms: f64,
    pub queries: Vec<QueryTiming>,
}

pub fn print_report(r: &Report, json_only: bool) {
    println!("{}", serde_json::to_string(r).unwrap_or_default());
    if json_only {
        return;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n  {} ({:?}, {:?}, {} process(es), K={}, C={}{})",
        if r.label.is_empty() { "run" } else { &r.label },
        r.backend.unwrap_or(BackendArg::Postgres),
        r.provider.unwrap_or(ProviderArg::Mailgun),
        r.processes,
        r.subscriptions,
        r.concurrency,
        if r.paced_rate > 0.0 { format!(", paced {}/s", r.paced_rate) } else { String::new() }
    );
    let _ = writeln!(
        t,
        "  callbacks        {:>10} in {:.2} s = {:.0}/s ({} 503 retries, {} failed)",
        r.callbacks, r.load_seconds, r.callbacks_per_second, r.overload_retries, r.failed_callbacks
    );
    let _ = writeln!(t, "  events           {:>10} = {:.0}/s", r.events, r.events_per_second);
    let _ = writeln!(
        t,
        "  ack latency      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.ack.p50_ms, r.ack.p99_ms, r.ack.max_ms
    );
    let _ = writeln!(
        t,
        "  deliveries       {}/{} in {:.2} s = {:.0}/s, lost {}, duplicated {}",
        r.deliveries_expected - r.deliveries_lost,
        r.deliveries_expected,
        r.delivery_seconds,
        r.deliveries_per_second,
        r.deliveries_lost,
        r.deliveries_duplicated
    );
    let _ = writeln!(
        t,
        "  callback→sink    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.end_to_end.p50_ms, r.end_to_end.p90_ms, r.end_to_end.p99_ms, r.end_to_end.max_ms
    );
    let _ = writeln!(t, "  signatures       {} checked, {} bad", r.signatures_checked, r.signatures_bad);
    let _ = writeln!(t, "  relay            peak RSS {:.0} MB, CPU {:.1} s", r.relay_peak_rss_mb, r.relay_cpu_seconds);
    let _ = writeln!(
        t,
        "  db writes        {:.0} transactions = {:.4} per event ({})",
        r.db_write_transactions,
        r.db_write_transactions_per_event,
        r.db_write_transactions_by_kind.iter().map(|(k, n)| format!("{k} {n:.0}")).collect::<Vec<_>>().join(", ")
    );
    for q in &r.queries {
        let _ = writeln!(t, "  GET /messages    {:<24} p50 {:.2} ms  p99 {:.2} ms", q.filter, q.p50_ms, q.p99_ms);
    }
    eprintln!("{t}");
}

/// The suite's figures as one Markdown table.
pub fn summary(reports: &[Report]) -> String {
    let mut t = String::from(
        "| run | callbacks/s | events/s | deliveries/s | ack p50 / p99 ms | callback→sink p50 / p99 / max ms | lost / dup | relay RSS MB | relay CPU s | commits/event |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let deliveries =
            if r.deliveries_expected > 0 { format!("{:.0}", r.deliveries_per_second) } else { "–".into() };
        let e2e = if r.deliveries_expected > 0 {
            format!("{:.1} / {:.1} / {:.0}", r.end_to_end.p50_ms, r.end_to_end.p99_ms, r.end_to_end.max_ms)
        } else {
            "–".into()
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {} | {:.1} / {:.1} | {} | {} / {} | {:.0} | {:.1} | {:.4} |",
            r.label,
            r.callbacks_per_second,
            r.events_per_second,
            deliveries,
            r.ack.p50_ms,
            r.ack.p99_ms,
            e2e,
            r.deliveries_lost,
            r.deliveries_duplicated,
            r.relay_peak_rss_mb,
            r.relay_cpu_seconds,
            r.db_write_transactions_per_event
        );
    }
    for r in reports.iter().filter(|r| !r.queries.is_empty()) {
        let _ = writeln!(t, "\n| `GET /messages` ({}) | p50 ms | p99 ms |\n|---|---:|---:|", r.label);
        for q in &r.queries {
            let _ = writeln!(t, "| {} | {:.2} | {:.2} |", q.filter, q.p50_ms, q.p99_ms);
        }
    }
    t
}
