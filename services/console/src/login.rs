//! Token login: `toronto identity token` signs a short-lived login token with the
//! operator's seed; the console's `/login` page checks it against the identity registry
//! and opens a server-side session (an `HttpOnly; SameSite=Strict` cookie holding a
//! random session id).
//!
//! The token is `tct1.` followed by the base64url (no padding) of five lines joined by
//! `\n`: the principal id, the expiry (Unix seconds), the signed-at time (RFC 3339, as
//! signed), the signer's NKey user public key and the base64url ed25519 signature. The
//! signature is a request signature of [`toronto_protocol::auth`] over the subject
//! [`LOGIN_SUBJECT`] and the payload `<id>\n<expiry>`, so the signed bytes are
//! `toronto-request-signature-v1\ntoronto.console.login\n<signed-at>\n\n<id>\n<expiry>`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, TimeZone as _, Utc};
use toronto_protocol::auth::{Principal, Signature, SignatureError, valid_principal_id};

use crate::auth::{Viewer, cookie_token, csrf_ok, session_id};
use crate::data::ConsoleError;
use crate::html::{Ctx, E};
use crate::pages::View;
use crate::web::{AppState, error_response, page_response, redirect};

/// The subject a login token's signature covers (no NATS subject has this shape of
/// payload, so a token is never a valid request signature and the reverse).
pub const LOGIN_SUBJECT: &str = "toronto.console.login";

/// The prefix of a login token.
pub const TOKEN_PREFIX: &str = "tct1.";

/// The longest token read.
pub const MAX_TOKEN: usize = 1024;

/// The longest life a token may be signed for.
pub const MAX_TTL: Duration = Duration::hours(24);

/// Clock skew tolerated on the signed-at time.
const SKEW: Duration = Duration::minutes(2);

/// The most sessions held at once.
pub const MAX_SESSIONS: usize = 10_000;

/// The cookie holding the session id.
pub const SESSION_COOKIE: &str = "toronto_console_session";

/// Why a login token is refused. The messages are shown on the login page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    /// Not a token of this format.
    #[error("this is not a login token (make one with `toronto identity token`)")]
    Malformed,
    /// The signature does not match.
    #[error("the token's signature does not match: it was altered or forged")]
    Forged(#[source] SignatureError),
    /// Past its expiry.
    #[error("the token expired at {0}; make a new one with `toronto identity token`")]
    Expired(DateTime<Utc>),
    /// Signed for longer than [`MAX_TTL`], or in the future.
    #[error("the token's lifetime is not acceptable (at most 24 h, signed in the past)")]
    BadLifetime,
    /// The principal is not registered.
    #[error("{0} is not a registered principal")]
    Unknown(String),
    /// The principal is revoked.
    #[error("{0} is revoked")]
    Revoked(String),
    /// Signed by a key that is not the principal's.
    #[error("the token is signed by a key that is not registered for {0}")]
    NotTheirKey(String),
    /// Not a principal id.
    #[error("`{0}` is not a principal id")]
    BadId(String),
    /// Too many sessions are open.
    #[error("too many open sessions; try again later")]
    Full,
}

/// A verified token: who, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The principal id.
    pub user: String,
    /// When the session ends.
    pub expires: DateTime<Utc>,
}

/// Makes a token for principal `id`, valid for `ttl`, signed by `sign` (the signing
/// function of a [`toronto_runtime::auth::Signer`]).
pub fn issue(
    id: &str,
    ttl: Duration,
    sign: impl FnOnce(&str, &[u8]) -> Signature,
) -> Result<String, LoginError> {
    if !valid_principal_id(id) {
        return Err(LoginError::BadId(id.chars().take(80).collect()));
    }
    if ttl <= Duration::zero() || ttl > MAX_TTL {
        return Err(LoginError::BadLifetime);
    }
    let expires = (Utc::now() + ttl).timestamp();
    let payload = format!("{id}\n{expires}");
    let s = sign(LOGIN_SUBJECT, payload.as_bytes());
    let text = format!(
        "{id}\n{expires}\n{}\n{}\n{}",
        s.signed_at, s.signer, s.signature
    );
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(text)))
}

