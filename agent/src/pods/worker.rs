//! One pod's worker: observes the pod's containers, asks [`super::plan`] what to do, does it
//! (image, network, volumes, containers, probes), reports status and events, and on deletion
//! stops everything within the grace period and removes the pod for good.
//!
//! Never two syncs of one pod at once: the worker is the only task acting on its pod, and it
//! gets the pod's newest version through a `watch` channel (`None` once the pod is gone).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ferry_api::{
    client::{Client, DeleteOptions},
    k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec},
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    env::{self, PodFacts, Sources},
    plan::{self, Instance, InstanceState, Phase, PlanInput, ProbeView, StatusInput, Waiting},
    probe::{self, ProbeResults},
    rootfs, volumes,
};
use crate::{
    image::ImageStore,
    network::{DnsConfig, PodKey, PodNetConfig, PodNetRequest, PodNetwork},
    runtime::{BindMount, ContainerRuntime, ContainerSpec, NetworkNamespace, Resources},
};

/// How often a worker looks at its containers when nothing else wakes it.
pub const RESYNC: Duration = Duration::from_secs(1);
/// How often ConfigMap and Secret volumes are refreshed from the API.
pub const VOLUME_REFRESH: Duration = Duration::from_secs(5);
/// Retry delay after an image or container creation failure (doubling to 5 minutes).
const RETRY_BASE: Duration = Duration::from_secs(2);
/// The longest a `postStart` hook may run before it counts as failed.
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

/// What every worker of the node shares.
pub struct Shared {
    pub client: Client,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub images: Arc<ImageStore>,
    pub network: Arc<PodNetwork>,
    /// `<data dir>/pods`: one directory per pod uid.
    pub pods_dir: PathBuf,
    /// `<data dir>/local-volumes`: the local provisioner's volumes on this node.
    pub local_volumes: PathBuf,
    /// The node's nameservers and search domains (for dnsPolicy Default and hostNetwork pods).
    pub dns: DnsConfig,
    pub cluster_domain: String,
    /// Registry settings for image pulls.
    pub pull: crate::image::PullOptions,
    /// The nameserver of `dnsPolicy: ClusterFirst` pods: this agent's DNS server (`dns`).
    pub cluster_dns: Option<IpAddr>,
    /// The cluster CA (PEM), for pods' `ca.crt` (`volumes::SERVICE_ACCOUNT_DIR`).
    pub ca_pem: String,
    /// `<data dir>/pod-tokens`: the tmpfs with every pod's ServiceAccount files, one directory
    /// per pod uid (`volumes::TOKEN_STORE`).
    pub tokens_dir: PathBuf,
}

/// A pod's ServiceAccount token, and when to ask for a fresh one.
struct SaToken {
    token: String,
    refresh_at: SystemTime,
}

/// Identity of the pod a worker owns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name, &self.uid)
    }
}

pub struct Worker {
    shared: Arc<Shared>,
    pod: PodRef,
    dir: PathBuf,
    rx: watch::Receiver<Option<Value>>,
    /// The newest pod seen (kept after the pod is gone, for the grace period).
    last: Option<Value>,
    net: Option<PodNetConfig>,
    start_time: String,
    /// Per container: no start before this (image or creation failures).
    hold: BTreeMap<String, SystemTime>,
    failures: BTreeMap<String, u32>,
    waiting: BTreeMap<String, Waiting>,
    probes: Arc<ProbeResults>,
    probers: HashMap<String, Vec<JoinHandle<()>>>,
    prepared: Vec<volumes::Prepared>,
    sa_token: Option<SaToken>,
    volumes_at: Option<Instant>,
    volume_error: Option<String>,
    written: Option<Value>,
    reported_phase: Option<Phase>,
    /// Instance ids whose start, exit or kill has been announced by an Event.
    announced: BTreeSet<String>,
    /// Pod deletion finished on our side: only waiting for the API's DELETED.
    finished: bool,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Worker {
    pub fn new(shared: Arc<Shared>, pod: PodRef, rx: watch::Receiver<Option<Value>>) -> Self {
        let dir = shared.pods_dir.join(&pod.uid);
        Worker {
            shared,
            pod,
            dir,
            rx,
            last: None,
            net: None,
            start_time: now_rfc3339(),
            hold: BTreeMap::new(),
            failures: BTreeMap::new(),
            waiting: BTreeMap::new(),
            probes: Arc::new(ProbeResults::default()),
            probers: HashMap::new(),
            prepared: Vec::new(),
            sa_token: None,
            volumes_at: None,
            volume_error: None,
            written: None,
            reported_phase: None,
            announced: BTreeSet::new(),
            finished: false,
        }
    }

    /// Runs until the pod is gone and cleaned up.
    pub async fn run(mut self) {
        loop {
            let current = self.rx.borrow_and_update().clone();
            match current {
                None => {
                    self.cleanup().await;
                    return;
                }
                Some(pod) => {
                    self.last = Some(pod.clone());
                    if let Err(e) = self.sync(&pod).await {
                        tracing::warn!(pod = %self.name(), error = %e, "pod sync failed");
                    }
                }
            }
            let resync = if self.finished {
                Duration::from_secs(30)
            } else {
                RESYNC
            };
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        // The manager is gone (agent stopping): leave the containers running.
                        self.abort_probers();
                        return;
                    }
                }
                _ = self.probes.changed.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", self.pod.namespace, self.pod.name)
    }

    fn abort_probers(&mut self) {
        for (_, tasks) in self.probers.drain() {
            for t in tasks {
                t.abort();
            }
        }
    }

