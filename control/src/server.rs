//! `ferry server`: one control-plane member serving the API, cluster membership, raft traffic,
//! bootstrap joins and `/metrics` on a single mutual-TLS listen address.
//!
//! First start without `--join` creates the cluster: its CA, this member's certificate, a join
//! token (`<data-dir>/join-token`) and an admin client config (`<data-dir>/admin.yaml`, also
//! written to `--admin-config`, by default `~/.ferry/config`). Later members join with the
//! token; every restart reuses what is in the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::client::ClientConfig;
use ferry_api::proto::JoinRequest;
use ferry_api::proto::bootstrap_server::BootstrapServer;
use ferry_api::proto::cluster_server::ClusterServer;
use ferry_api::proto::raft_internal_server::RaftInternalServer;
use ferry_api::proto::resources_server::ResourcesServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::apiserver::metrics::Metrics;
use crate::apiserver::{ApiError, ApiServer, ClusterService, SYSTEM_NAMESPACES};
use crate::auth;
use crate::bootstrap::{self, BootstrapService};
use crate::encryption::{self, Encryptor};
use crate::node::{Node, NodeConfig, RaftService};
use crate::pki::{self, Credentials, JoinToken, Pki};
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
    /// The join token (required with `join` on first start).
    pub token: Option<String>,
    /// Where to also write the admin client config when creating a cluster (None: nowhere).
    pub admin_config: Option<PathBuf>,
    pub snapshot_logs: u64,
    pub history_retention: u64,
    /// How long a node may go without renewing its Lease before it is marked unreachable.
    pub node_monitor_grace: Duration,
    /// `--controllers`: which control loops run (empty: all).
    pub controllers: Vec<String>,
    /// Static bearer tokens (Kubernetes' token file format).
    pub token_auth_file: Option<PathBuf>,
    /// Addresses for LoadBalancer Services (None: they stay pending).
    pub loadbalancer_pool: Option<String>,
    /// Where Service ClusterIPs come from.
    pub service_cidr: String,
    /// Pod network of the cluster and the size of each node's share (node IPAM).
    pub cluster_cidr: String,
    pub node_cidr_mask: u8,
    /// Per-user API rate limit (administrators and members exempt); 0 disables.
    pub rate_limit_qps: f64,
    pub rate_limit_burst: f64,
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
            token: None,
            admin_config: None,
            snapshot_logs: 10_000,
            history_retention: 50_000,
            token_auth_file: None,
            node_monitor_grace: Duration::from_secs(10),
            controllers: Vec::new(),
            loadbalancer_pool: None,
            service_cidr: "10.96.0.0/12".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask: 24,
            rate_limit_qps: 100.0,
            rate_limit_burst: 200.0,
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
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Bootstrap(#[from] bootstrap::JoinError),
    #[error("{0}")]
    Config(String),
    #[error("serving: {0}")]
    Serve(String),
}

/// What a member remembers about itself across restarts.
#[derive(Serialize, Deserialize)]
struct MemberIdentity {
    id: NodeId,
}

fn identity_path(dir: &Path) -> PathBuf {
    dir.join("member.json")
}

