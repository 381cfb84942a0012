//! The identity registry: a KV bucket of principals (key = principal id), read once
//! and then kept current by a watch, so a lookup by public key never reads the bucket.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use toronto_protocol::auth::{Principal, PrincipalKind, Role, valid_principal_id};

use super::AuthError;

/// The largest principal record the registry decodes.
const MAX_PRINCIPAL_BYTES: usize = 16 * 1024;

/// The id of the principal made from `TORONTO_AUTH_ADMINS`.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";

#[derive(Debug, Default)]
struct Cache {
    by_id: HashMap<String, Arc<Principal>>,
    by_key: HashMap<String, String>,
    by_source: HashMap<String, String>,
    by_chat_id: HashMap<String, String>,
}

impl Cache {
    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            for key in &old.keys {
                if self.by_key.get(key).is_some_and(|owner| owner == id) {
                    self.by_key.remove(key);
                }
            }
            for source in &old.sources {
                if self.by_source.get(source).is_some_and(|owner| owner == id) {
                    self.by_source.remove(source);
                }
            }
            for chat_id in &old.chat_ids {
                if self
                    .by_chat_id
                    .get(chat_id)
                    .is_some_and(|owner| owner == id)
                {
                    self.by_chat_id.remove(chat_id);
                }
            }
        }
    }

    fn insert(&mut self, principal: Principal) {
        self.remove(&principal.id);
        for key in &principal.keys {
            self.by_key.insert(key.clone(), principal.id.clone());
        }
        for source in &principal.sources {
            self.by_source.insert(source.clone(), principal.id.clone());
        }
        for chat_id in &principal.chat_ids {
            self.by_chat_id
                .insert(chat_id.clone(), principal.id.clone());
        }
        self.by_id.insert(principal.id.clone(), Arc::new(principal));
    }
}

/// The registry of principals, cached from its KV bucket.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    cache: Arc<RwLock<Cache>>,
    bootstrap: Option<Arc<Principal>>,
}

fn decode(bytes: &[u8]) -> Result<Principal, AuthError> {
    if bytes.len() > MAX_PRINCIPAL_BYTES {
        return Err(AuthError::TooLarge {
            size: bytes.len(),
            limit: MAX_PRINCIPAL_BYTES,
        });
    }
    // serde_json limits nesting to 128 levels; a principal is flat.
    serde_json::from_slice(bytes).map_err(AuthError::Record)
}

