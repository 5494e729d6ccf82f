//! The API server: the `Resources` and `Cluster` gRPC services, the only user of the store.
//!
//! Owns request decoding and limits, strict decoding + defaulting + validation (via ferry-api),
//! server-owned metadata, optimistic concurrency on resourceVersion, finalizers and
//! deletionTimestamp, list/watch with selectors, and translating store results into gRPC
//! statuses with kubectl-like messages. Never panics on input: every malformed request becomes a
//! clear `Status`.

pub mod local;
pub mod metrics;
pub mod objects;
pub mod proxy;
mod services;
mod watch;

use std::sync::Arc;
use std::time::Instant;

use ferry_api::kinds::{self, KindInfo};
use ferry_api::proto::cluster_server::Cluster;
use ferry_api::proto::resources_server::Resources;
use ferry_api::proto::*;
use ferry_api::selector::{FieldSelector, LabelSelector};
use serde_json::Value;
use tonic::{Request, Response, Status};

use self::metrics::Metrics;
use self::objects::Subresource;
use crate::audit::AuditLog;
use crate::encryption::Encryptor;
use crate::node::{Node, NodeError};
use crate::pki::UserInfo;
use crate::ratelimit::RateLimiter;
use crate::rbac::{self, Attributes, RbacCache};
use crate::store::{Command, CommandResult, KeyValue, Precondition};

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "ferry-system", rbac::NODE_LEASE_NAMESPACE];

