//! Jobs: run pods from `spec.template` until `spec.completions` of them succeed, at most
//! `spec.parallelism` at a time, as Kubernetes' Job controller does (NonIndexed completion).
//!
//! A Job's pods carry the labels `batch.kubernetes.io/job-name`, `job-name`,
//! `batch.kubernetes.io/controller-uid` and `controller-uid`, and a controller ownerReference
//! to the Job (the garbage collector deletes them with it). Failed pods count against
//! `spec.backoffLimit` (the Job fails once more pods failed than that; with `restartPolicy:
//! OnFailure` container restarts count too); `spec.activeDeadlineSeconds` fails the Job once it
//! has been running that long. A failed Job's running pods are deleted. Status: active, ready,
//! succeeded, failed, startTime, completionTime and the conditions Complete, or Failed with
//! reason BackoffLimitExceeded or DeadlineExceeded. `spec.ttlSecondsAfterFinished` deletes a
//! finished Job (and through the collector its pods) that long after it finished. Without
//! `completions` (a work queue) the Job completes once a pod succeeded and none is active.
//! `spec.podFailurePolicy`: the first rule a failed pod matches (`onExitCodes` In/NotIn, optionally
//! for one container, or `onPodConditions`) decides: `FailJob` fails the Job at once (reason
//! PodFailurePolicy), `Ignore` leaves the failure out of `backoffLimit` (the pod is replaced at
//! once), `Count` counts it as usual.
//! `spec.suspend` deletes the active pods and starts none. After failed pods, new ones wait a
//! back-off delay (10 s, doubled for each further failure since the last success, at most
//! 6 min), as in Kubernetes.
//!
//! `completionMode: Indexed`: each of `completions` indexes needs one succeeded pod. A pod of
//! index i is named `<job>-<i>-<random>`, has hostname `<job>-<i>`, the annotation and label
//! `batch.kubernetes.io/job-completion-index: "i"` and the env var `JOB_COMPLETION_INDEX=i` in
//! every container; the lowest indexes without a succeeded or active pod start first (at most
//! `parallelism` active), a failed index is retried, and `status.completedIndexes` lists the
//! succeeded ones in Kubernetes' compressed form (`0-2,5`). `backoffLimitPerIndex` fails an
//! index (not the Job) once it failed more often than that (`status.failedIndexes`; the Job
//! fails when every index is done or failed, or past `maxFailedIndexes`); `successPolicy`
//! completes the Job as soon as one of its rules is met. [`plan`] is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::client::Api;
use serde_json::{Value, json};

use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::record_event as record;
use crate::controllers::str_at as s;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What a Job needs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// How many pods to create.
    pub create: usize,
    /// Indexed Jobs: the completion index of each pod to create (`create` of them).
    pub indexes: Vec<i64>,
    /// Indexed Jobs with `backoffLimitPerIndex`: how often each index has failed so far (the
    /// new pod of that index carries it in [`INDEX_FAILURE_COUNT`]).
    pub index_failures: BTreeMap<i64, i64>,
    /// Active pods to delete (names).
    pub delete: Vec<String>,
    /// The new status (None: unchanged).
    pub status: Option<Value>,
    /// Delete the Job itself (ttlSecondsAfterFinished expired).
    pub delete_job: bool,
    pub events: Vec<Event>,
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn time(v: &Value, ptr: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s(v, ptr))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The finished condition of a Job: ("Complete" | "Failed", lastTransitionTime).
pub fn finished(job: &Value) -> Option<(String, Option<DateTime<Utc>>)> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| {
            matches!(c["type"].as_str(), Some("Complete" | "Failed")) && c["status"] == "True"
        })
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                time(c, "/lastTransitionTime"),
            )
        })
}

/// Whether a pod is owned (controller reference) by the object with this uid.
pub fn owned_by(pod: &Value, uid: &str) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["controller"] == true && r["uid"] == uid)
        })
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": now, "lastTransitionTime": now})
}

/// The first back-off delay after a failed pod; it doubles with each further failure since
/// the last success, up to [`BACKOFF_MAX`] (Kubernetes' values).
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// When a pod finished: its last container termination, else its last condition change.
fn finish_time(pod: &Value) -> Option<DateTime<Utc>> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let terminated = statuses
        .into_iter()
        .flatten()
        .filter_map(|c| time(c, "/state/terminated/finishedAt"))
        .max();
    terminated.or_else(|| {
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| time(c, "/lastTransitionTime"))
            .max()
    })
}

/// Until when new pods wait after failures: the last failure plus BACKOFF_BASE doubled for
/// each further failure since the last success (the epoch when there is none).
fn backoff_until(pods: &[&Value]) -> DateTime<Utc> {
    let last_success = pods
        .iter()
        .filter(|q| s(q, "/status/phase") == "Succeeded")
        .filter_map(|q| finish_time(q))
        .max();
    let failures: Vec<DateTime<Utc>> = pods
        .iter()
        .filter(|q| s(q, "/status/phase") == "Failed")
        .filter_map(|q| finish_time(q))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let Some(last) = failures.iter().max() else {
        return DateTime::<Utc>::MIN_UTC;
    };
    let doublings = (failures.len() - 1).min(8) as u32;
    let delay = (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX);
    *last + chrono::Duration::from_std(delay).unwrap_or_default()
}

