//! TLS for outgoing HTTP(S): one rustls crypto provider (ring, the one the NATS client
//! links too) installed for the whole process, and the reqwest clients every service
//! builds through [`http_client`], which trust the system's roots plus the private CA
//! named by `TORONTO_TLS_CA_FILE`.
//!
//! reqwest is built with `rustls-no-provider`: a client built before a provider is
//! installed would panic, so every service ([`crate::ServiceRuntime::start`]), the CLI
//! and the test kit call [`install_crypto_provider`] first, and [`http_client`] calls it
//! again (it is idempotent).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Why the private CA cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read.
    #[error("cannot read the CA file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no valid PEM certificate.
    #[error("the CA file {path} holds no valid PEM certificate")]
    Parse {
        /// The file.
        path: PathBuf,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The CA file holds no certificate at all.
    #[error("the CA file {path} holds no certificate")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The extra roots every [`http_client`] trusts (process-wide, set by [`trust_ca_file`]).
static EXTRA_ROOTS: RwLock<Vec<reqwest::Certificate>> = RwLock::new(Vec::new());

/// Installs rustls's ring provider as the process default. Idempotent: a provider
/// already installed (by an earlier call or by anyone else) is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every PEM certificate of `path` and trusts them, beside the system's roots, in
/// every client [`http_client`] builds from now on. `None` trusts only the system's
/// roots again.
pub fn trust_ca_file(path: Option<&Path>) -> Result<(), TlsError> {
    let certs = match path {
        None => Vec::new(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| TlsError::Parse {
                    path: path.to_owned(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsError::Empty {
                    path: path.to_owned(),
                });
            }
            certs
        }
    };
    *EXTRA_ROOTS.write().unwrap_or_else(|e| e.into_inner()) = certs;
    Ok(())
}

/// A reqwest client builder with the crypto provider installed and the private CA (if
/// any) trusted beside the system's roots. http and https both work.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    let roots = EXTRA_ROOTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    reqwest::Client::builder().tls_certs_merge(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = trust_ca_file(Some(&missing)).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = trust_ca_file(Some(&empty)).unwrap_err();
        assert!(matches!(e, TlsError::Empty { .. }), "{e}");
    }

    #[test]
    fn a_client_builds_without_any_setup() {
        http_client().build().unwrap();
    }
}
