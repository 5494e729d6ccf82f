//! The pod sync loop: runs the pods bound to this node.
//!
//! The manager lists and watches the pods whose `spec.nodeName` is this node and keeps one
//! [`worker::Worker`] per pod uid, handing it each new version of its pod (and `None` when the
//! pod is gone). Workers are level-triggered: each sync compares the pod's spec with what the
//! runtime shows and converges, so a restarted agent simply picks up where the containers are:
//! running containers are adopted, not restarted.
//!
//! At start, after the first list, anything on the node belonging to a pod the API no longer
//! has (containers, pod directories, network allocations) is cleaned up.
//!
//! Layout under the agent's data directory: `pods/<uid>/` holds `pod.json` (which pod it is),
//! `containers/<container id>/` (overlay root filesystems), `logs/<container>/<attempt>.log`
//! and `volumes/<name>/`.

pub mod env;
pub mod plan;
pub mod probe;
pub mod rootfs;
pub mod volumes;
pub mod worker;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ferry_api::client::ListOptions;
use futures::StreamExt;
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

pub use worker::{PodRef, Shared};

struct Handle {
    tx: watch::Sender<Option<Value>>,
    task: JoinHandle<()>,
}

/// Runs the pods of this node until the returned future is dropped (workers keep their
/// containers running when the agent stops).
pub async fn run(shared: Arc<Shared>) {
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let opts = ListOptions {
        namespace: None,
        label_selector: String::new(),
        field_selector: format!("spec.nodeName={}", shared.node_name),
    };
    let mut first = true;
    loop {
        let list = match shared.client.list("Pod", &opts).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing this node's pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let items = list
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for pod in items {
            if let Some(uid) = uid_of(&pod) {
                seen.insert(uid.clone());
                dispatch(&shared, &mut workers, Some(pod));
            }
        }
        // Pods that went away while we were not watching.
        for (uid, h) in &workers {
            if !seen.contains(uid) {
                let _ = h.tx.send(None);
            }
        }
        if first {
            first = false;
            adopt_orphans(&shared, &mut workers, &seen).await;
        }
        let mut stream = match shared.client.watch("Pod", &opts, &rv, true).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods; relisting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => match ev.kind.as_str() {
                        "ADDED" | "MODIFIED" => dispatch(&shared, &mut workers, Some(ev.object)),
                        "DELETED" => {
                            if let Some(uid) = uid_of(&ev.object)
                                && let Some(h) = workers.get(&uid)
                            {
                                let _ = h.tx.send(None);
                            }
                        }
                        _ => {}
                    },
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "pod watch ended; relisting");
                        break;
                    }
                    None => break,
                },
                _ = reap.tick() => workers.retain(|_, h| !h.task.is_finished()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn uid_of(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

fn dispatch(shared: &Arc<Shared>, workers: &mut HashMap<String, Handle>, pod: Option<Value>) {
    let Some(pod) = pod else { return };
    let Some(uid) = uid_of(&pod) else { return };
    if let Some(h) = workers.get(&uid)
        && !h.task.is_finished()
    {
        let _ = h.tx.send(Some(pod));
        return;
    }
    let r = PodRef {
        namespace: pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned(),
        name: pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        uid: uid.clone(),
    };
    spawn(shared, workers, r, Some(pod));
}

fn spawn(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, Handle>,
    r: PodRef,
    pod: Option<Value>,
) {
    let uid = r.uid.clone();
    let (tx, rx) = watch::channel(pod);
    let w = worker::Worker::new(shared.clone(), r, rx);
    let task = tokio::spawn(w.run());
    workers.insert(uid, Handle { tx, task });
}

/// Cleans up what belongs to pods the API does not have: found through pod directories,
/// container labels and network allocations.
async fn adopt_orphans(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, Handle>,
    live: &HashSet<String>,
) {
    let mut orphans: HashMap<String, PodRef> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(&shared.pods_dir) {
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if live.contains(&uid) {
                continue;
            }
            let r = std::fs::read(e.path().join("pod.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<PodRef>(&b).ok())
                .unwrap_or(PodRef {
                    namespace: "unknown".into(),
                    name: "unknown".into(),
                    uid: uid.clone(),
                });
            orphans.insert(uid, r);
        }
    }
    let runtime = shared.runtime.clone();
    if let Ok(Ok(list)) = tokio::task::spawn_blocking(move || runtime.list("")).await {
        for c in list {
            let l = &c.labels;
            let (Some(ns), Some(name), Some(uid)) = (
                l.get(plan::LABEL_POD_NAMESPACE),
                l.get(plan::LABEL_POD_NAME),
                l.get(plan::LABEL_POD_UID),
            ) else {
                continue;
            };
            if !live.contains(uid) {
                orphans.entry(uid.clone()).or_insert(PodRef {
                    namespace: ns.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                });
            }
        }
    }
    for (_, key) in shared.network.ipam_state().allocations() {
        if !live.contains(&key.uid) {
            orphans.entry(key.uid.clone()).or_insert(PodRef {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid: key.uid.clone(),
            });
        }
    }
    for (_, r) in orphans {
        if workers.contains_key(&r.uid) {
            continue;
        }
        tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), uid = %r.uid, "cleaning up a pod the API no longer has");
        spawn(shared, workers, r, None);
    }
}
