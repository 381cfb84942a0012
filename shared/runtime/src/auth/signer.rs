//! The sending side: an NKey user seed that signs requests, read from a file kept at
//! mode 0600. The seed is never logged (the `Debug` form shows the public key only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::HeaderMap;
use nkeys::KeyPair;
use toronto_protocol::auth::{Signature, SignatureError, valid_principal_id};

/// Why a seed could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The file could not be read or written.
    #[error("seed file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold an NKey user seed.
    #[error("seed file {path} does not hold an NKey user seed (`SU...`)")]
    NotASeed {
        /// The file.
        path: PathBuf,
    },
    /// The file may be read by others.
    #[error("seed file {path} may be read by others (mode {mode:o}); chmod 600 it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file exists and would be overwritten.
    #[error("seed file {path} already exists")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignatureError),
}

/// Signs requests with one NKey user seed.
#[derive(Clone)]
pub struct Signer {
    key: Arc<KeyPair>,
    on_behalf_of: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.key.public_key())
            .field("on_behalf_of", &self.on_behalf_of)
            .finish()
    }
}

impl Signer {
    /// A new random user key.
    pub fn generate() -> Self {
        Self {
            key: Arc::new(KeyPair::new_user()),
            on_behalf_of: None,
        }
    }

    /// The key of `seed` (`SU...`).
    pub fn from_seed(seed: &str) -> Result<Self, SignatureError> {
        let key = KeyPair::from_seed(seed.trim()).map_err(|_| SignatureError::NotAUserSeed)?;
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(SignatureError::NotAUserSeed);
        }
        Ok(Self {
            key: Arc::new(key),
            on_behalf_of: None,
        })
    }

    /// Reads the seed in `path`, refusing a file others may read.
    pub fn from_file(path: &Path) -> Result<Self, SeedError> {
        let io = |source| SeedError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SeedError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let seed = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU"))
            .ok_or_else(|| SeedError::NotASeed {
                path: path.to_owned(),
            })?;
        Self::from_seed(seed).map_err(|_| SeedError::NotASeed {
            path: path.to_owned(),
        })
    }

    /// Writes the seed to a new file `path` with mode 0600 (its folder is made 0700
    /// if missing). Refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), SeedError> {
        use std::io::Write as _;
        let io = |source| SeedError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SeedError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(source)
            }
        })?;
        let seed = self.key.seed().map_err(|_| SignatureError::NotAUserSeed)?;
        writeln!(file, "{seed}").map_err(io)?;
        Ok(())
    }

    /// The same key acting on behalf of principal `id` (needs the `delegate` role).
    pub fn on_behalf_of(&self, id: &str) -> Result<Self, SignatureError> {
        if !valid_principal_id(id) {
            return Err(SignatureError::BadOnBehalfOf);
        }
        Ok(Self {
            key: self.key.clone(),
            on_behalf_of: Some(id.to_owned()),
        })
    }

    /// The public key (`U...`).
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The signature of `payload` sent to `subject`, now.
    pub fn sign(&self, subject: &str, payload: &[u8]) -> Signature {
        // A Signer only holds a user key and a valid on-behalf-of: signing cannot fail.
        Signature::sign(
            &self.key,
            subject,
            payload,
            self.on_behalf_of.as_deref(),
            chrono::Utc::now(),
        )
        .expect("a Signer holds a user key and a valid principal id")
    }

    /// Adds the signature headers of `payload` sent to `subject` to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, subject: &str, payload: &[u8]) {
        for (name, value) in self.sign(subject, payload).headers() {
            headers.insert(name, value);
        }
    }
}

/// This process's identity: the seed a service signs the requests it sends with.
static PROCESS_SIGNER: std::sync::RwLock<Option<Signer>> = std::sync::RwLock::new(None);

/// Makes `signer` the identity every [`crate::rpc::call`] of this process signs with
/// (a service installs the seed of `TORONTO_IDENTITY_FILE` at start). One process is
/// one service, so one identity; tests that run several services in one process give
/// them the same one.
pub fn install_process_signer(signer: Signer) {
    *PROCESS_SIGNER.write().expect("signer lock") = Some(signer);
}

/// The identity installed with [`install_process_signer`], if any.
pub fn process_signer() -> Option<Signer> {
    PROCESS_SIGNER.read().expect("signer lock").clone()
}
