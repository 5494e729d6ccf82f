//! Readiness, liveness and startup probes of running container instances, with every
//! Kubernetes knob (initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold,
//! failureThreshold) and the httpGet (HTTP and HTTPS), tcpSocket, exec and grpc handlers.
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
        let ip = h
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(target.ip);
        let addr = SocketAddr::new(ip, port(c, &h.port)?);
        let https = match h.scheme.as_deref().unwrap_or("HTTP") {
            s if s.eq_ignore_ascii_case("HTTP") => false,
            s if s.eq_ignore_ascii_case("HTTPS") => true,
            s => return Err(format!("unsupported scheme {s:?}: use HTTP or HTTPS")),
        };
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|hh| (hh.name.clone(), hh.value.clone()))
            .collect();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        return http_get(addr, &path, &headers, https, timeout).await;
    }
    if let Some(g) = &probe.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        let service = g.service.clone().unwrap_or_default();
        return grpc_check(SocketAddr::new(target.ip, port), &service, timeout).await;
    }
    Err("no handler (exec, httpGet, tcpSocket or grpc)".into())
}

/// kubelet's httpGet handler: a GET of `path` at `addr` (over TLS without verifying the
/// certificate when `https`, as kubelet does), success on a 2xx or 3xx status. A `Host` header
/// in `headers` replaces the default (the address).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    https: bool,
    timeout: Duration,
) -> Result<(), String> {
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{addr}{path}");
    let mut extra = String::new();
    let mut host = addr.to_string();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("host") {
            host = value.clone();
        } else {
            extra.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-probe/1.0\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
    );
    let get = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
        if !https {
            return status_of(tcp, &request).await;
        }
        let config = ferry_api::join::unverified_tls_client()?;
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Get \"{url}\": tls: {e}"))?;
        status_of(tls, &request).await
    };
    match tokio::time::timeout(timeout, get).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (timeout {}s)",
            timeout.as_secs()
        )),
    }
}

/// Sends `request` and judges the status line of the response.
async fn status_of<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut s: S,
    request: &str,
) -> Result<(), String> {
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
}

/// kubelet's grpc handler: `grpc.health.v1.Health/Check` for `service` at `addr` (plaintext
/// HTTP/2, as kubelet), success only when the answer is SERVING.
pub async fn grpc_check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|e| format!("health rpc to {addr:?} failed: {}", e.message()))?;
        let status = reply.into_inner().status();
        if status == ServingStatus::Serving {
            Ok(())
        } else {
            Err(format!(
                "service unhealthy (responded with {:?})",
                status.as_str_name()
            ))
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPS server on loopback with a self-signed certificate: 200 for `/healthz`, 500
    /// otherwise. Returns its address.
    async fn https_server() -> SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 1024];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let status = if head.starts_with("GET /healthz ") {
                        "200 OK"
                    } else {
                        "500 Internal Server Error"
                    };
                    let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_probes_skip_verification_and_judge_the_status() {
        let addr = https_server().await;
        let t = Duration::from_secs(5);
        http_get(addr, "/healthz", &[], true, t)
            .await
            .expect("healthy");
        let err = http_get(addr, "/broken", &[], true, t)
            .await
            .expect_err("500");
        assert!(err.contains("statuscode: 500"), "{err}");
        // Plain HTTP against a TLS port is not a success.
        assert!(http_get(addr, "/healthz", &[], false, t).await.is_err());
    }

    #[tokio::test]
    async fn grpc_probes_need_serving() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("ferry.Up", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("ferry.Down", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_listener(listener)),
        );
        let t = Duration::from_secs(5);
        grpc_check(addr, "ferry.Up", t).await.expect("serving");
        // The empty service is the server's overall health (SERVING by default).
        grpc_check(addr, "", t).await.expect("overall");
        let err = grpc_check(addr, "ferry.Down", t)
            .await
            .expect_err("not serving");
        assert!(err.contains("NOT_SERVING"), "{err}");
        let err = grpc_check(addr, "ferry.Unknown", t)
            .await
            .expect_err("unknown service");
        assert!(err.contains("health rpc"), "{err}");
        // Nothing listening.
        let closed = SocketAddr::new(addr.ip(), 1);
        assert!(grpc_check(closed, "", t).await.is_err());
    }

    fn tokio_stream_listener(
        l: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
        futures::stream::unfold(l, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }
}
