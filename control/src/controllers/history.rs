//! Revision history of DaemonSets and StatefulSets: one `ControllerRevision` per template the
//! set has run, as Kubernetes keeps it (`controller_history.go`), so `ferry rollout history`
//! lists them and `ferry rollout undo` puts an older template back.
//!
//! A revision is named `<set>-<template hash>` (a StatefulSet's update revision already is that
//! name), owned by its set (garbage-collected with it), labelled with the set's template labels
//! and `controller.kubernetes.io/hash`, and holds `data: {"spec": {"template": ...}}` and a
//! `revision` number. The template the set runs now is always the highest number: a new one
//! gets the highest plus one, and one that comes back (a rollback) is renumbered so, as in
//! Kubernetes. Beyond `spec.revisionHistoryLimit` (default 10) the oldest revisions are deleted,
//! except the current one and those pods still run. [`plan`] is pure.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::controllers::str_at as s;

/// The label with a ControllerRevision's template hash, as in Kubernetes.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// The annotation `rollout history` shows, copied from the set.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
const DEFAULT_HISTORY_LIMIT: i64 = 10;

/// What a set's history needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryPlan {
    /// A revision to create for the current template.
    pub create: Option<Value>,
    /// A revision to renumber (name, new number): the current template, back from the past.
    pub renumber: Option<(String, i64)>,
    /// Revisions to delete (names).
    pub delete: Vec<String>,
}

/// The revisions owned by `set` among `revisions`, oldest first.
pub fn owned<'a>(set: &Value, revisions: &[&'a Value]) -> Vec<&'a Value> {
    let uid = s(set, "/metadata/uid");
    let mut out: Vec<&Value> = revisions
        .iter()
        .copied()
        .filter(|r| super::deployment::controller_uid(r) == Some(uid))
        .collect();
    out.sort_by_key(|r| number(r));
    out
}

