//! Namespace deletion: deleting a Namespace marks it `Terminating` with the `kubernetes`
//! finalizer in `spec.finalizers` (the API server does that); this controller then deletes
//! every namespaced object in it and, once nothing is left, removes the finalizer, which
//! deletes the Namespace. Pods on nodes go through their graceful deletion; objects with
//! finalizers of their own are waited for. [`plan`] is pure.

use std::time::Duration;

use ferry_api::client::Api;
use serde_json::{Value, json};

use super::gc::{Obj, Target};
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

pub const FINALIZER: &str = "kubernetes";

/// What a terminating namespace needs now.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Delete these objects (those not yet being deleted).
    Delete(Vec<Target>),
    /// Objects remain, all being deleted already: wait.
    Wait(usize),
    /// Empty: remove the finalizer.
    Finalize,
}

/// Whether the namespace is terminating and still carries our finalizer.
pub fn needs_work(ns: &Value) -> bool {
    !s(ns, "/metadata/deletionTimestamp").is_empty()
        && ns
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|f| f == FINALIZER))
}

/// The pure decision over the objects still in a terminating namespace.
pub fn plan(contents: &[Obj]) -> Plan {
    if contents.is_empty() {
        return Plan::Finalize;
    }
    let delete: Vec<Target> = contents
        .iter()
        .filter(|o| s(&o.value, "/metadata/deletionTimestamp").is_empty())
        .map(|o| Target {
            kind: o.kind.clone(),
            namespace: s(&o.value, "/metadata/namespace").to_string(),
            name: s(&o.value, "/metadata/name").to_string(),
        })
        .collect();
    if delete.is_empty() {
        Plan::Wait(contents.len())
    } else {
        Plan::Delete(delete)
    }
}

async fn with_events<A: Api + Clone + 'static>(api: &Cached<A>, ns: &str) -> Vec<Obj> {
    let mut objs = super::gc::list_everything(api, Some(ns)).await;
    let opts = ferry_api::client::ListOptions {
        namespace: Some(ns.to_string()),
        ..Default::default()
    };
    if let Ok(list) = api.list_shared("Event", &opts).await {
        objs.extend(list.into_iter().map(|v| Obj::new("Event", v)));
    }
    objs
}

pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
) -> Result<usize, ferry_api::client::ClientError> {
    let list = api.snapshot("Namespace").await?;
    let mut acted = 0;
    for ns in &list {
        let ns: &Value = ns;
        if !needs_work(ns) {
            continue;
        }
        let name = s(ns, "/metadata/name");
        match plan(&with_events(api, name).await) {
            Plan::Delete(targets) => {
                for t in targets {
                    match api.delete(&t.kind, &t.namespace, &t.name).await {
                        Ok(_) => acted += 1,
                        Err(e) if e.is_not_found() => {}
                        Err(e) => tracing::debug!(namespace = name, "deleting {t:?}: {e}"),
                    }
                }
            }
            Plan::Wait(n) => tracing::debug!(namespace = name, "waiting for {n} objects"),
            Plan::Finalize => {
                let mut updated = ns.clone();
                let rest: Vec<Value> = ns
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                updated["spec"]["finalizers"] = json!(rest);
                match api.update("Namespace", &updated).await {
                    Ok(_) => {
                        tracing::info!(namespace = name, "namespace emptied and deleted");
                        acted += 1
                    }
                    Err(e) => tracing::debug!(namespace = name, "finalizing: {e}"),
                }
            }
        }
    }
    Ok(acted)
}

pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(5),
        throttle: Duration::from_millis(300),
    };
    super::run_passes("namespace", node, pace, || reconcile_all(&api)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_contents_waits_then_finalizes() {
        let ns = json!({"metadata": {"name": "t", "deletionTimestamp": "x"}, "spec": {"finalizers": ["kubernetes"]}});
        assert!(needs_work(&ns));
        assert!(!needs_work(
            &json!({"metadata": {"name": "t"}, "spec": {"finalizers": ["kubernetes"]}})
        ));
        let cm = Obj::new(
            "ConfigMap",
            json!({"metadata": {"name": "a", "namespace": "t"}}),
        );
        let pod = Obj::new(
            "Pod",
            json!({"metadata": {"name": "p", "namespace": "t", "deletionTimestamp": "x"}}),
        );
        assert_eq!(
            plan(&[cm, pod.clone()]),
            Plan::Delete(vec![Target {
                kind: "ConfigMap".into(),
                namespace: "t".into(),
                name: "a".into()
            }])
        );
        assert_eq!(plan(&[pod]), Plan::Wait(1));
        assert_eq!(plan(&[]), Plan::Finalize);
    }
}
