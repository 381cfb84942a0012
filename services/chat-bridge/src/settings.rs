//! The chat bridge's own settings, from `TORONTO_CHAT_*` variables, parsed once at start.
//! Secrets (the Slack signing secret, Mattermost tokens, webhook URLs) never appear in
//! `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use toronto_commands::Role;
use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

/// A secret value: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for use (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which chat a webhook posts to (the markup differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatKind {
    /// Slack incoming webhook (mrkdwn, Block Kit buttons).
    Slack,
    /// Mattermost incoming webhook (Markdown).
    Mattermost,
}

impl ChatKind {
    /// `slack` or `mattermost`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Slack => "slack",
            ChatKind::Mattermost => "mattermost",
        }
    }
}

/// How much a notification matters, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Step-by-step detail (not posted unless a route asks for it).
    Debug,
    /// Progress and outcomes.
    Info,
    /// Needs attention (an approval waits, a rollout paused).
    Warning,
    /// Something failed.
    Error,
    /// Users are hurt (an abort, a page, an exhausted budget).
    Critical,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "debug" => Ok(Severity::Debug),
            "info" => Ok(Severity::Info),
            "warning" | "warn" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "`{other}` is not a severity (debug, info, warning, error, critical)"
            )),
        }
    }
}

/// A named incoming webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The channel name that routes refer to.
    pub name: String,
    /// Slack or Mattermost.
    pub kind: ChatKind,
    /// The webhook URL (a secret: it is the credential).
    pub url: Secret,
}

/// A routing rule: events matching it go to the webhook `channel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The webhook's name.
    pub channel: String,
    /// Only these services (any when empty).
    pub services: Vec<String>,
    /// Only these environments (any when empty).
    pub environments: Vec<String>,
    /// Only this severity and above.
    pub min_severity: Severity,
}

impl Route {
    /// Whether an event of `service`, `environment` and `severity` goes this way. An
    /// event without a service (or environment) passes a filter on it only when the
    /// filter is empty.
    pub fn matches(
        &self,
        service: Option<&str>,
        environment: Option<&str>,
        severity: Severity,
    ) -> bool {
        let fits = |allowed: &[String], value: Option<&str>| {
            allowed.is_empty() || value.is_some_and(|v| allowed.iter().any(|a| a == v))
        };
        severity >= self.min_severity
            && fits(&self.services, service)
            && fits(&self.environments, environment)
    }
}

/// How the chat bridge runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the chat routes are served; `None` serves them on the service's HTTP server
    /// (`TORONTO_HTTP_ADDR`), beside `/healthz`.
    pub listen_addr: Option<SocketAddr>,
    /// Slack's signing secret; Slack routes answer 503 without it.
    pub slack_signing_secret: Option<Secret>,
    /// Mattermost slash command tokens; the Mattermost route answers 503 without one.
    pub mattermost_tokens: Vec<Secret>,
    /// Roles by user: keys are `platform:user_id`, `user_id` or `user_name`.
    pub roles: HashMap<String, Role>,
    /// The role of a user not in `roles` (`None`: no role, only `help`).
    pub default_role: Option<Role>,
    /// Incoming webhooks by name.
    pub webhooks: Vec<Webhook>,
    /// Routing rules; empty sends every event of severity info and above to every webhook.
    pub routes: Vec<Route>,
    /// Notifications arriving within this window are posted as one message per channel
    /// (rollout progress of one rollout keeps only its latest).
    pub group_window: Duration,
    /// How long a slash command waits for its answer before replying "working on it"
    /// and sending the answer to the response URL (Slack allows 3 s).
    pub reply_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen_addr: None,
            slack_signing_secret: None,
            mattermost_tokens: Vec::new(),
            roles: HashMap::new(),
            default_role: Some(Role::Viewer),
            webhooks: Vec::new(),
            routes: Vec::new(),
            group_window: Duration::from_millis(3000),
            reply_wait: Duration::from_millis(2500),
        }
    }
}

