//! A small Chrome DevTools Protocol client for the dashboard tests: starts Debian's headless
//! `chromium` with a fresh profile, opens one page over a WebSocket (`tokio-tungstenite`),
//! evaluates scripts, dispatches input, takes screenshots, and records every console error,
//! uncaught exception and failed load the page reports.
//!
//! Why not `chromiumoxide`: its generated protocol crate takes minutes to compile on the
//! shared 2-core machine, and the tests need six commands of the protocol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// Where the browser is, or `None` (the caller skips loudly, unless CI requires it).
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MESHFLEET_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// The browser, or a skip: `None` only when chromium is missing and
/// `MESHFLEET_REQUIRE_CHROMIUM` is unset (CI sets it, so there a missing browser fails).
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    match chromium() {
        Some(p) => Some(p),
        None if std::env::var_os("MESHFLEET_REQUIRE_CHROMIUM").is_some() => {
            panic!("{test}: chromium is not installed but MESHFLEET_REQUIRE_CHROMIUM is set")
        }
        None => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED {test}: no chromium on PATH (apt-get install chromium).\n\
                 !!! Set MESHFLEET_REQUIRE_CHROMIUM=1 to make this a failure.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// A running headless browser with one page.
pub struct Browser {
    /// Killed on drop.
    _child: Child,
    _profile: tempfile::TempDir,
    out: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
    pending: Pending,
    next: AtomicU64,
    session: String,
    /// Console errors, exceptions and failed loads, as text.
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts `exe` headless with the flags CI uses and a fresh profile, and opens a page.
    pub async fn start(exe: &Path, width: u32, height: u32) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(u) = l.split("DevTools listening on ").nth(1) {
                    return Some(u.trim().to_owned());
                }
            }
            None
        })
        .await
        .expect("chromium did not print its DevTools address within 30 s")
        .expect("chromium exited before listening");
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        let (out, mut inp) = ws.split();
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = Arc::new(tokio::sync::Mutex::new(out));
        {
            let pending = pending.clone();
            let errors = errors.clone();
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = inp.next().await {
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let r = match v.get("error") {
                                Some(e) => Err(e.to_string()),
                                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                            };
                            let _ = tx.send(r);
                        }
                        continue;
                    }
                    let p = &v["params"];
                    match v["method"].as_str().unwrap_or("") {
                        "Runtime.exceptionThrown" => errors.lock().unwrap().push(format!(
                            "exception: {}",
                            p["exceptionDetails"]["exception"]["description"]
                                .as_str()
                                .unwrap_or_else(|| p["exceptionDetails"]["text"]
                                    .as_str()
                                    .unwrap_or("?"))
                        )),
                        "Runtime.consoleAPICalled" => {
                            let text = p["args"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|x| {
                                            x["value"]
                                                .as_str()
                                                .map(str::to_owned)
                                                .or_else(|| {
                                                    x["description"].as_str().map(str::to_owned)
                                                })
                                                .unwrap_or_else(|| x["value"].to_string())
                                        })
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .unwrap_or_default();
                            if p["type"] == "error" || p["type"] == "assert" {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("console.error: {text}"));
                            }
                        }
                        "Log.entryAdded" if p["entry"]["level"] == "error" => {
                            errors.lock().unwrap().push(format!(
                                "log: {} {}",
                                p["entry"]["text"].as_str().unwrap_or("?"),
                                p["entry"]["url"].as_str().unwrap_or("")
                            ));
                        }
                        "Page.javascriptDialogOpening" => {
                            // Accept dialogs (confirm/prompt) so a test never hangs on one.
                            let session = v["sessionId"].as_str().unwrap_or("").to_owned();
                            let msg = json!({"id": 0, "sessionId": session,
                                "method": "Page.handleJavaScriptDialog",
                                "params": {"accept": true, "promptText": ""}});
                            let _ = out.lock().await.send(Message::text(msg.to_string())).await;
                        }
                        _ => {}
                    }
                }
            });
        }
        let mut b = Self {
            _child: child,
            _profile: profile,
            out,
            pending,
            next: AtomicU64::new(1),
            session: String::new(),
            errors,
        };
        let t = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = t["targetId"].as_str().unwrap().to_owned();
        let s = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = s["sessionId"].as_str().unwrap().to_owned();
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(m, json!({})).await;
        }
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// A protocol command on the page (on the browser before a page is attached).
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A protocol command; its error as text.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        self.out
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| format!("{method}: no answer in 60 s"))?
            .map_err(|_| "browser gone".to_owned())?
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its JSON value.
    pub async fn eval(&self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating `{expr}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` every 50 ms until it is truthy; returns its value, or panics after `secs`.
    pub async fn wait_for(&self, what: &str, expr: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {secs} s waiting for {what} (`{expr}` = {v})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url` and waits for the load to finish.
    pub async fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("the page to load", "document.readyState === 'complete'", 30)
            .await;
    }

    /// Sets the viewport (a phone: `mobile`).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Saves a PNG of the viewport to `target/screenshots/<name>.png`; returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// A mouse event at page coordinates.
    pub async fn mouse(&self, kind: &str, x: f64, y: f64, buttons: u32) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": if buttons > 0 || kind != "mouseMoved" { "left" } else { "none" },
                   "buttons": buttons, "clickCount": 1}),
        )
        .await;
    }

    /// Presses and releases a key (`"+"`, `"Enter"`, `"ArrowDown"`...) in the focused element.
    pub async fn key(&self, key: &str) {
        let (code, text, vk) = match key {
            "Enter" => ("Enter", "\r", 13),
            "ArrowDown" => ("ArrowDown", "", 40),
            "ArrowUp" => ("ArrowUp", "", 38),
            "+" => ("Equal", "+", 187),
            "-" => ("Minus", "-", 189),
            other => (other, other, 0),
        };
        let kind = if text.is_empty() {
            "rawKeyDown"
        } else {
            "keyDown"
        };
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": key, "code": code, "text": text, "windowsVirtualKeyCode": vk}),
        )
        .await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}),
        )
        .await;
    }

    /// Errors the page reported so far (console errors, exceptions, failed loads).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}
