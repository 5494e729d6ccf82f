//! `ferry rollout status|history|undo|pause|resume|restart|promote` and `ferry scale`, as kubectl
//! does them: everything is a write to the Deployment (or a read of it and its ReplicaSets); the
//! deployment controller does the rest. `promote` is Ferry's, for the BlueGreen strategy: it
//! sets the active pod-template-hash annotation, and the controller switches the active Service's
//! selector in one write.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ferry_api::client::{Client, ListOptions};
use ferry_api::kinds::{self, KindInfo};
use ferry_control::controllers::deployment::{
    self as dc, ACTIVE_HASH, ACTIVE_SERVICE, CHANGE_CAUSE, HASH_LABEL, RESTARTED_AT,
};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::output;
use ferry_control::controllers::history;

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Follow a rollout until it completes, or fails its progress deadline (exit status 1). A
    /// BlueGreen rollout stops once the new ReplicaSet is ready for promotion.
    Status(StatusArgs),
    /// List the revisions of a Deployment, DaemonSet or StatefulSet with their change-cause, or
    /// show one (--revision N).
    History(HistoryArgs),
    /// Roll back to the previous revision, or to --to-revision N.
    Undo(UndoArgs),
    /// Stop rolling out template changes (scaling still applies).
    Pause(Target),
    /// Resume rolling out template changes.
    Resume(Target),
    /// Replace every pod (a rollout of the same template, restartedAt annotated).
    Restart(Target),
    /// BlueGreen: switch the active Service to the new ReplicaSet's pods (one write).
    Promote(PromoteArgs),
}

#[derive(Args)]
pub struct Target {
    /// `KIND/NAME` or KIND followed by NAME: a deployment (every verb), or a daemonset or
    /// statefulset (`status`, `history`, `undo` and `restart`).
    resource: String,
    name: Option<String>,
    /// Namespace (default: default).
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Give up after this long (e.g. 90s, 5m); 0 waits forever.
    #[arg(long, default_value = "0")]
    timeout: String,
    /// Follow until done (`--watch=false` prints the current state once).
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", require_equals = true)]
    watch: bool,
}

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    target: Target,
    /// Show the pod template of this revision.
    #[arg(long)]
    revision: Option<i64>,
}

#[derive(Args)]
pub struct UndoArgs {
    #[command(flatten)]
    target: Target,
    /// The revision to roll back to (default: the previous one).
    #[arg(long, default_value_t = 0)]
    to_revision: i64,
}

#[derive(Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    target: Target,
    /// Promote even if the new ReplicaSet is not fully available.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct ScaleArgs {
    /// `deployment/NAME`, or a kind (deployment, replicaset, statefulset) followed by NAME.
    resource: String,
    name: Option<String>,
    /// The number of replicas wanted.
    #[arg(long, required = true)]
    replicas: i64,
    /// Precondition: scale only if the current size is this.
    #[arg(long)]
    current_replicas: Option<i64>,
    /// Namespace (default: default).
    #[arg(short, long)]
    namespace: Option<String>,
}

