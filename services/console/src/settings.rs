//! The console's own settings, from `TORONTO_CONSOLE_*` variables, parsed once at start.

use std::collections::HashMap;
use std::net::IpAddr;

use toronto_commands::Role;
use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

/// An address or a network (`10.0.0.0/8`, `::1`) an identity header is trusted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The network's address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Network {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::Invalid(format!("`{s}` is not an IP address or network"));
        let (addr, prefix) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.parse::<u8>().map_err(|_| bad())?
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

/// The console's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The path prefix the console is served under (`/console`), or empty for `/`.
    pub base_path: String,
    /// The request header naming the user, set by a trusted authentication proxy.
    pub user_header: Option<String>,
    /// Peers whose identity header is believed.
    pub trusted_proxies: Vec<Network>,
    /// Roles of users, by user name.
    pub roles: HashMap<String, Role>,
    /// Role of a user not in `roles`.
    pub default_role: Role,
    /// Rows per page of every listing.
    pub page_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            base_path: String::new(),
            user_header: None,
            trusted_proxies: Vec::new(),
            roles: HashMap::new(),
            default_role: Role::Viewer,
            page_size: 20,
        }
    }
}

/// The prefix of the console's variables.
pub const PREFIX: &str = "TORONTO_CONSOLE_";

/// Every `TORONTO_CONSOLE_*` variable: its doc, default and setter.
pub const CONSOLE_VARS: &[Var<Settings>] = &[
    Var::new(
        "TORONTO_CONSOLE_BASE_PATH",
        "Path prefix the console is served under behind a reverse proxy (e.g. `/console`); every link and form carries it. Empty serves at `/`.",
        "",
        |s, v| {
            s.base_path = base_path(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CONSOLE_USER_HEADER",
        "Request header an authenticating proxy puts the user name in (e.g. `X-Forwarded-User`); believed only from TORONTO_CONSOLE_TRUSTED_PROXIES. Unset: the console is read-only.",
        "",
        |s, v| {
            s.user_header = parse::optional(v).map(|h| h.to_ascii_lowercase());
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CONSOLE_TRUSTED_PROXIES",
        "Addresses or networks (`10.0.0.0/8,::1`), comma-separated, whose identity header is believed; requests from elsewhere are read-only.",
        "",
        |s, v| {
            s.trusted_proxies = parse::list(v)
                .iter()
                .map(|n| n.parse())
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CONSOLE_ROLES",
        "Users' roles as `user=role`, comma-separated (viewer, operator, admin); actions need operator.",
        "",
        |s, v| {
            let mut roles = HashMap::new();
            for pair in parse::list(v) {
                let (user, role) = pair
                    .rsplit_once('=')
                    .ok_or_else(|| ValueError::Invalid(format!("`{pair}` is not user=role")))?;
                let role = role
                    .trim()
                    .parse::<Role>()
                    .map_err(|e| ValueError::Invalid(e.to_string()))?;
                roles.insert(user.trim().to_owned(), role);
            }
            s.roles = roles;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CONSOLE_DEFAULT_ROLE",
        "Role of an identified user not in TORONTO_CONSOLE_ROLES: viewer, operator or admin.",
        "viewer",
        |s, v| {
            s.default_role = v
                .trim()
                .parse::<Role>()
                .map_err(|e| ValueError::Invalid(e.to_string()))?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_CONSOLE_PAGE_SIZE",
        "Rows per page of every listing (1 to 200).",
        "20",
        |s, v| {
            let n: usize = parse::positive(v)?;
            if n > 200 {
                return Err(ValueError::Invalid(format!("{n} is more than 200")));
            }
            s.page_size = n;
            Ok(())
        },
    ),
];

fn base_path(v: &str) -> Result<String, ValueError> {
    let v = v.trim().trim_end_matches('/');
    if v.is_empty() {
        return Ok(String::new());
    }
    let ok = v.starts_with('/')
        && v[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !ok || v.contains("//") || v.contains("..") {
        return Err(ValueError::Invalid(format!(
            "`{v}` is not a path such as /console"
        )));
    }
    Ok(v.to_owned())
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// From a set of variables; the ones not given keep their defaults; an unknown
    /// `TORONTO_CONSOLE_*` variable is refused.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        vars::refuse_unknown(PREFIX, &vars::docs(CONSOLE_VARS), vars)?;
        let mut s = Self::default();
        vars::read(&mut s, CONSOLE_VARS, vars)?;
        if s.user_header.is_some() && s.trusted_proxies.is_empty() {
            return Err(SettingsError::Inconsistent(
                "TORONTO_CONSOLE_USER_HEADER needs TORONTO_CONSOLE_TRUSTED_PROXIES: \
                 a header from anyone is no identity"
                    .into(),
            ));
        }
        Ok(s)
    }

    /// The role of an identified user.
    pub fn role_of(&self, user: &str) -> Role {
        self.roles.get(user).copied().unwrap_or(self.default_role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toronto_runtime::config::vars::var_map;

    #[test]
    fn defaults_match_the_table() {
        let s = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn proxies_paths_and_roles_parse() {
        let s = Settings::from_vars(&var_map(&[
            ("TORONTO_CONSOLE_BASE_PATH", "/console/"),
            ("TORONTO_CONSOLE_USER_HEADER", "X-Forwarded-User"),
            ("TORONTO_CONSOLE_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
            ("TORONTO_CONSOLE_ROLES", "bob=operator,carol=admin"),
        ]))
        .unwrap();
        assert_eq!(s.base_path, "/console");
        assert_eq!(s.user_header.as_deref(), Some("x-forwarded-user"));
        assert!(s.trusted_proxies[0].contains("10.2.3.4".parse().unwrap()));
        assert!(!s.trusted_proxies[0].contains("11.2.3.4".parse().unwrap()));
        assert!(s.trusted_proxies[1].contains("::1".parse().unwrap()));
        assert!(s.trusted_proxies[0].contains("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(s.role_of("bob"), Role::Operator);
        assert_eq!(s.role_of("dave"), Role::Viewer);
    }

    #[test]
    fn a_header_without_proxies_and_bad_paths_are_refused() {
        let e = Settings::from_vars(&var_map(&[("TORONTO_CONSOLE_USER_HEADER", "X-User")]))
            .unwrap_err();
        assert!(e.to_string().contains("TRUSTED_PROXIES"), "{e}");
        for bad in ["console", "/a/../b", "/a b", "/<x>"] {
            assert!(
                Settings::from_vars(&var_map(&[("TORONTO_CONSOLE_BASE_PATH", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
