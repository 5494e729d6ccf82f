//! Deployments: roll a pod template out through ReplicaSets the Deployment owns, as Kubernetes'
//! deployment controller does, plus Ferry's BlueGreen strategy.
//!
//! Each pod template gets a ReplicaSet `<deployment>-<pod-template-hash>` (controller
//! ownerReference, the `pod-template-hash` label added to its selector, labels and pod
//! template). The *new* ReplicaSet is the oldest one whose template equals the Deployment's,
//! ignoring that label (Kubernetes' `EqualIgnoreHash`); every other one is *old*. Revisions
//! (`deployment.kubernetes.io/revision` on ReplicaSets and the Deployment) number templates in
//! the order they were rolled out; a template rolled out again (`ferry rollout undo`) takes the
//! next revision. Old ReplicaSets scaled to zero beyond `spec.revisionHistoryLimit` are deleted
//! once a rollout completes.
//!
//! Strategies:
//! - `RollingUpdate`: the new ReplicaSet grows while old ones shrink, never more than
//!   `replicas + maxSurge` pods specified and never fewer than `replicas - maxUnavailable`
//!   available (surge rounds up, unavailable rounds down; 25%/25% by default). Unhealthy old pods
//!   go first. Changes of `spec.replicas` mid-rollout are spread over the ReplicaSets in
//!   proportion to their size (`deployment.kubernetes.io/desired-replicas`, `max-replicas`).
//! - `Recreate`: old ReplicaSets go to zero, and the new one is created only once no old pod is
//!   left (terminating ones included).
//! - `BlueGreen` (Ferry's): the new ReplicaSet is created at full size beside the one serving
//!   traffic. The Service named by the `ferry.dev/active-service` annotation selects the pods of
//!   the ReplicaSet whose hash is in `ferry.dev/active-pod-template-hash`, and the one named by
//!   `ferry.dev/preview-service` (optional) those of the new ReplicaSet; each is switched by one
//!   write of its `pod-template-hash` selector key. `ferry rollout promote` sets the active hash
//!   to the new ReplicaSet's; the previously active ReplicaSet stays at full size as the instant
//!   rollback target until the next rollout. The first template rolls out active at once.
//!
//! Availability is computed from the pods (Ready for `minReadySeconds`), not from ReplicaSet
//! status, and an old ReplicaSet counts at most `spec.replicas` available pods: a status that
//! lags a scale-down can then never license a second one. `spec.paused` stops rollouts (scaling
//! still applies); `progressDeadlineSeconds` without progress sets Progressing=False
//! (ProgressDeadlineExceeded). Level-triggered on the leader through [`Api`]; [`plan`] is pure.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_api::client::{Api, ClientError};
use ferry_api::selector::LabelSelector;
use serde_json::{Map, Value, json};

use crate::apiserver::objects::labels;
use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// BlueGreen: the Service that carries production traffic (required by validation).
pub const ACTIVE_SERVICE: &str = ferry_api::validation::BLUE_GREEN_ACTIVE_SERVICE;
/// BlueGreen: a Service that always selects the newest ReplicaSet (optional).
pub const PREVIEW_SERVICE: &str = "ferry.dev/preview-service";
/// BlueGreen: the pod-template-hash the active Service selects (set by `rollout promote` and
/// `rollout undo`; by the controller for the first template).
pub const ACTIVE_HASH: &str = "ferry.dev/active-pod-template-hash";

/// Progressing / Available condition reasons, as in Kubernetes (plus AwaitingPromotion).
pub mod reason {
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    pub const PAUSED: &str = "DeploymentPaused";
    pub const RESUMED: &str = "DeploymentResumed";
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// BlueGreen: the new ReplicaSet is fully available and the active Service still selects
    /// another one. Not subject to the progress deadline.
    pub const AWAITING_PROMOTION: &str = "AwaitingPromotion";
}

/// Annotations never copied between a Deployment and its ReplicaSets (Kubernetes'
/// `annotationsToSkip`), plus Ferry's BlueGreen bookkeeping (`ferry.dev/...`).
pub fn skip_annotation(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED
            | REVISION
            | REVISION_HISTORY
            | DESIRED_REPLICAS
            | MAX_REPLICAS
            | "deprecated.deployment.rollback.to"
    ) || key.starts_with("ferry.dev/")
}

// ---------------------------------------------------------------------------------------------
// Template hashing and identity

/// JSON with object keys sorted, whatever serde_json's map order is.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `pod-template-hash` of a pod template: FNV-1a (32 bit) of its canonical JSON and, after a
/// name collision, of the collision count; encoded as Kubernetes does (`rand.SafeEncodeString`
/// of the decimal value), e.g. `5d59d67564`.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut text = String::new();
    canonical(template, &mut text);
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(text.as_bytes());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// A pod template without the `pod-template-hash` label.
pub fn strip_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(HASH_LABEL);
    }
    t
}

/// Whether a ReplicaSet runs the Deployment's current template (ignoring the hash label).
pub fn runs_template(rs: &Value, deployment: &Value) -> bool {
    let rs_t = strip_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null));
    let d_t = strip_hash(deployment.pointer("/spec/template").unwrap_or(&Value::Null));
    rs_t == d_t
}

pub fn controller_uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// A ReplicaSet's revision (0 when it has none).
pub fn revision_of(obj: &Value) -> i64 {
    annotation(obj, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSets a Deployment owns, and of them the new one (oldest first among equals, as
/// Kubernetes' `FindNewReplicaSet`).
pub fn owned_sets<'a, S: Borrow<Value>>(
    deployment: &Value,
    sets: &'a [S],
) -> (Vec<&'a Value>, Option<&'a Value>) {
    let uid = s(deployment, "/metadata/uid");
    let ns = s(deployment, "/metadata/namespace");
    let mut owned: Vec<&Value> = sets
        .iter()
        .map(Borrow::borrow)
        .filter(|r| s(r, "/metadata/namespace") == ns && controller_uid(r) == Some(uid))
        .collect();
    owned.sort_by_key(|r| creation_key(r));
    let new = owned.iter().copied().find(|r| runs_template(r, deployment));
    (owned, new)
}

fn creation_key(obj: &Value) -> (String, String) {
    (
        s(obj, "/metadata/creationTimestamp").to_string(),
        s(obj, "/metadata/name").to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The Deployment's spec

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyType {
    RollingUpdate,
    Recreate,
    BlueGreen,
}

/// `intstr.GetScaledValueFromIntOrPercent`: an integer, or a percentage of `total` rounded up or
/// down.
pub fn scaled_value(v: &Value, total: i64, round_up: bool) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid value {n}")),
        Value::String(p) => {
            let pct: i64 = p
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!("invalid value {p:?}: must be an integer or a percentage")
                })?;
            let x = pct * total;
            Ok(if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            })
        }
        Value::Null => Ok(0),
        other => Err(format!("invalid value {other}")),
    }
}

/// `ResolveFenceposts`: (maxSurge rounded up, maxUnavailable rounded down), with unavailable
/// raised to 1 when both are 0 so a rollout can always proceed.
pub fn resolve_fenceposts(
    surge: &Value,
    unavailable: &Value,
    desired: i64,
) -> Result<(i64, i64), String> {
    let s = scaled_value(surge, desired, true)?;
    let u = scaled_value(unavailable, desired, false)?;
    Ok(if s == 0 && u == 0 { (0, 1) } else { (s, u) })
}

/// What the controller reads from a Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: i64,
    pub replicas: i64,
    pub strategy: StrategyType,
    /// Resolved against `replicas`; 0 unless RollingUpdate.
    pub max_surge: i64,
    /// Resolved against `replicas` and capped at it; 0 unless RollingUpdate.
    pub max_unavailable: i64,
    pub min_ready_seconds: i64,
    /// None: no deadline (unset, or math.MaxInt32 as in Kubernetes).
    pub progress_deadline: Option<i64>,
    /// None: keep every revision.
    pub history_limit: Option<i64>,
    pub paused: bool,
}

