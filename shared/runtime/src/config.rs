//! Configuration: an optional TOML file (`TORONTO_CONFIG`), then `TORONTO_*`
//! environment variables over it, parsed once at start into typed structs.
//!
//! Every variable is listed in [`ENV_VARS`], which is also the documentation the
//! README and `toronto config` print.

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
    /// An environment variable has a value of the wrong form.
    #[error("invalid value for {var}: {reason}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Why it is refused.
        reason: String,
    },
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
    /// Seconds to finish in-flight work after SIGTERM before giving up.
    pub shutdown_grace_secs: u64,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".to_owned(),
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

/// One `TORONTO_*` variable: its name, what it sets, and how.
pub struct EnvVar {
    /// The variable.
    pub name: &'static str,
    /// What it does, for the README and `toronto config`.
    pub description: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

fn some_string(v: &str) -> Option<String> {
    Some(v.to_owned()).filter(|s| !s.is_empty())
}

fn some_path(v: &str) -> Option<PathBuf> {
    some_string(v).map(PathBuf::from)
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a non-negative whole number"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean (true/false)")),
    }
}

/// The variable naming the TOML file.
pub const CONFIG_FILE_VAR: &str = "TORONTO_CONFIG";

/// Every `TORONTO_*` variable the runtime reads (besides [`CONFIG_FILE_VAR`]).
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "TORONTO_SUBJECT_PREFIX",
        description: "Prefix of every subject, stream and bucket (default `toronto`).",
        apply: |c, v| {
            c.subject_prefix = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_URL",
        description: "NATS server URLs, comma-separated (default `nats://127.0.0.1:4222`).",
        apply: |c, v| {
            c.nats.urls = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_USER",
        description: "NATS user name (with TORONTO_NATS_PASSWORD).",
        apply: |c, v| {
            c.nats.user = some_string(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_PASSWORD",
        description: "NATS password (with TORONTO_NATS_USER).",
        apply: |c, v| {
            c.nats.password = some_string(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_TOKEN",
        description: "NATS token authentication.",
        apply: |c, v| {
            c.nats.token = some_string(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_NKEY_SEED",
        description: "NKey seed (`SU...`) for NKey authentication.",
        apply: |c, v| {
            c.nats.nkey_seed = some_string(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_CREDS_FILE",
        description: "Path of a NATS `.creds` file (JWT and seed).",
        apply: |c, v| {
            c.nats.creds_file = some_path(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_TLS_CA",
        description: "CA certificate (PEM) that signed the NATS server's certificate.",
        apply: |c, v| {
            c.nats.tls_ca = some_path(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_TLS_CERT",
        description: "Client certificate (PEM) for mutual TLS, with TORONTO_NATS_TLS_KEY.",
        apply: |c, v| {
            c.nats.tls_cert = some_path(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_TLS_KEY",
        description: "Client key (PEM) for mutual TLS, with TORONTO_NATS_TLS_CERT.",
        apply: |c, v| {
            c.nats.tls_key = some_path(v);
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_TLS_REQUIRED",
        description: "Require TLS to NATS even without certificates (default false).",
        apply: |c, v| {
            c.nats.tls_required = boolean(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_CONNECT_TIMEOUT_MS",
        description: "Milliseconds per NATS connection attempt (default 5000).",
        apply: |c, v| {
            c.nats.connect_timeout_ms = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_NATS_REQUEST_TIMEOUT_MS",
        description: "Milliseconds a request to another service may take (default 10000).",
        apply: |c, v| {
            c.nats.request_timeout_ms = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_HTTP_ADDR",
        description: "Listen address of /healthz, /readyz, /metrics (default `127.0.0.1:8080`; empty disables).",
        apply: |c, v| {
            c.http.addr = v.trim().to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_MAX_PAYLOAD_BYTES",
        description: "Largest request accepted, in bytes; larger gets 413 (default 262144).",
        apply: |c, v| {
            c.endpoints.max_payload_bytes = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_ENDPOINT_CONCURRENCY",
        description: "Requests handled at once per endpoint (default 64).",
        apply: |c, v| {
            c.endpoints.concurrency = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_JETSTREAM_REPLICAS",
        description: "Replicas of every stream and KV bucket (default 1; 3 on a cluster).",
        apply: |c, v| {
            c.jetstream.replicas = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_EVENTS_MAX_AGE_DAYS",
        description: "Days the events stream keeps events (default 30).",
        apply: |c, v| {
            c.jetstream.events_max_age_days = number(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_LOG",
        description: "Log filter in tracing's syntax (default `info`).",
        apply: |c, v| {
            c.log.filter = v.to_owned();
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_LOG_FORMAT",
        description: "`json` (default) or `text`.",
        apply: |c, v| {
            c.log.format = match v.trim().to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(format!("`{v}` is neither `json` nor `text`")),
            };
            Ok(())
        },
    },
    EnvVar {
        name: "TORONTO_SHUTDOWN_GRACE_SECS",
        description: "Seconds to finish in-flight work after SIGTERM (default 20).",
        apply: |c, v| {
            c.shutdown_grace_secs = number(v)?;
            Ok(())
        },
    },
];

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
        for var in ENV_VARS {
            if let Some(value) = vars.get(var.name) {
                (var.apply)(self, value).map_err(|reason| ConfigError::Env {
                    var: var.name,
                    reason,
                })?;
            }
        }
        Ok(())
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

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

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
        let err = Config::from_vars(&vars(&[("TORONTO_NATS_TLS_CERT", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        let err = Config::from_vars(&vars(&[(
            "TORONTO_NATS_URL",
            "nats://a:4222,nats://b:port",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("nats://b:port"), "{err}");
        let err = Config::from_vars(&vars(&[("TORONTO_CONFIG", "/nonexistent.toml")])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