/// (kind, name, namespace) from `kind/name` or `kind name`.
fn resolve(
    resource: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Result<(&'static KindInfo, String, String)> {
    let (kind, name) = match (resource.split_once('/'), name) {
        (Some((k, n)), None) => (k, n.to_string()),
        (Some(_), Some(_)) => {
            bail!(
                "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form"
            )
        }
        (None, Some(n)) => (resource, n.to_string()),
        (None, None) => bail!("a resource name is required: {resource}/NAME or {resource} NAME"),
    };
    let info = kinds::lookup(kind)
        .with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
    if name.is_empty() {
        bail!("a resource name is required");
    }
    Ok((info, name, namespace.unwrap_or("default").to_string()))
}

/// A target of `status` and `restart`: a Deployment, DaemonSet or StatefulSet.
fn workload_target(t: &Target) -> Result<(&'static KindInfo, String, String)> {
    let (info, name, ns) = resolve(&t.resource, t.name.as_deref(), t.namespace.as_deref())?;
    if !matches!(info.kind, "Deployment" | "DaemonSet" | "StatefulSet") {
        bail!(
            "no rollout support for {}: deployments, daemonsets and statefulsets roll out",
            info.plural
        );
    }
    Ok((info, name, ns))
}

/// kubectl's `DaemonSetStatusViewer`. Err: not a RollingUpdate DaemonSet.
pub fn daemonset_status(ds: &Value) -> Result<Progress, String> {
    let name = s(ds, "/metadata/name");
    if !matches!(s(ds, "/spec/updateStrategy/type"), "" | "RollingUpdate") {
        return Err("rollout status is only available for RollingUpdate strategy type".into());
    }
    if int(ds, "/metadata/generation") > int(ds, "/status/observedGeneration") {
        return Ok(Progress::Waiting(
            "Waiting for daemon set spec update to be observed...".into(),
        ));
    }
    let desired = int(ds, "/status/desiredNumberScheduled");
    let updated = int(ds, "/status/updatedNumberScheduled");
    let available = int(ds, "/status/numberAvailable");
    if updated < desired {
        return Ok(Progress::Waiting(format!(
            "Waiting for daemon set \"{name}\" rollout to finish: {updated} out of {desired} new pods have been updated..."
        )));
    }
    if available < desired {
        return Ok(Progress::Waiting(format!(
            "Waiting for daemon set \"{name}\" rollout to finish: {available} of {desired} updated pods are available..."
        )));
    }
    Ok(Progress::Done(format!(
        "daemon set \"{name}\" successfully rolled out"
    )))
}

/// kubectl's `StatefulSetStatusViewer`. Err: not a RollingUpdate StatefulSet.
pub fn statefulset_status(sts: &Value) -> Result<Progress, String> {
    if !matches!(s(sts, "/spec/updateStrategy/type"), "" | "RollingUpdate") {
        return Err("rollout status is only available for RollingUpdate strategy type".into());
    }
    let observed = int(sts, "/status/observedGeneration");
    if observed == 0 || int(sts, "/metadata/generation") > observed {
        return Ok(Progress::Waiting(
            "Waiting for statefulset spec update to be observed...".into(),
        ));
    }
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(sts, "/status/readyReplicas");
    if ready < replicas {
        return Ok(Progress::Waiting(format!(
            "Waiting for {} pods to be ready...",
            replicas - ready
        )));
    }
    let updated = int(sts, "/status/updatedReplicas");
    if let Some(partition) = sts
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
    {
        let want = (replicas - partition).max(0);
        if updated < want {
            return Ok(Progress::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {want} new pods have been updated..."
            )));
        }
        return Ok(Progress::Done(format!(
            "partitioned roll out complete: {updated} new pods have been updated..."
        )));
    }
    let (current, update) = (
        s(sts, "/status/currentRevision"),
        s(sts, "/status/updateRevision"),
    );
    if current != update {
        return Ok(Progress::Waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
        )));
    }
    Ok(Progress::Done(format!(
        "statefulset rolling update complete {} pods at revision {current}...",
        int(sts, "/status/currentReplicas")
    )))
}

fn deployment_target(t: &Target) -> Result<(&'static KindInfo, String, String)> {
    let (info, name, ns) = resolve(&t.resource, t.name.as_deref(), t.namespace.as_deref())?;
    if info.kind != "Deployment" {
        bail!(
            "no rollout support for {}: only deployments roll out so far",
            info.plural
        );
    }
    Ok((info, name, ns))
}

