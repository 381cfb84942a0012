//! Replays every fuzz target's seeds and saved corpus (inputs that once crashed it),
//! and a few hostile inputs built here: each must be read without a panic.

use toronto_fuzz::{TARGETS, check, corpus_dir};

#[test]
fn every_seed_and_saved_input_is_read_without_a_panic() {
    let mut replayed = 0;
    for target in TARGETS {
        let mut inputs: Vec<(String, Vec<u8>)> = target
            .seeds
            .iter()
            .map(|s| ("seed".to_owned(), s.as_bytes().to_vec()))
            .collect();
        if let Ok(entries) = std::fs::read_dir(corpus_dir(target.name)) {
            for e in entries.flatten() {
                inputs.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
        // Deep nesting and huge numbers, in every target.
        inputs.push(("deep arrays".into(), "[".repeat(5000).into_bytes()));
        inputs.push(("deep objects".into(), "{\"a\":".repeat(5000).into_bytes()));
        inputs.push(("huge number".into(), b"{\"weight\": 1e99999}".to_vec()));
        let mut deep_pack = vec![0x91u8; 5000];
        deep_pack.push(0xc0);
        inputs.push(("deep MessagePack arrays".into(), deep_pack));
        for (what, input) in inputs {
            if let Err(message) = check(target, &input) {
                panic!("{}: {what} panics: {message}", target.name);
            }
            replayed += 1;
        }
    }
    println!("replayed {replayed} inputs");
}

#[test]
fn the_seeds_are_valid_so_mutations_start_deep_in_each_decoder() {
    // A seed that fails at once would only fuzz the first check of its decoder.
    let chat = TARGETS.iter().find(|t| t.name == "chat-grammar").unwrap();
    for seed in chat.seeds {
        assert!(toronto_commands::parse(seed).is_ok(), "{seed}");
    }
    let slo = TARGETS.iter().find(|t| t.name == "openslo").unwrap();
    for seed in slo.seeds {
        toronto_monitor::slo::parse(seed).unwrap_or_else(|e| panic!("{e}: {seed}"));
    }
    for seed in TARGETS
        .iter()
        .find(|t| t.name == "alertmanager")
        .unwrap()
        .seeds
    {
        let webhook = toronto_incident_commander::intake::webhook_alerts(seed.as_bytes());
        let api = toronto_incident_commander::intake::postable_alerts(
            seed.as_bytes(),
            chrono::Utc::now(),
        );
        assert!(webhook.is_ok() || api.is_ok(), "{seed}");
    }
    for seed in TARGETS
        .iter()
        .find(|t| t.name == "pagerduty")
        .unwrap()
        .seeds
    {
        toronto_incident_commander::intake::pagerduty_event(
            seed.as_bytes(),
            &["R0UT1NGK3Y".to_owned()],
            "production",
            chrono::Utc::now(),
        )
        .unwrap_or_else(|e| panic!("{e}: {seed}"));
    }
    let json = TARGETS.iter().find(|t| t.name == "envelope-json").unwrap();
    assert!(
        toronto_protocol::decode::<toronto_protocol::tasks::DeployTask>(
            json.seeds[0].as_bytes(),
            toronto_protocol::Encoding::Json
        )
        .is_ok()
    );
}
