//! What the CLI tests share: a `meshfleet` child process whose stdout is JSON lines, driven
//! through its stdin as an operator's script would, and one-shot runs of the binary.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// The arguments of a `meshfleet node --json` that receives OTA: node `id`, its store in
/// `dir/ota-<id>`, role `role` on `hardware`, confirmation after 1 s; `net` is how it meets
/// the mesh (`["--connect", "127.0.0.1:PORT"]`, `["--listen", "127.0.0.1:0"]`). Callers
/// add their hooks, keys and intervals.
pub fn ota_receiver_args(
    dir: &Path,
    id: u32,
    net: [&str; 2],
    role: &str,
    hardware: &str,
) -> Vec<String> {
    let ota = dir.join(format!("ota-{id}"));
    args(&[
        "node",
        "--json",
        "--node-id",
        &id.to_string(),
        net[0],
        net[1],
        "--ota-dir",
        ota.to_str().unwrap(),
        "--ota-role",
        role,
        "--ota-hardware",
        hardware,
        "--ota-confirm-after",
        "1",
    ])
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

/// Runs `meshfleet ARGS` in `dir` and fails the test with its output unless it succeeds.
pub fn run_ok(dir: &Path, a: &[&str]) -> Output {
    let o = meshfleet(dir, a);
    assert!(o.status.success(), "meshfleet {a:?} failed:\n{}", text(&o));
    o
}

/// Whitespace-separated words, owned (for fixed parts of command lines).
pub fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// A deterministic image that does not compress (xorshift bytes): one payload chunk per
/// KiB of image, so a transfer takes as long as its size says.
pub fn incompressible_image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `meshfleet firmware pack IMAGE --role sensor --hardware HW --version V --out OUT`, signed
/// with `key` when given, plus `extra` flags. Returns the run for the caller to check.
pub fn pack(
    dir: &Path,
    image: &str,
    hardware: &str,
    version: &str,
    key: Option<&str>,
    out: &str,
    extra: &[&str],
) -> Output {
    let mut a = vec![
        "firmware",
        "pack",
        image,
        "--role",
        "sensor",
        "--hardware",
        hardware,
        "--version",
        version,
        "--out",
        out,
    ];
    if let Some(k) = key {
        a.extend(["--sign", k]);
    }
    a.extend_from_slice(extra);
    meshfleet(dir, &a)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`, a bearer `token` if
/// given): the status and the body as JSON (`Null` if it is not JSON), or `None` when the
/// server is not there or the answer is not HTTP.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    Some((status, body))
}

/// `GET path` as JSON (`Null` when the server is not there).
pub fn get_json(port: u16, path: &str, token: Option<&str>) -> Value {
    http(port, "GET", path, token, "application/json", b"").map_or(Value::Null, |(_, b)| b)
}

/// Polls `f` every 100 ms until it holds, and returns how long that took; after `limit`
/// the test fails with `what` and whatever `context` says (logs, say).
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}\n{}", context());
}

/// `meshfleet [PRE...] gateway` as node 900, its mesh on `127.0.0.1:mesh`, its API on
/// `127.0.0.1:http`, its database `gw.db` and token file `token` in `dir`, trusting
/// `firmware_key` (a file in `dir`) if given; the caller sets up output and spawns it.
pub fn gateway_command(
    dir: &Path,
    pre: &[&str],
    http: u16,
    mesh: u16,
    firmware_key: Option<&str>,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshfleet"));
    c.args(pre)
        .args(["gateway", "--node-id", "900"])
        .args(["--listen", &format!("127.0.0.1:{mesh}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--db")
        .arg(dir.join("gw.db"))
        .arg("--token-file")
        .arg(dir.join("token"));
    if let Some(key) = firmware_key {
        c.arg("--firmware-key").arg(dir.join(key));
    }
    c
}

/// A child process killed (and reaped) when the test ends, passed or failed.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SHA-256 of `bytes` in lower-case hex, computed independently of the code under test.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `meshfleet node --json` joining `127.0.0.1:mesh` with an OTA store in `dir/ota-<id>`:
/// role `sensor` on `hardware`, confirmation after 1 s, a status report every 2 s, and,
/// when `hook`, an `--ota-hook` that writes the installed version to `dir/hook-<id>.txt`.
pub fn ota_node(
    dir: &Path,
    id: u32,
    mesh: u16,
    hardware: &str,
    hook: bool,
    timeout: Duration,
) -> Proc {
    let connect = format!("127.0.0.1:{mesh}");
    let mut a = ota_receiver_args(dir, id, ["--connect", &connect], "sensor", hardware);
    a.extend(args(&["--status-interval", "2"]));
    if hook {
        let file = dir.join(format!("hook-{id}.txt"));
        a.push("--ota-hook".to_owned());
        a.push(format!(
            "printf %s \"$MESHFLEET_OTA_VERSION\" > '{}'",
            file.display()
        ));
    }
    Proc::spawn(&format!("node {id}"), Some(dir), &a, timeout)
}

/// A `meshfleet node` for the gateway's rollout and rollback tests: an OTA receiver (role
/// `sensor`, `ESP32`) whose start-up `hook` decides whether an image is confirmed (after 1 s),
/// a status package every second, and telemetry to the gateway's node 900 every 2 s, which
/// names its OTA role: the gateway then knows it as a meshfleet node (rolled back by the
/// signed command, not by a re-offer).
pub fn telemetry_ota_node(dir: &Path, id: u32, mesh: u16, hook: &str, timeout: Duration) -> Proc {
    let connect = format!("127.0.0.1:{mesh}");
    let mut a = ota_receiver_args(dir, id, ["--connect", &connect], "sensor", "ESP32");
    a.extend(args(&[
        "--ota-hook",
        hook,
        "--status-interval",
        "1",
        "--telemetry-to",
        "900",
        "--telemetry-interval",
        "2",
    ]));
    Proc::spawn(&format!("node {id}"), Some(dir), &a, timeout)
}

/// Packs a 30 KB ESP32 image (its bytes depend on `version`) as `app-<version>.mfw` in `d`,
/// signed with `d/fleet.key`, and returns the artefact's bytes.
pub fn pack_version(d: &Path, version: &str) -> Vec<u8> {
    let image: Vec<u8> = (0..30_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ version.len() as u8)
        .chain(version.bytes())
        .collect();
    std::fs::write(d.join("app.bin"), image).unwrap();
    let out = format!("app-{version}.mfw");
    let o = pack(d, "app.bin", "ESP32", version, Some("fleet.key"), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::read(d.join(out)).unwrap()
}