/// The pure decision for one Job over its own pods, at `now`.
pub fn plan(job: &Value, pods: &[&Value], now: DateTime<Utc>) -> Plan {
    let now_s = rfc3339(now);
    let mut p = Plan::default();
    let old = job.get("status").cloned().unwrap_or_else(|| json!({}));
    let count = |phase: &str| {
        pods.iter()
            .filter(|q| s(q, "/status/phase") == phase)
            .count() as i64
    };
    let indexed = s(job, "/spec/completionMode") == "Indexed";
    let completions = int(job, "/spec/completions");
    // Indexed: the indexes with a succeeded pod (kept in the status once their pods are gone).
    let mut done: BTreeSet<i64> = BTreeSet::new();
    if indexed {
        let c = completions.unwrap_or(0);
        done.extend(parse_indexes(s(&old, "/completedIndexes")));
        done.extend(
            pods.iter()
                .filter(|q| s(q, "/status/phase") == "Succeeded")
                .filter_map(|q| completion_index(q)),
        );
        done.retain(|i| (0..c).contains(i));
    }
    let succeeded = if indexed {
        done.len() as i64
    } else {
        count("Succeeded").max(int(&old, "/succeeded").unwrap_or(0))
    };
    // podFailurePolicy: the first rule a failed pod matches decides what its failure means.
    let verdicts: Vec<(&Value, Option<FailureVerdict>)> = pods
        .iter()
        .filter(|q| s(q, "/status/phase") == "Failed")
        .map(|q| (*q, failure_verdict(job, q)))
        .collect();
    let ignored: BTreeSet<&str> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Some(FailureVerdict::Ignore)))
        .map(|(q, _)| s(q, "/metadata/name"))
        .collect();
    let fail_job = verdicts.iter().find_map(|(_, v)| match v {
        Some(FailureVerdict::FailJob(m)) => Some(m.clone()),
        _ => None,
    });
    let counted: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|q| !ignored.contains(s(q, "/metadata/name")))
        .collect();
    let failed = (count("Failed") - ignored.len() as i64).max(int(&old, "/failed").unwrap_or(0));
    // backoffLimitPerIndex (Indexed): each index fails on its own once it failed more often
    // than the limit (or at once by a FailIndex rule); the Job goes on with the others.
    let per_index = if indexed {
        int(job, "/spec/backoffLimitPerIndex")
    } else {
        None
    };
    let mut failed_indexes: BTreeSet<i64> = BTreeSet::new();
    if let Some(limit) = per_index {
        for q in &counted {
            let Some(i) = completion_index(q) else {
                continue;
            };
            let before = q
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(INDEX_FAILURE_COUNT))
                .and_then(Value::as_str)
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0);
            let n = before + i64::from(s(q, "/status/phase") == "Failed");
            let e = p.index_failures.entry(i).or_insert(0);
            *e = (*e).max(n);
        }
        failed_indexes.extend(parse_indexes(s(&old, "/failedIndexes")));
        failed_indexes.extend(
            p.index_failures
                .iter()
                .filter(|(_, n)| **n > limit)
                .map(|(i, _)| *i),
        );
        failed_indexes.extend(
            verdicts
                .iter()
                .filter(|(_, v)| matches!(v, Some(FailureVerdict::FailIndex)))
                .filter_map(|(q, _)| completion_index(q)),
        );
        let c = completions.unwrap_or(0);
        failed_indexes.retain(|i| (0..c).contains(i) && !done.contains(i));
    }
    let mut active: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|q| {
            s(q, "/metadata/deletionTimestamp").is_empty()
                && !matches!(s(q, "/status/phase"), "Succeeded" | "Failed")
        })
        .collect();
    // Least valuable first: unscheduled, not ready, newest.
    active.sort_by_key(|q| {
        (
            !s(q, "/spec/nodeName").is_empty(),
            is_ready(q),
            std::cmp::Reverse(s(q, "/metadata/creationTimestamp").to_string()),
        )
    });
    let ready = active.iter().filter(|q| is_ready(q)).count() as i64;

    if let Some((_, at)) = finished(job) {
        // Finished: only the TTL is left to watch (and stray pods of a failed Job).
        if let Some(ttl) = int(job, "/spec/ttlSecondsAfterFinished") {
            let at = time(job, "/status/completionTime").or(at);
            if at.is_some_and(|t| now >= t + chrono::Duration::seconds(ttl)) {
                p.delete_job = true;
            }
        }
        p.delete = active
            .iter()
            .map(|q| s(q, "/metadata/name").to_string())
            .collect();
        return p;
    }

    let mut status = old.clone();
    if !status.is_object() {
        status = json!({});
    }
    let suspended = job["spec"]["suspend"] == true;
    let start = time(&old, "/startTime");
    if start.is_none() && !suspended {
        status["startTime"] = json!(now_s);
    }
    let start = start.unwrap_or(now);
    let backoff_limit = int(job, "/spec/backoffLimit").unwrap_or(6);
    let restarts: i64 = if s(job, "/spec/template/spec/restartPolicy") == "OnFailure" {
        active
            .iter()
            .flat_map(|q| {
                q.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|c| c["restartCount"].as_i64().unwrap_or(0))
            .sum()
    } else {
        0
    };
    let max_failed_indexes = int(job, "/spec/maxFailedIndexes");
    let failure = if let Some(message) = fail_job {
        Some(("PodFailurePolicy", message))
    } else if max_failed_indexes.is_some_and(|m| failed_indexes.len() as i64 > m) {
        Some((
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes".to_string(),
        ))
    } else if failed > backoff_limit || (restarts > 0 && restarts >= backoff_limit) {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".to_string(),
        ))
    } else if let Some(d) = int(job, "/spec/activeDeadlineSeconds")
        && !suspended
        && now >= start + chrono::Duration::seconds(d)
    {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".to_string(),
        ))
    } else {
        None
    };
    let parallelism = int(job, "/spec/parallelism").unwrap_or(1).max(0);
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let mut active_after = active.len() as i64;
    if let Some((reason, message)) = failure {
        p.delete = active
            .iter()
            .map(|q| s(q, "/metadata/name").to_string())
            .collect();
        active_after = 0;
        conditions.push(condition("Failed", reason, &message, &now_s));
        p.events.push(Event {
            warning: true,
            reason,
            message,
        });
    } else {
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        let success_rule = if indexed {
            success_rule(job, &done)
        } else {
            None
        };
        let all_tried = indexed
            && !failed_indexes.is_empty()
            && succeeded + failed_indexes.len() as i64 >= completions.unwrap_or(0);
        if let Some(rule) = success_rule.filter(|_| !complete) {
            // successPolicy: done as soon as a rule is met; the other pods are not needed.
            p.delete = active
                .iter()
                .map(|q| s(q, "/metadata/name").to_string())
                .collect();
            active_after = 0;
            status["completionTime"] = json!(now_s);
            let message = format!("Matched rules at index {rule}");
            conditions.push(condition(
                "SuccessCriteriaMet",
                "SuccessPolicy",
                &message,
                &now_s,
            ));
            conditions.push(condition("Complete", "SuccessPolicy", &message, &now_s));
            p.events.push(Event {
                warning: false,
                reason: "Completed",
                message: "Job completed".into(),
            });
        } else if all_tried {
            // Every index succeeded or failed for good: the Job fails, naming them.
            p.delete = active
                .iter()
                .map(|q| s(q, "/metadata/name").to_string())
                .collect();
            active_after = 0;
            let message = "Job has failed indexes".to_string();
            conditions.push(condition("Failed", "FailedIndexes", &message, &now_s));
            p.events.push(Event {
                warning: true,
                reason: "FailedIndexes",
                message,
            });
        } else if complete {
            status["completionTime"] = json!(now_s);
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now_s,
            ));
            p.events.push(Event {
                warning: false,
                reason: "Completed",
                message: "Job completed".into(),
            });
        } else {
            let want = if suspended {
                0
            } else {
                match completions {
                    Some(c) => {
                        parallelism.min((c - succeeded - failed_indexes.len() as i64).max(0))
                    }
                    None if succeeded > 0 => active.len() as i64,
                    None => parallelism,
                }
            };
            let have = active.len() as i64;
            if want > have && now < backoff_until(&counted) {
                // Failed pods are replaced after a back-off delay.
            } else if want > have && indexed {
                // The lowest indexes with neither a succeeded nor an active pod.
                let running: BTreeSet<i64> =
                    active.iter().filter_map(|q| completion_index(q)).collect();
                p.indexes = (0..completions.unwrap_or(0))
                    .filter(|i| {
                        !done.contains(i) && !running.contains(i) && !failed_indexes.contains(i)
                    })
                    .take((want - have) as usize)
                    .collect();
                p.create = p.indexes.len();
                active_after = have + p.create as i64;
            } else if want > have {
                p.create = (want - have) as usize;
                active_after = want;
            } else if have > want {
                p.delete = active
                    .iter()
                    .take((have - want) as usize)
                    .map(|q| s(q, "/metadata/name").to_string())
                    .collect();
                active_after = want;
                if suspended {
                    p.events.push(Event {
                        warning: false,
                        reason: "Suspended",
                        message: "Job suspended".into(),
                    });
                }
            }
        }
    }
    status["active"] = json!(active_after);
    status["ready"] = json!(ready.min(active_after));
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    if indexed {
        let list = format_indexes(&done);
        if list.is_empty() {
            if let Some(m) = status.as_object_mut() {
                m.remove("completedIndexes");
            }
        } else {
            status["completedIndexes"] = json!(list);
        }
        let list = format_indexes(&failed_indexes);
        if list.is_empty() {
            if let Some(m) = status.as_object_mut() {
                m.remove("failedIndexes");
            }
        } else {
            status["failedIndexes"] = json!(list);
        }
    }
    if conditions.is_empty() {
        if let Some(m) = status.as_object_mut() {
            m.remove("conditions");
        }
    } else {
        status["conditions"] = json!(conditions);
    }
    if status != old {
        p.status = Some(status);
    }
    p
}

