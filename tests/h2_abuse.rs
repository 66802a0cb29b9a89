//! HTTP/2 abuse: the attacks that took HTTP/2 servers down (rapid reset, CONTINUATION flood,
//! stream floods, header bombs, flow-control floods), run against a real gateway process.
//!
//! Each test attacks one connection (or a few) while a probe keeps asking for `/hello/probe` on
//! fresh connections, as another client would. It checks what the server did to the attacker
//! (GOAWAY, refused streams, a 431), that every probe got 200 within [`PROMPT`], that the
//! process is alive, that its resident memory grew by less than [`RSS_GROWTH_KIB`], and that
//! the gauge of requests in flight is back to zero once the attacker is gone.
//!
//! The h2 crate is the client where it can send the attack (rapid reset, huge header lists);
//! frames are written by hand where a conforming client cannot (a CONTINUATION flood, more
//! streams than the server allows, an HPACK bomb, WINDOW_UPDATE floods).

mod common;

use common::*;
use http::{Request, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// How long another client may wait for an answer while the gateway is under attack (the
/// machine is small and shared, and the attacker runs on it too).
const PROMPT: Duration = Duration::from_secs(5);
/// How much the gateway's resident memory may grow over an attack.
const RSS_GROWTH_KIB: u64 = 64 * 1024;
/// How long each attack goes on (reconnecting whenever the server closes the connection), so
/// the probe runs during it.
const ATTACK_TIME: Duration = Duration::from_secs(3);
/// `[server] max_concurrent_streams` in these tests.
const MAX_STREAMS: u32 = 100;

fn start() -> Gateway {
    let routes = format!(
        r#"
[[route]]
path = "/hello/:name"
component = {hello}

[[route]]
path = "/echo/..."
component = {echo}
"#,
        hello = toml_path(&guest("hello")),
        echo = toml_path(&guest("echo")),
    );
    Gateway::start_with(
        &routes,
        Sections {
            server: format!("max_concurrent_streams = {MAX_STREAMS}\n"),
            ..Sections::default()
        },
    )
}

/// The gateway process's resident set size, from /proc.
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid()))
        .expect("the gateway process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The sum of `http_server_active_requests` over every route.
async fn active_requests(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("http_server_active_requests"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Requests on both protocols so pools, caches and allocator arenas reach their working size
/// before the baseline is taken.
async fn warm_up(gw: &Gateway) -> u64 {
    for client in [http1(), http2()] {
        for i in 0..50 {
            let (status, _, _) = get(&client, &gw.url(&format!("/hello/w{i}"))).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    rss_kib(gw)
}

/// One GET on a new connection, alternating HTTP/1.1 and HTTP/2; its latency if it got 200.
async fn probe_once(addr: SocketAddr, n: usize) -> Result<Duration, String> {
    let client = if n.is_multiple_of(2) {
        http1()
    } else {
        http2()
    };
    let started = Instant::now();
    let request = Request::get(format!("http://{addr}/hello/probe"))
        .body(empty())
        .expect("request");
    match tokio::time::timeout(PROMPT, client.request(request)).await {
        Ok(Ok(response)) if response.status() == StatusCode::OK => Ok(started.elapsed()),
        Ok(Ok(response)) => Err(format!("probe {n}: status {}", response.status())),
        Ok(Err(e)) => Err(format!("probe {n}: {e}")),
        Err(_) => Err(format!("probe {n}: no answer within {PROMPT:?}")),
    }
}

/// How many probes ran and the slowest answer, or what went wrong.
type ProbeOutcome = Result<(usize, Duration), Vec<String>>;

/// Probes every 200 ms until `stop` is set (at least three times).
fn spawn_probe(addr: SocketAddr) -> (Arc<AtomicBool>, tokio::task::JoinHandle<ProbeOutcome>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut slowest = Duration::ZERO;
        let mut n = 0;
        while !flag.load(Relaxed) || n < 3 {
            match probe_once(addr, n).await {
                Ok(latency) => slowest = slowest.max(latency),
                Err(e) => failures.push(e),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if failures.is_empty() {
            Ok((n, slowest))
        } else {
            Err(failures)
        }
    });
    (stop, task)
}

/// Runs `attack` with a probe alongside, then checks the probe, the process and its memory.
async fn under_attack<F, T>(gw: &Gateway, name: &str, attack: F) -> T
where
    F: Future<Output = T>,
{
    let baseline = warm_up(gw).await;
    let (stop, probe) = spawn_probe(gw.addr);
    let started = Instant::now();
    let outcome = attack.await;
    let attack_time = started.elapsed();
    stop.store(true, Relaxed);
    let probes = probe.await.expect("probe task");
    let after = rss_kib(gw);
    // Every request the attack started has ended once its connection is gone: the gauge of
    // requests in flight comes back to zero (no leak through resets or closed connections).
    let settled = Instant::now();
    let mut active = active_requests(gw).await;
    while active != 0.0 && settled.elapsed() < PROMPT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        active = active_requests(gw).await;
    }
    assert_eq!(
        active, 0.0,
        "{name}: http_server_active_requests is still {active} after the attack"
    );
    // Served right after the attack too, on both protocols.
    probe_once(gw.addr, 0)
        .await
        .expect("served after the attack");
    probe_once(gw.addr, 1)
        .await
        .expect("served after the attack");
    eprintln!(
        "{name}: attack took {attack_time:?}; probes {probes:?}; RSS {baseline} KiB -> {after} KiB"
    );
    let (count, slowest) = match probes {
        Ok(done) => done,
        Err(failures) => panic!(
            "{name}: other clients were not served during the attack: {failures:?}\n{}",
            gw.output()
        ),
    };
    assert!(count >= 3 && slowest < PROMPT);
    assert!(
        after < baseline + RSS_GROWTH_KIB,
        "{name}: RSS grew from {baseline} KiB to {after} KiB"
    );
    outcome
}

// ---------------------------------------------------------------------------------------------
// Hand-written frames.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const FLOW_CONTROL_ERROR: u32 = 0x3;

/// A frame: the 9-byte header (length, type, flags, stream id) and the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `prefix`-bit prefix; `first` holds the bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name, no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The header block of `METHOD http://addr{path}`; GET uses the static table's entry.
fn request_block(addr: SocketAddr, method: &str, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    match method {
        "GET" => block.push(0x82),
        "POST" => block.push(0x83),
        other => panic!("no static entry for {other}"),
    }
    block.push(0x86); // :scheme http
    // :path and :authority, literal values with indexed names (4 and 1), without indexing.
    block.push(0x04);
    hpack_int(&mut block, 0, 7, path.len());
    block.extend_from_slice(path.as_bytes());
    let authority = addr.to_string();
    block.push(0x01);
    hpack_int(&mut block, 0, 7, authority.len());
    block.extend_from_slice(authority.as_bytes());
    block
}

/// The `:status` of a response header block, when it comes first (as the h2 server writes
/// it): an indexed static entry (200, 204, 206, 304, 400, 404, 500), or a literal with the
/// `:status` name (index 8) and a plain or Huffman-coded value of three digits.
fn response_status(block: &[u8]) -> Option<u16> {
    let (&first, rest) = block.split_first()?;
    let indexed = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
    ];
    let more = [(0x8d, 404), (0x8e, 500)];
    if let Some((_, status)) = indexed.iter().chain(&more).find(|(b, _)| *b == first) {
        return Some(*status);
    }
    // Literal with incremental indexing (01xxxxxx), without (0000xxxx), never (0001xxxx).
    if first != 0x48 && first != 0x08 && first != 0x18 {
        return None;
    }
    let (&len, value) = rest.split_first()?;
    let value = value.get(..usize::from(len & 0x7f))?;
    let digits: String = if len & 0x80 == 0 {
        String::from_utf8(value.to_vec()).ok()?
    } else {
        // RFC 7541 Appendix B: '0'-'2' are 5-bit codes 0-2, '3'-'9' are 6-bit codes 0x19-0x1f.
        let bits: Vec<u8> = value
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
            .collect();
        let mut digits = String::new();
        let mut at = 0;
        while digits.len() < 3 {
            let code = |n: usize| -> Option<u8> {
                bits.get(at..at + n)
                    .map(|b| b.iter().fold(0, |acc, bit| acc << 1 | bit))
            };
            match code(5)? {
                c @ 0..=2 => {
                    digits.push(char::from(b'0' + c));
                    at += 5;
                }
                _ => match code(6)? {
                    c @ 0x19..=0x1f => {
                        digits.push(char::from(b'3' + c - 0x19));
                        at += 6;
                    }
                    _ => return None,
                },
            }
        }
        digits
    };
    digits.parse().ok()
}

/// What the server sent on a raw connection.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    /// RST_STREAM counts by error code.
    resets: HashMap<u32, usize>,
    /// Streams whose response HEADERS carried `:status 200`.
    ok_streams: Vec<u32>,
    /// Streams that got response HEADERS with another status (`None`: not decoded).
    other_responses: Vec<(u32, Option<u16>)>,
    /// Bytes of DATA received.
    data_bytes: usize,
    /// The server's SETTINGS were received and acknowledged.
    settings_acked: bool,
    closed: bool,
}

/// A raw HTTP/2 connection: the preface and an empty SETTINGS are sent; a task reads every
/// frame the server sends (acknowledging its SETTINGS) into [`Seen`].
struct Raw {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_with(addr, &[]).await
    }

    /// Connects, sending these SETTINGS (identifier, value).
    async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut read, mut write) = stream.into_split();
        let mut hello = PREFACE.to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| [id.to_be_bytes().as_slice(), &value.to_be_bytes()].concat())
            .collect();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        write.write_all(&hello).await.expect("preface");
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let writer = writer.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 9];
                loop {
                    if read.read_exact(&mut head).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if read.read_exact(&mut payload).await.is_err() {
                        break;
                    }
                    if kind == SETTINGS && flags & ACK == 0 {
                        // Written whole under the lock, so never inside a header block.
                        let acked = writer
                            .lock()
                            .await
                            .write_all(&frame(SETTINGS, ACK, 0, &[]))
                            .await
                            .is_ok();
                        seen.lock().unwrap().settings_acked |= acked;
                    }
                    let mut seen = seen.lock().unwrap();
                    match kind {
                        GOAWAY if payload.len() >= 8 => {
                            let code = u32::from_be_bytes([
                                payload[4], payload[5], payload[6], payload[7],
                            ]);
                            seen.goaway.get_or_insert(code);
                        }
                        RST_STREAM if payload.len() == 4 => {
                            let code = u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]);
                            *seen.resets.entry(code).or_default() += 1;
                        }
                        HEADERS => match response_status(&payload) {
                            Some(200) => seen.ok_streams.push(stream),
                            status => seen.other_responses.push((stream, status)),
                        },
                        DATA => seen.data_bytes += payload.len(),
                        _ => {}
                    }
                }
                seen.lock().unwrap().closed = true;
            })
        };
        let raw = Raw {
            writer,
            seen,
            reader,
        };
        // Attacks that write a header block in pieces must not have the SETTINGS ACK land
        // between them (a protocol error of the test's own making).
        assert!(
            raw.wait_for(PROMPT, |s| s.settings_acked).await,
            "no SETTINGS from the server"
        );
        raw
    }

    /// Writes bytes; false once the server has closed the connection.
    async fn send(&self, bytes: &[u8]) -> bool {
        self.writer.lock().await.write_all(bytes).await.is_ok()
    }

    fn ended(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.closed || seen.goaway.is_some()
    }

    /// Waits until `done` holds for what was seen, or `timeout`; returns whether it held.
    async fn wait_for(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done(&self.seen.lock().unwrap())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The attacks.

/// CVE-2023-44487: open a stream and reset it at once, thousands of times, reconnecting
/// whenever the server closes the connection. Each connection must be told to go away
/// (ENHANCE_YOUR_CALM) long before it has made the gateway start 10,000 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let gw = start();
    let addr = gw.addr;
    let per_connection: usize = 10_000;
    let connections = under_attack(&gw, "rapid reset", async move {
        let mut connections = Vec::new();
        let until = Instant::now() + ATTACK_TIME;
        while Instant::now() < until {
            let c = connections.len();
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (mut client, connection) = h2::client::handshake(tcp).await.expect("handshake");
            let connection = tokio::spawn(connection);
            let mut n: usize = 0;
            while n < per_connection {
                client = match tokio::time::timeout(PROMPT, client.ready()).await {
                    Ok(Ok(client)) => client,
                    _ => break,
                };
                let request = Request::get(format!("http://{addr}/hello/r{c}-{n}"))
                    .body(())
                    .expect("request");
                let Ok((response, mut stream)) = client.send_request(request, true) else {
                    break;
                };
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                n += 1;
                if n.is_multiple_of(64) {
                    // Let the connection task write what is queued.
                    tokio::task::yield_now().await;
                }
            }
            let ended = tokio::time::timeout(PROMPT, connection).await;
            connections.push((n, format!("{ended:?}")));
        }
        connections
    })
    .await;
    let mut streams: Vec<usize> = connections.iter().map(|(n, _)| *n).collect();
    streams.sort_unstable();
    let goaways = connections
        .iter()
        .filter(|(_, ended)| ended.contains("ENHANCE_YOUR_CALM"))
        .count();
    eprintln!(
        "rapid reset: {} connections, {} streams opened and reset; per connection min {} \
         median {} max {}; {goaways} ended with GOAWAY ENHANCE_YOUR_CALM, the others with an \
         I/O error as the server closed",
        connections.len(),
        streams.iter().sum::<usize>(),
        streams[0],
        streams[streams.len() / 2],
        streams[streams.len() - 1],
    );
    for (n, ended) in &connections {
        // The client sees the GOAWAY, or (when it was writing as the server closed) an I/O
        // error; a connection the server never closes would time out here.
        assert!(
            ended.contains("ENHANCE_YOUR_CALM") || ended.contains("Io("),
            "a connection opened and reset {n} streams and ended with {ended}"
        );
    }
    // h2 counts resets of streams the server has not accepted yet: a server that keeps up
    // (as this one does) lets a connection go on longer, one that falls behind is protected
    // sooner. Most connections must still be cut off well before 10,000 (the GOAWAY reaches
    // the client, or the close does first while it is writing).
    assert!(
        goaways > 0 && streams[streams.len() / 2] < per_connection / 2,
        "connections were not cut off: {connections:?}"
    );
}

