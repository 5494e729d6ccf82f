//! The leader's shared informer caches, with read-your-writes.
//!
//! [`Cached`] wraps the in-process [`Api`] for every control loop and the scheduler of a member.
//! Reads of a whole kind (`list` with no namespace or selector, and [`Cached::snapshot`]) come
//! from one informer per kind (list+watch), shared by all loops and started on first use; every
//! other call goes to the API server. A pass thus costs pointer copies, not a store scan and a
//! JSON decode per object.
//!
//! A cache trails the store by the watch's latency, so a loop could act twice on the same need
//! (create a second pod for one missing replica) if it read its own writes back late. Kubernetes
//! guards this with per-owner "expectations"; here every write through [`Cached`] records the
//! store revision it produced for its kind, and a read of that kind first waits (up to
//! [`SETTLE_WAIT`]) until the cache has applied that revision. The store's revisions are global
//! and every write of a kind shows up as an event of that kind at its revision, so the wait ends
//! as soon as the cache holds the writes, and a pass never sees fewer of its own writes than the
//! store. Writes by others are seen a watch latency later, which a level-triggered loop absorbs.
//!
//! Caches and recorded writes belong to one leadership term: a member that starts to lead
//! (again) starts its caches over from a fresh, linearizable list, which includes every write
//! of earlier leaders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_api::client::{Api, ClientError, ListOptions, WatchStream};
use ferry_api::informer::{Informer, revision_of};
use serde_json::{Value, json};
use tonic::Code;

use crate::node::Node;

/// How long a read waits for a new cache's first list before the pass fails (and is retried).
pub const SYNC_WAIT: Duration = Duration::from_secs(10);
/// How long a read waits for the cache to show this leader's latest write of the kind.
pub const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// [`Api`] with shared informer caches for whole-kind reads (see the module docs).
pub struct Cached<A> {
    inner: A,
    shared: Arc<Shared>,
}

