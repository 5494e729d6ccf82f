//! A pod's volumes on the node, under `<pod dir>/volumes/<name>/`:
//! - `emptyDir`: a directory (a tmpfs with `medium: Memory`, sized by `sizeLimit`), gone with
//!   the pod;
//! - `hostPath`: the node's path itself (created for `DirectoryOrCreate` / `FileOrCreate`,
//!   checked for the other types);
//! - `configMap` and `secret`: files written the way the kubelet's atomic writer does, so a
//!   container never sees a half-updated set: the files live in a timestamped directory
//!   `..<ts>`, a symlink `..data` points at the current one and is swapped with `rename(2)`, and
//!   every top-level name is a symlink through `..data`. Secrets are written to a tmpfs, never
//!   to the node's disk. Updated in place when the object changes.
//!
//! - `persistentVolumeClaim`: the directory of the PersistentVolume the claim is bound to
//!   (`spec.local.path` or `spec.hostPath.path`, see [`claim_path`]), created if missing and
//!   bind-mounted like a hostPath; it outlives the pod, so a recreated pod finds its data.
//!
//! Owns only the pod's `volumes/` directory; never removes anything through a hostPath or a
//! claim's volume.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Component, Path, PathBuf},
};

use ferry_api::k8s_openapi::api::core::v1::{KeyToPath, Volume};

/// Where a volume's content is, on the node, for bind mounts into containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub name: String,
    pub path: PathBuf,
    /// Must be mounted read-only (configMap, secret).
    pub readonly: bool,
}

/// A volume that cannot be set up (yet): the pod waits with this message.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume:?}: {op} {}: {source}", path.display())]
    Io {
        volume: String,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(volume: &str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let volume = volume.to_owned();
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        volume,
        op,
        path,
        source,
    }
}

/// The content of one file of a configMap or secret volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The files of a configMap or secret volume (relative path -> content), from the object's
/// data, `items` and modes. `Err` when a listed key is missing (unless optional).
pub fn projected_files(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<BTreeMap<PathBuf, FileContent>, VolumeError> {
    let default_mode = default_mode.unwrap_or(0o644) as u32 & 0o777;
    let mut out = BTreeMap::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(
                    PathBuf::from(k),
                    FileContent {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let rel = safe_relative(volume, &item.path)?;
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(VolumeError::Invalid {
                        volume: volume.into(),
                        message: format!("configmap or secret has no key {:?}", item.key),
                    });
                };
                out.insert(
                    rel,
                    FileContent {
                        data: v.clone(),
                        mode: item.mode.map_or(default_mode, |m| m as u32 & 0o777),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// A relative path without `..`, as `items[].path` and `subPath` must be.
pub fn safe_relative(volume: &str, p: &str) -> Result<PathBuf, VolumeError> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with("..")));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(VolumeError::Invalid {
            volume: volume.into(),
            message: format!("path {p:?} must be relative and must not contain '..'"),
        })
    }
}

/// Whether something is mounted at `path` (it is on another device than its parent).
pub(crate) fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (fs::metadata(path), path.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

/// Mounts a tmpfs at `dir` unless something is mounted there already.
fn ensure_tmpfs(volume: &str, dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(volume, "creating", dir))?;
    if is_mountpoint(dir) {
        return Ok(());
    }
    let opts = match size {
        Some(s) => format!("mode=0755,size={s}"),
        None => "mode=0755".to_owned(),
    };
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| io_err(volume, "mounting tmpfs at", dir)(io::Error::from(e)))
}

/// Writes `files` into `dir` with the atomic-writer layout (see the module docs). Returns
/// whether anything changed.
pub fn write_atomic(
    volume: &str,
    dir: &Path,
    files: &BTreeMap<PathBuf, FileContent>,
) -> Result<bool, VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(volume, "creating", dir))?;
    let data_link = dir.join("..data");
    if let Ok(current) = fs::read_link(&data_link)
        && same_content(&dir.join(&current), files)
    {
        return Ok(false);
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%9f"));
    let new_dir = dir.join(&stamp);
    fs::create_dir(&new_dir).map_err(io_err(volume, "creating", &new_dir))?;
    for (rel, content) in files {
        let path = new_dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(volume, "creating", parent))?;
        }
        fs::write(&path, &content.data).map_err(io_err(volume, "writing", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(content.mode))
            .map_err(io_err(volume, "chmod", &path))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link).map_err(io_err(volume, "linking", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(io_err(volume, "renaming", &data_link))?;
    // Top-level names through ..data; names no longer present go.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)
                .map_err(io_err(volume, "linking", &link))?;
        }
    }
    for entry in fs::read_dir(dir)
        .map_err(io_err(volume, "listing", dir))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with("..") {
            if name != stamp && name != "..data" {
                let _ = fs::remove_dir_all(&path);
            }
        } else if !tops.contains(&name) {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(true)
}

