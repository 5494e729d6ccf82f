//! A typed client for the Ferry API, used by the CLI, agents, controllers and tests.
//!
//! Takes one or more member addresses; when a member cannot be reached at all the call moves on
//! to the next one (nothing was sent, so that is safe for writes too). Errors keep the gRPC code
//! and the server's message, which already names the object and what to do.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto;
use crate::proto::cluster_client::ClusterClient;
use crate::proto::resources_client::ResourcesClient;

/// Largest response the client accepts (a big list).
const MAX_RESPONSE_BYTES: usize = 512 << 20;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub code: Code,
    pub message: String,
}

impl ClientError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code == Code::NotFound
    }
    pub fn is_already_exists(&self) -> bool {
        self.code == Code::AlreadyExists
    }
    pub fn is_conflict(&self) -> bool {
        self.code == Code::Aborted
    }
    /// The watch's start revision was compacted: relist, then watch from the list's revision.
    pub fn is_gone(&self) -> bool {
        self.code == Code::OutOfRange
    }
    pub fn is_unavailable(&self) -> bool {
        self.code == Code::Unavailable
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let message = if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_string()
        };
        Self {
            code: s.code(),
            message,
        }
    }
}

/// True when the member could not be reached, so the request never arrived.
fn unreachable(s: &tonic::Status) -> bool {
    // A connection that dies under a request (a member killed mid-call) surfaces as UNKNOWN
    // "transport error" over TLS, a refused connection as UNAVAILABLE.
    if !matches!(s.code(), Code::Unavailable | Code::Unknown) {
        return false;
    }
    let text = format!("{s:?}").to_ascii_lowercase();
    [
        "transport error",
        "connection refused",
        "tcp connect",
        "connection reset",
        "broken pipe",
        "dns error",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// The DNS name every Ferry serving certificate carries; clients verify servers against it.
pub const SERVER_NAME: &str = "ferry-apiserver";
/// The group of control-plane members' certificates (the only callers node agents accept).
pub const GROUP_MEMBERS: &str = "system:ferry-members";

/// Mutual-TLS material for talking to the cluster: its CA and a client certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsConfig {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsConfig {
    fn tonic(&self) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(SERVER_NAME);
        // Without a client certificate the client authenticates with a bearer token instead.
        if self.cert_pem.is_empty() {
            tls
        } else {
            tls.identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
        }
    }
}

/// A client configuration file (`~/.ferry/config`, or the `admin.yaml` a member writes at init):
/// where the cluster is and the credentials to use, in the spirit of a kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientConfig {
    /// Comma-separated member addresses.
    pub server: String,
    pub certificate_authority_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_data: String,
    /// A bearer token, used instead of a client certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl ClientConfig {
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_pem: self.certificate_authority_data.clone(),
            cert_pem: self.client_certificate_data.clone(),
            key_pem: self.client_key_data.clone(),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::new(
                Code::InvalidArgument,
                format!("reading {}: {e}", path.display()),
            )
        })?;
        serde_saphyr::from_str(&text).map_err(|e| {
            ClientError::new(
                Code::InvalidArgument,
                format!(
                    "{}: not a Ferry client config ({e}); expected server, certificate-authority-data, client-certificate-data, client-key-data",
                    path.display()
                ),
            )
        })
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED or BOOKMARK.
    pub kind: String,
    pub object: Value,
}

impl WatchEvent {
    pub fn resource_version(&self) -> &str {
        self.object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

/// The body of a `binding` patch: Kubernetes' Binding target, with the pod's expected
/// resourceVersion.
pub fn binding(node: &str, resource_version: &str) -> Value {
    let mut b = serde_json::json!({"target": {"kind": "Node", "name": node}});
    if !resource_version.is_empty() {
        b["metadata"] = serde_json::json!({"resourceVersion": resource_version});
    }
    b
}

/// Options of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// None: all namespaces.
    pub namespace: Option<String>,
    pub label_selector: String,
    pub field_selector: String,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Background (default), Foreground or Orphan.
    pub propagation: String,
    /// Precondition: delete only this version; empty for none.
    pub resource_version: String,
    /// Pods on a node: how long the containers get to stop; `Some(0)` removes at once.
    pub grace_period_seconds: Option<i64>,
}

/// Adds `authorization: Bearer <token>` to every request when the client has a token.
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A channel to one member with the client's authentication.
pub type AuthedChannel = tonic::service::interceptor::InterceptedService<Channel, BearerAuth>;

#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
    auth: BearerAuth,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| &e.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Result<Value, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::new(Code::Internal, format!("server sent invalid JSON: {e}")))
}