/// `5m`, `90s`, `1h`, or plain seconds.
fn parse_timeout(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 90s, 5m, 1h"))?;
    Ok(Duration::from_secs(n * unit))
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

async fn replica_sets(client: &Client, ns: &str) -> Result<Vec<Value>> {
    let list = client
        .list(
            "ReplicaSet",
            &ListOptions {
                namespace: Some(ns.into()),
                ..Default::default()
            },
        )
        .await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Waiting(String),
    Done(String),
}

/// kubectl's `DeploymentStatusViewer`, plus BlueGreen (judged on the new ReplicaSet `new_rs`:
/// done once it is fully available, with a note when the active Service still waits for a
/// promotion). Err: the rollout exceeded its progress deadline.
pub fn rollout_status(d: &Value, new_rs: Option<&Value>) -> Result<Progress, String> {
    let name = s(d, "/metadata/name");
    if int(d, "/metadata/generation") > int(d, "/status/observedGeneration") {
        return Ok(Progress::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    let timed_out = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == dc::reason::TIMED_OUT)
        });
    if timed_out {
        return Err(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let waiting = |m: String| {
        Ok(Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {m}..."
        )))
    };
    if s(d, "/spec/strategy/type") == "BlueGreen" {
        let Some(rs) = new_rs else {
            return waiting(format!("0 out of {want} new replicas have been updated"));
        };
        if int(rs, "/metadata/generation") > int(rs, "/status/observedGeneration") {
            return waiting(format!("0 out of {want} new replicas have been updated"));
        }
        let updated = int(rs, "/status/replicas");
        let available = int(rs, "/status/availableReplicas");
        if updated < want || int(rs, "/spec/replicas") < want {
            return waiting(format!(
                "{updated} out of {want} new replicas have been updated"
            ));
        }
        if available < want {
            return waiting(format!(
                "{available} of {updated} updated replicas are available"
            ));
        }
        let hash = s(rs, "/spec/template/metadata/labels/pod-template-hash");
        if dc::annotation(d, ACTIVE_HASH) != Some(hash) {
            return Ok(Progress::Done(format!(
                "deployment \"{name}\" preview ready: replica set \"{}\" is available; switch traffic to it with `ferry rollout promote deployment/{name}`",
                s(rs, "/metadata/name")
            )));
        }
        return Ok(Progress::Done(format!(
            "deployment \"{name}\" successfully rolled out"
        )));
    }
    let replicas = int(d, "/status/replicas");
    let updated = int(d, "/status/updatedReplicas");
    let available = int(d, "/status/availableReplicas");
    if updated < want {
        return waiting(format!(
            "{updated} out of {want} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Ok(Progress::Done(format!(
        "deployment \"{name}\" successfully rolled out"
    )))
}

async fn status(client: &Client, a: StatusArgs) -> Result<()> {
    let (info, name, ns) = workload_target(&a.target)?;
    let kind = info.kind;
    let timeout = parse_timeout(&a.timeout)?;
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let opts = ListOptions {
        namespace: Some(ns.clone()),
        field_selector: format!("metadata.name={name}"),
        ..Default::default()
    };
    let mut last = String::new();
    let mut stream = None;
    loop {
        let d = client.get(kind, &ns, &name).await?;
        let progress = match kind {
            "DaemonSet" => daemonset_status(&d),
            "StatefulSet" => statefulset_status(&d),
            _ => {
                let sets = if s(&d, "/spec/strategy/type") == "BlueGreen" {
                    replica_sets(client, &ns).await?
                } else {
                    Vec::new()
                };
                let (_, new_rs) = dc::owned_sets(&d, &sets);
                rollout_status(&d, new_rs)
            }
        };
        match progress.map_err(anyhow::Error::msg)? {
            Progress::Done(m) => {
                println!("{m}");
                return Ok(());
            }
            Progress::Waiting(m) => {
                if m != last {
                    println!("{m}");
                    last = m;
                }
                if !a.watch {
                    return Ok(());
                }
            }
        }
        if deadline.is_some_and(|t| Instant::now() >= t) {
            bail!("timed out waiting for the condition");
        }
        if stream.is_none() {
            let rv = s(&d, "/metadata/resourceVersion").to_string();
            stream = client.watch(kind, &opts, &rv, false).await.ok();
        }
        // Re-evaluate on every change of the Deployment, and each second (its ReplicaSets).
        let tick = tokio::time::sleep(Duration::from_secs(1));
        match stream.as_mut() {
            Some(st) => tokio::select! {
                ev = st.next() => if !matches!(ev, Some(Ok(_))) { stream = None },
                _ = tick => {}
            },
            None => tick.await,
        }
    }
}

