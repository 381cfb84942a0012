//! Every message type of the contract, with its generated JSON Schema (2020-12).
//!
//! `toronto schemas write` (or `scripts/gen-schemas`) writes these to `schemas/`;
//! a test fails when the checked-in files drift from the types.

use std::path::Path;

use schemars::JsonSchema;

use crate::alerts::{Alert, SloDefinition, SloEntries, SloList, SloPut};
use crate::analysis::{
    CanaryAnalyze, CanaryUnwatch, CanaryVerdict, CanaryWatch, CanaryWatchStatus, MetricBatch,
};
use crate::audit::AuditDecision;
use crate::auth::{Identities, IdentityList, IdentityPut, IdentityRevoke};
use crate::chat::ChatCommandRecord;
use crate::delegation::{AcceptTask, AssignTask, ProgressUpdate, RejectTask, TaskCompleted};
use crate::envelope::Envelope;
use crate::error::ErrorBody;
use crate::incidents::{
    Freeze, FreezeList, Freezes, Incident, IncidentAction, IncidentAssign, IncidentEvent,
    IncidentGet, IncidentList, IncidentMetrics, IncidentMetricsQuery, IncidentNote, IncidentOpen,
    IncidentSeveritySet, Incidents, InhibitionCreate, InhibitionDelete, InhibitionList,
    InhibitionRule, InhibitionRules, Page, PlaybookRunRequest, Postmortem, PostmortemRequest,
    Silence, SilenceCreate, SilenceExpire, SilenceList, Silences,
};
use crate::message::Message;
use crate::rollout::{
    AdvanceRollout, ChaosRun, Drift, DriftCheck, DriftReport, Rollout, RolloutCommand, RolloutList,
    RolloutRef, Rollouts, SimFault, SimService, SimTamper,
};
use crate::status::{Status, StatusRequest};
use crate::tasks::{
    AdvancePlan, ArchitectReviewRequest, ChaosExperimentTask, DeployTask, DoraQuery, DoraReport,
    ExecuteAccepted, ExecuteRequest, GateVerdict, PipelineTask, Plan, PlanCancel, PlanDecision,
    PlanGet, PlanList, Plans, ProvisionEnvironmentTask, QaTestRequest, RollbackTask, ScaleTask,
    SecurityScanRequest, SloGet, SloStatus, SloStatuses, SubmitAccepted,
};

/// One schema file: its path under `schemas/` and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFile {
    /// Path relative to `schemas/`, e.g. `v1/status.json`.
    pub path: String,
    /// The message type it describes, if it is a payload (the envelope is not).
    pub message_type: Option<String>,
    /// The JSON Schema document.
    pub schema: serde_json::Value,
}

fn payload<T: Message>() -> SchemaFile {
    let mut schema = schemars::schema_for!(T).to_value();
    let ty = T::message_type().to_string();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), T::schema_uri().into());
        obj.insert("x-cloudevents-type".into(), ty.clone().into());
    }
    SchemaFile {
        path: T::schema_path(),
        message_type: Some(ty),
        schema,
    }
}

fn document<T: JsonSchema>(path: &str) -> SchemaFile {
    let mut schema = schemars::schema_for!(T).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), crate::message::schema_uri(path).into());
    }
    SchemaFile {
        path: path.to_owned(),
        message_type: None,
        schema,
    }
}