/// The prefix of the chat bridge's variables.
pub const PREFIX: &str = "TORONTO_CHAT_";

/// Every `TORONTO_CHAT_*` variable: its doc, default and setter.
pub const CHAT_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_CHAT_LISTEN_ADDR",
        "Listen address of the chat routes (/slack/commands, /slack/interactions, /mattermost/commands); unset serves them on TORONTO_HTTP_ADDR beside /healthz.",
        "",
        |s, v| {
            s.listen_addr = parse::optional_socket_addr(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_SLACK_SIGNING_SECRET",
        "Slack app signing secret; Slack requests are verified with it (v0 HMAC-SHA256, 5-minute window, no replays). Unset: Slack routes answer 503.",
        "",
        |s, v| {
            s.slack_signing_secret = parse::optional(v).map(Secret::new);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_MATTERMOST_TOKEN",
        "Mattermost slash command token(s), comma-separated. Unset: the Mattermost route answers 503.",
        "",
        |s, v| {
            s.mattermost_tokens = parse::list(v).into_iter().map(Secret::new).collect();
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_ROLES",
        "Users' roles as `user=role`, comma-separated; user is `platform:user_id`, a user id or a user name; role is viewer, operator or admin (e.g. `slack:U024BE7LH=admin,alice=operator`).",
        "",
        |s, v| {
            s.roles = roles(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_DEFAULT_ROLE",
        "Role of users not in TORONTO_CHAT_ROLES: viewer, operator, admin, or none (only `help`).",
        "viewer",
        |s, v| {
            s.default_role = match v.trim() {
                "none" | "" => None,
                r => Some(r.parse().map_err(|e| invalid(format!("{e} (or none)")))?),
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_WEBHOOKS",
        "Incoming webhooks as `name=slack:URL` or `name=mattermost:URL`, comma-separated. Unset: no notifications.",
        "",
        |s, v| {
            s.webhooks = parse::list(v)
                .iter()
                .map(|w| webhook(w))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_ROUTES",
        "Notification routes as `channel[:filter,...]`, `;`-separated; filters `service=a|b`, `environment=a|b`, `severity>=warning` (e.g. `ops:environment=production,severity>=warning;shop:service=shop-api`). Unset: every event of severity info and above to every webhook.",
        "",
        |s, v| {
            s.routes = v
                .split(';')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(route)
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_GROUP_MS",
        "Milliseconds notifications are gathered into one message per channel (rollout progress keeps only its latest); 0 sends each at once.",
        "3000",
        |s, v| {
            s.group_window = parse::millis_or_zero(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CHAT_REPLY_WAIT_MS",
        "Milliseconds a slash command waits for its answer before replying \"working on it\" and posting the answer to the response URL; at most 2800, under Slack's 3-second limit (a larger value is refused); 0 always answers through the response URL.",
        "2500",
        |s, v| {
            let wait = parse::millis_or_zero(v)?;
            if wait > MAX_REPLY_WAIT {
                return Err(ValueError::Invalid(format!(
                    "{} ms is over {} ms: Slack drops a slash command not answered within 3 s",
                    wait.as_millis(),
                    MAX_REPLY_WAIT.as_millis()
                )));
            }
            s.reply_wait = wait;
            Ok(())
        },
    ),
];

/// The longest `TORONTO_CHAT_REPLY_WAIT_MS`: Slack drops a slash command not answered
/// within 3 s, and the answer still has to travel back.
pub const MAX_REPLY_WAIT: Duration = Duration::from_millis(2800);

fn roles(v: &str) -> Result<HashMap<String, Role>, ValueError> {
    let mut roles = HashMap::new();
    for pair in parse::list(v) {
        let (user, role) = pair
            .rsplit_once('=')
            .ok_or_else(|| ValueError::Invalid(format!("`{pair}` is not user=role")))?;
        let role = role.parse::<Role>().map_err(|e| invalid(e.to_string()))?;
        roles.insert(user.trim().to_owned(), role);
    }
    Ok(roles)
}

fn invalid(message: String) -> ValueError {
    ValueError::Invalid(message)
}

fn webhook(item: &str) -> Result<Webhook, ValueError> {
    // Never echo the URL: it is the credential.
    let (name, rest) = item
        .split_once('=')
        .ok_or_else(|| invalid("an entry is not name=slack:URL or name=mattermost:URL".into()))?;
    let name = name.trim();
    let (kind, url) = rest
        .split_once(':')
        .ok_or_else(|| invalid(format!("webhook `{name}` is not name=slack:URL")))?;
    let kind = match kind.trim() {
        "slack" => ChatKind::Slack,
        "mattermost" => ChatKind::Mattermost,
        other => {
            return Err(invalid(format!(
                "webhook `{name}` has kind `{other}`; use slack or mattermost"
            )));
        }
    };
    let url = url.trim();
    if name.is_empty() || !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(invalid(format!(
            "webhook `{name}` needs a name and an http(s) URL"
        )));
    }
    Ok(Webhook {
        name: name.to_owned(),
        kind,
        url: Secret::new(url),
    })
}

fn route(rule: &str) -> Result<Route, ValueError> {
    let (channel, filters) = rule.split_once(':').unwrap_or((rule, ""));
    let mut route = Route {
        channel: channel.trim().to_owned(),
        services: Vec::new(),
        environments: Vec::new(),
        min_severity: Severity::Info,
    };
    for filter in parse::list(filters) {
        if let Some(level) = filter
            .strip_prefix("severity>=")
            .or_else(|| filter.strip_prefix("severity="))
        {
            route.min_severity = level
                .parse::<Severity>()
                .map_err(|e| invalid(e.to_string()))?;
            continue;
        }
        let (key, values) = filter
            .split_once('=')
            .ok_or_else(|| invalid(format!("`{filter}` is not key=value")))?;
        let values: Vec<String> = values
            .split('|')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        match key.trim() {
            "service" => route.services = values,
            "environment" | "env" => route.environments = values,
            other => {
                return Err(invalid(format!(
                    "`{other}` is not a filter (service, environment, severity)"
                )));
            }
        }
    }
    Ok(route)
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// From a set of variables; the ones not given keep their defaults. Errors name
    /// the variable and never contain a secret; an unknown `TORONTO_CHAT_*` variable
    /// is refused.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &vars::docs(CHAT_VARS), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, CHAT_VARS, vars)?;
        s.check().map_err(SettingsError::Inconsistent)?;
        Ok(s)
    }

    /// Cross-checks: every route names a webhook, webhook names are unique.
    pub fn check(&self) -> Result<(), String> {
        for (i, w) in self.webhooks.iter().enumerate() {
            if self.webhooks[..i].iter().any(|o| o.name == w.name) {
                return Err(format!(
                    "TORONTO_CHAT_WEBHOOKS: `{}` is named twice",
                    w.name
                ));
            }
        }
        for r in &self.routes {
            if !self.webhooks.iter().any(|w| w.name == r.channel) {
                return Err(format!(
                    "TORONTO_CHAT_ROUTES: channel `{}` is not in TORONTO_CHAT_WEBHOOKS",
                    r.channel
                ));
            }
        }
        Ok(())
    }

    /// The role of a user on a platform: by `platform:user_id`, then user id, then
    /// user name, else the default role.
    pub fn role_of(&self, platform: &str, user_id: &str, user_name: Option<&str>) -> Option<Role> {
        self.roles
            .get(&format!("{platform}:{user_id}"))
            .or_else(|| self.roles.get(user_id))
            .or_else(|| user_name.and_then(|n| self.roles.get(n)))
            .copied()
            .or(self.default_role)
    }

    /// The webhooks an event goes to.
    pub fn channels_for(
        &self,
        service: Option<&str>,
        environment: Option<&str>,
        severity: Severity,
    ) -> Vec<&Webhook> {
        if self.routes.is_empty() {
            return if severity >= Severity::Info {
                self.webhooks.iter().collect()
            } else {
                Vec::new()
            };
        }
        self.webhooks
            .iter()
            .filter(|w| {
                self.routes
                    .iter()
                    .any(|r| r.channel == w.name && r.matches(service, environment, severity))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use toronto_runtime::config::var_map as vars;

    #[test]
    fn the_reply_wait_stays_under_slacks_three_seconds() {
        let ok = Settings::from_vars(&vars(&[("TORONTO_CHAT_REPLY_WAIT_MS", "2800")])).unwrap();
        assert_eq!(ok.reply_wait, MAX_REPLY_WAIT);
        let e = Settings::from_vars(&vars(&[("TORONTO_CHAT_REPLY_WAIT_MS", "3000")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TORONTO_CHAT_REPLY_WAIT_MS"), "{e}");
        assert!(e.contains("3 s"), "{e}");
    }

    #[test]
    fn variables_parse_and_bad_values_are_named_without_secrets() {
        let s = Settings::from_vars(&vars(&[
            ("TORONTO_CHAT_SLACK_SIGNING_SECRET", "s3cr3t"),
            ("TORONTO_CHAT_ROLES", "slack:U1=admin, alice=operator"),
            ("TORONTO_CHAT_DEFAULT_ROLE", "none"),
            (
                "TORONTO_CHAT_WEBHOOKS",
                "ops=slack:https://hooks.example/T/B/X,team=mattermost:http://mm/hooks/1",
            ),
            (
                "TORONTO_CHAT_ROUTES",
                "ops:environment=production,severity>=warning; team:service=shop|web",
            ),
            ("TORONTO_CHAT_GROUP_MS", "100"),
        ]))
        .unwrap();
        assert_eq!(s.role_of("slack", "U1", None), Some(Role::Admin));
        assert_eq!(
            s.role_of("mattermost", "x", Some("alice")),
            Some(Role::Operator)
        );
        assert_eq!(s.role_of("slack", "U9", Some("bob")), None);
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(!format!("{s:?}").contains("hooks.example"));
        let prod_warning = s.channels_for(Some("shop"), Some("production"), Severity::Warning);
        assert_eq!(
            prod_warning
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>(),
            vec!["ops", "team"]
        );
        assert!(
            s.channels_for(Some("api"), Some("production"), Severity::Info)
                .is_empty()
        );

        let bad = Settings::from_vars(&vars(&[(
            "TORONTO_CHAT_WEBHOOKS",
            "ops=teams:https://secret-hook",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("TORONTO_CHAT_WEBHOOKS") && !bad.contains("secret-hook"),
            "{bad}"
        );
        let bad = Settings::from_vars(&vars(&[("TORONTO_CHAT_ROUTES", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not in TORONTO_CHAT_WEBHOOKS"), "{bad}");
        let bad = Settings::from_vars(&vars(&[("TORONTO_CHAT_ROLES", "bob=root")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("TORONTO_CHAT_ROLES"), "{bad}");
        let bad = Settings::from_vars(&vars(&[("TORONTO_CHAT_LISTEN_ADDR", "anywhere")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("TORONTO_CHAT_LISTEN_ADDR"), "{bad}");
    }

    #[test]
    fn the_table_parses_its_defaults_and_refuses_typos() {
        let defaults: HashMap<String, String> = CHAT_VARS
            .iter()
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(Settings::from_vars(&defaults).unwrap(), Settings::default());
        let mut names: Vec<&str> = CHAT_VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CHAT_VARS.len());
        let err = Settings::from_vars(&vars(&[("TORONTO_CHAT_WEBHOOK", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown variable TORONTO_CHAT_WEBHOOK (did you mean TORONTO_CHAT_WEBHOOKS?)"
        );
    }
}