/// CVE-2024-27316 and kin: HEADERS without END_HEADERS, then CONTINUATION frames without end
/// (full ones, or empty ones that cost the attacker nothing), reconnecting whenever the server
/// closes the connection. The server must end each connection after a few frames with a
/// GOAWAY, not buffer the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway() {
    let gw = start();
    let addr = gw.addr;
    let connections = under_attack(&gw, "CONTINUATION flood", async move {
        let mut connections = Vec::new();
        let until = Instant::now() + ATTACK_TIME;
        while Instant::now() < until {
            let chunk = if connections.len().is_multiple_of(2) {
                16_384
            } else {
                0
            };
            let raw = Raw::connect(addr).await;
            let block = request_block(addr, "GET", "/hello/flood");
            let mut ok = raw.send(&frame(HEADERS, END_STREAM, 1, &block)).await;
            // Each frame: whole header fields (`x-flood: aaa...`), or nothing at all.
            let mut payload = Vec::new();
            if chunk > 0 {
                hpack_literal(&mut payload, b"x-flood", &vec![b'a'; chunk - 32]);
            }
            let batch: Vec<u8> = (0..16)
                .flat_map(|_| frame(CONTINUATION, 0, 1, &payload))
                .collect();
            let mut sent = 0usize;
            let started = Instant::now();
            while ok && !raw.ended() && started.elapsed() < PROMPT * 2 {
                ok = raw.send(&batch).await;
                sent += 16;
            }
            raw.wait_for(PROMPT, |s| s.goaway.is_some() || s.closed)
                .await;
            let goaway = raw.seen().goaway;
            connections.push((chunk, sent, goaway, format!("{:?}", raw.seen())));
        }
        connections
    })
    .await;
    let mut codes: HashMap<Option<u32>, usize> = HashMap::new();
    for (_, _, goaway, _) in &connections {
        *codes.entry(*goaway).or_default() += 1;
    }
    let most = connections
        .iter()
        .map(|(_, sent, _, _)| *sent)
        .max()
        .unwrap_or(0);
    eprintln!(
        "CONTINUATION flood: {} connections; GOAWAY codes (count): {codes:?}; at most {most} \
         frames written on one connection before the GOAWAY reached the attacker",
        connections.len(),
    );
    for (_, _, goaway, seen) in &connections {
        assert!(
            matches!(goaway, Some(ENHANCE_YOUR_CALM | COMPRESSION_ERROR)),
            "the flood must end with a GOAWAY (ENHANCE_YOUR_CALM or COMPRESSION_ERROR): {seen}"
        );
    }
}

