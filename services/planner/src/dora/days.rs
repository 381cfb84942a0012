//! The live DORA record: every deploy judged as its events arrive, and figures kept per
//! day and per hour (per environment, and per service in it), so that a report sums at
//! most one figure per day of its window, and one per hour of a day it covers in part,
//! instead of judging every deploy in it.
//!
//! A new deploy is judged and added to its day. A later event that changes how an
//! earlier deploy is judged (a rollback after it, an incident linked to it, the next
//! deploy of the service, which ends what a later rollback can undo) judges that deploy
//! again; if its judgement changed, its days are summed again from their deploys at the
//! next report. A day the window only partly covers (its start and its end, or a week's
//! edge in a trend) is summed from its hours, and an hour the window only partly covers
//! from the deploys of that hour in the window: the walk is one hour's deploys, whatever
//! the history holds.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use toronto_protocol::incidents::{IncidentEvent, IncidentEventKind};
use toronto_protocol::rollout::{Rollout, RolloutEvent, RolloutPhase};
use toronto_protocol::tasks::{DoraQuery, DoraReport, DoraWeek, Plan, PlanTask};
use uuid::Uuid;

use super::compute::MAX_WEEKS;
use super::history::{Deploy, Ending, IncidentRecord};
use super::judge::{Judgement, Lookup, judge, seconds};
use super::summary::{DayFigures, Totals};

/// A deploy, its judgement and its lead time.
#[derive(Debug, Clone)]
struct Entry {
    deploy: Deploy,
    judgement: Judgement,
    lead: Option<f64>,
}

/// The day of `t`: days since the epoch, UTC.
fn day_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}

/// The hour of `t`: hours since the epoch, UTC.
fn hour_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3_600)
}

/// One stretch of time of one scope (a day, or an hour of it): its deploys and what
/// they add up to.
#[derive(Debug, Clone, Default)]
struct Bucket {
    deploys: Vec<Uuid>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    figures: DayFigures,
    /// A deploy's judgement changed: the figures are summed again before use.
    stale: bool,
}

impl Bucket {
    fn add(&mut self, id: Uuid, ended_at: DateTime<Utc>, judgement: &Judgement, lead: Option<f64>) {
        self.deploys.push(id);
        self.first = Some(self.first.map_or(ended_at, |f| f.min(ended_at)));
        self.last = Some(self.last.map_or(ended_at, |l| l.max(ended_at)));
        self.figures.add(judgement, lead);
    }

    /// How the window `(start, end]` covers its deploys: `None` not at all,
    /// `Some(true)` all of them, `Some(false)` some.
    fn cover(&self, (start, end): (DateTime<Utc>, DateTime<Utc>)) -> Option<bool> {
        let (first, last) = (self.first?, self.last?);
        if last <= start || first > end {
            return None;
        }
        Some(first > start && last <= end)
    }

    /// Its figures, summed again from its deploys when a judgement changed.
    fn figures(&mut self, entries: &HashMap<Uuid, Entry>) -> &DayFigures {
        if self.stale {
            self.figures = DayFigures::default();
            for e in self.deploys.iter().filter_map(|id| entries.get(id)) {
                self.figures.add(&e.judgement, e.lead);
            }
            self.stale = false;
        }
        &self.figures
    }

    /// Adds its deploys that ended in `(start, end]`, one by one.
    fn walk(
        &self,
        entries: &HashMap<Uuid, Entry>,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        totals: &mut Totals,
        hours: u32,
    ) {
        for e in self.deploys.iter().filter_map(|id| entries.get(id)) {
            let at = e.deploy.ended_at;
            if at > start && at <= end {
                totals.add_deploy(&e.judgement, e.lead, hours);
            }
        }
    }
}

/// One day of one scope: the day as a whole, and its hours by [`hour_of`].
#[derive(Debug, Clone, Default)]
struct Day {
    whole: Bucket,
    hours: BTreeMap<i64, Bucket>,
}

/// The days of one scope, by [`day_of`].
type Days = BTreeMap<i64, Day>;

/// The deploy and rollback times of one service in one environment.
#[derive(Debug, Clone, Default)]
struct Timeline {
    /// Succeeded deploys by their end.
    succeeded: BTreeMap<DateTime<Utc>, Vec<Uuid>>,
    /// Completed rollbacks (how many at each time).
    rollbacks: BTreeMap<DateTime<Utc>, u32>,
}

