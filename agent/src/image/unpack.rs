//! Unpacking layer tarballs into the layer cache and assembling a root filesystem from cached
//! layers.
//!
//! Safety rules, both steps: every path written is built by joining validated relative
//! components (no `..`, not absolute) onto the target directory, and every parent on the way
//! is checked with `lstat` to be a real directory, never a symlink, so that no entry and no
//! symlink planted by an earlier entry or layer can make us write outside the target.
//! Symlinks themselves are created as they are (an absolute target is relative to the
//! container's root, and is never followed here).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufReader, Read},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::{Digest, ImageError, oci::Compression, reference::Hasher};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Mode and owner of a directory, applied once everything inside it has been written (so a
/// read-only directory can still be filled, also when not running as root).
type DirMeta = BTreeMap<PathBuf, (u32, u32, u32)>;

struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A tar path as relative components; `Err(reason)` for absolute paths and `..`.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, &'static str> {
    use std::os::unix::ffi::OsStrExt;
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = PathBuf::new();
    for c in Path::new(std::ffi::OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` component (path traversal)"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok(out)
}

/// Checks (and with `create`, creates) every parent of `rel` under `root` as a real directory.
fn ensure_parents(root: &Path, rel: &Path, create: bool) -> Result<(), &'static str> {
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err("a parent directory is a symlink (symlink escape)");
            }
            Ok(_) => return Err("a parent is not a directory"),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&cur).map_err(|_| "cannot create a parent directory")?;
            }
            Err(_) => return Err("a parent directory is missing"),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, symlink or directory tree); nothing there is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `remove_dir_all`, also for trees with read-only directories when not running as root.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn make_dirs_writable(path: &Path) {
    let Ok(m) = fs::symlink_metadata(path) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700 | (m.mode() & 0o777)));
    for e in fs::read_dir(path).into_iter().flatten().flatten() {
        make_dirs_writable(&e.path());
    }
}

fn apply_dir_meta(dirs: &DirMeta, owner: bool) -> io::Result<()> {
    // Reverse order: children before their parents.
    for (path, &(mode, uid, gid)) in dirs.iter().rev() {
        if owner {
            match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other?,
            }
        }
        match fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Unpacks layer blob `blob` (of digest `digest`) into the empty directory `dest`, checking
/// that its uncompressed content hashes to `diff_id`. Whiteout files are kept as they are:
/// they are interpreted by [`assemble`]. Ownership is preserved only when running as root.
pub(crate) fn extract_layer(
    blob: &Path,
    compression: Compression,
    digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
) -> Result<(), ImageError> {
    let layer_err = |source| ImageError::Layer {
        digest: digest.to_string(),
        source,
    };
    let unsafe_entry = |entry: &[u8], reason| ImageError::UnsafePath {
        digest: digest.to_string(),
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason,
    };
    let file = File::open(blob).map_err(ImageError::io("opening", blob))?;
    let file = BufReader::with_capacity(256 * 1024, file);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(MultiGzDecoder::new(file)),
    };
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Hasher::new(),
    };
    let owner = is_root();
    let mut dirs = DirMeta::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_preserve_ownerships(owner);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(layer_err)? {
            let mut entry = entry.map_err(layer_err)?;
            let raw = entry.path_bytes().into_owned();
            let rel = safe_relative(&raw).map_err(|r| unsafe_entry(&raw, r))?;
            if rel.as_os_str().is_empty() {
                continue; // `./`, the layer's root
            }
            ensure_parents(dest, &rel, true).map_err(|r| unsafe_entry(&raw, r))?;
            let target = dest.join(&rel);
            let header = entry.header();
            let kind = header.entry_type();
            match kind {
                EntryType::Directory => {
                    match fs::symlink_metadata(&target) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            remove_any(&target).map_err(ImageError::io("replacing", &target))?;
                            fs::create_dir(&target).map_err(ImageError::io("creating", &target))?;
                        }
                        Err(_) => {
                            fs::create_dir(&target).map_err(ImageError::io("creating", &target))?;
                        }
                    }
                    let mode = header.mode().map_err(layer_err)?;
                    let uid = header.uid().map_err(layer_err)? as u32;
                    let gid = header.gid().map_err(layer_err)? as u32;
                    dirs.insert(target, (mode, uid, gid));
                }
                EntryType::Link => {
                    let link = entry
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    let src_rel = safe_relative(&link).map_err(|r| unsafe_entry(&link, r))?;
                    ensure_parents(dest, &src_rel, false).map_err(|r| unsafe_entry(&link, r))?;
                    let src = dest.join(&src_rel);
                    match fs::symlink_metadata(&src) {
                        Ok(m) if !m.is_dir() => {}
                        _ => {
                            return Err(unsafe_entry(
                                &raw,
                                "hard link to a missing entry or a directory",
                            ));
                        }
                    }
                    remove_any(&target).map_err(ImageError::io("replacing", &target))?;
                    fs::hard_link(&src, &target)
                        .map_err(ImageError::io("hard-linking", &target))?;
                }
                EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
                | EntryType::Symlink
                | EntryType::Fifo
                | EntryType::Char
                | EntryType::Block => {
                    if matches!(kind, EntryType::Char | EntryType::Block) && !owner {
                        tracing::debug!(entry = %rel.display(), "skipping device node: not root");
                        continue;
                    }
                    remove_any(&target).map_err(ImageError::io("replacing", &target))?;
                    entry
                        .unpack(&target)
                        .map_err(ImageError::io("unpacking", &target))?;
                }
                other => {
                    tracing::debug!(entry = %rel.display(), kind = ?other, "skipping tar entry");
                }
            }
        }
    }
    // The tar end-of-archive blocks and any padding are part of the diff id.
    io::copy(&mut hashing, &mut io::sink()).map_err(layer_err)?;
    let actual = Digest::from_hasher(hashing.hasher);
    if &actual != diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    apply_dir_meta(&dirs, owner).map_err(ImageError::io("setting directory modes in", dest))?;
    Ok(())
}

/// Builds a root filesystem in the empty directory `dest` from unpacked layers, bottom first,
/// applying OCI whiteouts (`.wh.<name>` deletes `<name>` of the layers below, `.wh..wh..opq`
/// hides everything below in its directory). Files are hard links into the layer directories,
/// so the root filesystem costs no data copy and must only ever be used read-only.
pub(crate) fn assemble(layers: &[PathBuf], dest: &Path) -> Result<(), ImageError> {
    let owner = is_root();
    let mut dirs = DirMeta::new();
    for layer in layers {
        merge_dir(layer, dest, &mut dirs)?;
    }
    apply_dir_meta(&dirs, owner).map_err(ImageError::io("setting directory modes in", dest))?;
    Ok(())
}

fn merge_dir(src: &Path, dst: &Path, dirs: &mut DirMeta) -> Result<(), ImageError> {
    let mut entries = Vec::new();
    for e in fs::read_dir(src).map_err(ImageError::io("reading", src))? {
        let e = e.map_err(ImageError::io("reading", src))?;
        entries.push(e.file_name());
    }
    entries.sort();
    let unsafe_name = |name: &std::ffi::OsStr| ImageError::UnsafePath {
        digest: src.display().to_string(),
        entry: name.to_string_lossy().into_owned(),
        reason: "whiteout of `.` or `..`",
    };
    // Whiteouts first: they hide what the layers below have, never this layer's own entries.
    if entries.iter().any(|n| n == OPAQUE_WHITEOUT) {
        for e in fs::read_dir(dst).map_err(ImageError::io("reading", dst))? {
            let p = e.map_err(ImageError::io("reading", dst))?.path();
            remove_any(&p).map_err(ImageError::io("removing", &p))?;
        }
    }
    for name in &entries {
        let Some(hidden) = name.to_str().and_then(|n| n.strip_prefix(WHITEOUT_PREFIX)) else {
            continue;
        };
        if hidden.starts_with(WHITEOUT_PREFIX) {
            continue; // `.wh..wh.*`: opaque marker (done above) or aufs metadata
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(unsafe_name(name));
        }
        let p = dst.join(hidden);
        remove_any(&p).map_err(ImageError::io("applying whiteout", &p))?;
    }
    for name in &entries {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            continue;
        }
        let from = src.join(name);
        let to = dst.join(name);
        let meta = fs::symlink_metadata(&from).map_err(ImageError::io("reading", &from))?;
        if meta.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A directory over a file or symlink replaces it (as overlayfs does), so
                    // nothing is ever written through a symlink of a lower layer.
                    remove_any(&to).map_err(ImageError::io("replacing", &to))?;
                    fs::create_dir(&to).map_err(ImageError::io("creating", &to))?;
                }
                Err(_) => fs::create_dir(&to).map_err(ImageError::io("creating", &to))?,
            }
            dirs.insert(to.clone(), (meta.mode(), meta.uid(), meta.gid()));
            merge_dir(&from, &to, dirs)?;
        } else {
            remove_any(&to).map_err(ImageError::io("replacing", &to))?;
            fs::hard_link(&from, &to).map_err(ImageError::io("hard-linking", &to))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(safe_relative(b"./a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative(b"a/./b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(safe_relative(b"./").unwrap(), PathBuf::new());
        assert!(safe_relative(b"/etc/passwd").is_err());
        assert!(safe_relative(b"../x").is_err());
        assert!(safe_relative(b"a/../../x").is_err());
    }
}
