//! The identity registry through the planner: only a signed admin changes it, a
//! revoked principal is refused at once, listing pages.

use tokio_util::sync::CancellationToken;
use toronto_protocol::ErrorCode;
use toronto_protocol::auth::{
    Identities, IdentityList, IdentityPut, IdentityRevoke, Principal, PrincipalKind, Role,
};
use toronto_runtime::Config;
use toronto_runtime::auth::Signer;
use toronto_testkit::{NatsServer, Requester, remote_error, test_identity, with_test_admin};

fn alice(key: &Signer) -> Principal {
    Principal {
        id: "alice".into(),
        kind: PrincipalKind::Human,
        roles: vec![Role::Approver],
        display_name: "Alice".into(),
        revoked: false,
        keys: vec![key.public_key()],
        sources: vec![],
        chat_ids: vec![],
    }
}

#[tokio::test]
async fn only_a_signed_admin_changes_the_registry() {
    let server = NatsServer::start().await;
    let mut config = with_test_admin(Config::default());
    config.nats.urls = vec![server.url()];
    config.http.addr = String::new();
    let shutdown = CancellationToken::new();
    let rt = toronto_planner::start_with(config, super::support::settings(), shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let planner = Requester::service(client, "planner");
    let admin = planner.clone().signed_by(test_identity());
    let alice_key = Signer::generate();
    let as_alice = planner.clone().signed_by(alice_key.clone());

    let put = IdentityPut {
        principal: alice(&alice_key),
    };
    let unsigned = remote_error(
        planner
            .clone()
            .unsigned()
            .request::<_, Identities>("identity.put", put.clone())
            .await,
    );
    assert_eq!(unsigned.code, ErrorCode::Unauthorized);
    assert!(
        unsigned.message.contains("not signed"),
        "{}",
        unsigned.message
    );
    let stranger = remote_error(
        as_alice
            .request::<_, Identities>("identity.put", put.clone())
            .await,
    );
    assert_eq!(stranger.code, ErrorCode::Unauthorized);
    assert!(
        stranger.message.contains("unknown key"),
        "{}",
        stranger.message
    );

    let stored: Identities = admin.request("identity.put", put.clone()).await.unwrap();
    assert_eq!(stored.items, vec![alice(&alice_key)]);
    // An approver is not an admin.
    let mut promote = put.clone();
    promote.principal.roles = vec![Role::Admin];
    let forbidden = remote_error(
        as_alice
            .request::<_, Identities>("identity.put", promote)
            .await,
    );
    assert_eq!(forbidden.code, ErrorCode::Forbidden);
    assert!(forbidden.message.contains("Admin"), "{}", forbidden.message);

    // A key belongs to one principal.
    let mut thief = alice(&alice_key);
    thief.id = "mallory".into();
    let taken = remote_error(
        admin
            .request::<_, Identities>("identity.put", IdentityPut { principal: thief })
            .await,
    );
    assert_eq!(taken.code, ErrorCode::BadRequest);

    let page: Identities = planner
        .request("identity.list", IdentityList::default())
        .await
        .unwrap();
    let ids: Vec<_> = page.items.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["alice", "bootstrap-admin"]);
    let first: Identities = planner
        .request(
            "identity.list",
            IdentityList {
                after: None,
                limit: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.next.as_deref(), Some("alice"));

    let revoked: Identities = admin
        .request("identity.revoke", IdentityRevoke { id: "alice".into() })
        .await
        .unwrap();
    assert!(revoked.items[0].revoked);
    let refused = remote_error(as_alice.request::<_, Identities>("identity.put", put).await);
    assert_eq!(refused.code, ErrorCode::Unauthorized);
    assert!(refused.message.contains("revoked"), "{}", refused.message);

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