/// A revision's number.
pub fn number(revision: &Value) -> i64 {
    revision
        .get("revision")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The decision for `set` (`kind` DaemonSet or StatefulSet) whose current template is revision
/// `name` (`<set>-<template hash>`), given the revisions of its namespace and the revision names its
/// pods (and, for a StatefulSet, its current revision) still use.
pub fn plan(
    kind: &str,
    set: &Value,
    name: &str,
    revisions: &[&Value],
    live: &BTreeSet<String>,
) -> HistoryPlan {
    let mine = owned(set, revisions);
    let highest = mine.iter().map(|r| number(r)).max().unwrap_or(0);
    let mut out = HistoryPlan::default();
    match mine.iter().find(|r| s(r, "/metadata/name") == name) {
        Some(current) if number(current) < highest => {
            out.renumber = Some((name.to_string(), highest + 1));
        }
        Some(_) => {}
        None => out.create = Some(revision_for(kind, set, name, highest + 1)),
    }
    let limit = set
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .max(0) as usize;
    let old: Vec<&str> = mine
        .iter()
        .map(|r| s(r, "/metadata/name"))
        .filter(|n| *n != name && !live.contains(*n))
        .collect();
    if old.len() > limit {
        out.delete = old[..old.len() - limit]
            .iter()
            .map(|n| n.to_string())
            .collect();
    }
    out
}

/// The ControllerRevision `name` (`<set>-<template hash>`) recording `set`'s current template
/// as number `number`.
pub fn revision_for(kind: &str, set: &Value, name: &str, number: i64) -> Value {
    let hash = name
        .strip_prefix(s(set, "/metadata/name"))
        .and_then(|h| h.strip_prefix('-'))
        .unwrap_or(name);
    let mut labels = set
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    labels[HASH_LABEL] = json!(hash);
    let mut meta = json!({
        "name": name,
        "namespace": s(set, "/metadata/namespace"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": s(set, "/metadata/name"),
            "uid": s(set, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(cause) = set
        .pointer(&format!(
            "/metadata/annotations/{}",
            CHANGE_CAUSE.replace('/', "~1")
        ))
        .and_then(Value::as_str)
    {
        meta["annotations"] = json!({ CHANGE_CAUSE: cause });
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": meta,
        "data": {"spec": {"template": set.pointer("/spec/template").cloned().unwrap_or(Value::Null)}},
        "revision": number,
    })
}

/// The template a revision recorded.
pub fn template(revision: &Value) -> Option<&Value> {
    revision.pointer("/data/spec/template")
}

/// Brings the history of `set` (`kind`, current revision `name`) up
/// to date among `revisions` (its namespace's), keeping the revisions named in `live`. A
/// failure is logged: the set's pods do not wait for their history.
pub async fn sync<A: ferry_api::client::Api>(
    api: &A,
    kind: &str,
    set: &Value,
    name: &str,
    revisions: &[&Value],
    live: &BTreeSet<String>,
) {
    let p = plan(kind, set, name, revisions, live);
    if let Err(e) = apply(api, set, &p).await {
        tracing::warn!(
            kind,
            set = s(set, "/metadata/name"),
            namespace = s(set, "/metadata/namespace"),
            "revision history: {e}"
        );
    }
}

/// The revision names the pods of `set` (uid) among `pods` run, from their
/// `controller-revision-hash` label mapped through `name_of`.
pub fn live_revisions(
    set: &Value,
    pods: &[&Value],
    name_of: impl Fn(&str) -> String,
) -> BTreeSet<String> {
    let uid = s(set, "/metadata/uid");
    pods.iter()
        .filter(|p| super::deployment::controller_uid(p) == Some(uid))
        .filter_map(|p| {
            p.pointer("/metadata/labels")
                .and_then(|l| l.get(super::daemonset::REVISION_LABEL))
        })
        .filter_map(Value::as_str)
        .map(name_of)
        .collect()
}

/// Applies `plan` for `set`; the first failure is returned (the rest is still tried).
pub async fn apply<A: ferry_api::client::Api>(
    api: &A,
    set: &Value,
    plan: &HistoryPlan,
) -> Result<(), ferry_api::client::ClientError> {
    let ns = s(set, "/metadata/namespace");
    let mut first = None;
    if let Some(r) = &plan.create
        && let Err(e) = api.create("ControllerRevision", ns, r).await
        && !e.is_already_exists()
    {
        first.get_or_insert(e);
    }
    if let Some((name, number)) = &plan.renumber
        && let Err(e) = api
            .patch(
                "ControllerRevision",
                ns,
                name,
                &json!({ "revision": number }),
            )
            .await
    {
        first.get_or_insert(e);
    }
    for name in &plan.delete {
        if let Err(e) = api.delete("ControllerRevision", ns, name).await
            && !e.is_not_found()
        {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(limit: Option<i64>) -> Value {
        let mut v = json!({"metadata": {"name": "agent", "namespace": "default", "uid": "u1",
            "annotations": {"kubernetes.io/change-cause": "image v2"}},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "v2"}]}}}});
        if let Some(l) = limit {
            v["spec"]["revisionHistoryLimit"] = json!(l);
        }
        v
    }

    /// The plan for DaemonSet `set(None)` running `name` (hash `hash`), no pods.
    fn plan_of(name: &str, revisions: &[&Value]) -> HistoryPlan {
        plan("DaemonSet", &set(None), name, revisions, &BTreeSet::new())
    }

    fn rev(name: &str, number: i64, owner: &str) -> Value {
        json!({"metadata": {"name": name, "ownerReferences": [{"uid": owner, "controller": true}]},
            "revision": number})
    }

    #[test]
    fn a_new_template_becomes_the_highest_revision() {
        let a = rev("agent-a", 1, "u1");
        let other = rev("other-x", 7, "u2");
        let p = plan_of("agent-b", &[&a, &other]);
        let r = p.create.expect("a new revision");
        assert_eq!(r["revision"], 2);
        assert_eq!(r["metadata"]["name"], "agent-b");
        assert_eq!(r["metadata"]["labels"]["app"], "agent");
        assert_eq!(r["metadata"]["labels"][HASH_LABEL], "b");
        assert_eq!(
            r["metadata"]["annotations"][CHANGE_CAUSE], "image v2",
            "the set's change cause is recorded"
        );
        assert_eq!(r["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        assert_eq!(
            template(&r).unwrap()["spec"]["containers"][0]["image"],
            "v2"
        );
        assert_eq!(p.renumber, None);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_template_back_from_the_past_is_renumbered() {
        let a = rev("agent-a", 1, "u1");
        let b = rev("agent-b", 2, "u1");
        let p = plan_of("agent-a", &[&a, &b]);
        assert_eq!(p.create, None);
        assert_eq!(p.renumber, Some(("agent-a".into(), 3)));
        // Already the highest: nothing to do.
        let p = plan_of("agent-b", &[&a, &b]);
        assert_eq!(p, HistoryPlan::default());
    }

    #[test]
    fn history_beyond_the_limit_goes_oldest_first_but_never_what_runs() {
        let revs: Vec<Value> = (1..=5)
            .map(|i| rev(&format!("agent-{i}"), i, "u1"))
            .collect();
        let refs: Vec<&Value> = revs.iter().collect();
        // Current is agent-5; agent-1 still runs on a pod; limit 2 keeps two more.
        let live = BTreeSet::from(["agent-1".to_string()]);
        let p = plan("DaemonSet", &set(Some(2)), "agent-5", &refs, &live);
        assert_eq!(p.delete, vec!["agent-2".to_string()]);
        let p = plan("DaemonSet", &set(Some(0)), "agent-5", &refs, &live);
        assert_eq!(p.delete, vec!["agent-2", "agent-3", "agent-4"]);
        let p = plan("DaemonSet", &set(None), "agent-5", &refs, &live);
        assert!(p.delete.is_empty(), "default limit 10");
    }
}
