//! `meshfleet node`'s output never holds up the node (issue 15, item 10), through the
//! binary: with stdout's reader stopped, the node keeps answering on its sockets, sheds
//! output with a counter and a marker, keeps only the latest node list, and a closed
//! stdout ends the output without a panic.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const ID: u32 = 1001;
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    child: Child,
    /// Stdout, read only when the test says (dropping it closes the pipe).
    stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start() -> (Self, u16) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
            .args(["node", "--listen", "127.0.0.1:0", "--json", "--node-id"])
            .arg(ID.to_string())
            .env("RUST_LOG", "warn")
            // One worker thread, as on a single-core board: a blocking write in any
            // task would then stop the whole node.
            .env("TOKIO_WORKER_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Stderr is read all along: this test is about stdout.
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        let mut node = Self {
            stdout: Some(BufReader::new(child.stdout.take().unwrap())),
            child,
        };
        let listening = node.read_until(|v| v["event"] == "listening");
        let port = u16::try_from(listening["port"].as_u64().unwrap()).unwrap();
        (node, port)
    }

    /// Reads stdout lines until one matches; returns it.
    fn read_until(&mut self, pred: impl Fn(&Value) -> bool + Send + 'static) -> Value {
        self.read_lines_until(pred).pop().unwrap()
    }

    /// Reads stdout lines until one matches (within [`WAIT`]); returns every line read,
    /// that one last.
    fn read_lines_until(&mut self, pred: impl Fn(&Value) -> bool + Send + 'static) -> Vec<Value> {
        let mut out = self.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // On a thread, so a line that never comes fails the test instead of hanging it.
        thread::spawn(move || {
            let mut lines = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    let _ = tx.send(Err(format!("stdout ended after {lines:?}")));
                    return;
                }
                let v: Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(format!("not a JSON line ({e}): {line}")));
                        return;
                    }
                };
                let done = pred(&v);
                lines.push(v);
                if done {
                    let _ = tx.send(Ok((lines, out)));
                    return;
                }
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok((lines, out))) => {
                self.stdout = Some(out);
                lines
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no such line on stdout within {WAIT:?}"),
        }
    }

    fn command(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Resident memory in KiB (Linux).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// A raw painlessMesh peer over TCP. A thread reads what the node sends, answers its
/// node sync requests (with the tree we last announced, as a real node would) and hands
/// every other frame to [`Peer::expect`].
struct Peer {
    stream: Arc<Mutex<TcpStream>>,
    /// Our last node sync (as a request); replies repeat its tree.
    tree: Arc<Mutex<String>>,
    frames: mpsc::Receiver<String>,
}

impl Peer {
    fn connect(port: u16, id: u32) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A node that stopped reading its socket would stop these writes: fail, not hang.
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let stream = Arc::new(Mutex::new(stream));
        let tree = Arc::new(Mutex::new(String::new()));
        let (tx, frames) = mpsc::channel();
        let (w, t) = (Arc::clone(&stream), Arc::clone(&tree));
        thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let frame: Vec<u8> = pending.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&frame[..end]).into_owned();
                    if text.contains(r#""type":5,"#) {
                        let reply = t.lock().unwrap().replace(r#""type":5,"#, r#""type":6,"#);
                        let mut s = w.lock().unwrap();
                        let _ = s
                            .write_all(reply.as_bytes())
                            .and_then(|()| s.write_all(&[0]));
                    } else if tx.send(text).is_err() {
                        return;
                    }
                }
            }
        });
        let p = Self {
            stream,
            tree,
            frames,
        };
        p.sync(&format!(
            r#"{{"nodeId":{id},"type":5,"dest":0,"from":{id}}}"#
        ));
        p
    }

    fn send(&self, frame: &str) {
        let mut s = self.stream.lock().unwrap();
        s.write_all(frame.as_bytes())
            .and_then(|()| s.write_all(&[0]))
            .unwrap_or_else(|e| panic!("the node stopped reading its socket: {e}"));
    }

    /// Sends a node sync request, remembered for our replies.
    fn sync(&self, frame: &str) {
        frame.clone_into(&mut self.tree.lock().unwrap());
        self.send(frame);
    }

    /// Waits for a frame from the node containing `needle`.
    fn expect(&self, needle: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(f) if f.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("the node did not answer {what}"),
            }
        }
    }

    /// A TIME_DELAY probe (`delay` in the library) and its reply, told from any earlier
    /// one by its `t0`.
    fn probe(&self, id: u32) {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let t0 = NEXT.fetch_add(1, Ordering::Relaxed);
        self.send(&format!(
            r#"{{"type":3,"dest":{ID},"from":{id},"msg":{{"type":1,"t0":{t0}}}}}"#
        ));
        self.expect(&format!(r#""t0":{t0},"#), "a delay probe");
    }
}

/// A flat node sync from `id` with `n` leaves, one of them `marker`.
fn tree_sync(id: u32, n: u32, marker: u32) -> String {
    let mut subs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"nodeId":{}}}"#, 100_000 + i))
        .collect();
    subs.push(format!(r#"{{"nodeId":{marker}}}"#));
    format!(
        r#"{{"nodeId":{id},"subs":[{}],"type":5,"dest":{ID},"from":{id}}}"#,
        subs.join(",")
    )
}

#[test]
fn a_stopped_reader_does_not_stall_the_node_and_a_closed_stdout_ends_output() {
    let (mut node, port) = Node::start();
    let peer = Peer::connect(port, 777);
    // From here on nobody reads the node's stdout (a paused terminal).

    // 150 SINGLEs of 60,000 characters (9 MB of output; a pipe holds 64 KiB).
    let text = "x".repeat(60_000);
    for i in 0..150 {
        peer.send(&format!(
            r#"{{"type":9,"dest":{ID},"from":777,"msg":"{i} {text}"}}"#
        ));
    }
    // 100 layout changes of a 10,000-node tree: a ~110 KB node list each.
    for k in 0..100 {
        peer.sync(&tree_sync(777, 10_000, 900_000 + k));
    }
    // The node still answers on its socket, on the busy link and on a new one.
    peer.probe(777);
    let newcomer = Peer::connect(port, 778);
    newcomer.probe(778);
    let rss = node.rss_kib();
    eprintln!("node RSS with its reader stopped: {rss:?} KiB");
    if let Some(kib) = rss {
        // The output queue is capped at 1 MiB; 9 MB of SINGLEs and 11 MB of node lists
        // went by. (A debug build with 10,000 nodes known runs at ~20-40 MB.)
        assert!(kib < 150 * 1024, "RSS {kib} KiB");
    }

    // The reader comes back: the gap is marked, and the latest node list was kept.
    let lines = node.read_lines_until(|v| v["event"] == "output_shed");
    let shed = lines.last().unwrap()["lines"].as_u64().unwrap();
    assert!(shed > 0);
    node.command("stats");
    let lines = node.read_lines_until(|v| v.get("stats").is_some());
    let stats = &lines.last().unwrap()["stats"];
    assert!(stats["outputShed"].as_u64().unwrap() >= shed, "{stats}");
    assert!(stats["outputCoalesced"].as_u64().unwrap() > 0, "{stats}");
    let last_nodes = lines
        .iter()
        .rev()
        .find(|v| v["event"] == "nodes")
        .unwrap_or_else(|| panic!("no node list after the gap: {lines:?}"));
    let ids = last_nodes["nodes"].as_array().unwrap();
    assert!(
        ids.contains(&Value::from(900_099)),
        "not the latest node list"
    );

    // The reader goes away for good (`meshfleet node | head`): output ends, the node
    // carries on, and quits cleanly.
    node.stdout = None;
    for i in 0..20 {
        peer.send(&format!(
            r#"{{"type":9,"dest":{ID},"from":777,"msg":"after {i} {text}"}}"#
        ));
    }
    newcomer.probe(778);
    node.command("quit");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not quit");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?} (101 is a panic)");
}
