//! The `ae-relay` command: `run` delivers webhooks until stopped; `check` says whether this
//! relay can do its work; `schema` prints the webhooks' OpenAPI document; `console` serves the
//! operator console (docs/console.md).

use ae_relay::config::{default_relay_id, RelayConfig};
use ae_relay::database::Database;
use ae_relay::logging::escape;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

// The relay allocates and frees a few small buffers per event (rows, headers, outcomes):
// mimalloc does that for about half of what glibc's malloc costs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ae-relay",
    version,
    about = "Delivers ae_events' outbox to webhook endpoints, signed, at least once, in order per instance"
)]
struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, env = "AE_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct Connection {
    /// PostgreSQL connection URL of a role that is a member of ae_events_relay.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

// Parsed once at start: the size of `Run` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Deliver for every enabled endpoint until stopped (SIGINT/SIGTERM).
    Run {
        #[command(flatten)]
        connection: Connection,
        /// This relay's id in the endpoints' leases (default: host, pid and a random suffix).
        #[arg(long, env = "AE_RELAY_ID")]
        relay_id: Option<String>,
        /// How long an endpoint stays this relay's without renewal; another relay takes over
        /// an endpoint this long after its relay died.
        #[arg(long, default_value = "6s", value_parser = parse_lease)]
        lease: Duration,
        /// How often to look for events without a notification.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        poll_interval: Duration,
        /// The notification channel (the extension's ae_events.channel setting).
        #[arg(long, default_value = "ae_events", value_parser = parse_channel)]
        channel: String,
        /// Events held in memory per endpoint at most (fetched, not finished).
        #[arg(long, default_value_t = 2000, value_parser = parse_positive)]
        window: usize,
        /// Payload bytes held in memory per endpoint at most (about: a fetch ends after the
        /// event that reaches it, and always brings one event), e.g. 64MiB, 500MB.
        #[arg(long, default_value = "64MiB", value_parser = ae_relay::config::parse_size)]
        window_bytes: usize,
        /// Payload bytes all endpoints together hold at most (about): each endpoint gets an
        /// equal share of it when that is below --window-bytes.
        #[arg(long, default_value = "1GiB", value_parser = ae_relay::config::parse_size)]
        total_window_bytes: usize,
        /// Database connections for the endpoints' calls (fetch, due, record); the relay has
        /// one more of its own for leases and notifications. More isolate more slow endpoints
        /// from the others; on a small database server each one more costs it CPU.
        #[arg(long, default_value_t = 4, value_parser = ae_relay::config::parse_connections)]
        database_connections: usize,
        /// The longest an endpoint's database call may run on the server (statement_timeout of
        /// its connections).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        statement_timeout: Duration,
        /// On SIGTERM/SIGINT, how long requests in flight may take to finish and be recorded.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        shutdown_deadline: Duration,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g.
        /// 127.0.0.1:9187); off unless given.
        #[arg(long, env = "AE_RELAY_METRICS_ADDRESS")]
        metrics_address: Option<std::net::SocketAddr>,
        /// Failed attempts in a row that open an endpoint's circuit (no requests for the
        /// cool-down, then one probe); 0 turns the circuit breaker off.
        #[arg(long, default_value_t = 10)]
        breaker_failures: u32,
        /// How long an endpoint's circuit stays open first; doubled after each failed probe.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        breaker_cooldown: Duration,
        /// The longest an endpoint's circuit stays open before the next probe.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        breaker_max_cooldown: Duration,
        /// PEM file of CA certificates (one or more) trusted for HTTPS endpoints besides the
        /// system's roots (certificates are always verified).
        #[arg(long, value_name = "FILE", value_parser = parse_ca_bundle)]
        ca_bundle: Option<PathBuf>,
        /// Connect to public addresses only: refuse loopback, private, link-local (cloud
        /// metadata), unique-local, CGNAT, multicast and similar addresses, as resolved at
        /// connection time (a refused attempt fails and is retried like any other).
        #[arg(long)]
        refuse_private_addresses: bool,
        /// Forward proxy for the HTTP endpoints without a proxy of their own: http://host:port
        /// or https://host:port, with user:password@ before the host for basic authentication.
        /// HTTPS goes through CONNECT, HTTP as absolute-form requests; replaces the
        /// environment's HTTP(S)_PROXY. Under --refuse-private-addresses the proxy's address is
        /// the one checked.
        #[arg(long, env = "AE_RELAY_PROXY", hide_env_values = true, value_name = "URL", value_parser = parse_proxy)]
        proxy: Option<String>,
        /// Also connect to the NATS servers that a NATS server advertises (its cluster's
        /// `connect_urls`); off: only the endpoint URL's server. Ignored with
        /// --refuse-private-addresses, whose check those addresses would escape.
        #[arg(long)]
        nats_follow_discovered_servers: bool,
        /// TOML file of settings: keys are these options' long names (lease = "6s"); the
        /// command line and the environment override it.
        #[arg(long, env = "AE_RELAY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Serve the operator console (web pages) until stopped: people sign in with their own
    /// PostgreSQL role and password, and see and do what that role may (docs/console.md).
    Console {
        /// PostgreSQL connection URL naming the database (host, port, database name); its user
        /// and password are not used: each session connects as the role that signed in.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Address to serve the console on (plain HTTP: put a TLS reverse proxy in front of
        /// it for anything but the local host).
        #[arg(long, env = "AE_CONSOLE_LISTEN", default_value = "127.0.0.1:8088")]
        listen: std::net::SocketAddr,
        /// Mark the session cookie Secure (and name it __Host-ae_console): say so when the
        /// console is reached over HTTPS (through a reverse proxy).
        #[arg(long)]
        secure_cookies: bool,
        /// Sessions at most (each holds one database connection); at the bound, the least
        /// recently used one ends.
        #[arg(long, default_value_t = 100, value_parser = parse_positive)]
        max_sessions: usize,
        /// The longest a page's or an action's database call may run (statement_timeout of
        /// each session's connection).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        statement_timeout: Duration,
        /// A host name the console is reached by besides its listen address (the name a reverse
        /// proxy passes in `Host`; without a port, any port); repeat for several. Requests
        /// naming another host are refused (421), against DNS rebinding.
        #[arg(long = "allowed-host", value_name = "HOST", value_parser = parse_allowed_host)]
        allowed_hosts: Vec<String>,
        // How long a session may stay unused (30 minutes); only tests shorten it.
        #[arg(long, hide = true, default_value = "30m", value_parser = parse_duration)]
        idle_timeout: Duration,
        // How long a session may last in all (8 hours); only tests shorten it.
        #[arg(long, hide = true, default_value = "8h", value_parser = parse_duration)]
        absolute_timeout: Duration,
        /// TOML file of settings: keys are these options' long names (listen =
        /// "127.0.0.1:8088"); the command line and the environment override it.
        #[arg(long, env = "AE_RELAY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check the connection, the role and the endpoints; exit 0 when the relay can work.
    Check {
        #[command(flatten)]
        connection: Connection,
    },
    /// Print the OpenAPI 3.1 document of the webhooks (or one subscription key's JSON Schema):
    /// the database's (ae_events.openapi(), its payload rules applied) with --database-url or
    /// DATABASE_URL, else the one built in (a fresh install's, no payload rules).
    Schema {
        /// PostgreSQL connection URL of a role that may call ae_events.openapi()
        /// (ae_events_relay or ae_events_reader); none: the built-in document.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Print only this subscription key's JSON Schema (draft 2020-12).
        #[arg(long, value_name = "SUBSCRIPTION_KEY")]
        key: Option<String>,
    },
}

/// The OpenAPI document of a fresh install, generated by ae_events.openapi() and committed
/// (tests/catalog.rs fails when it is not what the extension gives).
const BUILT_IN_OPENAPI: &str = include_str!("../../docs/openapi.json");

/// A CA bundle is read at start, so that a bad one is refused then, naming the file.
fn parse_ca_bundle(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    ae_relay::http_sink::read_ca_bundle(&path)?;
    Ok(path)
}

/// A proxy URL is checked at start; the error never repeats it (it may hold a password).
fn parse_proxy(text: &str) -> Result<String, String> {
    ae_relay::transport::parse_proxy(text)?;
    Ok(text.trim().to_owned())
}

/// The longest duration a flag takes: every deadline the relay computes from one (now plus a
/// lease, a cool-down, a shutdown deadline) must be a time it can hold.
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// The shortest: below a millisecond the timers cannot act on it.
const MIN_DURATION: Duration = Duration::from_millis(1);

/// `250ms`, `2s`, `5m`, `1h`, or plain seconds; from 1ms to 30 days.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("unknown unit in {text:?} (ms, s, m, h)")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?} must be more than zero"));
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if duration > MAX_DURATION => Err(format!(
            "{text:?} is too long: at most 30 days ({}s)",
            MAX_DURATION.as_secs()
        )),
        Ok(duration) if duration >= MIN_DURATION => Ok(duration),
        Ok(_) => Err(format!("{text:?} is too short: at least 1ms")),
        Err(_) => Err(format!("{text:?} is too long: at most 30 days")),
    }
}

