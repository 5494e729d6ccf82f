//! The pod sync loop's decisions, as pure functions of (pod spec, what the runtime shows, probe
//! results, back-off state, time): which containers to start or kill next, the pod's phase, and
//! the status to report. The worker ([`super::worker`]) observes, calls these, and executes.
//!
//! Container instances: every start of a container is a new runtime container with id
//! `<pod uid>_<container name>_<attempt>`; attempt `n` is the container's `restartCount`. The
//! previous instance is kept (exited) until the next one runs, for `lastState` and
//! `ferry logs --previous`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use ferry_api::k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{Map, Value, json};

use crate::runtime::{ContainerInfo, ContainerStatus};

pub const LABEL_POD_NAMESPACE: &str = "ferry.pod.namespace";
pub const LABEL_POD_NAME: &str = "ferry.pod.name";
pub const LABEL_POD_UID: &str = "ferry.pod.uid";
pub const LABEL_CONTAINER: &str = "ferry.container.name";
pub const LABEL_ATTEMPT: &str = "ferry.container.attempt";
pub const LABEL_INIT: &str = "ferry.container.init";
pub const LABEL_IMAGE: &str = "ferry.container.image";
pub const LABEL_IMAGE_ID: &str = "ferry.container.image-id";

/// First restart delay after the immediate one, and the cap (as the kubelet).
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The runtime id of attempt `attempt` of container `container` of pod `uid`.
pub fn container_id(uid: &str, container: &str, attempt: u32) -> String {
    format!("{uid}_{container}_{attempt}")
}

/// One runtime container of the pod, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: String,
    pub container: String,
    pub init: bool,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub state: InstanceState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum InstanceState {
    Creating,
    Running {
        started_at: SystemTime,
    },
    Exited {
        exit_code: i32,
        oom_killed: bool,
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
    },
}

impl Instance {
    /// The instance a runtime container is, from its labels; `None` for containers that are
    /// not pod containers.
    pub fn from_info(info: &ContainerInfo) -> Option<Instance> {
        let l = &info.labels;
        let state = match info.status {
            ContainerStatus::Creating => InstanceState::Creating,
            ContainerStatus::Running { .. } => InstanceState::Running {
                started_at: info.started_at.unwrap_or_else(SystemTime::now),
            },
            ContainerStatus::Exited {
                exit_code,
                oom_killed,
            } => InstanceState::Exited {
                // A lost exit status (the monitor died) counts as a failure.
                exit_code: exit_code.unwrap_or(255),
                oom_killed,
                started_at: info.started_at,
                finished_at: info.finished_at.unwrap_or_else(SystemTime::now),
            },
        };
        Some(Instance {
            id: info.id.clone(),
            container: l.get(LABEL_CONTAINER)?.clone(),
            init: l.get(LABEL_INIT).is_some_and(|v| v == "true"),
            attempt: l.get(LABEL_ATTEMPT)?.parse().ok()?,
            image: l.get(LABEL_IMAGE).cloned().unwrap_or_default(),
            image_id: l.get(LABEL_IMAGE_ID).cloned().unwrap_or_default(),
            state,
        })
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, InstanceState::Running { .. })
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self.state {
            InstanceState::Exited { exit_code, .. } => Some(exit_code),
            _ => None,
        }
    }
}

/// The newest instance of `container` (init or not).
pub fn latest<'a>(instances: &'a [Instance], container: &str) -> Option<&'a Instance> {
    instances
        .iter()
        .filter(|i| i.container == container)
        .max_by_key(|i| i.attempt)
}

/// The instance before the newest one (for `lastState`).
pub fn previous<'a>(instances: &'a [Instance], container: &str) -> Option<&'a Instance> {
    let newest = latest(instances, container)?.attempt;
    instances
        .iter()
        .filter(|i| i.container == container && i.attempt < newest)
        .max_by_key(|i| i.attempt)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(spec: &PodSpec) -> Self {
        match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "Pending" => Phase::Pending,
            "Running" => Phase::Running,
            "Succeeded" => Phase::Succeeded,
            "Failed" => Phase::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// A container start the worker should make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub container: String,
    pub init: bool,
    pub attempt: u32,
}

