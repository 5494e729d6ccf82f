//! The agent's own endpoint: container logs and exec, served over mutual TLS to control-plane
//! members only (the API server proxies `ferry logs` and `ferry exec` here, after its RBAC
//! check). The serving certificate is the node's own, which names the node; callers must
//! present a certificate of the cluster CA in the members' group.
//!
//! Logs are the files the pod sync loop keeps per container instance
//! (`pods/<uid>/logs/<container>/<attempt>.log`); exec runs through the container runtime.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use ferry_api::proto::{
    ExecChunk, LogChunk, PodExecRequest, PodLogsRequest,
    agent_server::{Agent, AgentServer},
};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::{Request, Response, Status};

use crate::pods::{
    Shared,
    plan::{self, Instance},
};

/// Largest exec output returned (the command keeps running past it; output is cut).
pub const EXEC_OUTPUT_MAX: usize = 4 << 20;
const CHUNK: usize = 64 << 10;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct AgentService {
    shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Only control-plane members may call: the client certificate (already verified against the
/// cluster CA by TLS) must name the members' group.
fn members_only(req: Request<()>) -> Result<Request<()>, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let ok = certs.first().is_some_and(|der| {
        x509_parser::parse_x509_certificate(der.as_ref()).is_ok_and(|(_, cert)| {
            cert.subject()
                .iter_organization()
                .any(|o| o.as_str() == Ok(ferry_api::client::GROUP_MEMBERS))
        })
    });
    if ok {
        Ok(req)
    } else {
        Err(Status::permission_denied(
            "only control-plane members may call a node agent; use `ferry logs` or `ferry exec` through the API server",
        ))
    }
}

fn valid_part(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() || v.contains('/') || v.contains('\0') || v == "." || v == ".." {
        return Err(Status::invalid_argument(format!(
            "{what}: invalid value {v:?}"
        )));
    }
    Ok(())
}

impl AgentService {
    fn log_dir(&self, uid: &str, container: &str) -> Result<PathBuf, Status> {
        valid_part("uid", uid)?;
        valid_part("container", container)?;
        Ok(self.shared.pods_dir.join(uid).join("logs").join(container))
    }

    async fn instances(&self, uid: &str) -> Vec<Instance> {
        let runtime = self.shared.runtime.clone();
        let prefix = format!("{uid}_");
        tokio::task::spawn_blocking(move || runtime.list(&prefix))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|l| l.iter().filter_map(Instance::from_info).collect())
            .unwrap_or_default()
    }
}

/// The log files of a container, oldest attempt first.
fn attempts(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The last `n` lines of `data`.
fn tail(data: &[u8], n: usize) -> &[u8] {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

#[tonic::async_trait]
impl Agent for AgentService {
    type LogsStream = BoxStream<LogChunk>;
    type ExecStream = BoxStream<ExecChunk>;

    async fn logs(
        &self,
        req: Request<PodLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let dir = self.log_dir(&r.uid, &r.container)?;
        let files = attempts(&dir);
        let pick = if r.previous {
            files.len().checked_sub(2).map(|i| files[i].clone())
        } else {
            files.last().cloned()
        };
        let Some((attempt, path)) = pick else {
            return Err(Status::not_found(if r.previous {
                format!(
                    "previous terminated container {:?} in pod {:?} not found",
                    r.container, r.pod
                )
            } else {
                format!(
                    "container {:?} in pod {:?} has not started yet (no log)",
                    r.container, r.pod
                )
            }));
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("opening {}: {e}", path.display())))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let first: Vec<u8> = if r.tail_lines > 0 {
            tail(&data, r.tail_lines as usize).to_vec()
        } else {
            data.clone()
        };
        let mut offset = data.len() as u64;
        let follow = r.follow && !r.previous;
        let runtime = self.shared.runtime.clone();
        let id = plan::container_id(&r.uid, &r.container, attempt);
        let stream = async_stream(move |tx| async move {
            for c in first.chunks(CHUNK) {
                if tx.send(Ok(LogChunk { data: c.to_vec() })).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                let _ = file.seek(std::io::SeekFrom::Start(offset)).await;
                let n = file.read(&mut buf).await.unwrap_or(0);
                if n > 0 {
                    offset += n as u64;
                    if tx
                        .send(Ok(LogChunk {
                            data: buf[..n].to_vec(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                // Nothing new: stop once the container has exited (its output is complete).
                let rt = runtime.clone();
                let id = id.clone();
                let exited = tokio::task::spawn_blocking(move || rt.state(&id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_none_or(|i| i.status.is_exited());
                if exited {
                    let n = file.read(&mut buf).await.unwrap_or(0);
                    if n > 0 {
                        let _ = tx
                            .send(Ok(LogChunk {
                                data: buf[..n].to_vec(),
                            }))
                            .await;
                    }
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn exec(
        &self,
        req: Request<PodExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let r = req.into_inner();
        valid_part("uid", &r.uid)?;
        if r.command.is_empty() {
            return Err(Status::invalid_argument("command: required"));
        }
        let running = self
            .instances(&r.uid)
            .await
            .into_iter()
            .filter(|i| i.container == r.container && i.is_running())
            .max_by_key(|i| i.attempt)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {:?} in pod {:?} is not running",
                    r.container, r.pod
                ))
            })?;
        let timeout = Duration::from_secs(match r.timeout_seconds {
            0 => 60,
            s => u64::from(s),
        });
        let runtime = self.shared.runtime.clone();
        let out = tokio::task::spawn_blocking(move || {
            runtime.exec(&running.id, &r.command, timeout, EXEC_OUTPUT_MAX)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut chunks: Vec<Result<ExecChunk, Status>> = out
            .output
            .chunks(CHUNK)
            .map(|c| {
                Ok(ExecChunk {
                    output: c.to_vec(),
                    exit_code: None,
                })
            })
            .collect();
        chunks.push(Ok(ExecChunk {
            output: Vec::new(),
            exit_code: Some(out.exit_code),
        }));
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// A stream fed by a task through a small channel (back-pressure: the task waits for the
/// reader).
fn async_stream<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Serves the agent endpoint on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: &ferry_api::client::TlsConfig,
    shared: Arc<Shared>,
) -> Result<(), String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .tls_config(config)
        .map_err(|e| format!("agent endpoint TLS: {e}"))?
        .add_service(tonic::service::interceptor::InterceptedService::new(
            AgentServer::new(AgentService { shared }),
            members_only,
        ))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("agent endpoint: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"", 1), b"");
    }
}
