//! OTA over MQTT: requests on `<prefix>/ota/request/<op>`, replies (QoS 1, through the
//! outbox) on `<prefix>/ota/response/<transaction>` or the command's `response_topic`, the
//! `transaction` echoed in every reply; the retained campaign status on
//! `<prefix>/ota/campaign/<id>`.
//!
//! A command is checked in this order, and the first failure is the reply:
//! 1. size (`max-payload`; the broker's `message_size_limit` should cut earlier),
//! 2. the envelope `{"command": "<JSON text>", "signature": "<base64 ed25519>"}`, signed by
//!    one of the operator keys over the exact bytes of `command` (unsigned commands, the
//!    bare JSON object, only with `allow-unsigned`),
//! 3. the command's shape (typed fields, no unknown ones), `op` equal to the topic's,
//! 4. freshness: `ts` (unix ms) within `window-s` of the gateway's clock, `nonce` never seen
//!    within the window (replays refused).
//!
//! A refused command changes nothing; every command, accepted or refused, is written to the
//! audit log. Replies to commands that failed before their signature was checked go to the
//! default topic, never to a `response_topic` the sender chose. Commands are idempotent:
//! a `transaction` seen before gets its first reply again without acting twice, and
//! start/pause/resume/cancel on a campaign already in that state succeed without change.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use meshfleet_firmware::{Artefact, SignatureCheck};
use meshfleet_gateway::campaign::{
    Campaign, CampaignAction, CampaignError, CampaignId, CampaignService, CampaignSpec,
    CampaignState, CampaignStrategy, NodeState, Targets,
};
use meshfleet_gateway::campaign_schedule::Window;
use meshfleet_gateway::model::{ArtefactInfo, AuditEntry};
use meshfleet_gateway::{now_millis, Shared};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::bridge::{BridgeError, BridgeMetrics};
use crate::config::MqttConfig;
use crate::outbox::{NewMessage, Outbox};
use crate::upload::{UploadArgs, UploadRefusal, Uploads};

/// Nonces remembered at most (beyond, new commands are refused until old ones age out).
pub const MAX_NONCES: usize = 100_000;

/// Replies remembered for idempotent retries.
pub const MAX_REMEMBERED: usize = 1024;

/// Operations.
pub const OPS: [&str; 12] = [
    "create",
    "start",
    "pause",
    "resume",
    "cancel",
    "status",
    "rollback",
    "list",
    "approve",
    "upload_begin",
    "upload_piece",
    "upload_commit",
];

/// What a handled command produced (its reply is already in the outbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    /// The transaction, if one could be read.
    pub transaction: Option<String>,
    /// Accepted and carried out.
    pub ok: bool,
    /// The error code when refused.
    pub code: Option<&'static str>,
}

/// A refusal: a stable code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    code: &'static str,
    message: String,
}

pub(crate) fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl From<UploadRefusal> for Refusal {
    fn from(r: UploadRefusal) -> Self {
        refuse(r.code, r.message)
    }
}

impl From<CampaignError> for Refusal {
    fn from(e: CampaignError) -> Self {
        let code = match &e {
            CampaignError::NotFound(_) => "not_found",
            CampaignError::Conflict { .. } => "conflict",
            CampaignError::InvalidTransition { .. } => "invalid_transition",
            CampaignError::UnknownArtefact(_) => "unknown_artefact",
            CampaignError::NoTargets => "no_targets",
            CampaignError::InvalidSpec(_) => "invalid_spec",
            CampaignError::MeshStopped => "mesh_stopped",
            CampaignError::BadIntent(_) => "invalid_rollback_intent",
            CampaignError::NothingToRollBack => "nothing_to_roll_back",
            _ => "store_error",
        };
        refuse(code, e.to_string())
    }
}

/// The signed envelope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    command: String,
    signature: String,
}

/// What `create` gets the firmware from: exactly one of these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    /// An artefact already in the store.
    #[serde(default)]
    artefact: Option<String>,
    /// An http(s) URL the gateway downloads (and verifies against the fleet key).
    #[serde(default)]
    url: Option<String>,
    targets: Targets,
    #[serde(default)]
    strategy: CampaignStrategy,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    start: bool,
    /// Serve no node before this (Unix ms).
    #[serde(default)]
    start_at: Option<i64>,
    /// Serve only inside this maintenance window.
    #[serde(default)]
    window: Option<Window>,
}