impl Registry {
    /// Loads the bucket, then follows its changes until `stop`. `admins` are the public
    /// keys of the first admin (from configuration): they are an admin whatever the
    /// bucket holds.
    pub async fn start(
        store: Store,
        admins: &[String],
        stop: CancellationToken,
    ) -> Result<Self, AuthError> {
        let bootstrap = (!admins.is_empty()).then(|| {
            Arc::new(Principal {
                id: BOOTSTRAP_ADMIN.to_owned(),
                kind: PrincipalKind::Human,
                roles: vec![Role::Admin],
                display_name: "first admin (TORONTO_AUTH_ADMINS)".to_owned(),
                revoked: false,
                keys: admins.to_vec(),
                sources: vec![],
                chat_ids: vec![],
            })
        });
        let registry = Self {
            store,
            cache: Arc::new(RwLock::new(Cache::default())),
            bootstrap,
        };
        let mut watch = registry
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| AuthError::Bucket(Box::new(e)))?;
        // The watch delivers the current value of every key first; the last of them
        // has delta 0. An empty bucket delivers nothing, so also check the status.
        let status = registry
            .store
            .status()
            .await
            .map_err(|e| AuthError::Bucket(Box::new(e)))?;
        if status.values() > 0 {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| AuthError::Bucket(Box::new(e)))?;
                registry.apply(&entry.key, entry.operation, &entry.value);
                if entry.delta == 0 {
                    break;
                }
            }
        }
        let follower = registry.clone();
        tokio::spawn(async move { follower.follow(watch, stop).await });
        Ok(registry)
    }

    fn apply(&self, key: &str, operation: Operation, value: &[u8]) {
        let mut cache = self.cache.write().expect("registry lock");
        match operation {
            Operation::Put => match decode(value) {
                Ok(p) if p.id == key => cache.insert(p),
                Ok(p) => {
                    tracing::warn!(key, id = %p.id, "principal stored under another id; ignored")
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable principal; ignored");
                    cache.remove(key);
                }
            },
            Operation::Delete | Operation::Purge => cache.remove(key),
        }
    }

    /// Follows the bucket; when the watch ends (server restart), starts a new one.
    async fn follow(self, mut watch: async_nats::jetstream::kv::Watch, stop: CancellationToken) {
        let mut attempt = 0usize;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        attempt = 0;
                        self.apply(&entry.key, entry.operation, &entry.value);
                        continue;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "identity registry watch failed"),
                    None => tracing::warn!("identity registry watch ended"),
                }
            }
            loop {
                attempt += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(crate::connect::backoff(attempt)) => {}
                }
                match self.store.watch_with_history(">").await {
                    Ok(w) => {
                        watch = w;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "cannot watch the identity registry")
                    }
                }
            }
        }
    }

    /// The principal holding public key `key`, if any (revoked ones included).
    pub fn by_key(&self, key: &str) -> Option<Arc<Principal>> {
        // A registered principal wins over the configured first admin: once the admin
        // is registered under a name, it is that name (and a revoke of it holds).
        {
            let cache = self.cache.read().expect("registry lock");
            if let Some(p) = cache.by_key.get(key).and_then(|id| cache.by_id.get(id)) {
                return Some(p.clone());
            }
        }
        self.bootstrap
            .as_ref()
            .filter(|b| b.keys.iter().any(|k| k == key))
            .cloned()
    }

    /// The principal `id`, if any.
    pub fn by_id(&self, id: &str) -> Option<Arc<Principal>> {
        if id == BOOTSTRAP_ADMIN {
            return self.bootstrap.clone();
        }
        self.cache
            .read()
            .expect("registry lock")
            .by_id
            .get(id)
            .cloned()
    }

    /// The principal that owns `source` (e.g. `toronto://agents/security`), if one does.
    pub fn owner_of_source(&self, source: &str) -> Option<String> {
        self.cache
            .read()
            .expect("registry lock")
            .by_source
            .get(source)
            .cloned()
    }

    /// The principal a chat user (`<platform>:<user id>`) is, if one is.
    pub fn by_chat_id(&self, chat_id: &str) -> Option<Arc<Principal>> {
        let cache = self.cache.read().expect("registry lock");
        cache
            .by_chat_id
            .get(chat_id)
            .and_then(|id| cache.by_id.get(id).cloned())
    }

    /// Every principal, ordered by id, from `after` (exclusive), at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<Arc<Principal>> {
        let cache = self.cache.read().expect("registry lock");
        let mut all: Vec<_> = cache
            .by_id
            .values()
            .chain(self.bootstrap.iter())
            .filter(|p| after.is_none_or(|a| p.id.as_str() > a))
            .cloned()
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.truncate(limit);
        all
    }

    /// Stores `principal` (replacing the one of that id) and waits until the cache has it.
    /// A key already held by another principal is refused.
    pub async fn put(&self, principal: &Principal) -> Result<(), AuthError> {
        if !valid_principal_id(&principal.id) || principal.id == BOOTSTRAP_ADMIN {
            return Err(AuthError::BadPrincipal(format!(
                "`{}` is not a usable principal id",
                principal.id
            )));
        }
        for key in &principal.keys {
            if !key.starts_with('U') || nkeys::KeyPair::from_public_key(key).is_err() {
                return Err(AuthError::BadPrincipal(format!(
                    "`{key}` is not an NKey user public key"
                )));
            }
            // The configured first admin's key may be registered under a name (which
            // then wins); any other principal's key may not be taken.
            if let Some(owner) = self.by_key(key)
                && owner.id != principal.id
                && owner.id != BOOTSTRAP_ADMIN
            {
                return Err(AuthError::BadPrincipal(format!(
                    "key {key} already belongs to `{}`",
                    owner.id
                )));
            }
        }
        let bytes = serde_json::to_vec(principal).expect("a principal serializes");
        self.store
            .put(&principal.id, bytes.into())
            .await
            .map_err(|e| AuthError::Bucket(Box::new(e)))?;
        self.cache
            .write()
            .expect("registry lock")
            .insert(principal.clone());
        Ok(())
    }
}
