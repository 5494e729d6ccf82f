//! Health check node ports, as kube-proxy serves them: every LoadBalancer Service with
//! `externalTrafficPolicy: Local` has a `spec.healthCheckNodePort`, and every agent answers HTTP
//! on it with how many ready endpoints of the service run on this node: `200` when there is at
//! least one, `503` when there is none, so an external load balancer sends traffic only to nodes
//! that serve it locally (traffic from outside to a node without one is dropped, see
//! [`super::services`]). The body is kube-proxy's:
//!
//! ```json
//! {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true}
//! ```
//!
//! Any method and path get the same answer. The listeners follow the Services: [`HealthChecks`]
//! opens one per wanted port, updates what it answers, and closes those no longer wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What one health check port answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub namespace: String,
    pub name: String,
    /// Ready, not terminating endpoints of the service on this node.
    pub local_endpoints: usize,
}

impl Status {
    /// The HTTP response (status line, headers, body).
    fn response(&self) -> Vec<u8> {
        let body = json!({
            "service": {"namespace": self.namespace, "name": self.name},
            "localEndpoints": self.local_endpoints,
            "serviceProxyHealthy": true,
        })
        .to_string();
        let status = if self.local_endpoints > 0 {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.local_endpoints,
            body.len()
        )
        .into_bytes()
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// The health check ports `services` want on node `node`, with what each answers.
pub fn wanted(services: &[Value], slices: &[Value], node: &str) -> BTreeMap<u16, Status> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(port) = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        if s(svc, "/spec/type") != "LoadBalancer"
            || s(svc, "/spec/externalTrafficPolicy") != "Local"
        {
            continue;
        }
        let (ns, name) = (s(svc, "/metadata/namespace"), s(svc, "/metadata/name"));
        let mut local: BTreeSet<&str> = BTreeSet::new();
        for sl in slices.iter().filter(|sl| {
            s(sl, "/metadata/namespace") == ns
                && s(sl, "/metadata/labels/kubernetes.io~1service-name") == name
        }) {
            for ep in sl["endpoints"].as_array().into_iter().flatten() {
                let c = &ep["conditions"];
                if ep["nodeName"].as_str() == Some(node)
                    && c["ready"].as_bool().unwrap_or(true)
                    && !c["terminating"].as_bool().unwrap_or(false)
                {
                    local.extend(
                        ep["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str),
                    );
                }
            }
        }
        out.insert(
            port,
            Status {
                namespace: ns.to_string(),
                name: name.to_string(),
                local_endpoints: local.len(),
            },
        );
    }
    out
}

/// The open health check listeners of this node.
#[derive(Default)]
pub struct HealthChecks {
    open: BTreeMap<u16, (watch::Sender<Status>, JoinHandle<()>)>,
    /// Ports that could not be opened, so the failure is logged once, not at every change.
    failed: BTreeSet<u16>,
}

impl HealthChecks {
    /// Opens, updates and closes listeners so that exactly `want` is served. Must run inside
    /// the tokio runtime.
    pub fn apply(&mut self, want: &BTreeMap<u16, Status>) {
        self.open.retain(|port, (_, task)| {
            let keep = want.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        self.failed.retain(|p| want.contains_key(p));
        for (port, status) in want {
            if let Some((tx, _)) = self.open.get(port) {
                tx.send_if_modified(|cur| {
                    let changed = cur != status;
                    *cur = status.clone();
                    changed
                });
                continue;
            }
            match bind(*port) {
                Ok(listener) => {
                    self.failed.remove(port);
                    let (tx, rx) = watch::channel(status.clone());
                    tracing::info!(
                        port,
                        service = %format!("{}/{}", status.namespace, status.name),
                        "health check node port open"
                    );
                    self.open
                        .insert(*port, (tx, tokio::spawn(serve(listener, rx))));
                }
                Err(e) => {
                    if self.failed.insert(*port) {
                        tracing::warn!(
                            port,
                            service = %format!("{}/{}", status.namespace, status.name),
                            "health check node port: cannot listen: {e}"
                        );
                    }
                }
            }
        }
    }

    /// The ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for (_, task) in self.open.values() {
            task.abort();
        }
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// How long a health checker may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8192;

async fn serve(listener: TcpListener, status: watch::Receiver<Status>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let response = status.borrow().response();
        tokio::spawn(async move {
            // Read the request head (ignored: every request gets the same answer), then answer
            // and close.
            let mut buf = vec![0u8; MAX_REQUEST];
            let mut filled = 0;
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                while filled < buf.len() {
                    match sock.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            })
            .await;
            if read.is_ok() && filled > 0 {
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(policy: &str, port: u64) -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                        "healthCheckNodePort": port, "ports": [{"port": 80}]}})
    }

    fn slices() -> Vec<Value> {
        vec![json!({"metadata": {"namespace": "default", "name": "web-1",
                     "labels": {"kubernetes.io/service-name": "web"}},
                    "endpoints": [
                        {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": true}},
                        {"addresses": ["10.244.1.3"], "nodeName": "n1", "conditions": {}},
                        {"addresses": ["10.244.1.4"], "nodeName": "n1",
                         "conditions": {"ready": false, "serving": true, "terminating": true}},
                        {"addresses": ["10.244.0.2"], "nodeName": "n0", "conditions": {"ready": true}}]})]
    }

    #[test]
    fn counts_ready_endpoints_on_this_node() {
        let w = wanted(&[svc("Local", 31000)], &slices(), "n1");
        assert_eq!(w[&31000].local_endpoints, 2);
        assert_eq!(w[&31000].name, "web");
        let w = wanted(&[svc("Local", 31000)], &slices(), "n2");
        assert_eq!(w[&31000].local_endpoints, 0);
        assert!(wanted(&[svc("Cluster", 31000)], &slices(), "n1").is_empty());
    }

    #[test]
    fn answers_like_kube_proxy() {
        let mut st = Status {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let r = String::from_utf8(st.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"service": {"namespace": "default", "name": "web"},
                   "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        st.local_endpoints = 0;
        let r = String::from_utf8(st.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
    }

    #[tokio::test]
    async fn listeners_follow_what_is_wanted() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut hc = HealthChecks::default();
        let mut want = wanted(&[svc("Local", u64::from(port))], &slices(), "n1");
        hc.apply(&want);
        assert_eq!(hc.ports(), [port]);
        let get = || async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            std::io::Result::Ok(out)
        };
        assert!(get().await.unwrap().starts_with("HTTP/1.1 200 OK"));
        want.get_mut(&port).unwrap().local_endpoints = 0;
        hc.apply(&want);
        assert!(get().await.unwrap().starts_with("HTTP/1.1 503"));
        hc.apply(&BTreeMap::new());
        assert!(hc.ports().is_empty());
        // The listener is gone once its task is aborted.
        let mut closed = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "port {port} still accepts connections");
    }
}
