//! What components log, and how the gateway writes its log without a guest being able to hurt it.
//!
//! # `wasi:logging/logging@0.1.0-draft`
//!
//! Each `log(level, context, message)` is one `tracing` event under the `wasmgate::guest` target,
//! with the route, the request id, the context and the guest's level (`guest_level`), on the same
//! pipeline (and in the same format) as the gateway's own logs and the guest's stdout and stderr.
//! `critical` is logged at error level with `critical = true`. The guest's level has a field name
//! of its own: in the JSON format the line's own `level` key is the event's level, and a second
//! `level` key would make readers that keep the last one filter on the guest's spelling.
//!
//! # One budget per request
//!
//! A per-request budget (messages and bytes, `[logging]` in the config) keeps one guest from
//! flooding the logs. It is shared by `wasi:logging`, stdout and stderr ([`RequestLog`]): past
//! it, lines are dropped and counted in `wasmgate_guest_log_messages_total{outcome="dropped"}`
//! (stdout lines under level `info`, stderr under `warn`), and one line at the end of the request
//! says how many were dropped.
//!
//! # The gateway's log output
//!
//! * Lines are handed to a writer thread through a bounded queue ([`non_blocking_stdout`]); when
//!   stdout is slower than the gateway logs, lines are dropped and counted
//!   (`wasmgate_log_lines_dropped_total`), never waited for on a worker thread.
//! * In the text format every field value is escaped ([`EscapedFields`]): a newline or another
//!   control character from a guest cannot start a forged log line or drive the terminal.
//! * A trap's backtrace (which holds names from the guest's own name section) is logged at most
//!   once a minute per route ([`LogBudget::backtrace`]); other traps get one line without it.

use crate::metrics::{GUEST_LOG_LEVELS, RouteMetrics};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/deps/logging-0.1.0-draft",
        world: "wasi:logging/imports",
    });
}

use bindings::wasi::logging::logging::{self, Level};

/// How often a route's trap is logged with its backtrace, at most.
pub const BACKTRACE_INTERVAL: Duration = Duration::from_secs(60);

/// What a route's guests may log: the per-request budget, and the trap backtrace limiter that
/// every request of the route shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogBudget {
    messages: u32,
    bytes: u64,
    backtraces: Arc<BacktraceGate>,
}

impl LogBudget {
    pub fn new(messages: u32, bytes: u64) -> LogBudget {
        LogBudget {
            messages,
            bytes,
            backtraces: Arc::new(BacktraceGate::new(BACKTRACE_INTERVAL)),
        }
    }

    /// A fresh budget for one request, shared by its `wasi:logging`, stdout and stderr.
    pub fn for_request(
        &self,
        metrics: Arc<RouteMetrics>,
        component: Arc<str>,
        request_id: Arc<str>,
    ) -> RequestLog {
        RequestLog(Arc::new(RequestLogInner {
            metrics,
            component,
            budget: (self.messages, self.bytes),
            current: Mutex::new(Current {
                request_id,
                remaining: Remaining {
                    messages: self.messages,
                    bytes: self.bytes,
                    dropped: 0,
                },
            }),
        }))
    }

    /// Whether a trap of this route is logged with its backtrace now.
    pub fn backtrace(&self) -> Backtrace {
        self.backtraces.due(Instant::now())
    }
}

/// Whether a trap's log line carries its backtrace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backtrace {
    Log,
    /// One was logged for this route less than [`BACKTRACE_INTERVAL`] ago.
    Omit,
}

/// Lets one backtrace through per interval, across threads, without a lock.
#[derive(Debug)]
struct BacktraceGate {
    origin: Instant,
    interval: Duration,
    /// Milliseconds after `origin` before which no backtrace is logged.
    next: AtomicU64,
}

impl BacktraceGate {
    fn new(interval: Duration) -> BacktraceGate {
        BacktraceGate {
            origin: Instant::now(),
            interval,
            next: AtomicU64::new(0),
        }
    }