/// A command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    op: String,
    transaction: String,
    ts: i64,
    nonce: String,
    #[serde(default)]
    response_topic: Option<String>,
    /// The campaign (start, pause, resume, cancel, status, rollback).
    #[serde(default)]
    campaign: Option<String>,
    /// What to create.
    #[serde(default)]
    create: Option<CreateArgs>,
    /// A streamed upload's begin, piece or commit.
    #[serde(default)]
    upload: Option<UploadArgs>,
    /// A rollout command's arguments (`rollout_commands.rs`).
    #[serde(default)]
    rollout: Option<Value>,
    /// `rollback`: the operator's signed rollback intent (`meshfleet firmware intent
    /// --rollback`, JSON), checked against the fleet key by the campaign service.
    #[serde(default)]
    intent: Option<Value>,
}

struct Inner {
    cfg: MqttConfig,
    keys: Vec<(String, VerifyingKey)>,
    nonces: Mutex<HashMap<String, i64>>,
    remembered: Mutex<(HashMap<String, Value>, VecDeque<String>)>,
    shared: OnceLock<Arc<Shared>>,
    outbox: OnceLock<Outbox>,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    metrics: Arc<BridgeMetrics>,
    uploads: Mutex<Uploads>,
    /// Transactions being carried out now.
    inflight: Mutex<std::collections::HashSet<String>>,
}

/// The command handler. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

