//! Watch streams: replay of the store's history from a revision, then live changes.
//!
//! A watch reads history events after its last revision straight from the state machine and
//! waits on the revision notifier when it has caught up, so it can neither miss nor repeat an
//! event, whatever the event rate. Revisions are identical on every member, so a client that
//! reconnects to another member with its last resourceVersion resumes exactly where it stopped.
//! History older than the compaction point answers OUT_OF_RANGE ("too old, relist"), like
//! Kubernetes' 410 Gone.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::kinds::KindInfo;
use ferry_api::proto::{WatchEvent, WatchRequest};
use ferry_api::selector::{FieldSelector, LabelSelector};
use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::Status;

use super::{ApiError, kind_info, objects};
use crate::encryption::Encryptor;
use crate::node::Node;
use crate::store::{Event, EventKind, KeyValue, ReadError};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// How often an idle watch with bookmarks enabled reports its progress.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Events read from the store per step.
const BATCH: usize = 512;

struct Filter {
    prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&objects::labels(obj)) && self.fields.matches(obj)
    }
}

pub async fn start(
    node: Arc<Node>,
    enc: Encryptor,
    req: WatchRequest,
) -> Result<WatchStream, ApiError> {
    let info: &'static KindInfo = kind_info(&req.kind)?;
    let labels = LabelSelector::parse(&req.label_selector)
        .map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))?;
    let fields = FieldSelector::parse(&req.field_selector)
        .map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?;
    let ns = if req.namespace.is_empty() {
        None
    } else {
        Some(req.namespace.as_str())
    };
    let filter = Filter {
        prefix: objects::prefix(info, ns),
        labels,
        fields,
    };
    let from = match req.resource_version.as_str() {
        "" | "0" => {
            node.read_barrier().await?;
            node.sm.revision()
        }
        rv => rv.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "resourceVersion: invalid value {rv:?}: must be a number"
            ))
        })?,
    };
    // Refuse a compacted start now, as a plain error, rather than inside the stream.
    let compacted = node
        .sm
        .compacted_revision()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if from < compacted {
        return Err(ApiError::Gone(format!(
            "too old resource version: {from} (oldest available: {compacted}); relist and watch again"
        )));
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(node, enc, filter, from, req.allow_bookmarks, tx));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

fn event(kind: &str, obj: &Value) -> WatchEvent {
    WatchEvent {
        r#type: kind.to_string(),
        object: serde_json::to_vec(obj).unwrap_or_default(),
    }
}

/// The watch event (if any) that a store event means to a watcher with `filter`. A change that
/// moves an object into or out of the selector is ADDED or DELETED, as in Kubernetes.
fn translate(enc: Option<&Encryptor>, filter: &Filter, ev: &Event) -> Option<WatchEvent> {
    if !ev.kv.key.starts_with(&filter.prefix) {
        return None;
    }
    let open = |kv: &KeyValue| -> Option<Value> {
        match enc {
            Some(enc) => super::decode_with(enc, kv).ok(),
            None => objects::from_store(&kv.value, kv.mod_revision).ok(),
        }
    };
    let obj = open(&ev.kv)?;
    let now = filter.matches(&obj);
    let before = ev
        .prev
        .as_ref()
        .and_then(open)
        .is_some_and(|p| filter.matches(&p));
    match ev.kind {
        EventKind::Delete => before.then(|| event("DELETED", &obj)),
        EventKind::Put => match (ev.prev.is_some() && before, now) {
            (false, true) => Some(event("ADDED", &obj)),
            (true, true) => Some(event("MODIFIED", &obj)),
            (true, false) => Some(event("DELETED", &obj)),
            (false, false) => None,
        },
    }
}

async fn run(
    node: Arc<Node>,
    enc: Encryptor,
    filter: Filter,
    mut last: u64,
    bookmarks: bool,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
) {
    let mut notify = node.sm.subscribe();
    let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
    ticker.tick().await;
    loop {
        let (events, seen) = match node.sm.events_after(last, BATCH) {
            Ok(r) => r,
            Err(ReadError::Compacted { requested, oldest }) => {
                let msg = format!(
                    "too old resource version: {requested} (oldest available: {oldest}); relist and watch again"
                );
                let _ = tx.send(Err(Status::out_of_range(msg))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        };
        let full = events.len() >= BATCH;
        for ev in &events {
            last = ev.revision;
            if let Some(we) = translate(Some(&enc), &filter, ev)
                && tx.send(Ok(we)).await.is_err()
            {
                return;
            }
        }
        if full {
            continue;
        }
        last = last.max(seen);
        tokio::select! {
            changed = notify.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {
                if bookmarks {
                    let bm = serde_json::json!({"metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(Ok(event("BOOKMARK", &bm))).await.is_err() {
                        return;
                    }
                }
            }
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kv(rev: u64, labels: Value) -> KeyValue {
        KeyValue {
            key: "/pods/default/p".into(),
            value: json!({"metadata": {"name": "p", "labels": labels}}).to_string(),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    fn filter(sel: &str) -> Filter {
        Filter {
            prefix: "/pods/".into(),
            labels: LabelSelector::parse(sel).expect("selector"),
            fields: FieldSelector::parse("").expect("selector"),
        }
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let f = filter("app=web");
        let put = |rev, prev: Option<KeyValue>, labels| Event {
            revision: rev,
            kind: EventKind::Put,
            kv: kv(rev, labels),
            prev,
        };
        let t = |e: &Event| translate(None, &f, e).map(|w| w.r#type);
        assert_eq!(
            t(&put(1, None, json!({"app": "web"}))).as_deref(),
            Some("ADDED")
        );
        assert_eq!(
            t(&put(
                2,
                Some(kv(1, json!({"app": "web"}))),
                json!({"app": "web"})
            ))
            .as_deref(),
            Some("MODIFIED")
        );
        assert_eq!(
            t(&put(
                3,
                Some(kv(2, json!({"app": "web"}))),
                json!({"app": "db"})
            ))
            .as_deref(),
            Some("DELETED")
        );
        assert_eq!(
            t(&put(
                4,
                Some(kv(3, json!({"app": "db"}))),
                json!({"app": "web"})
            ))
            .as_deref(),
            Some("ADDED")
        );
        assert_eq!(t(&put(5, None, json!({"app": "db"}))), None);
        let del = Event {
            revision: 6,
            kind: EventKind::Delete,
            kv: kv(6, json!({"app": "web"})),
            prev: Some(kv(4, json!({"app": "web"}))),
        };
        assert_eq!(t(&del).as_deref(), Some("DELETED"));
        let other = Event {
            revision: 7,
            kind: EventKind::Put,
            kv: KeyValue {
                key: "/services/default/s".into(),
                ..kv(7, json!({}))
            },
            prev: None,
        };
        assert_eq!(t(&other), None);
    }
}
