//! `meshfleet node`'s output: lines for stdout, queued in memory bounded in bytes and
//! written by a thread of their own.
//!
//! Writing to stdout blocks when its reader is slow or stopped (a paused terminal, a stuck
//! log consumer). Written from the mesh's async tasks, that froze the node: no socket read,
//! no delay probe answered, no new peer taken. Here every line goes into a queue that never
//! blocks and holds at most `cap` bytes; one thread writes it out. When the reader does not
//! keep up:
//!
//! * **node lists are coalesced**: a new `nodes` event replaces the one still queued (only
//!   the latest layout matters; in a 45,000-node mesh each is ~500 KB), and is queued even
//!   over the cap, so the latest layout always reaches the reader;
//! * **other lines are shed**, counted ([`OutputStats`], the `stats` command) and logged at
//!   `warn` (at most every 5 s), and the next line that fits is preceded by a marker
//!   (`{"event":"output_shed","lines":N,"total":T}`, or a text line) so the reader knows
//!   where the gap is.
//!
//! A line longer than `cap` is queued only when nothing else is, so memory stays below
//! `max(cap, longest line)` plus one node list and one marker. A closed stdout (`meshfleet node | head`) stops
//! the output for good (logged once); the node carries on.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

/// Default `--output-cap`: 1 MiB (two node lists of a 45,000-node mesh).
pub(crate) const DEFAULT_OUTPUT_CAP: usize = 1 << 20;

/// How often shedding may be logged.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Whether a line may be replaced by a newer one of its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Every line is kept (or shed).
    Plain,
    /// A node list: only the latest queued one is kept.
    NodeList,
}

struct Queued {
    /// The line, `\n` included.
    text: String,
    kind: Kind,
}

#[derive(Default)]
struct State {
    lines: VecDeque<Queued>,
    /// Bytes queued plus the line being written.
    bytes: usize,
    /// Lines shed since the last marker.
    unreported: u64,
    stats: OutputStats,
    /// No more lines will come: the writer ends once the queue is empty.
    finished: bool,
    last_warn: Option<Instant>,
}

/// Output counters (in the `stats` reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutputStats {
    /// Bytes waiting to be written now.
    pub(crate) queued_bytes: usize,
    /// Lines dropped because the reader was too slow (including events the printer
    /// missed).
    pub(crate) shed_lines: u64,
    /// Their bytes (as far as known: missed events are not counted here).
    pub(crate) shed_bytes: u64,
    /// Node lists replaced by a newer one before being written.
    pub(crate) coalesced: u64,
    /// Whether stdout was closed (output stopped).
    pub(crate) closed: bool,
}

/// The queue and its writer thread, shared by every copy of [`Output`].
pub(crate) struct Sink {
    json: bool,
    cap: usize,
    state: Mutex<State>,
    /// Signalled when a line is queued, written, or the sink finishes.
    changed: Condvar,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn marker(&self, lines: u64, total: u64) -> String {
        if self.json {
            let mut s = json!({"event": "output_shed", "lines": lines, "total": total}).to_string();
            s.push('\n');
            s
        } else {
            format!("output too slow: {lines} line(s) dropped ({total} in all)\n")
        }
    }

    fn push(&self, text: &str, kind: Kind) {
        let mut st = self.lock();
        if st.stats.closed {
            return;
        }
        if kind == Kind::NodeList {
            if let Some(pos) = st.lines.iter().rposition(|q| q.kind == Kind::NodeList) {
                if let Some(old) = st.lines.remove(pos) {
                    st.bytes -= old.text.len();
                    st.stats.coalesced += 1;
                }
            }
        }
        let len = text.len() + 1;
        let marker = (st.unreported > 0).then(|| self.marker(st.unreported, st.stats.shed_lines));
        let need = len + marker.as_ref().map_or(0, String::len);
        // A node list is never shed: at most one is queued, and it is the latest.
        if kind == Kind::Plain && st.bytes > 0 && st.bytes + need > self.cap {
            st.stats.shed_lines += 1;
            st.stats.shed_bytes += len as u64;
            st.unreported += 1;
            let now = Instant::now();
            let warn_now = st
                .last_warn
                .map_or(true, |t| now.duration_since(t) >= WARN_EVERY);
            let total = st.stats.shed_lines;
            if warn_now {
                st.last_warn = Some(now);
            }
            drop(st);
            if warn_now {
                warn!(
                    shed = total,
                    cap = self.cap,
                    "stdout too slow: dropping output lines (the node is not held up)"
                );
            }
            return;
        }
        if let Some(m) = marker {
            st.bytes += m.len();
            st.lines.push_back(Queued {
                text: m,
                kind: Kind::Plain,
            });
            st.unreported = 0;
        }
        let mut line = String::with_capacity(len);
        line.push_str(text);
        line.push('\n');
        st.bytes += len;
        st.lines.push_back(Queued { text: line, kind });
        drop(st);
        self.changed.notify_all();
    }

    /// Counts `n` lines lost before they reached the queue (the printer lagged).
    fn lost(&self, n: u64) {
        let mut st = self.lock();
        st.stats.shed_lines += n;
        st.unreported += n;
    }

    fn stats(&self) -> OutputStats {
        let st = self.lock();
        OutputStats {
            queued_bytes: st.bytes,
            ..st.stats
        }
    }

