//! The bridge's settings: the `[mqtt]` table of `meshfleet.toml`, or `--mqtt URL` on the
//! gateway's command line (the URL fills `url`; everything else keeps its default).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the bridge needs. Field names are the TOML keys (kebab-case).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host:port` or `mqtts://...` (TLS). Empty: the bridge is off.
    pub url: String,
    /// Topic prefix, without the trailing slash (`mesh` gives `mesh/status/nodes`).
    pub prefix: String,
    /// MQTT client id (default `meshfleet-gateway-<node id>`).
    pub client_id: Option<String>,
    /// User name (overrides the URL's).
    pub username: Option<String>,
    /// Password (prefer `password-file`; overrides the URL's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the broker's certificate (TLS; default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u64,
    /// First reconnect delay, milliseconds (doubles up to `reconnect-max-ms`).
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
    /// `<prefix>/status/nodes` (and `<prefix>/alerts`) every so many seconds (0: never).
    pub status_interval_s: u64,
    /// `status/nodes` carries every node (~260 bytes each), so its interval grows with the
    /// fleet: one `status-interval-s` per this many nodes (30 s up to 100 nodes, 300 s at
    /// 1,000 by default). 0: always `status-interval-s`.
    pub status_nodes_per_step: u64,
    /// `<prefix>/topology` every so many seconds (0: never).
    pub topology_interval_s: u64,
    /// `<prefix>/metrics` every so many seconds (0: never).
    pub metrics_interval_s: u64,
    /// `<prefix>/node/<id>` per node every so many seconds (0: off, the default).
    pub node_interval_s: u64,
    /// Periodic state messages held while the broker is away; beyond, the oldest go first
    /// (counted in `meshfleet_mqtt_state_dropped_total`).
    pub state_queue: usize,
    /// Home Assistant discovery.
    pub homeassistant: HomeAssistantConfig,
    /// OTA commands over MQTT.
    pub commands: CommandConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "mesh".into(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            keep_alive_s: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 60_000,
            status_interval_s: 30,
            status_nodes_per_step: 100,
            topology_interval_s: 60,
            metrics_interval_s: 60,
            node_interval_s: 0,
            state_queue: 256,
            homeassistant: HomeAssistantConfig::default(),
            commands: CommandConfig::default(),
        }
    }
}

/// Home Assistant MQTT device discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HomeAssistantConfig {
    /// Publish discovery configs.
    pub enabled: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// A node gone this long (seconds) loses its device in Home Assistant (an empty
    /// retained config).
    pub remove_after_s: u64,
    /// Let Home Assistant's `update` entity install a firmware. Home Assistant cannot sign
    /// commands, so this is off unless chosen, and then installs only an artefact already
    /// in the gateway's store (uploaded and verified there).
    pub allow_install: bool,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            remove_after_s: 24 * 3600,
            allow_install: false,
        }
    }
}

/// OTA commands over MQTT (`<prefix>/ota/request/<op>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommandConfig {
    /// Listen for commands at all.
    pub enabled: bool,
    /// Public keys (`meshfleet firmware keygen` format, one file each) whose signatures
    /// commands must carry.
    pub operator_keys: Vec<PathBuf>,
    /// Accept unsigned commands (only behind a broker ACL you trust; off by default).
    pub allow_unsigned: bool,
    /// A command's timestamp may differ from the gateway's clock by this much, seconds;
    /// nonces are remembered for twice as long (replay protection).
    pub window_s: u64,
    /// Largest command payload, bytes (larger ones get an error reply).
    pub max_payload: usize,
    /// Largest firmware fetched from a URL or streamed over MQTT, bytes.
    pub max_artefact: usize,
    /// Streamed uploads in progress at most (each up to `max-artefact`, held in memory).
    pub max_uploads: usize,
    /// A streamed upload with no piece for this long is dropped, seconds.
    pub upload_timeout_s: u64,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            operator_keys: Vec::new(),
            allow_unsigned: false,
            window_s: 300,
            max_payload: 64 * 1024,
            max_artefact: 16 * 1024 * 1024,
            max_uploads: 2,
            upload_timeout_s: 600,
        }
    }
}

/// What `url` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (default 1883, 8883 with TLS).
    pub port: u16,
    /// User name from the URL.
    pub username: Option<String>,
    /// Password from the URL.
    pub password: Option<String>,
}

