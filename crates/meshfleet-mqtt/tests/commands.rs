//! OTA commands over MQTT against a real Mosquitto: bad commands are refused with a reply
//! and change nothing; a signed create-by-URL / start / pause / status run works, with
//! the retained campaign status matching the gateway's own view.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshfleet_firmware::{pack, PackOptions, Version};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator's subscriptions: replies and campaign status.
const OPERATOR: &[&str] = &["mesh/ota/response/#", "mesh/ota/campaign/#"];

/// Three seeded nodes, the operator on [`OPERATOR`].
async fn setup() -> Option<Commanded> {
    Commanded::start(Opts::nodes(3).topics(OPERATOR)).await
}

/// Serves `body` over HTTP once per connection, forever.
async fn http_server(body: Vec<u8>) -> String {
    held_http_server(body, None).await
}

/// A download the test holds: each request is told to `seen`, then answered once `release`
/// is notified.
type Hold = (
    tokio::sync::mpsc::UnboundedSender<()>,
    std::sync::Arc<tokio::sync::Notify>,
);

/// Serves `body` over HTTP once per connection, forever; with `hold`, each answer waits
/// for its release (a slow download).
async fn held_http_server(body: Vec<u8>, hold: Option<Hold>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (body, hold) = (body.clone(), hold.clone());
            tokio::spawn(async move {
                let mut b = [0u8; 2048];
                let _ = s.read(&mut b).await;
                if let Some((seen, release)) = hold {
                    let _ = seen.send(());
                    release.notified().await;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/sensor-1.5.0.mfw")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_with_a_reply_and_change_nothing() {
    let Some(s) = setup().await else { return };
    let (op, key) = (&s.op, &s.op_key);
    let create = json!({"create": {"artefact": "ab".repeat(32), "targets": {"all": true}}});

    // Unsigned.
    op.publish(
        "mesh/ota/request/create",
        command("create", "t-unsigned", create.clone()).to_string(),
    )
    .await;
    let r = s.reply("t-unsigned").await;
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (json!(false), json!("unsigned")),
        "{r}"
    );
    assert_eq!(r["transaction"], "t-unsigned");

    // Signed by a key that is not an operator's.
    let other = keygen();
    op.publish(
        "mesh/ota/request/create",
        meshfleet_mqtt::sign_command(&other, &command("create", "t-forged", create.clone())),
    )
    .await;
    assert_eq!(s.reply("t-forged").await["error"]["code"], "bad_signature");

    // Tampered after signing.
    let signed = meshfleet_mqtt::sign_command(key, &command("list", "t-tamper", json!({})));
    let tampered = signed.replace("t-tamper", "t-tampr2");
    op.publish("mesh/ota/request/list", tampered).await;
    assert_eq!(s.reply("t-tampr2").await["error"]["code"], "bad_signature");

    // Replayed: the same signed bytes twice.
    let once = meshfleet_mqtt::sign_command(key, &command("list", "t-replay", json!({})));
    op.publish("mesh/ota/request/list", once.clone()).await;
    assert_eq!(s.reply("t-replay").await["ok"], true);
    op.clear();
    op.publish("mesh/ota/request/list", once).await;
    assert_eq!(s.reply("t-replay").await["error"]["code"], "replayed");

    // Stale: an hour old.
    let mut old = command("list", "t-stale", json!({}));
    old["ts"] = json!(meshfleet_gateway::now_millis() - 3_600_000);
    op.publish(
        "mesh/ota/request/list",
        meshfleet_mqtt::sign_command(key, &old),
    )
    .await;
    assert_eq!(s.reply("t-stale").await["error"]["code"], "stale");

    // Malformed JSON without a readable transaction: the shared error topic.
    op.publish("mesh/ota/request/create", "{not json").await;
    let r = s.reply("_invalid").await;
    assert_eq!(r["error"]["code"], "bad_json");
    assert_eq!(r["transaction"], Value::Null);

    // Wrong types: ts as a string, targets as a number.
    let mut wrong = command("create", "t-types", create.clone());
    wrong["ts"] = json!("now");
    op.publish(
        "mesh/ota/request/create",
        meshfleet_mqtt::sign_command(key, &wrong),
    )
    .await;
    assert_eq!(s.reply("t-types").await["error"]["code"], "bad_command");
    s.send(
        "create",
        "t-types2",
        json!({"create": {"artefact": "ab".repeat(32), "targets": 5}}),
    )
    .await;
    assert_eq!(s.reply("t-types2").await["error"]["code"], "bad_command");

    // Signed for one operation, sent on another's topic.
    op.publish(
        "mesh/ota/request/cancel",
        meshfleet_mqtt::sign_command(
            key,
            &command("start", "t-swap", json!({"campaign": "c-000001"})),
        ),
    )
    .await;
    assert_eq!(s.reply("t-swap").await["error"]["code"], "op_mismatch");

    // 10 MB.
    let mut big = br#"{"transaction":"t-big","pad":""#.to_vec();
    big.resize(10 * 1024 * 1024, b'x');
    big.extend_from_slice(b"\"}");
    op.publish("mesh/ota/request/create", big).await;
    let r = s.reply("t-big").await;
    assert_eq!(r["error"]["code"], "too_large", "{r}");

    // An unknown artefact (signed, well-formed): refused by the campaign service.
    s.send("create", "t-noart", create.clone()).await;
    assert_eq!(
        s.reply("t-noart").await["error"]["code"],
        "unknown_artefact"
    );

    // Rollback without the signed rollback intent (`tests/rollback.rs` has the rest).
    s.send("rollback", "t-rb", json!({"campaign": "c-000001"}))
        .await;
    assert_eq!(s.reply("t-rb").await["error"]["code"], "bad_command");

    // A client the ACL does not let write commands (Home Assistant's user): the broker
    // drops it; the gateway never sees it.
    let ha = Observer::connect(s.broker.port, "ha", "homeassistant", &[], true).await;
    ha.publish_acked(
        "mesh/ota/request/list",
        meshfleet_mqtt::sign_command(key, &command("list", "t-acl", json!({}))),
    )
    .await;
    // A client with a wrong password is not even connected.
    let mut bad = rumqttc::MqttOptions::new("intruder", "127.0.0.1", s.broker.port);
    bad.set_credentials("operator", "wrong");
    let (_c, mut el) = rumqttc::AsyncClient::new(bad, 10);
    let refused = loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(a))) => break Ok(a),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(refused, Err(rumqttc::ConnectionError::ConnectionRefused(_))),
        "{refused:?}"
    );

    // Nothing changed: no campaign, no artefact; the gateway still answers. The broker
    // acknowledged t-acl before t-after was sent, so had it forwarded t-acl, the gateway
    // would have read it first (the broker keeps one subscriber's order) and its reply
    // would be here by the time t-after's is.
    s.send("list", "t-after", json!({})).await;
    assert_eq!(s.reply("t-after").await["ok"], true);
    assert!(
        op.on("mesh/ota/response/t-acl").is_empty(),
        "the ACL stopped it"
    );
    let shared = s.gw.shared().clone();
    assert!(shared.campaigns.list().await.unwrap().is_empty());
    assert!(s.gw.artefacts().await.is_empty());
    // Every command that reached the gateway is in the audit log.
    let audit = shared.stores.audit.recent(100).await.unwrap();
    for t in [
        "t-unsigned",
        "t-forged",
        "t-tampr2",
        "t-replay",
        "t-stale",
        "t-types",
        "t-types2",
        "t-swap",
        "t-big",
        "t-noart",
        "t-rb",
        "t-after",
    ] {
        assert!(
            audit
                .iter()
                .any(|a| a.action.starts_with("mqtt.") && a.target.starts_with(t)),
            "{t} not audited: {audit:?}"
        );
    }
    assert!(audit.iter().any(|a| a.target.starts_with("- bad_json")));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_by_url_start_pause_status_over_mqtt() {
    let Some(s) = setup().await else { return };
    let op = &s.op;
    let mfw = artefact(&s.fleet_key, "1.5.0");
    let url = http_server(mfw.clone()).await;

    // An artefact signed by another key: downloaded, refused, not stored.
    let rogue = http_server(artefact(&keygen(), "1.5.0")).await;
    s.send(
        "create",
        "t-rogue",
        json!({"create": {"url": rogue, "targets": {"nodes": [1000]}}}),
    )
    .await;
    assert_eq!(
        s.reply("t-rogue").await["error"]["code"],
        "verification_failed"
    );
    assert!(s.gw.artefacts().await.is_empty());

    s.send(
        "create",
        "t-create",
        json!({"create": {"url": url, "targets": {"nodes": [1000, 1001]}, "name": "over mqtt"}}),
    )
    .await;
    let r = s.reply("t-create").await;
    assert_eq!(r["ok"], true, "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["campaign"]["state"], "created");
    assert_eq!(r["campaign"]["total_nodes"], 2);
    let stored = s.gw.artefacts().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].version, "1.5.0");
    assert!(stored[0].uploaded_by.starts_with("mqtt:"));

    // The same transaction again (re-signed, new nonce): the first reply, no second campaign.
    op.clear();
    s.send(
        "create",
        "t-create",
        json!({"create": {"url": url, "targets": {"nodes": [1000, 1001]}}}),
    )
    .await;
    assert_eq!(s.reply("t-create").await["campaign"]["id"], id.as_str());
    assert_eq!(s.gw.shared().campaigns.list().await.unwrap().len(), 1);

    // Start, then pause twice (the second is a no-op), each replied.
    for (op_name, t, want) in [
        ("start", "t-start", "running"),
        ("pause", "t-pause", "paused"),
        ("pause", "t-pause2", "paused"),
    ] {
        s.send(
            op_name,
            t,
            json!({"campaign": id, "response_topic": format!("mesh/ota/response/custom-{t}")}),
        )
        .await;
        let r = s.reply(&format!("custom-{t}")).await;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["transaction"], t);
        assert_eq!(r["campaign"]["state"], want, "{r}");
    }

    // Status: the reply and the retained topic match the gateway's own view.
    s.send("status", "t-status", json!({"campaign": id})).await;
    let r = s.reply("t-status").await;
    let rest =
        s.gw.shared()
            .campaigns
            .get(&meshfleet_gateway::campaign::CampaignId(id.clone()))
            .await
            .unwrap();
    assert_eq!(r["campaign"]["status"], rest.state.label());
    assert_eq!(r["campaign"]["total_nodes"], rest.total_nodes);
    assert_eq!(r["campaign"]["nodes"].as_array().unwrap().len(), 2);
    let topic = format!("mesh/ota/campaign/{id}");
    let retained =
        s.op.wait("retained campaign status", 10, |m| {
            m.iter()
                .any(|x| x.topic == topic && x.json()["status"] == "paused")
        })
        .await;
    let last = retained.iter().rfind(|x| x.topic == topic).unwrap().json();
    assert_eq!(last["status"], rest.state.label());
    assert_eq!(last["total_nodes"], rest.total_nodes);
    assert_eq!(last["updated_nodes"], rest.updated_nodes);
    for n in last["nodes"].as_array().unwrap() {
        let st = n["status"].as_str().unwrap();
        assert!(
            [
                "QUEUED",
                "IN_PROGRESS",
                "SUCCEEDED",
                "FAILED",
                "TIMED_OUT",
                "REJECTED",
                "CANCELED"
            ]
            .contains(&st),
            "{st}"
        );
    }
    let late = Observer::connect(
        s.broker.port,
        "late-op",
        "operator",
        &["mesh/ota/campaign/#"],
        true,
    )
    .await;
    late.wait("retained for a late subscriber", 5, |m| {
        m.iter().any(|x| x.topic == topic && x.retain)
    })
    .await;
    s.gw.stop().await;
}

