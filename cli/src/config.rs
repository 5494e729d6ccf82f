//! Where the CLI finds the API server: `--server`, then `FERRY_SERVER`, then `~/.ferry/config`
//! (YAML or JSON with a `server` field), then the local default.

use anyhow::{Context, Result};

pub const DEFAULT_SERVER: &str = "127.0.0.1:7420";

pub fn server_address(flag: Option<&str>) -> Result<String> {
    if let Some(s) = flag.filter(|s| !s.is_empty()) {
        return Ok(s.to_string());
    }
    if let Ok(s) = std::env::var("FERRY_SERVER")
        && !s.is_empty()
    {
        return Ok(s);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let path = std::path::Path::new(&home).join(".ferry/config");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value = serde_saphyr::from_str(&text)
                .with_context(|| format!("{}: not valid YAML or JSON", path.display()))?;
            return v
                .get("server")
                .and_then(|s| s.as_str())
                .map(String::from)
                .with_context(|| format!("{}: missing `server: HOST:PORT`", path.display()));
        }
    }
    Ok(DEFAULT_SERVER.to_string())
}