fn valid_transaction(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads `"transaction":"..."` from the start of a payload that will not be parsed (too
/// large, malformed), so the refusal can still be addressed. Escaped quotes inside a signed
/// envelope's `command` string are read through.
pub fn sniff_transaction(payload: &[u8]) -> Option<String> {
    let head = &payload[..payload.len().min(4096)];
    let text: String = String::from_utf8_lossy(head).replace('\\', "");
    let i = text.find("\"transaction\"")?;
    let rest = text[i + 13..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let t = &rest[..rest.find('"')?];
    valid_transaction(t).then(|| t.to_owned())
}

/// Signs a command for MQTT (what an operator's tool does): the envelope to publish.
pub fn sign_command(key: &ed25519_dalek::SigningKey, command: &Value) -> String {
    use ed25519_dalek::Signer as _;
    let text = command.to_string();
    let sig = key.sign(text.as_bytes());
    json!({
        "command": text,
        "signature": base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    })
    .to_string()
}

impl Commands {
    /// Reads the operator keys.
    pub fn new(cfg: &MqttConfig, metrics: Arc<BridgeMetrics>) -> Result<Self, BridgeError> {
        let mut keys = Vec::new();
        for path in &cfg.commands.operator_keys {
            let k = meshfleet_firmware::keys::read_public_key(path).map_err(|e| {
                BridgeError::OperatorKey {
                    path: path.display().to_string(),
                    why: e.to_string(),
                }
            })?;
            keys.push((meshfleet_firmware::keys::key_id(&k).to_string(), k));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                keys,
                nonces: Mutex::new(HashMap::new()),
                remembered: Mutex::new((HashMap::new(), VecDeque::new())),
                shared: OnceLock::new(),
                outbox: OnceLock::new(),
                tls: OnceLock::new(),
                metrics,
                inflight: Mutex::new(std::collections::HashSet::new()),
                uploads: Mutex::new(Uploads::new(
                    cfg.commands.max_uploads,
                    cfg.commands.max_artefact as u64,
                    i64::try_from(cfg.commands.upload_timeout_s)
                        .unwrap_or(i64::MAX / 4)
                        .saturating_mul(1000),
                    // Upload ids differ between gateway runs.
                    std::collections::hash_map::RandomState::new().hash_one(now_millis()),
                )),
            }),
        })
    }

    /// TLS settings for `https://` downloads.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        let _ = self.inner.tls.set(tls);
    }

    /// Connects the handler to the gateway and loads what it remembered before a restart:
    /// the nonces still inside the replay window and the recent transactions' replies.
    pub(crate) async fn attach(&self, shared: Arc<Shared>, outbox: Outbox) {
        let since = now_millis() - 2 * self.window_ms();
        let loaded = outbox
            .run(move |o| Ok((o.nonces(since)?, o.replies()?)))
            .await;
        match loaded {
            Ok((nonces, replies)) => {
                let n = nonces.len();
                self.inner
                    .nonces
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(nonces);
                let mut m = self
                    .inner
                    .remembered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for (t, reply) in replies {
                    if let Ok(v) = serde_json::from_str::<Value>(&reply) {
                        m.0.insert(t.clone(), v);
                        m.1.push_back(t);
                    }
                }
                info!(
                    nonces = n,
                    transactions = m.1.len(),
                    "MQTT command memory loaded"
                );
            }
            // Commands are then refused until the store answers (see `persist_nonce`).
            Err(e) => warn!(error = %e, "cannot load the MQTT command memory"),
        }
        let _ = self.inner.shared.set(shared);
        let _ = self.inner.outbox.set(outbox);
    }

    /// The freshness window, ms.
    fn window_ms(&self) -> i64 {
        i64::try_from(self.inner.cfg.commands.window_s)
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(1000)
    }

    /// Writes an accepted command's nonce before anything is done, so a replay after a
    /// restart is refused too. Fails closed: if the store cannot say, the command is
    /// refused.
    async fn persist_nonce(&self, cmd: &Command) -> Result<(), Refusal> {
        let outbox = self
            .inner
            .outbox
            .get()
            .ok_or_else(|| refuse("not_ready", "the bridge is starting"))?;
        let (nonce, ts) = (cmd.nonce.clone(), cmd.ts);
        let forget = now_millis() - 2 * self.window_ms();
        match outbox
            .run(move |o| o.remember_nonce(&nonce, ts, forget))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(refuse("replayed", "this nonce was used already")),
            Err(e) => Err(refuse("store_error", e.to_string())),
        }
    }

    fn campaigns(&self) -> Result<CampaignService, Refusal> {
        self.inner
            .shared
            .get()
            .map(|s| s.campaigns.clone())
            .ok_or_else(|| refuse("not_ready", "the bridge is starting"))
    }

    fn topic(&self, rest: &str) -> String {
        self.inner.cfg.topic(rest)
    }

    /// Handles one request on `<prefix>/ota/request/<op>`; the reply goes to the outbox.
    pub async fn handle(&self, op: &str, payload: Vec<u8>) -> CommandReply {
        let verdict = self.check(op, &payload);
        let (transaction, reply_topic, actor, result) = match verdict {
            Err((transaction, refusal)) => (
                transaction,
                None,
                "mqtt:unverified".to_owned(),
                Err(refusal),
            ),
            Ok((cmd, actor)) => {
                let t = cmd.transaction.clone();
                let topic = cmd.response_topic.clone();
                if let Err(r) = self.persist_nonce(&cmd).await {
                    return self.finish(Some(t), topic, actor, op, Err(r)).await;
                }
                let remembered = self
                    .inner
                    .remembered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
                    .get(&t)
                    .cloned();
                if let Some(previous) = remembered {
                    // An idempotent retry: the first reply again, nothing done twice.
                    self.send_reply(&Some(t.clone()), topic.as_deref(), previous)
                        .await;
                    self.audit(&actor, op, &format!("{t} repeated")).await;
                    return CommandReply {
                        transaction: Some(t),
                        ok: true,
                        code: None,
                    };
                }
                // One at a time per transaction: a retry that arrives while the first is
                // still being carried out (a slow download) must not act a second time.
                let first = self
                    .inner
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(t.clone());
                if !first {
                    let r = refuse(
                        "in_progress",
                        "this transaction is being carried out; its reply follows",
                    );
                    return self.finish(Some(t), topic, actor, op, Err(r)).await;
                }
                let r = self.execute(&cmd, &actor).await;
                let reply = self.finish(Some(t.clone()), topic, actor, op, r).await;
                self.inner
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&t);
                return reply;
            }
        };
        self.finish(transaction, reply_topic, actor, op, result)
            .await
    }

    /// Keeps `reply` in memory as the answer to retries of transaction `t`.
    fn remember(&self, t: &str, reply: &Value) {
        let mut m = self
            .inner
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        m.0.insert(t.to_owned(), reply.clone());
        m.1.push_back(t.to_owned());
        while m.1.len() > MAX_REMEMBERED {
            if let Some(old) = m.1.pop_front() {
                m.0.remove(&old);
            }
        }
    }

    /// Replies (and remembers an accepted command's reply), counts, audits.
    async fn finish(
        &self,
        transaction: Option<String>,
        reply_topic: Option<String>,
        actor: String,
        op: &str,
        result: Result<Value, Refusal>,
    ) -> CommandReply {
        let (ok, code, body) = match &result {
            Ok(v) => (true, None, v.clone()),
            Err(r) => (
                false,
                Some(r.code),
                json!({"error": {"code": r.code, "message": r.message}}),
            ),
        };
        let mut reply = json!({"transaction": transaction, "op": op, "ok": ok});
        if let (Some(map), Value::Object(b)) = (reply.as_object_mut(), body) {
            map.extend(b);
        }
        if ok {
            if let Some(t) = &transaction {
                self.remember(t, &reply);
                if let Some(outbox) = self.inner.outbox.get() {
                    let (t, text) = (t.clone(), reply.to_string());
                    let r = outbox
                        .run(move |o| o.remember_reply(&t, &text, now_millis(), MAX_REMEMBERED))
                        .await;
                    if let Err(e) = r {
                        warn!(error = %e, "cannot store an MQTT command's reply");
                    }
                }
            }
            self.inner
                .metrics
                .commands_ok
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.inner
                .metrics
                .commands_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let target = format!(
            "{} {}",
            transaction.as_deref().unwrap_or("-"),
            code.unwrap_or("ok")
        );
        self.audit(&actor, op, &target).await;
        self.send_reply(&transaction, reply_topic.as_deref(), reply)
            .await;
        CommandReply {
            transaction,
            ok,
            code,
        }
    }

    async fn audit(&self, actor: &str, op: &str, target: &str) {
        let Some(shared) = self.inner.shared.get() else {
            return;
        };
        let op: String = op
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let entry = AuditEntry {
            ts: now_millis(),
            actor: actor.to_owned(),
            action: format!("mqtt.{op}"),
            target: target.to_owned(),
        };
        if let Err(e) = shared.stores.audit.record(entry).await {
            warn!(error = %e, "cannot audit an MQTT command");
        }
    }

    async fn send_reply(&self, transaction: &Option<String>, topic: Option<&str>, reply: Value) {
        let topic = match (topic, transaction) {
            (Some(t), _) => t.to_owned(),
            (None, Some(t)) => self.topic(&format!("ota/response/{t}")),
            (None, None) => self.topic("ota/response/_invalid"),
        };
        self.queue(vec![NewMessage {
            topic,
            payload: reply.to_string().into_bytes(),
            retain: false,
            dedup: None,
        }])
        .await;
    }

    async fn queue(&self, msgs: Vec<NewMessage>) {
        let Some(outbox) = self.inner.outbox.get() else {
            return;
        };
        if let Err(e) = outbox.run(move |o| o.push(&msgs, None, now_millis())).await {
            warn!(error = %e, "cannot queue an MQTT reply");
        }
    }

    /// Steps 1-4 of the module doc: a command to carry out and its actor, or the refusal
    /// with whatever transaction could be read.
    #[allow(clippy::type_complexity)]
    fn check(
        &self,
        op: &str,
        payload: &[u8],
    ) -> Result<(Command, String), (Option<String>, Refusal)> {
        let c = &self.inner.cfg.commands;
        if payload.len() > c.max_payload {
            return Err((
                sniff_transaction(payload),
                refuse(
                    "too_large",
                    format!("{} bytes; at most {}", payload.len(), c.max_payload),
                ),
            ));
        }
        let sniffed = || sniff_transaction(payload);
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| (sniffed(), refuse("bad_json", e.to_string())))?;
        let (text, actor) = if value.get("signature").is_some() || value.get("command").is_some() {
            let env: Envelope = serde_json::from_value(value)
                .map_err(|e| (sniffed(), refuse("bad_envelope", e.to_string())))?;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(env.signature.as_bytes())
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .ok_or_else(|| {
                    (
                        sniffed(),
                        refuse("bad_signature", "not a base64 ed25519 signature"),
                    )
                })?;
            let signer = self
                .inner
                .keys
                .iter()
                .find(|(_, k)| k.verify_strict(env.command.as_bytes(), &sig).is_ok())
                .map(|(id, _)| id.clone())
                .ok_or_else(|| {
                    (
                        sniffed(),
                        refuse("bad_signature", "not signed by an operator key"),
                    )
                })?;
            (env.command, format!("mqtt:{signer}"))
        } else if c.allow_unsigned {
            (
                String::from_utf8_lossy(payload).into_owned(),
                "mqtt:unsigned".to_owned(),
            )
        } else {
            return Err((
                sniffed(),
                refuse("unsigned", "commands must be signed by an operator key"),
            ));
        };
        let cmd: Command = serde_json::from_str(&text)
            .map_err(|e| (sniffed(), refuse("bad_command", e.to_string())))?;
        if !valid_transaction(&cmd.transaction) {
            return Err((
                None,
                refuse("bad_transaction", "1-64 characters of A-Z a-z 0-9 - _ ."),
            ));
        }
        let t = Some(cmd.transaction.clone());
        if cmd.op != op {
            return Err((
                t,
                refuse(
                    "op_mismatch",
                    format!("the topic says {op}, the command {}", cmd.op),
                ),
            ));
        }
        if !OPS.contains(&op) && !crate::rollout_commands::OPS.contains(&op) {
            return Err((t, refuse("unknown_op", format!("unknown operation {op}"))));
        }
        if let Some(rt) = &cmd.response_topic {
            if rt.is_empty()
                || rt.len() > 256
                || rt.contains(['+', '#', '\0'])
                || rt.starts_with('$')
            {
                return Err((
                    t,
                    refuse(
                        "bad_response_topic",
                        "no wildcards, no $ topics, at most 256 bytes",
                    ),
                ));
            }
        }
        if cmd.nonce.len() < 8 || cmd.nonce.len() > 64 {
            return Err((t, refuse("bad_nonce", "8-64 characters")));
        }
        let now = now_millis();
        let window = self.window_ms();
        if (now - cmd.ts).abs() > window {
            return Err((
                t,
                refuse(
                    "stale",
                    format!("ts is {} ms from the gateway's clock", now - cmd.ts),
                ),
            ));
        }
        let mut nonces = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nonces.retain(|_, ts| now - *ts <= 2 * window);
        if nonces.contains_key(&cmd.nonce) {
            return Err((t, refuse("replayed", "this nonce was used already")));
        }
        if nonces.len() >= MAX_NONCES {
            return Err((t, refuse("busy", "too many commands in the window")));
        }
        nonces.insert(cmd.nonce.clone(), cmd.ts);
        Ok((cmd, actor))
    }

    async fn execute(&self, cmd: &Command, actor: &str) -> Result<Value, Refusal> {
        let campaign_id = || {
            cmd.campaign
                .as_deref()
                .and_then(CampaignId::parse)
                .ok_or_else(|| refuse("bad_command", "`campaign` (c-NNNNNN) is required"))
        };
        match cmd.op.as_str() {
            "create" => {
                let args = cmd
                    .create
                    .as_ref()
                    .ok_or_else(|| refuse("bad_command", "`create` is required"))?;
                let svc = self.campaigns()?;
                let artefact = match (&args.artefact, &args.url) {
                    (Some(a), None) => {
                        if a.len() != 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(refuse("bad_artefact_id", "64 hex digits"));
                        }
                        a.to_ascii_lowercase()
                    }
                    (None, Some(url)) => self.fetch_artefact(url, actor).await?,
                    _ => {
                        return Err(refuse(
                            "bad_command",
                            "give exactly one of `artefact` and `url`",
                        ))
                    }
                };
                let spec = CampaignSpec {
                    artefact,
                    targets: args.targets.clone(),
                    strategy: args.strategy,
                    name: args.name.clone(),
                    start: args.start,
                    start_at: args.start_at,
                    window: args.window.clone(),
                };
                let c = svc.create(spec, actor).await?;
                Ok(json!({"campaign": c.summary()}))
            }
            "start" | "pause" | "resume" | "cancel" | "approve" => {
                let action = CampaignAction::parse(&cmd.op)
                    .ok_or_else(|| refuse("unknown_op", "unknown operation"))?;
                let svc = self.campaigns()?;
                let id = campaign_id()?;
                let current = svc.get(&id).await?;
                // Idempotent: asking for the state it is in already changes nothing.
                let already = match action {
                    CampaignAction::Start | CampaignAction::Resume => {
                        current.state == CampaignState::Running
                    }
                    CampaignAction::Pause => current.state == CampaignState::Paused,
                    CampaignAction::Cancel => current.state == CampaignState::Cancelled,
                    // Approved already (or created where no approval is required).
                    CampaignAction::Approve => !matches!(
                        current.state,
                        CampaignState::AwaitingApproval | CampaignState::Cancelled
                    ),
                };
                let c = if already {
                    current
                } else if action == CampaignAction::Approve {
                    svc.approve(&id, actor).await?
                } else {
                    svc.act(&id, action, actor).await?
                };
                Ok(json!({"campaign": c.summary()}))
            }
            "status" => {
                let svc = self.campaigns()?;
                let c = svc.get(&campaign_id()?).await?;
                Ok(json!({"campaign": status_json(&c)}))
            }
            "upload_begin" | "upload_piece" | "upload_commit" => {
                let args = cmd
                    .upload
                    .as_ref()
                    .ok_or_else(|| refuse("bad_command", "`upload` is required"))?;
                self.upload(&cmd.op, args, actor).await
            }
            "list" => {
                let svc = self.campaigns()?;
                let list = svc.list().await?;
                Ok(json!({"campaigns": list}))
            }
            // The same function as `POST /campaigns/{id}/rollback`: the intent is checked
            // there (signed by the fleet key, for the campaign's role and hardware, not
            // expired, covering the nodes); the reply carries the per-node view.
            "rollback" => {
                let svc = self.campaigns()?;
                let id = campaign_id()?;
                let intent = cmd.intent.as_ref().ok_or_else(|| {
                    refuse(
                        "bad_command",
                        "`intent` (the signed rollback intent) is required",
                    )
                })?;
                let c = svc.rollback(&id, intent, actor).await?;
                Ok(json!({"campaign": status_json(&c)}))
            }
            op if crate::rollout_commands::OPS.contains(&op) => {
                let shared = self
                    .inner
                    .shared
                    .get()
                    .ok_or_else(|| refuse("not_ready", "the bridge is starting"))?;
                crate::rollout_commands::execute(shared, op, cmd.rollout.as_ref(), actor).await
            }
            other => Err(refuse("unknown_op", format!("unknown operation {other}"))),
        }
    }

    /// A streamed upload's step (`upload.rs`).
    async fn upload(&self, op: &str, args: &UploadArgs, actor: &str) -> Result<Value, Refusal> {
        let now = now_millis();
        let step = {
            let mut up = self
                .inner
                .uploads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match op {
                "upload_begin" => {
                    // Checked before any byte is taken: no key, no upload.
                    let shared = self
                        .inner
                        .shared
                        .get()
                        .ok_or_else(|| refuse("not_ready", "the bridge is starting"))?;
                    if shared.firmware_key.is_none() {
                        return Err(no_key());
                    }
                    let (id, pieces) = up.begin(args, now)?;
                    return Ok(json!({"upload": id, "pieces": pieces}));
                }
                "upload_piece" => {
                    let o = up.piece(args, now)?;
                    return Ok(json!({
                        "upload": args.upload, "index": args.index,
                        "duplicate": o.duplicate, "missing": o.missing,
                    }));
                }
                _ => up.commit(args, now)?,
            }
        };
        let (id, version) = self.store_artefact(step, actor).await?;
        Ok(json!({"upload": args.upload, "artefact": id, "version": version}))
    }

    /// Downloads, verifies against the fleet key, stores; the artefact's id.
    async fn fetch_artefact(&self, url: &str, actor: &str) -> Result<String, Refusal> {
        // Checked before downloading: no key, no download.
        let shared = self
            .inner
            .shared
            .get()
            .ok_or_else(|| refuse("not_ready", "the bridge is starting"))?;
        if shared.firmware_key.is_none() {
            return Err(no_key());
        }
        let cap = self.inner.cfg.commands.max_artefact;
        let body = crate::fetch::get(url, cap, self.inner.tls.get().cloned())
            .await
            .map_err(|e| refuse("download_failed", e.to_string()))?;
        Ok(self.store_artefact(body, actor).await?.0)
    }

    /// Verifies `body` (a `.mfw`) against the fleet key and stores it by its hash; its id
    /// and version.
    async fn store_artefact(
        &self,
        body: Vec<u8>,
        actor: &str,
    ) -> Result<(String, String), Refusal> {
        let shared = self
            .inner
            .shared
            .get()
            .ok_or_else(|| refuse("not_ready", "the bridge is starting"))?
            .clone();
        let key = shared.firmware_key.ok_or_else(no_key)?;
        let actor_name = actor.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            let artefact = Artefact::from_bytes(&body)
                .map_err(|e| refuse("bad_artefact", format!("not a valid .mfw file: {e}")))?;
            let v = artefact
                .verify(Some(&key))
                .map_err(|e| refuse("verification_failed", e.to_string()))?;
            let SignatureCheck::Verified(key_id) = v.signature() else {
                return Err(refuse(
                    "verification_failed",
                    "the signature was not checked",
                ));
            };
            let info = ArtefactInfo::verified(&body, artefact.manifest(), &key_id, &actor_name);
            Ok((info, body))
        })
        .await
        .map_err(|_| refuse("internal", "verification task failed"))??;
        let (info, body) = verified;
        let (id, version) = (info.id.clone(), info.version.clone());
        shared
            .stores
            .artefacts
            .put(info.clone(), body)
            .await
            .map_err(|e| refuse("store_error", e.to_string()))?;
        shared
            .bus
            .publish(meshfleet_gateway::events::GatewayEvent::FirmwareAdded { artefact: info });
        let _ = shared
            .stores
            .audit
            .record(AuditEntry {
                ts: now_millis(),
                actor: actor.to_owned(),
                action: "firmware.upload".into(),
                target: id.clone(),
            })
            .await;
        info!(artefact = %id, "artefact received over MQTT");
        Ok((id, version))
    }

    /// Progress (0..1) of nodes a running campaign is updating now (for Home Assistant's
    /// update entity).
    pub async fn node_progress(&self) -> HashMap<u32, f64> {
        let mut out = HashMap::new();
        let Ok(svc) = self.campaigns() else {
            return out;
        };
        let Ok(list) = svc.list().await else {
            return out;
        };
        let now = now_millis();
        for c in list.iter().filter(|c| c.state == CampaignState::Running) {
            // A queued node counts as under way only while its campaign may serve: one
            // waiting for its start time or maintenance window is not in progress yet.
            let serving = c.serving_at(now);
            if let Ok(full) = svc.get(&c.id).await {
                for n in full.nodes.iter().filter(|n| {
                    n.state == NodeState::InProgress || (serving && n.state == NodeState::Queued)
                }) {
                    out.insert(n.node, n.progress);
                }
            }
        }
        out
    }

    /// Home Assistant's install button (`payload_install` on `<prefix>/ha/install/<node>`).
    /// Home Assistant cannot sign, so this works only with `allow-install`, and then only
    /// installs the newest artefact already in the store for the node's role and
    /// hardware.
    pub async fn ha_install(
        &self,
        node: &str,
        payload: &[u8],
        allowed: bool,
    ) -> Option<CommandReply> {
        let actor = "mqtt:homeassistant";
        let result = self.ha_install_inner(node, payload, allowed, actor).await;
        let (ok, code, target) = match &result {
            Ok(c) => (true, None, format!("node {node} campaign {c}")),
            Err(r) => (false, Some(r.code), format!("node {node} {}", r.code)),
        };
        let counter = if ok {
            &self.inner.metrics.commands_ok
        } else {
            &self.inner.metrics.commands_refused
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.audit(actor, "install", &target).await;
        Some(CommandReply {
            transaction: None,
            ok,
            code,
        })
    }

    async fn ha_install_inner(
        &self,
        node: &str,
        payload: &[u8],
        allowed: bool,
        actor: &str,
    ) -> Result<String, Refusal> {
        if !allowed {
            return Err(refuse(
                "install_disabled",
                "homeassistant.allow-install is off",
            ));
        }
        if payload != b"install" {
            return Err(refuse("bad_command", "payload must be `install`"));
        }
        let id: u32 = node
            .parse()
            .map_err(|_| refuse("bad_node_id", "not a node id"))?;
        let shared = self
            .inner
            .shared
            .get()
            .ok_or_else(|| refuse("not_ready", "starting"))?;
        let n = shared
            .registry
            .get(id)
            .ok_or_else(|| refuse("not_found", "unknown node"))?;
        // A node that does not say its role and hardware in telemetry: what the gateway
        // knows otherwise (its CAPS, the campaigns that updated it).
        let known = if n.role.is_none() || n.hardware.is_none() {
            meshfleet_gateway::campaign_engine::node_identities(
                shared,
                &std::iter::once(id).collect(),
            )
            .await
            .remove(&id)
        } else {
            None
        };
        let (role, hw) = (
            n.role
                .clone()
                .or_else(|| known.as_ref().map(|k| k.0.clone()))
                .unwrap_or_default(),
            n.hardware
                .clone()
                .or_else(|| known.as_ref().map(|k| k.1.clone()))
                .unwrap_or_default(),
        );
        let list = shared
            .stores
            .artefacts
            .list()
            .await
            .map_err(|e| refuse("store_error", e.to_string()))?;
        let best = list
            .iter()
            .filter(|a| a.role == role && a.hardware.eq_ignore_ascii_case(&hw))
            .filter_map(|a| {
                meshfleet_firmware::Version::parse(&a.version)
                    .ok()
                    .map(|v| (v, a))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, a)| a.id.clone())
            .ok_or_else(|| refuse("unknown_artefact", "no stored artefact for this node"))?;
        let svc = self.campaigns()?;
        let c = svc
            .create(
                CampaignSpec {
                    artefact: best,
                    targets: Targets::Nodes(vec![id]),
                    strategy: CampaignStrategy::Auto,
                    name: Some(format!("Home Assistant install on {id}")),
                    start: true,
                    start_at: None,
                    window: None,
                },
                actor,
            )
            .await?;
        Ok(c.id.to_string())
    }
}

