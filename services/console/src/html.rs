//! HTML building blocks: escaping, the page layout, small shared fragments.
//!
//! Every piece of text that comes from the bus (names, labels, reasons, user names) is
//! written through [`E`], which escapes `& < > " '`; markup is only ever written from
//! string literals of this crate.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};

/// Text escaped for HTML element content and quoted attribute values.
#[derive(Debug, Clone, Copy)]
pub struct E<'a>(pub &'a str);

impl fmt::Display for E<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + c.len_utf8();
        }
        f.write_str(&self.0[last..])
    }
}

/// Escapes `s` into a new string.
pub fn esc(s: &str) -> String {
    E(s).to_string()
}

/// Who is looking at a page, and what the page may offer them.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// The path prefix (`/console` or empty).
    pub base: String,
    /// The identified user, if any.
    pub user: Option<String>,
    /// Whether the user may act (identified, registered, with the operator role, and the
    /// console has a signing key).
    pub can_act: bool,
    /// Whether the user is a registered, unrevoked principal.
    pub registered: bool,
    /// Whether the console has its own signing key (without one it is read-only).
    pub console_signs: bool,
    /// The CSRF token forms carry.
    pub csrf: String,
}

impl Ctx {
    /// A link to `path` (which starts with `/`) under the base path.
    pub fn href(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// The navigation entries: (path, label).
const NAV: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/rollouts", "Rollouts"),
    ("/plans", "Plans"),
    ("/incidents", "Incidents"),
    ("/slos", "SLOs"),
    ("/dora", "DORA"),
];

/// A whole page: `live` is the part re-fetched on every event, `after` the part that
/// stays (action forms).
pub fn layout(ctx: &Ctx, title: &str, live: &str, after: &str) -> String {
    let mut out = String::with_capacity(live.len() + after.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Toronto console</title>\
         <link rel=\"stylesheet\" href=\"{}\"></head>\
         <body data-base=\"{}\"><header><strong>Toronto</strong><nav>",
        E(title),
        E(&ctx.href("/assets/console.css")),
        E(&ctx.base),
    );
    for (path, label) in NAV {
        let _ = write!(out, "<a href=\"{}\">{label}</a>", E(&ctx.href(path)));
    }
    out.push_str("</nav><span class=\"who\">");
    match &ctx.user {
        Some(u) if ctx.can_act => {
            let _ = write!(out, "signed in as <b id=\"user\">{}</b>", E(u));
        }
        Some(u) => {
            let _ = write!(out, "<b id=\"user\">{}</b> (read-only)", E(u));
        }
        None => {
            let _ = write!(
                out,
                "read-only: <a href=\"{}\">sign in</a>",
                E(&ctx.href("/login"))
            );
        }
    }
    let _ = write!(
        out,
        "</span><span id=\"live-state\" class=\"muted\">live: off</span></header>\
         <main><h1>{}</h1><section id=\"live\">{live}</section>{after}</main>\
         <script src=\"{}\"></script></body></html>",
        E(title),
        E(&ctx.href("/assets/live.js")),
    );
    out
}

/// A time as `2026-11-26 17:03:09Z`.
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// An optional time, or a dash.
pub fn opt_time(t: Option<&DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "–".into())
}

/// A badge with a CSS class named after its (fixed-vocabulary) text.
pub fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", E(class), E(text))
}

/// The wire name of a serde enum value (`progressing`, `sev2`).
pub fn wire<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// A POST form with one button, disabled for a user who may not act.
pub fn action(ctx: &Ctx, path: &str, label: &str, with_reason: bool) -> String {
    let disabled = if ctx.can_act { "" } else { " disabled" };
    let reason = if with_reason {
        format!(
            "<input name=\"reason\" placeholder=\"reason (optional)\" maxlength=\"500\"{disabled}>"
        )
    } else {
        String::new()
    };
    format!(
        "<form method=\"post\" action=\"{}\" class=\"action\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{reason}\
         <button type=\"submit\" name=\"do\" value=\"{}\"{disabled}>{}</button></form>",
        E(&ctx.href(path)),
        E(&ctx.csrf),
        E(label),
        E(label),
    )
}

/// The actions box, with a note when the user may not act.
pub fn actions_box(ctx: &Ctx, forms: &[String]) -> String {
    if forms.is_empty() {
        return String::new();
    }
    let note = if ctx.can_act {
        String::new()
    } else if !ctx.console_signs {
        "<p class=\"muted\">Read-only console: it has no signing key \
         (TORONTO_IDENTITY_FILE), so it cannot act for anyone.</p>"
            .into()
    } else if ctx.user.is_some() && !ctx.registered {
        "<p class=\"muted\">You are not a registered principal (or you are revoked): \
         read-only.</p>"
            .into()
    } else if ctx.user.is_some() {
        "<p class=\"muted\">Your role may not act (operator needed).</p>".into()
    } else {
        "<p class=\"muted\">Read-only: sign in (login token or authentication proxy) \
         to act.</p>"
            .into()
    };
    format!(
        "<section id=\"actions\"><h2>Actions</h2>{}{note}</section>",
        forms.concat()
    )
}

/// Previous and next links of a listing page.
pub fn pager(ctx: &Ctx, path: &str, page: usize, has_next: bool) -> String {
    let mut out = String::from("<nav class=\"pager\">");
    if page > 0 {
        let _ = write!(
            out,
            "<a rel=\"prev\" href=\"{}?page={}\">← newer</a> ",
            E(&ctx.href(path)),
            page - 1
        );
    }
    let _ = write!(out, "<span>page {}</span>", page + 1);
    if has_next {
        let _ = write!(
            out,
            " <a rel=\"next\" href=\"{}?page={}\">older →</a>",
            E(&ctx.href(path)),
            page + 1
        );
    }
    out.push_str("</nav>");
    out
}

/// The stylesheet, served at `/assets/console.css`.
pub const CSS: &str = include_str!("assets/console.css");

/// The live-update script, served at `/assets/live.js`.
pub const LIVE_JS: &str = include_str!("assets/live.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn read_only_actions_render_disabled() {
        let ctx = Ctx::default();
        let form = action(&ctx, "/plans/1/approve", "approve", false);
        assert!(form.contains(" disabled>approve"), "{form}");
        let ctx = Ctx {
            can_act: true,
            ..Ctx::default()
        };
        assert!(!action(&ctx, "/p", "approve", true).contains("disabled"));
    }

    #[test]
    fn the_page_says_why_it_is_read_only() {
        let form = [action(&Ctx::default(), "/p", "approve", false)];
        let user = |registered| Ctx {
            user: Some("alice".into()),
            registered,
            console_signs: true,
            ..Ctx::default()
        };
        for (ctx, says) in [
            (Ctx::default(), "no signing key"),
            (
                Ctx {
                    console_signs: true,
                    ..Ctx::default()
                },
                "sign in",
            ),
            (user(false), "not a registered principal"),
            (user(true), "operator needed"),
        ] {
            let note = actions_box(&ctx, &form);
            assert!(note.contains(says), "{says}: {note}");
        }
    }
}
