//! The identity registry's endpoints: `identity.put` and `identity.revoke` (a signed
//! admin action, refused 401/403 by the service host otherwise) and `identity.list`
//! (read-only). The registry itself is the runtime's ([`toronto_runtime::auth`]): its
//! KV bucket is written only here, never by a client.

use std::sync::Arc;

use toronto_protocol::auth::{
    Identities, IdentityList, IdentityPut, IdentityRevoke, MAX_IDENTITY_PAGE, Principal, Role,
};
use toronto_protocol::{ErrorBody, ErrorCode};
use toronto_runtime::auth::{AccessRule, Registry};
use toronto_runtime::{Request, RuntimeError, ServiceRuntime};

/// Registers the identity endpoints (with mode `off` they answer 503: no registry).
pub(crate) async fn register(rt: &ServiceRuntime) -> Result<(), RuntimeError> {
    let registry = rt
        .host
        .auth()
        .and_then(|auth| {
            auth.protect("identity.put", AccessRule::Role(Role::Admin));
            auth.protect("identity.revoke", AccessRule::Role(Role::Admin));
            auth.registry().cloned()
        })
        .map(Arc::new);
    let put = registry.clone();
    rt.endpoint("identity.put", move |req: Request<IdentityPut>| {
        let registry = put.clone();
        async move {
            let registry = available(&registry)?;
            let principal = req.data().principal.clone();
            store(registry, &principal, &req).await
        }
    })
    .await?;
    let revoke = registry.clone();
    rt.endpoint("identity.revoke", move |req: Request<IdentityRevoke>| {
        let registry = revoke.clone();
        async move {
            let registry = available(&registry)?;
            let id = &req.data().id;
            let mut principal = registry.by_id(id).map(|p| (*p).clone()).ok_or_else(|| {
                ErrorBody::new(ErrorCode::NotFound, format!("no principal `{id}`"))
            })?;
            principal.revoked = true;
            store(registry, &principal, &req).await
        }
    })
    .await?;
    let list = registry;
    rt.endpoint("identity.list", move |req: Request<IdentityList>| {
        let registry = list.clone();
        async move {
            let registry = available(&registry)?;
            let limit = req.data().limit.unwrap_or(100).clamp(1, MAX_IDENTITY_PAGE);
            let items: Vec<Principal> = registry
                .list(req.data().after.as_deref(), limit)
                .into_iter()
                .map(|p| (*p).clone())
                .collect();
            let next = (items.len() == limit)
                .then(|| items.last().map(|p| p.id.clone()))
                .flatten();
            Ok::<_, ErrorBody>(Identities { items, next })
        }
    })
    .await?;
    Ok(())
}

fn available(registry: &Option<Arc<Registry>>) -> Result<&Registry, ErrorBody> {
    registry.as_deref().ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::Unavailable,
            "identity is off (TORONTO_AUTH=off): there is no registry",
        )
    })
}

async fn store<T>(
    registry: &Registry,
    principal: &Principal,
    req: &Request<T>,
) -> Result<Identities, ErrorBody> {
    registry.put(principal).await.map_err(|e| {
        let code = match e {
            toronto_runtime::auth::AuthError::BadPrincipal(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Unavailable,
        };
        ErrorBody::new(code, e.to_string())
    })?;
    tracing::info!(
        principal = %principal.id,
        revoked = principal.revoked,
        by = req.principal().map(|p| p.id.as_str()).unwrap_or("-"),
        "identity registry changed"
    );
    Ok(Identities {
        items: vec![principal.clone()],
        next: None,
    })
}
