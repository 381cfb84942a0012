//! Series selectors over the metric store (`name{a="x"}`, exact matchers only) and
//! the PromQL they stand for.

/// A series selector over the store: a name and exact label matchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The series name.
    pub name: String,
    /// Labels the series must have.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Parses `name{a="x",b="y"}` (or a bare name).
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let text = text.trim();
    let (name, rest) = match text.find('{') {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let metric_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !metric_name(name) {
        return Err(format!("`{name}` is not a metric name"));
    }
    let mut labels = std::collections::BTreeMap::new();
    if let Some(rest) = rest {
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| format!("`{text}`: unbalanced braces"))?;
        let mut chars = inner.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_owned();
            if !metric_name(&key) || key.contains(':') {
                return Err(format!("`{text}`: `{key}` is not a label name"));
            }
            if chars.next() != Some('"') {
                return Err(format!(
                    "`{text}`: only exact matchers (label=\"value\") are supported"
                ));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => return Err(format!("`{text}`: unterminated value")),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("`{text}`: unterminated value")),
                }
            }
            labels.insert(key, value);
        }
    }
    Ok(Selector {
        name: name.to_owned(),
        labels,
    })
}

/// The PromQL of a bus selector: its per-tick values summed over the rate window.
pub(super) fn promql(sel: &Selector) -> String {
    let m = sel
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",");
    format!("sum(sum_over_time({}{{{m}}}[{{{{.window}}}}]))", sel.name)
}
