//! The OpenAPI document: every endpoint is in it, every `$ref` resolves, and real responses
//! (success and error) conform to the schemas it declares. The validator covers the JSON
//! Schema subset utoipa emits (type incl. `null` unions, enum, required, properties, items,
//! `$ref`, oneOf/allOf, minimum) and is strict about undeclared properties, so a field added
//! to a response but not to its schema fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

fn resolve<'a>(doc: &'a Value, mut s: &'a Value) -> &'a Value {
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        s = doc["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    s
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Errors of `v` against `schema`, with JSON paths.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let s = resolve(doc, schema);
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
        let matching = alts
            .iter()
            .filter(|alt| {
                let mut e = Vec::new();
                validate(doc, alt, v, at, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!(
                "{at}: matches {matching} of oneOf's {} schemas",
                alts.len()
            ));
        }
        return;
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        // One object schema made of the parts: a property declared by any part is
        // declared (a tagged event is its payload's schema plus the `event` key).
        let mut merged = serde_json::Map::new();
        let (mut props, mut required) = (serde_json::Map::new(), Vec::new());
        for part in all {
            let part = resolve(doc, part);
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                props.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.iter().cloned());
            }
        }
        merged.insert("type".into(), json!("object"));
        merged.insert("properties".into(), Value::Object(props));
        merged.insert("required".into(), Value::Array(required));
        validate(doc, &Value::Object(merged), v, at, errors);
        return;
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => {
            errors.push(format!("{at}: expected {t}, got {v}"));
            return;
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            errors.push(format!("{at}: expected one of {ts:?}, got {v}"));
            return;
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                errors.push(format!("{at}: missing required {r}"));
            }
        }
        if let Some(props) = props {
            for (k, val) in obj {
                match props.get(k) {
                    Some(ps) => validate(doc, ps, val, &format!("{at}.{k}"), errors),
                    None => errors.push(format!("{at}: undeclared property {k}")),
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Checks a response against the document's declaration for `path` `method` and its status.
fn conforms(doc: &Value, path: &str, method: &str, r: &Resp) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let declared = &op["responses"][r.status.to_string()];
    assert!(
        declared.is_object(),
        "{method} {path}: status {} not declared ({})",
        r.status,
        r.text()
    );
    let ct = r.header("content-type").unwrap_or("");
    let media = ct.split(';').next().unwrap().trim();
    let Some(content) = declared.get("content") else {
        assert!(r.body.is_empty(), "{method} {path}: undeclared body");
        return;
    };
    let schema = &content
        .get(media)
        .unwrap_or_else(|| panic!("{method} {path} {}: media {media} not declared", r.status))
        ["schema"];
    if media.ends_with("json") {
        let mut errors = Vec::new();
        validate(doc, schema, &r.json(), "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{method} {path} {}: {errors:#?}",
            r.status
        );
    }
}

/// `ev` (an event as `/events` sends it) conforms to the `GatewayEvent` schema.
fn event_conforms(doc: &Value, ev: &Value) {
    let schema = json!({ "$ref": "#/components/schemas/GatewayEvent" });
    let mut errors = Vec::new();
    validate(doc, &schema, ev, "$", &mut errors);
    assert!(errors.is_empty(), "{ev}: {errors:?}");
}

/// A resource's responses (campaigns, rollouts) conform to the document: `created` (the
/// first POST to `base`), a POST of each `bad` body, the list, the resource `ids.0` and an
/// unknown `ids.1`, then each `(action, body)` POSTed on `ids.0`, in that order.
async fn check_resource(
    f: &Fixture,
    doc: &Value,
    base: &str,
    created: Resp,
    bad: &[&[u8]],
    ids: (&str, &str),
    actions: &[(&str, &[u8])],
) {
    let (one, action) = (
        format!("{base}/{{id}}"),
        format!("{base}/{{id}}/{{action}}"),
    );
    conforms(doc, base, "post", &created);
    for body in bad {
        conforms(
            doc,
            base,
            "post",
            &f.post(base, "application/json", body).await,
        );
    }
    conforms(doc, base, "get", &f.get(base).await);
    for id in [ids.0, ids.1] {
        conforms(doc, &one, "get", &f.get(&format!("{base}/{id}")).await);
    }
    for (name, body) in actions {
        let r = f
            .post(
                &format!("{base}/{}/{name}", ids.0),
                "application/json",
                body,
            )
            .await;
        conforms(doc, &action, "post", &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_conform_to_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen();
    let f = Fixture::start(dir.path().to_owned(), key.clone()).await;
    let doc = f.get("/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");

    // Every endpoint of the issue is documented.
    for (path, method) in [
        ("/status", "get"),
        ("/status/{nodeId}", "get"),
        ("/health", "get"),
        ("/topology", "get"),
        ("/nodes/{nodeId}/history", "get"),
        ("/alerts", "get"),
        ("/alerts/{id}/ack", "post"),
        ("/firmware", "post"),
        ("/firmware", "get"),
        ("/firmware/{id}", "delete"),
        ("/campaigns", "post"),
        ("/campaigns", "get"),
        ("/campaigns/{id}", "get"),
        ("/campaigns/{id}/{action}", "post"),
        ("/rollouts", "post"),
        ("/rollouts", "get"),
        ("/rollouts/{id}", "get"),
        ("/rollouts/{id}/{action}", "post"),
        ("/events", "get"),
        ("/metrics", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        resolve(&doc, &json!({ "$ref": target }));
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Real data: a node with a report, an alert, an artefact.
    let (n, _t) = node(5001, f.mesh_addr).await;
    joined(&f, &n, 5001).await;
    n.broadcast(status_text(5001, 8, 3, "3.1.4")).await.unwrap();
    wait_until("history", || async {
        f.get("/nodes/5001/history").await.json()["points"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    let alert = f.get("/alerts").await.json()["alerts"][0]["id"]
        .as_i64()
        .unwrap();

    let checks: Vec<(&str, &str, Resp)> = vec![
        (
            "/status",
            "get",
            f.get("/status?sort=health&order=desc").await,
        ),
        ("/status", "get", f.get("/status?limit=0").await),
        ("/status/{nodeId}", "get", f.get("/status/5001").await),
        ("/status/{nodeId}", "get", f.get("/status/77").await),
        ("/status/{nodeId}", "get", f.get("/status/x").await),
        ("/health", "get", f.get("/health").await),
        ("/topology", "get", f.get("/topology").await),
        (
            "/nodes/{nodeId}/history",
            "get",
            f.get("/nodes/5001/history").await,
        ),
        (
            "/nodes/{nodeId}/history",
            "get",
            f.get("/nodes/5001/history?resolution=hour").await,
        ),
        (
            "/nodes/{nodeId}/history",
            "get",
            f.get("/nodes/5001/history?from=9&to=1").await,
        ),
        ("/alerts", "get", f.get("/alerts?state=all").await),
        (
            "/alerts/{id}/ack",
            "post",
            f.post(&format!("/alerts/{alert}/ack"), "application/json", b"")
                .await,
        ),
        (
            "/alerts/{id}/ack",
            "post",
            f.post("/alerts/424242/ack", "application/json", b"").await,
        ),
        (
            "/alerts/{id}/ack",
            "post",
            request(f.http, "POST", "/alerts/1/ack", &[], &[]).await,
        ),
        (
            "/firmware",
            "post",
            f.post(
                "/firmware",
                "application/octet-stream",
                &artefact(Some(&key), "1.0.0"),
            )
            .await,
        ),
        (
            "/firmware",
            "post",
            f.post(
                "/firmware",
                "application/octet-stream",
                &artefact(None, "1.0.0"),
            )
            .await,
        ),
        ("/firmware", "get", f.get("/firmware").await),
        ("/firmware/{id}", "delete", f.delete("/firmware/zz").await),
        ("/healthz", "get", f.get("/healthz").await),
        ("/readyz", "get", f.get("/readyz").await),
        ("/openapi.json", "get", f.get("/openapi.json").await),
        ("/metrics", "get", f.get("/metrics").await),
    ];
    for (path, method, r) in &checks {
        conforms(&doc, path, method, r);
    }
    let id = f.get("/firmware").await.json()["artefacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Campaigns: created, listed, read, acted on, and their errors.
    let spec = json!({"artefact": id, "targets": {"nodes": [5001]}, "name": "doc"}).to_string();
    let created = f
        .post("/campaigns", "application/json", spec.as_bytes())
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    check_resource(
        &f,
        &doc,
        "/campaigns",
        created,
        &[spec.as_bytes(), b"{\"artefact\":1}"],
        ("c-000001", "c-000077"),
        &[("pause", b""), ("start", b""), ("cancel", b"")],
    )
    .await;
    let full: meshfleet_gateway::campaign::Campaign =
        serde_json::from_value(f.get("/campaigns/c-000001").await.json()).unwrap();
    let ev = serde_json::to_value(meshfleet_gateway::events::GatewayEvent::Campaign(
        full.summary(),
    ))
    .unwrap();
    assert!(ev.get("nodes").is_none(), "{ev}");
    event_conforms(&doc, &ev);

    // Rollouts: created (waiting for approval), listed, read, commanded, and errors.
    let spec =
        json!({"artefact": id, "nodes": [5001], "config": {"start": "await_approval"}}).to_string();
    let created = f
        .post("/rollouts", "application/json", spec.as_bytes())
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    check_resource(
        &f,
        &doc,
        "/rollouts",
        created,
        &[b"{\"artefact\":\"00\"}", b"{\"artefact\":1}"],
        ("r-000001", "r-000077"),
        &[("resume", b""), ("approve", b""), ("skip", b"[]")],
    )
    .await;
    conforms(
        &doc,
        "/rollouts/{id}/{action}",
        "post",
        &request(f.http, "POST", "/rollouts/r-000001/abort", &[], &[]).await,
    );
    let full: meshfleet_gateway::rollout::Rollout =
        serde_json::from_value(f.get("/rollouts/r-000001").await.json()).unwrap();
    assert!(!full.decisions.is_empty() && !full.nodes.is_empty());
    for ev in [
        meshfleet_gateway::events::GatewayEvent::Rollout(full.clone()),
        meshfleet_gateway::events::GatewayEvent::RolloutDecision(
            meshfleet_gateway::rollout::RolloutDecisionEvent {
                rollout: full.id.clone(),
                decision: full.decisions[0].clone(),
            },
        ),
    ] {
        let ev = serde_json::to_value(ev).unwrap();
        event_conforms(&doc, &ev);
    }

    conforms(
        &doc,
        "/firmware/{id}",
        "delete",
        &f.delete(&format!("/firmware/{id}")).await,
    );

    // The event stream's payloads conform to the GatewayEvent schema.
    for ev in [
        json!({"event":"node_up","nodeId":1,"ts":5}),
        serde_json::to_value(meshfleet_gateway::events::GatewayEvent::Health {
            node_id: 1,
            from: meshfleet_gateway::model::Health::Healthy,
            to: meshfleet_gateway::model::Health::Offline,
        })
        .unwrap(),
    ] {
        event_conforms(&doc, &ev);
    }

    // The validator can fail: a wrong type, a missing field, an extra field.
    let good = f.get("/status/5001").await.json();
    let schema = json!({ "$ref": "#/components/schemas/NodeStatus" });
    for mutate in [
        |v: &mut Value| v["nodeId"] = json!("5001"),
        |v: &mut Value| {
            v.as_object_mut().unwrap().remove("health");
        },
        |v: &mut Value| v["surprise"] = json!(1),
        |v: &mut Value| v["health"] = json!("meh"),
    ] {
        let mut bad = good.clone();
        mutate(&mut bad);
        let mut errors = Vec::new();
        validate(&doc, &schema, &bad, "$", &mut errors);
        assert!(!errors.is_empty(), "accepted {bad}");
    }
    let mut errors = Vec::new();
    validate(&doc, &schema, &good, "$", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    f.stop().await;
}
