//! The container image without Docker: the Dockerfile's runtime stage replayed in a temporary
//! root. The stage's instructions are read from the Dockerfile itself (an instruction this
//! replay does not know fails the test, so the Dockerfile cannot drift from what is tested):
//! its files are laid out as its `COPY` lines say, its `RUN` steps run (the compile cache is
//! warmed by `wasmgate check`), and the gateway is started with its `ENTRYPOINT` and `CMD` as
//! its unprivileged `USER`, with everything read-only but the `VOLUME`. Then it must serve, its
//! `HEALTHCHECK` must pass, and nothing outside the volume may have changed.
//!
//! The build stage is not replayed: its outputs are what this test build already made (the
//! gateway binary, and the guests `.ci/run` builds with the same command).

mod common;

use common::*;
use http::{Method, Request, StatusCode};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The Dockerfile's instructions after its last `FROM`, continuation lines joined.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT_DIR).join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|(keyword, _)| keyword == "FROM")
        .expect("a FROM");
    instructions.split_off(last_from + 1)
}

/// An exec-form list (`["a", "b"]`).
fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an exec-form list: {text}: {e}"))
}

fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The replayed image: a temporary root and what the stage declared.
struct Image {
    root: tempfile::TempDir,
    uid: u32,
    workdir: String,
    volume: Option<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

impl Image {
    /// A path of the image in the temporary root.
    fn path(&self, image_path: &str) -> PathBuf {
        self.root.path().join(image_path.trim_start_matches('/'))
    }

    /// An argument with the image's absolute paths moved into the temporary root.
    fn arg(&self, arg: &str) -> String {
        if arg.starts_with("/app") || arg.starts_with("/usr") {
            self.path(arg).display().to_string()
        } else {
            arg.to_string()
        }
    }

    /// A command of the image, as its user, in its working directory.
    fn command(&self, argv: &[String]) -> Command {
        let program = if argv[0].contains('/') {
            self.arg(&argv[0])
        } else {
            self.path(&format!("/usr/local/bin/{}", argv[0]))
                .display()
                .to_string()
        };
        let args: Vec<String> = argv[1..].iter().map(|a| self.arg(a)).collect();
        let mut command = if current_uid() == 0 {
            // Root can write anywhere: drop to the image's user as Docker would.
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={}", self.uid),
                format!("--regid={}", self.uid),
                "--clear-groups".into(),
                "--".into(),
                program,
            ]);
            c
        } else {
            Command::new(program)
        };
        command
            .args(args)
            .current_dir(self.path(&self.workdir))
            .env_remove("RUST_BACKTRACE")
            .env("RUST_LOG", "info");
        command
    }

    fn chown(&self, path: &Path) {
        if current_uid() == 0 {
            let status = Command::new("chown")
                .args(["-R", &self.uid.to_string(), path.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
}

fn copy_tree(from: &Path, to: &Path, only_wasm: bool) {
    if from.is_file() {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
        return;
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && (!only_wasm || path.extension().is_some_and(|e| e == "wasm")) {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Lays out and runs the runtime stage's instructions.
fn replay() -> Image {
    let mut image = Image {
        root: tempfile::tempdir().unwrap(),
        uid: 0,
        workdir: "/".into(),
        volume: None,
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
    };
    // What the build stage leaves in /out: this build's binary and guests.
    let built = |source: &str| -> (PathBuf, bool) {
        match source {
            "/out/wasmgate" => (PathBuf::from(env!("CARGO_BIN_EXE_wasmgate")), false),
            "/out/guests" => (
                Path::new(ROOT_DIR).join("guests/target/wasm32-wasip2/release"),
                true,
            ),
            other => panic!("the replay does not know the build stage's {other}"),
        }
    };
    for (keyword, rest) in runtime_stage() {
        match keyword.as_str() {
            "RUN" if rest.starts_with('[') => {
                let output = image.command(&exec_form(&rest)).output().unwrap();
                assert!(
                    output.status.success(),
                    "RUN {rest}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            "RUN" => {
                for step in rest.split("&&").map(str::trim) {
                    let words: Vec<&str> = step.split_whitespace().collect();
                    match words.as_slice() {
                        ["useradd", ..] => {
                            let at = words.iter().position(|w| *w == "--uid").expect("--uid");
                            image.uid = words[at + 1].parse().unwrap();
                        }
                        ["mkdir", "-p", path] => std::fs::create_dir_all(image.path(path)).unwrap(),
                        // The image's packages: the replay runs on this machine's, so the
                        // package must be installed here for the replay to mean anything.
                        ["apt-get", "update"] | ["rm", "-rf", "/var/lib/apt/lists/*"] => {}
                        [
                            "apt-get",
                            "install",
                            "-y",
                            "--no-install-recommends",
                            packages @ ..,
                        ] => {
                            for package in packages {
                                let status = Command::new("dpkg")
                                    .args(["-s", package])
                                    .stdout(Stdio::null())
                                    .status()
                                    .unwrap();
                                assert!(
                                    status.success(),
                                    "the image installs {package}; this machine lacks it"
                                );
                            }
                        }
                        ["chown", _, path] => image.chown(&image.path(path)),
                        _ => panic!("the replay does not know the step `{step}`"),
                    }
                }
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    ["--from=build", source, target] => {
                        let (from, only_wasm) = built(source);
                        copy_tree(&from, &image.path(target), only_wasm);
                    }
                    [source, target] => copy_tree(
                        &Path::new(ROOT_DIR).join(source),
                        &image.path(target),
                        false,
                    ),
                    _ => panic!("the replay does not know COPY {rest}"),
                }
            }
            "USER" => image.uid = rest.parse().expect("a numeric USER"),
            "WORKDIR" => image.workdir = rest,
            "VOLUME" => image.volume = Some(rest),
            "EXPOSE" => {}
            "HEALTHCHECK" => {
                let cmd = rest.split_once("CMD ").expect("HEALTHCHECK CMD").1;
                image.healthcheck = exec_form(cmd.trim());
            }
            "ENTRYPOINT" => image.entrypoint = exec_form(&rest),
            "CMD" => image.cmd = exec_form(&rest),
            other => panic!("the replay does not know {other} {rest}"),
        }
    }
    image
}

/// The image's gateway, stopped however the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file outside `skip`, with its size.
fn files(root: &Path, skip: &Path) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(skip) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.clone(), path.metadata().unwrap().len());
            }
        }
    }
    found
}

/// Makes everything but the volume read-only, as `readOnlyRootFilesystem` does.
fn read_only_but(root: &Path, volume: &Path) {
    for (path, _) in files(root, volume) {
        let mut permissions = path.metadata().unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&path, permissions).unwrap();
    }
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if dir.starts_with(volume) {
            continue;
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            }
        }
        let mut permissions = dir.metadata().unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&dir, permissions).unwrap();
    }
}