/// Why a container is waiting, as `state.waiting` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What to do next for one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub starts: Vec<Start>,
    /// Running instances to stop: (instance id, why).
    pub kills: Vec<(String, String)>,
    /// Containers held back by restart back-off, with when they may start.
    pub backoff: BTreeMap<String, SystemTime>,
    /// All init containers have succeeded.
    pub initialized: bool,
    pub phase: Phase,
}

/// Inputs of [`plan`] besides the spec and the instances.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The phase the pod has already reported: terminal phases are final.
    pub reported_phase: Option<Phase>,
    /// Running instances whose liveness probe failed.
    pub liveness_failed: &'a BTreeSet<String>,
    /// Per container: no start before this (held after image or creation failures; the
    /// crash back-off is computed here from the instances).
    pub not_before: &'a BTreeMap<String, SystemTime>,
    pub now: Option<SystemTime>,
}

/// The kubelet's `computePodActions`: init containers one at a time, in order, each to
/// success; then every app container started, restarted by the restart policy after its
/// back-off, killed when its liveness probe fails or its image changes.
pub fn plan(spec: &PodSpec, instances: &[Instance], input: &PlanInput<'_>) -> Plan {
    let now = input.now.unwrap_or_else(SystemTime::now);
    let policy = RestartPolicy::of(spec);
    let mut out = Plan::default();
    if let Some(p) = input.reported_phase
        && p.is_terminal()
    {
        out.phase = p;
        out.initialized = true;
        return out;
    }
    // Holds (image or creation failures) and the crash back-off, which follows from the
    // newest instance: `finished + backoff_delay(restart number, how long it ran)`.
    let crash_backoff = |i: &Instance| match i.state {
        InstanceState::Exited {
            started_at,
            finished_at,
            ..
        } => {
            let ran = started_at
                .and_then(|s| finished_at.duration_since(s).ok())
                .unwrap_or_default();
            Some(finished_at + backoff_delay(i.attempt + 1, ran))
        }
        _ => None,
    };
    let not_before = |name: &str, i: &Instance| {
        let hold = input.not_before.get(name).copied();
        match (hold, crash_backoff(i)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    };

    let mut init_done = true;
    for c in spec.init_containers.iter().flatten() {
        match latest(instances, &c.name) {
            Some(i) if i.exit_code() == Some(0) => continue,
            None => match input.not_before.get(&c.name) {
                Some(t) if *t > now => {}
                _ => out.starts.push(Start {
                    container: c.name.clone(),
                    init: true,
                    attempt: 0,
                }),
            },
            Some(i) => match i.state {
                InstanceState::Creating | InstanceState::Running { .. } => {}
                InstanceState::Exited { .. } if policy == RestartPolicy::Never => {
                    out.phase = Phase::Failed;
                    return out;
                }
                InstanceState::Exited { .. } => match not_before(&c.name, i) {
                    Some(t) if t > now => {
                        out.backoff.insert(c.name.clone(), t);
                    }
                    _ => out.starts.push(Start {
                        container: c.name.clone(),
                        init: true,
                        attempt: i.attempt + 1,
                    }),
                },
            },
        }
        init_done = false;
        break;
    }
    out.initialized = init_done;
    if !init_done {
        out.phase = Phase::Pending;
        return out;
    }

    let mut all_started = true;
    let mut any_running = false;
    let mut any_restarting = false;
    let mut any_failed = false;
    for c in &spec.containers {
        let Some(i) = latest(instances, &c.name) else {
            all_started = false;
            match input.not_before.get(&c.name) {
                Some(t) if *t > now => {}
                _ => out.starts.push(Start {
                    container: c.name.clone(),
                    init: false,
                    attempt: 0,
                }),
            }
            continue;
        };
        match &i.state {
            InstanceState::Creating => all_started = false,
            InstanceState::Running { .. } => {
                any_running = true;
                if input.liveness_failed.contains(&i.id) {
                    out.kills.push((
                        i.id.clone(),
                        format!(
                            "Container {} failed liveness probe, will be restarted",
                            c.name
                        ),
                    ));
                } else if c.image.as_deref().is_some_and(|img| img != i.image) {
                    out.kills.push((
                        i.id.clone(),
                        format!("Container {} definition changed, will be restarted", c.name),
                    ));
                }
            }
            InstanceState::Exited { exit_code, .. } => {
                if *exit_code != 0 {
                    any_failed = true;
                }
                if policy.restarts(*exit_code) {
                    any_restarting = true;
                    match not_before(&c.name, i) {
                        Some(t) if t > now => {
                            out.backoff.insert(c.name.clone(), t);
                        }
                        _ => out.starts.push(Start {
                            container: c.name.clone(),
                            init: false,
                            attempt: i.attempt + 1,
                        }),
                    }
                }
            }
        }
    }
    out.phase = if !all_started {
        Phase::Pending
    } else if any_running || any_restarting {
        Phase::Running
    } else if any_failed {
        Phase::Failed
    } else {
        Phase::Succeeded
    };
    out
}

/// Delay before restart number `restarts` (1 for the first restart) of a container that ran
/// for `ran`: the first restart is immediate, then 10 s doubling to 300 s; a container that
/// ran for 10 minutes starts over.
pub fn backoff_delay(restarts: u32, ran: Duration) -> Duration {
    if restarts <= 1 || ran >= BACKOFF_RESET {
        return Duration::ZERO;
    }
    let shift = (restarts - 2).min(16);
    (BACKOFF_BASE * (1u32 << shift)).min(BACKOFF_MAX)
}

/// The command line of container `c` given its image's entrypoint and cmd, with Kubernetes'
/// rules: `command` replaces the entrypoint (and drops the image's cmd), `args` replaces cmd.
/// `$(VAR)` references are expanded from `env`.
pub fn command_line(
    c: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let mut out: Vec<String> = match (&c.command, &c.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => entrypoint.iter().chain(cmd).cloned().collect(),
    };
    for a in &mut out {
        *a = expand(a, env);
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// left as written, `$$` is a literal `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    if !s.contains('$') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let name = &r[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Readiness and startup as the probes report them, per running instance id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeView {
    pub ready: BTreeSet<String>,
    pub started: BTreeSet<String>,
}

/// What [`pod_status`] needs besides the spec and the instances.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The pod's current status (conditions keep their transition times; PodScheduled and
    /// conditions owned by others are kept).
    pub current: Option<&'a Value>,
    pub plan: Option<&'a Plan>,
    /// Per container: why it is waiting, when it is not running for a reason the plan does
    /// not know (image pull errors, container creation).
    pub waiting: &'a BTreeMap<String, Waiting>,
    pub probes: &'a ProbeView,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// RFC 3339 time the agent first saw the pod.
    pub start_time: String,
    pub now: String,
    /// A message for the whole pod (e.g. why it failed).
    pub message: Option<String>,
    pub reason: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn terminated(i: &Instance) -> Option<Value> {
    let InstanceState::Exited {
        exit_code,
        oom_killed,
        started_at,
        finished_at,
    } = &i.state
    else {
        return None;
    };
    let reason = if *oom_killed {
        "OOMKilled"
    } else if *exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": exit_code,
        "reason": reason,
        "finishedAt": rfc3339(*finished_at),
        "containerID": format!("runc://{}", i.id),
    });
    if let Some(s) = started_at {
        t["startedAt"] = json!(rfc3339(*s));
    }
    Some(json!({ "terminated": t }))
}