/// The retained campaign status: the seeds' fields plus per-node AWS IoT Jobs states.
pub fn status_json(c: &Campaign) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "artefact": c.artefact,
        "version": c.version,
        "status": c.state.label(),
        "progress": c.progress,
        "updated_nodes": c.updated_nodes,
        "failed_nodes": c.failed_nodes,
        "total_nodes": c.total_nodes,
        "estimated_completion": c.estimated_completion_ms,
        "updated_at": c.updated_at_ms,
        "nodes": c.nodes.iter().map(|n| json!({
            "node": n.node,
            "status": n.state.label(),
            "progress": n.progress,
            "reason": n.reason,
        })).collect::<Vec<_>>(),
        // The rollback's view without the intent's text (on REST and in the store).
        "rollback": c.rollback.as_ref().map(|r| json!({
            "version": r.version,
            "requested_at": r.requested_at_ms,
            "requested_by": r.requested_by,
            "intent_expires": r.intent_expires,
            "rolled_back": r.rolled_back,
            "nodes": r.nodes,
        })),
    })
}

fn no_key() -> Refusal {
    refuse(
        "no_firmware_key",
        "this gateway has no firmware-key, so it cannot verify artefacts",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sniffs_transactions() {
        assert_eq!(
            sniff_transaction(br#"{"transaction": "t-1", "x": 1}"#).as_deref(),
            Some("t-1")
        );
        let env = json!({"command": json!({"transaction": "abc"}).to_string(), "signature": ""})
            .to_string();
        assert_eq!(sniff_transaction(env.as_bytes()).as_deref(), Some("abc"));
        assert_eq!(sniff_transaction(br#"{"transaction": "a/b"}"#), None);
        assert_eq!(sniff_transaction(b"garbage"), None);
    }
}
