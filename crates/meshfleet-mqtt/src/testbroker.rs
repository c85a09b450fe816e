//! A real Mosquitto for tests and benchmarks: started on a free loopback port with a
//! generated config, password file and ACL (the ACL of `docs/mqtt.md`), persistence on so
//! QoS 1 sessions survive a restart. [`Broker::start`] returns `None` (after saying so on
//! stderr) when Mosquitto is not installed, unless `MESHFLEET_REQUIRE_MOSQUITTO` is set:
//! then it panics, so CI cannot pass by skipping.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Users in the generated password file, with their passwords.
pub const USERS: [(&str, &str); 4] = [
    ("gateway", "gateway-secret"),
    ("operator", "operator-secret"),
    ("homeassistant", "ha-secret"),
    ("observer", "observer-secret"),
];

/// The ACL (`docs/mqtt.md`), for prefix `mesh`.
pub const ACL: &str = "\
# The gateway: its own topics and Home Assistant discovery.
user gateway
topic readwrite mesh/#
topic readwrite homeassistant/#

# Operators: send commands, read replies and status; nothing else.
user operator
topic write mesh/ota/request/#
topic read mesh/ota/response/#
topic read mesh/ota/campaign/#
topic read mesh/ota/rollout/#
topic read mesh/bridge/state

# Home Assistant: read state and discovery, announce its birth, press install.
user homeassistant
topic read mesh/#
topic read homeassistant/#
topic write homeassistant/status
topic write mesh/ha/install/#

# Tests only: sees and sends everything.
user observer
topic readwrite #
";

fn find(name: &str, fallback: &str) -> Option<PathBuf> {
    if Path::new(fallback).exists() {
        return Some(fallback.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
    })
}

/// A running Mosquitto.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker in `dir`, or `None` if Mosquitto is missing (and not required).
    pub fn start(dir: &Path) -> Option<Self> {
        let (Some(bin), Some(passwd)) = (
            find("mosquitto", "/usr/sbin/mosquitto"),
            find("mosquitto_passwd", "/usr/bin/mosquitto_passwd"),
        ) else {
            if std::env::var_os("MESHFLEET_REQUIRE_MOSQUITTO").is_some() {
                panic!("mosquitto is not installed and MESHFLEET_REQUIRE_MOSQUITTO is set");
            }
            eprintln!("SKIPPED: mosquitto is not installed (scripts/setup.sh installs it)");
            return None;
        };
        let pw = dir.join("passwd");
        for (i, (user, pass)) in USERS.iter().enumerate() {
            let mut c = Command::new(&passwd);
            c.arg("-b");
            if i == 0 {
                c.arg("-c");
            }
            let st = c
                .arg(&pw)
                .arg(user)
                .arg(pass)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mosquitto_passwd runs");
            assert!(st.success(), "mosquitto_passwd failed");
        }
        std::fs::write(dir.join("acl"), ACL).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // `user root`: started as root (CI, containers), Mosquitto otherwise drops to the
        // `mosquitto` user, which cannot write into the 0700 temp dir: no log and, worse, no
        // persistence file, so a "restart" lost every persistent session and the outage
        // test passed only when the operator resubscribed before the gateway's outbox
        // flushed. As any other user the line has no effect.
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n\
             acl_file {acl}\npersistence true\npersistence_location {dir}/\n\
             autosave_interval 1\nmax_queued_messages 100000\nlog_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\nconnection_messages true\nlog_timestamp_format %H:%M:%S\n",
            pw = pw.display(),
            acl = dir.join("acl").display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut b = Self {
            port,
            dir: dir.to_owned(),
            bin,
            child: None,
        };
        b.restart();
        Some(b)
    }

    /// (Re)starts the process on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mosquitto did not start on port {}", self.port);
    }

    /// Stops it (SIGTERM: it saves its persistence file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// `mqtt://user:pass@127.0.0.1:port`.
    pub fn url(&self, user: &str) -> String {
        let pass = USERS
            .iter()
            .find(|(u, _)| *u == user)
            .map_or("", |(_, p)| p);
        format!("mqtt://{user}:{pass}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
