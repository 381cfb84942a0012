//! Who is asking: the identity header of a trusted proxy or a login session, the role
//! it maps to, and the CSRF token (a double-submit cookie, `SameSite=Strict`) that
//! every form carries.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;
use toronto_commands::Role;

use crate::html::Ctx;
use crate::settings::Settings;
use crate::web::AppState;

/// The cookie holding the CSRF token.
pub const CSRF_COOKIE: &str = "toronto_console_csrf";

/// The longest user name believed.
const MAX_USER: usize = 128;

/// The viewer of a request: the page context, and a cookie to set when the token is new.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// What pages need.
    pub ctx: Ctx,
    /// The role of the identified user.
    pub role: Option<Role>,
    /// `Set-Cookie` value, when a new token was made.
    pub set_cookie: Option<String>,
}

/// The user named by the identity header, when the peer is a trusted proxy and the
/// name is well formed.
pub fn identify(
    settings: &Settings,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<String> {
    let name = settings.user_header.as_deref()?;
    let peer = peer?;
    if !settings
        .trusted_proxies
        .iter()
        .any(|n| n.contains(peer.ip()))
    {
        return None;
    }
    let value = headers.get(name)?.to_str().ok()?.trim();
    let ok = !value.is_empty()
        && value.len() <= MAX_USER
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-+:".contains(c));
    ok.then(|| value.to_owned())
}

/// The value of cookie `name` when it is `len` hex digits.
pub fn hex_cookie(headers: &HeaderMap, name: &str, len: usize) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| v.len() == len && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The CSRF token of the request's cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    hex_cookie(headers, CSRF_COOKIE, 32)
}

/// The login session id of the request's cookie, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    hex_cookie(headers, crate::login::SESSION_COOKIE, 64)
}

/// The console role a registered principal's roles give (admin: admin; operator or
/// approver: operator).
pub fn role_from_registry(principal: &toronto_protocol::auth::Principal) -> Role {
    use toronto_protocol::auth::Role as R;
    if principal.has_role(R::Admin) {
        Role::Admin
    } else if principal.has_role(R::Operator) || principal.has_role(R::Approver) {
        Role::Operator
    } else {
        Role::Viewer
    }
}

/// Whether the form's token is the cookie's.
pub fn csrf_ok(cookie: Option<&str>, form: Option<&str>) -> bool {
    match (cookie, form) {
        (Some(c), Some(f)) if !c.is_empty() => c.as_bytes().ct_eq(f.as_bytes()).into(),
        _ => false,
    }
}

fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let settings = &state.settings;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let now = chrono::Utc::now();
        let user = identify(settings, peer, &parts.headers)
            .or_else(|| session_id(&parts.headers).and_then(|id| state.sessions.user(&id, now)));
        let live = state.live.get();
        let signs = live.is_some_and(|l| l.backend.signs());
        // The registry decides who exists: an unregistered or revoked user may look
        // but not act.
        let principal = match (user.as_deref(), live.and_then(|l| l.registry.as_ref())) {
            (Some(u), Some(r)) => r.by_id(u).filter(|p| !p.revoked),
            _ => None,
        };
        let role = user.as_deref().map(|u| {
            let from_registry = principal
                .as_deref()
                .map(role_from_registry)
                .unwrap_or(Role::Viewer);
            settings.role_of(u).max(from_registry)
        });
        let (csrf, set_cookie) = match cookie_token(&parts.headers) {
            Some(t) => (t, None),
            None => {
                let t = new_token();
                let path = if settings.base_path.is_empty() {
                    "/"
                } else {
                    settings.base_path.as_str()
                };
                let cookie = format!("{CSRF_COOKIE}={t}; Path={path}; HttpOnly; SameSite=Strict");
                (t, Some(cookie))
            }
        };
        Ok(Viewer {
            ctx: Ctx {
                base: settings.base_path.clone(),
                can_act: signs && principal.is_some() && role.is_some_and(|r| r >= Role::Operator),
                registered: principal.is_some(),
                console_signs: signs,
                user,
                csrf,
            },
            role,
            set_cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_runtime::config::vars::var_map;

    fn settings() -> Settings {
        Settings::from_vars(&var_map(&[
            ("TORONTO_CONSOLE_USER_HEADER", "X-Forwarded-User"),
            ("TORONTO_CONSOLE_TRUSTED_PROXIES", "127.0.0.1"),
        ]))
        .unwrap()
    }

    fn headers(user: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-user", user.parse().unwrap());
        h
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy_and_well_formed() {
        let s = settings();
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        assert_eq!(
            identify(&s, Some(proxy), &headers("bob")).as_deref(),
            Some("bob")
        );
        assert_eq!(identify(&s, Some(other), &headers("bob")), None);
        assert_eq!(identify(&s, None, &headers("bob")), None);
        assert_eq!(identify(&s, Some(proxy), &headers("<b>x</b>")), None);
        assert_eq!(
            identify(&Settings::default(), Some(proxy), &headers("bob")),
            None
        );
    }

    #[test]
    fn csrf_needs_the_same_token_in_cookie_and_form() {
        assert!(csrf_ok(Some("ab"), Some("ab")));
        assert!(!csrf_ok(Some("ab"), Some("ac")));
        assert!(!csrf_ok(None, Some("ab")));
        assert!(!csrf_ok(Some("ab"), None));
        let mut h = HeaderMap::new();
        let t = new_token();
        h.insert(
            header::COOKIE,
            format!("a=b; {CSRF_COOKIE}={t}").parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(t));
        assert_eq!(session_id(&h), None);
    }
}
