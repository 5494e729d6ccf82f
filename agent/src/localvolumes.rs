//! This node's share of the control plane's local provisioner: the directories of provisioned
//! PersistentVolumes under `<data dir>/local-volumes/<volume name>`.
//!
//! When a pod first uses such a volume the agent creates its directory, then puts the
//! [`LOCAL_VOLUME_CLEANUP`] finalizer on the volume. Deleting the volume (its claim gone, reclaim
//! policy `Delete`) then leaves it Terminating until [`run_cleanup`], which looks at this
//! node's volume directories every [`CLEANUP_EVERY`], has removed the directory and the
//! finalizer. So a deleted volume's data does not stay on the node, and a volume is never
//! removed from the API while its data is still there. A directory whose volume is not being
//! deleted is left alone, as is everything outside `local-volumes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::client::Client;
use ferry_api::volumes::{LOCAL_VOLUME_CLEANUP, finalizers, pinned_to};
use serde_json::{Value, json};

/// How often deleted volumes' directories are looked for.
pub const CLEANUP_EVERY: Duration = Duration::from_secs(5);

fn st<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Whether `pv`'s directory is `<dir>/<pv name>`: a volume this node's agent manages.
pub fn is_managed(pv: &Value, dir: &Path) -> bool {
    let name = st(pv, "/metadata/name");
    !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
        && Path::new(st(pv, "/spec/local/path")) == dir.join(name)
}

/// Called before a pod uses `pv` at `path` on `node`: for a managed volume, creates its
/// directory and adds the cleanup finalizer (once). Other volumes are left as they are.
pub async fn adopt(client: &Client, pv: &Value, dir: &Path, node: &str) -> Result<(), String> {
    if !is_managed(pv, dir) || !pinned_to(pv, node) {
        return Ok(());
    }
    let path = dir.join(st(pv, "/metadata/name"));
    std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    if finalizers(pv).contains(&LOCAL_VOLUME_CLEANUP)
        || !st(pv, "/metadata/deletionTimestamp").is_empty()
    {
        return Ok(());
    }
    let mut updated = pv.clone();
    let mut list: Vec<&str> = finalizers(pv);
    list.push(LOCAL_VOLUME_CLEANUP);
    updated["metadata"]["finalizers"] = json!(list);
    client
        .update("PersistentVolume", &updated)
        .await
        .map(drop)
        .map_err(|e| format!("marking volume {}: {e}", st(pv, "/metadata/name")))
}

/// Removes the directories of this node's deleted volumes, then their finalizers, every
/// [`CLEANUP_EVERY`].
pub async fn run_cleanup(client: Client, dir: PathBuf, node: String) {
    loop {
        let n = cleanup_once(&client, &dir, &node).await;
        if n > 0 {
            tracing::debug!(volumes = n, "local volumes cleaned up");
        }
        tokio::time::sleep(CLEANUP_EVERY).await;
    }
}

/// One look at `dir`: returns how many volumes were cleaned up.
pub async fn cleanup_once(client: &Client, dir: &Path, node: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        // Authorized only for volumes pinned to this node; anything else is not ours to judge.
        let Ok(pv) = client.get("PersistentVolume", "", &name).await else {
            continue;
        };
        if st(&pv, "/metadata/deletionTimestamp").is_empty()
            || !finalizers(&pv).contains(&LOCAL_VOLUME_CLEANUP)
            || !is_managed(&pv, dir)
            || !pinned_to(&pv, node)
        {
            continue;
        }
        let path = dir.join(&name);
        let removed = tokio::task::spawn_blocking({
            let path = path.clone();
            move || match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(volume = name, "removing {}: {e}", path.display());
                continue;
            }
            Err(e) => {
                tracing::warn!(volume = name, "removing {}: {e}", path.display());
                continue;
            }
        }
        let mut updated = pv.clone();
        let rest: Vec<&str> = finalizers(&pv)
            .into_iter()
            .filter(|f| *f != LOCAL_VOLUME_CLEANUP)
            .collect();
        updated["metadata"]["finalizers"] = json!(rest);
        match client.update("PersistentVolume", &updated).await {
            Ok(_) => {
                tracing::info!(volume = name, path = %path.display(), "deleted volume's data removed");
                cleaned += 1;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(volume = name, "releasing the volume: {e}"),
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_volumes_in_the_directory_under_their_own_name_are_managed() {
        let dir = Path::new("/var/lib/ferry/local-volumes");
        let pv = |name: &str, path: &str| json!({"metadata": {"name": name}, "spec": {"local": {"path": path}}});
        assert!(is_managed(
            &pv("pvc-1", "/var/lib/ferry/local-volumes/pvc-1"),
            dir
        ));
        assert!(!is_managed(
            &pv("pvc-1", "/var/lib/ferry/local-volumes/pvc-2"),
            dir
        ));
        assert!(!is_managed(&pv("pvc-1", "/data/pvc-1"), dir));
        assert!(!is_managed(
            &pv("..", "/var/lib/ferry/local-volumes/.."),
            dir
        ));
        assert!(!is_managed(
            &json!({"metadata": {"name": "h"}, "spec": {"hostPath": {"path": "/var/lib/ferry/local-volumes/h"}}}),
            dir
        ));
    }
}