/// More streams at once than `max_concurrent_streams`, each left open by the client, on one
/// connection after another: the excess is refused (RST_STREAM REFUSED_STREAM), and a
/// connection that keeps trying is sent away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused() {
    let gw = start();
    let addr = gw.addr;
    let streams: u32 = 2_000;
    let connections = under_attack(&gw, "stream flood", async move {
        let mut connections = Vec::new();
        let until = Instant::now() + ATTACK_TIME;
        while Instant::now() < until {
            let raw = Raw::connect(addr).await;
            // The server's SETTINGS (max_concurrent_streams) are ignored, as an attacker
            // would. Each stream is a GET without END_STREAM: the stream stays open
            // (half-closed at most) until the client ends it, so it keeps counting.
            let mut batch = Vec::new();
            for i in 0..streams {
                let block = request_block(addr, "GET", &format!("/hello/s{i}"));
                batch.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
                if batch.len() > 64 << 10 {
                    if !raw.send(&batch).await {
                        break;
                    }
                    batch.clear();
                }
            }
            raw.send(&batch).await;
            let excess = (streams - MAX_STREAMS) as usize;
            raw.wait_for(PROMPT * 2, |s| {
                s.resets.get(&REFUSED_STREAM).copied().unwrap_or(0) >= excess
                    || s.goaway.is_some()
                    || s.closed
            })
            .await;
            let seen = raw.seen();
            let refused = seen.resets.get(&REFUSED_STREAM).copied().unwrap_or(0);
            connections.push((refused, seen.goaway, format!("{seen:?}")));
        }
        connections
    })
    .await;
    let mut outcomes: HashMap<(usize, Option<u32>), usize> = HashMap::new();
    for (refused, goaway, _) in &connections {
        *outcomes.entry((*refused, *goaway)).or_default() += 1;
    }
    eprintln!(
        "stream flood: {} connections of {streams} streams each; \
         (streams refused, GOAWAY code) -> connections: {outcomes:?}",
        connections.len(),
    );
    for (refused, goaway, seen) in &connections {
        assert!(
            *refused >= (streams - MAX_STREAMS) as usize
                || (*refused > 0 && *goaway == Some(ENHANCE_YOUR_CALM)),
            "streams beyond max_concurrent_streams ({MAX_STREAMS}) must be refused: {seen}"
        );
    }
}

