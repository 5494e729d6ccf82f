//! Pulling from a real OCI distribution registry: Debian's `docker-registry` (2.8) on a free
//! loopback port, its storage in a temporary directory, fed with a busybox image built here in
//! Rust and pushed with oci-client's push API.
//!
//! Checks: a pull into a fresh store assembles a working root filesystem; pulling again
//! downloads no blob (both the pull's report and the registry's access log say so) and unpacks
//! nothing; a multi-platform index resolves to the host's manifest without touching the other
//! platform's blobs; a digest reference whose manifest is here needs no request at all; a
//! missing tag and an unreachable registry fail with an error naming the reference and the
//! cause (`manifest unknown`).
//!
//! Root only (like the other agent integration tests); skipped with a message when
//! `docker-registry` or `busybox-static` is not installed (`bash .ci/setup` installs both).
//! The registry is killed by its PID when the guard drops, also when an assertion fails.

use std::{
    fs,
    io::Write,
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use ferry_agent::image::{Digest, ImageError, ImageStore, PullOptions, oci::host_platform};
use flate2::{Compression, write::GzEncoder};
use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use serde_json::{Value, json};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const REPO: &str = "ferry-test/busybox";

fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A registry process; killed (by PID) and reaped on drop.
struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
    access_log: PathBuf,
    stderr_log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: ferry-test\n",
                storage.display()
            ),
        )
        .unwrap();
        // The access log goes to stdout, everything else to stderr.
        let access_log = dir.join("access.log");
        let stderr_log = dir.join("registry.log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&access_log).unwrap())
            .stderr(fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child,
            addr,
            access_log,
            stderr_log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&reg.addr).is_err() {
            if let Some(status) = reg.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}):\n{}",
                    fs::read_to_string(&reg.stderr_log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    /// The paths of the blob GETs the registry logged so far (a line is written once the
    /// response is complete: wait until there are at least `min`).
    fn blob_gets(&self, min: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let gets: Vec<String> = fs::read_to_string(&self.access_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once("\"GET ").map(|(_, rest)| rest))
                .filter_map(|rest| rest.split_whitespace().next())
                .filter(|path| path.contains("/blobs/"))
                .map(str::to_owned)
                .collect();
            if gets.len() >= min || Instant::now() > deadline {
                return gets;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
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

/// A layer tar: directories (ending in `/`), files and symlinks (`name -> target`).
fn layer_tar(dirs: &[&str], files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (p, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
        b.append_data(&mut h, p, *data).unwrap();
    }
    for (p, target) in links {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, p, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image as the registry will hold it: blobs, and the manifest bytes.
struct Image {
    /// (digest, data) of the config and the layers.
    blobs: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(arch: &str, layers: Vec<(Vec<u8>, bool)>, config: Value) -> Image {
        let mut blobs = Vec::new();
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, gz) in layers {
            diff_ids.push(Digest::of(&tar).to_string());
            let (blob, media_type) = if gz {
                (gzip(&tar), "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                (tar, "application/vnd.oci.image.layer.v1.tar")
            };
            let d = Digest::of(&blob).to_string();
            layer_descs.push(json!({ "mediaType": media_type, "digest": d, "size": blob.len() }));
            blobs.push((d, blob));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux", "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap();
        let config_desc = json!({
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(&config).to_string(), "size": config.len(),
        });
        blobs.insert(0, (Digest::of(&config).to_string(), config));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc, "layers": layer_descs,
        }))
        .unwrap();
        Image { blobs, manifest }
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    fn descriptor(&self, arch: &str) -> Value {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.digest().to_string(), "size": self.manifest.len(),
            "platform": { "os": "linux", "architecture": arch },
        })
    }

    async fn push(&self, client: &Client, reference: &Reference) {
        client
            .store_auth_if_needed(reference.resolve_registry(), &RegistryAuth::Anonymous)
            .await;
        for (digest, data) in &self.blobs {
            client
                .push_blob(reference, data.clone(), digest)
                .await
                .unwrap();
        }
        client
            .push_manifest_raw(
                reference,
                self.manifest.clone(),
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
    }
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_loopback_registry() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP image_pull: needs root");
        return;
    }
    if !Path::new(REGISTRY_BIN).is_file() {
        eprintln!(
            "SKIP image_pull: {REGISTRY_BIN} not found (apt-get install docker-registry; bash .ci/setup installs it)"
        );
        return;
    }
    let Some(bb_path) = busybox() else {
        eprintln!("SKIP image_pull: busybox-static not installed (bash .ci/setup installs it)");
        return;
    };
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("ferry-pull-")
        .tempdir()
        .unwrap();
    let registry = Registry::start(&dir.path().join("registry"));
    let addr = registry.addr.clone();

    // The image: busybox with a few applet links (gzip), and an uncompressed upper layer.
    let bb = fs::read(bb_path).unwrap();
    let (_, arch) = host_platform();
    let image = Image::new(
        arch,
        vec![
            (
                layer_tar(
                    &["bin/", "etc/", "tmp/"],
                    &[("bin/busybox", &bb, 0o755), ("etc/hosts", b"", 0o644)],
                    &[("bin/sh", "busybox"), ("bin/echo", "busybox")],
                ),
                true,
            ),
            (
                layer_tar(&[], &[("etc/motd", b"pulled\n", 0o644)], &[]),
                false,
            ),
        ],
        json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }),
    );
    // Another platform's image, and an index naming both.
    let other = Image::new(
        "not-this-arch",
        vec![(layer_tar(&[], &[("other", b"x", 0o644)], &[]), true)],
        json!({}),
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other.descriptor("not-this-arch"), image.descriptor(arch)],
    }))
    .unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let pusher = Client::try_from(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
    .unwrap();
    let tag = |t: &str| Reference::with_tag(addr.clone(), REPO.into(), t.into());
    image.push(&pusher, &tag("v1")).await;
    other.push(&pusher, &tag("other")).await;
    pusher
        .push_manifest_raw(
            &tag("multi"),
            index.clone(),
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        )
        .await
        .unwrap();
    let pushed_gets = registry.blob_gets(0).len();

    // A fresh store: everything is downloaded, unpacked and assembled.
    let store = Arc::new(ImageStore::open(dir.path().join("data")).unwrap());
    let v1 = format!("{addr}/{REPO}:v1");
    let opts = PullOptions::default();
    let report = store.pull_with_report(&v1, &opts).await.unwrap();
    assert_eq!(report.reference.to_string(), v1);
    assert_eq!(report.info.manifest_digest, image.digest());
    assert_eq!(report.manifests_fetched, 1);
    let mut fetched: Vec<String> = report.blobs_fetched.iter().map(|d| d.to_string()).collect();
    let mut expected: Vec<String> = image.blobs.iter().map(|(d, _)| d.clone()).collect();
    fetched.sort();
    expected.sort();
    assert_eq!(fetched, expected);
    assert_eq!(
        report.bytes_fetched,
        image.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    assert_eq!(registry.blob_gets(pushed_gets + 3).len(), pushed_gets + 3);
    assert_eq!(report.info.config.cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(report.info.architecture, arch);

    let root = store.rootfs(&v1).unwrap();
    assert!(
        root.join("bin/busybox").is_file(),
        "no bin/busybox in {}",
        root.display()
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).unwrap(),
        "pulled\n"
    );
    let out = Command::new(root.join("bin/sh"))
        .args(["-c", "echo works"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "works\n");
    assert_eq!(store.resolve(&v1).unwrap().unwrap(), report.info);
    let (busybox_ino, root_ino) = (ino(&root.join("bin/busybox")), ino(&root));

    // Again: the manifest is resolved, no blob is downloaded, nothing is unpacked.
    let again = store.pull_with_report(&v1, &opts).await.unwrap();
    assert_eq!(again.info, report.info);
    assert_eq!(again.manifests_fetched, 1);
    assert!(again.blobs_fetched.is_empty(), "{:?}", again.blobs_fetched);
    assert_eq!(again.bytes_fetched, 0);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(registry.blob_gets(0).len(), pushed_gets + 3);
    assert_eq!(ino(&root.join("bin/busybox")), busybox_ino);
    assert_eq!(ino(&store.rootfs(&v1).unwrap()), root_ino);

    // The index tag resolves to the host's manifest, which is here already; the other
    // platform's blobs are never fetched.
    let multi = format!("{addr}/{REPO}:multi");
    let m = store.pull_with_report(&multi, &opts).await.unwrap();
    assert_eq!(m.info.manifest_digest, image.digest());
    assert!(m.blobs_fetched.is_empty());
    // By digest, with the manifest here: no request at all.
    let by_digest = format!("{addr}/{REPO}@{}", image.digest());
    let d = store.pull_with_report(&by_digest, &opts).await.unwrap();
    assert_eq!((d.manifests_fetched, d.blobs_fetched.len()), (0, 0));
    thread::sleep(Duration::from_millis(200));
    let gets = registry.blob_gets(0);
    assert_eq!(gets.len(), pushed_gets + 3, "{gets:#?}");
    for (digest, _) in &other.blobs {
        assert!(
            !gets.iter().any(|g| g.ends_with(digest.as_str())),
            "fetched {digest}"
        );
    }
    let mut listed: Vec<String> = store.list().into_iter().map(|s| s.reference).collect();
    let mut want = vec![by_digest, multi.clone(), v1.clone()];
    listed.sort();
    want.sort();
    assert_eq!(listed, want);

    // The index into another fresh store: index, manifest and three blobs come down.
    let fresh = Arc::new(ImageStore::open(dir.path().join("data2")).unwrap());
    let m = fresh.pull_with_report(&multi, &opts).await.unwrap();
    assert_eq!(m.info.manifest_digest, image.digest());
    assert_eq!((m.manifests_fetched, m.blobs_fetched.len()), (2, 3));
    assert!(fresh.rootfs(&multi).unwrap().join("bin/busybox").is_file());

    // A tag the registry does not have: the error names the reference and the registry's
    // message.
    let missing = format!("{addr}/{REPO}:missing");
    let err = store.pull(&missing, &opts).await.unwrap_err();
    assert!(matches!(err, ImageError::Pull { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pulling {missing}: manifest unknown")
    );
    assert!(store.resolve(&missing).unwrap().is_none());

    // A registry that is not there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("127.0.0.1:{closed}/{REPO}:v1");
    let err = store.pull(&gone, &opts).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImageError::Pull { .. }), "{err:?}");
    assert!(text.starts_with(&format!("pulling {gone}: ")), "{text}");
    assert!(text.to_lowercase().contains("connect"), "{text}");

    drop(registry);
    eprintln!("image_pull: {:?}", started.elapsed());
}