/// The days of one environment: all services together, and each service.
#[derive(Debug, Clone, Default)]
struct Environment {
    all: Days,
    services: HashMap<String, Days>,
}

/// The records and the per-day figures, updated event by event.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: HashMap<Uuid, Entry>,
    /// Per service, per environment.
    timelines: HashMap<String, HashMap<String, Timeline>>,
    commits: HashMap<Uuid, DateTime<Utc>>,
    by_plan: HashMap<Uuid, Vec<Uuid>>,
    incidents: HashMap<Uuid, IncidentRecord>,
    /// Incidents per linked rollout.
    linked: HashMap<Uuid, Vec<Uuid>>,
    environments: HashMap<String, Environment>,
}

/// The value under `key`, made if missing (without allocating the key when it is there).
fn entry<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    match map.get_mut(key) {
        Some(v) => v,
        None => unreachable!("inserted above"),
    }
}

/// The lookups of a judgement, over the ledger's records.
struct Records<'a> {
    timelines: &'a HashMap<String, HashMap<String, Timeline>>,
    incidents: &'a HashMap<Uuid, IncidentRecord>,
    linked: &'a HashMap<Uuid, Vec<Uuid>>,
}

impl Records<'_> {
    fn timeline(&self, service: &str, env: &str) -> Option<&Timeline> {
        self.timelines.get(service)?.get(env)
    }
}

impl Lookup for Records<'_> {
    fn next_succeeded(&self, service: &str, env: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let tl = self.timeline(service, env)?;
        tl.succeeded
            .range((Excluded(t), Unbounded))
            .next()
            .map(|(at, _)| *at)
    }

    fn first_rollback(&self, service: &str, env: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let tl = self.timeline(service, env)?;
        tl.rollbacks
            .range((Excluded(t), Unbounded))
            .next()
            .map(|(at, _)| *at)
    }

    fn first_incident(&self, rollout: Uuid) -> Option<&IncidentRecord> {
        self.linked
            .get(&rollout)?
            .iter()
            .filter_map(|id| self.incidents.get(id))
            .min_by_key(|i| i.detected_at)
    }
}

