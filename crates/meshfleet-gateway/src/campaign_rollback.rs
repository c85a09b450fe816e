//! Rolling a campaign back: [`CampaignService::rollback`], the one function behind
//! `POST /campaigns/{id}/rollback` and the MQTT `rollback` command.
//!
//! The gateway holds no signing key, so a rollback needs the operator's signed rollback
//! intent (`meshfleet firmware intent --rollback`, `docs/ota-protocol.md` 2.9). It is
//! checked as a rollout's is (`rollout.rs`, `check_intent`): signed by the fleet key,
//! action `rollback`, the campaign artefact's role and hardware, not expired, its node
//! scope covering the nodes to roll back; and it must name another version than the
//! campaign's.
//!
//! The nodes rolled back are the campaign's nodes that took the update (`SUCCEEDED`, or
//! reporting the campaign's version). Each gets, as a rollout's would:
//! * a meshfleet node (its telemetry names an OTA role): the signed ROLLBACK (707) through
//!   the gateway's node; it boots its previous slot and reports the version again;
//! * a stock node: the previous artefact offered again, by a campaign for those nodes, if
//!   the store holds an artefact with the intent's version and image hash; otherwise the
//!   node is `UNAVAILABLE` with the reason, so nobody believes in a rollback that cannot
//!   happen.
//!
//! The per-node states live in the campaign (`rollback`, persisted with its record) and
//! move on the engine's tick (`CampaignService::refresh_rollbacks`): `ROLLED_BACK` when
//! the node reports the intent's version; a ROLLBACK that found no route is sent again.
//! A campaign that is not finished is cancelled first. Asking again with the same intent
//! changes nothing (the nodes still pending get the command again); every request is
//! audited (`campaign.rollback`).

use std::collections::BTreeSet;

use meshfleet_firmware::Intent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::campaign::{
    Campaign, CampaignAction, CampaignError, CampaignId, CampaignService, CampaignSpec,
    CampaignStrategy, NodeState, Targets,
};
use crate::campaign_engine::GatewayOta;
use crate::model::UnixMillis;
use crate::{now_millis, Shared};

/// How a node is rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RollbackVia {
    /// The signed ROLLBACK command (a meshfleet node boots its previous slot).
    Command,
    /// The previous artefact offered again (a stock node).
    Reoffer,
}

/// A node's rollback state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RollbackState {
    /// The ROLLBACK command was sent; waiting for the node to report the version.
    Sent,
    /// No route to the node now: the command is sent again when there is one.
    NoRoute,
    /// The previous artefact is being offered again (`campaign` says by which campaign).
    Reoffered,
    /// The node reports the previous version.
    RolledBack,
    /// It cannot be rolled back (`reason` says why).
    Unavailable,
}

impl RollbackState {
    /// Nothing more happens to the node.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::RolledBack | Self::Unavailable)
    }
}

/// One node of a campaign's rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RollbackNode {
    /// The node.
    pub node: u32,
    /// How.
    pub via: RollbackVia,
    /// Where it is.
    pub state: RollbackState,
    /// Why it is unavailable, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The campaign re-offering the previous artefact (stock nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub campaign: Option<CampaignId>,
    /// Last change (ms since the epoch).
    pub updated_at_ms: UnixMillis,
}

/// A campaign's rollback: asked for once, its nodes followed to the previous version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CampaignRollback {
    /// The version the nodes go back to (the intent's).
    pub version: String,
    /// When it was asked for (ms since the epoch).
    pub requested_at_ms: UnixMillis,
    /// Who asked.
    pub requested_by: String,
    /// When the intent expires (Unix seconds); the command is not sent after.
    pub intent_expires: u64,
    /// The operator's signed rollback intent (JSON text), sent as the ROLLBACK command.
    pub intent: String,
    /// Nodes rolled back.
    pub rolled_back: u32,
    /// Every node that took the update.
    pub nodes: Vec<RollbackNode>,
}

impl CampaignRollback {
    fn recount(&mut self) {
        self.rolled_back = self
            .nodes
            .iter()
            .filter(|n| n.state == RollbackState::RolledBack)
            .count() as u32;
    }
}

/// `POST /campaigns/{id}/rollback`'s body.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The operator's signed rollback intent (`meshfleet firmware intent --rollback`,
    /// JSON): for the previous version, the campaign artefact's role and hardware.
    #[schema(value_type = Object)]
    pub intent: Value,
}

