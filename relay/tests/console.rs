//! `ae-relay console` (shared/contract/console.md): the real binary against a throwaway cluster,
//! real receivers on 127.0.0.1, the relay delivering, and Debian's chromium driven through
//! chromedriver (WebDriver) for what a browser does (sign in, click, run or not run script).
//!
//! One cluster, one database, one relay, one console and one chromedriver for the whole file
//! (started on first use); each test has its own endpoints (filtered to its own instances) and
//! roles, so that the tests may run at once. Browser tests take turns (two cores).

mod support;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use postgres::Client;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::*;

const OPERATOR: (&str, &str) = ("con_operator", "operator-pass");
const READER: (&str, &str) = ("con_reader", "reader-pass");
const NOBODY: (&str, &str) = ("con_nobody", "nobody-pass");
/// Roles of their own for the tests that count their role's connections.
const SIGNOUT: (&str, &str) = ("con_signout", "signout-pass");
const EXPIRY: (&str, &str) = ("con_expiry", "expiry-pass");
const ABSOLUTE: (&str, &str) = ("con_absolute", "absolute-pass");

/// The file's shared parts.
struct Env {
    database: String,
    /// The console's port.
    port: u16,
    _console: Child,
}

/// Kill `pid` (with `group`: its process group) when this test process ends: statics are never
/// dropped, and a console, relay or browser left running would outlive the test.
// The watchdog outlives this process by design: nobody waits for it.
#[allow(clippy::zombie_processes)]
fn kill_when_this_process_ends(pid: u32, group: bool) {
    let target = if group {
        format!("-- -{pid}")
    } else {
        pid.to_string()
    };
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {target} 2>/dev/null",
        me = std::process::id()
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watchdog");
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let cluster = Cluster::shared();
        let (database, _client) = delivery_database("console");
        // Password authentication for the console's roles (the cluster trusts everyone else):
        // a wrong password must be refused by the database.
        let hba = cluster.data_dir.join("pg_hba.conf");
        let existing = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all +console_login 127.0.0.1/32 scram-sha-256\n{existing}"),
        )
        .unwrap();
        let mut admin = cluster.connect("postgres");
        admin
            .batch_execute(&format!(
                "CREATE ROLE console_login NOLOGIN;
                 CREATE ROLE {o} LOGIN PASSWORD '{op}' IN ROLE console_login, ae_events_operator;
                 CREATE ROLE {r} LOGIN PASSWORD '{rp}' IN ROLE console_login, ae_events_reader;
                 CREATE ROLE {n} LOGIN PASSWORD '{np}' IN ROLE console_login;
                 CREATE ROLE {s} LOGIN PASSWORD '{sp}' IN ROLE console_login, ae_events_reader;
                 CREATE ROLE {e} LOGIN PASSWORD '{ep}' IN ROLE console_login, ae_events_reader;
                 CREATE ROLE {a} LOGIN PASSWORD '{ap}' IN ROLE console_login, ae_events_reader;
                 SELECT pg_reload_conf();",
                o = OPERATOR.0,
                op = OPERATOR.1,
                r = READER.0,
                rp = READER.1,
                n = NOBODY.0,
                np = NOBODY.1,
                s = SIGNOUT.0,
                sp = SIGNOUT.1,
                e = EXPIRY.0,
                ep = EXPIRY.1,
                a = ABSOLUTE.0,
                ap = ABSOLUTE.1,
            ))
            .unwrap();
        let relay = Relay::start(cluster, &database, &[]);
        kill_when_this_process_ends(relay.pid(), false);
        // Kept running for the whole file (never dropped: the watchdog ends it).
        std::mem::forget(relay);
        let (console, port) = start_console(&database, &[]);
        Env {
            database,
            port,
            _console: console,
        }
    })
}

/// The stderr (its log) of the console on `port`.
fn console_log(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ae-console-{}-{port}.log", std::process::id()))
}

