//! A small Markdown renderer for postmortems: headings, bullet and numbered lists,
//! tables and code blocks kept as preformatted text, paragraphs. Every character of the
//! source is escaped; the only markup is what this renderer writes.

use std::fmt::Write as _;

use crate::html::E;

/// Renders `md` as HTML.
pub fn render(md: &str) -> String {
    let mut out = String::with_capacity(md.len() * 2);
    let mut list: Option<&str> = None;
    let mut para = false;
    let mut pre = false;
    let close = |out: &mut String, list: &mut Option<&str>, para: &mut bool| {
        if let Some(tag) = list.take() {
            let _ = write!(out, "</{tag}>");
        }
        if *para {
            out.push_str("</p>");
            *para = false;
        }
    };
    for line in md.lines() {
        let t = line.trim_end();
        if t.trim_start().starts_with("```") {
            close(&mut out, &mut list, &mut para);
            out.push_str(if pre { "</pre>" } else { "<pre>" });
            pre = !pre;
            continue;
        }
        if pre {
            let _ = writeln!(out, "{}", E(t));
            continue;
        }
        let s = t.trim_start();
        if s.is_empty() {
            close(&mut out, &mut list, &mut para);
        } else if let Some(level) = heading(s) {
            close(&mut out, &mut list, &mut para);
            let text = s[level..].trim();
            let h = (level + 1).min(6);
            let _ = write!(out, "<h{h}>{}</h{h}>", E(text));
        } else if let Some(item) = s.strip_prefix("- ").or_else(|| s.strip_prefix("* ")) {
            item_in(&mut out, &mut list, &mut para, "ul", item);
        } else if let Some(item) = numbered(s) {
            item_in(&mut out, &mut list, &mut para, "ol", item);
        } else if s.starts_with('|') {
            close(&mut out, &mut list, &mut para);
            let _ = write!(out, "<pre class=\"table\">{}</pre>", E(s));
        } else {
            if list.is_some() {
                close(&mut out, &mut list, &mut para);
            }
            if para {
                out.push(' ');
            } else {
                out.push_str("<p>");
                para = true;
            }
            let _ = write!(out, "{}", E(s));
        }
    }
    close(&mut out, &mut list, &mut para);
    if pre {
        out.push_str("</pre>");
    }
    out
}

fn heading(s: &str) -> Option<usize> {
    let level = s.chars().take_while(|c| *c == '#').count();
    (1..=6)
        .contains(&level)
        .then_some(level)
        .filter(|l| s[*l..].starts_with(' '))
}

fn numbered(s: &str) -> Option<&str> {
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    s[digits..].strip_prefix(". ")
}

fn item_in<'a>(
    out: &mut String,
    list: &mut Option<&'a str>,
    para: &mut bool,
    tag: &'a str,
    item: &str,
) {
    if *para {
        out.push_str("</p>");
        *para = false;
    }
    if *list != Some(tag) {
        if let Some(old) = list.take() {
            let _ = write!(out, "</{old}>");
        }
        let _ = write!(out, "<{tag}>");
        *list = Some(tag);
    }
    let _ = write!(out, "<li>{}</li>", E(item));
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn renders_structure_and_escapes_everything() {
        let html = render(
            "# Postmortem: <b>shop</b>\n\nIt broke.\nBadly.\n\n- one\n- <script>x</script>\n1. first\n\n| a | b |\n```\ncode <x>\n```\n",
        );
        assert_eq!(
            html,
            "<h2>Postmortem: &lt;b&gt;shop&lt;/b&gt;</h2><p>It broke. Badly.</p>\
             <ul><li>one</li><li>&lt;script&gt;x&lt;/script&gt;</li></ul><ol><li>first</li></ol>\
             <pre class=\"table\">| a | b |</pre><pre>code &lt;x&gt;\n</pre>"
        );
    }
}
