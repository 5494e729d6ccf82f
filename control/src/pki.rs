//! The cluster PKI: a CA created by the first member, certificates for members, administrators
//! and (later) nodes, join tokens, and how a certificate maps to a user.
//!
//! Files live in `<data-dir>/pki/` (keys 0600). Identities follow Kubernetes: the certificate's
//! CN is the user name and each O is a group. Members' serving certificates carry the DNS name
//! [`SERVER_NAME`], which clients verify, and only members' do, so a client or node
//! certificate from the same CA can never pose as the API server. Node certificates also serve
//! (the agent's logs and exec endpoint) under the node's name, which members verify.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The DNS name in every serving certificate; clients verify servers against it.
pub const SERVER_NAME: &str = "ferry-apiserver";
/// Cluster administrators: full access.
pub const GROUP_MASTERS: &str = "system:masters";
/// Control-plane members: raft traffic and forwarding.
pub const GROUP_MEMBERS: &str = ferry_api::client::GROUP_MEMBERS;
pub const ADMIN_USER: &str = "ferry-admin";
/// Node agents: group, and the prefix of their user names (`system:node:<node-name>`).
pub const GROUP_NODES: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate: {0}")]
    BadCert(String),
    #[error("invalid join token: {0}")]
    BadToken(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path`, readable only by the owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Who a certificate (or, later, a token) says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(UserInfo { name, groups })
}

pub use ferry_api::join::cert_hash;

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::BadCert(format!("not a PEM certificate: {e:?}")))
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Hosts (IPs or DNS names) to serve as; empty for a client-only certificate. [`SERVER_NAME`]
    /// is added to the serving certificates of members (organization [`GROUP_MEMBERS`]).
    pub serve_hosts: Vec<String>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(1);
    let end = now + chrono::Duration::days(days);
    use chrono::Datelike;
    params.not_before = rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
}

fn leaf_params(subject: &Subject) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject.common_name.clone());
    for o in &subject.organizations {
        dn.push(DnType::OrganizationName, o.clone());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !subject.serve_hosts.is_empty() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        // Only members serve the API: nothing else may carry the name clients verify.
        let mut sans = Vec::new();
        if subject.organizations.iter().any(|o| o == GROUP_MEMBERS) {
            sans.push(SanType::DnsName(SERVER_NAME.try_into()?));
        }
        for h in &subject.serve_hosts {
            match h.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(h.as_str().try_into()?)),
            }
        }
        params.subject_alt_names = sans;
    }
    validity(&mut params, 365);
    Ok(params)
}

/// Freshly generated credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A private key and a certificate signing request for it.
pub fn new_csr(common_name: &str) -> Result<(String, String), PkiError> {
    ferry_api::join::new_csr(common_name).map_err(|e| PkiError::BadCert(e.to_string()))
}

/// The cluster CA as held by a member.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_key_pem: String,
}

impl Pki {
    pub fn dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("pki")
    }

    /// The CA in `data_dir`, if this member has one.
    pub fn load(data_dir: &Path) -> Result<Option<Pki>, PkiError> {
        let dir = Self::dir_of(data_dir);
        let cert = dir.join("ca.crt");
        if !cert.exists() {
            return Ok(None);
        }
        let ca_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
        let key = dir.join("ca.key");
        let ca_key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        Ok(Some(Pki {
            dir,
            ca_pem,
            ca_key_pem,
        }))
    }

    /// Creates a new cluster CA in `data_dir`.
    pub fn create(data_dir: &Path) -> Result<Pki, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        Self::install(data_dir, &cert.pem(), &key.serialize_pem())
    }

    /// Stores a CA received from the cluster (a joining member).
    pub fn install(data_dir: &Path, ca_pem: &str, ca_key_pem: &str) -> Result<Pki, PkiError> {
        let dir = Self::dir_of(data_dir);
        write_private(&dir.join("ca.key"), ca_key_pem)?;
        write_private(&dir.join("ca.crt"), ca_pem)?;
        Ok(Pki {
            dir,
            ca_pem: ca_pem.to_string(),
            ca_key_pem: ca_key_pem.to_string(),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// SHA-256 of the CA certificate, as pinned in join tokens.
    pub fn ca_hash(&self) -> Result<String, PkiError> {
        Ok(cert_hash(&pem_to_der(&self.ca_pem)?))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca_pem, key)?)
    }

    /// New key and certificate for `subject`.
    pub fn issue(&self, subject: &Subject) -> Result<Credentials, PkiError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(subject)?.signed_by(&key, &self.issuer()?)?;
        Ok(Credentials {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the key in `csr_pem` for `subject`. Only the key is taken from the request: names,
    /// groups and usages are the signer's decision.
    pub fn sign_csr(&self, csr_pem: &str, subject: &Subject) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCert(format!("certificate signing request: {e}")))?;
        let cert = leaf_params(subject)?.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// Member credentials (`member.crt`, `member.key`) in this member's PKI folder.
    pub fn member_credentials(&self) -> Result<Option<Credentials>, PkiError> {
        let cert = self.dir.join("member.crt");
        if !cert.exists() {
            return Ok(None);
        }
        let key = self.dir.join("member.key");
        Ok(Some(Credentials {
            cert_pem: std::fs::read_to_string(&cert).map_err(io(&cert))?,
            key_pem: std::fs::read_to_string(&key).map_err(io(&key))?,
        }))
    }

    pub fn save_member_credentials(&self, c: &Credentials) -> Result<(), PkiError> {
        write_private(&self.dir.join("member.key"), &c.key_pem)?;
        write_private(&self.dir.join("member.crt"), &c.cert_pem)
    }
}

/// The member identity for raft id `id`.
pub fn member_subject(id: u64, advertise: &str) -> Subject {
    let host = advertise
        .rsplit_once(':')
        .map_or(advertise, |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string();
    let mut hosts = vec![host, "localhost".into(), "127.0.0.1".into()];
    hosts.dedup();
    Subject {
        common_name: format!("system:ferry-member:{id}"),
        organizations: vec![GROUP_MEMBERS.into()],
        serve_hosts: hosts,
    }
}

pub use ferry_api::join::JoinToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_issues_server_and_client_certs_with_identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::create(dir.path()).expect("ca");
        let loaded = Pki::load(dir.path()).expect("load").expect("present");
        assert_eq!(
            loaded.ca_hash().expect("hash"),
            pki.ca_hash().expect("hash")
        );
        let member = pki
            .issue(&member_subject(3, "10.0.0.5:7420"))
            .expect("member cert");
        let user = user_from_cert(&pem_to_der(&member.cert_pem).expect("der")).expect("user");
        assert_eq!(user.name, "system:ferry-member:3");
        assert!(user.in_group(GROUP_MEMBERS));
        let (csr, _key) = new_csr("whatever-the-requester-says").expect("csr");
        let admin = Subject {
            common_name: ADMIN_USER.into(),
            organizations: vec![GROUP_MASTERS.into()],
            serve_hosts: vec![],
        };
        let signed = pki.sign_csr(&csr, &admin).expect("sign");
        let user = user_from_cert(&pem_to_der(&signed).expect("der")).expect("user");
        assert_eq!(
            user,
            UserInfo {
                name: ADMIN_USER.into(),
                groups: vec![GROUP_MASTERS.into()]
            }
        );
        assert!(pki.sign_csr("garbage", &admin).is_err());
    }
}
