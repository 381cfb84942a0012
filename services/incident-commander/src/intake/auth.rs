//! Authentication of the HTTP intake (the Alertmanager webhook, `/api/v2/alerts` and
//! `/v2/enqueue`): a bearer token, a basic-auth user and password, or both.
//!
//! The secrets are read from files when the settings are read (at start), kept only as
//! SHA-256 digests, and compared in constant time. A refused request is answered 401
//! with `WWW-Authenticate` before its body is read, so nothing of it is ingested; the
//! refusal is counted on `/metrics` by reason (`incident_http_auth_refused_total`),
//! never with the credentials. `/healthz`, `/readyz` and `/metrics` stay open.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toronto_runtime::config::ValueError;

/// A credential kept as its SHA-256 digest: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
struct Digest256([u8; 32]);

impl Digest256 {
    fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Constant time in the value compared (both sides are digests of equal length).
    fn matches(&self, given: &[u8]) -> bool {
        Self::of(given).0.ct_eq(&self.0).into()
    }
}

/// Which credentials the HTTP intake asks for (none by default: open).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HttpAuthSettings {
    bearer: Option<Digest256>,
    basic_user: Option<String>,
    basic_password: Option<Digest256>,
}

impl fmt::Debug for HttpAuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAuthSettings")
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .field("basic_user", &self.basic_user)
            .field(
                "basic_password",
                &self.basic_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// Reads a secret file: its content without the trailing line break; refuses an
/// empty or unreadable file (the message names the file, never the content).
fn read_secret(path: &str) -> Result<Vec<u8>, ValueError> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.trim();
    let bytes =
        std::fs::read(path).map_err(|e| ValueError::Invalid(format!("cannot read {path}: {e}")))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = path,
            "the secret file is readable by group or others; make it mode 0600"
        );
    }
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(ValueError::Invalid(format!("{path} is empty")));
    }
    Ok(bytes[..end].to_vec())
}

impl HttpAuthSettings {
    /// Bearer authentication with the token in `path` (unset when `path` is empty).
    pub fn set_bearer_file(&mut self, path: &str) -> Result<(), ValueError> {
        self.bearer = match path.trim() {
            "" => None,
            p => Some(Digest256::of(&read_secret(p)?)),
        };
        Ok(())
    }

    /// The basic-auth user name (unset when empty).
    pub fn set_basic_user(&mut self, user: &str) -> Result<(), ValueError> {
        let user = user.trim();
        if user.contains(':') {
            return Err(ValueError::Invalid(
                "a basic-auth user name cannot contain `:`".into(),
            ));
        }
        self.basic_user = (!user.is_empty()).then(|| user.to_owned());
        Ok(())
    }

    /// The basic-auth password, from the file `path` (unset when `path` is empty).
    pub fn set_basic_password_file(&mut self, path: &str) -> Result<(), ValueError> {
        self.basic_password = match path.trim() {
            "" => None,
            p => Some(Digest256::of(&read_secret(p)?)),
        };
        Ok(())
    }

    /// Checks that basic auth has both its user and its password.
    pub fn check(&self) -> Result<(), String> {
        match (&self.basic_user, &self.basic_password) {
            (Some(_), None) => Err(
                "TORONTO_INCIDENT_HTTP_BASIC_USER needs TORONTO_INCIDENT_HTTP_BASIC_PASSWORD_FILE"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "TORONTO_INCIDENT_HTTP_BASIC_PASSWORD_FILE needs TORONTO_INCIDENT_HTTP_BASIC_USER"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The schemes asked for, for the log line at start (never the secrets).
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.bearer.is_some() {
            out.push("bearer");
        }
        if self.basic_password.is_some() {
            out.push("basic");
        }
        out
    }

    /// Whether any credential is asked for.
    pub fn enabled(&self) -> bool {
        self.bearer.is_some() || self.basic_password.is_some()
    }

    /// Checks the `Authorization` header against what is configured.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<(), AuthRefusal> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(AuthRefusal::Missing);
        };
        let value = value.to_str().map_err(|_| AuthRefusal::Malformed)?.trim();
        let (scheme, credentials) = value.split_once(' ').ok_or(AuthRefusal::Malformed)?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let expected = self.bearer.as_ref().ok_or(AuthRefusal::Scheme)?;
            return expected
                .matches(credentials.as_bytes())
                .then_some(())
                .ok_or(AuthRefusal::Wrong);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let (Some(user), Some(password)) = (&self.basic_user, &self.basic_password) else {
                return Err(AuthRefusal::Scheme);
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .map_err(|_| AuthRefusal::Malformed)?;
            let split = decoded
                .iter()
                .position(|b| *b == b':')
                .ok_or(AuthRefusal::Malformed)?;
            let (given_user, given_password) = (&decoded[..split], &decoded[split + 1..]);
            // Both halves are always compared, so the time does not tell which was wrong.
            let user_ok = Digest256::of(user.as_bytes()).matches(given_user);
            let password_ok = password.matches(given_password);
            return (user_ok & password_ok)
                .then_some(())
                .ok_or(AuthRefusal::Wrong);
        }
        Err(AuthRefusal::Scheme)
    }

    /// The `WWW-Authenticate` challenges of a 401: one per scheme configured.
    fn challenges(&self) -> Vec<HeaderValue> {
        let mut out = Vec::new();
        if self.bearer.is_some() {
            out.push(HeaderValue::from_static(concat!(
                "Bearer realm=\"",
                "toronto-incident-commander",
                "\""
            )));
        }
        if self.basic_password.is_some() {
            out.push(HeaderValue::from_static(concat!(
                "Basic realm=\"",
                "toronto-incident-commander",
                "\", charset=\"UTF-8\""
            )));
        }
        out
    }
}

