//! `toronto identity`: the operator's signing key and the identity registry.
//!
//! `init` makes an NKey user seed in a new 0600 file (`--file`, `TORONTO_IDENTITY_FILE`,
//! or `<config dir>/toronto/identity.nk`) and prints its public key. `add`, `revoke`
//! and `list` go through the planner's `identity.*` endpoints; `add` and `revoke` are
//! signed with that seed and need the admin role (see `docs/trust-model.md`). `token`
//! prints a login token for the web console (`docs/console.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use toronto_protocol::auth::{
    Identities, IdentityList, IdentityPut, IdentityRevoke, Principal, PrincipalKind, Role,
};
use toronto_protocol::{Encoding, Envelope, Message, ServiceKind};
use toronto_runtime::Config;
use toronto_runtime::auth::Signer;
use toronto_runtime::rpc::call_signed;

/// What `toronto identity` does.
#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Make a new signing key in a new file (mode 0600) and print its public key.
    Init {
        /// Where to write the seed (default: TORONTO_IDENTITY_FILE, else
        /// ~/.config/toronto/identity.nk).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print the public key of the signing key.
    Whoami {
        /// The seed file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Add or replace a principal (admin only; signed with your key).
    Add {
        /// Principal id, e.g. `alice`.
        id: String,
        /// NKey user public keys (`U...`), repeatable.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Roles: admin, approver, operator, delegate (repeatable).
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
        /// agent, human or service.
        #[arg(long, default_value = "human", value_parser = parse_kind)]
        kind: PrincipalKind,
        /// Shown to people.
        #[arg(long, default_value = "")]
        name: String,
        /// `source` attributes only this principal may claim (repeatable).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Chat users this principal is, `<platform>:<user id>` (e.g.
        /// `slack:U024BE7LH`; the immutable id, not the name), repeatable.
        #[arg(long = "chat")]
        chat_ids: Vec<String>,
        /// The seed file to sign with.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print a short-lived login token for the web console, signed with your key
    /// (the console checks it against the identity registry; see docs/console.md).
    Token {
        /// Your principal id, as registered (e.g. `alice`).
        id: String,
        /// How long the token (and the console session) lasts: 30m, 8h, at most 24h.
        #[arg(long, default_value = "8h", value_parser = parse_ttl)]
        ttl: u64,
        /// The seed file to sign with.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Revoke a principal: every key of it is refused from now on (admin only).
    Revoke {
        /// Principal id.
        id: String,
        /// The seed file to sign with.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List principals (one page).
    List {
        /// Start after this id.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(v: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(v.to_ascii_lowercase()))
        .map_err(|_| format!("`{v}` is not one of: admin, approver, operator, delegate"))
}

fn parse_ttl(v: &str) -> Result<u64, String> {
    let secs = toronto_commands::parse_duration(v)?;
    if secs > 24 * 3600 {
        return Err(format!("`{v}` is more than 24h"));
    }
    Ok(secs)
}

fn parse_kind(v: &str) -> Result<PrincipalKind, String> {
    serde_json::from_value(serde_json::Value::String(v.to_ascii_lowercase()))
        .map_err(|_| format!("`{v}` is not one of: agent, human, service"))
}

/// The default seed file: `$XDG_CONFIG_HOME/toronto/identity.nk` or
/// `~/.config/toronto/identity.nk`.
pub fn default_identity_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("toronto").join("identity.nk")
}

/// The seed file: the flag, else the configuration, else the default.
pub fn identity_file(flag: Option<PathBuf>, config: &Config) -> PathBuf {
    flag.or_else(|| config.auth.identity_file.clone())
        .unwrap_or_else(default_identity_file)
}

/// Makes the operator's key (`TORONTO_IDENTITY_FILE`, else the default file) the one
/// every request of this CLI process is signed with, when there is one; without it
/// requests go unsigned, and a stack with `TORONTO_AUTH=required` refuses changes.
pub fn install_operator_key() {
    let Ok(config) = Config::from_env() else {
        return;
    };
    let path = identity_file(None, &config);
    if !path.exists() {
        return;
    }
    match Signer::from_file(&path) {
        Ok(signer) => toronto_runtime::auth::install_process_signer(signer),
        Err(e) => eprintln!("warning: requests go unsigned: {e}"),
    }
}

/// The operator's signer from `path`, with a hint when there is none.
pub fn load_signer(path: &Path) -> anyhow::Result<Signer> {
    Signer::from_file(path).with_context(|| {
        format!(
            "no usable signing key (run `toronto identity init`, or set TORONTO_IDENTITY_FILE): {}",
            path.display()
        )
    })
}

/// Runs `toronto identity <action>`.
pub async fn run(action: IdentityAction, config: &Config) -> anyhow::Result<()> {
    match action {
        IdentityAction::Init { file } => {
            let path = identity_file(file, config);
            let signer = Signer::generate();
            signer.write_new(&path)?;
            println!("wrote {} (mode 0600)", path.display());
            println!("public key {}", signer.public_key());
            Ok(())
        }
        IdentityAction::Whoami { file } => {
            let signer = load_signer(&identity_file(file, config))?;
            println!("{}", signer.public_key());
            Ok(())
        }
        IdentityAction::Add {
            id,
            keys,
            roles,
            kind,
            name,
            sources,
            chat_ids,
            file,
        } => {
            let signer = load_signer(&identity_file(file, config))?;
            let principal = Principal {
                id,
                kind,
                roles,
                display_name: name,
                revoked: false,
                keys,
                sources,
                chat_ids,
            };
            let stored: Identities = send(
                config,
                Some(&signer),
                "identity.put",
                IdentityPut { principal },
            )
            .await?;
            print_page(&stored, false)
        }
        IdentityAction::Token { id, ttl, file } => {
            let signer = load_signer(&identity_file(file, config))?;
            let ttl = chrono::Duration::seconds(i64::try_from(ttl)?);
            let token = toronto_console::login::issue(&id, ttl, |subject, payload| {
                signer.sign(subject, payload)
            })
            .with_context(|| format!("cannot make a token for `{id}`"))?;
            println!("{token}");
            Ok(())
        }
        IdentityAction::Revoke { id, file } => {
            let signer = load_signer(&identity_file(file, config))?;
            let stored: Identities = send(
                config,
                Some(&signer),
                "identity.revoke",
                IdentityRevoke { id },
            )
            .await?;
            print_page(&stored, false)
        }
        IdentityAction::List { after, limit, json } => {
            let page: Identities = send(
                config,
                None,
                "identity.list",
                IdentityList {
                    after,
                    limit: Some(limit),
                },
            )
            .await?;
            print_page(&page, json)
        }
    }
}

async fn send<Req: Message, Resp: Message>(
    config: &Config,
    signer: Option<&Signer>,
    verb: &str,
    data: Req,
) -> anyhow::Result<Resp> {
    let opts = toronto_runtime::connect::options(&config.nats, "toronto-cli").await?;
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        opts.connect(toronto_runtime::connect::server_addrs(&config.nats)?),
    )
    .await
    .context("cannot reach NATS within 5 s")??;
    let subject = config.subjects().command(ServiceKind::Planner, verb);
    let envelope = Envelope::builder("toronto://cli", data).build();
    let reply: Envelope<Resp> = call_signed(
        &client,
        signer,
        &subject,
        &envelope,
        Encoding::Json,
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("{verb} failed"))?;
    Ok(reply.data)
}

fn print_page(page: &Identities, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(page)?);
        return Ok(());
    }
    for p in &page.items {
        let roles: Vec<_> = p
            .roles
            .iter()
            .map(|r| serde_json::to_value(r).map(|v| v.as_str().unwrap_or_default().to_owned()))
            .collect::<Result<_, _>>()?;
        println!(
            "{:<24} {:<8} {:<28} {}{}",
            p.id,
            serde_json::to_value(p.kind)?.as_str().unwrap_or_default(),
            roles.join(","),
            p.keys.join(","),
            if p.revoked { "  REVOKED" } else { "" }
        );
    }
    if let Some(next) = &page.next {
        println!("(more: --after {next})");
    }
    Ok(())
}
