//! Domain names and values that recur across the bus, each with one validation.
//!
//! - [`DnsLabel`]: an RFC 1035 label, the rule Kubernetes applies to a Service name:
//!   1 to 63 lowercase letters, digits or `-`, starting with a letter and ending with a
//!   letter or digit. [`ServiceName`] and [`Environment`] follow this rule.
//! - [`Version`]: 1 to 128 characters without whitespace or control characters.
//!
//! Each type parses with [`FromStr`] or `TryFrom<String>` (serde uses the latter, so a
//! value that breaks the rule does not deserialize), derefs to `str`, and carries its
//! rule in its JSON Schema (`pattern`, `minLength`, `maxLength`). The planner, the
//! deployer, the monitor and the command grammar all check names and versions through
//! these types, so they accept and refuse the same words with the same reason.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The longest DNS label.
pub const DNS_LABEL_MAX: usize = 63;

/// The JSON Schema pattern of a DNS label.
pub const DNS_LABEL_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// The longest version.
pub const VERSION_MAX: usize = 128;

/// The JSON Schema pattern of a version: no whitespace, no control characters.
pub const VERSION_PATTERN: &str = "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]+$";

/// What is wrong with a word that should be a DNS label. Its message starts with the
/// rule, so `"{what} `{word}` {error}"` reads as a whole reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The word is empty.
    #[error("{RULE}: it is empty")]
    Empty,
    /// The word is longer than [`DNS_LABEL_MAX`] (its length in bytes).
    #[error("{RULE}: it has {0} characters")]
    TooLong(usize),
    /// The word holds a character other than a lowercase letter, a digit or `-`.
    #[error("{RULE}: `{0}` is not allowed")]
    Character(char),
    /// The word starts with a digit or `-`.
    #[error("{RULE}: it starts with `{0}`")]
    Start(char),
    /// The word ends with `-`.
    #[error("{RULE}: it ends with `-`")]
    End,
}

const RULE: &str = "must be a DNS label (1-63 lowercase letters, digits or `-`, starting with a letter and ending with a letter or digit)";

/// What is wrong with a word that should be a [`Version`]. Its message starts with the
/// rule, so `"version `{word}` {error}"` reads as a whole reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The version is empty.
    #[error("{VERSION_RULE}: it is empty")]
    Empty,
    /// The version is longer than [`VERSION_MAX`] (its length in bytes).
    #[error("{VERSION_RULE}: it has {0} characters")]
    TooLong(usize),
    /// The version holds whitespace.
    #[error("{VERSION_RULE}: it holds whitespace")]
    Whitespace,
    /// The version holds a control character.
    #[error("{VERSION_RULE}: it holds the control character {0:?}")]
    Control(char),
}

const VERSION_RULE: &str = "must be 1-128 characters without spaces or control characters";

/// The kind of name a [`NameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A [`DnsLabel`] without a more specific meaning.
    Label,
    /// A [`ServiceName`].
    Service,
    /// An [`Environment`].
    Environment,
}