fn container_status(
    c: &Container,
    instances: &[Instance],
    input: &StatusInput<'_>,
    init: bool,
) -> (Value, bool) {
    let newest = latest(instances, &c.name);
    let image = c.image.clone().unwrap_or_default();
    let mut ready = false;
    let mut started = false;
    let state = match newest.map(|i| (&i.state, i)) {
        Some((InstanceState::Running { started_at }, i)) => {
            started = input.probes.started.contains(&i.id);
            ready = input.probes.ready.contains(&i.id);
            json!({"running": {"startedAt": rfc3339(*started_at)}})
        }
        Some((InstanceState::Exited { .. }, i))
            if !input.plan.is_some_and(|p| {
                p.backoff.contains_key(&c.name) || p.starts.iter().any(|s| s.container == c.name)
            }) =>
        {
            terminated(i).unwrap_or_default()
        }
        Some((InstanceState::Exited { .. }, _))
            if input.plan.is_some_and(|p| p.backoff.contains_key(&c.name)) =>
        {
            let message = format!("back-off restarting failed container {} in pod", c.name);
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}})
        }
        _ => {
            let w = input.waiting.get(&c.name);
            let reason = w.map_or(
                if init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                },
                |w| w.reason.as_str(),
            );
            let mut waiting = json!({"reason": reason});
            if let Some(w) = w
                && !w.message.is_empty()
            {
                waiting["message"] = json!(w.message);
            }
            json!({ "waiting": waiting })
        }
    };
    let mut s = json!({
        "name": c.name,
        "image": image,
        "imageID": newest.map(|i| i.image_id.clone()).unwrap_or_default(),
        "state": state,
        "lastState": previous(instances, &c.name).and_then(terminated).unwrap_or_else(|| json!({})),
        "ready": ready,
        "restartCount": newest.map_or(0, |i| i.attempt),
    });
    if let Some(i) = newest {
        s["containerID"] = json!(format!("runc://{}", i.id));
    }
    if !init {
        s["started"] = json!(started);
    }
    if init {
        // An init container that finished is "ready" in Kubernetes' sense.
        s["ready"] = json!(newest.and_then(Instance::exit_code) == Some(0));
    }
    (s, ready)
}

