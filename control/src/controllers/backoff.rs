//! Requeue with back-off, per object: what client-go's rate-limited work queue (and
//! kube-runtime's `Action::requeue` on error) gives Kubernetes' controllers.
//!
//! A control loop's passes visit every object it owns; an object whose last reconcile failed (a
//! create refused, a write that errored) is skipped until its back-off has passed, so a
//! ReplicaSet whose pods cannot be created does not retry every 100 ms. The wait doubles with
//! each consecutive failure, from [`BASE`] up to [`MAX`]; a success forgets it. An edit of the
//! object's spec (a new `metadata.generation`) is acted on at once, as a watch event is in
//! Kubernetes, whatever the back-off. Objects that are gone are forgotten each pass.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::str_at as s;

/// The first wait after a failure.
pub const BASE: Duration = Duration::from_millis(500);
/// The longest wait.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    until: Instant,
    generation: i64,
}

/// The back-off state of one control loop's objects, by uid.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<String, Entry>,
}

fn generation(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The wait after `failures` consecutive failures.
pub fn delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    BASE.saturating_mul(factor).min(MAX)
}

impl Backoff {
    /// Whether `obj` may be reconciled at `now`.
    pub fn ready(&self, obj: &Value, now: Instant) -> bool {
        match self.entries.get(s(obj, "/metadata/uid")) {
            None => true,
            Some(e) => now >= e.until || generation(obj) != e.generation,
        }
    }

    /// Records a failed reconcile of `obj` at `now`; returns how long it now waits.
    pub fn failed(&mut self, obj: &Value, now: Instant) -> Duration {
        let generation = generation(obj);
        let e = self
            .entries
            .entry(s(obj, "/metadata/uid").to_string())
            .or_insert(Entry {
                failures: 0,
                until: now,
                generation,
            });
        if e.generation != generation {
            e.failures = 0;
            e.generation = generation;
        }
        e.failures = e.failures.saturating_add(1);
        let wait = delay(e.failures);
        e.until = now + wait;
        wait
    }

    /// Ends one object's reconcile: with a failure (reason, message: the pass's first) `obj`
    /// backs off and gets a Warning Event from `component`; without, its back-off is
    /// forgotten.
    pub async fn report<A: ferry_api::client::Api>(
        &mut self,
        api: &A,
        kind: &str,
        component: &str,
        obj: &Value,
        failure: Option<&(&str, String)>,
        now: Instant,
    ) {
        match failure {
            Some((reason, message)) => {
                let wait = self.failed(obj, now);
                let name = s(obj, "/metadata/name");
                tracing::info!(kind, name, retry_in = ?wait, "{message}");
                super::record_event(api, kind, obj, component, true, reason, message).await;
            }
            None => self.succeeded(obj),
        }
    }

    /// Records a successful reconcile of `obj`: its back-off is forgotten.
    pub fn succeeded(&mut self, obj: &Value) {
        self.entries.remove(s(obj, "/metadata/uid"));
    }

    /// Forgets every object not in `live` (by uid).
    pub fn retain<'a>(&mut self, live: impl IntoIterator<Item = &'a Value>) {
        if self.entries.is_empty() {
            return;
        }
        let live: HashSet<&str> = live.into_iter().map(|o| s(o, "/metadata/uid")).collect();
        self.entries.retain(|uid, _| live.contains(uid.as_str()));
    }

    /// How long until the first back-off ends (None: nothing is backing off).
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.entries
            .values()
            .map(|e| e.until.saturating_duration_since(now))
            .min()
    }

    /// How many objects are backing off.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(uid: &str, generation: i64) -> Value {
        json!({"metadata": {"uid": uid, "generation": generation}})
    }

    #[test]
    fn waits_double_up_to_the_maximum() {
        assert_eq!(delay(1), BASE);
        assert_eq!(delay(2), BASE * 2);
        assert_eq!(delay(3), BASE * 4);
        assert_eq!(delay(30), MAX);
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn a_failed_object_waits_and_a_success_forgets_it() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let rs = obj("a", 1);
        assert!(b.ready(&rs, t0));
        assert_eq!(b.failed(&rs, t0), BASE);
        assert!(!b.ready(&rs, t0));
        assert!(!b.ready(&rs, t0 + BASE / 2));
        assert!(b.ready(&rs, t0 + BASE));
        // Consecutive failures double the wait.
        assert_eq!(b.failed(&rs, t0 + BASE), BASE * 2);
        assert!(!b.ready(&rs, t0 + BASE * 2));
        assert!(b.ready(&rs, t0 + BASE * 3));
        assert_eq!(b.next_due(t0 + BASE * 2), Some(BASE));
        // Other objects are not held back.
        assert!(b.ready(&obj("b", 1), t0));
        b.succeeded(&rs);
        assert!(b.ready(&rs, t0));
        assert!(b.is_empty());
        assert_eq!(b.next_due(t0), None);
    }

    #[test]
    fn a_spec_edit_is_acted_on_at_once_and_restarts_the_count() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            b.failed(&obj("a", 1), t0);
        }
        assert!(!b.ready(&obj("a", 1), t0 + BASE * 4));
        let edited = obj("a", 2);
        assert!(b.ready(&edited, t0));
        assert_eq!(b.failed(&edited, t0), BASE);
    }

    #[test]
    fn gone_objects_are_forgotten() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.failed(&obj("a", 1), t0);
        b.failed(&obj("b", 1), t0);
        let live = [obj("b", 1)];
        b.retain(live.iter());
        assert_eq!(b.len(), 1);
        assert!(b.ready(&obj("a", 1), t0));
        assert!(!b.ready(&obj("b", 1), t0));
    }
}