/// How many times a server-side read-modify-write (patch, unconditional update, finalizer
/// handling) retries on a concurrent change before giving up with a conflict.
const RMW_RETRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{kind} \"{name}\" is invalid: {errors}")]
    Invalid {
        kind: String,
        name: String,
        errors: String,
    },
    #[error("{plural} \"{name}\" not found")]
    NotFound { plural: String, name: String },
    #[error("{plural} \"{name}\" already exists")]
    AlreadyExists { plural: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { plural: String, name: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("object is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Gone(String),
    #[error("store unavailable: {0}")]
    Unavailable(#[from] NodeError),
    /// A node agent the request needs cannot be reached.
    #[error("{0}")]
    AgentUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => Status::invalid_argument(msg),
            ApiError::NotFound { .. } => Status::not_found(msg),
            ApiError::AlreadyExists { .. } => Status::already_exists(msg),
            ApiError::Conflict { .. } => Status::aborted(msg),
            ApiError::Forbidden(_) => Status::permission_denied(msg),
            ApiError::TooLarge { .. } => Status::resource_exhausted(msg),
            ApiError::Gone(_) => Status::out_of_range(msg),
            ApiError::Unavailable(_) | ApiError::AgentUnavailable(_) => Status::unavailable(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// What deleting a pod does (see [`ApiServer::pod_grace`]).
enum PodDeletion {
    Now,
    Pending,
    Graceful(i64),
}

/// The API server. One per member; all members serve every request.
#[derive(Clone)]
pub struct ApiServer {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    rbac: RbacCache,
    encryptor: Encryptor,
    audit: Option<Arc<AuditLog>>,
    limiter: Arc<RateLimiter>,
    service_range: services::ServiceRange,
    /// How this member calls node agents (logs, exec): its own certificate, the cluster CA.
    agent_tls: Option<Arc<ferry_api::client::TlsConfig>>,
    /// Issues ServiceAccount tokens (TokenRequest); `None` on a member without the CA key.
    sa_tokens: Option<crate::serviceaccount::Tokens>,
}

fn kind_info(name: &str) -> ApiResult<&'static KindInfo> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("kind: required".into()));
    }
    kinds::lookup(name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the server doesn't have a resource type \"{name}\" (known: {})",
            kinds::all()
                .iter()
                .map(|k| k.plural)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn parse_object(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.len() > objects::MAX_OBJECT_BYTES {
        return Err(ApiError::TooLarge {
            size: bytes.len(),
            limit: objects::MAX_OBJECT_BYTES,
        });
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("object is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("object must be a JSON object".into()));
    }
    Ok(v)
}

/// A stored value as an API object: opened if sealed, resourceVersion stamped.
pub(crate) fn decode_with(enc: &Encryptor, kv: &KeyValue) -> ApiResult<Value> {
    let plain = enc
        .open(&kv.key, &kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {}: {e}", kv.key)))?;
    objects::from_store(&plain, kv.mod_revision)
        .map_err(|e| ApiError::Internal(format!("stored object {} is corrupt: {e}", kv.key)))
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl ApiServer {
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>, encryptor: Encryptor) -> Self {
        let rbac = RbacCache::start(node.clone());
        Self {
            node,
            metrics,
            rbac,
            encryptor,
            audit: None,
            limiter: Arc::new(RateLimiter::new(0.0, 1.0)),
            service_range: services::ServiceRange::parse(services::DEFAULT_SERVICE_CIDR)
                .expect("the default service CIDR parses"),
            agent_tls: None,
            sa_tokens: None,
        }
    }

    /// A node agent may only touch pods bound to it (the node authorizer's object check).
    fn node_owns(&self, user: Option<&UserInfo>, info: &KindInfo, obj: &Value) -> ApiResult<()> {
        let Some(node) = user.and_then(rbac::node_of) else {
            return Ok(());
        };
        if info.kind != "Pod" {
            return Ok(());
        }
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if bound == node {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "pods \"{}\" is forbidden: node {node:?} can only modify pods bound to it (this one is bound to {:?})",
                objects::meta_str(obj, "name"),
                bound
            )))
        }
    }

    /// What a node may change of a PersistentVolume (`update` is all rbac lets it do): only a
    /// volume pinned to it, and only by adding or removing the local-volume cleanup finalizer.
    fn node_changes_volume(
        user: Option<&UserInfo>,
        info: &KindInfo,
        old: &Value,
        new: &Value,
    ) -> ApiResult<()> {
        let Some(node) = user.and_then(rbac::node_of) else {
            return Ok(());
        };
        if info.kind != "PersistentVolume" {
            return Ok(());
        }
        let name = objects::meta_str(old, "name");
        let forbidden = |why: &str| {
            Err(ApiError::Forbidden(format!(
                "persistentvolumes \"{name}\" is forbidden: node {node:?} {why}"
            )))
        };
        if !ferry_api::volumes::pinned_to(old, node) {
            return forbidden("may only change local volumes pinned to it");
        }
        use ferry_api::volumes::{LOCAL_VOLUME_CLEANUP, finalizers};
        let others = |v: &Value| -> Vec<String> {
            finalizers(v)
                .into_iter()
                .filter(|f| *f != LOCAL_VOLUME_CLEANUP)
                .map(String::from)
                .collect()
        };
        // Status is not written through the main resource, so it is not compared.
        let rest = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("status");
            }
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                for k in ["finalizers", "resourceVersion", "managedFields"] {
                    m.remove(k);
                }
            }
            v
        };
        if others(old) != others(new) || rest(old) != rest(new) {
            return forbidden(&format!(
                "may only add or remove the {LOCAL_VOLUME_CLEANUP} finalizer"
            ));
        }
        Ok(())
    }

    /// Lets this member issue ServiceAccount tokens.
    pub fn with_service_account_tokens(mut self, tokens: crate::serviceaccount::Tokens) -> Self {
        self.sa_tokens = Some(tokens);
        self
    }

    /// A token for ServiceAccount `namespace`/`name` (Kubernetes' TokenRequest): RBAC `create`
    /// on `serviceaccounts/token`; bound to pod `bound_pod` (which must run as that account)
    /// if given.
    pub async fn service_account_token(
        &self,
        user: Option<&UserInfo>,
        req: &ServiceAccountTokenRequest,
    ) -> ApiResult<(String, String)> {
        let info = kind_info("ServiceAccount")?;
        let ns = if req.namespace.is_empty() {
            "default"
        } else {
            req.namespace.as_str()
        };
        if req.name.is_empty() {
            return Err(ApiError::BadRequest(
                "name: required (the ServiceAccount)".into(),
            ));
        }
        self.authorize_sub(user, info, "create", "token", ns, &req.name)?;
        let expiration = match req.expiration_seconds {
            0 => crate::serviceaccount::DEFAULT_EXPIRATION_S,
            n if n < crate::serviceaccount::MIN_EXPIRATION_S => {
                return Err(ApiError::BadRequest(format!(
                    "expirationSeconds: Invalid value: {n}: may not specify a duration less than {} seconds",
                    crate::serviceaccount::MIN_EXPIRATION_S
                )));
            }
            n => n.min(crate::serviceaccount::MAX_EXPIRATION_S),
        };
        let tokens = self.sa_tokens.as_ref().ok_or_else(|| {
            ApiError::Internal("this member cannot issue service account tokens".into())
        })?;
        let sa = self.get(None, "ServiceAccount", ns, &req.name).await?;
        // A node agent gets tokens only bound to pods it runs (Kubernetes' node authorizer).
        let node = user.and_then(rbac::node_of);
        if node.is_some() && req.bound_pod.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "node {:?} may only request service account tokens bound to its own pods",
                node.unwrap_or_default()
            )));
        }
        let pod = if req.bound_pod.is_empty() {
            None
        } else {
            let pod = self.get(None, "Pod", ns, &req.bound_pod).await?;
            if let Some(node) = node
                && pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node)
            {
                return Err(ApiError::Forbidden(format!(
                    "node {node:?} may only request service account tokens bound to its own pods: pod {ns}/{} is not bound to it",
                    req.bound_pod
                )));
            }
            let runs_as = objects::meta_str(&pod, "name");
            let account = pod
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default");
            if account != req.name {
                return Err(ApiError::BadRequest(format!(
                    "pod {ns}/{runs_as} runs as service account {account:?}, not {:?}: a token can only be bound to a pod of its own account",
                    req.name
                )));
            }
            Some(pod)
        };
        let (token, exp) = tokens
            .issue(
                &sa,
                &req.audiences,
                expiration,
                pod.as_ref(),
                chrono::Utc::now(),
            )
            .map_err(ApiError::Internal)?;
        Ok((
            token,
            exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ))
    }

    /// Lets this member call node agents (logs, exec) with these credentials.
    pub fn with_agent_tls(mut self, tls: ferry_api::client::TlsConfig) -> Self {
        self.agent_tls = Some(Arc::new(tls));
        self
    }

    /// Allocate ClusterIPs from `cidr` instead of the default 10.96.0.0/12.
    pub fn with_service_cidr(mut self, cidr: &str) -> Result<Self, String> {
        self.service_range = services::ServiceRange::parse(cidr)?;
        Ok(self)
    }

    /// The node authorizer's graph check: a node may read a ConfigMap, Secret or PVC only when
    /// a pod bound to it references the object.
    async fn node_may_read(
        &self,
        user: Option<&UserInfo>,
        info: &KindInfo,
        ns: &str,
        name: &str,
    ) -> ApiResult<()> {
        let Some(node) = user.and_then(rbac::node_of) else {
            return Ok(());
        };
        if info.kind == "PersistentVolume" {
            return self.node_may_read_volume(node, name).await;
        }
        if !matches!(
            info.kind,
            "ConfigMap" | "Secret" | "PersistentVolumeClaim" | "ServiceAccount"
        ) {
            return Ok(());
        }
        let pods = kinds::lookup("Pod").expect("Pod is a known kind");
        self.node.read_barrier().await?;
        let range = self
            .node
            .sm
            .range(&objects::prefix(pods, Some(ns)))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for kv in &range.kvs {
            let pod = self.decode_stored(kv)?;
            if pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                && rbac::pod_references(&pod, info.kind, name)
            {
                return Ok(());
            }
        }
        Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: node {node:?} may only read {} referenced by pods bound to it",
            info.plural, info.plural
        )))
    }

    /// The node authorizer's graph check for PersistentVolumes: a node may read a volume only
    /// when a pod bound to it uses a claim whose `spec.volumeName` names the volume.
    async fn node_may_read_volume(&self, node: &str, name: &str) -> ApiResult<()> {
        let pods = kinds::lookup("Pod").expect("Pod is a known kind");
        let claims = kinds::lookup("PersistentVolumeClaim").expect("PVC is a known kind");
        let volumes = kinds::lookup("PersistentVolume").expect("PV is a known kind");
        self.node.read_barrier().await?;
        // A local volume pinned to the node: its agent cleans it up after deletion.
        if let Some(kv) = self.get_kv(&objects::key(volumes, "", name)).await?
            && ferry_api::volumes::pinned_to(&self.decode_stored(&kv)?, node)
        {
            return Ok(());
        }
        let range = self
            .node
            .sm
            .range(&objects::prefix(pods, None))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for kv in &range.kvs {
            let pod = self.decode_stored(kv)?;
            if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
                continue;
            }
            let ns = pod
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            for v in pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(claim) = v
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                else {
                    continue;
                };
                if let Some(kv) = self.get_kv(&objects::key(claims, ns, claim)).await?
                    && self
                        .decode_stored(&kv)?
                        .pointer("/spec/volumeName")
                        .and_then(Value::as_str)
                        == Some(name)
                {
                    return Ok(());
                }
            }
        }
        Err(ApiError::Forbidden(format!(
            "persistentvolumes \"{name}\" is forbidden: node {node:?} may only read persistentvolumes bound to claims of pods bound to it"
        )))
    }

    /// Records mutating requests in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Limits each non-administrator user to `qps` requests per second (burst `burst`).
    pub fn with_rate_limit(mut self, qps: f64, burst: f64) -> Self {
        self.limiter = Arc::new(RateLimiter::new(qps, burst));
        self
    }

    /// The caller, if within its rate limit.
    fn admit_caller<T>(&self, req: &Request<T>) -> Result<UserInfo, Status> {
        let user = caller(req)?;
        self.limiter
            .check(&user)
            .map_err(Status::resource_exhausted)?;
        Ok(user)
    }

    /// Audits a mutating request: who, what, when, result; never the body.
    #[allow(clippy::too_many_arguments)]
    fn audit_request(
        &self,
        user: &UserInfo,
        verb: &str,
        kind: &str,
        sub: &str,
        namespace: &str,
        name: &str,
        result: &ApiResult<Value>,
        start: Instant,
    ) {
        let Some(audit) = &self.audit else { return };
        let resource = kinds::lookup(kind).map_or(kind, |k| k.plural);
        let (ns, nm) = match result {
            Ok(obj) => (
                objects::meta_str(obj, "namespace").to_string(),
                objects::meta_str(obj, "name").to_string(),
            ),
            Err(_) => (namespace.to_string(), name.to_string()),
        };
        audit.entry(crate::audit::Entry {
            user,
            verb,
            resource,
            subresource: sub,
            namespace: &ns,
            name: &nm,
            code: code_name(result),
            took: start.elapsed(),
        });
    }

    fn decode_stored(&self, kv: &KeyValue) -> ApiResult<Value> {
        decode_with(&self.encryptor, kv)
    }

    /// The stored form of `obj` at `key`: Secrets are sealed (see `encryption`).
    fn store_value(&self, info: &KindInfo, key: &str, obj: &Value) -> ApiResult<String> {
        let json = objects::to_store(obj);
        if info.kind != "Secret" {
            return Ok(json);
        }
        self.encryptor
            .seal(key, &json)
            .map_err(|e| ApiError::Internal(format!("sealing the Secret: {e}")))
    }

    /// Adds a new Secret encryption key and re-seals every Secret with it.
    pub async fn rotate_encryption_key(&self) -> ApiResult<(String, u64)> {
        let id = self
            .encryptor
            .add_key()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let info = kinds::lookup("Secret").expect("Secret is a known kind");
        let mut count = 0;
        self.node.read_barrier().await?;
        let range = self
            .node
            .sm
            .range(&objects::prefix(info, None))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for kv in range.kvs {
            let mut current = kv;
            for _ in 0..RMW_RETRIES {
                if self.encryptor.is_current(&current.value) {
                    break;
                }
                let plain = self
                    .encryptor
                    .open(&current.key, &current.value)
                    .map_err(|e| ApiError::Internal(format!("{}: {e}", current.key)))?;
                let value = self
                    .encryptor
                    .seal(&current.key, &plain)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let cmd = Command::Put {
                    key: current.key.clone(),
                    value,
                    precondition: Precondition::ModRevision(current.mod_revision),
                };
                match self.write(cmd).await? {
                    CommandResult::Applied { .. } => {
                        count += 1;
                        break;
                    }
                    CommandResult::PreconditionFailed { current: Some(now) } => current = now,
                    _ => break,
                }
            }
        }
        Ok((id, count))
    }

    /// Checks `user` may do `verb` on the object; `None` is an in-process caller (trusted).
    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &self,
        user: Option<&UserInfo>,
        info: &KindInfo,
        verb: &str,
        sub: Subresource,
        namespace: &str,
        name: &str,
    ) -> ApiResult<()> {
        let sub = match sub {
            Subresource::Main => "",
            Subresource::Status => "status",
            Subresource::Binding => "binding",
        };
        self.authorize_sub(user, info, verb, sub, namespace, name)
    }

    /// [`ApiServer::authorize`] for any subresource (`log`, `exec`, ...).
    fn authorize_sub(
        &self,
        user: Option<&UserInfo>,
        info: &KindInfo,
        verb: &str,
        sub: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResult<()> {
        let Some(user) = user else { return Ok(()) };
        let attrs = Attributes {
            verb: verb.to_string(),
            api_group: info.group().to_string(),
            resource: info.plural.to_string(),
            subresource: sub.to_string(),
            namespace: if info.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        };
        rbac::authorize(&self.rbac.snapshot(), user, &attrs).map_err(ApiError::Forbidden)
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Strict decode against the kind the request names, then defaulting and validation.
    fn admit(
        &self,
        info: &'static KindInfo,
        obj: &mut Value,
        name_for_errors: &str,
    ) -> ApiResult<()> {
        let obj_map = obj.as_object_mut().expect("checked object");
        obj_map
            .entry("apiVersion")
            .or_insert_with(|| Value::String(info.api_version.into()));
        obj_map
            .entry("kind")
            .or_insert_with(|| Value::String(info.kind.into()));
        let invalid = |errors: String| ApiError::Invalid {
            kind: info.kind.to_string(),
            name: name_for_errors.to_string(),
            errors,
        };
        let (decoded_info, mut canonical) =
            ferry_api::strict::decode(obj).map_err(|e| invalid(e.to_string()))?;
        if decoded_info.kind != info.kind {
            return Err(ApiError::BadRequest(format!(
                "kind: object is a {} but the request is for {}",
                decoded_info.kind, info.plural
            )));
        }
        ferry_api::defaults::apply(info, &mut canonical);
        ferry_api::validation::validate(info, &canonical).map_err(|e| invalid(e.to_string()))?;
        *obj = canonical;
        Ok(())
    }

    async fn ensure_namespace(&self, info: &KindInfo, namespace: &str) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        let ns_info = kinds::lookup("Namespace").expect("Namespace is a known kind");
        let (kv, _) = self
            .node
            .sm
            .get(&objects::key(ns_info, "", namespace))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match kv {
            None => Err(ApiError::NotFound {
                plural: "namespaces".into(),
                name: namespace.into(),
            }),
            Some(kv) => {
                let ns = self.decode_stored(&kv)?;
                if !objects::meta_str(&ns, "deletionTimestamp").is_empty() {
                    return Err(ApiError::Forbidden(format!(
                        "unable to create new content in namespace {namespace} because it is being terminated"
                    )));
                }
                Ok(())
            }
        }
    }

    async fn write(&self, cmd: Command) -> ApiResult<CommandResult> {
        Ok(self.node.write(cmd).await?)
    }

    async fn get_kv(&self, key: &str) -> ApiResult<Option<KeyValue>> {
        self.node.read_barrier().await?;
        Ok(self
            .node
            .sm
            .get(key)
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .0)
    }

    /// Creates an object. Public so that in-process clients (bootstrap, controllers) share the path.
    pub async fn create(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        namespace: &str,
        bytes: &[u8],
    ) -> ApiResult<Value> {
        let info = kind_info(kind)?;
        let mut obj = parse_object(bytes)?;
        let req_name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let generate = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if req_name.is_empty() && !generate.is_empty() {
            objects::metadata_mut(&mut obj).insert(
                "name".into(),
                Value::String(objects::generated_name(&generate)),
            );
        }
        if info.namespaced {
            let ns = match objects::meta_str(&obj, "namespace") {
                "" if namespace.is_empty() => "default".to_string(),
                "" => namespace.to_string(),
                ns if !namespace.is_empty() && ns != namespace => {
                    return Err(ApiError::BadRequest(format!(
                        "metadata.namespace: the namespace of the object ({ns}) does not match the namespace of the request ({namespace})"
                    )));
                }
                ns => ns.to_string(),
            };
            objects::metadata_mut(&mut obj).insert("namespace".into(), Value::String(ns));
        }
        let name_for_errors = objects::meta_str(&obj, "name").to_string();
        self.admit(info, &mut obj, &name_for_errors)?;
        objects::prepare_create(info, &mut obj);
        let namespace = objects::meta_str(&obj, "namespace").to_string();
        self.authorize(
            user,
            info,
            "create",
            Subresource::Main,
            &namespace,
            &req_name,
        )?;
        self.ensure_namespace(info, &namespace).await?;
        let claims = if info.kind == "Service" {
            self.allocate_service(&mut obj).await?
        } else {
            Vec::new()
        };
        let result = self
            .create_stored(info, &namespace, &req_name, &generate, obj)
            .await;
        if result.is_err() {
            self.release_claims(&claims).await;
        }
        result
    }

    /// The write of a create, retrying generated names that collide.
    async fn create_stored(
        &self,
        info: &KindInfo,
        namespace: &str,
        req_name: &str,
        generate: &str,
        mut obj: Value,
    ) -> ApiResult<Value> {
        let namespace = namespace.to_string();
        for attempt in 0..3 {
            let name = objects::meta_str(&obj, "name").to_string();
            let value = self.store_value(info, &objects::key(info, &namespace, &name), &obj)?;
            if value.len() > objects::MAX_OBJECT_BYTES {
                return Err(ApiError::TooLarge {
                    size: value.len(),
                    limit: objects::MAX_OBJECT_BYTES,
                });
            }
            let key = objects::key(info, &namespace, &name);
            match self
                .write(Command::Put {
                    key,
                    value,
                    precondition: Precondition::Absent,
                })
                .await?
            {
                CommandResult::Applied { kv, .. } => return self.decode_stored(&kv),
                CommandResult::PreconditionFailed { .. } if req_name.is_empty() && attempt < 2 => {
                    // generateName collided: pick another suffix.
                    objects::metadata_mut(&mut obj).insert(
                        "name".into(),
                        Value::String(objects::generated_name(generate)),
                    );
                }
                CommandResult::PreconditionFailed { .. } => {
                    return Err(ApiError::AlreadyExists {
                        plural: info.plural.into(),
                        name,
                    });
                }
                CommandResult::Nothing | CommandResult::Batch(_) => {
                    return Err(ApiError::Internal("store returned no result".into()));
                }
            }
        }
        Err(ApiError::Internal(
            "could not generate a unique name".into(),
        ))
    }

    pub async fn get(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Value> {
        let info = kind_info(kind)?;
        let ns_for_authz = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.authorize(user, info, "get", Subresource::Main, ns_for_authz, name)?;
        self.node_may_read(user, info, ns_for_authz, name).await?;
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        match self.get_kv(&objects::key(info, ns, name)).await? {
            Some(kv) => self.decode_stored(&kv),
            None => Err(ApiError::NotFound {
                plural: info.plural.into(),
                name: name.into(),
            }),
        }
    }

    pub async fn list(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        namespace: &str,
        labels: &str,
        fields: &str,
    ) -> ApiResult<Value> {
        let info = kind_info(kind)?;
        self.authorize(user, info, "list", Subresource::Main, namespace, "")?;
        let label_sel = LabelSelector::parse(labels)
            .map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))?;
        let field_sel = FieldSelector::parse(fields)
            .map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?;
        self.node.read_barrier().await?;
        let ns = if namespace.is_empty() {
            None
        } else {
            Some(namespace)
        };
        let range = self
            .node
            .sm
            .range(&objects::prefix(info, ns))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut items = Vec::with_capacity(range.kvs.len());
        for kv in &range.kvs {
            let obj = self.decode_stored(kv)?;
            if label_sel.matches(&objects::labels(&obj)) && field_sel.matches(&obj) {
                items.push(obj);
            }
        }
        Ok(serde_json::json!({
            "apiVersion": info.api_version,
            "kind": info.list_kind(),
            "metadata": {"resourceVersion": range.revision.to_string()},
            "items": items,
        }))
    }

    /// Writes `obj` over the stored object at `expected` revision, deleting it instead when it
    /// carries a deletionTimestamp and no finalizers remain.
    async fn commit_update(
        &self,
        info: &KindInfo,
        key: String,
        obj: &Value,
        expected: u64,
    ) -> ApiResult<Result<Value, Option<KeyValue>>> {
        let name = objects::meta_str(obj, "name").to_string();
        // A pod in its grace period (deletionGracePeriodSeconds > 0) stays until its node
        // deletes it with grace 0; anything else marked for deletion goes with its last
        // finalizer.
        let graceful = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
        let finalize = !objects::meta_str(obj, "deletionTimestamp").is_empty()
            && !objects::finalizers_pending(info, obj)
            && !graceful;
        let cmd = if finalize {
            Command::Delete {
                key,
                precondition: Precondition::ModRevision(expected),
            }
        } else {
            let value = self.store_value(info, &key, obj)?;
            if value.len() > objects::MAX_OBJECT_BYTES {
                return Err(ApiError::TooLarge {
                    size: value.len(),
                    limit: objects::MAX_OBJECT_BYTES,
                });
            }
            Command::Put {
                key,
                value,
                precondition: Precondition::ModRevision(expected),
            }
        };
        match self.write(cmd).await? {
            CommandResult::Applied { kv, .. } => Ok(Ok(self.decode_stored(&kv)?)),
            CommandResult::PreconditionFailed { current: None } => Err(ApiError::NotFound {
                plural: info.plural.into(),
                name,
            }),
            CommandResult::PreconditionFailed { current } => Ok(Err(current)),
            CommandResult::Nothing | CommandResult::Batch(_) => {
                Err(ApiError::Internal("store returned no result".into()))
            }
        }
    }

    pub async fn update(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        bytes: &[u8],
        sub: Subresource,
    ) -> ApiResult<Value> {
        let info = kind_info(kind)?;
        let mut obj = parse_object(bytes)?;
        let name = objects::meta_str(&obj, "name").to_string();
        if name.is_empty() {
            return Err(ApiError::BadRequest("metadata.name: required".into()));
        }
        let namespace = match objects::meta_str(&obj, "namespace") {
            "" if info.namespaced => "default".to_string(),
            ns => ns.to_string(),
        };
        if info.namespaced {
            objects::metadata_mut(&mut obj)
                .insert("namespace".into(), Value::String(namespace.clone()));
        }
        let client_rv = objects::meta_str(&obj, "resourceVersion").to_string();
        let client_rv = if client_rv.is_empty() {
            None
        } else {
            Some(client_rv.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "metadata.resourceVersion: invalid value {client_rv:?}: must be a number"
                ))
            })?)
        };
        self.admit(info, &mut obj, &name)?;
        self.authorize(user, info, "update", sub, &namespace, &name)?;
        let key = objects::key(info, &namespace, &name);
        for _ in 0..RMW_RETRIES {
            let Some(current) = self.get_kv(&key).await? else {
                return Err(ApiError::NotFound {
                    plural: info.plural.into(),
                    name,
                });
            };
            if client_rv.is_some_and(|rv| rv != current.mod_revision) {
                return Err(ApiError::Conflict {
                    plural: info.plural.into(),
                    name,
                });
            }
            let old = self.decode_stored(&current)?;
            self.node_owns(user, info, &old)?;
            Self::node_changes_volume(user, info, &old, &obj)?;
            let mut new = obj.clone();
            if info.kind == "Service" && sub == Subresource::Main {
                Self::keep_service_allocations(&old, &mut new)?;
            }
            objects::prepare_update(&old, &mut new, sub);
            match self
                .commit_update(info, key.clone(), &new, current.mod_revision)
                .await?
            {
                Ok(v) => return Ok(v),
                Err(_) if client_rv.is_none() => continue,
                Err(_) => {
                    return Err(ApiError::Conflict {
                        plural: info.plural.into(),
                        name,
                    });
                }
            }
        }
        Err(ApiError::Conflict {
            plural: info.plural.into(),
            name,
        })
    }

    pub async fn patch(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &[u8],
        sub: Subresource,
    ) -> ApiResult<Value> {
        let info = kind_info(kind)?;
        let patch = parse_object(patch)?;
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        if sub == Subresource::Binding && info.kind != "Pod" {
            return Err(ApiError::BadRequest(format!(
                "subresource \"binding\": only pods have it, not {}",
                info.plural
            )));
        }
        // Kubernetes authorizes a binding as `create pods/binding`.
        let verb = if sub == Subresource::Binding {
            "create"
        } else {
            "patch"
        };
        self.authorize(user, info, verb, sub, ns, name)?;
        let key = objects::key(info, ns, name);
        let patch_rv = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        for _ in 0..RMW_RETRIES {
            let Some(current) = self.get_kv(&key).await? else {
                return Err(ApiError::NotFound {
                    plural: info.plural.into(),
                    name: name.into(),
                });
            };
            if patch_rv
                .as_ref()
                .is_some_and(|rv| *rv != current.mod_revision.to_string())
            {
                return Err(ApiError::Conflict {
                    plural: info.plural.into(),
                    name: name.into(),
                });
            }
            let old = self.decode_stored(&current)?;
            self.node_owns(user, info, &old)?;
            if sub == Subresource::Binding {
                let node = patch
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let new = objects::bind_pod(&old, node, &now).map_err(|why| ApiError::Invalid {
                    kind: "Binding".into(),
                    name: name.into(),
                    errors: why,
                })?;
                match self
                    .commit_update(info, key.clone(), &new, current.mod_revision)
                    .await?
                {
                    Ok(v) => return Ok(v),
                    Err(_) => continue,
                }
            }
            let mut new = old.clone();
            objects::merge_patch(&mut new, &patch);
            if !new.is_object() {
                return Err(ApiError::BadRequest("patch must leave an object".into()));
            }
            if objects::meta_str(&new, "name") != name
                || (info.namespaced && objects::meta_str(&new, "namespace") != ns)
            {
                return Err(ApiError::BadRequest(
                    "metadata.name and metadata.namespace cannot be patched".into(),
                ));
            }
            self.admit(info, &mut new, name)?;
            if info.kind == "Service" && sub == Subresource::Main {
                Self::keep_service_allocations(&old, &mut new)?;
            }
            objects::prepare_update(&old, &mut new, sub);
            match self
                .commit_update(info, key.clone(), &new, current.mod_revision)
                .await?
            {
                Ok(v) => return Ok(v),
                Err(_) => continue,
            }
        }
        Err(ApiError::Conflict {
            plural: info.plural.into(),
            name: name.into(),
        })
    }

    pub async fn delete(
        &self,
        user: Option<&UserInfo>,
        kind: &str,
        namespace: &str,
        name: &str,
        opts: &ferry_api::client::DeleteOptions,
    ) -> ApiResult<Value> {
        let (policy, rv, grace_period_seconds) = (
            opts.propagation.as_str(),
            opts.resource_version.as_str(),
            opts.grace_period_seconds,
        );
        let info = kind_info(kind)?;
        if grace_period_seconds.is_some_and(|g| g < 0) {
            return Err(ApiError::BadRequest(
                "gracePeriodSeconds: Invalid value: must be 0 or more".into(),
            ));
        }
        if !matches!(policy, "" | "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::BadRequest(format!(
                "propagationPolicy: Unsupported value: {policy:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            )));
        }
        if info.kind == "Namespace" && SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let ns = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.authorize(user, info, "delete", Subresource::Main, ns, name)?;
        let key = objects::key(info, ns, name);
        for _ in 0..RMW_RETRIES {
            let Some(current) = self.get_kv(&key).await? else {
                return Err(ApiError::NotFound {
                    plural: info.plural.into(),
                    name: name.into(),
                });
            };
            if !rv.is_empty() && rv != current.mod_revision.to_string() {
                return Err(ApiError::Conflict {
                    plural: info.plural.into(),
                    name: name.into(),
                });
            }
            let mut obj = self.decode_stored(&current)?;
            self.node_owns(user, info, &obj)?;
            if info.kind == "Pod" {
                match self.pod_grace(&obj, grace_period_seconds).await? {
                    PodDeletion::Now => {}
                    PodDeletion::Pending => return Ok(obj),
                    PodDeletion::Graceful(grace) => {
                        // The node's agent stops the containers, then deletes the pod with
                        // grace 0 (or a shorter grace period shortens the wait).
                        let deadline = chrono::Utc::now() + chrono::Duration::seconds(grace);
                        let m = objects::metadata_mut(&mut obj);
                        m.insert(
                            "deletionTimestamp".into(),
                            Value::String(
                                deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            ),
                        );
                        m.insert("deletionGracePeriodSeconds".into(), Value::from(grace));
                        match self
                            .commit_update(info, key.clone(), &obj, current.mod_revision)
                            .await?
                        {
                            Ok(v) => return Ok(v),
                            Err(_) => continue,
                        }
                    }
                }
            }
            if objects::meta_str(&obj, "deletionTimestamp").is_empty() {
                objects::mark_propagation(info, &mut obj, policy);
            }
            let result = if !objects::finalizers_pending(info, &obj) {
                let cmd = Command::Delete {
                    key: key.clone(),
                    precondition: Precondition::ModRevision(current.mod_revision),
                };
                match self.write(cmd).await? {
                    CommandResult::Applied { kv, .. } => {
                        let gone = self.decode_stored(&kv)?;
                        if info.kind == "Service" {
                            self.release_claims(&Self::service_claims(&gone)).await;
                        }
                        Ok(gone)
                    }
                    CommandResult::PreconditionFailed { current } => Err(current),
                    CommandResult::Nothing | CommandResult::Batch(_) => {
                        return Err(ApiError::Internal("store returned no result".into()));
                    }
                }
            } else {
                // Finalizers pending: mark for deletion; the last finalizer removed deletes it.
                let in_grace = obj
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    > 0;
                if !objects::meta_str(&obj, "deletionTimestamp").is_empty() && !in_grace {
                    return Ok(obj);
                }
                let m = objects::metadata_mut(&mut obj);
                m.insert(
                    "deletionTimestamp".into(),
                    Value::String(objects::now_rfc3339()),
                );
                m.insert("deletionGracePeriodSeconds".into(), Value::from(0));
                self.commit_update(info, key.clone(), &obj, current.mod_revision)
                    .await?
            };
            match result {
                Ok(v) => return Ok(v),
                Err(_) => continue,
            }
        }
        Err(ApiError::Conflict {
            plural: info.plural.into(),
            name: name.into(),
        })
    }

    /// How a pod is deleted, as in Kubernetes: a pod running on a node is first marked
    /// (deletionTimestamp = now + grace) so its agent can stop the containers and then delete
    /// it for good; pods that never ran on a node, have finished, or whose Node is gone go at
    /// once, as does a request with grace 0 (`--force`).
    async fn pod_grace(&self, pod: &Value, requested: Option<i64>) -> ApiResult<PodDeletion> {
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        let marked = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if requested == Some(0) || node.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            return Ok(PodDeletion::Now);
        }
        let nodes = kinds::lookup("Node").expect("Node is a known kind");
        if self.get_kv(&objects::key(nodes, "", node)).await?.is_none() {
            return Ok(PodDeletion::Now);
        }
        let grace = requested.unwrap_or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        Ok(match marked {
            // Already terminating: only a shorter grace period changes anything.
            Some(m) if grace >= m => PodDeletion::Pending,
            _ if grace == 0 => PodDeletion::Now,
            _ => PodDeletion::Graceful(grace),
        })
    }

    fn observe<T>(&self, method: &'static str, start: Instant, r: &ApiResult<T>) {
        let code = code_name(r);
        self.metrics.observe_request(method, code, start.elapsed());
        if let Err(e) = r {
            tracing::debug!(method, code, error = %e, "request failed");
        }
    }
}