impl<A: Clone> Clone for Cached<A> {
    fn clone(&self) -> Self {
        Cached {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The raft term this member leads in, if it leads.
pub type LeaderTerm = Box<dyn Fn() -> Option<u64> + Send + Sync>;

struct Shared {
    term: LeaderTerm,
    informers: Mutex<Informers>,
    /// Kind -> the newest store revision a write through these caches produced.
    written: Mutex<HashMap<&'static str, u64>>,
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Informers {
    term: Option<u64>,
    by_kind: HashMap<&'static str, Informer>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn whole_kind(opts: &ListOptions) -> bool {
    opts.namespace.is_none() && opts.label_selector.is_empty() && opts.field_selector.is_empty()
}

impl<A: Api + Clone + 'static> Cached<A> {
    /// Caches over `inner` for the control loops of member `node`.
    pub fn new(inner: A, node: Arc<Node>) -> Self {
        Self::with_term(inner, Box::new(move || node.leader_term()))
    }

    /// Caches over `inner` that start over whenever `term` reports a new leadership term.
    pub fn with_term(inner: A, term: LeaderTerm) -> Self {
        Cached {
            inner,
            shared: Arc::new(Shared {
                term,
                informers: Mutex::default(),
                written: Mutex::default(),
                changed: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    fn informer(&self, kind: &str) -> Result<Informer, ClientError> {
        let info = ferry_api::kinds::lookup_kind(kind).ok_or_else(|| {
            ClientError::new(Code::InvalidArgument, format!("unknown kind {kind:?}"))
        })?;
        let mut informers = lock(&self.shared.informers);
        let term = (self.shared.term)();
        if term.is_some() && term != informers.term {
            informers.by_kind.clear();
            informers.term = term;
            lock(&self.shared.written).clear();
        }
        let informer = informers.by_kind.entry(info.kind).or_insert_with(|| {
            Informer::start(self.inner.clone(), info.kind, self.shared.changed.clone())
        });
        Ok(informer.clone())
    }

    /// The synced informer of `kind`.
    async fn synced(&self, kind: &str) -> Result<Informer, ClientError> {
        let informer = self.informer(kind)?;
        if tokio::time::timeout(SYNC_WAIT, informer.wait_synced())
            .await
            .is_err()
        {
            return Err(ClientError::new(
                Code::Unavailable,
                format!("the {kind} cache has not listed yet; retrying"),
            ));
        }
        Ok(informer)
    }

    /// Every object of `kind` as the cache holds it now, without waiting for this leader's
    /// writes: for a loop that accounts for its own writes until the cache shows them (the
    /// scheduler's assumed binds), so a burst of events never holds it back.
    pub async fn snapshot_now(&self, kind: &str) -> Result<Vec<Arc<Value>>, ClientError> {
        Ok(self.synced(kind).await?.snapshot())
    }

    /// Every object of `kind`, from its cache once that has applied this leader's writes.
    pub async fn snapshot(&self, kind: &str) -> Result<Vec<Arc<Value>>, ClientError> {
        let informer = self.synced(kind).await?;
        let written = lock(&self.shared.written)
            .get(informer.kind)
            .copied()
            .unwrap_or(0);
        if informer.revision() < written
            && tokio::time::timeout(SETTLE_WAIT, informer.wait_revision(written))
                .await
                .is_err()
        {
            tracing::debug!(
                kind,
                written,
                cached = informer.revision(),
                "cache still behind this leader's writes"
            );
        }
        Ok(informer.snapshot())
    }

    /// The objects `opts` selects: from the cache for a whole kind, from the API server
    /// otherwise.
    pub async fn list_shared(
        &self,
        kind: &str,
        opts: &ListOptions,
    ) -> Result<Vec<Arc<Value>>, ClientError> {
        if whole_kind(opts) {
            return self.snapshot(kind).await;
        }
        let mut list = self.inner.list(kind, opts).await?;
        Ok(match list.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items.into_iter().map(Arc::new).collect(),
            _ => Vec::new(),
        })
    }

    /// Records the revision a write produced, so later reads of the kind wait for it.
    fn note(&self, kind: &str, r: Result<Value, ClientError>) -> Result<Value, ClientError> {
        if let Ok(obj) = &r
            && let Some(info) = ferry_api::kinds::lookup_kind(kind)
        {
            let rev = revision_of(obj);
            let mut written = lock(&self.shared.written);
            let w = written.entry(info.kind).or_default();
            *w = (*w).max(rev);
        }
        r
    }
}

impl<A: Api + Clone + 'static> Api for Cached<A> {
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.inner.get(kind, namespace, name).await
    }
    async fn list(&self, kind: &str, opts: &ListOptions) -> Result<Value, ClientError> {
        if !whole_kind(opts) {
            return self.inner.list(kind, opts).await;
        }
        let items: Vec<Value> = self
            .snapshot(kind)
            .await?
            .iter()
            .map(|o| Value::clone(o))
            .collect();
        Ok(json!({"kind": format!("{kind}List"), "metadata": {}, "items": items}))
    }
    async fn create(&self, kind: &str, namespace: &str, obj: &Value) -> Result<Value, ClientError> {
        let r = self.inner.create(kind, namespace, obj).await;
        self.note(kind, r)
    }
    async fn update(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        let r = self.inner.update(kind, obj).await;
        self.note(kind, r)
    }
    async fn update_status(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        let r = self.inner.update_status(kind, obj).await;
        self.note(kind, r)
    }
    async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        let r = self.inner.patch(kind, namespace, name, patch).await;
        self.note(kind, r)
    }
    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let r = self.inner.delete(kind, namespace, name).await;
        self.note(kind, r)
    }
    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> Result<Value, ClientError> {
        let r = self
            .inner
            .bind(namespace, name, node, resource_version)
            .await;
        self.note("Pod", r)
    }
    async fn watch(
        &self,
        kind: &str,
        opts: &ListOptions,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        self.inner.watch(kind, opts, resource_version).await
    }
}