    /// The writer thread: one line at a time, so the bytes it holds are counted.
    fn write_loop(&self, out: &mut impl Write) {
        loop {
            let line = {
                let mut st = self.lock();
                loop {
                    if let Some(q) = st.lines.pop_front() {
                        break q.text;
                    }
                    if st.finished {
                        return;
                    }
                    st = self
                        .changed
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let result = out.write_all(line.as_bytes()).and_then(|()| out.flush());
            let mut st = self.lock();
            st.bytes -= line.len();
            if let Err(e) = result {
                st.stats.closed = true;
                st.lines.clear();
                st.bytes = 0;
                drop(st);
                self.changed.notify_all();
                info!(error = %e, "stdout closed: no more output; the node keeps running");
                return;
            }
            drop(st);
            self.changed.notify_all();
        }
    }

    /// No more lines; waits up to `limit` for the queue to be written.
    fn finish(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        st.finished = true;
        self.changed.notify_all();
        while st.bytes > 0 && !st.stats.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Where output goes: lines for stdout through the bounded [`Sink`]. Cheap to copy; never
/// blocks.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    /// JSON objects instead of text.
    pub(crate) json: bool,
    sink: &'static Sink,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("json", &self.json)
            .field("cap", &self.sink.cap)
            .finish()
    }
}

impl Output {
    /// Starts the writer thread on stdout. The queue lives as long as the process (one
    /// per `meshfleet node`), so copies can be handed to any task.
    pub(crate) fn stdout(json: bool, cap: usize) -> anyhow::Result<Self> {
        let out = Self::new(json, cap);
        let sink = out.sink;
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || sink.write_loop(&mut std::io::stdout().lock()))
            .map_err(|e| anyhow::anyhow!("cannot start the output thread: {e}"))?;
        Ok(out)
    }

    /// An output without a writer (tests drive [`Sink::write_loop`] themselves).
    fn new(json: bool, cap: usize) -> Self {
        let sink = Box::leak(Box::new(Sink {
            json,
            cap,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }));
        Self { json, sink }
    }

    /// Queues one line (without its `\n`).
    pub(crate) fn line(self, text: &str) {
        self.sink.push(text, Kind::Plain);
    }

    /// Queues a line that a newer line of the same kind replaces while queued.
    pub(crate) fn line_of(self, text: &str, kind: Kind) {
        self.sink.push(text, kind);
    }

    /// Counts `n` events missed before they could be queued.
    pub(crate) fn lost(self, n: u64) {
        self.sink.lost(n);
    }

    /// The counters.
    pub(crate) fn stats(self) -> OutputStats {
        self.sink.stats()
    }

    /// Ends the output: waits up to `limit` for what is queued to be written.
    pub(crate) fn finish(self, limit: Duration) {
        self.sink.finish(limit);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn written(out: Output) -> Vec<String> {
        out.sink.lock().finished = true;
        let mut buf = Vec::new();
        out.sink.write_loop(&mut buf);
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn sheds_over_the_cap_and_marks_the_gap() {
        let out = Output::new(true, 100);
        for i in 0..10 {
            out.line(&format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(16)));
        }
        let s = out.stats();
        assert_eq!(s.shed_lines, 7, "three 33-byte lines fit in 100 bytes");
        assert!(s.queued_bytes <= 100);
        // Once written, the queue takes lines again, after a marker.
        let lines = written(out);
        assert_eq!(lines.len(), 3);
        out.sink.lock().finished = false;
        out.line("{\"n\":10}");
        let lines = written(out);
        assert_eq!(
            lines,
            [r#"{"event":"output_shed","lines":7,"total":7}"#, r#"{"n":10}"#]
        );
    }

    #[test]
    fn node_lists_are_coalesced_and_a_long_line_passes_an_empty_queue() {
        let out = Output::new(false, 100);
        let big = "y".repeat(150);
        out.line(&big);
        assert_eq!(out.stats().shed_lines, 0, "alone, a long line is queued");
        out.line("after");
        assert_eq!(out.stats().shed_lines, 1);
        written(out);
        out.sink.lock().finished = false;
        for i in 0..100 {
            out.line_of(&format!("nodes {i}"), Kind::NodeList);
        }
        out.line("last");
        // Over the cap, plain lines are shed but the latest node list is kept.
        out.line(&"z".repeat(90));
        out.line_of(&"n".repeat(120), Kind::NodeList);
        let s = out.stats();
        assert_eq!((s.coalesced, s.shed_lines), (100, 2));
        let lines = written(out);
        assert_eq!(
            lines,
            [
                "output too slow: 1 line(s) dropped (1 in all)",
                "last",
                "output too slow: 1 line(s) dropped (2 in all)",
                &"n".repeat(120),
            ]
        );
    }

    #[test]
    fn a_closed_stdout_stops_the_output() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Output::new(true, 1000);
        out.line("one");
        out.line("two");
        out.sink.write_loop(&mut Closed);
        let s = out.stats();
        assert!(s.closed);
        assert_eq!(s.queued_bytes, 0);
        out.line("three");
        assert_eq!(out.stats().queued_bytes, 0, "nothing queued after the close");
        out.finish(Duration::from_secs(5)); // returns at once
    }
}
