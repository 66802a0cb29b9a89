//! Loading components: read, check, compile, and cache the compiled code on disk.
//!
//! Compiling a component with Cranelift takes from a fraction of a second to minutes. The
//! compiled form is cached under `[engine] cache_dir` as `<sha256 of the wasm>-<engine hash>.cwasm`:
//! the engine hash covers wasmtime's version and every setting that changes generated code, so a
//! cached file is only ever loaded by an engine that could have produced it. Files are written to
//! a temporary name and renamed, so concurrent gateways sharing a cache never read half a file.
//!
//! The cache directory must be writable only by the gateway's operator: deserializing compiled
//! code trusts it (that is what makes loading take milliseconds).

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained, for the log and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cache,
}

/// The preamble of a binary component (`\0asm`, version 0x0d, layer 1).
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const WASM_MAGIC: [u8; 4] = [0x00, 0x61, 0x73, 0x6d];

/// Reads, checks and compiles (or loads from the cache) the component at `path`.
pub fn load(
    engine: &Engine,
    path: &Path,
    cache_dir: Option<&Path>,
) -> anyhow::Result<(Component, Origin)> {
    let bytes = read_checked(path)?;
    compile_cached(engine, &bytes, &path.display().to_string(), cache_dir)
}

/// Reads the component at `path` as binary: a text-format component is converted.
pub fn read_binary(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_checked(path)?;
    wat::parse_bytes(&bytes)
        .map(|binary| binary.into_owned())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot parse component {}", path.display()))
}

fn read_checked(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))?;
    check_is_component(&bytes)
        .with_context(|| format!("{} is not a usable component", path.display()))?;
    Ok(bytes)
}

/// Compiles `bytes` (or loads them compiled from the cache); `label` names them in the log and
/// in errors.
pub fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    label: &str,
    cache_dir: Option<&Path>,
) -> anyhow::Result<(Component, Origin)> {
    let cached = cache_dir.map(|dir| cache_path(engine, dir, bytes));
    if let Some(cached) = cached.as_ref().filter(|c| c.exists()) {
        // SAFETY: the cache holds only files this gateway serialized with an engine of the same
        // compatibility hash (part of the file name); the directory is the operator's.
        match unsafe { Component::deserialize_file(engine, cached) } {
            Ok(component) => {
                tracing::info!(component = %label, cache = %cached.display(), "loaded compiled component from cache");
                return Ok((component, Origin::Cache));
            }
            Err(e) => tracing::warn!(
                cache = %cached.display(), error = %format!("{e:#}"),
                "ignoring unusable cached component; compiling again"
            ),
        }
    }

    let started = Instant::now();
    let component = Component::new(engine, bytes)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("cannot compile component {label}"))?;
    tracing::info!(
        component = %label,
        millis = started.elapsed().as_millis() as u64,
        "compiled component"
    );
    if let Some(cached) = &cached
        && let Err(e) = store_in_cache(&component, cached)
    {
        tracing::warn!(cache = %cached.display(), error = %format!("{e:#}"), "cannot write the compile cache");
    }
    Ok((component, Origin::Compiled))
}

/// Rejects files that are not components with a message that says what they are instead.
fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.starts_with(&COMPONENT_PREAMBLE) {
        return Ok(());
    }
    if bytes.starts_with(&WASM_MAGIC) {
        bail!(
            "it is a core WebAssembly module, not a component: build it for `wasm32-wasip2` or \
             wrap it with `wasm-tools component new`"
        );
    }
    // The text format, for hand-written components: `(component` after comments.
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    if skip_wat_comments(&text).starts_with("(component") {
        return Ok(());
    }
    bail!("it is not a WebAssembly file (no `\\0asm` header)")
}

/// `text` without the whitespace, `;; line` and `(; block ;)` comments it starts with.
fn skip_wat_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix(";;") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("(;") {
            text = rest.split_once(";)").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

fn cache_path(engine: &Engine, dir: &Path, wasm: &[u8]) -> PathBuf {
    let digest = Sha256::digest(wasm);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{hex}-{:016x}.cwasm", hasher.finish()))
}

fn store_in_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_components_are_named_for_what_they_are() {
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(
            check_is_component(&module)
                .unwrap_err()
                .to_string()
                .contains("core WebAssembly module")
        );
        assert!(
            check_is_component(b"hello")
                .unwrap_err()
                .to_string()
                .contains("not a WebAssembly file")
        );
        assert!(check_is_component(&COMPONENT_PREAMBLE).is_ok());
        assert!(check_is_component(b"  (component)").is_ok());
        assert!(check_is_component(b";; a comment\n(; block ;) (component)").is_ok());
        assert!(check_is_component(b";; only a comment").is_err());
    }
}
