//! The SQL surface's error messages as a golden file (`tests/expected/error_messages.out`), so
//! that a reviewer sees a changed message, SQLSTATE or hint as a diff. Run with
//! `AE_EVENTS_BLESS=1` to write the file anew after a deliberate change. Where PostgreSQL's own
//! messages changed, `error_messages.pg<N>.out` holds them for major N and later (`pg17`);
//! blessing writes the file that was compared.

mod common;

use common::*;

/// Statements a user may get wrong: the consumer API, retention, payload rules, bubble-up
/// settings, resend and the GUCs.
const STATEMENTS: &[&str] = &[
    "SELECT * FROM ae_events.poll('missing')",
    "SELECT ae_events.ack('missing', 1)",
    "SELECT ae_events.create_consumer('c')",
    "SELECT ae_events.create_consumer('')",
    "SELECT ae_events.create_consumer(NULL)",
    "SELECT ae_events.create_consumer('d', NULL)",
    "SELECT * FROM ae_events.poll('c', 0)",
    "SELECT * FROM ae_events.poll(NULL, 10)",
    "SELECT ae_events.ack('c', 999999)",
    "SELECT ae_events.ack('c', NULL)",
    "SELECT ae_events.drop_consumer(NULL)",
    "SELECT ae_events.prune('-1 day')",
    "SELECT ae_events.prune('1 day', 0)",
    "INSERT INTO ae_events.payload_rules VALUES ('candidate.emial', 'remove')",
    "INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'encrypt')",
    "INSERT INTO ae_events.bubble_up VALUES ('public.elsewhere', true)",
    "SELECT ae_events.resend(ARRAY[1, NULL]::bigint[])",
    "SET ae_events.notify = 'sometimes'",
    "SET ae_events.channel = ''",
    "SET ae_events.notify_payload_budget = -2",
    "SET ae_events.no_such_setting = 1",
];

fn render(statement: &str, result: Result<(), postgres::Error>) -> String {
    match result {
        Ok(()) => format!("{statement}\n  => ok\n"),
        Err(error) => {
            let db = error.as_db_error().expect("a database error");
            let mut out = format!("{statement}\n  => {} {}\n", db.code().code(), db.message());
            if let Some(hint) = db.hint() {
                out.push_str(&format!("     HINT: {hint}\n"));
            }
            out
        }
    }
}

#[test]
fn error_messages_match_the_golden_file() {
    let cluster = Cluster::shared();
    let database = cluster.database("error_messages", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute("LOAD 'ae_events'").unwrap();
    client
        .batch_execute("SELECT ae_events.create_consumer('c')")
        .unwrap();
    let mut actual = String::new();
    for statement in STATEMENTS {
        let result = client.batch_execute(statement);
        actual.push_str(&render(statement, result));
    }
    // PostgreSQL's own messages change between majors (from 17 on a setting's range comes with
    // its unit): error_messages.pg<N>.out holds them for major N and later, up to the next file.
    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .unwrap()
        .get(0);
    let major = version.parse::<u32>().unwrap() / 10000;
    let expected_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected");
    let path = (16..=major)
        .rev()
        .map(|since| expected_dir.join(format!("error_messages.pg{since}.out")))
        .find(|path| path.is_file())
        .unwrap_or_else(|| expected_dir.join("error_messages.out"));
    if std::env::var_os("AE_EVENTS_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "error messages differ from {} (AE_EVENTS_BLESS=1 writes them):\n{actual}",
        path.display()
    );
}
