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
        // serde_json escapes the C0 controls but writes C1 ones (U+0080 to U+009F, of which
        // U+009B is a terminal's CSI) as they are: those are escaped on the way out.
        Format::Json => logs
            .json()
            .with_writer(|| EscapeC1(std::io::stderr()))
            .init(),
    }
}

/// Writes JSON lines with the C1 control characters (UTF-8 `C2 80` to `C2 9F`) as `\u00XX`
/// escapes, which mean the same inside a JSON string (they cannot occur outside one).
struct EscapeC1<W>(W);

impl<W: std::io::Write> std::io::Write for EscapeC1<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_c1(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn escape_c1(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let is_c1 = |pair: &[u8]| pair[0] == 0xC2 && (0x80..=0x9F).contains(&pair[1]);
    if !bytes.windows(2).any(is_c1) {
        return std::borrow::Cow::Borrowed(bytes);
    }
    let mut escaped = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i..i + 2) {
            Some(pair) if is_c1(pair) => {
                escaped.extend_from_slice(format!("\\u{:04x}", pair[1]).as_bytes());
                i += 2;
            }
            _ => {
                escaped.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(escaped)
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

    #[test]
    fn c1_controls_are_escaped_in_json_lines() {
        let line = "{\"endpoint\":\"a\u{9b}2Jb\u{85}é\"}\n";
        let escaped = escape_c1(line.as_bytes()).into_owned();
        let escaped = String::from_utf8(escaped).unwrap();
        assert_eq!(escaped, "{\"endpoint\":\"a\\u009b2Jb\\u0085é\"}\n");
        let value: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(value["endpoint"], "a\u{9b}2Jb\u{85}é");
        assert!(matches!(escape_c1(b"plain"), std::borrow::Cow::Borrowed(_)));
    }
}
