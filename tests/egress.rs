//! Egress settings in SQL (issue 25, docs/webhooks.md): alter_endpoint's proxy, client
//! certificate and key, OAuth2 client credentials, and rotate_endpoint_secret's ed25519 keys.
//! Checked where they are given (22023, never repeating a secret), stored with the endpoint's
//! secrets (the relay role and the DBA only: no other role, no view, no non-superuser's pg_dump)
//! and handed to the relay by relay_lease; '' clears them. Delivery with them: relay/tests/
//! egress_auth.rs and egress_transport.rs.

mod common;

use common::*;
use postgres::Client;

const PROXY_PASSWORD: &str = "pr0xy-Pa55word";
const CLIENT_SECRET: &str = "oauth2-client-S3cret";

/// A certificate (self-signed, valid from `from` to `until`: years) and its key, PEM.
fn make_certificate(
    from: i32,
    until: i32,
    usage: Option<rcgen::ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["relay.example".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    if let Some(usage) = usage {
        params.extended_key_usages = vec![usage];
    }
    let certificate = params.self_signed(&key).unwrap();
    (certificate.pem(), key.serialize_pem())
}

fn refused(client: &mut Client, arguments: &str) -> String {
    let error = client
        .execute(
            &format!("SELECT ae_events.alter_endpoint('e', {arguments})"),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023", "{arguments}: {error:?}");
    let message = error_message(&error);
    assert!(message.starts_with("ae_events: "), "{message}");
    message
}

fn egress_row(client: &mut Client) -> Option<Vec<Option<String>>> {
    client
        .query_opt(
            "SELECT proxy, client_certificate, client_key, oauth2_token_url, oauth2_client_id,
                    oauth2_client_secret, oauth2_scope, client_certificate_expires_at::text
               FROM ae_events.endpoint_egress WHERE endpoint = 'e'",
            &[],
        )
        .unwrap()
        .map(|row| (0..8).map(|i| row.get(i)).collect())
}

#[test]
fn egress_settings_are_checked_kept_from_everyone_but_the_relay_and_cleared() {
    let cluster = Cluster::shared();
    let database = cluster.database("egress_settings", ForeignKeys::Without);
    let mut dba = cluster.connect(&database);
    dba.batch_execute("SELECT ae_events.create_endpoint('e', 'https://receiver.example/hook')")
        .unwrap();
    let (certificate, key) = make_certificate(2020, 2099, None);
    let (_, other_key) = make_certificate(2020, 2099, None);
    let (expired, expired_key) = make_certificate(2000, 2001, None);
    let (future, future_key) = make_certificate(2098, 2099, None);
    let (server_only, server_only_key) =
        make_certificate(2020, 2099, Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth));

    // Refused, each with a clear error that repeats no secret.
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let cases = [
        (format!("proxy => 'socks5://user:{PROXY_PASSWORD}@127.0.0.1:1080'"), "proxy must be"),
        (format!("proxy => 'http://user:{PROXY_PASSWORD}@127.0.0.1:3128/path'"), "no path"),
        ("proxy => 'http://0x7f.1:3128'".to_owned(), "proxy must be"),
        (format!("client_certificate => {}", quote(&certificate)), "set together"),
        (format!("client_certificate => {}, client_key => {}", quote(&certificate), quote(&other_key)), "does not match"),
        (format!("client_certificate => {}, client_key => {}", quote(&expired), quote(&expired_key)), "expired"),
        (format!("client_certificate => {}, client_key => {}", quote(&future), quote(&future_key)), "not valid yet"),
        (format!("client_certificate => {}, client_key => {}", quote(&server_only), quote(&server_only_key)), "client authentication"),
        (format!("client_certificate => 'not a certificate', client_key => {}", quote(&key)), "PEM certificate"),
        (format!("client_certificate => {}, client_key => 'secret-key-material'", quote(&certificate)), "PEM private key"),
        (
            format!("client_certificate => {}, client_key => {}",
                    quote(&certificate.replace("MII", "MIX")), quote(&key)),
            "client_certificate",
        ),
        (format!("oauth2_token_url => 'https://auth.example/token', oauth2_client_secret => '{CLIENT_SECRET}'"), "set together"),
        (format!("oauth2_token_url => 'ftp://auth.example/token', oauth2_client_id => 'id', oauth2_client_secret => '{CLIENT_SECRET}'"), "oauth2_token_url"),
        (format!("oauth2_token_url => 'https://u:{PROXY_PASSWORD}@auth.example/token', oauth2_client_id => 'id', oauth2_client_secret => '{CLIENT_SECRET}'"), "no user info"),
        (format!("oauth2_token_url => 'https://auth.example/token', oauth2_client_id => 'id', oauth2_client_secret => '{CLIENT_SECRET}', oauth2_scope => 'a \"b'"), "oauth2_scope"),
        ("oauth2_scope => 'read'".to_owned(), "set together"),
    ];
    for (arguments, expected) in &cases {
        let message = refused(&mut dba, arguments);
        assert!(message.contains(expected), "{arguments}: {message}");
        for secret in [
            PROXY_PASSWORD,
            CLIENT_SECRET,
            "secret-key-material",
            "PRIVATE KEY-----",
        ] {
            assert!(!message.contains(secret), "{message}");
        }
    }
    assert_eq!(
        egress_row(&mut dba),
        None,
        "nothing stored by refused calls"
    );

    // Stored, and handed to the relay.
    dba.execute(
        "SELECT ae_events.alter_endpoint('e', proxy => $1, client_certificate => $2,
                client_key => $3, oauth2_token_url => 'https://auth.example/token',
                oauth2_client_id => 'relay-client', oauth2_client_secret => $4,
                oauth2_scope => 'webhooks:write other')",
        &[
            &format!("http://relay:{PROXY_PASSWORD}@proxy.example:3128"),
            &certificate,
            &key,
            &CLIENT_SECRET,
        ],
    )
    .unwrap();
    let stored = egress_row(&mut dba).unwrap();
    assert_eq!(stored[1].as_deref(), Some(certificate.as_str()));
    assert!(
        stored[7].as_deref().unwrap().starts_with("2099-01-01"),
        "{stored:?}"
    );

    // A NATS endpoint would ignore them: refused, whichever comes second, and nothing changes.
    let message = refused(&mut dba, "url => 'nats://127.0.0.1:4222/hooks'");
    assert!(message.contains("publishes to NATS"), "{message}");
    assert_eq!(egress_row(&mut dba).as_ref(), Some(&stored));
    let url: String = dba
        .query_one(
            "SELECT url FROM ae_events.endpoints WHERE endpoint = 'e'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(url, "https://receiver.example/hook");
    dba.batch_execute("SELECT ae_events.create_endpoint('to_nats', 'nats://127.0.0.1:4222/hooks')")
        .unwrap();
    let error = dba
        .execute(
            "SELECT ae_events.alter_endpoint('to_nats', proxy => 'http://proxy.example:3128')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
    assert!(error_message(&error).contains("publishes to NATS"));
    dba.batch_execute("SELECT ae_events.drop_endpoint('to_nats')")
        .unwrap();

    // One block per role: roles are the cluster's, and the other test creates egress_relay too.
    for (role, member_of) in [
        ("egress_relay", " IN ROLE ae_events_relay"),
        ("egress_reader", " IN ROLE ae_events_reader"),
        ("egress_operator", " IN ROLE ae_events_operator"),
        ("egress_app", ""),
    ] {
        dba.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN{member_of};
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ))
        .unwrap();
    }
    let mut relay = cluster.connect_as(&database, "egress_relay");
    let leased = relay
        .query_one(
            "SELECT proxy, client_certificate, client_key, oauth2_token_url, oauth2_client_id,
                    oauth2_client_secret, oauth2_scope
               FROM ae_events.relay_lease('egress-test-relay', '1 minute')",
            &[],
        )
        .unwrap();
    let leased: Vec<Option<String>> = (0..7).map(|i| leased.get(i)).collect();
    assert_eq!(leased, stored[..7].to_vec());
    assert_eq!(
        leased[0].as_deref(),
        Some(format!("http://relay:{PROXY_PASSWORD}@proxy.example:3128").as_str())
    );
    relay
        .query_one("SELECT count(*) FROM ae_events.endpoint_egress", &[])
        .unwrap();

    // What may be shown is, to readers: the proxy's host and port, the certificate's expiry,
    // the token URL and client id.
    let shown = cluster
        .connect_as(&database, "egress_reader")
        .query_one(
            "SELECT proxy_host, client_certificate_expires_at::text, oauth2_token_url,
                    oauth2_client_id
               FROM ae_events.endpoint_status WHERE endpoint = 'e'",
            &[],
        )
        .unwrap();
    assert_eq!(shown.get::<_, String>(0), "proxy.example:3128");
    assert_eq!(shown.get::<_, Option<String>>(1), stored[7]);
    assert_eq!(shown.get::<_, String>(2), "https://auth.example/token");
    assert_eq!(shown.get::<_, String>(3), "relay-client");

    // Nobody else reads them: not the table, not a view, not a non-superuser's pg_dump.
    for role in ["egress_reader", "egress_operator", "egress_app"] {
        let mut other = cluster.connect_as(&database, role);
        for query in [
            "SELECT * FROM ae_events.endpoint_egress",
            "SELECT * FROM ae_events.endpoint_secrets",
            "SELECT ae_events._check_client_certificate('', '')",
            "SELECT ae_events.alter_endpoint('e', proxy => '')",
        ] {
            let error = other.query(query, &[]).unwrap_err();
            assert_eq!(sqlstate(&error), "42501", "{role} may not: {query}");
        }
        let output = pg_command("pg_dump")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                role,
                &database,
            ])
            .output()
            .unwrap();
        let dumped = String::from_utf8_lossy(&output.stdout);
        // Refused for want of the right to read them (not, say, for a failed login).
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("permission denied"),
            "{role}'s pg_dump: {stderr}"
        );
        for secret in [PROXY_PASSWORD, CLIENT_SECRET, "PRIVATE KEY-----"] {
            assert!(!dumped.contains(secret), "{role}'s pg_dump holds a secret");
        }
    }
    let views: Vec<String> = dba
        .query(
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views WHERE schemaname = 'ae_events'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(views.len() > 3, "{views:?}");
    for view in views {
        let text: String = dba
            .query_one(
                &format!("SELECT coalesce(json_agg(v)::text, '') FROM {view} AS v"),
                &[],
            )
            .unwrap()
            .get(0);
        for secret in [PROXY_PASSWORD, CLIENT_SECRET, "PRIVATE KEY-----", "whsk_"] {
            assert!(!text.contains(secret), "{view} shows a secret");
        }
    }
    // The DBA's own dump keeps them (restoring a dump restores the endpoints as they were).
    let dumped = String::from_utf8_lossy(&pg_dump(cluster, &database, "--data-only")).into_owned();
    assert!(dumped.contains(CLIENT_SECRET));

    // NULL keeps, '' clears: the proxy alone; the certificate with its key; the four OAuth2.
    dba.batch_execute("SELECT ae_events.alter_endpoint('e', timeout => '10 s')")
        .unwrap();
    assert_eq!(egress_row(&mut dba).unwrap(), stored);
    dba.batch_execute("SELECT ae_events.alter_endpoint('e', proxy => '')")
        .unwrap();
    let row = egress_row(&mut dba).unwrap();
    assert_eq!((row[0].as_deref(), &row[1..]), (None, &stored[1..]));
    dba.batch_execute("SELECT ae_events.alter_endpoint('e', client_certificate => '')")
        .unwrap();
    let row = egress_row(&mut dba).unwrap();
    assert_eq!((&row[1], &row[2], &row[7]), (&None, &None, &None));
    assert_eq!(&row[3..7], &stored[3..7]);
    dba.batch_execute("SELECT ae_events.alter_endpoint('e', oauth2_scope => '')")
        .unwrap();
    assert_eq!(egress_row(&mut dba).unwrap()[6], None);
    dba.batch_execute("SELECT ae_events.alter_endpoint('e', oauth2_token_url => '')")
        .unwrap();
    assert_eq!(egress_row(&mut dba), None, "nothing left: no row");

    // drop_endpoint takes its settings along.
    dba.execute(
        "SELECT ae_events.alter_endpoint('e', proxy => 'http://proxy.example:3128')",
        &[],
    )
    .unwrap();
    dba.batch_execute("SELECT ae_events.drop_endpoint('e')")
        .unwrap();
    let left: i64 = dba
        .query_one("SELECT count(*) FROM ae_events.endpoint_egress", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn rotation_to_ed25519_returns_the_public_key_and_keeps_the_old_secret_for_the_grace() {
    let cluster = Cluster::shared();
    let database = cluster.database("egress_ed25519", ForeignKeys::Without);
    let mut dba = cluster.connect(&database);
    let old: String = dba
        .query_one(
            "SELECT ae_events.create_endpoint('e', 'https://receiver.example/hook')",
            &[],
        )
        .unwrap()
        .get(0);

    // The public key of RFC 8032's first test seed, as published.
    let public: String = dba
        .query_one(
            "SELECT encode(ae_events._ed25519_public_key(decode(
                 '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60', 'hex')), 'hex')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        public,
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );

    let whpk: String = dba
        .query_one(
            "SELECT ae_events.rotate_endpoint_secret('e', '1 hour', algorithm => 'ed25519')",
            &[],
        )
        .unwrap()
        .get(0);
    let row = dba
        .query_one(
            "SELECT length(decode(substr($1, 6), 'base64')),
                    s.secret, length(decode(substr(s.secret, 6), 'base64')),
                    'whpk_' || encode(substr(decode(substr(s.secret, 6), 'base64'), 33), 'base64') = $1,
                    encode(ae_events._ed25519_public_key(substr(decode(substr(s.secret, 6), 'base64'), 1, 32)), 'base64')
                        = substr($1, 6)
               FROM ae_events.endpoint_secrets AS s WHERE s.secret LIKE 'whsk\\_%'",
            &[&whpk],
        )
        .unwrap();
    assert!(whpk.starts_with("whpk_"), "{whpk}");
    assert_eq!(row.get::<_, i32>(0), 32);
    let whsk: String = row.get(1);
    assert!(!whsk.contains('\n'));
    assert_eq!(row.get::<_, i32>(2), 64);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));

    // The relay gets both, newest first; the old one until the grace ends.
    dba.batch_execute(
        "DO $$ BEGIN CREATE ROLE egress_relay LOGIN IN ROLE ae_events_relay;
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    )
    .unwrap();
    let mut relay = cluster.connect_as(&database, "egress_relay");
    let secrets: Vec<String> = relay
        .query_one(
            "SELECT secrets FROM ae_events.relay_lease('ed25519-test-relay', '1 minute')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(secrets, [whsk.clone(), old.clone()]);
    // endpoint_status shows the public key again (to readers), never the private one.
    let shown: Vec<String> = dba
        .query_one(
            "SELECT signing_public_keys FROM ae_events.endpoint_status WHERE endpoint = 'e'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, std::slice::from_ref(&whpk));
    let grace_left: bool = dba
        .query_one(
            "SELECT expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes'
               FROM ae_events.endpoint_secrets WHERE secret = $1",
            &[&old],
        )
        .unwrap()
        .get(0);
    assert!(grace_left);

    // Back to HMAC: the ed25519 key is rotated out like any secret.
    let new: String = dba
        .query_one("SELECT ae_events.rotate_endpoint_secret('e', '0 s')", &[])
        .unwrap()
        .get(0);
    assert!(new.starts_with("whsec_"));
    let left: Vec<String> = dba
        .query("SELECT secret FROM ae_events.endpoint_secrets", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [new]);
    let shown: Vec<String> = dba
        .query_one(
            "SELECT signing_public_keys FROM ae_events.endpoint_status WHERE endpoint = 'e'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(shown.is_empty(), "{shown:?}");

    for (call, expected) in [
        ("SELECT ae_events.rotate_endpoint_secret('e', algorithm => 'rsa')", "hmac or ed25519"),
        ("SELECT ae_events.rotate_endpoint_secret('e', algorithm => NULL)", "hmac or ed25519"),
        (
            "SELECT ae_events.rotate_endpoint_secret('e', new_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', algorithm => 'ed25519')",
            "give no new_secret",
        ),
        ("SELECT ae_events._ed25519_public_key('\\x00')", "32 bytes"),
    ] {
        let error = dba.query(call, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{call}");
        assert!(error_message(&error).contains(expected), "{call}: {error:?}");
    }
}