fn load_identity(dir: &Path) -> Result<Option<MemberIdentity>, ServerError> {
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

fn save_identity(dir: &Path, id: &MemberIdentity) -> Result<(), ServerError> {
    let path = identity_path(dir);
    let bytes = serde_json::to_string(id).map_err(|e| ServerError::Identity {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    pki::write_private(&path, &bytes)?;
    Ok(())
}

/// Where this member's cluster credentials come from.
struct Membership {
    id: NodeId,
    kek_hex: String,
    pki: Arc<Pki>,
    creds: Credentials,
    /// True when this start created the cluster.
    created: bool,
}

/// Loads this member's identity, or creates a cluster, or joins one with the token.
async fn establish(opts: &ServerOptions, advertise: &str) -> Result<Membership, ServerError> {
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::Identity {
        path: dir.clone(),
        source,
    })?;
    if let (Some(ident), Some(pki)) = (load_identity(dir)?, Pki::load(dir)?) {
        let creds = pki.member_credentials()?.ok_or_else(|| {
            ServerError::Config(format!(
                "{}: member.crt missing; restore it or start this member afresh with --join",
                Pki::dir_of(dir).display()
            ))
        })?;
        let kek_hex = encryption::load_kek(dir).map_err(|e| ServerError::Config(e.to_string()))?;
        return Ok(Membership {
            id: ident.id,
            kek_hex,
            pki: Arc::new(pki),
            creds,
            created: false,
        });
    }
    match &opts.join {
        None => {
            let pki = Pki::create(dir)?;
            let creds = pki.issue(&pki::member_subject(1, advertise))?;
            pki.save_member_credentials(&creds)?;
            let kek_hex =
                encryption::create_kek(dir).map_err(|e| ServerError::Config(e.to_string()))?;
            save_identity(dir, &MemberIdentity { id: 1 })?;
            Ok(Membership {
                id: 1,
                kek_hex,
                pki: Arc::new(pki),
                creds,
                created: true,
            })
        }
        Some(through) => {
            let token = opts.token.as_deref().ok_or_else(|| {
                ServerError::Config(
                    "--token: required with --join (the first member wrote it to <data-dir>/join-token)".into(),
                )
            })?;
            let token = JoinToken::parse(token).map_err(|e| ServerError::Config(e.to_string()))?;
            let joined = retry_join(through, &token, advertise).await?;
            let pki = Pki::install(dir, &joined.ca_pem, &joined.ca_key_pem)?;
            let creds = Credentials {
                cert_pem: joined.cert_pem,
                key_pem: joined.key_pem,
            };
            pki.save_member_credentials(&creds)?;
            pki::write_private(&encryption::kek_path(dir), &joined.kek_hex)?;
            save_identity(dir, &MemberIdentity { id: joined.id })?;
            Ok(Membership {
                id: joined.id,
                kek_hex: joined.kek_hex,
                pki: Arc::new(pki),
                creds,
                created: false,
            })
        }
    }
}

async fn retry_join(
    through: &str,
    token: &JoinToken,
    advertise: &str,
) -> Result<bootstrap::Joined, ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match bootstrap::join_member(through, token, advertise).await {
            Ok(j) => return Ok(j),
            // A wrong token or CA will not get better by waiting.
            Err(e @ (bootstrap::JoinError::CaMismatch { .. } | bootstrap::JoinError::Pki(_))) => {
                return Err(e.into());
            }
            Err(bootstrap::JoinError::Refused { message, .. }) if message.contains("token") => {
                return Err(ServerError::Join {
                    addr: through.into(),
                    message,
                });
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(through, "join attempt failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the cluster (through `through`) to add this member as a voter.
async fn add_self(
    node: &Node,
    through: &str,
    id: NodeId,
    advertise: &str,
) -> Result<(), ServerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = async {
            let mut c = node
                .pool()
                .raft_client(through)
                .map_err(|e| e.to_string())?;
            c.join(JoinRequest {
                addr: advertise.to_string(),
                id,
            })
            .await
            .map_err(|s| s.message().to_string())
        }
        .await;
        match attempt {
            Ok(_) => return Ok(()),
            Err(m) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(through, "adding this member failed, retrying: {m}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(m) => {
                return Err(ServerError::Join {
                    addr: through.into(),
                    message: m,
                });
            }
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
    /// Starts a member: establishes its identity, serves, and bootstraps or joins a cluster.
    pub async fn start(opts: ServerOptions) -> Result<Server, ServerError> {
        let tokens = match &opts.token_auth_file {
            Some(p) => auth::StaticTokens::load(p)
                .map_err(|e| ServerError::Config(format!("--token-auth-file: {e}")))?,
            None => auth::StaticTokens::default(),
        };
        let mut authn = auth::Authenticator {
            tokens,
            service_accounts: None,
        };
        let lb_pool = opts
            .loadbalancer_pool
            .as_deref()
            .map(crate::controllers::loadbalancer::Pool::parse)
            .transpose()
            .map_err(|e| ServerError::Config(format!("--loadbalancer-ip-pool: {e}")))?;
        let cidr_plan = crate::nodeipam::CidrPlan::parse(&opts.cluster_cidr, opts.node_cidr_mask)
            .map_err(|e| ServerError::Config(format!("--cluster-cidr: {e}")))?;
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
        let m = establish(&opts, &advertise).await?;

        let peer_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(m.pki.ca_pem()))
            .identity(Identity::from_pem(&m.creds.cert_pem, &m.creds.key_pem))
            .domain_name(pki::SERVER_NAME);
        let mut cfg = NodeConfig::new(m.id, advertise.clone(), opts.data_dir.clone(), peer_tls);
        cfg.snapshot_logs = opts.snapshot_logs;
        cfg.history_retention = opts.history_retention;
        cfg.heartbeat_ms = opts.heartbeat_ms;
        cfg.election_timeout_ms = opts.election_timeout_ms;
        let node = Node::start(cfg).await?;
        let metrics = Arc::new(Metrics::new());
        let encryptor = Encryptor::new(node.clone(), &m.kek_hex)
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let audit_path = opts.data_dir.join("audit.log");
        let audit =
            crate::audit::AuditLog::open(&audit_path).map_err(|source| ServerError::Identity {
                path: audit_path,
                source,
            })?;
        let sa_tokens = crate::serviceaccount::Tokens::new(m.pki.ca_key_pem());
        authn.service_accounts = Some(crate::serviceaccount::Authenticator {
            tokens: sa_tokens.clone(),
            node: node.clone(),
        });
        let api = ApiServer::new(node.clone(), metrics.clone(), encryptor.clone())
            .with_service_account_tokens(sa_tokens)
            .with_audit(Arc::new(audit))
            .with_rate_limit(opts.rate_limit_qps, opts.rate_limit_burst)
            .with_service_cidr(&opts.service_cidr)
            .map_err(|e| ServerError::Config(format!("--service-cluster-ip-range: {e}")))?
            .with_agent_tls(ferry_api::client::TlsConfig {
                ca_pem: m.pki.ca_pem().to_string(),
                cert_pem: m.creds.cert_pem.clone(),
                key_pem: m.creds.key_pem.clone(),
            });

        let metrics_node = node.clone();
        let metrics_router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move |req: axum::extract::Request| {
                let authed = client_cert_present(&req);
                let body = if authed {
                    metrics.render(&metrics_node)
                } else {
                    String::new()
                };
                async move {
                    if authed {
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "text/plain; version=0.0.4")],
                            body,
                        )
                    } else {
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            [("content-type", "text/plain")],
                            "client certificate required\n".to_string(),
                        )
                    }
                }
            }),
        );
        let routes = tonic::service::Routes::new(InterceptedService::new(
            ResourcesServer::new(api.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(256 << 20),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(ClusterService {
                node: node.clone(),
                pki: m.pki.clone(),
            }),
            authn.clone(),
        ))
        .add_service(InterceptedService::new(
            RaftInternalServer::new(RaftService { node: node.clone() })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            auth::members_only,
        ))
        .add_service(
            BootstrapServer::new(BootstrapService {
                node: node.clone(),
                pki: m.pki.clone(),
                kek_hex: m.kek_hex.clone(),
            })
            .max_decoding_message_size(64 << 10),
        );
        let router = routes.into_axum_router().merge(metrics_router);
        let routes = tonic::service::Routes::from(router);
        // The chain includes the CA so that a joining member can pin it against its token.
        let chain = format!("{}{}", m.creds.cert_pem, m.pki.ca_pem());
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, &m.creds.key_pem))
            .client_ca_root(Certificate::from_pem(m.pki.ca_pem()))
            .client_auth_optional(true);
        let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
        // tonic applies `tcp_nodelay` only to listeners it binds itself: set it on ours, or every
        // small response waits for the peer's delayed ACK (~40 ms).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let builder = tonic::transport::Server::builder()
            .tls_config(tls)
            .map_err(|e| ServerError::Serve(format!("TLS configuration: {e}")))?;
        let serve = tokio::spawn(
            builder
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
                Some(through) => add_self(&node, through, m.id, &advertise).await?,
            }
        }
        if m.created {
            encryptor
                .ensure_key()
                .await
                .map_err(|e| ServerError::Config(format!("Secret encryption key: {e}")))?;
            create_credentials(&opts, &node, &m.pki, &advertise).await?;
        }
        tokio::spawn(ensure_system_objects(api.clone()));
        crate::controllers::spawn_all(
            &api,
            crate::controllers::Settings {
                pod_cidrs: cidr_plan,
                node_monitor_grace: opts.node_monitor_grace,
                enabled: opts.controllers.clone(),
                lb_pool,
            },
        );
        tokio::spawn(async move {
            // Idempotent on every member: whoever comes first creates the Secret key ring.
            while let Err(e) = encryptor.ensure_key().await {
                tracing::debug!("creating the Secret encryption key: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        tracing::info!(id = m.id, addr = %advertise, "member serving");
        Ok(Server {
            node,
            api,
            local_addr,
            shutdown,
            serve,
        })
    }

    /// Stops serving and shuts raft down.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = self.node.raft.shutdown().await;
        // Graceful shutdown waits for open streams (watches) to end; clients that never hang up
        // (an in-process agent's watches, in `ferry up`) must not keep the member alive.
        if tokio::time::timeout(Duration::from_secs(3), &mut self.serve)
            .await
            .is_err()
        {
            self.serve.abort();
        }
    }
}

fn client_cert_present(req: &axum::extract::Request) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .is_some_and(|c| !c.is_empty())
}

