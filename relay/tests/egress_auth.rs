//! How receivers authenticate the relay (issue 25, docs/webhooks.md), against real counterparts
//! on 127.0.0.1 and the real ae-relay binary:
//! - ed25519 signatures (`v1a`, rotate_endpoint_secret(..., algorithm => 'ed25519')), verified
//!   by a Python receiver with PyPI's `cryptography` (Debian's python3-cryptography) with the
//!   `whpk_` key SQL returned; during a rotation's grace the old HMAC and the new ed25519
//!   signature are both sent;
//! - OAuth2 client credentials: a token endpoint started by the test hands out tokens; one token
//!   serves many deliveries, a new one is fetched after a 401 (and the attempt tried again) and
//!   after expiry, and a failing token endpoint is recorded on the delivery (secret masked);
//!   under `--refuse-private-addresses` the token URL is refused like an endpoint's.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A receiver that verifies every signature of each request with the keys in `keys` (re-read
/// per request: `whsec_` with the standard library's HMAC, `whpk_` with cryptography's
/// Ed25519PublicKey), logs what verified with which key (a JSON line per request) and answers
/// 204 when a v1a signature verified, 401 otherwise.
const VERIFYING_RECEIVER: &str = r#"
import base64, hashlib, hmac, http.server, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

port, keys_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        signed = (self.headers["webhook-id"] + "." + self.headers["webhook-timestamp"] + ".").encode() + body
        keys = open(keys_path).read().split()
        results = []
        for signature in self.headers.get("webhook-signature", "").split():
            version, _, encoded = signature.partition(",")
            raw = base64.b64decode(encoded)
            verified_by = None
            for key in keys:
                if version == "v1a" and key.startswith("whpk_"):
                    try:
                        Ed25519PublicKey.from_public_bytes(base64.b64decode(key[5:])).verify(raw, signed)
                        verified_by = key
                    except InvalidSignature:
                        pass
                elif version == "v1" and key.startswith("whsec_"):
                    expected = hmac.new(base64.b64decode(key[6:]), signed, hashlib.sha256).digest()
                    if hmac.compare_digest(expected, raw):
                        verified_by = key
            results.append([version, verified_by])
        with open(log_path, "a") as log:
            log.write(json.dumps({"id": self.headers["webhook-id"], "signatures": results}) + "\n")
        self.send_response(204 if any(v == "v1a" and k for v, k in results) else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// Per request: its webhook-id and, per signature, its version and the key it verified with
/// (None: none).
type Logged = Vec<(String, Vec<(String, Option<String>)>)>;

struct PythonReceiver {
    child: Child,
    port: u16,
    keys: PathBuf,
    log: PathBuf,
    script: PathBuf,
}

impl PythonReceiver {
    fn start() -> PythonReceiver {
        // Debian's python3-cryptography is installed for /usr/bin/python3 (setup.sh).
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let port = free_port();
        let base =
            std::env::temp_dir().join(format!("ae-egress-auth-{}-{port}", std::process::id()));
        let (script, keys, log) = (
            base.with_extension("py"),
            base.with_extension("keys"),
            base.with_extension("log"),
        );
        std::fs::write(&script, VERIFYING_RECEIVER).unwrap();
        std::fs::write(&keys, "").unwrap();
        std::fs::write(&log, "").unwrap();
        let child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&keys)
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let listening = within(
            WAIT,
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            |up| *up,
        );
        assert!(listening, "the Python receiver did not start (is python3-cryptography installed? run scripts/setup.sh)");
        PythonReceiver {
            child,
            port,
            keys,
            log,
            script,
        }
    }

    fn trust(&self, keys: &[&str]) {
        std::fs::write(&self.keys, keys.join("\n")).unwrap();
    }

    fn requests(&self) -> Logged {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                let signatures = value["signatures"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s[0].as_str().unwrap().to_owned(),
                            s[1].as_str().map(str::to_owned),
                        )
                    })
                    .collect();
                (value["id"].as_str().unwrap().to_owned(), signatures)
            })
            .collect()
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for path in [&self.script, &self.keys, &self.log] {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn event_ids(client: &mut postgres::Client) -> Vec<String> {
    outbox_events(client).into_iter().map(|e| e.0).collect()
}

fn delivered(client: &mut postgres::Client, endpoint: &str, event_id: &str, what: &str) {
    wait_until_sql(
        client,
        what,
        WAIT,
        &format!(
            "SELECT EXISTS (SELECT FROM ae_events.delivery_status
                             WHERE endpoint = '{endpoint}' AND event_id = '{event_id}'
                               AND status = 'delivered')"
        ),
    );
}

