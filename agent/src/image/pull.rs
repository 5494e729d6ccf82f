//! Pulling images from an OCI distribution registry (Docker Hub, a registry on loopback, …)
//! into the [`ImageStore`], with `oci-client` as the HTTP client.
//!
//! A pull resolves the reference to a manifest (for an image index: the entry for the host's
//! platform), stores it, downloads the config and the layer blobs the store does not have yet
//! (three at a time), and then [`ImageStore::install`]s the manifest: the layers are unpacked
//! once per diff id and the root filesystem is assembled, exactly as for an imported archive.
//!
//! What this module owns: talking to registries, and choosing what to download. What it must
//! never do:
//! - trust the registry: every manifest is hashed here (and checked against the reference's
//!   digest or the index entry that named it); every blob goes through
//!   [`ImageStore::put_blob`], which verifies digest and size before renaming it into place;
//! - download a blob the store already has (the store is content addressed, so a blob present
//!   under its digest is the blob); manifests of tag references are fetched on every pull,
//!   since a tag can move;
//! - block the async runtime: blob writes (hashing, fsync) and unpacking run on the blocking
//!   pool, fed through a bounded channel so a slow disk slows the download, not memory;
//! - speak plain HTTP to a registry nobody allowed: only loopback registries (`localhost`,
//!   `127.0.0.0/8`, `[::1]`, as containerd does) and [`PullOptions::insecure_registries`].
//!
//! A failed pull keeps the verified blobs it stored (a retry fetches only the rest); the next
//! [`ImageStore::remove`] garbage-collects them if no image uses them. Like every writer of the
//! store, a pull must not run concurrently with [`ImageStore::remove`].

use std::{
    collections::BTreeSet,
    io::{self, Read},
    net::Ipv4Addr,
    sync::{Arc, Once},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, stream};
