//! One run (fresh database, relays, sink, load, drain, report) and the
//! suite of runs the README reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hookrelay::domain::signing::VerifyKey;
use hookrelay::scratch::ScratchDb;
use serde_json::{Value, json};

use crate::db::{fresh_database, preload, settle};
use crate::load::{Signer, drive, http_client, metric_by_kind, metric_total, request, time_queries};
use crate::relay::{Relay, process_usage, relay_binary, start_relay, stop_relay, write_config};
use crate::report::{Report, percentiles, print_report, summary};
use crate::sink::start_sink;
use crate::{API_KEY, BackendArg, ProviderArg, RunArgs};

pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.backend == BackendArg::Sqlite && args.processes > 1 {
        bail!("SQLite is for one process; use --backend postgres for --processes > 1");
    }
    let binary = relay_binary(args)?;
    let db = fresh_database(args).await?;
    run_on(args, &binary, &db).await
}

pub async fn run_on(args: &RunArgs, binary: &Path, db: &ScratchDb) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let (signer, sendgrid_key) = Signer::new()?;
    let config = write_config(dir.path(), db.url(), &sendgrid_key)?;
    // Migrate first, so a preload can go straight into the tables.
    let status = Command::new(binary).arg("--config").arg(&config).arg("migrate").stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("hookrelay migrate failed");
    }
    preload(db, args.backend, args.preload).await?;
    settle(db).await;
    let mut relays = Vec::new();
    for _ in 0..args.processes.max(1) {
        relays.push(start_relay(binary, &config)?);
    }
    let urls: Vec<String> = relays.iter().map(|r| r.url.clone()).collect();
    let outcome = measure(args, &urls, signer, relays.iter().map(Relay::pid).collect()).await;
    for relay in relays {
        stop_relay(relay);
    }
    outcome
}