#[test]
fn ed25519_signatures_verify_with_cryptography_and_a_rotation_sends_both_during_its_grace() {
    let (database, mut client) = delivery_database("egress_ed25519");
    let receiver = PythonReceiver::start();
    let url = format!("http://127.0.0.1:{}/hook", receiver.port);
    let hmac_secret = create_endpoint(&mut client, "signed", &url, "{1 second}");
    let first_public: String = client
        .query_one(
            "SELECT ae_events.rotate_endpoint_secret('signed', '1 hour', algorithm => 'ed25519')",
            &[],
        )
        .unwrap()
        .get(0);
    receiver.trust(&[&hmac_secret, &first_public]);
    let _relay = Relay::start(Cluster::shared(), &database, &[]);

    // During the grace: the new key's v1a and the old secret's v1, both verified.
    insert_instance(&mut client, 1);
    let first = event_ids(&mut client)[0].clone();
    delivered(&mut client, "signed", &first, "the first event");
    let requests = receiver.requests();
    let signatures = &requests.iter().find(|(id, _)| *id == first).unwrap().1;
    assert_eq!(
        signatures,
        &[
            ("v1a".to_owned(), Some(first_public.clone())),
            ("v1".to_owned(), Some(hmac_secret.clone())),
        ],
        "newest first, each verified with its key"
    );

    // Rotated again without grace: the new ed25519 key alone (the receiver trusts only it now:
    // a request the relay signed before it saw the rotation is answered 401 and retried).
    let second_public: String = client
        .query_one(
            "SELECT ae_events.rotate_endpoint_secret('signed', '0 s', algorithm => 'ed25519')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(second_public, first_public);
    receiver.trust(&[&second_public]);
    insert_instance(&mut client, 2);
    let second = event_ids(&mut client)[1].clone();
    delivered(&mut client, "signed", &second, "the second event");
    let requests = receiver.requests();
    let last = requests.iter().rev().find(|(id, _)| *id == second).unwrap();
    assert_eq!(last.1, [("v1a".to_owned(), Some(second_public.clone()))]);
}

/// The event's delivery to the endpoint once it has had an attempt (waiting for one): status,
/// attempts, last HTTP status, last error.
fn after_an_attempt(
    client: &mut postgres::Client,
    endpoint: &str,
    event_id: &str,
) -> (String, i32, Option<i32>, Option<String>) {
    wait_until_sql(
        client,
        &format!("an attempt of {endpoint}"),
        WAIT,
        &format!(
            "SELECT EXISTS (SELECT FROM ae_events.delivery_status
                             WHERE endpoint = '{endpoint}' AND event_id = '{event_id}'
                               AND attempts >= 1)"
        ),
    );
    delivery(client, endpoint, event_id).unwrap()
}

/// The token endpoint's behaviour, set by the test as it goes.
#[derive(Clone)]
enum TokenMode {
    /// Tokens tok-1, tok-2, ... that expire after this many seconds.
    Issue { expires_in: u64 },
    /// Answer 500 (echoing the client's credentials, as a careless server might).
    Fail,
}

const CLIENT_ID: &str = "relay-client";
const CLIENT_SECRET: &str = "s3cret/with+form:chars";

