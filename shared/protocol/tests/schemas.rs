//! The checked-in schemas under `schemas/` must match the Rust types.

use std::path::PathBuf;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

#[test]
fn checked_in_schemas_match_the_types() {
    let problems = toronto_protocol::catalogue::drift(&schemas_dir()).unwrap();
    assert!(
        problems.is_empty(),
        "schemas/ drifted from the Rust types; run scripts/gen-schemas and commit:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_schema_is_draft_2020_12_with_an_id() {
    for file in toronto_protocol::catalogue::all() {
        assert_eq!(
            file.schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{}",
            file.path
        );
        assert_eq!(
            file.schema["$id"],
            format!("https://toronto.dev/schemas/{}", file.path)
        );
        assert_eq!(
            file.schema["$id"],
            toronto_protocol::message::schema_uri(&file.path)
        );
    }
}

#[test]
fn drift_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    toronto_protocol::catalogue::write_all(dir).unwrap();
    assert!(toronto_protocol::catalogue::drift(dir).unwrap().is_empty());
    std::fs::write(dir.join("v1/status.json"), "{}\n").unwrap();
    std::fs::write(dir.join("v1/old.thing.json"), "{}\n").unwrap();
    let problems = toronto_protocol::catalogue::drift(dir).unwrap();
    assert!(
        problems.contains(&"differs: v1/status.json".to_owned()),
        "{problems:?}"
    );
    assert!(
        problems.contains(&"stale file: v1/old.thing.json".to_owned()),
        "{problems:?}"
    );
}
