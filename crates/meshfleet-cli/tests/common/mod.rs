//! What the CLI tests share: a `meshfleet` child process whose stdout is JSON lines, driven
//! through its stdin as an operator's script would, and one-shot runs of the binary.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Lines of stderr kept per process for failure messages.
const STDERR_TAIL: usize = 60;

/// One `meshfleet` process whose stdout is JSON lines.
pub struct Proc {
    /// Name for failure messages.
    pub name: String,
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<Value>,
    /// Every stdout line so far, and whether a `wait_for` has claimed it.
    seen: Vec<(Value, bool)>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// How long any one wait may take before the test fails with the process's output.
    timeout: Duration,
}

impl Proc {
    /// Starts `meshfleet ARGS` (in `dir`, if given) with `RUST_LOG=info`.
    pub fn spawn(name: &str, dir: Option<&Path>, args: &[String], timeout: Duration) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshfleet"));
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start meshfleet: {e}"));
        let (tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        let who = name.to_owned();
        thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{who}: stdout line is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr);
        let err = BufReader::new(child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap();
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let stdin = child.stdin.take();
        Self {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            stderr,
            timeout,
        }
    }

    /// Writes one stdin command line.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write '{command}': {e}", self.name));
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Fails the test with `msg`, everything the process printed on stdout and the tail of
    /// its stderr.
    pub fn fail(&mut self, msg: &str) -> ! {
        while let Ok(v) = self.stdout.try_recv() {
            self.seen.push((v, false));
        }
        let out: Vec<String> = self.seen.iter().map(|(v, _)| v.to_string()).collect();
        let err: Vec<String> = self.stderr.lock().unwrap().iter().cloned().collect();
        panic!(
            "{}: {msg}\n--- stdout so far:\n{}\n--- stderr (last {STDERR_TAIL} lines):\n{}",
            self.name,
            out.join("\n"),
            err.join("\n")
        );
    }

    /// The first stdout line not yet claimed that matches `pred` (waiting for it if need
    /// be); claims it.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + self.timeout;
        let mut checked = 0;
        loop {
            for (v, claimed) in &mut self.seen[checked..] {
                if !*claimed && pred(v) {
                    *claimed = true;
                    return v.clone();
                }
            }
            checked = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(v) => self.seen.push((v, false)),
                Err(RecvTimeoutError::Timeout) => {
                    let t = self.timeout;
                    self.fail(&format!("timed out after {t:?} waiting for {what}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited while we waited for {what}"))
                }
            }
        }
    }

    /// Sends `command` and returns its reply, the next line with key `key`.
    pub fn request(&mut self, command: &str, key: &str) -> Value {
        self.send(command);
        let reply = self.wait_for(&format!("the reply to '{command}'"), |v| {
            v.get(key).is_some()
        });
        reply[key].clone()
    }

    /// An OTA plugin event of the node (`{"event":"plugin","data":{"event":name,..}}`).
    pub fn wait_plugin(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(what, |v| v["event"] == "plugin" && pred(&v["data"]))["data"].clone()
    }

    /// The port of the `listening` event.
    pub fn listening_port(&mut self) -> u16 {
        let v = self.wait_for("the listening event", |v| v["event"] == "listening");
        u16::try_from(v["port"].as_u64().unwrap()).unwrap()
    }

    /// The node ids the `nodes` command lists, in its order.
    pub fn nodes(&mut self) -> Vec<u64> {
        let v = self.request("nodes", "nodes");
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    }

    /// Polls `nodes` until it lists `expected` (in any order).
    pub fn wait_nodes(&mut self, expected: &[u64]) {
        let deadline = Instant::now() + self.timeout;
        let mut want = expected.to_vec();
        want.sort_unstable();
        loop {
            let mut nodes = self.nodes();
            nodes.sort_unstable();
            if nodes == want {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("node list still {nodes:?}, want {want:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every line received so far (claimed or not), after draining what is pending.
    pub fn all_lines(&mut self) -> Vec<Value> {
        while let Ok(v) = self.stdout.try_recv() {
            self.seen.push((v, false));
        }
        self.seen.iter().map(|(v, _)| v.clone()).collect()
    }

    /// The last lines of stderr so far (at most 60).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().iter().cloned().collect()
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&mut self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{}: cannot send SIGINT", self.name);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.fail("did not exit");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to save anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    /// No stray processes when a test fails half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owned arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `meshfleet ARGS` in `dir` to completion.
pub fn meshfleet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Stdout and stderr of a finished run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