/// What a failed pod's failure means under the Job's `podFailurePolicy`.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureVerdict {
    /// The Job fails at once (the message says which rule matched).
    FailJob(String),
    /// Not counted against `backoffLimit`; the pod is replaced.
    Ignore,
    /// Its index fails for good (`backoffLimitPerIndex` Jobs), the others go on.
    FailIndex,
    /// Counted, as without a policy.
    Count,
}

/// The first `podFailurePolicy` rule failed pod `pod` matches (None: no policy or no rule
/// matches: the failure counts). `onExitCodes` looks at the terminated containers (the named
/// one only with `containerName`), leaving out those that exited 0; `onPodConditions` at the
/// pod's conditions (status default True).
pub fn failure_verdict(job: &Value, pod: &Value) -> Option<FailureVerdict> {
    let rules = job
        .pointer("/spec/podFailurePolicy/rules")
        .and_then(Value::as_array)?;
    let exits: Vec<(&str, i64)> = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let code = c.pointer("/state/terminated/exitCode")?.as_i64()?;
            Some((c["name"].as_str().unwrap_or(""), code))
        })
        .filter(|(_, code)| *code != 0)
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(on) = rule.get("onExitCodes").filter(|v| !v.is_null()) {
            let values: Vec<i64> = on["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let only = on["containerName"].as_str();
            let not_in = on["operator"] == "NotIn";
            matched = exits
                .iter()
                .filter(|(name, _)| only.is_none_or(|o| o == *name))
                .find(|(_, code)| values.contains(code) != not_in)
                .map(|(name, code)| {
                    format!(
                        "Container {name} for pod {}/{} failed with exit code {code} matching {} rule at index {i}",
                        s(pod, "/metadata/namespace"),
                        s(pod, "/metadata/name"),
                        rule["action"].as_str().unwrap_or("")
                    )
                });
        } else if let Some(conds) = rule["onPodConditions"].as_array() {
            let has = |want: &Value| {
                pod.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["type"] == want["type"]
                            && c["status"] == want["status"].as_str().unwrap_or("True")
                    })
            };
            matched = conds.iter().find(|c| has(c)).map(|c| {
                format!(
                    "Pod {}/{} has condition {} matching {} rule at index {i}",
                    s(pod, "/metadata/namespace"),
                    s(pod, "/metadata/name"),
                    c["type"].as_str().unwrap_or(""),
                    rule["action"].as_str().unwrap_or("")
                )
            });
        }
        let Some(message) = matched else {
            continue;
        };
        return Some(match rule["action"].as_str() {
            Some("FailJob") => FailureVerdict::FailJob(message),
            Some("Ignore") => FailureVerdict::Ignore,
            Some("FailIndex") => FailureVerdict::FailIndex,
            _ => FailureVerdict::Count,
        });
    }
    None
}

