//! The runtime subsystem's one error type. Every variant names the container, file or command
//! involved, so a log line is enough to act on.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container `{id}`: invalid {field}: {reason}")]
    InvalidSpec {
        id: String,
        field: &'static str,
        reason: String,
    },

    #[error("invalid runtime option {field}: {reason}")]
    InvalidOptions { field: &'static str, reason: String },

    #[error("container `{id}` already exists")]
    AlreadyExists { id: String },

    #[error("container `{id}` not found")]
    NotFound { id: String },

    #[error("container `{id}`: {op} {path}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("container `{id}`: building the OCI spec")]
    Spec {
        id: String,
        #[source]
        source: oci_spec::OciSpecError,
    },

    #[error("container `{id}`: running `{command}`")]
    Spawn {
        id: String,
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("container `{id}`: `{command}` failed ({status}): {stderr}")]
    Command {
        id: String,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("container `{id}` failed to start: {reason}")]
    StartFailed { id: String, reason: String },

    #[error("container `{id}`: timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        id: String,
        what: &'static str,
        waited_ms: u128,
    },

    #[error("container `{id}`: unexpected output of `{command}`: {reason}")]
    BadOutput {
        id: String,
        command: String,
        reason: String,
    },
}