impl Spec {
    pub fn from(d: &Value) -> Result<Spec, String> {
        let int = |p: &str| d.pointer(p).and_then(Value::as_i64);
        let replicas = int("/spec/replicas").unwrap_or(1).max(0);
        let strategy = match s(d, "/spec/strategy/type") {
            "" | "RollingUpdate" => StrategyType::RollingUpdate,
            "Recreate" => StrategyType::Recreate,
            "BlueGreen" => StrategyType::BlueGreen,
            other => return Err(format!("spec.strategy.type: unsupported value {other:?}")),
        };
        let (max_surge, max_unavailable) = if strategy == StrategyType::RollingUpdate {
            let pct = json!("25%");
            let ru = d.pointer("/spec/strategy/rollingUpdate");
            let surge = ru.and_then(|r| r.get("maxSurge")).unwrap_or(&pct);
            let unavailable = ru.and_then(|r| r.get("maxUnavailable")).unwrap_or(&pct);
            let (s, u) = resolve_fenceposts(surge, unavailable, replicas)
                .map_err(|e| format!("spec.strategy.rollingUpdate: {e}"))?;
            (s, u.min(replicas))
        } else {
            (0, 0)
        };
        let unlimited = |v: Option<i64>| v.filter(|v| *v != i64::from(i32::MAX));
        Ok(Spec {
            name: s(d, "/metadata/name").to_string(),
            namespace: s(d, "/metadata/namespace").to_string(),
            uid: s(d, "/metadata/uid").to_string(),
            generation: int("/metadata/generation").unwrap_or(0),
            replicas,
            strategy,
            max_surge,
            max_unavailable: if replicas == 0 { 0 } else { max_unavailable },
            min_ready_seconds: int("/spec/minReadySeconds").unwrap_or(0).max(0),
            progress_deadline: unlimited(int("/spec/progressDeadlineSeconds")),
            history_limit: unlimited(int("/spec/revisionHistoryLimit")),
            paused: d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

pub fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
}

pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c["status"] == "True")
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Kubernetes' `IsPodAvailable`: Ready, and for longer than `min_ready_seconds`.
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: DateTime<Utc>) -> bool {
    let Some(c) = ready_condition(pod).filter(|c| c["status"] == "True") else {
        return false;
    };
    if min_ready_seconds == 0 {
        return true;
    }
    c["lastTransitionTime"]
        .as_str()
        .and_then(parse_time)
        .is_some_and(|t| t + chrono::Duration::seconds(min_ready_seconds) < now)
}

fn is_terminating(pod: &Value) -> bool {
    !s(pod, "/metadata/deletionTimestamp").is_empty()
}

fn is_finished(pod: &Value) -> bool {
    matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
}

// ---------------------------------------------------------------------------------------------
// The plan

/// One ReplicaSet as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    pub name: String,
    pub hash: String,
    pub revision: i64,
    pub created: (String, String),
    /// `spec.replicas`, as this pass leaves it.
    pub replicas: i64,
    pub desired_annotation: Option<i64>,
    pub max_annotation: Option<i64>,
    /// Pods not terminating and not finished.
    pub pods: i64,
    pub ready: i64,
    pub available: i64,
    /// Pods still present and not finished, terminating ones included.
    pub present: i64,
    /// The ReplicaSet controller has seen its latest spec.
    pub observed: bool,
    pub deleting: bool,
}

impl Set {
    fn from(rs: &Value, pods: &[&Value], min_ready_seconds: i64, now: DateTime<Utc>) -> Set {
        let uid = s(rs, "/metadata/uid");
        let mine: Vec<&&Value> = pods
            .iter()
            .filter(|p| controller_uid(p) == Some(uid) && !is_finished(p))
            .collect();
        let active: Vec<&&Value> = mine
            .iter()
            .copied()
            .filter(|p| !is_terminating(p))
            .collect();
        let ann_int = |k: &str| annotation(rs, k).and_then(|v| v.parse().ok());
        let hash = rs
            .pointer("/spec/template/metadata/labels")
            .and_then(|l| l.get(HASH_LABEL))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Set {
            name: s(rs, "/metadata/name").to_string(),
            hash,
            revision: revision_of(rs),
            created: creation_key(rs),
            replicas: rs
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1),
            desired_annotation: ann_int(DESIRED_REPLICAS),
            max_annotation: ann_int(MAX_REPLICAS),
            pods: active.len() as i64,
            ready: active.iter().filter(|p| is_ready(p)).count() as i64,
            available: active
                .iter()
                .filter(|p| is_available(p, min_ready_seconds, now))
                .count() as i64,
            present: mine.len() as i64,
            observed: rs
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                >= rs
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            deleting: !s(rs, "/metadata/deletionTimestamp").is_empty(),
        }
    }

    /// Available pods, at most `spec.replicas`: what the set will still have once its
    /// controller has acted on its spec (it deletes unavailable pods first).
    pub fn avail(&self) -> i64 {
        self.available.min(self.replicas)
    }
}

/// Changes to one ReplicaSet (a merge patch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetUpdate {
    pub replicas: Option<i64>,
    pub min_ready_seconds: Option<i64>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one Deployment needs now. The executor applies it in field order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A new ReplicaSet to create.
    pub create: Option<Value>,
    /// ReplicaSet name → changes.
    pub update: BTreeMap<String, SetUpdate>,
    /// Services (name → pod-template-hash) whose selector must switch (BlueGreen).
    pub switch: Vec<(String, String)>,
    /// Annotations to set on the Deployment.
    pub annotate: BTreeMap<String, String>,
    /// Old ReplicaSets beyond the revision history limit.
    pub delete: Vec<String>,
    pub events: Vec<Event>,
    pub status: Value,
}

struct Work<'a> {
    spec: &'a Spec,
    sets: Vec<Set>,
    new: Option<usize>,
    /// BlueGreen: the pod-template-hash the active Service selects.
    active: Option<String>,
    plan: Plan,
}

impl Work<'_> {
    fn old(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.sets.len())
            .filter(|i| Some(*i) != self.new)
            .collect();
        v.sort_by(|a, b| self.sets[*a].created.cmp(&self.sets[*b].created));
        v
    }

    fn total_replicas(&self) -> i64 {
        self.sets.iter().map(|s| s.replicas).sum()
    }

    /// Scales set `i` to `to`, recording desired/max-replicas. With `refresh`, annotations that
    /// are stale are written even when the size stays. Returns whether the size changed.
    fn scale(&mut self, i: usize, to: i64, refresh: bool) -> bool {
        let desired = self.spec.replicas;
        let max = desired + self.spec.max_surge;
        let set = &mut self.sets[i];
        let resize = set.replicas != to;
        let stale = set.desired_annotation != Some(desired) || set.max_annotation != Some(max);
        if !(resize || (refresh && stale)) {
            return false;
        }
        let u = self.plan.update.entry(set.name.clone()).or_default();
        u.replicas = Some(to);
        u.annotations
            .insert(DESIRED_REPLICAS.into(), desired.to_string());
        u.annotations.insert(MAX_REPLICAS.into(), max.to_string());
        if resize {
            let dir = if to > set.replicas { "up" } else { "down" };
            self.plan.events.push(Event {
                warning: false,
                reason: "ScalingReplicaSet",
                message: format!(
                    "Scaled {dir} replica set {} from {} to {to}",
                    set.name, set.replicas
                ),
            });
        }
        set.replicas = to;
        set.desired_annotation = Some(desired);
        set.max_annotation = Some(max);
        resize
    }
}

/// `NewRSNewReplicas` for RollingUpdate: how big the new ReplicaSet may be now, given the
/// replicas specified over all ReplicaSets.
pub fn rolling_new_replicas(desired: i64, max_surge: i64, total: i64, new: i64) -> i64 {
    let max_total = desired + max_surge;
    if total >= max_total {
        return new;
    }
    new + (max_total - total).min(desired - new).max(0)
}

/// Kubernetes' `reconcileOldReplicaSets`: (old set index, new size) to scale down, first the
/// unhealthy pods of old sets, then available ones, never below `replicas - maxUnavailable`
/// available.
fn rolling_scale_down(w: &Work) -> Vec<(usize, i64)> {
    let spec = w.spec;
    let Some(n) = w.new else { return vec![] };
    let mut sizes: Vec<i64> = w.sets.iter().map(|s| s.replicas).collect();
    let avail = |sizes: &[i64], i: usize| w.sets[i].available.min(sizes[i]);
    let old: Vec<usize> = w.old().into_iter().filter(|i| sizes[*i] > 0).collect();
    if old.is_empty() {
        return vec![];
    }
    let all: i64 = sizes.iter().sum();
    let min_available = spec.replicas - spec.max_unavailable;
    let new_unavailable = sizes[n] - avail(&sizes, n);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return vec![];
    }
    // Unhealthy old pods first: deleting them costs no availability.
    let mut cleaned = 0;
    for &i in &old {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = sizes[i] - avail(&sizes, i);
        if unhealthy == 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        sizes[i] -= n;
        cleaned += n;
    }
    // Then available ones, down to the minimum, oldest sets first.
    let available: i64 = (0..sizes.len()).map(|i| avail(&sizes, i)).sum();
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for &i in &old {
            if done >= total {
                break;
            }
            if sizes[i] == 0 {
                continue;
            }
            let n = sizes[i].min(total - done);
            sizes[i] -= n;
            done += n;
        }
    }
    old.into_iter()
        .filter(|i| sizes[*i] != w.sets[*i].replicas)
        .map(|i| (i, sizes[i]))
        .collect()
}