fn same_content(dir: &Path, files: &BTreeMap<PathBuf, FileContent>) -> bool {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            count += 1;
            let Ok(rel) = p.strip_prefix(dir) else {
                return false;
            };
            let Some(want) = files.get(rel) else {
                return false;
            };
            let mode = fs::metadata(&p).map(|m| m.permissions().mode() & 0o777);
            if fs::read(&p).ok().as_deref() != Some(&want.data[..]) || mode.ok() != Some(want.mode)
            {
                return false;
            }
        }
    }
    count == files.len()
}

/// Data of a configMap or secret volume, fetched by the worker: `None` when the object does
/// not exist.
pub type ObjectData = Option<BTreeMap<String, Vec<u8>>>;

/// Where a persistentVolumeClaim volume's data lives on `node`: the bound volume's
/// `spec.local.path` or `spec.hostPath.path`. The claim must be Bound to `pv` and `pv`'s
/// `claimRef` must name the claim back (a claim naming someone else's volume gets nothing), and
/// a volume with node affinity must allow `node` (by its `kubernetes.io/hostname` or name).
pub fn claim_path(
    pvc: &serde_json::Value,
    pv: &serde_json::Value,
    node: &str,
) -> Result<PathBuf, String> {
    let st = |v: &'_ serde_json::Value, p: &str| -> String {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let claim = st(pvc, "/metadata/name");
    if st(pvc, "/status/phase") != "Bound" || st(pvc, "/spec/volumeName").is_empty() {
        return Err(format!("persistentVolumeClaim {claim:?} is not bound yet"));
    }
    if st(pv, "/metadata/name") != st(pvc, "/spec/volumeName")
        || st(pv, "/spec/claimRef/uid") != st(pvc, "/metadata/uid")
        || st(pv, "/spec/claimRef/name") != claim
        || st(pv, "/spec/claimRef/namespace") != st(pvc, "/metadata/namespace")
    {
        return Err(format!(
            "persistentVolume {:?} is not bound to claim {claim:?}",
            st(pvc, "/spec/volumeName")
        ));
    }
    if let Some(terms) = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(serde_json::Value::as_array)
    {
        let fits = terms.iter().any(|t| {
            t["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| {
                    e["key"] != "kubernetes.io/hostname"
                        || match e["operator"].as_str() {
                            Some("In") => e["values"]
                                .as_array()
                                .is_some_and(|v| v.iter().any(|v| v == node)),
                            Some("NotIn") => !e["values"]
                                .as_array()
                                .is_some_and(|v| v.iter().any(|v| v == node)),
                            _ => true,
                        }
                })
        });
        if !fits {
            return Err(format!(
                "persistentVolume {:?} is not reachable from node {node:?} (node affinity)",
                st(pv, "/metadata/name")
            ));
        }
    }
    let path = [st(pv, "/spec/local/path"), st(pv, "/spec/hostPath/path")]
        .into_iter()
        .find(|p| !p.is_empty())
        .ok_or_else(|| {
            format!(
                "persistentVolume {:?}: only local and hostPath volumes are supported",
                st(pv, "/metadata/name")
            )
        })?;
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("volume path {} must be absolute", path.display()));
    }
    Ok(path)
}