/// The annotation with how often a pod's index failed before it (`backoffLimitPerIndex`).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";

/// The first `successPolicy` rule the succeeded indexes `done` meet: `succeededIndexes` all
/// succeeded, or at least `succeededCount` of them (of all indexes without
/// `succeededIndexes`).
pub fn success_rule(job: &Value, done: &BTreeSet<i64>) -> Option<usize> {
    let rules = job
        .pointer("/spec/successPolicy/rules")
        .and_then(Value::as_array)?;
    rules.iter().position(|r| {
        let set = r["succeededIndexes"].as_str().map(parse_indexes);
        let matched = set
            .as_ref()
            .map_or(done.len(), |set| set.intersection(done).count()) as i64;
        match (set.as_ref(), r["succeededCount"].as_i64()) {
            (_, Some(n)) => matched >= n,
            (Some(set), None) => !set.is_empty() && matched == set.len() as i64,
            (None, None) => false,
        }
    })
}

/// The annotation (and label) holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// An Indexed Job pod's completion index.
pub fn completion_index(pod: &Value) -> Option<i64> {
    pod.pointer("/metadata/annotations")?
        .get(COMPLETION_INDEX)?
        .as_str()?
        .parse()
        .ok()
}

/// Kubernetes' compressed index list: `1,3-5,7` (a run of two is written `7,8`, as
/// Kubernetes' `orderedIntervals.String` does).
pub fn format_indexes(indexes: &BTreeSet<i64>) -> String {
    let run = |(a, b): (i64, i64)| match b - a {
        0 => a.to_string(),
        1 => format!("{a},{b}"),
        _ => format!("{a}-{b}"),
    };
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<(i64, i64)> = None;
    for &i in indexes {
        current = match current {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some(r) => {
                out.push(run(r));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    out.extend(current.map(run));
    out.join(",")
}

/// The indexes of a compressed list (malformed parts are skipped).
pub fn parse_indexes(list: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>())
                    && a <= b
                    && b - a < 1_000_000
                {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// The pod of completion index `index` of an Indexed Job.
pub fn indexed_pod(job: &Value, index: i64) -> Value {
    let name = s(job, "/metadata/name");
    let mut pod = pod_from_template(job);
    let i = index.to_string();
    pod["metadata"]["generateName"] = json!(format!("{name}-{i}-"));
    pod["metadata"]["labels"][COMPLETION_INDEX] = json!(i);
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][COMPLETION_INDEX] = json!(i);
    if pod["spec"]["hostname"].as_str().is_none_or(str::is_empty) {
        pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
    }
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            if !c["env"].is_array() {
                c["env"] = json!([]);
            }
            if let Some(env) = c["env"].as_array_mut() {
                env.retain(|e| e["name"] != "JOB_COMPLETION_INDEX");
                env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i}));
            }
        }
    }
    pod
}

