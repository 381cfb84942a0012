//! The runtime's table: the `TORONTO_*` variables every service reads.

use super::parse;
use super::vars::Var;
use super::{Config, LogFormat};

/// The variable naming the TOML file.
pub const CONFIG_FILE_VAR: &str = "TORONTO_CONFIG";

/// Every `TORONTO_*` variable the runtime reads (besides [`CONFIG_FILE_VAR`]).
pub const ENV_VARS: &[Var<Config>] = &[
    Var::new(
        "TORONTO_SUBJECT_PREFIX",
        "Prefix of every subject, stream and bucket.",
        "toronto",
        |c, v| {
            c.subject_prefix = v.to_owned();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_URL",
        "NATS server URLs, comma-separated.",
        "nats://127.0.0.1:4222",
        |c, v| {
            c.nats.urls = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_USER",
        "NATS user name (with TORONTO_NATS_PASSWORD).",
        "",
        |c, v| {
            c.nats.user = parse::optional(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_PASSWORD",
        "NATS password (with TORONTO_NATS_USER).",
        "",
        |c, v| {
            c.nats.password = parse::optional(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_TOKEN",
        "NATS token authentication.",
        "",
        |c, v| {
            c.nats.token = parse::optional(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_NKEY_SEED",
        "NKey seed (`SU...`) for NKey authentication.",
        "",
        |c, v| {
            c.nats.nkey_seed = parse::optional(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_CREDS_FILE",
        "Path of a NATS `.creds` file (JWT and seed).",
        "",
        |c, v| {
            c.nats.creds_file = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_TLS_CA_FILE",
        "CA certificate (PEM) that signed the NATS server's certificate; setting it requires TLS.",
        "",
        |c, v| {
            c.nats.tls_ca = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_TLS_CERT_FILE",
        "Client certificate (PEM) for mutual TLS (a server with `verify: true`), with TORONTO_NATS_TLS_KEY_FILE.",
        "",
        |c, v| {
            c.nats.tls_cert = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_TLS_KEY_FILE",
        "Client key (PEM) for mutual TLS, with TORONTO_NATS_TLS_CERT_FILE (mode 0600).",
        "",
        |c, v| {
            c.nats.tls_key = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_TLS_REQUIRED",
        "Require TLS to NATS even without a CA file (the system's roots verify the server); `tls://` URLs, a CA file or a client certificate require it too.",
        "false",
        |c, v| {
            c.nats.tls_required = parse::boolean(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_CONNECT_TIMEOUT_MS",
        "Milliseconds per NATS connection attempt.",
        "5000",
        |c, v| {
            c.nats.connect_timeout_ms = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_NATS_REQUEST_TIMEOUT_MS",
        "Milliseconds a request to another service may take.",
        "10000",
        |c, v| {
            c.nats.request_timeout_ms = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_TLS_CA_FILE",
        "CA certificates (PEM) that outgoing HTTPS (webhooks, probes, Prometheus, scrapes, \
         playbook checks) trusts beside the system's roots: a private CA.",
        "",
        |c, v| {
            c.http.tls_ca_file = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_HTTP_ADDR",
        "Listen address of /healthz, /readyz, /metrics; empty disables the server.",
        "127.0.0.1:8080",
        |c, v| {
            c.http.addr = v.trim().to_owned();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_MAX_PAYLOAD_BYTES",
        "Largest request accepted, in bytes; larger gets 413.",
        "262144",
        |c, v| {
            c.endpoints.max_payload_bytes = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_ENDPOINT_CONCURRENCY",
        "Requests handled at once per endpoint.",
        "64",
        |c, v| {
            c.endpoints.concurrency = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_JETSTREAM_REPLICAS",
        "Replicas of every stream and KV bucket, 1 to 5 (3 on a cluster).",
        "1",
        |c, v| {
            c.jetstream.replicas = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_EVENTS_MAX_AGE_DAYS",
        "Days the events stream keeps events; 0 keeps them without limit.",
        "30",
        |c, v| {
            c.jetstream.events_max_age_days = parse::whole_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_LOG",
        "Log filter in tracing's syntax.",
        "info",
        |c, v| {
            c.log.filter = v.to_owned();
            Ok(())
        },
    ),
    Var::new("TORONTO_LOG_FORMAT", "`json` or `text`.", "json", |c, v| {
        c.log.format = parse::one_of(v, &[("json", LogFormat::Json), ("text", LogFormat::Text)])?;
        Ok(())
    }),
    Var::new(
        "TORONTO_SHUTDOWN_GRACE_SECONDS",
        "Seconds to finish in-flight work after SIGTERM; 0 stops at once.",
        "20",
        |c, v| {
            c.shutdown_grace_secs = parse::whole_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_AUTH",
        "Verified identity: `required` (change requests must be signed by a known principal holding the role), `permissive` (checked and logged, not refused) or `off` (nothing checked; warned at start). See docs/trust-model.md.",
        "required",
        |c, v| {
            c.auth.mode =
                crate::auth::AuthMode::parse(v).ok_or_else(|| parse::ValueError::NotOneOf {
                    value: v.to_owned(),
                    allowed: vec!["required", "permissive", "off"],
                })?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_AUTH_ADMINS",
        "NKey user public keys (`U...`) of the first admin, comma-separated: they hold the admin role whatever the registry says.",
        "",
        |c, v| {
            c.auth.admins = parse::list(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_AUTH_WINDOW_SECONDS",
        "How far a request's signed-at time may be from now, either way, before it is refused as a replay.",
        "120",
        |c, v| {
            c.auth.window_secs = parse::positive(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_IDENTITY_FILE",
        "The NKey user seed file (mode 0600) this process signs the change requests it sends with: the CLI's operator key (`toronto identity init` writes it; default ~/.config/toronto/identity.nk), or a service's own key (unset: the service sends unsigned requests, which `TORONTO_AUTH=required` peers refuse).",
        "",
        |c, v| {
            c.auth.identity_file = parse::optional_path(v);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_LEASE_TTL_SECONDS",
        "Replicated services (monitor, incident commander): seconds without a renewal after which a standby takes over the single-writer work from its owner (a fraction is allowed).",
        "5",
        |c, v| {
            c.lease.ttl_ms = parse::seconds(v)?.as_millis() as u64;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_LEASE_RENEW_SECONDS",
        "Replicated services: seconds between the owner's lease renewals and a standby's looks at the lease; at most half the TTL.",
        "1",
        |c, v| {
            c.lease.renew_ms = parse::seconds(v)?.as_millis() as u64;
            Ok(())
        },
    ),
    Var::deprecated(
        "TORONTO_SHUTDOWN_GRACE_SECS",
        "Seconds to finish in-flight work after SIGTERM.",
        "TORONTO_SHUTDOWN_GRACE_SECONDS",
        |c, v| {
            c.shutdown_grace_secs = parse::whole_or_zero(v)?;
            Ok(())
        },
    ),
];