/// Requests whose header lists are far larger than `max_header_bytes` (64 KiB by default),
/// again and again: 70 KB and 1 MB of headers sent by the h2 client (which does not check the
/// server's limit), and an HPACK bomb: one 4 KB header put in the dynamic table and then
/// referenced 20,000 times by a one-byte index (80 MB once decoded, from 24 KB on the wire).
/// Each is refused with 431 or a reset/GOAWAY, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_header_lists_are_refused() {
    let gw = start();
    let addr = gw.addr;
    let outcomes = under_attack(&gw, "huge header lists", async move {
        let mut outcomes: Vec<(usize, String)> = Vec::new();
        let until = Instant::now() + ATTACK_TIME;
        while Instant::now() < until {
            let outcome = match outcomes.len() % 3 {
                0 => (70_000, h2_client_big_headers(addr, 70, 1_000).await),
                1 => (1_000_000, h2_client_big_headers(addr, 1_000, 1_000).await),
                _ => (80_000_000, hpack_bomb(addr).await),
            };
            outcomes.push(outcome);
        }
        outcomes
    })
    .await;
    eprintln!(
        "huge header lists: {} requests; first outcomes: {:?}",
        outcomes.len(),
        &outcomes[..outcomes.len().min(3)]
    );
    for (size, outcome) in &outcomes {
        assert!(
            !outcome.contains("status 2"),
            "a {size}-byte header list was served: {outcome}"
        );
        assert!(
            outcome.contains("status 431")
                || outcome.contains("status Some(431)")
                || outcome.contains("error"),
            "a {size}-byte header list must get 431 or a reset/GOAWAY: {outcome}"
        );
    }
}

