//! Node lifecycle: a node whose heartbeat Lease has not been renewed within the grace period is
//! marked `Ready=Unknown` ("Kubelet stopped posting node status", as Kubernetes says) and tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute); when its agent is back (lease
//! renewed and the agent posting `Ready=True` again) the taints are removed.
//!
//! Pods leave a tainted node through the taint-eviction controller (`taintmanager.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::client::Api;
use serde_json::{Value, json};

use super::cache::Cached;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What to do about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Lease expired: mark Ready=Unknown and add the unreachable taints.
    MarkUnreachable,
    /// Heartbeats are back and the node reports Ready: remove the unreachable taints.
    ClearTaints,
}

fn ready_status(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
}

fn has_unreachable_taint(node: &Value) -> bool {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| t["key"] == UNREACHABLE_TAINT))
}

/// When the node was last heard from: its Lease's renewTime, else its Ready heartbeat.
pub fn last_heartbeat(node: &Value, lease: Option<&Value>) -> Option<DateTime<Utc>> {
    let parse = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    lease
        .and_then(|l| l.pointer("/spec/renewTime").and_then(Value::as_str))
        .and_then(parse)
        .or_else(|| {
            node.pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["lastHeartbeatTime"].as_str())
                .and_then(parse)
        })
}

/// The pure decision for one node.
pub fn decide(node: &Value, lease: Option<&Value>, now: DateTime<Utc>, grace: Duration) -> Action {
    let Some(last) = last_heartbeat(node, lease) else {
        // Never heard from (a Node object without an agent yet): leave it alone.
        return Action::Nothing;
    };
    let stale = now
        .signed_duration_since(last)
        .to_std()
        .is_ok_and(|age| age > grace);
    let tainted = has_unreachable_taint(node);
    let ready = ready_status(node);
    if stale {
        if ready != Some("Unknown") || !tainted {
            Action::MarkUnreachable
        } else {
            Action::Nothing
        }
    } else if tainted && ready == Some("True") {
        Action::ClearTaints
    } else {
        Action::Nothing
    }
}

async fn apply<A: Api>(
    api: &A,
    node: &Value,
    action: &Action,
    now: DateTime<Utc>,
) -> Result<(), ferry_api::client::ClientError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match action {
        Action::Nothing => Ok(()),
        Action::MarkUnreachable => {
            let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut updated = node.clone();
            if let Some(conds) = updated
                .pointer_mut("/status/conditions")
                .and_then(Value::as_array_mut)
            {
                for c in conds.iter_mut() {
                    if c["status"] != "Unknown" {
                        c["lastTransitionTime"] = json!(stamp);
                    }
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                }
            }
            api.update_status("Node", &updated).await?;
            if !has_unreachable_taint(node) {
                for effect in ["NoSchedule", "NoExecute"] {
                    taints.push(
                        json!({"key": UNREACHABLE_TAINT, "effect": effect, "timeAdded": stamp}),
                    );
                }
                api.patch("Node", "", name, &json!({"spec": {"taints": taints}}))
                    .await?;
            }
            tracing::warn!(node = name, "node stopped heartbeating: marked unreachable");
            Ok(())
        }
        Action::ClearTaints => {
            taints.retain(|t| t["key"] != UNREACHABLE_TAINT);
            let value = if taints.is_empty() {
                Value::Null
            } else {
                Value::Array(taints)
            };
            api.patch("Node", "", name, &json!({"spec": {"taints": value}}))
                .await?;
            tracing::info!(
                node = name,
                "node heartbeating again: unreachable taints removed"
            );
            Ok(())
        }
    }
}

/// One pass over every node.
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    grace: Duration,
) -> Result<usize, ferry_api::client::ClientError> {
    let nodes = api.snapshot("Node").await?;
    let leases = api.snapshot("Lease").await?;
    let leases: std::collections::HashMap<&str, &Value> = leases
        .iter()
        .filter(|l| super::str_at(l, "/metadata/namespace") == LEASE_NAMESPACE)
        .map(|l| (super::str_at(l, "/metadata/name"), &**l))
        .collect();
    let now = Utc::now();
    let mut acted = 0;
    for node in &nodes {
        let node: &Value = node;
        let name = super::str_at(node, "/metadata/name");
        let lease = leases.get(name).copied();
        let action = decide(node, lease, now, grace);
        if action != Action::Nothing {
            match apply(api, node, &action, now).await {
                Ok(()) => acted += 1,
                // A conflict means the node changed under us: the next pass sees the new state.
                Err(e) => tracing::debug!(node = name, "node lifecycle: {e}"),
            }
        }
    }
    Ok(acted)
}

/// Runs a pass every second on the leader (heartbeats age with time, not with store changes).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
    grace: Duration,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_secs(1),
    };
    let mut turns = super::Turns::new("nodelifecycle", node, pace);
    while turns.next().await {
        if let Err(e) = reconcile_all(&api, grace).await {
            turns.failed(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, hb: &str, tainted: bool) -> Value {
        let taints = if tainted {
            json!([{"key": UNREACHABLE_TAINT, "effect": "NoExecute"}])
        } else {
            json!([])
        };
        json!({"metadata": {"name": "n"}, "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": hb}]}})
    }

    fn lease(renew: &str) -> Value {
        json!({"metadata": {"name": "n"}, "spec": {"renewTime": renew}})
    }

    #[test]
    fn decisions_follow_the_lease() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let grace = Duration::from_secs(10);
        let fresh = lease("2026-01-01T00:00:55.000000Z");
        let stale = lease("2026-01-01T00:00:40.000000Z");
        let old_hb = "2026-01-01T00:00:00Z";
        assert_eq!(
            decide(&node("True", old_hb, false), Some(&fresh), now, grace),
            Action::Nothing
        );
        assert_eq!(
            decide(&node("True", old_hb, false), Some(&stale), now, grace),
            Action::MarkUnreachable
        );
        assert_eq!(
            decide(&node("Unknown", old_hb, true), Some(&stale), now, grace),
            Action::Nothing,
            "already marked"
        );
        assert_eq!(
            decide(&node("True", old_hb, true), Some(&fresh), now, grace),
            Action::ClearTaints
        );
        assert_eq!(
            decide(&node("Unknown", old_hb, true), Some(&fresh), now, grace),
            Action::Nothing,
            "wait for the agent to report Ready before clearing"
        );
        // No lease: the Ready heartbeat counts; nothing at all: leave alone.
        assert_eq!(
            decide(
                &node("True", "2026-01-01T00:00:58Z", false),
                None,
                now,
                grace
            ),
            Action::Nothing
        );
        assert_eq!(
            decide(&node("True", old_hb, false), None, now, grace),
            Action::MarkUnreachable
        );
        assert_eq!(
            decide(&json!({"metadata": {"name": "n"}}), None, now, grace),
            Action::Nothing
        );
    }
}