/// Sets up (or refreshes) `volume` under `volumes_dir`, reading configMap and secret data from
/// `lookup(kind, name)` (kind `ConfigMap` or `Secret`) and the node path of a claim from
/// `claim(name)` (see [`claim_path`]).
pub fn prepare(
    volumes_dir: &Path,
    volume: &Volume,
    lookup: &dyn Fn(&str, &str) -> ObjectData,
    claim: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Result<Prepared, VolumeError> {
    let name = volume.name.as_str();
    let dir = volumes_dir.join(name);
    let invalid = |message: String| VolumeError::Invalid {
        volume: name.into(),
        message,
    };
    if let Some(e) = &volume.empty_dir {
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| ferry_api::validation::parse_quantity(&q.0))
                .map(|b| b as u64);
            ensure_tmpfs(name, &dir, size)?;
        } else {
            fs::create_dir_all(&dir).map_err(io_err(name, "creating", &dir))?;
        }
        return Ok(Prepared {
            name: name.into(),
            path: dir,
            readonly: false,
        });
    }
    if let Some(h) = &volume.host_path {
        let path = PathBuf::from(&h.path);
        if !path.is_absolute() {
            return Err(invalid(format!("hostPath {:?} must be absolute", h.path)));
        }
        let kind = h.type_.as_deref().unwrap_or("");
        let exists = fs::metadata(&path);
        match kind {
            "DirectoryOrCreate" => {
                fs::create_dir_all(&path).map_err(io_err(name, "creating", &path))?;
            }
            "FileOrCreate" if exists.is_err() => {
                if let Some(p) = path.parent() {
                    fs::create_dir_all(p).map_err(io_err(name, "creating", p))?;
                }
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(name, "creating", &path))?;
            }
            "Directory" if !exists.as_ref().is_ok_and(|m| m.is_dir()) => {
                return Err(invalid(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                )));
            }
            "File" if !exists.as_ref().is_ok_and(|m| m.is_file()) => {
                return Err(invalid(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                )));
            }
            "Socket" | "CharDevice" | "BlockDevice" if exists.is_err() => {
                return Err(invalid(format!(
                    "hostPath type check failed: {} does not exist",
                    h.path
                )));
            }
            _ => {}
        }
        return Ok(Prepared {
            name: name.into(),
            path,
            readonly: false,
        });
    }
    let (kind, obj, items, mode, optional) = if let Some(c) = &volume.config_map {
        (
            "ConfigMap",
            c.name.clone(),
            c.items.as_deref(),
            c.default_mode,
            c.optional == Some(true),
        )
    } else if let Some(s) = &volume.secret {
        (
            "Secret",
            s.secret_name.clone().unwrap_or_default(),
            s.items.as_deref(),
            s.default_mode,
            s.optional == Some(true),
        )
    } else if let Some(c) = &volume.persistent_volume_claim {
        let path = claim(&c.claim_name).map_err(invalid)?;
        fs::create_dir_all(&path).map_err(io_err(name, "creating", &path))?;
        return Ok(Prepared {
            name: name.into(),
            path,
            readonly: c.read_only == Some(true),
        });
    } else {
        return Err(invalid(
            "unsupported volume type: use emptyDir, hostPath, configMap or secret".into(),
        ));
    };
    let data = match lookup(kind, &obj) {
        Some(d) => d,
        None if optional => BTreeMap::new(),
        None => {
            return Err(invalid(format!(
                "{} {obj:?} not found",
                kind.to_ascii_lowercase()
            )));
        }
    };
    if kind == "Secret" {
        ensure_tmpfs(name, &dir, None)?;
    }
    let files = projected_files(name, &data, items, mode, optional)?;
    write_atomic(name, &dir, &files)?;
    Ok(Prepared {
        name: name.into(),
        path: dir,
        readonly: true,
    })
}

/// Where containers find their pod's ServiceAccount credentials, as in Kubernetes.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name of the prepared ServiceAccount volume (not a valid volume name, so no volume of the
/// pod can collide with it).
pub const SERVICE_ACCOUNT_VOLUME: &str = "kube-api-access.ferry";
/// Under the agent's data directory: one tmpfs holding every pod's ServiceAccount files (a
/// directory per pod uid). One mount for all pods, not one each: every mount costs each later
/// container start (runc reads the whole mount table).
pub const TOKEN_STORE: &str = "pod-tokens";

/// Mounts the token store (a 16 MiB tmpfs) at `dir` unless it is mounted.
pub fn ensure_token_store(dir: &Path) -> Result<(), VolumeError> {
    ensure_tmpfs(TOKEN_STORE, dir, Some(16 << 20))
}

/// What a pod's ServiceAccount volume holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountFiles {
    pub token: String,
    pub ca_pem: String,
    pub namespace: String,
}