/// A GET with `count` headers of `size` bytes each, through the h2 client.
async fn h2_client_big_headers(addr: SocketAddr, count: usize, size: usize) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let mut request = Request::get(format!("http://{addr}/hello/big"));
    for i in 0..count {
        request = request.header(format!("x-big-{i}"), "v".repeat(size));
    }
    let request = request.body(()).expect("request");
    let outcome = match client.ready().await {
        Ok(mut client) => match client.send_request(request, true) {
            Ok((response, _)) => match tokio::time::timeout(PROMPT, response).await {
                Ok(Ok(response)) => format!("status {}", response.status()),
                Ok(Err(e)) => format!("error {e}"),
                Err(_) => "no answer".to_string(),
            },
            Err(e) => format!("send error {e}"),
        },
        Err(e) => format!("not ready error {e}"),
    };
    connection.abort();
    outcome
}

/// The HPACK bomb on a raw connection; what the server answered.
async fn hpack_bomb(addr: SocketAddr) -> String {
    let raw = Raw::connect(addr).await;
    let mut block = request_block(addr, "GET", "/hello/bomb");
    // Literal with incremental indexing, new name: goes into the dynamic table (index 62).
    block.push(0x40);
    hpack_int(&mut block, 0, 7, 6);
    block.extend_from_slice(b"x-bomb");
    hpack_int(&mut block, 0, 7, 4_000);
    block.extend(std::iter::repeat_n(b'b', 4_000));
    block.extend(std::iter::repeat_n(0xbe, 20_000)); // indexed: dynamic entry 62
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let first = if i == 0 { END_STREAM } else { 0 };
        let last = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        frames.extend(frame(kind, first | last, 1, chunk));
    }
    raw.send(&frames).await;
    raw.wait_for(PROMPT, |s| {
        !s.ok_streams.is_empty()
            || !s.other_responses.is_empty()
            || !s.resets.is_empty()
            || s.goaway.is_some()
            || s.closed
    })
    .await;
    let seen = raw.seen();
    if seen.ok_streams.contains(&1) {
        "HPACK bomb: status 200".to_string()
    } else if let Some((_, status)) = seen.other_responses.first() {
        format!("HPACK bomb: status {status:?}")
    } else if !seen.resets.is_empty() || seen.goaway.is_some() || seen.closed {
        format!("HPACK bomb: error: refused ({seen:?})")
    } else {
        format!("HPACK bomb: no answer ({seen:?})")
    }
}

