//! The identities of a local stack (`toronto up`): the agent's own key, the operator's
//! key (the first admin), and with `--demo` the demo's two people, each a seed file of
//! mode 0600, registered in the identity registry before the services start.
//!
//! - `<data dir>/identities/agent.nk`: every service of the stack signs the requests
//!   it sends with it (principal `toronto-agent`: operator and delegate).
//! - the operator's seed (`TORONTO_IDENTITY_FILE`, default
//!   `~/.config/toronto/identity.nk`, made when missing): the first admin
//!   (`TORONTO_AUTH_ADMINS`), registered under the login name. The CLI signs with it.
//! - `<data dir>/identities/alice.nk`, `bob.nk` (`--demo`): operators and approvers, so
//!   that one asks for a change and the other approves it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use toronto_protocol::auth::{Principal, PrincipalKind, Role};
use toronto_runtime::Config;
use toronto_runtime::auth::{Registry, Signer};

/// The principal id of the stack's own services.
pub const AGENT_ID: &str = "toronto-agent";

/// The keys of a local stack.
#[derive(Debug, Clone)]
pub struct LocalIdentities {
    /// Where the stack's seeds are.
    pub dir: PathBuf,
    /// The services' seed file.
    pub agent_file: PathBuf,
    /// The services' key.
    pub agent: Signer,
    /// The operator's seed file.
    pub operator_file: PathBuf,
    /// The operator's key.
    pub operator: Signer,
    /// The operator's principal id (the login name).
    pub operator_id: String,
    /// The demo's people, with their keys (empty without `--demo`).
    pub people: Vec<(String, Signer)>,
}

/// The seed in `path`, made (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<Signer> {
    if !path.exists() {
        Signer::generate()
            .write_new(path)
            .with_context(|| format!("cannot make a key at {}", path.display()))?;
    }
    Signer::from_file(path).with_context(|| format!("cannot read the key at {}", path.display()))
}

/// The directory of a stack's seeds, `<data dir>/identities`.
pub fn identities_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identities")
}

/// The login name as a principal id (`operator` when it is not one).
fn login_id() -> String {
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    if toronto_protocol::auth::valid_principal_id(&name)
        && name != AGENT_ID
        && !crate::demo::OPERATORS.contains(&name.as_str())
    {
        name
    } else {
        "operator".to_owned()
    }
}

/// Makes (or reads) the stack's keys, and points `config` at them: the operator is
/// the first admin, and the services sign with the agent's key.
pub fn prepare(
    config: &mut Config,
    data_dir: &Path,
    demo: bool,
) -> anyhow::Result<LocalIdentities> {
    let dir = identities_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let agent_file = dir.join("agent.nk");
    let agent = load_or_create(&agent_file)?;
    let operator_file = crate::identity::identity_file(None, config);
    if let Some(parent) = operator_file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot make {}", parent.display()))?;
    }
    let operator = load_or_create(&operator_file)?;
    let mut people = Vec::new();
    if demo {
        for who in crate::demo::OPERATORS {
            people.push((
                who.to_owned(),
                load_or_create(&dir.join(format!("{who}.nk")))?,
            ));
        }
    }
    if !config.auth.admins.contains(&operator.public_key()) {
        config.auth.admins.push(operator.public_key());
    }
    config.auth.identity_file = Some(agent_file.clone());
    Ok(LocalIdentities {
        dir,
        agent_file,
        agent,
        operator_file,
        operator,
        operator_id: login_id(),
        people,
    })
}

fn principal(id: &str, kind: PrincipalKind, roles: Vec<Role>, key: &Signer) -> Principal {
    Principal {
        id: id.to_owned(),
        kind,
        roles,
        display_name: id.to_owned(),
        revoked: false,
        keys: vec![key.public_key()],
        sources: vec![],
        chat_ids: vec![],
    }
}

impl LocalIdentities {
    /// Every principal of the stack.
    pub fn principals(&self) -> Vec<Principal> {
        let mut all = vec![
            principal(
                AGENT_ID,
                PrincipalKind::Service,
                vec![Role::Operator, Role::Delegate],
                &self.agent,
            ),
            principal(
                &self.operator_id,
                PrincipalKind::Human,
                vec![Role::Admin],
                &self.operator,
            ),
        ];
        for (who, key) in &self.people {
            all.push(principal(
                who,
                PrincipalKind::Human,
                vec![Role::Operator, Role::Approver],
                key,
            ));
        }
        all
    }

    /// Registers every principal before the services start: `toronto up` is the
    /// admin of its NATS server (it bootstraps the streams), so it writes the registry
    /// bucket itself, through the registry's own checks; the services find their
    /// principals there from their first request on.
    pub async fn register(
        &self,
        client: &async_nats::Client,
        config: &Config,
    ) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(client.clone());
        let bucket = config.subjects().kv_bucket("identities");
        let store =
            toronto_runtime::jetstream::ensure_kv(&js, &bucket, 5, config.jetstream.replicas)
                .await
                .with_context(|| format!("the identity registry bucket {bucket}"))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let registry = Registry::start(store, &[], stop.clone()).await?;
        for principal in self.principals() {
            let id = principal.id.clone();
            registry
                .put(&principal)
                .await
                .with_context(|| format!("registering principal `{id}`"))?;
        }
        stop.cancel();
        Ok(())
    }

    /// What `toronto up` says about them.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "you are `{}` (admin), signing with {}",
                self.operator_id,
                self.operator_file.display()
            ),
            format!(
                "the services sign as `{AGENT_ID}` with {}",
                self.agent_file.display()
            ),
        ];
        if !self.people.is_empty() {
            let names: Vec<&str> = self.people.iter().map(|(w, _)| w.as_str()).collect();
            lines.push(format!(
                "demo people {} (operator, approver) sign with {}/<name>.nk",
                names.join(" and "),
                self.dir.display()
            ));
        }
        lines
    }
}
