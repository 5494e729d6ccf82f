//! An informer: a cache of one kind's objects kept current by list and watch (relisting when
//! the watch ends), over any [`Api`]: the agent's datapath and DNS follow Services and
//! EndpointSlices with it, the scheduler Nodes and Pods.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::client::{Api, ListOptions};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

/// Objects by (namespace, name); `Arc`s so a rebuild copies pointers, not JSON.
pub type Cache = Arc<Mutex<BTreeMap<(String, String), Arc<Value>>>>;

pub fn lock(c: &Cache) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Arc<Value>>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_of(v: &Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// List+watch of one kind into `cache`; bumps `changed`
/// after every change and marks `synced` once the first list is in.
pub async fn run<A: Api>(
    client: A,
    kind: &'static str,
    cache: Cache,
    changed: watch::Sender<u64>,
    synced: watch::Sender<bool>,
) {
    let opts = ListOptions::default();
    loop {
        let mut list = match client.list(kind, &opts).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind, error = %e, "listing; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        {
            let mut c = lock(&cache);
            c.clear();
            if let Value::Array(items) = list["items"].take() {
                for item in items {
                    c.insert(key_of(&item), Arc::new(item));
                }
            }
        }
        changed.send_modify(|n| *n += 1);
        synced.send_replace(true);
        let mut stream = match client.watch(kind, &opts, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(kind, error = %e, "watching; relisting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    let mut c = lock(&cache);
                    match ev.kind.as_str() {
                        "ADDED" | "MODIFIED" => {
                            c.insert(key_of(&ev.object), Arc::new(ev.object));
                        }
                        "DELETED" => {
                            c.remove(&key_of(&ev.object));
                        }
                        _ => continue,
                    }
                    drop(c);
                    changed.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::info!(kind, error = %e, "watch ended; relisting");
                    break;
                }
            }
        }
    }
}
