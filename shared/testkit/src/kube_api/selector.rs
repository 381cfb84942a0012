//! Label selectors of list requests: equality-based (`a=b`, `a==b`, `a!=b`) and
//! existence (`a`, `!a`), comma-separated. Set-based ones (`a in (b,c)`) are refused.

use serde_json::Value;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses a selector; an empty one selects everything.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains('(') || part.contains(' ') {
                return Err(format!(
                    "set-based selector {part:?}: the fake serves equality and existence selectors only"
                ));
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.to_owned(), v.to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.to_owned(), v.to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v),
            Requirement::NotEquals(k, v) => label(k) != Some(v),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_and_existence() {
        let labels = json!({"app": "shop", "track": "canary"});
        let yes = |s: &str| Selector::parse(s).unwrap().matches(Some(&labels));
        assert!(yes(""));
        assert!(yes("app=shop,track==canary"));
        assert!(!yes("app=shop,track!=canary"));
        assert!(yes("track"));
        assert!(!yes("!track"));
        assert!(yes("!colour"));
        assert!(Selector::parse("app in (shop,cart)").is_err());
        assert!(!Selector::parse("app").unwrap().matches(None));
    }
}
