//! A small busybox image built here, in Rust, as an OCI image archive (what
//! `ferry image import` reads): one uncompressed layer with the node's static busybox and a
//! symlink per applet, and an image config with a default `Cmd` of `sh`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

/// Applets linked into the image's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "sleep", "httpd", "nc", "wget", "dd", "head", "tr", "touch", "rm",
    "chmod", "mkdir", "env", "hostname", "true", "false", "ps", "kill", "grep", "ip", "ping",
    "nslookup", "date", "id", "test", "printf", "yes",
];

/// The node's static busybox, if installed (`busybox-static`).
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("short path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn layer(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "www/", "root/"] {
        let mut h = header(dir, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let mut h = header(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        busybox.len() as u64,
    );
    h.set_cksum();
    b.append(&h, busybox)?;
    for a in APPLETS {
        let mut h = header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    for (path, data) in [("etc/passwd", &passwd[..]), ("etc/group", &group[..])] {
        let mut h = header(path, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, data)?;
    }
    let index = b"hello from ferry\n";
    let mut h = header(
        "www/index.html",
        tar::EntryType::Regular,
        0o644,
        index.len() as u64,
    );
    h.set_cksum();
    b.append(&h, &index[..])?;
    Ok(b.into_inner()?)
}

/// Writes an OCI image archive of busybox named `reference` (e.g. `localhost/test/busybox:1`)
/// to `path`.
pub fn write_busybox_archive(path: &Path, reference: &str) -> Result<()> {
    let bb = std::fs::read(busybox().context("busybox-static is not installed")?)?;
    let layer = layer(&bb)?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin", "IMAGE_VAR=from-image"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    }))?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    }))?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": reference}}],
    }))?;
    let mut out = tar::Builder::new(std::fs::File::create(path)?);
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut h = header(name, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        out.append(&h, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for (d, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        add(&format!("blobs/sha256/{d}"), data)?;
    }
    out.finish()?;
    Ok(())
}
