//! Home Assistant MQTT device discovery: one retained
//! `<discovery prefix>/device/<node>/config` per node (device-based discovery, Home Assistant
//! 2024.11+), with the device (`dev`), the origin (`o`), availability (the bridge's state and
//! the node's presence, both must be online) and its components (`cmps`): sensors with
//! device classes, state classes and units Home Assistant accepts, and an `update` entity.
//!
//! The sensors read the node's retained state topic `<prefix>/node/<id>` ([`node_state`]);
//! the update entity reads `<prefix>/node/<id>/update` ([`update_state`]).

use meshfleet_gateway::model::NodeStatus;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::config::MqttConfig;

/// The node's state, flat, for the per-node topic and Home Assistant's templates.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The node.
    pub node_id: u32,
    /// In the mesh now.
    pub online: bool,
    /// Health label.
    pub health: &'static str,
    /// Last sign of life, ms since the epoch.
    pub last_seen: i64,
    /// Last sign of life, seconds since the epoch (for Home Assistant's timestamp sensor).
    pub last_seen_s: i64,
    /// Parent in the tree.
    pub parent: Option<u32>,
    /// OTA role.
    pub role: Option<String>,
    /// Hardware.
    pub hardware: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Seconds since boot.
    pub uptime: Option<u32>,
    /// Free heap, bytes.
    pub free_memory: Option<u32>,
    /// WiFi quality, percent.
    pub wifi_quality: Option<u8>,
    /// Latency, ms.
    pub latency_ms: Option<u16>,
    /// Packet loss, percent.
    pub packet_loss: Option<u8>,
    /// Status reports received.
    pub reports: u64,
}

/// [`NodeState`] of a registry record.
pub fn node_state(n: &NodeStatus) -> NodeState {
    let s = n.status.as_ref();
    NodeState {
        node_id: n.node_id,
        online: n.online,
        health: n.health.label(),
        last_seen: n.last_seen,
        last_seen_s: n.last_seen.div_euclid(1000),
        parent: n.parent,
        role: n.role.clone(),
        hardware: n.hardware.clone(),
        firmware: n.firmware.clone(),
        uptime: n.uptime,
        free_memory: n.free_memory,
        wifi_quality: s.map(|s| s.wifi_quality),
        latency_ms: s.map(|s| s.latency_ms),
        packet_loss: s.map(|s| s.packet_loss),
        reports: n.reports,
    }
}

/// What Home Assistant's `update` entity shows for one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdateState {
    /// The running firmware.
    pub installed_version: Option<String>,
    /// The newest firmware in the gateway's store for the node's role and hardware (the
    /// installed one if none is newer).
    pub latest_version: Option<String>,
    /// Shown as the entity's title.
    pub title: &'static str,
    /// An OTA for the node is running.
    pub in_progress: bool,
    /// Its progress, 0-100 (`null` while none runs).
    pub update_percentage: Option<u8>,
}

/// The `update` state for `n`: `latest` from the store, `progress` (0..1) while a campaign
/// updates it.
pub fn update_state(n: &NodeStatus, latest: Option<&str>, progress: Option<f64>) -> UpdateState {
    UpdateState {
        installed_version: n.firmware.clone(),
        latest_version: latest.map(str::to_owned).or_else(|| n.firmware.clone()),
        title: "meshfleet firmware",
        in_progress: progress.is_some(),
        update_percentage: progress.map(|p| (p.clamp(0.0, 1.0) * 100.0).round() as u8),
    }
}

/// The discovery topic of `node`.
pub fn config_topic(c: &MqttConfig, node: u32) -> String {
    format!("{}/device/{node}/config", c.homeassistant.discovery_prefix)
}

/// The per-node state topic.
pub fn node_topic(c: &MqttConfig, node: u32) -> String {
    c.topic(&format!("node/{node}"))
}

/// The update entity's state topic.
pub fn update_topic(c: &MqttConfig, node: u32) -> String {
    c.topic(&format!("node/{node}/update"))
}

/// The update entity's install command topic.
pub fn install_topic(c: &MqttConfig, node: u32) -> String {
    c.topic(&format!("ha/install/{node}"))
}

fn sensor(
    node: u32,
    key: &str,
    name: &str,
    template: &str,
    class: Option<&str>,
    state_class: Option<&str>,
    unit: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("p".into(), json!("sensor"));
    m.insert("unique_id".into(), json!(format!("meshfleet_{node}_{key}")));
    m.insert("object_id".into(), json!(format!("meshfleet_{node}_{key}")));
    m.insert("name".into(), json!(name));
    m.insert("value_template".into(), json!(template));
    if let Some(c) = class {
        m.insert("device_class".into(), json!(c));
    }
    if let Some(s) = state_class {
        m.insert("state_class".into(), json!(s));
    }
    if let Some(u) = unit {
        m.insert("unit_of_measurement".into(), json!(u));
    }
    Value::Object(m)
}

