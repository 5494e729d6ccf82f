//! A small busybox image built here, in Rust, as an OCI image archive (what
//! `ferry image import` reads): one uncompressed layer with the node's static busybox and a
//! symlink per applet, and an image config with a default `Cmd` of `sh`.
//! [`write_busybox_archive_with`] adds programs of this machine and the shared libraries they
//! load (the benchmarks' load generator and HTTP server).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

/// Applets linked into the image's `/bin`.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "sleep", "httpd", "nc", "wget", "dd", "head", "tr", "touch", "rm",
    "chmod", "mkdir", "env", "hostname", "true", "false", "ps", "kill", "grep", "ip", "ping",
    "nslookup", "date", "id", "test", "printf", "yes", "timeout",
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

/// The files that make `binary` run in an image: itself at `dest` (a path in the image), and
/// every shared library and the dynamic loader `ldd` lists, each at its path on this machine
/// (read through symlinks). Empty for a static binary but itself.
pub fn host_binary_files(binary: &Path, dest: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![(
        dest.trim_start_matches('/').to_string(),
        binary.to_path_buf(),
    )];
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !text.contains("not a dynamic executable") {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            if !Path::new(p).is_file() {
                bail!("{}: library {p} not found", binary.display());
            }
            files.push((p.trim_start_matches('/').to_string(), PathBuf::from(p)));
        } else if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
    }
    Ok(files)
}

fn layer(busybox: &[u8], extra: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    // Docker Hub's busybox has the mount points (dev, proc, sys) and var; runc then needs not
    // create them in every container's upper layer.
    for dir in [
        "bin/", "dev/", "etc/", "proc/", "root/", "sys/", "tmp/", "var/", "www/",
    ] {
        let mut h = header(dir, tar::EntryType::Directory, 0o755, 0);
        h.set_cksum();
        b.append(&h, std::io::empty())?;
        dirs.insert(dir.to_string());
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
    let mut written = BTreeSet::new();
    for (dest, src) in extra {
        if !written.insert(dest.clone()) {
            continue;
        }
        // Parent directories first, each once.
        let mut parent = String::new();
        for part in dest
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            parent.push_str(part);
            parent.push('/');
            if dirs.insert(parent.clone()) {
                let mut h = header(&parent, tar::EntryType::Directory, 0o755, 0);
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
        }
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mut h = header(dest, tar::EntryType::Regular, 0o755, data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..])?;
    }
    Ok(b.into_inner()?)
}

/// Writes an OCI image archive of busybox named `reference` (e.g. `localhost/test/busybox:1`)
/// to `path`.
pub fn write_busybox_archive(path: &Path, reference: &str) -> Result<()> {
    write_busybox_archive_with(path, reference, &[])
}

/// [`write_busybox_archive`] plus `extra` files: (path in the image, file on this machine),
/// e.g. from [`host_binary_files`].
pub fn write_busybox_archive_with(
    path: &Path,
    reference: &str,
    extra: &[(String, PathBuf)],
) -> Result<()> {
    let bb = std::fs::read(busybox().context("busybox-static is not installed")?)?;
    let layer = layer(&bb, extra)?;
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
