//! The relay's connections to the extension's relay functions (sql/src/endpoints.sql):
//! - the supervisor's own connection ([`Database`]): LISTEN (the notifications that wake the
//!   workers), relay_lease, relay_status, relay_release. Workers never use it, so a slow call of
//!   one endpoint can never hold up a lease renewal.
//! - the workers' pool ([`Pool`], `--database-connections`): relay_fetch, relay_due and
//!   relay_record. A worker makes at most one fetch or due call and one record at a time, so a
//!   slow endpoint (a costly filter) holds at most two connections and the others go on.
//!   Every connection has `statement_timeout` set, and a call a worker abandons (its lease fence
//!   passed) is cancelled on the server and its connection closed, so that no abandoned query
//!   keeps running.

use crate::endpoint::{ClientIdentity, Egress, EndpointConfig, Event, OAuth2Settings, Position};
use crate::signing::SigningKey;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

/// A failed database call: the server's or the connection's error, or no connection from the
/// workers' pool.
#[derive(Debug)]
pub enum DbError {
    Postgres(tokio_postgres::Error),
    Pool(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> DbError {
        DbError::Postgres(error)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(error: deadpool_postgres::PoolError) -> DbError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => DbError::Postgres(error),
            other => DbError::Pool(other.to_string()),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self))
    }
}

impl std::error::Error for DbError {}

/// A database error with what the server said (tokio-postgres' own text is only "db error").
pub fn describe(error: &DbError) -> String {
    let error = match error {
        DbError::Postgres(error) => error,
        DbError::Pool(reason) => return format!("no database connection: {reason}"),
    };
    match error.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

pub struct Database {
    client: Client,
    /// The relay's statements, each prepared once on this connection (by SQL text) instead of
    /// parsed and planned again on every call.
    prepared: Mutex<HashMap<&'static str, Statement>>,
    /// Ends (with the error) when the connection is lost.
    pub connection: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// The workers' connections: at most `size` of them, each with `statement_timeout` set.
#[derive(Clone)]
pub struct Pool {
    pool: deadpool_postgres::Pool,
}

/// A connection taken from the pool for one call. Dropped before [`InUse::done`] (the caller
/// gave up on the call: its fence passed, or its task was aborted), the query may still be
/// running on the server: it is cancelled there and the connection closed, not handed to the
/// next caller (which would wait behind it).
struct InUse {
    object: Option<deadpool_postgres::Object>,
}

impl InUse {
    fn client(&self) -> Result<&deadpool_postgres::ClientWrapper, DbError> {
        self.object
            .as_deref()
            .ok_or_else(|| DbError::Pool("connection already returned".to_owned()))
    }

    /// The call ended (answered or failed): the connection goes back to the pool.
    fn done(mut self) {
        self.object.take();
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        let cancel = object.cancel_token();
        let client = deadpool_postgres::Object::take(object);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Best effort: the statement timeout ends the query if this cannot.
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), cancel.cancel_query(NoTls)).await;
                drop(client);
            });
        }
    }
}

