//! The local image store with OCI image archives built here, in Rust: a two-layer busybox image
//! (gzip base layer; uncompressed upper layer with a whiteout, an opaque directory and a new
//! file), imported from a tar archive and from a layout directory.
//!
//! Checks: the assembled root filesystem (whiteouts applied, hard links and busybox symlinks
//! working), the config defaults, that a second import unpacks nothing, that corrupted blobs and
//! unsafe layer entries are refused with the digest named, multi-platform indexes, and removal
//! with garbage collection. As root with runc installed, a container runs from the imported root
//! filesystem (read-only) with the image's `Cmd`, `Env` and `WorkingDir`.
//!
//! Runs as any user; everything lives in temporary directories removed on the way out.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use ferry_agent::image::{Digest, ImageError, ImageStore, oci::host_platform};
use flate2::{Compression, write::GzEncoder};
use serde_json::{Value, json};

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Tar entries of a test layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A file entry whose name is written raw, bypassing the tar builder's path checks.
    RawName(&'a [u8]),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::RawName(name) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 4);
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, &b"evil"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An OCI image layout being built: blobs by digest plus index.json.
#[derive(Default, Clone)]
struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<Value>,
}

struct Layer {
    blob: Vec<u8>,
    media_type: &'static str,
    diff_id: Digest,
}

fn layer(tar: Vec<u8>, gz: bool) -> Layer {
    let diff_id = Digest::of(&tar);
    if gz {
        Layer {
            blob: gzip(&tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            diff_id,
        }
    } else {
        Layer {
            blob: tar,
            media_type: "application/vnd.oci.image.layer.v1.tar",
            diff_id,
        }
    }
}

impl Layout {
    fn add_blob(&mut self, data: Vec<u8>) -> Value {
        let d = Digest::of(&data);
        let size = data.len();
        self.blobs.insert(d.hex().to_owned(), data);
        json!({ "digest": d.to_string(), "size": size })
    }

    /// Adds config + layers + manifest; returns the manifest descriptor.
    fn add_image(&mut self, layers: Vec<Layer>, config: Value) -> Value {
        let (os, arch) = host_platform();
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let config = json!({
            "architecture": arch, "os": os, "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let mut config_desc = self.add_blob(serde_json::to_vec(&config).unwrap());
        config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let mut layer_descs = Vec::new();
        for l in layers {
            let mut d = self.add_blob(l.blob);
            d["mediaType"] = l.media_type.into();
            layer_descs.push(d);
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc, "layers": layer_descs,
        });
        let mut d = self.add_blob(serde_json::to_vec(&manifest).unwrap());
        d["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
        d
    }

    fn index_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": self.index })).unwrap()
    }

    fn write_tar(&self, path: &Path) {
        let mut b = tar::Builder::new(fs::File::create(path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &self.index_json());
        for (hex, data) in &self.blobs {
            add(&format!("blobs/sha256/{hex}"), data);
        }
        b.finish().unwrap();
    }

    fn write_dir(&self, dir: &Path) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("index.json"), self.index_json()).unwrap();
        for (hex, data) in &self.blobs {
            fs::write(dir.join("blobs/sha256").join(hex), data).unwrap();
        }
    }
}

const APPLETS: &[&str] = &["sh", "echo", "cat", "ls", "pwd"];

fn base_layer(busybox: &[u8]) -> Layer {
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::Dir("etc/"),
        Entry::Dir("proc/"),
        Entry::Dir("sys/"),
        Entry::Dir("dev/"),
        Entry::Dir("tmp/"),
        Entry::Dir("opaque/"),
        Entry::File("bin/busybox", busybox, 0o755),
        Entry::Hardlink("bin/busybox-hl", "bin/busybox"),
        Entry::File("etc/hosts", b"", 0o644),
        Entry::File("etc/hostname", b"", 0o644),
        Entry::File("etc/resolv.conf", b"", 0o644),
        Entry::File("etc/deleteme", b"old\n", 0o644),
        Entry::File("opaque/lower.txt", b"lower\n", 0o644),
    ];
    for a in APPLETS {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{a}").into_boxed_str()),
            "busybox",
        ));
    }
    layer(layer_tar(&entries), true)
}