    fn due(&self, now: Instant) -> Backtrace {
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let next = self.next.load(Ordering::Relaxed);
        if now_ms < next {
            return Backtrace::Omit;
        }
        let after = now_ms.saturating_add(millis(self.interval));
        // Of racing traps, only the one that moves `next` logs its backtrace.
        match self
            .next
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Backtrace::Log,
            Err(_) => Backtrace::Omit,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A trap or instantiation error in one line, without the wasm backtrace: the messages of the
/// error's chain that are not the backtrace itself.
pub fn error_summary(error: &wasmtime::Error) -> String {
    let mut summary = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.contains("wasm backtrace:") {
            continue;
        }
        if !summary.is_empty() {
            summary.push_str(": ");
        }
        summary.push_str(&text);
    }
    if summary.is_empty() {
        summary.push_str("wasm trap");
    }
    summary
}

/// The log budget of one request, shared by everything that logs for its guest. Cheap to clone;
/// when the last clone goes (with the request's store), it logs how many lines it dropped.
/// An instance that serves more than one request (a route's `reuse`) keeps its clones and
/// [`renew`](RequestLog::renew)s them for each request.
#[derive(Clone)]
pub struct RequestLog(Arc<RequestLogInner>);

struct RequestLogInner {
    /// The route's metric handles; also its name.
    metrics: Arc<RouteMetrics>,
    /// The route's component, as `RouteSettings::component` names it.
    component: Arc<str>,
    /// A request's budget: messages and bytes.
    budget: (u32, u64),
    current: Mutex<Current>,
}

/// The request being logged for, and what is left of its budget.
struct Current {
    request_id: Arc<str>,
    remaining: Remaining,
}

#[derive(Debug)]
struct Remaining {
    messages: u32,
    bytes: u64,
    dropped: u64,
}

/// Whether a guest's line fits in its request's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Log,
    Drop,
}

impl Remaining {
    fn take(&mut self, len: usize) -> Admit {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        if self.messages == 0 || len > self.bytes {
            self.dropped = self.dropped.saturating_add(1);
            return Admit::Drop;
        }
        self.messages -= 1;
        self.bytes -= len;
        Admit::Log
    }
}

impl RequestLog {
    /// Takes a line of `len` bytes at `level` (an index into [`GUEST_LOG_LEVELS`]) from the
    /// budget, and counts it as logged or dropped.
    pub fn admit(&self, len: usize, level: usize) -> Admit {
        let admit = self.current().remaining.take(len);
        self.0.metrics.guest_log(level, admit);
        admit
    }

    /// Starts logging for the next request of a reused instance: the finished request's
    /// dropped lines are reported, and the new one gets a full budget.
    pub fn renew(&self, request_id: Arc<str>) {
        let (messages, bytes) = self.0.budget;
        let finished = std::mem::replace(
            &mut *self.current(),
            Current {
                request_id,
                remaining: Remaining {
                    messages,
                    bytes,
                    dropped: 0,
                },
            },
        );
        self.0
            .report_dropped(&finished.request_id, finished.remaining.dropped);
    }

    pub fn route(&self) -> &str {
        &self.0.metrics.route
    }

    pub fn component(&self) -> &str {
        &self.0.component
    }

    pub fn request_id(&self) -> Arc<str> {
        self.current().request_id.clone()
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.current().remaining.dropped
    }
}

impl RequestLogInner {
    /// Logs how many lines a finished request dropped, if any.
    fn report_dropped(&self, request_id: &str, dropped: u64) {
        if dropped > 0 {
            tracing::warn!(
                target: "wasmgate::guest",
                route = %self.metrics.route, component = %self.component,
                request_id, dropped,
                "the component used up its log budget for this request: {dropped} lines dropped"
            );
        }
    }
}

impl Drop for RequestLogInner {
    fn drop(&mut self) {
        let current = self
            .current
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let (request_id, dropped) = (current.request_id.clone(), current.remaining.dropped);
        self.report_dropped(&request_id, dropped);
    }
}

/// What the host function sees of a request.
pub struct LoggingView<'a> {
    pub log: &'a RequestLog,
}

struct Logging;