/// Sends the signed ROLLBACK to `node`; whether there was a route.
async fn send(shared: &Shared, node: u32, intent: &Intent) -> bool {
    let cmd = intent.clone();
    crate::campaign_engine::on_node(shared, move |n, now| {
        n.with_plugin::<GatewayOta, _>(now, |p, ctx| p.send_rollback(ctx, node, &cmd))
    })
    .await
    .flatten()
        == Some(true)
}

impl CampaignService {
    /// Rolls back the nodes of campaign `id` that took its update, with the operator's
    /// signed rollback `intent` (see the module docs). A campaign not finished is
    /// cancelled first. Returns the campaign with its `rollback` view.
    pub async fn rollback(
        &self,
        id: &CampaignId,
        intent: &Value,
        actor: &str,
    ) -> Result<Campaign, CampaignError> {
        let shared = self.shared()?;
        let c = self.get(id).await?;
        let artefact = shared
            .stores
            .artefacts
            .list()
            .await?
            .into_iter()
            .find(|a| a.id == c.artefact)
            .ok_or_else(|| CampaignError::UnknownArtefact(c.artefact.clone()))?;
        // The nodes that took the update.
        let updated: BTreeSet<u32> = c
            .nodes
            .iter()
            .filter(|n| {
                n.state == NodeState::Succeeded
                    || shared
                        .registry
                        .get(n.node)
                        .and_then(|r| r.firmware)
                        .is_some_and(|f| f == c.version)
            })
            .map(|n| n.node)
            .collect();
        let (text, expires) = crate::rollout::check_intent(
            &shared,
            intent,
            &artefact.role,
            &artefact.hardware,
            None,
            None,
            &updated,
        )
        .map_err(|e| match e {
            crate::rollout::RolloutError::BadIntent(s) => CampaignError::BadIntent(s),
            other => CampaignError::BadIntent(other.to_string()),
        })?;
        let parsed = Intent::from_json(text.as_bytes())
            .map_err(|e| CampaignError::BadIntent(e.to_string()))?;
        let version = parsed.version.to_string();
        if version == c.version {
            return Err(CampaignError::BadIntent(format!(
                "it names version {version}, the campaign's own"
            )));
        }
        // The same intent again: nothing new, the pending nodes get the command again.
        if let Some(prev) = c.rollback.as_ref().filter(|r| r.intent == text) {
            for n in prev
                .nodes
                .iter()
                .filter(|n| matches!(n.state, RollbackState::Sent | RollbackState::NoRoute))
            {
                send(&shared, n.node, &parsed).await;
            }
            crate::campaign::audit(&shared, actor, "campaign.rollback.repeat", id, now_millis())
                .await;
            return self.get(id).await;
        }
        if updated.is_empty() {
            return Err(CampaignError::NothingToRollBack);
        }
        if !c.state.is_finished() {
            self.act(id, CampaignAction::Cancel, actor).await?;
        }
        // The previous artefact, for stock nodes: same role and hardware, the intent's
        // version and image.
        let previous = shared.stores.artefacts.list().await?.into_iter().find(|a| {
            a.role == artefact.role
                && a.hardware.eq_ignore_ascii_case(&artefact.hardware)
                && a.version == version
                && a.image_sha256
                    .eq_ignore_ascii_case(&parsed.sha256.to_string())
        });
        let now = now_millis();
        let already: std::collections::BTreeMap<u32, RollbackNode> = c
            .rollback
            .iter()
            .flat_map(|r| r.nodes.iter())
            .filter(|n| n.state == RollbackState::RolledBack)
            .map(|n| (n.node, n.clone()))
            .collect();
        let mut nodes = Vec::new();
        let mut stock = Vec::new();
        for &node in &updated {
            if let Some(done) = already.get(&node) {
                nodes.push(done.clone());
                continue;
            }
            // As the rollout decides: a node that sends meshfleet telemetry names its OTA
            // role; a stock node sends only the status package.
            let meshfleet = shared.registry.get(node).is_some_and(|r| r.role.is_some());
            if meshfleet {
                let state = if send(&shared, node, &parsed).await {
                    RollbackState::Sent
                } else {
                    RollbackState::NoRoute
                };
                nodes.push(RollbackNode {
                    node,
                    via: RollbackVia::Command,
                    state,
                    reason: None,
                    campaign: None,
                    updated_at_ms: now,
                });
            } else {
                stock.push(node);
            }
        }
        if !stock.is_empty() {
            let (state, reason, campaign) = match &previous {
                None => (
                    RollbackState::Unavailable,
                    Some(format!(
                        "the previous artefact ({} {} {version}, image {}) is not in the store",
                        artefact.role, artefact.hardware, parsed.sha256
                    )),
                    None,
                ),
                Some(prev) => {
                    let spec = CampaignSpec {
                        artefact: prev.id.clone(),
                        targets: Targets::Nodes(stock.clone()),
                        strategy: CampaignStrategy::Auto,
                        name: Some(format!("rollback of {id}")),
                        start: true,
                        start_at: None,
                        window: None,
                    };
                    // The signed intent is the operator's approval of this re-offer.
                    match crate::rollout::create_wave_campaign(&shared, spec, actor).await {
                        Ok(r) => (RollbackState::Reoffered, None, Some(r.id)),
                        Err(e) => (RollbackState::Unavailable, Some(e.to_string()), None),
                    }
                }
            };
            for node in stock {
                nodes.push(RollbackNode {
                    node,
                    via: RollbackVia::Reoffer,
                    state,
                    reason: reason.clone(),
                    campaign: campaign.clone(),
                    updated_at_ms: now,
                });
            }
        }
        nodes.sort_by_key(|n| n.node);
        let mut rb = CampaignRollback {
            version,
            requested_at_ms: now,
            requested_by: actor.to_owned(),
            intent_expires: expires,
            intent: text,
            rolled_back: 0,
            nodes,
        };
        rb.recount();
        info!(campaign = %id, nodes = rb.nodes.len(), version = %rb.version, "campaign rollback");
        let c = self
            .set_rollback(id, |slot| {
                *slot = Some(rb);
                true
            })
            .await?;
        crate::campaign::audit(&shared, actor, "campaign.rollback", id, now).await;
        Ok(c)
    }