/// Checks `token` at `now` against the registry (`lookup` gives a principal by id).
pub fn verify(
    token: &str,
    now: DateTime<Utc>,
    lookup: impl Fn(&str) -> Option<Arc<Principal>>,
) -> Result<Login, LoginError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return Err(LoginError::Malformed);
    }
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(LoginError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| LoginError::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| LoginError::Malformed)?;
    let fields: Vec<&str> = text.split('\n').collect();
    let [id, expires, signed_at, signer, signature] = fields[..] else {
        return Err(LoginError::Malformed);
    };
    if !valid_principal_id(id) {
        return Err(LoginError::Malformed);
    }
    let expiry: i64 = expires.parse().map_err(|_| LoginError::Malformed)?;
    let expiry = Utc
        .timestamp_opt(expiry, 0)
        .single()
        .ok_or(LoginError::Malformed)?;
    let sig = Signature {
        signer: signer.to_owned(),
        signature: signature.to_owned(),
        signed_at: signed_at.to_owned(),
        on_behalf_of: None,
    };
    let payload = format!("{id}\n{expires}");
    let signed = sig
        .verify(LOGIN_SUBJECT, payload.as_bytes())
        .map_err(LoginError::Forged)?;
    if signed > now + SKEW || expiry - signed > MAX_TTL + SKEW {
        return Err(LoginError::BadLifetime);
    }
    if now >= expiry {
        return Err(LoginError::Expired(expiry));
    }
    let principal = lookup(id).ok_or_else(|| LoginError::Unknown(id.to_owned()))?;
    if principal.revoked {
        return Err(LoginError::Revoked(id.to_owned()));
    }
    if !principal.keys.iter().any(|k| k == signer) {
        return Err(LoginError::NotTheirKey(id.to_owned()));
    }
    Ok(Login {
        user: id.to_owned(),
        expires: expiry,
    })
}

/// Open sessions, by random id, held in memory (a restart signs everyone out).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Login>>>,
}

