//! Over plain HTTP: pages render, unknown ids are 404 pages, hostile text is escaped,
//! actions need an identity, an operator role and the session's CSRF token, and the
//! requester of a change may not approve it.

use toronto_protocol::incidents::{Incident, IncidentGet, IncidentState};
use toronto_protocol::tasks::{Plan, PlanGet};

use crate::stack::{HOSTILE, Stack, USER_HEADER};

/// A GET as `user` (through the "proxy"); status, body, and the CSRF token and cookie.
pub async fn get(url: &str, user: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(u) = user {
        req = req.header(USER_HEADER, u);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let cookie = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .unwrap_or_default();
    (status, res.text().await.unwrap(), cookie)
}

pub(crate) fn token(cookie: &str) -> &str {
    cookie.split_once('=').map(|(_, v)| v).unwrap_or_default()
}

/// A POST of an action form as `user`, with `cookie` and form token `csrf`.
pub async fn post(url: &str, user: Option<&str>, cookie: &str, csrf: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(format!("csrf={csrf}"));
    if let Some(u) = user {
        req = req.header(USER_HEADER, u);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

/// A POST of the login form with `token`; status, body and the session cookie set.
async fn login(url: &str, cookie: &str, token: &str) -> (u16, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let body =
        serde_urlencoded::to_string([("csrf", crate::pages::token(cookie)), ("token", token)])
            .unwrap();
    let res = client
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(body)
        .send()
        .await
        .unwrap();
    let set = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("toronto_console_session="))
        .unwrap_or_default()
        .to_owned();
    (
        res.status().as_u16(),
        res.text().await.unwrap_or_default(),
        set,
    )
}

/// A GET with `cookie` and no identity header.
async fn get_with(url: &str, cookie: &str) -> String {
    let res = reqwest::Client::new()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    res.text().await.unwrap()
}

/// Token login: a token of a registered key opens a session (an `HttpOnly;
/// SameSite=Strict` cookie); unknown, revoked and forged tokens are refused.
async fn token_login(stack: &Stack, cookie: &str) {
    use toronto_console::login::issue;
    use toronto_runtime::auth::Signer;
    let url = &stack.url;
    let hour = chrono::Duration::hours(1);
    let alice = issue("alice", hour, |s, p| stack.alice.sign(s, p)).unwrap();
    let (status, body, set) = login(url, cookie, &alice).await;
    assert_eq!(status, 303, "{body}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = set.split(';').next().unwrap();
    let body = get_with(&format!("{url}/"), &format!("{cookie}; {session}")).await;
    assert!(
        body.contains("signed in as <b id=\"user\">alice</b>"),
        "{body}"
    );

    let mallory = Signer::generate();
    let unknown = issue("mallory", hour, |s, p| mallory.sign(s, p)).unwrap();
    let (status, body, set) = login(url, cookie, &unknown).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("mallory is not a registered principal"),
        "{body}"
    );
    assert!(set.is_empty(), "no session for a refused token");

    let (carol, mut record) = toronto_testkit::principal("carol", &[]);
    record.revoked = true;
    toronto_testkit::put_principal(&stack.client, &record).await;
    let revoked = issue("carol", hour, |s, p| carol.sign(s, p)).unwrap();
    let (status, body, _) = login(url, cookie, &revoked).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("carol is revoked"), "{body}");

    // Mallory names alice in a token she signs: not alice's key.
    let foreign = issue("alice", hour, |s, p| mallory.sign(s, p)).unwrap();
    let (status, body, _) = login(url, cookie, &foreign).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not registered for alice"), "{body}");
    let (status, body, _) = login(url, cookie, "tct1.bm90IGEgdG9rZW4").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not a login token"), "{body}");
}

#[tokio::test]
async fn pages_render_escape_refuse_bad_input_and_actions_need_an_identity() {
    let mut stack = Box::pin(Stack::start()).await;
    let url = stack.url.clone();

    // The overview: every service up; read-only without an identity.
    let (status, body, cookie) = get(&format!("{url}/"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("toronto-planner") && body.contains("badge up"),
        "{body}"
    );
    assert!(body.contains("read-only: <a href=\"/ops/login\">sign in</a>"));
    assert!(!cookie.is_empty(), "a CSRF cookie is set");
    for page in [
        "/rollouts",
        "/plans",
        "/incidents",
        "/slos",
        "/dora",
        "/rollouts?page=3",
    ] {
        let (status, body, _) = get(&format!("{url}{page}"), None).await;
        assert_eq!(status, 200, "{page}: {body}");
        assert!(
            body.contains("href=\"/ops/plans\""),
            "{page}: links carry the base path"
        );
    }

    // Unknown ids and pages: 404 pages.
    let unknown = uuid::Uuid::now_v7();
    for page in [
        format!("/rollouts/{unknown}"),
        format!("/plans/{unknown}"),
        format!("/incidents/{unknown}"),
        "/rollouts/not-an-id".to_owned(),
        "/nothing-here".to_owned(),
    ] {
        let (status, body, _) = get(&format!("{url}{page}"), None).await;
        assert_eq!(status, 404, "{page}: {body}");
        assert!(body.contains("not found"), "{page}: {body}");
    }

    // Hostile text in an incident's title and labels is shown, escaped.
    let incident = stack.hostile_incident().await;
    let page = format!("{url}/incidents/{}", incident.id);
    let (status, body, _) = get(&page, None).await;
    assert_eq!(status, 200);
    assert!(!body.contains(HOSTILE), "raw hostile text in the page");
    assert!(!body.contains("<img src=x"), "{body}");
    assert!(body.contains("&lt;script&gt;document.title="), "{body}");
    assert!(
        body.contains(" disabled>acknowledge"),
        "read-only: actions disabled"
    );

    // An action without identity: 401, nothing changed.
    let action = format!("{page}/ack");
    let (status, body) = post(&action, None, &cookie, token(&cookie)).await;
    assert_eq!(status, 401, "{body}");
    // With an identity but a token from another session: 403.
    let (status, _) = post(
        &action,
        Some("bob"),
        &cookie,
        "0123456789abcdef0123456789abcdef",
    )
    .await;
    assert_eq!(status, 403);
    // A user who is not a registered principal: 403.
    let (status, body) = post(&action, Some("mallory"), &cookie, token(&cookie)).await;
    assert_eq!(status, 403, "{body}");
    let still: Incident = stack
        .ask(
            "toronto://test",
            "toronto.devops.v1.incident.get",
            IncidentGet { id: incident.id },
        )
        .await;
    assert_eq!(still.state, IncidentState::Triggered);
    // Bob, an operator, with his session's token: done, recorded as by bob.
    let (_, body, _) = get(&page, Some("bob")).await;
    assert!(
        body.contains("signed in as <b id=\"user\">bob</b>"),
        "{body}"
    );
    assert!(body.contains(">acknowledge</button>") && !body.contains(" disabled>acknowledge"));
    let (status, body) = post(&action, Some("bob"), &cookie, token(&cookie)).await;
    assert_eq!(status, 303, "{body}");
    let acked: Incident = stack
        .ask(
            "toronto://test",
            "toronto.devops.v1.incident.get",
            IncidentGet { id: incident.id },
        )
        .await;
    assert_eq!(acked.state, IncidentState::Acknowledged);
    assert_eq!(acked.commander.as_deref(), Some("bob"), "{acked:?}");

    // Alice asks for a production deploy: she may not approve it, bob may.
    let plan = stack
        .deploy("1.1.0", "production", &[(50, 60), (100, 0)])
        .await;
    stack.waiting(plan).await;
    let approve = format!("{url}/plans/{plan}/approve");
    let (status, body) = post(&approve, Some("alice"), &cookie, token(&cookie)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("asked for this change and may not approve it"),
        "{body}"
    );
    let (status, body) = post(&approve, Some("bob"), &cookie, token(&cookie)).await;
    assert_eq!(status, 303, "{body}");
    let approved: Plan = stack
        .ask(
            "toronto://test",
            "toronto.devops.v1.planner.plan.get",
            PlanGet { plan_id: plan },
        )
        .await;
    assert!(
        approved
            .decisions
            .iter()
            .any(|d| d.by == "bob" && d.approved),
        "{approved:?}"
    );
    let (_, body, _) = get(&format!("{url}/plans/{plan}"), None).await;
    assert!(body.contains("approved by <b>bob</b>"), "{body}");
    token_login(&stack, &cookie).await;
    stack.stop().await;
}
