//! The `/etc` files a pod's containers get bind-mounted: `hostname`, `hosts` and `resolv.conf`.
//! Rendering is pure; [`write_pod_etc`] writes them atomically into the pod's directory.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use super::{
    error::{NetworkError, Result},
    ipam::replace_file,
};

/// What goes into the pod's `resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    /// Resolver options such as `ndots:5`.
    pub options: Vec<String>,
}

/// Linux limits a hostname to 64 bytes; a DNS label is at most 63.
const MAX_HOSTNAME: usize = 63;

pub fn validate_hostname(hostname: &str) -> Result<()> {
    let reason = if hostname.is_empty() {
        Some("must not be empty")
    } else if hostname.len() > MAX_HOSTNAME {
        Some("longer than 63 bytes")
    } else if !hostname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || hostname.starts_with(['-', '.'])
        || hostname.ends_with(['-', '.'])
    {
        Some("must be letters, digits, `-` and `.`, not starting or ending with `-` or `.`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetworkError::InvalidInput {
            what: "pod hostname",
            value: hostname.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_word(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NetworkError::InvalidInput {
            what,
            value: value.to_owned(),
            reason: "must be non-empty, without whitespace or control characters",
        });
    }
    Ok(())
}

pub fn render_hostname(hostname: &str) -> String {
    format!("{hostname}\n")
}

pub fn render_hosts(hostname: &str, ip: Ipv4Addr) -> String {
    format!(
        "# Managed by ferry-agent.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    )
}

pub fn render_resolv_conf(dns: &DnsConfig) -> Result<String> {
    let mut out = String::from("# Managed by ferry-agent.\n");
    for ns in &dns.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.searches.is_empty() {
        for s in &dns.searches {
            validate_word("DNS search domain", s)?;
        }
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        for o in &dns.options {
            validate_word("DNS option", o)?;
        }
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// Writes `hostname`, `hosts` and `resolv.conf` into `dir` (created if missing). Each replaces
/// its file atomically (a reader sees the old or the new text) but is not fsynced: they are
/// derived data, written again whenever the pod network is set up, and a machine crash ends
/// every container that could read them.
pub fn write_pod_etc(dir: &Path, hostname: &str, ip: Ipv4Addr, dns: &DnsConfig) -> Result<()> {
    validate_hostname(hostname)?;
    let resolv = render_resolv_conf(dns)?;
    replace_file(
        &dir.join("hostname"),
        render_hostname(hostname).as_bytes(),
        false,
    )?;
    replace_file(
        &dir.join("hosts"),
        render_hosts(hostname, ip).as_bytes(),
        false,
    )?;
    replace_file(&dir.join("resolv.conf"), resolv.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let dns = DnsConfig {
            nameservers: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            render_resolv_conf(&dns).unwrap(),
            "# Managed by ferry-agent.\nnameserver 10.96.0.10\nnameserver fd00::a\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(
            render_resolv_conf(&DnsConfig::default()).unwrap(),
            "# Managed by ferry-agent.\n"
        );
        let bad = DnsConfig {
            searches: vec!["a b".into()],
            ..Default::default()
        };
        assert!(render_resolv_conf(&bad).is_err());
        let bad = DnsConfig {
            options: vec!["ndots:5\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(render_resolv_conf(&bad).is_err());
    }

    #[test]
    fn hostname_validation() {
        assert!(validate_hostname("web-0").is_ok());
        assert!(validate_hostname("a.b").is_ok());
        for bad in ["", "-a", "a-", "a b", "a\nb", "a/b", &"x".repeat(64)] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("pod/etc");
        write_pod_etc(
            &etc,
            "web-0",
            Ipv4Addr::new(10, 0, 0, 5),
            &DnsConfig::default(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "web-0\n"
        );
        assert!(
            std::fs::read_to_string(etc.join("hosts"))
                .unwrap()
                .ends_with("10.0.0.5\tweb-0\n")
        );
        assert!(etc.join("resolv.conf").exists());
    }
}
