//! `deploy/systemd/wasmgate.service`, the unit docs/deploy.md gives for one machine. No systemd
//! runs as init here, so the unit is checked as far as that allows: systemd's own
//! `systemd-analyze verify` (syntax, directives, that its commands exist, with the built
//! binary in the place of the installed one), its sandboxing graded by `systemd-analyze
//! security`, and its `ExecStartPre` command run as written, with the unit's environment.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../deploy/systemd/wasmgate.service");
const INSTALLED: &str = "/usr/local/bin/wasmgate";

/// The unit with the built binary where the installed one would be, written to `dir`.
fn unit_in(dir: &Path) -> std::path::PathBuf {
    let unit = UNIT.replace(INSTALLED, env!("CARGO_BIN_EXE_wasmgate"));
    let path = dir.join("wasmgate.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed")
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    let output = systemd_analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}

#[test]
fn the_units_sandbox_is_graded_ok() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_in(dir.path());
    // Exposure on systemd's 0-100 scale (printed as 0.0-10.0): 40 is the top of "OK".
    let output = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=40",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("Overall exposure level"), "{said}");
}

#[test]
fn the_units_config_check_runs_as_written_with_its_environment() {
    let line = |key: &str| {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .to_string()
    };
    let check = line("ExecStartPre=");
    let environment = line("Environment=");
    let (name, value) = environment.split_once('=').unwrap();
    assert_eq!(
        value, "/var/cache/wasmgate",
        "the cache is the unit's CacheDirectory"
    );
    let args: Vec<&str> = check.split_whitespace().collect();
    assert_eq!(
        args[..3],
        [INSTALLED, "check", "/etc/wasmgate/wasmgate.toml"]
    );
    assert!(line("ExecStart=").ends_with("serve /etc/wasmgate/wasmgate.toml"));

    // The same command on the default config, the cache moved by the unit's variable.
    let cache = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wasmgate.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args([args[1], config.to_str().unwrap()])
        .env(name, cache.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_some(),
        "the compile cache went where the unit's variable says"
    );
}
