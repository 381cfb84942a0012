//! What holds alerts back: silences (matchers over a time range) and inhibition rules
//! (a firing source alert holds back matching targets with equal labels). Held-back
//! alerts are routed once nothing holds them any more.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use toronto_protocol::incidents::{
    InhibitionCreate, InhibitionRule, Matcher, Silence, SilenceCreate,
};
use uuid::Uuid;

use super::error::EngineError;
use super::grouping;
use super::state::{AlertRecord, AlertState, State};
use super::turn::{Record, Turn};

/// Whether every matcher matches `labels` (a missing label is the empty string).
pub fn matches(st: &State, matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| {
        let value = labels.get(&m.name).map(String::as_str).unwrap_or("");
        let hit = if m.is_regex {
            let mut cache = st.regexes.borrow_mut();
            let re = cache
                .entry(m.value.clone())
                .or_insert_with(|| regex::Regex::new(&format!("^(?:{})$", m.value)).ok());
            re.as_ref().is_some_and(|re| re.is_match(value))
        } else {
            value == m.value
        };
        hit == m.is_equal
    })
}

/// Checks matchers: non-empty, named, valid regular expressions.
pub fn check_matchers(what: &'static str, matchers: &[Matcher]) -> Result<(), EngineError> {
    if matchers.is_empty() {
        return Err(EngineError::NoMatchers { what });
    }
    for (index, m) in matchers.iter().enumerate() {
        if m.name.trim().is_empty() {
            return Err(EngineError::UnnamedMatcher { what, index });
        }
        if m.is_regex
            && let Err(source) = regex::Regex::new(&format!("^(?:{})$", m.value))
        {
            return Err(EngineError::BadRegex {
                what,
                index,
                source,
            });
        }
    }
    Ok(())
}

/// Why an alert is held back now (a silence or an inhibition rule), if it is.
pub fn suppression(st: &State, rec: &AlertRecord, now: DateTime<Utc>) -> Option<String> {
    for s in st.silences.values() {
        if s.starts_at <= now && now < s.ends_at && matches(st, &s.matchers, &rec.labels) {
            return Some(format!("silenced by {}", s.id));
        }
    }
    for rule in st.inhibitions.values() {
        if !matches(st, &rule.target_matchers, &rec.labels) {
            continue;
        }
        let source = st.alerts.values().find(|a| {
            a.fingerprint != rec.fingerprint
                && a.state == AlertState::Firing
                && a.suppressed.is_none()
                && matches(st, &rule.source_matchers, &a.labels)
                && rule
                    .equal
                    .iter()
                    .all(|l| a.labels.get(l) == rec.labels.get(l))
        });
        if let Some(source) = source {
            return Some(format!(
                "inhibited by {} (rule {})",
                source.fingerprint, rule.id
            ));
        }
    }
    None
}

/// Re-evaluates held-back alerts (a silence ended, an inhibiting alert resolved, a
/// rule went): those nothing holds any more are routed.
pub fn reevaluate(st: &mut State, t: &mut Turn<'_>) {
    let held: Vec<String> = st.suppressed.iter().cloned().collect();
    for fp in held {
        let Some(rec) = st.alerts.get(&fp) else {
            st.suppressed.remove(&fp);
            continue;
        };
        if rec.state != AlertState::Firing {
            st.suppressed.remove(&fp);
            continue;
        }
        let mut probe = rec.clone();
        probe.suppressed = None;
        if suppression(st, &probe, t.now).is_none() {
            if let Some(r) = st.alerts.get_mut(&fp) {
                r.suppressed = None;
            }
            grouping::route(st, t, &fp);
            t.persist(Record::Alert(fp));
        }
    }
    super::alerts::announce(st, t);
}

/// Releases alerts whose silence ended by time (the deadline loop).
pub fn release_expired(st: &mut State, t: &mut Turn<'_>) {
    if !st.suppressed.is_empty() {
        reevaluate(st, t);
    }
}

/// `incident.silence.create`.
pub fn create_silence(
    st: &mut State,
    t: &mut Turn<'_>,
    req: &SilenceCreate,
) -> Result<Silence, EngineError> {
    check_matchers("matchers", &req.matchers)?;
    let starts_at = req.starts_at.unwrap_or(t.now);
    if req.ends_at <= starts_at {
        return Err(EngineError::SilenceEndsBeforeStart);
    }
    if req.created_by.trim().is_empty() {
        return Err(EngineError::Empty {
            field: "created_by",
        });
    }
    let silence = Silence {
        id: Uuid::now_v7(),
        matchers: req.matchers.clone(),
        starts_at,
        ends_at: req.ends_at,
        created_by: req.created_by.clone(),
        comment: req.comment.clone(),
        expired_by: None,
    };
    st.silences.insert(silence.id, silence.clone());
    t.persist(Record::Silence(silence.id));
    Ok(silence)
}

/// `incident.silence.list`, newest first (only those in force with `active`).
pub fn list_silences(st: &State, now: DateTime<Utc>, active: bool) -> Vec<Silence> {
    let mut out: Vec<Silence> = st
        .silences
        .values()
        .filter(|s| !active || (s.starts_at <= now && now < s.ends_at))
        .cloned()
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.id));
    out
}

/// `incident.silence.expire`: ends it now; its alerts that still fire are routed.
pub fn expire_silence(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
    by: &str,
) -> Result<Silence, EngineError> {
    let s = st.silences.get_mut(&id).ok_or(EngineError::NoSilence(id))?;
    if s.ends_at <= t.now {
        return Err(EngineError::SilenceEnded(id));
    }
    s.ends_at = t.now;
    s.expired_by = Some(by.to_owned());
    let out = s.clone();
    t.persist(Record::Silence(id));
    reevaluate(st, t);
    Ok(out)
}

/// `incident.inhibition.create`.
pub fn create_inhibition(
    st: &mut State,
    t: &mut Turn<'_>,
    req: &InhibitionCreate,
) -> Result<InhibitionRule, EngineError> {
    check_matchers("source_matchers", &req.source_matchers)?;
    check_matchers("target_matchers", &req.target_matchers)?;
    if req.created_by.trim().is_empty() {
        return Err(EngineError::Empty {
            field: "created_by",
        });
    }
    let rule = InhibitionRule {
        id: Uuid::now_v7(),
        source_matchers: req.source_matchers.clone(),
        target_matchers: req.target_matchers.clone(),
        equal: req.equal.clone(),
        created_by: req.created_by.clone(),
        comment: req.comment.clone(),
        created_at: t.now,
    };
    st.inhibitions.insert(rule.id, rule.clone());
    t.persist(Record::Inhibition(rule.id));
    Ok(rule)
}

/// `incident.inhibition.list`, oldest first.
pub fn list_inhibitions(st: &State) -> Vec<InhibitionRule> {
    let mut out: Vec<InhibitionRule> = st.inhibitions.values().cloned().collect();
    out.sort_by_key(|r| r.created_at);
    out
}

/// `incident.inhibition.delete`: held-back alerts it no longer holds are routed.
pub fn delete_inhibition(
    st: &mut State,
    t: &mut Turn<'_>,
    id: Uuid,
) -> Result<InhibitionRule, EngineError> {
    let rule = st
        .inhibitions
        .remove(&id)
        .ok_or(EngineError::NoInhibition(id))?;
    t.persist(Record::Inhibition(id));
    reevaluate(st, t);
    Ok(rule)
}

#[cfg(test)]
#[path = "suppress_tests.rs"]
mod tests;
