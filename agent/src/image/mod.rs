//! The node's local image store: content-addressed blobs, a cache of unpacked layers, root
//! filesystems assembled from them, and the references (`name:tag`) that name images.
//!
//! Layout under `<agent data dir>/images`:
//!
//! ```text
//! blobs/sha256/<hex>      manifests, configs and layer blobs, each verified against its digest
//! layers/<diff-id hex>/   one unpacked layer (whiteout files kept as they are), unpacked once
//! rootfs/<manifest hex>/  an image's root filesystem: hard links into layers/, whiteouts applied
//! refs.json               reference → manifest digest, replaced atomically
//! tmp/                    work in progress; emptied when the store is opened
//! ```
//!
//! Every blob, layer and root filesystem is written under `tmp/` and renamed into place only
//! when complete and verified, so the existence of its final path is the "done" marker: a
//! crash leaves only `tmp/` debris, and importing or installing an image again unpacks nothing
//! that is already there.
//!
//! Root filesystems: layers are unpacked one directory per diff id (so images sharing a base
//! layer unpack it once), and an image's root is built once by merging its layers bottom-up,
//! applying OCI whiteouts, with *hard links* to the layer files: no data is copied, and the
//! result is a plain directory that the runtime mounts read-only (`readonly_rootfs`), shared by
//! every container of the image. Overlayfs (one lowerdir per layer) would avoid even the
//! links, but needs mounts that do not survive an agent restart and root; the plain directory
//! works everywhere, also in unprivileged tests. Not preserved: extended attributes (file
//! capabilities), directory mtimes; device nodes only as root.
//!
//! What the store owns: everything under its root directory. What it must never do:
//! - trust a digest it has not computed: blobs are hashed while written, layers' uncompressed
//!   content is checked against the config's diff ids;
//! - write outside its root: layer entries with `..`, absolute paths, or a symlinked parent are
//!   refused with [`ImageError::UnsafePath`] (see [`unpack`]);
//! - be written to through a root filesystem: [`ImageStore::rootfs`] is for read-only use only
//!   (files are hard links into the layer cache); a container that needs a writable root needs
//!   its own copy;
//! - panic on bad input: malformed archives, JSON and references are errors.
//!
//! Concurrency: one [`ImageStore`] per data directory; its methods serialize on an internal
//! lock, except [`ImageStore::put_blob`], which only ever renames a verified blob into place.
//! A puller feeds blobs with [`ImageStore::put_blob`] and then calls [`ImageStore::install`];
//! it must not run concurrently with [`ImageStore::remove`] (whose garbage collection would
//! delete blobs not yet referenced) — the agent's image manager runs one of them at a time.
//! [`pull`] is that puller for OCI distribution registries ([`ImageStore::pull`]).

pub mod error;
pub mod oci;
pub mod pull;
pub mod reference;
mod rootfs_import;
mod unpack;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

pub use self::{
    error::ImageError,
    oci::ContainerConfig,
    pull::{PullOptions, PullReport},
    reference::{Digest, Reference},
};
use self::{
    oci::{Descriptor, ImageConfig, Index, Manifest},
    reference::Hasher,
};

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Manifests, indexes and configs larger than this are refused (they are read into memory).
pub const MAX_JSON_BLOB: u64 = 16 * 1024 * 1024;

/// An image in the store, as containers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Container defaults: `Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`.
    pub config: ContainerConfig,
    pub os: String,
    pub architecture: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Sum of the layer blob sizes (compressed), as a registry reports it.
    pub size: u64,
}

/// One image of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    /// The references recorded for it (none when the archive did not name it).
    pub references: Vec<Reference>,
    pub manifest_digest: Digest,
    /// Layers unpacked by this import (0 when all were cached already).
    pub layers_unpacked: usize,
    /// Whether this import assembled the root filesystem (false when it existed).
    pub rootfs_created: bool,
}

/// A reference and the image it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub reference: String,
    pub manifest_digest: Digest,
}

/// What [`ImageStore::remove`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub references: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub rootfs: usize,
}

