-- Webhook endpoints and their delivery state (shared/contract/webhooks.md), served by ae-relay.
--
-- Each endpoint has its own cursor in the outbox's delivery order (epoch, txid, id; see
-- consumers.sql), so one endpoint never holds back another. The cursor only moves over events
-- that are finished for the endpoint: not matching it, delivered, dead-lettered, or parked in a
-- `deliveries` row waiting for a retry. A relay killed at any instant therefore loses nothing:
-- the next one fetches again from the cursor and skips events that already have a row.
--
-- Per-instance order: for one instance, outbox ids grow with the snapshot version (both are
-- drawn in the same pass, under the instance's lock), but delivery order (txid, id) may put a
-- later version first when its transaction got its txid earlier. relay_fetch never hands out a
-- version without the earlier ones, and the relay sends one instance's events one at a time,
-- in id order; parked events wait behind the earliest pending one of their instance.

CREATE TABLE ae_events.endpoints (
    endpoint text PRIMARY KEY CHECK (endpoint OPERATOR(pg_catalog.<>) ''),
    url text NOT NULL,
    -- NULL: every subscription key.
    subscription_keys text[],
    -- A jsonpath predicate on the payload; NULL: every event.
    filter jsonpath,
    -- Static headers sent with every request ({"name": "value"}); they may hold credentials.
    headers jsonb NOT NULL DEFAULT '{}',
    timeout interval NOT NULL DEFAULT '15 seconds',
    -- Delays before the 2nd, 3rd, ... attempt; after the last one the event is dead-lettered.
    retry_schedule interval[] NOT NULL
        DEFAULT '{5 seconds,5 minutes,30 minutes,2 hours,5 hours,10 hours,10 hours}',
    retry_jitter double precision NOT NULL DEFAULT 0.2,
    -- An endpoint that has failed every attempt for this long is disabled.
    disable_after interval NOT NULL DEFAULT '5 days',
    -- Requests in flight at once (to different instances).
    max_in_flight integer NOT NULL DEFAULT 16,
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    disabled_at timestamptz,
    -- The time of the first failed attempt since the last delivered one.
    failing_since timestamptz,
    cursor_epoch bigint NOT NULL,
    cursor_txid xid8 NOT NULL,
    cursor_id bigint NOT NULL,
    -- The relay serving it, until its lease expires (webhooks.md §4.5: one relay per endpoint).
    relay text,
    lease_expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Requests per second at most; NULL: no limit.
    rate_limit double precision,
    -- New for every endpoint created, so that an endpoint dropped and created again under the
    -- same name is another endpoint to the relays (their calls name both).
    endpoint_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The role of the relay holding the lease: relays act only under their own role's ids.
    relay_role name,
    -- Operational events (sql/src/alerts.sql, docs/alerts.md). ae.endpoint.failing once this
    -- many attempts failed in a row, or alert_after after the first failure, whichever first.
    alert_after_attempts integer NOT NULL DEFAULT 3,
    alert_after interval NOT NULL DEFAULT '5 minutes',
    -- Attempts failed in a row (reset by a delivery and by enable_endpoint).
    failed_attempts integer NOT NULL DEFAULT 0,
    -- The start of the failing period an ae.endpoint.failing announced; NULL: none announced
    -- (cleared with ae.endpoint.recovered).
    alert_failing_since timestamptz,
    -- The snapshot_version of the last operational event about the endpoint.
    alert_version integer NOT NULL DEFAULT 0
);

COMMENT ON TABLE ae_events.endpoints IS
    'ae_events: webhook endpoints (create_endpoint, alter_endpoint, enable_endpoint, disable_endpoint, drop_endpoint); read ae_events.endpoint_status';

CREATE TABLE ae_events.endpoint_secrets (
    endpoint text NOT NULL,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- NULL: active until rotated; a rotated-out secret keeps signing until then.
    expires_at timestamptz,
    PRIMARY KEY (endpoint, secret)
);

COMMENT ON TABLE ae_events.endpoint_secrets IS
    'ae_events: signing secrets (whsec_..., ed25519 whsk_...), readable by ae_events_relay and the DBA only';

-- How the relay reaches an endpoint beyond its URL and headers (alter_endpoint, docs/webhooks.md):
-- a forward proxy (its user info may hold a password), a client certificate and its key, OAuth2
-- client credentials. Kept apart from endpoints with endpoint_secrets' grants: the relay role and
-- the DBA only. No row: none of them.
CREATE TABLE ae_events.endpoint_egress (
    endpoint text PRIMARY KEY,
    proxy text,
    client_certificate text,
    client_key text,
    client_certificate_expires_at timestamptz,
    oauth2_token_url text,
    oauth2_client_id text,
    oauth2_client_secret text,
    oauth2_scope text,
    CHECK ((client_certificate IS NULL) OPERATOR(pg_catalog.=) (client_key IS NULL)),
    CHECK ((oauth2_token_url IS NULL) OPERATOR(pg_catalog.=) (oauth2_client_id IS NULL)
           AND (oauth2_token_url IS NULL) OPERATOR(pg_catalog.=) (oauth2_client_secret IS NULL))
);

COMMENT ON TABLE ae_events.endpoint_egress IS
    'ae_events: per endpoint its proxy, client certificate and key, OAuth2 client credentials (alter_endpoint), readable by ae_events_relay and the DBA only';

-- One row per (endpoint, event) that was attempted or parked. Events that do not match an
-- endpoint have none. No foreign keys: the relay writes these in batches, and prune() and
-- drop_endpoint() delete them explicitly.
CREATE TABLE ae_events.deliveries (
    endpoint text NOT NULL,
    outbox_id bigint NOT NULL,
    aggregate_id bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status integer,
    last_error text,
    next_attempt_at timestamptz,
    delivered_at timestamptz,
    dead_at timestamptz,
    PRIMARY KEY (endpoint, outbox_id)
);

COMMENT ON TABLE ae_events.deliveries IS
    'ae_events: per endpoint and event, attempts and outcome (read ae_events.delivery_status)';

-- Pending rows are few; these find the due ones and each instance's earliest one.
CREATE INDEX deliveries_due_idx ON ae_events.deliveries (endpoint, next_attempt_at)
    WHERE status OPERATOR(pg_catalog.=) 'pending';
CREATE INDEX deliveries_waiting_idx ON ae_events.deliveries (endpoint, aggregate_id, outbox_id)
    WHERE status OPERATOR(pg_catalog.=) 'pending';

SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoints_endpoint_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoint_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoint_egress', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.deliveries', '');

-- A secure random secret: whsec_ and the base64 of 32 bytes from pg_strong_random.
CREATE FUNCTION ae_events._new_secret() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'whsec_' OPERATOR(pg_catalog.||)
           pg_catalog.encode(ae_events._strong_random_bytes(32), 'base64')
$$;

-- A secret given by a DBA: whsec_ and the base64 of 24 to 64 bytes (webhooks.md §1).
CREATE FUNCTION ae_events._require_secret(secret text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key bytea;
BEGIN
    IF secret IS NULL OR secret NOT LIKE 'whsec\_%' THEN
        RAISE EXCEPTION 'ae_events: a secret is whsec_ followed by base64, not %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(secret, 12) OPERATOR(pg_catalog.||) '...'), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        key := pg_catalog.decode(pg_catalog.substr(secret, 7), 'base64');
    EXCEPTION WHEN invalid_parameter_value OR invalid_text_representation THEN
        RAISE EXCEPTION 'ae_events: the secret after whsec_ is not valid base64'
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF pg_catalog.length(key) NOT BETWEEN 24 AND 64 THEN
        RAISE EXCEPTION 'ae_events: a secret''s key must be 24 to 64 bytes, not %', pg_catalog.length(key)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- The endpoint row, locked, or a clear error.
CREATE FUNCTION ae_events._endpoint_for_update(endpoint text) RETURNS ae_events.endpoints
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_endpoint ae_events.endpoints;
BEGIN
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO found_endpoint FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) _endpoint_for_update.endpoint
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no endpoint %', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT endpoint FROM ae_events.endpoint_status; lists them.';
    END IF;
    RETURN found_endpoint;
END
$$;