/// A lease of at least a second: workers stop sending a tenth of it (at least 100 ms) before
/// it may expire and renew it every third, so a shorter one leaves no time to send.
fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if lease < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short for a lease: at least 1s"));
    }
    // relay_lease refuses longer ones: a dead relay's endpoints would wait that long.
    if lease > Duration::from_secs(600) {
        return Err(format!("{text:?} is too long for a lease: at most 10m"));
    }
    Ok(lease)
}

/// A channel name PostgreSQL can LISTEN on (as the extension's setting checks it): not
/// empty, shorter than 64 bytes, no NUL (no control characters either).
fn parse_channel(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() >= 64 || text.chars().any(char::is_control) {
        return Err(
            "a channel name is 1 to 63 bytes without control characters (the extension's \
             ae_events.channel)"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

/// A count of at least one (a window of no events would fetch nothing).
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(format!("not a count: {error}")),
    }
}

/// A `Host` value: a name or address, optionally `:port`; no scheme, path or user info.
fn parse_allowed_host(text: &str) -> Result<String, String> {
    let host = text.trim();
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if valid {
        Ok(host.to_ascii_lowercase())
    } else {
        Err("a host name or address with an optional :port, e.g. console.example.com".to_owned())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Flags, environment and the `run --config` file (config_file); exit 2 on a bad one.
    let parsed = ae_relay::config_file::parse::<Cli>().unwrap_or_else(|error| error.exit());
    let cli = parsed.cli;
    ae_relay::logging::init(match cli.log_format {
        LogFormat::Human => ae_relay::logging::Format::Human,
        LogFormat::Json => ae_relay::logging::Format::Json,
    });
    match cli.command {
        Command::Run {
            connection,
            relay_id,
            lease,
            poll_interval,
            channel,
            window,
            window_bytes,
            total_window_bytes,
            database_connections,
            statement_timeout,
            shutdown_deadline,
            metrics_address,
            breaker_failures,
            breaker_cooldown,
            breaker_max_cooldown,
            ca_bundle,
            refuse_private_addresses,
            proxy,
            nats_follow_discovered_servers,
            config: _,
        } => {
            // Every setting with its source; the database URL shows as (hidden).
            tracing::info!(settings = %parsed.settings, "effective settings");
            let mut config = RelayConfig::new(connection.database_url);
            config.relay_id = relay_id.unwrap_or_else(default_relay_id);
            config.lease = lease;
            config.poll_interval = poll_interval;
            config.channel = channel;
            config.window = window.max(1);
            config.window_bytes = window_bytes;
            config.total_window_bytes = total_window_bytes;
            config.database_connections = database_connections;
            config.statement_timeout = statement_timeout;
            config.shutdown_deadline = shutdown_deadline;
            config.metrics_address = metrics_address;
            config.breaker = ae_relay::protection::BreakerSettings {
                failures: breaker_failures,
                cooldown: breaker_cooldown,
                max_cooldown: breaker_max_cooldown.max(breaker_cooldown),
            };
            config.ca_bundle = ca_bundle;
            config.refuse_private_addresses = refuse_private_addresses;
            config.proxy = proxy;
            config.nats_follow_discovered_servers = nats_follow_discovered_servers;
            config.fetch_batch = config.fetch_batch.min(config.window);
            match ae_relay::supervisor::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("ae-relay: {}", escape(&error.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Console {
            database_url,
            listen,
            secure_cookies,
            max_sessions,
            statement_timeout,
            idle_timeout,
            absolute_timeout,
            allowed_hosts,
            config: _,
        } => {
            tracing::info!(settings = %parsed.settings, "effective settings");
            let mut config = ae_relay::console::ConsoleConfig::new(database_url);
            config.listen = listen;
            config.secure_cookies = secure_cookies;
            config.max_sessions = max_sessions;
            config.statement_timeout = statement_timeout;
            config.idle_timeout = idle_timeout;
            config.absolute_timeout = absolute_timeout;
            config.allowed_hosts = allowed_hosts;
            match ae_relay::console::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("ae-relay: {}", escape(&error));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { connection } => check(&connection.database_url).await,
        Command::Schema { database_url, key } => {
            schema(database_url.as_deref(), key.as_deref()).await
        }
    }
}

/// `ae-relay schema`: the document (or a key's schema) on stdout, pretty-printed.
async fn schema(url: Option<&str>, key: Option<&str>) -> ExitCode {
    let document = match url {
        Some(url) => match schema_from_database(url, key).await {
            Ok(text) => text,
            Err(error) => {
                eprintln!("ae-relay: {}", escape(&error));
                return ExitCode::FAILURE;
            }
        },
        None => BUILT_IN_OPENAPI.to_owned(),
    };
    let mut value: serde_json::Value = match serde_json::from_str(&document) {
        Ok(value) => value,
        Err(error) => {
            eprintln!("ae-relay: the document is not JSON: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let (None, Some(key)) = (url, key) {
        // A key's schema as ae_events.event_schema gives it: the document's component, with
        // the dialect the document names.
        let Some(mut schema) = value
            .pointer_mut(&format!(
                "/components/schemas/{}",
                key.replace('~', "~0").replace('/', "~1")
            ))
            .map(serde_json::Value::take)
        else {
            let keys: Vec<&str> = value["webhooks"]
                .as_object()
                .map(|webhooks| webhooks.keys().map(String::as_str).collect())
                .unwrap_or_default();
            eprintln!(
                "ae-relay: no event has the subscription key {:?}; the keys are: {}",
                escape(key),
                keys.join(", ")
            );
            return ExitCode::FAILURE;
        };
        if let Some(object) = schema.as_object_mut() {
            object.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
        }
        value = schema;
    }
    match serde_json::to_string_pretty(&value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ae-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `ae_events.openapi()` (or `event_schema(key)`) of the database at `url`, as JSON text.
async fn schema_from_database(url: &str, key: Option<&str>) -> Result<String, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|error| format!("cannot connect: {error}"))?;
    let connection = tokio::spawn(connection);
    let row = match key {
        Some(key) => {
            client
                .query_one("SELECT ae_events.event_schema($1)::text", &[&key])
                .await
        }
        None => {
            client
                .query_one("SELECT ae_events.openapi()::text", &[])
                .await
        }
    }
    .map_err(|error| match error.as_db_error() {
        // The hint lists the keys when one is unknown.
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({hint})", db.message()),
            None => db.message().to_owned(),
        },
        None => error.to_string(),
    })?;
    drop(client);
    let _ = connection.await;
    Ok(row.get(0))
}

async fn check(url: &str) -> ExitCode {
    let (db, _) = match Database::connect(url, "ae_events").await {
        Ok(connected) => connected,
        Err(error) => {
            println!("cannot connect: {}", escape(&error.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let report = match db.check().await {
        Ok(report) => report,
        Err(error) => {
            println!(
                "connected, but the check failed: {}",
                escape(&ae_relay::database::describe(&error))
            );
            return ExitCode::FAILURE;
        }
    };
    println!("connected as {}", report.role);
    let Some(version) = report.extension_version else {
        println!("the ae_events extension is not installed in this database");
        return ExitCode::FAILURE;
    };
    println!("ae_events {version}");
    if !report.is_relay {
        println!(
            "role {} is not a member of ae_events_relay: GRANT ae_events_relay TO {};",
            report.role, report.role
        );
        return ExitCode::FAILURE;
    }
    let enabled = report.endpoints.iter().filter(|e| e.1).count();
    println!("{} endpoints, {enabled} enabled", report.endpoints.len());
    for (name, is_enabled, reason, relay) in &report.endpoints {
        // Names, reasons and relay ids come from the database: escaped, one line each.
        let state = if *is_enabled {
            "enabled".to_owned()
        } else {
            format!("disabled: {}", escape(reason))
        };
        let served = if relay.is_empty() {
            String::new()
        } else {
            format!(", served by {}", escape(relay))
        };
        println!("  {}: {state}{served}", escape(name));
    }
    if enabled == 0 {
        println!(
            "no enabled endpoint: create one with SELECT ae_events.create_endpoint(name, url);"
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
        // Nothing a deadline cannot hold, nothing a timer cannot act on, and no panic.
        for text in [
            "1e300",
            "1e20s",
            "600000h",
            "31d",
            "30000000m",
            "0.0000001ms",
            "1e-12",
            "inf",
            "NaN",
            "-1s",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(super::parse_lease("500ms").is_err());
        assert!(super::parse_lease("11m").is_err());
        assert_eq!(super::parse_lease("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(super::parse_lease("1s"), Ok(Duration::from_secs(1)));
        assert!(super::parse_positive("0").is_err());
        assert!(super::parse_channel("").is_err());
        assert!(super::parse_channel(&"c".repeat(64)).is_err());
        assert!(super::parse_channel("a\0b").is_err());
        assert_eq!(
            super::parse_channel("ae_events"),
            Ok("ae_events".to_owned())
        );
        assert_eq!(super::parse_positive("5"), Ok(5));
    }
}