/// Why a setting is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is not `mqtt[s]://[user[:pass]@]host[:port]`.
    #[error("bad MQTT URL {url:?}: {why}")]
    Url {
        /// The URL, password masked.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A file could not be read.
    #[error("{what} {path}: {why}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The prefix is empty or has wildcards.
    #[error("bad topic prefix {0:?}: it must be non-empty, without '+', '#' or a leading '/'")]
    Prefix(String),
}

/// Percent-decoding for the user and password parts (`%40` for `@` and so on).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl BrokerUrl {
    /// Parses `mqtt[s]://[user[:pass]@]host[:port]` (a trailing `/` is allowed).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |why| ConfigError::Url {
            url: mask(url),
            why,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else {
            return Err(bad("the scheme must be mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err(bad("no path or query is allowed"));
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => {
                let (u, p) = match a.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (a, None),
                };
                let u = percent_decode(u).ok_or_else(|| bad("bad percent-encoding"))?;
                let p = p
                    .map(|p| percent_decode(p).ok_or_else(|| bad("bad percent-encoding")))
                    .transpose()?;
                (Some(u).filter(|u| !u.is_empty()), p)
            }
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [v6]:port
            let (h, after) = h.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("junk after the address")),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self {
            tls,
            host,
            port,
            username,
            password,
        })
    }
}

/// The URL with its password replaced by `****` (for logs and errors).
pub fn mask(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((u, _)) => format!("{scheme}{u}:****@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl MqttConfig {
    /// A bridge to `url` with every other setting at its default.
    pub fn from_url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// Whether the bridge should run.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the URL and the prefix.
    pub fn validate(&self) -> Result<BrokerUrl, ConfigError> {
        let p = &self.prefix;
        if p.is_empty() || p.contains(['+', '#']) || p.starts_with('/') || p.ends_with('/') {
            return Err(ConfigError::Prefix(p.clone()));
        }
        BrokerUrl::parse(&self.url)
    }

    /// The password from `password`, the file or the URL (in that order).
    pub fn password(&self, url: &BrokerUrl) -> Result<Option<String>, ConfigError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                what: "password-file",
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            return Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()));
        }
        Ok(url.password.clone())
    }

    /// The keep-alive as a duration (at least 5 s: rumqttc's floor).
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s.max(5))
    }

    /// `<prefix>/<rest>`.
    pub fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// How many status ticks (`status-interval-s` each) apart `status/nodes` goes out for
    /// a fleet of `nodes` (`status-nodes-per-step`).
    pub fn status_nodes_every(&self, nodes: usize) -> u64 {
        match self.status_nodes_per_step {
            0 => 1,
            step => (nodes as u64).div_ceil(step).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_nodes_interval_grows_with_the_fleet() {
        let c = MqttConfig::default();
        assert_eq!(c.status_nodes_every(0), 1);
        assert_eq!(c.status_nodes_every(10), 1);
        assert_eq!(c.status_nodes_every(100), 1);
        assert_eq!(c.status_nodes_every(101), 2);
        assert_eq!(c.status_nodes_every(1000), 10);
        let off = MqttConfig {
            status_nodes_per_step: 0,
            ..MqttConfig::default()
        };
        assert_eq!(off.status_nodes_every(1000), 1);
    }

    #[test]
    fn urls() {
        let u = BrokerUrl::parse("mqtt://bob:s%40cret@broker.lan:1884").unwrap();
        assert_eq!(
            u,
            BrokerUrl {
                tls: false,
                host: "broker.lan".into(),
                port: 1884,
                username: Some("bob".into()),
                password: Some("s@cret".into()),
            }
        );
        let u = BrokerUrl::parse("mqtts://h").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:99/").unwrap().host, "::1");
        for bad in [
            "http://h:1",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://h:0",
            "mqtt://h/topic",
            "mqtt://u:%zz@h",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        let e = BrokerUrl::parse("http://u:pw@h").unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn prefix_is_checked() {
        for p in ["", "a/#", "/a", "a/", "+"] {
            let c = MqttConfig {
                prefix: p.into(),
                ..MqttConfig::from_url("mqtt://h")
            };
            assert!(matches!(c.validate(), Err(ConfigError::Prefix(_))), "{p}");
        }
        assert!(MqttConfig::from_url("mqtt://h").validate().is_ok());
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(mask("mqtt://u:p@h:1"), "mqtt://u:****@h:1");
        assert_eq!(mask("mqtt://h:1"), "mqtt://h:1");
    }
}