fn condition(
    current: Option<&Value>,
    kind: &str,
    ok: bool,
    now: &str,
    reason: Option<&str>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut c =
        json!({"type": kind, "status": status, "lastTransitionTime": since, "lastProbeTime": null});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's status: phase, conditions, IPs, init and app container statuses.
pub fn pod_status(spec: &PodSpec, instances: &[Instance], input: &StatusInput<'_>) -> Value {
    let plan = input.plan.cloned().unwrap_or_default();
    let init_statuses: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, instances, input, true).0)
        .collect();
    let mut all_ready = !spec.containers.is_empty();
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let (s, ready) = container_status(c, instances, input, false);
            all_ready &= ready;
            s
        })
        .collect();
    if plan.phase.is_terminal() {
        all_ready = false;
    }
    let current = input.current;
    let not_ready_reason = (!all_ready).then_some("ContainersNotReady");
    let mut conditions = vec![
        condition(
            current,
            "Initialized",
            plan.initialized,
            &input.now,
            (!plan.initialized).then_some("ContainersNotInitialized"),
        ),
        condition(
            current,
            "ContainersReady",
            all_ready,
            &input.now,
            not_ready_reason,
        ),
        condition(current, "Ready", all_ready, &input.now, not_ready_reason),
    ];
    // Conditions the agent does not own (PodScheduled, readiness gates' conditions) stay.
    if let Some(cs) = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
    {
        for c in cs.iter().rev() {
            let t = c["type"].as_str().unwrap_or("");
            if !matches!(t, "Initialized" | "ContainersReady" | "Ready") {
                conditions.insert(0, c.clone());
            }
        }
    }
    let mut s = Map::new();
    s.insert("phase".into(), json!(plan.phase.as_str()));
    s.insert("conditions".into(), Value::Array(conditions));
    if let Some(ip) = &input.host_ip {
        s.insert("hostIP".into(), json!(ip));
        s.insert("hostIPs".into(), json!([{ "ip": ip }]));
    }
    if let Some(ip) = &input.pod_ip {
        s.insert("podIP".into(), json!(ip));
        s.insert("podIPs".into(), json!([{ "ip": ip }]));
    }
    s.insert("startTime".into(), json!(input.start_time));
    if !init_statuses.is_empty() {
        s.insert("initContainerStatuses".into(), Value::Array(init_statuses));
    }
    s.insert("containerStatuses".into(), Value::Array(statuses));
    s.insert("qosClass".into(), json!(qos_class(spec)));
    if let Some(m) = &input.message {
        s.insert("message".into(), json!(m));
    }
    if let Some(r) = &input.reason {
        s.insert("reason".into(), json!(r));
    }
    Value::Object(s)
}

