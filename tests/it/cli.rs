//! The command line: `check-config` refuses what `serve` would refuse, with
//! the key at fault, and exit status 2 for a configuration error.

use std::process::Command;

fn check_config(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(&path, toml).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("HOOKRELAY__DATABASE__URL")
        .output()
        .expect("run hookrelay");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn check_config_names_the_key_at_fault() {
    let secret = "0123456789abcdef0123456789abcdef";
    let (code, stdout, _) = check_config(&format!(
        "[[sources]]\nname = \"pm\"\nprovider = \"postmark\"\nusername = \"hooks\"\npassword = \"{secret}\"\n\
         [tracking]\nkeys = [{{ id = \"k1\", secret = \"{secret}\" }}]\n[delivery]\nallow_cidrs = [\"10.0.0.0/8\"]\n"
    ));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("configuration is valid") && stdout.contains("10.0.0.0/8"), "{stdout}");
    assert!(!stdout.contains(secret), "secrets stay hidden");

    for (toml, key) in [
        ("[[sources]]\nname = \"pm\"\nprovider = \"postmark\"\n", "sources[0].username/password"),
        ("[[sources]]\nname = \"x\"\nprovider = \"nope\"\n", "sources[0]"),
        ("[tracking]\nkeys = [{ id = \"k1\", secret = \"short\" }]\n", "tracking.keys[0].secret"),
        ("[delivery]\nallow_cidrs = [\"10.0.0.0/8\", \"localhost\"]\n", "delivery.allow_cidrs[1]"),
    ] {
        let (code, stdout, stderr) = check_config(toml);
        assert_eq!(code, 2, "{toml}: {stdout}{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}