/// Health labels, the options of the `enum` health sensor.
pub const HEALTH_OPTIONS: [&str; 4] = ["healthy", "warning", "critical", "offline"];

/// The discovery config of one node (retained at [`config_topic`]).
pub fn discovery(c: &MqttConfig, n: &NodeStatus, gateway: u32) -> Value {
    let id = n.node_id;
    let state_topic = node_topic(c, id);
    let mut cmps = Map::new();
    let numeric = |key: &str, name: &str, field: &str, class: Option<&str>, unit: &str| {
        sensor(
            id,
            key,
            name,
            &format!("{{{{ value_json.{field} }}}}"),
            class,
            Some("measurement"),
            Some(unit),
        )
    };
    cmps.insert(
        "uptime".into(),
        numeric("uptime", "Uptime", "uptime", Some("duration"), "s"),
    );
    cmps.insert(
        "free_memory".into(),
        numeric(
            "free_memory",
            "Free memory",
            "freeMemory",
            Some("data_size"),
            "B",
        ),
    );
    cmps.insert(
        "wifi_quality".into(),
        numeric("wifi_quality", "WiFi quality", "wifiQuality", None, "%"),
    );
    cmps.insert(
        "latency".into(),
        numeric("latency", "Latency", "latencyMs", Some("duration"), "ms"),
    );
    cmps.insert(
        "packet_loss".into(),
        numeric("packet_loss", "Packet loss", "packetLoss", None, "%"),
    );
    let mut health = sensor(
        id,
        "health",
        "Health",
        "{{ value_json.health }}",
        Some("enum"),
        None,
        None,
    );
    health["options"] = json!(HEALTH_OPTIONS);
    cmps.insert("health".into(), health);
    cmps.insert(
        "last_seen".into(),
        sensor(
            id,
            "last_seen",
            "Last seen",
            "{{ as_datetime(value_json.lastSeenS) }}",
            Some("timestamp"),
            None,
            None,
        ),
    );
    let mut fw = sensor(
        id,
        "firmware",
        "Firmware",
        "{{ value_json.firmware }}",
        None,
        None,
        None,
    );
    fw["entity_category"] = json!("diagnostic");
    cmps.insert("firmware_version".into(), fw);
    let mut update = json!({
        "p": "update",
        "unique_id": format!("meshfleet_{id}_update"),
        "object_id": format!("meshfleet_{id}_update"),
        "name": "Firmware update",
        "device_class": "firmware",
        "state_topic": update_topic(c, id),
        "entity_category": "config",
    });
    if c.homeassistant.allow_install {
        update["command_topic"] = json!(install_topic(c, id));
        update["payload_install"] = json!("install");
    }
    cmps.insert("update".into(), update);
    let mut dev = json!({
        "identifiers": [format!("meshfleet_{id}")],
        "name": format!("Mesh node {id}"),
        "manufacturer": "meshfleet",
        "model": n.hardware.clone().unwrap_or_else(|| "painlessMesh node".into()),
        "serial_number": id.to_string(),
        "via_device": format!("meshfleet_gateway_{gateway}"),
    });
    if let Some(fw) = &n.firmware {
        dev["sw_version"] = json!(fw);
    }
    json!({
        "dev": dev,
        "o": {
            "name": "meshfleet",
            "sw_version": env!("CARGO_PKG_VERSION"),
            "support_url": "https://example.invalid/meshfleet",
        },
        "availability": [
            {"topic": c.topic("bridge/state")},
            {"topic": state_topic,
             "value_template": "{{ 'online' if value_json.online else 'offline' }}"},
        ],
        "availability_mode": "all",
        "state_topic": state_topic,
        "qos": 1,
        "cmps": Value::Object(cmps),
    })
}

/// The gateway itself as a device (the nodes' `via_device`).
pub fn gateway_discovery(c: &MqttConfig, gateway: u32) -> Value {
    json!({
        "dev": {
            "identifiers": [format!("meshfleet_gateway_{gateway}")],
            "name": format!("meshfleet gateway {gateway}"),
            "manufacturer": "meshfleet",
            "model": "meshfleet gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        },
        "o": {
            "name": "meshfleet",
            "sw_version": env!("CARGO_PKG_VERSION"),
            "support_url": "https://example.invalid/meshfleet",
        },
        "availability": [{"topic": c.topic("bridge/state")}],
        "state_topic": c.topic("status/nodes"),
        "qos": 1,
        "cmps": {
            "nodes": {
                "p": "sensor",
                "unique_id": format!("meshfleet_gateway_{gateway}_nodes"),
                "name": "Nodes",
                "value_template": "{{ value_json.totalNodes }}",
                "state_class": "measurement",
            },
            "online": {
                "p": "sensor",
                "unique_id": format!("meshfleet_gateway_{gateway}_online"),
                "name": "Nodes online",
                "value_template": "{{ value_json.online }}",
                "state_class": "measurement",
            },
        },
    })
}
