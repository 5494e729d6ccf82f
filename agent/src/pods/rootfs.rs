//! A container's writable root filesystem: an overlay mount whose lower layer is the image's
//! assembled root filesystem (shared, never written) and whose upper layer belongs to this
//! container instance alone, under `<dir>/{upper,work,merged}`. A restarted container gets a
//! fresh upper layer, as in Kubernetes.

use std::{fs, io, path::Path, path::PathBuf};

use super::volumes::is_mountpoint;

/// Mounts the overlay for an instance (idempotent) and returns the merged directory.
pub fn mount(image_rootfs: &Path, dir: &Path) -> io::Result<PathBuf> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d)?;
    }
    if is_mountpoint(&merged) {
        return Ok(merged);
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_rootfs.display(),
        upper.display(),
        work.display()
    );
    if opts.contains(',')
        && [image_rootfs, &upper, &work]
            .iter()
            .any(|p| p.to_string_lossy().contains([',', ':']))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay paths must not contain ',' or ':'",
        ));
    }
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(io::Error::from)?;
    Ok(merged)
}

/// Unmounts and removes an instance's root filesystem (idempotent).
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
