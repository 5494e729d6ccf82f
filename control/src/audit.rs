//! The audit log: one JSON line per mutating request (who, what, when, result), appended to
//! `<data-dir>/audit.log` (0600) by the member that served it. Request and response bodies are
//! never recorded, so Secret values cannot leak into it.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::pki::UserInfo;

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub user: &'a str,
    pub groups: &'a [String],
    pub verb: &'a str,
    pub resource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub subresource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    /// gRPC code name: OK, PermissionDenied, InvalidArgument, ...
    pub code: &'a str,
    pub latency_ms: f64,
}

pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record; a failing audit write is logged, never fatal to the request.
    pub fn record(&self, rec: &Record<'_>) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!("writing the audit log: {e}");
        }
    }
}

/// What a request did, for [`AuditLog::record`].
pub struct Entry<'a> {
    pub user: &'a UserInfo,
    pub verb: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub code: &'a str,
    pub took: std::time::Duration,
}

impl AuditLog {
    pub fn entry(&self, e: Entry<'_>) {
        self.record(&Record {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            user: &e.user.name,
            groups: &e.user.groups,
            verb: e.verb,
            resource: e.resource,
            subresource: e.subresource,
            namespace: e.namespace,
            name: e.name,
            code: e.code,
            latency_ms: e.took.as_secs_f64() * 1000.0,
        });
    }
}
