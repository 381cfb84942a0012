//! The resources the fake serves and how request paths name them.

/// One kind of object the fake keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `v1` or `group/version`.
    pub api_version: &'static str,
    /// The URL plural, e.g. `deployments`.
    pub plural: &'static str,
    /// The kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether a change of `spec` bumps `metadata.generation`.
    pub has_generation: bool,
}

const fn r(
    api_version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    has_generation: bool,
) -> Resource {
    Resource {
        api_version,
        plural,
        kind,
        namespaced,
        has_generation,
    }
}

/// Every resource served: what the deployer writes and reads (Namespaces,
/// Deployments, Services, Pods, HTTPRoutes, VirtualServices) and ConfigMaps.
pub const RESOURCES: &[Resource] = &[
    r("v1", "namespaces", "Namespace", false, false),
    r("v1", "services", "Service", true, false),
    r("v1", "configmaps", "ConfigMap", true, false),
    r("v1", "pods", "Pod", true, false),
    r("apps/v1", "deployments", "Deployment", true, true),
    r(
        "gateway.networking.k8s.io/v1",
        "httproutes",
        "HTTPRoute",
        true,
        true,
    ),
    r(
        "networking.istio.io/v1",
        "virtualservices",
        "VirtualService",
        true,
        true,
    ),
];

/// The resource with this API version and plural.
pub fn resource(api_version: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.api_version == api_version && r.plural == plural)
}

/// The resource of a kind (`Deployment`).
pub fn resource_of_kind(kind: &str) -> Option<Resource> {
    RESOURCES.iter().copied().find(|r| r.kind == kind)
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `GET /version`.
    Version,
    /// A collection: list or create.
    Collection {
        /// The resource.
        resource: Resource,
        /// Its namespace (`None` for cluster-scoped ones, or all namespaces).
        namespace: Option<String>,
    },
    /// One object.
    Object {
        /// The resource.
        resource: Resource,
        /// Its namespace (empty for cluster-scoped ones).
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// Why a path names nothing the fake serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path has no API shape (or names a subresource).
    NotFound,
    /// The API shape is right but the fake does not serve that resource.
    UnknownResource(String),
}

/// Parses `/api/v1/...`, `/apis/<group>/<version>/...` and `/version`.
pub fn parse_path(path: &str) -> Result<Target, PathError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Target::Version),
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(PathError::NotFound),
    };
    let find = |plural: &str| {
        resource(&api_version, plural)
            .ok_or_else(|| PathError::UnknownResource(format!("{api_version} {plural}")))
    };
    match rest {
        ["namespaces", ns, plural] => {
            let resource = find(plural)?;
            namespaced_only(resource)?;
            Ok(Target::Collection {
                resource,
                namespace: Some((*ns).to_owned()),
            })
        }
        ["namespaces", ns, plural, name] => {
            let resource = find(plural)?;
            namespaced_only(resource)?;
            Ok(Target::Object {
                resource,
                namespace: (*ns).to_owned(),
                name: (*name).to_owned(),
            })
        }
        [plural] => Ok(Target::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(PathError::NotFound);
            }
            Ok(Target::Object {
                resource,
                namespace: String::new(),
                name: (*name).to_owned(),
            })
        }
        _ => Err(PathError::NotFound),
    }
}

fn namespaced_only(resource: Resource) -> Result<(), PathError> {
    if resource.namespaced {
        Ok(())
    } else {
        Err(PathError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let deployments = resource("apps/v1", "deployments").unwrap();
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/prod/deployments/shop"),
            Ok(Target::Object {
                resource: deployments,
                namespace: "prod".into(),
                name: "shop".into()
            })
        );
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/prod/deployments"),
            Ok(Target::Collection {
                resource: deployments,
                namespace: Some("prod".into())
            })
        );
        let namespaces = resource("v1", "namespaces").unwrap();
        assert_eq!(
            parse_path("/api/v1/namespaces/prod"),
            Ok(Target::Object {
                resource: namespaces,
                namespace: String::new(),
                name: "prod".into()
            })
        );
        assert_eq!(
            parse_path("/api/v1/namespaces"),
            Ok(Target::Collection {
                resource: namespaces,
                namespace: None
            })
        );
        assert_eq!(parse_path("/version"), Ok(Target::Version));
        assert!(matches!(
            parse_path("/apis/batch/v1/namespaces/prod/jobs"),
            Err(PathError::UnknownResource(_))
        ));
        assert_eq!(
            parse_path("/apis/apps/v1/namespaces/prod/deployments/shop/scale"),
            Err(PathError::NotFound)
        );
        assert_eq!(parse_path("/healthz"), Err(PathError::NotFound));
    }
}