/// Writes the pod's ServiceAccount volume into `dir` (its directory in the token store):
/// `token`, `ca.crt` and `namespace` (mode 0644 as the kubelet's default projected volume),
/// through the atomic writer so a renewed token replaces the old one in place.
pub fn prepare_service_account(
    dir: &Path,
    files: &ServiceAccountFiles,
) -> Result<Prepared, VolumeError> {
    let name = SERVICE_ACCOUNT_VOLUME;
    let dir = dir.to_path_buf();
    fs::create_dir_all(&dir).map_err(io_err(name, "creating", &dir))?;
    let file = |data: &str| FileContent {
        data: data.as_bytes().to_vec(),
        mode: 0o644,
    };
    let content: BTreeMap<PathBuf, FileContent> = [
        (PathBuf::from("token"), file(&files.token)),
        (PathBuf::from("ca.crt"), file(&files.ca_pem)),
        (PathBuf::from("namespace"), file(&files.namespace)),
    ]
    .into_iter()
    .collect();
    write_atomic(name, &dir, &content)?;
    Ok(Prepared {
        name: name.into(),
        path: dir,
        readonly: true,
    })
}

/// Unmounts whatever this module mounted under `volumes_dir` (tmpfs), so the directory can be
/// removed. Errors other than "not mounted" are returned.
pub fn unmount_all(volumes_dir: &Path) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(volumes_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if is_mountpoint(&p) {
            nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<PathBuf, FileContent> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    PathBuf::from(k),
                    FileContent {
                        data: v.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn claims_resolve_only_to_the_volume_bound_back() {
        use serde_json::json;
        let pvc = json!({"metadata": {"name": "data", "namespace": "default", "uid": "u1"},
            "spec": {"volumeName": "pv1"}, "status": {"phase": "Bound"}});
        let pv = json!({"metadata": {"name": "pv1"},
            "spec": {"local": {"path": "/srv/pv1"},
                     "claimRef": {"name": "data", "namespace": "default", "uid": "u1"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}});
        assert_eq!(claim_path(&pvc, &pv, "n1"), Ok(PathBuf::from("/srv/pv1")));
        assert!(claim_path(&pvc, &pv, "n2").is_err(), "another node");
        let mut other = pv.clone();
        other["spec"]["claimRef"]["uid"] = json!("someone-else");
        assert!(claim_path(&pvc, &other, "n1").is_err());
        let mut pending = pvc.clone();
        pending["status"]["phase"] = json!("Pending");
        assert!(claim_path(&pending, &pv, "n1").is_err());
        let mut host = pv.clone();
        host["spec"] = json!({"hostPath": {"path": "/srv/h"},
            "claimRef": {"name": "data", "namespace": "default", "uid": "u1"}});
        assert_eq!(claim_path(&pvc, &host, "n9"), Ok(PathBuf::from("/srv/h")));
    }

    #[test]
    fn atomic_writer_swaps_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("v");
        assert!(write_atomic("v", &v, &files(&[("a", "1"), ("sub/b", "2")])).unwrap());
        assert_eq!(fs::read_to_string(v.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(v.join("sub/b")).unwrap(), "2");
        assert!(
            fs::symlink_metadata(v.join("a"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Same content: nothing written.
        assert!(!write_atomic("v", &v, &files(&[("a", "1"), ("sub/b", "2")])).unwrap());
        // Update and removal.
        assert!(write_atomic("v", &v, &files(&[("a", "3")])).unwrap());
        assert_eq!(fs::read_to_string(v.join("a")).unwrap(), "3");
        assert!(fs::symlink_metadata(v.join("sub")).is_err());
        let stamps = fs::read_dir(&v)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(stamps, 1, "old generations are removed");
    }

    #[test]
    fn items_modes_and_missing_keys() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("k".to_string(), b"v".to_vec()),
            ("x".to_string(), b"y".to_vec()),
        ]
        .into();
        let items = vec![KeyToPath {
            key: "k".into(),
            path: "dir/file".into(),
            mode: Some(0o400),
        }];
        let f = projected_files("v", &data, Some(&items), Some(0o600), false).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[Path::new("dir/file")].mode, 0o400);
        let all = projected_files("v", &data, None, Some(0o600), false).unwrap();
        assert_eq!(all[Path::new("x")].mode, 0o600);
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "p".into(),
            mode: None,
        }];
        let e = projected_files("v", &data, Some(&missing), None, false).unwrap_err();
        assert!(e.to_string().contains("no key \"nope\""), "{e}");
        assert!(
            projected_files("v", &data, Some(&missing), None, true)
                .unwrap()
                .is_empty()
        );
        for bad in ["../x", "/abs", "a/../../b", "..data/x", ""] {
            assert!(safe_relative("v", bad).is_err(), "{bad}");
        }
    }
}
