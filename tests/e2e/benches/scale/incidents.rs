//! Incidents: alert intake and `incident.list`.

use crate::common::*;

pub fn alert(run: &str, i: usize) -> serde_json::Value {
    serde_json::json!({
        "labels": {
            "alertname": "HighErrorRate",
            "service": format!("svc-{run}-{i}"),
            "environment": "production",
            "severity": "page",
        },
        "annotations": { "summary": "error rate above 5%" },
        "startsAt": chrono::Utc::now().to_rfc3339(),
    })
}

/// Incidents: alert intake (HTTP post to `incident.opened`) and `incident.list`.
pub async fn incidents(samples: usize) -> Vec<Row> {
    let server = NatsServer::start().await;
    let mut config = config(&server);
    config.http.addr = "127.0.0.1:0".into();
    let shutdown = CancellationToken::new();
    let rt = toronto_incident_commander::start_with(
        config,
        toronto_incident_commander::settings::Settings::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/api/v2/alerts", rt.http_addr.unwrap());
    let running = tokio::spawn(rt.run_until_shutdown());
    let client = server.client().await;
    let mut opened = client
        .subscribe(format!("{V1}.events.incident.opened"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(client.clone());
    let http = reqwest::Client::new();
    let post = |alerts: Vec<serde_json::Value>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(&url).json(&alerts).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    // Wait until this replica owns the intake (its lease).
    for _ in 0..100 {
        let r = http
            .post(&url)
            .json(&Vec::<serde_json::Value>::new())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = sizes(100);
    let mut count = 0;
    let (mut intake, mut list) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
    for (level, target) in history.iter().enumerate() {
        while count < *target {
            let batch: Vec<_> = (count..(*target).min(count + 100))
                .map(|i| alert("h", i))
                .collect();
            count += batch.len();
            post(batch).await;
        }
        // Every incident of the history is open before timing.
        let mut seen = 0;
        while seen < count {
            match tokio::time::timeout(Duration::from_secs(10), opened.next()).await {
                Ok(Some(_)) => seen += 1,
                _ => break,
            }
        }
        while tokio::time::timeout(Duration::from_millis(200), opened.next())
            .await
            .is_ok()
        {}
        // And stored: the commander writes each incident to its bucket after the
        // event; timing before it has written them all would time that catching up.
        until_written(&js).await;
        let mut taken = Vec::new();
        for i in 0..samples + 2 {
            let t = Instant::now();
            post(vec![alert(&format!("m{level}"), i)]).await;
            tokio::time::timeout(Duration::from_secs(10), opened.next())
                .await
                .expect("the incident opens")
                .unwrap();
            if i >= 2 {
                taken.push(t.elapsed());
            }
        }
        intake[level] = median(taken);
        count += samples + 2;
        list[level] = time(samples, |_| {
            let client = client.clone();
            async move {
                let page: Incidents = ask(&client, "incident.list", IncidentList::default()).await;
                assert!(!page.incidents.is_empty());
            }
        })
        .await;
    }
    shutdown.cancel();
    let _ = running.await;
    vec![
        Row {
            operation: "alert intake to incident.opened",
            history,
            unit: "incidents",
            median: intake,
        },
        Row {
            operation: "incident.list (first page)",
            history,
            unit: "incidents",
            median: list,
        },
    ]
}

/// Waits until the incidents bucket has taken no write for a second (at most two
/// minutes).
async fn until_written(js: &jetstream::Context) {
    let mut stream = js.get_stream("KV_toronto_incidents").await.unwrap();
    let mut last = None;
    for _ in 0..120 {
        let now = stream.info().await.unwrap().state.last_sequence;
        if last == Some(now) {
            return;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the incident commander still writes to its bucket after two minutes");
}
