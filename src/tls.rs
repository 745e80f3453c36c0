//! TLS set-up shared by every outbound link (the manager, config
//! downloads, the Pushgateway): which roots are trusted and which client
//! certificate is shown. A leaf module, so that `config.rs` can validate the
//! files at start and the links can build from them without importing each
//! other.

use std::path::{Path, PathBuf};

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::error::{Error, Result};

/// The PEM files the operator named (section 9), as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Where distributions keep the system trust store as one PEM bundle,
/// in the order curl and OpenSSL look: Debian and Alpine, then Fedora and
/// RHEL, then the BSD-style name some images use.
const SYSTEM_BUNDLES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/cert.pem",
];

/// Which roots a link trusts, for `--check-config` and `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// `OUTPOST_CA_FILE`, instead of everything else.
    CaFile(PathBuf),
    /// The system store, as curl uses it (a private CA installed the
    /// distribution's way, `update-ca-certificates`, is trusted).
    System(PathBuf),
    /// The web roots built into the binary: a device without a system store.
    BuiltIn,
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::CaFile(p) => write!(f, "OUTPOST_CA_FILE {}", p.display()),
            Roots::System(p) => write!(f, "the system store {}", p.display()),
            Roots::BuiltIn => f.write_str("the built-in web roots"),
        }
    }
}

/// TLS settings shared by the manager link, config downloads and the
/// Pushgateway: `OUTPOST_CA_FILE` when given, else the system store under
/// `root` when there is one, else the built-in roots; client certificate
/// and key come as a pair.
pub fn client_config(files: &TlsFiles, root: &Path) -> Result<(TlsConfig, Roots)> {
    let mut builder = TlsConfig::builder();
    let roots = match &files.ca_file {
        Some(path) => {
            let certs = read_certs("OUTPOST_CA_FILE", path)?;
            builder = builder.root_certs(RootCerts::new_with_certs(&certs));
            Roots::CaFile(path.clone())
        }
        None => match system_roots(root) {
            Some((path, certs)) => {
                builder = builder.root_certs(RootCerts::from(certs));
                Roots::System(path)
            }
            None => Roots::BuiltIn,
        },
    };
    match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("OUTPOST_CLIENT_CERT", cert)?;
            let key = read_key(key)?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (Some(_), None) => {
            return Err(Error::config(
                "OUTPOST_CLIENT_KEY",
                "OUTPOST_CLIENT_CERT is set but its key is not",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "OUTPOST_CLIENT_CERT",
                "OUTPOST_CLIENT_KEY is set but its certificate is not",
            ));
        }
        (None, None) => {}
    }
    Ok((builder.build(), roots))
}

/// The first system bundle under `root` that holds at least one
/// certificate. An unreadable or empty one is passed over (a device whose
/// store is broken still reaches public hosts through the built-in roots).
fn system_roots(root: &Path) -> Option<(PathBuf, Vec<Certificate<'static>>)> {
    SYSTEM_BUNDLES.iter().find_map(|relative| {
        let path = root.join(relative);
        let pem = std::fs::read(&path).ok()?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            log::warn!(
                "{} holds no certificate; looking further for a trust store",
                path.display()
            );
            return None;
        }
        Some((Path::new("/").join(relative), certs))
    })
}

fn read_pem(setting: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(setting, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(setting: &'static str, path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = read_pem(setting, path)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::config(
                    setting,
                    format!("{} is not valid PEM: {e}", path.display()),
                ));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::config(
            setting,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKey<'static>> {
    let pem = read_pem("OUTPOST_CLIENT_KEY", path)?;
    // The error text of a key parser might quote key material: say only what
    // file and what was expected.
    PrivateKey::from_pem(&pem).map_err(|_| {
        Error::config(
            "OUTPOST_CLIENT_KEY",
            format!("{} holds no usable PEM private key", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_store_is_used_unless_a_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("outpost-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = TlsFiles::default();
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(client_config(&files, &dir).unwrap().1, Roots::BuiltIn);
        std::fs::create_dir_all(dir.join("etc/ssl/certs")).unwrap();
        std::fs::write(
            dir.join("etc/ssl/certs/ca-certificates.crt"),
            "no pem here\n",
        )
        .unwrap();
        assert_eq!(client_config(&files, &dir).unwrap().1, Roots::BuiltIn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