fn subresource(s: &str) -> Result<Subresource, Status> {
    match s {
        "" => Ok(Subresource::Main),
        "status" => Ok(Subresource::Status),
        "binding" => Ok(Subresource::Binding),
        other => Err(Status::invalid_argument(format!(
            "subresource: unsupported value {other:?}: supported: \"status\", \"binding\" (pods, patch only)"
        ))),
    }
}

fn object_response(r: ApiResult<Value>) -> Result<Response<ObjectResponse>, Status> {
    r.map(|v| {
        Response::new(ObjectResponse {
            object: to_bytes(&v),
        })
    })
    .map_err(Status::from)
}

/// `metadata.name` of a request body, for auditing a failed request.
fn request_name(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default()
}

/// The gRPC code name of a result, for metrics and the audit log.
fn code_name<T>(r: &ApiResult<T>) -> &'static str {
    match r {
        Ok(_) => "OK",
        Err(e) => match e {
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => "InvalidArgument",
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Aborted",
            ApiError::Forbidden(_) => "PermissionDenied",
            ApiError::TooLarge { .. } => "ResourceExhausted",
            ApiError::Gone(_) => "OutOfRange",
            ApiError::Unavailable(_) | ApiError::AgentUnavailable(_) => "Unavailable",
            ApiError::Internal(_) => "Internal",
        },
    }
}