/// Every schema of the contract.
pub fn all() -> Vec<SchemaFile> {
    vec![
        document::<Envelope<Option<serde_json::Value>>>("v1/envelope.json"),
        payload::<ErrorBody>(),
        payload::<StatusRequest>(),
        payload::<Status>(),
        payload::<DeployTask>(),
        payload::<RollbackTask>(),
        payload::<ScaleTask>(),
        payload::<PipelineTask>(),
        payload::<ProvisionEnvironmentTask>(),
        payload::<ChaosExperimentTask>(),
        payload::<AssignTask>(),
        payload::<AcceptTask>(),
        payload::<RejectTask>(),
        payload::<ProgressUpdate>(),
        payload::<TaskCompleted>(),
        payload::<SubmitAccepted>(),
        payload::<PlanGet>(),
        payload::<PlanList>(),
        payload::<PlanCancel>(),
        payload::<PlanDecision>(),
        payload::<IdentityPut>(),
        payload::<IdentityRevoke>(),
        payload::<IdentityList>(),
        payload::<Identities>(),
        payload::<AuditDecision>(),
        payload::<SecurityScanRequest>(),
        payload::<QaTestRequest>(),
        payload::<ArchitectReviewRequest>(),
        payload::<GateVerdict>(),
        payload::<ExecuteRequest>(),
        payload::<ExecuteAccepted>(),
        payload::<AdvancePlan>(),
        payload::<DoraQuery>(),
        payload::<DoraReport>(),
        payload::<SloGet>(),
        payload::<SloStatus>(),
        payload::<SloStatuses>(),
        payload::<Plan>(),
        payload::<Plans>(),
        payload::<MetricBatch>(),
        payload::<CanaryAnalyze>(),
        payload::<CanaryVerdict>(),
        payload::<CanaryWatch>(),
        payload::<CanaryUnwatch>(),
        payload::<CanaryWatchStatus>(),
        payload::<crate::replay::AnalysisReplay>(),
        payload::<crate::replay::ReplayPage>(),
        payload::<Alert>(),
        payload::<SloPut>(),
        payload::<SloDefinition>(),
        payload::<SloList>(),
        payload::<SloEntries>(),
        payload::<Rollout>(),
        payload::<ChaosRun>(),
        payload::<AdvanceRollout>(),
        payload::<RolloutRef>(),
        payload::<RolloutCommand>(),
        payload::<RolloutList>(),
        payload::<Rollouts>(),
        payload::<DriftCheck>(),
        payload::<Drift>(),
        payload::<DriftReport>(),
        payload::<crate::workload::WorkloadPut>(),
        payload::<crate::workload::WorkloadTemplate>(),
        payload::<SimFault>(),
        payload::<SimTamper>(),
        payload::<SimService>(),
        payload::<Incident>(),
        payload::<IncidentEvent>(),
        payload::<Page>(),
        payload::<Freeze>(),
        payload::<FreezeList>(),
        payload::<Freezes>(),
        payload::<IncidentOpen>(),
        payload::<IncidentGet>(),
        payload::<IncidentList>(),
        payload::<Incidents>(),
        payload::<IncidentAction>(),
        payload::<IncidentAssign>(),
        payload::<IncidentSeveritySet>(),
        payload::<IncidentNote>(),
        payload::<PlaybookRunRequest>(),
        payload::<PostmortemRequest>(),
        payload::<Postmortem>(),
        payload::<IncidentMetricsQuery>(),
        payload::<IncidentMetrics>(),
        payload::<SilenceCreate>(),
        payload::<Silence>(),
        payload::<SilenceList>(),
        payload::<Silences>(),
        payload::<SilenceExpire>(),
        payload::<InhibitionCreate>(),
        payload::<InhibitionRule>(),
        payload::<InhibitionList>(),
        payload::<InhibitionRules>(),
        payload::<InhibitionDelete>(),
        payload::<ChatCommandRecord>(),
    ]
}

fn render(file: &SchemaFile) -> String {
    let mut text = serde_json::to_string_pretty(&file.schema).expect("schema serializes");
    text.push('\n');
    text
}

/// Writes every schema under `dir` (the repository's `schemas/` folder) and removes
/// stale `.json` files in its version folders.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<String>> {
    let files = all();
    let mut written = Vec::new();
    for file in &files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, render(file))?;
        written.push(file.path.clone());
    }
    for stale in drift(dir)? {
        if let Some(path) = stale.strip_prefix("stale file: ") {
            std::fs::remove_file(dir.join(path))?;
        }
    }
    Ok(written)
}

/// Differences between the types and the files under `dir`: one line per missing,
/// different or stale file. Empty when they agree.
pub fn drift(dir: &Path) -> std::io::Result<Vec<String>> {
    let files = all();
    let mut problems = Vec::new();
    for file in &files {
        match std::fs::read_to_string(dir.join(&file.path)) {
            Ok(text) if text == render(file) => {}
            Ok(_) => problems.push(format!("differs: {}", file.path)),
            Err(_) => problems.push(format!("missing: {}", file.path)),
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        for inner in std::fs::read_dir(entry.path())? {
            let inner = inner?;
            let rel = format!(
                "{}/{}",
                entry.file_name().to_string_lossy(),
                inner.file_name().to_string_lossy()
            );
            if rel.ends_with(".json") && !files.iter().any(|f| f.path == rel) {
                problems.push(format!("stale file: {rel}"));
            }
        }
    }
    Ok(problems)
}
