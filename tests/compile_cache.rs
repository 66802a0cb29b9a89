//! The compile cache against damaged files, through the real binary: `wasmgate check` fills a
//! cache, the file is damaged, and `wasmgate serve` must notice, compile again, rewrite the file
//! and serve. Loading damaged compiled code would crash the process (SIGILL) on the first
//! request instead.

mod common;

use common::*;
use http::StatusCode;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn routes() -> String {
    format!(
        "[[route]]\npath = \"/\"\ncomponent = {}\n",
        toml_path(&guest("hello"))
    )
}

fn sections(cache: &Path) -> Sections {
    Sections {
        engine: format!("cache_dir = {}\nmax_instances = 8\n", toml_path(cache)),
        ..Sections::default()
    }
}

/// The one `.cwasm` file in `cache`.
fn cache_file(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one file in the cache: {files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "cwasm"));
    files[0].clone()
}

/// Where the compiled machine code is: the `.text` section of the ELF object wasmtime
/// serializes (found wherever the object starts in the file).
fn text_section(file: &[u8]) -> Range<usize> {
    let elf = file
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("an ELF object in the cache file");
    let object = &file[elf..];
    let u16_at = |at: usize| u16::from_le_bytes(object[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(object[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(object[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(object[4], 2, "ELF64");
    assert_eq!(object[5], 1, "little-endian");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |index: usize| shoff + index * shentsize;
    let names = u64_at(section(shstrndx) + 24);
    (0..shnum)
        .find_map(|index| {
            let header = section(index);
            let name = &object[names + u32_at(header)..];
            let name = &name[..name.iter().position(|&b| b == 0)?];
            (name == b".text").then(|| {
                let (offset, size) = (u64_at(header + 24), u64_at(header + 32));
                elf + offset..elf + offset + size
            })
        })
        .expect("a .text section")
}

#[tokio::test]
async fn damaged_cache_files_are_compiled_again_and_never_crash_the_process() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[engine]\ncache_dir = {}\nmax_instances = 8\n\n{}",
        toml_path(cache.path()),
        routes()
    );
    let (ok, text) = check_config(dir.path(), &config);
    assert!(ok, "{text}");
    let path = cache_file(cache.path());
    let good = std::fs::read(&path).unwrap();
    let text = text_section(&good);
    assert!(text.len() > 1024, "hello has some code: {text:?}");

    let mut bit_flipped = good.clone();
    let middle = text.start + text.len() / 2;
    for byte in &mut bit_flipped[middle - 64..middle + 64] {
        *byte ^= 0x41;
    }
    // Every instruction an undefined one (`ud2`): loaded as it is, the first call is SIGILL.
    let mut code_replaced = good.clone();
    for pair in code_replaced[text.clone()].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0x0f, 0x0b]);
    }
    let cases = [
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("empty", Vec::new(), "not a wasmgate cache file"),
        (
            "garbage",
            b"not a compiled component ".repeat(500),
            "not a wasmgate cache file",
        ),
        ("bit-flipped code", bit_flipped, "checksum mismatch"),
        ("code replaced by ud2", code_replaced, "checksum mismatch"),
    ];
    for (case, damaged, reason) in cases {
        std::fs::write(&path, &damaged).unwrap();
        let gateway = Gateway::start_with(&routes(), sections(cache.path()));
        let line = gateway.wait_for_output(Duration::from_secs(5), |l| {
            l.contains("ignoring unusable cached component")
        });
        assert!(line.contains(reason), "{case}: the log says why: {line}");
        assert!(line.contains("WARN"), "{case}: {line}");
        gateway.wait_for_output(Duration::from_secs(5), |l| {
            l.contains("compiled component") && !l.contains("from cache")
        });
        let client = http1();
        for _ in 0..3 {
            let (status, _, body) = get(&client, &gateway.url("/")).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "Hello from wasmgate!\n"),
                "{case}:\n{}",
                gateway.output()
            );
        }
        let (status, _, _) = get(&client, &gateway.admin_url("/livez")).await;
        assert_eq!(status, StatusCode::OK, "{case}: still alive");
        drop(gateway);

        let rewritten = std::fs::read(cache_file(cache.path())).unwrap();
        assert!(rewritten != damaged, "{case}: the file was rewritten");
    }

    // The rewritten file loads.
    let gateway = Gateway::start_with(&routes(), sections(cache.path()));
    gateway.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("loaded compiled component from cache")
    });
    assert!(!gateway.output().contains("ignoring unusable"));
    let (status, _, _) = get(&http1(), &gateway.url("/")).await;
    assert_eq!(status, StatusCode::OK);
}
