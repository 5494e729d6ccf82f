//! `ferry server`: one control-plane member serving the API, cluster membership, raft traffic
//! and `/metrics` on a single listen address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::proto::JoinRequest;
use ferry_api::proto::cluster_server::ClusterServer;
use ferry_api::proto::raft_internal_client::RaftInternalClient;
use ferry_api::proto::raft_internal_server::RaftInternalServer;
use ferry_api::proto::resources_server::ResourcesServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::transport::Endpoint;

use crate::apiserver::metrics::Metrics;
use crate::apiserver::{ApiError, ApiServer, ClusterService, SYSTEM_NAMESPACES};
use crate::node::{Node, NodeConfig, RaftService};
use crate::store::NodeId;

/// Largest API request accepted (Kubernetes' limit is 3 MiB).
pub const MAX_REQUEST_BYTES: usize = 3 << 20;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address other members and clients use; defaults to `listen`.
    pub advertise: Option<String>,
    /// An existing member to join through. Ignored once this member belongs to a cluster.
    pub join: Option<String>,
    pub snapshot_logs: u64,
    pub history_retention: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
}

impl ServerOptions {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            advertise: None,
            join: None,
            snapshot_logs: 10_000,
            history_retention: 50_000,
            heartbeat_ms: 50,
            election_timeout_ms: (300, 600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Node(#[from] crate::node::NodeError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading or writing {path}: {source}")]
    Identity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("joining through {addr}: {message}")]
    Join { addr: String, message: String },
    #[error("serving: {0}")]
    Serve(String),
}

/// What a member remembers about itself across restarts.
#[derive(Serialize, Deserialize)]
struct Identity {
    id: NodeId,
}

fn identity_path(dir: &Path) -> PathBuf {
    dir.join("member.json")
}

fn load_identity(dir: &Path) -> Result<Option<Identity>, ServerError> {
    let path = identity_path(dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ServerError::Identity {
                path,
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServerError::Identity { path, source }),
    }
}

fn save_identity(dir: &Path, id: &Identity) -> Result<(), ServerError> {
    let path = identity_path(dir);
    std::fs::create_dir_all(dir).map_err(|source| ServerError::Identity {
        path: path.clone(),
        source,
    })?;
    let bytes = serde_json::to_vec(id).map_err(|e| ServerError::Identity {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, bytes).map_err(|source| ServerError::Identity { path, source })
}

async fn join_call(through: &str, addr: &str, id: NodeId) -> Result<NodeId, ServerError> {
    let err = |message: String| ServerError::Join {
        addr: through.to_string(),
        message,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = async {
            let ch = Endpoint::from_shared(format!("http://{through}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = RaftInternalClient::new(ch);
            c.join(JoinRequest {
                addr: addr.to_string(),
                id,
            })
            .await
            .map(|r| r.into_inner().id)
            .map_err(|s| s.message().to_string())
        }
        .await;
        match attempt {
            Ok(id) => return Ok(id),
            Err(m) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(through, "join attempt failed, retrying: {m}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(m) => return Err(err(m)),
        }
    }
}

/// A running member.
pub struct Server {
    pub node: Arc<Node>,
    pub api: ApiServer,
    pub local_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Starts a member: opens its store, serves, and bootstraps or joins a cluster.
    pub async fn start(opts: ServerOptions) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: opts.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: opts.listen,
                source,
            })?;
        let advertise = opts
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());

        let identity = match load_identity(&opts.data_dir)? {
            Some(id) => id,
            None => {
                let id = match &opts.join {
                    Some(through) => join_call(through, &advertise, 0).await?,
                    None => 1,
                };
                let ident = Identity { id };
                save_identity(&opts.data_dir, &ident)?;
                ident
            }
        };
        let mut cfg = NodeConfig::new(identity.id, advertise.clone(), opts.data_dir.clone());
        cfg.snapshot_logs = opts.snapshot_logs;
        cfg.history_retention = opts.history_retention;
        cfg.heartbeat_ms = opts.heartbeat_ms;
        cfg.election_timeout_ms = opts.election_timeout_ms;
        let node = Node::start(cfg).await?;
        let metrics = Arc::new(Metrics::new());
        let api = ApiServer::new(node.clone(), metrics.clone());

        let metrics_node = node.clone();
        let metrics_router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let body = metrics.render(&metrics_node);
                async move { ([("content-type", "text/plain; version=0.0.4")], body) }
            }),
        );
        let routes = tonic::service::Routes::new(
            ResourcesServer::new(api.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(256 << 20),
        )
        .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
        .add_service(
            RaftInternalServer::new(RaftService { node: node.clone() })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        );
        let router = routes.into_axum_router().merge(metrics_router);
        let routes = tonic::service::Routes::from(router);
        let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let serve = tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .tcp_nodelay(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.wait_for(|s| *s).await;
                }),
        );

        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| ServerError::Serve(e.to_string()))?;
        if !initialized {
            match &opts.join {
                None => node.bootstrap().await?,
                Some(through) => {
                    join_call(through, &advertise, identity.id).await?;
                }
            }
        }
        tokio::spawn(ensure_system_namespaces(api.clone()));
        tracing::info!(id = identity.id, addr = %advertise, "member serving");
        Ok(Server {
            node,
            api,
            local_addr,
            shutdown,
            serve,
        })
    }

    /// Stops serving and shuts raft down.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.node.raft.shutdown().await;
        let _ = self.serve.await;
    }
}

/// Creates the namespaces that always exist, once a leader is there to accept them.
async fn ensure_system_namespaces(api: ApiServer) {
    for ns in SYSTEM_NAMESPACES {
        let body =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        loop {
            match api.create("Namespace", "", &bytes).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::debug!("creating namespace {ns}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Runs a member until SIGINT or SIGTERM.
pub async fn run(opts: ServerOptions) -> Result<(), ServerError> {
    let server = Server::start(opts).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Serve(e.to_string()))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}
