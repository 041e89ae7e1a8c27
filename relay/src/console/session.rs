//! Sign-in and sessions. A session is one PostgreSQL connection made AS the role that signed in,
//! with its password (the database checks both; nothing of the password is kept), plus a random
//! id (the cookie) and a CSRF token. The database decides what the role may see and do.
//!
//! Bounds, so that someone who can only reach the console cannot exhaust the database's
//! connections or the console's memory: at most `max_sessions` sessions (one connection each;
//! the least recently used goes when a new one would exceed it), at most `max_sign_ins`
//! sign-ins in progress at once (more are refused at once, before connecting), 30 minutes idle
//! and 8 hours in all.

use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq as _;

/// The session cookie's name over plain HTTP.
pub const COOKIE: &str = "ae_console";
/// Its name with `--secure-cookies`: browsers keep a `__Host-` cookie only if it is Secure,
/// has Path=/ and no Domain, so a neighbouring subdomain or a plain-HTTP page cannot set or
/// shadow it.
pub const SECURE_COOKIE: &str = "__Host-ae_console";

/// The cookie's name for the console's setting.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// What the signed-in role may do, as the database says at sign-in (shown in the header, and
/// whether the pages offer action buttons; the database still decides every action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Reader,
    Operator,
    Dba,
}

impl Access {
    pub fn label(self) -> &'static str {
        match self {
            Access::Reader => "reader",
            Access::Operator => "operator",
            Access::Dba => "DBA",
        }
    }

    /// Whether the pages show action buttons.
    pub fn acts(self) -> bool {
        self != Access::Reader
    }
}

pub struct Session {
    pub role: String,
    pub access: Access,
    /// Sent in every form as a hidden field, compared in constant time on every POST.
    pub csrf: String,
    /// The role's own connection (statement_timeout set); dropped with the session, which
    /// closes it.
    pub client: tokio_postgres::Client,
    /// The NOTICEs and WARNINGs the database sent on the connection since they were last taken
    /// (an action says what its SQL function left out: redeliver_dead_letters and
    /// replay_endpoint report it only as a notice).
    notices: Arc<Mutex<Vec<String>>>,
    /// Held by an action from its call until its notices are taken, so that they are its own.
    pub acting: tokio::sync::Mutex<()>,
    created: Instant,
    last_seen: Mutex<Instant>,
}

/// At most this many notices are kept between two actions (a page raises none).
const MAX_NOTICES: usize = 20;

impl Session {
    /// Forget the notices received so far (before an action's call).
    pub fn clear_notices(&self) {
        if let Ok(mut notices) = self.notices.lock() {
            notices.clear();
        }
    }

    /// The notices received since the last call of this or `clear_notices`.
    pub fn take_notices(&self) -> Vec<String> {
        self.notices
            .lock()
            .map(|mut notices| std::mem::take(&mut *notices))
            .unwrap_or_default()
    }
}

/// `n` random bytes from the operating system's generator, as hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no random bytes".to_owned())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a sign-in failed.
pub enum SignInError {
    /// Wrong password, no such role, a role that may not log in: one answer for all of them;
    /// `reason` (the database's, never the password) is for the console's log only.
    Credentials { reason: String },
    /// The role signed in but has neither reader nor operator rights (the page names them).
    NoGrant { role: String },
    /// The extension is not in the database the console was pointed at.
    NoExtension,
    /// The database could not be reached or failed otherwise (logged; not shown in detail).
    Unavailable(String),
}

