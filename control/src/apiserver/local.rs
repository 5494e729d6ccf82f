//! The in-process API client: controllers running inside a member use the API server through
//! the same [`Api`] interface as remote clients (never the store), as trusted system callers.

use ferry_api::client::{Api, ClientError, ListOptions, WatchEvent, WatchStream};
use futures::StreamExt;
use serde_json::Value;

use super::objects::Subresource;
use super::{ApiError, ApiServer};

/// [`Api`] over this member's API server.
#[derive(Clone)]
pub struct LocalApi(pub ApiServer);

fn err(e: ApiError) -> ClientError {
    ClientError::from(tonic::Status::from(e))
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Api for LocalApi {
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.0.get(None, kind, namespace, name).await.map_err(err)
    }
    async fn list(&self, kind: &str, opts: &ListOptions) -> Result<Value, ClientError> {
        let ns = opts.namespace.as_deref().unwrap_or("");
        self.0
            .list(None, kind, ns, &opts.label_selector, &opts.field_selector)
            .await
            .map_err(err)
    }
    async fn create(&self, kind: &str, namespace: &str, obj: &Value) -> Result<Value, ClientError> {
        self.0
            .create(None, kind, namespace, &bytes(obj))
            .await
            .map_err(err)
    }
    async fn update(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        self.0
            .update(None, kind, &bytes(obj), Subresource::Main)
            .await
            .map_err(err)
    }
    async fn update_status(&self, kind: &str, obj: &Value) -> Result<Value, ClientError> {
        self.0
            .update(None, kind, &bytes(obj), Subresource::Status)
            .await
            .map_err(err)
    }
    async fn patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ClientError> {
        self.0
            .patch(
                None,
                kind,
                namespace,
                name,
                &bytes(patch),
                Subresource::Main,
            )
            .await
            .map_err(err)
    }
    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.0
            .delete(None, kind, namespace, name, &Default::default())
            .await
            .map_err(err)
    }
    async fn bind(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        resource_version: &str,
    ) -> Result<Value, ClientError> {
        let body = ferry_api::client::binding(node, resource_version);
        self.0
            .patch(
                None,
                "Pod",
                namespace,
                name,
                &bytes(&body),
                Subresource::Binding,
            )
            .await
            .map_err(err)
    }
    async fn watch(
        &self,
        kind: &str,
        opts: &ListOptions,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        let req = ferry_api::proto::WatchRequest {
            kind: kind.into(),
            namespace: opts.namespace.clone().unwrap_or_default(),
            label_selector: opts.label_selector.clone(),
            field_selector: opts.field_selector.clone(),
            resource_version: resource_version.into(),
            allow_bookmarks: false,
        };
        let stream = super::watch::start(self.0.node.clone(), self.0.encryptor.clone(), req)
            .await
            .map_err(err)?;
        Ok(Box::pin(stream.map(|item| match item {
            Ok(ev) => Ok(WatchEvent {
                kind: ev.r#type,
                object: serde_json::from_slice(&ev.object).map_err(|e| {
                    ClientError::from(tonic::Status::internal(format!("watch event: {e}")))
                })?,
            }),
            Err(s) => Err(ClientError::from(s)),
        })))
    }
}
