//! Configuration: an optional TOML file (`TORONTO_CONFIG`), then `TORONTO_*`
//! environment variables over it, parsed once at start into typed structs.
//!
//! Every variable is an entry of a settings table ([`vars::Var`]): the runtime's own
//! in [`ENV_VARS`], each service's in its `settings` module. The tables are the
//! documentation `toronto config` prints; [`parse`] holds the value parsers they share.

mod env;
pub mod parse;
pub mod vars;

pub use env::{CONFIG_FILE_VAR, ENV_VARS};
pub use parse::ValueError;
pub use vars::{Section, SettingsError, Var, VarDoc, var_map};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toronto_protocol::Subjects;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML file is not valid or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the key.
        message: String,
    },
    /// A variable is unknown or has a value of the wrong form.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The combination is not usable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Configuration shared by every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Subject prefix for every subject, stream and bucket (`toronto`).
    pub subject_prefix: String,
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The HTTP server for health and metrics.
    pub http: HttpConfig,
    /// Limits of request/reply endpoints.
    pub endpoints: EndpointConfig,
    /// JetStream streams and buckets.
    pub jetstream: JetStreamConfig,
    /// Logging.
    pub log: LogConfig,
    /// Seconds to finish in-flight work after SIGTERM before giving up
    /// (`TORONTO_SHUTDOWN_GRACE_SECONDS`).
    pub shutdown_grace_secs: u64,
    /// Verified identity (`TORONTO_AUTH*`).
    pub auth: crate::auth::AuthConfig,
    /// The lease of a replicated service's single-writer work (`TORONTO_LEASE_*`).
    pub lease: crate::lease::LeaseConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            subject_prefix: toronto_protocol::subjects::DEFAULT_PREFIX.to_owned(),
            nats: NatsConfig::default(),
            http: HttpConfig::default(),
            endpoints: EndpointConfig::default(),
            jetstream: JetStreamConfig::default(),
            log: LogConfig::default(),
            shutdown_grace_secs: 20,
            auth: crate::auth::AuthConfig::default(),
            lease: crate::lease::LeaseConfig::default(),
        }
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs; the client picks one and fails over to the others.
    pub urls: Vec<String>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// NKey seed (`SU...`) for NKey authentication.
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Require TLS even when no certificate is given.
    pub tls_required: bool,
    /// Milliseconds to wait for each connection attempt.
    pub connect_timeout_ms: u64,
    /// Milliseconds a request to another service may take before it is a timeout.
    pub request_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl NatsConfig {
    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The HTTP server for `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free one. Empty disables the server.
    pub addr: String,
    /// A PEM file of CA certificates that outgoing HTTPS (webhooks, probes, Prometheus,
    /// scrapes) trusts beside the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_owned(),
            tls_ca_file: None,
        }
    }
}

impl HttpConfig {
    /// The parsed address, or `None` when HTTP is disabled.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.addr.is_empty() {
            return Ok(None);
        }
        self.addr.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!("http.addr `{}` is not host:port", self.addr))
        })
    }
}

/// Limits of request/reply endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// Largest request payload accepted, in bytes; larger ones get 413.
    pub max_payload_bytes: usize,
    /// Requests handled at once per endpoint; more wait their turn.
    pub concurrency: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            concurrency: 64,
        }
    }
}

/// JetStream streams and buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Replicas of every stream and bucket (3 on a cluster).
    pub replicas: usize,
    /// Days the events stream keeps events.
    pub events_max_age_days: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            events_max_age_days: 30,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `toronto_runtime=debug,info`.
    pub filter: String,
    /// `json` (default) or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable text.
    Text,
}

impl Config {
    /// Loads from the process environment: the TOML file named by `TORONTO_CONFIG`
    /// (if any), then the `TORONTO_*` variables over it.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TORONTO_"))
            .collect();
        Self::from_vars(&vars)
    }

    /// Loads from an explicit set of variables (what [`Config::from_env`] does with
    /// the process environment).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = match vars.get(CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            Some(path) => Self::from_file(Path::new(path))?,
            None => Self::default(),
        };
        config.apply_vars(vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file; unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; unknown keys are refused.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the known `TORONTO_*` variables found in `vars`.
    pub fn apply_vars(&mut self, vars: &HashMap<String, String>) -> Result<(), ConfigError> {
        Ok(vars::read(self, ENV_VARS, vars)?)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.urls.is_empty() {
            return Err(ConfigError::Invalid("no NATS server URL given".into()));
        }
        for url in &self.nats.urls {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                ConfigError::Invalid(format!("NATS server URL `{url}` is invalid: {e}"))
            })?;
        }
        if self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ']))
        {
            return Err(ConfigError::Invalid(format!(
                "subject prefix `{}` must be dot-separated tokens without wildcards",
                self.subject_prefix
            )));
        }
        self.lease.check().map_err(ConfigError::Invalid)?;
        if self.endpoints.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "endpoint concurrency must be at least 1".into(),
            ));
        }
        if self.endpoints.max_payload_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max payload must be at least 1 byte".into(),
            ));
        }
        if self.jetstream.replicas == 0 || self.jetstream.replicas > 5 {
            return Err(ConfigError::Invalid(
                "JetStream replicas must be 1 to 5".into(),
            ));
        }
        if self.nats.tls_cert.is_some() != self.nats.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "TLS client certificate and key must be given together".into(),
            ));
        }
        let methods = [
            self.nats.user.is_some(),
            self.nats.token.is_some(),
            self.nats.nkey_seed.is_some(),
            self.nats.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ConfigError::Invalid(
                "give one NATS authentication method: user/password, token, NKey seed or creds file"
                    .into(),
            ));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(ConfigError::Invalid(
                "NATS user and password must be given together".into(),
            ));
        }
        self.http.socket_addr()?;
        Ok(())
    }

    /// The subject catalogue over the configured prefix.
    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.subject_prefix.clone())
    }

    /// How long to finish in-flight work on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::var_map as vars;

    #[test]
    fn defaults_are_usable() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.subject_prefix, "toronto");
        assert_eq!(c.endpoints.max_payload_bytes, 262_144);
        assert_eq!(c.nats.urls, vec!["nats://127.0.0.1:4222"]);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toronto.toml");
        std::fs::write(
            &file,
            r#"
subject_prefix = "acme"
[nats]
urls = ["nats://file:4222"]
token = "from-file"
[endpoints]
concurrency = 8
"#,
        )
        .unwrap();
        let c = Config::from_vars(&vars(&[
            ("TORONTO_CONFIG", file.to_str().unwrap()),
            ("TORONTO_NATS_URL", "nats://a:4222, nats://b:4222"),
            ("TORONTO_NATS_TOKEN", "1234"),
            ("TORONTO_MAX_PAYLOAD_BYTES", "1024"),
            ("TORONTO_LOG_FORMAT", "text"),
        ]))
        .unwrap();
        assert_eq!(c.subject_prefix, "acme");
        assert_eq!(c.nats.urls, vec!["nats://a:4222", "nats://b:4222"]);
        // The variable wins over the file, and a numeric-looking secret stays a string.
        assert_eq!(c.nats.token.as_deref(), Some("1234"));
        assert_eq!(c.endpoints.concurrency, 8);
        assert_eq!(c.endpoints.max_payload_bytes, 1024);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn bad_values_name_the_variable_or_key() {
        let err = Config::from_vars(&vars(&[("TORONTO_MAX_PAYLOAD_BYTES", "lots")])).unwrap_err();
        assert!(
            err.to_string().contains("TORONTO_MAX_PAYLOAD_BYTES"),
            "{err}"
        );
        let err = Config::from_toml("[nats]\nurl = \"x\"\n").unwrap_err();
        assert!(err.contains("unknown field `url`"), "{err}");
        let err = Config::from_vars(&vars(&[("TORONTO_SUBJECT_PREFIX", "a.*")])).unwrap_err();
        assert!(err.to_string().contains("wildcards"), "{err}");
        let err = Config::from_vars(&vars(&[
            ("TORONTO_NATS_TOKEN", "t"),
            ("TORONTO_NATS_NKEY_SEED", "SU..."),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("one NATS authentication method"),
            "{err}"
        );
        let err =
            Config::from_vars(&vars(&[("TORONTO_NATS_TLS_CERT_FILE", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        let err = Config::from_vars(&vars(&[(
            "TORONTO_NATS_URL",
            "nats://a:4222,nats://b:port",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("nats://b:port"), "{err}");
        let err = Config::from_vars(&vars(&[("TORONTO_CONFIG", "/nonexistent.toml")])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        let err =
            Config::from_vars(&vars(&[("TORONTO_NATS_REQUEST_TIMEOUT_MS", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TORONTO_NATS_REQUEST_TIMEOUT_MS: must be more than 0"
        );
    }

    #[test]
    fn the_defaults_of_the_table_are_the_defaults_of_the_code() {
        let defaults: HashMap<String, String> = ENV_VARS
            .iter()
            .filter(|v| v.replaced_by.is_none())
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(Config::from_vars(&defaults).unwrap(), Config::default());
    }

    #[test]
    fn the_deprecated_grace_variable_still_works() {
        let c = Config::from_vars(&vars(&[("TORONTO_SHUTDOWN_GRACE_SECS", "5")])).unwrap();
        assert_eq!(c.shutdown_grace(), Duration::from_secs(5));
        let c = Config::from_vars(&vars(&[
            ("TORONTO_SHUTDOWN_GRACE_SECS", "5"),
            ("TORONTO_SHUTDOWN_GRACE_SECONDS", "7"),
        ]))
        .unwrap();
        assert_eq!(c.shutdown_grace_secs, 7);
        let mut names: Vec<&str> = ENV_VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENV_VARS.len(), "a variable is listed twice");
    }
}