/// Nonces and transactions are kept in the gateway's database: a command replayed right
/// after a gateway restart (inside the window) is refused, and a retry of an accepted
/// transaction gets its first reply without a second campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_right_after_a_restart_is_refused() {
    let Some(mut s) = setup().await else { return };
    let mfw = artefact(&s.fleet_key, "1.5.0");
    let url = http_server(mfw).await;
    let create = s.sign(
        "create",
        "t-before",
        json!({"create": {"url": url, "targets": {"nodes": [1000]}}}),
    );
    s.op.publish("mesh/ota/request/create", create.clone())
        .await;
    let first = s.reply("t-before").await;
    assert_eq!(first["ok"], true, "{first}");

    s.restart_gateway().await;
    s.op.clear();
    s.wait_ready().await;
    let op = &s.op;
    // The very same bytes again: refused as a replay, nothing created. (The first reply
    // may come again too: the outbox delivers at least once across a restart.)
    op.publish("mesh/ota/request/create", create).await;
    let topic = "mesh/ota/response/t-before";
    let got = op
        .wait("the replay's refusal", 10, |m| {
            m.iter()
                .any(|x| x.topic == topic && x.json()["ok"] == false)
        })
        .await;
    let r = got
        .iter()
        .find(|x| x.topic == topic && x.json()["ok"] == false)
        .unwrap()
        .json();
    assert_eq!(r["error"]["code"], "replayed", "{r}");
    assert!(
        got.iter()
            .filter(|x| x.topic == topic)
            .all(|x| x.json()["ok"] == false || x.json() == first),
        "only the refusal and the first reply"
    );
    // The transaction retried (new nonce): its first reply, the same campaign.
    op.clear();
    s.send(
        "create",
        "t-before",
        json!({"create": {"artefact": "00".repeat(32), "targets": {"nodes": [1000]}}}),
    )
    .await;
    let r = s.reply("t-before").await;
    assert_eq!(r, first, "the first reply again");
    assert!(
        op.on(topic).iter().all(|x| x.json() == first),
        "no other reply to the retry"
    );
    assert_eq!(s.gw.shared().campaigns.list().await.unwrap().len(), 1);
    s.stop().await;
}

