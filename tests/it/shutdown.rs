//! SIGTERM during a load of registrations loses none that were acknowledged.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::config::DatabaseConfig;
use hookrelay::domain::MessageId;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{API_KEY, Backend, TestDb};

backend_tests!(sigterm_under_load_loses_no_acknowledged_registration);

async fn sigterm_under_load_loses_no_acknowledged_registration(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[auth]\napi_keys = [\"{API_KEY}\"]\n[log]\nlevel = \"warn\"\n",
            db.url()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hookrelay");
    let stdout = child.stdout.take().expect("stdout");
    let addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("hookrelay listening on http://").map(str::to_owned))
    })
    .await
    .expect("join")
    .expect("hookrelay printed its address");

    hookrelay::net::install_crypto_provider();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, acked, addr) = (client.clone(), acked.clone(), addr.clone());
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("load-{w}-{i}");
                let sent = client
                    .post(format!("http://{addr}/messages"))
                    .bearer_auth(API_KEY)
                    .json(&json!({ "id": id, "recipient": "load@example.com" }))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => acked.lock().expect("lock").push(id),
                    // Refused while shutting down, or the server is gone.
                    _ => break,
                }
            }
        }));
    }
    let started = Instant::now();
    while acked.lock().expect("lock").len() < 300 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    for worker in workers {
        worker.await.expect("worker");
    }
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "hookrelay exited with {exit}");

    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300, "the load ran: {} acknowledged", acked.len());
    let store = hookrelay::store::open(&DatabaseConfig { url: db.url(), ..DatabaseConfig::default() })
        .await
        .expect("reopen the database");
    let mut missing = Vec::new();
    for id in &acked {
        if store.get_message(&MessageId::parse(id).expect("id")).await.expect("read").is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged registrations were lost: {missing:?}",
        missing.len(),
        acked.len()
    );
}
