//! An in-memory [`Api`] for the controllers' executor tests: objects by kind, namespace and
//! name, a global revision stamped into `resourceVersion`, watches fed by every write, and
//! injectable failures (`fail_creates`), so a test can run a real pass through [`Cached`] and
//! see what it wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ferry_api::client::{Api, ClientError, ListOptions, WatchEvent, WatchStream};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tonic::Code;

use super::cache::Cached;
use super::str_at as s;

type Key = (String, String, String);

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    /// Kind -> the error its creates fail with.
    fail_creates: HashMap<String, String>,
    /// Every successful write: (verb, kind, name).
    writes: Vec<(String, String, String)>,
}

/// See the module docs.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(String, WatchEvent)>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Arc::default(),
            events: broadcast::channel(4096).0,
        }
    }
}

impl FakeApi {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A [`Cached`] over this API that always leads in term 1.
    pub fn cached(&self) -> Cached<FakeApi> {
        Cached::with_term(self.clone(), Box::new(|| Some(1)))
    }

    /// Makes every create of `kind` fail with `message` (None: succeed again).
    pub fn fail_creates(&self, kind: &str, message: Option<&str>) {
        let mut st = self.state();
        match message {
            Some(m) => st.fail_creates.insert(kind.into(), m.into()),
            None => st.fail_creates.remove(kind),
        };
    }

    /// Every successful write so far: (verb, kind, name).
    pub fn writes(&self) -> Vec<(String, String, String)> {
        self.state().writes.clone()
    }

    /// Every stored object of `kind`.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((k, _, _), _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores `obj` as a write would (uid, generation, resourceVersion), returning it.
    fn put(&self, verb: &str, kind: &str, mut obj: Value, event: &str) -> Value {
        let mut st = self.state();
        st.revision += 1;
        let rev = st.revision;
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        let key = (
            kind.to_string(),
            s(&obj, "/metadata/namespace").to_string(),
            s(&obj, "/metadata/name").to_string(),
        );
        st.writes.push((verb.into(), kind.into(), key.2.clone()));
        if event == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, obj.clone());
        }
        let _ = self.events.send((
            kind.to_string(),
            WatchEvent {
                kind: event.into(),
                object: obj.clone(),
            },
        ));
        obj
    }

    fn current(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        self.state()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ClientError::new(Code::NotFound, format!("{kind} {name} not found")))
    }
}

impl Api for FakeApi {
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.current(kind, namespace, name)
    }
    async fn list(&self, kind: &str, opts: &ListOptions) -> Result<Value, ClientError> {
        let st = self.state();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((k, ns, _), _)| k == kind && opts.namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(json!({"metadata": {"resourceVersion": st.revision.to_string()}, "items": items}))
    }
    async fn create(&self, kind: &str, namespace: &str, obj: &Value) -> Result<Value, ClientError> {
        if let Some(m) = self.state().fail_creates.get(kind) {
            return Err(ClientError::new(Code::PermissionDenied, m.clone()));
        }
        let mut obj = obj.clone();
        obj["metadata"]["namespace"] = json!(namespace);
        if s(&obj, "/metadata/name").is_empty() {
            let n = self.state().revision;
            obj["metadata"]["name"] = json!(format!("{}{n:05}", s(&obj, "/metadata/generateName")));
        }
        if self
            .current(kind, namespace, s(&obj, "/metadata/name"))
            .is_ok()
        {
            return Err(ClientError::new(Code::AlreadyExists, "already exists"));
        }
        obj["metadata"]["uid"] = json!(format!("uid-{}", s(&obj, "/metadata/name")));
        obj["metadata"]["generation"] = json!(1);
        Ok(self.put("create", kind, obj, "ADDED"))
    }
    async fn update(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        let ns = s(obj, "/metadata/namespace");
        let cur = self.current(kind, ns, s(obj, "/metadata/name"))?;
        if s(obj, "/metadata/resourceVersion") != s(&cur, "/metadata/resourceVersion") {
            return Err(ClientError::new(Code::Aborted, "conflict"));
        }
        Ok(self.put("update", kind, obj.clone(), "MODIFIED"))
    }
    async fn update_status(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        let ns = s(obj, "/metadata/namespace");
        let mut cur = self.current(kind, ns, s(obj, "/metadata/name"))?;
        if s(obj, "/metadata/resourceVersion") != s(&cur, "/metadata/resourceVersion") {
            return Err(ClientError::new(Code::Aborted, "conflict"));
        }
        cur["status"] = obj["status"].clone();
        Ok(self.put("update_status", kind, cur, "MODIFIED"))
    }
    async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        let mut cur = self.current(kind, namespace, name)?;
        json_patch::merge(&mut cur, patch);
        Ok(self.put("patch", kind, cur, "MODIFIED"))
    }
    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let cur = self.current(kind, namespace, name)?;
        Ok(self.put("delete", kind, cur, "DELETED"))
    }
    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        _resource_version: &str,
    ) -> Result<Value, ClientError> {
        self.patch("Pod", namespace, name, &json!({"spec": {"nodeName": node}}))
            .await
    }
    async fn watch(
        &self,
        kind: &str,
        _opts: &ListOptions,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        let from: u64 = resource_version.parse().unwrap_or(0);
        let kind = kind.to_string();
        let rx = self.events.subscribe();
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let kind = kind.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok((k, ev)) => {
                            let rev: u64 = s(&ev.object, "/metadata/resourceVersion")
                                .parse()
                                .unwrap_or(0);
                            if k == kind && rev > from {
                                return Some((Ok(ev), rx));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Err(ClientError::new(Code::OutOfRange, "lagged")), rx));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
