//! Jobs, CronJobs, garbage collection by ownerReferences and namespace deletion, on simulated
//! nodes (Node objects without agents).
//!
//! The test plays the agent ([`FakeKubelet`]): a little after a pod is bound it reports it by
//! its `outcome` label — `succeed` ends Succeeded, `fail` ends Failed, anything else Running
//! and Ready — and it finishes graceful deletions with a grace-0 delete, as an agent does once
//! the containers stopped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::{Client, DeleteOptions, ListOptions};
use ferry_tests::Cluster;
use ferry_tests::sim::{add_node, until};
use serde_json::{Value, json};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn terminating(p: &Value) -> bool {
    !s(p, "/metadata/deletionTimestamp").is_empty()
}

/// Plays the node agent for every bound pod (see the module comment).
struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    fn start(c: Client, delay: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let force = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Ok(list) = c.list("Pod", &ListOptions::default()).await else {
                    continue;
                };
                for p in list["items"].as_array().into_iter().flatten() {
                    if s(p, "/spec/nodeName").is_empty() {
                        continue;
                    }
                    let key = format!("{}/{}", s(p, "/metadata/uid"), terminating(p));
                    let first = *seen.entry(key).or_insert_with(Instant::now);
                    if first.elapsed() < delay {
                        continue;
                    }
                    let (ns, name) = (s(p, "/metadata/namespace"), s(p, "/metadata/name"));
                    if terminating(p) {
                        let _ = c.delete_with("Pod", ns, name, &force).await;
                        continue;
                    }
                    // `<outcome>-index-N`: that outcome for completion index N, the
                    // opposite (fail) or running (succeed) for the others.
                    let index = s(
                        p,
                        "/metadata/labels/batch.kubernetes.io~1job-completion-index",
                    );
                    let phase = match s(p, "/metadata/labels/outcome") {
                        "succeed" => "Succeeded",
                        "fail" => "Failed",
                        o => match o.split_once("-index-") {
                            Some(("fail", i)) if i == index => "Failed",
                            Some(("fail", _)) => "Succeeded",
                            Some(("succeed", i)) if i == index => "Succeeded",
                            _ => "Running",
                        },
                    };
                    if s(p, "/status/phase") == phase {
                        continue;
                    }
                    let mut up = p.clone();
                    up["status"]["phase"] = json!(phase);
                    up["status"]["conditions"] = json!([{"type": "Ready",
                        "status": if phase == "Running" { "True" } else { "False" },
                        "lastTransitionTime": utc(0)}]);
                    let _ = c.update_status("Pod", &up).await;
                }
            }
        });
        FakeKubelet { task }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Now plus `offset` seconds, as RFC 3339 (UTC, seconds).