/// `ae-relay console` on a free port, once it answers; killed when this process ends.
fn start_console(database: &str, extra: &[&str]) -> (Child, u16) {
    let port = free_port();
    let log = std::fs::File::create(console_log(port)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .arg("console")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        // The URL's user is not used for sessions: each signs in as its own role.
        .env(
            "DATABASE_URL",
            format!(
                "postgres://nobody-here@127.0.0.1:{}/{database}",
                Cluster::shared().port
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ae-relay console");
    kill_when_this_process_ends(child.id(), false);
    let started = within(
        Duration::from_secs(30),
        || get(port, "/login").map(|(status, _)| status),
        |status| *status == Some(200),
    );
    assert_eq!(started, Some(200), "the console did not start");
    (child, port)
}

// ------------------------------------------------------------------------------------------
// Plain HTTP, for what needs no browser (and to see headers a browser hides).

struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request over HTTP/1.0 (`Connection: close`); `cookie` is the session id (of the
/// `ae_console` cookie), or a whole `name=value` pair (`__Host-ae_console=…`).
fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Http {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect console");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    if let Some(cookie) = cookie {
        if cookie.contains('=') {
            request.push_str(&format!("Cookie: {cookie}\r\n"));
        } else {
            request.push_str(&format!("Cookie: ae_console={cookie}\r\n"));
        }
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Http {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let value: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={value}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn same_origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// POST /login; the answer.
fn login(port: u16, (user, password): (&str, &str)) -> Http {
    http(
        port,
        "POST",
        "/login",
        None,
        &[("Origin", &same_origin(port))],
        Some(&form_encode(&[("username", user), ("password", password)])),
    )
}

/// The `ae_console` session id a sign-in's answer sets.
fn cookie_of(answer: &Http) -> String {
    answer
        .header("set-cookie")
        .and_then(|set| set.strip_prefix("ae_console="))
        .and_then(|rest| rest.split(';').next())
        .expect("an ae_console cookie")
        .to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &Http) -> String {
    page.body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned()
}

/// A signed-in session: (cookie value, CSRF token).
fn session(port: u16, role: (&str, &str)) -> (String, String) {
    let answer = login(port, role);
    assert_eq!(answer.status, 303, "sign-in of {}: {}", role.0, answer.body);
    let cookie = cookie_of(&answer);
    let page = http(port, "GET", "/", Some(&cookie), &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    (cookie, csrf_of(&page))
}

/// POST an action form as a session.
fn post(
    port: u16,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> Http {
    let own = same_origin(port);
    let headers: Vec<(&str, &str)> = match origin {
        Some(origin) => vec![("Origin", origin)],
        None => vec![("Origin", own.as_str())],
    };
    http(
        port,
        "POST",
        path,
        Some(cookie),
        &headers,
        Some(&form_encode(fields)),
    )
}

/// The connections the console holds for a role.
fn console_connections(client: &mut Client, role: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE usename = $1 AND application_name = 'ae-relay console'",
            &[&role],
        )
        .unwrap()
        .get(0)
}

/// Wait (up to `timeout`) until `role` has `expected` console connections, and say `why` if
/// it does not.
fn wait_for_console_connections(
    client: &mut Client,
    role: &str,
    expected: i64,
    timeout: Duration,
    why: &str,
) {
    let left = within(
        timeout,
        || console_connections(client, role),
        |n| *n == expected,
    );
    assert_eq!(left, expected, "{why}");
}

/// An endpoint that takes only the events of one instance (the tests share the database).
fn endpoint_for(client: &mut Client, name: &str, url: &str, instance: i64) -> String {
    let secret: String = client
        .query_one(
            "SELECT ae_events.create_endpoint($1, $2, NULL::text[], $3::text::jsonpath)",
            &[&name, &url, &format!("$.id == {instance}")],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT ae_events.alter_endpoint($1, retry_schedule => '{100 milliseconds}', retry_jitter => 0)",
            &[&name],
        )
        .unwrap();
    secret
}

fn delivery_state(client: &mut Client, endpoint: &str) -> Vec<(String, i32)> {
    client
        .query(
            "SELECT status, attempts FROM ae_events.deliveries WHERE endpoint = $1 ORDER BY outbox_id",
            &[&endpoint],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn wait_dead(client: &mut Client, endpoint: &str) {
    wait_until_sql(
        client,
        &format!("a dead letter for {endpoint}"),
        Duration::from_secs(60),
        &format!(
            "SELECT EXISTS (SELECT FROM ae_events.deliveries WHERE endpoint = '{}' AND status = 'dead')",
            endpoint.replace('\'', "''")
        ),
    );
}

// ------------------------------------------------------------------------------------------
// The browser: one chromedriver for the file; each browser test its own session, in turn.

static BROWSER_TURN: Mutex<()> = Mutex::new(());

fn chromedriver() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let port = free_port();
        use std::os::unix::process::CommandExt as _;
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the watchdog ends it and the browsers it started.
            .process_group(0)
            .spawn()
            .expect("start /usr/bin/chromedriver (scripts/setup.sh installs chromium-driver)");
        kill_when_this_process_ends(child.id(), true);
        std::mem::forget(child);
        // Listening is enough: the first session waits for it to be ready.
        let ready = within(
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            |listening| *listening,
        );
        assert!(ready, "chromedriver did not start");
        port
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A headless chromium with a fresh profile. The networking flags matter: without them this
/// machine's closed network makes chromium hang at start.
async fn open_browser(driver: u16) -> (Browser, Profile) {
    let profile = std::env::temp_dir().join(format!(
        "ae-console-chromium-{}-{}",
        std::process::id(),
        free_port()
    ));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1200,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver}"))
        .await
        .expect("a chromium session");
    (browser, Profile(profile))
}

/// The browser's profile directory, removed when the test is done with it.
struct Profile(std::path::PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn browser_sign_in(browser: &Browser, port: u16, (user, password): (&str, &str)) {
    browser
        .goto(&format!("http://127.0.0.1:{port}/login"))
        .await
        .unwrap();
    browser
        .find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    let submit = browser
        .find(Locator::Css("section.login button[type=submit]"))
        .await
        .unwrap();
    click_and_wait(browser, submit).await;
    let path = browser.current_url().await.unwrap().path().to_owned();
    assert_eq!(
        path,
        "/",
        "signed in, the browser is on the endpoints page: {}",
        visible_text(browser).await
    );
}

/// Click, and wait until the browser shows the page the click led to (the old page's root is
/// gone and the new one is loaded): WebDriver's click returns before that.
async fn click_and_wait(browser: &Browser, element: fantoccini::elements::Element) {
    let old = browser.find(Locator::Css("html")).await.unwrap();
    element.click().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while old.tag_name().await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the click led nowhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while browser
        .execute("return document.readyState;", vec![])
        .await
        .map(|state| state != "complete")
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the page did not load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's visible text.
async fn visible_text(browser: &Browser) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// With AE_EVENTS_BLESS=1, the page as docs/console/NAME.png.
async fn screenshot(browser: &Browser, name: &str) {
    if std::env::var("AE_EVENTS_BLESS").as_deref() != Ok("1") {
        return;
    }
    let png = browser.screenshot().await.unwrap();
    let path = repository_root().join(format!("docs/console/{name}.png"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
}

// ------------------------------------------------------------------------------------------

/// The operator's story: a receiver answering 500 shows as a failing endpoint with its last
/// status; the instance's page shows the dead letter; after the receiver recovered, Redeliver
/// (confirmed) sends it again and the receiver gets it with the original webhook-id.
/// With AE_EVENTS_BLESS=1 it writes docs/console/*.png: run it alone then (`cargo test -p
/// ae-relay --test console an_operator`), so that no other test's endpoints are in them.
#[test]
fn an_operator_sees_a_failing_endpoint_and_redelivers_a_dead_letter() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let recovered = Arc::new(AtomicBool::new(false));
    let receiver = {
        let recovered = recovered.clone();
        Receiver::start(move |_, _| {
            if recovered.load(Ordering::SeqCst) {
                Answer::status(200)
            } else {
                Answer::status(500)
            }
        })
    };
    endpoint_for(&mut client, "recruiter", &receiver.url("/hook"), 789);
    // A healthy one beside it (and in the screenshots).
    let healthy = Receiver::ok();
    endpoint_for(&mut client, "analytics", &healthy.url("/"), 789);
    insert_instance(&mut client, 789);
    wait_dead(&mut client, "recruiter");
    healthy.wait_for("the healthy delivery", Duration::from_secs(60), |r| {
        !r.is_empty()
    });
    let original = receiver.requests()[0].header("webhook-id").to_owned();
    assert!(!original.is_empty());

    let _turn = BROWSER_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (browser, _profile) = rt.block_on(open_browser(chromedriver()));
    rt.block_on(async {
        browser_sign_in(&browser, env.port, OPERATOR).await;
        let row = browser
            .find(Locator::XPath(
                "//tr[.//a[@class='endpoint-name' and text()='recruiter']]",
            ))
            .await
            .expect("the endpoint's row on /");
        let class = row.attr("class").await.unwrap().unwrap_or_default();
        let text = row.text().await.unwrap();
        assert!(class.contains("state-failing"), "{class}: {text}");
        assert!(text.contains("failing"), "{text}");
        assert!(text.contains("HTTP 500"), "the last status: {text}");
        screenshot(&browser, "endpoints").await;

        let link = browser.find(Locator::LinkText("recruiter")).await.unwrap();
        click_and_wait(&browser, link).await;
        let page = visible_text(&browser).await;
        assert!(page.contains("Dead letters"), "{page}");
        assert!(page.contains("HTTP 500"), "{page}");
        screenshot(&browser, "endpoint").await;

        browser
            .goto(&format!("http://127.0.0.1:{}/instances/789", env.port))
            .await
            .unwrap();
        let page = visible_text(&browser).await;
        assert!(page.contains("dead"), "{page}");
        screenshot(&browser, "instance").await;
    });

    recovered.store(true, Ordering::SeqCst);
    let before = receiver.count();
    rt.block_on(async {
        let button = browser
            .find(Locator::XPath(
                "//tr[.//a[text()='recruiter']]//button[text()='Redeliver']",
            ))
            .await
            .expect("a Redeliver button on the dead letter");
        click_and_wait(&browser, button).await;
        let page = visible_text(&browser).await;
        assert!(page.contains("Confirm"), "a confirmation first: {page}");
        let confirm = browser
            .find(Locator::XPath("//button[text()='Confirm']"))
            .await
            .unwrap();
        click_and_wait(&browser, confirm).await;
        let page = visible_text(&browser).await;
        assert!(
            page.contains("Queued 1 delivery again"),
            "says what it did: {page}"
        );
    });
    let requests = receiver.wait_for("the redelivery", Duration::from_secs(60), |requests| {
        requests.len() > before
    });
    assert_eq!(
        requests[before].header("webhook-id"),
        original,
        "redelivered with the original webhook-id"
    );
    wait_until_sql(
        &mut client,
        "the redelivery recorded",
        Duration::from_secs(60),
        "SELECT EXISTS (SELECT FROM ae_events.deliveries WHERE endpoint = 'recruiter' AND status = 'delivered')",
    );
    rt.block_on(browser.close()).unwrap();
}

/// Wrong password and unknown role: one message, the database's reason in the console's log
/// (never the password); a role without grants: a page naming them; signing in again from a
/// browser with a session ends the old one; signing out closes the session's database
/// connection.
#[test]
fn sign_in_refusals_and_signing_out() {
    let env = env();
    let wrong = login(env.port, (OPERATOR.0, "not-the-password"));
    let unknown = login(env.port, ("no_such_role", "whatever-password"));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert!(wrong.body.contains("wrong role name or password"));
    assert!(wrong.header("set-cookie").is_none());
    // The same page for both: nothing tells which roles exist.
    assert_eq!(wrong.body, unknown.body);
    // The log tells the DBA why: 28P01 for the wrong password (scram-sha-256 in pg_hba.conf),
    // 28000 for the unknown role (the cluster trusts every other role).
    let log = within(
        Duration::from_secs(30),
        || std::fs::read_to_string(console_log(env.port)).unwrap_or_default(),
        |log| log.contains("28P01") && log.contains("28000"),
    );
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("console sign-in refused"))
        .collect();
    assert!(
        refused.iter().any(|line| line.contains("WARN")
            && line.contains("28P01 password authentication failed")
            && line.contains(OPERATOR.0)),
        "{log}"
    );
    assert!(
        refused
            .iter()
            .any(|line| line.contains("28000") && line.contains("no_such_role")),
        "{log}"
    );
    for password in ["not-the-password", "whatever-password", OPERATOR.1] {
        assert!(!log.contains(password), "the log shows a password: {log}");
    }

    let nobody = login(env.port, NOBODY);
    assert_eq!(nobody.status, 403, "{}", nobody.body);
    assert!(
        nobody.body.contains("GRANT ae_events_reader TO con_nobody"),
        "{}",
        nobody.body
    );
    assert!(nobody.body.contains("ae_events_operator"));
    assert!(nobody.header("set-cookie").is_none());

    let mut admin = Cluster::shared().connect(&env.database);
    let (old, _) = session(env.port, SIGNOUT);
    assert_eq!(console_connections(&mut admin, SIGNOUT.0), 1);
    // Signing in again with the old session's cookie: the old session and its connection go.
    let again = http(
        env.port,
        "POST",
        "/login",
        Some(&old),
        &[("Origin", &same_origin(env.port))],
        Some(&form_encode(&[
            ("username", SIGNOUT.0),
            ("password", SIGNOUT.1),
        ])),
    );
    assert_eq!(again.status, 303, "{}", again.body);
    let cookie = cookie_of(&again);
    assert_ne!(cookie, old);
    wait_for_console_connections(
        &mut admin,
        SIGNOUT.0,
        1,
        Duration::from_secs(30),
        "the old session's connection is closed",
    );
    let stale = http(env.port, "GET", "/", Some(&old), &[], None);
    assert_eq!(stale.status, 303);
    let page = http(env.port, "GET", "/", Some(&cookie), &[], None);
    assert_eq!(page.status, 200);
    let csrf = csrf_of(&page);
    let out = post(env.port, &cookie, "/logout", &[("csrf", &csrf)], None);
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(out.header("set-cookie").unwrap_or("").contains("Max-Age=0"));
    wait_for_console_connections(
        &mut admin,
        SIGNOUT.0,
        0,
        Duration::from_secs(30),
        "signing out closes the session's connection",
    );
    let after = http(env.port, "GET", "/", Some(&cookie), &[], None);
    assert_eq!(after.status, 303);
    assert_eq!(after.header("location"), Some("/login"));
}

/// A console of its own with short session limits, set in the configuration file (its keys
/// are the options' names; the timeouts are hidden options), with --secure-cookies.
fn short_console(name: &str, settings: &str) -> (Child, u16) {
    let config =
        std::env::temp_dir().join(format!("ae-console-{}-{name}.toml", std::process::id()));
    std::fs::write(&config, format!("secure-cookies = true\n{settings}")).unwrap();
    start_console(&env().database, &["--config", config.to_str().unwrap()])
}

/// The `name=value` pair of the `__Host-ae_console` cookie a sign-in sets (--secure-cookies):
/// Secure, Path=/ and no Domain, as browsers require of a `__Host-` cookie.
fn secure_cookie_of(answer: &Http) -> String {
    let set_cookie = answer.header("set-cookie").expect("a session cookie");
    assert!(set_cookie.starts_with("__Host-ae_console="), "{set_cookie}");
    for flag in ["; Secure", "; Path=/", "; HttpOnly", "; SameSite=Strict"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
    assert!(
        !set_cookie.to_ascii_lowercase().contains("domain"),
        "{set_cookie}"
    );
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A session unused for longer than the idle timeout is over: its connection is closed without
/// a request, and the page then sends the browser to sign in again. Also: the Secure cookie's
/// name and flags with --secure-cookies. (Nothing here depends on when the sweeper runs: the
/// sign-in opened the connection, and it is waited for to close.)
#[test]
fn an_idle_session_expires() {
    let env = env();
    let (_console, port) = short_console("idle", "idle-timeout = \"2s\"\n");
    let answer = login(port, EXPIRY);
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = secure_cookie_of(&answer);
    let mut admin = Cluster::shared().connect(&env.database);
    // The sweeper closes it without a request.
    wait_for_console_connections(
        &mut admin,
        EXPIRY.0,
        0,
        Duration::from_secs(60),
        "an expired session's connection is closed",
    );
    let page = http(port, "GET", "/", Some(&cookie), &[], None);
    assert_eq!(page.status, 303);
    assert!(page.header("location").unwrap_or("").starts_with("/login"));
}

/// A session in use outlives the idle timeout, but not the absolute one: requests every half
/// second keep it past 2 s idle; after 5 s in all it is refused and its connection closed.
/// The session cookie is `__Host-ae_console` (--secure-cookies), and that name is accepted.
#[test]
fn a_session_in_use_ends_at_the_absolute_timeout() {
    let env = env();
    let (_console, port) = short_console(
        "absolute",
        "idle-timeout = \"2s\"\nabsolute-timeout = \"5s\"\n",
    );
    let start = std::time::Instant::now();
    let answer = login(port, ABSOLUTE);
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = secure_cookie_of(&answer);
    let mut last_served = Duration::ZERO;
    let refused = loop {
        let page = http(port, "GET", "/", Some(&cookie), &[], None);
        let elapsed = start.elapsed();
        if page.status != 200 {
            break page;
        }
        last_served = elapsed;
        assert!(
            elapsed < Duration::from_secs(30),
            "the session outlived its absolute timeout"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        last_served >= Duration::from_secs(3),
        "requests keep the session past the idle timeout (served until {last_served:?})"
    );
    assert_eq!(refused.status, 303, "{}", refused.body);
    assert!(refused
        .header("location")
        .unwrap_or("")
        .starts_with("/login"));
    let mut admin = Cluster::shared().connect(&env.database);
    wait_for_console_connections(
        &mut admin,
        ABSOLUTE.0,
        0,
        Duration::from_secs(60),
        "the ended session's connection is closed",
    );
}

/// A reader sees no action buttons, and an action it forges (valid session and CSRF token) is
/// refused by the database: 42501 on the page, nothing changed.
#[test]
fn a_reader_sees_no_buttons_and_the_database_refuses_its_actions() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let receiver = Receiver::start(|_, _| Answer::status(500));
    endpoint_for(&mut client, "readers_view", &receiver.url("/"), 790);
    insert_instance(&mut client, 790);
    wait_dead(&mut client, "readers_view");
    let event_id: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.delivery_status WHERE endpoint = 'readers_view'",
            &[],
        )
        .unwrap()
        .get(0);
    let (cookie, csrf) = session(env.port, READER);
    for path in [
        "/".to_owned(),
        "/endpoints/readers_view".to_owned(),
        "/instances/790".to_owned(),
        format!("/events/{event_id}"),
    ] {
        let page = http(env.port, "GET", &path, Some(&cookie), &[], None);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        for action in [
            "Redeliver",
            "Replay",
            "Disable",
            "Enable",
            "Send test event",
        ] {
            assert!(
                !page.body.contains(&format!(">{action}</button>")),
                "{path} shows a reader the {action} button"
            );
        }
    }
    let before = delivery_state(&mut client, "readers_view");
    let forged = post(
        env.port,
        &cookie,
        "/endpoints/readers_view/redeliver",
        &[("csrf", &csrf), ("event_id", &event_id), ("confirm", "yes")],
        None,
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("42501"), "{}", forged.body);
    assert!(forged.body.contains("permission denied"), "{}", forged.body);
    let disable = post(
        env.port,
        &cookie,
        "/endpoints/readers_view/disable",
        &[("csrf", &csrf), ("confirm", "yes")],
        None,
    );
    assert_eq!(disable.status, 403, "{}", disable.body);
    assert!(disable.body.contains("42501"));
    assert_eq!(delivery_state(&mut client, "readers_view"), before);
    let enabled: bool = client
        .query_one(
            "SELECT enabled FROM ae_events.endpoints WHERE endpoint = 'readers_view'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(enabled);
}

/// A page of another site whose name an attacker points at the console's address (DNS
/// rebinding) names its own host: refused before any page or sign-in, whatever the path.
#[test]
fn requests_naming_another_host_are_refused() {
    let env = env();
    let rebound = format!("attacker.example:{}", env.port);
    let origin = format!("http://{rebound}");
    let page = http(env.port, "GET", "/login", None, &[("Host", &rebound)], None);
    assert_eq!(page.status, 421, "{}", page.body);
    let (user, password) = OPERATOR;
    let sign_in = http(
        env.port,
        "POST",
        "/login",
        None,
        &[("Host", &rebound), ("Origin", &origin)],
        Some(&form_encode(&[("username", user), ("password", password)])),
    );
    assert_eq!(sign_in.status, 421, "{}", sign_in.body);
    assert!(sign_in.header("set-cookie").is_none());
    let (cookie, _) = session(env.port, OPERATOR);
    let read = http(
        env.port,
        "GET",
        "/",
        Some(&cookie),
        &[("Host", &rebound)],
        None,
    );
    assert_eq!(read.status, 421);
    assert!(!read.body.contains("csrf_target") && !read.body.contains("<table"));
    // The loopback names of the listen address are served.
    let local = format!("localhost:{}", env.port);
    let page = http(
        env.port,
        "GET",
        "/",
        Some(&cookie),
        &[("Host", &local)],
        None,
    );
    assert_eq!(page.status, 200);
}

/// A POST without the CSRF token, or from another origin, is refused; a GET to an action path
/// changes nothing; the cookie's flags and the pages' headers.
#[test]
fn forged_requests_change_nothing() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    endpoint_for(&mut client, "csrf_target", "http://127.0.0.1:9/", 791);
    let enabled = |client: &mut Client| -> bool {
        client
            .query_one(
                "SELECT enabled FROM ae_events.endpoints WHERE endpoint = 'csrf_target'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let answer = login(env.port, OPERATOR);
    let set_cookie = answer.header("set-cookie").unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "not without --secure-cookies"
    );
    let (cookie, csrf) = session(env.port, OPERATOR);

    let page = http(
        env.port,
        "GET",
        "/endpoints/csrf_target",
        Some(&cookie),
        &[],
        None,
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("same-origin"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.body.contains(">Disable</button>"),
        "an operator's buttons"
    );

    let no_token = post(
        env.port,
        &cookie,
        "/endpoints/csrf_target/disable",
        &[("confirm", "yes")],
        None,
    );
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let wrong_token = post(
        env.port,
        &cookie,
        "/endpoints/csrf_target/disable",
        &[("csrf", &"0".repeat(64)), ("confirm", "yes")],
        None,
    );
    assert_eq!(wrong_token.status, 403);
    let foreign = post(
        env.port,
        &cookie,
        "/endpoints/csrf_target/disable",
        &[("csrf", &csrf), ("confirm", "yes")],
        Some("http://evil.example"),
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    for path in [
        "redeliver",
        "redeliver-dead",
        "replay",
        "enable",
        "disable",
        "test",
    ] {
        let got = http(
            env.port,
            "GET",
            &format!(
                "/endpoints/csrf_target/{path}?csrf={csrf}&confirm=yes&since=2000-01-01T00:00"
            ),
            Some(&cookie),
            &[],
            None,
        );
        assert_ne!(got.status, 200, "GET {path}");
        assert_ne!(got.status / 100, 3, "GET {path}");
    }
    let logout = http(env.port, "GET", "/logout", Some(&cookie), &[], None);
    assert_ne!(logout.status, 200);
    assert!(enabled(&mut client), "nothing was disabled");
    let tests: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.test_events t JOIN ae_events.endpoints e USING (endpoint_id)
              WHERE e.endpoint = 'csrf_target'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tests, 0, "no test event was sent");
    // The session still works (the GET /logout did not end it), and the same POST with the
    // token, confirmed, does disable: the refusals above were the checks, not a broken form.
    let first = post(
        env.port,
        &cookie,
        "/endpoints/csrf_target/disable",
        &[("csrf", &csrf)],
        None,
    );
    assert_eq!(first.status, 200);
    assert!(first.body.contains("Confirm"));
    assert!(enabled(&mut client), "the first step only asks");
    let done = post(
        env.port,
        &cookie,
        "/endpoints/csrf_target/disable",
        &[("csrf", &csrf), ("confirm", "yes")],
        None,
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(!enabled(&mut client));
}

/// Markup in a receiver's error body, an endpoint's name and a payload value is shown as text:
/// no script runs (the flag it would set stays unset) and the page's text shows the markup.
#[test]
fn markup_from_data_is_shown_as_text_and_never_runs() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let body = "<script>window.pwned=1;document.title='pwned'</script><img src=x onerror=\"window.pwned=2\">";
    let receiver = Receiver::start(move |_, _| Answer::status(500).with_body(body));
    let name = "evil<script>window.pwned=3</script><img src=x onerror=\"window.pwned=4\">";
    endpoint_for(&mut client, name, &receiver.url("/"), 792);
    insert_instance(&mut client, 792);
    set_external_id(
        &mut client,
        792,
        "<script>window.pwned=5</script><img src=x onerror=\"window.pwned=6\">",
    );
    wait_dead(&mut client, name);
    let event_id: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_id = 792 ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);

    let _turn = BROWSER_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let (browser, _profile) = rt.block_on(open_browser(chromedriver()));
    rt.block_on(async {
        browser_sign_in(&browser, env.port, OPERATOR).await;
        let base = format!("http://127.0.0.1:{}", env.port);
        let endpoint_path = format!(
            "/endpoints/{}",
            name.bytes()
                .map(|b| if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        );
        for (path, shows) in [
            (
                "/".to_owned(),
                vec!["<script>window.pwned=3</script>", "<script>window.pwned=1"],
            ),
            (
                endpoint_path,
                vec![
                    "<script>window.pwned=3</script>",
                    "onerror=\"window.pwned=2\"",
                ],
            ),
            (
                format!("/events/{event_id}"),
                vec![
                    "<script>window.pwned=5</script>",
                    // In the JSON text the quotes are escaped.
                    r#"onerror=\"window.pwned=6\""#,
                    "<script>window.pwned=1",
                ],
            ),
            (
                "/instances/792".to_owned(),
                vec!["<script>window.pwned=3</script>", "<script>window.pwned=1"],
            ),
        ] {
            browser.goto(&format!("{base}{path}")).await.unwrap();
            let text = visible_text(&browser).await;
            for literal in shows {
                assert!(
                    text.contains(literal),
                    "{path} shows {literal:?} as text:\n{text}"
                );
            }
            let flag = browser
                .execute("return [typeof window.pwned, document.title];", vec![])
                .await
                .unwrap();
            assert_eq!(flag[0], "undefined", "script ran on {path}");
            // The receiver's script would set the title to exactly this.
            assert_ne!(flag[1], "pwned", "script ran on {path}");
        }
    });
    rt.block_on(browser.close()).unwrap();
}

/// No page shows an endpoint's signing secret or a header value, even to a DBA (who could read
/// them in SQL): every page's HTML is searched.
#[test]
fn no_secret_or_header_value_in_any_page() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let receiver = Receiver::start(|request, _| {
        // The error body echoes what the relay sent: the header value comes back (the
        // database masks it in error texts).
        Answer::status(500).with_body(&format!("got {}", request.header("authorization")))
    });
    let secret = endpoint_for(&mut client, "with_secrets", &receiver.url("/"), 793);
    let header_value = "Bearer header-value-that-must-not-show";
    client
        .execute(
            "SELECT ae_events.alter_endpoint('with_secrets', headers => $1::text::jsonb)",
            &[&serde_json::json!({ "authorization": header_value }).to_string()],
        )
        .unwrap();
    insert_instance(&mut client, 793);
    wait_dead(&mut client, "with_secrets");
    assert!(
        receiver.requests()[0].header("authorization") == header_value,
        "the receiver got the header"
    );
    let event_id: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_id = 793 ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    // Egress secrets (issue 25), set now that the dead letter is there: a proxy's password, a
    // client key, an OAuth2 client secret, an ed25519 private key.
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["relay.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let client_key = key.serialize_pem();
    client
        .execute(
            "SELECT ae_events.alter_endpoint('with_secrets',
                    proxy => 'http://relay:proxy-pass-must-not-show@proxy.example:3128',
                    client_certificate => $1, client_key => $2,
                    oauth2_token_url => 'https://auth.example/token', oauth2_client_id => 'relay',
                    oauth2_client_secret => 'oauth-secret-must-not-show')",
            &[&certificate, &client_key],
        )
        .unwrap();
    client
        .batch_execute(
            "SELECT ae_events.rotate_endpoint_secret('with_secrets', '1 day', algorithm => 'ed25519')",
        )
        .unwrap();
    let private_key: String = client
        .query_one(
            "SELECT secret FROM ae_events.endpoint_secrets
              WHERE endpoint = 'with_secrets' AND secret LIKE 'whsk_%'",
            &[],
        )
        .unwrap()
        .get(0);
    let key_body: String = client_key
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    // The cluster trusts its superuser without a password: a DBA session.
    let (cookie, _) = session(env.port, ("postgres", "any"));
    let token = secret.trim_start_matches("whsec_");
    for path in [
        "/".to_owned(),
        "/endpoints/with_secrets".to_owned(),
        "/endpoints/with_secrets?status=dead".to_owned(),
        format!("/events/{event_id}"),
        "/instances/793".to_owned(),
        "/search?q=with_secrets".to_owned(),
        "/search?q=with".to_owned(),
    ] {
        let page = http(env.port, "GET", &path, Some(&cookie), &[], None);
        assert!(
            page.status == 200 || page.status == 303,
            "{path}: {}",
            page.status
        );
        assert!(
            !page.body.contains(&secret) && !page.body.contains(token),
            "{path} shows the secret"
        );
        assert!(
            !page.body.contains("header-value-that-must-not-show"),
            "{path} shows the header value"
        );
        for egress_secret in [
            "proxy-pass-must-not-show",
            "oauth-secret-must-not-show",
            private_key.as_str(),
            private_key.trim_start_matches("whsk_"),
            "PRIVATE KEY",
        ] {
            assert!(
                !page.body.contains(egress_secret),
                "{path} shows {egress_secret}"
            );
        }
        for line in key_body.as_bytes().chunks(60) {
            assert!(
                !page.body.contains(std::str::from_utf8(line).unwrap()),
                "{path} shows the client key"
            );
        }
    }
    let page = http(
        env.port,
        "GET",
        "/endpoints/with_secrets",
        Some(&cookie),
        &[],
        None,
    );
    assert!(
        page.body.contains("authorization"),
        "header names are shown"
    );
}

/// Every action of an operator, confirmed, goes through its SQL function and says what it did.
#[test]
fn an_operators_actions_go_through_the_sql_api_and_say_what_they_did() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let receiver = Receiver::start(|_, _| Answer::status(500));
    endpoint_for(&mut client, "acted_on", &receiver.url("/"), 794);
    insert_instance(&mut client, 794);
    wait_dead(&mut client, "acted_on");
    let (cookie, csrf) = session(env.port, OPERATOR);
    let act = |path: &str, fields: &[(&str, &str)]| {
        let mut all = vec![("csrf", csrf.as_str()), ("confirm", "yes")];
        all.extend_from_slice(fields);
        let answer = post(
            env.port,
            &cookie,
            &format!("/endpoints/acted_on/{path}"),
            &all,
            None,
        );
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answer.body
    };
    let endpoint = |client: &mut Client| -> (bool, Option<String>) {
        let row = client
            .query_one(
                "SELECT enabled, disabled_reason FROM ae_events.endpoints WHERE endpoint = 'acted_on'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };

    let body = act("disable", &[("reason", "receiver moved")]);
    assert!(body.contains("Disabled acted_on"), "{body}");
    assert_eq!(
        endpoint(&mut client),
        (false, Some("receiver moved".to_owned()))
    );
    let body = act("enable", &[]);
    assert!(body.contains("Enabled acted_on"), "{body}");
    assert!(endpoint(&mut client).0);

    // Each queues the dead letter again: the receiver gets more requests.
    let before = receiver.count();
    let body = act("redeliver-dead", &[]);
    assert!(
        body.contains("Queued 1 dead letter of acted_on again"),
        "{body}"
    );
    receiver.wait_for("the dead letter again", Duration::from_secs(60), |r| {
        r.len() > before
    });
    wait_dead(&mut client, "acted_on");

    let before = receiver.count();
    let body = act("replay", &[("since", "2000-01-01T00:00")]);
    assert!(body.contains("Queued 1 delivery again"), "{body}");
    assert!(body.contains("since 2000-01-01T00:00 UTC"), "{body}");
    receiver.wait_for("the replay", Duration::from_secs(60), |r| r.len() > before);

    let body = act("test", &[("subscription_key", "ae.test_instance.created")]);
    assert!(
        body.contains("Queued test event ae.test_instance.created"),
        "{body}"
    );
    let tests: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.test_events t JOIN ae_events.endpoints e USING (endpoint_id)
              WHERE e.endpoint = 'acted_on'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tests, 1);

    // The database's refusal is the page: a replay from a time that is none.
    let bad = post(
        env.port,
        &cookie,
        "/endpoints/acted_on/replay",
        &[
            ("csrf", &csrf),
            ("confirm", "yes"),
            ("since", "yesterday-ish"),
        ],
        None,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("SQLSTATE 22007"), "{}", bad.body);
}

/// The delivery of one endpoint on an event's page (its `div.delivery`).
fn delivery_on_event_page<'a>(page: &'a str, endpoint: &str) -> &'a str {
    page.split("<div class=\"delivery\">")
        .find(|part| part.contains(&format!(">{endpoint}</a>")))
        .unwrap_or_else(|| panic!("{endpoint} on the event's page: {page}"))
}

/// An event's page lists each failed attempt of a delivery one by one (not only the last), and
/// a pending delivery's next attempt.
#[test]
fn an_events_page_shows_each_failed_attempt_and_the_next_one() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let receiver = Receiver::start(|_, _| Answer::status(500));
    endpoint_for(&mut client, "attempts_dead", &receiver.url("/"), 796);
    endpoint_for(&mut client, "attempts_pending", &receiver.url("/"), 796);
    client
        .batch_execute(
            "SELECT ae_events.alter_endpoint('attempts_dead', retry_schedule => '{100 milliseconds, 100 milliseconds}');
             SELECT ae_events.alter_endpoint('attempts_pending', retry_schedule => '{1 hour}');",
        )
        .unwrap();
    insert_instance(&mut client, 796);
    wait_dead(&mut client, "attempts_dead");
    wait_until_sql(
        &mut client,
        "a failed attempt of attempts_pending",
        Duration::from_secs(60),
        "SELECT EXISTS (SELECT FROM ae_events.deliveries
                         WHERE endpoint = 'attempts_pending' AND status = 'pending' AND attempts = 1)",
    );
    let (event_id, attempts): (String, i32) = {
        let row = client
            .query_one(
                "SELECT o.event_id::text, d.attempts FROM ae_events.deliveries d
                   JOIN ae_events.outbox o ON o.id = d.outbox_id
                  WHERE d.endpoint = 'attempts_dead'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(attempts >= 2, "{attempts}");
    let (cookie, _) = session(env.port, READER);
    let page = http(
        env.port,
        "GET",
        &format!("/events/{event_id}"),
        Some(&cookie),
        &[],
        None,
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let dead = delivery_on_event_page(&page.body, "attempts_dead");
    let rows: Vec<&str> = dead.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), attempts as usize, "one row per attempt: {dead}");
    for (row, number) in rows.iter().zip((1..=attempts).rev()) {
        assert!(
            row.starts_with(&format!("<td class=\"num\">{number}</td>")),
            "attempt {number}, newest first: {row}"
        );
        assert!(row.contains("<td>500</td>"), "HTTP 500: {row}");
    }
    let pending = delivery_on_event_page(&page.body, "attempts_pending");
    assert!(
        pending.contains("1 attempts; next attempt <time"),
        "{pending}"
    );
    assert!(
        pending.contains("(in 59 min)") || pending.contains("(in 1 h)"),
        "{pending}"
    );
    assert_eq!(pending.split("<td>500</td>").count(), 2, "{pending}");
}

/// An operational event (here ae.endpoint.disabled) is about an endpoint, not an instance: its
/// page and the deliveries of the endpoint that receives it name the endpoint as plain text and
/// link no instance page.
#[test]
fn an_operational_event_links_no_instance_page() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let alerts = Receiver::ok();
    client
        .execute(
            "SELECT ae_events.create_endpoint('op_alerts', $1, ARRAY['ae.endpoint.disabled'])",
            &[&alerts.url("/")],
        )
        .unwrap();
    endpoint_for(&mut client, "op_source", "http://127.0.0.1:9/", 797);
    client
        .execute(
            "SELECT ae_events.disable_endpoint('op_source', 'moved')",
            &[],
        )
        .unwrap();
    let (event_id, endpoint_id): (String, i64) = {
        let row = client
            .query_one(
                "SELECT o.event_id::text, o.aggregate_id FROM ae_events.outbox o
                   JOIN ae_events.endpoints e ON e.endpoint_id = o.aggregate_id
                  WHERE o.aggregate_type = 'endpoint' AND o.subscription_key = 'ae.endpoint.disabled'
                    AND e.endpoint = 'op_source'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    wait_until_sql(
        &mut client,
        "the alert's delivery",
        Duration::from_secs(60),
        &format!(
            "SELECT EXISTS (SELECT FROM ae_events.deliveries d JOIN ae_events.outbox o ON o.id = d.outbox_id
                             WHERE d.endpoint = 'op_alerts' AND o.event_id = '{event_id}')"
        ),
    );
    let (cookie, _) = session(env.port, OPERATOR);
    let event = http(
        env.port,
        "GET",
        &format!("/events/{event_id}"),
        Some(&cookie),
        &[],
        None,
    );
    assert_eq!(event.status, 200, "{}", event.body);
    assert!(
        event.body.contains(&format!("endpoint {endpoint_id}")),
        "{}",
        event.body
    );
    assert!(!event.body.contains("/instances/"), "{}", event.body);
    let deliveries = http(
        env.port,
        "GET",
        "/endpoints/op_alerts",
        Some(&cookie),
        &[],
        None,
    );
    assert_eq!(deliveries.status, 200);
    assert!(
        deliveries
            .body
            .contains(&format!("endpoint {endpoint_id} v")),
        "{}",
        deliveries.body
    );
    assert!(
        !deliveries.body.contains("/instances/"),
        "{}",
        deliveries.body
    );
}

/// What "Redeliver all dead letters" and "Replay" leave out (a dead letter whose payload
/// expired), which the SQL functions report only as a notice, is said on the result page.
/// Also: an endpoint that never delivered shows its last success as "none in 7 days".
#[test]
fn what_an_action_leaves_out_is_said() {
    let env = env();
    let mut client = Cluster::shared().connect(&env.database);
    let receiver = Receiver::start(|_, _| Answer::status(500));
    endpoint_for(&mut client, "left_out", &receiver.url("/"), 795);
    insert_instance(&mut client, 795);
    wait_dead(&mut client, "left_out");
    // As prune() does after ae_events.payload_retention.
    client
        .execute(
            "UPDATE ae_events.outbox SET payload = 'null'
              WHERE aggregate_type = 'test_instance' AND aggregate_id = 795",
            &[],
        )
        .unwrap();
    let (cookie, csrf) = session(env.port, OPERATOR);
    // Never delivered: "none in 7 days" (the counts it comes from are kept 7 days), not "—".
    let page = http(
        env.port,
        "GET",
        "/endpoints/left_out",
        Some(&cookie),
        &[],
        None,
    );
    assert!(
        page.body
            .contains("<dt>Last success</dt><dd><span class=\"none\">none in 7 days</span>"),
        "{}",
        page.body
    );
    let all = http(env.port, "GET", "/", Some(&cookie), &[], None);
    let row = all
        .body
        .split("<tr ")
        .find(|row| row.contains(">left_out</a>"))
        .expect("left_out on /");
    assert!(row.contains("none in 7 days"), "{row}");
    let act = |path: &str, fields: &[(&str, &str)]| {
        let mut all = vec![("csrf", csrf.as_str()), ("confirm", "yes")];
        all.extend_from_slice(fields);
        let answer = post(
            env.port,
            &cookie,
            &format!("/endpoints/left_out/{path}"),
            &all,
            None,
        );
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answer.body
    };
    let body = act("redeliver-dead", &[]);
    assert!(
        body.contains("Queued 0 dead letters of left_out again."),
        "{body}"
    );
    assert!(
        body.contains("1 dead letters of endpoint &#39;left_out&#39; are not sent again")
            || body.contains("1 dead letters of endpoint 'left_out' are not sent again"),
        "{body}"
    );
    let body = act("replay", &[("since", "2000-01-01T00:00")]);
    assert!(body.contains("Queued 0 deliveries again"), "{body}");
    assert!(
        body.contains("are not replayed: their payloads expired"),
        "{body}"
    );
    assert_eq!(delivery_state(&mut client, "left_out")[0].0, "dead");
}