#[derive(Default, Serialize, Deserialize)]
struct RefsFile {
    refs: BTreeMap<String, Digest>,
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    refs: Mutex<BTreeMap<String, Digest>>,
    tmp_counter: AtomicU64,
}

/// Removes a temporary file or directory on drop unless it was renamed into place.
struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn persist(mut self, to: &Path) -> Result<()> {
        let from = self.0.take().unwrap_or_default();
        fs::rename(&from, to).map_err(ImageError::io("renaming into place", to))
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = unpack::remove_any(&p);
        }
    }
}

enum Source<'a> {
    /// An OCI layout directory: blobs are copied in (and verified) as they are needed.
    Dir(&'a Path),
    /// Blobs were streamed into the store already (from a tar archive).
    Store,
}

impl ImageStore {
    /// Opens (creating it if needed) the store under `<data_dir>/images`.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_at(data_dir.as_ref().join("images"))
    }

    /// Opens (creating it if needed) the store rooted at `root`.
    pub fn open_at(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let tmp = root.join("tmp");
        if tmp.exists() {
            unpack::remove_tree(&tmp).map_err(ImageError::io("emptying", &tmp))?;
        }
        for d in ["blobs/sha256", "layers", "rootfs", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ImageError::io("creating directory", &p))?;
        }
        let refs_path = root.join("refs.json");
        let refs = match fs::read(&refs_path) {
            Ok(data) => {
                serde_json::from_slice::<RefsFile>(&data)
                    .map_err(|source| ImageError::InvalidJson {
                        what: "refs index",
                        digest: refs_path.display().to_string(),
                        source,
                    })?
                    .refs
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ImageError::io("reading", &refs_path)(e)),
        };
        Ok(ImageStore {
            root,
            refs: Mutex::new(refs),
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where the layer of uncompressed digest `diff_id` is (or would be) unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    fn rootfs_dir(&self, manifest: &Digest) -> PathBuf {
        self.root.join("rootfs").join(manifest.hex())
    }

    fn tmp(&self, kind: &str) -> TmpGuard {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        TmpGuard(Some(
            self.root
                .join("tmp")
                .join(format!("{kind}-{}-{n}", std::process::id())),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Digest>> {
        self.refs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the blob read from `reader`, which must hash to `expected` (and be `size` bytes
    /// long when given). The content is written to a temporary file and renamed into place
    /// only once verified; a blob already in the store is kept and `reader` is not read.
    pub fn put_blob(
        &self,
        expected: &Digest,
        size: Option<u64>,
        reader: impl Read,
    ) -> Result<PathBuf> {
        let path = self.blob_path(expected);
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self.tmp("blob");
        let mut file = File::create(tmp.path()).map_err(ImageError::io("creating", tmp.path()))?;
        let mut hasher = Hasher::new();
        let mut written = 0u64;
        // One byte past the expected size is enough to know it is wrong.
        let mut reader = reader.take(size.map_or(u64::MAX, |s| s.saturating_add(1)));
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io("reading blob", path)(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(ImageError::io("writing", tmp.path()))?;
            written += n as u64;
        }
        if let Some(expected_size) = size
            && written != expected_size
        {
            return Err(ImageError::SizeMismatch {
                digest: expected.to_string(),
                expected: expected_size,
                actual: written,
            });
        }
        let actual = Digest::from_hasher(hasher);
        if &actual != expected {
            return Err(ImageError::DigestMismatch {
                digest: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        file.sync_all()
            .map_err(ImageError::io("syncing", tmp.path()))?;
        tmp.persist(&path)?;
        Ok(path)
    }

    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::BlobNotFound {
                    digest: digest.to_string(),
                });
            }
            Err(e) => return Err(ImageError::io("opening", &path)(e)),
        };
        let mut data = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(ImageError::io("reading", &path))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::BlobTooLarge {
                digest: digest.to_string(),
                limit: MAX_JSON_BLOB,
            });
        }
        Ok(data)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Digest,
    ) -> Result<T> {
        let data = self.read_blob(digest)?;
        serde_json::from_slice(&data).map_err(|source| ImageError::InvalidJson {
            what,
            digest: digest.to_string(),
            source,
        })
    }

    /// Makes the blob of `desc` present in the store, verified.
    fn fetch(&self, source: &Source<'_>, desc: &Descriptor, context: &str) -> Result<()> {
        let path = self.blob_path(&desc.digest);
        if let Ok(m) = fs::metadata(&path) {
            if m.len() != desc.size {
                return Err(ImageError::SizeMismatch {
                    digest: desc.digest.to_string(),
                    expected: desc.size,
                    actual: m.len(),
                });
            }
            return Ok(());
        }
        match source {
            Source::Dir(dir) => {
                let from = dir.join("blobs/sha256").join(desc.digest.hex());
                let file = File::open(&from).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => ImageError::InvalidImage {
                        context: context.to_owned(),
                        reason: format!("blob {} is missing from the layout", desc.digest),
                    },
                    _ => ImageError::io("opening", &from)(e),
                })?;
                self.put_blob(&desc.digest, Some(desc.size), file)?;
                Ok(())
            }
            Source::Store => Err(ImageError::InvalidImage {
                context: context.to_owned(),
                reason: format!("blob {} is missing from the archive", desc.digest),
            }),
        }
    }

    /// Imports an OCI image layout — a tar archive (as `skopeo copy … oci-archive:FILE:NAME:TAG`
    /// writes it; gzip-compressed is accepted too) or a directory — verifying every blob.
    /// Each manifest of `index.json` (for an image index: the one for the host's platform) is
    /// stored, unpacked, and recorded under the reference its annotations give:
    /// `io.containerd.image.name`, or `org.opencontainers.image.ref.name` when that is a full
    /// reference (contains `:` or `/`). A bare tag there is recorded only with
    /// [`ImageStore::import_oci_archive_as`].
    pub fn import_oci_archive(&self, path: impl AsRef<Path>) -> Result<Vec<ImportedImage>> {
        self.import_oci_archive_as(path, None)
    }

    /// [`ImageStore::import_oci_archive`], naming images whose annotation is only a tag (what
    /// umoci writes) `name:<tag>`, and images without any annotation `name` (with its tag).
    pub fn import_oci_archive_as(
        &self,
        path: impl AsRef<Path>,
        name: Option<&str>,
    ) -> Result<Vec<ImportedImage>> {
        let path = path.as_ref();
        let name = name.map(str::parse::<Reference>).transpose()?;
        let context = path.display().to_string();
        let meta = fs::metadata(path).map_err(ImageError::io("reading", path))?;
        let mut refs = self.lock();
        let (index_json, source, new_blobs) = if meta.is_dir() {
            let index_path = path.join("index.json");
            let data = fs::read(&index_path).map_err(ImageError::io("reading", &index_path))?;
            (data, Source::Dir(path), BTreeSet::new())
        } else {
            let (data, new_blobs) = self.stream_archive(path)?;
            (data, Source::Store, new_blobs)
        };
        let result = self.import_index(&mut refs, &index_json, &source, &context, name.as_ref());
        // Blobs of the archive that no imported image uses (other platforms, artifacts).
        let live = self.live_blobs(&refs);
        for d in new_blobs.difference(&live) {
            let _ = fs::remove_file(self.blob_path(d));
        }
        result
    }

    /// Streams a tar layout: blobs go into the store (verified against their file names),
    /// `index.json` is returned.
    fn stream_archive(&self, path: &Path) -> Result<(Vec<u8>, BTreeSet<Digest>)> {
        let context = path.display().to_string();
        let mut file = File::open(path).map_err(ImageError::io("opening", path))?;
        let mut magic = [0u8; 2];
        let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        drop(file);
        let file = io::BufReader::new(File::open(path).map_err(ImageError::io("opening", path))?);
        let reader: Box<dyn Read> = if gzip {
            Box::new(MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let bad_tar = |source| ImageError::Io {
            op: "reading archive",
            path: path.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        let mut index = None;
        let mut new_blobs = BTreeSet::new();
        for entry in archive.entries().map_err(bad_tar)? {
            let entry = entry.map_err(bad_tar)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw);
            let name = name.trim_start_matches("./");
            if name == "index.json" {
                let mut data = Vec::new();
                entry
                    .take(MAX_JSON_BLOB + 1)
                    .read_to_end(&mut data)
                    .map_err(bad_tar)?;
                if data.len() as u64 > MAX_JSON_BLOB {
                    return Err(ImageError::InvalidImage {
                        context,
                        reason: "index.json is too large".into(),
                    });
                }
                index = Some(data);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let digest = Digest::from_hex(hex)?;
                let size = entry.header().size().map_err(bad_tar)?;
                if !self.has_blob(&digest) {
                    self.put_blob(&digest, Some(size), entry)?;
                    new_blobs.insert(digest);
                }
            }
        }
        let index = index.ok_or_else(|| ImageError::InvalidImage {
            context: context.clone(),
            reason: "no index.json: not an OCI image layout".into(),
        });
        match index {
            Ok(index) => Ok((index, new_blobs)),
            Err(e) => {
                for d in &new_blobs {
                    let _ = fs::remove_file(self.blob_path(d));
                }
                Err(e)
            }
        }
    }

    fn import_index(
        &self,
        refs: &mut BTreeMap<String, Digest>,
        index_json: &[u8],
        source: &Source<'_>,
        context: &str,
        default_name: Option<&Reference>,
    ) -> Result<Vec<ImportedImage>> {
        let index: Index =
            serde_json::from_slice(index_json).map_err(|source| ImageError::InvalidJson {
                what: "index.json of",
                digest: context.to_owned(),
                source,
            })?;
        let (os, arch) = oci::host_platform();
        let mut imported = Vec::new();
        for desc in &index.manifests {
            let references = self.names_of(desc, default_name)?;
            let Some(manifest) = self.pick_manifest(source, desc, context)? else {
                continue;
            };
            let (_, layers_unpacked, rootfs_created) =
                self.install_locked(source, &manifest, context)?;
            let mut changed = false;
            for r in &references {
                changed |= refs.insert(r.to_string(), manifest.digest.clone()).as_ref()
                    != Some(&manifest.digest);
            }
            if changed {
                self.save_refs(refs)?;
            }
            imported.push(ImportedImage {
                references,
                manifest_digest: manifest.digest.clone(),
                layers_unpacked,
                rootfs_created,
            });
        }
        if imported.is_empty() {
            return Err(ImageError::InvalidImage {
                context: context.to_owned(),
                reason: format!("no image for {os}/{arch} in index.json"),
            });
        }
        Ok(imported)
    }

    fn names_of(
        &self,
        desc: &Descriptor,
        default_name: Option<&Reference>,
    ) -> Result<Vec<Reference>> {
        if let Some(full) = desc.annotations.get(oci::ANNOTATION_CONTAINERD_NAME) {
            return Ok(vec![full.parse()?]);
        }
        match (desc.annotations.get(oci::ANNOTATION_REF_NAME), default_name) {
            (Some(r), _) if r.contains(':') || r.contains('/') => Ok(vec![r.parse()?]),
            (Some(tag), Some(name)) => Ok(vec![name.with_tag(tag)?]),
            (None, Some(name)) => Ok(vec![name.clone()]),
            _ => Ok(Vec::new()),
        }
    }

    /// The manifest descriptor for the host's platform behind `desc` (a manifest or an index),
    /// its blob fetched; `None` when it is for another platform or not an image.
    fn pick_manifest(
        &self,
        source: &Source<'_>,
        desc: &Descriptor,
        context: &str,
    ) -> Result<Option<Descriptor>> {
        let (os, arch) = oci::host_platform();
        let matches = |d: &Descriptor| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == os && p.architecture == arch)
        };
        if !matches(desc) {
            return Ok(None);
        }
        self.fetch(source, desc, context)?;
        let value: serde_json::Value = self.read_json("manifest", &desc.digest)?;
        if value.get("manifests").is_some() || oci::is_index(&desc.media_type) {
            let nested: Index = self.read_json("image index", &desc.digest)?;
            let Some(chosen) = nested
                .manifests
                .iter()
                .find(|d| d.platform.is_some() && matches(d))
            else {
                return Err(ImageError::InvalidImage {
                    context: format!("{context}: index {}", desc.digest),
                    reason: format!("no manifest for {os}/{arch}"),
                });
            };
            self.fetch(source, chosen, context)?;
            return Ok(Some(chosen.clone()));
        }
        if value.get("config").is_some() && value.get("layers").is_some() {
            return Ok(Some(desc.clone()));
        }
        tracing::debug!(%context, digest = %desc.digest, media_type = %desc.media_type, "skipping non-image manifest");
        Ok(None)
    }

    /// Stores the config and layers of a manifest whose blob is in the store, unpacks its
    /// layers and assembles its root filesystem (each only if not done before).
    fn install_locked(
        &self,
        source: &Source<'_>,
        desc: &Descriptor,
        context: &str,
    ) -> Result<(ImageInfo, usize, bool)> {
        let manifest: Manifest = self.read_json("manifest", &desc.digest)?;
        let ctx = format!("{context}: manifest {}", desc.digest);
        if let Some(mt) = &manifest.media_type
            && !oci::is_manifest(mt)
        {
            return Err(ImageError::Unsupported {
                context: ctx,
                reason: format!("manifest media type {mt}"),
            });
        }
        self.fetch(source, &manifest.config, &ctx)?;
        let info = self.image_info(&desc.digest)?;
        if info.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::InvalidImage {
                context: ctx,
                reason: format!(
                    "{} layers but {} diff ids in the config",
                    manifest.layers.len(),
                    info.diff_ids.len()
                ),
            });
        }
        let rootfs = self.rootfs_dir(&desc.digest);
        let mut unpacked = 0;
        for (layer, diff_id) in manifest.layers.iter().zip(&info.diff_ids) {
            let Some(compression) = oci::layer_compression(&layer.media_type) else {
                return Err(ImageError::Unsupported {
                    context: format!("{ctx}: layer {}", layer.digest),
                    reason: format!("layer media type `{}`", layer.media_type),
                });
            };
            self.fetch(source, layer, &ctx)?;
            let dir = self.layer_dir(diff_id);
            if dir.is_dir() {
                continue;
            }
            let tmp = self.tmp("layer");
            fs::create_dir(tmp.path()).map_err(ImageError::io("creating", tmp.path()))?;
            unpack::extract_layer(
                &self.blob_path(&layer.digest),
                compression,
                &layer.digest,
                diff_id,
                tmp.path(),
            )?;
            tmp.persist(&dir)?;
            unpacked += 1;
        }
        let mut created = false;
        if !rootfs.is_dir() {
            let tmp = self.tmp("rootfs");
            fs::create_dir(tmp.path()).map_err(ImageError::io("creating", tmp.path()))?;
            let layers: Vec<PathBuf> = info.diff_ids.iter().map(|d| self.layer_dir(d)).collect();
            unpack::assemble(&layers, tmp.path())?;
            tmp.persist(&rootfs)?;
            created = true;
        }
        Ok((info, unpacked, created))
    }

    /// For a puller: the manifest `manifest_digest` and the blobs it names are in the store
    /// (see [`ImageStore::put_blob`]); unpacks it and records `reference` for it.
    pub fn install(&self, reference: &str, manifest_digest: &Digest) -> Result<ImageInfo> {
        let reference: Reference = reference.parse()?;
        let mut refs = self.lock();
        let size = fs::metadata(self.blob_path(manifest_digest))
            .map_err(|_| ImageError::BlobNotFound {
                digest: manifest_digest.to_string(),
            })?
            .len();
        let desc = Descriptor {
            media_type: String::new(),
            digest: manifest_digest.clone(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let (info, _, _) = self.install_locked(&Source::Store, &desc, &reference.to_string())?;
        if refs
            .insert(reference.to_string(), manifest_digest.clone())
            .as_ref()
            != Some(manifest_digest)
        {
            self.save_refs(&refs)?;
        }
        Ok(info)
    }

    /// Adds the references another process recorded since this store was opened.
    fn reload_refs(&self, refs: &mut BTreeMap<String, Digest>) {
        let path = self.root.join("refs.json");
        if let Some(disk) = fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice::<RefsFile>(&d).ok())
        {
            for (k, v) in disk.refs {
                refs.entry(k).or_insert(v);
            }
        }
    }

    fn save_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<()> {
        let path = self.root.join("refs.json");
        let data =
            serde_json::to_vec_pretty(&RefsFile { refs: refs.clone() }).map_err(|source| {
                ImageError::InvalidJson {
                    what: "refs index",
                    digest: path.display().to_string(),
                    source,
                }
            })?;
        let tmp = self.tmp("refs");
        let mut f = File::create(tmp.path()).map_err(ImageError::io("creating", tmp.path()))?;
        f.write_all(&data)
            .map_err(ImageError::io("writing", tmp.path()))?;
        f.sync_all()
            .map_err(ImageError::io("syncing", tmp.path()))?;
        tmp.persist(&path)?;
        if let Ok(dir) = File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn image_info(&self, manifest_digest: &Digest) -> Result<ImageInfo> {
        let manifest: Manifest = self.read_json("manifest", manifest_digest)?;
        let config: ImageConfig = self.read_json("image config", &manifest.config.digest)?;
        Ok(ImageInfo {
            manifest_digest: manifest_digest.clone(),
            config_digest: manifest.config.digest.clone(),
            config: config.config.unwrap_or_default(),
            os: config.os,
            architecture: config.architecture,
            diff_ids: config.rootfs.diff_ids,
            size: manifest.layers.iter().map(|l| l.size).sum(),
        })
    }

    /// The manifest digest `reference` names in the refs index. A reference with a digest
    /// matches any recorded reference of the same name and digest.
    fn lookup(refs: &BTreeMap<String, Digest>, reference: &Reference) -> Option<Digest> {
        if let Some(d) = refs.get(&reference.to_string()) {
            return Some(d.clone());
        }
        let digest = reference.digest.as_ref()?;
        let name = reference.name();
        refs.iter()
            .find(|(k, v)| *v == digest && k.parse::<Reference>().is_ok_and(|r| r.name() == name))
            .map(|(_, v)| v.clone())
    }

    /// The image `reference` names, or `None` when the store does not have it.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let reference: Reference = reference.parse()?;
        let mut refs = self.lock();
        if Self::lookup(&refs, &reference).is_none() {
            // Another process (`ferry image import` beside a running agent) may have added it.
            self.reload_refs(&mut refs);
        }
        match Self::lookup(&refs, &reference) {
            Some(d) => self.image_info(&d).map(Some),
            None => Ok(None),
        }
    }

    /// The image with manifest `digest`, whatever names it (for images imported without a
    /// reference); `None` when its manifest is not in the store.
    pub fn resolve_digest(&self, digest: &Digest) -> Option<ImageInfo> {
        let _refs = self.lock();
        self.image_info(digest).ok()
    }

    /// The root filesystem directory of the image `reference` names, for read-only use
    /// (re-assembled first if it went missing).
    pub fn rootfs(&self, reference: &str) -> Result<PathBuf> {
        let parsed: Reference = reference.parse()?;
        let refs = self.lock();
        let digest = Self::lookup(&refs, &parsed).ok_or_else(|| ImageError::NotFound {
            reference: parsed.to_string(),
        })?;
        let dir = self.rootfs_dir(&digest);
        if !dir.is_dir() {
            let size = fs::metadata(self.blob_path(&digest))
                .map(|m| m.len())
                .unwrap_or(0);
            let desc = Descriptor {
                media_type: String::new(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            self.install_locked(&Source::Store, &desc, reference)?;
        }
        Ok(dir)
    }

    /// All references, sorted.
    pub fn list(&self) -> Vec<ImageSummary> {
        self.lock()
            .iter()
            .map(|(r, d)| ImageSummary {
                reference: r.clone(),
                manifest_digest: d.clone(),
            })
            .collect()
    }

    /// Removes `reference` (a digest reference: every reference of that name and digest) and
    /// garbage-collects the blobs, layers and root filesystems no remaining reference uses.
    /// The caller makes sure no container still runs from a root filesystem it removes.
    pub fn remove(&self, reference: &str) -> Result<RemoveReport> {
        let parsed: Reference = reference.parse()?;
        let mut refs = self.lock();
        let keys: Vec<String> = match &parsed.digest {
            None => refs
                .contains_key(&parsed.to_string())
                .then(|| parsed.to_string())
                .into_iter()
                .collect(),
            Some(d) => refs
                .iter()
                .filter(|(k, v)| {
                    *v == d
                        && k.parse::<Reference>()
                            .is_ok_and(|r| r.name() == parsed.name())
                })
                .map(|(k, _)| k.clone())
                .collect(),
        };
        if keys.is_empty() {
            return Err(ImageError::NotFound {
                reference: parsed.to_string(),
            });
        }
        for k in &keys {
            refs.remove(k);
        }
        self.save_refs(&refs)?;
        let mut report = self.gc(&refs)?;
        report.references = keys;
        Ok(report)
    }

    /// Blobs reachable from the references; `None` for the diff ids when a manifest could not
    /// be read (then nothing is collected).
    fn live(
        &self,
        refs: &BTreeMap<String, Digest>,
    ) -> Option<(BTreeSet<Digest>, BTreeSet<Digest>, BTreeSet<Digest>)> {
        let mut blobs = BTreeSet::new();
        let mut diff_ids = BTreeSet::new();
        let mut manifests = BTreeSet::new();
        for d in refs.values() {
            manifests.insert(d.clone());
            blobs.insert(d.clone());
            let manifest: Manifest = match self.read_json("manifest", d) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "image store: unreadable manifest, skipping garbage collection");
                    return None;
                }
            };
            blobs.insert(manifest.config.digest.clone());
            blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            match self.read_json::<ImageConfig>("image config", &manifest.config.digest) {
                Ok(c) => diff_ids.extend(c.rootfs.diff_ids),
                Err(e) => {
                    tracing::warn!(error = %e, "image store: unreadable config, skipping garbage collection");
                    return None;
                }
            }
        }
        Some((blobs, diff_ids, manifests))
    }

    fn live_blobs(&self, refs: &BTreeMap<String, Digest>) -> BTreeSet<Digest> {
        // Unknown liveness keeps everything: an empty "new" set difference is computed by the
        // caller against this, so return every digest of the store then.
        match self.live(refs) {
            Some((blobs, _, _)) => blobs,
            None => self
                .entries("blobs/sha256")
                .into_iter()
                .map(|(d, _)| d)
                .collect(),
        }
    }

    /// `(digest, path)` of the entries of a digest-named directory of the store.
    fn entries(&self, dir: &str) -> Vec<(Digest, PathBuf)> {
        let dir = self.root.join(dir);
        fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let d = Digest::from_hex(e.file_name().to_str()?).ok()?;
                Some((d, e.path()))
            })
            .collect()
    }

    fn gc(&self, refs: &BTreeMap<String, Digest>) -> Result<RemoveReport> {
        let mut report = RemoveReport::default();
        let Some((blobs, diff_ids, manifests)) = self.live(refs) else {
            return Ok(report);
        };
        // Root filesystems first: they hold links into the layers.
        for (d, p) in self.entries("rootfs") {
            if !manifests.contains(&d) {
                unpack::remove_tree(&p).map_err(ImageError::io("removing", &p))?;
                report.rootfs += 1;
            }
        }
        for (d, p) in self.entries("layers") {
            if !diff_ids.contains(&d) {
                unpack::remove_tree(&p).map_err(ImageError::io("removing", &p))?;
                report.layers += 1;
            }
        }
        for (d, p) in self.entries("blobs/sha256") {
            if !blobs.contains(&d) {
                fs::remove_file(&p).map_err(ImageError::io("removing", &p))?;
                report.blobs += 1;
            }
        }
        Ok(report)
    }
}