impl Ledger {
    fn records(&self) -> Records<'_> {
        Records {
            timelines: &self.timelines,
            incidents: &self.incidents,
            linked: &self.linked,
        }
    }

    fn timeline(&mut self, service: &str, env: &str) -> &mut Timeline {
        entry(entry(&mut self.timelines, service), env)
    }

    /// The buckets a deploy counts in: its day and its hour, of all services and of
    /// its own.
    fn days_of(&mut self, deploy: &Deploy) -> [&mut Bucket; 4] {
        let (day, hour) = (day_of(deploy.ended_at), hour_of(deploy.ended_at));
        let env = entry(&mut self.environments, &deploy.environment);
        let service = entry(&mut env.services, &deploy.service);
        let Day { whole: all, hours } = env.all.entry(day).or_default();
        let all_hour = hours.entry(hour).or_default();
        let Day { whole: own, hours } = service.entry(day).or_default();
        let own_hour = hours.entry(hour).or_default();
        [all, all_hour, own, own_hour]
    }

    /// Judges `id` again; if its judgement changed, its days are summed again later.
    fn rejudge(&mut self, id: Uuid) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        let judgement = judge(&entry.deploy, &self.records());
        if judgement == entry.judgement {
            return;
        }
        let deploy = entry.deploy.clone();
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.judgement = judgement;
        }
        for bucket in self.days_of(&deploy) {
            bucket.stale = true;
        }
    }

    /// Judges again the succeeded deploys of the service that ended last before `t`.
    fn rejudge_before(&mut self, service: &str, env: &str, t: DateTime<Utc>) {
        let before = self
            .records()
            .timeline(service, env)
            .and_then(|tl| tl.succeeded.range(..t).next_back())
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default();
        for id in before {
            self.rejudge(id);
        }
    }

    /// Adds a rollout event (`what`) published at `at`.
    pub fn rollout(&mut self, what: RolloutEvent, r: &Rollout, at: DateTime<Utc>) {
        let ended_at = r.finished_at.unwrap_or(at);
        if r.is_rollback {
            // A rollback that completed is announced as `rolled_back` (older records:
            // `succeeded`).
            if matches!(what, RolloutEvent::Succeeded | RolloutEvent::RolledBack)
                && r.phase == RolloutPhase::Succeeded
            {
                *self
                    .timeline(&r.service, &r.environment)
                    .rollbacks
                    .entry(ended_at)
                    .or_default() += 1;
                self.rejudge_before(&r.service, &r.environment, ended_at);
            }
            return;
        }
        let ending = match what {
            RolloutEvent::Succeeded => Ending::Succeeded,
            RolloutEvent::Aborted | RolloutEvent::Failed => Ending::Aborted,
            _ => return,
        };
        // One record a rollout: an abort is followed by `rolled_back`, which is ignored.
        if self.entries.contains_key(&r.id) {
            return;
        }
        let deploy = Deploy {
            rollout_id: r.id,
            service: r.service.clone(),
            environment: r.environment.clone(),
            plan_id: r.plan_id,
            started_at: r.created_at,
            ended_at,
            ending,
        };
        if ending == Ending::Succeeded {
            let tl = self.timeline(&r.service, &r.environment);
            tl.succeeded.entry(ended_at).or_default().push(r.id);
            // This deploy ends what a later rollback can undo of the one before, which
            // matters only if a rollback came after it.
            if tl.rollbacks.range(ended_at..).next().is_some() {
                self.rejudge_before(&r.service, &r.environment, ended_at);
            }
        }
        let lead = self.lead(&deploy);
        if let Some(plan) = deploy.plan_id {
            self.by_plan.entry(plan).or_default().push(r.id);
        }
        let judgement = judge(&deploy, &self.records());
        for bucket in self.days_of(&deploy) {
            bucket.add(deploy.rollout_id, ended_at, &judgement, lead);
        }
        self.entries.insert(
            r.id,
            Entry {
                deploy,
                judgement,
                lead,
            },
        );
    }

    fn lead(&self, deploy: &Deploy) -> Option<f64> {
        let commit = self.commits.get(&deploy.plan_id?)?;
        let lead = seconds(deploy.ended_at - *commit);
        (deploy.ending == Ending::Succeeded && lead >= 0.0).then_some(lead)
    }

    /// Adds a completed plan; only deploys with a commit time matter.
    pub fn plan_completed(&mut self, plan: &Plan) {
        let PlanTask::Deploy(d) = &plan.task else {
            return;
        };
        let Some(commit) = d.change.as_ref().and_then(|c| c.commit_time) else {
            return;
        };
        self.commits.insert(plan.id, commit);
        for id in self.by_plan.get(&plan.id).cloned().unwrap_or_default() {
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let lead = self.lead(&entry.deploy);
            if lead == entry.lead {
                continue;
            }
            let (deploy, old) = (entry.deploy.clone(), entry.lead);
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.lead = lead;
            }
            for bucket in self.days_of(&deploy) {
                match (old, lead) {
                    (None, Some(lead)) => bucket.figures.add_lead(lead),
                    _ => bucket.stale = true,
                }
            }
        }
    }

    /// Adds an incident event (`what`), judging again the deploys linked to it.
    pub fn incident(&mut self, what: IncidentEventKind, e: &IncidentEvent) {
        let record = self
            .incidents
            .entry(e.id)
            .or_insert_with(|| IncidentRecord::new(e));
        for c in record.fold(what, e) {
            self.linked.entry(c).or_default().push(e.id);
        }
        for id in record.changes.clone() {
            self.rejudge(id);
        }
    }

    /// Drops the records that ended before `since`: deploys (with their days) and
    /// rollbacks by their end, incidents by their detection. Commit times are kept
    /// while a deploy of theirs is.
    pub fn retain_since(&mut self, since: DateTime<Utc>) {
        // Whole days are dropped: from the start of the day of `since` on, all is kept.
        let first_day = day_of(since);
        let since = DateTime::from_timestamp(first_day * 86_400, 0).unwrap_or(since);
        for env in self.environments.values_mut() {
            env.all = env.all.split_off(&first_day);
            for days in env.services.values_mut() {
                *days = days.split_off(&first_day);
            }
            env.services.retain(|_, days| !days.is_empty());
        }
        self.environments.retain(|_, env| !env.all.is_empty());
        self.entries
            .retain(|_, e| day_of(e.deploy.ended_at) >= first_day);
        for tl in self
            .timelines
            .values_mut()
            .flat_map(|envs| envs.values_mut())
        {
            tl.succeeded = tl.succeeded.split_off(&since);
            tl.rollbacks = tl.rollbacks.split_off(&since);
        }
        for envs in self.timelines.values_mut() {
            envs.retain(|_, tl| !tl.succeeded.is_empty() || !tl.rollbacks.is_empty());
        }
        self.timelines.retain(|_, envs| !envs.is_empty());
        self.incidents.retain(|_, i| i.detected_at >= since);
        let incidents = &self.incidents;
        for list in self.linked.values_mut() {
            list.retain(|i| incidents.contains_key(i));
        }
        self.linked.retain(|_, list| !list.is_empty());
        let entries = &self.entries;
        for ids in self.by_plan.values_mut() {
            ids.retain(|id| entries.contains_key(id));
        }
        self.by_plan.retain(|_, ids| !ids.is_empty());
        let by_plan = &self.by_plan;
        self.commits
            .retain(|plan, at| *at >= since || by_plan.contains_key(plan));
    }

    /// The report for `query` as of `now`.
    pub fn report(&mut self, query: &DoraQuery, now: DateTime<Utc>) -> DoraReport {
        let environment = query
            .environment
            .clone()
            .unwrap_or_else(|| "production".into());
        let days = query.window_days.unwrap_or(30).max(1);
        let hours = query.failure_window_hours.unwrap_or(24);
        let service = query.service.as_deref();
        let window_start = now - Duration::days(i64::from(days));
        let all = self.totals(&environment, service, (window_start, now), hours);
        let trend = (0..query.weeks.unwrap_or(0).min(MAX_WEEKS))
            .rev()
            .map(|back| {
                let end = now - Duration::weeks(i64::from(back));
                let start = end - Duration::weeks(1);
                let week = self.totals(&environment, service, (start, end), hours);
                DoraWeek {
                    start,
                    end,
                    deployments: week.deployments,
                    failed_changes: week.failures.failed,
                    lead_time_median_seconds: week.leads.median(),
                    time_to_restore_median_seconds: week.failures.restores.median(),
                }
            })
            .collect();
        let n = all.deployments;
        DoraReport {
            service: query.service.clone(),
            environment,
            window_start,
            window_end: now,
            deployments: n,
            deployment_frequency_per_day: n as f64 / f64::from(days),
            lead_time_mean_seconds: all.lead_mean(),
            lead_time_median_seconds: all.leads.median(),
            failed_changes: all.failures.failed,
            failures_by_cause: all.failures.causes,
            change_failure_rate: (n > 0).then(|| all.failures.failed as f64 / n as f64),
            time_to_restore_median_seconds: all.failures.restores.median(),
            trend,
        }
    }

    /// The figures of the deploys of `service` (all when `None`) in `environment` that
    /// ended in `(start, end]`, for a failure window of `hours`.
    pub fn totals(
        &mut self,
        environment: &str,
        service: Option<&str>,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        hours: u32,
    ) -> Totals {
        let mut totals = Totals::default();
        let Some(env) = self.environments.get_mut(environment) else {
            return totals;
        };
        let days = match service {
            None => &mut env.all,
            Some(s) => match env.services.get_mut(s) {
                Some(days) => days,
                None => return totals,
            },
        };
        let entries = &self.entries;
        let window = (start, end);
        for (_, day) in days.range_mut(day_of(start)..=day_of(end)) {
            match day.whole.cover(window) {
                None => {}
                Some(true) => totals.add_day(day.whole.figures(entries), hours),
                // The window covers part of the day: its hours, whole or in part.
                Some(false) => {
                    for (_, hour) in day.hours.range_mut(hour_of(start)..=hour_of(end)) {
                        match hour.cover(window) {
                            None => {}
                            Some(true) => totals.add_day(hour.figures(entries), hours),
                            Some(false) => hour.walk(entries, window, &mut totals, hours),
                        }
                    }
                }
            }
        }
        totals
    }
}
