//! The demo behind `scripts/demo.sh`: a throwaway cluster, the reference schema, the extension,
//! a listener, a webhook endpoint with a local receiver, the seed's example inserted in one
//! transaction, and what arrives: the notification, the outbox row, and the signed webhook that
//! `ae-relay` delivers.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A request as the receiver got it: method, path, headers (lower-case names), body.
type Webhook = (String, String, Vec<(String, String)>, String);

/// A receiver on 127.0.0.1 that answers 200 and hands each request to the demo.
fn start_receiver() -> (String, std::sync::mpsc::Receiver<Webhook>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind the receiver");
    let port = server.server_addr().to_ip().expect("ip address").port();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let headers = request
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_ascii_lowercase(),
                        h.value.as_str().to_owned(),
                    )
                })
                .collect();
            let _ = sender.send((
                request.method().as_str().to_owned(),
                request.url().to_owned(),
                headers,
                body,
            ));
            let _ = request.respond(tiny_http::Response::empty(200));
        }
    });
    (format!("http://127.0.0.1:{port}/webhooks/ae"), received)
}

/// The signature checked by the `svix` crate's Standard Webhooks verifier.
fn verifies(secret: &str, headers: &[(String, String)], body: &str) -> bool {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if name.starts_with("webhook-") {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name.as_str()),
                http::HeaderValue::try_from(value.as_str()),
            ) {
                map.insert(name, value);
            }
        }
    }
    svix::webhooks::Webhook::new(secret)
        .is_ok_and(|webhook| webhook.verify(body.as_bytes(), &map).is_ok())
}

fn main() {
    println!("Starting a throwaway PostgreSQL 15 cluster under /tmp ...");
    let cluster = Cluster::start(&[]);
    let database = cluster.empty_database("demo");
    let mut app = cluster.connect(&database);
    load_schema(&mut app, ForeignKeys::With);
    app.batch_execute("CREATE EXTENSION ae_events").unwrap();
    println!("Database {database} on 127.0.0.1:{}: reference schema loaded, CREATE EXTENSION ae_events done.", cluster.port);

    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    println!("A listener runs LISTEN ae_events.");

    let (url, webhooks) = start_receiver();
    let secret: String = app
        .query_one(
            "SELECT ae_events.create_endpoint('demo-receiver', $1)",
            &[&url],
        )
        .unwrap()
        .get(0);
    println!("A webhook receiver listens on {url};");
    println!(
        "SELECT ae_events.create_endpoint('demo-receiver', '{url}') returned its secret {secret}\n"
    );

    println!("Inserting the seed's example (tests/sql/seed_example.sql) in one transaction ...");
    app.batch_execute(SEED_EXAMPLE).unwrap();

    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    for (channel, text) in &received {
        println!(
            "\nNotification on channel \"{channel}\" ({} bytes), as received:\n{text}",
            text.len()
        );
    }
    if received.is_empty() {
        eprintln!("No notification arrived.");
        std::process::exit(1);
    }

    let row = app
        .query_one(
            "SELECT id, event_id::text, subscription_key, event_type, aggregate_type, aggregate_id,
                    snapshot_version, occurred_at::text, txid::text, jsonb_pretty(payload)
               FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    println!("\nThe outbox row (SELECT * FROM ae_events.outbox):");
    let columns = [
        "id",
        "event_id",
        "subscription_key",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "snapshot_version",
        "occurred_at",
        "txid",
    ];
    let id: i64 = row.get(0);
    let aggregate_id: i64 = row.get(5);
    let version: i32 = row.get(6);
    let values = [
        id.to_string(),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        aggregate_id.to_string(),
        version.to_string(),
        row.get(7),
        row.get(8),
    ];
    for (column, value) in columns.iter().zip(values) {
        println!("  {column:<17} {value}");
    }
    let payload: String = row.get(9);
    println!("  payload\n{payload}");

    let matches = {
        let stored: serde_json::Value = app
            .query_one("SELECT payload FROM ae_events.outbox WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        stored == seed_example_payload()
    };
    println!("\nPayload equals the seed's example JSON: {matches}");

    println!("\nStarting ae-relay (as role demo_relay, a member of ae_events_relay) ...");
    app.batch_execute("CREATE ROLE demo_relay LOGIN; GRANT ae_events_relay TO demo_relay;")
        .unwrap();
    let relay_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("ae-relay")))
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            eprintln!("ae-relay is not built: cargo build -p ae-relay");
            std::process::exit(1)
        });
    let mut relay = Command::new(&relay_binary)
        .args(["run", "--lease", "5s"])
        .env(
            "DATABASE_URL",
            format!(
                "postgres://demo_relay@127.0.0.1:{}/{database}",
                cluster.port
            ),
        )
        .env("AE_RELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start ae-relay");
    let Ok((method, path, headers, body)) = webhooks.recv_timeout(Duration::from_secs(30)) else {
        eprintln!("No webhook arrived.");
        let _ = relay.kill();
        std::process::exit(1);
    };
    println!("\nThe webhook as the receiver got it:\n  {method} {path}");
    for (name, value) in &headers {
        if name.starts_with("webhook-")
            || name.starts_with("ae-")
            || name == "content-type"
            || name == "user-agent"
        {
            println!("  {name}: {value}");
        }
    }
    println!(
        "  body ({} bytes): {}...",
        body.len(),
        &body[..body.len().min(120)]
    );
    let body_is_payload = app
        .query_one(
            "SELECT payload::text = $1 FROM ae_events.outbox WHERE id = $2",
            &[&body, &id],
        )
        .unwrap()
        .get::<_, bool>(0);
    println!("The body is the stored payload's text: {body_is_payload}");
    println!(
        "Signature verified with the endpoint's secret (svix crate's Standard Webhooks verifier): {}",
        verifies(&secret, &headers, &body)
    );

    println!(
        "\nUpdating the instance's score and its candidate's first name in one transaction ..."
    );
    app.batch_execute(
        "BEGIN;
         UPDATE ti.instance SET score = 88.5 WHERE id = 789;
         UPDATE can.candidate SET first_name = 'Janet' WHERE id = 101;
         COMMIT;",
    )
    .unwrap();
    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    println!("{} notification(s), one per instance:", received.len());
    for (_, text) in &received {
        // The envelope as received, in the contract's key order; the payload shortened.
        match text.find("\"payload\"") {
            Some(start) => println!(
                "{}\"payload\": {{ ... the snapshot ... }}}}",
                &text[..start]
            ),
            None => println!("{text}"),
        }
    }
    let updated = app
        .query_one(
            "SELECT subscription_key, snapshot_version, payload->'score', payload#>'{candidate,first_name}'
               FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    println!(
        "Outbox: {} version {}: score {}, candidate.first_name {}",
        updated.get::<_, String>(0),
        updated.get::<_, i32>(1),
        updated.get::<_, serde_json::Value>(2),
        updated.get::<_, serde_json::Value>(3)
    );
    match webhooks.recv_timeout(Duration::from_secs(30)) {
        Ok((_, _, headers, body)) => {
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            println!(
                "Webhook {} version {} delivered, signature verified: {}",
                header("ae-subscription-key"),
                header("ae-snapshot-version"),
                verifies(&secret, &headers, &body)
            );
        }
        Err(_) => println!("The updated event's webhook did not arrive."),
    }
    let status = app
        .query(
            "SELECT event, snapshot_version, status, attempts, last_status FROM ae_events.delivery_status ORDER BY id",
            &[],
        )
        .unwrap();
    println!("\nSELECT event, snapshot_version, status, attempts, last_status FROM ae_events.delivery_status:");
    for row in status {
        println!(
            "  {} v{}: {} after {} attempt(s), HTTP {}",
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, String>(2),
            row.get::<_, i32>(3),
            row.get::<_, Option<i32>>(4)
                .map_or("-".to_owned(), |s| s.to_string())
        );
    }
    if std::env::var("AE_DEMO_CONSOLE").as_deref() == Ok("1") {
        // The relay keeps delivering while the console runs.
        run_console(&cluster, &database, &mut app, &relay_binary);
    } else {
        println!(
            "\nThe operator console shows all this in a browser: ./scripts/demo.sh --console \
             (it prints the URL and a role to sign in with)."
        );
    }
    let _ = relay.kill();
    let _ = relay.wait();
    println!("The cluster stops and its files are removed when this program exits.");
}