/// The authenticated caller (put there by the interceptor in `auth`).
fn caller<T>(req: &Request<T>) -> Result<UserInfo, Status> {
    req.extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated user on this request"))
}

#[tonic::async_trait]
impl Resources for ApiServer {
    type PodLogsStream = proxy::ProxyStream<ferry_api::proto::LogChunk>;
    type PodExecStream = proxy::ProxyStream<ferry_api::proto::ExecChunk>;

    async fn pod_logs(
        &self,
        req: Request<ferry_api::proto::PodLogsRequest>,
    ) -> Result<Response<Self::PodLogsStream>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let r = self.proxy_logs(Some(&user), req.into_inner()).await;
        self.observe("pod_logs", start, &r);
        r.map(Response::new).map_err(Status::from)
    }

    async fn pod_exec(
        &self,
        req: Request<ferry_api::proto::PodExecRequest>,
    ) -> Result<Response<Self::PodExecStream>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let (ns, name) = (req.namespace.clone(), req.pod.clone());
        let r = self.proxy_exec(Some(&user), req).await;
        self.observe("pod_exec", start, &r);
        // Audited as `create pods/exec` (the command itself is not recorded, like a body).
        let outcome: ApiResult<Value> = match &r {
            Ok(_) => Ok(Value::Null),
            Err(e) => Err(proxy::echo(e)),
        };
        self.audit_request(&user, "create", "Pod", "exec", &ns, &name, &outcome, start);
        let r = r.map_err(Status::from);
        r.map(Response::new)
    }

    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let r = ApiServer::create(self, Some(&user), &req.kind, &req.namespace, &req.object).await;
        self.observe("create", start, &r);
        let name = if r.is_err() && self.audit.is_some() {
            request_name(&req.object)
        } else {
            String::new()
        };
        self.audit_request(
            &user,
            "create",
            &req.kind,
            "",
            &req.namespace,
            &name,
            &r,
            start,
        );
        object_response(r)
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ObjectResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let r = ApiServer::get(self, Some(&user), &req.kind, &req.namespace, &req.name).await;
        self.observe("get", start, &r);
        object_response(r)
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let r = ApiServer::list(
            self,
            Some(&user),
            &req.kind,
            &req.namespace,
            &req.label_selector,
            &req.field_selector,
        )
        .await;
        self.observe("list", start, &r);
        r.map(|v| Response::new(ListResponse { list: to_bytes(&v) }))
            .map_err(Status::from)
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let r = match kind_info(&req.kind).and_then(|info| {
            self.authorize(
                Some(&user),
                info,
                "watch",
                Subresource::Main,
                &req.namespace,
                "",
            )
        }) {
            Ok(()) => watch::start(self.node.clone(), self.encryptor.clone(), req).await,
            Err(e) => Err(e),
        };
        self.observe("watch", start, &r);
        r.map(Response::new).map_err(Status::from)
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let sub = subresource(&req.subresource)?;
        let r = ApiServer::update(self, Some(&user), &req.kind, &req.object, sub).await;
        self.observe("update", start, &r);
        let name = if r.is_err() && self.audit.is_some() {
            request_name(&req.object)
        } else {
            String::new()
        };
        self.audit_request(
            &user,
            "update",
            &req.kind,
            &req.subresource,
            "",
            &name,
            &r,
            start,
        );
        object_response(r)
    }

    async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<ObjectResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let sub = subresource(&req.subresource)?;
        let r = ApiServer::patch(
            self,
            Some(&user),
            &req.kind,
            &req.namespace,
            &req.name,
            &req.patch,
            sub,
        )
        .await;
        self.observe("patch", start, &r);
        self.audit_request(
            &user,
            "patch",
            &req.kind,
            &req.subresource,
            &req.namespace,
            &req.name,
            &r,
            start,
        );
        object_response(r)
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<ObjectResponse>, Status> {
        let start = Instant::now();
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        let r = ApiServer::delete(
            self,
            Some(&user),
            &req.kind,
            &req.namespace,
            &req.name,
            &ferry_api::client::DeleteOptions {
                propagation: req.propagation_policy.clone(),
                resource_version: req.resource_version.clone(),
                grace_period_seconds: req.grace_period_seconds,
            },
        )
        .await;
        self.observe("delete", start, &r);
        self.audit_request(
            &user,
            "delete",
            &req.kind,
            "",
            &req.namespace,
            &req.name,
            &r,
            start,
        );
        object_response(r)
    }

    async fn rotate_encryption_key(
        &self,
        req: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyResponse>, Status> {
        require_admin(&req)?;
        let user = caller(&req)?;
        let start = Instant::now();
        let r = ApiServer::rotate_encryption_key(self).await;
        let audited = r
            .as_ref()
            .map(|_| Value::Null)
            .map_err(|e| ApiError::Internal(e.to_string()));
        self.audit_request(&user, "rotate-key", "secrets", "", "", "", &audited, start);
        let (key_id, reencrypted) = r.map_err(Status::from)?;
        Ok(Response::new(RotateKeyResponse {
            key_id,
            reencrypted,
        }))
    }

    async fn create_service_account_token(
        &self,
        req: Request<ServiceAccountTokenRequest>,
    ) -> Result<Response<ServiceAccountToken>, Status> {
        let user = self.admit_caller(&req)?;
        let start = Instant::now();
        let req = req.into_inner();
        let r = self.service_account_token(Some(&user), &req).await;
        let audited = r.as_ref().map(|_| Value::Null).map_err(|e| match e {
            ApiError::Forbidden(m) => ApiError::Forbidden(m.clone()),
            ApiError::NotFound { plural, name } => ApiError::NotFound {
                plural: plural.clone(),
                name: name.clone(),
            },
            ApiError::BadRequest(m) => ApiError::BadRequest(m.clone()),
            other => ApiError::Internal(other.to_string()),
        });
        self.audit_request(
            &user,
            "create",
            "serviceaccounts",
            "token",
            &req.namespace,
            &req.name,
            &audited,
            start,
        );
        let (token, expiration_timestamp) = r.map_err(Status::from)?;
        Ok(Response::new(ServiceAccountToken {
            token,
            expiration_timestamp,
        }))
    }

    async fn access_review(
        &self,
        req: Request<AccessReviewRequest>,
    ) -> Result<Response<AccessReviewResponse>, Status> {
        let user = self.admit_caller(&req)?;
        let req = req.into_inner();
        if !matches!(
            req.verb.as_str(),
            "get" | "list" | "watch" | "create" | "update" | "patch" | "delete" | "*"
        ) {
            return Err(Status::invalid_argument(format!(
                "verb: unsupported value {:?}: use get, list, watch, create, update, patch or delete",
                req.verb
            )));
        }
        let info = kind_info(&req.kind).map_err(Status::from)?;
        let sub = subresource(&req.subresource)?;
        let verdict = self.authorize(Some(&user), info, &req.verb, sub, &req.namespace, &req.name);
        Ok(Response::new(AccessReviewResponse {
            allowed: verdict.is_ok(),
            reason: verdict.err().map(|e| e.to_string()).unwrap_or_default(),
            user: user.name,
            groups: user.groups,
        }))
    }
}

