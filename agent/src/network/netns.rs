//! Named network namespaces and running netlink code inside one.
//!
//! A named namespace is what `ip netns add` makes: a file under a directory (normally
//! `/run/netns`) on which `/proc/thread-self/ns/net` of a thread that just did
//! `unshare(CLONE_NEWNET)` is bind-mounted. The mount keeps the namespace alive after that
//! thread is gone. The directory is made a shared mount (bind-mounted onto itself first if it
//! is not a mount point), as iproute2 does, so the namespace mounts propagate to, and are
//! unmounted from, mount namespaces copied from this one.
//!
//! Namespaces are entered only by dedicated short-lived threads (`setns(2)` affects only the
//! calling thread): never by forking (this process is multi-threaded) and never through
//! `ip netns exec`. A netlink socket stays bound to the namespace it was created in, so each
//! such thread runs its own current-thread tokio runtime with its own connection.

use std::{
    fs::{self, OpenOptions},
    future::Future,
    io,
    os::fd::{AsFd, OwnedFd},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    thread,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
    sys::statfs::{NSFS_MAGIC, statfs},
};
use rtnetlink::Handle;

use super::error::{NetworkError, Result};

/// Whether `path` is a namespace file (a bind mount of an nsfs inode).
pub fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes `dir` exist and be a shared mount, like iproute2 does for `/run/netns`.
pub fn ensure_netns_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| NetworkError::io("creating netns directory", dir, e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    let netns_err = |op, source| NetworkError::Netns {
        op,
        path: dir.to_owned(),
        source,
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one, then shared.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| netns_err("bind-mounting the directory onto itself", e))?;
            make_shared().map_err(|e| netns_err("making the directory a shared mount", e))
        }
        Err(e) => Err(netns_err("making the directory a shared mount", e)),
    }
}

/// Creates a network namespace pinned at `path` unless one is already there. Returns whether
/// it created one. The parent directory must exist (see [`ensure_netns_dir`]).
pub fn create_netns(path: &Path) -> Result<bool> {
    if is_netns(path) {
        return Ok(false);
    }
    let netns_err = |op, source| NetworkError::Netns {
        op,
        path: path.to_owned(),
        source,
    };
    // An empty file left by a crash between create and mount is reused.
    let existed = path.exists();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o000)
        .open(path)
        .map_err(|e| NetworkError::io("creating netns mount point", path, e))?;
    let target = path.to_owned();
    let result = thread::Builder::new()
        .name("ferry-netns-add".into())
        .spawn(move || -> Result<(), (&'static str, Errno)> {
            // This thread's namespace is thrown away with the thread; only the mount keeps it.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind-mounting the new namespace", e))
        })
        .map_err(|e| NetworkError::Thread {
            op: "creating a network namespace",
            reason: e.to_string(),
        })?
        .join()
        .map_err(|_| NetworkError::Thread {
            op: "creating a network namespace",
            reason: "panicked".into(),
        })?;
    if let Err((op, errno)) = result {
        if !existed {
            let _ = fs::remove_file(path);
        }
        return Err(netns_err(op, errno));
    }
    Ok(true)
}

/// Unmounts and removes the namespace file at `path`. Missing or unmounted is fine.
/// The namespace itself lives on while a process is still in it or holds it open.
pub fn remove_netns(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (already unmounted, or a stale empty file).
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(NetworkError::Netns {
                op: "unmounting",
                path: path.to_owned(),
                source: e,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io("removing netns file", path, e)),
    }
}

/// A network namespace to run netlink code in: held open so it can be entered from any thread
/// later, whatever namespace that thread started in.
#[derive(Debug)]
pub struct NetnsHandle {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetnsHandle {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn open(path: &Path) -> Result<Self> {
        let file = fs::File::open(path)
            .map_err(|e| NetworkError::io("opening network namespace", path, e))?;
        Ok(NetnsHandle {
            fd: file.into(),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> Result<Self> {
        Ok(NetnsHandle {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| NetworkError::io("duplicating netns fd", &self.path, e))?,
            path: self.path.clone(),
        })
    }

    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` with a netlink handle whose socket lives in `ns`, on a dedicated thread that has
/// entered `ns` and runs its own current-thread runtime. Awaiting it does not block the
/// caller's runtime.
pub async fn with_netlink_in<T, F, Fut>(ns: &NetnsHandle, op: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let ns = ns.try_clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    thread::Builder::new()
        .name("ferry-netns".into())
        .spawn(move || {
            let _ = tx.send(run_in(ns, op, f));
        })
        .map_err(|e| NetworkError::Thread {
            op,
            reason: e.to_string(),
        })?;
    rx.await.map_err(|_| NetworkError::Thread {
        op,
        reason: "panicked".into(),
    })?
}

fn run_in<T, F, Fut>(ns: NetnsHandle, op: &'static str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Netns {
        op: "entering (setns)",
        path: ns.path.clone(),
        source,
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetworkError::Thread {
            op,
            reason: format!("building a runtime: {e}"),
        })?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetworkError::io("opening a netlink socket in", ns.path.clone(), e))?;
        tokio::spawn(conn);
        f(handle).await
    })
}