/// A new cluster's join token and admin config.
async fn create_credentials(
    opts: &ServerOptions,
    node: &Node,
    pki: &Pki,
    advertise: &str,
) -> Result<(), ServerError> {
    let token = JoinToken::generate(&pki.ca_hash()?);
    bootstrap::store_token(node, &token, &["member", "node"], None).await?;
    let token_path = opts.data_dir.join("join-token");
    pki::write_private(&token_path, &format!("{token}\n"))?;
    let admin = pki.issue(&pki::Subject {
        common_name: pki::ADMIN_USER.into(),
        organizations: vec![pki::GROUP_MASTERS.into()],
        serve_hosts: vec![],
    })?;
    let cfg = ClientConfig {
        server: advertise.to_string(),
        certificate_authority_data: pki.ca_pem().to_string(),
        client_certificate_data: admin.cert_pem,
        client_key_data: admin.key_pem,
        token: String::new(),
    };
    let yaml = cfg.to_yaml();
    pki::write_private(&opts.data_dir.join("admin.yaml"), &yaml)?;
    if let Some(path) = &opts.admin_config {
        pki::write_private(path, &yaml)?;
        tracing::info!(path = %path.display(), "wrote the admin client config");
    }
    tracing::info!(
        "cluster created; add members with: ferry server --join {advertise} --token $(cat {})",
        token_path.display()
    );
    Ok(())
}

/// Creates the namespaces and default ClusterRoles that always exist, once a leader is there to
/// accept them.
async fn ensure_system_objects(api: ApiServer) {
    let mut objects: Vec<serde_json::Value> = SYSTEM_NAMESPACES
        .iter()
        .map(|ns| serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .collect();
    objects.extend(crate::rbac::default_cluster_roles());
    for body in objects {
        let kind = body["kind"].as_str().unwrap_or_default().to_string();
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        loop {
            match api.create(None, &kind, "", &bytes).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::debug!("creating {kind} {name}: {e}; retrying");
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