use oci_client::{
    Client,
    client::{ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    secrets::RegistryAuth,
};
use tokio::sync::mpsc;

use super::{
    Digest, ImageError, ImageInfo, ImageStore, MAX_JSON_BLOB, Reference, Result,
    oci::{self, Descriptor, Index, Manifest},
};

/// Blobs downloaded at once by one pull (containerd's default is 3 too).
const CONCURRENT_DOWNLOADS: usize = 3;
/// Chunks buffered between the download and the blob writer.
const CHANNEL_CHUNKS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time without a single byte from the registry before a request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// Media types a pull accepts for the manifest of a reference, best first.
const ACCEPT: &[&str] = &[
    oci::OCI_INDEX,
    oci::DOCKER_LIST,
    oci::OCI_MANIFEST,
    oci::DOCKER_MANIFEST,
];

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`, as in the reference) that may be reached over plain HTTP.
    /// An entry without a port matches the host on any port. Loopback registries always may.
    pub insecure_registries: Vec<String>,
    /// Basic authentication (user, password); anonymous when `None` (registries that want a
    /// bearer token get an anonymous one).
    pub auth: Option<(String, String)>,
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    /// The reference as recorded in the store (normalized: `busybox` →
    /// `docker.io/library/busybox:latest`).
    pub reference: Reference,
    pub info: ImageInfo,
    /// Manifests and indexes fetched from the registry (a tag is resolved on every pull).
    pub manifests_fetched: usize,
    /// Config and layer blobs downloaded; blobs already in the store are not.
    pub blobs_fetched: Vec<Digest>,
    /// Bytes of those blobs.
    pub bytes_fetched: u64,
}

impl ImageStore {
    /// Pulls `reference` from its registry into the store and records the reference for it;
    /// see [`ImageStore::pull_with_report`].
    pub async fn pull(self: &Arc<Self>, reference: &str, opts: &PullOptions) -> Result<ImageInfo> {
        self.pull_with_report(reference, opts).await.map(|r| r.info)
    }

    /// Pulls `reference` (Docker defaults apply: `busybox:1.36` is
    /// `docker.io/library/busybox:1.36`) and says what was downloaded. Registry and network
    /// failures are [`ImageError::Pull`], naming the reference and the registry's message.
    pub async fn pull_with_report(
        self: &Arc<Self>,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<PullReport> {
        let parsed: Reference = reference.parse()?;
        let name = parsed.to_string();
        let client = client_for(&parsed, opts).map_err(|e| pull_error(&name, &e))?;
        let auth = match &opts.auth {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let image = oci_reference(&parsed);
        client
            .store_auth_if_needed(image.resolve_registry(), &auth)
            .await;
        let puller = Puller {
            store: Arc::clone(self),
            client,
            auth,
            image,
            name,
        };

        let (manifest_digest, manifest, manifests_fetched) = puller.resolve(&parsed).await?;
        let mut wanted = vec![&manifest.config];
        let mut seen = BTreeSet::new();
        for layer in &manifest.layers {
            // Before any download: a layer the store could not unpack fails the pull now.
            if oci::layer_compression(&layer.media_type).is_none() {
                return Err(ImageError::Unsupported {
                    context: format!("{}: layer {}", puller.name, layer.digest),
                    reason: format!("layer media type `{}`", layer.media_type),
                });
            }
            wanted.push(layer);
        }
        wanted.retain(|d| seen.insert(d.digest.clone()) && !self.has_blob(&d.digest));
        // The futures are built before the stream so that no closure over borrowed data is
        // part of the stream's type: that keeps the pull future `Send` for `tokio::spawn`.
        let downloads: Vec<_> = wanted.into_iter().map(|d| puller.fetch_blob(d)).collect();
        let fetched: Vec<(Digest, u64)> = stream::iter(downloads)
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .try_collect()
            .await?;

        let store = Arc::clone(self);
        let (name, digest) = (puller.name.clone(), manifest_digest.clone());
        let info = blocking(move || store.install(&name, &digest)).await?;
        tracing::info!(
            reference = %puller.name,
            manifest = %manifest_digest,
            blobs_fetched = fetched.len(),
            bytes_fetched = fetched.iter().map(|(_, n)| n).sum::<u64>(),
            "image pulled"
        );
        Ok(PullReport {
            reference: parsed,
            info,
            manifests_fetched,
            bytes_fetched: fetched.iter().map(|(_, n)| n).sum(),
            blobs_fetched: fetched.into_iter().map(|(d, _)| d).collect(),
        })
    }
}

/// One pull's client and target.
struct Puller {
    store: Arc<ImageStore>,
    client: Client,
    auth: RegistryAuth,
    image: oci_client::Reference,
    /// The normalized reference, for errors.
    name: String,
}

impl Puller {
    fn error(&self, e: &OciDistributionError) -> ImageError {
        pull_error(&self.name, e)
    }

    /// The image manifest the reference names, stored (for an index: the host platform's
    /// entry), with its digest and how many manifests were fetched.
    async fn resolve(&self, parsed: &Reference) -> Result<(Digest, Manifest, usize)> {
        // A digest reference whose manifest is here already needs no registry round trip.
        if let Some(d) = &parsed.digest
            && self.store.has_blob(d)
            && let Ok(m) = self.store.read_json::<Manifest>("manifest", d)
        {
            return Ok((d.clone(), m, 0));
        }
        let body = self.fetch_manifest(&self.image).await?;
        let digest = Digest::of(&body);
        if let Some(want) = &parsed.digest
            && want != &digest
        {
            return Err(ImageError::DigestMismatch {
                digest: want.to_string(),
                actual: digest.to_string(),
            });
        }
        match parse_manifest(&self.name, &digest, &body)? {
            Parsed::Manifest(m) => {
                self.store_manifest(&digest, body).await?;
                Ok((digest, m, 1))
            }
            Parsed::Index(index) => {
                let entry = choose_platform(&index).ok_or_else(|| {
                    let (os, arch) = oci::host_platform();
                    ImageError::InvalidImage {
                        context: format!("{}: index {digest}", self.name),
                        reason: format!("no manifest for {os}/{arch}"),
                    }
                })?;
                let chosen = entry.digest.clone();
                let context = format!("{}: index {digest}", self.name);
                if self.store.has_blob(&chosen)
                    && let Ok(m) = self.store.read_json::<Manifest>("manifest", &chosen)
                {
                    return Ok((chosen, m, 1));
                }
                let body = self
                    .fetch_manifest(&self.image.clone_with_digest(chosen.to_string()))
                    .await?;
                let actual = Digest::of(&body);
                if actual != chosen {
                    return Err(ImageError::DigestMismatch {
                        digest: chosen.to_string(),
                        actual: actual.to_string(),
                    });
                }
                match parse_manifest(&self.name, &chosen, &body)? {
                    Parsed::Manifest(m) => {
                        self.store_manifest(&chosen, body).await?;
                        Ok((chosen, m, 2))
                    }
                    Parsed::Index(_) => Err(ImageError::Unsupported {
                        context,
                        reason: format!("nested image index {chosen}"),
                    }),
                }
            }
        }
    }

    async fn fetch_manifest(&self, image: &oci_client::Reference) -> Result<Vec<u8>> {
        let (body, _) = self
            .client
            .pull_manifest_raw(image, &self.auth, ACCEPT)
            .await
            .map_err(|e| self.error(&e))?;
        if body.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::Pull {
                reference: self.name.clone(),
                message: format!("manifest larger than {MAX_JSON_BLOB} bytes"),
            });
        }
        Ok(body.to_vec())
    }

    async fn store_manifest(&self, digest: &Digest, body: Vec<u8>) -> Result<()> {
        if self.store.has_blob(digest) {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let digest = digest.clone();
        blocking(move || {
            store
                .put_blob(&digest, Some(body.len() as u64), &body[..])
                .map(drop)
        })
        .await
    }

    /// Downloads one blob into the store: the HTTP body streams through a bounded channel into
    /// [`ImageStore::put_blob`] on the blocking pool, which hashes and writes it. Returns the
    /// digest and the bytes received.
    async fn fetch_blob(&self, desc: &Descriptor) -> Result<(Digest, u64)> {
        let digest = desc.digest.to_string();
        let blob_error = |message: String| ImageError::Pull {
            reference: self.name.clone(),
            message: format!("blob {digest}: {message}"),
        };
        let mut body = self
            .client
            .pull_blob_stream(&self.image, digest.as_str())
            .await
            .map_err(|e| blob_error(describe(&e)))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let store = Arc::clone(&self.store);
        let (d, size) = (desc.digest.clone(), desc.size);
        let writer = tokio::task::spawn_blocking(move || {
            store.put_blob(&d, Some(size), ChannelReader::new(rx))
        });
        let mut received = 0u64;
        let mut network_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    // The writer hung up: it has an error (size, digest, disk) to report.
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    network_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        match (join(writer).await, network_error) {
            // put_blob verified digest and size itself: an error the stream reported after
            // the last byte (oci-client's own digest check) cannot make that content wrong.
            (Ok(_), _) => Ok((desc.digest.clone(), received)),
            (Err(_), Some(e)) => Err(blob_error(error_chain(&e))),
            (Err(e), None) => Err(e),
        }
    }
}

enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

fn parse_manifest(name: &str, digest: &Digest, body: &[u8]) -> Result<Parsed> {
    let invalid = |source| ImageError::InvalidJson {
        what: "manifest",
        digest: digest.to_string(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    let context = format!("{name}: manifest {digest}");
    let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
    if schema != Some(2) {
        return Err(ImageError::Unsupported {
            context,
            reason: format!(
                "manifest schema version {} (only 2)",
                schema.map_or_else(|| "none".into(), |v| v.to_string())
            ),
        });
    }
    let media_type = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if oci::is_index(media_type) || value.get("manifests").is_some() {
        return serde_json::from_value(value)
            .map(Parsed::Index)
            .map_err(invalid);
    }
    if value.get("config").is_some() && value.get("layers").is_some() {
        return serde_json::from_value(value)
            .map(Parsed::Manifest)
            .map_err(invalid);
    }
    Err(ImageError::Unsupported {
        context,
        reason: format!("not an image manifest (media type `{media_type}`)"),
    })
}

/// The index entry for the host's platform (first match; variants are not compared).
fn choose_platform(index: &Index) -> Option<&Descriptor> {
    let (os, arch) = oci::host_platform();
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    })
}

fn oci_reference(r: &Reference) -> oci_client::Reference {
    let (registry, repository) = (r.registry.clone(), r.repository.clone());
    match (&r.tag, &r.digest) {
        (Some(tag), Some(d)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.clone(),
            d.to_string(),
        ),
        (None, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
        (tag, None) => oci_client::Reference::with_tag(
            registry,
            repository,
            tag.clone()
                .unwrap_or_else(|| super::reference::DEFAULT_TAG.into()),
        ),
    }
}

/// The host part of a registry (`[::1]:5000` → `[::1]`, `localhost:5000` → `localhost`).
fn registry_host(registry: &str) -> &str {
    if registry.starts_with('[') {
        registry.find(']').map_or(registry, |i| &registry[..=i])
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

fn is_loopback(registry: &str) -> bool {
    match registry_host(registry) {
        "localhost" | "[::1]" => true,
        host => host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()),
    }
}

/// Whether `registry` may be reached over plain HTTP.
fn plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry)
        || insecure.iter().any(|entry| {
            let entry = entry.trim_start_matches("http://").trim_end_matches('/');
            // An entry without a port (its host is all of it) matches any port.
            entry == registry || (registry_host(entry) == entry && entry == registry_host(registry))
        })
}

fn client_for(r: &Reference, opts: &PullOptions) -> Result<Client, OciDistributionError> {
    // reqwest is built without a bundled crypto provider; the workspace uses ring everywhere.
    // Installing the process default is idempotent here and a no-op when the binary did it.
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let protocol = if plain_http(&r.registry, &opts.insecure_registries) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        // Indexes are resolved here, with the raw manifest.
        platform_resolver: None,
        ..Default::default()
    })
}

fn pull_error(reference: &str, e: &OciDistributionError) -> ImageError {
    ImageError::Pull {
        reference: reference.to_owned(),
        message: describe(e),
    }
}

/// The registry's own words when it sent an error document, else the error and its causes.
fn describe(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, .. } if !envelope.errors.is_empty() => {
            envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!("unauthorized (401 from {url}): wrong or missing credentials")
        }
        OciDistributionError::ServerError { code, url, message } => {
            let message = message.trim();
            if message.is_empty() {
                format!("HTTP {code} from {url}")
            } else {
                format!("HTTP {code} from {url}: {message}")
            }
        }
        other => {
            let text = error_chain(other);
            // rustls' words for an HTTP answer to a TLS hello.
            if text.contains("InvalidContentType") {
                format!(
                    "{text} (the registry may speak plain HTTP: allow it as an insecure registry)"
                )
            } else {
                text
            }
        }
    }
}

/// `error: cause: cause`, skipping causes whose text the previous one already includes.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Runs store work on the blocking pool; a panic there resumes here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    join(tokio::task::spawn_blocking(f)).await
}

async fn join<T>(handle: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match handle.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ImageError::Io {
            op: "image store task",
            path: Default::default(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// A blocking [`Read`] over chunks sent from async code; end of data when the sender is
/// dropped.
struct ChannelReader<B> {
    rx: mpsc::Receiver<B>,
    chunk: Option<B>,
    pos: usize,
}

impl<B: AsRef<[u8]>> ChannelReader<B> {
    fn new(rx: mpsc::Receiver<B>) -> Self {
        ChannelReader {
            rx,
            chunk: None,
            pos: 0,
        }
    }
}

impl<B: AsRef<[u8]>> Read for ChannelReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &chunk.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = Some(chunk);
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_insecure_registries() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(plain_http(r, &[]), "{r}");
        }
        for r in [
            "docker.io",
            "localhost.example:5000",
            "10.0.0.1:5000",
            "[::2]:5000",
        ] {
            assert!(!plain_http(r, &[]), "{r}");
        }
        let insecure = vec!["10.0.0.1:5000".to_owned(), "registry.lan".to_owned()];
        assert!(plain_http("10.0.0.1:5000", &insecure));
        assert!(!plain_http("10.0.0.1:5001", &insecure));
        assert!(plain_http("registry.lan", &insecure));
        assert!(plain_http("registry.lan:443", &insecure));
        assert!(!plain_http("quay.io", &insecure));
    }

    #[test]
    fn references_map_to_the_registry() {
        let r = oci_reference(&"busybox:1.36".parse().unwrap());
        assert_eq!(
            (r.registry(), r.resolve_registry(), r.repository(), r.tag()),
            (
                "docker.io",
                "index.docker.io",
                "library/busybox",
                Some("1.36")
            )
        );
        let d = Digest::of(b"x");
        let r = oci_reference(&format!("[::1]:5000/a/b@{d}").parse().unwrap());
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("[::1]:5000", "a/b", None, Some(d.to_string().as_str()))
        );
    }

    #[test]
    fn index_picks_the_host_platform() {
        let (os, arch) = oci::host_platform();
        let d = |s: &[u8]| Digest::of(s).to_string();
        let index: Index = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                { "digest": d(b"a"), "size": 1, "platform": { "os": "linux", "architecture": "not-this" } },
                { "digest": d(b"b"), "size": 1, "platform": { "os": "unknown", "architecture": "unknown" } },
                { "digest": d(b"c"), "size": 1, "platform": { "os": os, "architecture": arch } },
            ],
        }))
        .unwrap();
        assert_eq!(choose_platform(&index).unwrap().digest.to_string(), d(b"c"));
        let body =
            serde_json::to_vec(&serde_json::json!({ "schemaVersion": 1, "name": "x" })).unwrap();
        assert!(matches!(
            parse_manifest("x", &Digest::of(&body), &body),
            Err(ImageError::Unsupported { .. })
        ));
    }

    #[test]
    fn registry_errors_read_like_the_registry() {
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"v2"}}]}"#,
        )
        .unwrap();
        let e = pull_error(
            "localhost:5000/x:v2",
            &OciDistributionError::RegistryError {
                envelope,
                url: "http://localhost:5000/v2/x/manifests/v2".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "pulling localhost:5000/x:v2: manifest unknown"
        );
    }

    #[test]
    fn channel_reader_reads_across_chunks() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(b"hel".to_vec()).unwrap();
        tx.try_send(Vec::new()).unwrap();
        tx.try_send(b"lo".to_vec()).unwrap();
        drop(tx);
        let mut out = String::new();
        ChannelReader::new(rx).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");
    }
}
