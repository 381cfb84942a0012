//! Standard output that never panics on a closed pipe (`toronto run help | head -1`):
//! the crate's `println!` and `print!` are shadowed by macros that write here, and a
//! broken pipe ends the process quietly with status 0, as the reader asked for no more.
//! Also the `--output` formats every command shares.

use std::fmt;
use std::io::Write;

/// How a command prints its result: the same three choices on every command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text and tables, as chat shows them.
    #[default]
    Table,
    /// The result (a reply envelope, an event envelope, a list) as JSON.
    Json,
    /// The same document as [`Output::Json`], as YAML.
    Yaml,
}

impl Output {
    /// `value` in this format; `table` is called for [`Output::Table`]. JSON is pretty
    /// unless `compact` (one line per document, as `watch` streams them).
    pub fn render(
        self,
        value: &serde_json::Value,
        compact: bool,
        table: impl FnOnce() -> String,
    ) -> String {
        match self {
            Output::Table => table(),
            Output::Json if compact => serde_json::to_string(value).unwrap_or_default(),
            Output::Json => serde_json::to_string_pretty(value).unwrap_or_default(),
            Output::Yaml => {
                // A stream of YAML documents: each one starts with `---`.
                let text = serde_yaml_ng::to_string(value).unwrap_or_default();
                format!("---\n{}", text.trim_end())
            }
        }
    }
}

/// Writes `args` to standard output; a closed pipe exits quietly with status 0.
pub fn write(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Any other failure to print (a full disk) is reported once, then the same.
        let _ = writeln!(
            std::io::stderr(),
            "error: cannot write to standard output: {e}"
        );
        std::process::exit(1);
    }
}
