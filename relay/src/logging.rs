//! The relay's logs on stderr: human-readable lines or one JSON object per line.
//!
//! Field values come from the database and from receivers (endpoint names, URLs, error texts):
//! in the human format every value is written with its control characters escaped (`\n`,
//! `\u{1b}`), so that no value can start a line of its own or drive the terminal. This is done
//! by the field formatter, not by each call site, so that it holds for fields added later. JSON
//! lines are escaped by serde_json (control characters as `\u00XX`).

use std::fmt::{self, Write as _};
use tracing_subscriber::field::MakeExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Install the subscriber: the filter from `AE_RELAY_LOG` (default `info`), stderr.
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AE_RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or journal gets no escape sequences at all.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        Format::Human => logs
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
                    let text = format!("{value:?}");
                    if field.name() == "message" {
                        write!(writer, "{}", Escaped(&text))
                    } else {
                        write!(writer, "{}={}", field.name(), Escaped(&text))
                    }
                })
                .delimited(" "),
            )
            .init(),
        Format::Json => logs.json().init(),
    }
}

/// Characters that could forge a line or steer a terminal when written raw: C0 and C1 controls
/// (newline, carriage return, escape, ...), DEL, the Unicode line and paragraph separators, and
/// the bidirectional overrides and isolates (which reorder what a reader sees).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A text written with its unsafe characters escaped: `\n`, `\r`, `\t`, else `\u{XX}`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(is_unsafe_char) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or('\u{FFFD}');
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// The text with its unsafe characters escaped.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    let _ = write!(escaped, "{}", Escaped(text));
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(
            escape("a\nFAKE ERROR line\r\t\u{1b}[2J\u{0}\u{7f}\u{9b}é\u{2028}\u{202e}z"),
            "a\\nFAKE ERROR line\\r\\t\\u{1b}[2J\\u{0}\\u{7f}\\u{9b}é\\u{2028}\\u{202e}z"
        );
        assert_eq!(escape("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(escape(""), "");
    }
}
