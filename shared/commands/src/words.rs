//! The words of the grammar: names, versions, ids, durations, matchers and canary
//! steps, each checked the way the services check them.

use toronto_protocol::domain::{Environment, ServiceName, Version};
use uuid::Uuid;

use crate::command::Matcher;

/// A service name ([`ServiceName`]): refused with the reason the planner gives.
pub(crate) fn service(word: &str) -> Result<String, String> {
    word.parse::<ServiceName>()
        .map(String::from)
        .map_err(|e| e.to_string())
}

/// An environment name ([`Environment`]): refused with the reason the planner gives.
pub(crate) fn environment(word: &str) -> Result<String, String> {
    word.parse::<Environment>()
        .map(String::from)
        .map_err(|e| e.to_string())
}

/// A [`Version`]: refused with the reason the planner gives.
pub(crate) fn version(word: &str) -> Result<String, String> {
    word.parse::<Version>()
        .map(String::from)
        .map_err(|e| e.to_string())
}

pub(crate) fn incident_id(word: &str) -> Result<Uuid, String> {
    Uuid::parse_str(word).map_err(|_| format!("`{word}` is not an incident id (a UUID)"))
}

pub(crate) fn plan_id(word: &str) -> Result<Uuid, String> {
    Uuid::parse_str(word).map_err(|_| format!("`{word}` is not a plan id (a UUID)"))
}

/// `SERVICE in ENV` at the start of `words`.
pub(crate) fn service_in_env(words: &[&str], needed: &str) -> Result<(String, String), String> {
    if let Some(kw) = words.get(1).filter(|kw| !kw.eq_ignore_ascii_case("in")) {
        return Err(format!("expected `in` after the service, not `{kw}`"));
    }
    match words {
        [] => Err(format!("{needed} is missing")),
        [_] => Err("`in ENV` is missing".into()),
        [_, _] => Err("ENV is missing after `in`".into()),
        [service, _, env, ..] => Ok((self::service(service)?, environment(env)?)),
    }
}

pub(crate) fn no_more(words: &[&str]) -> Result<(), String> {
    match words.first() {
        None => Ok(()),
        Some(w) => Err(format!("unexpected `{w}`")),
    }
}

pub(crate) fn rest_text(words: &[&str]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

/// Parses `30s`, `15m`, `2h`, `1d`, `1h30m` (anything humantime reads, in whole
/// seconds) into seconds (1 minute to 90 days).
pub fn parse_duration(word: &str) -> Result<u64, String> {
    let bad = || format!("`{word}` is not a duration like 30m, 2h, 1d or 1h30m");
    let duration = humantime::parse_duration(word).map_err(|_| bad())?;
    if duration.subsec_nanos() != 0 {
        return Err(bad());
    }
    let total = duration.as_secs();
    if total < 60 {
        return Err(format!("`{word}` is shorter than a minute"));
    }
    if total > 90 * 86_400 {
        return Err(format!("`{word}` is longer than 90 days"));
    }
    Ok(total)
}

pub(crate) fn parse_matchers(words: &[&str]) -> Result<Vec<Matcher>, String> {
    let mut matchers = Vec::new();
    for part in words
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|p| !p.is_empty())
    {
        let (name, op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| part.split_once(op).map(|(n, v)| (n, *op, v)))
            .ok_or_else(|| {
                format!("`{part}` is not a matcher like name=value, name!=value, name=~regex")
            })?;
        let valid_name = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(format!("`{name}` is not a label name"));
        }
        if value.is_empty() && op != "=" {
            return Err(format!("`{part}` has no value"));
        }
        matchers.push(Matcher {
            name: name.to_owned(),
            value: value.to_owned(),
            is_regex: op.ends_with('~'),
            is_equal: !op.starts_with('!'),
        });
    }
    if matchers.is_empty() {
        return Err("MATCHERS are missing".into());
    }
    Ok(matchers)
}

pub(crate) fn parse_steps(list: &str) -> Result<Vec<u8>, String> {
    let mut steps = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let w: u8 = part
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|w| (1..=100).contains(w))
            .ok_or_else(|| format!("`{part}` is not a weight from 1 to 100"))?;
        if steps.last().is_some_and(|last| *last >= w) {
            return Err(format!("--steps must increase: `{list}`"));
        }
        steps.push(w);
    }
    if steps.is_empty() {
        return Err("--steps needs weights like 10,25,50".into());
    }
    if steps.last() != Some(&100) {
        steps.push(100);
    }
    Ok(steps)
}

/// A commit id: 4 to 64 hexadecimal digits (SHA-1 or SHA-256, abbreviated or whole).
pub(crate) fn commit_id(word: &str) -> Result<String, String> {
    if (4..=64).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(word.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a commit id (4 to 64 hexadecimal digits)",
            shorten(word)
        ))
    }
}

/// A commit time in RFC 3339 (`2026-11-26T10:00:00Z`), not in the future.
pub(crate) fn commit_time(word: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let at = chrono::DateTime::parse_from_rfc3339(word)
        .map_err(|e| {
            format!(
                "`{}` is not an RFC 3339 time such as 2026-11-26T10:00:00Z: {e}",
                shorten(word)
            )
        })?
        .with_timezone(&chrono::Utc);
    if at > chrono::Utc::now() + chrono::Duration::minutes(5) {
        return Err(format!("--committed-at {word} is in the future"));
    }
    Ok(at)
}

/// An image reference (`registry.example.com/shop:1.2.0`): 1 to 255 characters, no
/// spaces or control characters (the planner's rule for a task's image).
pub(crate) fn image_ref(word: &str) -> Result<String, String> {
    if !word.is_empty()
        && word.len() <= 255
        && !word.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Ok(word.to_owned())
    } else {
        Err(format!(
            "`{}` is not an image reference (1 to 255 characters without spaces)",
            shorten(word)
        ))
    }
}

/// At most 40 characters of a word the user typed, for an error message.
fn shorten(word: &str) -> String {
    match word.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &word[..end]),
        None => word.to_owned(),
    }
}