impl Pool {
    /// The pool (connections are made when first needed). `statement_timeout`: the longest a
    /// statement of a worker may run on the server.
    pub fn new(url: &str, size: usize, statement_timeout: Duration) -> Result<Pool, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            "the database URL (--database-url / DATABASE_URL) cannot be parsed".to_owned()
        })?;
        // Added to the URL's own options (this later -c wins); PostgreSQL takes at most
        // i32::MAX milliseconds (about 24 days).
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or(""),
            statement_timeout.as_millis().clamp(1, i32::MAX as u128)
        );
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("ae-relay");
        }
        let manager = deadpool_postgres::Manager::from_config(
            config,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            .build()
            .map_err(|error| format!("cannot set up the database connections: {error}"))?;
        Ok(Pool { pool })
    }

    async fn take(&self) -> Result<InUse, DbError> {
        Ok(InUse {
            object: Some(self.pool.get().await?),
        })
    }

    /// One statement on a connection of the pool (prepared once per connection). The connection
    /// goes back to the pool when the call ends; dropped before that (the caller gave up), it is
    /// cancelled and closed (`InUse`).
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let connection = self.take().await?;
        let client = connection.client()?;
        let rows = match client.prepare_cached(sql).await {
            Ok(statement) => client.query(&statement, params).await,
            Err(error) => Err(error),
        };
        connection.done();
        Ok(rows?)
    }

    /// The events after `after` in delivery order: at most `max_events`, and ending after the
    /// event whose payload reaches `max_bytes` (at least one event).
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch(
        &self,
        endpoint: &str,
        endpoint_id: i64,
        relay: &str,
        after: Position,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchedRow>, DbError> {
        let rows = self
            .query(
                "SELECT epoch, txid::text, id, event_id::text, subscription_key, event_type,
                        aggregate_id, snapshot_version, payload, deliver, waits_behind, occurred_at
                   FROM ae_events.relay_fetch($1, $2, $3, $4::text::xid8, $5, $6, $7, $8)",
                &[
                    &endpoint,
                    &relay,
                    &after.epoch,
                    &after.txid.to_string(),
                    &after.id,
                    &count(max_events),
                    &bytes(max_bytes),
                    &endpoint_id,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let deliver: bool = row.get(9);
                FetchedRow {
                    position: Position {
                        epoch: row.get(0),
                        txid: parse_txid(row.get(1)),
                        id: row.get(2),
                    },
                    event: deliver.then(|| Event {
                        id: row.get(2),
                        event_id: row.get(3),
                        subscription_key: row.get(4),
                        event_type: row.get(5),
                        aggregate_id: row.get(6),
                        snapshot_version: row.get(7),
                        payload: row.get::<_, Option<String>>(8).unwrap_or_default().into(),
                        attempts: 0,
                        occurred_at: row.get(11),
                        test: false,
                    }),
                    waits_behind: row.get(10),
                }
            })
            .collect())
    }

    /// Pending rows due now: at most `max_events`, fewer when their payloads reach `max_bytes`.
    pub async fn due(
        &self,
        endpoint: &str,
        endpoint_id: i64,
        relay: &str,
        max_events: usize,
        busy_instances: &[i64],
        max_bytes: usize,
    ) -> Result<Vec<Event>, DbError> {
        let rows = self
            .query(
                "SELECT id, event_id::text, subscription_key, event_type, aggregate_id,
                        snapshot_version, payload, attempts, occurred_at
                   FROM ae_events.relay_due($1, $2, $3, $4, $5, $6)",
                &[
                    &endpoint,
                    &relay,
                    &count(max_events),
                    &busy_instances,
                    &bytes(max_bytes),
                    &endpoint_id,
                ],
            )
            .await?;
        Ok(rows.iter().map(|row| due_event(row, false)).collect())
    }

    /// Test events of `send_test_event` due now: at most `max_events` (each is the seed's
    /// example, a few kB; at most 10 wait per endpoint).
    pub async fn tests(
        &self,
        endpoint: &str,
        endpoint_id: i64,
        relay: &str,
        max_events: usize,
    ) -> Result<Vec<Event>, DbError> {
        let rows = self
            .query(
                "SELECT id, webhook_id::text, subscription_key, event_type, aggregate_id,
                        snapshot_version, payload, attempts, requested_at
                   FROM ae_events.relay_tests($1, $2, $3, $4)",
                &[&endpoint, &relay, &count(max_events), &endpoint_id],
            )
            .await?;
        Ok(rows.iter().map(|row| due_event(row, true)).collect())
    }

    /// Write test events' outcomes (`outbox_id` is the test event's id). False: the endpoint is
    /// no longer this relay's (nothing was written).
    pub async fn record_tests(
        &self,
        endpoint: &str,
        endpoint_id: i64,
        relay: &str,
        outcomes: &[Outcome],
    ) -> Result<bool, DbError> {
        let columns = OutcomeColumns::of(outcomes);
        let rows = self
            .query(
                "SELECT ae_events.relay_record_tests($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &endpoint,
                    &relay,
                    &endpoint_id,
                    &columns.ids,
                    &columns.statuses,
                    &columns.attempts,
                    &columns.attempted_at,
                    &columns.http_statuses,
                    &columns.errors,
                    &columns.next,
                    &columns.durations_ms,
                ],
            )
            .await?;
        Ok(rows.first().is_some_and(|row| row.get(0)))
    }

    /// One step of the deferred fan-outs (`ae_events.run_fanouts()`, in a transaction of its
    /// own): how many instances it found or gave their events; 0 when none waits.
    pub async fn run_fanouts(&self) -> Result<i64, DbError> {
        let rows = self.query("SELECT ae_events.run_fanouts()", &[]).await?;
        Ok(rows.first().map(|row| row.get(0)).unwrap_or(0))
    }

    /// Write outcomes and move the cursor in one transaction. False: the endpoint is no longer
    /// this relay's (nothing was written).
    pub async fn record(
        &self,
        endpoint: &str,
        endpoint_id: i64,
        relay: &str,
        outcomes: &[Outcome],
        cursor: Option<Position>,
        gone_reason: Option<&str>,
    ) -> Result<bool, DbError> {
        let columns = OutcomeColumns::of(outcomes);
        let aggregates: Vec<i64> = outcomes.iter().map(|o| o.aggregate_id).collect();
        let rows = self
            .query(
                "SELECT ae_events.relay_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                               $11, $12::text::xid8, $13, $14, $15, $16)",
                &[
                    &endpoint,
                    &relay,
                    &columns.ids,
                    &aggregates,
                    &columns.statuses,
                    &columns.attempts,
                    &columns.attempted_at,
                    &columns.http_statuses,
                    &columns.errors,
                    &columns.next,
                    &cursor.map(|c| c.epoch),
                    &cursor.map(|c| c.txid.to_string()),
                    &cursor.map(|c| c.id),
                    &gone_reason,
                    &endpoint_id,
                    &columns.durations_ms,
                ],
            )
            .await?;
        // relay_record returns one row; none would be a broken server: "not held" stops the
        // worker, and the next one starts from the database's state.
        Ok(rows.first().is_some_and(|row| row.get(0)))
    }
}