/// Kubernetes' QoS class: Guaranteed when every container has equal cpu and memory requests
/// and limits, BestEffort when none has any, Burstable otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            // A request defaults to its limit.
            let q = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn running(c: &str, attempt: u32) -> Instance {
        Instance {
            id: container_id("u", c, attempt),
            container: c.into(),
            init: false,
            attempt,
            image: "img".into(),
            image_id: String::new(),
            state: InstanceState::Running { started_at: t(0) },
        }
    }

    fn exited(c: &str, attempt: u32, code: i32, ran: u64, finished: u64) -> Instance {
        Instance {
            state: InstanceState::Exited {
                exit_code: code,
                oom_killed: false,
                started_at: Some(t(finished - ran)),
                finished_at: t(finished),
            },
            ..running(c, attempt)
        }
    }

    fn init(i: Instance) -> Instance {
        Instance { init: true, ..i }
    }

    fn input<'a>(
        now: u64,
        live: &'a BTreeSet<String>,
        hold: &'a BTreeMap<String, SystemTime>,
    ) -> PlanInput<'a> {
        PlanInput {
            reported_phase: None,
            liveness_failed: live,
            not_before: hold,
            now: Some(t(now)),
        }
    }

    fn two() -> PodSpec {
        spec(json!({"containers": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}))
    }

    #[test]
    fn starts_every_container_then_runs() {
        let (l, h) = (BTreeSet::new(), BTreeMap::new());
        let p = plan(&two(), &[], &input(0, &l, &h));
        assert_eq!(p.starts.len(), 2);
        assert_eq!(p.phase, Phase::Pending);
        let p = plan(
            &two(),
            &[running("a", 0), running("b", 0)],
            &input(0, &l, &h),
        );
        assert!(p.starts.is_empty() && p.kills.is_empty());
        assert_eq!(p.phase, Phase::Running);
        assert!(p.initialized);
    }

    #[test]
    fn init_containers_run_one_at_a_time_in_order() {
        let s = spec(json!({
            "initContainers": [{"name": "i1", "image": "img"}, {"name": "i2", "image": "img"}],
            "containers": [{"name": "a", "image": "img"}],
        }));
        let (l, h) = (BTreeSet::new(), BTreeMap::new());
        let p = plan(&s, &[], &input(0, &l, &h));
        assert_eq!(
            p.starts,
            vec![Start {
                container: "i1".into(),
                init: true,
                attempt: 0
            }]
        );
        assert!(!p.initialized);
        // i1 running: wait.
        let p = plan(&s, &[init(running("i1", 0))], &input(0, &l, &h));
        assert!(p.starts.is_empty());
        // i1 done: i2 next.
        let p = plan(&s, &[init(exited("i1", 0, 0, 1, 5))], &input(10, &l, &h));
        assert_eq!(p.starts[0].container, "i2");
        // Both done: the app container.
        let done = [
            init(exited("i1", 0, 0, 1, 5)),
            init(exited("i2", 0, 0, 1, 6)),
        ];
        let p = plan(&s, &done, &input(10, &l, &h));
        assert_eq!(
            p.starts,
            vec![Start {
                container: "a".into(),
                init: false,
                attempt: 0
            }]
        );
        assert!(p.initialized);
        // A failed init container is retried (Always) or fails the pod (Never).
        let failed = [init(exited("i1", 0, 1, 1, 5))];
        let p = plan(&s, &failed, &input(10, &l, &h));
        assert_eq!(p.starts[0].attempt, 1);
        let mut never = s.clone();
        never.restart_policy = Some("Never".into());
        assert_eq!(
            plan(&never, &failed, &input(10, &l, &h)).phase,
            Phase::Failed
        );
    }

    #[test]
    fn restart_policies_and_phases() {
        let (l, h) = (BTreeSet::new(), BTreeMap::new());
        let one = |policy: &str| {
            spec(json!({"restartPolicy": policy, "containers": [{"name": "a", "image": "img"}]}))
        };
        let ok = [exited("a", 0, 0, 5, 100)];
        let bad = [exited("a", 0, 3, 5, 100)];
        // Never: finished is final.
        assert_eq!(
            plan(&one("Never"), &ok, &input(200, &l, &h)).phase,
            Phase::Succeeded
        );
        assert_eq!(
            plan(&one("Never"), &bad, &input(200, &l, &h)).phase,
            Phase::Failed
        );
        assert!(
            plan(&one("Never"), &bad, &input(200, &l, &h))
                .starts
                .is_empty()
        );
        // OnFailure: success is final, failure restarts.
        assert_eq!(
            plan(&one("OnFailure"), &ok, &input(200, &l, &h)).phase,
            Phase::Succeeded
        );
        let p = plan(&one("OnFailure"), &bad, &input(200, &l, &h));
        assert_eq!((p.phase, p.starts.len()), (Phase::Running, 1));
        // Always: both restart.
        let p = plan(&one("Always"), &ok, &input(200, &l, &h));
        assert_eq!((p.phase, p.starts[0].attempt), (Phase::Running, 1));
        // A reported terminal phase is final whatever the instances say.
        let mut i = input(200, &l, &h);
        i.reported_phase = Some(Phase::Succeeded);
        let p = plan(&one("Always"), &ok, &i);
        assert!(p.starts.is_empty());
        assert_eq!(p.phase, Phase::Succeeded);
    }

    #[test]
    fn crash_backoff_doubles_and_holds() {
        assert_eq!(backoff_delay(1, Duration::ZERO), Duration::ZERO);
        assert_eq!(backoff_delay(2, Duration::ZERO), Duration::from_secs(10));
        assert_eq!(backoff_delay(3, Duration::ZERO), Duration::from_secs(20));
        assert_eq!(backoff_delay(30, Duration::ZERO), BACKOFF_MAX);
        assert_eq!(backoff_delay(30, BACKOFF_RESET), Duration::ZERO);
        let s = spec(json!({"containers": [{"name": "a", "image": "img"}]}));
        let (l, h) = (BTreeSet::new(), BTreeMap::new());
        // Third crash (attempt 2 exited): restart 3 waits 20 s after the exit.
        let crashed = [exited("a", 1, 1, 1, 50), exited("a", 2, 1, 1, 100)];
        let p = plan(&s, &crashed, &input(110, &l, &h));
        assert!(p.starts.is_empty());
        assert_eq!(p.backoff.get("a"), Some(&t(120)));
        assert_eq!(p.phase, Phase::Running);
        let p = plan(&s, &crashed, &input(121, &l, &h));
        assert_eq!(p.starts[0].attempt, 3);
        // A hold (image or creation failure) delays too.
        let hold = BTreeMap::from([("a".to_string(), t(300))]);
        assert!(plan(&s, &[], &input(121, &l, &hold)).starts.is_empty());
        assert_eq!(plan(&s, &[], &input(301, &l, &hold)).starts.len(), 1);
    }

    #[test]
    fn liveness_failure_and_image_change_kill() {
        let s = two();
        let live = BTreeSet::from([container_id("u", "a", 0)]);
        let h = BTreeMap::new();
        let p = plan(
            &s,
            &[running("a", 0), running("b", 0)],
            &input(0, &live, &h),
        );
        assert_eq!(p.kills.len(), 1);
        assert!(p.kills[0].1.contains("liveness"));
        let mut changed = s.clone();
        changed.containers[1].image = Some("img:2".into());
        let none = BTreeSet::new();
        let p = plan(
            &changed,
            &[running("a", 0), running("b", 0)],
            &input(0, &none, &h),
        );
        assert_eq!(p.kills[0].0, container_id("u", "b", 0));
    }

    #[test]
    fn command_lines_follow_kubernetes_rules() {
        let c = |v: Value| -> Container { serde_json::from_value(v).unwrap() };
        let (ep, cmd) = (vec!["/ep".to_string()], vec!["run".to_string()]);
        let env = vec![("X".to_string(), "1".to_string())];
        let line = |v: Value| command_line(&c(v), &ep, &cmd, &env);
        assert_eq!(line(json!({"name": "a"})), ["/ep", "run"]);
        assert_eq!(line(json!({"name": "a", "args": ["x"]})), ["/ep", "x"]);
        assert_eq!(line(json!({"name": "a", "command": ["sh"]})), ["sh"]);
        assert_eq!(
            line(json!({"name": "a", "command": ["sh"], "args": ["-c", "$(X) $(Y) $$(X)"]})),
            ["sh", "-c", "1 $(Y) $(X)"]
        );
    }

    #[test]
    fn status_reports_states_and_conditions() {
        let s = spec(json!({"containers": [{"name": "a", "image": "img"}]}));
        let (l, h) = (BTreeSet::new(), BTreeMap::new());
        let instances = [exited("a", 0, 137, 5, 100), running("a", 1)];
        let p = plan(&s, &instances, &input(200, &l, &h));
        let probes = ProbeView {
            ready: BTreeSet::from([container_id("u", "a", 1)]),
            started: BTreeSet::from([container_id("u", "a", 1)]),
        };
        let current = json!({"conditions": [{"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "old"}]});
        let waiting = BTreeMap::new();
        let st = pod_status(
            &s,
            &instances,
            &StatusInput {
                current: Some(&current),
                plan: Some(&p),
                waiting: &waiting,
                probes: &probes,
                pod_ip: Some("10.0.0.2".into()),
                host_ip: Some("192.0.2.1".into()),
                start_time: "t0".into(),
                now: "now".into(),
                message: None,
                reason: None,
            },
        );
        assert_eq!(st["phase"], "Running");
        let cs = &st["containerStatuses"][0];
        assert_eq!(cs["restartCount"], 1);
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
        assert!(cs["state"]["running"].is_object());
        let conds = st["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["type"], "PodScheduled", "kept");
        let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(
            ready["lastTransitionTime"], "old",
            "unchanged status keeps its time"
        );
        assert_eq!(st["qosClass"], "BestEffort");

        // Not ready: the condition flips and gets a new time; a crash loop shows as such.
        let crashed = [exited("a", 1, 1, 1, 100), exited("a", 2, 1, 1, 100)];
        let p = plan(&s, &crashed, &input(101, &l, &h));
        let st = pod_status(
            &s,
            &crashed,
            &StatusInput {
                current: Some(&current),
                plan: Some(&p),
                waiting: &waiting,
                probes: &ProbeView::default(),
                pod_ip: None,
                host_ip: None,
                start_time: "t0".into(),
                now: "now".into(),
                message: None,
                reason: None,
            },
        );
        let cs = &st["containerStatuses"][0];
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["lastTransitionTime"], "now");
    }

    #[test]
    fn qos_classes() {
        let q = |r: Value| {
            qos_class(&spec(
                json!({"containers": [{"name": "a", "resources": r}]}),
            ))
        };
        assert_eq!(q(json!({})), "BestEffort");
        assert_eq!(
            q(json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
            "Guaranteed"
        );
        assert_eq!(q(json!({"requests": {"cpu": "1"}})), "Burstable");
    }
}
