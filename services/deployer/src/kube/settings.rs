//! The Kubernetes target's settings, parsed once from `TORONTO_DEPLOYER_*` variables.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use toronto_runtime::config::{SettingsError, ValueError, Var, parse, vars};

/// The parent Gateway of the HTTPRoutes (Gateway API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A service mesh that splits canary traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mesh {
    /// Istio: a VirtualService `<svc>` weighs `<svc>-stable` against `<svc>-canary`.
    Istio,
}

/// How the Kubernetes target maps layouts to objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// Namespace per environment; an environment not listed uses its own name.
    pub namespaces: BTreeMap<String, String>,
    /// The parent Gateway for canary HTTPRoutes; `None` splits canary traffic by
    /// replica ratio behind one Service.
    pub gateway: Option<GatewayRef>,
    /// The mesh that splits canary traffic when no Gateway is set.
    pub mesh: Option<Mesh>,
    /// Port of the Services.
    pub service_port: i32,
    /// Container port (named `http`) the Services target.
    pub container_port: i32,
    /// `revisionHistoryLimit` of every Deployment.
    pub revision_history_limit: i32,
    /// How long one API call may take.
    pub timeout: Duration,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            namespaces: BTreeMap::new(),
            gateway: None,
            mesh: None,
            service_port: 80,
            container_port: 8080,
            revision_history_limit: 10,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Every variable the Kubernetes target reads: its doc, default and setter.
