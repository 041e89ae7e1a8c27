//! The POSTs: each action asks for confirmation first (a page with a second form, no script),
//! then calls the SQL API as the signed-in role and says what it did. The console checks only
//! the session, the CSRF token and the origin: whether the role may do it is the database's
//! answer (a reader gets 42501, shown as an error page).

use super::pages::{action_button, is_uuid};
use super::session::Session;
use super::view::{self, endpoint_href};
use super::{check_post, database_error, error_page, html_response, App};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use std::sync::Arc;

#[derive(serde::Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    /// Present on the confirmation page's form: do it.
    confirm: Option<String>,
    event_id: Option<String>,
    since: Option<String>,
    reason: Option<String>,
    subscription_key: Option<String>,
}

/// What an action does, before and after.
struct Action {
    endpoint: String,
    /// The path the forms post to (below the endpoint's).
    path: &'static str,
    /// "Redeliver event … to endpoint …?"
    question: String,
    /// The fields the confirmation repeats.
    fields: Vec<(&'static str, String)>,
}

fn confirm_page(session: &Session, action: &Action) -> Response {
    let target = format!("{}/{}", endpoint_href(&action.endpoint), action.path);
    let mut fields: Vec<(&str, &str)> = action
        .fields
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    fields.push(("confirm", "yes"));
    let body = html! {
        section.confirm {
            h1 { "Confirm" }
            p.question { (action.question) }
            div.action-row {
                (action_button(session, &target, "Confirm", &fields))
                a.cancel href=(endpoint_href(&action.endpoint)) { "Cancel" }
            }
        }
    };
    html_response(StatusCode::OK, view::page("Confirm", Some(session), body))
}

/// What the action did, and what the database said it left out (its notices: e.g. dead
/// letters whose payload expired are not sent again).
fn done_page(session: &Session, endpoint: &str, message: Markup, notices: &[String]) -> Response {
    let body = html! {
        section.done {
            h1 { "Done" }
            p.result role="status" {
                (message)
                @if !notices.is_empty() { " Left out, as the database says:" }
            }
            @if !notices.is_empty() {
                ul.notices {
                    @for notice in notices { li { (notice) } }
                }
            }
            p { a href=(endpoint_href(endpoint)) { "Back to endpoint " (endpoint) } }
        }
    };
    html_response(StatusCode::OK, view::page("Done", Some(session), body))
}

fn bad_request(session: &Session, message: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        Some(session),
        "Cannot do that",
        message,
        None,
    )
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The shared steps: checks, then the confirmation page, or `run` once confirmed: its SQL
/// call, whose message the done page shows with the notices the call raised.
async fn act<F, Fut>(
    app: &App,
    headers: &HeaderMap,
    form: &ActionForm,
    action: Result<Action, &str>,
    run: F,
) -> Response
where
    F: FnOnce(Arc<Session>) -> Fut,
    Fut: std::future::Future<Output = Result<Markup, tokio_postgres::Error>>,
{
    let session = match check_post(app, headers, form.csrf.as_deref()) {
        Ok(session) => session,
        Err(response) => return response,
    };
    let action = match action {
        Ok(action) => action,
        Err(message) => return bad_request(&session, message),
    };
    if form.confirm.as_deref() != Some("yes") {
        return confirm_page(&session, &action);
    }
    // One action at a time per session, so that the notices taken are this call's: they
    // arrive on the connection before its result does.
    let _acting = session.acting.lock().await;
    session.clear_notices();
    let done = run(session.clone()).await;
    let notices = session.take_notices();
    match done {
        Ok(message) => done_page(&session, &action.endpoint, message, &notices),
        Err(error) => database_error(&session, &error),
    }
}

pub async fn redeliver(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let event_id = form.event_id.clone().unwrap_or_default();
    act(
        &app,
        &headers,
        &form,
        if is_uuid(&event_id) {
            Ok(Action {
                endpoint: endpoint.clone(),
                path: "redeliver",
                question: format!(
                    "Send event {event_id} to endpoint {endpoint} again (same webhook-id)?"
                ),
                fields: vec![("event_id", event_id.clone())],
            })
        } else {
            Err("Redeliver needs an event id.")
        },
        |session| async move {
            let row = session
                .client
                .query_one(
                    "SELECT ae_events.redeliver($1, ARRAY[$2::text::uuid])",
                    &[&endpoint, &event_id],
                )
                .await?;
            let n: i64 = row.try_get(0).unwrap_or(0);
            Ok(html! {
                "Queued " (plural(n, "delivery", "deliveries")) " again: event "
                a href={ "/events/" (event_id) } { (event_id) }
                " goes to " (endpoint) " again with its webhook-id."
            })
        },
    )
    .await
}

pub async fn redeliver_dead(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        Ok(Action {
                endpoint: endpoint.clone(),
                path: "redeliver-dead",
                question: format!(
                    "Send every dead letter of endpoint {endpoint} again (same webhook-ids)?"
                ),
                fields: Vec::new(),
        }),
        |session| async move {
            let row = session
                .client
                .query_one("SELECT ae_events.redeliver_dead_letters($1)", &[&endpoint])
                .await?;
            let n: i64 = row.try_get(0).unwrap_or(0);
            Ok(html! { "Queued " (plural(n, "dead letter", "dead letters")) " of " (endpoint) " again." })
        },
    )
    .await
}

