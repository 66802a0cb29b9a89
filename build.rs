//! Builds the example guest components in `guests/` for `wasm32-wasip2`, so that one
//! `cargo run --release -- serve` on a fresh clone serves the default config.
//!
//! It never fails the gateway's own build: where the target is missing it says how to add it,
//! and the gateway then names the missing component file when it starts. Set
//! `WASMGATE_SKIP_GUESTS=1` to skip it.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WASMGATE_SKIP_GUESTS");
    let guests = Path::new("guests");
    if std::env::var_os("WASMGATE_SKIP_GUESTS").is_some() || !guests.join("Cargo.toml").exists() {
        return;
    }
    for file in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed=guests/{file}");
    }
    if let Ok(entries) = std::fs::read_dir(guests) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("Cargo.toml").exists() {
                println!(
                    "cargo:rerun-if-changed={}",
                    path.join("Cargo.toml").display()
                );
                println!("cargo:rerun-if-changed={}", path.join("src").display());
            }
        }
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
            "target",
        ])
        // What the outer build set for itself must not leak into the guests' build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("wasm32-wasip2")
                && (stderr.contains("may not be installed") || stderr.contains("target may not"))
            {
                println!(
                    "cargo:warning=the example guests were not built: the wasm32-wasip2 target is not installed. \
                     Add it with `rustup target add wasm32-wasip2`, then build again."
                );
            } else {
                println!("cargo:warning=the example guests in guests/ failed to build:");
                for line in stderr
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    println!("cargo:warning={line}");
                }
            }
        }
        Err(e) => println!("cargo:warning=cannot run cargo to build the example guests: {e}"),
    }
}