impl Sessions {
    /// Opens a session for `login`; its id (64 hex digits).
    pub fn open(&self, login: Login, now: DateTime<Utc>) -> Result<String, LoginError> {
        let mut map = self.map.lock().expect("sessions lock");
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, l| l.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(LoginError::Full);
            }
        }
        let bytes: [u8; 32] = rand::random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        map.insert(id.clone(), login);
        Ok(id)
    }

    /// The user of session `id`, if it is open and not expired.
    pub fn user(&self, id: &str, now: DateTime<Utc>) -> Option<String> {
        let mut map = self.map.lock().expect("sessions lock");
        match map.get(id) {
            Some(l) if l.expires > now => Some(l.user.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The login form: a token field, and a note of who is signed in.
fn login_view(ctx: &Ctx, message: Option<&str>) -> View {
    let mut live = String::new();
    if let Some(m) = message {
        let _ = write!(live, "<p class=\"error\" id=\"login-error\">{}</p>", E(m));
    }
    if let Some(u) = &ctx.user {
        let _ = write!(
            live,
            "<p>Signed in as <b>{}</b>.</p><form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">sign out</button></form>",
            E(u),
            E(&ctx.href("/logout")),
            E(&ctx.csrf)
        );
    }
    let after = format!(
        "<section><p>Paste a token made with <code>toronto identity token</code> \
         (signed by your registered key, valid at most 24 h).</p>\
         <form method=\"post\" action=\"{}\" class=\"login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" \
         maxlength=\"{MAX_TOKEN}\" placeholder=\"tct1.…\" required>\
         <button type=\"submit\" id=\"login\">sign in</button></form></section>",
        E(&ctx.href("/login")),
        E(&ctx.csrf)
    );
    View {
        title: "Sign in".into(),
        live,
        after,
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    token: Option<String>,
}

fn session_cookie(ctx: &Ctx, value: &str, max_age: i64) -> String {
    let path = if ctx.base.is_empty() { "/" } else { &ctx.base };
    format!("{SESSION_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict")
}

/// `GET /login`.
pub async fn login_page(viewer: Viewer) -> Response {
    page_response(
        StatusCode::OK,
        &viewer,
        login_view(&viewer.ctx, None).render(&viewer.ctx),
    )
}

/// `POST /login`: checks the token, opens a session, back to the overview.
pub async fn login_submit(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        page_response(
            status,
            &viewer,
            login_view(&viewer.ctx, Some(message)).render(&viewer.ctx),
        )
    };
    if body.len() > MAX_TOKEN + 256 {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "unreadable form");
    };
    if !csrf_ok(cookie_token(&headers).as_deref(), form.csrf.as_deref()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the form's token does not match this browser session; reload the page and try again",
        );
    }
    let Some(registry) = state.live.get().and_then(|l| l.registry.clone()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the identity registry is not available; try again in a moment",
        );
    };
    let now = Utc::now();
    let token = form.token.unwrap_or_default();
    let login = verify(&token, now, |id| registry.by_id(id))
        .and_then(|login| Ok((state.sessions.open(login.clone(), now)?, login)));
    match login {
        Ok((id, login)) => {
            // The token is never logged; the user and expiry are.
            tracing::info!(user = %login.user, expires = %login.expires, "console login");
            let mut response = redirect(&viewer, "/");
            let max_age = (login.expires - now).num_seconds().max(0);
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&viewer.ctx, &id, max_age)) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => {
            tracing::info!(error = %e, "console login refused");
            let status = if e == LoginError::Full {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            refuse(status, &e.to_string())
        }
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = serde_urlencoded::from_bytes::<LoginForm>(&body).ok();
    if !csrf_ok(
        cookie_token(&headers).as_deref(),
        form.and_then(|f| f.csrf).as_deref(),
    ) {
        return error_response(
            &viewer,
            &ConsoleError::Forbidden("the form's token does not match this browser session".into()),
        );
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.close(&id);
    }
    let mut response = redirect(&viewer, "/login");
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&viewer.ctx, "", 0)) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_protocol::auth::{PrincipalKind, Role};
    use toronto_runtime::auth::Signer;

    fn person(id: &str, signer: &Signer, revoked: bool) -> Arc<Principal> {
        Arc::new(Principal {
            id: id.into(),
            kind: PrincipalKind::Human,
            roles: vec![Role::Operator],
            display_name: id.into(),
            revoked,
            keys: vec![signer.public_key()],
            sources: vec![],
            chat_ids: vec![],
        })
    }

    fn token(signer: &Signer, id: &str, ttl: Duration) -> String {
        issue(id, ttl, |s, p| signer.sign(s, p)).unwrap()
    }

    #[test]
    fn a_fresh_token_of_a_registered_key_logs_in() {
        let alice = Signer::generate();
        let t = token(&alice, "alice", Duration::hours(8));
        let login = verify(&t, Utc::now(), |id| {
            (id == "alice").then(|| person("alice", &alice, false))
        })
        .unwrap();
        assert_eq!(login.user, "alice");
        assert!(login.expires > Utc::now() + Duration::hours(7));
    }

    #[test]
    fn expired_revoked_unknown_forged_and_foreign_tokens_are_refused() {
        let alice = Signer::generate();
        let mallory = Signer::generate();
        let registry = |id: &str| (id == "alice").then(|| person("alice", &alice, false));
        let t = token(&alice, "alice", Duration::hours(1));

        let later = Utc::now() + Duration::hours(2);
        assert!(matches!(
            verify(&t, later, registry),
            Err(LoginError::Expired(_))
        ));
        assert_eq!(
            verify(&t, Utc::now(), |_| Some(person("alice", &alice, true))),
            Err(LoginError::Revoked("alice".into()))
        );
        assert_eq!(
            verify(&t, Utc::now(), |_| None),
            Err(LoginError::Unknown("alice".into()))
        );
        // Mallory signs a token naming alice with her own key.
        let forged = token(&mallory, "alice", Duration::hours(1));
        assert_eq!(
            verify(&forged, Utc::now(), registry),
            Err(LoginError::NotTheirKey("alice".into()))
        );
        // Alice's token edited to name bob (registered with alice's key, even).
        let text = String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(t.strip_prefix(TOKEN_PREFIX).unwrap())
                .unwrap(),
        )
        .unwrap();
        let edited = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(text.replacen("alice", "bob", 1))
        );
        assert!(matches!(
            verify(&edited, Utc::now(), |_| Some(person("bob", &alice, false))),
            Err(LoginError::Forged(SignatureError::BadSignature))
        ));
        for bad in ["", "tct1.", "tct1.!!!", "hello", &"x".repeat(5000)] {
            assert_eq!(
                verify(bad, Utc::now(), registry),
                Err(LoginError::Malformed)
            );
        }
        assert!(issue("alice", Duration::hours(25), |s, p| alice.sign(s, p)).is_err());
    }

    #[test]
    fn sessions_expire_and_close() {
        let sessions = Sessions::default();
        let now = Utc::now();
        let id = sessions
            .open(
                Login {
                    user: "alice".into(),
                    expires: now + Duration::minutes(5),
                },
                now,
            )
            .unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.user(&id, now).as_deref(), Some("alice"));
        assert_eq!(sessions.user("nope", now), None);
        assert_eq!(sessions.user(&id, now + Duration::minutes(6)), None);
        assert!(sessions.is_empty());
        let id = sessions
            .open(
                Login {
                    user: "alice".into(),
                    expires: now + Duration::minutes(5),
                },
                now,
            )
            .unwrap();
        sessions.close(&id);
        assert_eq!(sessions.user(&id, now), None);
    }
}
