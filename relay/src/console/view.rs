//! The pages' frame and the pieces every page uses: the layout, times in UTC with their age,
//! links with percent-encoded names, and the 24-hour chart as inline SVG. Everything goes
//! through maud, which escapes every value it interpolates: names, URLs, error texts and
//! payloads are text, never markup.

use super::session::Session;
use maud::{html, Markup, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The stylesheet, compiled into the binary (no CDN, no file to deploy).
pub const CSS: &str = include_str!("console.css");

/// A path segment: everything but unreserved characters percent-encoded (an endpoint name may
/// hold `/`, `?`, `#` or anything else).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

pub fn endpoint_href(endpoint: &str) -> String {
    format!("/endpoints/{}", segment(endpoint))
}

/// A whole page: header with search and the signed-in role, then the body.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ae_events console" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    a.brand href="/" { "ae_events console" }
                    @if let Some(session) = session {
                        form.search method="get" action="/search" {
                            input type="search" name="q" placeholder="event id, instance id or endpoint" aria-label="search";
                            button type="submit" { "Search" }
                        }
                        form.signout method="post" action="/logout" {
                            span.role { (session.role) " (" (session.access.label()) ")" }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page's body: what went wrong, in words.
pub fn error_body(heading: &str, message: &str, detail: Option<&str>) -> Markup {
    html! {
        section.error {
            h1 { (heading) }
            p.message { (message) }
            @if let Some(detail) = detail { p.detail { (detail) } }
            p { a href="/" { "Back to the endpoints" } }
        }
    }
}

/// `2026-12-05 11:59:38 UTC` and, beside it, `3 min ago` (or `in 5 s`).
pub fn time(at: Option<SystemTime>) -> Markup {
    match at {
        None => html! { span.none { "—" } },
        Some(at) => html! {
            time datetime=(utc(at, true)) { (utc(at, false)) }
            " " span.age { "(" (age(at, SystemTime::now())) ")" }
        },
    }
}

/// Just the age (`3 min ago`), for tables.
pub fn age_only(at: Option<SystemTime>) -> Markup {
    match at {
        None => html! { span.none { "—" } },
        Some(at) => html! { span title=(utc(at, false)) { (age(at, SystemTime::now())) } },
    }
}

/// A time in UTC: `2026-12-05 11:59:38 UTC`, or RFC 3339 (`2026-12-05T11:59:38Z`).
pub fn utc(at: SystemTime, rfc3339: bool) -> String {
    let seconds = match at.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if rfc3339 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
    }
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `just now`, `42 s ago`, `3 min ago`, `5 h ago`, `2 d ago`; `in 5 s` for a time to come.
pub fn age(at: SystemTime, now: SystemTime) -> String {
    let (span, future) = match now.duration_since(at) {
        Ok(span) => (span, false),
        Err(ahead) => (ahead.duration(), true),
    };
    let text = short_duration(span);
    if span < Duration::from_secs(1) {
        "just now".to_owned()
    } else if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn short_duration(span: Duration) -> String {
    let s = span.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// A state badge: `healthy`, `failing`, `disabled` (the class colours it).
pub fn state_badge(state: &str) -> Markup {
    let class = match state {
        "healthy" | "delivered" => "ok",
        "failing" | "dead" => "bad",
        _ => "quiet",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

/// One bar pair per bucket: deliveries (up) and failures (down from the axis), as inline SVG.
/// Only numbers computed here go into the markup (maud escapes them anyway).
pub fn chart(buckets: &[(i64, i64)], label: &str) -> Markup {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 40.0;
    let most = buckets
        .iter()
        .map(|(delivered, failed)| (*delivered).max(*failed))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = WIDTH / buckets.len().max(1) as f64;
    let half = HEIGHT / 2.0;
    let total_delivered: i64 = buckets.iter().map(|b| b.0).sum();
    let total_failed: i64 = buckets.iter().map(|b| b.1).sum();
    let title = format!("{label}: {total_delivered} delivered, {total_failed} failed");
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(title) {
            title { (title) }
            line x1="0" y1=(half) x2=(WIDTH) y2=(half) class="axis" {}
            @for (i, (delivered, failed)) in buckets.iter().enumerate() {
                @let x = format!("{:.1}", i as f64 * slot + 0.5);
                @let w = format!("{:.1}", (slot - 1.0).max(0.5));
                @if *delivered > 0 {
                    @let h = (*delivered as f64 / most * (half - 1.0)).max(1.0);
                    rect.delivered x=(x) y=(format!("{:.1}", half - h)) width=(w) height=(format!("{h:.1}")) {}
                }
                @if *failed > 0 {
                    @let h = (*failed as f64 / most * (half - 1.0)).max(1.0);
                    rect.failed x=(x) y=(half) width=(w) height=(format!("{h:.1}")) {}
                }
            }
        }
    }
}

/// A payload as stored, pretty-printed (escaped by maud like any text).
pub fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_and_age() {
        let at = UNIX_EPOCH + Duration::from_secs(1_796_471_978);
        assert_eq!(utc(at, false), "2026-12-05 11:59:38 UTC");
        assert_eq!(utc(at, true), "2026-12-05T11:59:38Z");
        assert_eq!(utc(UNIX_EPOCH, true), "1970-01-01T00:00:00Z");
        assert_eq!(age(at, at + Duration::from_secs(180)), "3 min ago");
        assert_eq!(age(at + Duration::from_secs(5), at), "in 5 s");
        assert_eq!(age(at, at), "just now");
        assert_eq!(segment("a/b c?<x>"), "a%2Fb%20c%3F%3Cx%3E");
    }

    #[test]
    fn markup_is_escaped() {
        let text = chart(&[(1, 0), (0, 2)], "<script>").into_string();
        assert!(!text.contains("<script>"), "{text}");
        assert!(text.contains("&lt;script&gt;"));
    }
}
