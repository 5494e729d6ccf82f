//! Deployments on simulated nodes (Node objects without agents): rolling updates that keep
//! `replicas - maxUnavailable` pods Ready at every observation, undo, pause and resume, scale,
//! Recreate, a progress deadline, and BlueGreen promote / undo switching the active Service in
//! one write each.
//!
//! No agent runs these pods, so the test plays the agent ([`FakeKubelet`]): a little after a
//! pod is bound it reports it Running and Ready, and it finishes graceful deletions (as an agent
//! does once the containers stopped) with a grace-0 delete. The `ferry rollout` and `ferry scale`
//! verbs are run as a user would, through the CLI binary.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, DeleteOptions, ListOptions};
use ferry_tests::sim::{add_node, until};
use ferry_tests::{Cluster, ferry_bin};
use futures::StreamExt;
use serde_json::{Value, json};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn is_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(p: &Value) -> bool {
    !s(p, "/metadata/deletionTimestamp").is_empty()
}

fn image(p: &Value) -> &str {
    s(p, "/spec/containers/0/image")
}

fn hash_of(v: &Value) -> &str {
    v.pointer("/metadata/labels/pod-template-hash")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Plays the node agent for every pod of the cluster: bound pods become Running and Ready
/// `delay` after it first sees them; pods marked for deletion are removed `delay` later.
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
                    let name = s(p, "/metadata/name").to_string();
                    let key = format!("{}/{}", s(p, "/metadata/uid"), terminating(p));
                    let first = *seen.entry(key).or_insert_with(Instant::now);
                    if first.elapsed() < delay {
                        continue;
                    }
                    let ns = s(p, "/metadata/namespace");
                    if terminating(p) {
                        let _ = c.delete_with("Pod", ns, &name, &force).await;
                    } else if !is_ready(p) {
                        let now = chrono_now();
                        let mut up = p.clone();
                        let mut conds: Vec<Value> = p["status"]["conditions"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        conds.retain(|c| c["type"] != "Ready");
                        conds.push(
                            json!({"type": "Ready", "status": "True", "lastTransitionTime": now}),
                        );
                        up["status"]["conditions"] = json!(conds);
                        up["status"]["phase"] = json!("Running");
                        let _ = c.update_status("Pod", &up).await;
                    }
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

/// Now as RFC 3339 (UTC, seconds), as an agent writes condition times.
fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
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

async fn ferry(cluster: &Cluster, args: &[&str]) -> Result<(bool, String)> {
    cluster.ferry(args).await
}

async fn ferry_ok(cluster: &Cluster, args: &[&str]) -> Result<String> {
    cluster.ferry_ok(args).await
}

fn ns_opts(selector: &str) -> ListOptions {
    ListOptions {
        namespace: Some("default".into()),
        label_selector: selector.into(),
        ..Default::default()
    }
}

async fn pods(c: &Client, app: &str) -> Result<Vec<Value>> {
    let l = c.list("Pod", &ns_opts(&format!("app={app}"))).await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

async fn sets(c: &Client, app: &str) -> Result<Vec<Value>> {
    let l = c
        .list("ReplicaSet", &ns_opts(&format!("app={app}")))
        .await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

/// The Deployment has rolled out its current generation with `replicas` pods of `image`.
async fn rolled_out(c: &Client, name: &str, img: &str) -> Result<bool> {
    let d = c.get("Deployment", "default", name).await?;
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let st = &d["status"];
    let done = st["observedGeneration"] == d["metadata"]["generation"]
        && st["updatedReplicas"] == want
        && st["replicas"] == want
        && st["availableReplicas"] == want;
    let live: Vec<Value> = pods(c, name)
        .await?
        .into_iter()
        .filter(|p| !terminating(p))
        .collect();
    Ok(done && live.len() as i64 == want && live.iter().all(|p| image(p) == img))
}

fn deployment(name: &str, replicas: i64, img: &str, strategy: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": format!("image {img}")}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": img,
                                       "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}}}})
}

async fn set_image(c: &Client, name: &str, img: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {"kubernetes.io/change-cause": format!("image {img}")}},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": img,
            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}}}});
    c.patch("Deployment", "default", name, &patch).await?;
    Ok(())
}

