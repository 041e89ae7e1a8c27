//! `ae-relay console`: the operator console (shared/contract/console.md, docs/console.md).
//!
//! Server-rendered pages over the database, read and acted on AS the role that signed in: the
//! console holds no data, no user store and no privileges of its own. Modules: `session`
//! (sign-in, sessions, cookies, CSRF and origin checks), `pages` (what each GET path shows),
//! `actions` (the POSTs: confirm, then call the SQL API), `view` (layout, times, the chart).
//!
//! Every response carries a Content-Security-Policy without script, `nosniff`, no referrer to
//! other sites and
//! (pages) `no-store`. A GET never changes anything; every POST needs the session's CSRF token
//! and, when it names one, this console's origin.

mod actions;
mod pages;
pub mod session;
mod view;

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use session::{Lookup, Session, SignInError, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What `ae-relay console` is told.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// Where the database is: host, port, database name (its user and password are not used).
    pub database_url: String,
    pub listen: SocketAddr,
    /// Mark the session cookie Secure and name it `__Host-ae_console` (the console is reached
    /// over HTTPS, through a proxy).
    pub secure_cookies: bool,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub max_sessions: usize,
    pub max_sign_ins: usize,
    /// statement_timeout of every session's connection.
    pub statement_timeout: Duration,
    /// `Host` header values served besides the listen address's own (and, on a loopback
    /// address, `localhost`): the names a reverse proxy passes through.
    pub allowed_hosts: Vec<String>,
}

impl ConsoleConfig {
    pub fn new(database_url: String) -> ConsoleConfig {
        ConsoleConfig {
            database_url,
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            secure_cookies: false,
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(8 * 3600),
            max_sessions: 100,
            max_sign_ins: 8,
            statement_timeout: Duration::from_secs(10),
            allowed_hosts: Vec::new(),
        }
    }
}

pub(crate) struct App {
    config: ConsoleConfig,
    /// The database URL parsed once; each sign-in sets its own user and password on a copy.
    database: tokio_postgres::Config,
    sessions: Store,
    sign_ins: Semaphore,
    /// The `Host` values of the listen address (lower case).
    hosts: Vec<String>,
}

/// Serve until SIGINT/SIGTERM.
pub async fn run(config: ConsoleConfig) -> Result<(), String> {
    let database: tokio_postgres::Config =
        config
            .database_url
            .parse()
            .map_err(|error: tokio_postgres::Error| {
                let reason = error.to_string();
                format!(
                    "the database URL (--database-url / DATABASE_URL) cannot be parsed: {}",
                    reason.split(" but got").next().unwrap_or("")
                )
            })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", config.listen))?;
    let address = listener
        .local_addr()
        .map_err(|error| format!("cannot listen: {error}"))?;
    let app = Arc::new(App {
        sessions: Store::new(
            config.max_sessions,
            config.idle_timeout,
            config.absolute_timeout,
            session::cookie_name(config.secure_cookies),
        ),
        sign_ins: Semaphore::new(config.max_sign_ins.max(1)),
        hosts: served_hosts(address),
        database,
        config,
    });
    // Timed-out sessions close their connections without waiting for their next request.
    let sweeper = {
        let app = app.clone();
        let period = (app.config.idle_timeout.min(app.config.absolute_timeout) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                app.sessions.sweep();
            }
        })
    };
    tracing::info!(%address, "console listening");
    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    sweeper.abort();
    served.map_err(|error| format!("console server failed: {error}"))
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::endpoints))
        .route("/endpoints/{endpoint}", get(pages::endpoint))
        .route("/events/{event_id}", get(pages::event))
        .route("/instances/{instance_id}", get(pages::instance))
        .route("/search", get(pages::search))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/console.css", get(stylesheet))
        .route("/endpoints/{endpoint}/redeliver", post(actions::redeliver))
        .route(
            "/endpoints/{endpoint}/redeliver-dead",
            post(actions::redeliver_dead),
        )
        .route("/endpoints/{endpoint}/replay", post(actions::replay))
        .route("/endpoints/{endpoint}/enable", post(actions::enable))
        .route("/endpoints/{endpoint}/disable", post(actions::disable))
        .route("/endpoints/{endpoint}/test", post(actions::send_test))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            known_host,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(app)
}

/// The `Host` values the listen address is reached by: its address and, on a loopback address,
/// `localhost`, each with the port or without (a client may leave out port 80). Allowed hosts
/// (`--allowed-host`) are matched besides these.
fn served_hosts(address: SocketAddr) -> Vec<String> {
    let port = address.port();
    let ip = match address.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let mut names = vec![ip];
    if address.ip().is_loopback() {
        names.extend(["localhost", "127.0.0.1", "[::1]"].map(str::to_owned));
    }
    let mut hosts: Vec<String> = names.iter().map(|name| format!("{name}:{port}")).collect();
    hosts.extend(names);
    hosts
}

