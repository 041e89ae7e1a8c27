//! Test harness: one throwaway PostgreSQL cluster per test binary, started by the tests
//! themselves (initdb under /tmp, loopback port, trust auth), stopped when the test process ends.
//! Each test gets its own database with the reference schema and the extension.
//!
//! The server is the one whose `pg_config` is in `PG_CONFIG`; without it, the one of the major
//! in `PG_VERSION` (15 when unset): Debian's PostgreSQL 15, or for another major the copy that
//! scripts/setup.sh puts in `<repo>/.postgresql/<major>/pg_config`.
#![allow(dead_code)]

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15, the default server.
pub const DEFAULT_PG_CONFIG: &str = "/usr/lib/postgresql/15/bin/pg_config";

/// The major version the tests run against: `PG_VERSION`, 15 when unset.
pub fn pg_version() -> String {
    std::env::var("PG_VERSION")
        .ok()
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "15".into())
}

/// The repository's root: the directory above this crate's manifest (the extension's or the
/// relay's) that holds ae_events.control.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("ae_events.control").is_file())
        .expect("the crate lies inside the ae_events repository")
        .to_path_buf()
}

/// The server's `pg_config`: `PG_CONFIG` if set, else the one for `pg_version()`.
pub fn pg_config() -> PathBuf {
    if let Some(path) = std::env::var_os("PG_CONFIG").filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    match pg_version().as_str() {
        "15" => PathBuf::from(DEFAULT_PG_CONFIG),
        major => repository_root()
            .join(".postgresql")
            .join(major)
            .join("pg_config"),
    }
}

/// The directory of the server's programs: `pg_config --bindir`.
pub fn pg_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let pg_config = pg_config();
        let output = Command::new(&pg_config)
            .arg("--bindir")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "run {} --bindir: {e} (PG_VERSION={}: has scripts/setup.sh run for it?)",
                    pg_config.display(),
                    pg_version()
                )
            });
        assert!(
            output.status.success(),
            "{} --bindir failed",
            pg_config.display()
        );
        String::from_utf8(output.stdout)
            .expect("pg_config prints a UTF-8 path")
            .trim()
            .to_string()
    })
}
pub const SCHEMA: &str = include_str!("../sql/reference_schema.sql");
pub const CROSS_SERVICE_FOREIGN_KEYS: &str = include_str!("../sql/cross_service_foreign_keys.sql");
pub const SEED_EXAMPLE: &str = include_str!("../sql/seed_example.sql");
pub const SEED_EXAMPLE_PAYLOAD: &str = include_str!("../seed_example_payload.json");

pub struct Cluster {
    pub data_dir: PathBuf,
    pub port: u16,
}

