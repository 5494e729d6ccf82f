//! `ferry image import-rootfs`: an image made of one root filesystem tarball, as
//! `docker import` makes one — for machines without a registry, and for images built by other
//! tools as a plain tree of files.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use flate2::read::MultiGzDecoder;

use super::{
    ContainerConfig, Digest, ImageError, ImageInfo, ImageStore, Result,
    oci::{self, Descriptor, ImageConfig, Manifest, RootFs},
    reference::Hasher,
};

/// Digest of everything `r` yields.
fn digest_of(mut r: impl Read, what: &Path) -> Result<(Digest, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io("reading", what)(e)),
        };
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((Digest::from_hasher(h), n_total))
}

impl ImageStore {
    /// Stores the tarball at `path` (plain or gzip-compressed) as the single layer of a new
    /// image for this machine's platform, with `config` as its container defaults, and records
    /// it under `reference`.
    pub fn import_rootfs(
        &self,
        path: &Path,
        reference: &str,
        config: ContainerConfig,
    ) -> Result<ImageInfo> {
        let open = || File::open(path).map_err(ImageError::io("opening", path));
        let mut magic = [0u8; 2];
        let gz = open()?.read(&mut magic).map(|n| n == 2).unwrap_or(false) && magic == [0x1f, 0x8b];
        let (blob_digest, blob_size) = digest_of(open()?, path)?;
        let diff_id = if gz {
            digest_of(MultiGzDecoder::new(open()?), path)?.0
        } else {
            blob_digest.clone()
        };
        self.put_blob(&blob_digest, Some(blob_size), open()?)?;
        let (os, architecture) = oci::host_platform();
        let image_config = ImageConfig {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            config: Some(config),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id],
            },
        };
        let config_json =
            serde_json::to_vec(&image_config).map_err(|e| ImageError::Unsupported {
                context: reference.to_owned(),
                reason: e.to_string(),
            })?;
        let config_digest = Digest::of(&config_json);
        self.put_blob(
            &config_digest,
            Some(config_json.len() as u64),
            &config_json[..],
        )?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::OCI_CONFIG.into(),
                digest: config_digest,
                size: config_json.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            layers: vec![Descriptor {
                media_type: if gz {
                    oci::LAYER_TAR_GZIP.into()
                } else {
                    oci::LAYER_TAR.into()
                },
                digest: blob_digest,
                size: blob_size,
                platform: None,
                annotations: Default::default(),
            }],
        };
        let manifest_json = serde_json::to_vec(&manifest).map_err(|e| ImageError::Unsupported {
            context: reference.to_owned(),
            reason: e.to_string(),
        })?;
        let manifest_digest = Digest::of(&manifest_json);
        self.put_blob(
            &manifest_digest,
            Some(manifest_json.len() as u64),
            &manifest_json[..],
        )?;
        self.install(reference, &manifest_digest)
    }
}