/// `rollout history --revision N`: the revision's pod template, as kubectl prints it.
fn print_template(qualified: &str, rev: i64, template: Option<&Value>) -> Result<()> {
    println!("{qualified} with revision #{rev}");
    println!("Pod Template:");
    for line in output::yaml(template.unwrap_or(&Value::Null))?.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The ControllerRevisions of a DaemonSet or StatefulSet, oldest first.
async fn set_revisions(client: &Client, set: &Value, ns: &str) -> Result<Vec<Value>> {
    let l = client
        .list(
            "ControllerRevision",
            &ListOptions {
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
        )
        .await?;
    let all: Vec<&Value> = l["items"].as_array().into_iter().flatten().collect();
    Ok(history::owned(set, &all).into_iter().cloned().collect())
}

/// `rollout history` of a DaemonSet or StatefulSet (kubectl's `DaemonSetHistoryViewer`).
async fn set_history(
    client: &Client,
    info: &KindInfo,
    name: &str,
    ns: &str,
    rev: Option<i64>,
) -> Result<()> {
    let set = client.get(info.kind, ns, name).await?;
    let revisions = set_revisions(client, &set, ns).await?;
    let qualified = format!("{}/{name}", output::qualified(info));
    if let Some(rev) = rev {
        let r = revisions
            .iter()
            .find(|r| history::number(r) == rev)
            .with_context(|| format!("unable to find the specified revision {rev}"))?;
        return print_template(&qualified, rev, history::template(r));
    }
    println!("{qualified}");
    println!("{:<10}CHANGE-CAUSE", "REVISION");
    for r in &revisions {
        let cause = r
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(history::CHANGE_CAUSE))
            .and_then(Value::as_str)
            .unwrap_or("<none>");
        println!("{:<10}{cause}", history::number(r));
    }
    Ok(())
}

/// The revision `rollout undo` takes a DaemonSet or StatefulSet to: `to` if given, else the
/// second highest (the highest is the template it runs).
pub fn set_rollback_target(revisions: &[Value], to: i64) -> Result<&Value, String> {
    let want = if to > 0 {
        to
    } else {
        let mut numbers: Vec<i64> = revisions.iter().map(history::number).collect();
        numbers.sort_unstable();
        match numbers.len() {
            0 | 1 => {
                return Err(
                    "no rollout history found: no previous revision to roll back to".into(),
                );
            }
            n => numbers[n - 2],
        }
    };
    revisions
        .iter()
        .find(|r| history::number(r) == want)
        .ok_or_else(|| format!("unable to find specified revision {want} in history"))
}

/// `rollout undo` of a DaemonSet or StatefulSet: its template becomes the revision's.
async fn set_undo(client: &Client, info: &KindInfo, name: &str, ns: &str, to: i64) -> Result<()> {
    let set = client.get(info.kind, ns, name).await?;
    let revisions = set_revisions(client, &set, ns).await?;
    let r = set_rollback_target(&revisions, to).map_err(anyhow::Error::msg)?;
    let qualified = format!("{}/{name}", output::qualified(info));
    let template = history::template(r)
        .with_context(|| format!("revision {} records no template", history::number(r)))?;
    if set.pointer("/spec/template") == Some(template) {
        println!(
            "{qualified} skipped rollback (current template already matches revision {})",
            history::number(r)
        );
        return Ok(());
    }
    let mut next = set.clone();
    next["spec"]["template"] = template.clone();
    // resourceVersion is kept: a concurrent change makes this fail instead of being lost.
    client.update(info.kind, &next).await?;
    println!("{qualified} rolled back");
    Ok(())
}

async fn history(client: &Client, a: HistoryArgs) -> Result<()> {
    let (info, name, ns) = workload_target(&a.target)?;
    if info.kind != "Deployment" {
        return set_history(client, info, &name, &ns, a.revision).await;
    }
    let d = client.get("Deployment", &ns, &name).await?;
    let sets = replica_sets(client, &ns).await?;
    let (mut owned, _) = dc::owned_sets(&d, &sets);
    owned.sort_by_key(|r| dc::revision_of(r));
    let qualified = format!("{}/{name}", output::qualified(info));
    if let Some(rev) = a.revision {
        let rs = owned
            .iter()
            .find(|r| dc::revision_of(r) == rev)
            .with_context(|| format!("unable to find the specified revision {rev}"))?;
        return print_template(&qualified, rev, rs.pointer("/spec/template"));
    }
    let blue_green = s(&d, "/spec/strategy/type") == "BlueGreen";
    let active = dc::annotation(&d, ACTIVE_HASH).unwrap_or("");
    println!("{qualified}");
    if blue_green {
        println!("{:<10}{:<10}CHANGE-CAUSE", "REVISION", "SERVICE");
    } else {
        println!("{:<10}CHANGE-CAUSE", "REVISION");
    }
    let newest = owned.iter().map(|r| dc::revision_of(r)).max().unwrap_or(0);
    for rs in owned.iter().filter(|r| dc::revision_of(r) > 0) {
        let rev = dc::revision_of(rs);
        let cause = dc::annotation(rs, CHANGE_CAUSE).unwrap_or("<none>");
        if blue_green {
            let hash = s(rs, "/spec/template/metadata/labels/pod-template-hash");
            let role = if hash == active {
                "active"
            } else if rev == newest {
                "preview"
            } else {
                ""
            };
            println!("{rev:<10}{role:<10}{cause}");
        } else {
            println!("{rev:<10}{cause}");
        }
    }
    Ok(())
}

/// The revision `rollout undo` goes to: `to` if given, else the second newest (kubectl's
/// `LastRevision`).
pub fn rollback_target<'a>(sets: &[&'a Value], to: i64) -> Result<&'a Value, String> {
    let want = if to > 0 {
        to
    } else {
        let mut revs: Vec<i64> = sets.iter().map(|r| dc::revision_of(r)).collect();
        revs.sort_unstable();
        revs.dedup();
        match revs.len() {
            0 | 1 => {
                return Err(
                    "no rollout history found: no previous revision to roll back to".into(),
                );
            }
            n => revs[n - 2],
        }
    };
    sets.iter()
        .copied()
        .find(|r| dc::revision_of(r) == want)
        .ok_or_else(|| format!("unable to find specified revision {want} in history"))
}