/// WINDOW_UPDATE frames of 1 byte, as fast as the server takes them for a few seconds
/// (hundreds of thousands), on the connection and on an open stream: the server works through
/// them and still answers on the same connection. One that overflows the window
/// past 2^31-1 is a connection error (GOAWAY FLOW_CONTROL_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_update_flood_is_absorbed() {
    let gw = start();
    let addr = gw.addr;
    let (flood, overflow) = under_attack(&gw, "WINDOW_UPDATE flood", async move {
        let raw = Raw::connect(addr).await;
        // Stream 1: a POST whose body never ends, so WINDOW_UPDATEs for it are legal.
        let block = request_block(addr, "POST", "/echo/open");
        raw.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
        let mut batch = Vec::new();
        for i in 0..10_000u32 {
            let stream = if i.is_multiple_of(2) { 0 } else { 1 };
            batch.extend(frame(WINDOW_UPDATE, 0, stream, &1u32.to_be_bytes()));
        }
        let until = Instant::now() + ATTACK_TIME;
        let mut batches = 0;
        while Instant::now() < until {
            if !raw.send(&batch).await {
                break;
            }
            batches += 1;
        }
        // The same connection still serves a request.
        let block = request_block(addr, "GET", "/hello/after-flood");
        raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, 3, &block))
            .await;
        raw.wait_for(PROMPT * 2, |s| s.ok_streams.contains(&3) || s.closed)
            .await;
        let flood = (batches * 10_000, format!("{:?}", raw.seen()));
        let served_after = raw.seen().ok_streams.contains(&3);

        let raw = Raw::connect(addr).await;
        let mut overflow = frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes());
        overflow.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()));
        raw.send(&overflow).await;
        raw.wait_for(PROMPT, |s| s.goaway.is_some() || s.closed)
            .await;
        let goaway = raw.seen().goaway;
        (flood, (served_after, goaway))
    })
    .await;
    eprintln!("WINDOW_UPDATE flood: {flood:?}; overflow: {overflow:?}");
    let (served_after, goaway) = overflow;
    assert!(
        served_after,
        "after the flood the connection must still serve: {flood:?}"
    );
    assert_eq!(goaway, Some(FLOW_CONTROL_ERROR), "window overflow");
}