/// Membership changes are for cluster administrators only.
fn require_admin<T>(req: &Request<T>) -> Result<(), Status> {
    let user = caller(req)?;
    if user.in_group(crate::pki::GROUP_MASTERS) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "user {:?} may not change control-plane membership: only cluster administrators (group {}) can",
            user.name,
            crate::pki::GROUP_MASTERS
        )))
    }
}

/// The `Cluster` service: membership of the control plane.
pub struct ClusterService {
    pub node: Arc<Node>,
    pub pki: Arc<crate::pki::Pki>,
}

const TOKEN_PREFIX: &str = "/_ferry/bootstrap-tokens/";

fn token_info(id: &str, rec: &crate::bootstrap::TokenRecord) -> TokenInfo {
    TokenInfo {
        id: id.to_string(),
        token: String::new(),
        usages: rec.usages.clone(),
        created_at: rec.created_at.clone(),
        expires_at: rec.expires_at.clone().unwrap_or_default(),
    }
}

impl ClusterService {
    fn snapshot(&self) -> MembersResponse {
        let m = self.node.raft.metrics().borrow().clone();
        let leader = m.current_leader.unwrap_or(0);
        let members = self
            .node
            .members()
            .into_iter()
            .map(|mi| Member {
                id: mi.id,
                addr: mi.addr,
                voter: mi.voter,
                leader: mi.id == leader,
            })
            .collect();
        MembersResponse {
            members,
            leader_id: leader,
            term: m.current_term,
            commit_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        require_admin(&req)?;
        let req = req.into_inner();
        let mut usages: Vec<&str> = req.usages.iter().map(String::as_str).collect();
        if usages.is_empty() {
            usages = vec!["member", "node"];
        }
        if let Some(bad) = usages.iter().find(|u| !matches!(**u, "member" | "node")) {
            return Err(Status::invalid_argument(format!(
                "usages: unsupported value {bad:?}: supported values: \"member\", \"node\""
            )));
        }
        let expires_at = (req.ttl_seconds > 0).then(|| {
            (chrono::Utc::now()
                + chrono::Duration::seconds(req.ttl_seconds.min(i64::MAX as u64) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let hash = self
            .pki
            .ca_hash()
            .map_err(|e| Status::internal(e.to_string()))?;
        let token = crate::pki::JoinToken::generate(&hash);
        crate::bootstrap::store_token(&self.node, &token, &usages, expires_at.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(TokenInfo {
            id: token.id.clone(),
            token: token.to_string(),
            usages: usages.iter().map(|s| s.to_string()).collect(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_at: expires_at.unwrap_or_default(),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        require_admin(&req)?;
        self.node
            .read_barrier()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let range = self
            .node
            .sm
            .range(TOKEN_PREFIX)
            .map_err(|e| Status::internal(e.to_string()))?;
        let tokens = range
            .kvs
            .iter()
            .filter_map(|kv| {
                let rec: crate::bootstrap::TokenRecord = serde_json::from_str(&kv.value).ok()?;
                Some(token_info(kv.key.trim_start_matches(TOKEN_PREFIX), &rec))
            })
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        require_admin(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Status::invalid_argument(
                "id: required (see `ferry token list`)",
            ));
        }
        let cmd = Command::Delete {
            key: format!("{TOKEN_PREFIX}{id}"),
            precondition: Precondition::Exists,
        };
        match self
            .node
            .write(cmd)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            CommandResult::Applied { kv, .. } => {
                let rec: crate::bootstrap::TokenRecord =
                    serde_json::from_str(&kv.value).map_err(|e| Status::internal(e.to_string()))?;
                Ok(Response::new(token_info(&id, &rec)))
            }
            _ => Err(Status::not_found(format!(
                "token {id:?} not found; see `ferry token list`"
            ))),
        }
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    async fn add_member(
        &self,
        req: Request<AddMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        require_admin(&req)?;
        let req = req.into_inner();
        if req.addr.is_empty() {
            return Err(Status::invalid_argument(
                "addr: required (host:port of the new member)",
            ));
        }
        let id = if req.id == 0 {
            self.node
                .allocate_member_id()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
        } else {
            req.id
        };
        self.node
            .add_member(id, req.addr)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(self.snapshot()))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        require_admin(&req)?;
        let id = req.into_inner().id;
        if !self.node.members().iter().any(|m| m.id == id) {
            return Err(Status::not_found(format!(
                "member {id} not found; see `ferry cluster members`"
            )));
        }
        self.node
            .remove_member(id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(self.snapshot()))
    }
}