/// The pod a Job creates from its template.
pub fn pod_from_template(job: &Value) -> Value {
    let name = s(job, "/metadata/name");
    let uid = s(job, "/metadata/uid");
    let mut meta = job
        .pointer("/spec/template/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !meta.is_object() {
        meta = json!({});
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/job-name", name),
        ("job-name", name),
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
    ] {
        meta["labels"][k] = json!(v);
    }
    meta["generateName"] = json!(format!("{name}-"));
    meta["namespace"] = json!(s(job, "/metadata/namespace"));
    meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name,
        "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": job.pointer("/spec/template/spec").cloned().unwrap_or_else(|| json!({}))})
}

const COMPONENT: &str = "job-controller";

/// One pass over every Job. A Job whose pods could not be created or deleted gets a Warning
/// Event and is retried after its back-off ([`Backoff`]).
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ferry_api::client::ClientError> {
    let jobs = api.snapshot("Job").await?;
    backoff.retain(jobs.iter().map(|j| &**j));
    if jobs.is_empty() {
        return Ok(0);
    }
    let pods = api.snapshot("Pod").await?;
    let by_ns = super::by_namespace(&pods);
    let mut acted = 0;
    let started = std::time::Instant::now();
    for job in &jobs {
        let job: &Value = job;
        if !s(job, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(job, started) {
            continue;
        }
        let ns = s(job, "/metadata/namespace");
        let name = s(job, "/metadata/name");
        let uid = s(job, "/metadata/uid");
        let mine: Vec<&Value> = by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| owned_by(p, uid))
            .collect();
        let plan = plan(job, &mine, Utc::now());
        if plan.delete_job {
            match api.delete("Job", ns, name).await {
                Ok(_) => {
                    tracing::info!(job = name, "ttlSecondsAfterFinished: deleted");
                    acted += 1;
                }
                Err(e) => tracing::debug!(job = name, "deleting: {e}"),
            }
            continue;
        }
        let mut failure: Option<(&str, String)> = None;
        let templates: Vec<Value> = if plan.indexes.is_empty() {
            vec![pod_from_template(job); plan.create]
        } else {
            plan.indexes
                .iter()
                .map(|i| {
                    let mut pod = indexed_pod(job, *i);
                    if let Some(n) = plan.index_failures.get(i) {
                        pod["metadata"]["annotations"][INDEX_FAILURE_COUNT] = json!(n.to_string());
                    }
                    pod
                })
                .collect()
        };
        let creates = templates.iter().map(|t| api.create("Pod", ns, t));
        for r in futures::future::join_all(creates).await {
            match r {
                Ok(pod) => {
                    acted += 1;
                    let msg = format!("Created pod: {}", s(&pod, "/metadata/name"));
                    record(api, "Job", job, COMPONENT, false, "SuccessfulCreate", &msg).await;
                }
                Err(e) => {
                    failure.get_or_insert(("FailedCreate", format!("Error creating: {e}")));
                }
            }
        }
        for pod in &plan.delete {
            match api.delete("Pod", ns, pod).await {
                Ok(_) => {
                    acted += 1;
                    let msg = format!("Deleted pod: {pod}");
                    record(api, "Job", job, COMPONENT, false, "SuccessfulDelete", &msg).await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure.get_or_insert(("FailedDelete", format!("Error deleting: {e}")));
                }
            }
        }
        backoff
            .report(api, "Job", COMPONENT, job, failure.as_ref(), started)
            .await;
        if let Some(status) = &plan.status {
            let mut updated = job.clone();
            updated["status"] = status.clone();
            match api.update_status("Job", &updated).await {
                Ok(_) => {
                    acted += 1;
                    for e in &plan.events {
                        record(api, "Job", job, COMPONENT, e.warning, e.reason, &e.message).await;
                    }
                }
                Err(e) => tracing::debug!(job = name, "status: {e}"),
            }
        }
    }
    Ok(acted)
}