fn upper_layer() -> Layer {
    layer(
        layer_tar(&[
            Entry::File("etc/.wh.deleteme", b"", 0o644),
            Entry::File("etc/added", b"new\n", 0o600),
            Entry::File("opaque/.wh..wh..opq", b"", 0o644),
            Entry::File("opaque/upper.txt", b"upper\n", 0o644),
        ]),
        false,
    )
}

fn test_config() -> Value {
    json!({
        "Cmd": ["sh", "-c", "echo hello from $GREETING in $(pwd)"],
        "Env": ["PATH=/bin", "GREETING=image"],
        "WorkingDir": "/tmp",
    })
}

const REF: &str = "localhost/ferry-test/busybox:v1";

fn busybox_image(busybox: &[u8]) -> (Layout, Value) {
    let mut l = Layout::default();
    let mut desc = l.add_image(vec![base_layer(busybox), upper_layer()], test_config());
    desc["annotations"] = json!({ "org.opencontainers.image.ref.name": REF });
    l.index.push(desc.clone());
    (l, desc)
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn import_oci_archive_and_unpack() {
    let Some(bb_path) = busybox() else {
        eprintln!("SKIP image_store: busybox-static not installed (bash .ci/setup installs it)");
        return;
    };
    let bb = fs::read(&bb_path).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ferry-image-")
        .tempdir()
        .unwrap();
    let (layout, desc) = busybox_image(&bb);
    let archive = dir.path().join("busybox.tar");
    layout.write_tar(&archive);
    let manifest_digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();

    let store = ImageStore::open(dir.path().join("data")).unwrap();
    assert_eq!(store.root(), dir.path().join("data/images"));
    let imported = store.import_oci_archive(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].references[0].to_string(), REF);
    assert_eq!(imported[0].manifest_digest, manifest_digest);
    assert_eq!(imported[0].layers_unpacked, 2);
    assert!(imported[0].rootfs_created);
    assert!(tmp_is_empty(&store));

    // The root filesystem: whiteouts applied, links intact.
    let root = store.rootfs(REF).unwrap();
    assert!(!root.join("etc/deleteme").exists(), "whiteout not applied");
    assert_eq!(fs::read_to_string(root.join("etc/added")).unwrap(), "new\n");
    assert_eq!(
        fs::metadata(root.join("etc/added")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(
        !root.join("opaque/lower.txt").exists(),
        "opaque directory not applied"
    );
    assert_eq!(
        fs::read_to_string(root.join("opaque/upper.txt")).unwrap(),
        "upper\n"
    );
    assert!(!root.join("etc/.wh.deleteme").exists());
    assert!(!root.join("opaque/.wh..wh..opq").exists());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        ino(&root.join("bin/busybox")),
        ino(&root.join("bin/busybox-hl"))
    );
    assert_eq!(
        fs::metadata(root.join("bin/busybox")).unwrap().mode() & 0o777,
        0o755
    );
    let out = Command::new(root.join("bin/sh"))
        .args(["-c", "echo works"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "works\n");
    // The layer cache keeps the whiteout markers; the image's root never had them.
    let upper = store.layer_dir(&upper_layer().diff_id);
    assert!(upper.join("etc/.wh.deleteme").exists());

    // Config defaults, by tag and by digest; unknown images.
    let info = store.resolve(REF).unwrap().unwrap();
    assert_eq!(info.manifest_digest, manifest_digest);
    assert_eq!(
        info.config.cmd.as_deref(),
        Some(
            &[
                "sh".to_owned(),
                "-c".into(),
                "echo hello from $GREETING in $(pwd)".into()
            ][..]
        )
    );
    assert_eq!(
        info.config.env.as_deref(),
        Some(&["PATH=/bin".to_owned(), "GREETING=image".into()][..])
    );
    assert_eq!(info.config.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(info.config.entrypoint, None);
    assert_eq!(info.diff_ids.len(), 2);
    let by_digest = format!("localhost/ferry-test/busybox@{manifest_digest}");
    assert_eq!(store.resolve(&by_digest).unwrap().unwrap(), info);
    assert_eq!(store.rootfs(&by_digest).unwrap(), root);
    assert!(
        store
            .resolve("localhost/ferry-test/busybox:v2")
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.resolve("Not A Ref"),
        Err(ImageError::InvalidReference { .. })
    ));

    // Importing again unpacks nothing; a new store on the same directory sees the same.
    let (base_ino, root_ino) = (ino(&store.layer_dir(&base_layer(&bb).diff_id)), ino(&root));
    let again = store.import_oci_archive(&archive).unwrap();
    assert_eq!(
        (again[0].layers_unpacked, again[0].rootfs_created),
        (0, false)
    );
    drop(store);
    let store = ImageStore::open(dir.path().join("data")).unwrap();
    let again = store.import_oci_archive(&archive).unwrap();
    assert_eq!(
        (again[0].layers_unpacked, again[0].rootfs_created),
        (0, false)
    );
    assert_eq!(ino(&store.layer_dir(&base_layer(&bb).diff_id)), base_ino);
    assert_eq!(ino(&root), root_ino);
    assert_eq!(store.list().len(), 1);

    // The same image from a layout directory, tagged by name (umoci writes bare tags).
    let mut tagged = layout.clone();
    tagged.index[0]["annotations"] = json!({ "org.opencontainers.image.ref.name": "v2" });
    let layout_dir = dir.path().join("layout");
    tagged.write_dir(&layout_dir);
    let imported = store
        .import_oci_archive_as(&layout_dir, Some("busybox"))
        .unwrap();
    assert_eq!(
        imported[0].references[0].to_string(),
        "docker.io/library/busybox:v2"
    );
    assert_eq!(
        (imported[0].layers_unpacked, imported[0].rootfs_created),
        (0, false)
    );
    assert_eq!(store.rootfs("busybox:v2").unwrap(), root);

    // Removal: the image stays while another reference uses it, then everything goes.
    let report = store.remove(REF).unwrap();
    assert_eq!((report.blobs, report.layers, report.rootfs), (0, 0, 0));
    assert!(root.is_dir());
    let report = store.remove("busybox:v2").unwrap();
    assert_eq!((report.blobs, report.layers, report.rootfs), (4, 2, 1));
    assert!(!root.exists());
    assert!(store.list().is_empty());
    assert!(matches!(
        store.remove("busybox:v2"),
        Err(ImageError::NotFound { .. })
    ));
    assert!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(
        fs::read_dir(store.root().join("layers"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn corrupted_and_unsafe_archives_are_refused() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-image-")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let simple = |entries: &[Entry<'_>]| {
        let mut l = Layout::default();
        let mut desc = l.add_image(vec![layer(layer_tar(entries), true)], test_config());
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": "bad:v1" });
        l.index.push(desc);
        l
    };

    // A blob whose content does not match its name.
    let mut l = simple(&[Entry::File("a", b"a", 0o644)]);
    let (hex, data) = l.blobs.iter_mut().max_by_key(|(_, d)| d.len()).unwrap();
    let hex = hex.clone();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    let archive = dir.path().join("corrupt.tar");
    l.write_tar(&archive);
    let err = store.import_oci_archive(&archive).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&format!("sha256:{hex}")), "{err}");
    // Same from a directory.
    l.write_dir(&dir.path().join("corrupt"));
    let err = store
        .import_oci_archive(dir.path().join("corrupt"))
        .unwrap_err();
    assert!(err.to_string().contains(&format!("sha256:{hex}")), "{err}");

    // Path traversal, absolute paths, symlink escapes, hard links out of the layer.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let escape = outside.to_str().unwrap().to_owned();
    let cases: Vec<(&str, Layout)> = vec![
        ("..", simple(&[Entry::RawName(b"../../../../evil")])),
        ("absolute", simple(&[Entry::RawName(b"/tmp/evil")])),
        (
            "symlink",
            simple(&[
                Entry::Symlink("esc", &escape),
                Entry::File("esc/pwned", b"x", 0o644),
            ]),
        ),
        (
            "hard link",
            simple(&[Entry::Hardlink("x", "../../../../etc/passwd")]),
        ),
    ];
    for (what, l) in cases {
        let archive = dir.path().join("unsafe.tar");
        l.write_tar(&archive);
        let err = store.import_oci_archive(&archive).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsafePath { .. }),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("sha256:"), "{what}: {err}");
    }
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "wrote outside the layer"
    );
    assert!(!dir.path().join("evil").exists());
    assert!(tmp_is_empty(&store));
    assert!(store.list().is_empty());
    assert!(
        fs::read_dir(store.root().join("layers"))
            .unwrap()
            .next()
            .is_none()
    );

    // A layer that does not match its diff id.
    let mut l = Layout::default();
    let mut bad = layer(layer_tar(&[Entry::File("a", b"a", 0o644)]), false);
    bad.diff_id = Digest::of(b"something else");
    let desc = l.add_image(vec![bad], test_config());
    l.index.push(desc);
    let archive = dir.path().join("diffid.tar");
    l.write_tar(&archive);
    let err = store.import_oci_archive(&archive).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");

    // Not a layout at all.
    fs::write(dir.path().join("junk.tar"), b"junk").unwrap();
    assert!(
        store
            .import_oci_archive(dir.path().join("junk.tar"))
            .is_err()
    );
}

