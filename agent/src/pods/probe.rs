//! Readiness, liveness and startup probes of running container instances, with every
//! Kubernetes knob (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold,
//! failureThreshold) and the httpGet, tcpSocket and exec handlers.
//!
//! One task per probe of a running instance; results go into [`ProbeResults`], keyed by the
//! instance id, and a change wakes the pod's worker. Startup holds the other two back until it
//! succeeds; a failed liveness (or startup) probe marks the instance for killing, which the
//! worker does (the restart policy decides what follows).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_api::k8s_openapi::{
    api::core::v1::{Container, LifecycleHandler, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
    task::JoinHandle,
};

use crate::runtime::ContainerRuntime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// Probe state of one instance. The instance is ready when it has `started` and is `ready`
/// (readiness is only probed once started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceProbes {
    pub started: bool,
    pub ready: bool,
    /// Liveness or startup failed: the container must be killed.
    pub failed: bool,
}

/// Results of all probes of one pod, shared between the probe tasks and the worker.
#[derive(Debug, Default)]
pub struct ProbeResults {
    state: Mutex<HashMap<String, InstanceProbes>>,
    pub changed: Notify,
}

impl ProbeResults {
    pub fn get(&self, id: &str) -> Option<InstanceProbes> {
        self.lock().get(id).cloned()
    }

    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, InstanceProbes>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut InstanceProbes)) {
        let changed = {
            let mut m = self.lock();
            let Some(e) = m.get_mut(id) else { return };
            let before = e.clone();
            f(e);
            *e != before
        };
        if changed {
            self.changed.notify_one();
        }
    }
}

/// Where probes reach the container.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP (the node's for hostNetwork pods).
    pub ip: IpAddr,
    pub runtime: Arc<dyn ContainerRuntime>,
}

/// Sink for `Unhealthy` events: (reason, message).
pub type EventSink = Arc<dyn Fn(&str, String) + Send + Sync>;

/// Starts the probe tasks of a freshly observed running instance and registers its initial
/// state: not ready while a readiness probe is pending, not started while a startup probe is.
pub fn start(
    results: &Arc<ProbeResults>,
    id: &str,
    c: &Container,
    target: Target,
    events: EventSink,
) -> Vec<JoinHandle<()>> {
    let started = c.startup_probe.is_none();
    results.lock().insert(
        id.to_owned(),
        InstanceProbes {
            started,
            ready: c.readiness_probe.is_none(),
            failed: false,
        },
    );
    let mut tasks = Vec::new();
    for (kind, probe) in [
        (Kind::Startup, &c.startup_probe),
        (Kind::Readiness, &c.readiness_probe),
        (Kind::Liveness, &c.liveness_probe),
    ] {
        let Some(probe) = probe.clone() else { continue };
        let (results, id, c, target, events) = (
            results.clone(),
            id.to_owned(),
            c.clone(),
            target.clone(),
            events.clone(),
        );
        tasks.push(tokio::spawn(async move {
            run(kind, probe, &c, &id, target, &results, events).await;
        }));
    }
    tasks
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.filter(|s| *s > 0).unwrap_or(default) as u64)
}

async fn run(
    kind: Kind,
    probe: Probe,
    c: &Container,
    id: &str,
    target: Target,
    results: &ProbeResults,
    events: EventSink,
) {
    let period = secs(probe.period_seconds, 10);
    let timeout = secs(probe.timeout_seconds, 1);
    let success_threshold = probe.success_threshold.filter(|s| *s > 0).unwrap_or(1) as u32;
    let failure_threshold = probe.failure_threshold.filter(|s| *s > 0).unwrap_or(3) as u32;
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let Some(state) = results.get(id) else { return };
        if kind == Kind::Startup && state.started {
            return;
        }
        if kind != Kind::Startup && !state.started {
            tokio::time::sleep(Duration::from_millis(200).min(period)).await;
            continue;
        }
        match check(&probe, c, id, &target, timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= success_threshold {
                    match kind {
                        Kind::Startup => results.update(id, |s| s.started = true),
                        Kind::Readiness => results.update(id, |s| s.ready = true),
                        Kind::Liveness => {}
                    }
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                events(
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.name()),
                );
                if failures >= failure_threshold {
                    match kind {
                        Kind::Readiness => results.update(id, |s| s.ready = false),
                        Kind::Startup | Kind::Liveness => {
                            results.update(id, |s| s.failed = true);
                            return;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Runs a lifecycle hook handler (`preStop`, `postStart`): `exec` in the container,
/// `httpGet` or `tcpSocket` against it (as a probe does), or `sleep`; all within `timeout`.
pub async fn run_hook(
    h: &LifecycleHandler,
    c: &Container,
    id: &str,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        let want = Duration::from_secs(s.seconds.max(0) as u64);
        tokio::time::sleep(want.min(timeout)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..Default::default()
    };
    check(&probe, c, id, target, timeout).await
}

/// A port number, or a named port of the container.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("container has no port named {name:?}"))
        }
    }
}

async fn check(
    probe: &Probe,
    c: &Container,
    id: &str,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &probe.exec {
        let args = e.command.clone().unwrap_or_default();
        let runtime = target.runtime.clone();
        let id = id.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            runtime.exec(&id, &args, timeout, crate::runtime::EXEC_OUTPUT_LIMIT)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        return if out.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command exited with {}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.output).trim()
            ))
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let ip = t
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(target.ip);
        let addr = SocketAddr::new(ip, port(c, &t.port)?);
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err(
                "HTTPS probes are not supported by this agent yet; use HTTP, tcpSocket or exec"
                    .into(),
            );
        }
        let ip = h
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(target.ip);
        let addr = SocketAddr::new(ip, port(c, &h.port)?);
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        let mut host = addr.to_string();
        for hh in h.http_headers.iter().flatten() {
            if hh.name.eq_ignore_ascii_case("host") {
                host = hh.value.clone();
            } else {
                headers.push_str(&format!("{}: {}\r\n", hh.name, hh.value));
            }
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-probe/1.0\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
        );
        let get = async {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
            s.write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1024];
            let mut n = 0;
            while n < buf.len() {
                let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
                if r == 0 || buf[..n + r].windows(2).any(|w| w == b"\r\n") {
                    n += r;
                    break;
                }
                n += r;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "malformed HTTP response {:?}",
                        line.lines().next().unwrap_or("")
                    )
                })?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return match tokio::time::timeout(timeout, get).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "Get \"http://{addr}{path}\": context deadline exceeded (timeout {}s)",
                timeout.as_secs()
            )),
        };
    }
    Err("no handler (exec, httpGet or tcpSocket)".into())
}
