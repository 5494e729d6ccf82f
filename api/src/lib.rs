//! ferry-api: the resource model every Ferry component shares.
//!
//! Owns resource types (Kubernetes shapes, via `k8s-openapi`), the kind registry, strict decoding
//! (unknown fields rejected with their path), defaulting, validation, label and field selectors,
//! the gRPC definitions and a typed client. It holds no server code and never touches the store.

pub mod client;
pub mod defaults;
pub mod error;
pub mod fieldpath;
pub mod informer;
pub mod join;
pub mod kinds;
pub mod manifest;
pub mod proto;
pub mod selector;
pub mod strict;
pub mod validation;
pub mod volumes;

pub use k8s_openapi;