async fn start() -> Result<(Cluster, Client)> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3600"]).await?;
    let c = cluster.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&c, n, json!({})).await?;
    }
    Ok((cluster, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_undo_pause_and_scale() -> Result<()> {
    let (cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(300));

    // Six replicas over three nodes.
    c.create(
        "Deployment",
        "default",
        &deployment("web", 6, "app:v1", json!({"type": "RollingUpdate"})),
    )
    .await?;
    until("web v1 rolled out", 20, async || {
        rolled_out(&c, "web", "app:v1").await
    })
    .await?;
    let nodes: BTreeSet<String> = pods(&c, "web")
        .await?
        .iter()
        .map(|p| s(p, "/spec/nodeName").to_string())
        .collect();
    assert_eq!(nodes.len(), 3, "spread over the nodes: {nodes:?}");
    let out = ferry_ok(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout", "10s"],
    )
    .await?;
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    let v1_sets = sets(&c, "web").await?;
    assert_eq!(v1_sets.len(), 1);
    let v1_rs = s(&v1_sets[0], "/metadata/name").to_string();
    assert_eq!(v1_rs, format!("web-{}", hash_of(&v1_sets[0])));
    assert_eq!(
        v1_sets[0]["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash_of(&v1_sets[0])
    );
    assert_eq!(
        v1_sets[0]["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    let d = c.get("Deployment", "default", "web").await?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let conds = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True"),
        "{conds:?}"
    );
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"),
        "{conds:?}"
    );

    // A rolling update to v2, followed live by `rollout status`; at every observation at least
    // 6 - 1 (25% rounded down) pods are Ready and at most 6 + 2 (25% rounded up) specified.
    set_image(&c, "web", "app:v2").await?;
    let status = {
        let config = cluster.config_path();
        tokio::spawn(async move {
            tokio::process::Command::new(ferry_bin())
                .arg("--config")
                .arg(config)
                .args(["rollout", "status", "deploy", "web", "--timeout", "30s"])
                .output()
                .await
        })
    };
    let mut observations = 0;
    let mut min_ready = usize::MAX;
    let mut max_specified = 0;
    let began = Instant::now();
    loop {
        let ps = pods(&c, "web").await?;
        let ready = ps.iter().filter(|p| is_ready(p) && !terminating(p)).count();
        let specified: i64 = sets(&c, "web")
            .await?
            .iter()
            .map(|r| r["spec"]["replicas"].as_i64().unwrap_or(0))
            .sum();
        assert!(ready >= 5, "only {ready} pods Ready mid-rollout");
        assert!(specified <= 8, "{specified} replicas specified mid-rollout");
        observations += 1;
        min_ready = min_ready.min(ready);
        max_specified = max_specified.max(specified);
        if rolled_out(&c, "web", "app:v2").await? {
            break;
        }
        if began.elapsed() > Duration::from_secs(30) {
            bail!("the rollout to v2 did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "rollout v1 -> v2: {observations} observations, min ready {min_ready}, max specified {max_specified}, {:?}",
        began.elapsed()
    );
    assert!(
        max_specified >= 7,
        "the rollout used its surge ({max_specified})"
    );
    let out = status.await??;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Waiting for deployment \"web\" rollout to finish"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("deployment \"web\" successfully rolled out"),
        "{text}"
    );

    let out = ferry_ok(&cluster, &["rollout", "history", "deployment/web"]).await?;
    let row = |rev: &str, cause: &str| {
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == format!("{rev} {cause}"))
    };
    assert!(
        row("1", "image app:v1") && row("2", "image app:v2"),
        "{out}"
    );

    // Undo: back to v1's template, through the same ReplicaSet, now revision 3.
    let out = ferry_ok(&cluster, &["rollout", "undo", "deployment/web"]).await?;
    assert!(out.contains("deployment.apps/web rolled back"), "{out}");
    until("web back on v1", 30, async || {
        rolled_out(&c, "web", "app:v1").await
    })
    .await?;
    let d = c.get("Deployment", "default", "web").await?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:v1"
    );
    assert_eq!(
        d["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "image app:v1"
    );
    until("revision 3", 10, async || {
        let d = c.get("Deployment", "default", "web").await?;
        Ok(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3")
    })
    .await?;
    let rs = c.get("ReplicaSet", "default", &v1_rs).await?;
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(sets(&c, "web").await?.len(), 2);

    // Paused: a template change is not rolled out, scaling is.
    let out = ferry_ok(&cluster, &["rollout", "pause", "deployment/web"]).await?;
    assert!(out.contains("deployment.apps/web paused"), "{out}");
    set_image(&c, "web", "app:v3").await?;
    let out = ferry_ok(&cluster, &["scale", "deployment", "web", "--replicas", "4"]).await?;
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    until("4 pods of v1 while paused", 20, async || {
        let live: Vec<Value> = pods(&c, "web")
            .await?
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        Ok(live.len() == 4 && live.iter().all(|p| image(p) == "app:v1"))
    })
    .await?;
    until("status of 4 while paused", 10, async || {
        let d = c.get("Deployment", "default", "web").await?;
        Ok(
            d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["replicas"] == 4
                && d["status"]["availableReplicas"] == 4,
        )
    })
    .await?;
    let rv = c.get("Deployment", "default", "web").await?["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = c.get("Deployment", "default", "web").await?;
    assert_eq!(
        d["metadata"]["resourceVersion"], rv,
        "a settled Deployment is not rewritten"
    );
    assert!(
        sets(&c, "web")
            .await?
            .iter()
            .all(|r| s(r, "/spec/template/spec/containers/0/image") != "app:v3"),
        "no ReplicaSet for v3 while paused"
    );
    let progressing = d["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned())
        .unwrap_or_default();
    assert_eq!(progressing["reason"], "DeploymentPaused");
    let (ok, out) = ferry(&cluster, &["rollout", "undo", "deployment/web"]).await?;
    assert!(
        !ok && out.contains("cannot rollback a paused deployment"),
        "{out}"
    );
    let out = ferry_ok(&cluster, &["rollout", "resume", "deployment/web"]).await?;
    assert!(out.contains("deployment.apps/web resumed"), "{out}");
    until("web v3 rolled out after resume", 30, async || {
        rolled_out(&c, "web", "app:v3").await
    })
    .await?;

    // Restart: a new ReplicaSet with the restartedAt annotation.
    let before: BTreeSet<String> = pods(&c, "web")
        .await?
        .iter()
        .map(|p| s(p, "/metadata/name").to_string())
        .collect();
    ferry_ok(&cluster, &["rollout", "restart", "deployment/web"]).await?;
    until("restarted pods", 30, async || {
        let live: Vec<Value> = pods(&c, "web")
            .await?
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        Ok(rolled_out(&c, "web", "app:v3").await?
            && live.iter().all(|p| {
                !before.contains(s(p, "/metadata/name"))
                    && !s(
                        p,
                        "/metadata/annotations/kubectl.kubernetes.io~1restartedAt",
                    )
                    .is_empty()
            }))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_blue_green() -> Result<()> {
    let (cluster, c) = start().await?;
    let _kubelet = FakeKubelet::start(c.clone(), Duration::from_millis(300));

    // A rollout that cannot progress (no node fits its pods) exceeds its deadline:
    // Progressing=False, and `rollout status` says so and fails.
    let mut stuck = deployment("stuck", 2, "app:v1", json!({"type": "RollingUpdate"}));
    stuck["spec"]["progressDeadlineSeconds"] = json!(2);
    stuck["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
        json!("100");
    c.create("Deployment", "default", &stuck).await?;
    let (ok, out) = ferry(
        &cluster,
        &["rollout", "status", "deployment/stuck", "--timeout", "20s"],
    )
    .await?;
    assert!(
        !ok && out.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{out}"
    );
    let d = c.get("Deployment", "default", "stuck").await?;
    let progressing = d["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned())
        .unwrap_or_default();
    assert_eq!(
        (
            progressing["status"].as_str(),
            progressing["reason"].as_str()
        ),
        (Some("False"), Some("ProgressDeadlineExceeded"))
    );

    // Recreate: no new pod while an old one (terminating included) is still there.
    c.create(
        "Deployment",
        "default",
        &deployment("batch", 3, "job:v1", json!({"type": "Recreate"})),
    )
    .await?;
    until("batch v1", 20, async || {
        rolled_out(&c, "batch", "job:v1").await
    })
    .await?;
    set_image(&c, "batch", "job:v2").await?;
    let mut saw_terminating = false;
    until("batch v2", 30, async || {
        let ps = pods(&c, "batch").await?;
        let old = ps.iter().filter(|p| image(p) == "job:v1").count();
        let new = ps.iter().filter(|p| image(p) == "job:v2").count();
        assert!(old == 0 || new == 0, "{old} old and {new} new pods at once");
        saw_terminating |= ps.iter().any(terminating);
        rolled_out(&c, "batch", "job:v2").await
    })
    .await?;
    assert!(saw_terminating, "old pods were deleted gracefully");

    // BlueGreen: an active and a preview Service.
    for svc in ["shop", "shop-preview"] {
        c.create(
            "Service",
            "default",
            &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc},
            "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        )
        .await?;
    }
    let mut d = deployment("shop", 4, "shop:blue", json!({"type": "BlueGreen"}));
    d["metadata"]["annotations"]["ferry.dev/active-service"] = json!("shop");
    d["metadata"]["annotations"]["ferry.dev/preview-service"] = json!("shop-preview");
    c.create("Deployment", "default", &d).await?;
    until("shop blue", 20, async || {
        rolled_out(&c, "shop", "shop:blue").await
    })
    .await?;
    let selector_hash = async |svc: &str| -> Result<String> {
        let s = c.get("Service", "default", svc).await?;
        Ok(s["spec"]["selector"]["pod-template-hash"]
            .as_str()
            .unwrap_or("")
            .to_string())
    };
    let blue = sets(&c, "shop").await?[0].clone();
    let blue_hash = hash_of(&blue).to_string();
    until("shop selects blue", 10, async || {
        Ok(selector_hash("shop").await? == blue_hash)
    })
    .await?;
    let out = ferry_ok(
        &cluster,
        &["rollout", "status", "deployment/shop", "--timeout", "10s"],
    )
    .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // Green comes up beside blue; only the preview Service selects it.
    set_image(&c, "shop", "shop:green").await?;
    let out = ferry_ok(
        &cluster,
        &["rollout", "status", "deployment/shop", "--timeout", "30s"],
    )
    .await?;
    assert!(
        out.contains("preview ready") && out.contains("ferry rollout promote deployment/shop"),
        "{out}"
    );
    let all = sets(&c, "shop").await?;
    let green = all
        .iter()
        .find(|r| hash_of(r) != blue_hash)
        .context("green set")?
        .clone();
    let green_hash = hash_of(&green).to_string();
    until("preview selects green", 10, async || {
        Ok(selector_hash("shop-preview").await? == green_hash)
    })
    .await?;
    assert_eq!(selector_hash("shop").await?, blue_hash);
    let live = |ps: Vec<Value>, h: &str| -> BTreeSet<String> {
        ps.iter()
            .filter(|p| hash_of(p) == h && !terminating(p))
            .map(|p| s(p, "/metadata/name").to_string())
            .collect()
    };
    let blue_pods = live(pods(&c, "shop").await?, &blue_hash);
    assert_eq!(blue_pods.len(), 4);
    until("4 green pods", 10, async || {
        Ok(live(pods(&c, "shop").await?, &green_hash).len() == 4)
    })
    .await?;

    // Promote: the active Service moves to green in exactly one write.
    let svc = c.get("Service", "default", "shop").await?;
    let opts = ListOptions {
        namespace: Some("default".into()),
        field_selector: "metadata.name=shop".into(),
        ..Default::default()
    };
    let mut watch = c
        .watch(
            "Service",
            &opts,
            s(&svc, "/metadata/resourceVersion"),
            false,
        )
        .await?;
    let out = ferry_ok(&cluster, &["rollout", "promote", "deployment/shop"]).await?;
    assert!(out.contains("deployment.apps/shop promoted"), "{out}");
    let next = async |watch: &mut ferry_api::client::WatchStream| -> Result<Value> {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .context("no Service change")?
            .context("watch ended")??;
        Ok(ev.object)
    };
    let ev = next(&mut watch).await?;
    assert_eq!(
        ev["spec"]["selector"],
        json!({"app": "shop", "pod-template-hash": green_hash}),
        "one write, straight to green"
    );
    let out = ferry_ok(
        &cluster,
        &["rollout", "status", "deployment/shop", "--timeout", "10s"],
    )
    .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    // Blue is kept at full size for an instant rollback.
    until("shop complete", 10, async || {
        let d = c.get("Deployment", "default", "shop").await?;
        Ok(d["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable")
        }))
    })
    .await?;
    let rv = c.get("Deployment", "default", "shop").await?["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = c.get("Deployment", "default", "shop").await?;
    assert_eq!(
        d["metadata"]["resourceVersion"], rv,
        "a settled Deployment is not rewritten"
    );
    let blue_now = c
        .get("ReplicaSet", "default", s(&blue, "/metadata/name"))
        .await?;
    assert_eq!(blue_now["spec"]["replicas"], 4);
    assert_eq!(live(pods(&c, "shop").await?, &blue_hash), blue_pods);
    let out = ferry_ok(&cluster, &["rollout", "history", "deployment/shop"]).await?;
    assert!(out.contains("active"), "{out}");

    // Undo: back to blue's pods (the same ones) in one write.
    let out = ferry_ok(&cluster, &["rollout", "undo", "deployment/shop"]).await?;
    assert!(out.contains("deployment.apps/shop rolled back"), "{out}");
    let ev = next(&mut watch).await?;
    assert_eq!(
        ev["spec"]["selector"],
        json!({"app": "shop", "pod-template-hash": blue_hash}),
        "one write, straight back to blue"
    );
    assert_eq!(
        live(pods(&c, "shop").await?, &blue_hash),
        blue_pods,
        "no pod was replaced"
    );
    let d = c.get("Deployment", "default", "shop").await?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:blue"
    );
    Ok(())
}