#[test]
fn multi_platform_index_picks_the_host() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-image-")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let (os, arch) = host_platform();
    let mut l = Layout::default();
    let mut host = l.add_image(
        vec![layer(
            layer_tar(&[Entry::File("host", b"yes", 0o644)]),
            true,
        )],
        json!({ "Cmd": ["true"] }),
    );
    host["platform"] = json!({ "os": os, "architecture": arch });
    // Another platform's manifest whose blobs are not even in the archive: never fetched.
    let other = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Digest::of(b"other").to_string(), "size": 5,
        "platform": { "os": "linux", "architecture": "not-this-one" },
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other, host],
    });
    let mut desc = l.add_blob(serde_json::to_vec(&index).unwrap());
    desc["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    desc["annotations"] = json!({ "org.opencontainers.image.ref.name": "multi:1" });
    l.index.push(desc);
    let archive = dir.path().join("multi.tar");
    l.write_tar(&archive);
    let imported = store.import_oci_archive(&archive).unwrap();
    assert_eq!(
        imported[0].manifest_digest.to_string(),
        host["digest"].as_str().unwrap()
    );
    assert_eq!(
        fs::read_to_string(store.rootfs("multi:1").unwrap().join("host")).unwrap(),
        "yes"
    );
    let info = store.resolve("multi:1").unwrap().unwrap();
    assert_eq!(info.config.cmd, Some(vec!["true".to_owned()]));
    // The index blob itself is not kept: nothing references it.
    assert!(!store.has_blob(&l.index[0]["digest"].as_str().unwrap().parse().unwrap()));
}

