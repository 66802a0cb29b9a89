//! Loading components: read, check, compile, and cache the compiled code on disk.
//!
//! Compiling a component with Cranelift takes from a fraction of a second to minutes. The
//! compiled form is cached under `[engine] cache_dir` as `<sha256 of the wasm>-<engine hash>.cwasm`:
//! the engine hash covers wasmtime's version, every setting that changes generated code and the
//! layout of the file below, so a cached file is only ever loaded by an engine that could have
//! produced it.
//!
//! A cache file is wasmtime's serialized component behind a small header: a magic number, the
//! length of the serialized bytes and their sha256 ([`CACHE_MAGIC`]). Deserializing trusts the
//! compiled code (that is what makes loading take milliseconds), and wasmtime's own checks look
//! only at the headers of its format: a file whose code bytes were damaged (a bad disk, a copy cut
//! short, a stray write) would load and then crash the whole process with SIGILL or SIGSEGV on
//! the first request. So the file is read whole, its length and checksum are verified, then
//! wasmtime's checks run ([`Engine::detect_precompiled`] and `Component::deserialize`, which
//! rejects another version or configuration), and only then is it loaded. A file that fails any
//! of these is logged, compiled again and rewritten.
//!
//! Files are written under a unique random temporary name in the cache directory and renamed
//! into place, so gateways sharing a cache never read half a file and never write into each
//! other's temporary files (two containers sharing a volume both run as pid 1: a name made from
//! the pid would collide).
//!
//! The checksum protects against damage, not against an attacker: the cache directory must be
//! writable only by the gateway's operator, since whoever can write it can run code in the
//! gateway.

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

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
    if let Some(cached) = &cached {
        match load_from_cache(engine, cached) {
            CacheLookup::Hit(component) => {
                tracing::info!(component = %label, cache = %cached.display(), "loaded compiled component from cache");
                return Ok((component, Origin::Cache));
            }
            CacheLookup::Miss => {}
            CacheLookup::Unusable(reason) => tracing::warn!(
                component = %label, cache = %cached.display(), reason = %reason,
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

/// The start of every cache file; the digit is the layout's version (it is also part of the
/// file name's engine hash, so a gateway never even opens a file of another layout).
const CACHE_MAGIC: [u8; 8] = *b"WGCWASM1";
/// Magic, the serialized length (u64, little-endian), the serialized bytes' sha256.
const CACHE_HEADER_LEN: usize = CACHE_MAGIC.len() + 8 + 32;

/// What looking a component up in the cache found.
enum CacheLookup {
    Hit(Component),
    /// No file: the component was never compiled with this engine.
    Miss,
    /// A file that must not be loaded; it is compiled again and the file replaced.
    Unusable(Unusable),
}

/// Why a cache file is not loaded.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("cannot read it: {0}")]
    Unreadable(std::io::Error),
    #[error("not a wasmgate cache file (no header)")]
    NotACacheFile,
    #[error("truncated inside its header")]
    TruncatedHeader,
    #[error("truncated: {actual} bytes of compiled code where the header says {expected}")]
    Truncated { expected: u64, actual: u64 },
    #[error("{extra} bytes past the compiled code the header announces")]
    TrailingBytes { extra: u64 },
    #[error("checksum mismatch: the compiled code was altered")]
    ChecksumMismatch,
    #[error("not a compiled component (wasmtime does not recognise it)")]
    NotACompiledComponent,
    #[error("wasmtime refuses it: {0}")]
    Incompatible(String),
}

fn load_from_cache(engine: &Engine, path: &Path) -> CacheLookup {
    let file = match std::fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheLookup::Miss,
        Err(e) => return CacheLookup::Unusable(Unusable::Unreadable(e)),
    };
    let serialized = match verified_payload(&file) {
        Ok(serialized) => serialized,
        Err(reason) => return CacheLookup::Unusable(reason),
    };
    if Engine::detect_precompiled(serialized) != Some(Precompiled::Component) {
        return CacheLookup::Unusable(Unusable::NotACompiledComponent);
    }
    // SAFETY: the bytes are exactly those this gateway serialized (length and sha256 checked
    // above) with an engine of the same compatibility hash (part of the file name), and wasmtime
    // checks its version and settings again; the directory is the operator's (module docs).
    match unsafe { Component::deserialize(engine, serialized) } {
        Ok(component) => CacheLookup::Hit(component),
        Err(e) => CacheLookup::Unusable(Unusable::Incompatible(format!("{e:#}"))),
    }
}

/// The serialized component inside a cache file, once its header, length and checksum agree.
fn verified_payload(file: &[u8]) -> Result<&[u8], Unusable> {
    let Some(rest) = file.strip_prefix(&CACHE_MAGIC) else {
        return Err(Unusable::NotACacheFile);
    };
    let Some((length, rest)) = rest.split_first_chunk::<8>() else {
        return Err(Unusable::TruncatedHeader);
    };
    let Some((digest, payload)) = rest.split_first_chunk::<32>() else {
        return Err(Unusable::TruncatedHeader);
    };
    let expected = u64::from_le_bytes(*length);
    let actual = payload.len() as u64;
    if actual < expected {
        return Err(Unusable::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(Unusable::TrailingBytes {
            extra: actual - expected,
        });
    }
    if Sha256::digest(payload).as_slice() != digest.as_slice() {
        return Err(Unusable::ChecksumMismatch);
    }
    Ok(payload)
}

/// A cache file's bytes: header, then `serialized`.
fn cache_file(serialized: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(CACHE_HEADER_LEN + serialized.len());
    file.extend_from_slice(&CACHE_MAGIC);
    file.extend_from_slice(&(serialized.len() as u64).to_le_bytes());
    file.extend_from_slice(&Sha256::digest(serialized));
    file.extend_from_slice(serialized);
    file
}

/// The sha256 of `bytes` in lower-case hex: how cache files (and pulled components) are named.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn cache_path(engine: &Engine, dir: &Path, wasm: &[u8]) -> PathBuf {
    let hex = sha256_hex(wasm);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    CACHE_MAGIC.hash(&mut hasher);
    dir.join(format!("{hex}-{:016x}.cwasm", hasher.finish()))
}

/// Writes the compiled component to the cache (see [`write_atomically`]).
fn store_in_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    write_atomically(path, &cache_file(&serialized))
}