impl NameKind {
    /// The word used in messages: `name`, `service` or `environment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Label => "name",
            Self::Service => "service",
            Self::Environment => "environment",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word refused as a name: which kind of name, the word, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{value}` {problem}")]
pub struct NameError {
    /// The kind of name.
    pub kind: NameKind,
    /// The word as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: LabelError,
}

/// A word refused as a [`Version`], and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version `{value}` {problem}")]
pub struct InvalidVersion {
    /// The word as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: VersionError,
}

/// Checks `word` against the DNS label rule (see [`DnsLabel`]).
pub fn check_dns_label(word: &str) -> Result<(), LabelError> {
    let Some(first) = word.chars().next() else {
        return Err(LabelError::Empty);
    };
    if word.len() > DNS_LABEL_MAX {
        return Err(LabelError::TooLong(word.len()));
    }
    if let Some(c) = word
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(LabelError::Character(c));
    }
    if !first.is_ascii_lowercase() {
        return Err(LabelError::Start(first));
    }
    if word.ends_with('-') {
        return Err(LabelError::End);
    }
    Ok(())
}

/// Checks `word` against the version rule (see [`Version`]).
pub fn check_version(word: &str) -> Result<(), VersionError> {
    if word.is_empty() {
        return Err(VersionError::Empty);
    }
    if word.len() > VERSION_MAX {
        return Err(VersionError::TooLong(word.len()));
    }
    if word.chars().any(char::is_whitespace) {
        return Err(VersionError::Whitespace);
    }
    if let Some(c) = word.chars().find(|c| c.is_control()) {
        return Err(VersionError::Control(c));
    }
    Ok(())
}

/// The string conversions and trait impls every domain string type shares.
macro_rules! domain_string {
    ($ty:ident, $error:ty, $check:expr, $schema:expr) => {
        impl $ty {
            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $error;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                let check: fn(String) -> Result<String, $error> = $check;
                check(value).map(Self)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $error;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::try_from(value.to_owned())
            }
        }

        impl FromStr for $ty {
            type Err = $error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }

        impl Deref for $ty {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

fn label_schema(description: &str) -> Schema {
    json_schema!({
        "type": "string",
        "description": description,
        "minLength": 1,
        "maxLength": DNS_LABEL_MAX,
        "pattern": DNS_LABEL_PATTERN,
    })
}

/// A DNS label (RFC 1035, as Kubernetes requires of a Service name): 1 to 63 lowercase
/// letters, digits or `-`, starting with a letter and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsLabel(String);

domain_string!(
    DnsLabel,
    NameError,
    |v| named(NameKind::Label, v),
    label_schema(
        "A DNS label: 1-63 lowercase letters, digits or `-`, starting with a letter and ending with a letter or digit."
    )
);

/// The name of a service (a [`DnsLabel`]), e.g. `shop-api`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

domain_string!(
    ServiceName,
    NameError,
    |v| named(NameKind::Service, v),
    label_schema(
        "A service name: a DNS label (1-63 lowercase letters, digits or `-`, starting with a letter and ending with a letter or digit)."
    )
);

/// The name of an environment (a [`DnsLabel`]), e.g. `production`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Environment(String);

domain_string!(
    Environment,
    NameError,
    |v| named(NameKind::Environment, v),
    label_schema(
        "An environment name: a DNS label (1-63 lowercase letters, digits or `-`, starting with a letter and ending with a letter or digit)."
    )
);

/// A version of a service, e.g. `2.4.1`: 1 to 128 characters without whitespace or
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

domain_string!(
    Version,
    InvalidVersion,
    |value| match check_version(&value) {
        Ok(()) => Ok(value),
        Err(problem) => Err(InvalidVersion { value, problem }),
    },
    json_schema!({
        "type": "string",
        "description": "A version: 1-128 characters without whitespace or control characters.",
        "minLength": 1,
        "maxLength": VERSION_MAX,
        "pattern": VERSION_PATTERN,
    })
);

fn named(kind: NameKind, value: String) -> Result<String, NameError> {
    match check_dns_label(&value) {
        Ok(()) => Ok(value),
        Err(problem) => Err(NameError {
            kind,
            value,
            problem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_rfc_1035() {
        for good in ["a", "shop", "shop-api", "a1", "x-1-y", &"a".repeat(63)] {
            assert_eq!(check_dns_label(good), Ok(()), "{good}");
            assert_eq!(good.parse::<DnsLabel>().unwrap().as_str(), good);
        }
        let cases = [
            ("", LabelError::Empty),
            (&"a".repeat(64), LabelError::TooLong(64)),
            ("Shop", LabelError::Character('S')),
            ("shop_api", LabelError::Character('_')),
            ("shop.api", LabelError::Character('.')),
            ("shop api", LabelError::Character(' ')),
            ("café", LabelError::Character('é')),
            ("1shop", LabelError::Start('1')),
            ("-shop", LabelError::Start('-')),
            ("shop-", LabelError::End),
        ];
        for (bad, problem) in cases {
            assert_eq!(check_dns_label(bad), Err(problem.clone()), "{bad:?}");
            let err = bad.parse::<ServiceName>().unwrap_err();
            assert_eq!(err.kind, NameKind::Service);
            assert_eq!(err.value, bad);
            assert_eq!(err.problem, problem);
        }
    }

    #[test]
    fn a_name_error_says_what_is_wrong() {
        let err = "1shop".parse::<ServiceName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "service `1shop` must be a DNS label (1-63 lowercase letters, digits or `-`, \
             starting with a letter and ending with a letter or digit): it starts with `1`"
        );
        let err = "Prod".parse::<Environment>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment `Prod` must be a DNS label")
        );
        assert!(err.to_string().ends_with("`P` is not allowed"), "{err}");
        let err = "x".repeat(64).parse::<DnsLabel>().unwrap_err();
        assert!(err.to_string().ends_with("it has 64 characters"), "{err}");
    }

    #[test]
    fn versions_have_one_length_limit_and_no_blanks() {
        for good in [
            "1",
            "2.4.1",
            "v1.2.3-rc.1+build.5",
            "sha256:abc",
            "1/2",
            &"9".repeat(128),
        ] {
            assert_eq!(check_version(good), Ok(()), "{good}");
            assert_eq!(good.parse::<Version>().unwrap(), good);
        }
        let cases = [
            ("", VersionError::Empty),
            (&"9".repeat(129), VersionError::TooLong(129)),
            (&"9".repeat(256), VersionError::TooLong(256)),
            ("1.0 beta", VersionError::Whitespace),
            ("1.0\t", VersionError::Whitespace),
            ("1.0\u{0}", VersionError::Control('\u{0}')),
            ("1.0\u{7f}", VersionError::Control('\u{7f}')),
        ];
        for (bad, problem) in cases {
            assert_eq!(check_version(bad), Err(problem.clone()), "{bad:?}");
            let err = bad.parse::<Version>().unwrap_err();
            assert_eq!(err.problem, problem);
        }
        assert_eq!(
            "".parse::<Version>().unwrap_err().to_string(),
            "version `` must be 1-128 characters without spaces or control characters: it is empty"
        );
    }

    #[test]
    fn serde_refuses_what_parsing_refuses() {
        let name: ServiceName = serde_json::from_str("\"shop-api\"").unwrap();
        assert_eq!(&*name, "shop-api");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"shop-api\"");
        let err = serde_json::from_str::<ServiceName>("\"Shop\"").unwrap_err();
        assert!(err.to_string().contains("must be a DNS label"), "{err}");
        let err = serde_json::from_str::<Version>("\"1 0\"").unwrap_err();
        assert!(err.to_string().contains("whitespace"), "{err}");
        let env: Environment = serde_json::from_str("\"production\"").unwrap();
        assert_eq!(String::from(env), "production");
    }

    #[test]
    fn the_schemas_carry_the_rules() {
        let schema = serde_json::to_value(schemars::schema_for!(ServiceName)).unwrap();
        assert_eq!(schema["pattern"], DNS_LABEL_PATTERN);
        assert_eq!(schema["maxLength"], 63);
        assert_eq!(schema["minLength"], 1);
        let schema = serde_json::to_value(schemars::schema_for!(Version)).unwrap();
        assert_eq!(schema["maxLength"], 128);
        assert_eq!(schema["pattern"], VERSION_PATTERN);
    }

    #[test]
    fn plan_tasks_have_typed_accessors() {
        use crate::tasks::{DeployTask, PlanTask};
        let task: DeployTask = serde_json::from_value(serde_json::json!({
            "service": "shop-api", "version": "2.4.1", "environment": "1prod",
        }))
        .unwrap();
        assert_eq!(task.checked_version().unwrap(), "2.4.1");
        let task = PlanTask::Deploy(Box::new(task));
        assert_eq!(task.service_name().unwrap(), "shop-api");
        assert_eq!(
            task.environment_name().unwrap_err().problem,
            LabelError::Start('1')
        );
    }
}