/// As root with runc: a container from the imported root filesystem, read-only, runs the
/// image's command with its environment and working directory.
#[test]
fn container_runs_from_imported_image() {
    use ferry_agent::runtime::{
        ContainerRuntime, ContainerSpec, ContainerStatus, Runc, RuncOptions,
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP image_store runc: needs root");
        return;
    }
    if !Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIP image_store runc: runc not installed (bash .ci/setup installs it)");
        return;
    }
    let Some(bb_path) = busybox() else {
        eprintln!("SKIP image_store runc: busybox-static not installed");
        return;
    };
    let prefix = format!("fimg{}", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .unwrap();
    let (layout, _) = busybox_image(&fs::read(bb_path).unwrap());
    let archive = dir.path().join("busybox.tar");
    layout.write_tar(&archive);
    let store = ImageStore::open(dir.path().join("data")).unwrap();
    store.import_oci_archive(&archive).unwrap();
    let info = store.resolve(REF).unwrap().unwrap();
    let rootfs = store.rootfs(REF).unwrap();

    struct Guard(Runc, String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.delete(&self.1);
            for left in self.0.remove_cgroup_parent() {
                eprintln!("cleanup: cgroup {} remains", left.display());
            }
        }
    }
    let id = format!("{prefix}-echo");
    let rt = Runc::new(RuncOptions::new(dir.path().join("state"), &prefix)).unwrap();
    let guard = Guard(rt, id.clone());
    let log = dir.path().join("echo.log");
    let env = info
        .config
        .env
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let spec = ContainerSpec {
        id: id.clone(),
        rootfs: rootfs.clone(),
        readonly_rootfs: true,
        args: info.config.cmd.clone().unwrap(),
        env,
        working_dir: info.config.working_dir.as_ref().map(PathBuf::from),
        log_path: log.clone(),
        ..Default::default()
    };
    guard.0.run(&spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = guard.0.state(&id).unwrap().status;
        if s.is_exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "container did not exit: {s:?}");
        thread::sleep(Duration::from_millis(20));
    };
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(
            status,
            ContainerStatus::Exited {
                exit_code: Some(0),
                ..
            }
        ),
        "{status:?}: {out}"
    );
    assert_eq!(out, "hello from image in /tmp\n");
    drop(guard);
    // The shared root filesystem was not written to by the container run.
    assert!(!rootfs.join("etc/deleteme").exists());
}