impl HasData for Logging {
    type Data<'a> = LoggingView<'a>;
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> LoggingView<'_>,
) -> anyhow::Result<()> {
    logging::add_to_linker::<T, Logging>(linker, view)?;
    Ok(())
}

/// The level's index in [`GUEST_LOG_LEVELS`], which also holds its name.
fn level_index(level: Level) -> usize {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
        Level::Critical => 5,
    }
}

impl logging::Host for LoggingView<'_> {
    fn log(&mut self, level: Level, context: String, message: String) {
        let index = level_index(level);
        let guest_level = GUEST_LOG_LEVELS[index];
        if self.log.admit(context.len() + message.len(), index) == Admit::Drop {
            return;
        }
        let (route, component, request_id) = (
            self.log.route(),
            self.log.component(),
            &*self.log.request_id(),
        );
        let context = context.as_str();
        match level {
            Level::Trace => {
                tracing::trace!(target: "wasmgate::guest", route, component, request_id, context, guest_level, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "wasmgate::guest", route, component, request_id, context, guest_level, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "wasmgate::guest", route, component, request_id, context, guest_level, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "wasmgate::guest", route, component, request_id, context, guest_level, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "wasmgate::guest", route, component, request_id, context, guest_level, "{message}")
            }
            Level::Critical => {
                tracing::error!(target: "wasmgate::guest", route, component, request_id, context, guest_level, critical = true, "{message}")
            }
        }
    }
}

/// The text format's field formatter: as `tracing-subscriber`'s default (`message` bare, then
/// `name=value`), with every value escaped by [`Escape`], so that one event is one line whatever
/// a guest put in its text.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its sources in one value, as `{:#}` would show an `anyhow::Error`.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.record_debug(field, &format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let prefix = match field.name() {
            "message" => write!(self.writer, "{separator}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.writer, "{separator}{name}=")
            }
        };
        self.result = prefix.and_then(|()| write!(Escape(&mut *self.writer), "{value:?}"));
    }
}