/// Runs passes on the leader on store changes (at most every 100 ms) and every second (for
/// deadlines and TTLs).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_millis(100),
    };
    let mut turns = super::Turns::new("job", node, pace);
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn job(completions: Option<i64>, parallelism: i64, backoff: i64) -> Value {
        let mut j = json!({"metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": {"parallelism": parallelism, "backoffLimit": backoff,
                     "template": {"metadata": {"labels": {"app": "pi"}},
                                  "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}});
        if let Some(c) = completions {
            j["spec"]["completions"] = json!(c);
        }
        j
    }

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"nodeName": "n1"}, "status": {"phase": phase}})
    }

    const NOW: &str = "2026-01-01T00:01:00Z";

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(Some(3), 2, 6);
        let p = plan(&j, &[], at(NOW));
        assert_eq!(p.create, 2);
        let st = p.status.expect("status");
        assert_eq!(st["active"], 2);
        assert_eq!(st["startTime"], NOW);
        // One succeeded, one running: two more are needed, one more may run now.
        let (a, b) = (pod("a", "Succeeded"), pod("b", "Running"));
        let p = plan(&j, &[&a, &b], at(NOW));
        assert_eq!(p.create, 1);
        assert_eq!(p.status.expect("status")["succeeded"], 1);
        let (a, b, c) = (
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Running"),
        );
        assert_eq!(plan(&j, &[&a, &b], at(NOW)).create, 1);
        assert_eq!(plan(&j, &[&a, &b, &c], at(NOW)).create, 0);
        let d = pod("d", "Succeeded");
        let p = plan(&j, &[&a, &b, &d], at(NOW));
        let st = p.status.expect("status");
        assert_eq!(st["completionTime"], NOW);
        assert_eq!(st["conditions"][0]["type"], "Complete");
        assert_eq!(st["active"], 0);
        assert_eq!(p.events[0].reason, "Completed");
    }

    #[test]
    fn indexed_jobs_run_each_index_once_and_retry_failed_ones() {
        let mut j = job(Some(5), 2, 6);
        j["spec"]["completionMode"] = json!("Indexed");
        let p = plan(&j, &[], at(NOW));
        assert_eq!(p.indexes, vec![0, 1]);
        assert_eq!(p.create, 2);
        let of = |name: &str, index: i64, phase: &str| {
            let mut q = pod(name, phase);
            q["metadata"]["annotations"] = json!({COMPLETION_INDEX: index.to_string()});
            q
        };
        // 0 succeeded, 1 running: 2 starts (not 0 again).
        let (a, b) = (of("a", 0, "Succeeded"), of("b", 1, "Running"));
        let p = plan(&j, &[&a, &b], at(NOW));
        assert_eq!(p.indexes, vec![2]);
        let st = p.status.expect("status");
        assert_eq!(st["succeeded"], 1);
        assert_eq!(st["completedIndexes"], "0");
        // 1 failed long ago: it is retried, with 3 (2 and 4 done).
        let mut failed = of("f", 1, "Failed");
        failed["status"]["conditions"] =
            json!([{"type": "Ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let (c, e) = (of("c", 2, "Succeeded"), of("e", 4, "Succeeded"));
        let later = at("2026-01-01T01:00:00Z");
        let p = plan(&j, &[&a, &failed, &c, &e], later);
        assert_eq!(p.indexes, vec![1, 3]);
        assert_eq!(p.status.expect("status")["completedIndexes"], "0,2,4");
        // Every index succeeded (some known only from the status): complete.
        let mut j2 = j.clone();
        j2["status"] = json!({"completedIndexes": "0-2", "succeeded": 3});
        let (d, e2) = (of("d", 3, "Succeeded"), of("e2", 4, "Succeeded"));
        let p = plan(&j2, &[&d, &e2], at(NOW));
        let st = p.status.expect("status");
        assert_eq!(st["completedIndexes"], "0-4");
        assert_eq!(st["succeeded"], 5);
        assert_eq!(st["conditions"][0]["type"], "Complete");
        assert!(p.indexes.is_empty());
    }

    fn indexed(completions: i64, parallelism: i64) -> Value {
        let mut j = job(Some(completions), parallelism, i64::from(i32::MAX));
        j["spec"]["completionMode"] = json!("Indexed");
        j
    }

    fn of_index(name: &str, index: i64, phase: &str, failures_before: i64) -> Value {
        let mut q = pod(name, phase);
        q["metadata"]["annotations"] = json!({COMPLETION_INDEX: index.to_string(),
            INDEX_FAILURE_COUNT: failures_before.to_string()});
        q
    }

    #[test]
    fn backoff_limit_per_index_fails_indexes_not_the_job() {
        let mut j = indexed(3, 3);
        j["spec"]["backoffLimitPerIndex"] = json!(1);
        let later = at("2026-01-01T01:00:00Z");
        // Index 1 failed once: retried, its new pod told it failed once before.
        let (a, b, c) = (
            of_index("a", 0, "Succeeded", 0),
            of_index("b", 1, "Failed", 0),
            of_index("c", 2, "Running", 0),
        );
        let p = plan(&j, &[&a, &b, &c], later);
        assert_eq!(p.indexes, vec![1]);
        assert_eq!(p.index_failures.get(&1), Some(&1));
        assert!(
            p.status
                .as_ref()
                .is_some_and(|st| st["failedIndexes"].is_null())
        );
        // Its retry failed too (2 > 1): index 1 fails for good, the others go on.
        let b2 = of_index("b2", 1, "Failed", 1);
        let p = plan(&j, &[&a, &b, &b2, &c], later);
        assert!(p.indexes.is_empty(), "a failed index is not retried");
        let st = p.status.expect("status");
        assert_eq!(st["failedIndexes"], "1");
        assert!(st["conditions"].is_null(), "still running index 2: {st}");
        // Index 2 succeeds: every index is done or failed, so the Job fails, naming them.
        let c2 = of_index("c", 2, "Succeeded", 0);
        let p = plan(&j, &[&a, &b, &b2, &c2], later);
        let st = p.status.expect("status");
        assert_eq!(st["conditions"][0]["type"], "Failed");
        assert_eq!(st["conditions"][0]["reason"], "FailedIndexes");
        assert_eq!(st["completedIndexes"], "0,2");
        // maxFailedIndexes 0: the first failed index fails the Job at once.
        j["spec"]["maxFailedIndexes"] = json!(0);
        let p = plan(&j, &[&a, &b, &b2, &c], later);
        let st = p.status.expect("status");
        assert_eq!(st["conditions"][0]["reason"], "MaxFailedIndexesExceeded");
        assert_eq!(p.delete, vec!["c".to_string()]);
        // A FailIndex rule fails the index on its first failure.
        let mut j = indexed(2, 2);
        j["spec"]["backoffLimitPerIndex"] = json!(5);
        j["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]});
        let mut f = of_index("f", 0, "Failed", 0);
        f["status"]["containerStatuses"] =
            json!([{"name": "c", "state": {"terminated": {"exitCode": 3}}}]);
        let r = of_index("r", 1, "Running", 0);
        let st = plan(&j, &[&f, &r], later).status.expect("status");
        assert_eq!(st["failedIndexes"], "0");
    }

    #[test]
    fn success_policy_completes_early() {
        let mut j = indexed(5, 5);
        j["spec"]["successPolicy"] = json!({"rules": [
            {"succeededIndexes": "0,4"},
            {"succeededCount": 3}]});
        let (a, b, c) = (
            of_index("a", 0, "Succeeded", 0),
            of_index("b", 1, "Running", 0),
            of_index("c", 4, "Running", 0),
        );
        let p = plan(&j, &[&a, &b, &c], at(NOW));
        assert!(p.status.expect("status")["conditions"].is_null());
        // 0 and 4 succeeded: rule 0 is met, the Job completes and the rest stops.
        let c = of_index("c", 4, "Succeeded", 0);
        let p = plan(&j, &[&a, &b, &c], at(NOW));
        let st = p.status.expect("status");
        assert_eq!(st["conditions"][0]["type"], "SuccessCriteriaMet");
        assert_eq!(st["conditions"][1]["type"], "Complete");
        assert_eq!(st["conditions"][1]["message"], "Matched rules at index 0");
        assert_eq!(p.delete, vec!["b".to_string()]);
        // Rule 1: any three indexes.
        let done: BTreeSet<i64> = [1, 2, 3].into();
        assert_eq!(success_rule(&j, &done), Some(1));
        let done: BTreeSet<i64> = [1, 2].into();
        assert_eq!(success_rule(&j, &done), None);
    }

    #[test]
    fn pod_failure_policy_fails_ignores_or_counts() {
        let mut j = job(Some(2), 1, 1);
        j["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}}]});
        let failed = |name: &str, code: i64, disrupted: bool| {
            let mut q = pod(name, "Failed");
            q["metadata"]["namespace"] = json!("default");
            q["status"]["containerStatuses"] =
                json!([{"name": "c", "state": {"terminated": {"exitCode": code}}}]);
            if disrupted {
                q["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True"}]);
            }
            q
        };
        // Exit 42: the Job fails at once, with the rule in the message.
        let a = failed("a", 42, false);
        match failure_verdict(&j, &a) {
            Some(FailureVerdict::FailJob(m)) => assert_eq!(
                m,
                "Container c for pod default/a failed with exit code 42 matching FailJob rule at index 0"
            ),
            other => panic!("{other:?}"),
        }
        let st = plan(&j, &[&a], at(NOW)).status.expect("status");
        assert_eq!(st["conditions"][0]["reason"], "PodFailurePolicy");
        // Disrupted pods are ignored: two of them stay under backoffLimit 1, replaced at once.
        let (b, c) = (failed("b", 137, true), failed("c", 137, true));
        assert_eq!(failure_verdict(&j, &b), Some(FailureVerdict::Ignore));
        let p = plan(&j, &[&b, &c], at(NOW));
        let st = p.status.expect("status");
        assert!(st["conditions"].is_null(), "{st}");
        assert_eq!(st["failed"], 0);
        assert_eq!(p.create, 1, "replaced without a back-off delay");
        // Exit 3 is counted (NotIn [1]); exit 1 matches no rule and counts too.
        assert_eq!(
            failure_verdict(&j, &failed("d", 3, false)),
            Some(FailureVerdict::Count)
        );
        assert_eq!(failure_verdict(&j, &failed("e", 1, false)), None);
        let (d, e) = (failed("d", 3, false), failed("e", 1, false));
        let st = plan(&j, &[&d, &e], at(NOW)).status.expect("status");
        assert_eq!(st["conditions"][0]["reason"], "BackoffLimitExceeded");
    }

    #[test]
    fn index_lists_round_trip_in_kubernetes_form() {
        let set: BTreeSet<i64> = [0, 1, 2, 5, 7, 8].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,5,7,8");
        assert_eq!(parse_indexes("0-2,5,7,8"), set);
        assert_eq!(parse_indexes("0-2,5,7-8"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(parse_indexes("x,3,9-7, 4"), [3, 4].into_iter().collect());
        let pod = indexed_pod(&job(Some(3), 1, 6), 2);
        assert_eq!(pod["metadata"]["generateName"], "pi-2-");
        assert_eq!(pod["metadata"]["annotations"][COMPLETION_INDEX], "2");
        assert_eq!(pod["metadata"]["labels"][COMPLETION_INDEX], "2");
        assert_eq!(pod["spec"]["hostname"], "pi-2");
        assert_eq!(
            pod["spec"]["containers"][0]["env"],
            json!([{"name": "JOB_COMPLETION_INDEX", "value": "2"}])
        );
    }

    #[test]
    fn fails_past_the_backoff_limit_and_deletes_running_pods() {
        let j = job(Some(1), 2, 1);
        let (mut a, b, c) = (pod("a", "Failed"), pod("b", "Running"), pod("c", "Failed"));
        // One failure is within backoffLimit 1: replaced after the back-off delay (10 s).
        a["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:55Z"}]);
        let p = plan(&j, &[&a], at(NOW));
        assert_eq!(p.create, 0);
        assert_eq!(p.status.expect("status")["failed"], 1);
        let p = plan(&j, &[&a], at("2026-01-01T00:01:05Z"));
        assert_eq!(p.create, 1);
        // Two failures since the last success: 20 s.
        let mut a2 = a.clone();
        a2["metadata"]["name"] = json!("a2");
        a2["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:00:50Z");
        let j3 = job(Some(1), 1, 5);
        assert_eq!(plan(&j3, &[&a, &a2], at("2026-01-01T00:01:10Z")).create, 0);
        assert_eq!(plan(&j3, &[&a, &a2], at("2026-01-01T00:01:15Z")).create, 1);
        let p = plan(&j, &[&a, &b, &c], at(NOW));
        assert_eq!(p.create, 0);
        assert_eq!(p.delete, vec!["b"]);
        let st = p.status.expect("status");
        assert_eq!(st["conditions"][0]["type"], "Failed");
        assert_eq!(st["conditions"][0]["reason"], "BackoffLimitExceeded");
        assert_eq!(st["failed"], 2);
        assert!(p.events[0].warning);
        // OnFailure: container restarts count.
        let mut j = job(Some(1), 1, 2);
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        let mut r = pod("r", "Running");
        r["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 2}]);
        let p = plan(&j, &[&r], at(NOW));
        assert_eq!(p.delete, vec!["r"]);
    }

    #[test]
    fn deadline_fails_the_job() {
        let mut j = job(Some(1), 1, 6);
        j["spec"]["activeDeadlineSeconds"] = json!(30);
        j["status"] = json!({"startTime": "2026-01-01T00:00:00Z", "active": 1});
        let r = pod("r", "Running");
        let p = plan(&j, &[&r], at("2026-01-01T00:00:20Z"));
        assert!(p.delete.is_empty());
        let p = plan(&j, &[&r], at("2026-01-01T00:00:31Z"));
        assert_eq!(p.delete, vec!["r"]);
        assert_eq!(
            p.status.expect("status")["conditions"][0]["reason"],
            "DeadlineExceeded"
        );
    }

    #[test]
    fn ttl_deletes_a_finished_job() {
        let mut j = job(Some(1), 1, 6);
        j["spec"]["ttlSecondsAfterFinished"] = json!(10);
        j["status"] = json!({"completionTime": "2026-01-01T00:00:00Z", "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        assert!(!plan(&j, &[], at("2026-01-01T00:00:05Z")).delete_job);
        let p = plan(&j, &[], at("2026-01-01T00:00:10Z"));
        assert!(p.delete_job);
        assert_eq!(p.status, None);
    }

    #[test]
    fn work_queue_and_suspend() {
        let j = job(None, 3, 6);
        assert_eq!(plan(&j, &[], at(NOW)).create, 3);
        let (a, b) = (pod("a", "Succeeded"), pod("b", "Running"));
        // A pod succeeded: no new pods; done once none is active.
        assert_eq!(plan(&j, &[&a, &b], at(NOW)).create, 0);
        let p = plan(&j, &[&a], at(NOW));
        assert_eq!(
            p.status.expect("status")["conditions"][0]["type"],
            "Complete"
        );
        let mut j = job(Some(2), 2, 6);
        j["spec"]["suspend"] = json!(true);
        let p = plan(&j, &[&b], at(NOW));
        assert_eq!(p.delete, vec!["b"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn pods_are_labelled_and_owned() {
        let p = pod_from_template(&job(Some(1), 1, 6));
        assert_eq!(p["metadata"]["generateName"], "pi-");
        assert_eq!(p["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(p["metadata"]["labels"]["controller-uid"], "job-uid");
        assert_eq!(p["metadata"]["labels"]["app"], "pi");
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert!(owned_by(&p, "job-uid"));
    }
}