/// Why the database refused a sign-in, for the console's log (the browser gets one message
/// for every refusal): its SQLSTATE and message, e.g. `28P01 password authentication failed
/// for user "alice"`. The server never puts the password in it.
pub fn refusal_reason(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

pub struct Store {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// The cookie that names a session (`cookie_name`).
    pub cookie: &'static str,
    pub max_sessions: usize,
    pub idle: Duration,
    pub absolute: Duration,
}

pub enum Lookup {
    Found(Arc<Session>),
    /// The cookie named a session that timed out (it is gone now).
    Expired,
    Missing,
}

impl Store {
    pub fn new(
        max_sessions: usize,
        idle: Duration,
        absolute: Duration,
        cookie: &'static str,
    ) -> Store {
        Store {
            sessions: Mutex::default(),
            cookie,
            max_sessions: max_sessions.max(1),
            idle,
            absolute,
        }
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        let last_seen = session
            .last_seen
            .lock()
            .map(|seen| *seen)
            .unwrap_or(session.created);
        now.duration_since(last_seen) >= self.idle
            || now.duration_since(session.created) >= self.absolute
            || session.client.is_closed()
    }

    /// The session the request's cookie names; its idle clock restarts.
    pub fn lookup(&self, headers: &HeaderMap) -> Lookup {
        let Some(id) = cookie(headers, self.cookie) else {
            return Lookup::Missing;
        };
        let now = Instant::now();
        let Ok(mut sessions) = self.sessions.lock() else {
            return Lookup::Missing;
        };
        let Some(session) = sessions.get(&id).cloned() else {
            return Lookup::Missing;
        };
        if self.expired(&session, now) {
            sessions.remove(&id);
            return Lookup::Expired;
        }
        if let Ok(mut seen) = session.last_seen.lock() {
            *seen = now;
        }
        Lookup::Found(session)
    }

    /// Keep a new session; its id (the cookie's value). Expired ones go first, then, at the
    /// bound, the least recently used.
    pub fn insert(&self, session: Session) -> Result<String, String> {
        let id = random_hex(32)?;
        let now = Instant::now();
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| "session store unavailable".to_owned())?;
        sessions.retain(|_, s| !self.expired(s, now));
        while sessions.len() >= self.max_sessions {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen.lock().map(|seen| *seen).unwrap_or(s.created))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => {
                    sessions.remove(&oldest);
                }
                None => break,
            }
        }
        sessions.insert(id.clone(), Arc::new(session));
        Ok(id)
    }

    /// Signing out, or signing in again from the same browser: the session the request's
    /// cookie names and its connection go (once no request uses them any more).
    pub fn remove(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut sessions)) = (cookie(headers, self.cookie), self.sessions.lock()) {
            sessions.remove(&id);
        }
    }

    /// Drop timed-out sessions (and so close their connections) without waiting for a request.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, s| !self.expired(s, now));
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cookie's value from the request's Cookie headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The Set-Cookie value of a new session: HttpOnly, SameSite=Strict, Path=/, no Domain, and
/// Secure (named `__Host-ae_console`) when the console is served over TLS (by itself or a
/// reverse proxy: --secure-cookies). No Max-Age: the browser forgets it when closed, and the
/// console ends it on time anyway.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

/// The Set-Cookie value that removes it.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

/// The form's CSRF token against the session's, in constant time.
pub fn csrf_matches(session: &Session, sent: Option<&str>) -> bool {
    match sent {
        Some(sent) => bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes())),
        None => false,
    }
}

/// A POST from this console's own pages: its Origin (or, without one, its Referer) names the
/// host the request was sent to. A POST naming another origin, or `null`, is refused; one
/// naming none (an old client) is left to the CSRF token and SameSite.
pub fn same_origin(headers: &HeaderMap) -> bool {
    // Browsers that send Sec-Fetch-Site say it outright ("none": typed or bookmarked).
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return false;
        }
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .map(|value| value.to_str().unwrap_or("null"));
    let Some(source) = source else {
        return true;
    };
    let authority = source
        .strip_prefix("https://")
        .or_else(|| source.strip_prefix("http://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    match authority {
        Some(authority) => !host.is_empty() && authority.eq_ignore_ascii_case(host),
        None => false,
    }
}