/// An artefact streamed over MQTT in hashed pieces: begin, pieces (one corrupted, one
/// replayed, one sent twice), commit with a piece missing, then complete; verified against
/// the fleet key, stored by its hash and used by `create`. An oversized upload and an
/// artefact signed by another key are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artefact_streamed_in_pieces() {
    use base64::Engine as _;
    let Some(s) = setup().await else { return };
    let (op, key) = (&s.op, &s.op_key);
    let send = |opname: &'static str, t: String, upload: Value| {
        let c = command(opname, &t, json!({ "upload": upload }));
        meshfleet_mqtt::sign_command(key, &c)
    };
    // An image that does not compress, so the artefact takes several pieces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let image: Vec<u8> = (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut opts = PackOptions::new("sensor", "esp32", Version::parse("1.6.0").unwrap());
    opts.signing_key = Some(&s.fleet_key);
    let mfw = pack(&image, opts).unwrap().to_bytes();
    const PIECE: usize = 4096;
    let pieces: Vec<&[u8]> = mfw.chunks(PIECE).collect();
    assert!(pieces.len() >= 3, "{}", mfw.len());

    // Oversized: refused before a byte is taken.
    op.publish(
        "mesh/ota/request/upload_begin",
        send(
            "upload_begin",
            "t-big".into(),
            json!({"size": 16 * 1024 * 1024 + 1, "sha256": sha_hex(&mfw), "piece_size": PIECE}),
        ),
    )
    .await;
    assert_eq!(s.reply("t-big").await["error"]["code"], "too_large");

    op.publish(
        "mesh/ota/request/upload_begin",
        send(
            "upload_begin",
            "t-begin".into(),
            json!({"size": mfw.len(), "sha256": sha_hex(&mfw), "piece_size": PIECE}),
        ),
    )
    .await;
    let r = s.reply("t-begin").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["pieces"], pieces.len());
    let id = r["upload"].as_str().unwrap().to_owned();
    let piece = |i: usize, data: &[u8], hash: &str| {
        json!({"upload": id, "index": i,
               "sha256": hash,
               "data": base64::engine::general_purpose::STANDARD.encode(data)})
    };
    // A corrupted piece: its bytes do not match its hash.
    let mut bad = pieces[0].to_vec();
    bad[10] ^= 0xff;
    op.publish(
        "mesh/ota/request/upload_piece",
        send(
            "upload_piece",
            "t-bad".into(),
            piece(0, &bad, &sha_hex(pieces[0])),
        ),
    )
    .await;
    assert_eq!(s.reply("t-bad").await["error"]["code"], "piece_corrupt");
    // Every piece but the last, piece 0 sent twice (idempotent), its signed envelope
    // replayed (refused by nonce).
    let mut first_envelope = None;
    for (i, p) in pieces[..pieces.len() - 1].iter().enumerate() {
        let env = send("upload_piece", format!("t-p{i}"), piece(i, p, &sha_hex(p)));
        if i == 0 {
            first_envelope = Some(env.clone());
        }
        op.publish("mesh/ota/request/upload_piece", env).await;
        let r = s.reply(&format!("t-p{i}")).await;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["duplicate"], false, "{r}");
    }
    op.clear();
    op.publish("mesh/ota/request/upload_piece", first_envelope.unwrap())
        .await;
    assert_eq!(s.reply("t-p0").await["error"]["code"], "replayed");
    op.publish(
        "mesh/ota/request/upload_piece",
        send(
            "upload_piece",
            "t-p0-again".into(),
            piece(0, pieces[0], &sha_hex(pieces[0])),
        ),
    )
    .await;
    let r = s.reply("t-p0-again").await;
    assert_eq!(
        (r["ok"].clone(), r["duplicate"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    // Commit with the last piece missing: refused, the upload stays.
    op.publish(
        "mesh/ota/request/upload_commit",
        send("upload_commit", "t-commit1".into(), json!({"upload": id})),
    )
    .await;
    let r = s.reply("t-commit1").await;
    assert_eq!(r["error"]["code"], "missing_pieces", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&(pieces.len() - 1).to_string()),
        "{r}"
    );
    assert!(s.gw.artefacts().await.is_empty());
    let last = pieces.len() - 1;
    op.publish(
        "mesh/ota/request/upload_piece",
        send(
            "upload_piece",
            "t-last".into(),
            piece(last, pieces[last], &sha_hex(pieces[last])),
        ),
    )
    .await;
    assert_eq!(s.reply("t-last").await["missing"], 0);
    op.publish(
        "mesh/ota/request/upload_commit",
        send("upload_commit", "t-commit2".into(), json!({"upload": id})),
    )
    .await;
    let r = s.reply("t-commit2").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["artefact"], sha_hex(&mfw), "stored by its hash: {r}");
    assert_eq!(r["version"], "1.6.0");
    let stored = s.gw.artefacts().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, sha_hex(&mfw));
    // It is what `create` takes.
    s.send(
        "create",
        "t-use",
        json!({"create": {"artefact": sha_hex(&mfw), "targets": {"nodes": [1000]}}}),
    )
    .await;
    assert_eq!(s.reply("t-use").await["ok"], true);

    // Signed by another key: every piece fine, refused at commit, nothing stored.
    let rogue = artefact(&keygen(), "1.7.0");
    op.publish(
        "mesh/ota/request/upload_begin",
        send(
            "upload_begin",
            "t-rbegin".into(),
            json!({"size": rogue.len(), "sha256": sha_hex(&rogue), "piece_size": 32768}),
        ),
    )
    .await;
    let rid = s.reply("t-rbegin").await["upload"]
        .as_str()
        .unwrap()
        .to_owned();
    for (i, p) in rogue.chunks(32768).enumerate() {
        let body = json!({"upload": rid, "index": i, "sha256": sha_hex(p),
                          "data": base64::engine::general_purpose::STANDARD.encode(p)});
        op.publish(
            "mesh/ota/request/upload_piece",
            send("upload_piece", format!("t-r{i}"), body),
        )
        .await;
        assert_eq!(s.reply(&format!("t-r{i}")).await["ok"], true);
    }
    op.publish(
        "mesh/ota/request/upload_commit",
        send("upload_commit", "t-rcommit".into(), json!({"upload": rid})),
    )
    .await;
    assert_eq!(
        s.reply("t-rcommit").await["error"]["code"],
        "verification_failed"
    );
    assert_eq!(s.gw.artefacts().await.len(), 1);
    s.gw.stop().await;
}