/// An allowed name without a port matches it on any port; otherwise the two are the same.
fn host_matches(allowed: &str, host: &str) -> bool {
    allowed == host
        || (!allowed.contains(':')
            && host
                .strip_prefix(allowed)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())))
}

/// Refuses a request naming another host (421) before it reaches a page or the sign-in: a
/// site whose name an attacker re-points at the console's address (DNS rebinding) would
/// otherwise be same-origin with it in the victim's browser, and could read pages or try
/// passwords.
async fn known_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_ascii_lowercase);
    let known = host.as_deref().is_some_and(|host| {
        app.hosts.iter().any(|served| served == host)
            || app
                .config
                .allowed_hosts
                .iter()
                .any(|allowed| host_matches(allowed, host))
    });
    if known {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "This console does not serve that host name: start it with --allowed-host NAME to serve it \
         (docs/console.md).\n",
    )
        .into_response()
}

/// The headers of every response.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // same-origin, not no-referrer: under no-referrer browsers send `Origin: null` with the
    // console's own forms, and the origin check could not tell them from a sandboxed page of
    // another site. No URL of the console goes to another site either way.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        view::CSS,
    )
        .into_response()
}

/// An HTML response.
pub(crate) fn html_response(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An error page (signed in or not).
pub(crate) fn error_page(
    status: StatusCode,
    session: Option<&Session>,
    heading: &str,
    message: &str,
    detail: Option<&str>,
) -> Response {
    html_response(
        status,
        view::page(heading, session, view::error_body(heading, message, detail)),
    )
}

async fn not_found(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let session = match app.sessions.lookup(&headers) {
        Lookup::Found(session) => Some(session),
        _ => None,
    };
    error_page(
        StatusCode::NOT_FOUND,
        session.as_deref(),
        "Not found",
        "There is no such page.",
        None,
    )
}

/// The signed-in session, or the response that sends the browser to sign in.
// The Err is the handler's answer, made once per request: its size does not matter.
#[allow(clippy::result_large_err)]
pub(crate) fn require(app: &App, headers: &HeaderMap) -> Result<Arc<Session>, Response> {
    match app.sessions.lookup(headers) {
        Lookup::Found(session) => Ok(session),
        Lookup::Expired => Err(Redirect::to("/login?expired=1").into_response()),
        Lookup::Missing => Err(Redirect::to("/login").into_response()),
    }
}

/// A failed database call as a page: the database's own words (its refusal of an action the
/// role may not take is 42501, shown as such).
pub(crate) fn database_error(session: &Session, error: &tokio_postgres::Error) -> Response {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let status = match code {
                "42501" => StatusCode::FORBIDDEN,
                "57014" => StatusCode::SERVICE_UNAVAILABLE,
                _ if code.starts_with("22") || code.starts_with("23") || code == "P0001" => {
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::BAD_REQUEST,
            };
            let heading = if code == "42501" {
                "Not allowed"
            } else {
                "The database refused"
            };
            let mut detail = format!("SQLSTATE {code}");
            if let Some(text) = db.detail() {
                detail.push_str(": ");
                detail.push_str(text);
            }
            error_page(status, Some(session), heading, db.message(), Some(&detail))
        }
        None => {
            // A lost connection ends the session at its next request (Store::lookup).
            tracing::warn!(role = %crate::logging::escape(&session.role), error = %error, "console database call failed");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(session),
                "The database cannot be reached",
                "The console lost its connection to the database; sign in again.",
                None,
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    expired: Option<String>,
    signed_out: Option<String>,
}

fn login_form(notice: Option<&str>, error: Option<&str>) -> maud::Markup {
    view::page(
        "Sign in",
        None,
        html! {
            section.login {
                h1 { "Sign in" }
                p.hint { "With your PostgreSQL role and its password: the database decides what you may see and do." }
                @if let Some(notice) = notice { p.notice { (notice) } }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    label { "Role " input type="text" name="username" autocomplete="username" required autofocus; }
                    label { "Password " input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

async fn login_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    if let Lookup::Found(_) = app.sessions.lookup(&headers) {
        return Redirect::to("/").into_response();
    }
    let notice = if query.expired.is_some() {
        Some("Your session expired; sign in again.")
    } else if query.signed_out.is_some() {
        Some("Signed out.")
    } else {
        None
    };
    html_response(StatusCode::OK, login_form(notice, None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The one answer to a wrong password, an unknown role and a role that may not log in.
const BAD_CREDENTIALS: &str = "Sign-in failed: wrong role name or password.";

async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !session::same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "Refused",
            "This form was sent from another site.",
            None,
        );
    }
    // Sign-ins in progress are bounded: each opens a database connection.
    let Ok(_permit) = app.sign_ins.try_acquire() else {
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            login_form(
                None,
                Some("Too many sign-ins at once; try again in a moment."),
            ),
        );
    };
    let signed_in = session::sign_in(
        &app.database,
        &form.username,
        &form.password,
        app.config.statement_timeout,
    )
    .await;
    drop(form);
    match signed_in {
        Ok(session) => {
            tracing::info!(role = %crate::logging::escape(&session.role), access = session.access.label(), "console sign-in");
            // A browser signing in again ends the session it had (and its connection): the
            // old one would otherwise stay open, unreachable, until it timed out.
            app.sessions.remove(&headers);
            match app.sessions.insert(session) {
                Ok(id) => (
                    [(
                        header::SET_COOKIE,
                        session::set_cookie(&id, app.config.secure_cookies),
                    )],
                    Redirect::to("/"),
                )
                    .into_response(),
                Err(error) => error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    "Cannot sign in",
                    &error,
                    None,
                ),
            }
        }
        Err(SignInError::Credentials { reason }) => {
            // The database's reason (28P01 wrong password, 28000 no pg_hba line or not allowed
            // to log in), for the DBA; the browser gets one message for all of them.
            tracing::warn!(reason = %crate::logging::escape(&reason), "console sign-in refused");
            html_response(
                StatusCode::UNAUTHORIZED,
                login_form(None, Some(BAD_CREDENTIALS)),
            )
        }
        Err(SignInError::NoGrant { role }) => error_page(
            StatusCode::FORBIDDEN,
            None,
            "No access to ae_events",
            &format!(
                "Role {role} has neither ae_events_reader nor ae_events_operator, so the console \
                 can show it nothing. A DBA can grant one: GRANT ae_events_reader TO {role}; (read \
                 only) or GRANT ae_events_operator TO {role}; (read, redeliver, replay, enable and \
                 disable endpoints, send test events)."
            ),
            Some("missing grant: ae_events_reader or ae_events_operator"),
        ),
        Err(SignInError::NoExtension) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "ae_events is not installed",
            "The database the console is pointed at has no ae_events extension.",
            None,
        ),
        Err(SignInError::Unavailable(error)) => {
            tracing::warn!(error = %crate::logging::escape(&error), "console sign-in failed");
            html_response(
                StatusCode::SERVICE_UNAVAILABLE,
                login_form(
                    None,
                    Some("The database cannot be reached now; try again later."),
                ),
            )
        }
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// Checks every POST but the sign-in makes: the session, its CSRF token, the origin.
#[allow(clippy::result_large_err)]
pub(crate) fn check_post(
    app: &App,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Arc<Session>, Response> {
    let session = require(app, headers)?;
    if !session::same_origin(headers) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            Some(&session),
            "Refused",
            "This form was sent from another site; nothing was done.",
            None,
        ));
    }
    if !session::csrf_matches(&session, csrf) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            Some(&session),
            "Refused",
            "This form's security token is missing or stale; nothing was done. Reload the page and try again.",
            None,
        ));
    }
    Ok(session)
}