impl Client {
    /// A client for the members at `servers` (comma-separated `host:port`), authenticating with
    /// `tls`. Connections are made lazily.
    pub fn new(servers: &str, tls: &TlsConfig) -> Result<Self, ClientError> {
        let mut endpoints = Vec::new();
        for s in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let host = s.trim_start_matches("https://");
            let ch = Endpoint::from_shared(format!("https://{host}"))
                .map_err(|e| {
                    ClientError::new(Code::InvalidArgument, format!("server address {s:?}: {e}"))
                })?
                .tls_config(tls.tonic())
                .map_err(|e| {
                    ClientError::new(Code::InvalidArgument, format!("TLS configuration: {e}"))
                })?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .connect_lazy();
            endpoints.push((s.to_string(), ch));
        }
        if endpoints.is_empty() {
            return Err(ClientError::new(
                Code::InvalidArgument,
                "no server address: pass --server HOST:PORT or set `server:` in the client config",
            ));
        }
        Ok(Self {
            endpoints: Arc::new(endpoints),
            current: Arc::new(AtomicUsize::new(0)),
            auth: BearerAuth::default(),
        })
    }

    /// Authenticate with a bearer token (for clients without a certificate).
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            ClientError::new(Code::InvalidArgument, "token: not a valid header value")
        })?;
        self.auth = BearerAuth {
            header: Some(value),
        };
        Ok(self)
    }

    /// A client from a config file's server list and credentials.
    pub fn from_config(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let client = Self::new(&cfg.server, &cfg.tls())?;
        if cfg.token.is_empty() {
            Ok(client)
        } else {
            client.with_token(&cfg.token)
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.0.clone()).collect()
    }

    /// Runs `f` against the current member, moving to the next when a member is unreachable.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(AuthedChannel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let ch = AuthedChannel::new(self.endpoints[idx].1.clone(), self.auth.clone());
            match f(ch).await {
                Ok(v) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(s) if unreachable(&s) => {
                    let name = &self.endpoints[idx].0;
                    last = Some(ClientError::new(
                        s.code(),
                        format!("cannot reach the Ferry API at {name}: {}", s.message()),
                    ));
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::new(Code::Unavailable, "no server reachable")))
    }

    fn resources(ch: AuthedChannel) -> ResourcesClient<AuthedChannel> {
        ResourcesClient::new(ch)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(8 << 20)
    }

    /// One unary `Resources` call with member failover.
    async fn resources_call<Req, Resp, F, Fut>(&self, req: Req, f: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(ResourcesClient<AuthedChannel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(|ch| f(Self::resources(ch), req.clone()))
            .await
            .map(tonic::Response::into_inner)
    }

    /// One unary `Cluster` call with member failover.
    async fn cluster_call<Req, Resp, F, Fut>(&self, req: Req, f: F) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(ClusterClient<AuthedChannel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call(|ch| f(ClusterClient::new(ch), req.clone()))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn create(
        &self,
        kind: &str,
        namespace: &str,
        obj: &Value,
    ) -> Result<Value, ClientError> {
        let req = proto::CreateRequest {
            kind: kind.into(),
            object: to_vec(obj),
            namespace: namespace.into(),
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.create(r).await })
            .await?;
        parse(&r.object)
    }

    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let req = proto::GetRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.get(r).await })
            .await?;
        parse(&r.object)
    }

    /// A `List` object: `{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items": [...]}`.
    pub async fn list(&self, kind: &str, opts: &ListOptions) -> Result<Value, ClientError> {
        let req = proto::ListRequest {
            kind: kind.into(),
            namespace: opts.namespace.clone().unwrap_or_default(),
            label_selector: opts.label_selector.clone(),
            field_selector: opts.field_selector.clone(),
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.list(r).await })
            .await?;
        parse(&r.list)
    }

    /// Events after `resource_version` ("" for from now).
    pub async fn watch(
        &self,
        kind: &str,
        opts: &ListOptions,
        resource_version: &str,
        bookmarks: bool,
    ) -> Result<WatchStream, ClientError> {
        let req = proto::WatchRequest {
            kind: kind.into(),
            namespace: opts.namespace.clone().unwrap_or_default(),
            label_selector: opts.label_selector.clone(),
            field_selector: opts.field_selector.clone(),
            resource_version: resource_version.into(),
            allow_bookmarks: bookmarks,
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.watch(r).await })
            .await?;
        let stream = r.map(|item| match item {
            Ok(ev) => Ok(WatchEvent {
                kind: ev.r#type,
                object: parse(&ev.object)?,
            }),
            Err(s) => Err(ClientError::from(s)),
        });
        Ok(Box::pin(stream))
    }

    pub async fn update(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        self.update_sub(kind, obj, "").await
    }

    pub async fn update_status(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        self.update_sub(kind, obj, "status").await
    }

    async fn update_sub(&self, kind: &str, obj: &Value, sub: &str) -> Result<Value, ClientError> {
        let req = proto::UpdateRequest {
            kind: kind.into(),
            object: to_vec(obj),
            subresource: sub.into(),
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.update(r).await })
            .await?;
        parse(&r.object)
    }

    /// JSON merge patch (RFC 7386).
    pub async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        self.patch_sub(kind, namespace, name, patch, "").await
    }

    async fn patch_sub(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
        sub: &str,
    ) -> Result<Value, ClientError> {
        let req = proto::PatchRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            patch: to_vec(patch),
            subresource: sub.into(),
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.patch(r).await })
            .await?;
        parse(&r.object)
    }

    /// Binds pod `namespace/name` to `node` (Kubernetes' `pods/binding`): `spec.nodeName` and
    /// the PodScheduled condition in one write, only if the pod is still at `resource_version`
    /// (empty: any) and not bound yet.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> Result<Value, ClientError> {
        self.patch_sub(
            "Pod",
            namespace,
            name,
            &binding(node, resource_version),
            "binding",
        )
        .await
    }

    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        propagation: &str,
    ) -> Result<Value, ClientError> {
        let opts = DeleteOptions {
            propagation: propagation.into(),
            ..DeleteOptions::default()
        };
        self.delete_with(kind, namespace, name, &opts).await
    }

    pub async fn delete_with(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ClientError> {
        let req = proto::DeleteRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            propagation_policy: opts.propagation.clone(),
            resource_version: opts.resource_version.clone(),
            grace_period_seconds: opts.grace_period_seconds,
        };
        let r = self
            .resources_call(req, |mut c, r| async move { c.delete(r).await })
            .await?;
        parse(&r.object)
    }

    /// A container's log, as chunks (`ferry logs`); with `follow`, until the container exits.
    pub async fn pod_logs(
        &self,
        req: proto::PodLogsRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<Vec<u8>, ClientError>> + Send>>, ClientError> {
        let r = self
            .resources_call(req, |mut c, r| async move { c.pod_logs(r).await })
            .await?;
        Ok(Box::pin(
            r.map(|c| c.map(|c| c.data).map_err(ClientError::from)),
        ))
    }

    /// Runs a command in a container (`ferry exec`): its output and exit code.
    pub async fn pod_exec(
        &self,
        req: proto::PodExecRequest,
    ) -> Result<(Vec<u8>, i32), ClientError> {
        let mut r = self
            .resources_call(req, |mut c, r| async move { c.pod_exec(r).await })
            .await?;
        let mut output = Vec::new();
        let mut code = None;
        while let Some(chunk) = r.next().await {
            let chunk = chunk.map_err(ClientError::from)?;
            output.extend_from_slice(&chunk.output);
            if chunk.exit_code.is_some() {
                code = chunk.exit_code;
            }
        }
        let code = code.ok_or_else(|| {
            ClientError::new(Code::Unavailable, "the exec ended without an exit code")
        })?;
        Ok((output, code))
    }

    /// May the caller do `verb` on `kind` (`ferry auth can-i`)?
    pub async fn access_review(
        &self,
        verb: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        subresource: &str,
    ) -> Result<proto::AccessReviewResponse, ClientError> {
        let req = proto::AccessReviewRequest {
            verb: verb.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            subresource: subresource.into(),
        };
        self.resources_call(req, |mut c, r| async move { c.access_review(r).await })
            .await
    }

    /// A token for ServiceAccount `namespace`/`name` (Kubernetes' TokenRequest; `ferry create
    /// token`): for `audiences` (empty: the API's), valid `expiration_seconds` (0: one hour),
    /// bound to pod `bound_pod` if not empty.
    pub async fn create_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[String],
        expiration_seconds: i64,
        bound_pod: &str,
    ) -> Result<proto::ServiceAccountToken, ClientError> {
        let req = proto::ServiceAccountTokenRequest {
            namespace: namespace.into(),
            name: name.into(),
            audiences: audiences.to_vec(),
            expiration_seconds,
            bound_pod: bound_pod.into(),
        };
        self.resources_call(req, |mut c, r| async move {
            c.create_service_account_token(r).await
        })
        .await
    }

    /// New Secret encryption key; every Secret is re-encrypted with it (administrators only).
    pub async fn rotate_encryption_key(&self) -> Result<proto::RotateKeyResponse, ClientError> {
        self.resources_call(proto::RotateKeyRequest {}, |mut c, r| async move {
            c.rotate_encryption_key(r).await
        })
        .await
    }

    pub async fn create_token(
        &self,
        usages: &[String],
        ttl_seconds: u64,
    ) -> Result<proto::TokenInfo, ClientError> {
        let req = proto::CreateTokenRequest {
            usages: usages.to_vec(),
            ttl_seconds,
        };
        self.cluster_call(req, |mut c, r| async move { c.create_token(r).await })
            .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<proto::TokenInfo>, ClientError> {
        let r = self
            .cluster_call(proto::ListTokensRequest {}, |mut c, r| async move {
                c.list_tokens(r).await
            })
            .await?;
        Ok(r.tokens)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<proto::TokenInfo, ClientError> {
        let req = proto::RevokeTokenRequest { id: id.into() };
        self.cluster_call(req, |mut c, r| async move { c.revoke_token(r).await })
            .await
    }

    pub async fn members(&self) -> Result<proto::MembersResponse, ClientError> {
        self.cluster_call(proto::MembersRequest {}, |mut c, r| async move {
            c.members(r).await
        })
        .await
    }

    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
    ) -> Result<proto::MembersResponse, ClientError> {
        let req = proto::AddMemberRequest {
            id,
            addr: addr.into(),
        };
        self.cluster_call(req, |mut c, r| async move { c.add_member(r).await })
            .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<proto::MembersResponse, ClientError> {
        let req = proto::RemoveMemberRequest { id };
        self.cluster_call(req, |mut c, r| async move { c.remove_member(r).await })
            .await
    }
}

/// The resource API as controllers and agents use it: implemented by the gRPC [`Client`] and,
/// inside a control-plane member, by an in-process adapter over the API server, so control loops
/// are written once against this interface (never against the store).
pub trait Api: Send + Sync {
    fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn list(
        &self,
        kind: &str,
        opts: &ListOptions,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn create(
        &self,
        kind: &str,
        namespace: &str,
        obj: &Value,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn update(
        &self,
        kind: &str,
        obj: &Value,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn update_status(
        &self,
        kind: &str,
        obj: &Value,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    /// Binds a pod to a node (see [`Client::bind`]).
    fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
    /// Changes after `resource_version` ("" for from now), without bookmarks.
    fn watch(
        &self,
        kind: &str,
        opts: &ListOptions,
        resource_version: &str,
    ) -> impl Future<Output = Result<WatchStream, ClientError>> + Send;
}

use std::future::Future;

impl Api for Client {
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        Client::get(self, kind, namespace, name).await
    }
    async fn list(&self, kind: &str, opts: &ListOptions) -> Result<Value, ClientError> {
        Client::list(self, kind, opts).await
    }
    async fn create(&self, kind: &str, namespace: &str, obj: &Value) -> Result<Value, ClientError> {
        Client::create(self, kind, namespace, obj).await
    }
    async fn update(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        Client::update(self, kind, obj).await
    }
    async fn update_status(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        Client::update_status(self, kind, obj).await
    }
    async fn watch(
        &self,
        kind: &str,
        opts: &ListOptions,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        Client::watch(self, kind, opts, resource_version, false).await
    }
    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> Result<Value, ClientError> {
        Client::bind(self, namespace, name, node, resource_version).await
    }
    async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        Client::patch(self, kind, namespace, name, patch).await
    }
    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        Client::delete(self, kind, namespace, name, "").await
    }
}
