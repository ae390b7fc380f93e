//! x509 TLS credentials loaded the way QEMU's `tls-creds-x509` object loads them:
//! a directory holding `ca-cert.pem`, `server-cert.pem` and `server-key.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Errors loading TLS credentials; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A credentials file could not be read.
    #[error("Unable to read '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file held no usable PEM item.
    #[error("No {what} found in '{path}'")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// rustls refused the configuration (bad key, CA, ...).
    #[error("Invalid TLS credentials in '{dir}': {msg}")]
    Config {
        /// The credentials directory.
        dir: PathBuf,
        /// rustls' reason.
        msg: String,
    },
    /// Only `endpoint=server` credentials can be used by a server.
    #[error(
        "tls-creds-x509 '{id}': endpoint must be 'server' for an NBD server, not '{endpoint}'"
    )]
    Endpoint {
        /// Object id.
        id: String,
        /// The endpoint given.
        endpoint: String,
    },
}

/// Options of a `tls-creds-x509` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Creds {
    /// Object id.
    pub id: String,
    /// Directory with the PEM files.
    pub dir: PathBuf,
    /// `endpoint=server|client`.
    pub endpoint: String,
    /// Require and verify client certificates (QEMU's default: on).
    pub verify_peer: bool,
}

impl X509Creds {
    /// Parses `tls-creds-x509,id=...,dir=...,endpoint=server[,verify-peer=on|off]`
    /// (the text after `--object`).
    pub fn parse_object(s: &str) -> Result<Self, String> {
        let mut parts = oxemu_opts::keyval::pairs(s).into_iter();
        let ty = match parts.next() {
            Some((k, None)) => k,
            Some((k, Some(v))) if k == "qom-type" => v,
            _ => String::new(),
        };
        if ty != "tls-creds-x509" {
            return Err(format!(
                "Object type '{ty}' is not supported (only tls-creds-x509)"
            ));
        }
        let mut c = X509Creds {
            id: String::new(),
            dir: PathBuf::new(),
            endpoint: "client".into(),
            verify_peer: true,
        };
        for (k, v) in parts {
            let v = v.ok_or_else(|| format!("Invalid parameter '{k}' in --object"))?;
            let (k, v) = (k.as_str(), v.as_str());
            match k {
                "id" => c.id = v.into(),
                "dir" => c.dir = v.into(),
                "endpoint" => c.endpoint = v.into(),
                "verify-peer" => {
                    c.verify_peer = match v {
                        "on" | "yes" | "true" => true,
                        "off" | "no" | "false" => false,
                        _ => {
                            return Err(format!(
                                "Parameter 'verify-peer' expects 'on' or 'off', not '{v}'"
                            ))
                        }
                    }
                }
                // Accepted by QEMU, but nothing here would act on them: refused
                // rather than ignored.
                "priority" | "sanity-check" | "loaded" => {
                    return Err(format!(
                        "tls-creds-x509 property '{k}' is not supported by oxemu-nbd"
                    ))
                }
                _ => return Err(format!("Property 'tls-creds-x509.{k}' not found")),
            }
        }
        if c.id.is_empty() {
            return Err("Parameter 'id' is missing".into());
        }
        if c.dir.as_os_str().is_empty() {
            return Err(format!(
                "tls-creds-x509 '{}': parameter 'dir' is missing",
                c.id
            ));
        }
        Ok(c)
    }

    /// Builds the rustls server configuration.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        if self.endpoint != "server" {
            return Err(TlsError::Endpoint {
                id: self.id.clone(),
                endpoint: self.endpoint.clone(),
            });
        }
        server_config(&self.dir, self.verify_peer)
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Loads `dir/{ca-cert,server-cert,server-key}.pem` into a server configuration.
/// With `verify_peer`, clients must present a certificate signed by the CA.
pub fn server_config(dir: &Path, verify_peer: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg_err = |msg: String| TlsError::Config {
        dir: dir.into(),
        msg,
    };
    let ca = certs(&dir.join("ca-cert.pem"))?;
    let chain = certs(&dir.join("server-cert.pem"))?;
    let key_path = dir.join("server-key.pem");
    let key_pem = read_pem(&key_path)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsError::Read {
            path: key_path.clone(),
            source,
        })?
        .ok_or(TlsError::Empty {
            path: key_path,
            what: "private key",
        })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(e.to_string()))?;
    let builder = if verify_peer {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| cfg_err(format!("ca-cert.pem: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| cfg_err(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| cfg_err(e.to_string()))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_syntax_matches_qemu() {
        let c = X509Creds::parse_object(
            "tls-creds-x509,id=tls0,dir=/x,endpoint=server,verify-peer=off",
        )
        .unwrap();
        assert_eq!(c.id, "tls0");
        assert!(!c.verify_peer);
        assert!(X509Creds::parse_object("tls-creds-psk,id=a,dir=/x").is_err());
        assert!(X509Creds::parse_object("tls-creds-x509,dir=/x").is_err());
    }

    #[test]
    fn missing_credentials_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = server_config(d.path(), true).unwrap_err().to_string();
        assert!(e.contains("ca-cert.pem"), "{e}");
    }
}
