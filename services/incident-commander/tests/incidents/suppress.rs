//! Silences and inhibition rules over the wire, and across a restart.

use super::*;

#[tokio::test]
async fn silences_suppress_until_they_expire_inhibitions_hold_and_both_survive_a_restart() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let bus = bus(&client, &["toronto.devops.v1.events.>"]).await;
    let ic = start_commander(&server.url(), quick()).await;
    let alerts = ic.url("/api/v2/alerts");

    let silence: Silence = bus
        .request(
            "silence.create",
            SilenceCreate {
                matchers: vec![Matcher {
                    name: "service".into(),
                    value: "cart|checkout".into(),
                    is_regex: true,
                    is_equal: true,
                }],
                starts_at: None,
                ends_at: chrono::Utc::now() + chrono::Duration::hours(1),
                created_by: "alice".into(),
                comment: "maintenance".into(),
            },
        )
        .await
        .unwrap();
    let bad = bus
        .request::<_, Silence>(
            "silence.create",
            SilenceCreate {
                matchers: vec![Matcher {
                    name: "service".into(),
                    value: "(".into(),
                    is_regex: true,
                    is_equal: true,
                }],
                starts_at: None,
                ends_at: chrono::Utc::now() + chrono::Duration::hours(1),
                created_by: "alice".into(),
                comment: "bad".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("regular expression"), "{bad}");

    let cart = [
        ("alertname", "CartErrors"),
        ("service", "cart"),
        ("environment", "production"),
    ];
    assert_eq!(
        post(&alerts, &serde_json::json!([postable(&cart, false)]))
            .await
            .status(),
        200
    );
    assert!(bus.incidents().await.is_empty(), "silenced");

    // The inhibition rule: a cluster outage holds back warnings in its environment.
    bus.request::<_, toronto_protocol::incidents::InhibitionRule>(
        "inhibition.create",
        InhibitionCreate {
            source_matchers: vec![Matcher {
                name: "alertname".into(),
                value: "ClusterDown".into(),
                is_regex: false,
                is_equal: true,
            }],
            target_matchers: vec![Matcher {
                name: "severity".into(),
                value: "warning".into(),
                is_regex: false,
                is_equal: true,
            }],
            equal: vec!["environment".into()],
            created_by: "alice".into(),
            comment: String::new(),
        },
    )
    .await
    .unwrap();

    // Restart: the silence and the rule are still there and still hold.
    ic.stop().await;
    let ic = start_commander(&server.url(), quick()).await;
    let alerts = ic.url("/api/v2/alerts");
    let listed: Silences = bus
        .request("silence.list", SilenceList { active: true })
        .await
        .unwrap();
    assert_eq!(listed.silences.len(), 1);
    let rules: InhibitionRules = bus
        .request("inhibition.list", InhibitionList {})
        .await
        .unwrap();
    assert_eq!(rules.rules.len(), 1);

    let cluster = [
        ("alertname", "ClusterDown"),
        ("service", "platform"),
        ("environment", "production"),
    ];
    let latency_prod = [
        ("alertname", "HighLatency"),
        ("service", "search"),
        ("environment", "production"),
        ("severity", "warning"),
    ];
    let latency_staging = [
        ("alertname", "HighLatency"),
        ("service", "search"),
        ("environment", "staging"),
        ("severity", "warning"),
    ];
    for a in [&cluster[..], &latency_prod[..], &latency_staging[..]] {
        assert_eq!(
            post(&alerts, &serde_json::json!([postable(a, false)]))
                .await
                .status(),
            200
        );
    }
    let open = |incidents: &[Incident], service: &str, env: &str| {
        incidents
            .iter()
            .any(|i| i.service == service && i.environment == env && i.state.is_open())
    };
    let now = bus.incidents().await;
    assert!(open(&now, "platform", "production"));
    assert!(
        open(&now, "search", "staging"),
        "other environment: not inhibited"
    );
    assert!(!open(&now, "search", "production"), "inhibited");
    assert!(
        !open(&now, "cart", "production"),
        "still silenced after the restart"
    );

    // The silence expires: the cart alert, still firing, opens its incident.
    let expired: Silence = bus
        .request(
            "silence.expire",
            SilenceExpire {
                id: silence.id,
                by: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(expired.expired_by.as_deref(), Some("alice"));
    assert!(open(&bus.incidents().await, "cart", "production"));

    // The cluster alert resolves: the held-back warning is released.
    assert_eq!(
        post(&alerts, &serde_json::json!([postable(&cluster, true)]))
            .await
            .status(),
        200
    );
    assert!(open(&bus.incidents().await, "search", "production"));
    ic.stop().await;
}
