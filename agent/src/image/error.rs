//! The image subsystem's one error type. Every variant names the reference, digest or file
//! involved, so that a log line (or a pod's `ErrImagePull` message) is enough to act on.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest `{digest}`: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error("blob {digest}: content hashes to {actual} (corrupted or tampered)")]
    DigestMismatch { digest: String, actual: String },

    #[error("blob {digest}: size is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("blob {digest} is not in the image store")]
    BlobNotFound { digest: String },

    #[error("blob {digest} is larger than {limit} bytes, refusing to read it into memory")]
    BlobTooLarge { digest: String, limit: u64 },

    #[error("{what} {digest}: invalid JSON: {source}")]
    InvalidJson {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{context}: unsupported: {reason}")]
    Unsupported { context: String, reason: String },

    #[error("{context}: {reason}")]
    InvalidImage { context: String, reason: String },

    #[error("layer {digest}: unsafe entry `{entry}`: {reason}")]
    UnsafePath {
        digest: String,
        entry: String,
        reason: &'static str,
    },

    #[error(
        "layer {digest}: uncompressed content hashes to {actual}, the image config says {diff_id}"
    )]
    DiffIdMismatch {
        digest: String,
        diff_id: String,
        actual: String,
    },

    #[error("layer {digest}: reading the archive")]
    Layer {
        digest: String,
        #[source]
        source: io::Error,
    },

    #[error("no image `{reference}` in the store")]
    NotFound { reference: String },

    /// The registry (or the way to it) failed a pull: `message` is the registry's own error
    /// message when it sent one (`manifest unknown`), else the HTTP or connection error.
    #[error("pulling {reference}: {message}")]
    Pull { reference: String, message: String },

    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }
}