async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(response) = check_post(&app, &headers, form.csrf.as_deref()) {
        return response;
    }
    // The session goes, and with it (its last reference) the database connection.
    app.sessions.remove(&headers);
    (
        [(
            header::SET_COOKIE,
            session::clear_cookie(app.config.secure_cookies),
        )],
        Redirect::to("/login?signed_out=1"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::{host_matches, served_hosts};

    #[test]
    fn only_the_listen_address_its_loopback_names_and_allowed_hosts_are_served() {
        let hosts = served_hosts("127.0.0.1:8088".parse().unwrap());
        let allowed = [
            "console.example".to_owned(),
            "other.example:8443".to_owned(),
        ];
        let served = |host: &str| {
            hosts.iter().any(|served| served == host)
                || allowed.iter().any(|allowed| host_matches(allowed, host))
        };
        for host in [
            "127.0.0.1:8088",
            "localhost:8088",
            "[::1]:8088",
            "localhost",
            "127.0.0.1",
            "console.example",
            "console.example:443",
            "other.example:8443",
        ] {
            assert!(served(host), "{host}");
        }
        for host in [
            "127.0.0.1:8089",
            "localhost:80",
            "attacker.example:8088",
            "console.example.attacker.example",
            "console.example:",
            "console.example:443x",
            "other.example:443",
            "",
        ] {
            assert!(!served(host), "{host}");
        }
    }
}
