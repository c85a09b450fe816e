//! Progressive rollouts over MQTT (issue 14): the operator's rollout commands and the
//! retained `<prefix>/ota/rollout/<id>` status.
//!
//! The commands are OTA commands (`commands.rs`): published on
//! `<prefix>/ota/request/<op>`, checked the same way (size, the operator's signed envelope,
//! typed shape, `ts` freshness and nonce), answered on `<prefix>/ota/response/<transaction>`
//! through the outbox, audited. Their arguments are in one `rollout` object:
//!
//! | op | `rollout` | does |
//! |---|---|---|
//! | `rollout_create` | `{"create": <POST /rollouts body>}` | creates and plans a rollout |
//! | `rollout_approve`, `_pause`, `_resume`, `_abort`, `_rollback` | `{"id": "r-000001"}` | the operator's command |
//! | `rollout_skip` | `{"id": "r-000001", "to": 2}` | starts wave `to` now |
//! | `rollout_status` | `{"id": "r-000001"}` | the rollout with its waves and nodes |
//!
//! A refused controller command (`approve` while running, a skip backwards) is the reply
//! `command_not_applicable` and changes nothing. The rollback intent given to
//! `rollout_create` is checked as over REST: signed by the fleet key, for the rollout's
//! previous image and nodes, not expired (`docs/rollouts.md`).

use meshfleet_gateway::rollout::{Rollout, RolloutAction, RolloutError, RolloutId, RolloutSpec};
use meshfleet_gateway::Shared;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::commands::{refuse, Refusal};

/// The rollout operations.
pub const OPS: [&str; 8] = [
    "rollout_create",
    "rollout_approve",
    "rollout_pause",
    "rollout_resume",
    "rollout_skip",
    "rollout_abort",
    "rollout_rollback",
    "rollout_status",
];

/// A rollout command's arguments (the command's `rollout` object).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    /// The rollout (every op but create).
    #[serde(default)]
    id: Option<String>,
    /// `rollout_skip`: the wave to start.
    #[serde(default)]
    to: Option<u16>,
    /// `rollout_create`: what `POST /rollouts` takes.
    #[serde(default)]
    create: Option<RolloutSpec>,
}

impl From<RolloutError> for Refusal {
    fn from(e: RolloutError) -> Self {
        let code = match &e {
            RolloutError::NotFound(_) => "not_found",
            RolloutError::UnknownArtefact(_) => "unknown_artefact",
            RolloutError::InvalidSpec(_) => "invalid_spec",
            RolloutError::BadIntent(_) => "invalid_rollback_intent",
            RolloutError::Plan(_) => "cannot_plan",
            RolloutError::Command(_) => "command_not_applicable",
            RolloutError::MeshStopped => "mesh_stopped",
            _ => "store_error",
        };
        refuse(code, e.to_string())
    }
}

/// Carries out rollout command `op` with its `rollout` arguments.
pub(crate) async fn execute(
    shared: &Shared,
    op: &str,
    args: Option<&Value>,
    actor: &str,
) -> Result<Value, Refusal> {
    let args: Args = serde_json::from_value(
        args.cloned()
            .ok_or_else(|| refuse("bad_command", "`rollout` is required"))?,
    )
    .map_err(|e| refuse("bad_command", format!("`rollout`: {e}")))?;
    let svc = &shared.rollouts;
    let id = || {
        args.id
            .as_deref()
            .and_then(RolloutId::parse)
            .ok_or_else(|| refuse("bad_command", "`rollout.id` (r-NNNNNN) is required"))
    };
    let command = match op {
        "rollout_create" => {
            let spec = args
                .create
                .clone()
                .ok_or_else(|| refuse("bad_command", "`rollout.create` is required"))?;
            let r = svc.create(spec, actor).await?;
            return Ok(json!({ "rollout": status_json(&r) }));
        }
        "rollout_status" => {
            let r = svc.get(&id()?)?;
            return Ok(json!({ "rollout": r }));
        }
        other => {
            let action = other
                .strip_prefix("rollout_")
                .and_then(RolloutAction::parse)
                .ok_or_else(|| refuse("unknown_op", format!("unknown operation {other}")))?;
            if action == RolloutAction::Skip && args.to.is_none() {
                return Err(refuse("bad_command", "`rollout.to` (a wave) is required"));
            }
            action
                .command(args.to)
                .ok_or_else(|| refuse("bad_command", "`rollout.to` (a wave) is required"))?
        }
    };
    let r = svc.command(&id()?, command, actor).await?;
    Ok(json!({ "rollout": status_json(&r) }))
}

/// The retained `<prefix>/ota/rollout/<id>` payload: the state, the counts per wave and
/// the rollback figures (the node list and the decision log stay on REST and in
/// `rollout_status`, so the retained message stays small).
pub fn status_json(r: &Rollout) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "artefact": r.artefact,
        "version": r.version,
        "previous_version": r.previous_version,
        "status": r.state,
        "status_detail": r.state_detail,
        "current_wave": r.current_wave,
        "exposed": r.exposed,
        "in_flight": r.in_flight,
        "rollback_ordered": r.rollback_ordered,
        "rolled_back": r.rolled_back,
        "restored_s": r.restored_s,
        "auto_rollback": r.auto_rollback,
        "waves": r.waves,
        "updated_at": r.updated_at_ms,
    })
}

/// The retained status of rollout `id` as (topic below the prefix, payload), if it exists.
pub fn retained(shared: &Shared, id: &RolloutId) -> Option<(String, Vec<u8>)> {
    let r = shared.rollouts.get(id).ok()?;
    Some((
        format!("ota/rollout/{}", r.id),
        status_json(&r).to_string().into_bytes(),
    ))
}
