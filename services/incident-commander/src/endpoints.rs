//! The commands the incident commander serves, `toronto.devops.v1.incident.<verb>`:
//! one table gives both the verb list ([`VERBS`]) and the registrations. Engine
//! errors become the wire [`ErrorBody`] here and nowhere else.

use std::sync::Arc;

use toronto_protocol::ErrorBody;
use toronto_protocol::incidents::{
    IncidentAction, IncidentAssign, IncidentGet, IncidentList, IncidentMetricsQuery, IncidentNote,
    IncidentOpen, IncidentSeveritySet, InhibitionCreate, InhibitionDelete, InhibitionList,
    InhibitionRules, PlaybookRunRequest, PostmortemRequest, SilenceCreate, SilenceExpire,
    SilenceList, Silences,
};
use toronto_runtime::{Request, RuntimeError, ServiceRuntime};

use crate::engine::{Engine, EngineError};
use crate::postmortem;

/// `<by>: <reason>` as the timeline words an action.
fn by_reason(d: &IncidentAction) -> String {
    let reason = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    format!("by {}{reason}", d.by)
}

/// Lists the endpoints once: `verb => Request type, |engine, data| Result<Reply, EngineError>`.
macro_rules! endpoints {
    ($($verb:literal => $req:ty, |$e:ident, $d:ident| $body:expr;)*) => {
        /// Every command, `toronto.devops.v1.incident.<verb>`.
        pub const VERBS: &[&str] = &[$($verb),*];

        /// Registers every command; each answers once its changes are written.
        pub async fn register(rt: &ServiceRuntime, engine: &Arc<Engine>) -> Result<(), RuntimeError> {
            $(
                let engine_ = engine.clone();
                rt.endpoint($verb, move |req: Request<$req>| {
                    let $e = engine_.clone();
                    async move {
                        let $d = req.data();
                        let out: Result<_, EngineError> = $body;
                        $e.flush().await;
                        out.map_err(ErrorBody::from)
                    }
                })
                .await?;
            )*
            Ok(())
        }
    };
}

endpoints! {
    "open" => IncidentOpen, |e, d| e.open_manual(d);
    "get" => IncidentGet, |e, d| e.get(d.id);
    "list" => IncidentList, |e, d| e.list(d);
    "ack" => IncidentAction, |e, d| e.ack(d.id, &d.by, d.reason.as_deref());
    "escalate" => IncidentAction, |e, d| e.escalate(d.id, Some(&d.by), &by_reason(d));
    "mitigate" => IncidentAction, |e, d| e.mitigate(d.id, &d.by, &by_reason(d));
    "resolve" => IncidentAction, |e, d| e.resolve(d.id, &d.by, &by_reason(d));
    "assign" => IncidentAssign, |e, d| e.assign(d);
    "severity" => IncidentSeveritySet, |e, d| e.set_severity(d);
    "note" => IncidentNote, |e, d| e.note(d);
    "playbook.run" => PlaybookRunRequest, |e, d| e.run_playbook(d.id, d.playbook.as_deref(), &d.by);
    "postmortem" => PostmortemRequest, |e, d| e
        .close(d.id, &d.by, &d.action_items)
        .map(|inc| postmortem::write(&inc));
    "metrics" => IncidentMetricsQuery, |e, d| Ok(e.metrics(d.service.as_deref()));
    "silence.create" => SilenceCreate, |e, d| e.create_silence(d);
    "silence.list" => SilenceList, |e, d| Ok(Silences { silences: e.list_silences(d.active) });
    "silence.expire" => SilenceExpire, |e, d| e.expire_silence(d.id, &d.by);
    "inhibition.create" => InhibitionCreate, |e, d| e.create_inhibition(d);
    "inhibition.list" => InhibitionList, |e, _d| Ok(InhibitionRules { rules: e.list_inhibitions() });
    "inhibition.delete" => InhibitionDelete, |e, d| e.delete_inhibition(d.id);
}
