//! Parsers of variable values, shared by every settings table.
//!
//! Each turns the text of a variable into a typed value or a [`ValueError`]. One rule
//! for zero: the `positive_*` parsers and [`millis`]/[`seconds`] refuse zero with
//! [`ValueError::Zero`]; the `*_or_zero` parsers accept it, and the variable's doc says
//! what zero means. Durations carry their unit in the variable's name (`_MS`,
//! `_SECONDS`); seconds may have a decimal fraction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Why a value is refused. The value is echoed only by variants that never carry a
/// secret (numbers, words, addresses).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// The text is not of the expected form.
    #[error("`{value}` is not {expected}")]
    Malformed {
        /// The text given.
        value: String,
        /// What was expected, e.g. "a whole number of milliseconds".
        expected: &'static str,
    },
    /// Zero where only a positive value makes sense.
    #[error("must be more than 0")]
    Zero,
    /// Not one of the allowed words.
    #[error("`{value}` is not one of: {}", allowed.join(", "))]
    NotOneOf {
        /// The text given.
        value: String,
        /// The words accepted.
        allowed: Vec<&'static str>,
    },
    /// A check particular to the variable failed (the message says which).
    #[error("{0}")]
    Invalid(String),
}

fn malformed(value: &str, expected: &'static str) -> ValueError {
    ValueError::Malformed {
        value: value.to_owned(),
        expected,
    }
}

/// A whole number, zero allowed.
pub fn whole_or_zero<T: FromStr>(v: &str) -> Result<T, ValueError> {
    v.trim()
        .parse()
        .map_err(|_| malformed(v, "a non-negative whole number"))
}

/// A whole number above zero.
pub fn positive<T: FromStr + Default + PartialEq>(v: &str) -> Result<T, ValueError> {
    let n: T = whole_or_zero(v)?;
    if n == T::default() {
        return Err(ValueError::Zero);
    }
    Ok(n)
}

/// Milliseconds above zero.
pub fn millis(v: &str) -> Result<Duration, ValueError> {
    nonzero(millis_or_zero(v)?)
}

/// Milliseconds, zero allowed.
pub fn millis_or_zero(v: &str) -> Result<Duration, ValueError> {
    v.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| malformed(v, "a whole number of milliseconds"))
}

/// Seconds above zero (a decimal fraction is allowed, e.g. `0.5`).
pub fn seconds(v: &str) -> Result<Duration, ValueError> {
    nonzero(seconds_or_zero(v)?)
}

/// Seconds, zero allowed (a decimal fraction is allowed).
pub fn seconds_or_zero(v: &str) -> Result<Duration, ValueError> {
    v.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| malformed(v, "a number of seconds, 0 or more"))
}

fn nonzero(d: Duration) -> Result<Duration, ValueError> {
    if d.is_zero() {
        Err(ValueError::Zero)
    } else {
        Ok(d)
    }
}

/// A finite number above zero.
pub fn positive_f64(v: &str) -> Result<f64, ValueError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(0.0) => Err(ValueError::Zero),
        _ => Err(malformed(v, "a positive number")),
    }
}

/// A finite number, zero or more.
pub fn non_negative_f64(v: &str) -> Result<f64, ValueError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(malformed(v, "a non-negative number")),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); empty is false.
pub fn boolean(v: &str) -> Result<bool, ValueError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(malformed(v, "a boolean (true/false)")),
    }
}

/// Comma-separated items, trimmed, empty ones dropped.
pub fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The trimmed text, `None` when empty.
pub fn optional(v: &str) -> Option<String> {
    Some(v.trim()).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A path, `None` when empty.
pub fn optional_path(v: &str) -> Option<PathBuf> {
    optional(v).map(PathBuf::from)
}

/// Non-empty trimmed text.
pub fn non_empty(v: &str) -> Result<String, ValueError> {
    optional(v).ok_or_else(|| ValueError::Invalid("must not be empty".into()))
}

/// An `http://` or `https://` URL, without a trailing `/`.
pub fn http_url(v: &str) -> Result<String, ValueError> {
    let v = v.trim();
    if (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len() {
        Ok(v.trim_end_matches('/').to_owned())
    } else {
        Err(malformed(v, "an http:// or https:// URL"))
    }
}

/// A `host:port` socket address, `None` when empty.
pub fn optional_socket_addr(v: &str) -> Result<Option<SocketAddr>, ValueError> {
    match v.trim() {
        "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| malformed(a, "host:port (e.g. 0.0.0.0:8090)")),
    }
}

/// One of a fixed set of words (case-insensitive), mapped to its value.
pub fn one_of<T: Copy>(v: &str, choices: &[(&'static str, T)]) -> Result<T, ValueError> {
    let word = v.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, t)| *t)
        .ok_or_else(|| ValueError::NotOneOf {
            value: v.trim().to_owned(),
            allowed: choices.iter().map(|(w, _)| *w).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused_by_positive_parsers_with_one_message() {
        for err in [
            millis("0").unwrap_err(),
            seconds("0").unwrap_err(),
            positive::<usize>("0").unwrap_err(),
            positive_f64("0").unwrap_err(),
        ] {
            assert_eq!(err, ValueError::Zero);
            assert_eq!(err.to_string(), "must be more than 0");
        }
        assert_eq!(millis_or_zero("0").unwrap(), Duration::ZERO);
        assert_eq!(seconds_or_zero("0").unwrap(), Duration::ZERO);
        assert_eq!(whole_or_zero::<u32>("0").unwrap(), 0);
    }

    #[test]
    fn values_parse_and_malformed_ones_are_refused() {
        assert_eq!(seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(millis(" 250 ").unwrap(), Duration::from_millis(250));
        assert!(millis("soon").is_err());
        assert!(seconds("-1").is_err());
        assert!(positive_f64("-1").is_err());
        assert!(boolean("maybe").is_err());
        assert!(boolean("on").unwrap());
        assert_eq!(list(" a, ,b "), vec!["a", "b"]);
        assert_eq!(
            http_url("http://prom:9090/").unwrap(),
            "http://prom:9090".to_owned()
        );
        assert!(http_url("prom:9090").is_err());
        let err = one_of(" Text ", &[("json", 1), ("text", 2)]).unwrap();
        assert_eq!(err, 2);
        let err = one_of("xml", &[("json", 1), ("text", 2)]).unwrap_err();
        assert_eq!(err.to_string(), "`xml` is not one of: json, text");
    }
}