/// Kubernetes' `scale` (scaling events and paused Deployments): one active set takes all
/// replicas; a saturated new set leaves none to the old; otherwise (RollingUpdate) the change is
/// spread over the active sets in proportion to their size.
fn sync_scale(w: &mut Work) {
    let desired = w.spec.replicas;
    let active: Vec<usize> = (0..w.sets.len())
        .filter(|i| w.sets[*i].replicas > 0)
        .collect();
    // FindActiveOrLatest
    let only = match active.len() {
        0 => w.new.or_else(|| {
            (0..w.sets.len()).max_by(|a, b| w.sets[*a].created.cmp(&w.sets[*b].created))
        }),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(i) = only {
        // Stale size annotations are refreshed too, or this would stay a scaling event.
        w.scale(i, desired, true);
        return;
    }
    if let Some(n) = w.new {
        let set = &w.sets[n];
        if set.replicas == desired
            && set.desired_annotation == Some(desired)
            && set.avail() == desired
        {
            for i in active.into_iter().filter(|i| *i != n) {
                w.scale(i, 0, true);
            }
            return;
        }
    }
    if w.spec.strategy != StrategyType::RollingUpdate {
        return;
    }
    let allowed = if desired > 0 {
        desired + w.spec.max_surge
    } else {
        0
    };
    let current: i64 = active.iter().map(|i| w.sets[*i].replicas).sum();
    let to_add = allowed - current;
    let mut order = active.clone();
    // Biggest first; on ties newer first when growing, older first when shrinking.
    order.sort_by(|a, b| {
        let (x, y) = (&w.sets[*a], &w.sets[*b]);
        y.replicas.cmp(&x.replicas).then_with(|| {
            if to_add > 0 {
                y.created.cmp(&x.created)
            } else {
                x.created.cmp(&y.created)
            }
        })
    });
    let mut sizes: BTreeMap<usize, i64> = BTreeMap::new();
    let mut added = 0;
    for &i in &order {
        let set = &w.sets[i];
        let mut size = set.replicas;
        if to_add != 0 && set.replicas > 0 && added != to_add {
            // getReplicaSetFraction
            let fraction = if desired == 0 {
                -set.replicas
            } else {
                let target = desired + w.spec.max_surge;
                let annotated = set.max_annotation.unwrap_or(current).max(1);
                let scaled = (set.replicas * target) as f64 / annotated as f64;
                scaled.round() as i64 - set.replicas
            };
            let allowed_now = to_add - added;
            let p = if to_add > 0 {
                fraction.min(allowed_now)
            } else {
                fraction.max(allowed_now)
            };
            size += p;
            added += p;
        }
        sizes.insert(i, size);
    }
    for (k, &i) in order.iter().enumerate() {
        let mut size = sizes[&i];
        if k == 0 && to_add != 0 {
            size = (size + to_add - added).max(0);
        }
        w.scale(i, size, true);
    }
}

/// Kubernetes' `isScalingEvent`: an active set was sized for another `spec.replicas`.
fn is_scaling_event(w: &Work) -> bool {
    w.sets
        .iter()
        .any(|s| s.replicas > 0 && s.desired_annotation.is_some_and(|d| d != w.spec.replicas))
}

/// `cleanupDeployment`: the oldest old sets beyond the history limit, if scaled to zero, idle
/// and observed by their controller.
pub fn prune(old: &[&Set], limit: Option<i64>) -> Vec<String> {
    let Some(limit) = limit else { return vec![] };
    let mut cleanable: Vec<&&Set> = old.iter().filter(|s| !s.deleting).collect();
    let excess = cleanable.len() as i64 - limit.max(0);
    if excess <= 0 {
        return vec![];
    }
    cleanable.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.created.cmp(&b.created))
    });
    cleanable
        .into_iter()
        .take(excess as usize)
        .filter(|s| s.replicas == 0 && s.present == 0 && s.observed)
        .map(|s| s.name.clone())
        .collect()
}

fn cond<'a>(conds: &'a [Value], ty: &str) -> Option<&'a Value> {
    conds.iter().find(|c| c["type"] == ty)
}

fn new_cond(ty: &str, status: &str, reason: &str, message: String, now: &str) -> Value {
    json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

/// Kubernetes' `SetDeploymentCondition`: nothing changes when status and reason are the same;
/// the transition time stays while the status does.
fn set_cond(conds: &mut Vec<Value>, mut c: Value) {
    if let Some(cur) = cond(conds, c["type"].as_str().unwrap_or("")) {
        if cur["status"] == c["status"] && cur["reason"] == c["reason"] {
            return;
        }
        if cur["status"] == c["status"] {
            c["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    conds.retain(|x| x["type"] != c["type"]);
    conds.push(c);
}

/// The counts of a DeploymentStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub replicas: i64,
    pub updated: i64,
    pub ready: i64,
    pub available: i64,
}

impl Counts {
    fn of(status: &Value) -> Counts {
        let n = |k: &str| status.get(k).and_then(Value::as_i64).unwrap_or(0);
        Counts {
            replicas: n("replicas"),
            updated: n("updatedReplicas"),
            ready: n("readyReplicas"),
            available: n("availableReplicas"),
        }
    }
}

/// `DeploymentProgressing`: more updated, ready or available pods, or fewer old ones.
pub fn made_progress(old: Counts, new: Counts) -> bool {
    new.updated > old.updated
        || (new.replicas - new.updated) < (old.replicas - old.updated)
        || new.ready > old.ready
        || new.available > old.available
}

/// `DeploymentTimedOut` for a Progressing condition.
pub fn timed_out(progressing: Option<&Value>, deadline: i64, now: DateTime<Utc>) -> bool {
    let Some(c) = progressing else { return false };
    match c["reason"].as_str() {
        Some(reason::NEW_RS_AVAILABLE) | Some(reason::AWAITING_PROMOTION) => false,
        Some(reason::TIMED_OUT) => true,
        _ => c["lastUpdateTime"]
            .as_str()
            .and_then(parse_time)
            .is_some_and(|t| t + chrono::Duration::seconds(deadline) < now),
    }
}

/// What a pass observed of one Deployment.
pub struct Observed<'a> {
    pub deployment: &'a Value,
    /// The ReplicaSets it owns.
    pub sets: &'a [&'a Value],
    /// The pods of its namespace.
    pub pods: &'a [&'a Value],
    /// BlueGreen: its active and preview Services, by name, when they exist.
    pub services: &'a BTreeMap<String, Value>,
    pub now: DateTime<Utc>,
}

