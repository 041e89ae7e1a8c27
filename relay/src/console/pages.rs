//! What each GET path shows (shared/contract/console.md §3), read through the documented
//! console views and functions (sql/src/console.sql, docs/console.md "What the pages read") as
//! the signed-in role. Nothing here changes anything.

use super::session::Session;
use super::view::{self, age_only, endpoint_href, state_badge, time};
use super::{database_error, html_response, require, App};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// A column's value, or None when it is NULL (or, defensively, of another type than expected:
/// a page shows "—" rather than failing).
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Option<T> {
    row.try_get::<_, Option<T>>(name).ok().flatten()
}

fn text(row: &Row, name: &str) -> String {
    col::<String>(row, name).unwrap_or_default()
}

fn count(row: &Row, name: &str) -> i64 {
    col::<i64>(row, name).unwrap_or(0)
}

fn at(row: &Row, name: &str) -> Option<SystemTime> {
    col::<SystemTime>(row, name)
}

/// Counts are capped at 1000 by the views (cheap on millions of rows): shown as "1000+".
fn capped(n: i64) -> String {
    if n >= 1000 {
        "1000+".to_owned()
    } else {
        n.to_string()
    }
}

/// `8-4-4-4-12` hex digits: anything else is no event id (checked before the database sees it).
pub(crate) fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A delivery's last outcome in words: `HTTP 500: …`, the error text, or nothing.
fn outcome(status: Option<i32>, error: Option<String>) -> Markup {
    html! {
        @if let Some(error) = error {
            span.error-text { (error) }
        } @else if let Some(status) = status {
            span { "HTTP " (status) }
        } @else {
            span.none { "—" }
        }
    }
}

/// The last delivery's time, from the counts kept 7 days (console_endpoints.last_success_at):
/// none there is not "never".
fn last_success(at: Option<SystemTime>, with_time: bool) -> Markup {
    match at {
        None => html! { span.none { "none in 7 days" } },
        Some(_) if with_time => time(at),
        Some(_) => age_only(at),
    }
}

/// Whether a subscription key's events are about an instance (`ae.test_instance.*`, aggregate
/// type `test_instance`); the operational `ae.endpoint.*` and `ae.delivery.*` events are about
/// an endpoint (aggregate type `endpoint`, its endpoint_id: no instance page).
fn instance_key(subscription_key: &str) -> bool {
    subscription_key.starts_with("ae.test_instance.")
}

/// A small form posting one action (the first step shows a confirmation page).
pub(crate) fn action_button(
    session: &Session,
    action: &str,
    label: &str,
    fields: &[(&str, &str)],
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" { (label) }
        }
    }
}

fn redeliver_button(session: &Session, endpoint: &str, event_id: &str) -> Markup {
    action_button(
        session,
        &format!("{}/redeliver", endpoint_href(endpoint)),
        "Redeliver",
        &[("event_id", event_id)],
    )
}

// ------------------------------------------------------------------------------------------
// `/`

