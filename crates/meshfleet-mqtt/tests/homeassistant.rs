//! Home Assistant device discovery against a real Mosquitto: a 1,000-node fleet announced
//! within 5 s, every payload checked against Home Assistant's documented schema, re-sent on
//! Home Assistant's birth, departed nodes removed.
//!
//! The checks are written from Home Assistant's documentation (MQTT integration, "Device
//! discovery payload"; sensor and update entity docs), not from our code:
//! * device discovery needs `dev` (with `identifiers` or `connections`), `o` (with `name`)
//!   and `cmps`; every component needs `p` (platform) and a `unique_id`;
//! * sensor `device_class` values and their allowed units: `duration` (d, h, min, s, ms),
//!   `data_size` (bit ... YiB), `enum` (no unit, no state class, needs `options`),
//!   `timestamp` (no unit, no state class); `state_class` is `measurement`, `total` or
//!   `total_increasing`;
//! * the update entity's `device_class` is `firmware` (or absent); `command_topic` only
//!   with `payload_install`;
//! * `availability` entries need a `topic`; `availability_mode` is all, any or latest.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::collapsible_match,
    clippy::type_complexity
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DATA_SIZE_UNITS: [&str; 21] = [
    "bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB", "KiB",
    "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB",
];
const DURATION_UNITS: [&str; 5] = ["d", "h", "min", "s", "ms"];
const STATE_CLASSES: [&str; 3] = ["measurement", "total", "total_increasing"];
/// The sensor device classes this bridge may use (a subset of Home Assistant's list).
const SENSOR_CLASSES: [&str; 4] = ["duration", "data_size", "enum", "timestamp"];
const PLATFORMS: [&str; 2] = ["sensor", "update"];

fn check_payload(topic: &str, v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not an object")?;
    let dev = obj.get("dev").and_then(Value::as_object).ok_or("no dev")?;
    let ids = dev
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or("dev without identifiers")?;
    if ids.is_empty() || !ids.iter().all(Value::is_string) {
        return Err("dev.identifiers must be non-empty strings".into());
    }
    let o = obj.get("o").and_then(Value::as_object).ok_or("no o")?;
    if !o.get("name").is_some_and(Value::is_string) {
        return Err("o.name missing".into());
    }
    if let Some(av) = obj.get("availability") {
        for a in av.as_array().ok_or("availability must be a list")? {
            if !a.get("topic").is_some_and(Value::is_string) {
                return Err("availability entry without topic".into());
            }
        }
    }
    if let Some(m) = obj.get("availability_mode") {
        if !["all", "any", "latest"].contains(&m.as_str().unwrap_or("")) {
            return Err(format!("availability_mode {m}"));
        }
    }
    let cmps = obj
        .get("cmps")
        .and_then(Value::as_object)
        .ok_or("no cmps")?;
    if cmps.is_empty() {
        return Err("empty cmps".into());
    }
    let mut uids = std::collections::HashSet::new();
    for (key, c) in cmps {
        let p = c
            .get("p")
            .and_then(Value::as_str)
            .ok_or(format!("{key}: no p"))?;
        if !PLATFORMS.contains(&p) {
            return Err(format!("{key}: platform {p}"));
        }
        let uid = c
            .get("unique_id")
            .and_then(Value::as_str)
            .ok_or(format!("{key}: no unique_id"))?;
        if !uids.insert(uid.to_owned()) {
            return Err(format!("{key}: duplicate unique_id"));
        }
        let class = c.get("device_class").and_then(Value::as_str);
        let unit = c.get("unit_of_measurement").and_then(Value::as_str);
        let state_class = c.get("state_class").and_then(Value::as_str);
        // A state topic: the component's or the shared one.
        if c.get("state_topic").is_none() && obj.get("state_topic").is_none() {
            return Err(format!("{key}: no state_topic"));
        }
        match p {
            "sensor" => {
                if let Some(sc) = state_class {
                    if !STATE_CLASSES.contains(&sc) {
                        return Err(format!("{key}: state_class {sc}"));
                    }
                }
                match class {
                    None => {}
                    Some(cl) if !SENSOR_CLASSES.contains(&cl) => {
                        return Err(format!("{key}: device_class {cl}"))
                    }
                    Some("duration") => {
                        if !unit.is_some_and(|u| DURATION_UNITS.contains(&u)) {
                            return Err(format!("{key}: duration unit {unit:?}"));
                        }
                    }
                    Some("data_size") => {
                        if !unit.is_some_and(|u| DATA_SIZE_UNITS.contains(&u)) {
                            return Err(format!("{key}: data_size unit {unit:?}"));
                        }
                    }
                    Some("enum") => {
                        if unit.is_some() || state_class.is_some() {
                            return Err(format!("{key}: enum with unit or state_class"));
                        }
                        let opts = c.get("options").and_then(Value::as_array);
                        if !opts.is_some_and(|o| !o.is_empty()) {
                            return Err(format!("{key}: enum without options"));
                        }
                    }
                    Some(_) => {
                        // timestamp
                        if unit.is_some() || state_class.is_some() {
                            return Err(format!("{key}: timestamp with unit or state_class"));
                        }
                    }
                }
                if !c.get("value_template").is_some_and(Value::is_string) {
                    return Err(format!("{key}: sensor without value_template"));
                }
            }
            _ => {
                if class.is_some_and(|c| c != "firmware") {
                    return Err(format!("{key}: update device_class {class:?}"));
                }
                if c.get("command_topic").is_some() && c.get("payload_install").is_none() {
                    return Err(format!("{key}: command_topic without payload_install"));
                }
            }
        }
    }
    let _ = topic;
    Ok(())
}