/// CVE-2019-9512 and CVE-2019-9515: PING and SETTINGS frames as fast as possible from a client
/// that never reads, so every PONG and SETTINGS ACK the server owes piles up. The server must
/// stop reading (backpressure) rather than queue answers without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_from_a_client_that_never_reads() {
    let gw = start();
    let addr = gw.addr;
    let (written, stalls) = under_attack(&gw, "PING/SETTINGS flood", async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await.expect("preface");
        let mut batch = Vec::new();
        for i in 0..2_000u64 {
            batch.extend(frame(PING, 0, 0, &i.to_be_bytes()));
            batch.extend(frame(SETTINGS, 0, 0, &[]));
        }
        let (mut written, mut stalls) = (0usize, 0usize);
        let until = Instant::now() + ATTACK_TIME;
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                Ok(Err(_)) => break,
                // The server stopped reading: what it owes us is not being queued without end.
                Err(_) => stalls += 1,
            }
        }
        (written, stalls)
    })
    .await;
    eprintln!(
        "PING/SETTINGS flood: {} KiB written before the attack time ran out, {stalls} writes \
         stalled for 500 ms (the server no longer reading)",
        written / 1024
    );
    assert!(
        stalls > 0,
        "the server read {written} bytes of PINGs and SETTINGS from a client that never reads \
         its answers, without pushing back"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow readers: an HTTP/2 client that never opens its flow-control window holds the route's
// slot and an instance for as long as it likes unless the gateway bounds how long a response
// may wait for it. (Slow reading over HTTP/1.1 is measured with slowhttptest:
// loadtests/slowhttp.sh.)

/// Routes for the slow-reader tests: `/stream` with room for two requests at once.
fn start_slow_reader_gateway() -> Gateway {
    let routes = format!(
        r#"
[[route]]
path = "/stream"
component = {streaming}
max_concurrency = 2
queue_timeout = "100ms"
"#,
        streaming = toml_path(&guest("streaming")),
    );
    Gateway::start_with(
        &routes,
        Sections {
            server: "send_timeout = \"2s\"\n".to_string(),
            ..Sections::default()
        },
    )
}

/// Asks for a small response from `/stream` until it is served (200), for up to `within`;
/// returns how long it took, or the statuses seen.
async fn stream_route_served(gw: &Gateway, within: Duration) -> Result<Duration, Vec<u16>> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < within {
        let request = Request::get(gw.url("/stream?chunks=1&delay_ms=0"))
            .body(empty())
            .expect("request");
        match tokio::time::timeout(PROMPT, http1().request(request)).await {
            Ok(Ok(response)) if response.status() == StatusCode::OK => {
                return Ok(started.elapsed());
            }
            Ok(Ok(response)) => seen.push(response.status().as_u16()),
            _ => seen.push(0),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(seen)
}

/// An HTTP/2 client that sets its initial window to 0 and never sends WINDOW_UPDATE: the
/// responses wait on flow control, not on a socket write, so no write times out, and the
/// connection is busy (never idle). Before the per-response send deadline the two streams held
/// the route's slots until the route's timeout (one connection could hold
/// `max_concurrent_streams`, 200, such streams); now the connection is dropped once a frame has
/// waited for the peer past `send_timeout`, and the slots are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_flow_control_stall_does_not_hold_a_route() {
    let gw = start_slow_reader_gateway();
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let raw = Raw::connect_with(gw.addr, &[(INITIAL_WINDOW_SIZE, 0)]).await;
    for stream in [1u32, 3] {
        let block = request_block(gw.addr, "GET", "/stream?chunks=1000000&delay_ms=0");
        raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, stream, &block))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = stream_route_served(&gw, Duration::from_millis(200)).await;
    assert!(
        held.is_err(),
        "the stalled streams did not take the route's slots"
    );
    let freed = stream_route_served(&gw, Duration::from_secs(2 + 5)).await;
    eprintln!("held: {held:?}; freed: {freed:?}");
    let seen = format!("{:?}", raw.seen());
    drop(raw);
    assert!(
        freed.is_ok(),
        "stalled HTTP/2 streams still hold /stream 7 s after send_timeout (2 s): {freed:?}; \
         the attacker saw {seen}"
    );
}