/// An event of `relay_due` or `relay_tests` (the same columns, in the same order).
fn due_event(row: &Row, test: bool) -> Event {
    Event {
        id: row.get(0),
        event_id: row.get(1),
        subscription_key: row.get(2),
        event_type: row.get(3),
        aggregate_id: row.get(4),
        snapshot_version: row.get(5),
        payload: row.get::<_, String>(6).into(),
        attempts: row.get(7),
        occurred_at: row.get(8),
        test,
    }
}

/// Outcomes as the array arguments `relay_record` and `relay_record_tests` take, one per column.
struct OutcomeColumns<'a> {
    ids: Vec<i64>,
    statuses: Vec<&'a str>,
    attempts: Vec<i32>,
    attempted_at: Vec<Option<SystemTime>>,
    http_statuses: Vec<Option<i32>>,
    errors: Vec<Option<&'a str>>,
    next: Vec<Option<SystemTime>>,
    durations_ms: Vec<Option<i32>>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(outcomes: &'a [Outcome]) -> Self {
        OutcomeColumns {
            ids: outcomes.iter().map(|o| o.outbox_id).collect(),
            statuses: outcomes.iter().map(|o| o.status).collect(),
            attempts: outcomes.iter().map(|o| o.attempts).collect(),
            attempted_at: outcomes.iter().map(|o| o.attempted_at).collect(),
            http_statuses: outcomes.iter().map(|o| o.http_status).collect(),
            errors: outcomes.iter().map(|o| o.error.as_deref()).collect(),
            next: outcomes.iter().map(|o| o.next_attempt_at).collect(),
            durations_ms: outcomes.iter().map(|o| o.duration_ms).collect(),
        }
    }
}

/// A count as the SQL functions take it.
fn count(n: usize) -> i32 {
    n.clamp(1, i32::MAX as usize) as i32
}

fn bytes(n: usize) -> i64 {
    n.clamp(1, i64::MAX as usize) as i64
}