#[test]
fn oauth2_tokens_are_cached_renewed_after_a_401_and_after_expiry_and_failures_are_recorded() {
    let (database, mut client) = delivery_database("egress_oauth2");

    let mode = Arc::new(Mutex::new(TokenMode::Issue { expires_in: 3600 }));
    let issued = Arc::new(AtomicUsize::new(0));
    let token_endpoint = {
        let (mode, issued) = (mode.clone(), issued.clone());
        Receiver::start(move |request, _| {
            let mode = mode.lock().unwrap().clone();
            match mode {
                TokenMode::Issue { expires_in } => {
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    Answer::status(200)
                        .with_header("content-type", "application/json")
                        .with_body(&format!(
                            r#"{{"access_token": "tok-{n}-abcdef", "token_type": "Bearer", "expires_in": {expires_in}}}"#
                        ))
                }
                TokenMode::Fail => Answer::status(500).with_body(&format!(
                    r#"{{"error": "server_error", "you_sent": "{}"}}"#,
                    request.header("authorization")
                )),
            }
        })
    };
    // The receiver takes tokens it has not revoked.
    let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
    let receiver = {
        let revoked = revoked.clone();
        Receiver::start(move |request, _| {
            let authorization = request.header("authorization");
            let taken = authorization.starts_with("Bearer tok-")
                && !revoked.lock().unwrap().iter().any(|r| r == authorization);
            Answer::status(if taken { 200 } else { 401 })
        })
    };
    create_endpoint(&mut client, "oauth", &receiver.url("/hook"), "{1 second}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('oauth', headers => '{\"authorization\": \"static-is-replaced\"}',
                    oauth2_token_url => $1, oauth2_client_id => $2, oauth2_client_secret => $3,
                    oauth2_scope => 'webhooks:write audit')",
            &[&token_endpoint.url("/token"), &CLIENT_ID, &CLIENT_SECRET],
        )
        .unwrap();
    let relay = Relay::start(Cluster::shared(), &database, &[]);

    // One token for many deliveries.
    for instance in 1..=5 {
        insert_instance(&mut client, instance);
    }
    let events = event_ids(&mut client);
    for event in &events {
        delivered(&mut client, "oauth", event, "the first five events");
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "one token for five deliveries"
    );
    let token_requests = token_endpoint.requests();
    let request = &token_requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.body,
        "grant_type=client_credentials&scope=webhooks%3Awrite+audit"
    );
    assert_eq!(
        request.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    // client_secret_basic: id and secret form-encoded, then base64.
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD
        .encode("relay-client:s3cret%2Fwith%2Bform%3Achars");
    assert_eq!(request.header("authorization"), format!("Basic {expected}"));
    assert!(receiver
        .requests()
        .iter()
        .all(|r| r.header("authorization") == "Bearer tok-1-abcdef"));

    // A 401: a new token and the same attempt again (one attempt recorded, delivered).
    revoked
        .lock()
        .unwrap()
        .push("Bearer tok-1-abcdef".to_owned());
    *mode.lock().unwrap() = TokenMode::Issue { expires_in: 1 };
    insert_instance(&mut client, 6);
    let sixth = event_ids(&mut client)[5].clone();
    delivered(&mut client, "oauth", &sixth, "the event after the 401");
    assert_eq!(
        delivery(&mut client, "oauth", &sixth).unwrap().1,
        1,
        "one attempt"
    );
    let sixth_requests: Vec<String> = receiver
        .requests()
        .iter()
        .filter(|r| r.header("webhook-id") == sixth)
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(
        sixth_requests,
        ["Bearer tok-1-abcdef", "Bearer tok-2-abcdef"]
    );
    assert_eq!(issued.load(Ordering::SeqCst), 2);

    // Expired (expires_in 1 s): a new token before the request, no 401 needed.
    std::thread::sleep(Duration::from_millis(1500));
    insert_instance(&mut client, 7);
    let seventh = event_ids(&mut client)[6].clone();
    delivered(&mut client, "oauth", &seventh, "the event after expiry");
    let seventh_requests: Vec<String> = receiver
        .requests()
        .iter()
        .filter(|r| r.header("webhook-id") == seventh)
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(seventh_requests, ["Bearer tok-3-abcdef"]);

    // The token endpoint fails: a failed attempt saying so, the secret masked.
    *mode.lock().unwrap() = TokenMode::Fail;
    std::thread::sleep(Duration::from_millis(1500));
    insert_instance(&mut client, 8);
    let eighth = event_ids(&mut client)[7].clone();
    let (status, _, http_status, error) = after_an_attempt(&mut client, "oauth", &eighth);
    let error = error.unwrap();
    assert_eq!((status.as_str(), http_status), ("pending", None));
    assert!(
        error.starts_with("OAuth2 token endpoint: HTTP 500: "),
        "{error}"
    );
    assert!(
        !error.contains(&expected) && !error.contains(CLIENT_SECRET),
        "{error}"
    );
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.header("webhook-id") != eighth),
        "nothing sent without a token"
    );

    // Back up: delivered on a retry.
    *mode.lock().unwrap() = TokenMode::Issue { expires_in: 3600 };
    delivered(
        &mut client,
        "oauth",
        &eighth,
        "the event once tokens come again",
    );

    // Neither the secret, its Basic credentials nor a token in the relay's log (debug level).
    let log = relay.log();
    assert!(log.contains("serving endpoint"), "{log}");
    for secret in [
        CLIENT_SECRET,
        expected.as_str(),
        "tok-1-abcdef",
        "tok-4-abcdef",
    ] {
        assert!(!log.contains(secret), "the relay's log shows {secret}");
    }
}