/// Whether the application's tables carry the cross-service foreign keys (they are optional).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignKeys {
    With,
    Without,
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Run a PostgreSQL program as the `postgres` OS user when we are root (initdb refuses root).
pub fn pg_command(program: &str) -> Command {
    let path = format!("{}/{program}", pg_bin());
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", &path]);
        command
    } else {
        Command::new(path)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Cluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| Cluster::start(&[]))
    }

    /// Start a fresh cluster with extra `postgresql.conf` lines; it stops when this process ends.
    pub fn start(extra_conf: &[&str]) -> Cluster {
        let data_dir = PathBuf::from(format!(
            "/tmp/ae_events_test_{}_{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        if running_as_root() {
            run(
                Command::new("chown").args(["postgres:postgres", data_dir.to_str().unwrap()]),
                "chown",
            );
        }
        run(
            pg_command("initdb").args([
                "-D",
                data_dir.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n\
             shared_buffers = 128MB\nlog_min_messages = warning\n",
            data_dir.display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data_dir.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        run(
            pg_command("pg_ctl").args([
                "-D",
                data_dir.to_str().unwrap(),
                "-l",
                data_dir.join("server.log").to_str().unwrap(),
                "-w",
                "start",
            ]),
            "pg_ctl start",
        );
        stop_when_this_process_ends(&data_dir);
        Cluster { data_dir, port }
    }

    /// Stop the server at once (as a crash would: no checkpoint, recovery at start) and start
    /// it again; connections are lost.
    pub fn restart_immediately(&self) {
        run(
            pg_command("pg_ctl").args([
                "-D",
                self.data_dir.to_str().unwrap(),
                "-l",
                self.data_dir.join("server.log").to_str().unwrap(),
                "-w",
                "-m",
                "immediate",
                "restart",
            ]),
            "pg_ctl restart",
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    pub fn connect(&self, database: &str) -> Client {
        self.connect_as(database, "postgres")
    }

    pub fn connect_as(&self, database: &str, user: &str) -> Client {
        let url = format!(
            "host=127.0.0.1 port={} user={user} dbname={database}",
            self.port
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&url, NoTls) {
                Ok(client) => return client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("cannot connect to {url}: {error}"),
            }
        }
    }

    /// A new, empty database (a unique name derived from `name`).
    pub fn empty_database(&self, name: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let database = format!("{name}_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        database
    }

    /// A new database holding the reference schema and the extension.
    pub fn database(&self, name: &str, foreign_keys: ForeignKeys) -> String {
        let database = self.empty_database(name);
        let mut client = self.connect(&database);
        load_schema(&mut client, foreign_keys);
        client.batch_execute("CREATE EXTENSION ae_events").unwrap();
        database
    }
}

/// The version of ae_events installed in the client's database.
pub fn extension_version(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'ae_events'",
            &[],
        )
        .unwrap()
        .get(0)
}

pub fn load_schema(client: &mut Client, foreign_keys: ForeignKeys) {
    client.batch_execute(SCHEMA).unwrap();
    if foreign_keys == ForeignKeys::With {
        client.batch_execute(CROSS_SERVICE_FOREIGN_KEYS).unwrap();
    }
}

/// A watchdog shell stops the cluster and removes its files once the test process has exited.
// It must outlive this process (init adopts it), so it is deliberately never waited for.
#[allow(clippy::zombie_processes)]
fn stop_when_this_process_ends(data_dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf '{dir}'",
        pid = std::process::id(),
        stop = if running_as_root() {
            format!(
                "runuser -u postgres -- {}/pg_ctl -D '{}' -m immediate stop >/dev/null 2>&1",
                pg_bin(),
                data_dir.display()
            )
        } else {
            format!(
                "{}/pg_ctl -D '{}' -m immediate stop >/dev/null 2>&1",
                pg_bin(),
                data_dir.display()
            )
        },
        dir = data_dir.display()
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the cluster watchdog");
}

/// The outbox rows of a database, oldest first: (aggregate_id, payload, event_id as text).
/// Every payload is validated against its key's JSON Schema (`validate_rows`).
pub fn outbox_rows(client: &mut Client) -> Vec<OutboxRow> {
    let rows = outbox_rows_unvalidated(client);
    validate_rows(client, &rows);
    rows
}

/// The outbox rows without validating them: for a test that planted rows by hand.
pub fn outbox_rows_unvalidated(client: &mut Client) -> Vec<OutboxRow> {
    client
        .query(
            "SELECT id, event_id::text, subscription_key, event_type, aggregate_type, aggregate_id,
                    snapshot_version, payload, occurred_at::text, txid::text
               FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| OutboxRow {
            id: row.get(0),
            event_id: row.get(1),
            subscription_key: row.get(2),
            event_type: row.get(3),
            aggregate_type: row.get(4),
            aggregate_id: row.get(5),
            snapshot_version: row.get(6),
            payload: row.get(7),
            occurred_at: row.get(8),
            txid: row.get(9),
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub subscription_key: String,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: i64,
    pub snapshot_version: i32,
    pub payload: serde_json::Value,
    pub occurred_at: String,
    pub txid: String,
}

/// Notifications received on `client` (which LISTENs) within `wait`, as (channel, text).
pub fn drain_notifications(client: &mut Client, wait: Duration) -> Vec<(String, String)> {
    let mut received = Vec::new();
    let mut notifications = client.notifications();
    let mut iter = notifications.timeout_iter(wait);
    while let Some(notification) = iter.next().unwrap() {
        received.push((
            notification.channel().to_owned(),
            notification.payload().to_owned(),
        ));
    }
    received
}

/// Minimal reference rows for tests that insert bare instances (candidate 1, catalog assessment 1).
pub const MINIMAL_REFERENCE_DATA: &str = "
INSERT INTO ae.assessment VALUES (1, 'A', 'basic', 'published', now(), now());
INSERT INTO ae.catalog VALUES (1, 'C', NULL);
INSERT INTO ae.catalog_assessment VALUES (1, 1, 1);
INSERT INTO can.candidate VALUES (1, NULL, 7, 'c@example.com', NULL, NULL, NULL, NULL, NULL, true, NULL, NULL, NULL, '{}');
";

/// A new database holding the seed's example (instance 789 of candidate 101, measurement 505),
/// without the cross-service foreign keys, and a connection to it.
pub fn seeded_database(name: &str) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    (database, client)
}

/// Calls `attempt` until `done` holds for its result or `timeout` has passed, and returns the
/// last result (the caller asserts on it).
pub fn within<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let result = attempt();
        if done(&result) || std::time::Instant::now() > deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same within 30 s. For consumer polls: the delivery horizon counts a transaction that
/// ends while it is computed as still running (conservative), so a just-committed event can be
/// held back for a moment while other transactions in the cluster come and go.
pub fn eventually<T>(attempt: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    within(Duration::from_secs(30), attempt, done)
}

/// Wait until a query's single boolean is true.
pub fn wait_until_sql(client: &mut Client, what: &str, timeout: Duration, query: &str) {
    let holds = within(
        timeout,
        || client.query_one(query, &[]).unwrap().get::<_, bool>(0),
        |holds| *holds,
    );
    assert!(holds, "timed out waiting for {what}");
}

/// Insert an instance of candidate 1 and catalog assessment 1, without a measurement.
pub fn insert_instance(client: &mut Client, id: i64) {
    client
        .execute(
            "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
            &[&id],
        )
        .unwrap();
}

/// Shared buffers (hit + read) one run of `query` touches, the queries of the functions it
/// calls included: `EXPLAIN (ANALYZE, BUFFERS)` of its top node.
pub fn buffers_touched(client: &mut Client, query: &str) -> i64 {
    let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}");
    let plan: serde_json::Value = client.query_one(&explain, &[]).unwrap().get(0);
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// Insert instances `from..=to` of candidate 1 and catalog assessment 1 in one statement.
pub fn insert_instances(client: &mut Client, from: i64, to: i64) {
    client
        .execute(
            "INSERT INTO ti.instance SELECT i, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series($1::bigint, $2::bigint) AS i",
            &[&from, &to],
        )
        .unwrap();
}

/// The instances that have events, in outbox order.
pub fn outbox_instances(client: &mut Client) -> Vec<i64> {
    outbox_rows(client)
        .iter()
        .map(|row| row.aggregate_id)
        .collect()
}

pub fn sqlstate(error: &postgres::Error) -> String {
    error
        .code()
        .map(|code| code.code().to_owned())
        .unwrap_or_default()
}

pub fn error_message(error: &postgres::Error) -> String {
    error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| error.to_string())
}

pub fn seed_example_payload() -> serde_json::Value {
    serde_json::from_str(SEED_EXAMPLE_PAYLOAD).unwrap()
}

/// A connection whose notices and warnings are collected as "SEVERITY message".
pub fn connect_collecting_notices(
    cluster: &Cluster,
    database: &str,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notices.clone();
    let mut config: postgres::Config = cluster.url(database).parse().unwrap();
    config.notice_callback(move |notice| {
        seen.lock()
            .unwrap()
            .push(format!("{} {}", notice.severity(), notice.message()))
    });
    (config.connect(postgres::NoTls).unwrap(), notices)
}

/// `pg_dump -Fc` of a database.
pub fn dump(cluster: &Cluster, database: &str) -> Vec<u8> {
    pg_dump(cluster, database, "-Fc")
}

/// `pg_dump` of a database in the given format (`-Fc`, `--data-only`, ...).
pub fn pg_dump(cluster: &Cluster, database: &str, format: &str) -> Vec<u8> {
    let output = pg_command("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            format,
            database,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `pg_restore` of an archive into an existing (empty) database, stopping at the first error.
pub fn restore(cluster: &Cluster, database: &str, archive: &[u8]) {
    use std::io::Write;
    let mut child = pg_command("pg_restore")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "--exit-on-error",
            "-d",
            database,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Wait until a session of the database waits for a heavyweight lock (a row, or an advisory lock
/// of the interlock): the second of two transactions is then known to be blocked by the first.
pub fn wait_until_a_session_waits_for_a_lock(cluster: &Cluster, database: &str) {
    let mut observer = cluster.connect(database);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = observer
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_stat_activity
                                 WHERE datname = current_database() AND wait_event_type = 'Lock')",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the second transaction never waited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON Schema of a subscription key's webhook body as committed in docs/schemas/ (what a
/// fresh install's `ae_events.event_schema` gives, no payload rules): None for a key the catalog
/// does not have.
pub fn builtin_schema(key: &str) -> Option<serde_json::Value> {
    let path = repository_root()
        .join("docs/schemas")
        .join(format!("{key}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).expect("a committed schema is JSON"))
}

/// The committed schemas, compiled once per test process.
fn builtin_validators() -> &'static std::sync::Mutex<
    std::collections::HashMap<String, Option<std::sync::Arc<jsonschema::Validator>>>,
> {
    static VALIDATORS: OnceLock<
        std::sync::Mutex<
            std::collections::HashMap<String, Option<std::sync::Arc<jsonschema::Validator>>>,
        >,
    > = OnceLock::new();
    VALIDATORS.get_or_init(Default::default)
}

/// What is wrong with `payload` as a body of `schema` (JSON Schema draft 2020-12, validated by
/// the `jsonschema` crate): empty when it is valid.
pub fn schema_errors(schema: &serde_json::Value, payload: &serde_json::Value) -> Vec<String> {
    let validator =
        jsonschema::draft202012::new(schema).expect("the schema is a valid JSON Schema");
    errors_of(&validator, payload)
}

fn errors_of(validator: &jsonschema::Validator, payload: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(payload)
        .map(|error| format!("{} (at {})", error, error.instance_path()))
        .collect()
}

/// Panics unless `payload` validates against `schema`.
pub fn assert_valid(schema: &serde_json::Value, key: &str, payload: &serde_json::Value) {
    let errors = schema_errors(schema, payload);
    assert!(
        errors.is_empty(),
        "a {key} payload does not validate against its schema: {errors:#?}\n{payload}"
    );
}

/// What is wrong with a webhook body of `key` against the committed schema (the relay's test
/// receivers check every body with it); empty for a valid body or a key without a schema.
pub fn builtin_schema_errors(key: &str, body: &str) -> Vec<String> {
    let validator = {
        let mut validators = builtin_validators().lock().unwrap();
        validators
            .entry(key.to_owned())
            .or_insert_with(|| {
                builtin_schema(key).map(|schema| {
                    std::sync::Arc::new(
                        jsonschema::draft202012::new(&schema).expect("a valid committed schema"),
                    )
                })
            })
            .clone()
    };
    let Some(validator) = validator else {
        return Vec::new();
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(payload) => errors_of(&validator, &payload),
        Err(error) => vec![format!("the body is not JSON: {error}")],
    }
}

/// The schema of `key` with the payload rules in force (`ae_events.event_schema`), or the
/// committed one where the database has no `event_schema` (an earlier release) and no rules;
/// None for a key the catalog does not have, or where neither can be had (a role that may not
/// call it).
pub fn schema_in_force(client: &mut Client, key: &str) -> Option<serde_json::Value> {
    let builtin = builtin_schema(key)?;
    let row = client
        .query_one(
            "SELECT p IS NOT NULL, p IS NOT NULL AND has_function_privilege(p, 'EXECUTE'),
                    to_regclass('ae_events.payload_rules') IS NOT NULL
               FROM to_regprocedure('ae_events.event_schema(text)') AS p",
            &[],
        )
        .ok()?;
    let (exists, callable, has_rules_table): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if callable {
        let row = client
            .query_one("SELECT ae_events.event_schema($1)", &[&key])
            .expect("ae_events.event_schema");
        return Some(row.get(0));
    }
    if exists {
        return None;
    }
    if !has_rules_table {
        return Some(builtin);
    }
    let no_rules: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT FROM ae_events.payload_rules)",
            &[],
        )
        .ok()?
        .get(0);
    no_rules.then_some(builtin)
}

/// Panics unless `payload` validates against `key`'s schema in force in the client's database
/// (`schema_in_force`); a key the catalog does not have is not checked.
pub fn validate_payload(client: &mut Client, key: &str, payload: &serde_json::Value) {
    if let Some(schema) = schema_in_force(client, key) {
        assert_valid(&schema, key, payload);
    }
}

/// Validates every row's payload against its key's schema in force (`schema_in_force`): a
/// payload that does not validate fails the test.
pub fn validate_rows(client: &mut Client, rows: &[OutboxRow]) {
    let mut schemas: std::collections::HashMap<String, Option<serde_json::Value>> =
        std::collections::HashMap::new();
    for row in rows {
        let schema = schemas
            .entry(row.subscription_key.clone())
            .or_insert_with(|| schema_in_force(client, &row.subscription_key));
        if let Some(schema) = schema {
            assert_valid(schema, &row.subscription_key, &row.payload);
        }
    }
}