///
/// The kube client itself also reads `KUBECONFIG` (or the in-cluster service account)
/// when the target infers its client from the environment.
pub const KUBE_VARS: &[Var<KubeSettings>] = &[
    Var::new(
        "TORONTO_DEPLOYER_NAMESPACES",
        "Namespace per environment, `env=namespace` pairs separated by commas (e.g. `production=prod,staging=stg`); an environment not listed uses a namespace of its own name.",
        "",
        |s, v| {
            s.namespaces = parse_namespaces(v.trim()).map_err(ValueError::Invalid)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_GATEWAY",
        "Parent Gateway as `namespace/name`; when set, canary traffic is split by Gateway API HTTPRoute weights over Services `<svc>-stable` and `<svc>-canary` instead of by replica ratio.",
        "",
        |s, v| {
            s.gateway = match v.trim() {
                "" => None,
                raw => Some(parse_gateway(raw).map_err(ValueError::Invalid)?),
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_MESH",
        "`istio`: canary traffic is split by an Istio VirtualService `<svc>` over Services `<svc>-stable` and `<svc>-canary` (exact weights for in-mesh clients); empty: no mesh. TORONTO_DEPLOYER_GATEWAY wins when both are set.",
        "",
        |s, v| {
            s.mesh = match v.trim() {
                "" => None,
                raw => Some(parse::one_of(raw, &[("istio", Mesh::Istio)])?),
            };
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_SERVICE_PORT",
        "Port of the Services the target creates (1 to 65535).",
        "80",
        |s, v| {
            s.service_port = port(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_CONTAINER_PORT",
        "Container port named `http` that the Services send traffic to (1 to 65535).",
        "8080",
        |s, v| {
            s.container_port = port(v)?;
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_REVISION_HISTORY_LIMIT",
        "`revisionHistoryLimit` of every Deployment: old ReplicaSets kept for rollback (0 to 65535).",
        "10",
        |s, v| {
            s.revision_history_limit = i32::from(parse::whole_or_zero::<u16>(v)?);
            Ok(())
        },
    ),
    Var::new(
        "TORONTO_DEPLOYER_KUBE_TIMEOUT_SECONDS",
        "Seconds one Kubernetes API call may take before the target reports itself unavailable.",
        "30",
        |s, v| {
            s.timeout = parse::seconds(v)?;
            Ok(())
        },
    ),
];

fn port(v: &str) -> Result<i32, ValueError> {
    parse::positive::<u16>(v).map(i32::from)
}

impl KubeSettings {
    /// Parses the settings from variables (usually the process environment); a
    /// malformed value is an error naming the variable and what is wrong with it.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<KubeSettings, SettingsError> {
        let mut settings = KubeSettings::default();
        vars::read(&mut settings, KUBE_VARS, vars)?;
        Ok(settings)
    }

    /// Parses the settings from the process environment.
    pub fn from_env() -> Result<KubeSettings, SettingsError> {
        Self::from_vars(&vars::env_vars())
    }

    /// The namespace of an environment: the mapped one, or the environment's own
    /// name; an error when that is not a valid namespace name.
    pub fn namespace_for(&self, environment: &str) -> Result<String, String> {
        let ns = self
            .namespaces
            .get(environment)
            .cloned()
            .unwrap_or_else(|| environment.to_string());
        check_dns_label(&ns).map_err(|e| {
            format!(
                "environment {environment:?} maps to namespace {ns:?}, which is not a valid namespace name ({e}); map it with TORONTO_DEPLOYER_NAMESPACES"
            )
        })?;
        Ok(ns)
    }
}

fn parse_namespaces(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (env, ns) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not of the form environment=namespace"))?;
        let (env, ns) = (env.trim(), ns.trim());
        if env.is_empty() {
            return Err(format!("{pair:?} names no environment"));
        }
        check_dns_label(ns).map_err(|e| format!("namespace {ns:?}: {e}"))?;
        if out.insert(env.to_string(), ns.to_string()).is_some() {
            return Err(format!("environment {env:?} is mapped twice"));
        }
    }
    Ok(out)
}

fn parse_gateway(raw: &str) -> Result<GatewayRef, String> {
    let (namespace, name) = raw
        .split_once('/')
        .ok_or("expected namespace/name of the parent Gateway")?;
    let (namespace, name) = (namespace.trim(), name.trim());
    check_dns_label(namespace).map_err(|e| format!("namespace {namespace:?}: {e}"))?;
    check_dns_subdomain(name).map_err(|e| format!("name {name:?}: {e}"))?;
    Ok(GatewayRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// Checks an RFC 1123 label (namespace and object names): lowercase letters,
/// digits and `-`, starting and ending alphanumeric, at most 63 characters.
pub(crate) fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !s.chars().all(ok_char) {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks an RFC 1123 subdomain (dot-separated labels, at most 253 characters).
pub(crate) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    s.split('.').try_for_each(check_dns_label)
}

/// Checks a label value: at most 63 characters, alphanumerics, `-`, `_` and `.`,
/// starting and ending alphanumeric.
pub(crate) fn check_label_value(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !s.chars().all(ok_char) {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !edge(s.chars().next()) || !edge(s.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use toronto_runtime::config::var_map as vars;

    #[test]
    fn parses_namespaces_and_gateway() {
        let s = KubeSettings::from_vars(&vars(&[
            (
                "TORONTO_DEPLOYER_NAMESPACES",
                "production=prod, staging=stg",
            ),
            ("TORONTO_DEPLOYER_GATEWAY", "infra/public"),
        ]))
        .expect("valid");
        assert_eq!(s.namespace_for("production").as_deref(), Ok("prod"));
        assert_eq!(s.namespace_for("staging").as_deref(), Ok("stg"));
        assert_eq!(s.namespace_for("dev").as_deref(), Ok("dev"));
        assert_eq!(
            s.gateway,
            Some(GatewayRef {
                namespace: "infra".into(),
                name: "public".into()
            })
        );
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value, needle) in [
            (
                "TORONTO_DEPLOYER_NAMESPACES",
                "production",
                "environment=namespace",
            ),
            (
                "TORONTO_DEPLOYER_NAMESPACES",
                "production=Prod",
                "lowercase",
            ),
            ("TORONTO_DEPLOYER_NAMESPACES", "a=x,a=y", "mapped twice"),
            ("TORONTO_DEPLOYER_GATEWAY", "public", "namespace/name"),
            ("TORONTO_DEPLOYER_GATEWAY", "/public", "empty"),
            ("TORONTO_DEPLOYER_SERVICE_PORT", "70000", "`70000`"),
            ("TORONTO_DEPLOYER_SERVICE_PORT", "0", "must be more than 0"),
            (
                "TORONTO_DEPLOYER_KUBE_TIMEOUT_SECONDS",
                "0",
                "must be more than 0",
            ),
        ] {
            let err = KubeSettings::from_vars(&vars(&[(var, value)]))
                .expect_err(value)
                .to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn the_table_parses_its_defaults() {
        let defaults: HashMap<String, String> = KUBE_VARS
            .iter()
            .map(|v| (v.name.to_owned(), v.default.to_owned()))
            .collect();
        assert_eq!(
            KubeSettings::from_vars(&defaults).unwrap(),
            KubeSettings::default()
        );
    }

    #[test]
    fn an_environment_that_is_no_namespace_name_is_an_error() {
        let s = KubeSettings::default();
        let err = s.namespace_for("Production").expect_err("uppercase");
        assert!(err.contains("TORONTO_DEPLOYER_NAMESPACES"), "{err}");
    }

    #[test]
    fn label_values() {
        assert!(check_label_value("2.4.1").is_ok());
        assert!(check_label_value("2.4.1+build.7").is_err());
        assert!(check_label_value("-x").is_err());
    }
}
