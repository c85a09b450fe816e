//! `meshfleet gateway --mqtt`: the bridge's birth (`online`, retained) on a real Mosquitto,
//! and its will (`offline`) when the gateway process is SIGKILLed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use meshfleet_mqtt::testbroker::{Broker, USERS};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_gateway_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Broker::start(dir.path()) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut o = MqttOptions::new("watcher", "127.0.0.1", broker.port);
    o.set_credentials("observer", USERS[3].1);
    let (client, mut el) = AsyncClient::new(o, 10);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    client
                        .subscribe("mesh/bridge/state", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let mut gw = Command::new(env!("CARGO_BIN_EXE_meshfleet"))
        .args(["gateway", "--node-id", "901"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--db")
        .arg(dir.path().join("gw.db"))
        .args(["--mqtt", &broker.url("gateway")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nothing retained yet on a fresh broker: the first message is the birth.
    assert_eq!(next(&mut rx).await, "online");
    Command::new("kill")
        .args(["-KILL", &gw.id().to_string()])
        .status()
        .unwrap();
    let _ = gw.wait();
    // The broker publishes the will as soon as the connection drops without a DISCONNECT.
    assert_eq!(next(&mut rx).await, "offline");
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a bridge state in time")
        .unwrap()
}
