//! A container's writable root filesystem: an overlay whose lower layer is the image's
//! assembled root filesystem (shared, never written) and whose upper layer belongs to this
//! container instance alone, under `<dir>/{upper,work}`. The runtime mounts it inside the
//! container's own mount namespace (see [`crate::runtime::OverlayDirs`]); nothing is mounted on
//! the node. A restarted container gets a fresh upper layer, as in Kubernetes.

use std::{fs, io, path::Path};

use super::volumes::is_mountpoint;
use crate::runtime::OverlayDirs;

/// The writable layer of the instance whose directory is `dir` (created by the runtime).
pub fn layer(dir: &Path) -> OverlayDirs {
    OverlayDirs {
        upper: dir.join("upper"),
        work: dir.join("work"),
    }
}

/// Removes an instance's root filesystem (idempotent). Agents before the overlay moved into the
/// container's namespace mounted it at `<dir>/merged` on the node: such a mount is detached
/// first.
pub fn remove(dir: &Path) -> io::Result<()> {
    let merged = dir.join("merged");
    if is_mountpoint(&merged) {
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