/// Writes text with every control character (C0, DEL, C1) and the Unicode line and paragraph
/// separators escaped: `\n`, `\r`, `\t`, `\\` before them stays as it is, others as `\u{..}`.
pub struct Escape<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escape<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let ch = rest[at..].chars().next().unwrap_or('\0');
            match ch {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[at + ch.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(ch: char) -> bool {
    ch.is_control() || ch == '\u{2028}' || ch == '\u{2029}'
}

/// The log writer of `serve`: stdout behind a queue of at most `lines` lines, drained by a
/// thread of its own. A full queue drops the line and counts it ([`DroppedLogLines`]). Keep the
/// guard until the process ends: dropping it writes out what is queued.
pub fn non_blocking_stdout(
    lines: usize,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(lines.max(1))
        .thread_name("wasmgate-log")
        .finish(std::io::stdout());
    let _ = WRITER_DROPS.set(writer.error_counter());
    (writer, guard)
}

/// The drop count of the process's log writer, once [`non_blocking_stdout`] made it.
static WRITER_DROPS: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// `wasmgate_log_lines_dropped_total`: log lines the writer dropped because stdout could not
/// keep up. Register it with a registry; it reads the writer's own counter when scraped.
pub struct DroppedLogLines {
    counter: prometheus::IntCounter,
}

impl DroppedLogLines {
    pub fn new() -> DroppedLogLines {
        DroppedLogLines {
            counter: prometheus::IntCounter::new(
                "wasmgate_log_lines_dropped_total",
                "Log lines dropped because the log output (stdout) could not keep up.",
            )
            .expect("static metric definition"),
        }
    }
}

impl Default for DroppedLogLines {
    fn default() -> Self {
        DroppedLogLines::new()
    }
}

impl prometheus::core::Collector for DroppedLogLines {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let dropped = WRITER_DROPS
            .get()
            .map_or(0, |counter| counter.dropped_lines() as u64);
        let seen = self.counter.get();
        if dropped > seen {
            self.counter.inc_by(dropped - seen);
        }
        self.counter.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn request_log(messages: u32, bytes: u64) -> RequestLog {
        let metrics = Metrics::new().route("/log");
        LogBudget::new(messages, bytes).for_request(metrics, "c.wasm".into(), "id".into())
    }

    #[test]
    fn the_budget_counts_messages_and_bytes() {
        let log = request_log(2, 10);
        assert_eq!(log.admit(4, 2), Admit::Log);
        assert_eq!(log.admit(7, 2), Admit::Drop, "over the bytes left");
        assert_eq!(log.admit(6, 2), Admit::Log);
        assert_eq!(log.admit(0, 2), Admit::Drop, "over the messages");
        assert_eq!(log.dropped(), 2);
    }

    #[test]
    fn clones_share_one_budget() {
        let log = request_log(3, 1000);
        let stdout = log.clone();
        let stderr = log.clone();
        assert_eq!(log.admit(1, 2), Admit::Log);
        assert_eq!(stdout.admit(1, 2), Admit::Log);
        assert_eq!(stderr.admit(1, 3), Admit::Log);
        assert_eq!(stdout.admit(1, 2), Admit::Drop);
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn a_renewed_log_has_the_new_request_and_a_full_budget_in_every_clone() {
        let log = request_log(1, 1000);
        let stdout = log.clone();
        assert_eq!(stdout.admit(1, 2), Admit::Log);
        assert_eq!(stdout.admit(1, 2), Admit::Drop);
        log.renew("second".into());
        assert_eq!(&*stdout.request_id(), "second");
        assert_eq!(log.dropped(), 0);
        assert_eq!(stdout.admit(1, 2), Admit::Log);
        assert_eq!(log.admit(1, 2), Admit::Drop);
    }

    #[test]
    fn one_backtrace_per_interval() {
        let gate = BacktraceGate::new(Duration::from_secs(60));
        let start = gate.origin;
        assert_eq!(gate.due(start), Backtrace::Log);
        assert_eq!(gate.due(start + Duration::from_secs(1)), Backtrace::Omit);
        assert_eq!(gate.due(start + Duration::from_secs(59)), Backtrace::Omit);
        assert_eq!(gate.due(start + Duration::from_secs(61)), Backtrace::Log);
        assert_eq!(gate.due(start + Duration::from_secs(62)), Backtrace::Omit);
    }

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        write!(Escape(&mut out), "{text}").unwrap();
        out
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(
            escaped("x\u{7f}\u{85}\u{2028}y"),
            "x\\u{7f}\\u{85}\\u{2028}y"
        );
        assert_eq!(escaped("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn the_text_format_escapes_every_field_value() {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        let error = std::io::Error::other("bad\nthing");
        tracing::subscriber::with_default(subscriber, || {
            let text = "a\nb";
            tracing::info!(context = "c\nd", shown = %"e\u{1b}f", error = &error as &dyn std::error::Error, "{text}");
        });
        let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(
            output.contains(r#"a\nb context="c\nd" shown=e\u{1b}f error=bad\nthing"#),
            "{output}"
        );
    }

    #[test]
    fn a_summary_leaves_the_backtrace_out() {
        let error = wasmtime::Error::msg("wasm trap: unreachable")
            .context("error while executing at wasm backtrace:\n    0: 0x1 - f\nnext");
        assert_eq!(error_summary(&error), "wasm trap: unreachable");
    }

    #[test]
    fn the_writer_drops_and_counts_when_its_queue_is_full() {
        use std::io::Write;
        /// A writer that blocks until told to go on.
        struct Stuck(Arc<(Mutex<bool>, std::sync::Condvar)>);
        impl std::io::Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (lock, go) = &*self.0;
                let mut open = lock.lock().unwrap();
                while !*open {
                    open = go.wait(open).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (mut writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(4)
            .finish(Stuck(gate.clone()));
        let started = Instant::now();
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "writing never waits for the output"
        );
        let dropped = writer.error_counter().dropped_lines();
        assert!(
            (90..=96).contains(&dropped),
            "4 queued, 1 being written: {dropped}"
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
    }
}
