//! Gateway-side configuration: registry bounds, health and alert thresholds, queries, probes.
//!
//! Every field has a default (`docs/monitoring.md` lists them with their reasons); a TOML or
//! JSON file need only name what it changes. Unknown fields are refused, so a typo is an
//! error rather than a silently ignored threshold.

/// Everything the gateway side can tune.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Most nodes kept in the registry.
    pub max_nodes: usize,
    /// Most nodes kept that were never seen in the mesh topology (known from reports only);
    /// the least recently heard of them are evicted first, so fake ids cannot push out real
    /// nodes.
    pub max_unconfirmed: usize,
    /// Report period assumed for a node until its own is learnt, seconds.
    pub report_interval_s: u32,
    /// A reporting node is silent after this many of its report periods without a report.
    pub silent_after_periods: u32,
    /// A node that left the topology is offline (alert) after this long away, seconds; a node
    /// that rebooted and rejoined meanwhile raises nothing.
    pub departure_grace_s: u32,
    /// Reports from one node closer together than this are dropped (counted) as a flood, ms.
    pub min_report_gap_ms: u32,
    /// This many reports dropped as a flood within a minute raise `message_flood`.
    pub flood_reports_per_min: u32,
    /// Messages sent per minute (from counters or telemetry) that raise `message_flood`.
    pub flood_tx_per_min: i64,
    /// Free heap that raises `low_memory`, bytes.
    pub low_memory_bytes: i64,
    /// Free heap that clears it, bytes (hysteresis).
    pub low_memory_clear_bytes: i64,
    /// Latency that raises `high_latency`, ms.
    pub high_latency_ms: i64,
    /// Latency that clears it, ms.
    pub high_latency_clear_ms: i64,
    /// Loss that raises `packet_loss`, percent.
    pub loss_pct: i64,
    /// Loss that clears it, percent.
    pub loss_clear_pct: i64,
    /// RSSI that raises `weak_signal`, dBm.
    pub weak_rssi_dbm: i64,
    /// RSSI that clears it, dBm.
    pub weak_rssi_clear_dbm: i64,
    /// Reboots within `reboot_window_s` that make a reboot loop.
    pub reboot_loop_count: u32,
    /// The reboot-loop window, seconds.
    pub reboot_window_s: u32,
    /// Most heap samples kept per node for the leak trend (spaced at least
    /// `leak_window_s / (leak_samples - 1)` apart).
    pub leak_samples: usize,
    /// The trend is fitted over the samples of the last `leak_window_s` seconds (at least 5
    /// samples spanning three quarters of it).
    pub leak_window_s: u32,
    /// Heap loss rate that is a leak, bytes per hour.
    pub leak_bytes_per_hour: i64,
    /// Least R² of the linear fit (how steady the fall must be), 0-1.
    pub leak_min_r2: f64,
    /// ... and the fitted fall over the samples' span must be at least this many bytes: the
    /// 604 package carries whole KiB, and with a healthy node's noise five to seven 604
    /// values sometimes line up (2 false `memory_leak` in 8,000 stock node-hours in the
    /// simulator's 1,000-node day before this rule).
    pub leak_min_fall_bytes: i64,
    /// Weight of a new RSSI sample in the node's baseline (EWMA), 0-1.
    pub link_ewma_alpha: f64,
    /// Samples needed before the baseline is trusted.
    pub link_min_samples: u32,
    /// Drop below the baseline that is a degradation, dB (at least).
    pub link_drop_db: f64,
    /// Drop below the baseline that is a degradation, in baseline standard deviations.
    pub link_drop_sigma: f64,
    /// Topology events within `churn_window_s` that raise `topology_churn`. An event is a
    /// subtree that left, rejoined or moved to another parent; a subtree that moves together
    /// counts once, whatever its size (one link flap is one event).
    pub churn_changes: u32,
    /// The churn window, seconds.
    pub churn_window_s: u32,
    /// Nodes cut off together that make a partition (fewer: individual `node_offline`).
    pub partition_min_nodes: usize,
    /// Consecutive evaluations a threshold condition must hold to raise.
    pub datapoints_to_alarm: u16,
    /// Consecutive evaluations it must be absent to clear.
    pub datapoints_to_clear: u16,
    /// An on-demand query gives up on a node after this long, seconds (5-10).
    pub query_timeout_s: u32,
    /// Most query requests outstanding at once.
    pub query_max_in_flight: usize,
    /// A node whose data is younger than this answers a query from the cache, seconds.
    pub cache_ttl_s: u32,
    /// Most queries running at once; more are refused.
    pub max_queries: usize,
    /// A node that sends no reports is probed (TIME_DELAY) at most this often, seconds.
    pub probe_interval_s: u32,
    /// Most probes sent per minute, mesh-wide.
    pub probes_per_min: u32,
    /// A probe without an answer after this long counts as lost, seconds.
    pub probe_timeout_s: u32,
    /// Consecutive lost probes that make a node in the topology silent.
    pub probe_losses_silent: u32,
    /// Most events queued for the caller; more are dropped (counted).
    pub max_events: usize,
    /// An alert an operator cleared by hand does not come back while its condition persists;
    /// it re-arms when the condition goes away, or after this long at the latest, seconds.
    pub rearm_after_clear_s: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            max_nodes: 10_000,
            max_unconfirmed: 1_024,
            report_interval_s: 300,
            silent_after_periods: 2,
            departure_grace_s: 60,
            min_report_gap_ms: 1_000,
            flood_reports_per_min: 10,
            flood_tx_per_min: 600,
            low_memory_bytes: 10 * 1024,
            low_memory_clear_bytes: 12 * 1024,
            high_latency_ms: 500,
            high_latency_clear_ms: 400,
            loss_pct: 10,
            loss_clear_pct: 7,
            weak_rssi_dbm: -80,
            weak_rssi_clear_dbm: -77,
            reboot_loop_count: 3,
            reboot_window_s: 1_800,
            leak_samples: 16,
            leak_window_s: 1_800,
            leak_bytes_per_hour: 4_096,
            leak_min_r2: 0.8,
            leak_min_fall_bytes: 3 * 1024,
            link_ewma_alpha: 0.05,
            link_min_samples: 8,
            link_drop_db: 10.0,
            link_drop_sigma: 4.0,
            churn_changes: 30,
            churn_window_s: 600,
            partition_min_nodes: 2,
            datapoints_to_alarm: 1,
            datapoints_to_clear: 2,
            query_timeout_s: 8,
            query_max_in_flight: 8,
            cache_ttl_s: 60,
            max_queries: 16,
            probe_interval_s: 300,
            probes_per_min: 30,
            probe_timeout_s: 10,
            probe_losses_silent: 3,
            max_events: 100_000,
            rearm_after_clear_s: 24 * 3600,
        }
    }
}