/// A fetched row: an event to send, or one the endpoint skips (its position still counts).
pub struct FetchedRow {
    pub position: Position,
    /// The event, if the endpoint is to get it.
    pub event: Option<Event>,
    /// Its instance has a pending delivery: park it behind that one.
    pub waits_behind: bool,
}

/// An endpoint's backlog as relay_status reports it, for the metrics.
#[derive(Clone, Debug)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// Events after its cursor for its subscription keys (counted up to 100,000).
    pub backlog: i64,
    /// The time of the oldest of those or of a pending delivery.
    pub oldest_waiting_at: Option<std::time::SystemTime>,
    pub pending: i64,
    pub dead: i64,
}

/// What one attempt (or parking) left, for relay_record.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub outbox_id: i64,
    pub aggregate_id: i64,
    pub status: &'static str,
    pub attempts: i32,
    pub attempted_at: Option<SystemTime>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub next_attempt_at: Option<SystemTime>,
    /// How long the attempt took, for the console's attempt log; None: no attempt (parked).
    pub duration_ms: Option<i32>,
}

/// Refuse a database URL that cannot be parsed, at start rather than on every reconnect. The
/// reason never quotes the URL (it holds the password): tokio-postgres's "but got `c`" is cut.
pub fn check_url(url: &str) -> Result<(), String> {
    match url.parse::<tokio_postgres::Config>() {
        Ok(_) => Ok(()),
        Err(error) => {
            let reason = error.to_string();
            let reason = reason.split(" but got").next().unwrap_or("");
            Err(format!(
                "the database URL (--database-url / DATABASE_URL) cannot be parsed: {reason}"
            ))
        }
    }
}