-- Checks of what a DBA gives create_endpoint / alter_endpoint; each raises a clear error.
-- Whether the relay's URL parser (WHATWG rules) takes this host[:port]: a name of letters,
-- digits, ".", "-", "_" (or non-ASCII, for IDN), a dotted IPv4 address, or a bracketed IPv6
-- address; a name whose last label is a number is parsed as IPv4 there, so it must be one (and
-- is written as a dotted quad: no 0x7f.1 or 127.1 disguises); a port of 1 to 65535.
CREATE FUNCTION ae_events._relay_can_parse_authority(authority text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    host text;
    port text;
BEGIN
    IF authority IS NULL THEN
        RETURN false;
    END IF;
    IF authority ~ '^\[' THEN
        host := pg_catalog.substring(authority, '^\[([0-9A-Fa-f:.]+)\]');
        port := pg_catalog.substring(authority, '^\[[0-9A-Fa-f:.]+\](.*)$');
        IF host IS NULL THEN
            RETURN false;
        END IF;
        BEGIN
            IF pg_catalog.family(host::inet) OPERATOR(pg_catalog.<>) 6 OR pg_catalog.strpos(host, '/') OPERATOR(pg_catalog.>) 0 THEN
                RETURN false;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RETURN false;
        END;
    ELSE
        host := pg_catalog.split_part(authority, ':', 1);
        port := pg_catalog.substr(authority, pg_catalog.length(host) OPERATOR(pg_catalog.+) 1);
        IF host !~ '^([A-Za-z0-9._-]|[^\x01-\x7f])+$' THEN
            RETURN false;
        END IF;
        IF host ~* '(^|\.)(0x[0-9a-f]*|[0-9]+)\.?$' THEN
            IF host !~ '^[0-9]{1,3}(\.[0-9]{1,3}){3}$' THEN
                RETURN false;
            END IF;
            IF EXISTS (SELECT FROM pg_catalog.regexp_split_to_table(host, '\.') AS octet
                        WHERE octet::integer OPERATOR(pg_catalog.>) 255) THEN
                RETURN false;
            END IF;
        END IF;
    END IF;
    IF port OPERATOR(pg_catalog.<>) '' THEN
        IF port !~ '^:[0-9]{1,5}$' OR pg_catalog.substr(port, 2)::integer NOT BETWEEN 1 AND 65535 THEN
            RETURN false;
        END IF;
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION ae_events._check_endpoint_settings(
    url text, subscription_keys text[], filter jsonpath, headers jsonb, timeout interval,
    retry_schedule interval[], retry_jitter double precision, disable_after interval,
    max_in_flight integer, rate_limit double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown_key text;
    header record;
BEGIN
    -- http(s)://host[:port][/path]; nats://host[:port]/subject publishes to NATS JetStream
    -- (a subject of tokens, no wildcards: events are published to it).
    IF url IS NULL OR pg_catalog.length(url) OPERATOR(pg_catalog.>) 2048
       OR (url !~ '^https?://[^/?#@[:space:]]+(:[0-9]{1,5})?([/?#][^[:space:]]*)?$'
           AND url !~ '^nats://[^/?#@[:space:]]+(:[0-9]{1,5})?/[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$')
       OR url ~ '^(https?|nats)://:'
       OR NOT ae_events._relay_can_parse_authority(pg_catalog.substring(url, '^[a-z]+://([^/?#]*)')) THEN
        RAISE EXCEPTION 'ae_events: % is not an http:// or https:// URL with a host, nor nats://host:port/subject',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(url, 200)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A host is a name, a dotted IPv4 address or a bracketed IPv6 address; a port is 1 to 65535.';
    END IF;
    IF subscription_keys IS NOT NULL THEN
        IF pg_catalog.cardinality(subscription_keys) OPERATOR(pg_catalog.=) 0 THEN
            RAISE EXCEPTION 'ae_events: subscription_keys is empty: the endpoint would receive nothing'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'NULL subscribes to every key.';
        END IF;
        SELECT k INTO unknown_key FROM pg_catalog.unnest(subscription_keys) AS k
         WHERE k IS NULL OR k NOT IN ('ae.test_instance.created', 'ae.test_instance.updated',
                                      'ae.endpoint.failing', 'ae.endpoint.recovered',
                                      'ae.endpoint.disabled', 'ae.delivery.dead_lettered')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ae_events: unknown subscription key %',
                    coalesce(pg_catalog.quote_literal(unknown_key), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The keys are ae.test_instance.created, ae.test_instance.updated and the operational ae.endpoint.failing, ae.endpoint.recovered, ae.endpoint.disabled, ae.delivery.dead_lettered.';
        END IF;
        -- The relay orders an endpoint's deliveries by aggregate_id: an instance's id and an
        -- endpoint's id must never meet in one endpoint's order (docs/alerts.md).
        IF EXISTS (SELECT FROM pg_catalog.unnest(subscription_keys) AS k WHERE k LIKE 'ae.test\_instance.%')
           AND EXISTS (SELECT FROM pg_catalog.unnest(subscription_keys) AS k WHERE k NOT LIKE 'ae.test\_instance.%') THEN
            RAISE EXCEPTION 'ae_events: an endpoint receives ae.test_instance.* events or operational events, not both'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Create one endpoint for each (docs/alerts.md).';
        END IF;
    END IF;
    IF filter IS NOT NULL THEN
        IF pg_catalog.length(filter::text) OPERATOR(pg_catalog.>) 4096 THEN
            RAISE EXCEPTION 'ae_events: the filter may be at most 4096 characters long'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- A predicate gives true or false on any payload; a plain path gives values (22038).
        BEGIN
            PERFORM pg_catalog.jsonb_path_match('{}'::jsonb, filter);
        EXCEPTION WHEN singleton_sql_json_item_required OR sql_json_scalar_required THEN
            RAISE EXCEPTION 'ae_events: the filter % is not a predicate',
                    pg_catalog.quote_literal(filter::text)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Write a condition, e.g. $.catalog_assessment.catalog.id == 404.';
        WHEN OTHERS THEN
            NULL;  -- a predicate that fails on {} (e.g. arithmetic) is evaluated silently later
        END;
    END IF;
    IF headers IS NULL OR pg_catalog.jsonb_typeof(headers) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'ae_events: headers must be a JSON object of names and string values'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(headers)) OPERATOR(pg_catalog.>) 50
       OR pg_catalog.octet_length(headers::text) OPERATOR(pg_catalog.>) 16384 THEN
        RAISE EXCEPTION 'ae_events: headers may hold at most 50 headers and 16 kB'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR header IN SELECT h.key, h.value FROM pg_catalog.jsonb_each(headers) AS h LOOP
        -- A value is one line of visible characters (tabs allowed): no control characters.
        IF pg_catalog.jsonb_typeof(header.value) OPERATOR(pg_catalog.<>) 'string'
           OR header.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$'
           OR pg_catalog.length(header.key) OPERATOR(pg_catalog.>) 256
           OR (header.value OPERATOR(pg_catalog.#>>) '{}') ~ '[\x01-\x08\x0a-\x1f\x7f]' THEN
            RAISE EXCEPTION 'ae_events: header % needs a token name and a one-line string value without control characters',
                    pg_catalog.quote_literal(header.key)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- Compared as receivers may read them: case-insensitive, and "_" as "-" (CGI and WSGI
        -- servers turn both into "_": webhook_id would reach them as the relay's webhook-id).
        -- Hop-by-hop and framing headers are the HTTP client's.
        IF pg_catalog.translate(pg_catalog.lower(header.key), '_', '-') IN (
               'content-type', 'content-length', 'content-encoding', 'host', 'user-agent',
               'transfer-encoding', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade',
               'expect', 'proxy-authorization', 'proxy-authenticate', 'proxy-connection')
           OR pg_catalog.translate(pg_catalog.lower(header.key), '_', '-') LIKE 'webhook-%'
           OR pg_catalog.translate(pg_catalog.lower(header.key), '_', '-') LIKE 'ae-%' THEN
            RAISE EXCEPTION 'ae_events: header % is set by the relay or by HTTP itself', pg_catalog.quote_literal(header.key)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Names are compared without case, with "_" as "-".';
        END IF;
    END LOOP;
    IF timeout IS NULL OR timeout OPERATOR(pg_catalog.<=) interval '0'
       OR timeout OPERATOR(pg_catalog.>) interval '5 minutes' THEN
        RAISE EXCEPTION 'ae_events: timeout must be more than 0 and at most 5 minutes, not %', timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retry_schedule IS NULL OR pg_catalog.array_position(retry_schedule, NULL) IS NOT NULL
       OR pg_catalog.cardinality(retry_schedule) OPERATOR(pg_catalog.>) 1000
       OR EXISTS (SELECT FROM pg_catalog.unnest(retry_schedule) AS d
                   WHERE d OPERATOR(pg_catalog.<) interval '0'
                      OR d OPERATOR(pg_catalog.>) interval '7 days') THEN
        RAISE EXCEPTION 'ae_events: retry_schedule must be at most 1000 delays between 0 and 7 days, not %',
                coalesce(pg_catalog.left(retry_schedule::text, 200), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retry_jitter IS NULL OR retry_jitter NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'ae_events: retry_jitter must be between 0 and 1, not %', retry_jitter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Bounded so that the relay can do arithmetic with it (10000 years overflowed timestamps).
    IF disable_after IS NULL OR disable_after OPERATOR(pg_catalog.<=) interval '0'
       OR disable_after OPERATOR(pg_catalog.>) interval '366 days' THEN
        RAISE EXCEPTION 'ae_events: disable_after must be more than 0 and at most 366 days, not %', disable_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_in_flight IS NULL OR max_in_flight NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'ae_events: max_in_flight must be between 1 and 256, not %', max_in_flight
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- At least one request per 1000 s: a relay's rate limiter cannot represent periods of
    -- centuries (1e-12 made every relay serving the endpoint panic).
    IF rate_limit IS NOT NULL AND NOT (rate_limit OPERATOR(pg_catalog.>=) 0.001
                                       AND rate_limit OPERATOR(pg_catalog.<=) 100000) THEN
        RAISE EXCEPTION 'ae_events: rate_limit must be between 0.001 and 100000 requests per second, not %', rate_limit
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rate_limit => 0 removes the limit.';
    END IF;
END
$$;

-- A new ed25519 signing key: whsk_ and the base64 of its 32-byte seed (from pg_strong_random)
-- followed by its 32-byte public key, as libsodium keeps a secret key.
CREATE FUNCTION ae_events._new_ed25519_secret() RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    seed bytea := ae_events._strong_random_bytes(32);
BEGIN
    -- encode() breaks base64 lines at 76 characters: one line here.
    RETURN 'whsk_' OPERATOR(pg_catalog.||)
           pg_catalog.translate(pg_catalog.encode(seed OPERATOR(pg_catalog.||) ae_events._ed25519_public_key(seed), 'base64'),
                                E'\n', '');
END
$$;

-- The egress settings alter_endpoint was given (NULL: as it is; '': cleared), checked and stored
-- in endpoint_egress. client_certificate => '' clears the certificate and its key;
-- oauth2_token_url => '' clears the four OAuth2 settings. Error texts never repeat a secret.
CREATE FUNCTION ae_events._set_endpoint_egress(endpoint text, proxy text, client_certificate text,
                                               client_key text, oauth2_token_url text,
                                               oauth2_client_id text, oauth2_client_secret text,
                                               oauth2_scope text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current ae_events.endpoint_egress;
    new_proxy text;
    new_certificate text;
    new_key text;
    new_expires_at timestamptz;
    new_token_url text;
    new_client_id text;
    new_client_secret text;
    new_scope text;
    clear_certificate boolean := client_certificate OPERATOR(pg_catalog.=) '';
    clear_oauth2 boolean := oauth2_token_url OPERATOR(pg_catalog.=) '';
BEGIN
    SELECT * INTO current FROM ae_events.endpoint_egress AS g
     WHERE g.endpoint OPERATOR(pg_catalog.=) _set_endpoint_egress.endpoint
       FOR UPDATE;
    new_proxy := CASE WHEN proxy OPERATOR(pg_catalog.=) '' THEN NULL ELSE coalesce(proxy, current.proxy) END;
    -- http(s)://[user[:password]@]host[:port][/]: the relay sends HTTP through it and tunnels
    -- HTTPS with CONNECT.
    IF new_proxy IS NOT NULL AND proxy IS NOT NULL
       AND (pg_catalog.length(new_proxy) OPERATOR(pg_catalog.>) 2048
            OR new_proxy !~ '^https?://([A-Za-z0-9._~%!$&''()*+,;=:-]+@)?[^/?#@[:space:]]+/?$'
            OR NOT ae_events._relay_can_parse_authority(
                       pg_catalog.substring(new_proxy, '^https?://(?:[^/?#@[:space:]]+@)?([^/?#@[:space:]]+)/?$'))) THEN
        RAISE EXCEPTION 'ae_events: proxy must be an http:// or https:// URL of a host and port, with user info or without, and no path'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'E.g. http://user:password@proxy.example:3128; proxy => '''' removes it.';
    END IF;
    new_certificate := CASE WHEN clear_certificate THEN NULL
                            ELSE coalesce(client_certificate, current.client_certificate) END;
    new_key := CASE WHEN client_key OPERATOR(pg_catalog.=) '' OR (clear_certificate AND client_key IS NULL) THEN NULL
                    ELSE coalesce(client_key, current.client_key) END;
    new_expires_at := current.client_certificate_expires_at;
    IF (new_certificate IS NULL) OPERATOR(pg_catalog.<>) (new_key IS NULL) THEN
        RAISE EXCEPTION 'ae_events: client_certificate and client_key are set together'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'client_certificate => '''' removes both.';
    END IF;
    IF new_certificate IS NULL THEN
        new_expires_at := NULL;
    ELSIF client_certificate IS NOT NULL OR client_key IS NOT NULL THEN
        IF pg_catalog.length(new_certificate) OPERATOR(pg_catalog.>) 65536
           OR pg_catalog.length(new_key) OPERATOR(pg_catalog.>) 16384 THEN
            RAISE EXCEPTION 'ae_events: client_certificate may be at most 64 kB and client_key 16 kB'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        new_expires_at := pg_catalog.to_timestamp(ae_events._check_client_certificate(new_certificate, new_key));
    END IF;
    new_token_url := CASE WHEN clear_oauth2 THEN NULL ELSE coalesce(oauth2_token_url, current.oauth2_token_url) END;
    new_client_id := CASE WHEN oauth2_client_id OPERATOR(pg_catalog.=) '' OR (clear_oauth2 AND oauth2_client_id IS NULL) THEN NULL
                          ELSE coalesce(oauth2_client_id, current.oauth2_client_id) END;
    new_client_secret := CASE WHEN oauth2_client_secret OPERATOR(pg_catalog.=) '' OR (clear_oauth2 AND oauth2_client_secret IS NULL) THEN NULL
                              ELSE coalesce(oauth2_client_secret, current.oauth2_client_secret) END;
    new_scope := CASE WHEN oauth2_scope OPERATOR(pg_catalog.=) '' OR (clear_oauth2 AND oauth2_scope IS NULL) THEN NULL
                      ELSE coalesce(oauth2_scope, current.oauth2_scope) END;
    IF (new_token_url IS NULL) OPERATOR(pg_catalog.<>) (new_client_id IS NULL)
       OR (new_token_url IS NULL) OPERATOR(pg_catalog.<>) (new_client_secret IS NULL)
       OR (new_token_url IS NULL AND new_scope IS NOT NULL) THEN
        RAISE EXCEPTION 'ae_events: oauth2_token_url, oauth2_client_id and oauth2_client_secret are set together (oauth2_scope with them)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'oauth2_token_url => '''' removes the four.';
    END IF;
    -- The token URL as an endpoint's URL (the relay guards it like one); no user info.
    IF new_token_url IS NOT NULL AND oauth2_token_url IS NOT NULL
       AND (pg_catalog.length(new_token_url) OPERATOR(pg_catalog.>) 2048
            OR new_token_url !~ '^https?://[^/?#@[:space:]]+(:[0-9]{1,5})?([/?#][^[:space:]]*)?$'
            OR new_token_url ~ '^https?://:'
            OR NOT ae_events._relay_can_parse_authority(pg_catalog.substring(new_token_url, '^[a-z]+://([^/?#]*)'))) THEN
        -- Shown without user info: a password given there is not repeated.
        RAISE EXCEPTION 'ae_events: oauth2_token_url % is not an http:// or https:// URL with a host and no user info',
                pg_catalog.quote_literal(pg_catalog.left(
                    pg_catalog.regexp_replace(new_token_url, '^([A-Za-z]+://)[^@]*@', '\1'), 200))
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A host is a name, a dotted IPv4 address or a bracketed IPv6 address; a port is 1 to 65535.';
    END IF;
    IF new_client_id IS NOT NULL AND oauth2_client_id IS NOT NULL
       AND (pg_catalog.length(new_client_id) OPERATOR(pg_catalog.>) 1024 OR new_client_id ~ '[\x01-\x1f\x7f]') THEN
        RAISE EXCEPTION 'ae_events: oauth2_client_id is at most 1024 characters, without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_client_secret IS NOT NULL AND oauth2_client_secret IS NOT NULL
       AND (pg_catalog.length(new_client_secret) OPERATOR(pg_catalog.>) 4096 OR new_client_secret ~ '[\x01-\x1f\x7f]') THEN
        RAISE EXCEPTION 'ae_events: oauth2_client_secret is at most 4096 characters, without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- RFC 6749 §3.3: scope tokens of visible ASCII but " and \, separated by spaces.
    IF new_scope IS NOT NULL AND oauth2_scope IS NOT NULL
       AND (pg_catalog.length(new_scope) OPERATOR(pg_catalog.>) 1024
            OR new_scope !~ '^[!#-\[\]-~]+( [!#-\[\]-~]+)*$') THEN
        RAISE EXCEPTION 'ae_events: oauth2_scope % is not space-separated scope tokens (at most 1024 characters)',
                pg_catalog.quote_literal(pg_catalog.left(new_scope, 200))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF new_proxy IS NULL AND new_certificate IS NULL AND new_token_url IS NULL THEN
        DELETE FROM ae_events.endpoint_egress AS g
         WHERE g.endpoint OPERATOR(pg_catalog.=) _set_endpoint_egress.endpoint;
        RETURN;
    END IF;
    INSERT INTO ae_events.endpoint_egress AS g (endpoint, proxy, client_certificate, client_key,
                                                client_certificate_expires_at, oauth2_token_url,
                                                oauth2_client_id, oauth2_client_secret, oauth2_scope)
    VALUES (endpoint, new_proxy, new_certificate, new_key, new_expires_at, new_token_url,
            new_client_id, new_client_secret, new_scope)
    ON CONFLICT ON CONSTRAINT endpoint_egress_pkey
    DO UPDATE SET proxy = excluded.proxy, client_certificate = excluded.client_certificate,
                  client_key = excluded.client_key,
                  client_certificate_expires_at = excluded.client_certificate_expires_at,
                  oauth2_token_url = excluded.oauth2_token_url,
                  oauth2_client_id = excluded.oauth2_client_id,
                  oauth2_client_secret = excluded.oauth2_client_secret,
                  oauth2_scope = excluded.oauth2_scope;
END
$$;

-- A new, enabled endpoint with the default policy (webhooks.md §5); it receives the events whose
-- transactions finish from now on. Returns its generated secret.
CREATE FUNCTION ae_events.create_endpoint(endpoint text, url text,
                                          subscription_keys text[] DEFAULT NULL,
                                          filter jsonpath DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_secret text := ae_events._new_secret();
    start record := ae_events._position_now();
BEGIN
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF endpoint OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'ae_events: an endpoint needs a non-empty name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Names go into logs, metrics labels and pages: printable, one line, bounded.
    IF pg_catalog.length(endpoint) OPERATOR(pg_catalog.>) 200
       OR endpoint ~ '[\x01-\x1f\x7f-\x9f]' THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is at most 200 characters, without control characters, not %',
                pg_catalog.quote_literal(pg_catalog.left(endpoint, 200))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM ae_events._check_endpoint_settings(url, subscription_keys, filter, '{}', '15 seconds',
                                               '{5 seconds}', 0.2, '5 days', 16, NULL);
    BEGIN
        INSERT INTO ae_events.endpoints (endpoint, url, subscription_keys, filter,
                                         cursor_epoch, cursor_txid, cursor_id)
        VALUES (endpoint, url, subscription_keys, filter, start.position_epoch,
                start.position_txid, start.position_id);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'ae_events: the endpoint % exists already', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Change it with ae_events.alter_endpoint, or drop it first.';
    END;
    INSERT INTO ae_events.endpoint_secrets (endpoint, secret) VALUES (endpoint, new_secret);
    RETURN new_secret;
END
$$;

-- The same with the filter given as text, so that a malformed jsonpath gets an ae_events error
-- (a text literal picks this one; a jsonpath value picks the one above).
CREATE FUNCTION ae_events.create_endpoint(endpoint text, url text, subscription_keys text[],
                                          filter text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parsed jsonpath;
BEGIN
    IF filter IS NOT NULL THEN
        BEGIN
            parsed := filter::jsonpath;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'ae_events: the filter % is not a valid jsonpath', pg_catalog.quote_literal(filter)
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = SQLERRM,
                      HINT = 'Write a condition, e.g. $.catalog_assessment.catalog.id == 404.';
        END;
    END IF;
    RETURN ae_events.create_endpoint(endpoint, url, subscription_keys, parsed);
END
$$;

-- Change an endpoint; NULL leaves a setting as it is (clear_filter removes the filter;
-- subscription_keys => '{*}' goes back to every ae.test_instance.* key). alert_after_attempts /
-- alert_after: ae.endpoint.failing after this many attempts failed in a row or this long since
-- the first failure, whichever comes first (docs/alerts.md). proxy, client_certificate with
-- client_key, oauth2_*: how the relay reaches the endpoint (docs/webhooks.md); '' removes one
-- (client_certificate => '' the certificate and its key, oauth2_token_url => '' the four OAuth2
-- settings).
CREATE FUNCTION ae_events.alter_endpoint(endpoint text,
                                         url text DEFAULT NULL,
                                         subscription_keys text[] DEFAULT NULL,
                                         filter jsonpath DEFAULT NULL,
                                         headers jsonb DEFAULT NULL,
                                         timeout interval DEFAULT NULL,
                                         retry_schedule interval[] DEFAULT NULL,
                                         retry_jitter double precision DEFAULT NULL,
                                         disable_after interval DEFAULT NULL,
                                         max_in_flight integer DEFAULT NULL,
                                         clear_filter boolean DEFAULT false,
                                         rate_limit double precision DEFAULT NULL,
                                         alert_after interval DEFAULT NULL,
                                         alert_after_attempts integer DEFAULT NULL,
                                         proxy text DEFAULT NULL,
                                         client_certificate text DEFAULT NULL,
                                         client_key text DEFAULT NULL,
                                         oauth2_token_url text DEFAULT NULL,
                                         oauth2_client_id text DEFAULT NULL,
                                         oauth2_client_secret text DEFAULT NULL,
                                         oauth2_scope text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current ae_events.endpoints := ae_events._endpoint_for_update(endpoint);
    new_keys text[] := CASE WHEN subscription_keys OPERATOR(pg_catalog.=) '{*}' THEN NULL
                            ELSE coalesce(subscription_keys, current.subscription_keys) END;
    new_filter jsonpath := CASE WHEN clear_filter THEN NULL
                                ELSE coalesce(filter, current.filter) END;
    -- 0 removes the limit.
    new_rate_limit double precision := CASE WHEN rate_limit OPERATOR(pg_catalog.=) 0 THEN NULL
                                            ELSE coalesce(rate_limit, current.rate_limit) END;
BEGIN
    PERFORM ae_events._check_endpoint_settings(
        coalesce(url, current.url), new_keys, new_filter, coalesce(headers, current.headers),
        coalesce(timeout, current.timeout), coalesce(retry_schedule, current.retry_schedule),
        coalesce(retry_jitter, current.retry_jitter), coalesce(disable_after, current.disable_after),
        coalesce(max_in_flight, current.max_in_flight), new_rate_limit);
    IF alert_after IS NOT NULL AND (alert_after OPERATOR(pg_catalog.<=) interval '0'
                                    OR alert_after OPERATOR(pg_catalog.>) interval '366 days') THEN
        RAISE EXCEPTION 'ae_events: alert_after must be more than 0 and at most 366 days, not %', alert_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF alert_after_attempts IS NOT NULL AND alert_after_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'ae_events: alert_after_attempts must be between 1 and 1000, not %', alert_after_attempts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE ae_events.endpoints AS e
       SET url = coalesce(alter_endpoint.url, e.url),
           subscription_keys = new_keys,
           filter = new_filter,
           headers = coalesce(alter_endpoint.headers, e.headers),
           timeout = coalesce(alter_endpoint.timeout, e.timeout),
           retry_schedule = coalesce(alter_endpoint.retry_schedule, e.retry_schedule),
           retry_jitter = coalesce(alter_endpoint.retry_jitter, e.retry_jitter),
           disable_after = coalesce(alter_endpoint.disable_after, e.disable_after),
           max_in_flight = coalesce(alter_endpoint.max_in_flight, e.max_in_flight),
           rate_limit = new_rate_limit,
           alert_after = coalesce(alter_endpoint.alert_after, e.alert_after),
           alert_after_attempts = coalesce(alter_endpoint.alert_after_attempts, e.alert_after_attempts)
     WHERE e.endpoint OPERATOR(pg_catalog.=) alter_endpoint.endpoint;
    IF proxy IS NOT NULL OR client_certificate IS NOT NULL OR client_key IS NOT NULL
       OR oauth2_token_url IS NOT NULL OR oauth2_client_id IS NOT NULL
       OR oauth2_client_secret IS NOT NULL OR oauth2_scope IS NOT NULL THEN
        PERFORM ae_events._set_endpoint_egress(endpoint, proxy, client_certificate, client_key,
                                               oauth2_token_url, oauth2_client_id,
                                               oauth2_client_secret, oauth2_scope);
    END IF;
    -- A proxy, a client certificate and OAuth2 act on HTTP requests: a NATS endpoint would
    -- ignore them without a word.
    IF EXISTS (SELECT FROM ae_events.endpoints AS e
                 JOIN ae_events.endpoint_egress AS g ON g.endpoint OPERATOR(pg_catalog.=) e.endpoint
                WHERE e.endpoint OPERATOR(pg_catalog.=) alter_endpoint.endpoint
                  AND e.url OPERATOR(pg_catalog.~~) 'nats://%') THEN
        RAISE EXCEPTION 'ae_events: endpoint % publishes to NATS: proxy, client_certificate and oauth2_* apply to http:// and https:// endpoints only',
                pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Clear them (proxy => '''', client_certificate => '''', oauth2_token_url => '''') or give an http(s):// url.';
    END IF;
END
$$;

-- A new secret (generated, or given: whsec_ + base64 of 24 to 64 bytes). The current ones keep
-- signing for the grace period, then stop. Returns the new secret. algorithm => 'ed25519'
-- switches to a new ed25519 key pair (generated; the relay signs v1a with it) and returns its
-- public key, whpk_ + base64, for the receiver; 'hmac' (the default) adds a whsec_ secret.
CREATE FUNCTION ae_events.rotate_endpoint_secret(endpoint text,
                                                 grace interval DEFAULT '1 day',
                                                 new_secret text DEFAULT NULL,
                                                 algorithm text DEFAULT 'hmac')
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret_to_add text;
BEGIN
    PERFORM ae_events._endpoint_for_update(endpoint);
    IF algorithm IS NULL OR algorithm NOT IN ('hmac', 'ed25519') THEN
        RAISE EXCEPTION 'ae_events: algorithm is hmac or ed25519, not %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(algorithm, 50)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF algorithm OPERATOR(pg_catalog.=) 'ed25519' THEN
        IF new_secret IS NOT NULL THEN
            RAISE EXCEPTION 'ae_events: an ed25519 key pair is generated: give no new_secret with it'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        secret_to_add := ae_events._new_ed25519_secret();
    ELSE
        secret_to_add := coalesce(new_secret, ae_events._new_secret());
        PERFORM ae_events._require_secret(secret_to_add);
    END IF;
    IF grace IS NULL OR grace OPERATOR(pg_catalog.<) interval '0'
       OR grace OPERATOR(pg_catalog.>) interval '366 days' THEN
        RAISE EXCEPTION 'ae_events: grace must be between 0 and 366 days, not %', grace
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE ae_events.endpoint_secrets AS s
       SET expires_at = pg_catalog.now() OPERATOR(pg_catalog.+) grace
     WHERE s.endpoint OPERATOR(pg_catalog.=) rotate_endpoint_secret.endpoint
       AND (s.expires_at IS NULL
            OR s.expires_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.+) grace));
    BEGIN
        INSERT INTO ae_events.endpoint_secrets (endpoint, secret) VALUES (endpoint, secret_to_add);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'ae_events: the endpoint % has that secret already', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'duplicate_object';
    END;
    -- Secrets that stopped signing are of no use.
    DELETE FROM ae_events.endpoint_secrets AS s
     WHERE s.endpoint OPERATOR(pg_catalog.=) rotate_endpoint_secret.endpoint
       AND s.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now();
    IF algorithm OPERATOR(pg_catalog.=) 'ed25519' THEN
        -- The key's last 32 bytes are its public key.
        RETURN 'whpk_' OPERATOR(pg_catalog.||)
               pg_catalog.encode(pg_catalog.substr(pg_catalog.decode(pg_catalog.substr(secret_to_add, 6), 'base64'), 33, 32), 'base64');
    END IF;
    RETURN secret_to_add;
END
$$;

-- Disable an endpoint (locked by the caller), saying why; its relay lets go of it. An enabled
-- one that is disabled gets its ae.endpoint.disabled event (cause: gone, disable_after or
-- operator), in this transaction; disabling a disabled one again writes none.
CREATE FUNCTION ae_events._disable(endpoint text, reason text, cause text,
                                   last_status integer, last_error text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was ae_events.endpoints;
BEGIN
    SELECT * INTO was FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) _disable.endpoint;
    UPDATE ae_events.endpoints AS e
       SET enabled = false, disabled_reason = reason, disabled_at = pg_catalog.now(),
           relay = NULL, relay_role = NULL, lease_expires_at = NULL
     WHERE e.endpoint OPERATOR(pg_catalog.=) _disable.endpoint;
    IF was.enabled THEN
        PERFORM ae_events._write_alert(was.endpoint_id, 'ae.endpoint.disabled', reason,
                                       last_status, last_error,
                                       pg_catalog.jsonb_build_object('cause', cause));
    END IF;
END
$$;

-- Enable an endpoint (again): delivery resumes at its cursor and its pending events.
CREATE FUNCTION ae_events.enable_endpoint(endpoint text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ae_events._endpoint_for_update(endpoint);
    UPDATE ae_events.endpoints AS e
       SET enabled = true, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL,
           failed_attempts = 0
     WHERE e.endpoint OPERATOR(pg_catalog.=) enable_endpoint.endpoint;
END
$$;

CREATE FUNCTION ae_events.disable_endpoint(endpoint text, reason text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ae_events._endpoint_for_update(endpoint);
    PERFORM ae_events._disable(endpoint,
                               coalesce(reason, 'disabled by ' OPERATOR(pg_catalog.||) ae_events._calling_role()),
                               'operator', NULL, NULL);
END
$$;

-- Drop an endpoint with its secrets and delivery records. Returns whether it existed.
CREATE FUNCTION ae_events.drop_endpoint(endpoint text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM ae_events.deliveries AS d WHERE d.endpoint OPERATOR(pg_catalog.=) drop_endpoint.endpoint;
    DELETE FROM ae_events.endpoint_secrets AS s WHERE s.endpoint OPERATOR(pg_catalog.=) drop_endpoint.endpoint;
    DELETE FROM ae_events.endpoint_egress AS g WHERE g.endpoint OPERATOR(pg_catalog.=) drop_endpoint.endpoint;
    DELETE FROM ae_events.endpoints AS e WHERE e.endpoint OPERATOR(pg_catalog.=) drop_endpoint.endpoint;
    RETURN FOUND;
END
$$;

-- Whether an event goes to an endpoint: its subscription keys (NULL: the ae.test_instance.*
-- keys, no operational event), then its filter (evaluated silently: a payload the filter cannot
-- be applied to does not match).
CREATE FUNCTION ae_events._endpoint_matches(subscription_keys text[], filter jsonpath,
                                            subscription_key text, payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (CASE WHEN subscription_keys IS NULL THEN subscription_key LIKE 'ae.test\_instance.%'
                 ELSE subscription_key OPERATOR(pg_catalog.=) ANY (subscription_keys) END)
       AND (filter IS NULL OR coalesce(pg_catalog.jsonb_path_match(payload, filter, '{}', true), false))
$$;

-- Send these events (by event_id) to the endpoint again, from the first attempt, in order per
-- instance. Refuses ids that are not in the outbox or that the endpoint does not subscribe to.
-- Returns how many were scheduled.
CREATE FUNCTION ae_events.redeliver(endpoint text, event_ids uuid[]) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._endpoint_for_update(endpoint);
    missing uuid;
    scheduled bigint;
BEGIN
    IF event_ids IS NULL THEN
        RAISE EXCEPTION 'ae_events: redeliver needs an array of event ids, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- An expired payload (ae_events.payload_retention) cannot be sent again: said plainly.
    SELECT wanted INTO missing FROM pg_catalog.unnest(event_ids) AS wanted
     WHERE EXISTS (SELECT FROM ae_events.outbox AS o
                    WHERE o.event_id OPERATOR(pg_catalog.=) wanted
                      AND o.payload OPERATOR(pg_catalog.=) 'null'::jsonb)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ae_events: event % cannot be sent again: its payload expired', missing
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'prune() replaced it by null after ae_events.payload_retention; the event''s metadata and delivery history are kept.';
    END IF;
    SELECT wanted INTO missing FROM pg_catalog.unnest(event_ids) AS wanted
     WHERE NOT EXISTS (SELECT FROM ae_events.outbox AS o
                        WHERE o.event_id OPERATOR(pg_catalog.=) wanted
                          AND ae_events._endpoint_matches(target.subscription_keys, target.filter,
                                                          o.subscription_key, o.payload))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ae_events: event % is not in the outbox or not for endpoint %',
                coalesce(missing::text, 'NULL'), pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO ae_events.deliveries AS d (endpoint, outbox_id, aggregate_id, status, next_attempt_at)
    SELECT target.endpoint, o.id, o.aggregate_id, 'pending', pg_catalog.now()
      FROM ae_events.outbox AS o
     WHERE o.event_id OPERATOR(pg_catalog.=) ANY (event_ids)
    ON CONFLICT ON CONSTRAINT deliveries_pkey DO UPDATE
       SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), dead_at = NULL;
    GET DIAGNOSTICS scheduled = ROW_COUNT;
    RETURN scheduled;
END
$$;

-- Send the endpoint every matching event that occurred at or after since again, in order per
-- instance. Events after its cursor that it has not seen yet come on their own. Returns how many
-- were scheduled.
CREATE FUNCTION ae_events.replay_endpoint(endpoint text, since timestamptz) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._endpoint_for_update(endpoint);
    scheduled bigint;
    expired bigint;
BEGIN
    IF since IS NULL THEN
        RAISE EXCEPTION 'ae_events: replay_endpoint needs a start time, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Events whose payload expired (ae_events.payload_retention) are left out, with a notice.
    SELECT pg_catalog.count(*) INTO expired
      FROM ae_events.outbox AS o
     WHERE o.occurred_at OPERATOR(pg_catalog.>=) since
       AND o.payload OPERATOR(pg_catalog.=) 'null'::jsonb
       -- Its keys only: the filter was the payload's.
       AND ae_events._endpoint_matches(target.subscription_keys, NULL, o.subscription_key, o.payload);
    IF expired OPERATOR(pg_catalog.>) 0 THEN
        RAISE NOTICE 'ae_events: % events since % are not replayed: their payloads expired', expired, since
            USING DETAIL = 'prune() replaced them by null after ae_events.payload_retention.';
    END IF;
    INSERT INTO ae_events.deliveries AS d (endpoint, outbox_id, aggregate_id, status, next_attempt_at)
    SELECT target.endpoint, o.id, o.aggregate_id, 'pending', pg_catalog.now()
      FROM ae_events._epochs() AS e
      JOIN ae_events.outbox AS o
        ON o.id OPERATOR(pg_catalog.>=) e.first_id
       AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
     WHERE o.occurred_at OPERATOR(pg_catalog.>=) since
       AND o.payload OPERATOR(pg_catalog.<>) 'null'::jsonb
       AND ae_events._endpoint_matches(target.subscription_keys, target.filter,
                                       o.subscription_key, o.payload)
       AND ((e.first_id, o.txid, o.id) OPERATOR(pg_catalog.<=)
                (target.cursor_epoch, target.cursor_txid, target.cursor_id)
            OR EXISTS (SELECT FROM ae_events.deliveries AS x
                        WHERE x.endpoint OPERATOR(pg_catalog.=) target.endpoint
                          AND x.outbox_id OPERATOR(pg_catalog.=) o.id))
    ON CONFLICT ON CONSTRAINT deliveries_pkey DO UPDATE
       SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), dead_at = NULL;
    GET DIAGNOSTICS scheduled = ROW_COUNT;
    RETURN scheduled;
END
$$;

-- For analysts, relays and DBAs: endpoints without their secrets or header values.
CREATE VIEW ae_events.endpoint_status AS
SELECT e.endpoint, e.url, e.subscription_keys, e.filter::text AS filter,
       ARRAY(SELECT k FROM pg_catalog.jsonb_object_keys(e.headers) AS k ORDER BY k) AS header_names,
       e.timeout, e.retry_schedule, e.retry_jitter, e.disable_after, e.max_in_flight,
       e.enabled, e.disabled_reason, e.disabled_at, e.failing_since,
       e.relay, e.lease_expires_at,
       (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending') AS pending,
       (SELECT pg_catalog.min(d.next_attempt_at) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending') AS next_attempt_at,
       (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'dead') AS dead,
       e.cursor_id AS cursor_event,
       e.created_at,
       e.rate_limit,
       -- Operational events (alerts.sql): the settings and the state behind them.
       e.alert_after,
       e.alert_after_attempts,
       e.failed_attempts,
       e.alert_failing_since,
       -- Egress (issue 25): what may be shown of it. The ed25519 public keys receivers verify
       -- v1a with (whpk_, newest first: the last 32 bytes of each active whsk_ key); the
       -- proxy's host and port (never its user info); when the client certificate expires;
       -- the OAuth2 token URL and client id (RFC 6749: an id is no secret).
       ARRAY(SELECT 'whpk_' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr(
                        pg_catalog.decode(pg_catalog.substr(s.secret, 6), 'base64'), 33, 32), 'base64')
               FROM ae_events.endpoint_secrets AS s
              WHERE s.endpoint OPERATOR(pg_catalog.=) e.endpoint AND s.secret LIKE 'whsk\_%'
                AND (s.expires_at IS NULL OR s.expires_at OPERATOR(pg_catalog.>) pg_catalog.now())
              ORDER BY s.created_at DESC, s.secret) AS signing_public_keys,
       pg_catalog.substring(g.proxy, '^https?://(?:[^/?#@[:space:]]+@)?([^/?#@[:space:]]+)') AS proxy_host,
       g.client_certificate_expires_at,
       g.oauth2_token_url,
       g.oauth2_client_id
  FROM ae_events.endpoints AS e
  LEFT JOIN ae_events.endpoint_egress AS g ON g.endpoint OPERATOR(pg_catalog.=) e.endpoint;

COMMENT ON VIEW ae_events.endpoint_status IS
    'ae_events: webhook endpoints (no secrets, header names only; ed25519 public keys, proxy host, certificate expiry), their state, pending and dead-lettered counts';

-- For analysts: per endpoint and event, attempts and outcome. status: pending (next_attempt_at
-- says when), delivered, dead (dead-lettered).
CREATE VIEW ae_events.delivery_status AS
SELECT d.endpoint, d.outbox_id AS id, o.event_id, o.subscription_key AS event,
       d.aggregate_id AS instance_id, o.snapshot_version, o.occurred_at,
       d.status, d.attempts, d.last_status, d.last_error,
       d.first_attempt_at, d.last_attempt_at, d.delivered_at, d.dead_at, d.next_attempt_at
  FROM ae_events.deliveries AS d
  LEFT JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id;

COMMENT ON VIEW ae_events.delivery_status IS
    'ae_events: per endpoint and event its deliveries: status (pending, delivered, dead), attempts, last HTTP status or error, times';

------------------------------------------------------------------------------------------------
-- The relay's side. Each call names the relay (a unique id it makes at start) and refuses an
-- endpoint that relay does not hold.

-- The relays that run: each relay_lease call says "alive until expires_at". Not dumped: after a
-- restore the relays come back by themselves.
CREATE TABLE ae_events.relays (
    relay text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    -- The role the relay runs as (_calling_role()): its id is that role's while it lives.
    role name
);

COMMENT ON TABLE ae_events.relays IS
    'ae_events: the ae-relay processes that renewed their leases lately; endpoints are shared among them';

-- Relays are bound to their role: a relay id that is alive belongs to the role that leased with
-- it (the relay's login role, or the role it SET ROLE to), and only that role may act under it.
-- Relays that share a role are one trust domain; give each relay a role of its own to keep them
-- apart (docs/security.md).
CREATE FUNCTION ae_events._require_own_relay(relay text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF relay IS NULL THEN
        RAISE EXCEPTION 'ae_events: a relay id is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT FROM ae_events.relays AS r
                WHERE r.relay OPERATOR(pg_catalog.=) _require_own_relay.relay
                  AND r.expires_at OPERATOR(pg_catalog.>=) pg_catalog.clock_timestamp()
                  AND r.role OPERATOR(pg_catalog.<>) ae_events._calling_role()) THEN
        RAISE EXCEPTION 'ae_events: relay % runs as another role', pg_catalog.quote_literal(relay)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A relay acts only under ids of its own role; each relay process makes an id of its own.';
    END IF;
END
$$;

-- Renew this relay's leases and take endpoints that nobody holds (or whose relay's lease expired),
-- up to its fair share: the enabled endpoints divided by the live relays, rounded up. Of the
-- ones it holds beyond that share (another relay came), it renews only the share (first by
-- name) and lets the rest run out: another relay takes them once they expired, so that no two
-- relays ever send for one endpoint. Lets go of disabled ones. Returns the endpoints it serves,
-- with what it needs to deliver. A lease lasts at most 10 minutes, and a relay id is its role's
-- (_require_own_relay).
CREATE FUNCTION ae_events.relay_lease(relay text, lease interval)
RETURNS TABLE (endpoint text, url text, headers jsonb, timeout_ms bigint,
               retry_schedule_ms bigint[], retry_jitter double precision, max_in_flight integer,
               secrets text[], cursor_epoch bigint, cursor_txid xid8, cursor_id bigint,
               rate_limit double precision, endpoint_id bigint,
               proxy text, client_certificate text, client_key text, oauth2_token_url text,
               oauth2_client_id text, oauth2_client_secret text, oauth2_scope text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    now_at timestamptz := pg_catalog.clock_timestamp();
    caller name := ae_events._calling_role();
    live_relays bigint;
    enabled_endpoints bigint;
    fair_share bigint;
    kept text[];
    taken text[];
    registered integer;
BEGIN
    IF relay IS NULL OR relay OPERATOR(pg_catalog.=) '' OR lease IS NULL
       OR lease OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'ae_events: relay_lease needs a relay id and a positive lease'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease OPERATOR(pg_catalog.>) interval '10 minutes' THEN
        RAISE EXCEPTION 'ae_events: a lease lasts at most 10 minutes, not %', lease
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Another relay takes a dead relay''s endpoints only once its lease expired.';
    END IF;
    IF pg_catalog.length(relay) OPERATOR(pg_catalog.>) 200 OR relay ~ '[\x01-\x1f\x7f-\x9f]' THEN
        RAISE EXCEPTION 'ae_events: a relay id is at most 200 characters, without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- An id alive under another role is refused; an expired one is free again.
    INSERT INTO ae_events.relays AS r (relay, seen_at, expires_at, role)
    VALUES (relay_lease.relay, now_at, now_at OPERATOR(pg_catalog.+) lease, caller)
    ON CONFLICT ON CONSTRAINT relays_pkey
    DO UPDATE SET seen_at = excluded.seen_at, expires_at = excluded.expires_at,
                  role = excluded.role,
                  started_at = CASE WHEN r.role IS NOT DISTINCT FROM excluded.role THEN r.started_at
                                    ELSE excluded.started_at END
       WHERE r.role IS NULL OR r.role OPERATOR(pg_catalog.=) excluded.role
          OR r.expires_at OPERATOR(pg_catalog.<) now_at;
    GET DIAGNOSTICS registered = ROW_COUNT;
    IF registered OPERATOR(pg_catalog.=) 0 THEN
        PERFORM ae_events._require_own_relay(relay);
    END IF;
    DELETE FROM ae_events.relays AS r WHERE r.expires_at OPERATOR(pg_catalog.<) now_at;
    UPDATE ae_events.endpoints AS e SET relay = NULL, relay_role = NULL, lease_expires_at = NULL
     WHERE e.relay OPERATOR(pg_catalog.=) relay_lease.relay AND NOT e.enabled;
    SELECT pg_catalog.count(*) INTO live_relays FROM ae_events.relays;
    SELECT pg_catalog.count(*) INTO enabled_endpoints FROM ae_events.endpoints AS e WHERE e.enabled;
    fair_share := (enabled_endpoints OPERATOR(pg_catalog.+) live_relays OPERATOR(pg_catalog.-) 1)
                  OPERATOR(pg_catalog./) GREATEST(live_relays, 1);
    WITH renewed AS (
        UPDATE ae_events.endpoints AS e
           SET lease_expires_at = now_at OPERATOR(pg_catalog.+) lease
         WHERE e.endpoint IN (
               SELECT h.endpoint FROM ae_events.endpoints AS h
                WHERE h.relay OPERATOR(pg_catalog.=) relay_lease.relay AND h.enabled
                  AND h.relay_role OPERATOR(pg_catalog.=) caller
                  AND h.lease_expires_at OPERATOR(pg_catalog.>=) now_at
                ORDER BY h.endpoint
                LIMIT fair_share)
        RETURNING e.endpoint)
    SELECT coalesce(pg_catalog.array_agg(r.endpoint), '{}') INTO kept FROM renewed AS r;
    WITH took AS (
        UPDATE ae_events.endpoints AS e
           SET relay = relay_lease.relay,
               relay_role = caller,
               lease_expires_at = now_at OPERATOR(pg_catalog.+) lease
         WHERE e.endpoint IN (
               SELECT f.endpoint FROM ae_events.endpoints AS f
                WHERE f.enabled
                  AND (f.relay IS NULL OR f.lease_expires_at IS NULL
                       OR f.lease_expires_at OPERATOR(pg_catalog.<) now_at)
                ORDER BY f.endpoint
                LIMIT GREATEST(fair_share OPERATOR(pg_catalog.-) pg_catalog.cardinality(kept), 0)
                FOR UPDATE SKIP LOCKED)
        RETURNING e.endpoint)
    SELECT coalesce(pg_catalog.array_agg(t.endpoint), '{}') INTO taken FROM took AS t;
    -- Failing endpoints whose retries are far apart are announced by the clock (alerts.sql).
    PERFORM ae_events._alert_overdue(relay_lease.relay);
    RETURN QUERY
    SELECT h.endpoint, h.url, h.headers,
           (EXTRACT(epoch FROM h.timeout) OPERATOR(pg_catalog.*) 1000)::bigint,
           ARRAY(SELECT (EXTRACT(epoch FROM d) OPERATOR(pg_catalog.*) 1000)::bigint
                   FROM pg_catalog.unnest(h.retry_schedule) WITH ORDINALITY AS s (d, n) ORDER BY n),
           h.retry_jitter, h.max_in_flight,
           ARRAY(SELECT s.secret FROM ae_events.endpoint_secrets AS s
                  WHERE s.endpoint OPERATOR(pg_catalog.=) h.endpoint
                    AND (s.expires_at IS NULL OR s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())
                  ORDER BY s.created_at DESC, s.secret),
           h.cursor_epoch, h.cursor_txid, h.cursor_id, h.rate_limit, h.endpoint_id,
           g.proxy, g.client_certificate, g.client_key, g.oauth2_token_url, g.oauth2_client_id,
           g.oauth2_client_secret, g.oauth2_scope
      FROM ae_events.endpoints AS h
      LEFT JOIN ae_events.endpoint_egress AS g ON g.endpoint OPERATOR(pg_catalog.=) h.endpoint
     WHERE h.endpoint OPERATOR(pg_catalog.=) ANY (kept OPERATOR(pg_catalog.||) taken)
     ORDER BY h.endpoint;
END
$$;

-- A relay that stops lets go of its endpoints, so that another can take them at once.
CREATE FUNCTION ae_events.relay_release(relay text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller name := ae_events._calling_role();
BEGIN
    PERFORM ae_events._require_own_relay(relay);
    DELETE FROM ae_events.relays AS r
     WHERE r.relay OPERATOR(pg_catalog.=) relay_release.relay
       AND r.role IS NOT DISTINCT FROM caller;
    UPDATE ae_events.endpoints AS e SET relay = NULL, relay_role = NULL, lease_expires_at = NULL
     WHERE e.relay OPERATOR(pg_catalog.=) relay_release.relay
       AND e.relay_role OPERATOR(pg_catalog.=) caller;
END
$$;

-- For the relay's metrics, per endpoint it holds: the events after its cursor for its
-- subscription keys (counted up to 100000) and the time of the oldest of them or of a pending
-- delivery, the pending deliveries and the dead letters.
CREATE FUNCTION ae_events.relay_status(relay text)
RETURNS TABLE (endpoint text, backlog bigint, oldest_waiting_at timestamptz, pending bigint,
               dead bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.endpoint, ahead.events,
           CASE WHEN ahead.oldest IS NULL THEN waiting.oldest
                WHEN waiting.oldest IS NULL THEN ahead.oldest
                ELSE LEAST(ahead.oldest, waiting.oldest) END,
           (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
             WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending'),
           (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
             WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'dead')
      FROM ae_events.endpoints AS e
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS events, pg_catalog.min(o.occurred_at) AS oldest
             FROM (SELECT o.occurred_at FROM ae_events.outbox AS o
                    WHERE (o.id OPERATOR(pg_catalog.>=) e.cursor_epoch
                           AND (o.txid, o.id) OPERATOR(pg_catalog.>) (e.cursor_txid, e.cursor_id)
                           AND o.txid OPERATOR(pg_catalog.>=) e.cursor_txid
                           OR o.id OPERATOR(pg_catalog.>=) (
                               SELECT pg_catalog.min(n.first_id) FROM ae_events.epochs AS n
                                WHERE n.first_id OPERATOR(pg_catalog.>) e.cursor_epoch))
                      AND (CASE WHEN e.subscription_keys IS NULL
                                THEN o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                                ELSE o.subscription_key OPERATOR(pg_catalog.=) ANY (e.subscription_keys) END)
                    LIMIT 100000) AS o) AS ahead
     CROSS JOIN LATERAL (
           SELECT pg_catalog.min(o.occurred_at) AS oldest
             FROM ae_events.deliveries AS d
             JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
            WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
              AND d.status OPERATOR(pg_catalog.=) 'pending') AS waiting
     WHERE e.relay OPERATOR(pg_catalog.=) relay_status.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
     ORDER BY e.endpoint
$$;

-- The endpoint, if this relay holds it under its role and it is the same endpoint the relay was
-- handed (endpoint_id: one dropped and created again under its name is another).
CREATE FUNCTION ae_events._require_lease(endpoint text, relay text, endpoint_id bigint)
RETURNS ae_events.endpoints
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held ae_events.endpoints;
BEGIN
    IF endpoint_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: the endpoint_id relay_lease handed out is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM ae_events._require_own_relay(relay);
    SELECT * INTO held FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) _require_lease.endpoint
       AND e.endpoint_id OPERATOR(pg_catalog.=) _require_lease.endpoint_id
       AND e.relay OPERATOR(pg_catalog.=) _require_lease.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.enabled
       AND e.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: relay % does not hold endpoint % (id %)',
                pg_catalog.quote_literal(relay), pg_catalog.quote_literal(endpoint), endpoint_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Its lease expired, another relay took it, or it was disabled, dropped or created again.';
    END IF;
    RETURN held;
END
$$;

-- The events after a position (epoch, txid, id) in delivery order, at most about max_events:
-- only final ones (as poll), and never a later version of an instance without the earlier ones
-- (the batch is extended to them, or ends before it if one is not final yet). deliver: the event
-- matches the endpoint and has no delivery row yet (payload only then); waits_behind: its
-- instance has a pending delivery, so it must be parked behind it. max_bytes bounds the batch by
-- its payloads' sizes as well: it ends after the event that reaches it (so at least one event;
-- every event of the range counts, delivered to this endpoint or not). endpoint_id: the one
-- relay_lease handed out (an endpoint created again under the name is another).
CREATE FUNCTION ae_events.relay_fetch(endpoint text, relay text, after_epoch bigint,
                                      after_txid xid8, after_id bigint, max_events integer,
                                      max_bytes bigint, endpoint_id bigint)
RETURNS TABLE (epoch bigint, txid xid8, id bigint, event_id uuid, subscription_key text,
               event_type text, aggregate_id bigint, snapshot_version integer,
               payload text, deliver boolean, waits_behind boolean, occurred_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._require_lease(endpoint, relay, endpoint_id);
    horizon xid8 := ae_events._delivery_horizon();
    epoch_row record;
    from_txid xid8;
    from_id bigint;
    below_txid xid8;
    end_txid xid8;
    end_id bigint;
    cap_txid xid8;
    cap_id bigint;
    ahead record;
    changed boolean;
    remaining integer := max_events;
    returned integer;
    remaining_bytes bigint := max_bytes;
    batch_bytes bigint;
    -- The ids the batch spans (NULL once it is extended past its walk): when the endpoint has
    -- no delivery row among them, no event of the batch needs its own probe.
    batch_min_id bigint;
    batch_max_id bigint;
    -- How many events the batch holds: the statements reading it end their index scans there
    -- (LIMIT). Before PostgreSQL 18 a scan does not end on a row comparison's second column, so
    -- a range ending inside a large transaction's events read the rest of them, each fetch.
    batch_count integer;
    -- The events after a position in delivery order, with their payloads' sizes.
    batch CURSOR (after_txid xid8, after_id bigint, below xid8, first_id bigint, next_first_id bigint,
                  max_events integer) FOR
        SELECT o.txid, o.id, ae_events._payload_size(o.payload) AS size
          FROM ae_events.outbox AS o
         WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (after_txid, after_id)
           AND o.txid OPERATOR(pg_catalog.<) below
           AND o.id OPERATOR(pg_catalog.>=) first_id
           AND o.id OPERATOR(pg_catalog.<) next_first_id
         ORDER BY o.txid, o.id
         LIMIT max_events;
    sized record;
BEGIN
    IF max_events IS NULL OR max_events OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: max_events must be at least 1, not %', max_events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_bytes IS NULL OR max_bytes OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: max_bytes must be at least 1, not %', max_bytes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR epoch_row IN SELECT * FROM ae_events._epochs() AS e
                      WHERE e.next_first_id IS NULL
                         OR e.next_first_id OPERATOR(pg_catalog.>) after_epoch
                      ORDER BY e.first_id LOOP
        IF epoch_row.first_id OPERATOR(pg_catalog.<=) after_epoch THEN
            from_txid := after_txid;
            from_id := after_id;
        ELSE
            from_txid := '0';
            from_id := -1;
        END IF;
        below_txid := CASE WHEN epoch_row.open THEN horizon ELSE '18446744073709551615'::xid8 END;
        -- The batch: up to the remaining-th final event, or the first whose payload reaches
        -- the remaining bytes. A payload's size is its jsonb's, uncompressed (about its JSON
        -- text's, which escapes make up to 6 times larger), read from its header.
        -- Walked through a cursor: its plan starts at once (the index in delivery order,
        -- stopping at the batch's end), where one statement was planned as a scan of every
        -- event after the cursor and a sort, its time growing with the backlog.
        end_txid := NULL;
        end_id := NULL;
        batch_bytes := 0;
        batch_min_id := NULL;
        batch_max_id := NULL;
        batch_count := 0;
        FOR sized IN batch(from_txid, from_id, below_txid, epoch_row.first_id,
                           coalesce(epoch_row.next_first_id, 9223372036854775807), remaining) LOOP
            EXIT WHEN batch_bytes OPERATOR(pg_catalog.>=) remaining_bytes;
            end_txid := sized.txid;
            end_id := sized.id;
            batch_bytes := batch_bytes OPERATOR(pg_catalog.+) sized.size;
            batch_min_id := least(batch_min_id, sized.id);
            batch_max_id := greatest(batch_max_id, sized.id);
            batch_count := batch_count OPERATOR(pg_catalog.+) 1;
        END LOOP;
        CONTINUE WHEN end_id IS NULL;
        cap_txid := NULL;
        cap_id := NULL;
        -- An event of the batch whose instance's previous event lies after the batch: extend
        -- the batch to it if it is final, else end the batch before that event (cap).
        LOOP
            changed := false;
            FOR ahead IN
                SELECT b.txid AS b_txid, b.id AS b_id, p.txid AS p_txid, p.id AS p_id
                  FROM (SELECT b.txid, b.id, b.aggregate_type, b.aggregate_id
                          FROM ae_events.outbox AS b
                         WHERE (b.txid, b.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                           AND (b.txid, b.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
                           -- Plain bounds too: the planner estimates these (not the row
                           -- comparisons) and so scans the index range, not the outbox.
                           AND b.txid OPERATOR(pg_catalog.>=) from_txid
                           AND b.txid OPERATOR(pg_catalog.<=) end_txid
                           AND b.txid OPERATOR(pg_catalog.<) below_txid
                           AND b.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                           AND b.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                         ORDER BY b.txid, b.id
                         LIMIT batch_count) AS b
                 CROSS JOIN LATERAL (
                       SELECT p.txid, p.id FROM ae_events.outbox AS p
                        WHERE p.aggregate_type OPERATOR(pg_catalog.=) b.aggregate_type
                          AND p.aggregate_id OPERATOR(pg_catalog.=) b.aggregate_id
                          AND p.id OPERATOR(pg_catalog.<) b.id
                          AND p.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                        ORDER BY p.id DESC
                        LIMIT 1) AS p
                 WHERE (p.txid, p.id) OPERATOR(pg_catalog.>) (end_txid, end_id)
                 ORDER BY b.txid, b.id
            LOOP
                IF ahead.p_txid OPERATOR(pg_catalog.<) below_txid
                   AND (cap_id IS NULL
                        OR (ahead.p_txid, ahead.p_id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)) THEN
                    end_txid := ahead.p_txid;
                    end_id := ahead.p_id;
                    batch_min_id := NULL;
                ELSE
                    cap_txid := ahead.b_txid;
                    cap_id := ahead.b_id;
                    -- The batch ends just before the capped event.
                    SELECT o.txid, o.id INTO end_txid, end_id FROM ae_events.outbox AS o
                     WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                       AND (o.txid, o.id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)
                       AND o.txid OPERATOR(pg_catalog.>=) from_txid
                       AND o.txid OPERATOR(pg_catalog.<=) cap_txid
                       AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                       AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                     ORDER BY o.txid DESC, o.id DESC LIMIT 1;
                    IF NOT FOUND THEN
                        end_txid := from_txid;
                        end_id := from_id;
                    END IF;
                END IF;
                changed := true;
                EXIT;
            END LOOP;
            EXIT WHEN NOT changed;
            -- Extended or capped (rare): count the batch again, walking to its new end.
            batch_count := 0;
            FOR sized IN batch(from_txid, from_id, below_txid, epoch_row.first_id,
                               coalesce(epoch_row.next_first_id, 9223372036854775807),
                               2147483647) LOOP
                EXIT WHEN (sized.txid, sized.id) OPERATOR(pg_catalog.>) (end_txid, end_id);
                batch_count := batch_count OPERATOR(pg_catalog.+) 1;
            END LOOP;
        END LOOP;
        -- The probes of deliveries are LATERAL ... LIMIT 1 so that each is one index lookup
        -- (a sublink may be planned as a hash of all the endpoint's delivery rows), made only
        -- when a probe once per batch (an initplan: the same snapshot) finds rows it could hit:
        -- a delivery row among the batch's ids, a pending row of the endpoint.
        RETURN QUERY
            SELECT epoch_row.first_id, o.txid, o.id, o.event_id, o.subscription_key, o.event_type,
                   o.aggregate_id, o.snapshot_version,
                   CASE WHEN m.deliver THEN o.payload::text END,
                   m.deliver,
                   m.deliver AND w.waiting IS NOT NULL,
                   o.occurred_at
              FROM ae_events.outbox AS o
              LEFT JOIN LATERAL (
                   SELECT true AS done FROM ae_events.deliveries AS d
                    WHERE (batch_min_id IS NULL
                           OR (SELECT true FROM ae_events.deliveries AS s
                                WHERE s.endpoint OPERATOR(pg_catalog.=) target.endpoint
                                  AND s.outbox_id OPERATOR(pg_catalog.>=) batch_min_id
                                  AND s.outbox_id OPERATOR(pg_catalog.<=) batch_max_id
                                LIMIT 1))
                      AND d.endpoint OPERATOR(pg_catalog.=) target.endpoint
                      AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                    LIMIT 1) AS r ON true
             CROSS JOIN LATERAL (
                   -- ae_events._endpoint_matches, written out: a call per row costs more
                   -- than the test.
                   SELECT r.done IS NULL
                          -- NULL keys: the ae.test_instance.* events only; an operational
                          -- event never goes to the endpoint it is about (alerts.sql).
                          AND (CASE WHEN target.subscription_keys IS NULL
                                    THEN o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                                    ELSE o.subscription_key OPERATOR(pg_catalog.=) ANY (target.subscription_keys)
                                         AND NOT (o.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
                                                  AND o.aggregate_id OPERATOR(pg_catalog.=) target.endpoint_id) END)
                          AND (target.filter IS NULL
                               OR coalesce(pg_catalog.jsonb_path_match(o.payload, target.filter, '{}', true), false))
                          AS deliver) AS m
              LEFT JOIN LATERAL (
                   SELECT true AS waiting FROM ae_events.deliveries AS w
                    WHERE m.deliver
                      AND (SELECT true FROM ae_events.deliveries AS s
                            WHERE s.endpoint OPERATOR(pg_catalog.=) target.endpoint
                              AND s.status OPERATOR(pg_catalog.=) 'pending'
                            LIMIT 1)
                      AND w.endpoint OPERATOR(pg_catalog.=) target.endpoint
                      AND w.aggregate_id OPERATOR(pg_catalog.=) o.aggregate_id
                      AND w.status OPERATOR(pg_catalog.=) 'pending'
                    LIMIT 1) AS w ON true
             WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
               AND (o.txid, o.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
               AND o.txid OPERATOR(pg_catalog.>=) from_txid
               AND o.txid OPERATOR(pg_catalog.<=) end_txid
               AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
               AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
             ORDER BY o.txid, o.id
             LIMIT batch_count;
        GET DIAGNOSTICS returned = ROW_COUNT;
        remaining := remaining OPERATOR(pg_catalog.-) returned;
        remaining_bytes := remaining_bytes OPERATOR(pg_catalog.-) batch_bytes;
        -- A capped epoch stops here: what follows waits for the capped event.
        EXIT WHEN remaining OPERATOR(pg_catalog.<=) 0 OR remaining_bytes OPERATOR(pg_catalog.<=) 0
                  OR cap_id IS NOT NULL;
    END LOOP;
END
$$;

-- Pending deliveries due now that are the earliest pending one of their instance, leaving out
-- the instances the relay has a request in flight for. attempts: made so far. At most
-- max_events rows, and fewer once their payloads reach max_bytes (always one at least), so that
-- the relay's memory follows its byte budget.
CREATE FUNCTION ae_events.relay_due(endpoint text, relay text, max_events integer,
                                    busy_instances bigint[], max_bytes bigint,
                                    endpoint_id bigint)
RETURNS TABLE (id bigint, event_id uuid, subscription_key text, event_type text,
               aggregate_id bigint, snapshot_version integer, payload text, attempts integer,
               occurred_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._require_lease(endpoint, relay, endpoint_id);
BEGIN
    IF max_events IS NULL OR max_events OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: max_events must be at least 1, not %', max_events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT q.id, q.event_id, q.subscription_key, q.event_type, q.aggregate_id,
               q.snapshot_version, q.payload, q.attempts, q.occurred_at
          FROM (SELECT due.*,
                       pg_catalog.sum(pg_catalog.octet_length(due.payload))
                           OVER (ORDER BY due.n ROWS UNBOUNDED PRECEDING) AS bytes_through
                  FROM (SELECT o.id, o.event_id, o.subscription_key, o.event_type, o.aggregate_id,
                               o.snapshot_version, o.payload::text AS payload, d.attempts,
                               o.occurred_at,
                               pg_catalog.row_number() OVER (ORDER BY d.next_attempt_at, d.outbox_id) AS n
                          FROM ae_events.deliveries AS d
                          JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
                         WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
                           AND d.status OPERATOR(pg_catalog.=) 'pending'
                           AND d.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
                           AND NOT (d.aggregate_id OPERATOR(pg_catalog.=) ANY (coalesce(busy_instances, '{}')))
                           AND NOT EXISTS (
                                   SELECT FROM ae_events.deliveries AS w
                                    WHERE w.endpoint OPERATOR(pg_catalog.=) d.endpoint
                                      AND w.aggregate_id OPERATOR(pg_catalog.=) d.aggregate_id
                                      AND w.status OPERATOR(pg_catalog.=) 'pending'
                                      AND w.outbox_id OPERATOR(pg_catalog.<) d.outbox_id)
                         ORDER BY d.next_attempt_at, d.outbox_id
                         LIMIT max_events) AS due) AS q
         WHERE max_bytes IS NULL OR q.n OPERATOR(pg_catalog.=) 1
            OR q.bytes_through OPERATOR(pg_catalog.<=) max_bytes
         ORDER BY q.n;
    -- Pending rows whose event was pruned meanwhile cannot be sent: nothing to do for them.
    DELETE FROM ae_events.deliveries AS d
     WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
       AND d.status OPERATOR(pg_catalog.=) 'pending'
       AND d.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
       AND NOT EXISTS (SELECT FROM ae_events.outbox AS o WHERE o.id OPERATOR(pg_catalog.=) d.outbox_id);
END
$$;

-- The relay's error texts with the endpoint's header values masked: values of 6 characters or
-- more (shorter ones are no secrets, and would mask ordinary words), longest first so that one
-- inside another is masked whole. Only when there is an error text: a batch of deliveries has
-- none, and is the common case. (relay_record and relay_record_tests.)
CREATE FUNCTION ae_events._masked_errors(errors text[], headers jsonb) RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    header record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.unnest(errors) AS x (e) WHERE x.e IS NOT NULL) THEN
        RETURN errors;
    END IF;
    FOR header IN SELECT h.value FROM pg_catalog.jsonb_each_text(headers) AS h
                   WHERE pg_catalog.length(h.value) OPERATOR(pg_catalog.>=) 6
                   ORDER BY pg_catalog.length(h.value) DESC LOOP
        errors := ARRAY(SELECT pg_catalog.replace(x.e, header.value, '[redacted]')
                          FROM pg_catalog.unnest(errors) WITH ORDINALITY AS x (e, n) ORDER BY x.n);
    END LOOP;
    RETURN errors;
END
$$;
REVOKE ALL ON FUNCTION ae_events._masked_errors(text[], jsonb) FROM PUBLIC;

-- The delivery rows of a batch of outcomes (relay_record's arrays), in the columns of
-- ae_events.deliveries as relay_record lists them. Parameters by position: their names would
-- clash with the columns'. A plain SQL function, so that the planner inlines it.
CREATE FUNCTION ae_events._delivery_rows(text, bigint[], bigint[], text[], integer[],
                                         timestamptz[], integer[], text[], timestamptz[])
RETURNS TABLE (endpoint text, outbox_id bigint, aggregate_id bigint, status text,
               attempts integer, first_attempt_at timestamptz, last_attempt_at timestamptz,
               last_status integer, last_error text, next_attempt_at timestamptz,
               delivered_at timestamptz, dead_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    SELECT $1, r.outbox_id, r.aggregate_id, r.status, r.attempts, r.attempted_at,
           r.attempted_at, r.http_status, pg_catalog.left(r.error, 2000),
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),
                      pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7),
                      pg_catalog.unnest($8), pg_catalog.unnest($9))
           AS r (outbox_id, aggregate_id, status, attempts, attempted_at, http_status, error,
                 next_attempt_at)
$$;

-- The outcomes of attempts (and events parked behind a pending one), and the new cursor, in one
-- transaction. Per event: status delivered / pending (next_attempt_at) / dead, attempts made so
-- far, HTTP status or error. gone_reason: the receiver answered 410, the endpoint is disabled.
-- Returns false if the endpoint is no longer the relay's, or is not the endpoint_id it was handed
-- (nothing is written then). Error texts are stored with the values of the endpoint's static
-- headers masked (a receiver may echo a credential back) and at most 2000 characters long.
-- The operational events the outcomes cause (alerts.sql) are written in the same transaction.
CREATE FUNCTION ae_events.relay_record(endpoint text, relay text,
                                       outbox_ids bigint[], aggregate_ids bigint[],
                                       statuses text[], attempts integer[],
                                       attempted_at timestamptz[], http_statuses integer[],
                                       errors text[], next_attempt_at timestamptz[],
                                       new_cursor_epoch bigint, new_cursor_txid xid8,
                                       new_cursor_id bigint, gone_reason text,
                                       endpoint_id bigint,
                                       durations_ms integer[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held ae_events.endpoints;
    any_delivered boolean;
    first_failure timestamptz;
    failures integer;
    newly_dead bigint[];
    last_failed_status integer;
    last_failed_id bigint;
    last_failed_error text;
    last_delivered_status integer;
    inserted boolean := false;
BEGIN
    IF endpoint_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: the endpoint_id relay_lease handed out is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM ae_events._require_own_relay(relay);
    SELECT * INTO held FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) relay_record.endpoint
       AND e.endpoint_id OPERATOR(pg_catalog.=) relay_record.endpoint_id
       AND e.relay OPERATOR(pg_catalog.=) relay_record.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.enabled
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    errors := ae_events._masked_errors(errors, held.headers);
    -- Events dead-lettered by this batch that were not dead for the endpoint already (a batch
    -- recorded again announces nothing twice): one ae.delivery.dead_lettered each.
    IF 'dead' OPERATOR(pg_catalog.=) ANY (statuses) THEN
        newly_dead := ARRAY(
            SELECT r.outbox_id
              FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(statuses)) AS r (outbox_id, status)
             WHERE r.status OPERATOR(pg_catalog.=) 'dead'
               AND NOT EXISTS (SELECT FROM ae_events.deliveries AS d
                                WHERE d.endpoint OPERATOR(pg_catalog.=) held.endpoint
                                  AND d.outbox_id OPERATOR(pg_catalog.=) r.outbox_id
                                  AND d.status OPERATOR(pg_catalog.=) 'dead'));
    END IF;
    -- First attempts of fresh events have no row yet (relay_fetch hands out only those): a plain
    -- INSERT, cheaper than ON CONFLICT's speculative insertion of each row. A batch that meets
    -- a row (recorded again, a parked or redelivered event's first attempt) is upserted.
    IF 1 OPERATOR(pg_catalog.=) ALL (attempts) THEN
        BEGIN
            INSERT INTO ae_events.deliveries
                   (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
                    last_status, last_error, next_attempt_at, delivered_at, dead_at)
            SELECT * FROM ae_events._delivery_rows(held.endpoint, outbox_ids, aggregate_ids, statuses,
                                                   attempts, attempted_at, http_statuses, errors,
                                                   next_attempt_at);
            inserted := true;
        EXCEPTION WHEN unique_violation THEN
            NULL;
        END;
    END IF;
    IF NOT inserted THEN
        INSERT INTO ae_events.deliveries AS d
               (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
                last_status, last_error, next_attempt_at, delivered_at, dead_at)
        SELECT * FROM ae_events._delivery_rows(held.endpoint, outbox_ids, aggregate_ids, statuses,
                                               attempts, attempted_at, http_statuses, errors,
                                               next_attempt_at)
        ON CONFLICT ON CONSTRAINT deliveries_pkey DO UPDATE
           SET status = excluded.status,
               attempts = excluded.attempts,
               first_attempt_at = coalesce(d.first_attempt_at, excluded.first_attempt_at),
               last_attempt_at = coalesce(excluded.last_attempt_at, d.last_attempt_at),
               last_status = CASE WHEN excluded.last_attempt_at IS NULL THEN d.last_status ELSE excluded.last_status END,
               last_error = CASE WHEN excluded.last_attempt_at IS NULL THEN d.last_error ELSE excluded.last_error END,
               next_attempt_at = excluded.next_attempt_at,
               delivered_at = coalesce(excluded.delivered_at, d.delivered_at),
               dead_at = excluded.dead_at;
    END IF;
    -- failing_since: cleared by a delivery, else set by the first failure; failed_attempts the
    -- same, counting attempts.
    SELECT bool_or(s OPERATOR(pg_catalog.=) 'delivered'),
           min(t) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL),
           pg_catalog.count(*) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL)
      INTO any_delivered, first_failure, failures
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t);
    -- The console's counts and attempt log (console.sql).
    PERFORM ae_events._console_record(held.endpoint, outbox_ids, statuses, attempts, attempted_at,
                                      http_statuses, durations_ms, failures);
    -- For the operational events (alerts.sql), the latest failed and delivered attempts say
    -- why (the error text as stored just now, masked); not looked for in a batch of deliveries
    -- only (the common case) of an endpoint whose failing was not announced.
    IF gone_reason IS NOT NULL OR failures OPERATOR(pg_catalog.>) 0
       OR (any_delivered AND held.alert_failing_since IS NOT NULL) THEN
        SELECT (pg_catalog.array_agg(h ORDER BY t DESC, n DESC)
                    FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL))[1],
               (pg_catalog.array_agg(i ORDER BY t DESC, n DESC)
                    FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL))[1],
               (pg_catalog.array_agg(h ORDER BY t DESC, n DESC)
                    FILTER (WHERE s OPERATOR(pg_catalog.=) 'delivered'))[1]
          INTO last_failed_status, last_failed_id, last_delivered_status
          FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at),
                          pg_catalog.unnest(http_statuses), pg_catalog.unnest(outbox_ids))
               WITH ORDINALITY AS r (s, t, h, i, n);
        SELECT d.last_error INTO last_failed_error FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) held.endpoint
           AND d.outbox_id OPERATOR(pg_catalog.=) last_failed_id;
    END IF;
    UPDATE ae_events.endpoints AS e
       SET failing_since = CASE WHEN any_delivered THEN NULL
                                ELSE coalesce(e.failing_since, first_failure) END,
           failed_attempts = CASE WHEN any_delivered THEN 0
                                  ELSE e.failed_attempts OPERATOR(pg_catalog.+) failures END,
           cursor_epoch = CASE WHEN c.moves THEN new_cursor_epoch ELSE e.cursor_epoch END,
           cursor_txid = CASE WHEN c.moves THEN new_cursor_txid ELSE e.cursor_txid END,
           cursor_id = CASE WHEN c.moves THEN new_cursor_id ELSE e.cursor_id END
      FROM (SELECT new_cursor_id IS NOT NULL
                   AND (new_cursor_epoch, new_cursor_txid, new_cursor_id) OPERATOR(pg_catalog.>)
                       (held.cursor_epoch, held.cursor_txid, held.cursor_id) AS moves) AS c
     WHERE e.endpoint OPERATOR(pg_catalog.=) held.endpoint
    RETURNING e.* INTO held;
    IF newly_dead IS NOT NULL AND pg_catalog.cardinality(newly_dead) OPERATOR(pg_catalog.>) 0 THEN
        PERFORM ae_events._alert_dead_letters(held, newly_dead);
    END IF;
    IF gone_reason IS NOT NULL THEN
        PERFORM ae_events._disable(held.endpoint, gone_reason, 'gone', last_failed_status,
                                   last_failed_error);
    -- now() - failing_since, not now() - disable_after: no timestamp out of range, whatever
    -- an older row holds.
    ELSIF (pg_catalog.now() OPERATOR(pg_catalog.-) held.failing_since) OPERATOR(pg_catalog.>)
          held.disable_after THEN
        PERFORM ae_events._disable(held.endpoint,
            pg_catalog.format('every attempt failed since %s (disable_after %s)',
                              held.failing_since, held.disable_after),
            'disable_after', last_failed_status, last_failed_error);
    ELSIF any_delivered OR failures OPERATOR(pg_catalog.>) 0 THEN
        PERFORM ae_events._alert_after_record(held, any_delivered, last_delivered_status,
                                              last_failed_status, last_failed_error);
    END IF;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION ae_events._strong_random_bytes(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._check_client_certificate(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._ed25519_public_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._new_secret() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._new_ed25519_secret() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._set_endpoint_egress(text, text, text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_secret(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._endpoint_for_update(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._relay_can_parse_authority(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._check_endpoint_settings(text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._endpoint_matches(text[], jsonpath, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_lease(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._delivery_rows(text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_own_relay(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._disable(text, text, text, integer, text) FROM PUBLIC;
-- Managing endpoints is the DBA's (who may grant these to an administrating role).
REVOKE ALL ON FUNCTION ae_events.create_endpoint(text, text, text[], jsonpath) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.create_endpoint(text, text, text[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision, interval, integer, text, text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.rotate_endpoint_secret(text, interval, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.enable_endpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.disable_endpoint(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.drop_endpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.redeliver(text, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.replay_endpoint(text, timestamptz) FROM PUBLIC;
-- The relay's calls.
REVOKE ALL ON FUNCTION ae_events.relay_lease(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_release(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_due(text, text, integer, bigint[], bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint, integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_lease(text, interval), ae_events.relay_release(text),
    ae_events.relay_status(text),
    ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer, bigint, bigint),
    ae_events.relay_due(text, text, integer, bigint[], bigint, bigint),
    ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint, integer[])
    TO ae_events_relay;
-- Secrets: the relay (and the DBA, who owns them); never ae_events_reader.
GRANT SELECT ON ae_events.endpoint_secrets, ae_events.endpoint_egress TO ae_events_relay;
GRANT SELECT ON ae_events.endpoint_status, ae_events.delivery_status TO ae_events_reader, ae_events_relay;
GRANT SELECT ON ae_events.relays TO ae_events_reader, ae_events_relay;