    fn event(&self, kind: &str, reason: &str, message: String) {
        let client = self.shared.client.clone();
        let node = self.shared.node_name.clone();
        let pod = self.pod.clone();
        let (kind, reason) = (kind.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            record_event(&client, &node, &pod, &kind, &reason, &message).await;
        });
    }

    async fn instances(&self) -> Vec<Instance> {
        let runtime = self.shared.runtime.clone();
        let prefix = format!("{}_", self.pod.uid);
        match tokio::task::spawn_blocking(move || runtime.list(&prefix)).await {
            Ok(Ok(list)) => list.iter().filter_map(Instance::from_info).collect(),
            Ok(Err(e)) => {
                tracing::warn!(pod = %self.name(), error = %e, "listing containers");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn sync(&mut self, pod_json: &Value) -> Result<(), String> {
        if self.finished {
            // Deleted on our side; a finalizer may hold the object. Try the delete again.
            return self.final_delete().await;
        }
        let pod: Pod =
            serde_json::from_value(pod_json.clone()).map_err(|e| format!("decoding pod: {e}"))?;
        let spec = pod.spec.clone().unwrap_or_default();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let ref_file = self.dir.join("pod.json");
        if !ref_file.exists() {
            let _ = std::fs::write(&ref_file, serde_json::to_vec(&self.pod).unwrap_or_default());
        }
        if let Some(st) = pod_json
            .pointer("/status/startTime")
            .and_then(Value::as_str)
        {
            self.start_time = st.to_owned();
        }
        self.reported_phase = pod_json
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .and_then(Phase::parse);

        if pod.metadata.deletion_timestamp.is_some() {
            self.terminate(pod_json).await;
            return self.final_delete().await;
        }

        let mut instances = self.instances().await;
        if self.reported_phase.is_some_and(Phase::is_terminal) {
            // Finished: nothing runs any more; the address goes back to the pool.
            self.stop_all(&instances, grace_of(pod_json)).await;
            self.release_network().await;
            return Ok(());
        }

        let host_network = spec.host_network == Some(true);
        if !host_network && self.net.is_none() {
            self.net = Some(self.setup_network(&pod, &spec).await?);
        }
        self.refresh_volumes(&pod, &spec).await;

        // Probers follow running instances.
        self.update_probers(&spec, &instances);
        let liveness_failed: BTreeSet<String> = instances
            .iter()
            .filter(|i| i.is_running() && self.probes.get(&i.id).is_some_and(|p| p.failed))
            .map(|i| i.id.clone())
            .collect();
        let decision = plan::plan(
            &spec,
            &instances,
            &PlanInput {
                reported_phase: self.reported_phase,
                liveness_failed: &liveness_failed,
                not_before: &self.hold,
                now: None,
            },
        );
        self.announce_exits(&instances);

        let grace = grace_of(pod_json);
        for (id, why) in &decision.kills {
            self.event("Normal", "Killing", why.clone());
            self.stop_instance(id, grace).await;
            self.probes.forget(id);
        }
        if !decision.phase.is_terminal() {
            for start in &decision.starts {
                if let Some(c) = find_container(&spec, &start.container, start.init) {
                    self.start_container(&pod, &spec, c, start).await;
                }
            }
        } else {
            self.stop_all(&instances, grace).await;
        }
        if !decision.kills.is_empty() || !decision.starts.is_empty() {
            instances = self.instances().await;
            self.update_probers(&spec, &instances);
            self.gc_instances(&instances).await;
        }
        // The plan again on what now runs, for the status.
        let decision = plan::plan(
            &spec,
            &instances,
            &PlanInput {
                reported_phase: self.reported_phase,
                liveness_failed: &BTreeSet::new(),
                not_before: &self.hold,
                now: None,
            },
        );
        let probe_view = self.probe_view(&spec, &instances);
        let host_ip = self.shared.node_ip.map(|ip| ip.to_string());
        let pod_ip = if host_network {
            host_ip.clone()
        } else {
            self.net.as_ref().map(|n| n.ip.to_string())
        };
        let mut waiting = self.waiting.clone();
        if let Some(e) = &self.volume_error {
            for c in spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
            {
                waiting.entry(c.name.clone()).or_insert_with(|| Waiting {
                    reason: "ContainerCreating".into(),
                    message: e.clone(),
                });
            }
        }
        let status = plan::pod_status(
            &spec,
            &instances,
            &StatusInput {
                current: pod_json.get("status"),
                plan: Some(&decision),
                waiting: &waiting,
                probes: &probe_view,
                pod_ip,
                host_ip,
                start_time: self.start_time.clone(),
                now: now_rfc3339(),
                message: None,
                reason: None,
            },
        );
        self.write_status(pod_json, status).await;
        if decision.phase.is_terminal() {
            self.abort_probers();
            self.release_network().await;
        }
        Ok(())
    }

    fn probe_view(&self, spec: &PodSpec, instances: &[Instance]) -> ProbeView {
        let mut view = ProbeView::default();
        for i in instances.iter().filter(|i| i.is_running()) {
            let Some(c) = find_container(spec, &i.container, i.init) else {
                continue;
            };
            let p = self.probes.get(&i.id).unwrap_or_default();
            let started = c.startup_probe.is_none() || p.started;
            let ready = started && (c.readiness_probe.is_none() || p.ready);
            if started {
                view.started.insert(i.id.clone());
            }
            if ready {
                view.ready.insert(i.id.clone());
            }
        }
        view
    }

    fn update_probers(&mut self, spec: &PodSpec, instances: &[Instance]) {
        let running: BTreeMap<&str, &Instance> = instances
            .iter()
            .filter(|i| i.is_running() && !i.init)
            .map(|i| (i.id.as_str(), i))
            .collect();
        let gone: Vec<String> = self
            .probers
            .keys()
            .filter(|id| !running.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            for t in self.probers.remove(&id).unwrap_or_default() {
                t.abort();
            }
            self.probes.forget(&id);
        }
        let ip = if spec.host_network == Some(true) {
            self.shared.node_ip
        } else {
            self.net.as_ref().map(|n| IpAddr::V4(n.ip))
        };
        let Some(ip) = ip else { return };
        for (id, i) in running {
            if self.probers.contains_key(id) {
                continue;
            }
            let Some(c) = find_container(spec, &i.container, false) else {
                continue;
            };
            let sink = {
                let client = self.shared.client.clone();
                let node = self.shared.node_name.clone();
                let pod = self.pod.clone();
                let cname = c.name.clone();
                Arc::new(move |reason: &str, message: String| {
                    let (client, node, pod, reason) =
                        (client.clone(), node.clone(), pod.clone(), reason.to_owned());
                    let message = format!("container {cname}: {message}");
                    tokio::spawn(async move {
                        record_event(&client, &node, &pod, "Warning", &reason, &message).await;
                    });
                }) as probe::EventSink
            };
            let target = probe::Target {
                ip,
                runtime: self.shared.runtime.clone(),
            };
            let tasks = probe::start(&self.probes, id, c, target, sink);
            self.probers.insert(id.to_owned(), tasks);
        }
    }

    fn announce_exits(&mut self, instances: &[Instance]) {
        for i in instances {
            if let InstanceState::Exited {
                exit_code,
                oom_killed,
                ..
            } = i.state
            {
                let key = format!("exit:{}", i.id);
                if self.announced.insert(key) && exit_code != 0 {
                    let why = if oom_killed {
                        "OOMKilled".to_owned()
                    } else {
                        format!("exit code {exit_code}")
                    };
                    self.event(
                        "Warning",
                        "BackOff",
                        format!(
                            "Container {} exited ({why}); restart policy decides what follows",
                            i.container
                        ),
                    );
                }
            }
        }
    }

    async fn setup_network(&self, pod: &Pod, spec: &PodSpec) -> Result<PodNetConfig, String> {
        let key = self.pod.key();
        if let Some(cfg) = self.shared.network.existing(&key) {
            return Ok(cfg);
        }
        let req = PodNetRequest {
            pod: key,
            netns: format!("ferry-{}", self.pod.uid),
            hostname: hostname_of(pod, spec),
            dns: self.dns_for(spec),
        };
        let cfg = self
            .shared
            .network
            .setup(&req)
            .await
            .map_err(|e| format!("pod network: {e}"))?;
        Ok(cfg)
    }

    /// Kubernetes' resolv.conf for ClusterFirst: the cluster's search domains before the
    /// node's, `ndots:5`; `dnsPolicy: None` takes `dnsConfig` alone; `dnsConfig` is merged in.
    fn dns_for(&self, spec: &PodSpec) -> DnsConfig {
        let ns = &self.pod.namespace;
        let domain = &self.shared.cluster_domain;
        let mut dns = match spec.dns_policy.as_deref() {
            Some("None") => DnsConfig::default(),
            Some("Default") => self.shared.dns.clone(),
            _ => {
                let mut d = self.shared.dns.clone();
                // The agent's DNS server is the only nameserver (`Default` keeps the node's).
                if let Some(ip) = self.shared.cluster_dns {
                    d.nameservers = vec![ip];
                }
                let mut searches = vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ];
                searches.append(&mut d.searches);
                d.searches = searches;
                d.options = vec!["ndots:5".into()];
                d
            }
        };
        if let Some(c) = &spec.dns_config {
            for n in c.nameservers.iter().flatten() {
                if let Ok(ip) = n.parse() {
                    dns.nameservers.push(ip);
                }
            }
            dns.searches.extend(c.searches.iter().flatten().cloned());
            for o in c.options.iter().flatten() {
                let Some(name) = &o.name else { continue };
                dns.options
                    .retain(|x| x.split(':').next() != Some(name.as_str()));
                dns.options.push(match &o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name.clone(),
                });
            }
        }
        dns.nameservers.truncate(3);
        dns.searches.truncate(32);
        dns
    }

    async fn refresh_volumes(&mut self, pod: &Pod, spec: &PodSpec) {
        if self
            .volumes_at
            .is_some_and(|t| t.elapsed() < VOLUME_REFRESH && self.volume_error.is_none())
        {
            return;
        }
        self.volumes_at = Some(Instant::now());
        let account = match self.service_account_files(spec).await {
            Ok(files) => files,
            Err(e) => {
                if self.volume_error.as_deref() != Some(&e) {
                    self.event("Warning", "FailedMount", e.clone());
                }
                self.volume_error = Some(e);
                return;
            }
        };
        let sources = self.fetch_sources(pod).await;
        let claims = self.fetch_claims(spec).await;
        let dir = self.dir.join("volumes");
        let token_dir = self.shared.tokens_dir.join(&self.pod.uid);
        let vols = spec.volumes.clone().unwrap_or_default();
        let result = tokio::task::spawn_blocking(move || {
            let claim = |name: &str| -> Result<std::path::PathBuf, String> {
                claims
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| Err(format!("persistentVolumeClaim {name:?} not read")))
            };
            let lookup = |kind: &str, name: &str| -> volumes::ObjectData {
                match kind {
                    "ConfigMap" => sources
                        .config_maps
                        .get(name)
                        .cloned()
                        .flatten()
                        .map(|m| m.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()),
                    _ => sources.secrets.get(name).cloned().flatten(),
                }
            };
            let mut prepared = vols
                .iter()
                .map(|v| volumes::prepare(&dir, v, &lookup, &claim))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(files) = account {
                prepared.push(volumes::prepare_service_account(&token_dir, &files)?);
            }
            Ok::<_, volumes::VolumeError>(prepared)
        })
        .await;
        match result {
            Ok(Ok(prepared)) => {
                self.prepared = prepared;
                self.volume_error = None;
            }
            Ok(Err(e)) => {
                if self.volume_error.as_deref() != Some(&e.to_string()) {
                    self.event("Warning", "FailedMount", e.to_string());
                }
                self.volume_error = Some(e.to_string());
            }
            Err(e) => self.volume_error = Some(e.to_string()),
        }
    }

    /// The files of the pod's ServiceAccount volume (`token`, `ca.crt`, `namespace`), or `None`
    /// when the pod does not mount one: `automountServiceAccountToken` false on the pod, or
    /// unset on the pod and false on its account. The token is bound to the pod, lives an
    /// hour and is renewed after 80% of that, as the kubelet does.
    async fn service_account_files(
        &mut self,
        spec: &PodSpec,
    ) -> Result<Option<volumes::ServiceAccountFiles>, String> {
        if spec.automount_service_account_token == Some(false) {
            return Ok(None);
        }
        let account = spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let ns = self.pod.namespace.clone();
        let fresh = self
            .sa_token
            .as_ref()
            .is_some_and(|t| SystemTime::now() < t.refresh_at);
        if !fresh {
            let client = &self.shared.client;
            let sa = client
                .get("ServiceAccount", &ns, &account)
                .await
                .map_err(|e| {
                    if e.is_not_found() {
                        format!("serviceaccount {ns}/{account} not found: the pod waits for it")
                    } else {
                        format!("reading serviceaccount {ns}/{account}: {}", e.message)
                    }
                })?;
            if spec.automount_service_account_token.is_none()
                && sa["automountServiceAccountToken"] == false
            {
                return Ok(None);
            }
            let lifetime = 3607;
            let t = client
                .create_service_account_token(&ns, &account, &[], lifetime, &self.pod.name)
                .await
                .map_err(|e| {
                    format!(
                        "requesting a token for serviceaccount {ns}/{account}: {}",
                        e.message
                    )
                })?;
            self.sa_token = Some(SaToken {
                token: t.token,
                refresh_at: SystemTime::now() + Duration::from_secs(lifetime as u64 * 8 / 10),
            });
        }
        Ok(self
            .sa_token
            .as_ref()
            .map(|t| volumes::ServiceAccountFiles {
                token: t.token.clone(),
                ca_pem: self.shared.ca_pem.clone(),
                namespace: ns,
            }))
    }

    /// Where the pod's persistentVolumeClaim volumes live on this node: each claim and the
    /// volume it is bound to, read now (see `volumes::claim_path`).
    async fn fetch_claims(
        &self,
        spec: &PodSpec,
    ) -> std::collections::BTreeMap<String, Result<std::path::PathBuf, String>> {
        let ns = &self.pod.namespace;
        let client = &self.shared.client;
        let mut out = std::collections::BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let Some(c) = &v.persistent_volume_claim else {
                continue;
            };
            let name = c.claim_name.clone();
            let r = async {
                let pvc = client
                    .get("PersistentVolumeClaim", ns, &name)
                    .await
                    .map_err(|e| format!("persistentVolumeClaim {name:?}: {e}"))?;
                let pv_name = pvc
                    .pointer("/spec/volumeName")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                if pv_name.is_empty() {
                    return Err(format!("persistentVolumeClaim {name:?} is not bound yet"));
                }
                let pv = client
                    .get("PersistentVolume", "", pv_name)
                    .await
                    .map_err(|e| format!("persistentVolume {pv_name:?}: {e}"))?;
                let path = volumes::claim_path(&pvc, &pv, &self.shared.node_name)?;
                crate::localvolumes::adopt(
                    client,
                    &pv,
                    &self.shared.local_volumes,
                    &self.shared.node_name,
                )
                .await?;
                Ok(path)
            }
            .await;
            out.insert(name, r);
        }
        out
    }

    /// The ConfigMaps and Secrets the pod references, read now (binary ConfigMap data is
    /// merged into the volume view by `prepare`'s lookup).
    async fn fetch_sources(&self, pod: &Pod) -> Sources {
        let (cms, secrets) = env::referenced(pod);
        let ns = &self.pod.namespace;
        let client = &self.shared.client;
        let mut out = Sources::default();
        for name in cms {
            let v = match client.get("ConfigMap", ns, &name).await {
                Ok(cm) => {
                    let mut data = env::config_map_data(&cm);
                    for (k, v) in env::config_map_binary(&cm) {
                        data.insert(k, String::from_utf8_lossy(&v).into_owned());
                    }
                    Some(data)
                }
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    tracing::debug!(pod = %self.name(), configmap = %name, error = %e, "reading configmap");
                    None
                }
            };
            out.config_maps.insert(name, v);
        }
        for name in secrets {
            let v = match client.get("Secret", ns, &name).await {
                Ok(s) => Some(env::secret_data(&s)),
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    tracing::debug!(pod = %self.name(), secret = %name, error = %e, "reading secret");
                    None
                }
            };
            out.secrets.insert(name, v);
        }
        out
    }

    /// The service-link variables of the pod's namespace (none if the Services cannot be read
    /// now: a container start does not wait for them).
    async fn service_links(&self) -> Vec<(String, String)> {
        let opts = ferry_api::client::ListOptions {
            namespace: Some(self.pod.namespace.clone()),
            ..Default::default()
        };
        match self.shared.client.list("Service", &opts).await {
            Ok(l) => env::service_env(l["items"].as_array().map(Vec::as_slice).unwrap_or(&[])),
            Err(e) => {
                tracing::debug!(pod = %self.name(), error = %e, "listing services for env");
                Vec::new()
            }
        }
    }

    fn hold_after_failure(&mut self, container: &str, reason: &str, message: String) {
        let n = self.failures.entry(container.to_owned()).or_insert(0);
        *n += 1;
        let delay = (RETRY_BASE * (1u32 << (*n - 1).min(8))).min(Duration::from_secs(300));
        self.hold
            .insert(container.to_owned(), SystemTime::now() + delay);
        if self
            .waiting
            .get(container)
            .is_none_or(|w| w.reason != reason || w.message != message)
        {
            self.event("Warning", "Failed", message.clone());
        }
        self.waiting.insert(
            container.to_owned(),
            Waiting {
                reason: reason.to_owned(),
                message,
            },
        );
    }

    /// The image, pulled as `imagePullPolicy` says, and its root filesystem.
    async fn ensure_image(
        &mut self,
        c: &Container,
        image_ref: &str,
    ) -> Result<(crate::image::ImageInfo, PathBuf), String> {
        let images = self.shared.images.clone();
        let policy = c.image_pull_policy.clone().unwrap_or_default();
        let r = image_ref.to_owned();
        let local = {
            let images = images.clone();
            let r = r.clone();
            tokio::task::spawn_blocking(move || images.resolve(&r))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let info = match (local, policy.as_str()) {
            (Some(info), "IfNotPresent" | "Never") => info,
            (None, "Never") => {
                return Err(format!(
                    "Container image \"{r}\" is not present with pull policy of Never"
                ));
            }
            _ => {
                self.event("Normal", "Pulling", format!("Pulling image \"{r}\""));
                let started = Instant::now();
                let info = images
                    .pull(&r, &self.shared.pull)
                    .await
                    .map_err(|e| e.to_string())?;
                self.event(
                    "Normal",
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{r}\" in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                info
            }
        };
        let rootfs = tokio::task::spawn_blocking(move || images.rootfs(&r))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok((info, rootfs))
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        spec: &PodSpec,
        c: &Container,
        start: &plan::Start,
    ) {
        if let Some(e) = &self.volume_error {
            self.waiting.insert(
                c.name.clone(),
                Waiting {
                    reason: "ContainerCreating".into(),
                    message: e.clone(),
                },
            );
            return;
        }
        let image_ref = c.image.clone().unwrap_or_default();
        // Image, by the pull policy.
        let resolved = self.ensure_image(c, &image_ref).await;
        let (info, image_rootfs) = match resolved {
            Ok(x) => x,
            Err(message) => {
                let reason = if c.image_pull_policy.as_deref() == Some("Never") {
                    "ErrImageNeverPull"
                } else if self.failures.get(&c.name).copied().unwrap_or(0) > 0 {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
                self.hold_after_failure(&c.name, reason, message);
                return;
            }
        };

        let facts = PodFacts {
            pod_ip: self
                .net
                .as_ref()
                .map(|n| n.ip.to_string())
                .or_else(|| self.shared.node_ip.map(|i| i.to_string()))
                .unwrap_or_default(),
            host_ip: self
                .shared
                .node_ip
                .map(|i| i.to_string())
                .unwrap_or_default(),
            node_name: self.shared.node_name.clone(),
        };
        let sources = self.fetch_sources(pod).await;
        let image_env = info.config.env.clone().unwrap_or_default();
        let links = if spec.enable_service_links != Some(false) {
            self.service_links().await
        } else {
            Vec::new()
        };
        let env = match env::container_env(pod, c, &image_env, &links, &sources, &facts) {
            Ok(e) => e,
            Err(e) => {
                self.hold_after_failure(&c.name, "CreateContainerConfigError", e.to_string());
                return;
            }
        };
        let args = plan::command_line(
            c,
            info.config.entrypoint.as_deref().unwrap_or(&[]),
            info.config.cmd.as_deref().unwrap_or(&[]),
            &env,
        );
        if args.is_empty() {
            self.hold_after_failure(
                &c.name,
                "CreateContainerConfigError",
                format!("container {:?}: no command: the image has no entrypoint or cmd and the container no command", c.name),
            );
            return;
        }
        let id = plan::container_id(&self.pod.uid, &c.name, start.attempt);
        let instance_dir = self.dir.join("containers").join(&id);
        let (uid, gid) = user_of(spec, c, info.config.user.as_deref(), &image_rootfs);
        let mounts = match self.mounts(spec, c) {
            Ok(m) => m,
            Err(e) => {
                self.hold_after_failure(&c.name, "CreateContainerConfigError", e);
                return;
            }
        };
        let log_dir = self.dir.join("logs").join(&c.name);
        let _ = std::fs::create_dir_all(&log_dir);
        let labels: BTreeMap<String, String> = [
            (plan::LABEL_POD_NAMESPACE, self.pod.namespace.clone()),
            (plan::LABEL_POD_NAME, self.pod.name.clone()),
            (plan::LABEL_POD_UID, self.pod.uid.clone()),
            (plan::LABEL_CONTAINER, c.name.clone()),
            (plan::LABEL_ATTEMPT, start.attempt.to_string()),
            (plan::LABEL_INIT, start.init.to_string()),
            (plan::LABEL_IMAGE, image_ref.clone()),
            (
                plan::LABEL_IMAGE_ID,
                format!(
                    "{}@{}",
                    image_ref.split(['@']).next().unwrap_or(""),
                    info.manifest_digest
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let readonly = c
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem)
            == Some(true);
        let working_dir = c
            .working_dir
            .clone()
            .or_else(|| info.config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .map(PathBuf::from);
        let hostname = if spec.host_network == Some(true) {
            None
        } else {
            Some(hostname_of(pod, spec))
        };
        let network = if spec.host_network == Some(true) {
            NetworkNamespace::Host
        } else {
            match &self.net {
                Some(n) => NetworkNamespace::Join(n.netns_path.clone()),
                None => return,
            }
        };
        let cspec = ContainerSpec {
            id: id.clone(),
            rootfs: image_rootfs,
            overlay: Some(rootfs::layer(&instance_dir)),
            readonly_rootfs: readonly,
            args,
            env,
            working_dir,
            uid,
            gid,
            additional_gids: spec
                .security_context
                .as_ref()
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|g| u32::try_from(g).ok())
                .collect(),
            hostname,
            network,
            mounts,
            resources: resources_of(c),
            log_path: log_dir.join(format!("{}.log", start.attempt)),
            labels,
        };
        let runtime = self.shared.runtime.clone();
        let started = tokio::task::spawn_blocking(move || match runtime.run(&cspec) {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = runtime.delete(&cspec.id);
                let _ = rootfs::remove(&instance_dir);
                Err(e.to_string())
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match started {
            Ok(()) => {
                self.failures.remove(&c.name);
                self.hold.remove(&c.name);
                self.waiting.remove(&c.name);
                self.event(
                    "Normal",
                    "Started",
                    format!(
                        "Started container {} (image {image_ref}, restart {})",
                        c.name, start.attempt
                    ),
                );
                self.post_start(pod, c, &id).await;
            }
            Err(message) => self.hold_after_failure(&c.name, "RunContainerError", message),
        }
    }

    /// Runs container `c`'s `postStart` hook, if it has one, as the kubelet does: right after
    /// the start and before the pod's next container starts; when it fails the container is
    /// killed (its restart policy decides what follows) and a `FailedPostStartHook` Event says
    /// why.
    async fn post_start(&self, pod: &Pod, c: &Container, id: &str) {
        let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let Some(ip) = self.hook_address(
            pod.spec
                .as_ref()
                .is_some_and(|s| s.host_network == Some(true)),
        ) else {
            return;
        };
        let target = probe::Target {
            ip,
            runtime: self.shared.runtime.clone(),
        };
        if let Err(e) = probe::run_hook(handler, c, id, &target, POST_START_TIMEOUT).await {
            self.event(
                "Warning",
                "FailedPostStartHook",
                format!("PostStartHook failed for container {}: {e}", c.name),
            );
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .map_or(Duration::from_secs(30), |g| {
                    Duration::from_secs(g.max(0) as u64)
                });
            self.stop_instance(id, grace).await;
        }
    }

    /// The address lifecycle hooks reach the pod's containers at.
    fn hook_address(&self, host_network: bool) -> Option<IpAddr> {
        if host_network {
            self.shared.node_ip
        } else {
            Some(IpAddr::V4(self.net.as_ref()?.ip))
        }
    }

    /// The pod's /etc files (or the node's for hostNetwork pods) and the volume mounts.
    fn mounts(&self, spec: &PodSpec, c: &Container) -> Result<Vec<BindMount>, String> {
        let mut m = Vec::new();
        let etc = |name: &str, dir: &Path| BindMount {
            source: dir.join(name),
            destination: PathBuf::from("/etc").join(name),
            readonly: false,
        };
        match (&self.net, spec.host_network == Some(true)) {
            (Some(n), false) => {
                for f in ["hosts", "hostname", "resolv.conf"] {
                    m.push(etc(f, &n.etc_dir));
                }
            }
            _ => {
                for f in ["hosts", "resolv.conf"] {
                    if Path::new("/etc").join(f).exists() {
                        let mut b = etc(f, Path::new("/etc"));
                        b.readonly = true;
                        m.push(b);
                    }
                }
            }
        }
        // The ServiceAccount volume, where the container does not mount something there itself.
        if let Some(p) = self
            .prepared
            .iter()
            .find(|p| p.name == volumes::SERVICE_ACCOUNT_VOLUME)
            && !c
                .volume_mounts
                .iter()
                .flatten()
                .any(|vm| Path::new(&vm.mount_path) == Path::new(volumes::SERVICE_ACCOUNT_DIR))
        {
            m.push(BindMount {
                source: p.path.clone(),
                destination: PathBuf::from(volumes::SERVICE_ACCOUNT_DIR),
                readonly: true,
            });
        }
        for vm in c.volume_mounts.iter().flatten() {
            let p = self
                .prepared
                .iter()
                .find(|p| p.name == vm.name)
                .ok_or_else(|| {
                    format!(
                        "volumeMounts {:?}: no volume of that name is ready",
                        vm.name
                    )
                })?;
            let mut source = p.path.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let rel = volumes::safe_relative(&vm.name, sub).map_err(|e| e.to_string())?;
                source = source.join(rel);
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(|e| format!("creating subPath {}: {e}", source.display()))?;
                }
            }
            m.push(BindMount {
                source,
                destination: PathBuf::from(&vm.mount_path),
                readonly: p.readonly || vm.read_only == Some(true),
            });
        }
        Ok(m)
    }

    async fn stop_instance(&self, id: &str, grace: Duration) {
        // Ids are `<pod uid>_<container>_<attempt>` (plan::container_id).
        let container = id.split('_').nth(1).unwrap_or("");
        let stop = self.stop_task(id, container, grace);
        if let Err(e) = stop.await {
            tracing::warn!(pod = %self.name(), error = %e, "stopping container");
        }
    }

    async fn stop_all(&mut self, instances: &[Instance], grace: Duration) {
        self.abort_probers();
        let mut stops = Vec::new();
        for i in instances {
            if matches!(i.state, InstanceState::Exited { .. }) {
                continue;
            }
            stops.push(tokio::spawn(self.stop_task(&i.id, &i.container, grace)));
        }
        for s in stops {
            if let Ok(Err(e)) = s.await {
                tracing::warn!(pod = %self.name(), error = %e, "stopping container");
            }
        }
    }

    /// Stops running instance `id` of container `container` as the kubelet does: its
    /// `preStop` hook first, within the grace period, then SIGTERM and what is left of the
    /// grace period (at least 2 s once a hook ran), then SIGKILL.
    fn stop_task(
        &self,
        id: &str,
        container: &str,
        grace: Duration,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let runtime = self.shared.runtime.clone();
        let id = id.to_owned();
        let hook = self.pre_stop_hook(container);
        let event = {
            let client = self.shared.client.clone();
            let node = self.shared.node_name.clone();
            let pod = self.pod.clone();
            move |message: String| async move {
                record_event(
                    &client,
                    &node,
                    &pod,
                    "Warning",
                    "FailedPreStopHook",
                    &message,
                )
                .await;
            }
        };
        async move {
            let mut left = grace;
            if let Some((handler, c, ip)) = hook.filter(|_| !grace.is_zero()) {
                let started = Instant::now();
                let target = probe::Target {
                    ip,
                    runtime: runtime.clone(),
                };
                if let Err(e) = probe::run_hook(&handler, &c, &id, &target, grace).await {
                    event(format!("PreStopHook failed for container {}: {e}", c.name)).await;
                }
                left = grace
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(2));
            }
            tokio::task::spawn_blocking(move || runtime.stop(&id, left))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }

    /// Container `name`'s `preStop` handler (from the newest pod seen), with the container and
    /// the address hooks reach it at.
    fn pre_stop_hook(&self, name: &str) -> Option<(LifecycleHandler, Container, IpAddr)> {
        let pod: Pod = serde_json::from_value(self.last.clone()?).ok()?;
        let spec = pod.spec?;
        let c = find_container(&spec, name, false)?.clone();
        let handler = c.lifecycle.as_ref()?.pre_stop.clone()?;
        let ip = self.hook_address(spec.host_network == Some(true))?;
        Some((handler, c, ip))
    }

    /// Keeps the newest two instances of every container (the running one and the one
    /// before, for `lastState` and `--previous` logs); deletes older ones with their root
    /// filesystems and logs.
    async fn gc_instances(&self, instances: &[Instance]) {
        let mut by_container: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for i in instances {
            by_container
                .entry(i.container.clone())
                .or_default()
                .push(i.clone());
        }
        let mut old = Vec::new();
        for (_, mut list) in by_container {
            list.sort_by_key(|i| std::cmp::Reverse(i.attempt));
            old.extend(list.into_iter().skip(2));
        }
        for i in old {
            self.remove_instance(&i).await;
        }
    }

    async fn remove_instance(&self, i: &Instance) {
        let runtime = self.shared.runtime.clone();
        let id = i.id.clone();
        let dir = self.dir.join("containers").join(&i.id);
        let log = self
            .dir
            .join("logs")
            .join(&i.container)
            .join(format!("{}.log", i.attempt));
        let r = tokio::task::spawn_blocking(move || {
            runtime.delete(&id).map_err(|e| e.to_string())?;
            rootfs::remove(&dir).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(log);
            Ok::<_, String>(())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(pod = %self.name(), error = %e, "removing an old container");
        }
    }

    async fn release_network(&mut self) {
        if let Err(e) = self.shared.network.teardown(&self.pod.key()).await {
            tracing::warn!(pod = %self.name(), error = %e, "tearing down the pod network");
        }
        self.net = None;
    }

    /// Stops every container within the grace period (deletion).
    async fn terminate(&mut self, pod_json: &Value) {
        let instances = self.instances().await;
        if instances
            .iter()
            .any(|i| !matches!(i.state, InstanceState::Exited { .. }))
        {
            self.event(
                "Normal",
                "Killing",
                format!(
                    "Stopping the pod's containers (grace period {}s)",
                    grace_of(pod_json).as_secs()
                ),
            );
        }
        self.stop_all(&instances, grace_of(pod_json)).await;
        self.cleanup().await;
    }

    /// Removes everything the pod had on the node: containers, root filesystems, volumes,
    /// network, directory. Idempotent.
    pub async fn cleanup(&mut self) {
        self.abort_probers();
        let grace = self.last.as_ref().map_or(Duration::from_secs(2), grace_of);
        let instances = self.instances().await;
        self.stop_all(&instances, grace).await;
        for i in &instances {
            self.remove_instance(i).await;
        }
        let dir = self.dir.clone();
        let token_dir = self.shared.tokens_dir.join(&self.pod.uid);
        let r = tokio::task::spawn_blocking(move || {
            volumes::unmount_all(&dir.join("volumes")).map_err(|e| e.to_string())?;
            match std::fs::remove_dir_all(&token_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
                _ => {}
            }
            if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
                for e in entries.flatten() {
                    rootfs::remove(&e.path()).map_err(|e| e.to_string())?;
                }
            }
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(pod = %self.name(), error = %e, "removing the pod's directory");
        }
        self.release_network().await;
        tracing::info!(pod = %self.name(), uid = %self.pod.uid, "pod cleaned up");
    }

    async fn final_delete(&mut self) -> Result<(), String> {
        self.finished = true;
        let opts = DeleteOptions {
            grace_period_seconds: Some(0),
            resource_version: String::new(),
            propagation: String::new(),
        };
        match self
            .shared
            .client
            .delete_with("Pod", &self.pod.namespace, &self.pod.name, &opts)
            .await
        {
            Ok(obj) => {
                // Another pod of the same name would have another uid: never delete that.
                if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(&self.pod.uid) {
                    tracing::warn!(pod = %self.name(), "a different pod now has this name; not deleting it");
                }
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => {
                self.finished = false;
                Err(format!("deleting the pod: {e}"))
            }
        }
    }

    async fn write_status(&mut self, pod_json: &Value, status: Value) {
        if self.written.as_ref() == Some(&status) {
            return;
        }
        if pod_json.get("status") == Some(&status) {
            self.written = Some(status);
            return;
        }
        let mut obj = pod_json.clone();
        for attempt in 0..3 {
            obj["status"] = status.clone();
            match self.shared.client.update_status("Pod", &obj).await {
                Ok(_) => {
                    if let Some(p) = Phase::parse(status["phase"].as_str().unwrap_or("")) {
                        self.reported_phase = Some(p);
                    }
                    self.written = Some(status);
                    return;
                }
                Err(e) if e.is_conflict() && attempt < 2 => {
                    match self
                        .shared
                        .client
                        .get("Pod", &self.pod.namespace, &self.pod.name)
                        .await
                    {
                        Ok(fresh)
                            if fresh.pointer("/metadata/uid").and_then(Value::as_str)
                                == Some(&self.pod.uid) =>
                        {
                            obj = fresh
                        }
                        _ => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %e, "updating pod status");
                    return;
                }
            }
        }
    }
}

fn find_container<'a>(spec: &'a PodSpec, name: &str, init: bool) -> Option<&'a Container> {
    if init {
        spec.init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
    } else {
        spec.containers.iter().find(|c| c.name == name)
    }
}

/// The grace period of a pod's deletion, else its spec's.
pub fn grace_of(pod: &Value) -> Duration {
    let secs = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// The pod's hostname: `spec.hostname`, else its name (cut to a DNS label).
fn hostname_of(pod: &Pod, spec: &PodSpec) -> String {
    let name = spec
        .hostname
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_else(|| "pod".into());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h.replace('.', "-")
}

fn resources_of(c: &Container) -> Resources {
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let q = |name: &str| {
        limits
            .and_then(|l| l.get(name))
            .and_then(|q| ferry_api::validation::parse_quantity(&q.0))
    };
    Resources {
        memory_bytes: q("memory").map(|b| b as u64),
        cpu_millis: q("cpu").map(|c| (c * 1000.0).ceil() as u64),
        pids: None,
    }
}

/// uid and gid: securityContext (container over pod), else the image's `User` (numeric or a
/// name in the image's /etc/passwd and /etc/group), else root.
fn user_of(spec: &PodSpec, c: &Container, image_user: Option<&str>, rootfs: &Path) -> (u32, u32) {
    let sc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image_user.filter(|u| !u.is_empty()) {
        let (user, group) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
        let lookup = |file: &str, name: &str, field: usize| -> Option<(u32, u32)> {
            let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
            text.lines().find_map(|l| {
                let parts: Vec<&str> = l.split(':').collect();
                (parts.first() == Some(&name))
                    .then(|| Some((parts.get(2)?.parse().ok()?, parts.get(field)?.parse().ok()?)))
                    .flatten()
            })
        };
        if let Ok(n) = user.parse() {
            uid = n;
        } else if let Some((u, g)) = lookup("passwd", user, 3) {
            uid = u;
            gid = g;
        }
        if let Some(g) = group {
            if let Ok(n) = g.parse() {
                gid = n;
            } else if let Some((g, _)) = lookup("group", g, 2) {
                gid = g;
            }
        }
    }
    if let Some(u) = run_as_user.and_then(|u| u32::try_from(u).ok()) {
        uid = u;
    }
    if let Some(g) = run_as_group.and_then(|g| u32::try_from(g).ok()) {
        gid = g;
    }
    (uid, gid)
}

/// Records an Event about the pod (best effort: events never block pod work).
pub async fn record_event(
    client: &Client,
    node: &str,
    pod: &PodRef,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let now = chrono::Utc::now();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{}.{:x}", pod.name, now.timestamp_nanos_opt().unwrap_or(0)),
            "namespace": pod.namespace,
        },
        "involvedObject": {
            "kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.uid,
            "apiVersion": "v1",
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": "ferry-agent", "host": node},
        "reportingComponent": "ferry-agent",
        "reportingInstance": node,
        "firstTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "lastTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "count": 1,
    });
    if let Err(e) = client.create("Event", &pod.namespace, &event).await {
        tracing::debug!(pod = %pod.name, error = %e, "recording an event");
    }
}