fn configs(m: &[Msg]) -> Vec<&Msg> {
    m.iter()
        .filter(|x| x.topic.starts_with("homeassistant/device/") && x.topic.ends_with("/config"))
        .collect()
}

/// A gateway with Home Assistant discovery on: `nodes` seeded, the bridge's config changed
/// by `tweak`, an observer (user `observer`) on `topics`.
struct Ha {
    obs: Observer,
    gw: Gw,
    broker: Broker,
    /// Taken just before the gateway started.
    started: Instant,
    _d: tempfile::TempDir,
}

impl Ha {
    /// `None` without Mosquitto.
    async fn start(
        nodes: Vec<meshfleet_gateway::model::NodeStatus>,
        topics: &[&str],
        tweak: fn(&mut meshfleet_mqtt::MqttConfig),
    ) -> Option<Self> {
        let (d, dir) = tempdir();
        let broker = Broker::start(&dir)?;
        seed_nodes(&dir, nodes);
        let obs = Observer::connect(broker.port, "ha-obs", "observer", topics, true).await;
        let mut cfg = mqtt_config(&broker);
        cfg.homeassistant.enabled = true;
        tweak(&mut cfg);
        let started = Instant::now();
        let gw = Gw::start(&dir, cfg).await;
        Some(Self {
            obs,
            gw,
            broker,
            started,
            _d: d,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_node_discovery_is_fast_and_valid() {
    let seeded = nodes(1000, meshfleet_gateway::now_millis());
    let Some(h) = Ha::start(seeded, &["homeassistant/#"], |c| c.status_interval_s = 30).await
    else {
        return;
    };
    let (obs, started) = (&h.obs, h.started);
    let m = obs
        .wait("1,001 discovery configs", 30, |m| configs(m).len() >= 1001)
        .await;
    let last = configs(&m).iter().map(|x| x.at).max().unwrap();
    let elapsed = last - started;
    eprintln!("1,000-node discovery: 1,001 configs received {elapsed:?} after the gateway started");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let mut bytes = 0;
    for c in configs(&m) {
        assert!(c.retain || c.at > started, "retained");
        bytes += c.payload.len();
        let v = c.json();
        if let Err(e) = check_payload(&c.topic, &v) {
            panic!("{}: {e}\n{v:#}", c.topic);
        }
    }
    eprintln!("discovery bytes: {bytes} ({} per node)", bytes / 1001);
    let node = m
        .iter()
        .find(|x| x.topic == "homeassistant/device/1000/config")
        .unwrap()
        .json();
    assert_eq!(node["dev"]["identifiers"][0], "meshfleet_1000");
    assert_eq!(node["cmps"]["free_memory"]["device_class"], "data_size");
    assert_eq!(node["cmps"]["update"]["p"], "update");
    assert!(
        node["cmps"]["update"].get("command_topic").is_none(),
        "no install command unless allowed"
    );

    // Home Assistant restarts: its birth message brings every config again.
    let before = configs(&obs.messages()).len();
    let ha = Observer::connect(
        h.broker.port,
        "ha",
        "homeassistant",
        &["mesh/node/1000/update"],
        true,
    )
    .await;
    ha.publish("homeassistant/status", "online").await;
    obs.wait("configs again", 10, |m| configs(m).len() >= before + 1001)
        .await;
    // The update entity's state: installed and latest version.
    let u = ha
        .wait("update state", 10, |m| !m.is_empty())
        .await
        .last()
        .unwrap()
        .json();
    assert_eq!(u["installed_version"], "1.4.1", "{u}");
    assert_eq!(u["in_progress"], false);
    h.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_nodes_are_removed_and_install_needs_the_setting() {
    let now = meshfleet_gateway::now_millis();
    let mut ns = nodes(2, now);
    // Node 1001 left two minutes ago; the removal time is one minute.
    ns[1].online = false;
    ns[1].last_seen = now - 120_000;
    let Some(h) = Ha::start(ns, &["homeassistant/#", "mesh/#"], |c| {
        c.homeassistant.remove_after_s = 60;
        c.homeassistant.allow_install = true;
    })
    .await
    else {
        return;
    };
    let obs = &h.obs;
    let m = obs
        .wait("node 1000's config and 1001's removal", 10, |m| {
            m.iter()
                .any(|x| x.topic == "homeassistant/device/1000/config")
                && m.iter()
                    .any(|x| x.topic == "homeassistant/device/1001/config")
        })
        .await;
    let gone = m
        .iter()
        .find(|x| x.topic == "homeassistant/device/1001/config")
        .unwrap();
    assert!(
        gone.payload.is_empty(),
        "an empty retained config removes the device"
    );
    let kept = m
        .iter()
        .find(|x| x.topic == "homeassistant/device/1000/config")
        .unwrap()
        .json();
    check_payload("1000", &kept).unwrap();
    assert_eq!(
        kept["cmps"]["update"]["command_topic"],
        "mesh/ha/install/1000"
    );

    // The install button with no artefact in the store: refused, audited, nothing created.
    let ha = Observer::connect(h.broker.port, "ha", "homeassistant", &[], true).await;
    ha.publish("mesh/ha/install/1000", "install").await;
    let shared = h.gw.shared().clone();
    let mut audited = Vec::new();
    for _ in 0..100 {
        audited = shared.stores.audit.recent(10).await.unwrap();
        if audited.iter().any(|a| a.action == "mqtt.install") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = audited
        .iter()
        .find(|a| a.action == "mqtt.install")
        .expect("audited");
    assert_eq!(a.actor, "mqtt:homeassistant");
    assert!(a.target.contains("unknown_artefact"), "{a:?}");
    assert!(shared.campaigns.list().await.unwrap().is_empty());
    h.gw.stop().await;
}

/// The checks above can fail: each mistake Home Assistant would reject is caught.
#[test]
fn schema_checks_catch_mistakes() {
    let cfg = meshfleet_mqtt::MqttConfig::from_url("mqtt://h");
    let n = &nodes(1, 0)[0];
    let good = meshfleet_mqtt::ha::discovery(&cfg, n, 1);
    check_payload("good", &good).unwrap();
    let mistakes: [(&str, fn(&mut Value)); 9] = [
        ("no dev", |v| {
            v.as_object_mut().unwrap().remove("dev");
        }),
        ("no identifiers", |v| {
            v["dev"].as_object_mut().unwrap().remove("identifiers");
        }),
        ("no origin name", |v| {
            v["o"].as_object_mut().unwrap().remove("name");
        }),
        ("no platform", |v| {
            v["cmps"]["uptime"].as_object_mut().unwrap().remove("p");
        }),
        ("no unique_id", |v| {
            v["cmps"]["uptime"]
                .as_object_mut()
                .unwrap()
                .remove("unique_id");
        }),
        ("bad duration unit", |v| {
            v["cmps"]["uptime"]["unit_of_measurement"] = "seconds".into()
        }),
        ("bad data_size unit", |v| {
            v["cmps"]["free_memory"]["unit_of_measurement"] = "kb".into()
        }),
        ("enum with a state class", |v| {
            v["cmps"]["health"]["state_class"] = "measurement".into()
        }),
        ("unknown device class", |v| {
            v["cmps"]["wifi_quality"]["device_class"] = "wifi".into()
        }),
    ];
    for (what, f) in mistakes {
        let mut v = good.clone();
        f(&mut v);
        assert!(check_payload(what, &v).is_err(), "{what} not caught");
    }
}

/// Stores a `version` artefact for (sensor, esp32), signed by a fresh key (nothing here
/// checks the signer), as an upload would; its id.
async fn store_artefact(gw: &Gw, version: &str) -> String {
    store(gw, &keygen(), version).await.0
}

/// A node that says no role or hardware in telemetry (no `--telemetry-to`, or a stock
/// node): once a campaign has updated it, Home Assistant's device entry names its hardware
/// and its `update` entity offers the newest stored firmware for the campaign artefact's
/// role and hardware. Before, the model is the generic one and `latest_version` is the
/// installed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_telemetry_gets_its_role_and_hardware_from_what_the_gateway_knows() {
    let now = meshfleet_gateway::now_millis();
    let mut ns = nodes(2, now);
    ns[1].role = None;
    ns[1].hardware = None;
    let topics = ["homeassistant/device/1001/config", "mesh/node/1001/#"];
    let Some(h) = Ha::start(ns, &topics, |_| {}).await else {
        return;
    };
    let (obs, gw) = (&h.obs, &h.gw);
    let config = "homeassistant/device/1001/config";
    let m = obs
        .wait("1001's config and update state", 10, |m| {
            m.iter().any(|x| x.topic == config)
                && m.iter().any(|x| x.topic == "mesh/node/1001/update")
        })
        .await;
    let first = m.iter().find(|x| x.topic == config).unwrap().json();
    assert_eq!(first["dev"]["model"], "painlessMesh node", "{first}");
    let u = m
        .iter()
        .rfind(|x| x.topic == "mesh/node/1001/update")
        .unwrap()
        .json();
    assert_eq!(u["latest_version"], "1.4.1", "nothing known yet: {u}");

    // A campaign of 1.4.1 (sensor, esp32) for it: it reports 1.4.1, so it SUCCEEDED. Then
    // 2.0.0 for (sensor, esp32) is stored.
    let a = store_artefact(gw, "1.4.1").await;
    let c = gw
        .shared()
        .campaigns
        .create(
            meshfleet_gateway::campaign::CampaignSpec {
                artefact: a,
                targets: meshfleet_gateway::campaign::Targets::Nodes(vec![1001]),
                strategy: meshfleet_gateway::campaign::CampaignStrategy::Auto,
                name: None,
                start: true,
                start_at: None,
                window: None,
            },
            "test",
        )
        .await
        .unwrap();
    store_artefact(gw, "2.0.0").await;
    let m = obs
        .wait(
            "1001 announced again with its hardware, 2.0.0 offered",
            15,
            |m| {
                m.iter()
                    .any(|x| x.topic == config && x.json()["dev"]["model"] == "esp32")
                    && m.iter().any(|x| {
                        x.topic == "mesh/node/1001/update" && x.json()["latest_version"] == "2.0.0"
                    })
            },
        )
        .await;
    let again = m.iter().rfind(|x| x.topic == config).unwrap().json();
    check_payload("1001", &again).unwrap();
    let state = m
        .iter()
        .rfind(|x| x.topic == "mesh/node/1001")
        .unwrap()
        .json();
    assert_eq!(state["role"], "sensor", "{state}");
    assert_eq!(
        gw.shared().campaigns.get(&c.id).await.unwrap().nodes[0].state,
        meshfleet_gateway::campaign::NodeState::Succeeded
    );
    // The registry itself is unchanged: a rollout still counts it as a stock node.
    assert_eq!(gw.shared().registry.get(1001).unwrap().role, None);
    h.gw.stop().await;
}