pub async fn endpoints(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = match require(&app, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let rows = session
        .client
        .query(
            "SELECT endpoint, url, state, state_reason, state_since, backlog, oldest_undelivered_at,
                    last_success_at, delivered_last_hour, failed_last_hour, dead_letters,
                    last_failure_at, last_failure_status, last_failure_error
               FROM ae_events.console_endpoints
              ORDER BY endpoint",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let activity = match session
        .client
        .query(
            "SELECT endpoint, delivered, failed FROM ae_events.console_activity(24)
              ORDER BY endpoint, bucket_start",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let mut charts: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for row in &activity {
        charts
            .entry(text(row, "endpoint"))
            .or_default()
            .push((count(row, "delivered"), count(row, "failed")));
    }
    let body = html! {
        h1 { "Endpoints" }
        @if rows.is_empty() {
            p { "No endpoints yet: a DBA creates them with ae_events.create_endpoint(name, url)." }
        } @else {
            table.endpoints {
                thead { tr {
                    th { "Endpoint" } th { "State" } th { "Backlog" } th { "Oldest undelivered" }
                    th { "Last success" } th { "Last hour" } th { "Last 24 h" }
                } }
                tbody {
                    @for row in &rows {
                        @let name = text(row, "endpoint");
                        @let state = text(row, "state");
                        tr class={ "state-" (state) } {
                            td {
                                a.endpoint-name href=(endpoint_href(&name)) { (name) }
                                div.url { (text(row, "url")) }
                            }
                            td {
                                (state_badge(&state))
                                @if state == "failing" {
                                    div.last-failure {
                                        "last: " (outcome(col(row, "last_failure_status"), col(row, "last_failure_error")))
                                        " " (age_only(at(row, "last_failure_at")))
                                    }
                                }
                                @if let Some(reason) = col::<String>(row, "state_reason") {
                                    div.reason { (reason) }
                                }
                            }
                            td.num { (capped(count(row, "backlog")))
                                @if count(row, "dead_letters") > 0 {
                                    div.dead { (capped(count(row, "dead_letters"))) " dead" }
                                }
                            }
                            td { (age_only(at(row, "oldest_undelivered_at"))) }
                            td { (last_success(at(row, "last_success_at"), false)) }
                            td.num {
                                span.delivered { (count(row, "delivered_last_hour")) " delivered" }
                                br;
                                span.failed { (count(row, "failed_last_hour")) " failed" }
                            }
                            td { (view::chart(charts.get(&name).map(Vec::as_slice).unwrap_or(&[]), &name)) }
                        }
                    }
                }
            }
            p.legend { "Chart: deliveries (up) and failed attempts (down) per hour, the last 24 hours, UTC." }
        }
    };
    html_response(
        StatusCode::OK,
        view::page("Endpoints", Some(&session), body),
    )
}

// ------------------------------------------------------------------------------------------
// `/endpoints/{endpoint}`

#[derive(serde::Deserialize)]
pub struct DeliveriesQuery {
    status: Option<String>,
    before: Option<i64>,
}

/// Deliveries per page of the endpoint's list.
const PAGE: i32 = 50;

pub async fn endpoint(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<DeliveriesQuery>,
) -> Response {
    let session = match require(&app, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let client = &session.client;
    let row = match client
        .query_opt(
            "SELECT endpoint, url, state, state_reason, state_since, backlog, oldest_undelivered_at,
                    last_success_at, delivered_last_hour, failed_last_hour, pending, dead_letters,
                    failed_attempts, last_failure_at, last_failure_status, last_failure_error,
                    enabled, subscription_keys, filter, header_names, timeout::text AS timeout,
                    retry_schedule::text AS retry_schedule, retry_jitter,
                    disable_after::text AS disable_after, max_in_flight, rate_limit,
                    alert_after::text AS alert_after, alert_after_attempts, relay,
                    lease_expires_at, created_at
               FROM ae_events.console_endpoints
              WHERE endpoint OPERATOR(pg_catalog.=) $1",
            &[&name],
        )
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => {
            return super::error_page(
                StatusCode::NOT_FOUND,
                Some(&session),
                "No such endpoint",
                &format!("There is no endpoint named {name:?}."),
                None,
            )
        }
        Err(error) => return database_error(&session, &error),
    };
    let status = query
        .status
        .filter(|s| matches!(s.as_str(), "pending" | "delivered" | "dead"));
    let deliveries = match client
        .query(
            "SELECT id, event_id::text AS event_id, subscription_key, instance_id, snapshot_version,
                    occurred_at, status, attempts, last_attempt_at, last_status, last_error,
                    next_attempt_at, delivered_at, dead_at
               FROM ae_events.console_deliveries($1, $2, $3, $4)",
            &[&name, &status, &query.before, &(PAGE + 1)],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let dead = match client
        .query(
            "SELECT id, event_id::text AS event_id, subscription_key, instance_id, snapshot_version,
                    occurred_at, status, attempts, last_attempt_at, last_status, last_error,
                    next_attempt_at, delivered_at, dead_at
               FROM ae_events.console_deliveries($1, 'dead', NULL, 21)",
            &[&name],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let tests = match client
        .query(
            "SELECT webhook_id::text AS webhook_id, subscription_key, requested_by::text AS requested_by,
                    requested_at, status, attempts, last_status, last_error, delivered_at
               FROM ae_events.console_test_events($1, 10)",
            &[&name],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let activity = match client
        .query(
            "SELECT delivered, failed FROM ae_events.console_activity(24, $1) ORDER BY bucket_start",
            &[&name],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let buckets: Vec<(i64, i64)> = activity
        .iter()
        .map(|r| (count(r, "delivered"), count(r, "failed")))
        .collect();
    let acts = session.access.acts();
    let href = endpoint_href(&name);
    let state = text(&row, "state");
    let enabled = col::<bool>(&row, "enabled").unwrap_or(true);
    let more = deliveries.len() > PAGE as usize;
    let shown = &deliveries[..deliveries.len().min(PAGE as usize)];
    let header_names: Vec<String> = col(&row, "header_names").unwrap_or_default();
    let keys: Option<Vec<String>> = col(&row, "subscription_keys");
    let body = html! {
        h1 { "Endpoint " span.name { (name) } " " (state_badge(&state)) }
        section.state {
            @if let Some(reason) = col::<String>(&row, "state_reason") {
                p.reason { (reason) }
            }
            @if let Some(since) = at(&row, "state_since") {
                p { (state) " since " (time(Some(since))) }
            }
            @if state == "failing" {
                p.last-failure {
                    "Last failed attempt: "
                    (outcome(col(&row, "last_failure_status"), col(&row, "last_failure_error")))
                    " " (time(at(&row, "last_failure_at")))
                }
            }
            dl.figures {
                dt { "Backlog" } dd { (capped(count(&row, "backlog"))) }
                dt { "Oldest undelivered" } dd { (time(at(&row, "oldest_undelivered_at"))) }
                dt { "Last success" } dd { (last_success(at(&row, "last_success_at"), true)) }
                dt { "Last hour" } dd { (count(&row, "delivered_last_hour")) " delivered, " (count(&row, "failed_last_hour")) " failed attempts" }
                dt { "Pending" } dd { (capped(count(&row, "pending"))) }
                dt { "Dead letters" } dd { (capped(count(&row, "dead_letters"))) }
                dt { "Failed in a row" } dd { (col::<i32>(&row, "failed_attempts").unwrap_or(0)) }
                dt { "Last 24 h" } dd { (view::chart(&buckets, &name)) }
            }
        }
        @if acts {
            section.actions {
                h2 { "Actions" }
                div.action-row {
                    @if enabled {
                        form.inline method="post" action={ (href) "/disable" } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            input type="text" name="reason" placeholder="reason (optional)" aria-label="reason";
                            button type="submit" { "Disable" }
                        }
                    } @else {
                        (action_button(&session, &format!("{href}/enable"), "Enable", &[]))
                    }
                    form.inline method="post" action={ (href) "/replay" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        label { "Replay from (UTC) " input type="datetime-local" name="since" step="1" required; }
                        button type="submit" { "Replay" }
                    }
                    form.inline method="post" action={ (href) "/test" } {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="text" name="subscription_key" value="ae.test_instance.created" aria-label="subscription key";
                        button type="submit" { "Send test event" }
                    }
                    @if count(&row, "dead_letters") > 0 {
                        (action_button(&session, &format!("{href}/redeliver-dead"), "Redeliver all dead letters", &[]))
                    }
                }
            }
        }
        section {
            h2 { "Dead letters" }
            @if dead.is_empty() {
                p.none { "None." }
            } @else {
                (deliveries_table(&session, &name, &dead[..dead.len().min(20)], acts))
                @if dead.len() > 20 {
                    p { a href={ (href) "?status=dead" } { "All dead letters…" } }
                }
            }
        }
        section {
            h2 { "Deliveries" }
            p.filters {
                "Show: "
                a href=(href) { "all" } " · "
                a href={ (href) "?status=pending" } { "pending" } " · "
                a href={ (href) "?status=delivered" } { "delivered" } " · "
                a href={ (href) "?status=dead" } { "dead" }
            }
            @if shown.is_empty() {
                p.none { "None." }
            } @else {
                (deliveries_table(&session, &name, shown, acts))
            }
            @if more {
                @if let Some(last) = shown.last().and_then(|r| col::<i64>(r, "id")) {
                    p { a.next href={ (href) "?before=" (last) @if let Some(status) = &status { "&status=" (status) } } { "Older deliveries…" } }
                }
            }
        }
        @if !tests.is_empty() {
            section {
                h2 { "Test events" }
                table {
                    thead { tr { th { "Webhook id" } th { "Key" } th { "Requested" } th { "Status" } th { "Attempts" } th { "Last outcome" } } }
                    tbody {
                        @for t in &tests {
                            tr {
                                td { a href={ "/events/" (text(t, "webhook_id")) } { (text(t, "webhook_id")) } }
                                td { (text(t, "subscription_key")) }
                                td { (text(t, "requested_by")) " " (age_only(at(t, "requested_at"))) }
                                td { (state_badge(&text(t, "status"))) }
                                td.num { (col::<i32>(t, "attempts").unwrap_or(0)) }
                                td { (outcome(col(t, "last_status"), col(t, "last_error"))) }
                            }
                        }
                    }
                }
            }
        }
        section.settings {
            h2 { "Settings" }
            dl {
                dt { "URL" } dd { (text(&row, "url")) }
                dt { "Subscription keys" } dd {
                    @match &keys { Some(keys) => { (keys.join(", ")) }, None => { "every ae.test_instance.* key" } }
                }
                dt { "Filter" } dd { (col::<String>(&row, "filter").unwrap_or_else(|| "none".to_owned())) }
                dt { "Header names" } dd {
                    @if header_names.is_empty() { "none" } @else { (header_names.join(", ")) }
                }
                dt { "Timeout" } dd { (text(&row, "timeout")) }
                dt { "Retry schedule" } dd { (text(&row, "retry_schedule")) }
                dt { "Retry jitter" } dd { (col::<f64>(&row, "retry_jitter").unwrap_or(0.0)) }
                dt { "Disable after" } dd { (text(&row, "disable_after")) }
                dt { "Max in flight" } dd { (col::<i32>(&row, "max_in_flight").unwrap_or(0)) }
                dt { "Rate limit" } dd {
                    @match col::<f64>(&row, "rate_limit") { Some(r) => { (r) " requests/s" }, None => { "none" } }
                }
                dt { "Alert after" } dd { (text(&row, "alert_after")) " or " (col::<i32>(&row, "alert_after_attempts").unwrap_or(0)) " attempts" }
                dt { "Relay" } dd {
                    @match col::<String>(&row, "relay") { Some(r) => { (r) " (lease " (age_only(at(&row, "lease_expires_at"))) ")" }, None => { "none" } }
                }
                dt { "Created" } dd { (time(at(&row, "created_at"))) }
            }
        }
    };
    html_response(StatusCode::OK, view::page(&name, Some(&session), body))
}

fn deliveries_table(session: &Session, endpoint: &str, rows: &[Row], acts: bool) -> Markup {
    html! {
        table.deliveries {
            thead { tr {
                th { "Event" } th { "Instance" } th { "Key" } th { "Occurred" } th { "Status" }
                th { "Attempts" } th { "Last outcome" } th { "Next / done" }
                @if acts { th {} }
            } }
            tbody {
                @for r in rows {
                    @let event_id = text(r, "event_id");
                    @let status = text(r, "status");
                    @let key = text(r, "subscription_key");
                    tr {
                        td { a.event href={ "/events/" (event_id) } { (event_id.get(..8).unwrap_or(&event_id)) "…" } }
                        td {
                            @if let Some(instance) = col::<i64>(r, "instance_id") {
                                @if instance_key(&key) {
                                    a href={ "/instances/" (instance) } { (instance) }
                                } @else {
                                    "endpoint " (instance)
                                }
                                " v" (col::<i32>(r, "snapshot_version").unwrap_or(0))
                            }
                        }
                        td { (key) }
                        td { (age_only(at(r, "occurred_at"))) }
                        td { (state_badge(&status)) }
                        td.num { (col::<i32>(r, "attempts").unwrap_or(0)) }
                        td { (outcome(col(r, "last_status"), col(r, "last_error"))) }
                        td {
                            @match status.as_str() {
                                "pending" => { "next " (age_only(at(r, "next_attempt_at"))) },
                                "delivered" => { (age_only(at(r, "delivered_at"))) },
                                "dead" => { (age_only(at(r, "dead_at"))) },
                                _ => {},
                            }
                        }
                        @if acts {
                            td { @if status != "pending" { (redeliver_button(session, endpoint, &event_id)) } }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// `/events/{event_id}`

pub async fn event(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Response {
    let session = match require(&app, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let not_found = || {
        super::error_page(
            StatusCode::NOT_FOUND,
            Some(&session),
            "No such event",
            &format!("There is no event with the id {event_id:?}."),
            None,
        )
    };
    if !is_uuid(&event_id) {
        return not_found();
    }
    let client = &session.client;
    let event = match client
        .query_opt(
            "SELECT id, event_id::text AS event_id, subscription_key, event_type, aggregate_type,
                    instance_id, snapshot_version, occurred_at, payload::text AS payload,
                    payload_expired, is_test, test_endpoint, requested_by::text AS requested_by
               FROM ae_events.console_event($1::text::uuid)",
            &[&event_id],
        )
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(),
        Err(error) => return database_error(&session, &error),
    };
    let deliveries = match client
        .query(
            "SELECT endpoint, status, attempts, first_attempt_at, last_attempt_at, last_status,
                    last_error, next_attempt_at, delivered_at, dead_at
               FROM ae_events.console_event_deliveries($1::text::uuid)",
            &[&event_id],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let attempts = match client
        .query(
            "SELECT endpoint, attempt, attempted_at, duration_ms, outcome, http_status, error
               FROM ae_events.console_attempts($1::text::uuid)",
            &[&event_id],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let is_test = col::<bool>(&event, "is_test").unwrap_or(false);
    let aggregate_type = text(&event, "aggregate_type");
    let acts = session.access.acts() && !is_test;
    let payload = view::pretty_json(&text(&event, "payload"));
    let body = html! {
        h1 { "Event " span.name { (event_id) } }
        dl.figures {
            dt { "Subscription key" } dd { (text(&event, "subscription_key")) }
            @if let Some(id) = col::<i64>(&event, "instance_id") {
                @if aggregate_type == "test_instance" && !is_test {
                    dt { "Instance" } dd { a href={ "/instances/" (id) } { (id) } }
                } @else {
                    // An operational event's endpoint, or a test event's made-up instance:
                    // no instance page to link.
                    dt { "About" } dd { (aggregate_type) " " (id) }
                }
            }
            dt { "Version" } dd { (col::<i32>(&event, "snapshot_version").unwrap_or(0)) }
            dt { "Occurred" } dd { (time(at(&event, "occurred_at"))) }
            @if is_test {
                dt { "Test event" } dd {
                    "sent to "
                    @if let Some(endpoint) = col::<String>(&event, "test_endpoint") {
                        a href=(endpoint_href(&endpoint)) { (endpoint) }
                    }
                    " by " (text(&event, "requested_by"))
                }
            }
        }
        section {
            h2 { "Deliveries" }
            @if deliveries.is_empty() {
                p.none { "No endpoint receives this event." }
            }
            @for d in &deliveries {
                @let endpoint = text(d, "endpoint");
                @let status = text(d, "status");
                div.delivery {
                    h3 {
                        a href=(endpoint_href(&endpoint)) { (endpoint) } " " (state_badge(&status))
                        @if acts && (status == "delivered" || status == "dead") {
                            " " (redeliver_button(&session, &endpoint, &event_id))
                        }
                    }
                    p {
                        (col::<i32>(d, "attempts").unwrap_or(0)) " attempts"
                        @if status == "delivered" { "; delivered " (time(at(d, "delivered_at"))) }
                        @if status == "dead" { "; dead-lettered " (time(at(d, "dead_at"))) }
                        @if status == "pending" { "; next attempt " (time(at(d, "next_attempt_at"))) }
                        @if status == "waiting" { "; not attempted yet (the relay has not reached it)" }
                    }
                    @let mine: Vec<&Row> = attempts.iter().filter(|a| text(a, "endpoint") == endpoint).collect();
                    @if !mine.is_empty() {
                        table.attempts {
                            thead { tr { th { "#" } th { "Time" } th { "Outcome" } th { "HTTP status" } th { "Error" } th { "Duration" } } }
                            tbody {
                                @for a in mine {
                                    tr {
                                        td.num { (col::<i32>(a, "attempt").map(|n| n.to_string()).unwrap_or_default()) }
                                        td { (time(at(a, "attempted_at"))) }
                                        td { (state_badge(&text(a, "outcome"))) }
                                        td { (col::<i32>(a, "http_status").map(|n| n.to_string()).unwrap_or_default()) }
                                        td.error-text { (text(a, "error")) }
                                        td.num { (col::<i32>(a, "duration_ms").map(|n| format!("{n} ms")).unwrap_or_default()) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Payload" }
            @if col::<bool>(&event, "payload_expired").unwrap_or(false) {
                p.none { "Expired (ae_events.payload_retention): the event's metadata and deliveries are kept." }
            } @else {
                pre.payload { (payload) }
            }
        }
    };
    html_response(StatusCode::OK, view::page("Event", Some(&session), body))
}

// ------------------------------------------------------------------------------------------
// `/instances/{instance_id}`

#[derive(serde::Deserialize)]
pub struct InstanceQuery {
    after: Option<i64>,
}

/// Events per page of an instance.
const INSTANCE_PAGE: i32 = 50;

pub async fn instance(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(instance): Path<String>,
    Query(query): Query<InstanceQuery>,
) -> Response {
    let session = match require(&app, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let Ok(instance) = instance.parse::<i64>() else {
        return super::error_page(
            StatusCode::NOT_FOUND,
            Some(&session),
            "No such instance",
            &format!("{instance:?} is not an instance id (a number)."),
            None,
        );
    };
    let rows = match session
        .client
        .query(
            "SELECT id, event_id::text AS event_id, subscription_key, snapshot_version, occurred_at,
                    payload_expired, endpoint, status, attempts, last_attempt_at, last_status,
                    last_error, next_attempt_at, delivered_at, dead_at
               FROM ae_events.console_instance($1, $2, $3)",
            &[&instance, &query.after, &INSTANCE_PAGE],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    // One group per event, in the order given (version, id).
    let mut events: Vec<(i64, Vec<&Row>)> = Vec::new();
    for row in &rows {
        let id = col::<i64>(row, "id").unwrap_or(0);
        match events.last_mut() {
            Some((last, group)) if *last == id => group.push(row),
            _ => events.push((id, vec![row])),
        }
    }
    let acts = session.access.acts();
    let body = html! {
        h1 { "Instance " span.name { (instance) } }
        @if events.is_empty() {
            p.none { "No events for this instance." }
        }
        @for (_, group) in &events {
            @let first = group[0];
            @let event_id = text(first, "event_id");
            section.event {
                h2 {
                    "v" (col::<i32>(first, "snapshot_version").unwrap_or(0)) " "
                    (text(first, "subscription_key")) " "
                    a href={ "/events/" (event_id) } { (event_id) }
                }
                p { "occurred " (time(at(first, "occurred_at")))
                    @if col::<bool>(first, "payload_expired").unwrap_or(false) { " (payload expired)" } }
                table.deliveries {
                    thead { tr { th { "Endpoint" } th { "Status" } th { "Attempts" } th { "Last outcome" } th { "When" } @if acts { th {} } } }
                    tbody {
                        @for d in group {
                            @if let Some(endpoint) = col::<String>(d, "endpoint") {
                                @let status = text(d, "status");
                                tr {
                                    td { a href=(endpoint_href(&endpoint)) { (endpoint) } }
                                    td { (state_badge(&status)) }
                                    td.num { (col::<i32>(d, "attempts").unwrap_or(0)) }
                                    td { (outcome(col(d, "last_status"), col(d, "last_error"))) }
                                    td {
                                        @match status.as_str() {
                                            "pending" => { "next " (age_only(at(d, "next_attempt_at"))) },
                                            "delivered" => { (time(at(d, "delivered_at"))) },
                                            "dead" => { (time(at(d, "dead_at"))) },
                                            _ => { "not attempted yet" },
                                        }
                                    }
                                    @if acts {
                                        td { @if status == "delivered" || status == "dead" { (redeliver_button(&session, &endpoint, &event_id)) } }
                                    }
                                }
                            } @else {
                                tr { td colspan="5" { "No endpoint receives this event." } }
                            }
                        }
                    }
                }
            }
        }
        @if events.len() >= INSTANCE_PAGE as usize {
            @if let Some((last, _)) = events.last() {
                p { a.next href={ "/instances/" (instance) "?after=" (last) } { "Later versions…" } }
            }
        }
    };
    html_response(
        StatusCode::OK,
        view::page(&format!("Instance {instance}"), Some(&session), body),
    )
}

// ------------------------------------------------------------------------------------------
// `/search?q=`

#[derive(serde::Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

fn search_href(kind: &str, key: &str) -> Option<String> {
    match kind {
        "event" if is_uuid(key) => Some(format!("/events/{key}")),
        "instance" => key.parse::<i64>().ok().map(|id| format!("/instances/{id}")),
        "endpoint" => Some(endpoint_href(key)),
        _ => None,
    }
}

pub async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Response {
    let session = match require(&app, &headers) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let q = query.q.trim().replace('\0', "");
    let rows = match session
        .client
        .query(
            "SELECT kind, key, label FROM ae_events.console_search($1)",
            &[&q],
        )
        .await
    {
        Ok(rows) => rows,
        Err(error) => return database_error(&session, &error),
    };
    let found: Vec<(String, String, String)> = rows
        .iter()
        .filter_map(|r| {
            let href = search_href(&text(r, "kind"), &text(r, "key"))?;
            Some((href, text(r, "kind"), text(r, "label")))
        })
        .collect();
    if let [(href, _, _)] = found.as_slice() {
        return Redirect::to(href).into_response();
    }
    let body = html! {
        h1 { "Search" }
        p { "For " q.query { (q) } ":" }
        @if found.is_empty() {
            p.none { "Nothing found: try an event id, an instance id or an endpoint name." }
        } @else {
            ul.results {
                @for (href, kind, label) in &found {
                    li { span.kind { (kind) } " " a href=(href) { (label) } }
                }
            }
        }
    };
    html_response(StatusCode::OK, view::page("Search", Some(&session), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_links() {
        assert!(is_uuid("0a1b2c3d-0000-4000-8000-00000000abcd"));
        assert!(!is_uuid("0a1b2c3d-0000-4000-8000-00000000abc"));
        assert!(!is_uuid("0a1b2c3d00000-4000-8000-00000000abcd"));
        assert!(!is_uuid("../../etc/passwd-0000-4000-8000-00000"));
        assert_eq!(
            search_href("instance", "789").as_deref(),
            Some("/instances/789")
        );
        assert_eq!(search_href("event", "x"), None);
        assert_eq!(
            search_href("endpoint", "a b").as_deref(),
            Some("/endpoints/a%20b")
        );
        assert_eq!(capped(1000), "1000+");
        assert!(instance_key("ae.test_instance.updated"));
        assert!(!instance_key("ae.endpoint.disabled"));
        assert!(!instance_key("ae.delivery.dead_lettered"));
    }
}