/// With `require-approval`, a campaign created over MQTT waits; `start` is refused; a
/// signed `approve` lets it go (and starts it, as its creation asked); audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_over_mqtt() {
    let opts = Opts::nodes(2).tweak(|c| c.require_approval = true);
    let Some(s) = Commanded::start(opts).await else {
        return;
    };
    let url = http_server(artefact(&s.fleet_key, "1.5.0")).await;
    s.send(
        "create",
        "t-c",
        json!({"create": {"url": url, "targets": {"nodes": [1000]}, "start": true}}),
    )
    .await;
    let r = s.reply("t-c").await;
    assert_eq!(r["campaign"]["state"], "awaiting_approval", "{r}");
    let id = r["campaign"]["id"].as_str().unwrap().to_owned();
    s.send("start", "t-s", json!({"campaign": id})).await;
    assert_eq!(s.reply("t-s").await["error"]["code"], "invalid_transition");
    s.send("approve", "t-a", json!({"campaign": id})).await;
    let r = s.reply("t-a").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["campaign"]["state"], "running", "{r}");
    use meshfleet_gateway::store::AuditLog as _;
    let audit = s.gw.db.recent(50).await.unwrap();
    let a = audit
        .iter()
        .find(|a| a.action == "campaign.approve")
        .expect("audited");
    assert!(a.actor.starts_with("mqtt:"), "{a:?}");
    assert!(audit.iter().any(|a| a.action == "mqtt.approve"));
    s.stop().await;
}

