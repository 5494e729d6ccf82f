//! The agent's identity: a node certificate (`system:node:<name>`, group `system:nodes`) signed
//! by the cluster CA, obtained once with a join token and kept in `<data-dir>/pki/`.

use std::path::{Path, PathBuf};

use ferry_api::client::TlsConfig;
use ferry_api::join::{self, JoinToken};
use ferry_api::proto::JoinNodeRequest;
use ferry_api::proto::bootstrap_client::BootstrapClient;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no node credentials in {0} yet: pass --token (from `ferry token create --usage node` or the first server's join-token file)"
    )]
    NoToken(PathBuf),
    #[error("{0}")]
    Join(#[from] join::JoinError),
    #[error("the cluster refused to join this node: {0}")]
    Refused(String),
}

fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

fn write_private(path: &Path, contents: &str) -> Result<(), CredentialsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

/// The saved credentials, if any.
pub fn load(data_dir: &Path) -> Result<Option<TlsConfig>, CredentialsError> {
    let dir = pki_dir(data_dir);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|source| CredentialsError::Io { path: p, source })
    };
    if !dir.join("node.crt").exists() {
        return Ok(None);
    }
    Ok(Some(TlsConfig {
        ca_pem: read("ca.crt")?,
        cert_pem: read("node.crt")?,
        key_pem: read("node.key")?,
    }))
}

/// Saved credentials, or new ones bought with `token` from the member at `server`.
pub async fn obtain(
    data_dir: &Path,
    server: &str,
    node_name: &str,
    token: Option<&str>,
) -> Result<TlsConfig, CredentialsError> {
    if let Some(tls) = load(data_dir)? {
        return Ok(tls);
    }
    let token = token.ok_or_else(|| CredentialsError::NoToken(pki_dir(data_dir)))?;
    let token = JoinToken::parse(token)?;
    let through = server.split(',').next().unwrap_or(server).trim();
    let ca_pem = join::fetch_pinned_ca(through, &token.ca_hash).await?;
    let (csr_pem, key_pem) = join::new_csr(node_name)?;
    let channel = join::bootstrap_channel(through, &ca_pem).await?;
    let resp = BootstrapClient::new(channel)
        .join_node(JoinNodeRequest {
            token: token.to_string(),
            csr_pem,
            node_name: node_name.to_string(),
        })
        .await
        .map_err(|s| CredentialsError::Refused(s.message().to_string()))?
        .into_inner();
    let dir = pki_dir(data_dir);
    write_private(&dir.join("node.key"), &key_pem)?;
    write_private(&dir.join("node.crt"), &resp.cert_pem)?;
    write_private(&dir.join("ca.crt"), &resp.ca_pem)?;
    Ok(TlsConfig {
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem,
    })
}
