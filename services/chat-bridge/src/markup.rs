//! Text for chat: escaping of everything that came from users or labels, and the few
//! bits of markup the bridge adds itself.

use crate::settings::ChatKind;

/// Escapes text for Slack mrkdwn: `&`, `<` and `>` (Slack's control characters).
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Escapes text for Mattermost Markdown: a backslash before every character Markdown
/// would read as markup, and `&`, `<`, `>` as HTML entities.
pub fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '#' | '|' | '!' | '@' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes `text` for `kind`.
pub fn escape(kind: ChatKind, text: &str) -> String {
    match kind {
        ChatKind::Slack => slack_escape(text),
        ChatKind::Mattermost => markdown_escape(text),
    }
}

/// A piece of a message: ours (markup allowed) or theirs (escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text the bridge wrote; not escaped.
    Ours(String),
    /// Text from users, services or labels; escaped.
    Theirs(String),
    /// Their text, in bold.
    Strong(String),
    /// Their text, as inline code.
    Code(String),
    /// Who asked for something: a requester's `source` (`toronto://chat/slack/U024BE7LH`
    /// becomes a Slack mention, other sources are shown without `toronto://`).
    Requester(String),
}

/// The Slack user id in a chat source, when it is safe to mention.
fn slack_user(source: &str) -> Option<&str> {
    source
        .strip_prefix("toronto://chat/slack/")
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Renders parts for `kind`.
pub fn render(kind: ChatKind, parts: &[Part]) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Ours(s) => out.push_str(s),
            Part::Theirs(s) => out.push_str(&escape(kind, s)),
            Part::Strong(s) => {
                out.push('*');
                if kind == ChatKind::Mattermost {
                    out.push('*');
                }
                out.push_str(&escape(kind, s));
                out.push('*');
                if kind == ChatKind::Mattermost {
                    out.push('*');
                }
            }
            Part::Code(s) => {
                let clean = s.replace('`', "'");
                out.push('`');
                out.push_str(&match kind {
                    // Slack still reads &, <, > inside code.
                    ChatKind::Slack => slack_escape(&clean),
                    ChatKind::Mattermost => clean,
                });
                out.push('`');
            }
            Part::Requester(source) => match (kind, slack_user(source)) {
                (ChatKind::Slack, Some(id)) => out.push_str(&format!("<@{id}>")),
                _ => out.push_str(&escape(
                    kind,
                    source.strip_prefix("toronto://").unwrap_or(source),
                )),
            },
        }
    }
    out
}

/// Parts as plain text for a terminal: no markup, nothing escaped.
pub fn plain(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Ours(s) | Part::Theirs(s) | Part::Strong(s) | Part::Code(s) => s.as_str(),
            Part::Requester(s) => s.strip_prefix("toronto://").unwrap_or(s),
        })
        .collect()
}

/// A reply to a command (plain text from [`toronto_commands::render`]) as chat text: a
/// code block when it has several lines (tables), escaped either way.
pub fn reply_block(kind: ChatKind, text: &str) -> String {
    if text.contains('\n') {
        let clean = text.replace("```", "'''");
        let body = match kind {
            ChatKind::Slack => slack_escape(&clean),
            ChatKind::Mattermost => clean,
        };
        format!("```\n{body}\n```")
    } else {
        escape(kind, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        assert_eq!(
            slack_escape("<!channel> a & b > c"),
            "&lt;!channel&gt; a &amp; b &gt; c"
        );
        assert_eq!(
            markdown_escape("*bold* [x](y) @all"),
            "\\*bold\\* \\[x\\]\\(y\\) \\@all"
        );
        let parts = [
            Part::Ours("*deploy* ".into()),
            Part::Strong("<@U1>".into()),
            Part::Code("a`b<c>".into()),
        ];
        assert_eq!(
            render(ChatKind::Slack, &parts),
            "*deploy* *&lt;@U1&gt;*`a'b&lt;c&gt;`"
        );
        let asked = [
            Part::Requester("toronto://chat/slack/U1".into()),
            Part::Requester("toronto://agents/qa/<bob>".into()),
        ];
        assert_eq!(
            render(ChatKind::Slack, &asked),
            "<@U1>agents/qa/&lt;bob&gt;"
        );
        assert_eq!(render(ChatKind::Mattermost, &asked[..1]), "chat/slack/U1");
        assert_eq!(
            reply_block(ChatKind::Slack, "A  B\n<x>  ```"),
            "```\nA  B\n&lt;x&gt;  '''\n```"
        );
    }
}