/// The issue's "broker restarted mid-campaign and gateway restarted mid-outage": a command
/// whose reply is produced while the broker is down (a create by URL whose download is
/// held until the broker has stopped), a campaign that starts and changes state during the
/// outage, and the gateway restarted mid-outage. After the broker is back: the reply
/// arrives (every copy identical, the transaction echoed), the campaign's status topic
/// arrives with its state after the outage and in order of `updated_at`, and commands work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_campaign_status_survive_a_broker_restart_mid_campaign() {
    let Some(mut s) = setup().await else { return };
    // A persistent QoS 1 session: the broker keeps what arrives for it while it is away,
    // across its own restart (persistence on).
    let ops = Observer::connect(
        s.broker.port,
        "operator-persistent",
        "operator",
        &["mesh/ota/response/#", "mesh/ota/campaign/#"],
        false,
    )
    .await
    .with_context({
        // The broker's log says who connected, subscribed and got what when a wait fails.
        let log = s.broker.dir.join("mosquitto.log");
        move || std::fs::read_to_string(&log).unwrap_or_default()
    });
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let url = held_http_server(
        artefact(&s.fleet_key, "1.5.0"),
        Some((seen_tx, release.clone())),
    )
    .await;
    s.send(
        "create",
        "t-outage",
        json!({"create": {"url": url, "targets": {"nodes": [1000, 1001]}, "start": true}}),
    )
    .await;
    // The gateway is downloading: stop the broker, then let the download finish. The
    // campaign is created and started, and the reply queued, while the broker is down.
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the gateway fetches the artefact")
        .unwrap();
    s.broker.stop();
    release.notify_one();
    let svc = s.gw.shared().campaigns.clone();
    let mut id = None;
    for _ in 0..100 {
        if let Some(c) = svc.list().await.unwrap().first() {
            id = Some(c.id.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = id.expect("campaign created during the outage");
    // Its nodes are records only (no node answers): it stays running. Paused and resumed
    // during the outage (REST's calls), so its status changes while nobody can see it.
    svc.pause(&id, "http:test").await.unwrap();
    svc.resume(&id, "http:test").await.unwrap();
    for _ in 0..100 {
        if outbox_len(&s.gw) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(outbox_len(&s.gw) > 0, "the reply waits in the outbox");
    // The gateway restarts mid-outage.
    s.restart_gateway().await;
    s.broker.restart();

    // The reply leaves the outbox once the broker has it (PUBACK)...
    for _ in 0..600 {
        if outbox_len(&s.gw) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox_len(&s.gw), 0, "the reply reached the broker");
    // ...and the operator's persistent session gets it when it is back.
    let reply_topic = "mesh/ota/response/t-outage";
    let topic = format!("mesh/ota/campaign/{id}");
    let m = ops
        .wait(
            "the reply and the campaign status after the outage",
            30,
            |m| {
                m.iter().any(|x| x.topic == reply_topic)
                    && m.iter()
                        .any(|x| x.topic == topic && x.json()["status"] == "running")
            },
        )
        .await;
    let replies: Vec<Value> = m
        .iter()
        .filter(|x| x.topic == reply_topic)
        .map(|x| x.json())
        .collect();
    assert_eq!(replies[0]["ok"], true, "{replies:?}");
    assert_eq!(replies[0]["transaction"], "t-outage");
    assert_eq!(replies[0]["campaign"]["id"], id.0.as_str());
    assert!(
        replies.iter().all(|r| *r == replies[0]),
        "a redelivery is the same reply: {replies:?}"
    );
    let stamps: Vec<i64> = m
        .iter()
        .filter(|x| x.topic == topic)
        .map(|x| x.json()["updated_at"].as_i64().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "campaign status in order: {stamps:?}"
    );
    // The status the broker now holds is the campaign as the gateway has it.
    let now = svc_status(&s.gw, &id).await;
    let last = m.iter().rfind(|x| x.topic == topic).unwrap().json();
    assert_eq!(last["updated_at"], now["updated_at"], "{last} vs {now}");
    assert_eq!(last["status"], "running");
    // Commands work again.
    s.send("status", "t-after", json!({"campaign": id})).await;
    let r = ops.reply("t-after", 15).await;
    assert_eq!(r["campaign"]["status"], "running", "{r}");
    s.stop().await;
}

/// Replies waiting in `gw`'s outbox for the broker.
fn outbox_len(gw: &Gw) -> u64 {
    meshfleet_mqtt::outbox::Outbox::open(&gw.shared().config.db)
        .unwrap()
        .len()
        .unwrap()
}

async fn svc_status(gw: &Gw, id: &meshfleet_gateway::campaign::CampaignId) -> Value {
    meshfleet_mqtt::commands::status_json(&gw.shared().campaigns.get(id).await.unwrap())
}

/// Streamed uploads are held in memory (`docs/mqtt.md`, "Streamed upload"): a gateway
/// restart mid-upload drops the upload; the next piece is refused `unknown_upload` with a
/// message that says to begin again, and a new upload of the same artefact completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_interrupted_by_a_restart_is_refused_and_begun_again() {
    use base64::Engine as _;
    let Some(mut s) = setup().await else { return };
    // Upload commands carry their arguments under `upload`.
    let up = |args: Value| json!({ "upload": args });
    let mfw = artefact(&s.fleet_key, "1.7.0");
    const PIECE: usize = 1024;
    let pieces: Vec<&[u8]> = mfw.chunks(PIECE).collect();
    assert!(pieces.len() >= 2, "{}", mfw.len());
    let piece = |id: &str, i: usize| {
        json!({"upload": id, "index": i, "sha256": sha_hex(pieces[i]),
               "data": base64::engine::general_purpose::STANDARD.encode(pieces[i])})
    };
    let begin = json!({"size": mfw.len(), "sha256": sha_hex(&mfw), "piece_size": PIECE});
    s.send("upload_begin", "t-b1", up(begin.clone())).await;
    let r = s.reply("t-b1").await;
    let id = r["upload"].as_str().unwrap().to_owned();
    s.send("upload_piece", "t-p0", up(piece(&id, 0))).await;
    assert_eq!(s.reply("t-p0").await["ok"], true);

    s.restart_gateway().await;
    s.wait_ready().await;
    // The next piece after the restart: refused, with what to do.
    s.send("upload_piece", "t-p1", up(piece(&id, 1))).await;
    let r = s.reply("t-p1").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "unknown_upload", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("restarted") && msg.contains("begin again"),
        "{msg}"
    );

    // Begun again: every piece, commit, stored.
    s.send("upload_begin", "t-b2", up(begin)).await;
    let r = s.reply("t-b2").await;
    let id2 = r["upload"].as_str().unwrap().to_owned();
    assert_ne!(id2, id, "upload ids differ between gateway runs");
    for i in 0..pieces.len() {
        let t = format!("t-q{i}");
        s.send("upload_piece", &t, up(piece(&id2, i))).await;
        assert_eq!(s.reply(&t).await["ok"], true);
    }
    s.send("upload_commit", "t-c", up(json!({"upload": id2})))
        .await;
    let r = s.reply("t-c").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["version"], "1.7.0", "{r}");
    s.stop().await;
}
