//! On-call rotations: who is on call at a moment, from a list of participants taking
//! turns and overrides. A rotation either hands off every fixed number of seconds, or,
//! with a time zone, at a local wall-clock time every so many days, so that a "daily at
//! 09:00 in Berlin" rotation still hands off at 09:00 after a daylight-saving change.

use chrono::{DateTime, NaiveTime, Utc};
use serde::Deserialize;

/// An on-call rotation with handoffs and overrides.
///
/// ```yaml
/// - name: primary
///   participants: [alice, bob]
///   start: 2026-03-23T08:00:00Z   # alice's turn begins on this (local) day
///   time_zone: Europe/Berlin      # IANA name
///   handoff_time: "09:00"         # local time of each handoff
///   turn_days: 1                  # days in a turn (default 7)
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Its name (`schedule:<name>` in escalation targets).
    pub name: String,
    /// Who takes turns, in order.
    pub participants: Vec<String>,
    /// When the first participant's turn began (with a time zone: its local day).
    pub start: DateTime<Utc>,
    /// Length of a turn in seconds (handoff every this many seconds), for rotations
    /// without a time zone.
    #[serde(default)]
    pub handoff_seconds: u64,
    /// The team's IANA time zone (`Europe/Berlin`): turns then hand off at
    /// `handoff_time` local time.
    #[serde(default)]
    pub time_zone: Option<chrono_tz::Tz>,
    /// Local time of each handoff, `HH:MM` (with `time_zone`).
    #[serde(default)]
    pub handoff_time: Option<String>,
    /// Days in a turn (with `time_zone`; default 7).
    #[serde(default)]
    pub turn_days: Option<u32>,
    /// Who stands in for whom, when.
    #[serde(default)]
    pub overrides: Vec<Override>,
}

/// Someone on call instead of the rotation, for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Who.
    pub who: String,
    /// From.
    pub start: DateTime<Utc>,
    /// Until.
    pub end: DateTime<Utc>,
}

fn parse_time(text: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(text, "%H:%M").ok()
}

impl Schedule {
    /// Checks that it says how turns hand off.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        match (&self.time_zone, &self.handoff_time) {
            (Some(_), Some(t)) if parse_time(t).is_none() => Err(format!(
                "schedule `{name}`: handoff_time `{t}` is not HH:MM"
            )),
            (Some(_), Some(_)) if self.turn_days == Some(0) => {
                Err(format!("schedule `{name}`: turn_days must be at least 1"))
            }
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "schedule `{name}`: time_zone and handoff_time go together"
            )),
            (None, None) if self.handoff_seconds == 0 => Err(format!(
                "schedule `{name}`: give handoff_seconds, or time_zone and handoff_time"
            )),
            (None, None) => Ok(()),
        }
    }

    /// Whose turn it is at `at`, counted in turns since `start`.
    fn turn(&self, at: DateTime<Utc>) -> Option<u64> {
        match (
            &self.time_zone,
            self.handoff_time.as_deref().and_then(parse_time),
        ) {
            (Some(tz), Some(handoff)) => {
                let first = self.start.with_timezone(tz).date_naive();
                let local = at.with_timezone(tz);
                let mut days = (local.date_naive() - first).num_days();
                // Before today's handoff, yesterday's turn goes on.
                if local.time() < handoff {
                    days -= 1;
                }
                Some(days.max(0) as u64 / u64::from(self.turn_days.unwrap_or(7).max(1)))
            }
            _ if self.handoff_seconds > 0 => {
                let elapsed = (at - self.start).num_seconds().max(0) as u64;
                Some(elapsed / self.handoff_seconds)
            }
            _ => None,
        }
    }

    /// Who is on call at `at`.
    pub fn on_call(&self, at: DateTime<Utc>) -> Option<String> {
        if let Some(o) = self.overrides.iter().find(|o| o.start <= at && at < o.end) {
            return Some(o.who.clone());
        }
        if self.participants.is_empty() {
            return None;
        }
        let turn = self.turn(at)? as usize % self.participants.len();
        Some(self.participants[turn].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(yaml: &str) -> Schedule {
        let s: Schedule = serde_yaml_ng::from_str(yaml).unwrap();
        s.check().unwrap();
        s
    }

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    #[test]
    fn a_daily_local_handoff_keeps_its_wall_clock_time_across_daylight_saving() {
        // Berlin moves from UTC+1 to UTC+2 on 2026-03-29 at 02:00 local time.
        let s = schedule(
            "name: primary\nparticipants: [alice, bob]\nstart: 2026-03-27T08:00:00Z\ntime_zone: Europe/Berlin\nhandoff_time: \"09:00\"\nturn_days: 1\n",
        );
        // 27 March from 09:00 local (08:00 UTC): alice; 28 March: bob; 29 March: alice.
        assert_eq!(
            s.on_call(at("2026-03-27T08:30:00Z")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            s.on_call(at("2026-03-28T07:59:00Z")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            s.on_call(at("2026-03-28T08:00:00Z")).as_deref(),
            Some("bob")
        );
        // After the change 09:00 local is 07:00 UTC: alice takes over at 07:00 UTC, not
        // at 08:00 as a 24-hour rotation would.
        assert_eq!(
            s.on_call(at("2026-03-29T06:59:00Z")).as_deref(),
            Some("bob")
        );
        assert_eq!(
            s.on_call(at("2026-03-29T07:00:00Z")).as_deref(),
            Some("alice")
        );
        let fixed = schedule(
            "name: fixed\nparticipants: [alice, bob]\nstart: 2026-03-27T08:00:00Z\nhandoff_seconds: 86400\n",
        );
        assert_eq!(
            fixed.on_call(at("2026-03-29T07:00:00Z")).as_deref(),
            Some("bob")
        );
        // And back in October (UTC+2 to UTC+1 on the 25th): 09:00 local is 08:00 UTC.
        let weekly = schedule(
            "name: weekly\nparticipants: [alice, bob, carol]\nstart: 2026-10-19T12:00:00Z\ntime_zone: Europe/Berlin\nhandoff_time: \"09:00\"\n",
        );
        assert_eq!(
            weekly.on_call(at("2026-10-26T07:30:00Z")).as_deref(),
            Some("alice")
        );
        assert_eq!(
            weekly.on_call(at("2026-10-26T08:00:00Z")).as_deref(),
            Some("bob")
        );
    }

    #[test]
    fn a_schedule_must_say_how_it_hands_off() {
        for (yaml, error) in [
            (
                "name: x\nparticipants: [a]\nstart: 2026-01-01T00:00:00Z\n",
                "give handoff_seconds",
            ),
            (
                "name: x\nparticipants: [a]\nstart: 2026-01-01T00:00:00Z\ntime_zone: Europe/Berlin\n",
                "go together",
            ),
            (
                "name: x\nparticipants: [a]\nstart: 2026-01-01T00:00:00Z\ntime_zone: Europe/Berlin\nhandoff_time: 9am\n",
                "is not HH:MM",
            ),
        ] {
            let s: Schedule = serde_yaml_ng::from_str(yaml).unwrap();
            let e = s.check().unwrap_err();
            assert!(e.contains(error), "{yaml}: {e}");
        }
        let bad_zone = serde_yaml_ng::from_str::<Schedule>(
            "name: x\nparticipants: [a]\nstart: 2026-01-01T00:00:00Z\ntime_zone: Mars/Olympus\nhandoff_time: \"09:00\"\n",
        );
        assert!(bad_zone.is_err());
    }
}
