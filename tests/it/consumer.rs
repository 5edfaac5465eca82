//! The consumer side: proof that subscribers can verify hookrelay's real
//! requests.
//!
//! - A Python subscriber (`tests/python/subscriber.py`) checks every request
//!   with the official Standard Webhooks package from PyPI
//!   (`standardwebhooks`), or with the README's `hmac` lines for the Courier
//!   scheme, while real traffic goes out: status changes, a test ping, and a
//!   secret rotation whose two-signature header it verifies with the new
//!   secret. When `python3` or the package is missing these tests are skipped
//!   with a notice on stderr, unless `HOOKRELAY_REQUIRE_PYTHON=1`.
//! - `hookrelay verify` is run as a process on the published Standard
//!   Webhooks vector laid out as a captured request, and on a request
//!   hookrelay really sent, checking exit codes and output.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, spawn_app_with};

backend_tests!(a_python_subscriber_verifies_every_request, a_courier_subscription_verifies_with_the_readme_code);

/// How long one expected line from the subscriber may take.
const WAIT: Duration = Duration::from_secs(30);

fn python_required() -> bool {
    std::env::var("HOOKRELAY_REQUIRE_PYTHON").is_ok_and(|v| v == "1" || v == "true")
}

/// Skips (with a notice past the harness's capture, once) or, when Python is
/// required, fails.
fn unavailable(reason: &str) -> Option<Subscriber> {
    if python_required() {
        panic!("HOOKRELAY_REQUIRE_PYTHON=1 but {reason}");
    }
    static SKIPPED: Once = Once::new();
    SKIPPED.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** Python consumer tests SKIPPED: {reason} (python3 -m pip install 'standardwebhooks==1.1.0'; \
             HOOKRELAY_REQUIRE_PYTHON=1 makes this an error) ***\n"
        );
    });
    None
}

/// The Python subscriber as a child process. Its stdout lines arrive on a
/// channel fed by a reader thread, so waiting for one is a `recv` with a
/// timeout, never a poll.
struct Subscriber {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    port: u16,
}

impl Subscriber {
    async fn start() -> Option<Subscriber> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/subscriber.py");
        let spawned = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return unavailable(&format!("python3 cannot be started ({e})")),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // A stray line still reaches the test, which then fails showing it.
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut subscriber = Subscriber { child, stdin: None, lines, port: 0 };
        subscriber.stdin = subscriber.child.stdin.take();
        let first = match tokio::time::timeout(WAIT, subscriber.lines.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => panic!("the Python subscriber exited at start: {:?}", subscriber.child.wait()),
            Err(_) => panic!("the Python subscriber did not start within {WAIT:?}"),
        };
        match first["event"].as_str() {
            Some("listening") => {
                subscriber.port = first["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
                Some(subscriber)
            }
            Some("unavailable") => {
                let status = subscriber.child.wait().map(|s| s.code());
                assert_eq!(status.ok().flatten(), Some(3), "{first}");
                unavailable(&format!("the `standardwebhooks` package is not installed ({})", first["error"]))
            }
            _ => panic!("unexpected first line from the Python subscriber: {first}"),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/hookrelay", self.port)
    }

    async fn next(&mut self, what: &str) -> Value {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the Python subscriber exited while waiting for {what}: {:?}", self.child.wait()),
            Err(_) => panic!("no {what} reached the Python subscriber within {WAIT:?}"),
        }
    }

    /// The next request the subscriber received.
    async fn request(&mut self, what: &str) -> Value {
        let line = self.next(what).await;
        assert_eq!(line["event"], "request", "waiting for {what}: {line}");
        line
    }

    /// Gives the subscriber the secret to check with (over stdin, never argv).
    async fn set_secret(&mut self, secret: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "secret {secret}").and_then(|()| stdin.flush()).expect("write to the subscriber");
        let ack = self.next("the secret's acknowledgement").await;
        assert_eq!(ack["event"], "secret-set", "{ack}");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// hookrelay allowed to deliver to loopback, and a Python subscriber.
async fn spawn(backend: Backend) -> Option<(TestApp, Subscriber)> {
    let app = spawn_app_with(backend, |c| c.delivery.allow_cidrs = vec!["127.0.0.1/32".parse().expect("cidr")]).await?;
    let subscriber = Subscriber::start().await?;
    Some((app, subscriber))
}

/// Asserts a request verified and carried this message update.
fn assert_update(r: &Value, message: &str, status: &str, seq: i64) {
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["type"], "message:updated", "{r}");
    assert_eq!(
        (r["message_id"].as_str(), r["status"].as_str(), r["seq"].as_i64()),
        (Some(message), Some(status), Some(seq)),
        "{r}"
    );
}