#[test]
fn an_oauth2_token_url_is_guarded_like_an_endpoint_url() {
    let (database, mut client) = delivery_database("egress_oauth2_guard");
    let token_endpoint = Receiver::ok();
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "guarded", &receiver.url("/hook"), "{1 second}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('guarded', oauth2_token_url => $1,
                    oauth2_client_id => 'id', oauth2_client_secret => $2)",
            &[&token_endpoint.url("/token"), &CLIENT_SECRET],
        )
        .unwrap();
    let _relay = Relay::start(
        Cluster::shared(),
        &database,
        &["--refuse-private-addresses"],
    );
    insert_instance(&mut client, 1);
    let event = event_ids(&mut client)[0].clone();
    let error = after_an_attempt(&mut client, "guarded", &event).3.unwrap();
    assert!(
        error.starts_with("OAuth2 token endpoint: refused: 127.0.0.1 is a loopback address"),
        "{error}"
    );
    assert_eq!(
        token_endpoint.count(),
        0,
        "the token URL was never contacted"
    );
    assert_eq!(receiver.count(), 0);
}

/// A token endpoint that answers more than the relay reads (64 KiB), or answers too late, holds
/// nothing: each is a failed attempt saying so, and nothing goes to the receiver.
#[test]
fn a_token_answer_past_its_bounds_is_a_failed_attempt_saying_so() {
    let (database, mut client) = delivery_database("egress_oauth2_bounds");
    let token_endpoint = Receiver::start(|request, _| {
        if request.path == "/slow" {
            Answer::status(200).after(Duration::from_secs(30))
        } else if request.path == "/ok" {
            Answer::status(200)
                .with_header("content-type", "application/json")
                .with_body(r#"{"access_token": "tok-always-refused", "expires_in": 3600}"#)
        } else {
            let huge = "x".repeat(70 * 1024);
            Answer::status(200)
                .with_header("content-type", "application/json")
                .with_body(&format!(r#"{{"access_token": "{huge}"}}"#))
        }
    });
    let receiver = Receiver::ok();
    // A receiver that refuses every token: one new token, one more try, no more.
    let refusing = Receiver::start(|_, _| Answer::status(401));
    for (endpoint, path, url) in [
        ("huge", "/huge", receiver.url("/hook")),
        ("slow", "/slow", receiver.url("/hook")),
        ("refused", "/ok", refusing.url("/hook")),
    ] {
        create_endpoint(&mut client, endpoint, &url, "{1 hour}");
        client
            .execute(
                "SELECT ae_events.alter_endpoint($1, timeout => '2 seconds',
                        oauth2_token_url => $2, oauth2_client_id => 'id',
                        oauth2_client_secret => $3)",
                &[&endpoint, &token_endpoint.url(path), &CLIENT_SECRET],
            )
            .unwrap();
    }
    let _relay = Relay::start(Cluster::shared(), &database, &[]);
    insert_instance(&mut client, 1);
    let event = event_ids(&mut client)[0].clone();
    for (endpoint, expected) in [
        (
            "huge",
            "OAuth2 token endpoint: HTTP 200: an answer of more than 65536 bytes",
        ),
        (
            "slow",
            "OAuth2 token endpoint: no token within the attempt's 2000 ms",
        ),
        ("refused", "HTTP 401: answer"),
    ] {
        let error = after_an_attempt(&mut client, endpoint, &event).3.unwrap();
        assert_eq!(error, expected);
    }
    assert_eq!(receiver.count(), 0, "nothing sent without a token");
    let token_requests = token_endpoint
        .requests()
        .iter()
        .filter(|r| r.path == "/ok")
        .count();
    assert_eq!(
        (token_requests, refusing.count()),
        (2, 2),
        "one attempt: a token, a 401, one new token, one more try"
    );
}
