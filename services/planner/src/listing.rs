//! `plan.list`, page by page: newest first (plan ids are UUID v7, so key order is
//! creation order), a capped `limit`, and an opaque cursor (the last plan id of the
//! page) to go on from. The ids come from the plans' live index
//! ([`toronto_runtime::work::KeyIndex`]), so a page costs the same whatever the history;
//! only the plans a page shows, and at most [`SCAN_PAGES`] pages' worth that filters
//! drop, are read and decoded.

use toronto_protocol::page;
use toronto_protocol::tasks::{PlanList, Plans};
use uuid::Uuid;

use crate::intake::{IntakeError, Planner};

/// How many pages' worth of plans one request may read while filters drop them; past
/// that the page ends early, with a cursor to go on from.
const SCAN_PAGES: usize = 10;

impl Planner {
    /// One page of plans matching the query, newest first.
    pub async fn page(&self, query: &PlanList) -> Result<Plans, IntakeError> {
        let limit = page::limit(query.limit);
        let before = match &query.cursor {
            None => None,
            Some(c) => Some(c.parse::<Uuid>().map_err(|_| {
                IntakeError::Rejected(vec![format!(
                    "`cursor` `{c}` is not one this service gave: pass the `next_cursor` of the page before"
                )])
            })?),
        };
        let cursor = before.map(|b| b.to_string());
        let ids = self
            .index
            .newest_or_list(&self.records, cursor.as_deref(), limit * SCAN_PAGES + 1)
            .await?;
        let mut plans = Vec::new();
        let mut last = None;
        let newest_first = ids.iter().filter_map(|id| id.parse::<Uuid>().ok());
        for (scanned, id) in newest_first.enumerate() {
            if plans.len() == limit || scanned == limit * SCAN_PAGES {
                return Ok(Plans {
                    plans,
                    next_cursor: last.map(|id: Uuid| id.to_string()),
                });
            }
            last = Some(id);
            let Some((plan, _)) = self.load(id).await? else {
                continue;
            };
            let matches = query
                .service
                .as_deref()
                .is_none_or(|s| plan.task.service() == s)
                && query
                    .environment
                    .as_deref()
                    .is_none_or(|e| plan.task.environment() == e)
                && query.state.is_none_or(|s| plan.state == s)
                && query
                    .requested_by
                    .as_deref()
                    .is_none_or(|r| plan.requested_by == r);
            if matches {
                plans.push(plan);
            }
        }
        Ok(Plans {
            plans,
            next_cursor: None,
        })
    }
}