/// The pure decision for one Deployment.
pub fn plan(o: &Observed) -> Result<Plan, String> {
    let d = o.deployment;
    let spec = Spec::from(d)?;
    let now = rfc3339(o.now);
    let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut conds: Vec<Value> = old_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sets: Vec<Set> = o
        .sets
        .iter()
        .map(|rs| Set::from(rs, o.pods, spec.min_ready_seconds, o.now))
        .collect();
    let new = o.sets.iter().position(|rs| runs_template(rs, d));
    let mut w = Work {
        spec: &spec,
        sets,
        new,
        active: None,
        plan: Plan::default(),
    };
    let max_old_revision = w
        .old()
        .iter()
        .map(|i| w.sets[*i].revision)
        .max()
        .unwrap_or(0);

    // checkPausedConditions
    if spec.progress_deadline.is_some()
        && cond(&conds, "Progressing").is_none_or(|c| c["reason"] != reason::TIMED_OUT)
    {
        let paused_cond =
            cond(&conds, "Progressing").is_some_and(|c| c["reason"] == reason::PAUSED);
        if spec.paused && !paused_cond {
            let c = new_cond(
                "Progressing",
                "Unknown",
                reason::PAUSED,
                "Deployment is paused".into(),
                &now,
            );
            set_cond(&mut conds, c);
        } else if !spec.paused && paused_cond {
            let c = new_cond(
                "Progressing",
                "Unknown",
                reason::RESUMED,
                "Deployment is resumed".into(),
                &now,
            );
            set_cond(&mut conds, c);
        }
    }

    // Keep the new set's revision, annotations and minReadySeconds in step with the Deployment.
    if let Some(n) = w.new {
        let rs = o.sets[n];
        let mut u = SetUpdate::default();
        if w.sets[n].revision <= max_old_revision {
            let r = max_old_revision + 1;
            u.annotations.insert(REVISION.into(), r.to_string());
            w.sets[n].revision = r;
        }
        for (k, v) in d
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !skip_annotation(k) && v.as_str().is_some() && annotation(rs, k) != v.as_str() {
                u.annotations
                    .insert(k.clone(), v.as_str().unwrap_or("").into());
            }
        }
        let rs_min_ready = rs
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if rs_min_ready != spec.min_ready_seconds {
            u.min_ready_seconds = Some(spec.min_ready_seconds);
        }
        if u != SetUpdate::default() {
            w.plan.update.insert(w.sets[n].name.clone(), u);
        }
        if spec.progress_deadline.is_some() && cond(&conds, "Progressing").is_none() {
            let msg = format!("Found new replica set \"{}\"", w.sets[n].name);
            set_cond(
                &mut conds,
                new_cond("Progressing", "True", reason::FOUND_NEW_RS, msg, &now),
            );
        }
    }

    let collision_count = old_status.get("collisionCount").and_then(Value::as_i64);
    let create = |w: &mut Work, conds: &mut Vec<Value>, replicas: i64| {
        let rs = new_replica_set(
            d,
            replicas,
            max_old_revision + 1,
            spec.max_surge,
            collision_count,
        );
        let name = s(&rs, "/metadata/name").to_string();
        w.sets.push(Set {
            name: name.clone(),
            hash: rs["metadata"]["labels"][HASH_LABEL]
                .as_str()
                .unwrap_or("")
                .into(),
            revision: max_old_revision + 1,
            created: (now.clone(), name.clone()),
            replicas,
            desired_annotation: Some(spec.replicas),
            max_annotation: Some(spec.replicas + spec.max_surge),
            pods: 0,
            ready: 0,
            available: 0,
            present: 0,
            observed: false,
            deleting: false,
        });
        w.new = Some(w.sets.len() - 1);
        w.plan.create = Some(rs);
        w.plan.events.push(Event {
            warning: false,
            reason: "ScalingReplicaSet",
            message: format!("Scaled up replica set {name} from 0 to {replicas}"),
        });
        if spec.progress_deadline.is_some() {
            let msg = format!("Created new replica set \"{name}\"");
            set_cond(
                conds,
                new_cond("Progressing", "True", reason::NEW_RS_CREATED, msg, &now),
            );
        }
    };

    // What "done" means, and whether the Deployment waits for a promotion.
    let mut awaiting_promotion = false;
    let mut estimate_progress = true;
    let old_complete = |w: &Work| complete(&spec, w, &old_status, None);

    if spec.strategy == StrategyType::BlueGreen {
        if w.new.is_none() && !spec.paused {
            create(&mut w, &mut conds, spec.replicas);
        }
        awaiting_promotion = blue_green(&mut w, d, o.services);
        if spec.paused {
            estimate_progress = false;
        } else if old_complete(&w) {
            prune_into(&mut w);
        }
    } else if spec.paused || is_scaling_event(&w) {
        // sync: scale only (no new ReplicaSet while paused), prune, status.
        sync_scale(&mut w);
        prune_into(&mut w);
        estimate_progress = false;
    } else if spec.strategy == StrategyType::Recreate {
        let mut scaled = false;
        for i in w.old() {
            if w.sets[i].replicas > 0 {
                scaled |= w.scale(i, 0, false);
            }
        }
        let old_running = w.old().iter().any(|i| w.sets[*i].present > 0);
        if !scaled && !old_running {
            match w.new {
                None => create(&mut w, &mut conds, spec.replicas),
                Some(n) => {
                    w.scale(n, spec.replicas, false);
                }
            }
            if old_complete(&w) {
                prune_into(&mut w);
            }
        }
    } else {
        let n = match w.new {
            Some(n) => n,
            None => {
                let total = w.total_replicas();
                let size = rolling_new_replicas(spec.replicas, spec.max_surge, total, 0);
                create(&mut w, &mut conds, size);
                w.new.unwrap_or_default()
            }
        };
        let target = {
            let set = &w.sets[n];
            if set.replicas > spec.replicas {
                spec.replicas
            } else {
                rolling_new_replicas(
                    spec.replicas,
                    spec.max_surge,
                    w.total_replicas(),
                    set.replicas,
                )
            }
        };
        if !w.scale(n, target, false) {
            let downs = rolling_scale_down(&w);
            let mut scaled = false;
            for (i, size) in downs {
                scaled |= w.scale(i, size, false);
            }
            if !scaled && old_complete(&w) {
                prune_into(&mut w);
            }
        }
    }

    // Annotations of the Deployment: its revision is the new set's.
    if let Some(n) = w.new {
        let r = w.sets[n].revision.to_string();
        if annotation(d, REVISION) != Some(r.as_str()) {
            w.plan.annotate.insert(REVISION.into(), r);
        }
    }

    // calculateStatus
    let counts = Counts {
        replicas: w.sets.iter().map(|s| s.pods).sum(),
        updated: w.new.map(|n| w.sets[n].pods).unwrap_or(0),
        ready: w.sets.iter().map(|s| s.ready).sum(),
        available: w.sets.iter().map(|s| s.available).sum(),
    };
    let unavailable = (w.total_replicas() - counts.available).max(0);
    if counts.available >= spec.replicas - spec.max_unavailable {
        let c = new_cond(
            "Available",
            "True",
            reason::MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            &now,
        );
        set_cond(&mut conds, c);
    } else {
        let c = new_cond(
            "Available",
            "False",
            reason::MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            &now,
        );
        set_cond(&mut conds, c);
    }
    let mut status = json!({
        "observedGeneration": spec.generation,
        "replicas": counts.replicas,
        "updatedReplicas": counts.updated,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "unavailableReplicas": unavailable,
    });
    if let Some(c) = collision_count {
        status["collisionCount"] = json!(c);
    }

    // syncRolloutStatus
    if estimate_progress && !spec.paused {
        if let Some(deadline) = spec.progress_deadline {
            let current = cond(&conds, "Progressing").cloned();
            let settled = counts.replicas == counts.updated
                && current
                    .as_ref()
                    .is_some_and(|c| c["reason"] == reason::NEW_RS_AVAILABLE);
            if !settled {
                let new_name = w.new.map(|n| w.sets[n].name.clone());
                let subject = match &new_name {
                    Some(n) => format!("ReplicaSet \"{n}\""),
                    None => format!("Deployment \"{}\"", spec.name),
                };
                status["conditions"] = json!(conds);
                if complete(&spec, &w, &status, Some(counts)) {
                    let c = new_cond(
                        "Progressing",
                        "True",
                        reason::NEW_RS_AVAILABLE,
                        format!("{subject} has successfully progressed."),
                        &now,
                    );
                    set_cond(&mut conds, c);
                } else if awaiting_promotion {
                    let c = new_cond(
                        "Progressing",
                        "True",
                        reason::AWAITING_PROMOTION,
                        format!("{subject} is available and waiting for promotion."),
                        &now,
                    );
                    set_cond(&mut conds, c);
                } else if made_progress(Counts::of(&old_status), counts) {
                    let mut c = new_cond(
                        "Progressing",
                        "True",
                        reason::RS_UPDATED,
                        format!("{subject} is progressing."),
                        &now,
                    );
                    if let Some(cur) = &current
                        && cur["status"] == "True"
                    {
                        c["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                    }
                    conds.retain(|x| x["type"] != "Progressing");
                    conds.push(c);
                } else if timed_out(current.as_ref(), deadline, o.now) {
                    let was = current
                        .as_ref()
                        .is_some_and(|c| c["reason"] == reason::TIMED_OUT);
                    let c = new_cond(
                        "Progressing",
                        "False",
                        reason::TIMED_OUT,
                        format!("{subject} has timed out progressing."),
                        &now,
                    );
                    set_cond(&mut conds, c);
                    if !was {
                        w.plan.events.push(Event {
                            warning: true,
                            reason: reason::TIMED_OUT,
                            message: format!(
                                "Deployment \"{}\" has timed out progressing.",
                                spec.name
                            ),
                        });
                    }
                }
            }
        } else {
            conds.retain(|c| c["type"] != "Progressing");
        }
    }
    // Conditions in a stable order: Available, then Progressing.
    conds.sort_by_key(|c| match c["type"].as_str() {
        Some("Available") => 0,
        Some("Progressing") => 1,
        _ => 2,
    });
    if !conds.is_empty() {
        status["conditions"] = json!(conds);
    } else if let Some(o) = status.as_object_mut() {
        o.remove("conditions");
    }
    w.plan.status = status;
    Ok(w.plan)
}

fn prune_into(w: &mut Work) {
    let old: Vec<&Set> = w.old().into_iter().map(|i| &w.sets[i]).collect();
    w.plan.delete = prune(&old, w.spec.history_limit);
}

/// `DeploymentComplete`, over `status` (or `counts` when given); for BlueGreen also the active
/// Service must select the new ReplicaSet, and old ReplicaSets may keep running.
fn complete(spec: &Spec, w: &Work, status: &Value, counts: Option<Counts>) -> bool {
    let c = counts.unwrap_or_else(|| Counts::of(status));
    let observed = status
        .get("observedGeneration")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        >= spec.generation;
    if spec.strategy == StrategyType::BlueGreen {
        let Some(n) = w.new else { return false };
        let set = &w.sets[n];
        return observed
            && w.active.as_deref() == Some(set.hash.as_str())
            && set.pods == spec.replicas
            && set.available >= spec.replicas;
    }
    c.updated == spec.replicas
        && c.replicas == spec.replicas
        && c.available == spec.replicas
        && observed
}

/// The ReplicaSet for the Deployment's current template.
pub fn new_replica_set(
    d: &Value,
    replicas: i64,
    revision: i64,
    max_surge: i64,
    collision_count: Option<i64>,
) -> Value {
    let template = d
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let hash = template_hash(&template, collision_count);
    let name = format!("{}-{hash}", s(d, "/metadata/name"));
    let mut template = template;
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or_else(|| json!({}));
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut annotations = Map::new();
    for (k, v) in d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if !skip_annotation(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let desired = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    annotations.insert(REVISION.into(), json!(revision.to_string()));
    annotations.insert(DESIRED_REPLICAS.into(), json!(desired.to_string()));
    annotations.insert(
        MAX_REPLICAS.into(),
        json!((desired + max_surge).to_string()),
    );
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": s(d, "/metadata/namespace"),
            "labels": template["metadata"]["labels"].clone(),
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": s(d, "/metadata/name"), "uid": s(d, "/metadata/uid"),
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": d.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
            "template": template,
        },
    })
}

/// The newest (by revision) old set that still runs pods.
fn newest_running_old(w: &Work) -> Option<usize> {
    w.old()
        .into_iter()
        .filter(|i| w.sets[*i].replicas > 0)
        .max_by_key(|i| (w.sets[*i].revision, w.sets[*i].created.clone()))
}

/// BlueGreen: sizes and Service selectors. The new set and the active one run at full size;
/// once they are the same, so does the newest other running set (the rollback target); every
/// other set goes to zero. Returns whether the Deployment waits for a promotion.
fn blue_green(w: &mut Work, d: &Value, services: &BTreeMap<String, Value>) -> bool {
    let desired = w.spec.replicas;
    let new_hash = w
        .new
        .map(|n| w.sets[n].hash.clone())
        .filter(|h| !h.is_empty());
    let annotated = annotation(d, ACTIVE_HASH).filter(|h| !h.is_empty());
    let known = |h: &str| w.sets.iter().any(|s| s.hash == h);
    let active = match annotated {
        Some(h) if known(h) => Some(h.to_string()),
        // The first template, or one rolled out before the Deployment was BlueGreen: what runs
        // now stays active until promoted.
        _ => newest_running_old(w)
            .map(|i| w.sets[i].hash.clone())
            .filter(|h| !h.is_empty())
            .or_else(|| new_hash.clone()),
    };
    if let Some(a) = &active
        && annotated != Some(a.as_str())
    {
        w.plan.annotate.insert(ACTIVE_HASH.into(), a.clone());
    }
    w.active = active.clone();
    let promoted = active.is_some() && active == new_hash;

    let mut keep: BTreeSet<usize> = w.new.into_iter().collect();
    if let Some(a) = &active {
        keep.extend((0..w.sets.len()).filter(|i| &w.sets[*i].hash == a));
    }
    if promoted {
        keep.extend(newest_running_old(w));
    }
    for i in 0..w.sets.len() {
        if w.spec.paused {
            // No rollout progress: only scaling of what runs.
            if keep.contains(&i) && w.sets[i].replicas > 0 {
                w.scale(i, desired, false);
            }
        } else {
            let target = if keep.contains(&i) { desired } else { 0 };
            w.scale(i, target, false);
        }
    }

    let active_svc = annotation(d, ACTIVE_SERVICE).unwrap_or("");
    let preview_svc = annotation(d, PREVIEW_SERVICE).unwrap_or("").to_string();
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    if !active_svc.is_empty() {
        targets.push((active_svc.to_string(), active.clone()));
    }
    if !preview_svc.is_empty() && preview_svc != active_svc {
        targets.push((preview_svc, new_hash.clone()));
    }
    for (svc, hash) in targets {
        let (Some(hash), Some(obj)) = (hash, services.get(&svc)) else {
            continue;
        };
        let selector = obj.pointer("/spec/selector").and_then(Value::as_object);
        // A Service without a selector has its endpoints managed by hand: leave it alone.
        if selector.is_none_or(|m| m.is_empty())
            || selector
                .and_then(|m| m.get(HASH_LABEL))
                .and_then(Value::as_str)
                == Some(&hash)
        {
            continue;
        }
        let set = w
            .sets
            .iter()
            .find(|s| s.hash == hash)
            .map(|s| s.name.clone());
        w.plan.events.push(Event {
            warning: false,
            reason: "ServiceSwitched",
            message: format!(
                "Service {svc} now selects replica set {} ({HASH_LABEL}={hash})",
                set.unwrap_or_default()
            ),
        });
        w.plan.switch.push((svc, hash));
    }

    match w.new {
        Some(n) => {
            let set = &w.sets[n];
            !promoted && set.replicas == desired && set.available >= desired
        }
        None => false,
    }
}

