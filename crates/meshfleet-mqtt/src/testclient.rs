//! An MQTT client for tests (the gateway's own tests, the CLI's end-to-end tests): it
//! connects as one of [`crate::testbroker::USERS`], subscribes, records every message it
//! receives in order, and waits for conditions on them. One copy for every test crate.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::task::JoinHandle;

use crate::testbroker::USERS;

/// One received message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When it arrived.
    pub at: Instant,
    /// When it arrived, Unix ms (to compare with times the gateway gives).
    pub at_ms: i64,
}

impl Msg {
    /// The payload as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// What a timed-out wait prints besides the messages (a gateway's log, say).
type Context = Arc<dyn Fn() -> String + Send + Sync>;

/// A test client recording what it receives on its topics.
pub struct Observer {
    pub client: AsyncClient,
    pub got: Arc<Mutex<Vec<Msg>>>,
    /// PUBACKs received: the broker has taken a QoS 1 publish of ours.
    acks: Arc<AtomicU64>,
    task: JoinHandle<()>,
    context: Option<Context>,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Observer {
    /// Connects to the broker on `port` as `user` (clean session or not) and subscribes to
    /// `topics` (QoS 1); returns once subscribed.
    pub async fn connect(port: u16, id: &str, user: &str, topics: &[&str], clean: bool) -> Self {
        let pass = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(user, pass);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(32 << 20, 32 << 20);
        let (client, mut el) = AsyncClient::new(o, 4096);
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let acks = Arc::new(AtomicU64::new(0));
        let a = acks.clone();
        let c = client.clone();
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        for t in &topics {
                            c.subscribe(t.clone(), QoS::AtLeastOnce).await.unwrap();
                        }
                        if topics.is_empty() {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => g.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                        at_ms: unix_ms(),
                    }),
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("observer subscribed")
            .unwrap();
        Self {
            client,
            got,
            acks,
            task,
            context: None,
        }
    }

    /// What a timed-out wait prints too (a gateway's log, say).
    #[must_use]
    pub fn with_context(mut self, f: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.context = Some(Arc::new(f));
        self
    }

    /// Everything received so far, in order.
    pub fn messages(&self) -> Vec<Msg> {
        self.got.lock().unwrap().clone()
    }

    /// What was received on `topic`, in order.
    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }

    /// Waits until `f` holds on what was received; panics after `secs` with what came and
    /// the context.
    pub async fn wait(&self, what: &str, secs: u64, f: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if f(&m) {
                return m;
            }
            if Instant::now() > deadline {
                let topics: Vec<_> = m.iter().map(|m| m.topic.clone()).take(30).collect();
                let context = self.context.as_ref().map(|c| c()).unwrap_or_default();
                panic!(
                    "timed out waiting for {what}; got {} messages: {topics:?}\n{context}",
                    m.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the reply on `<prefix>/ota/response/<transaction>` (prefix `mesh`) and
    /// returns it as JSON.
    pub async fn reply(&self, transaction: &str, secs: u64) -> serde_json::Value {
        let topic = format!("mesh/ota/response/{transaction}");
        self.wait(&topic, secs, |m| m.iter().any(|x| x.topic == topic))
            .await;
        self.on(&topic).pop().unwrap().json()
    }

    /// Publishes `payload` on `topic`, QoS 1, not retained.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }
}

impl Observer {
    /// Publishes like [`Observer::publish`] and returns once the broker has acknowledged it
    /// (PUBACK): the broker has then dealt with it, so whatever it forwards of it reaches a
    /// subscriber before anything published after this returns. A broker that refuses it by
    /// its ACL still acknowledges it (MQTT 3.1.1), which makes this the barrier for "the
    /// broker dropped it". Meant for one publish at a time on this client.
    pub async fn publish_acked(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let before = self.acks.load(Ordering::SeqCst);
        self.publish(topic, payload).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.acks.load(Ordering::SeqCst) <= before {
            assert!(
                Instant::now() < deadline,
                "no PUBACK for {topic} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