/// Connect as the role with its password, and find out what it may do.
pub async fn sign_in(
    template: &tokio_postgres::Config,
    username: &str,
    password: &str,
    statement_timeout: Duration,
) -> Result<Session, SignInError> {
    if username.is_empty() || password.is_empty() || username.contains('\0') {
        return Err(SignInError::Credentials {
            reason: "an empty role name or password, or a NUL character (not sent to the database)"
                .to_owned(),
        });
    }
    let mut config = template.clone();
    config
        .user(username)
        .password(password)
        .application_name("ae-relay console")
        .options(format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis().clamp(1, i32::MAX as u128)
        ))
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(connected) => connected,
        Err(error) => {
            // 28P01 (wrong password, or no such role under password authentication) and
            // 28000 (no such role, not allowed to log in, no pg_hba line): one message to
            // the browser, the database's reason to the log (which a DBA needs to tell them
            // apart).
            return Err(match error.code() {
                Some(code) if code.code().starts_with("28") => SignInError::Credentials {
                    reason: refusal_reason(&error),
                },
                _ => SignInError::Unavailable(error.to_string()),
            });
        }
    };
    // The connection runs until the client (the session) is dropped; its notices are kept
    // for the action that caused them.
    let notices: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = notices.clone();
    let mut connection = connection;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    if let Ok(mut kept) = sink.lock() {
                        if kept.len() < MAX_NOTICES {
                            kept.push(notice.message().to_owned());
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let row = client
        .query_one(
            "SELECT pg_catalog.current_user()::text,
                    coalesce(pg_catalog.pg_has_role(pg_catalog.current_user(),
                             pg_catalog.to_regrole('ae_events_reader'), 'USAGE'), false),
                    coalesce(pg_catalog.pg_has_role(pg_catalog.current_user(),
                             pg_catalog.to_regrole('ae_events_operator'), 'USAGE'), false),
                    coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r
                               WHERE r.rolname OPERATOR(pg_catalog.=) pg_catalog.current_user()), false)
                    OR coalesce((SELECT pg_catalog.pg_has_role(pg_catalog.current_user(), n.nspowner, 'USAGE')
                                   FROM pg_catalog.pg_namespace AS n
                                  WHERE n.nspname OPERATOR(pg_catalog.=) 'ae_events'), false),
                    EXISTS (SELECT FROM pg_catalog.pg_namespace AS n
                             WHERE n.nspname OPERATOR(pg_catalog.=) 'ae_events')",
            &[],
        )
        .await
        .map_err(|error| SignInError::Unavailable(error.to_string()))?;
    let role: String = row.get(0);
    let (reader, operator, dba, installed): (bool, bool, bool, bool) =
        (row.get(1), row.get(2), row.get(3), row.get(4));
    if !installed {
        return Err(SignInError::NoExtension);
    }
    let access = if dba {
        Access::Dba
    } else if operator {
        Access::Operator
    } else if reader {
        Access::Reader
    } else {
        return Err(SignInError::NoGrant { role });
    };
    let now = Instant::now();
    Ok(Session {
        role,
        access,
        csrf: random_hex(32).map_err(SignInError::Unavailable)?,
        client,
        notices,
        acting: tokio::sync::Mutex::new(()),
        created: now,
        last_seen: Mutex::new(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn origins() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8088")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("origin", "http://127.0.0.1:8088")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "console.example"),
            ("origin", "https://console.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("referer", "http://127.0.0.1:8088.evil.example/x")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("referer", "http://127.0.0.1:8088/endpoints/a")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8088"),
            ("origin", "http://127.0.0.1:8088"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn cookies() {
        let map = headers(&[("cookie", "a=1; ae_console=abc; b=2")]);
        assert_eq!(cookie(&map, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[]), COOKIE), None);
        assert_eq!(
            set_cookie("x", true),
            "__Host-ae_console=x; HttpOnly; SameSite=Strict; Path=/; Secure"
        );
        assert_eq!(
            set_cookie("x", false),
            "ae_console=x; HttpOnly; SameSite=Strict; Path=/"
        );
    }
}