/// ReplicaSets without a controller that the Deployment's selector matches: Kubernetes adopts
/// them.
pub fn orphans<S: Borrow<Value>>(d: &Value, sets: &[S]) -> Result<Vec<String>, String> {
    let sel = d.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(sel).map_err(|e| format!("spec.selector: {e}"))?;
    let selector = LabelSelector::from_k8s(&sel).map_err(|e| format!("spec.selector: {e}"))?;
    if selector.is_empty() {
        return Ok(vec![]);
    }
    let ns = s(d, "/metadata/namespace");
    Ok(sets
        .iter()
        .map(Borrow::borrow)
        .filter(|r| s(r, "/metadata/namespace") == ns)
        .filter(|r| controller_uid(r).is_none() && s(r, "/metadata/deletionTimestamp").is_empty())
        .filter(|r| selector.matches(&labels(r)))
        .map(|r| s(r, "/metadata/name").to_string())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The executor

async fn event<A: Api>(api: &A, d: &Value, e: &Event) {
    super::record_event(
        api,
        "Deployment",
        d,
        "deployment-controller",
        e.warning,
        e.reason,
        &e.message,
    )
    .await;
}

/// Applies one Deployment's plan. Returns the number of writes.
async fn reconcile<A: Api>(
    api: &A,
    d: &Value,
    sets: &[Arc<Value>],
    pods: &[&Value],
    now: DateTime<Utc>,
) -> Result<usize, String> {
    let ns = s(d, "/metadata/namespace");
    let name = s(d, "/metadata/name");
    let mut writes = 0;
    let adopt = orphans(d, sets)?;
    if !adopt.is_empty() {
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "Deployment", "name": name, "uid": s(d, "/metadata/uid"),
            "controller": true, "blockOwnerDeletion": true}]}});
        for rs in adopt {
            match api.patch("ReplicaSet", ns, &rs, &owner).await {
                Ok(_) => writes += 1,
                Err(e) => tracing::debug!(deployment = name, "adopting {rs}: {e}"),
            }
        }
        // The next pass sees them as owned.
        return Ok(writes);
    }
    let (owned, _) = owned_sets(d, sets);
    let mut services = BTreeMap::new();
    if s(d, "/spec/strategy/type") == "BlueGreen" {
        for key in [ACTIVE_SERVICE, PREVIEW_SERVICE] {
            let Some(svc) = annotation(d, key).filter(|n| !n.is_empty()) else {
                continue;
            };
            match api.get("Service", ns, svc).await {
                Ok(obj) => {
                    services.insert(svc.to_string(), obj);
                }
                Err(e) if e.is_not_found() => {
                    tracing::debug!(deployment = name, "Service {svc} not found");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    let observed = Observed {
        deployment: d,
        sets: &owned,
        pods,
        services: &services,
        now,
    };
    let plan = plan(&observed)?;
    let mut status = plan.status.clone();

    if let Some(rs) = &plan.create {
        match api.create("ReplicaSet", ns, rs).await {
            Ok(_) => writes += 1,
            Err(e) if e.is_already_exists() => {
                // Either a list that lagged our own create, or a name collision with another
                // template (or owner): then the next hash salts in the collision count.
                let rs_name = s(rs, "/metadata/name");
                let ours = api.get("ReplicaSet", ns, rs_name).await.is_ok_and(|x| {
                    controller_uid(&x) == Some(s(d, "/metadata/uid")) && runs_template(&x, d)
                });
                if !ours {
                    let c = status["collisionCount"].as_i64().unwrap_or(0) + 1;
                    let mut updated = d.clone();
                    updated["status"]["collisionCount"] = json!(c);
                    if let Some(m) = updated["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    api.update_status("Deployment", &updated)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(writes + 1);
                }
                return Ok(writes);
            }
            Err(e) => {
                return Err(format!(
                    "creating replica set {}: {e}",
                    s(rs, "/metadata/name")
                ));
            }
        }
    }
    for (rs, u) in &plan.update {
        let mut patch = json!({});
        if !u.annotations.is_empty() {
            patch["metadata"]["annotations"] = json!(u.annotations);
        }
        if let Some(r) = u.replicas {
            patch["spec"]["replicas"] = json!(r);
        }
        if let Some(m) = u.min_ready_seconds {
            patch["spec"]["minReadySeconds"] = json!(m);
        }
        match api.patch("ReplicaSet", ns, rs, &patch).await {
            Ok(_) => writes += 1,
            // Stop here: later steps assumed this one.
            Err(e) => return Err(format!("updating replica set {rs}: {e}")),
        }
    }
    for (svc, hash) in &plan.switch {
        // One write: the selector's pod-template-hash key moves to the other ReplicaSet.
        let patch = json!({"spec": {"selector": {HASH_LABEL: hash}}});
        match api.patch("Service", ns, svc, &patch).await {
            Ok(_) => writes += 1,
            Err(e) => return Err(format!("switching Service {svc}: {e}")),
        }
    }
    if !plan.annotate.is_empty() {
        // Guarded by resourceVersion: a concurrent `rollout undo` or `promote` wins.
        let patch = json!({"metadata": {"resourceVersion": s(d, "/metadata/resourceVersion"),
                                        "annotations": plan.annotate}});
        match api.patch("Deployment", ns, name, &patch).await {
            Ok(_) => writes += 1,
            Err(e) if e.is_conflict() => return Ok(writes),
            Err(e) => return Err(format!("annotating: {e}")),
        }
    }
    for rs in &plan.delete {
        match api.delete("ReplicaSet", ns, rs).await {
            Ok(_) => writes += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(deployment = name, "deleting old replica set {rs}: {e}"),
        }
    }
    for e in &plan.events {
        event(api, d, e).await;
    }
    let current = d.get("status").cloned().unwrap_or_else(|| json!({}));
    if current != status {
        let mut updated = d.clone();
        updated["status"] = std::mem::take(&mut status);
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        match api.update_status("Deployment", &updated).await {
            Ok(_) => writes += 1,
            Err(e) => tracing::debug!(deployment = name, "status: {e}"),
        }
    }
    Ok(writes)
}

/// One pass over every Deployment.
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ClientError> {
    let deployments = api.snapshot("Deployment").await?;
    backoff.retain(deployments.iter().map(|d| &**d));
    if deployments.is_empty() {
        return Ok(0);
    }
    let sets = api.snapshot("ReplicaSet").await?;
    let pods = api.snapshot("Pod").await?;
    let now = Utc::now();
    let by_ns = super::by_namespace(&pods);
    let mut writes = 0;
    let started = std::time::Instant::now();
    for d in &deployments {
        let d: &Value = d;
        if !s(d, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(d, started) {
            continue;
        }
        let ns = s(d, "/metadata/namespace");
        let pods = by_ns.get(ns).map(Vec::as_slice).unwrap_or(&[]);
        match reconcile(api, d, &sets, pods, now).await {
            Ok(n) => {
                writes += n;
                backoff.succeeded(d);
            }
            // Like Kubernetes' deployment controller: retried with back-off, no Event (most
            // are conflicts with concurrent writers).
            Err(e) => {
                let wait = backoff.failed(d, started);
                tracing::debug!(deployment = s(d, "/metadata/name"), retry_in = ?wait, "{e}");
            }
        }
    }
    Ok(writes)
}

/// Runs passes on the leader whenever the store changes (at most every 100 ms), and every
/// second so that minReadySeconds and progress deadlines are noticed without a change.
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_millis(100),
    };
    let mut turns = super::Turns::new("deployment", node, pace);
    let mut backoff = Backoff::default();
    while turns.next().await {
        if let Err(e) = reconcile_all(&api, &mut backoff).await {
            turns.failed(e);
        }
        turns.requeue_after(backoff.next_due(std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn now() -> DateTime<Utc> {
        parse_time("2026-01-01T00:10:00Z").expect("time")
    }

    fn deploy(replicas: i64, strategy: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                         "resourceVersion": "5", "annotations": {}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": strategy, "minReadySeconds": 0, "progressDeadlineSeconds": 600,
                     "revisionHistoryLimit": 10,
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "app:v1"}]}}}})
    }

    fn rolling() -> Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    }

    fn with_image(d: &Value, image: &str) -> Value {
        let mut d = d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        d["metadata"]["generation"] = json!(d["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        d
    }

    /// The ReplicaSet the controller would create for `d`'s template, as stored.
    fn stored_rs(d: &Value, replicas: i64, revision: i64, created: &str) -> Value {
        let surge = Spec::from(d).map(|s| s.max_surge).unwrap_or(0);
        let mut rs = new_replica_set(d, replicas, revision, surge, None);
        rs["metadata"]["uid"] = json!(format!("uid-{}", s(&rs, "/metadata/name")));
        rs["metadata"]["creationTimestamp"] = json!(created);
        rs["metadata"]["generation"] = json!(1);
        rs["status"] = json!({"observedGeneration": 1});
        rs
    }

    fn pod(rs: &Value, i: usize, ready: bool) -> Value {
        json!({"metadata": {"name": format!("{}-{i}", s(rs, "/metadata/name")), "namespace": "default",
                            "labels": rs["spec"]["template"]["metadata"]["labels"].clone(),
                            "ownerReferences": [{"uid": s(rs, "/metadata/uid"), "controller": true}]},
               "spec": {"nodeName": "n1"},
               "status": {"phase": "Running", "conditions": [{"type": "Ready",
                   "status": if ready {"True"} else {"False"}, "lastTransitionTime": T0}]}})
    }

    fn pods(rs: &Value, ready: usize, unready: usize) -> Vec<Value> {
        (0..ready + unready)
            .map(|i| pod(rs, i, i < ready))
            .collect()
    }

    fn run(d: &Value, sets: &[Value], pods: &[Value]) -> Plan {
        run_with(d, sets, pods, &BTreeMap::new())
    }

    fn run_with(d: &Value, sets: &[Value], pods: &[Value], svcs: &BTreeMap<String, Value>) -> Plan {
        let sets: Vec<&Value> = sets.iter().collect();
        let pods: Vec<&Value> = pods.iter().collect();
        plan(&Observed {
            deployment: d,
            sets: &sets,
            pods: &pods,
            services: svcs,
            now: now(),
        })
        .expect("plan")
    }

    fn cond_of<'a>(p: &'a Plan, ty: &str) -> &'a Value {
        p.status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == ty))
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn template_hashes_are_stable_and_salted_by_collisions() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}, "spec": {"x": 1}});
        let b = json!({"spec": {"x": 1}, "metadata": {"labels": {"tier": "fe", "app": "web"}}});
        let h = template_hash(&a, None);
        assert_eq!(h, template_hash(&b, None));
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(
            h.bytes()
                .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c)),
            "{h}"
        );
        assert_ne!(h, template_hash(&a, Some(1)));
        assert_ne!(h, template_hash(&json!({"spec": {"x": 2}}), None));
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let pct = |p: &str| json!(p);
        assert_eq!(resolve_fenceposts(&pct("25%"), &pct("25%"), 6), Ok((2, 1)));
        assert_eq!(resolve_fenceposts(&pct("25%"), &pct("25%"), 4), Ok((1, 1)));
        assert_eq!(resolve_fenceposts(&pct("10%"), &pct("10%"), 3), Ok((1, 0)));
        assert_eq!(resolve_fenceposts(&json!(0), &json!(0), 5), Ok((0, 1)));
        assert_eq!(resolve_fenceposts(&json!(3), &json!("50%"), 5), Ok((3, 2)));
        assert!(resolve_fenceposts(&pct("x%"), &json!(1), 5).is_err());
        let mut d = deploy(
            3,
            json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 5}}),
        );
        assert_eq!(
            Spec::from(&d).map(|s| (s.max_surge, s.max_unavailable)),
            Ok((0, 3))
        );
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(
            Spec::from(&d).map(|s| (s.max_surge, s.max_unavailable)),
            Ok((0, 0))
        );
    }

    #[test]
    fn rolling_new_replicas_respects_the_surge() {
        assert_eq!(rolling_new_replicas(6, 2, 0, 0), 6);
        assert_eq!(rolling_new_replicas(6, 2, 6, 0), 2);
        assert_eq!(rolling_new_replicas(6, 2, 7, 2), 3);
        assert_eq!(rolling_new_replicas(6, 2, 8, 3), 3);
        assert_eq!(rolling_new_replicas(6, 0, 6, 5), 5);
        assert_eq!(rolling_new_replicas(6, 2, 6, 6), 6);
    }

    #[test]
    fn first_rollout_creates_the_replica_set_at_full_size() {
        let d = deploy(6, rolling());
        let p = run(&d, &[], &[]);
        let rs = p.create.as_ref().expect("a new replica set");
        let hash = template_hash(&d["spec"]["template"], None);
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(rs["spec"]["replicas"], 6);
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"][HASH_LABEL],
            hash.as_str()
        );
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            hash.as_str()
        );
        assert_eq!(rs["metadata"]["labels"][HASH_LABEL], hash.as_str());
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        assert_eq!(rs["metadata"]["annotations"][DESIRED_REPLICAS], "6");
        assert_eq!(rs["metadata"]["annotations"][MAX_REPLICAS], "8");
        let owner = &rs["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["uid"].as_str(),
                owner["controller"].as_bool(),
                owner["blockOwnerDeletion"].as_bool()
            ),
            (Some("d-uid"), Some(true), Some(true))
        );
        assert_eq!(p.annotate.get(REVISION).map(String::as_str), Some("1"));
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::NEW_RS_CREATED);
        assert_eq!(cond_of(&p, "Available")["status"], "False");
        assert_eq!(
            p.events[0].message,
            format!("Scaled up replica set web-{hash} from 0 to 6")
        );
    }

    #[test]
    fn the_new_replica_set_is_found_by_template_not_by_name() {
        let d = deploy(3, rolling());
        let mut rs = stored_rs(&d, 3, 1, T0);
        rs["metadata"]["name"] = json!("web-renamed");
        let p = run(&d, std::slice::from_ref(&rs), &pods(&rs, 3, 0));
        assert!(p.create.is_none());
        assert!(p.update.is_empty(), "{:?}", p.update);
        assert_eq!(p.status["updatedReplicas"], 3);
        assert_eq!(
            cond_of(&p, "Progressing")["reason"],
            reason::NEW_RS_AVAILABLE
        );
        assert_eq!(cond_of(&p, "Available")["reason"], reason::MIN_AVAILABLE);
        assert!(runs_template(&rs, &d));
        assert!(!runs_template(&rs, &with_image(&d, "app:v2")));
    }

    #[test]
    fn a_rolling_update_surges_then_scales_old_down_keeping_availability() {
        let d1 = deploy(6, rolling());
        let old = stored_rs(&d1, 6, 1, T0);
        let d2 = with_image(&d1, "app:v2");
        // Start: new at 2 (6 + surge 2 - 6), old to 5 (one may be unavailable).
        let p = run(&d2, std::slice::from_ref(&old), &pods(&old, 6, 0));
        assert_eq!(
            p.create.as_ref().map(|r| r["spec"]["replicas"].clone()),
            Some(json!(2))
        );
        assert_eq!(
            p.create
                .as_ref()
                .map(|r| r["metadata"]["annotations"][REVISION].clone()),
            Some(json!("2"))
        );
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(5));
        // New pods not ready yet: the new set may grow to fill the surge, nothing more goes.
        let mut old5 = old.clone();
        old5["spec"]["replicas"] = json!(5);
        let new = stored_rs(&d2, 2, 2, "2026-01-01T00:01:00Z");
        let mut all = pods(&old5, 5, 0);
        all.extend(pods(&new, 0, 2));
        let p = run(&d2, &[old5.clone(), new.clone()], &all);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[s(&new, "/metadata/name")].replicas, Some(3));
        let mut new3 = new.clone();
        new3["spec"]["replicas"] = json!(3);
        let mut all = pods(&old5, 5, 0);
        all.extend(pods(&new3, 0, 3));
        let p = run(&d2, &[old5.clone(), new3.clone()], &all);
        assert!(p.update.is_empty() && p.create.is_none(), "{:?}", p.update);
        // Three new pods ready: three old ones may go (8 specified, 5 must stay available).
        let mut all = pods(&old5, 5, 0);
        all.extend(pods(&new3, 3, 0));
        let p = run(&d2, &[old5.clone(), new3.clone()], &all);
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(2));
        assert_eq!(p.update.len(), 1);
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::RS_UPDATED);
    }

    #[test]
    fn unhealthy_old_pods_are_scaled_down_first() {
        let d1 = deploy(6, rolling());
        let old = stored_rs(&d1, 6, 1, T0);
        let d2 = with_image(&d1, "app:v2");
        let new = stored_rs(&d2, 2, 2, "2026-01-01T00:01:00Z");
        let mut old6 = old.clone();
        old6["spec"]["replicas"] = json!(6);
        // Old: 3 ready, 3 not; new: 2 not ready. 8 specified, min 5 available, 2 new unavailable:
        // 1 may go, and it is an unhealthy one (no available pod is lost).
        let mut all = pods(&old6, 3, 3);
        all.extend(pods(&new, 0, 2));
        let p = run(&d2, &[old6.clone(), new.clone()], &all);
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(5));
    }

    #[test]
    fn a_stale_old_set_counts_no_more_than_its_spec() {
        // The old set was scaled to 5 but its 6th pod is still there and Ready: only 5 count,
        // so with 1 new pod ready, only one more old pod may go (not two).
        let d1 = deploy(6, rolling());
        let mut old = stored_rs(&d1, 5, 1, T0);
        old["spec"]["replicas"] = json!(5);
        let d2 = with_image(&d1, "app:v2");
        let new = stored_rs(&d2, 3, 2, "2026-01-01T00:01:00Z");
        let mut all = pods(&old, 6, 0);
        all.extend(pods(&new, 1, 2));
        let p = run(&d2, &[old.clone(), new.clone()], &all);
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(4));
    }

    /// A whole rolling update against a simulated ReplicaSet controller and kubelet: at every
    /// step at least `replicas - maxUnavailable` pods are Ready and at most `replicas +
    /// maxSurge` are specified.
    #[test]
    fn a_simulated_rollout_never_breaks_its_bounds() {
        for (replicas, surge, unavailable) in [
            (6, "25%", "25%"),
            (5, "0", "1"),
            (4, "1", "0"),
            (10, "30%", "20%"),
        ] {
            let to_v = |v: &str| v.parse::<i64>().map(|n| json!(n)).unwrap_or(json!(v));
            let strategy = json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": to_v(surge), "maxUnavailable": to_v(unavailable)}});
            let d1 = deploy(replicas, strategy);
            let spec = Spec::from(&d1).expect("spec");
            let mut sets = vec![stored_rs(&d1, replicas, 1, T0)];
            let mut all: Vec<Value> = pods(&sets[0], replicas as usize, 0);
            let d2 = with_image(&d1, "app:v2");
            let mut serial = 0;
            let mut done = false;
            for step in 0..200 {
                let p = run(&d2, &sets, &all);
                if let Some(mut rs) = p.create.clone() {
                    rs["metadata"]["uid"] = json!(format!("uid-{}", s(&rs, "/metadata/name")));
                    rs["metadata"]["creationTimestamp"] = json!("2026-01-01T00:05:00Z");
                    sets.push(rs);
                }
                for (name, u) in &p.update {
                    let rs = sets
                        .iter_mut()
                        .find(|r| r["metadata"]["name"] == name.as_str())
                        .expect("set");
                    if let Some(r) = u.replicas {
                        rs["spec"]["replicas"] = json!(r);
                    }
                }
                let total: i64 = sets
                    .iter()
                    .map(|r| r["spec"]["replicas"].as_i64().unwrap_or(0))
                    .sum();
                assert!(
                    total <= replicas + spec.max_surge,
                    "step {step}: {total} specified"
                );
                // The ReplicaSet controller: create missing pods (not ready), delete surplus
                // ones, not-ready first.
                for rs in &sets {
                    let uid = s(rs, "/metadata/uid").to_string();
                    let want = rs["spec"]["replicas"].as_i64().unwrap_or(0) as usize;
                    let mut mine: Vec<usize> = (0..all.len())
                        .filter(|i| controller_uid(&all[*i]) == Some(&uid))
                        .collect();
                    while mine.len() < want {
                        serial += 1;
                        all.push(pod(rs, 1000 + serial, false));
                        mine.push(all.len() - 1);
                    }
                    if mine.len() > want {
                        let mut ranked = mine.clone();
                        ranked.sort_by_key(|i| is_ready(&all[*i]));
                        let surplus: BTreeSet<usize> =
                            ranked.into_iter().take(mine.len() - want).collect();
                        let mut i = 0;
                        all.retain(|_| {
                            let keep = !surplus.contains(&i);
                            i += 1;
                            keep
                        });
                    }
                }
                let ready = all.iter().filter(|p| is_ready(p)).count() as i64;
                assert!(
                    ready >= replicas - spec.max_unavailable,
                    "step {step}: {ready} ready of {replicas} ({surge}/{unavailable})"
                );
                // The kubelet: one pod becomes Ready per step.
                if let Some(p) = all.iter_mut().find(|p| !is_ready(p)) {
                    p["status"]["conditions"][0]["status"] = json!("True");
                }
                let new_uid = sets
                    .last()
                    .map(|r| s(r, "/metadata/uid").to_string())
                    .unwrap_or_default();
                if sets.len() == 2
                    && all.len() as i64 == replicas
                    && all
                        .iter()
                        .all(|p| is_ready(p) && controller_uid(p) == Some(&new_uid))
                {
                    done = true;
                    break;
                }
            }
            assert!(
                done,
                "rollout {replicas} {surge}/{unavailable} did not finish"
            );
        }
    }

    #[test]
    fn recreate_scales_old_to_zero_and_waits_for_their_pods_to_go() {
        let d1 = deploy(3, json!({"type": "Recreate"}));
        let old = stored_rs(&d1, 3, 1, T0);
        let d2 = with_image(&d1, "app:v2");
        let p = run(&d2, std::slice::from_ref(&old), &pods(&old, 3, 0));
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(0));
        assert!(p.create.is_none(), "no new replica set while old pods run");
        // Scaled to zero, pods terminating: still wait.
        let mut old0 = old.clone();
        old0["spec"]["replicas"] = json!(0);
        let mut terminating = pods(&old0, 3, 0);
        for p in &mut terminating {
            p["metadata"]["deletionTimestamp"] = json!(T0);
        }
        let p = run(&d2, &[old0.clone()], &terminating);
        assert!(p.create.is_none() && p.update.is_empty());
        // All gone: the new set comes up at full size.
        let p = run(&d2, &[old0.clone()], &[]);
        assert_eq!(
            p.create.as_ref().map(|r| r["spec"]["replicas"].clone()),
            Some(json!(3))
        );
    }

    fn svc(name: &str, hash: Option<&str>) -> Value {
        let mut sel = json!({"app": "web"});
        if let Some(h) = hash {
            sel[HASH_LABEL] = json!(h);
        }
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"selector": sel}})
    }

    fn blue_green_deploy() -> Value {
        let mut d = deploy(4, json!({"type": "BlueGreen"}));
        d["metadata"]["annotations"] =
            json!({ACTIVE_SERVICE: "web", PREVIEW_SERVICE: "web-preview"});
        d
    }

    #[test]
    fn blue_green_runs_both_colours_and_switches_services_on_promotion() {
        let d1 = blue_green_deploy();
        let mut svcs = BTreeMap::new();
        svcs.insert("web".to_string(), svc("web", None));
        svcs.insert("web-preview".to_string(), svc("web-preview", None));
        // First template: full size, active at once.
        let p = run_with(&d1, &[], &[], &svcs);
        let blue_hash = template_hash(&d1["spec"]["template"], None);
        assert_eq!(
            p.create.as_ref().map(|r| r["spec"]["replicas"].clone()),
            Some(json!(4))
        );
        assert_eq!(p.annotate.get(ACTIVE_HASH), Some(&blue_hash));
        assert_eq!(
            p.switch,
            vec![
                ("web".to_string(), blue_hash.clone()),
                ("web-preview".to_string(), blue_hash.clone())
            ]
        );

        // A new template: green comes up at full size beside blue; only the preview moves.
        let mut d1 = d1;
        d1["metadata"]["annotations"][ACTIVE_HASH] = json!(blue_hash);
        let blue = stored_rs(&d1, 4, 1, T0);
        let d2 = with_image(&d1, "app:v2");
        let green_hash = template_hash(&d2["spec"]["template"], None);
        svcs.insert("web".to_string(), svc("web", Some(&blue_hash)));
        svcs.insert(
            "web-preview".to_string(),
            svc("web-preview", Some(&blue_hash)),
        );
        let p = run_with(&d2, std::slice::from_ref(&blue), &pods(&blue, 4, 0), &svcs);
        assert_eq!(
            p.create.as_ref().map(|r| r["spec"]["replicas"].clone()),
            Some(json!(4))
        );
        assert!(p.update.is_empty(), "blue keeps its size: {:?}", p.update);
        assert_eq!(
            p.switch,
            vec![("web-preview".to_string(), green_hash.clone())]
        );
        assert!(!p.annotate.contains_key(ACTIVE_HASH));

        // Green ready: waiting for promotion, not complete.
        let green = stored_rs(&d2, 4, 2, "2026-01-01T00:01:00Z");
        svcs.insert(
            "web-preview".to_string(),
            svc("web-preview", Some(&green_hash)),
        );
        let mut all = pods(&blue, 4, 0);
        all.extend(pods(&green, 4, 0));
        let p = run_with(&d2, &[blue.clone(), green.clone()], &all, &svcs);
        assert!(p.switch.is_empty() && p.update.is_empty());
        assert_eq!(
            cond_of(&p, "Progressing")["reason"],
            reason::AWAITING_PROMOTION
        );
        assert_eq!(p.status["replicas"], 8);

        // Promoted: the active Service moves in one write; blue stays at full size.
        let mut d3 = d2.clone();
        d3["metadata"]["annotations"][ACTIVE_HASH] = json!(green_hash);
        let p = run_with(&d3, &[blue.clone(), green.clone()], &all, &svcs);
        assert_eq!(p.switch, vec![("web".to_string(), green_hash.clone())]);
        assert!(
            p.update.is_empty(),
            "blue is the rollback target: {:?}",
            p.update
        );
        assert_eq!(
            cond_of(&p, "Progressing")["reason"],
            reason::NEW_RS_AVAILABLE
        );

        // A third template: blue (neither new nor active) goes to zero.
        let d4 = with_image(&d3, "app:v3");
        svcs.insert("web".to_string(), svc("web", Some(&green_hash)));
        let p = run_with(&d4, &[blue.clone(), green.clone()], &all, &svcs);
        assert_eq!(p.update[s(&blue, "/metadata/name")].replicas, Some(0));
        assert!(!p.update.contains_key(s(&green, "/metadata/name")));
        assert_eq!(
            p.create.as_ref().map(|r| r["spec"]["replicas"].clone()),
            Some(json!(4))
        );
    }

    #[test]
    fn blue_green_undo_reuses_the_running_set() {
        // After promotion to green, `rollout undo` puts blue's template back and makes blue
        // active: blue becomes the new set (revision 3) without a pod created, and green stays
        // at full size as the rollback target.
        let d1 = blue_green_deploy();
        let blue = stored_rs(&d1, 4, 1, T0);
        let d2 = with_image(&d1, "app:v2");
        let green = stored_rs(&d2, 4, 2, "2026-01-01T00:01:00Z");
        let blue_hash = template_hash(&d1["spec"]["template"], None);
        let mut undone = d1.clone();
        undone["metadata"]["generation"] = json!(3);
        undone["metadata"]["annotations"][ACTIVE_HASH] = json!(blue_hash);
        let mut all = pods(&blue, 4, 0);
        all.extend(pods(&green, 4, 0));
        let mut svcs = BTreeMap::new();
        let green_hash = template_hash(&d2["spec"]["template"], None);
        svcs.insert("web".to_string(), svc("web", Some(&green_hash)));
        let p = run_with(&undone, &[blue.clone(), green.clone()], &all, &svcs);
        assert!(p.create.is_none());
        assert_eq!(p.switch, vec![("web".to_string(), blue_hash.clone())]);
        let u = &p.update[s(&blue, "/metadata/name")];
        assert_eq!(u.annotations.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(u.replicas, None);
        assert!(!p.update.contains_key(s(&green, "/metadata/name")));
        assert_eq!(p.annotate.get(REVISION).map(String::as_str), Some("3"));
    }

    #[test]
    fn paused_deployments_scale_but_do_not_roll_out() {
        let d1 = deploy(4, rolling());
        let old = stored_rs(&d1, 4, 1, T0);
        let mut d2 = with_image(&d1, "app:v2");
        d2["spec"]["paused"] = json!(true);
        let p = run(&d2, std::slice::from_ref(&old), &pods(&old, 4, 0));
        assert!(p.create.is_none() && p.update.is_empty());
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::PAUSED);
        d2["spec"]["replicas"] = json!(6);
        let p = run(&d2, std::slice::from_ref(&old), &pods(&old, 4, 0));
        assert!(p.create.is_none());
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(6));
        // Resumed: the rollout starts, the condition says so.
        let mut d3 = d2.clone();
        d3["spec"]["paused"] = json!(false);
        d3["spec"]["replicas"] = json!(4);
        d3["status"] = p.status.clone();
        let p = run(&d3, std::slice::from_ref(&old), &pods(&old, 4, 0));
        assert!(p.create.is_some());
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::NEW_RS_CREATED);
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        let d1 = deploy(6, rolling());
        let mut old = stored_rs(&d1, 5, 1, T0);
        old["spec"]["replicas"] = json!(5);
        let d2 = with_image(&d1, "app:v2");
        let mut new = stored_rs(&d2, 3, 2, "2026-01-01T00:01:00Z");
        new["spec"]["replicas"] = json!(3);
        let mut d3 = d2.clone();
        d3["spec"]["replicas"] = json!(10);
        let mut all = pods(&old, 5, 0);
        all.extend(pods(&new, 3, 0));
        let p = run(&d3, &[old.clone(), new.clone()], &all);
        // Allowed 10 + 3 surge = 13 over 8: old 5*13/8 ≈ 8, new 3*13/8 ≈ 5.
        assert_eq!(p.update[s(&old, "/metadata/name")].replicas, Some(8));
        assert_eq!(p.update[s(&new, "/metadata/name")].replicas, Some(5));
        assert_eq!(
            p.update[s(&new, "/metadata/name")].annotations[DESIRED_REPLICAS],
            "10"
        );
        assert!(p.create.is_none());
    }

    #[test]
    fn no_progress_within_the_deadline_fails_the_rollout() {
        let d1 = deploy(2, rolling());
        let old = stored_rs(&d1, 2, 1, T0);
        let mut d2 = with_image(&d1, "app:v2");
        d2["spec"]["progressDeadlineSeconds"] = json!(60);
        let new = stored_rs(&d2, 1, 2, T0);
        let mut all = pods(&old, 1, 0);
        all.extend(pods(&new, 0, 1));
        let mut old1 = old.clone();
        old1["spec"]["replicas"] = json!(1);
        // The last progress was at T0, ten minutes ago.
        d2["status"] = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "True", "reason": reason::RS_UPDATED,
                            "lastUpdateTime": T0, "lastTransitionTime": T0, "message": ""}]});
        let p = run(&d2, &[old1.clone(), new.clone()], &all);
        let c = cond_of(&p, "Progressing");
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some(reason::TIMED_OUT))
        );
        assert_eq!(
            c["message"],
            format!(
                "ReplicaSet \"{}\" has timed out progressing.",
                s(&new, "/metadata/name")
            )
        );
        assert!(
            p.events
                .iter()
                .any(|e| e.warning && e.reason == reason::TIMED_OUT)
        );
        // Progress clears it.
        let mut d3 = d2.clone();
        d3["status"] = p.status.clone();
        let mut all = pods(&old, 1, 0);
        all.extend(pods(&new, 1, 0));
        let p = run(&d3, &[old1, new], &all);
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::RS_UPDATED);
    }

    #[test]
    fn status_counts_pods_and_honours_min_ready_seconds() {
        let mut d = deploy(3, rolling());
        d["spec"]["minReadySeconds"] = json!(30);
        let mut rs = stored_rs(&d, 3, 1, T0);
        // Created before minReadySeconds was set: the controller brings it in step.
        rs["spec"]["minReadySeconds"] = json!(0);
        let mut all = pods(&rs, 3, 0);
        // Ready for 5 s only: not yet available.
        all[2]["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:09:55Z");
        let p = run(&d, &[rs.clone()], &all);
        assert_eq!(p.status["replicas"], 3);
        assert_eq!(p.status["readyReplicas"], 3);
        assert_eq!(p.status["availableReplicas"], 2);
        assert_eq!(p.status["unavailableReplicas"], 1);
        assert_eq!(p.status["updatedReplicas"], 3);
        assert_eq!(p.status["observedGeneration"], 1);
        // 25% of 3 rounds down to 0 unavailable allowed.
        assert_eq!(cond_of(&p, "Available")["status"], "False");
        assert_eq!(cond_of(&p, "Progressing")["reason"], reason::RS_UPDATED);
        assert_eq!(
            p.update[s(&rs, "/metadata/name")].min_ready_seconds,
            Some(30)
        );
        assert!(is_available(&all[0], 30, now()));
        assert!(!is_available(&all[2], 30, now()));
        assert!(is_available(&all[2], 0, now()));
    }

    #[test]
    fn history_beyond_the_limit_is_pruned_oldest_first() {
        let mk = |name: &str, revision: i64, replicas: i64, present: i64| Set {
            name: name.into(),
            hash: String::new(),
            revision,
            created: (T0.into(), name.into()),
            replicas,
            desired_annotation: None,
            max_annotation: None,
            pods: present,
            ready: 0,
            available: 0,
            present,
            observed: true,
            deleting: false,
        };
        let sets = [
            mk("r1", 1, 0, 0),
            mk("r2", 2, 0, 1),
            mk("r3", 3, 0, 0),
            mk("r4", 4, 0, 0),
            mk("r5", 5, 2, 2),
        ];
        let refs: Vec<&Set> = sets.iter().rev().collect();
        // Limit 2 of 5: r1, r2, r3 are candidates; r2 still has a pod.
        assert_eq!(prune(&refs, Some(2)), vec!["r1", "r3"]);
        assert!(prune(&refs, Some(10)).is_empty());
        assert!(prune(&refs, None).is_empty());
        assert_eq!(prune(&refs, Some(0)), vec!["r1", "r3", "r4"]);
    }

    #[test]
    fn matching_orphans_are_adopted() {
        let d = deploy(3, rolling());
        let mut orphan = stored_rs(&d, 3, 1, T0);
        orphan["metadata"]["ownerReferences"] = json!([]);
        let mut other = orphan.clone();
        other["metadata"]["name"] = json!("other");
        other["metadata"]["labels"] = json!({"app": "db"});
        let owned = stored_rs(&d, 3, 1, T0);
        let mut owned = owned;
        owned["metadata"]["name"] = json!("owned");
        assert_eq!(
            orphans(&d, &[orphan.clone(), other, owned]),
            Ok(vec![s(&orphan, "/metadata/name").to_string()])
        );
    }

    #[test]
    fn a_stale_size_annotation_is_refreshed_not_a_perpetual_scaling_event() {
        let d = deploy(4, rolling());
        let mut rs = stored_rs(&d, 4, 1, T0);
        rs["metadata"]["annotations"][DESIRED_REPLICAS] = json!("6");
        let p = run(&d, std::slice::from_ref(&rs), &pods(&rs, 4, 0));
        let u = &p.update[s(&rs, "/metadata/name")];
        assert_eq!(u.replicas, Some(4));
        assert_eq!(u.annotations[DESIRED_REPLICAS], "4");
        assert!(p.events.is_empty(), "no size change: {:?}", p.events);
        rs["metadata"]["annotations"][DESIRED_REPLICAS] = json!("4");
        let p = run(
            &with_image(&d, "app:v2"),
            std::slice::from_ref(&rs),
            &pods(&rs, 4, 0),
        );
        assert!(p.create.is_some(), "the rollout proceeds");
    }
}
