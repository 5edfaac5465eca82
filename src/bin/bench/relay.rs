//! The relay under test: its configuration, its processes, and what they
//! used (peak RSS and CPU time, from /proc).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::{API_KEY, MAILGUN_KEY, RunArgs};

// The relay

pub struct Relay {
    pub child: Child,
    pub url: String,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Peak resident set (MB) and CPU seconds of a process, from /proc.
pub fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is
    // field 14, stime 15, counted in clock ticks of 1/100 s.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (peak_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

pub fn relay_binary(args: &RunArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.relay {
        return Ok(path.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("hookrelay");
    if !sibling.exists() {
        bail!("no hookrelay binary next to {}; build it (`cargo build --release`) or pass --relay", me.display());
    }
    Ok(sibling)
}

pub fn write_config(dir: &Path, database_url: &str, sendgrid_key: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 5000
[database]
url = "{database_url}"
pool_size = 16
sqlite_synchronous = "full"
[auth]
api_keys = ["{API_KEY}"]
[log]
level = "warn"
[delivery]
allow_cidrs = ["127.0.0.1/32"]
[[sources]]
name = "mailgun"
provider = "mailgun"
secrets = ["{MAILGUN_KEY}"]
[[sources]]
name = "sendgrid"
provider = "sendgrid"
public_keys = ["{sendgrid_key}"]
"#
        ),
    )?;
    Ok(path)
}

pub fn start_relay(binary: &Path, config: &Path) -> anyhow::Result<Relay> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("hookrelay listening on ") {
                    break addr.to_owned();
                }
            }
            _ => bail!("hookrelay exited before listening"),
        }
    };
    // Keep draining stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Relay { child, url })
}

pub fn stop_relay(mut relay: Relay) {
    let _ = Command::new("kill").arg("-TERM").arg(relay.pid().to_string()).status();
    let _ = relay.child.wait();
}