/// Interop check with archives made by other tools (`umoci`, `skopeo copy … oci-archive:…`):
/// `FERRY_TEST_OCI_ARCHIVE=FILE[,NAME] cargo test -p ferry-agent --test image_store external`
/// imports FILE (naming bare-tag images NAME) and prints what it found. Skipped when unset.
#[test]
fn external_archive() {
    let Ok(arg) = std::env::var("FERRY_TEST_OCI_ARCHIVE") else {
        return;
    };
    let (file, name) = match arg.split_once(',') {
        Some((f, n)) => (f.to_owned(), Some(n.to_owned())),
        None => (arg, None),
    };
    let dir = tempfile::Builder::new()
        .prefix("ferry-image-")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let imported = store.import_oci_archive_as(&file, name.as_deref()).unwrap();
    for image in &imported {
        eprintln!("{image:?}");
        let info = store.resolve_digest(&image.manifest_digest).unwrap();
        eprintln!("{info:?}");
    }
    for r in store.list() {
        let root = store.rootfs(&r.reference).unwrap();
        let mut names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        eprintln!("{}: {} {names:?}", r.reference, root.display());
    }
}

/// `ferry image import-rootfs`: a plain and a gzip tarball become single-layer images with the
/// given defaults, and the same tarball twice is the same image.
#[test]
fn import_rootfs_tarballs() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let tar = layer_tar(&[Entry::Dir("etc/"), Entry::File("etc/motd", b"hi\n", 0o644)]);
    let plain = dir.path().join("root.tar");
    fs::write(&plain, &tar).unwrap();
    let gz = dir.path().join("root.tar.gz");
    fs::write(&gz, gzip(&tar)).unwrap();
    let config = ferry_agent::image::ContainerConfig {
        cmd: Some(vec!["sh".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        ..Default::default()
    };
    let a = store
        .import_rootfs(&plain, "localhost/t/plain:1", config.clone())
        .unwrap();
    let b = store
        .import_rootfs(&gz, "localhost/t/gz:1", config.clone())
        .unwrap();
    assert_eq!(a.diff_ids, b.diff_ids, "the same layer, compressed or not");
    assert_eq!(a.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
    for r in ["localhost/t/plain:1", "localhost/t/gz:1"] {
        let root = store.rootfs(r).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/motd")).unwrap(), "hi\n");
    }
    let again = store
        .import_rootfs(&plain, "localhost/t/plain:1", config)
        .unwrap();
    assert_eq!(again.manifest_digest, a.manifest_digest);
    let missing = store.import_rootfs(
        &dir.path().join("nope.tar"),
        "localhost/t/x:1",
        Default::default(),
    );
    assert!(missing.is_err());
}