/// Why a request to the HTTP intake was refused (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// No `Authorization` header.
    #[error("credentials are required (Authorization header missing)")]
    Missing,
    /// The header is not `<scheme> <credentials>`, or basic credentials are not
    /// base64 of `user:password`.
    #[error("the Authorization header is malformed")]
    Malformed,
    /// A scheme that is not configured here.
    #[error("this authentication scheme is not accepted here")]
    Scheme,
    /// The credentials do not match.
    #[error("the credentials do not match")]
    Wrong,
}

impl AuthRefusal {
    /// The `reason` label of the refusal counter.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRefusal::Missing => "missing",
            AuthRefusal::Malformed => "malformed",
            AuthRefusal::Scheme => "scheme",
            AuthRefusal::Wrong => "wrong",
        }
    }
}

/// The label of the refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `missing`, `malformed`, `scheme` or `wrong`.
    pub reason: &'static str,
}

/// What the authentication layer needs: the settings and the refusal counter.
#[derive(Debug, Clone, Default)]
pub struct HttpAuth {
    /// The credentials asked for.
    pub settings: Arc<HttpAuthSettings>,
    /// Refusals by reason (`incident_http_auth_refused_total{reason}`).
    pub refused: Family<RefusalLabels, Counter>,
}

impl HttpAuth {
    /// The layer over `settings`, with a fresh counter.
    pub fn new(settings: HttpAuthSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            refused: Family::default(),
        }
    }

    /// Registers the refusal counter.
    pub fn register(&self, metrics: &toronto_runtime::metrics::Metrics) {
        metrics.register(
            "incident_http_auth_refused",
            "HTTP intake requests refused for their credentials, by reason",
            self.refused.clone(),
        );
        for reason in [
            AuthRefusal::Missing,
            AuthRefusal::Malformed,
            AuthRefusal::Scheme,
            AuthRefusal::Wrong,
        ] {
            self.refused
                .get_or_create(&RefusalLabels {
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
    }
}

/// The middleware: refuses a request without the right credentials before its body
/// is read.
pub(super) async fn require(
    State(auth): State<HttpAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.settings.authenticate(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            auth.refused
                .get_or_create(&RefusalLabels {
                    reason: refusal.as_str(),
                })
                .inc();
            tracing::warn!(
                path = %request.uri().path(),
                reason = refusal.as_str(),
                "refused an HTTP intake request"
            );
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({ "status": "error", "error": refusal.to_string() })),
            )
                .into_response();
            for challenge in auth.settings.challenges() {
                response.headers_mut().append(WWW_AUTHENTICATE, challenge);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        f
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}")
    }

    #[test]
    fn bearer_and_basic_are_checked_and_refusals_name_their_reason() {
        let (token, password) = (file("s3cret-token\n"), file("pa:ss\r\n"));
        let mut s = HttpAuthSettings::default();
        assert_eq!(s.authenticate(&HeaderMap::new()), Ok(()), "open by default");
        s.set_bearer_file(token.path().to_str().unwrap()).unwrap();
        s.set_basic_user("prometheus").unwrap();
        assert!(s.check().is_err(), "a user without a password");
        s.set_basic_password_file(password.path().to_str().unwrap())
            .unwrap();
        s.check().unwrap();
        assert_eq!(s.authenticate(&headers("Bearer s3cret-token")), Ok(()));
        assert_eq!(s.authenticate(&headers("bearer  s3cret-token ")), Ok(()));
        assert_eq!(s.authenticate(&basic_h("prometheus", "pa:ss")), Ok(()));
        assert_eq!(s.authenticate(&HeaderMap::new()), Err(AuthRefusal::Missing));
        assert_eq!(
            s.authenticate(&headers("Bearer s3cret-tokeN")),
            Err(AuthRefusal::Wrong)
        );
        assert_eq!(
            s.authenticate(&basic_h("prometheus", "pa:sS")),
            Err(AuthRefusal::Wrong)
        );
        assert_eq!(
            s.authenticate(&basic_h("alertmanager", "pa:ss")),
            Err(AuthRefusal::Wrong)
        );
        assert_eq!(
            s.authenticate(&headers("Basic !!!")),
            Err(AuthRefusal::Malformed)
        );
        assert_eq!(
            s.authenticate(&headers("Token")),
            Err(AuthRefusal::Malformed)
        );
        assert_eq!(
            s.authenticate(&headers("Digest x=1")),
            Err(AuthRefusal::Scheme)
        );
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("pa:ss"),
            "{debug}"
        );
        assert_eq!(s.challenges().len(), 2);

        let mut only_bearer = HttpAuthSettings::default();
        only_bearer
            .set_bearer_file(token.path().to_str().unwrap())
            .unwrap();
        assert_eq!(
            only_bearer.authenticate(&basic_h("prometheus", "pa:ss")),
            Err(AuthRefusal::Scheme)
        );
        assert!(
            HttpAuthSettings::default()
                .set_bearer_file(file("\n").path().to_str().unwrap())
                .is_err(),
            "an empty token file"
        );
    }

    fn basic_h(user: &str, password: &str) -> HeaderMap {
        headers(&basic(user, password))
    }
}