fn utc(offset: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
        + offset;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn in_ns(ns: &str, selector: &str) -> ListOptions {
    ListOptions {
        namespace: Some(ns.into()),
        label_selector: selector.into(),
        ..Default::default()
    }
}

async fn items(c: &Client, kind: &str, ns: &str, selector: &str) -> Result<Vec<Value>> {
    let l = c.list(kind, &in_ns(ns, selector)).await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

async fn gone(c: &Client, kind: &str, ns: &str, name: &str) -> Result<bool> {
    match c.get(kind, ns, name).await {
        Ok(_) => Ok(false),
        Err(e) if e.is_not_found() => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn start() -> Result<(Cluster, Client)> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    for n in ["n1", "n2"] {
        add_node(&c, n, json!({})).await?;
    }
    Ok((cluster, c))
}

fn job(name: &str, outcome: &str, completions: i64, parallelism: i64, backoff: i64) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
                 "template": {"metadata": {"labels": {"app": name, "outcome": outcome}},
                              "spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "busybox"}]}}}})
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_expire() -> Result<()> {
    let (_cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(300));

    // completions 3, parallelism 2: never more than 2 at a time, completes with 3 successes.
    let mut ok = job("ok", "succeed", 3, 2, 6);
    ok["spec"]["ttlSecondsAfterFinished"] = json!(2);
    c.create("Job", "default", &ok).await?;
    let mut most_active = 0;
    until("job ok to complete", 30, async || {
        let pods = items(&c, "Pod", "default", "job-name=ok").await?;
        let running = pods
            .iter()
            .filter(|p| !matches!(s(p, "/status/phase"), "Succeeded" | "Failed"))
            .count();
        most_active = most_active.max(running);
        let j = c.get("Job", "default", "ok").await?;
        Ok(condition(&j, "Complete").is_some())
    })
    .await?;
    assert!(most_active <= 2, "{most_active} pods at once");
    let j = c.get("Job", "default", "ok").await?;
    assert_eq!(j["status"]["succeeded"], 3, "{}", j["status"]);
    assert_eq!(j["status"]["active"], 0);
    assert!(!s(&j, "/status/completionTime").is_empty());
    assert!(!s(&j, "/status/startTime").is_empty());
    let pods = items(&c, "Pod", "default", "job-name=ok").await?;
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(
            s(p, "/metadata/labels/controller-uid"),
            s(&j, "/metadata/uid")
        );
    }
    let events = items(&c, "Event", "default", "").await?;
    assert!(
        events
            .iter()
            .any(|e| e["involvedObject"]["name"] == "ok" && e["reason"] == "Completed")
    );

    // Indexed: every index 0..4 succeeds exactly once, in pods named and labelled by index.
    let mut indexed = job("indexed", "succeed", 4, 2, 6);
    indexed["spec"]["completionMode"] = json!("Indexed");
    c.create("Job", "default", &indexed).await?;
    until("the indexed job to complete", 30, async || {
        let j = c.get("Job", "default", "indexed").await?;
        Ok(condition(&j, "Complete").is_some())
    })
    .await?;
    let j = c.get("Job", "default", "indexed").await?;
    assert_eq!(j["status"]["completedIndexes"], "0-3", "{}", j["status"]);
    assert_eq!(j["status"]["succeeded"], 4);
    let mut seen: Vec<String> = items(&c, "Pod", "default", "job-name=indexed")
        .await?
        .iter()
        .map(|p| {
            let i = s(
                p,
                "/metadata/annotations/batch.kubernetes.io~1job-completion-index",
            );
            assert!(
                s(p, "/metadata/name").starts_with(&format!("indexed-{i}-")),
                "{p}"
            );
            assert_eq!(s(p, "/spec/hostname"), format!("indexed-{i}"));
            i.to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2", "3"]);

    // backoffLimitPerIndex 0: index 2 fails for good, the others still run to success, and
    // then the Job fails naming it.
    let mut per_index = job("perindex", "fail-index-2", 4, 4, 6);
    per_index["spec"]["completionMode"] = json!("Indexed");
    per_index["spec"]["backoffLimitPerIndex"] = json!(0);
    c.create("Job", "default", &per_index).await?;
    until("the per-index job to fail", 30, async || {
        let j = c.get("Job", "default", "perindex").await?;
        Ok(condition(&j, "Failed").is_some())
    })
    .await?;
    let j = c.get("Job", "default", "perindex").await?;
    assert_eq!(
        s(condition(&j, "Failed").unwrap(), "/reason"),
        "FailedIndexes"
    );
    assert_eq!(j["status"]["failedIndexes"], "2", "{}", j["status"]);
    assert_eq!(j["status"]["completedIndexes"], "0,1,3", "{}", j["status"]);
    assert_eq!(
        items(&c, "Pod", "default", "job-name=perindex")
            .await?
            .len(),
        4,
        "the failed index was not retried"
    );

    // successPolicy: index 0 succeeding is enough; the pods still running are stopped.
    let mut early = job("early", "succeed-index-0", 3, 3, 6);
    early["spec"]["completionMode"] = json!("Indexed");
    early["spec"]["successPolicy"] = json!({"rules": [{"succeededIndexes": "0"}]});
    c.create("Job", "default", &early).await?;
    until(
        "the early job to complete, its other pods gone",
        30,
        async || {
            let j = c.get("Job", "default", "early").await?;
            let live = items(&c, "Pod", "default", "job-name=early")
                .await?
                .iter()
                .filter(|p| s(p, "/status/phase") != "Succeeded")
                .count();
            Ok(condition(&j, "Complete").is_some() && live == 0)
        },
    )
    .await?;
    let j = c.get("Job", "default", "early").await?;
    assert!(
        condition(&j, "SuccessCriteriaMet").is_some(),
        "{}",
        j["status"]
    );

    // ttlSecondsAfterFinished 2: the Job goes, and its pods with it (garbage collection).
    until("job ok to expire with its pods", 20, async || {
        Ok(gone(&c, "Job", "default", "ok").await?
            && items(&c, "Pod", "default", "job-name=ok").await?.is_empty())
    })
    .await?;

    // backoffLimit 1: fails after 2 failed pods (the second after a 10 s back-off), then
    // starts no more.
    let began = Instant::now();
    c.create("Job", "default", &job("bad", "fail", 1, 1, 1))
        .await?;
    until("job bad to fail", 30, async || {
        let j = c.get("Job", "default", "bad").await?;
        Ok(condition(&j, "Failed").is_some())
    })
    .await?;
    assert!(began.elapsed() >= Duration::from_secs(9), "no back-off");
    let j = c.get("Job", "default", "bad").await?;
    assert_eq!(
        condition(&j, "Failed").expect("failed")["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(j["status"]["failed"], 2, "{}", j["status"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(items(&c, "Pod", "default", "job-name=bad").await?.len(), 2);

    // activeDeadlineSeconds: a pod that never finishes fails the Job, and is deleted.
    let mut slow = job("slow", "run", 1, 1, 6);
    slow["spec"]["activeDeadlineSeconds"] = json!(2);
    c.create("Job", "default", &slow).await?;
    until("job slow to pass its deadline", 20, async || {
        let j = c.get("Job", "default", "slow").await?;
        Ok(
            condition(&j, "Failed").is_some_and(|c| c["reason"] == "DeadlineExceeded")
                && items(&c, "Pod", "default", "job-name=slow")
                    .await?
                    .is_empty(),
        )
    })
    .await?;
    Ok(())
}

fn replicaset(name: &str, ns: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

async fn running(c: &Client, ns: &str, app: &str, n: usize) -> Result<()> {
    until(&format!("{n} pods of {app} running"), 20, async || {
        let pods = items(c, "Pod", ns, &format!("app={app}")).await?;
        Ok(pods.len() == n
            && pods
                .iter()
                .all(|p| s(p, "/status/phase") == "Running" && !terminating(p)))
    })
    .await
}

/// Controllers read from informer caches that trail the store; the caches' read-your-writes
/// (control/src/controllers/cache.rs) must keep a ReplicaSet from ever creating a pod twice for
/// one missing replica while its pods churn (bound, Running, Ready, deleted). Every pod
/// creation is counted from a watch: scaling 0 -> 150 -> 40 -> 100 must create exactly
/// 150 + 60 pods, and the active pods must settle at the replica count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_never_overshoots_through_the_caches() -> Result<()> {
    use futures::StreamExt;
    let (_cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(100));
    let from = c.list("Pod", &in_ns("default", "app=exact")).await?;
    let rv = s(&from, "/metadata/resourceVersion").to_string();
    let mut events = c
        .watch("Pod", &in_ns("default", "app=exact"), &rv, false)
        .await?;
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = created.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(ev)) = events.next().await {
            if ev.kind == "ADDED" {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let active = async |n: usize| {
        until(&format!("{n} active pods of exact"), 60, async || {
            let pods = items(&c, "Pod", "default", "app=exact").await?;
            Ok(pods.iter().filter(|p| !terminating(p)).count() == n)
        })
        .await
    };
    c.create(
        "ReplicaSet",
        "default",
        &replicaset("exact", "default", 150),
    )
    .await?;
    active(150).await?;
    for replicas in [40, 100] {
        c.patch(
            "ReplicaSet",
            "default",
            "exact",
            &json!({"spec": {"replicas": replicas}}),
        )
        .await?;
        active(replicas).await?;
    }
    // Let any late duplicate show up before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pods = items(&c, "Pod", "default", "app=exact").await?;
    assert_eq!(pods.iter().filter(|p| !terminating(p)).count(), 100);
    assert_eq!(
        created.load(std::sync::atomic::Ordering::SeqCst),
        150 + 60,
        "pods created for 0 -> 150 -> 40 -> 100 replicas"
    );
    watcher.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_and_namespace_deletion() -> Result<()> {
    let (_cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(200));

    // Background: the ReplicaSet goes at once, its pods after it.
    c.create("ReplicaSet", "default", &replicaset("bg", "default", 2))
        .await?;
    running(&c, "default", "bg", 2).await?;
    c.delete("ReplicaSet", "default", "bg", "Background")
        .await?;
    assert!(gone(&c, "ReplicaSet", "default", "bg").await?);
    until("bg's pods to be collected", 20, async || {
        Ok(items(&c, "Pod", "default", "app=bg").await?.is_empty())
    })
    .await?;

    // Orphan: the ReplicaSet goes, its pods stay without the reference.
    c.create("ReplicaSet", "default", &replicaset("keep", "default", 2))
        .await?;
    running(&c, "default", "keep", 2).await?;
    c.delete("ReplicaSet", "default", "keep", "Orphan").await?;
    until("keep to be deleted", 20, async || {
        gone(&c, "ReplicaSet", "default", "keep").await
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = items(&c, "Pod", "default", "app=keep").await?;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert!(!terminating(p));
        assert!(p["metadata"]["ownerReferences"].is_null(), "{p}");
    }

    // Foreground: the ReplicaSet stays, marked, until its pods are gone.
    c.create("ReplicaSet", "default", &replicaset("fg", "default", 2))
        .await?;
    running(&c, "default", "fg", 2).await?;
    let marked = c
        .delete("ReplicaSet", "default", "fg", "Foreground")
        .await?;
    assert!(terminating(&marked));
    assert!(
        marked["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion"))
    );
    until("fg and its pods to be deleted", 20, async || {
        let pods = items(&c, "Pod", "default", "app=fg").await?;
        let rs_gone = gone(&c, "ReplicaSet", "default", "fg").await?;
        if rs_gone && !pods.is_empty() {
            bail!("the ReplicaSet went before its pods");
        }
        Ok(rs_gone)
    })
    .await?;

    // A Deployment: its ReplicaSet and pods go with it (two levels of owners).
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "dep"}},
                 "template": {"metadata": {"labels": {"app": "dep"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.create("Deployment", "default", &dep).await?;
    running(&c, "default", "dep", 2).await?;
    assert_eq!(
        items(&c, "ReplicaSet", "default", "app=dep").await?.len(),
        1
    );
    c.delete("Deployment", "default", "dep", "").await?;
    until(
        "dep's ReplicaSet and pods to be collected",
        20,
        async || {
            Ok(items(&c, "ReplicaSet", "default", "app=dep")
                .await?
                .is_empty()
                && items(&c, "Pod", "default", "app=dep").await?.is_empty())
        },
    )
    .await?;

    // A dangling ownerReference (the owner's uid no longer exists): collected.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dangling",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bg",
                             "uid": "00000000-0000-0000-0000-000000000000"}]}});
    c.create("ConfigMap", "default", &cm).await?;
    until("the dangling ConfigMap to be collected", 20, async || {
        gone(&c, "ConfigMap", "default", "dangling").await
    })
    .await?;

    // Namespace deletion: Terminating, then everything in it goes, then the namespace.
    c.create(
        "Namespace",
        "",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scratch"}}),
    )
    .await?;
    c.create("ReplicaSet", "scratch", &replicaset("web", "scratch", 2))
        .await?;
    c.create(
        "ConfigMap",
        "scratch",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"}, "data": {"a": "b"}}),
    )
    .await?;
    running(&c, "scratch", "web", 2).await?;
    let ns = c.delete("Namespace", "", "scratch", "").await?;
    assert_eq!(s(&ns, "/status/phase"), "Terminating", "{ns}");
    until(
        "namespace scratch to be emptied and deleted",
        30,
        async || gone(&c, "Namespace", "", "scratch").await,
    )
    .await?;
    for kind in ["Pod", "ReplicaSet", "ConfigMap"] {
        assert!(items(&c, kind, "scratch", "").await?.is_empty(), "{kind}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_starts_a_due_job() -> Result<()> {
    let (_cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(200));
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                 "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"outcome": "succeed"}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    let mut cj = c.create("CronJob", "default", &cj).await?;
    // As if the last run was two minutes ago: the run of the current minute is due now.
    cj["status"] = json!({"lastScheduleTime": utc(-120)});
    if let Some(m) = cj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    c.update_status("CronJob", &cj).await?;
    let mut job_name = String::new();
    until("the CronJob to start a Job", 20, async || {
        let jobs = items(&c, "Job", "default", "").await?;
        if let Some(j) = jobs
            .iter()
            .find(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
        {
            job_name = s(j, "/metadata/name").to_string();
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    // <cronjob>-<scheduled minute since the epoch>, within the last two minutes.
    let minute: i64 = job_name
        .strip_prefix("tick-")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let now_min = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        / 60;
    assert!(now_min - minute <= 1 && minute <= now_min, "{job_name}");
    until(
        "the Job to complete and the CronJob to record it",
        30,
        async || {
            let cj = c.get("CronJob", "default", "tick").await?;
            Ok(!s(&cj, "/status/lastSuccessfulTime").is_empty()
                && !s(&cj, "/status/lastScheduleTime").is_empty())
        },
    )
    .await?;
    // Deleting the CronJob collects its Jobs and their pods.
    c.delete("CronJob", "default", "tick", "").await?;
    until("the CronJob's Jobs to be collected", 20, async || {
        Ok(items(&c, "Job", "default", "").await?.is_empty()
            && items(&c, "Pod", "default", "").await?.is_empty())
    })
    .await?;
    Ok(())
}
