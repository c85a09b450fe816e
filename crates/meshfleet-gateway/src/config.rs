//! The gateway's configuration: the `[gateway]` table of `meshfleet.toml`, with the same
//! names as the command line's flags (which override it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default HTTP address: loopback only, so nothing is exposed until someone decides to.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";

/// Everything the gateway process needs. Field names are the TOML keys (kebab-case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct GatewayConfig {
    /// Accept mesh connections here (like `meshfleet node --listen`).
    pub listen: Option<String>,
    /// Mesh nodes to keep a connection to (like `meshfleet node --connect`).
    pub connect: Vec<String>,
    /// The gateway's own node id on the mesh (default: random).
    pub node_id: Option<u32>,
    /// Whether the gateway is the mesh root (painlessMesh `setRoot`).
    pub root: bool,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// The SQLite database file (created if missing).
    pub db: PathBuf,
    /// Bearer token for mutating requests (prefer `token-file`: the config is often readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the bearer token (first line, trimmed).
    pub token_file: Option<PathBuf>,
    /// Require the token for reads too (health probes `/healthz`, `/readyz` stay open).
    pub read_auth: bool,
    /// Public key (from `meshfleet firmware keygen`) that uploaded artefacts must be signed
    /// with. Without it, uploads are refused: an unsigned image must never reach a fleet.
    pub firmware_key: Option<PathBuf>,
    /// Largest JSON request body, bytes.
    pub max_body: usize,
    /// Largest firmware upload, bytes.
    pub max_upload: usize,
    /// Longest a request may take, seconds (the event stream excepted).
    pub request_timeout: u64,
    /// Full-resolution history kept, days.
    pub raw_retention_days: u32,
    /// Hourly rollups kept, days.
    pub rollup_retention_days: u32,
    /// Database size cap, MiB: above it the oldest raw history goes first, then rollups.
    pub db_size_cap_mb: u64,
    /// A campaign's node with no progress for this long while the campaign runs ends
    /// `TIMED_OUT`, seconds.
    pub campaign_node_timeout: u64,
    /// A created campaign waits in `awaiting_approval` until someone approves it (REST
    /// `POST /campaigns/{id}/approve` with the write token, or a signed MQTT `approve`).
    pub require_approval: bool,
    /// The fleet monitor's thresholds (`[gateway.monitor]`; `docs/monitoring.md`).
    pub monitor: meshfleet_monitor::MonitorConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: None,
            connect: Vec::new(),
            node_id: None,
            root: false,
            http: DEFAULT_HTTP.parse().unwrap_or_else(|_| unreachable_addr()),
            db: PathBuf::from("meshfleet-gateway.db"),
            token: None,
            token_file: None,
            read_auth: false,
            firmware_key: None,
            max_body: 64 * 1024,
            max_upload: 16 * 1024 * 1024,
            request_timeout: 10,
            raw_retention_days: 7,
            rollup_retention_days: 90,
            db_size_cap_mb: 1024,
            campaign_node_timeout: 1800,
            require_approval: false,
            monitor: meshfleet_monitor::MonitorConfig::default(),
        }
    }
}

/// The default address is a literal that always parses; this only keeps `unwrap` out.
fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl GatewayConfig {
    /// [`GatewayConfig::request_timeout`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout.max(1))
    }

    /// The effective configuration as TOML, secrets masked (`--print-config`).
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        if shown.token.is_some() {
            shown.token = Some("********".into());
        }
        let mut out = String::from("[gateway]\n");
        // serde_json keeps field order; render the flat table by hand so no TOML crate is
        // needed here.
        let mut tables = String::new();
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&shown) {
            for (k, v) in map {
                match v {
                    serde_json::Value::Null => out.push_str(&format!("# {k} = (unset)\n")),
                    serde_json::Value::Object(sub) => {
                        tables.push_str(&format!("\n[gateway.{k}]\n"));
                        for (k, v) in sub {
                            tables.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                    other => out.push_str(&format!("{k} = {other}\n")),
                }
            }
        }
        out + &tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_binds_loopback() {
        let c = GatewayConfig::default();
        assert!(c.http.ip().is_loopback());
        assert_eq!(c.http.port(), 8080);
    }

    #[test]
    fn masked_toml_hides_the_token() {
        let c = GatewayConfig {
            token: Some("secret".into()),
            ..GatewayConfig::default()
        };
        let t = c.to_toml_masked();
        assert!(!t.contains("secret"), "{t}");
        assert!(t.contains("http = \"127.0.0.1:8080\""), "{t}");
    }
}