#[tokio::test]
async fn the_image_runs_as_its_user_with_only_its_volume_writable() {
    let image = replay();
    assert_ne!(image.uid, 0, "the image runs as a user of its own");
    let volume = image.path(image.volume.as_deref().expect("a VOLUME"));
    assert!(
        std::fs::read_dir(volume.join("cache")).unwrap().count() > 5,
        "the build warmed the compile cache in the volume"
    );
    // The Kubernetes config, where the Deployment mounts its ConfigMap, loads in the image (its
    // Redis and NATS stores are not opened by `check`).
    copy_tree(
        &Path::new(ROOT_DIR).join("deploy/kubernetes/base/wasmgate.toml"),
        &image.path("/app/config/wasmgate.toml"),
        false,
    );
    read_only_but(image.root.path(), &volume);
    let checked = image
        .command(&["wasmgate", "check", "/app/config/wasmgate.toml"].map(String::from))
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "the Kubernetes config: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let before = files(image.root.path(), &volume);

    // The image's own start command, on ports the test picks.
    let mut argv = image.entrypoint.clone();
    argv.extend(image.cmd.iter().cloned());
    argv.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
    let mut running = Running(
        image
            .command(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut running.0;
    let (tx, rx) = std::sync::mpsc::channel();
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (tx, output) = (tx.clone(), output.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving HTTP on http://").nth(1) {
                    let public = rest.split(' ').next().unwrap().to_string();
                    let admin = rest.split("admin endpoints on http://").nth(1).unwrap();
                    let admin = admin.split(')').next().unwrap().to_string();
                    let _ = tx.send((public, admin));
                }
                output.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
    }
    let (public, admin) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the image's gateway did not start:\n{}",
                output.lock().unwrap()
            )
        });
    let (public, admin): (SocketAddr, SocketAddr) =
        (public.parse().unwrap(), admin.parse().unwrap());
    {
        let log = output.lock().unwrap();
        let compiled = log
            .lines()
            .filter(|line| line.contains("compiled component") && !line.contains("from cache"))
            .count();
        assert!(
            compiled == 0 && log.contains("loaded compiled component from cache"),
            "every component came from the cache the build warmed:\n{log}"
        );
    }

    let client = http1();
    let (status, _, text) = get(&client, &format!("http://{public}/")).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, "Hello from wasmgate!\n")
    );
    let (status, _, text) = get(&client, &format!("http://{public}/count/visits")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let put = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{public}/files/docs/a.txt"))
        .body(body("in the volume"))
        .unwrap();
    let (status, _, text) = read(send(&client, put).await).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    // The image's health check, as given, with the admin port moved the way a deployment
    // moves it: by the environment.
    let checked = image
        .command(&image.healthcheck)
        .env("WASMGATE_ADMIN__LISTEN", admin.to_string())
        .output()
        .unwrap();
    assert!(checked.status.success(), "HEALTHCHECK: {checked:?}");

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    assert_eq!(
        files(image.root.path(), &volume),
        before,
        "nothing changed outside the volume"
    );
    assert!(volume.join("kv.redb").exists() && volume.join("blobs").exists());
}

/// The image serves the default config's routes, with the files the image holds.
#[test]
fn the_image_config_serves_the_default_configs_routes() {
    let routes = |file: &str| -> Vec<(String, Option<Vec<String>>, Option<String>)> {
        let config = wasmgate::config::Config::parse(
            &std::fs::read_to_string(Path::new(ROOT_DIR).join(file)).unwrap(),
            PathBuf::from("/"),
        )
        .unwrap();
        config
            .routes
            .iter()
            .map(|route| {
                let component = route
                    .component
                    .as_ref()
                    .map(|c| c.file_name().unwrap().to_string_lossy().into_owned());
                (route.path.clone(), route.methods.clone(), component)
            })
            .collect()
    };
    assert_eq!(
        routes("deploy/docker/wasmgate.toml"),
        routes("config/wasmgate.toml")
    );
}
