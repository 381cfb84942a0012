//! Event kinds: the last token of an event subject
//! (`<prefix>.devops.v1.events.<entity>.<kind>`) as an enum per entity.
//!
//! Each enum (e.g. [`RolloutEvent`](crate::rollout::RolloutEvent)) implements
//! [`EventKind`]: its subject token ([`EventKind::as_str`], also its `Display` and
//! `FromStr`), its subject under a [`Subjects`] prefix, and parsing back from an event
//! name (`rollout.progressed`) or a whole subject.

use crate::subjects::Subjects;

/// A token that names no kind of event of this entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{token}` is not a {entity} event")]
pub struct UnknownEventKind {
    /// The entity (`rollout`, `plan`, …).
    pub entity: &'static str,
    /// The token as given.
    pub token: String,
}

/// The kinds of event one entity publishes.
pub trait EventKind: Copy + Eq + Sized + 'static {
    /// The entity token of the subjects (`rollout` in `events.rollout.started`).
    const ENTITY: &'static str;
    /// Every kind, in a stable order.
    const ALL: &'static [Self];

    /// The subject token of this kind (`started`).
    fn as_str(self) -> &'static str;

    /// The kind named by a subject token.
    fn from_token(token: &str) -> Result<Self, UnknownEventKind> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == token)
            .ok_or_else(|| UnknownEventKind {
                entity: Self::ENTITY,
                token: token.to_owned(),
            })
    }

    /// The subject this kind is published on: `<prefix>.devops.v1.events.<entity>.<kind>`.
    fn subject(self, subjects: &Subjects) -> String {
        subjects.event(Self::ENTITY, self.as_str())
    }

    /// The kind of an event name (`rollout.started`), if the name is of this entity.
    fn from_event_name(name: &str) -> Option<Self> {
        let (entity, token) = name.split_once('.')?;
        (entity == Self::ENTITY)
            .then(|| Self::from_token(token).ok())
            .flatten()
    }

    /// The kind of a whole event subject (`toronto.devops.v1.events.rollout.started`),
    /// if the subject is an event of this entity.
    fn from_subject(subject: &str) -> Option<Self> {
        let (_, name) = subject.split_once(".events.")?;
        Self::from_event_name(name)
    }
}

/// The payload type's `NAME` of the event named `name` (`<entity>.<what>`, e.g.
/// `step.started`), for every event the agent publishes; `None` for a name that is no
/// event of ours. The event's `type` is `ai.toronto.devops.<name>.v<major>` with the
/// payload's major.
pub fn payload_of_event(name: &str) -> Option<&'static str> {
    use crate::incidents::{Freeze, FreezeEvent, IncidentEvent, IncidentEventKind};
    use crate::message::Message;
    use crate::rollout::{ChaosEvent, ChaosRun, Rollout, RolloutEvent};
    use crate::tasks::{GateEvent, Plan, PlanEvent, StepEvent};
    if PlanEvent::from_event_name(name).is_some()
        || StepEvent::from_event_name(name).is_some()
        || GateEvent::from_event_name(name).is_some()
    {
        return Some(Plan::NAME);
    }
    if RolloutEvent::from_event_name(name).is_some() {
        return Some(Rollout::NAME);
    }
    if IncidentEventKind::from_event_name(name).is_some() {
        return Some(IncidentEvent::NAME);
    }
    if FreezeEvent::from_event_name(name).is_some() {
        return Some(Freeze::NAME);
    }
    if ChaosEvent::from_event_name(name).is_some() {
        return Some(ChaosRun::NAME);
    }
    let (entity, what) = name.split_once('.')?;
    Some(match (entity, what) {
        ("drift", "detected") => crate::rollout::Drift::NAME,
        ("alert", "firing" | "resolved") => crate::alerts::Alert::NAME,
        ("slo", "budget.exhausted") => crate::tasks::SloStatus::NAME,
        ("analysis", "result") => crate::analysis::CanaryVerdict::NAME,
        ("page", "sent") => crate::incidents::Page::NAME,
        ("chat", "command") => crate::chat::ChatCommandRecord::NAME,
        ("audit", "decision") => crate::audit::AuditDecision::NAME,
        _ => return None,
    })
}