impl Database {
    /// Connect, LISTEN on the channel; every notification bumps the returned counter.
    pub async fn connect(
        url: &str,
        channel: &str,
    ) -> Result<(Arc<Database>, watch::Receiver<u64>), DbError> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
        let (wake, woken) = watch::channel(0u64);
        let connection = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                if let AsyncMessage::Notification(_) = message? {
                    wake.send_modify(|count| *count = count.wrapping_add(1));
                }
            }
            Ok(())
        });
        client
            .batch_execute(&format!(
                "SET application_name = 'ae-relay'; LISTEN {}",
                quote_identifier(channel)
            ))
            .await?;
        Ok((
            Arc::new(Database {
                client,
                prepared: Mutex::default(),
                connection,
            }),
            woken,
        ))
    }

    /// The statement for this SQL, prepared on first use.
    async fn prepared(&self, sql: &'static str) -> Result<Statement, DbError> {
        let known = self
            .prepared
            .lock()
            .ok()
            .and_then(|statements| statements.get(sql).cloned());
        if let Some(statement) = known {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await?;
        if let Ok(mut statements) = self.prepared.lock() {
            statements.insert(sql, statement.clone());
        }
        Ok(statement)
    }

    /// The longest a statement on this connection may run on the server (a call the supervisor
    /// gave up on does not go on there).
    pub async fn set_statement_timeout(&self, timeout: Duration) -> Result<(), DbError> {
        self.client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                timeout.as_millis().clamp(1, i32::MAX as u128)
            ))
            .await?;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Renew this relay's leases and take free endpoints; the endpoints it holds now.
    pub async fn lease(
        &self,
        relay: &str,
        lease: Duration,
    ) -> Result<Vec<EndpointConfig>, DbError> {
        let rows = self
            .client
            .query(
                &self.prepared("SELECT endpoint, url, headers::text, timeout_ms, retry_schedule_ms, retry_jitter,
                        max_in_flight, secrets, cursor_epoch, cursor_txid::text, cursor_id, rate_limit,
                        endpoint_id, proxy, client_certificate, client_key, oauth2_token_url,
                        oauth2_client_id, oauth2_client_secret, oauth2_scope
                   FROM ae_events.relay_lease($1, make_interval(secs => $2::float8))").await?,
                &[&relay, &lease.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(endpoint_config).collect())
    }

    pub async fn release(&self, relay: &str) -> Result<(), DbError> {
        self.client
            .execute(
                &self.prepared("SELECT ae_events.relay_release($1)").await?,
                &[&relay],
            )
            .await?;
        Ok(())
    }

    /// Per endpoint this relay holds: its backlog, pending deliveries and dead letters.
    pub async fn status(&self, relay: &str) -> Result<Vec<EndpointStatus>, DbError> {
        let rows = self
            .client
            .query(
                &self
                    .prepared(
                        "SELECT endpoint, backlog, oldest_waiting_at, pending, dead
                           FROM ae_events.relay_status($1)",
                    )
                    .await?,
                &[&relay],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| EndpointStatus {
                endpoint: r.get(0),
                backlog: r.get(1),
                oldest_waiting_at: r.get(2),
                pending: r.get(3),
                dead: r.get(4),
            })
            .collect())
    }

    /// For `ae-relay check`: the role, whether it may act as a relay, the extension's version
    /// and the endpoints (enabled, all).
    pub async fn check(&self) -> Result<CheckReport, DbError> {
        let row = self
            .client
            .query_one(
                "SELECT current_user::text,
                        pg_has_role(current_user, 'ae_events_relay', 'USAGE'),
                        (SELECT extversion FROM pg_extension WHERE extname = 'ae_events')",
                &[],
            )
            .await?;
        let mut report = CheckReport {
            role: row.get(0),
            is_relay: row.get(1),
            extension_version: row.get(2),
            endpoints: Vec::new(),
        };
        if report.is_relay && report.extension_version.is_some() {
            report.endpoints = self
                .client
                .query(
                    "SELECT endpoint, enabled, coalesce(disabled_reason, ''), coalesce(relay, '')
                       FROM ae_events.endpoint_status ORDER BY endpoint",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
        }
        Ok(report)
    }
}

pub struct CheckReport {
    pub role: String,
    pub is_relay: bool,
    pub extension_version: Option<String>,
    /// Name, enabled, why disabled, relay holding it.
    pub endpoints: Vec<(String, bool, String, String)>,
}

fn endpoint_config(row: &Row) -> EndpointConfig {
    let headers: String = row.get(2);
    let headers = parse_headers(&headers);
    let url: String = row.get(1);
    let schedule: Vec<i64> = row.get(4);
    let secrets: Vec<String> = row.get(7);
    EndpointConfig {
        name: row.get(0),
        request_url: reqwest::Url::parse(&url).ok(),
        url,
        headers,
        timeout: Duration::from_millis(row.get::<_, i64>(3).max(1) as u64),
        retry_schedule: schedule
            .into_iter()
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .collect(),
        retry_jitter: row.get(5),
        max_in_flight: row.get::<_, i32>(6).max(1) as usize,
        keys: secrets
            .iter()
            .filter_map(|s| SigningKey::from_secret(s))
            .collect(),
        cursor: Position {
            epoch: row.get(8),
            txid: parse_txid(row.get(9)),
            id: row.get(10),
        },
        rate_limit: row.get::<_, Option<f64>>(11).filter(|rate| *rate > 0.0),
        endpoint_id: row.get(12),
        egress: egress(row),
    }
}

/// The egress settings of a relay_lease row (columns 13 to 19); SQL stores them complete.
fn egress(row: &Row) -> Egress {
    let text = |index: usize| {
        row.get::<_, Option<String>>(index)
            .filter(|s| !s.is_empty())
    };
    Egress {
        proxy: text(13),
        client_identity: match (text(14), text(15)) {
            (Some(certificate_chain_pem), Some(private_key_pem)) => Some(ClientIdentity {
                certificate_chain_pem,
                private_key_pem,
            }),
            _ => None,
        },
        oauth2: match (text(16), text(17), text(18)) {
            (Some(token_url), Some(client_id), Some(client_secret)) => Some(OAuth2Settings {
                token_url,
                client_id,
                client_secret,
                scope: text(19),
            }),
            _ => None,
        },
    }
}

/// The headers object ({"name": "value"}); create_endpoint checked its shape.
fn parse_headers(text: &str) -> reqwest::header::HeaderMap {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        for (name, value) in map {
            let Some(value) = value.as_str() else {
                continue;
            };
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
    }
    headers
}

fn parse_txid(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