/// Writes `bytes` to a uniquely named temporary file in `path`'s directory (created if
/// missing), then renames it over `path` (atomic within a file system), so gateways sharing
/// the cache never read half a file. For the compile cache and the store of pulled components.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let dir = path.parent().context("cache path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Readable by the group and others as before (under the umask): another gateway sharing the
    // cache may run as another user of the operator's group.
    let mut tmp = tempfile::Builder::new()
        .prefix(".cache-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
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

    const SERIALIZED: &[u8] = b"pretend this is a serialized component";

    #[test]
    fn a_cache_file_reads_back_only_when_whole_and_unaltered() {
        let file = cache_file(SERIALIZED);
        assert_eq!(verified_payload(&file).unwrap(), SERIALIZED);

        let unusable = |file: &[u8]| verified_payload(file).unwrap_err();
        assert!(matches!(unusable(SERIALIZED), Unusable::NotACacheFile));
        assert!(matches!(unusable(&file[..20]), Unusable::TruncatedHeader));
        assert!(matches!(
            unusable(&file[..file.len() - 1]),
            Unusable::Truncated { expected, actual } if expected == actual + 1
        ));
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            unusable(&longer),
            Unusable::TrailingBytes { extra: 1 }
        ));
        // One bit flipped anywhere in the payload.
        for at in [CACHE_HEADER_LEN, file.len() / 2, file.len() - 1] {
            let mut flipped = file.clone();
            flipped[at] ^= 0x10;
            assert!(matches!(unusable(&flipped), Unusable::ChecksumMismatch));
        }
    }

    fn engine() -> Engine {
        Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn damaged_cache_files_are_compiled_again_and_replaced() {
        let engine = engine();
        let wasm = wat::parse_str("(component (core module))").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let compile = || {
            compile_cached(&engine, &wasm, "test", Some(dir.path()))
                .unwrap()
                .1
        };
        assert_eq!(compile(), Origin::Compiled);
        assert_eq!(compile(), Origin::Cache);
        let path = cache_path(&engine, dir.path(), &wasm);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let middle = CACHE_HEADER_LEN + (good.len() - CACHE_HEADER_LEN) / 2;
        flipped[middle] ^= 0xff;
        let mut raw_wasmtime = good[CACHE_HEADER_LEN..].to_vec();
        raw_wasmtime.truncate(raw_wasmtime.len() / 2);
        for damaged in [
            Vec::new(),
            good[..good.len() / 2].to_vec(),
            b"garbage".repeat(1000),
            flipped,
            raw_wasmtime,
        ] {
            std::fs::write(&path, &damaged).unwrap();
            assert!(matches!(
                load_from_cache(&engine, &path),
                CacheLookup::Unusable(_)
            ));
            assert_eq!(compile(), Origin::Compiled);
            assert!(verified_payload(&std::fs::read(&path).unwrap()).is_ok());
            assert_eq!(compile(), Origin::Cache);
        }
        assert_eq!(files_in(dir.path()).len(), 1, "no temporary files left");
    }

    #[test]
    fn writers_sharing_a_cache_never_share_a_temporary_file() {
        // Threads of one process have one pid, like two containers that are both pid 1.
        let engine = engine();
        let wasm = wat::parse_str("(component (core module (func)))").unwrap();
        let component = Component::new(&engine, &wasm).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(&engine, dir.path(), &wasm);
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..20 {
                            store_in_cache(&component, &path)?;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap().unwrap();
            }
        });
        assert!(matches!(
            load_from_cache(&engine, &path),
            CacheLookup::Hit(_)
        ));
        assert_eq!(files_in(dir.path()).len(), 1, "no temporary files left");
    }
}
