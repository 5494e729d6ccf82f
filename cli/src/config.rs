//! How the CLI reaches the cluster: the client config (`--config`, then `$FERRY_CONFIG`, then
//! `~/.ferry/config`) holds the server list and the mutual-TLS credentials; `--server`, then
//! `$FERRY_SERVER`, override its server list.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, ClientConfig};

/// `~/.ferry/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".ferry/config"))
}

pub fn client(server_flag: Option<&str>, config_flag: Option<&Path>) -> Result<Client> {
    let path = match config_flag {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("FERRY_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => default_path().context("HOME is not set: pass --config PATH")?,
        },
    };
    if !path.exists() {
        bail!(
            "no client config at {}: the first `ferry server` writes one there and to <data-dir>/admin.yaml; \
             pass --config PATH or set FERRY_CONFIG",
            path.display()
        );
    }
    let mut cfg = ClientConfig::load(&path)?;
    if let Some(s) = server_flag.filter(|s| !s.is_empty()) {
        cfg.server = s.to_string();
    } else if let Ok(s) = std::env::var("FERRY_SERVER")
        && !s.is_empty()
    {
        cfg.server = s;
    }
    Ok(Client::from_config(&cfg)?)
}