pub async fn measure(args: &RunArgs, relays: &[String], signer: Signer, pids: Vec<u32>) -> anyhow::Result<Report> {
    let client = http_client(8);
    let slow = (!args.slow_never).then(|| Duration::from_millis(args.slow_ms));
    let sink = start_sink(args.callbacks, slow).await?;
    let auth = format!("Bearer {API_KEY}");
    // Healthy subscriptions first (the sink finds their secrets by index),
    // then the slow ones, as greedy as the healthy: 256 in flight each.
    for k in 0..args.subscriptions + args.slow_subscriptions {
        let path = if k < args.subscriptions { "hook" } else { "slow" };
        let body = json!({"url": format!("http://{}/{path}/{k}", sink.addr), "max_in_flight": 256});
        let (status, body, _) = request(
            &client,
            hyper::Method::POST,
            &format!("{}/subscriptions", relays[0]),
            &[("authorization", &auth), ("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await?;
        if status != 201 {
            bail!("creating a subscription: {status} {}", String::from_utf8_lossy(&body));
        }
        let created: Value = serde_json::from_slice(&body)?;
        let secret =
            VerifyKey::parse(created["secret"].as_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        if k < args.subscriptions {
            sink.state.secrets.lock().expect("lock").push(secret);
        }
    }
    let mut commits_by_kind = BTreeMap::<String, f64>::new();
    for r in relays {
        for (kind, n) in metric_by_kind(&client, r, "hookrelay_db_write_transactions_total").await {
            *commits_by_kind.entry(kind).or_insert(0.0) -= n;
        }
    }
    let events_per_callback = if args.provider == ProviderArg::Sendgrid { args.batch } else { 1 };
    let expected = args.callbacks * events_per_callback * args.subscriptions;
    let load = drive(args, relays, Arc::new(signer), &sink).await;

    // Wait for every delivery, as long as they keep coming.
    let mut last = sink.state.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while sink.state.seen.lock().expect("lock").len() < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sink.state.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(args.drain_timeout_seconds) {
            eprintln!("deliveries stopped arriving; giving up waiting");
            break;
        }
    }
    let (mut batch_sum, mut batch_count, mut commit_sum, mut commit_count) = (0.0, 0.0, 0.0, 0.0);
    for r in relays {
        for (kind, n) in metric_by_kind(&client, r, "hookrelay_db_write_transactions_total").await {
            *commits_by_kind.entry(kind).or_insert(0.0) += n;
        }
        batch_sum += metric_total(&client, r, "hookrelay_ingest_batch_events_sum").await;
        batch_count += metric_total(&client, r, "hookrelay_ingest_batch_events_count").await;
        commit_sum += metric_total(&client, r, "hookrelay_ingest_commit_seconds_sum").await;
        commit_count += metric_total(&client, r, "hookrelay_ingest_commit_seconds_count").await;
    }
    let queries = if args.queries > 0 { time_queries(&client, &relays[0], args.queries).await } else { Vec::new() };
    let usage: Vec<(f64, f64)> = pids.iter().map(|p| process_usage(*p)).collect();

    let state = &sink.state;
    let unique = state.seen.lock().expect("lock").len();
    let first = state.first_arrival.load(Ordering::Relaxed);
    let last_arrival = state.last_arrival.load(Ordering::Relaxed);
    let delivery_seconds = (last_arrival.saturating_sub(first)) as f64 / 1e6;
    let events = (args.callbacks - load.failed) * events_per_callback;
    let commits: f64 = commits_by_kind.values().sum();
    Ok(Report {
        label: args.label.clone(),
        backend: Some(args.backend),
        provider: Some(args.provider),
        processes: relays.len(),
        subscriptions: args.subscriptions,
        slow_subscriptions: args.slow_subscriptions,
        slow_received: state.slow_received.load(Ordering::Relaxed),
        concurrency: args.concurrency,
        paced_rate: args.rate,
        preloaded_messages: args.preload,
        callbacks: args.callbacks,
        events,
        load_seconds: load.seconds,
        callbacks_per_second: args.callbacks as f64 / load.seconds,
        events_per_second: events as f64 / load.seconds,
        overload_retries: load.retries,
        failed_callbacks: load.failed,
        ack: percentiles(load.acks),
        deliveries_expected: expected,
        deliveries_received: state.received.load(Ordering::Relaxed),
        deliveries_lost: expected.saturating_sub(unique),
        deliveries_duplicated: state.duplicates.load(Ordering::Relaxed),
        deliveries_per_second: if delivery_seconds > 0.0 { unique as f64 / delivery_seconds } else { 0.0 },
        delivery_seconds,
        signatures_checked: state.checked.load(Ordering::Relaxed),
        signatures_bad: state.bad.load(Ordering::Relaxed),
        end_to_end: percentiles(std::mem::take(&mut *state.latencies.lock().expect("lock"))),
        relay_peak_rss_mb: usage.iter().map(|u| u.0).fold(0.0, f64::max),
        relay_cpu_seconds: usage.iter().map(|u| u.1).sum(),
        db_write_transactions: commits,
        db_write_transactions_per_event: if events > 0 { commits / events as f64 } else { 0.0 },
        db_write_transactions_by_kind: commits_by_kind,
        ingest_batch_mean: if batch_count > 0.0 { batch_sum / batch_count } else { 0.0 },
        ingest_commit_mean_ms: if commit_count > 0.0 { commit_sum / commit_count * 1000.0 } else { 0.0 },
        queries,
    })
}

/// Every configuration the README reports, in order.
pub async fn suite(base: RunArgs, size: f64) -> anyhow::Result<()> {
    let n = |x: usize| ((x as f64 * size).round() as usize).max(1);
    let single = RunArgs { provider: ProviderArg::Mailgun, concurrency: 64, ..base.clone() };
    let mut runs: Vec<RunArgs> = Vec::new();
    for backend in [BackendArg::Postgres, BackendArg::Sqlite] {
        let tag = if backend == BackendArg::Postgres { "pg" } else { "sqlite" };
        let b = RunArgs { backend, ..single.clone() };
        runs.push(RunArgs {
            label: format!("{tag} ingest, single events"),
            callbacks: n(60_000),
            subscriptions: 0,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} ingest, batches of 100"),
            provider: ProviderArg::Sendgrid,
            batch: 100,
            callbacks: n(2_000),
            concurrency: 16,
            subscriptions: 0,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} fan-out K=4"),
            callbacks: n(30_000),
            concurrency: 256,
            subscriptions: 4,
            ..b.clone()
        });
        runs.push(RunArgs {
            label: format!("{tag} paced 1000/s, K=4"),
            callbacks: n(20_000),
            rate: 1_000.0,
            subscriptions: 4,
            ..b.clone()
        });
    }
    let pg = RunArgs { backend: BackendArg::Postgres, subscriptions: 4, ..single.clone() };
    for factor in [1, 2, 4, 8] {
        runs.push(RunArgs {
            label: format!("pg scale {factor}x ({} /s, K=4)", 500 * factor),
            callbacks: n(5_000 * factor),
            concurrency: 256,
            rate: 500.0 * factor as f64,
            ..pg.clone()
        });
    }
    runs.push(RunArgs {
        label: "pg 2 processes, K=0".into(),
        callbacks: n(60_000),
        processes: 2,
        subscriptions: 0,
        ..pg.clone()
    });
    runs.push(RunArgs {
        label: "pg 2 processes, K=4".into(),
        callbacks: n(30_000),
        processes: 2,
        concurrency: 256,
        ..pg.clone()
    });
    runs.push(RunArgs {
        label: "pg with 1M stored, K=4".into(),
        callbacks: n(30_000),
        preload: n(1_000_000),
        queries: 200,
        ..pg.clone()
    });
    let mut reports = Vec::new();
    for args in runs {
        let report = run(&args).await.with_context(|| format!("run {}", args.label))?;
        print_report(&report, base.json);
        reports.push(report);
    }
    if !base.json {
        println!("{}", summary(&reports));
    }
    Ok(())
}

/// Healthy subscriptions' deliveries/s and worst lag, alone and next to a
/// slow (10 s) or a never-answering subscription, on both backends, at
/// 8,000 and 50,000 messages: what "a slow endpoint holds back only
/// itself" means in figures.
pub async fn isolation(base: RunArgs, size: f64) -> anyhow::Result<()> {
    let n = |x: usize| ((x as f64 * size).round() as usize).max(1);
    let mut rows = Vec::new();
    for backend in [BackendArg::Postgres, BackendArg::Sqlite] {
        let tag = if backend == BackendArg::Postgres { "pg" } else { "sqlite" };
        for messages in [n(8_000), n(50_000)] {
            let healthy = RunArgs {
                backend,
                provider: ProviderArg::Mailgun,
                callbacks: messages,
                concurrency: 64,
                subscriptions: 3,
                slow_subscriptions: 0,
                ..base.clone()
            };
            let variants = [
                ("alone", RunArgs { label: format!("{tag} {messages} healthy K=3"), ..healthy.clone() }),
                (
                    "+1 slow 10 s",
                    RunArgs {
                        label: format!("{tag} {messages} K=3 + 1 slow (10 s)"),
                        slow_subscriptions: 1,
                        slow_ms: 10_000,
                        ..healthy.clone()
                    },
                ),
                (
                    "+1 never answers",
                    RunArgs {
                        label: format!("{tag} {messages} K=3 + 1 never answering"),
                        slow_subscriptions: 1,
                        slow_never: true,
                        ..healthy.clone()
                    },
                ),
            ];
            let mut alone = 0.0;
            for (what, args) in variants {
                let report = run(&args).await.with_context(|| format!("run {}", args.label))?;
                print_report(&report, base.json);
                if what == "alone" {
                    alone = report.deliveries_per_second;
                }
                rows.push(format!(
                    "| {tag} | {messages} | {what} | {:.0} | {:.2} | {:.0} | {} |",
                    report.deliveries_per_second,
                    if alone > 0.0 { report.deliveries_per_second / alone } else { 0.0 },
                    report.end_to_end.max_ms,
                    report.deliveries_lost,
                ));
            }
        }
    }
    println!(
        "\n| backend | messages | beside the 3 healthy | healthy deliveries/s | vs alone | healthy max lag ms | lost |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