/// The Deployment with `rs`'s template and annotations back (kubectl's rollback: annotations the
/// controller owns stay the Deployment's, the others come from the ReplicaSet). For BlueGreen,
/// when `rs` is fully available, the active Service is switched back to it too.
pub fn rolled_back(d: &Value, rs: &Value) -> Value {
    let mut out = d.clone();
    out["spec"]["template"] = dc::strip_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null));
    let mut annotations = Map::new();
    let empty = Map::new();
    let mine = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (k, v) in mine {
        if dc::skip_annotation(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let theirs = rs
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (k, v) in theirs {
        if !dc::skip_annotation(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if s(d, "/spec/strategy/type") == "BlueGreen"
        && int(rs, "/spec/replicas") >= want
        && int(rs, "/status/availableReplicas") >= want
    {
        let hash = s(rs, "/spec/template/metadata/labels/pod-template-hash");
        annotations.insert(ACTIVE_HASH.into(), json!(hash));
    }
    out["metadata"]["annotations"] = Value::Object(annotations);
    out
}

async fn undo(client: &Client, a: UndoArgs) -> Result<()> {
    let (info, name, ns) = workload_target(&a.target)?;
    if info.kind != "Deployment" {
        return set_undo(client, info, &name, &ns, a.to_revision).await;
    }
    let qualified = format!("{}/{name}", output::qualified(info));
    let d = client.get("Deployment", &ns, &name).await?;
    if d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        bail!(
            "you cannot rollback a paused deployment; resume it first with 'ferry rollout resume deployment/{name}' and try again"
        );
    }
    let sets = replica_sets(client, &ns).await?;
    let (owned, _) = dc::owned_sets(&d, &sets);
    let rs = rollback_target(&owned, a.to_revision).map_err(anyhow::Error::msg)?;
    let rev = dc::revision_of(rs);
    let next = rolled_back(&d, rs);
    if dc::runs_template(rs, &d) {
        println!("{qualified} skipped rollback (current template already matches revision {rev})");
        return Ok(());
    }
    // resourceVersion is kept: a concurrent change makes this fail instead of being lost.
    client.update("Deployment", &next).await?;
    println!("{qualified} rolled back");
    if s(&d, "/spec/strategy/type") == "BlueGreen"
        && dc::annotation(&next, ACTIVE_HASH) != dc::annotation(&d, ACTIVE_HASH)
    {
        let svc = dc::annotation(&d, ACTIVE_SERVICE).unwrap_or("");
        let hash = dc::annotation(&next, ACTIVE_HASH).unwrap_or("");
        wait_for_selector(client, &ns, svc, hash).await;
    } else if s(&d, "/spec/strategy/type") == "BlueGreen" {
        println!(
            "replica set \"{}\" is not fully available yet: promote it with `ferry rollout promote deployment/{name}` once `ferry rollout status` says so",
            s(rs, "/metadata/name")
        );
    }
    Ok(())
}

/// Waits (up to 30 s) for the controller to point Service `svc` at `hash`, saying so.
async fn wait_for_selector(client: &Client, ns: &str, svc: &str, hash: &str) {
    if svc.is_empty() {
        return;
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get("Service", ns, svc).await {
            Ok(obj) if s(&obj, &format!("/spec/selector/{HASH_LABEL}")) == hash => {
                println!("service \"{svc}\" now selects {HASH_LABEL}={hash}");
                return;
            }
            Err(e) if e.is_not_found() => {
                eprintln!("warning: service \"{svc}\" does not exist");
                return;
            }
            _ => {}
        }
        if Instant::now() > until {
            eprintln!(
                "warning: service \"{svc}\" does not select {HASH_LABEL}={hash} yet; the deployment controller will switch it"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_paused(client: &Client, t: Target, paused: bool) -> Result<()> {
    let (info, name, ns) = deployment_target(&t)?;
    let qualified = format!("{}/{name}", output::qualified(info));
    let d = client.get("Deployment", &ns, &name).await?;
    let now = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
    let word = if paused { "paused" } else { "resumed" };
    if now == paused {
        println!("{qualified} already {word}");
        return Ok(());
    }
    client
        .patch(
            "Deployment",
            &ns,
            &name,
            &json!({"spec": {"paused": paused}}),
        )
        .await?;
    println!("{qualified} {word}");
    Ok(())
}

async fn restart(client: &Client, t: Target) -> Result<()> {
    let (info, name, ns) = workload_target(&t)?;
    let d = client.get(info.kind, &ns, &name).await?;
    if d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        bail!("can't restart paused deployment (run rollout resume first)");
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
    client.patch(info.kind, &ns, &name, &patch).await?;
    println!("{}/{name} restarted", output::qualified(info));
    Ok(())
}

async fn promote(client: &Client, a: PromoteArgs) -> Result<()> {
    let (info, name, ns) = deployment_target(&a.target)?;
    let qualified = format!("{}/{name}", output::qualified(info));
    let d = client.get("Deployment", &ns, &name).await?;
    if s(&d, "/spec/strategy/type") != "BlueGreen" {
        bail!(
            "deployment \"{name}\" does not use the BlueGreen strategy: there is nothing to promote"
        );
    }
    let sets = replica_sets(client, &ns).await?;
    let (_, new_rs) = dc::owned_sets(&d, &sets);
    let rs = new_rs.with_context(|| {
        format!("deployment \"{name}\" has no replica set for its template yet; see `ferry rollout status deployment/{name}`")
    })?;
    let rs_name = s(rs, "/metadata/name");
    let hash = s(rs, "/spec/template/metadata/labels/pod-template-hash");
    if dc::annotation(&d, ACTIVE_HASH) == Some(hash) {
        println!("{qualified} already promoted: replica set \"{rs_name}\" is active");
        return Ok(());
    }
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let available = int(rs, "/status/availableReplicas");
    if available < want && !a.force {
        bail!(
            "replica set \"{rs_name}\" is not ready: {available} of {want} pods available; wait for `ferry rollout status deployment/{name}` or pass --force"
        );
    }
    let patch = json!({"metadata": {"resourceVersion": s(&d, "/metadata/resourceVersion"),
                                    "annotations": {ACTIVE_HASH: hash}}});
    client.patch("Deployment", &ns, &name, &patch).await?;
    println!("{qualified} promoted: replica set \"{rs_name}\" is active");
    let svc = dc::annotation(&d, ACTIVE_SERVICE).unwrap_or("");
    wait_for_selector(client, &ns, svc, hash).await;
    Ok(())
}

pub async fn rollout(client: &Client, c: RolloutCommand) -> Result<()> {
    match c {
        RolloutCommand::Status(a) => status(client, a).await,
        RolloutCommand::History(a) => history(client, a).await,
        RolloutCommand::Undo(a) => undo(client, a).await,
        RolloutCommand::Pause(t) => set_paused(client, t, true).await,
        RolloutCommand::Resume(t) => set_paused(client, t, false).await,
        RolloutCommand::Restart(t) => restart(client, t).await,
        RolloutCommand::Promote(a) => promote(client, a).await,
    }
}

pub async fn scale(client: &Client, a: ScaleArgs) -> Result<()> {
    let (info, name, ns) = resolve(&a.resource, a.name.as_deref(), a.namespace.as_deref())?;
    if !matches!(info.kind, "Deployment" | "ReplicaSet" | "StatefulSet") {
        bail!(
            "cannot scale {}: only deployments, replicasets and statefulsets have replicas",
            info.plural
        );
    }
    if a.replicas < 0 {
        bail!("--replicas: must be 0 or more");
    }
    let mut patch = json!({"spec": {"replicas": a.replicas}});
    if let Some(cur) = a.current_replicas {
        let obj = client.get(info.kind, &ns, &name).await?;
        let actual = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if actual != cur {
            bail!("Expected replicas to be {cur}, was {actual}");
        }
        patch["metadata"] = json!({"resourceVersion": s(&obj, "/metadata/resourceVersion")});
    }
    client.patch(info.kind, &ns, &name, &patch).await?;
    println!("{}/{name} scaled", output::qualified(info));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemonset_and_statefulset_status_read_as_kubectl() {
        let ds = |generation: i64, desired: i64, updated: i64, available: i64| {
            json!({"metadata": {"name": "agent", "generation": generation},
                   "status": {"observedGeneration": 2, "desiredNumberScheduled": desired,
                              "updatedNumberScheduled": updated, "numberAvailable": available}})
        };
        let waiting = |p: Result<Progress, String>| match p {
            Ok(Progress::Waiting(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(waiting(daemonset_status(&ds(3, 3, 3, 3))).contains("spec update"));
        assert!(waiting(daemonset_status(&ds(2, 3, 1, 1))).contains("1 out of 3 new pods"));
        assert!(waiting(daemonset_status(&ds(2, 3, 3, 2))).contains("2 of 3 updated pods"));
        assert_eq!(
            daemonset_status(&ds(2, 3, 3, 3)),
            Ok(Progress::Done(
                "daemon set \"agent\" successfully rolled out".into()
            ))
        );
        let mut on_delete = ds(2, 3, 3, 3);
        on_delete["spec"] = json!({"updateStrategy": {"type": "OnDelete"}});
        assert!(daemonset_status(&on_delete).is_err());

        let sts = |ready: i64, updated: i64, current: &str| {
            json!({"metadata": {"name": "db", "generation": 2},
                   "spec": {"replicas": 3},
                   "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": updated,
                              "currentReplicas": 3, "currentRevision": current, "updateRevision": "db-v2"}})
        };
        assert!(waiting(statefulset_status(&sts(2, 1, "db-v1"))).contains("Waiting for 1 pods"));
        assert!(
            waiting(statefulset_status(&sts(3, 2, "db-v1")))
                .contains("complete 2 pods at revision db-v2")
        );
        assert_eq!(
            statefulset_status(&sts(3, 3, "db-v2")),
            Ok(Progress::Done(
                "statefulset rolling update complete 3 pods at revision db-v2...".into()
            ))
        );
        let mut partitioned = sts(3, 1, "db-v1");
        partitioned["spec"]["updateStrategy"] = json!({"rollingUpdate": {"partition": 1}});
        assert!(waiting(statefulset_status(&partitioned)).contains("1 out of 2"));
        partitioned["status"]["updatedReplicas"] = json!(2);
        assert!(matches!(
            statefulset_status(&partitioned),
            Ok(Progress::Done(_))
        ));
    }

    fn deployment(strategy: &str) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "u", "generation": 2,
                            "annotations": {CHANGE_CAUSE: "v2", ACTIVE_SERVICE: "web",
                                            dc::REVISION: "2", dc::LAST_APPLIED: "{}"}},
               "spec": {"replicas": 3, "strategy": {"type": strategy},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v2"}]}}},
               "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}})
    }

    fn rs(revision: i64, image: &str, available: i64) -> Value {
        json!({"metadata": {"name": format!("web-{image}"), "generation": 1,
                            "annotations": {dc::REVISION: revision.to_string(), CHANGE_CAUSE: image, dc::DESIRED_REPLICAS: "3"}},
               "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "web", HASH_LABEL: format!("h{image}")}},
                                                     "spec": {"containers": [{"name": "c", "image": image}]}}},
               "status": {"observedGeneration": 1, "replicas": 3, "availableReplicas": available}})
    }

    #[test]
    fn status_messages_follow_kubectl() {
        let mut d = deployment("RollingUpdate");
        assert_eq!(
            rollout_status(&d, None),
            Ok(Progress::Done(
                "deployment \"web\" successfully rolled out".into()
            ))
        );
        d["status"]["updatedReplicas"] = json!(1);
        assert_eq!(rollout_status(&d, None), Ok(Progress::Waiting(
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into())));
        d["status"]["updatedReplicas"] = json!(3);
        d["status"]["replicas"] = json!(4);
        assert_eq!(rollout_status(&d, None), Ok(Progress::Waiting(
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into())));
        d["status"]["replicas"] = json!(3);
        d["status"]["availableReplicas"] = json!(2);
        assert_eq!(rollout_status(&d, None), Ok(Progress::Waiting(
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...".into())));
        d["metadata"]["generation"] = json!(3);
        assert_eq!(
            rollout_status(&d, None),
            Ok(Progress::Waiting(
                "Waiting for deployment spec update to be observed...".into()
            ))
        );
        d["status"]["observedGeneration"] = json!(3);
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        assert_eq!(
            rollout_status(&d, None),
            Err("deployment \"web\" exceeded its progress deadline".into())
        );
    }

    #[test]
    fn blue_green_status_stops_at_promotion() {
        let mut d = deployment("BlueGreen");
        let green = rs(2, "v2", 1);
        assert_eq!(rollout_status(&d, Some(&green)), Ok(Progress::Waiting(
            "Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available...".into())));
        let green = rs(2, "v2", 3);
        assert!(
            matches!(rollout_status(&d, Some(&green)), Ok(Progress::Done(m)) if m.contains("ferry rollout promote deployment/web"))
        );
        d["metadata"]["annotations"][ACTIVE_HASH] = json!("hv2");
        assert_eq!(
            rollout_status(&d, Some(&green)),
            Ok(Progress::Done(
                "deployment \"web\" successfully rolled out".into()
            ))
        );
    }

    #[test]
    fn undo_targets_the_previous_revision_and_restores_its_template() {
        let (r1, r2, r3) = (rs(1, "v1", 0), rs(2, "v2", 3), rs(3, "v3", 3));
        let sets = vec![&r3, &r1, &r2];
        assert_eq!(rollback_target(&sets, 0).map(dc::revision_of), Ok(2));
        assert_eq!(rollback_target(&sets, 1).map(dc::revision_of), Ok(1));
        assert_eq!(
            rollback_target(&sets, 7).err(),
            Some("unable to find specified revision 7 in history".into())
        );
        assert!(rollback_target(&[&r1], 0).is_err());

        let d = deployment("RollingUpdate");
        let back = rolled_back(&d, &r1);
        assert_eq!(
            back["spec"]["template"]["spec"]["containers"][0]["image"],
            "v1"
        );
        assert!(
            back["spec"]["template"]["metadata"]["labels"]
                .get(HASH_LABEL)
                .is_none()
        );
        let ann = &back["metadata"]["annotations"];
        assert_eq!(
            ann[CHANGE_CAUSE], "v1",
            "the revision's change-cause comes back"
        );
        assert_eq!(ann[dc::REVISION], "2", "the controller's annotations stay");
        assert_eq!(ann[dc::LAST_APPLIED], "{}");
        assert_eq!(ann[ACTIVE_SERVICE], "web");
        assert!(ann.get(dc::DESIRED_REPLICAS).is_none());
        assert!(ann.get(ACTIVE_HASH).is_none());

        // BlueGreen: back to a fully available set switches the active Service too; to a set
        // that is not, it waits for a promotion.
        let d = deployment("BlueGreen");
        assert_eq!(
            rolled_back(&d, &r2)["metadata"]["annotations"][ACTIVE_HASH],
            "hv2"
        );
        assert!(
            rolled_back(&d, &r1)["metadata"]["annotations"]
                .get(ACTIVE_HASH)
                .is_none()
        );
    }

    #[test]
    fn set_undo_targets_the_second_highest_revision() {
        let revs: Vec<Value> = [3, 1, 4]
            .iter()
            .map(|n| json!({"metadata": {"name": format!("ds-{n}")}, "revision": n}))
            .collect();
        let r = set_rollback_target(&revs, 0).unwrap();
        assert_eq!(r["revision"], 3);
        assert_eq!(set_rollback_target(&revs, 1).unwrap()["revision"], 1);
        assert!(
            set_rollback_target(&revs, 9)
                .unwrap_err()
                .contains("unable to find specified revision 9")
        );
        assert!(
            set_rollback_target(&revs[..1], 0)
                .unwrap_err()
                .contains("no rollout history found")
        );
    }

    #[test]
    fn targets_and_timeouts_parse() {
        let (info, name, ns) = resolve("deploy/web", None, None).expect("resolves");
        assert_eq!(
            (info.kind, name.as_str(), ns.as_str()),
            ("Deployment", "web", "default")
        );
        let (info, name, ns) = resolve("replicasets", Some("x"), Some("prod")).expect("resolves");
        assert_eq!(
            (info.kind, name.as_str(), ns.as_str()),
            ("ReplicaSet", "x", "prod")
        );
        assert!(resolve("deploy/web", Some("x"), None).is_err());
        assert!(resolve("deploy", None, None).is_err());
        assert_eq!(parse_timeout("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_timeout("90").ok(), Some(Duration::from_secs(90)));
        assert!(parse_timeout("soon").is_err());
    }
}