/// `scripts/demo.sh --console`: a login role granted ae_events_operator with a password of its
/// own (this throwaway cluster only), and `ae-relay console` on 127.0.0.1:8088
/// (AE_CONSOLE_LISTEN to change it) until Ctrl-C.
fn run_console(
    cluster: &Cluster,
    database: &str,
    app: &mut postgres::Client,
    relay_binary: &std::path::Path,
) {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .expect("random bytes");
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    app.batch_execute(&format!(
        "CREATE ROLE demo_operator LOGIN PASSWORD '{password}';
         GRANT ae_events_operator TO demo_operator;"
    ))
    .unwrap();
    // The cluster trusts local connections; the console's role must give its password.
    let hba = cluster.data_dir.join("pg_hba.conf");
    let existing = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all demo_operator 127.0.0.1/32 scram-sha-256\n{existing}"),
    )
    .unwrap();
    app.batch_execute("SELECT pg_reload_conf()").unwrap();
    let listen = std::env::var("AE_CONSOLE_LISTEN").unwrap_or_else(|_| "127.0.0.1:8088".into());
    let mut console = Command::new(relay_binary)
        .args(["console", "--listen", &listen])
        .env(
            "DATABASE_URL",
            format!("postgres://127.0.0.1:{}/{database}", cluster.port),
        )
        .env("AE_RELAY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start ae-relay console");
    println!(
        "\nThe operator console: http://{listen}/\n  sign in as demo_operator, password {password}\n\
         (a throwaway role of this throwaway cluster). Ctrl-C stops it and the cluster."
    );
    let _ = console.wait();
}