async fn a_python_subscriber_verifies_every_request(backend: Backend) {
    let Some((app, mut subscriber)) = spawn(backend).await else { return };
    let (status, created) = app.post("/subscriptions", json!({"url": subscriber.url()})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let first_secret = created["secret"].as_str().expect("the secret, shown at creation").to_owned();
    subscriber.set_secret(&first_secret).await;
    let mut received = Vec::new();

    app.register(json!({"id": "consumer-1", "recipient": "ada@example.com", "channel": "email"})).await;
    let r = subscriber.request("the ENQUEUED update").await;
    assert_eq!(r["scheme"], "standard-webhooks", "{r}");
    assert_eq!(r["signatures"], 1, "one secret, one signature: {r}");
    assert_update(&r, "consumer-1", "ENQUEUED", 1);
    received.push(r);
    app.event("consumer-1", json!({"status": "SENT", "provider": "sendgrid", "provider_message_id": "c1.sg"})).await;
    let r = subscriber.request("the SENT update").await;
    assert_update(&r, "consumer-1", "SENT", 2);
    received.push(r);
    app.event("consumer-1", json!({"status": "DELIVERED"})).await;
    let r = subscriber.request("the DELIVERED update").await;
    assert_update(&r, "consumer-1", "DELIVERED", 3);
    received.push(r);

    // A test ping is signed like everything else.
    let (status, ping) = app.post(&format!("/subscriptions/{id}/test"), json!({})).await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!((ping["succeeded"].clone(), ping["status_code"].clone()), (json!(true), json!(204)), "{ping}");
    let r = subscriber.request("the test ping").await;
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!((r["type"].as_str(), r["subscription_id"].as_str()), (Some("ping"), Some(id.as_str())), "{r}");
    assert_eq!(r["webhook_id"], ping["delivery_id"], "webhook-id is the delivery id: {r}");
    received.push(r);

    // Rotation: during the overlap both secrets sign; the subscriber has
    // switched to the new one only.
    let (status, rotated) = app.post(&format!("/subscriptions/{id}/rotate-secret"), json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new_secret, first_secret);
    assert_eq!(rotated["previous"].as_array().map(Vec::len), Some(1), "{rotated}");
    subscriber.set_secret(&new_secret).await;
    app.event("consumer-1", json!({"status": "OPENED"})).await;
    let r = subscriber.request("the OPENED update, after the rotation").await;
    assert_eq!(r["signatures"], 2, "both secrets sign during the overlap: {r}");
    assert_update(&r, "consumer-1", "OPENED", 4);
    received.push(r);

    // Every request verified, each under its own webhook-id.
    assert!(received.iter().all(|r| r["verified"] == true && r["error"].is_null()), "{received:?}");
    let mut ids: Vec<&str> = received.iter().map(|r| r["webhook_id"].as_str().expect("webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "{received:?}");
    assert!(ids.iter().all(|i| i.starts_with("dlv_")), "{ids:?}");

    // `hookrelay verify` accepts the real two-signature request with either
    // secret, and refuses it with another.
    let capture = received.last().expect("the rotated request");
    let dir = tempfile::tempdir().expect("temp dir");
    let (head, body) = write_capture(dir.path(), capture);
    for secret in [&first_secret, &new_secret] {
        let out = hookrelay_verify(Some(secret), &["--headers-file", &head, "--body-file", &body], None);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("2 v1 entries, one of which matches this secret"), "{out:?}");
        assert!(out.stdout.contains("type message:updated, message consumer-1, status OPENED, seq 4"), "{out:?}");
        assert!(!out.mentions(secret), "the secret is never printed");
    }
    let other = hookrelay::domain::signing::WebhookSecret::generate().expect("entropy");
    let out = hookrelay_verify(Some(other.expose()), &["--headers-file", &head, "--body-file", &body], None);
    assert_eq!((out.code, out.stdout.lines().next()), (1, Some("invalid (Standard Webhooks): no signature matches")));
}

async fn a_courier_subscription_verifies_with_the_readme_code(backend: Backend) {
    let Some((app, mut subscriber)) = spawn(backend).await else { return };
    let (status, created) =
        app.post("/subscriptions", json!({"url": subscriber.url(), "signature_scheme": "courier"})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    subscriber.set_secret(created["secret"].as_str().expect("secret")).await;

    app.register(json!({"id": "courier-1"})).await;
    let r = subscriber.request("the ENQUEUED update").await;
    assert_eq!((r["scheme"].as_str(), r["webhook_id"].as_str()), (Some("courier"), None), "{r}");
    assert_update(&r, "courier-1", "ENQUEUED", 1);
    app.event("courier-1", json!({"status": "SENT", "provider": "postmark", "provider_message_id": "pm-c1"})).await;
    let r = subscriber.request("the SENT update").await;
    assert_update(&r, "courier-1", "SENT", 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let (head, body) = write_capture(dir.path(), &r);
    let secret = created["secret"].as_str().expect("secret");
    let out = hookrelay_verify(Some(secret), &["--headers-file", &head, "--body-file", &body], None);
    assert_eq!((out.code, out.stdout.lines().next()), (0, Some("valid: Courier signature verified")), "{out:?}");

    let (status, ping) = app.post(&format!("/subscriptions/{id}/test"), json!({})).await;
    assert_eq!((status, ping["succeeded"].clone()), (200, json!(true)), "{ping}");
    let r = subscriber.request("the test ping").await;
    assert_eq!((r["verified"].clone(), r["type"].clone()), (json!(true), json!("ping")), "{r}");
}

/// Writes a request the subscriber recorded as a captured head and a body
/// file; returns their paths.
fn write_capture(dir: &Path, r: &Value) -> (String, String) {
    let mut head = String::from("POST /hooks/hookrelay HTTP/1.1\r\n");
    for pair in r["headers"].as_array().expect("recorded headers") {
        head.push_str(&format!("{}: {}\r\n", pair[0].as_str().expect("name"), pair[1].as_str().expect("value")));
    }
    head.push_str("\r\n");
    let (head_path, body_path) = (dir.join("head.txt"), dir.join("body.json"));
    std::fs::write(&head_path, head).expect("write head");
    std::fs::write(&body_path, r["body"].as_str().expect("recorded body")).expect("write body");
    (head_path.display().to_string(), body_path.display().to_string())
}

/// What a `hookrelay verify` run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Whether the output shows `secret` or its key.
    fn mentions(&self, secret: &str) -> bool {
        let key = secret.strip_prefix("whsec_").unwrap_or(secret);
        [&self.stdout, &self.stderr].iter().any(|out| out.contains(key))
    }
}

/// Runs the built binary's `verify`, with `secret` in the environment.
fn hookrelay_verify(secret: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command.arg("verify").args(args).env_remove("HOOKRELAY_VERIFY_SECRET").env_remove("HOOKRELAY_CONFIG");
    if let Some(secret) = secret {
        command.env("HOOKRELAY_VERIFY_SECRET", secret);
    }
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("run hookrelay verify");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).expect("write stdin");
    }
    let output = child.wait_with_output().expect("hookrelay verify output");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The Standard Webhooks published vector (webhooks.md §2, vector A), laid
/// out as a captured request head and its body.
mod vector {
    pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    pub const TIMESTAMP: &str = "1614265330";
    pub const BODY: &str = r#"{"test": 2432232314}"#;
    pub const HEAD: &str = "POST /webhooks/hookrelay HTTP/1.1\r\n\
        Host: consumer.example\r\n\
        User-Agent: hookrelay/0.1.0\r\n\
        Content-Type: application/json\r\n\
        Content-Length: 20\r\n\
        webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\r\n\
        webhook-timestamp: 1614265330\r\n\
        webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\r\n\
        \r\n";
}

#[test]
fn hookrelay_verify_checks_a_captured_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let head = dir.path().join("head.txt");
    let body = dir.path().join("body.json");
    let body_nl = dir.path().join("body-newline.json");
    std::fs::write(&head, vector::HEAD).expect("head");
    std::fs::write(&body, vector::BODY).expect("body");
    std::fs::write(&body_nl, format!("{}\n", vector::BODY)).expect("body");
    let (head, body, body_nl) = (head.display().to_string(), body.display().to_string(), body_nl.display().to_string());
    let at = ["--now", vector::TIMESTAMP];
    let files = |body: &str| ["--headers-file".to_owned(), head.clone(), "--body-file".to_owned(), body.to_owned()];
    let args = |extra: &[&str], body: &str| -> Vec<String> {
        files(body).into_iter().chain(extra.iter().map(|s| (*s).to_owned())).collect()
    };
    let run = |secret: Option<&str>, args: &[String], stdin: Option<&[u8]>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hookrelay_verify(secret, &refs, stdin);
        assert!(!out.mentions(vector::SECRET), "the secret is never printed: {out:?}");
        out
    };

    // Valid at the capture's time.
    let out = run(Some(vector::SECRET), &args(&at, &body), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("valid: Standard Webhooks signature verified\n"), "{out:?}");
    assert!(out.stdout.contains("msg_p5jXN8AQM9LWM0D4loKWxJek"), "{out:?}");
    // The same through --secret, --header lines and the body on stdin.
    let out = run(
        None,
        &[
            "--secret",
            vector::SECRET,
            "-H",
            "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--header",
            "Webhook-Timestamp: 1614265330",
            "--header",
            "webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "--body-file",
            "-",
            "--now",
            "1614265330",
        ]
        .map(str::to_owned),
        Some(vector::BODY.as_bytes()),
    );
    assert_eq!(out.code, 0, "{out:?}");

    // Invalid: exit 1 with the reason.
    let out = run(Some(vector::SECRET), &args(&[], &body), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.starts_with("invalid (Standard Webhooks): the timestamp is too old\n"), "{out:?}");
    assert!(out.stdout.contains("add --now 1614265330"), "{out:?}");
    let out = run(Some(vector::SECRET), &args(&["--now", "1614264000"], &body), None);
    assert!(out.code == 1 && out.stdout.contains("the timestamp is in the future"), "{out:?}");
    let out = run(Some(vector::SECRET), &args(&["--now", "1614268930", "--tolerance-seconds", "3600"], &body), None);
    assert_eq!(out.code, 0, "a wider tolerance: {out:?}");
    let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = run(Some(other), &args(&at, &body), None);
    assert_eq!((out.code, out.stdout.lines().next()), (1, Some("invalid (Standard Webhooks): no signature matches")));
    let out = run(Some(vector::SECRET), &args(&at, &body_nl), None);
    assert!(out.code == 1 && out.stdout.contains("without the line break"), "{out:?}");
    let out = run(
        Some(vector::SECRET),
        &[
            "-H",
            "webhook-timestamp: 1614265330",
            "-H",
            "webhook-signature: v1,x",
            "--body-file",
            &body,
            "--now",
            "1614265330",
        ]
        .map(str::to_owned),
        None,
    );
    assert!(out.code == 1 && out.stdout.contains("missing webhook-id"), "{out:?}");
    let out = run(Some(vector::SECRET), &["--body-file".to_owned(), body.clone()], None);
    assert!(out.code == 1 && out.stdout.starts_with("invalid: no signature header"), "{out:?}");

    // Usage errors: exit 2, on stderr, without the secret.
    let out = run(Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw!!"), &args(&at, &body), None);
    assert!(out.code == 2 && out.stderr.contains("the secret is not usable"), "{out:?}");
    assert!(!out.stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{out:?}");
    let out = run(None, &args(&at, &body), None);
    assert!(out.code == 2 && out.stderr.contains("--secret"), "{out:?}");
    let out = run(Some(vector::SECRET), &args(&["--scheme", "sha1"], &body), None);
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(Some(vector::SECRET), &args(&at, &dir.path().join("absent").display().to_string()), None);
    assert!(out.code == 2 && out.stderr.contains("cannot read"), "{out:?}");
    let out = run(Some(vector::SECRET), &args(&["-H", "webhook-id: msg_other"], &body), None);
    assert!(out.code == 2 && out.stderr.contains("`webhook-id` is given twice"), "{out:?}");
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "POST /x HTTP/1.1\nwebhook-id: a\nnot a header\n").expect("write");
    let out = run(
        Some(vector::SECRET),
        &["--headers-file".to_owned(), garbage.display().to_string(), "--body-file".to_owned(), body.clone()],
        None,
    );
    assert!(out.code == 2 && out.stderr.contains("line 3: expected `Name: value`"), "{out:?}");
    let out = run(Some(vector::SECRET), &["--headers-file", "-", "--body-file", "-"].map(str::to_owned), Some(b""));
    assert!(out.code == 2 && out.stderr.contains("only one of"), "{out:?}");
}

/// The Standard Webhooks libraries' published ed25519 (`v1a`) vector: the
/// signing key's seed is the base64 of "TESTSIGNINGKEYDONOTUSETHISFORANY".
#[test]
fn hookrelay_verify_checks_v1a_with_a_public_key() {
    use hookrelay::domain::signing::SigningKey;
    let public =
        SigningKey::parse("whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=").expect("signing key").verification_key();
    let dir = tempfile::tempdir().expect("temp dir");
    let body = dir.path().join("body.json");
    std::fs::write(&body, vector::BODY).expect("body");
    let v1a = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
    let args = |signature: &str| {
        [
            "-H".to_owned(),
            "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned(),
            "-H".to_owned(),
            format!("webhook-timestamp: {}", vector::TIMESTAMP),
            "-H".to_owned(),
            format!("webhook-signature: {signature}"),
            "--body-file".to_owned(),
            body.display().to_string(),
            "--now".to_owned(),
            vector::TIMESTAMP.to_owned(),
        ]
    };
    let run = |key: &str, signature: &str| {
        let args = args(signature);
        hookrelay_verify(Some(key), &args.iter().map(String::as_str).collect::<Vec<_>>(), None)
    };
    let out = run(&public, v1a);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("1 v1a entry, one of which matches this public key"), "{out:?}");
    // A whsec_ secret names the v1a entry it cannot check.
    let out = run(vector::SECRET, v1a);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("also 1 v1a entry, which this secret cannot check"), "{out:?}");
    // A changed signature does not verify.
    let forged = v1a.replace("tQ9V", "tQ9W");
    let out = run(&public, &forged);
    assert!(out.code == 1 && out.stdout.contains("none of which matches this public key"), "{out:?}");
}
