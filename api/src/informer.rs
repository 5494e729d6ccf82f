//! An informer: a cache of one kind's objects kept current by list and watch (relisting when
//! the watch ends), over any [`Api`]: the agent's datapath and DNS follow Services and
//! EndpointSlices with it, the control plane's scheduler and controllers everything they read.

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

/// An object's `metadata.resourceVersion` as a store revision (0 when missing).
pub fn revision_of(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A running informer. Handles are cheap clones; the list+watch task stops when the last one
/// is dropped.
#[derive(Clone)]
pub struct Informer {
    pub kind: &'static str,
    pub cache: Cache,
    synced: watch::Receiver<bool>,
    revision: watch::Receiver<u64>,
    _task: Arc<AbortOnDrop>,
}

/// A spawned task that is aborted when this is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Informer {
    /// Starts list+watch of `kind` over `client`; `changed` is bumped after every change
    /// (several informers may share one sender).
    pub fn start<A: Api + 'static>(
        client: A,
        kind: &'static str,
        changed: watch::Sender<u64>,
    ) -> Self {
        let cache = Cache::default();
        let (synced_tx, synced) = watch::channel(false);
        let (revision_tx, revision) = watch::channel(0u64);
        let task = tokio::spawn(run(
            client,
            kind,
            cache.clone(),
            changed,
            synced_tx,
            revision_tx,
        ));
        Informer {
            kind,
            cache,
            synced,
            revision,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Whether the first list is in.
    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits for the first list.
    pub async fn wait_synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }

    /// The newest store revision the cache reflects (from the list and the events since).
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until the cache reflects store revision `rev` (an event at or after it arrived).
    pub async fn wait_revision(&self, rev: u64) {
        let _ = self.revision.clone().wait_for(|r| *r >= rev).await;
    }

    /// Every cached object (pointer copies).
    pub fn snapshot(&self) -> Vec<Arc<Value>> {
        lock(&self.cache).values().cloned().collect()
    }
}

fn advance(revision: &watch::Sender<u64>, rev: u64) {
    revision.send_if_modified(|r| {
        let newer = rev > *r;
        *r = (*r).max(rev);
        newer
    });
}

/// List+watch of one kind into `cache`; bumps `changed` after every change, marks `synced`
/// once the first list is in and publishes the newest revision applied in `revision`.
async fn run<A: Api>(
    client: A,
    kind: &'static str,
    cache: Cache,
    changed: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    revision: watch::Sender<u64>,
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
        revision.send_replace(rv.parse().unwrap_or(0));
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
                    let rev = revision_of(&ev.object);
                    let mut c = lock(&cache);
                    match ev.kind.as_str() {
                        "ADDED" | "MODIFIED" => {
                            c.insert(key_of(&ev.object), Arc::new(ev.object));
                        }
                        "DELETED" => {
                            c.remove(&key_of(&ev.object));
                        }
                        // Bookmarks move the revision only.
                        _ => {
                            drop(c);
                            advance(&revision, rev);
                            continue;
                        }
                    }
                    drop(c);
                    changed.send_modify(|n| *n += 1);
                    advance(&revision, rev);
                }
                Err(e) => {
                    tracing::info!(kind, error = %e, "watch ended; relisting");
                    break;
                }
            }
        }
    }
}