pub async fn replay(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    // A browser's datetime-local value (2026-12-05T10:00[:00]), read as UTC by the database.
    let since = form.since.clone().unwrap_or_default().trim().to_owned();
    act(
        &app,
        &headers,
        &form,
        if since.is_empty() {
            Err("Replay needs a start time (UTC).")
        } else {
            Ok(Action {
                endpoint: endpoint.clone(),
                path: "replay",
                question: format!(
                    "Send endpoint {endpoint} every event since {since} UTC again?"
                ),
                fields: vec![("since", since.clone())],
            })
        },
        |session| async move {
            let row = session
                .client
                .query_one(
                    "SELECT ae_events.replay_endpoint($1, pg_catalog.timezone('UTC', $2::text::timestamp))",
                    &[&endpoint, &since],
                )
                .await?;
            let n: i64 = row.try_get(0).unwrap_or(0);
            Ok(html! { "Queued " (plural(n, "delivery", "deliveries")) " again: " (endpoint) " gets every event since " (since) " UTC." })
        },
    )
    .await
}

pub async fn enable(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &app,
        &headers,
        &form,
        Ok(Action {
            endpoint: endpoint.clone(),
            path: "enable",
            question: format!("Enable endpoint {endpoint}?"),
            fields: Vec::new(),
        }),
        |session| async move {
            session
                .client
                .execute("SELECT ae_events.enable_endpoint($1)", &[&endpoint])
                .await?;
            Ok(html! { "Enabled " (endpoint) ": its relay delivers to it again." })
        },
    )
    .await
}

pub async fn disable(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let reason = form
        .reason
        .clone()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    act(
        &app,
        &headers,
        &form,
        Ok(Action {
            endpoint: endpoint.clone(),
            path: "disable",
            question: format!(
                "Disable endpoint {endpoint}{}? Its events wait until it is enabled again.",
                reason
                    .as_deref()
                    .map(|r| format!(" (reason: {r})"))
                    .unwrap_or_default()
            ),
            fields: reason.iter().map(|r| ("reason", r.clone())).collect(),
        }),
        |session| async move {
            session
                .client
                .execute(
                    "SELECT ae_events.disable_endpoint($1, $2)",
                    &[&endpoint, &reason],
                )
                .await?;
            Ok(html! { "Disabled " (endpoint) ": no more requests until it is enabled." })
        },
    )
    .await
}

pub async fn send_test(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(endpoint): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let key = form
        .subscription_key
        .clone()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "ae.test_instance.created".to_owned());
    act(
        &app,
        &headers,
        &form,
        Ok(Action {
            endpoint: endpoint.clone(),
            path: "test",
            question: format!("Send endpoint {endpoint} a test event {key}?"),
            fields: vec![("subscription_key", key.clone())],
        }),
        |session| async move {
            let row = session
                .client
                .query_one(
                    "SELECT ae_events.send_test_event($1, $2)::text",
                    &[&endpoint, &key],
                )
                .await?;
            let id: String = row.try_get(0).unwrap_or_default();
            Ok(html! {
                "Queued test event " (key) " for " (endpoint) ": webhook-id "
                a href={ "/events/" (id) } { (id) } "."
            })
        },
    )
    .await
}