    /// Moves the rollbacks on (the engine's tick): a node reporting the intent's version
    /// is `ROLLED_BACK`; a re-offer that ended otherwise is `UNAVAILABLE`; a ROLLBACK that
    /// found no route is sent again while the intent is valid.
    pub(crate) async fn refresh_rollbacks(&self) {
        let Ok(shared) = self.shared() else {
            return;
        };
        let open: Vec<Campaign> = self.with_campaigns(|it| {
            it.filter(|c| {
                c.rollback
                    .as_ref()
                    .is_some_and(|r| r.nodes.iter().any(|n| !n.state.is_terminal()))
            })
            .cloned()
            .collect()
        });
        let now_s = u64::try_from(now_millis() / 1000).unwrap_or(0);
        for c in open {
            let Some(rb) = c.rollback.clone() else {
                continue;
            };
            let mut next = rb.clone();
            let intent = Intent::from_json(rb.intent.as_bytes()).ok();
            for n in next.nodes.iter_mut().filter(|n| !n.state.is_terminal()) {
                let runs = shared
                    .registry
                    .get(n.node)
                    .and_then(|r| r.firmware)
                    .is_some_and(|f| f == rb.version);
                if runs {
                    n.state = RollbackState::RolledBack;
                    n.reason = None;
                    n.updated_at_ms = now_millis();
                    continue;
                }
                match n.state {
                    RollbackState::NoRoute => {
                        if let Some(i) = intent.as_ref().filter(|_| rb.intent_expires > now_s) {
                            if send(&shared, n.node, i).await {
                                n.state = RollbackState::Sent;
                                n.updated_at_ms = now_millis();
                            }
                        }
                    }
                    RollbackState::Reoffered => {
                        let ended = match &n.campaign {
                            Some(cid) => self.get(cid).await.ok().and_then(|r| {
                                r.nodes
                                    .iter()
                                    .find(|m| m.node == n.node)
                                    .filter(|m| {
                                        m.state.is_terminal() && m.state != NodeState::Succeeded
                                    })
                                    .map(|m| {
                                        format!(
                                            "the re-offer ended {}{}",
                                            m.state.label(),
                                            m.reason
                                                .as_deref()
                                                .map(|r| format!(" ({r})"))
                                                .unwrap_or_default()
                                        )
                                    })
                            }),
                            None => None,
                        };
                        if let Some(why) = ended {
                            n.state = RollbackState::Unavailable;
                            n.reason = Some(why);
                            n.updated_at_ms = now_millis();
                        }
                    }
                    _ => {}
                }
            }
            next.recount();
            if next != rb {
                let r = self
                    .set_rollback(&c.id, |slot| {
                        // Only if nobody replaced it meanwhile (a new request).
                        if slot.as_ref().is_some_and(|s| s.intent == rb.intent) {
                            *slot = Some(next);
                            true
                        } else {
                            false
                        }
                    })
                    .await;
                if let Err(e) = r {
                    warn!(campaign = %c.id, error = %e, "cannot store the rollback's progress");
                }
            }
        }
    }
}