/// Defines an event-kind enum: variants with their subject tokens, `EventKind`,
/// `Display` and `FromStr`.
macro_rules! event_kinds {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident for $entity:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $token:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $crate::event_kind::EventKind for $name {
            const ENTITY: &'static str = $entity;
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $token, )+
                }
            }
        }

        impl $name {
            /// The subject token of this kind.
            pub fn as_str(self) -> &'static str {
                <Self as $crate::event_kind::EventKind>::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::event_kind::UnknownEventKind;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <Self as $crate::event_kind::EventKind>::from_token(s)
            }
        }
    };
}

pub(crate) use event_kinds;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::{FreezeEvent, IncidentEventKind};
    use crate::rollout::{ChaosEvent, RolloutEvent};
    use crate::tasks::{GateEvent, PlanEvent, StepEvent};

    fn round_trips<K: EventKind + std::fmt::Debug>(subjects: &Subjects) {
        for k in K::ALL {
            assert_eq!(K::from_token(k.as_str()), Ok(*k));
            let subject = k.subject(subjects);
            assert_eq!(K::from_subject(&subject), Some(*k), "{subject}");
            let name = format!("{}.{}", K::ENTITY, k.as_str());
            assert_eq!(K::from_event_name(&name), Some(*k));
        }
        assert!(K::from_token("bogus").is_err());
        assert_eq!(K::from_event_name("nothing.started"), None);
    }

    #[test]
    fn kinds_round_trip_through_their_subjects() {
        let subjects = Subjects::new("acme");
        round_trips::<RolloutEvent>(&subjects);
        round_trips::<ChaosEvent>(&subjects);
        round_trips::<PlanEvent>(&subjects);
        round_trips::<StepEvent>(&subjects);
        round_trips::<GateEvent>(&subjects);
        round_trips::<IncidentEventKind>(&subjects);
        round_trips::<FreezeEvent>(&subjects);
        assert_eq!(
            RolloutEvent::RolledBack.subject(&subjects),
            "acme.devops.v1.events.rollout.rolled_back"
        );
        assert_eq!("paused".parse::<RolloutEvent>(), Ok(RolloutEvent::Paused));
        assert_eq!(
            "nope".parse::<RolloutEvent>().unwrap_err().to_string(),
            "`nope` is not a rollout event"
        );
    }

    #[test]
    fn every_event_names_its_payload() {
        use crate::Message;
        use crate::tasks::Plan;
        for name in [
            "plan.created",
            "step.started",
            "step.finished",
            "gate.passed",
        ] {
            assert_eq!(payload_of_event(name), Some(Plan::NAME), "{name}");
            assert!(Plan::is_event(name));
        }
        for (name, payload) in [
            ("rollout.rolled_back", "rollout"),
            ("chaos.started", "chaos.run"),
            ("drift.detected", "drift"),
            ("alert.firing", "alert"),
            ("slo.budget.exhausted", "slo.status"),
            ("analysis.result", "canary.verdict"),
            ("incident.opened", "incident.event"),
            ("page.sent", "page"),
            ("freeze.started", "freeze"),
            ("chat.command", "chat.command"),
            ("audit.decision", "audit.decision"),
        ] {
            assert_eq!(payload_of_event(name), Some(payload), "{name}");
        }
        for name in [
            "plan.get",
            "plan.bogus",
            "rollout",
            "task.deploy",
            "alert.bogus",
            "incident.bogus",
            "freeze.bogus",
        ] {
            assert_eq!(payload_of_event(name), None, "{name}");
        }
        assert!(!Plan::is_event("rollout.started"));
    }

    /// Every kind is documented in `schemas/asyncapi.yaml`.
    #[test]
    fn asyncapi_documents_every_kind() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/asyncapi.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let subjects = Subjects::new("toronto");
        let mut all: Vec<String> = Vec::new();
        all.extend(RolloutEvent::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(ChaosEvent::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(PlanEvent::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(StepEvent::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(GateEvent::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(IncidentEventKind::ALL.iter().map(|k| k.subject(&subjects)));
        all.extend(FreezeEvent::ALL.iter().map(|k| k.subject(&subjects)));
        for subject in all {
            assert!(
                text.contains(&format!("address: {subject}\n")),
                "{subject} is not in asyncapi.yaml"
            );
        }
    }
}
