-- ae_events 0.7.0 -> 0.7.1. The library changed (performance round 2): outbox rows of large
-- transactions written in batches, event ids of UUID version 7, payload digests (the
-- unchanged-snapshot check) keyed with a random key per database (ae_events.digest_keys, made
-- below), with 0.7.0's SHA-256 digests still recognized, and the payload rules, bubble-up
-- settings and digest key cached per backend. For the caches, a statement trigger
-- on each of ae_events.payload_rules, ae_events.bubble_up and ae_events.digest_keys invalidates
-- the table's relcache entry on any change (until they exist, the library reads the first two
-- at every commit as 0.7.0 did, and records SHA-256 digests as 0.7.0 did).

\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.7.1'" to load this file. \quit

-- Roles are the cluster's and installs or updates in other databases of it may run at the same
-- moment: taken first, this lock (pg_authid is shared, so it is cluster-wide) lets one script at a
-- time create or change the extension's roles; a later lock, after a CREATE ROLE, could deadlock
-- with a second script waiting on that role. Logins are not blocked (they read pg_authid only).
LOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE;

CREATE FUNCTION ae_events.configuration_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'configuration_changed_wrapper';

CREATE TRIGGER payload_rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.payload_rules
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.payload_rules ENABLE ALWAYS TRIGGER payload_rules_changed;
REVOKE ALL ON FUNCTION ae_events.configuration_changed() FROM PUBLIC;

CREATE TRIGGER bubble_up_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.bubble_up
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.bubble_up ENABLE ALWAYS TRIGGER bubble_up_changed;

-- Security round 3: endpoints and relays.
-- Endpoints get an endpoint_id (new per creation: one dropped and created again under its name
-- is another endpoint to running relays) and the role of the relay holding them; relay ids are
-- bound to their relay's role; settings are bounded so that the relay can act on every value
-- SQL accepts; static header names are compared as receivers read them; error texts are stored
-- with header values masked.
ALTER TABLE ae_events.endpoints ADD COLUMN endpoint_id bigint GENERATED ALWAYS AS IDENTITY UNIQUE;
ALTER TABLE ae_events.endpoints ADD COLUMN relay_role name;
SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoints_endpoint_id_seq', '');
ALTER TABLE ae_events.relays ADD COLUMN role name;

CREATE OR REPLACE FUNCTION ae_events._check_endpoint_settings(
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
         WHERE k IS NULL OR k NOT IN ('ae.test_instance.created', 'ae.test_instance.updated')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ae_events: unknown subscription key %',
                    coalesce(pg_catalog.quote_literal(unknown_key), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The keys are ae.test_instance.created and ae.test_instance.updated.';
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

CREATE OR REPLACE FUNCTION ae_events.create_endpoint(endpoint text, url text,
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

CREATE OR REPLACE FUNCTION ae_events.rotate_endpoint_secret(endpoint text,
                                                 grace interval DEFAULT '1 day',
                                                 new_secret text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secret_to_add text := coalesce(new_secret, ae_events._new_secret());
BEGIN
    PERFORM ae_events._endpoint_for_update(endpoint);
    PERFORM ae_events._require_secret(secret_to_add);
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
    RETURN secret_to_add;
END
$$;

CREATE OR REPLACE FUNCTION ae_events._disable(endpoint text, reason text) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE ae_events.endpoints AS e
       SET enabled = false, disabled_reason = reason, disabled_at = pg_catalog.now(),
           relay = NULL, relay_role = NULL, lease_expires_at = NULL
     WHERE e.endpoint OPERATOR(pg_catalog.=) _disable.endpoint;
$$;

CREATE OR REPLACE FUNCTION ae_events.relay_release(relay text) RETURNS void
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

CREATE OR REPLACE FUNCTION ae_events.relay_status(relay text)
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
                      AND (e.subscription_keys IS NULL
                           OR o.subscription_key OPERATOR(pg_catalog.=) ANY (e.subscription_keys))
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

REVOKE ALL ON FUNCTION ae_events._relay_can_parse_authority(text) FROM PUBLIC;

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

-- Replaced by the one above, which names the endpoint_id.
DROP FUNCTION ae_events._require_lease(text, text);

DROP FUNCTION ae_events.relay_lease(text, interval);

CREATE FUNCTION ae_events.relay_lease(relay text, lease interval)
RETURNS TABLE (endpoint text, url text, headers jsonb, timeout_ms bigint,
               retry_schedule_ms bigint[], retry_jitter double precision, max_in_flight integer,
               secrets text[], cursor_epoch bigint, cursor_txid xid8, cursor_id bigint,
               rate_limit double precision, endpoint_id bigint)
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
           h.cursor_epoch, h.cursor_txid, h.cursor_id, h.rate_limit, h.endpoint_id
      FROM ae_events.endpoints AS h
     WHERE h.endpoint OPERATOR(pg_catalog.=) ANY (kept OPERATOR(pg_catalog.||) taken)
     ORDER BY h.endpoint;
END
$$;

DROP FUNCTION ae_events.relay_due(text, text, integer, bigint[]);

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

DROP FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text);

CREATE FUNCTION ae_events.relay_record(endpoint text, relay text,
                                       outbox_ids bigint[], aggregate_ids bigint[],
                                       statuses text[], attempts integer[],
                                       attempted_at timestamptz[], http_statuses integer[],
                                       errors text[], next_attempt_at timestamptz[],
                                       new_cursor_epoch bigint, new_cursor_txid xid8,
                                       new_cursor_id bigint, gone_reason text,
                                       endpoint_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held ae_events.endpoints;
    any_delivered boolean;
    first_failure timestamptz;
    header record;
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
    -- Header values of 6 characters or more (shorter ones are no secrets, and would mask
    -- ordinary words), longest first so that one inside another is masked whole. Only when
    -- there is an error text: a batch of deliveries has none, and is the common case.
    IF EXISTS (SELECT FROM pg_catalog.unnest(errors) AS x (e) WHERE x.e IS NOT NULL) THEN
        FOR header IN SELECT h.value FROM pg_catalog.jsonb_each_text(held.headers) AS h
                       WHERE pg_catalog.length(h.value) OPERATOR(pg_catalog.>=) 6
                       ORDER BY pg_catalog.length(h.value) DESC LOOP
            errors := ARRAY(SELECT pg_catalog.replace(x.e, header.value, '[redacted]')
                              FROM pg_catalog.unnest(errors) WITH ORDINALITY AS x (e, n) ORDER BY x.n);
        END LOOP;
    END IF;
    INSERT INTO ae_events.deliveries AS d
           (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
            last_status, last_error, next_attempt_at, delivered_at, dead_at)
    SELECT held.endpoint, r.outbox_id, r.aggregate_id, r.status, r.attempts, r.attempted_at,
           r.attempted_at, r.http_status, pg_catalog.left(r.error, 2000),
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(aggregate_ids),
                      pg_catalog.unnest(statuses), pg_catalog.unnest(attempts),
                      pg_catalog.unnest(attempted_at), pg_catalog.unnest(http_statuses),
                      pg_catalog.unnest(errors), pg_catalog.unnest(next_attempt_at))
           AS r (outbox_id, aggregate_id, status, attempts, attempted_at, http_status, error,
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
    -- failing_since: cleared by a delivery, else set by the first failure.
    SELECT bool_or(s OPERATOR(pg_catalog.=) 'delivered'),
           min(t) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL)
      INTO any_delivered, first_failure
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t);
    UPDATE ae_events.endpoints AS e
       SET failing_since = CASE WHEN any_delivered THEN NULL
                                ELSE coalesce(e.failing_since, first_failure) END,
           cursor_epoch = CASE WHEN c.moves THEN new_cursor_epoch ELSE e.cursor_epoch END,
           cursor_txid = CASE WHEN c.moves THEN new_cursor_txid ELSE e.cursor_txid END,
           cursor_id = CASE WHEN c.moves THEN new_cursor_id ELSE e.cursor_id END
      FROM (SELECT new_cursor_id IS NOT NULL
                   AND (new_cursor_epoch, new_cursor_txid, new_cursor_id) OPERATOR(pg_catalog.>)
                       (held.cursor_epoch, held.cursor_txid, held.cursor_id) AS moves) AS c
     WHERE e.endpoint OPERATOR(pg_catalog.=) held.endpoint
    RETURNING e.* INTO held;
    IF gone_reason IS NOT NULL THEN
        PERFORM ae_events._disable(held.endpoint, gone_reason);
    -- now() - failing_since, not now() - disable_after: no timestamp out of range, whatever
    -- an older row holds.
    ELSIF (pg_catalog.now() OPERATOR(pg_catalog.-) held.failing_since) OPERATOR(pg_catalog.>)
          held.disable_after THEN
        PERFORM ae_events._disable(held.endpoint,
            pg_catalog.format('every attempt failed since %s (disable_after %s)',
                              held.failing_since, held.disable_after));
    END IF;
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION ae_events._require_lease(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_own_relay(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_lease(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_due(text, text, integer, bigint[], bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_lease(text, interval),
    ae_events.relay_due(text, text, integer, bigint[], bigint, bigint),
    ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint)
    TO ae_events_relay;

-- (End of the endpoints and relays part.)

-- relay_fetch bounds its batch by payload bytes as well (max_bytes) and names the endpoint by
-- its id (endpoint_id).
DROP FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer);
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
        -- text's, which escapes make up to 6 times larger): "|| '{}'" hands back the payload
        -- detoasted, without the cost of writing it as text.
        SELECT s.txid, s.id, s.upto INTO end_txid, end_id, batch_bytes
          FROM (SELECT z.txid, z.id, z.size,
                       pg_catalog.sum(z.size) OVER (ORDER BY z.txid, z.id) AS upto
                  FROM (SELECT o.txid, o.id,
                               pg_catalog.pg_column_size(o.payload OPERATOR(pg_catalog.||) '{}'::jsonb)::bigint AS size
                          FROM ae_events.outbox AS o
                         WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                           AND o.txid OPERATOR(pg_catalog.<) below_txid
                           AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                           AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                         ORDER BY o.txid, o.id
                         LIMIT remaining) AS z) AS s
         WHERE s.upto OPERATOR(pg_catalog.-) s.size OPERATOR(pg_catalog.<) remaining_bytes
         ORDER BY s.txid DESC, s.id DESC
         LIMIT 1;
        CONTINUE WHEN end_id IS NULL;
        cap_txid := NULL;
        cap_id := NULL;
        -- An event of the batch whose instance's previous event lies after the batch: extend
        -- the batch to it if it is final, else end the batch before that event (cap).
        LOOP
            changed := false;
            FOR ahead IN
                SELECT b.txid AS b_txid, b.id AS b_id, p.txid AS p_txid, p.id AS p_id
                  FROM ae_events.outbox AS b
                 CROSS JOIN LATERAL (
                       SELECT p.txid, p.id FROM ae_events.outbox AS p
                        WHERE p.aggregate_type OPERATOR(pg_catalog.=) b.aggregate_type
                          AND p.aggregate_id OPERATOR(pg_catalog.=) b.aggregate_id
                          AND p.id OPERATOR(pg_catalog.<) b.id
                          AND p.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                        ORDER BY p.id DESC
                        LIMIT 1) AS p
                 WHERE (b.txid, b.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                   AND (b.txid, b.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
                   -- Plain bounds too: the planner estimates these (not the row comparisons)
                   -- and so scans the index range, not the outbox.
                   AND b.txid OPERATOR(pg_catalog.>=) from_txid
                   AND b.txid OPERATOR(pg_catalog.<=) end_txid
                   AND b.txid OPERATOR(pg_catalog.<) below_txid
                   AND b.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                   AND b.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                   AND (p.txid, p.id) OPERATOR(pg_catalog.>) (end_txid, end_id)
                 ORDER BY b.txid, b.id
            LOOP
                IF ahead.p_txid OPERATOR(pg_catalog.<) below_txid
                   AND (cap_id IS NULL
                        OR (ahead.p_txid, ahead.p_id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)) THEN
                    end_txid := ahead.p_txid;
                    end_id := ahead.p_id;
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
        END LOOP;
        -- The probes of deliveries are LATERAL ... LIMIT 1 so that each is one index lookup
        -- (a sublink may be planned as a hash of all the endpoint's delivery rows).
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
                    WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
                      AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                    LIMIT 1) AS r ON true
             CROSS JOIN LATERAL (
                   -- ae_events._endpoint_matches, written out: a call per row costs more
                   -- than the test.
                   SELECT r.done IS NULL
                          AND (target.subscription_keys IS NULL
                               OR o.subscription_key OPERATOR(pg_catalog.=) ANY (target.subscription_keys))
                          AND (target.filter IS NULL
                               OR coalesce(pg_catalog.jsonb_path_match(o.payload, target.filter, '{}', true), false))
                          AS deliver) AS m
              LEFT JOIN LATERAL (
                   SELECT true AS waiting FROM ae_events.deliveries AS w
                    WHERE m.deliver
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
             ORDER BY o.txid, o.id;
        GET DIAGNOSTICS returned = ROW_COUNT;
        remaining := remaining OPERATOR(pg_catalog.-) returned;
        remaining_bytes := remaining_bytes OPERATOR(pg_catalog.-) batch_bytes;
        -- A capped epoch stops here: what follows waits for the capped event.
        EXIT WHEN remaining OPERATOR(pg_catalog.<=) 0 OR remaining_bytes OPERATOR(pg_catalog.<=) 0
                  OR cap_id IS NOT NULL;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer, bigint, bigint) TO ae_events_relay;

-- Security round 3, cross-owner isolation of the commit-time pass (docs/security.md, section 1).
-- The role the pass reads the source tables as bypasses row security: a table owner's policy
-- would otherwise run inside the pass, which reads every source table. source_owners() says
-- which source tables belong to roles other than the DBA and what the pass does with their code.
-- Databases of one cluster may be updated at the same moment and the role is the cluster's: under
-- the lock taken at the top, the check and the change are one step, and a role already right is
-- left alone ("tuple concurrently updated" otherwise).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_authid AS a
                WHERE a.rolname OPERATOR(pg_catalog.=) 'ae_events_snapshot'
                  AND NOT a.rolbypassrls) THEN
        ALTER ROLE ae_events_snapshot BYPASSRLS;
    END IF;
END
$$;

CREATE FUNCTION ae_events.source_owners() RETURNS TABLE (
    source_table text, owner text, owner_is_dba boolean, can_read_all_sources boolean,
    meaning text)
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'source_owners_wrapper';
REVOKE ALL ON FUNCTION ae_events.source_owners() FROM PUBLIC;
-- Performance round 3: deferred fan-outs (sql/src/fanout.sql).
CREATE FUNCTION ae_events.run_fanouts() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_fanouts_wrapper';

-- Deferred fan-outs (docs/updated-events.md#large-fan-outs): a transaction whose changes reach
-- more instances than ae_events.fanout_inline_limit records them here at commit instead of
-- writing their updated events itself; ae_events.run_fanouts() (called by the relays) writes
-- those events afterwards, a page of instances per call, each page its own transaction.
CREATE TABLE ae_events.fanouts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The changed table and the ids of its changed rows (tcf.measurement also stands for its
    -- attributes).
    source_table text NOT NULL,
    row_ids bigint[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    recorded_by xid8 NOT NULL,
    -- The instances found when the fan-out was first run (NULL until then), and those done.
    instances_found bigint,
    instances_done bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE ae_events.fanouts IS
    'ae_events: changes whose updated events are written after their commit, a page at a time, by ae_events.run_fanouts()';

-- The instances of a fan-out not yet given their events, in pages of up to 1,000 ascending ids.
CREATE TABLE ae_events.fanout_pages (
    fanout_id bigint NOT NULL REFERENCES ae_events.fanouts (id) ON DELETE CASCADE,
    page integer NOT NULL,
    instance_ids bigint[] NOT NULL,
    PRIMARY KEY (fanout_id, page)
);

COMMENT ON TABLE ae_events.fanout_pages IS
    'ae_events: the instances of a deferred fan-out still to be given their updated events';

-- Dumped with the database: a restore finishes the fan-outs that were pending.
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanouts', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanouts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanout_pages', '');

GRANT SELECT ON ae_events.fanouts TO ae_events_reader, ae_events_relay;
REVOKE ALL ON FUNCTION ae_events.run_fanouts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.run_fanouts() TO ae_events_relay;
-- (End of the deferred fan-outs part.)

-- Issue 23, part 1 (event catalog): ae_events.event_schema(), ae_events.openapi() and their
-- internal functions (src/catalog.rs, sql/src/catalog.sql).
CREATE FUNCTION ae_events."_event_schema"(
	"subscription_key" TEXT,
	"rule_paths" TEXT[],
	"rule_actions" TEXT[]
) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_event_schema_wrapper';

CREATE FUNCTION ae_events."_openapi"(
	"rule_paths" TEXT[],
	"rule_actions" TEXT[]
) RETURNS jsonb
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_openapi_wrapper';

CREATE FUNCTION ae_events.event_schema(subscription_key text) RETURNS jsonb
LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
SELECT ae_events._event_schema(
    subscription_key,
    ARRAY(SELECT r.path FROM ae_events.payload_rules AS r ORDER BY r.path),
    ARRAY(SELECT r.action FROM ae_events.payload_rules AS r ORDER BY r.path))
$$;

CREATE FUNCTION ae_events.openapi() RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
SELECT ae_events._openapi(
    ARRAY(SELECT r.path FROM ae_events.payload_rules AS r ORDER BY r.path),
    ARRAY(SELECT r.action FROM ae_events.payload_rules AS r ORDER BY r.path))
$$;

COMMENT ON FUNCTION ae_events.event_schema(text) IS
    'ae_events: the JSON Schema (draft 2020-12) of a subscription key''s webhook body, payload rules in force applied';
COMMENT ON FUNCTION ae_events.openapi() IS
    'ae_events: the OpenAPI 3.1 document of the webhooks (one per subscription key), payload rules in force applied';

REVOKE ALL ON FUNCTION ae_events._event_schema(text, text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._openapi(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.event_schema(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.openapi() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.event_schema(text), ae_events.openapi()
    TO ae_events_reader, ae_events_relay;
-- (End of the event catalog part.)

-- Event catalog, part 2 (issue 23): test events (send_test_event), the operator role, the
-- instance_events view (sql/src/test_events.sql, sql/src/instance_events.sql).

-- Test events (shared/contract/catalog.md §2, docs/receivers.md): send_test_event queues the
-- seed's example payload for ONE endpoint. It never enters the outbox, so no consumer, other
-- endpoint or analyst view of events (events, instance_events, stats) sees it; the relay takes it
-- with relay_tests, outside the per-instance order, signs it like any delivery, adds the header
-- `ae-test: true` and records it with relay_record_tests. delivery_status shows it with is_test.

CREATE TABLE ae_events.test_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The endpoint it is for. No foreign key: its check would hold a lock on the endpoint's
    -- row until the caller's transaction ends, and relay_record waits for that lock. The test
    -- events of a dropped endpoint are sent by no relay and shown nowhere; prune() deletes them.
    endpoint_id bigint NOT NULL,
    -- Its webhook-id: the value send_test_event returns.
    webhook_id uuid NOT NULL UNIQUE,
    subscription_key text NOT NULL,
    event_type text NOT NULL,
    -- The example's instance and version, sent as ae-aggregate-id and ae-snapshot-version.
    aggregate_id bigint NOT NULL,
    snapshot_version integer NOT NULL,
    payload jsonb NOT NULL,
    requested_by name NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status integer,
    last_error text,
    next_attempt_at timestamptz DEFAULT pg_catalog.now(),
    delivered_at timestamptz,
    dead_at timestamptz
);

COMMENT ON TABLE ae_events.test_events IS
    'ae_events: test events queued by send_test_event, one endpoint each, and their outcome (read ae_events.delivery_status WHERE is_test)';

-- The relay's probe for due ones; few rows are pending (at most 10 per endpoint).
CREATE INDEX test_events_due_idx ON ae_events.test_events (endpoint_id, next_attempt_at)
    WHERE status OPERATOR(pg_catalog.=) 'pending';
CREATE INDEX test_events_requested_at_idx ON ae_events.test_events (requested_at);

-- The seed's example payload (shared/contract/ae.test_instance.created.txt), exactly; the
-- tests compare it with tests/seed_example_payload.json.
CREATE FUNCTION ae_events._example_payload() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT $example$
    {
        "id": 789,
        "external_id": "ext_ti_789",
        "old_id": 1234,
        "score": null,
        "instance_status": "in_progress",
        "candidate_id": 101,
        "catalog_assessment_id": 202,
        "measurement_id": 505,
        "session_instance_id": 3001,
        "workflow_candidate_step_id": 4001,
        "created_at": "2023-11-05T10:00:00Z",
        "created_by": 1,
        "updated_at": "2023-11-05T10:00:00Z",
        "updated_by": 1,
        "candidate": {
            "id": 101,
            "external_id": "ext_can_101",
            "user_id": 123,
            "email": "candidate@example.com",
            "first_name": "Jane",
            "last_name": "Doe",
            "middle_name": "Marie",
            "phone_number": "+19876543210",
            "country": "USA",
            "is_tnc_accepted": true,
            "is_recording_consent_accepted": true,
            "resume_file_id": 2001,
            "profile_pic_file_id": 3001,
            "cf": {}
        },
        "catalog_assessment": {
            "id": 202,
            "assessment": {
                "id": 303,
                "name": "Python Proficiency Test",
                "level": "intermediate",
                "status": "published",
                "created_at": "2023-11-01T10:00:00Z",
                "updated_at": "2023-11-01T10:00:00Z"
            },
            "catalog": {
                "id": 404,
                "name": "Standard Assessments",
                "description": "Standard assessment catalog for technical roles."
            }
        },
        "measurement": {
            "id": 505,
            "status": "pending",
            "time_taken": "00:00:00",
            "report_url": null,
            "report_file_id": null,
            "measured_at": "2023-11-05T10:00:00Z",
            "measured_by": null,
            "form_instance_id": null,
            "measurement_attributes": [
                {
                    "id": 1,
                    "numerical_score": null,
                    "percentile_score": null,
                    "remarks": null,
                    "description": "Initial state",
                    "additional_attributes": {},
                    "created_at": "2023-11-05T10:00:00Z",
                    "created_by": 1,
                    "updated_at": "2023-11-05T10:00:00Z",
                    "updated_by": 1,
                    "section_configuration_attribute": {
                        "id": 10,
                        "type": "numerical",
                        "recommended_value": 70,
                        "recommended_ordinal_id": null,
                        "attribute": {
                            "id": 10,
                            "name": "Logical Reasoning",
                            "attribute_type": "skill",
                            "is_required": true,
                            "min_value": 0,
                            "max_value": 100,
                            "skill": {
                                "id": 5,
                                "name": "Logic"
                            }
                        }
                    },
                    "ordinal": null
                }
            ]
        }
    }
    $example$::jsonb
$$;

-- Queue the example payload of a subscription key for one endpoint; returns its webhook-id.
-- The created event carries the seed's example (version 1); the updated one the same payload
-- with its own key and event type (version 2). At most 10 test events per endpoint wait at a
-- time (54000 beyond), so that a caller cannot flood the relay or the receiver.
CREATE FUNCTION ae_events.send_test_event(endpoint text,
                                          subscription_key text DEFAULT 'ae.test_instance.created')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints;
    example jsonb := ae_events._example_payload();
    waiting bigint;
    new_id uuid := pg_catalog.gen_random_uuid();
BEGIN
    -- Not locked (unlike _endpoint_for_update): a caller's open transaction must not hold up
    -- relay_record, which locks the row. The same errors.
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO target FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) send_test_event.endpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no endpoint %', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT endpoint FROM ae_events.endpoint_status; lists them.';
    END IF;
    IF subscription_key IS NULL
       OR subscription_key NOT IN ('ae.test_instance.created', 'ae.test_instance.updated') THEN
        RAISE EXCEPTION 'ae_events: there is no example for subscription key %',
                coalesce(pg_catalog.quote_literal(subscription_key), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The keys are ae.test_instance.created and ae.test_instance.updated.';
    END IF;
    IF target.subscription_keys IS NOT NULL
       AND NOT subscription_key OPERATOR(pg_catalog.=) ANY (target.subscription_keys) THEN
        RAISE EXCEPTION 'ae_events: endpoint % does not subscribe to %',
                pg_catalog.quote_literal(endpoint), subscription_key
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Its keys: ' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(target.subscription_keys, ', ');
    END IF;
    IF NOT target.enabled THEN
        RAISE EXCEPTION 'ae_events: endpoint % is disabled: no relay would send the test event',
                pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = coalesce('Disabled: ' OPERATOR(pg_catalog.||) target.disabled_reason, ''),
                  HINT = 'Enable it with ae_events.enable_endpoint first.';
    END IF;
    -- One call per endpoint at a time counts and inserts, so that the bound holds; the lock
    -- (the table's oid and the endpoint's id) is taken by nothing else of the extension.
    PERFORM pg_catalog.pg_advisory_xact_lock('ae_events.test_events'::pg_catalog.regclass::pg_catalog.oid::integer,
                                             (target.endpoint_id OPERATOR(pg_catalog.%) 2147483647)::integer);
    SELECT pg_catalog.count(*) INTO waiting FROM ae_events.test_events AS t
     WHERE t.endpoint_id OPERATOR(pg_catalog.=) target.endpoint_id
       AND t.status OPERATOR(pg_catalog.=) 'pending';
    IF waiting OPERATOR(pg_catalog.>=) 10 THEN
        RAISE EXCEPTION 'ae_events: endpoint % has 10 test events waiting already', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Wait until they are delivered or dead-lettered: SELECT * FROM ae_events.delivery_status WHERE is_test AND status = ''pending''.';
    END IF;
    INSERT INTO ae_events.test_events (endpoint_id, webhook_id, subscription_key, event_type,
                                       aggregate_id, snapshot_version, payload, requested_by)
    VALUES (target.endpoint_id, new_id, subscription_key,
            pg_catalog.translate(subscription_key, '.', '_'),
            (example OPERATOR(pg_catalog.->>) 'id')::bigint,
            CASE WHEN subscription_key OPERATOR(pg_catalog.=) 'ae.test_instance.created' THEN 1 ELSE 2 END,
            example, ae_events._calling_role());
    RETURN new_id;
END
$$;

-- The relay's side: the endpoint's test events due now (at most max_events), oldest first.
CREATE FUNCTION ae_events.relay_tests(endpoint text, relay text, max_events integer,
                                      endpoint_id bigint)
RETURNS TABLE (id bigint, webhook_id uuid, subscription_key text, event_type text,
               aggregate_id bigint, snapshot_version integer, payload text, attempts integer,
               requested_at timestamptz)
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
        SELECT t.id, t.webhook_id, t.subscription_key, t.event_type, t.aggregate_id,
               t.snapshot_version, t.payload::text, t.attempts, t.requested_at
          FROM ae_events.test_events AS t
         WHERE t.endpoint_id OPERATOR(pg_catalog.=) target.endpoint_id
           AND t.status OPERATOR(pg_catalog.=) 'pending'
           AND t.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
         ORDER BY t.next_attempt_at, t.id
         LIMIT max_events;
END
$$;

-- The outcomes of test events' attempts (as relay_record's: delivered / pending with its next
-- attempt / dead). Returns false, writing nothing, if the relay no longer holds the endpoint.
-- Error texts are stored with the endpoint's static header values masked, at most 2000
-- characters long. A test event's outcome leaves the endpoint's failing_since alone.
CREATE FUNCTION ae_events.relay_record_tests(endpoint text, relay text, endpoint_id bigint,
                                             ids bigint[], statuses text[], attempts integer[],
                                             attempted_at timestamptz[], http_statuses integer[],
                                             errors text[], next_attempt_at timestamptz[])
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    held ae_events.endpoints;
    header record;
BEGIN
    IF endpoint_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: the endpoint_id relay_lease handed out is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM ae_events._require_own_relay(relay);
    SELECT * INTO held FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) relay_record_tests.endpoint
       AND e.endpoint_id OPERATOR(pg_catalog.=) relay_record_tests.endpoint_id
       AND e.relay OPERATOR(pg_catalog.=) relay_record_tests.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.enabled
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.unnest(errors) AS x (e) WHERE x.e IS NOT NULL) THEN
        FOR header IN SELECT h.value FROM pg_catalog.jsonb_each_text(held.headers) AS h
                       WHERE pg_catalog.length(h.value) OPERATOR(pg_catalog.>=) 6
                       ORDER BY pg_catalog.length(h.value) DESC LOOP
            errors := ARRAY(SELECT pg_catalog.replace(x.e, header.value, '[redacted]')
                              FROM pg_catalog.unnest(errors) WITH ORDINALITY AS x (e, n) ORDER BY x.n);
        END LOOP;
    END IF;
    UPDATE ae_events.test_events AS t
       SET status = r.status,
           attempts = r.attempts,
           first_attempt_at = coalesce(t.first_attempt_at, r.attempted_at),
           last_attempt_at = coalesce(r.attempted_at, t.last_attempt_at),
           last_status = r.http_status,
           last_error = pg_catalog.left(r.error, 2000),
           next_attempt_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending'
                                  THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           delivered_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           dead_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      -- The parameters qualified: unqualified, attempts and the like are the table's columns.
      FROM ROWS FROM (pg_catalog.unnest(relay_record_tests.ids),
                      pg_catalog.unnest(relay_record_tests.statuses),
                      pg_catalog.unnest(relay_record_tests.attempts),
                      pg_catalog.unnest(relay_record_tests.attempted_at),
                      pg_catalog.unnest(relay_record_tests.http_statuses),
                      pg_catalog.unnest(relay_record_tests.errors),
                      pg_catalog.unnest(relay_record_tests.next_attempt_at))
           AS r (id, status, attempts, attempted_at, http_status, error, next_attempt_at)
     WHERE t.id OPERATOR(pg_catalog.=) r.id
       AND t.endpoint_id OPERATOR(pg_catalog.=) held.endpoint_id
       AND r.status IN ('pending', 'delivered', 'dead');
    RETURN true;
END
$$;

-- For analysts and DBAs: per endpoint and event its deliveries, test events included
-- (is_test; their id is NULL: they are not in the outbox). Replaces the view of endpoints.sql.
CREATE OR REPLACE VIEW ae_events.delivery_status AS
SELECT d.endpoint, d.outbox_id AS id, o.event_id, o.subscription_key AS event,
       d.aggregate_id AS instance_id, o.snapshot_version, o.occurred_at,
       d.status, d.attempts, d.last_status, d.last_error,
       d.first_attempt_at, d.last_attempt_at, d.delivered_at, d.dead_at, d.next_attempt_at,
       false AS is_test
  FROM ae_events.deliveries AS d
  LEFT JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
UNION ALL
SELECT e.endpoint, NULL::bigint, t.webhook_id, t.subscription_key,
       t.aggregate_id, t.snapshot_version, t.requested_at,
       t.status, t.attempts, t.last_status, t.last_error,
       t.first_attempt_at, t.last_attempt_at, t.delivered_at, t.dead_at, t.next_attempt_at,
       true
  FROM ae_events.test_events AS t
  JOIN ae_events.endpoints AS e ON e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id;

COMMENT ON VIEW ae_events.delivery_status IS
    'ae_events: per endpoint and event its deliveries: status (pending, delivered, dead), attempts, last HTTP status or error, times; is_test: a test event of send_test_event';

-- The console's operators (shared/contract/console.md §2), cluster-wide like the other roles: for
-- now they may send test events; the DBA grants the role to people.
DO $$
BEGIN
    BEGIN
        CREATE ROLE ae_events_operator NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
END
$$;

REVOKE ALL ON FUNCTION ae_events._example_payload() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.send_test_event(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_tests(text, text, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[]) FROM PUBLIC;
GRANT USAGE ON SCHEMA ae_events TO ae_events_operator;
GRANT EXECUTE ON FUNCTION ae_events.send_test_event(text, text) TO ae_events_operator;
GRANT EXECUTE ON FUNCTION ae_events.relay_tests(text, text, integer, bigint),
    ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[])
    TO ae_events_relay;

-- For analysts (shared/contract/catalog.md §3, docs/events.md): one row per ae.test_instance.*
-- event of the outbox with the payload's scalar fields as typed columns, named <object>_<field>
-- (instance_ for the top level). Read from the stored payload, so payload rules apply as they did
-- when the event was stored: a removed or nulled field is NULL; a hashed field shows its hash in a
-- text column and is NULL in a typed one (a number, boolean, time or interval column; the hash is
-- in the payload column). Test events are never in the outbox, so never here.

-- A payload timestamp (RFC 3339 in UTC, an expanded signed year outside 0000-9999, or
-- [-]infinity: src/timefmt.rs) as timestamptz; anything else (a hash) is NULL. No exception
-- block (a subtransaction per row): the payload renders only values PostgreSQL can read back.
CREATE FUNCTION ae_events._payload_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text[];
    year bigint;
BEGIN
    -- The common case first: a year of four digits (0000 is 1 BC: made below).
    IF value ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$' AND value !~ '^0000' THEN
        RETURN value::timestamptz;
    END IF;
    IF value IN ('infinity', '-infinity') THEN
        RETURN value::timestamptz;
    END IF;
    part := pg_catalog.regexp_match(value,
        '^([+-]?[0-9]{4,})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2}(\.[0-9]+)?)Z$');
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    year := part[1]::bigint;
    -- ISO 8601's year 0 is 1 BC, make_timestamptz's -1.
    IF year OPERATOR(pg_catalog.<=) 0 THEN
        year := year OPERATOR(pg_catalog.-) 1;
    END IF;
    RETURN pg_catalog.make_timestamptz(year::integer, part[2]::integer, part[3]::integer,
                                       part[4]::integer, part[5]::integer,
                                       part[6]::double precision, 'UTC');
END
$$;

-- A payload interval (PostgreSQL's postgres style: src/timefmt.rs) as interval; a hash is NULL.
CREATE FUNCTION ae_events._payload_interval(value text) RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value IS NULL OR value ~ '^[0-9a-f]{64}$' THEN
        RETURN NULL;
    END IF;
    RETURN value::interval;
END
$$;

CREATE VIEW ae_events.instance_events AS
SELECT
       o.id,
       o.event_id,
       o.subscription_key AS event,
       o.snapshot_version,
       o.occurred_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{id}')::bigint END AS instance_id,
       o.payload OPERATOR(pg_catalog.#>>) '{external_id}' AS instance_external_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{old_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{old_id}')::bigint END AS instance_old_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{score}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{score}')::numeric
            WHEN o.payload OPERATOR(pg_catalog.#>>) '{score}' IN ('NaN', 'Infinity', '-Infinity') THEN (o.payload OPERATOR(pg_catalog.#>>) '{score}')::numeric END AS instance_score,
       o.payload OPERATOR(pg_catalog.#>>) '{instance_status}' AS instance_status,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate_id}')::bigint END AS instance_candidate_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment_id}')::bigint END AS instance_catalog_assessment_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement_id}')::bigint END AS instance_measurement_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{session_instance_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{session_instance_id}')::bigint END AS instance_session_instance_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{workflow_candidate_step_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{workflow_candidate_step_id}')::bigint END AS instance_workflow_candidate_step_id,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{created_at}') AS instance_created_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{created_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{created_by}')::bigint END AS instance_created_by,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{updated_at}') AS instance_updated_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{updated_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{updated_by}')::bigint END AS instance_updated_by,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,id}')::bigint END AS candidate_id,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,external_id}' AS candidate_external_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,user_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,user_id}')::bigint END AS candidate_user_id,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,email}' AS candidate_email,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,first_name}' AS candidate_first_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,last_name}' AS candidate_last_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,middle_name}' AS candidate_middle_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,phone_number}' AS candidate_phone_number,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,country}' AS candidate_country,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,is_tnc_accepted}') OPERATOR(pg_catalog.=) 'boolean'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,is_tnc_accepted}')::boolean END AS candidate_is_tnc_accepted,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,is_recording_consent_accepted}') OPERATOR(pg_catalog.=) 'boolean'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,is_recording_consent_accepted}')::boolean END AS candidate_is_recording_consent_accepted,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,resume_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,resume_file_id}')::bigint END AS candidate_resume_file_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,profile_pic_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,profile_pic_file_id}')::bigint END AS candidate_profile_pic_file_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,id}')::bigint END AS catalog_assessment_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,assessment,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,assessment,id}')::bigint END AS assessment_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,name}' AS assessment_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,level}' AS assessment_level,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,status}' AS assessment_status,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,created_at}') AS assessment_created_at,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,updated_at}') AS assessment_updated_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,catalog,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,catalog,id}')::bigint END AS catalog_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,name}' AS catalog_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,description}' AS catalog_description,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,id}')::bigint END AS measurement_id,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,status}' AS measurement_status,
       ae_events._payload_interval(o.payload OPERATOR(pg_catalog.#>>) '{measurement,time_taken}') AS measurement_time_taken,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,report_url}' AS measurement_report_url,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,report_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,report_file_id}')::bigint END AS measurement_report_file_id,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{measurement,measured_at}') AS measurement_measured_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,measured_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,measured_by}')::bigint END AS measurement_measured_by,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,form_instance_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,form_instance_id}')::bigint END AS measurement_form_instance_id,
       o.payload
  FROM ae_events.outbox AS o
 WHERE o.subscription_key LIKE 'ae.test\_instance.%';

COMMENT ON VIEW ae_events.instance_events IS
    'ae_events: one row per ae.test_instance.* event with the payload''s scalar fields as typed columns (<object>_<field>), payload rules applied as stored';

REVOKE ALL ON FUNCTION ae_events._payload_timestamptz(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._payload_interval(text) FROM PUBLIC;
GRANT SELECT ON ae_events.instance_events TO ae_events_reader;

-- prune() deletes finished test events with the events of their time.
CREATE OR REPLACE FUNCTION ae_events.prune(older_than interval, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := pg_catalog.now() OPERATOR(pg_catalog.-) older_than;
    deleted bigint := 0;
    batch bigint;
    pruned_ids bigint[];
BEGIN
    IF older_than IS NULL OR older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'ae_events: prune needs an age of zero or more, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        pruned_ids := ARRAY(
                   SELECT o.id
                     FROM ae_events._epochs() AS e
                     JOIN ae_events.outbox AS o
                       ON o.id OPERATOR(pg_catalog.>=) e.first_id
                      AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                    WHERE o.occurred_at OPERATOR(pg_catalog.<) cutoff
                      AND NOT EXISTS (
                              SELECT FROM ae_events.consumers AS c
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                      -- Nor one a webhook endpoint has not passed yet or still has to send.
                      AND NOT EXISTS (
                              SELECT FROM ae_events.endpoints AS p
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (p.cursor_epoch, p.cursor_txid, p.cursor_id)
                                  OR EXISTS (
                                         SELECT FROM ae_events.deliveries AS d
                                          WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                                            AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                                            AND d.status OPERATOR(pg_catalog.=) 'pending'))
                    ORDER BY o.id
                    LIMIT batch_size);
        -- Their delivery records go with them.
        DELETE FROM ae_events.deliveries AS d
         USING ae_events.endpoints AS p
         WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
           AND d.outbox_id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        DELETE FROM ae_events.outbox AS d WHERE d.id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        GET DIAGNOSTICS batch = ROW_COUNT;
        deleted := deleted OPERATOR(pg_catalog.+) batch;
        EXIT WHEN batch OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    -- Test events of send_test_event (test_events.sql) go with the events of their time once
    -- finished, and those of dropped endpoints; they are not counted.
    DELETE FROM ae_events.test_events AS t
     WHERE (t.status OPERATOR(pg_catalog.<>) 'pending'
            AND t.requested_at OPERATOR(pg_catalog.<) cutoff)
        OR NOT EXISTS (SELECT FROM ae_events.endpoints AS e
                        WHERE e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id);
    RETURN deleted;
END
$$;
-- (End of the test events and instance_events part.)

-- Issue 23, part 1 (event catalog), continued: operators (made by the test events part above)
-- may read the catalog too (sql/src/catalog.sql).
GRANT EXECUTE ON FUNCTION ae_events.event_schema(text), ae_events.openapi() TO ae_events_operator;
-- (End of the event catalog's second part.)

-- Issue 24, part 2 (personal data: erase_candidate, ae_events.erasures, payload_retention and
-- payload_expired; sql/src/privacy.sql, src/settings.rs). The outbox gets a supporting index
-- for the candidate lookup: built here, on the whole outbox (docs/privacy.md).
CREATE FUNCTION ae_events."_payload_retention"() RETURNS interval
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_payload_retention_wrapper';
-- Personal data (shared/contract/privacy.md, docs/privacy.md): erasing a candidate from the
-- stored events. Retention (ae_events.payload_retention) is in prune() (analytics.sql).
--
-- The outbox is append-only except here and in retention: erase_candidate rewrites the payloads
-- of a candidate's events in place (same row, ids, keys, versions, txid), so cursors, delivery
-- order and delivery records are untouched and a pending delivery is sent with the erased payload
-- under the same webhook-id.

-- A payload's candidate, as the payload names it: candidate_id, else candidate.id (a payload rule
-- may have removed or nulled either; 'sha256' leaves the hex hash of the id's text), and the
-- event's id, for batches in id order. Events of other aggregates have NULL. Costs writers one
-- small btree entry per event (docs/privacy.md has the figure). The expression is written out
-- the same in every query that must use this index.
CREATE INDEX outbox_candidate_idx ON ae_events.outbox
    ((coalesce(NULLIF(payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
               NULLIF(payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))),
     id);

-- One row per erase_candidate call: when, by which role, which candidate, how many events were
-- rewritten. Readable by the DBA only (the candidate id is personal data's key). Dumped with the
-- database: it is the evidence that a request was answered, and later error texts are masked by it.
CREATE TABLE ae_events.erasures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    erased_by name NOT NULL,
    candidate_id bigint NOT NULL,
    events bigint NOT NULL
);

COMMENT ON TABLE ae_events.erasures IS
    'ae_events: erasures of candidates from the stored events (erase_candidate): when, by whom, which candidate, how many events';

CREATE INDEX erasures_candidate_idx ON ae_events.erasures (candidate_id);

SELECT pg_catalog.pg_extension_config_dump('ae_events.erasures', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.erasures_id_seq', '');

-- The values a payload may name a candidate by: its id, and the hex SHA-256 of the id's text (a
-- 'sha256' payload rule on candidate_id or candidate.id).
CREATE FUNCTION ae_events._candidate_keys(candidate_id bigint) RETURNS jsonb[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[pg_catalog.to_jsonb(candidate_id),
                 pg_catalog.to_jsonb(pg_catalog.encode(
                     pg_catalog.sha256(pg_catalog.convert_to(candidate_id::text, 'UTF8')), 'hex'))]
$$;

-- The payload with every field of candidate except id set to null (fields a rule removed stay
-- absent; a hashed one becomes null too). A payload without a candidate object is returned as it
-- is.
CREATE FUNCTION ae_events._erased_payload(payload jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(payload OPERATOR(pg_catalog.->) 'candidate') OPERATOR(pg_catalog.=) 'object'
             AND EXISTS (SELECT FROM pg_catalog.jsonb_each(payload OPERATOR(pg_catalog.->) 'candidate') AS c
                          WHERE c.key OPERATOR(pg_catalog.<>) 'id'
                            AND c.value OPERATOR(pg_catalog.<>) 'null'::jsonb)
        THEN payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('candidate',
                 (SELECT pg_catalog.jsonb_object_agg(c.key,
                             CASE WHEN c.key OPERATOR(pg_catalog.=) 'id' THEN c.value ELSE 'null'::jsonb END)
                    FROM pg_catalog.jsonb_each(payload OPERATOR(pg_catalog.->) 'candidate') AS c))
        ELSE payload
    END
$$;

-- Erase these events: rewrite their payloads, and replace the error texts of their delivery
-- records by '[erased]' (a receiver may echo the payload in its answer, in any encoding: JSON
-- escapes, URL encoding, cut at 2000 characters; searching for the values could miss one, so
-- every error text of an erased event goes). Returns how many payloads changed.
CREATE FUNCTION ae_events._erase_events(ids bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rewritten bigint;
BEGIN
    UPDATE ae_events.outbox AS o
       SET payload = ae_events._erased_payload(o.payload)
     WHERE o.id OPERATOR(pg_catalog.=) ANY (ids)
       AND ae_events._erased_payload(o.payload) OPERATOR(pg_catalog.<>) o.payload;
    GET DIAGNOSTICS rewritten = ROW_COUNT;
    -- Through each endpoint's primary key (endpoint, outbox_id), as prune() does.
    UPDATE ae_events.deliveries AS d
       SET last_error = '[erased]'
      FROM ae_events.endpoints AS p
     WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
       AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
       AND d.last_error IS NOT NULL
       AND d.last_error OPERATOR(pg_catalog.<>) '[erased]';
    -- Operational events (alerts.sql) carry an attempt's error text too, and a failing or
    -- disabled one does not say which event's: the error texts of every operational event about
    -- an endpoint that attempted one of these events, since its first attempt, go as well.
    UPDATE ae_events.outbox AS a
       SET payload = pg_catalog.jsonb_set(a.payload, '{last_error}', '"[erased]"')
      FROM (SELECT p.endpoint_id, pg_catalog.min(d.first_attempt_at) AS since
              FROM ae_events.endpoints AS p
              JOIN ae_events.deliveries AS d
                ON d.endpoint OPERATOR(pg_catalog.=) p.endpoint
               AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
             WHERE d.first_attempt_at IS NOT NULL
             GROUP BY p.endpoint_id) AS t
     WHERE a.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
       AND a.aggregate_id OPERATOR(pg_catalog.=) t.endpoint_id
       AND a.occurred_at OPERATOR(pg_catalog.>=) t.since
       AND pg_catalog.jsonb_typeof(a.payload OPERATOR(pg_catalog.->) 'last_error') OPERATOR(pg_catalog.=) 'string'
       AND a.payload OPERATOR(pg_catalog.->>) 'last_error' OPERATOR(pg_catalog.<>) '[erased]';
    RETURN rewritten;
END
$$;

-- Erase a candidate from every stored event (shared/contract/privacy.md §1); returns how many
-- events were rewritten. The candidate's events are those whose payload names the candidate
-- (candidate_id or candidate.id, plain or hashed: also events of instances deleted since), and,
-- where a payload rule removed or nulled both, those of the instances ti.instance gives the
-- candidate now. A batch of 1000 events at a time (bounded memory), all in the caller's
-- transaction: relays see every event of the candidate erased at once when it commits, or none.
CREATE FUNCTION ae_events.erase_candidate(candidate_id bigint) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch_size constant integer := 1000;
    candidate_key jsonb;
    instance_id bigint;
    last_id bigint;
    ids bigint[];
    erased bigint := 0;
    busy text;
BEGIN
    IF candidate_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: erase_candidate needs a candidate id, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- relay_record, redeliver and replay_endpoint lock their endpoint's row before they write
    -- delivery records: with a share lock on every endpoint's row, taken before any delivery
    -- record is touched, none of them is writing one of those this clears. Relays go on fetching
    -- and sending meanwhile; their records wait for this transaction's end. The locks are taken
    -- without waiting while holding others (relay_lease updates several rows in no set order, and
    -- could otherwise deadlock with this): on a busy one, those taken are let go, the busy one is
    -- waited for holding nothing, and all are tried again.
    LOOP
        BEGIN
            FOR busy IN SELECT p.endpoint FROM ae_events.endpoints AS p ORDER BY p.endpoint LOOP
                PERFORM FROM ae_events.endpoints AS p
                 WHERE p.endpoint OPERATOR(pg_catalog.=) busy
                   FOR SHARE NOWAIT;
            END LOOP;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- the block's locks are released with it
        END;
        -- Wait until the busy one is free, holding nothing, then try all again.
        BEGIN
            PERFORM FROM ae_events.endpoints AS p
             WHERE p.endpoint OPERATOR(pg_catalog.=) busy
               FOR SHARE;
            RAISE EXCEPTION USING ERRCODE = 'lock_not_available';  -- lets it go again
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    FOREACH candidate_key IN ARRAY ae_events._candidate_keys(candidate_id) LOOP
        last_id := -1;
        LOOP
            ids := ARRAY(
                SELECT o.id FROM ae_events.outbox AS o
                 WHERE coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                                NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))
                       OPERATOR(pg_catalog.=) candidate_key
                   AND o.id OPERATOR(pg_catalog.>) last_id
                 ORDER BY 1
                 LIMIT batch_size);
            EXIT WHEN pg_catalog.cardinality(ids) OPERATOR(pg_catalog.=) 0;
            last_id := ids[pg_catalog.cardinality(ids)];
            erased := erased OPERATOR(pg_catalog.+) ae_events._erase_events(ids);
        END LOOP;
    END LOOP;
    -- Payloads that name no candidate (both fields removed or nulled by rules): the instances
    -- the source table gives the candidate now.
    IF pg_catalog.to_regclass('ti.instance') IS NOT NULL THEN
        FOR instance_id IN EXECUTE
            'SELECT i.id FROM ti.instance AS i WHERE i.candidate_id OPERATOR(pg_catalog.=) $1'
            USING candidate_id LOOP
            last_id := -1;
            LOOP
                ids := ARRAY(
                    SELECT o.id FROM ae_events.outbox AS o
                     WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                       AND o.aggregate_id OPERATOR(pg_catalog.=) instance_id
                       AND o.id OPERATOR(pg_catalog.>) last_id
                       AND coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                                    NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb)) IS NULL
                     ORDER BY o.id
                     LIMIT batch_size);
                EXIT WHEN pg_catalog.cardinality(ids) OPERATOR(pg_catalog.=) 0;
                last_id := ids[pg_catalog.cardinality(ids)];
                erased := erased OPERATOR(pg_catalog.+) ae_events._erase_events(ids);
            END LOOP;
        END LOOP;
    END IF;
    INSERT INTO ae_events.erasures (erased_by, candidate_id, events)
    VALUES (ae_events._calling_role(), candidate_id, erased);
    RETURN erased;
END
$$;

COMMENT ON FUNCTION ae_events.erase_candidate(bigint) IS
    'ae_events: sets every field of candidate except id to null in the stored events of that candidate, clears their delivery error texts, records it in ae_events.erasures; returns the number of events rewritten';

-- An error text recorded for an erased candidate's event becomes '[erased]': an attempt in
-- flight when the erasure committed had read the payload before it, and the receiver's answer
-- (which may echo the values) is recorded after it. Only rows with an error text fire it (a
-- delivered batch has none), and it stops at one probe of an empty table while no candidate was
-- ever erased.
CREATE FUNCTION ae_events._erased_delivery_error() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate_key jsonb;
BEGIN
    IF NOT EXISTS (SELECT FROM ae_events.erasures) THEN
        RETURN NEW;
    END IF;
    SELECT coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                    NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))
      INTO candidate_key
      FROM ae_events.outbox AS o WHERE o.id OPERATOR(pg_catalog.=) NEW.outbox_id;
    IF candidate_key IS NOT NULL
       AND EXISTS (SELECT FROM ae_events.erasures AS er
                    WHERE candidate_key OPERATOR(pg_catalog.=) ANY (ae_events._candidate_keys(er.candidate_id))) THEN
        NEW.last_error := '[erased]';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER erased_candidate_errors
    BEFORE INSERT OR UPDATE OF last_error ON ae_events.deliveries
    FOR EACH ROW
    WHEN (NEW.last_error IS NOT NULL AND NEW.last_error OPERATOR(pg_catalog.<>) '[erased]')
    EXECUTE FUNCTION ae_events._erased_delivery_error();

REVOKE ALL ON ae_events.erasures FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._candidate_keys(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erased_payload(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erase_events(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.erase_candidate(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erased_delivery_error() FROM PUBLIC;
-- prune()'s reading of ae_events.payload_retention (src/settings.rs).
REVOKE ALL ON FUNCTION ae_events._payload_retention() FROM PUBLIC;

CREATE OR REPLACE VIEW ae_events.events AS
SELECT o.id,
       o.event_id,
       o.subscription_key AS event,
       o.aggregate_id AS instance_id,
       o.snapshot_version,
       o.occurred_at,
       o.payload OPERATOR(pg_catalog.->>) 'instance_status' AS instance_status,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'candidate_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'candidate_id')::bigint END AS candidate_id,
       pg_catalog.concat_ws(' ',
           o.payload OPERATOR(pg_catalog.#>>) '{candidate,first_name}',
           o.payload OPERATOR(pg_catalog.#>>) '{candidate,last_name}') AS candidate_name,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'catalog_assessment_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'catalog_assessment_id')::bigint END AS catalog_assessment_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,name}' AS assessment_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,status}' AS assessment_status,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,name}' AS catalog_name,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'measurement_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'measurement_id')::bigint END AS measurement_id,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,status}' AS measurement_status,
       pg_catalog.jsonb_array_length(coalesce(
           o.payload OPERATOR(pg_catalog.#>) '{measurement,measurement_attributes}',
           '[]'::jsonb)) AS attribute_count,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'score') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'score')::numeric END AS score,
       o.txid,
       -- prune() replaced the payload by JSON null (ae_events.payload_retention).
       pg_catalog.jsonb_typeof(o.payload) OPERATOR(pg_catalog.=) 'null' AS payload_expired
  FROM ae_events.outbox AS o
 WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance';

CREATE OR REPLACE FUNCTION ae_events.prune(older_than interval, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := pg_catalog.now() OPERATOR(pg_catalog.-) older_than;
    deleted bigint := 0;
    batch bigint;
    pruned_ids bigint[];
    retention interval;
    expire_cutoff timestamptz;
    expired_ids bigint[];
    last_expired_id bigint := -1;
BEGIN
    IF older_than IS NULL OR older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'ae_events: prune needs an age of zero or more, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    retention := ae_events._payload_retention();
    IF retention IS NOT NULL THEN
        expire_cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) retention;
        LOOP
            -- In id order from where the last batch ended. A payload of more than 16 bytes is
            -- not JSON null: the test needs no decompression then.
            expired_ids := ARRAY(
                       SELECT o.id
                         FROM ae_events._epochs() AS e
                         JOIN ae_events.outbox AS o
                           ON o.id OPERATOR(pg_catalog.>=) e.first_id
                          AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                        WHERE o.occurred_at OPERATOR(pg_catalog.<) expire_cutoff
                          AND o.id OPERATOR(pg_catalog.>) last_expired_id
                          AND (pg_catalog.pg_column_size(o.payload) OPERATOR(pg_catalog.>) 16
                               OR o.payload OPERATOR(pg_catalog.<>) 'null'::jsonb)
                          AND NOT EXISTS (
                                  SELECT FROM ae_events.consumers AS c
                                   WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                         (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                          AND NOT EXISTS (
                                  SELECT FROM ae_events.endpoints AS p
                                   WHERE p.enabled
                                     AND ((e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                          (p.cursor_epoch, p.cursor_txid, p.cursor_id)
                                          OR EXISTS (
                                                 SELECT FROM ae_events.deliveries AS d
                                                  WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                                                    AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                                                    AND d.status OPERATOR(pg_catalog.=) 'pending')))
                        ORDER BY o.id
                        LIMIT batch_size);
            EXIT WHEN pg_catalog.cardinality(expired_ids) OPERATOR(pg_catalog.=) 0;
            last_expired_id := expired_ids[pg_catalog.cardinality(expired_ids)];
            -- A disabled endpoint that has not reached the event and would send it: it never
            -- can now; a dead delivery record says so (relay_fetch passes over an event that has
            -- one). Matched on the payload before it goes.
            INSERT INTO ae_events.deliveries AS d
                   (endpoint, outbox_id, aggregate_id, status, attempts, last_error, dead_at)
            SELECT p.endpoint, o.id, o.aggregate_id, 'dead', 0,
                   'ae_events: the payload expired (ae_events.payload_retention) before it was delivered',
                   pg_catalog.now()
              FROM ae_events._epochs() AS e
              JOIN ae_events.outbox AS o
                ON o.id OPERATOR(pg_catalog.>=) e.first_id
               AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
              JOIN ae_events.endpoints AS p
                ON NOT p.enabled
               AND (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                   (p.cursor_epoch, p.cursor_txid, p.cursor_id)
             WHERE o.id OPERATOR(pg_catalog.=) ANY (expired_ids)
               AND ae_events._endpoint_matches(p.subscription_keys, p.filter,
                                               o.subscription_key, o.payload)
            ON CONFLICT ON CONSTRAINT deliveries_pkey DO NOTHING;
            UPDATE ae_events.outbox AS o SET payload = 'null'::jsonb
             WHERE o.id OPERATOR(pg_catalog.=) ANY (expired_ids);
            -- Only a disabled endpoint can still have one pending: it cannot be sent any more.
            UPDATE ae_events.deliveries AS d
               SET status = 'dead', dead_at = pg_catalog.now(), next_attempt_at = NULL,
                   last_error = 'ae_events: the payload expired (ae_events.payload_retention) before it was delivered'
              FROM ae_events.endpoints AS p
             WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
               AND d.outbox_id OPERATOR(pg_catalog.=) ANY (expired_ids)
               AND d.status OPERATOR(pg_catalog.=) 'pending';
            EXIT WHEN pg_catalog.cardinality(expired_ids) OPERATOR(pg_catalog.<) batch_size;
        END LOOP;
    END IF;
    LOOP
        pruned_ids := ARRAY(
                   SELECT o.id
                     FROM ae_events._epochs() AS e
                     JOIN ae_events.outbox AS o
                       ON o.id OPERATOR(pg_catalog.>=) e.first_id
                      AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                    WHERE o.occurred_at OPERATOR(pg_catalog.<) cutoff
                      AND NOT EXISTS (
                              SELECT FROM ae_events.consumers AS c
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                      -- Nor one a webhook endpoint has not passed yet or still has to send.
                      AND NOT EXISTS (
                              SELECT FROM ae_events.endpoints AS p
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (p.cursor_epoch, p.cursor_txid, p.cursor_id)
                                  OR EXISTS (
                                         SELECT FROM ae_events.deliveries AS d
                                          WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                                            AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                                            AND d.status OPERATOR(pg_catalog.=) 'pending'))
                    ORDER BY o.id
                    LIMIT batch_size);
        -- Their delivery records go with them.
        DELETE FROM ae_events.deliveries AS d
         USING ae_events.endpoints AS p
         WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
           AND d.outbox_id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        DELETE FROM ae_events.outbox AS d WHERE d.id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        GET DIAGNOSTICS batch = ROW_COUNT;
        deleted := deleted OPERATOR(pg_catalog.+) batch;
        EXIT WHEN batch OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    -- Test events of send_test_event (test_events.sql) go with the events of their time once
    -- finished, and those of dropped endpoints; they are not counted.
    DELETE FROM ae_events.test_events AS t
     WHERE (t.status OPERATOR(pg_catalog.<>) 'pending'
            AND t.requested_at OPERATOR(pg_catalog.<) cutoff)
        OR NOT EXISTS (SELECT FROM ae_events.endpoints AS e
                        WHERE e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id);
    RETURN deleted;
END
$$;

CREATE OR REPLACE VIEW ae_events.instance_events AS
SELECT
       o.id,
       o.event_id,
       o.subscription_key AS event,
       o.snapshot_version,
       o.occurred_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{id}')::bigint END AS instance_id,
       o.payload OPERATOR(pg_catalog.#>>) '{external_id}' AS instance_external_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{old_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{old_id}')::bigint END AS instance_old_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{score}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{score}')::numeric
            WHEN o.payload OPERATOR(pg_catalog.#>>) '{score}' IN ('NaN', 'Infinity', '-Infinity') THEN (o.payload OPERATOR(pg_catalog.#>>) '{score}')::numeric END AS instance_score,
       o.payload OPERATOR(pg_catalog.#>>) '{instance_status}' AS instance_status,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate_id}')::bigint END AS instance_candidate_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment_id}')::bigint END AS instance_catalog_assessment_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement_id}')::bigint END AS instance_measurement_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{session_instance_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{session_instance_id}')::bigint END AS instance_session_instance_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{workflow_candidate_step_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{workflow_candidate_step_id}')::bigint END AS instance_workflow_candidate_step_id,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{created_at}') AS instance_created_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{created_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{created_by}')::bigint END AS instance_created_by,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{updated_at}') AS instance_updated_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{updated_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{updated_by}')::bigint END AS instance_updated_by,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,id}')::bigint END AS candidate_id,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,external_id}' AS candidate_external_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,user_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,user_id}')::bigint END AS candidate_user_id,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,email}' AS candidate_email,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,first_name}' AS candidate_first_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,last_name}' AS candidate_last_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,middle_name}' AS candidate_middle_name,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,phone_number}' AS candidate_phone_number,
       o.payload OPERATOR(pg_catalog.#>>) '{candidate,country}' AS candidate_country,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,is_tnc_accepted}') OPERATOR(pg_catalog.=) 'boolean'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,is_tnc_accepted}')::boolean END AS candidate_is_tnc_accepted,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,is_recording_consent_accepted}') OPERATOR(pg_catalog.=) 'boolean'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,is_recording_consent_accepted}')::boolean END AS candidate_is_recording_consent_accepted,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,resume_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,resume_file_id}')::bigint END AS candidate_resume_file_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{candidate,profile_pic_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{candidate,profile_pic_file_id}')::bigint END AS candidate_profile_pic_file_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,id}')::bigint END AS catalog_assessment_id,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,assessment,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,assessment,id}')::bigint END AS assessment_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,name}' AS assessment_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,level}' AS assessment_level,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,status}' AS assessment_status,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,created_at}') AS assessment_created_at,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,updated_at}') AS assessment_updated_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,catalog,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{catalog_assessment,catalog,id}')::bigint END AS catalog_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,name}' AS catalog_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,description}' AS catalog_description,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,id}')::bigint END AS measurement_id,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,status}' AS measurement_status,
       ae_events._payload_interval(o.payload OPERATOR(pg_catalog.#>>) '{measurement,time_taken}') AS measurement_time_taken,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,report_url}' AS measurement_report_url,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,report_file_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,report_file_id}')::bigint END AS measurement_report_file_id,
       ae_events._payload_timestamptz(o.payload OPERATOR(pg_catalog.#>>) '{measurement,measured_at}') AS measurement_measured_at,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,measured_by}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,measured_by}')::bigint END AS measurement_measured_by,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.#>) '{measurement,form_instance_id}') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.#>) '{measurement,form_instance_id}')::bigint END AS measurement_form_instance_id,
       o.payload,
       -- prune() replaced the payload by JSON null (ae_events.payload_retention): every payload
       -- column is NULL.
       pg_catalog.jsonb_typeof(o.payload) OPERATOR(pg_catalog.=) 'null' AS payload_expired
  FROM ae_events.outbox AS o
 WHERE o.subscription_key LIKE 'ae.test\_instance.%';

CREATE OR REPLACE FUNCTION ae_events.redeliver(endpoint text, event_ids uuid[]) RETURNS bigint
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

CREATE OR REPLACE FUNCTION ae_events.replay_endpoint(endpoint text, since timestamptz) RETURNS bigint
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

-- (End of the personal data part.)

-- Issue 24, part 2 (personal data), continued: relay_fetch and relay_record as in
-- sql/src/endpoints.sql (the operational events' copies above carried an earlier draft of the
-- erasure's edits to them; erasure masks error texts with a trigger on deliveries instead).
CREATE OR REPLACE FUNCTION ae_events.relay_fetch(endpoint text, relay text, after_epoch bigint,
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
        -- text's, which escapes make up to 6 times larger): "|| '{}'" hands back the payload
        -- detoasted, without the cost of writing it as text.
        SELECT s.txid, s.id, s.upto INTO end_txid, end_id, batch_bytes
          FROM (SELECT z.txid, z.id, z.size,
                       pg_catalog.sum(z.size) OVER (ORDER BY z.txid, z.id) AS upto
                  FROM (SELECT o.txid, o.id,
                               pg_catalog.pg_column_size(o.payload OPERATOR(pg_catalog.||) '{}'::jsonb)::bigint AS size
                          FROM ae_events.outbox AS o
                         WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                           AND o.txid OPERATOR(pg_catalog.<) below_txid
                           AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                           AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                         ORDER BY o.txid, o.id
                         LIMIT remaining) AS z) AS s
         WHERE s.upto OPERATOR(pg_catalog.-) s.size OPERATOR(pg_catalog.<) remaining_bytes
         ORDER BY s.txid DESC, s.id DESC
         LIMIT 1;
        CONTINUE WHEN end_id IS NULL;
        cap_txid := NULL;
        cap_id := NULL;
        -- An event of the batch whose instance's previous event lies after the batch: extend
        -- the batch to it if it is final, else end the batch before that event (cap).
        LOOP
            changed := false;
            FOR ahead IN
                SELECT b.txid AS b_txid, b.id AS b_id, p.txid AS p_txid, p.id AS p_id
                  FROM ae_events.outbox AS b
                 CROSS JOIN LATERAL (
                       SELECT p.txid, p.id FROM ae_events.outbox AS p
                        WHERE p.aggregate_type OPERATOR(pg_catalog.=) b.aggregate_type
                          AND p.aggregate_id OPERATOR(pg_catalog.=) b.aggregate_id
                          AND p.id OPERATOR(pg_catalog.<) b.id
                          AND p.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                        ORDER BY p.id DESC
                        LIMIT 1) AS p
                 WHERE (b.txid, b.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                   AND (b.txid, b.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
                   -- Plain bounds too: the planner estimates these (not the row comparisons)
                   -- and so scans the index range, not the outbox.
                   AND b.txid OPERATOR(pg_catalog.>=) from_txid
                   AND b.txid OPERATOR(pg_catalog.<=) end_txid
                   AND b.txid OPERATOR(pg_catalog.<) below_txid
                   AND b.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                   AND b.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                   AND (p.txid, p.id) OPERATOR(pg_catalog.>) (end_txid, end_id)
                 ORDER BY b.txid, b.id
            LOOP
                IF ahead.p_txid OPERATOR(pg_catalog.<) below_txid
                   AND (cap_id IS NULL
                        OR (ahead.p_txid, ahead.p_id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)) THEN
                    end_txid := ahead.p_txid;
                    end_id := ahead.p_id;
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
        END LOOP;
        -- The probes of deliveries are LATERAL ... LIMIT 1 so that each is one index lookup
        -- (a sublink may be planned as a hash of all the endpoint's delivery rows).
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
                    WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
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
             ORDER BY o.txid, o.id;
        GET DIAGNOSTICS returned = ROW_COUNT;
        remaining := remaining OPERATOR(pg_catalog.-) returned;
        remaining_bytes := remaining_bytes OPERATOR(pg_catalog.-) batch_bytes;
        -- A capped epoch stops here: what follows waits for the capped event.
        EXIT WHEN remaining OPERATOR(pg_catalog.<=) 0 OR remaining_bytes OPERATOR(pg_catalog.<=) 0
                  OR cap_id IS NOT NULL;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION ae_events.relay_record(endpoint text, relay text,
                                       outbox_ids bigint[], aggregate_ids bigint[],
                                       statuses text[], attempts integer[],
                                       attempted_at timestamptz[], http_statuses integer[],
                                       errors text[], next_attempt_at timestamptz[],
                                       new_cursor_epoch bigint, new_cursor_txid xid8,
                                       new_cursor_id bigint, gone_reason text,
                                       endpoint_id bigint)
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
    last_failed_error text;
    last_delivered_status integer;
    header record;
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
    -- Header values of 6 characters or more (shorter ones are no secrets, and would mask
    -- ordinary words), longest first so that one inside another is masked whole. Only when
    -- there is an error text: a batch of deliveries has none, and is the common case.
    IF EXISTS (SELECT FROM pg_catalog.unnest(errors) AS x (e) WHERE x.e IS NOT NULL) THEN
        FOR header IN SELECT h.value FROM pg_catalog.jsonb_each_text(held.headers) AS h
                       WHERE pg_catalog.length(h.value) OPERATOR(pg_catalog.>=) 6
                       ORDER BY pg_catalog.length(h.value) DESC LOOP
            errors := ARRAY(SELECT pg_catalog.replace(x.e, header.value, '[redacted]')
                              FROM pg_catalog.unnest(errors) WITH ORDINALITY AS x (e, n) ORDER BY x.n);
        END LOOP;
    END IF;
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
    INSERT INTO ae_events.deliveries AS d
           (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
            last_status, last_error, next_attempt_at, delivered_at, dead_at)
    SELECT held.endpoint, r.outbox_id, r.aggregate_id, r.status, r.attempts, r.attempted_at,
           r.attempted_at, r.http_status, pg_catalog.left(r.error, 2000),
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(aggregate_ids),
                      pg_catalog.unnest(statuses), pg_catalog.unnest(attempts),
                      pg_catalog.unnest(attempted_at), pg_catalog.unnest(http_statuses),
                      pg_catalog.unnest(errors), pg_catalog.unnest(next_attempt_at))
           AS r (outbox_id, aggregate_id, status, attempts, attempted_at, http_status, error,
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
    -- failing_since: cleared by a delivery, else set by the first failure; failed_attempts the
    -- same, counting attempts. The latest failed and delivered attempts say why, for alerts.
    SELECT bool_or(s OPERATOR(pg_catalog.=) 'delivered'),
           min(t) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL),
           pg_catalog.count(*) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL),
           (pg_catalog.array_agg(h ORDER BY t DESC, n DESC)
                FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL))[1],
           (pg_catalog.array_agg(x ORDER BY t DESC, n DESC)
                FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL))[1],
           (pg_catalog.array_agg(h ORDER BY t DESC, n DESC)
                FILTER (WHERE s OPERATOR(pg_catalog.=) 'delivered'))[1]
      INTO any_delivered, first_failure, failures, last_failed_status, last_failed_error,
           last_delivered_status
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at),
                      pg_catalog.unnest(http_statuses), pg_catalog.unnest(errors))
           WITH ORDINALITY AS r (s, t, h, x, n);
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

-- (End of the personal data part, continued.)



-- Issue 24, part 1 (operational events: ae.endpoint.failing / recovered / disabled,
-- ae.delivery.dead_lettered; sql/src/alerts.sql, sql/src/endpoints.sql): the endpoints' alert
-- settings and state, the alert functions, and the endpoint functions that write them.
ALTER TABLE ae_events.endpoints
    ADD COLUMN alert_after_attempts integer NOT NULL DEFAULT 3,
    ADD COLUMN alert_after interval NOT NULL DEFAULT '5 minutes',
    ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN alert_failing_since timestamptz,
    ADD COLUMN alert_version integer NOT NULL DEFAULT 0;

-- The URL as alerts show it: no user info, no query or fragment (either may carry a credential).
CREATE FUNCTION ae_events._alert_url(url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.regexp_replace(
               pg_catalog.regexp_replace(url, '^([A-Za-z]+://)[^/?#]*@', '\1'),
               '[?#].*$', '')
$$;

-- A text cut to at most max_bytes bytes of UTF-8, on a character boundary.
CREATE FUNCTION ae_events._cut_bytes(value text, max_bytes integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cut text := pg_catalog.left(value, max_bytes);
BEGIN
    -- A character is 1 to 4 bytes: each pass drops at least a quarter of the excess.
    WHILE pg_catalog.octet_length(cut) OPERATOR(pg_catalog.>) max_bytes LOOP
        cut := pg_catalog.left(cut, pg_catalog.length(cut) OPERATOR(pg_catalog.-)
                   ((pg_catalog.octet_length(cut) OPERATOR(pg_catalog.-) max_bytes OPERATOR(pg_catalog.+) 3) OPERATOR(pg_catalog./) 4));
    END LOOP;
    RETURN cut;
END
$$;

-- A timestamp as the payloads write them: RFC 3339 in UTC with Z.
CREATE FUNCTION ae_events._alert_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- Write one operational event about an endpoint (its row locked by the caller, its state
-- already changed): the common fields, then `extra` (the key's own). last_status / last_error:
-- the attempt that says why; NULL for both, in a failing or disabled event, takes the endpoint's
-- latest failed attempt that is still pending.
CREATE FUNCTION ae_events._write_alert(endpoint_id bigint, subscription_key text, reason text,
                                       last_status integer, last_error text, extra jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    about ae_events.endpoints;
    at timestamptz := pg_catalog.now();
    backlog bigint;
    since timestamptz;
BEGIN
    UPDATE ae_events.endpoints AS e
       SET alert_version = e.alert_version OPERATOR(pg_catalog.+) 1
     WHERE e.endpoint_id OPERATOR(pg_catalog.=) _write_alert.endpoint_id
    RETURNING e.* INTO about;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Pending rows are few (deliveries_due_idx): what waits for the endpoint.
    SELECT pg_catalog.count(*) INTO backlog FROM ae_events.deliveries AS d
     WHERE d.endpoint OPERATOR(pg_catalog.=) about.endpoint
       AND d.status OPERATOR(pg_catalog.=) 'pending';
    IF last_status IS NULL AND last_error IS NULL
       AND subscription_key IN ('ae.endpoint.failing', 'ae.endpoint.disabled') THEN
        SELECT d.last_status, d.last_error INTO last_status, last_error
          FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) about.endpoint
           AND d.status OPERATOR(pg_catalog.=) 'pending'
           AND d.last_attempt_at IS NOT NULL
         ORDER BY d.last_attempt_at DESC
         LIMIT 1;
    END IF;
    -- A recovered endpoint's failing period is the one its failing event announced.
    since := coalesce(about.failing_since, about.alert_failing_since);
    PERFORM ae_events._ensure_epoch();
    INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                  aggregate_id, snapshot_version, payload, occurred_at, txid)
    VALUES (pg_catalog.gen_random_uuid(), subscription_key,
            pg_catalog.translate(subscription_key, '.', '_'), 'endpoint', about.endpoint_id,
            about.alert_version,
            pg_catalog.jsonb_build_object(
                'endpoint', about.endpoint,
                'endpoint_id', about.endpoint_id,
                'url', ae_events._alert_url(about.url),
                'at', ae_events._alert_time(at),
                'reason', reason,
                'last_status', last_status,
                'last_error', ae_events._cut_bytes(last_error, 512),
                'failing_since', ae_events._alert_time(since),
                'failing_seconds', pg_catalog.round(EXTRACT(epoch FROM at OPERATOR(pg_catalog.-) since), 3),
                'failed_attempts', about.failed_attempts,
                'backlog', backlog)
                OPERATOR(pg_catalog.||) coalesce(extra, '{}'),
            at, pg_catalog.pg_current_xact_id());
END
$$;

-- After relay_record wrote a batch's outcomes (the endpoint locked, failing_since and
-- failed_attempts updated): the failing event when the endpoint has failed for alert_after
-- (alert_after_attempts attempts in a row, or alert_after since its first failure) and its
-- failing period was not announced yet; the recovered event when an announced period ends.
CREATE FUNCTION ae_events._alert_after_record(about ae_events.endpoints, delivered boolean,
                                              delivered_status integer, last_status integer,
                                              last_error text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF delivered THEN
        IF about.alert_failing_since IS NOT NULL THEN
            PERFORM ae_events._write_alert(about.endpoint_id, 'ae.endpoint.recovered',
                                           'delivered again', delivered_status, NULL, '{}');
            UPDATE ae_events.endpoints AS e SET alert_failing_since = NULL
             WHERE e.endpoint_id OPERATOR(pg_catalog.=) about.endpoint_id;
        END IF;
    ELSIF about.failing_since IS NOT NULL AND about.alert_failing_since IS NULL
          AND (about.failed_attempts OPERATOR(pg_catalog.>=) about.alert_after_attempts
               OR pg_catalog.now() OPERATOR(pg_catalog.-) about.failing_since
                  OPERATOR(pg_catalog.>=) about.alert_after) THEN
        UPDATE ae_events.endpoints AS e SET alert_failing_since = about.failing_since
         WHERE e.endpoint_id OPERATOR(pg_catalog.=) about.endpoint_id;
        PERFORM ae_events._write_alert(
            about.endpoint_id, 'ae.endpoint.failing',
            CASE WHEN about.failed_attempts OPERATOR(pg_catalog.>=) about.alert_after_attempts
                 THEN pg_catalog.format('%s attempts failed in a row', about.failed_attempts)
                 ELSE pg_catalog.format('every attempt failed for %s', pg_catalog.date_trunc('second', pg_catalog.now() OPERATOR(pg_catalog.-) about.failing_since))
            END,
            last_status, last_error, '{}');
    END IF;
END
$$;

-- The dead_lettered events of a batch: one per event newly dead for the endpoint (ids), with the
-- row relay_record just wrote. Operational events that die get none: their endpoint's failing
-- and disabled events tell it, and one would otherwise answer another between alert endpoints.
CREATE FUNCTION ae_events._alert_dead_letters(about ae_events.endpoints, ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dead record;
BEGIN
    FOR dead IN SELECT o.event_id, o.subscription_key, o.aggregate_id, d.attempts,
                       d.last_status, d.last_error
                  FROM ae_events.deliveries AS d
                  JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
                 WHERE d.endpoint OPERATOR(pg_catalog.=) about.endpoint
                   AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
                   AND d.status OPERATOR(pg_catalog.=) 'dead'
                   AND o.aggregate_type OPERATOR(pg_catalog.<>) 'endpoint'
                 ORDER BY d.outbox_id LOOP
        PERFORM ae_events._write_alert(
            about.endpoint_id, 'ae.delivery.dead_lettered',
            pg_catalog.format('event %s failed %s attempts: dead-lettered', dead.event_id, dead.attempts),
            dead.last_status, dead.last_error,
            pg_catalog.jsonb_build_object('event_id', dead.event_id,
                                          'subscription_key', dead.subscription_key,
                                          'instance_id', dead.aggregate_id,
                                          'attempts', dead.attempts));
    END LOOP;
END
$$;

-- Called by relay_lease: endpoints of this relay that have failed for alert_after by the clock
-- (their retries may be far apart) with a pending delivery, not announced yet. Skips an endpoint
-- whose row is locked (its relay_record decides then).
CREATE FUNCTION ae_events._alert_overdue(relay text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    overdue ae_events.endpoints;
BEGIN
    FOR overdue IN SELECT * FROM ae_events.endpoints AS e
                    WHERE e.relay OPERATOR(pg_catalog.=) _alert_overdue.relay
                      AND e.enabled
                      AND e.alert_failing_since IS NULL
                      AND e.failing_since IS NOT NULL
                      AND pg_catalog.now() OPERATOR(pg_catalog.-) e.failing_since
                          OPERATOR(pg_catalog.>=) e.alert_after
                      AND EXISTS (SELECT FROM ae_events.deliveries AS d
                                   WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
                                     AND d.status OPERATOR(pg_catalog.=) 'pending')
                      FOR UPDATE SKIP LOCKED LOOP
        PERFORM ae_events._alert_after_record(overdue, false, NULL, NULL, NULL);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION ae_events._alert_url(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._cut_bytes(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._alert_time(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._write_alert(bigint, text, text, integer, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._alert_after_record(ae_events.endpoints, boolean, integer, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._alert_dead_letters(ae_events.endpoints, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._alert_overdue(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ae_events._check_endpoint_settings(
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

DROP FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision);

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
                                         alert_after_attempts integer DEFAULT NULL)
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
END
$$;

REVOKE ALL ON FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision, interval, integer) FROM PUBLIC;

DROP FUNCTION ae_events._disable(text, text);

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

REVOKE ALL ON FUNCTION ae_events._disable(text, text, text, integer, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ae_events.send_test_event(endpoint text,
                                          subscription_key text DEFAULT 'ae.test_instance.created')
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints;
    example jsonb;
    waiting bigint;
    new_id uuid := pg_catalog.gen_random_uuid();
BEGIN
    -- Not locked (unlike _endpoint_for_update): a caller's open transaction must not hold up
    -- relay_record, which locks the row. The same errors.
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO target FROM ae_events.endpoints AS e
     WHERE e.endpoint OPERATOR(pg_catalog.=) send_test_event.endpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no endpoint %', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT endpoint FROM ae_events.endpoint_status; lists them.';
    END IF;
    IF subscription_key IS NULL
       OR subscription_key NOT IN ('ae.test_instance.created', 'ae.test_instance.updated',
                                   'ae.endpoint.failing', 'ae.endpoint.recovered',
                                   'ae.endpoint.disabled', 'ae.delivery.dead_lettered') THEN
        RAISE EXCEPTION 'ae_events: there is no example for subscription key %',
                coalesce(pg_catalog.quote_literal(subscription_key), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The keys are ae.test_instance.created, ae.test_instance.updated and the operational ae.endpoint.failing, ae.endpoint.recovered, ae.endpoint.disabled, ae.delivery.dead_lettered.';
    END IF;
    -- NULL keys: the ae.test_instance.* keys (endpoints.sql, _endpoint_matches).
    IF NOT ae_events._endpoint_matches(target.subscription_keys, NULL, subscription_key, NULL) THEN
        RAISE EXCEPTION 'ae_events: endpoint % does not subscribe to %',
                pg_catalog.quote_literal(endpoint), subscription_key
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = coalesce('Its keys: ' OPERATOR(pg_catalog.||) pg_catalog.array_to_string(target.subscription_keys, ', '),
                                  'Its keys are NULL: the ae.test_instance.* keys.');
    END IF;
    example := CASE WHEN subscription_key LIKE 'ae.test\_instance.%' THEN ae_events._example_payload()
                    ELSE ae_events._event_schema(subscription_key, '{}', '{}') OPERATOR(pg_catalog.#>) '{examples,0}' END;
    IF NOT target.enabled THEN
        RAISE EXCEPTION 'ae_events: endpoint % is disabled: no relay would send the test event',
                pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = coalesce('Disabled: ' OPERATOR(pg_catalog.||) target.disabled_reason, ''),
                  HINT = 'Enable it with ae_events.enable_endpoint first.';
    END IF;
    -- One call per endpoint at a time counts and inserts, so that the bound holds; the lock
    -- (the table's oid and the endpoint's id) is taken by nothing else of the extension.
    PERFORM pg_catalog.pg_advisory_xact_lock('ae_events.test_events'::pg_catalog.regclass::pg_catalog.oid::integer,
                                             (target.endpoint_id OPERATOR(pg_catalog.%) 2147483647)::integer);
    SELECT pg_catalog.count(*) INTO waiting FROM ae_events.test_events AS t
     WHERE t.endpoint_id OPERATOR(pg_catalog.=) target.endpoint_id
       AND t.status OPERATOR(pg_catalog.=) 'pending';
    IF waiting OPERATOR(pg_catalog.>=) 10 THEN
        RAISE EXCEPTION 'ae_events: endpoint % has 10 test events waiting already', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Wait until they are delivered or dead-lettered: SELECT * FROM ae_events.delivery_status WHERE is_test AND status = ''pending''.';
    END IF;
    INSERT INTO ae_events.test_events (endpoint_id, webhook_id, subscription_key, event_type,
                                       aggregate_id, snapshot_version, payload, requested_by)
    VALUES (target.endpoint_id, new_id, subscription_key,
            pg_catalog.translate(subscription_key, '.', '_'),
            coalesce(example OPERATOR(pg_catalog.->>) 'id', example OPERATOR(pg_catalog.->>) 'endpoint_id')::bigint,
            CASE WHEN subscription_key OPERATOR(pg_catalog.=) 'ae.test_instance.updated' THEN 2 ELSE 1 END,
            example, ae_events._calling_role());
    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION ae_events.enable_endpoint(endpoint text) RETURNS void
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

CREATE OR REPLACE FUNCTION ae_events.disable_endpoint(endpoint text, reason text DEFAULT NULL) RETURNS void
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

CREATE OR REPLACE FUNCTION ae_events._endpoint_matches(subscription_keys text[], filter jsonpath,
                                            subscription_key text, payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (CASE WHEN subscription_keys IS NULL THEN subscription_key LIKE 'ae.test\_instance.%'
                 ELSE subscription_key OPERATOR(pg_catalog.=) ANY (subscription_keys) END)
       AND (filter IS NULL OR coalesce(pg_catalog.jsonb_path_match(payload, filter, '{}', true), false))
$$;

CREATE OR REPLACE FUNCTION ae_events.relay_lease(relay text, lease interval)
RETURNS TABLE (endpoint text, url text, headers jsonb, timeout_ms bigint,
               retry_schedule_ms bigint[], retry_jitter double precision, max_in_flight integer,
               secrets text[], cursor_epoch bigint, cursor_txid xid8, cursor_id bigint,
               rate_limit double precision, endpoint_id bigint)
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
           h.cursor_epoch, h.cursor_txid, h.cursor_id, h.rate_limit, h.endpoint_id
      FROM ae_events.endpoints AS h
     WHERE h.endpoint OPERATOR(pg_catalog.=) ANY (kept OPERATOR(pg_catalog.||) taken)
     ORDER BY h.endpoint;
END
$$;

CREATE OR REPLACE FUNCTION ae_events.relay_status(relay text)
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

-- Performance round 3, the relay (issue 26 part 4): a payload's uncompressed size read from
-- its header, for relay_fetch's byte bound.
CREATE FUNCTION ae_events._payload_size(payload jsonb) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'payload_size_wrapper';
REVOKE ALL ON FUNCTION ae_events._payload_size(jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ae_events.relay_fetch(endpoint text, relay text, after_epoch bigint,
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

CREATE OR REPLACE FUNCTION ae_events.relay_record(endpoint text, relay text,
                                       outbox_ids bigint[], aggregate_ids bigint[],
                                       statuses text[], attempts integer[],
                                       attempted_at timestamptz[], http_statuses integer[],
                                       errors text[], next_attempt_at timestamptz[],
                                       new_cursor_epoch bigint, new_cursor_txid xid8,
                                       new_cursor_id bigint, gone_reason text,
                                       endpoint_id bigint)
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
    header record;
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
    -- Header values of 6 characters or more (shorter ones are no secrets, and would mask
    -- ordinary words), longest first so that one inside another is masked whole. Only when
    -- there is an error text: a batch of deliveries has none, and is the common case.
    IF EXISTS (SELECT FROM pg_catalog.unnest(errors) AS x (e) WHERE x.e IS NOT NULL) THEN
        FOR header IN SELECT h.value FROM pg_catalog.jsonb_each_text(held.headers) AS h
                       WHERE pg_catalog.length(h.value) OPERATOR(pg_catalog.>=) 6
                       ORDER BY pg_catalog.length(h.value) DESC LOOP
            errors := ARRAY(SELECT pg_catalog.replace(x.e, header.value, '[redacted]')
                              FROM pg_catalog.unnest(errors) WITH ORDINALITY AS x (e, n) ORDER BY x.n);
        END LOOP;
    END IF;
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
    INSERT INTO ae_events.deliveries AS d
           (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
            last_status, last_error, next_attempt_at, delivered_at, dead_at)
    SELECT held.endpoint, r.outbox_id, r.aggregate_id, r.status, r.attempts, r.attempted_at,
           r.attempted_at, r.http_status, pg_catalog.left(r.error, 2000),
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(aggregate_ids),
                      pg_catalog.unnest(statuses), pg_catalog.unnest(attempts),
                      pg_catalog.unnest(attempted_at), pg_catalog.unnest(http_statuses),
                      pg_catalog.unnest(errors), pg_catalog.unnest(next_attempt_at))
           AS r (outbox_id, aggregate_id, status, attempts, attempted_at, http_status, error,
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
    -- failing_since: cleared by a delivery, else set by the first failure; failed_attempts the
    -- same, counting attempts.
    SELECT bool_or(s OPERATOR(pg_catalog.=) 'delivered'),
           min(t) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL),
           pg_catalog.count(*) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL)
      INTO any_delivered, first_failure, failures
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t);
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

CREATE OR REPLACE VIEW ae_events.endpoint_status AS
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
       e.alert_failing_since
  FROM ae_events.endpoints AS e;

-- (End of the operational events part.)

-- relay_record and relay_record_tests mask header values in error texts with one function
-- (sql/src/endpoints.sql, sql/src/test_events.sql).
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

CREATE OR REPLACE FUNCTION ae_events.relay_record(endpoint text, relay text,
                                       outbox_ids bigint[], aggregate_ids bigint[],
                                       statuses text[], attempts integer[],
                                       attempted_at timestamptz[], http_statuses integer[],
                                       errors text[], next_attempt_at timestamptz[],
                                       new_cursor_epoch bigint, new_cursor_txid xid8,
                                       new_cursor_id bigint, gone_reason text,
                                       endpoint_id bigint)
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
    INSERT INTO ae_events.deliveries AS d
           (endpoint, outbox_id, aggregate_id, status, attempts, first_attempt_at, last_attempt_at,
            last_status, last_error, next_attempt_at, delivered_at, dead_at)
    SELECT held.endpoint, r.outbox_id, r.aggregate_id, r.status, r.attempts, r.attempted_at,
           r.attempted_at, r.http_status, pg_catalog.left(r.error, 2000),
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending' THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(aggregate_ids),
                      pg_catalog.unnest(statuses), pg_catalog.unnest(attempts),
                      pg_catalog.unnest(attempted_at), pg_catalog.unnest(http_statuses),
                      pg_catalog.unnest(errors), pg_catalog.unnest(next_attempt_at))
           AS r (outbox_id, aggregate_id, status, attempts, attempted_at, http_status, error,
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
    -- failing_since: cleared by a delivery, else set by the first failure; failed_attempts the
    -- same, counting attempts.
    SELECT bool_or(s OPERATOR(pg_catalog.=) 'delivered'),
           min(t) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL),
           pg_catalog.count(*) FILTER (WHERE s OPERATOR(pg_catalog.<>) 'delivered' AND t IS NOT NULL)
      INTO any_delivered, first_failure, failures
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t);
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

CREATE OR REPLACE FUNCTION ae_events.relay_record_tests(endpoint text, relay text, endpoint_id bigint,
                                             ids bigint[], statuses text[], attempts integer[],
                                             attempted_at timestamptz[], http_statuses integer[],
                                             errors text[], next_attempt_at timestamptz[])
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
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
     WHERE e.endpoint OPERATOR(pg_catalog.=) relay_record_tests.endpoint
       AND e.endpoint_id OPERATOR(pg_catalog.=) relay_record_tests.endpoint_id
       AND e.relay OPERATOR(pg_catalog.=) relay_record_tests.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.enabled
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    errors := ae_events._masked_errors(errors, held.headers);
    UPDATE ae_events.test_events AS t
       SET status = r.status,
           attempts = r.attempts,
           first_attempt_at = coalesce(t.first_attempt_at, r.attempted_at),
           last_attempt_at = coalesce(r.attempted_at, t.last_attempt_at),
           last_status = r.http_status,
           last_error = pg_catalog.left(r.error, 2000),
           next_attempt_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending'
                                  THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           delivered_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           dead_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      -- The parameters qualified: unqualified, attempts and the like are the table's columns.
      FROM ROWS FROM (pg_catalog.unnest(relay_record_tests.ids),
                      pg_catalog.unnest(relay_record_tests.statuses),
                      pg_catalog.unnest(relay_record_tests.attempts),
                      pg_catalog.unnest(relay_record_tests.attempted_at),
                      pg_catalog.unnest(relay_record_tests.http_statuses),
                      pg_catalog.unnest(relay_record_tests.errors),
                      pg_catalog.unnest(relay_record_tests.next_attempt_at))
           AS r (id, status, attempts, attempted_at, http_status, error, next_attempt_at)
     WHERE t.id OPERATOR(pg_catalog.=) r.id
       AND t.endpoint_id OPERATOR(pg_catalog.=) held.endpoint_id
       AND r.status IN ('pending', 'delivered', 'dead');
    RETURN true;
END
$$;

-- Egress (issue 25), part S: per-endpoint egress settings (alter_endpoint's proxy, client_certificate,
-- client_key, oauth2_*) in ae_events.endpoint_egress (the relay role and the DBA only), handed to
-- the relay by relay_lease; ed25519 signing keys (rotate_endpoint_secret's algorithm).

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

COMMENT ON TABLE ae_events.endpoint_secrets IS
    'ae_events: signing secrets (whsec_..., ed25519 whsk_...), readable by ae_events_relay and the DBA only';

SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoint_egress', '');

CREATE FUNCTION ae_events._check_client_certificate(certificate text, key text) RETURNS bigint
VOLATILE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_client_certificate_wrapper';
CREATE FUNCTION ae_events._ed25519_public_key(seed bytea) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'ed25519_public_key_wrapper';
REVOKE ALL ON FUNCTION ae_events._check_client_certificate(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._ed25519_public_key(bytea) FROM PUBLIC;

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

REVOKE ALL ON FUNCTION ae_events._new_ed25519_secret() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._set_endpoint_egress(text, text, text, text, text, text, text, text) FROM PUBLIC;
DROP FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision, interval, integer);

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

REVOKE ALL ON FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision, interval, integer, text, text, text, text, text, text, text) FROM PUBLIC;
DROP FUNCTION ae_events.rotate_endpoint_secret(text, interval, text);

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

REVOKE ALL ON FUNCTION ae_events.rotate_endpoint_secret(text, interval, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ae_events.drop_endpoint(endpoint text) RETURNS boolean
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

DROP FUNCTION ae_events.relay_lease(text, interval);

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

CREATE OR REPLACE VIEW ae_events.endpoint_status AS
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

REVOKE ALL ON FUNCTION ae_events.relay_lease(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_lease(text, interval) TO ae_events_relay;
GRANT SELECT ON ae_events.endpoint_egress TO ae_events_relay;
-- (End of egress part S.)

-- Console SQL (issue 22): the attempt log, per-endpoint counts and what the console reads.
-- relay_record and relay_record_tests take each attempt's duration (an optional trailing array)
-- and write the attempt log and the counts; prune() and erase_candidate() treat the log as the
-- deliveries; the console's views and functions (sql/src/console.sql, docs/console.md).
-- The operator console's SQL (shared/contract/console.md, docs/console.md "What the pages
-- read"): the attempt log, per-endpoint counts over time, and the views and functions the pages
-- read. The console runs nothing else: every page is one of these, read as the signed-in role
-- (ae_events_reader, or ae_events_operator, which is made a reader too), and every action is a
-- function of the API granted to ae_events_operator. None of them shows a secret or a header value.

-- One row per FAILED attempt (a delivered attempt's time is on its delivery row, so success
-- writes nothing here). The newest 20 per delivery are kept; they go with their delivery
-- (prune, drop_endpoint), and erase_candidate erases their error texts as it does the
-- deliveries' (they may echo the payload). outbox_id: an event of the outbox; test_event_id: a
-- test event of send_test_event instead. No foreign keys, as for deliveries.
CREATE TABLE ae_events.delivery_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY,
    endpoint text NOT NULL,
    outbox_id bigint,
    test_event_id bigint,
    -- The attempt's number as the relay counts it (1 = first; redeliver starts over).
    attempt integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    -- NULL: not reported (a relay older than 0.7.1's console).
    duration_ms integer,
    -- failed: retried later; dead: the attempt that dead-lettered the delivery.
    outcome text NOT NULL CHECK (outcome IN ('failed', 'dead')),
    -- NULL: no response (the error says why: connection, timeout, proxy, token endpoint).
    http_status integer,
    -- As the delivery's last_error: the endpoint's header values masked, at most 2000 characters.
    error text,
    CHECK ((outbox_id IS NULL) OPERATOR(pg_catalog.<>) (test_event_id IS NULL))
);

COMMENT ON TABLE ae_events.delivery_attempts IS
    'ae_events: failed delivery attempts one by one (the newest 20 per delivery), for the console (read ae_events.console_attempts)';

-- A delivery's attempts (the bound, the event page, prune); an endpoint's newest failure.
CREATE INDEX delivery_attempts_delivery_idx ON ae_events.delivery_attempts (endpoint, outbox_id, id)
    WHERE outbox_id IS NOT NULL;
CREATE INDEX delivery_attempts_test_idx ON ae_events.delivery_attempts (test_event_id, id)
    WHERE test_event_id IS NOT NULL;
CREATE INDEX delivery_attempts_endpoint_idx ON ae_events.delivery_attempts (endpoint, id);

-- Per endpoint and 10-minute bucket (UTC): deliveries, failed attempts, dead letters and the
-- last delivery's time. relay_record adds to its bucket once per call (not per event), so that
-- the console's counts and charts read at most 7 days x 144 rows per endpoint, whatever the
-- number of deliveries. prune() deletes buckets older than 7 days.
CREATE TABLE ae_events.endpoint_activity (
    endpoint text NOT NULL,
    bucket_start timestamptz NOT NULL,
    delivered bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    dead bigint NOT NULL DEFAULT 0,
    last_delivered_at timestamptz,
    PRIMARY KEY (endpoint, bucket_start)
);

COMMENT ON TABLE ae_events.endpoint_activity IS
    'ae_events: per endpoint and 10-minute bucket its deliveries, failed attempts and dead letters (kept 7 days), for the console (read ae_events.console_activity)';

SELECT pg_catalog.pg_extension_config_dump('ae_events.delivery_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.delivery_attempts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.endpoint_activity', '');

-- An endpoint's oldest pending delivery and its dead letters, in event order: few rows (the
-- success path adds no entry to either), read by the console's counts and pages.
CREATE INDEX deliveries_pending_idx ON ae_events.deliveries (endpoint, outbox_id)
    WHERE status OPERATOR(pg_catalog.=) 'pending';
CREATE INDEX deliveries_dead_idx ON ae_events.deliveries (endpoint, outbox_id)
    WHERE status OPERATOR(pg_catalog.=) 'dead';

-- relay_record's part: the batch's counts into the endpoint's bucket(s), and each failed attempt
-- into the log with the error text as just stored on its delivery (masked, and '[erased]' for an
-- erased candidate's event: the deliveries' trigger has run), then the log's bound.
CREATE FUNCTION ae_events._console_record(endpoint text, outbox_ids bigint[], statuses text[],
                                          attempts integer[], attempted_at timestamptz[],
                                          http_statuses integer[], durations_ms integer[],
                                          failures integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO ae_events.endpoint_activity AS a
           (endpoint, bucket_start, delivered, failed, dead, last_delivered_at)
    SELECT _console_record.endpoint,
           pg_catalog.date_bin('10 minutes', r.t, '2000-01-01 00:00:00+00'),
           pg_catalog.count(*) FILTER (WHERE r.s OPERATOR(pg_catalog.=) 'delivered'),
           pg_catalog.count(*) FILTER (WHERE r.s OPERATOR(pg_catalog.<>) 'delivered'),
           pg_catalog.count(*) FILTER (WHERE r.s OPERATOR(pg_catalog.=) 'dead'),
           pg_catalog.max(r.t) FILTER (WHERE r.s OPERATOR(pg_catalog.=) 'delivered')
      FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t)
     WHERE r.t IS NOT NULL
     GROUP BY 2
    ON CONFLICT ON CONSTRAINT endpoint_activity_pkey DO UPDATE
       SET delivered = a.delivered OPERATOR(pg_catalog.+) excluded.delivered,
           failed = a.failed OPERATOR(pg_catalog.+) excluded.failed,
           dead = a.dead OPERATOR(pg_catalog.+) excluded.dead,
           last_delivered_at = GREATEST(a.last_delivered_at, excluded.last_delivered_at);
    IF failures IS NULL OR failures OPERATOR(pg_catalog.=) 0 THEN
        RETURN;
    END IF;
    INSERT INTO ae_events.delivery_attempts
           (endpoint, outbox_id, attempt, attempted_at, duration_ms, outcome, http_status, error)
    SELECT _console_record.endpoint, r.outbox_id, r.attempt, r.t,
           LEAST(GREATEST(r.duration_ms, 0), 2147483647),
           CASE WHEN r.s OPERATOR(pg_catalog.=) 'dead' THEN 'dead' ELSE 'failed' END,
           r.http_status, d.last_error
      FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(statuses),
                      pg_catalog.unnest(attempts), pg_catalog.unnest(attempted_at),
                      pg_catalog.unnest(http_statuses), pg_catalog.unnest(durations_ms))
           AS r (outbox_id, s, attempt, t, http_status, duration_ms)
      JOIN ae_events.deliveries AS d
        ON d.endpoint OPERATOR(pg_catalog.=) _console_record.endpoint
       AND d.outbox_id OPERATOR(pg_catalog.=) r.outbox_id
     WHERE r.s OPERATOR(pg_catalog.<>) 'delivered' AND r.t IS NOT NULL AND r.outbox_id IS NOT NULL;
    DELETE FROM ae_events.delivery_attempts AS a
     USING (SELECT DISTINCT r.outbox_id
              FROM ROWS FROM (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(statuses),
                              pg_catalog.unnest(attempted_at)) AS r (outbox_id, s, t)
             WHERE r.s OPERATOR(pg_catalog.<>) 'delivered' AND r.t IS NOT NULL) AS f
     WHERE a.endpoint OPERATOR(pg_catalog.=) _console_record.endpoint
       AND a.outbox_id OPERATOR(pg_catalog.=) f.outbox_id
       AND a.id OPERATOR(pg_catalog.<) (
               SELECT b.id FROM ae_events.delivery_attempts AS b
                WHERE b.endpoint OPERATOR(pg_catalog.=) _console_record.endpoint
                  AND b.outbox_id OPERATOR(pg_catalog.=) f.outbox_id
                ORDER BY b.id DESC
                OFFSET 19 LIMIT 1);
END
$$;

-- relay_record_tests' part: a test event's failed attempts into the log (bounded the same way).
-- Test events are not counted in endpoint_activity: the counts are the endpoint's real traffic.
CREATE FUNCTION ae_events._console_record_tests(endpoint text, ids bigint[], statuses text[],
                                                attempts integer[], attempted_at timestamptz[],
                                                http_statuses integer[], errors text[],
                                                durations_ms integer[], endpoint_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM ROWS FROM (pg_catalog.unnest(statuses), pg_catalog.unnest(attempted_at)) AS r (s, t)
                    WHERE r.s OPERATOR(pg_catalog.<>) 'delivered' AND r.t IS NOT NULL) THEN
        RETURN;
    END IF;
    INSERT INTO ae_events.delivery_attempts
           (endpoint, test_event_id, attempt, attempted_at, duration_ms, outcome, http_status, error)
    SELECT _console_record_tests.endpoint, r.id, r.attempt, r.t,
           LEAST(GREATEST(r.duration_ms, 0), 2147483647),
           CASE WHEN r.s OPERATOR(pg_catalog.=) 'dead' THEN 'dead' ELSE 'failed' END,
           r.http_status, pg_catalog.left(r.error, 2000)
      FROM ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(statuses),
                      pg_catalog.unnest(attempts), pg_catalog.unnest(attempted_at),
                      pg_catalog.unnest(http_statuses), pg_catalog.unnest(errors),
                      pg_catalog.unnest(durations_ms))
           AS r (id, s, attempt, t, http_status, error, duration_ms)
     WHERE r.s IN ('pending', 'dead') AND r.t IS NOT NULL
       AND EXISTS (SELECT FROM ae_events.test_events AS x
                    WHERE x.id OPERATOR(pg_catalog.=) r.id
                      AND x.endpoint_id OPERATOR(pg_catalog.=) _console_record_tests.endpoint_id);
    DELETE FROM ae_events.delivery_attempts AS a
     WHERE a.test_event_id OPERATOR(pg_catalog.=) ANY (ids)
       AND a.id OPERATOR(pg_catalog.<) (
               SELECT b.id FROM ae_events.delivery_attempts AS b
                WHERE b.test_event_id OPERATOR(pg_catalog.=) a.test_event_id
                ORDER BY b.id DESC
                OFFSET 19 LIMIT 1);
END
$$;

-- An endpoint dropped (drop_endpoint) takes its attempt log and counts with it: one created
-- again under its name starts with none.
CREATE FUNCTION ae_events._console_endpoint_dropped() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM ae_events.delivery_attempts AS a WHERE a.endpoint OPERATOR(pg_catalog.=) OLD.endpoint;
    DELETE FROM ae_events.endpoint_activity AS a WHERE a.endpoint OPERATOR(pg_catalog.=) OLD.endpoint;
    RETURN NULL;
END
$$;

CREATE TRIGGER console_endpoint_dropped AFTER DELETE ON ae_events.endpoints
    FOR EACH ROW EXECUTE FUNCTION ae_events._console_endpoint_dropped();

------------------------------------------------------------------------------------------------
-- What the pages read. Views run as their owner; functions are SECURITY DEFINER and return
-- named columns only. Each reads a bounded number of rows whatever the data size: counts stop
-- at 1000, lists take a page size, pages go by keyset (never OFFSET).

-- `/` (and the endpoint page, WHERE endpoint = ...): one row per endpoint. url without user
-- info; state healthy / failing / disabled and why; backlog = pending deliveries + events after
-- its cursor for its keys (each counted among at most 1000: 1000 reads "1000 or more");
-- last_success_at within the 7 days endpoint_activity keeps; the last hour is its 10-minute
-- buckets (60 to 70 minutes).
CREATE VIEW ae_events.console_endpoints AS
SELECT e.endpoint,
       pg_catalog.regexp_replace(e.url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1') AS url,
       CASE WHEN NOT e.enabled THEN 'disabled'
            WHEN e.failing_since IS NOT NULL THEN 'failing'
            ELSE 'healthy' END AS state,
       CASE WHEN NOT e.enabled THEN e.disabled_reason
            WHEN e.failing_since IS NOT NULL THEN
                pg_catalog.format('%s attempt%s failed in a row since %s UTC; last: %s',
                    e.failed_attempts,
                    CASE WHEN e.failed_attempts OPERATOR(pg_catalog.=) 1 THEN '' ELSE 's' END,
                    pg_catalog.to_char(e.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                    coalesce('HTTP ' OPERATOR(pg_catalog.||) lf.http_status::text,
                             pg_catalog.left(lf.error, 200), 'no response'))
       END AS state_reason,
       CASE WHEN NOT e.enabled THEN e.disabled_at ELSE e.failing_since END AS state_since,
       LEAST(pend.n OPERATOR(pg_catalog.+) ahead.events, 1000) AS backlog,
       LEAST(pend.oldest, ahead.oldest) AS oldest_undelivered_at,
       (SELECT a.last_delivered_at FROM ae_events.endpoint_activity AS a
         WHERE a.endpoint OPERATOR(pg_catalog.=) e.endpoint
           AND a.bucket_start OPERATOR(pg_catalog.>=) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days')
           AND a.last_delivered_at IS NOT NULL
         ORDER BY a.bucket_start DESC LIMIT 1) AS last_success_at,
       coalesce(hour.delivered, 0) AS delivered_last_hour,
       coalesce(hour.failed, 0) AS failed_last_hour,
       pend.n AS pending,
       (SELECT pg_catalog.count(*) FROM (
               SELECT FROM ae_events.deliveries AS d
                WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
                  AND d.status OPERATOR(pg_catalog.=) 'dead'
                LIMIT 1000) AS x) AS dead_letters,
       e.failed_attempts,
       lf.attempted_at AS last_failure_at,
       lf.http_status AS last_failure_status,
       lf.error AS last_failure_error,
       e.enabled,
       e.subscription_keys,
       e.filter::text AS filter,
       ARRAY(SELECT k FROM pg_catalog.jsonb_object_keys(e.headers) AS k ORDER BY k) AS header_names,
       e.timeout, e.retry_schedule, e.retry_jitter, e.disable_after, e.max_in_flight,
       e.rate_limit, e.alert_after, e.alert_after_attempts,
       e.relay, e.lease_expires_at, e.created_at
  FROM ae_events.endpoints AS e
 CROSS JOIN LATERAL (
       SELECT pg_catalog.count(*) AS n,
              (SELECT o.occurred_at
                 FROM ae_events.deliveries AS d
                 JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
                WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
                  AND d.status OPERATOR(pg_catalog.=) 'pending'
                ORDER BY d.outbox_id LIMIT 1) AS oldest
         FROM (SELECT FROM ae_events.deliveries AS d
                WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
                  AND d.status OPERATOR(pg_catalog.=) 'pending'
                LIMIT 1000) AS x) AS pend
 -- The first id of the epoch after the cursor's, if the outbox was restored into another cluster.
 CROSS JOIN LATERAL (
       SELECT pg_catalog.min(n.first_id) AS first_id FROM ae_events.epochs AS n
        WHERE n.first_id OPERATOR(pg_catalog.>) e.cursor_epoch) AS nx
 -- The events after the cursor among the next 1000 outbox ids (and the first 1000 of a later
 -- epoch, after a restore), counted if the endpoint's keys take them, as relay_status does.
 -- Ranges of ids, not "the first 1000 in delivery order": bounded whatever plan is chosen (a
 -- bitmap scan of everything after a cursor far behind would not be). An event of an earlier id
 -- whose transaction committed after the cursor passed is not counted (it is sent soon).
 CROSS JOIN LATERAL (
       SELECT pg_catalog.count(*) AS events, pg_catalog.min(o.occurred_at) AS oldest
         FROM ae_events.outbox AS o
        WHERE ((o.id OPERATOR(pg_catalog.>) e.cursor_id
                AND o.id OPERATOR(pg_catalog.<=) (e.cursor_id OPERATOR(pg_catalog.+) 1000)
                AND o.id OPERATOR(pg_catalog.>=) e.cursor_epoch
                AND (o.txid, o.id) OPERATOR(pg_catalog.>) (e.cursor_txid, e.cursor_id))
               OR (o.id OPERATOR(pg_catalog.>=) nx.first_id
                   AND o.id OPERATOR(pg_catalog.<) (nx.first_id OPERATOR(pg_catalog.+) 1000)))
          AND CASE WHEN e.subscription_keys IS NULL
                   THEN o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                   ELSE o.subscription_key OPERATOR(pg_catalog.=) ANY (e.subscription_keys)
                        AND NOT (o.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
                                 AND o.aggregate_id OPERATOR(pg_catalog.=) e.endpoint_id) END) AS ahead
  LEFT JOIN LATERAL (
       SELECT a.attempted_at, a.http_status, a.error
         FROM ae_events.delivery_attempts AS a
        WHERE a.endpoint OPERATOR(pg_catalog.=) e.endpoint
          -- A test event's failure leaves the endpoint's state alone: not its "why" either.
          AND a.outbox_id IS NOT NULL
        ORDER BY a.id DESC
        LIMIT 1) AS lf ON true
  LEFT JOIN LATERAL (
       SELECT pg_catalog.sum(a.delivered)::bigint AS delivered, pg_catalog.sum(a.failed)::bigint AS failed
         FROM ae_events.endpoint_activity AS a
        WHERE a.endpoint OPERATOR(pg_catalog.=) e.endpoint
          AND a.bucket_start OPERATOR(pg_catalog.>=)
              pg_catalog.date_bin('10 minutes', pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour',
                                  '2000-01-01 00:00:00+00')) AS hour ON true;

COMMENT ON VIEW ae_events.console_endpoints IS
    'ae_events: per endpoint its state and why, backlog (up to 1000), oldest undelivered event, last success, last hour''s deliveries and failures, settings with header names only (the console''s / and endpoint pages)';

-- The chart of `/` and of an endpoint's page: per endpoint (or only_endpoint) and UTC hour,
-- the last `hours` hours (1 to 168) oldest first, zero-filled; the last is the current hour.
CREATE FUNCTION ae_events.console_activity(hours integer DEFAULT 24, only_endpoint text DEFAULT NULL)
RETURNS TABLE (endpoint text, bucket_start timestamptz, delivered bigint, failed bigint, dead bigint)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    this_hour timestamptz := pg_catalog.date_bin('1 hour', pg_catalog.now(), '2000-01-01 00:00:00+00');
    first_hour timestamptz;
BEGIN
    IF hours IS NULL OR hours NOT BETWEEN 1 AND 168 THEN
        RAISE EXCEPTION 'ae_events: hours must be between 1 and 168, not %', coalesce(hours::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    first_hour := this_hour OPERATOR(pg_catalog.-) ((hours OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) interval '1 hour');
    RETURN QUERY
        SELECT e.endpoint, c.bucket_start, c.delivered, c.failed, c.dead
          FROM ae_events.endpoints AS e
         CROSS JOIN LATERAL (
               SELECT h.bucket_start,
                      coalesce(pg_catalog.sum(a.delivered), 0)::bigint AS delivered,
                      coalesce(pg_catalog.sum(a.failed), 0)::bigint AS failed,
                      coalesce(pg_catalog.sum(a.dead), 0)::bigint AS dead
                 FROM pg_catalog.generate_series(first_hour, this_hour, interval '1 hour') AS h (bucket_start)
                 LEFT JOIN ae_events.endpoint_activity AS a
                   ON a.endpoint OPERATOR(pg_catalog.=) e.endpoint
                  AND a.bucket_start OPERATOR(pg_catalog.>=) first_hour
                  AND pg_catalog.date_bin('1 hour', a.bucket_start, '2000-01-01 00:00:00+00')
                      OPERATOR(pg_catalog.=) h.bucket_start
                GROUP BY h.bucket_start) AS c
         WHERE only_endpoint IS NULL OR e.endpoint OPERATOR(pg_catalog.=) only_endpoint
         ORDER BY e.endpoint, c.bucket_start;
END
$$;

-- An endpoint's deliveries, newest event first (outbox id descending), keyset-paged: before_id
-- NULL for the first page, then the last row's id. with_status NULL, 'pending', 'delivered' or
-- 'dead' (its dead letters); max_rows 1 to 500.
CREATE FUNCTION ae_events.console_deliveries(endpoint text, with_status text DEFAULT NULL,
                                             before_id bigint DEFAULT NULL,
                                             max_rows integer DEFAULT 50)
RETURNS TABLE (id bigint, event_id uuid, subscription_key text, instance_id bigint,
               snapshot_version integer, occurred_at timestamptz, status text, attempts integer,
               first_attempt_at timestamptz, last_attempt_at timestamptz, last_status integer,
               last_error text, next_attempt_at timestamptz, delivered_at timestamptz,
               dead_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF with_status IS NOT NULL AND with_status NOT IN ('pending', 'delivered', 'dead') THEN
        RAISE EXCEPTION 'ae_events: a delivery''s status is pending, delivered or dead, not %',
                pg_catalog.quote_literal(pg_catalog.left(with_status, 50))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'ae_events: max_rows must be between 1 and 500, not %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The status written into the query (one of three, checked above), so that the plan uses
    -- the partial index of pending or dead rows.
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT d.outbox_id, o.event_id, o.subscription_key, d.aggregate_id, o.snapshot_version,
                o.occurred_at, d.status, d.attempts, d.first_attempt_at, d.last_attempt_at,
                d.last_status, d.last_error, d.next_attempt_at, d.delivered_at, d.dead_at
           FROM ae_events.deliveries AS d
           LEFT JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
          WHERE d.endpoint OPERATOR(pg_catalog.=) $1
            AND d.outbox_id OPERATOR(pg_catalog.<) $2 %s
          ORDER BY d.outbox_id DESC
          LIMIT $3',
        CASE WHEN with_status IS NULL THEN ''
             ELSE 'AND d.status OPERATOR(pg_catalog.=) ' OPERATOR(pg_catalog.||) pg_catalog.quote_literal(with_status) END)
        USING endpoint, coalesce(before_id, 9223372036854775807), max_rows;
END
$$;

-- An endpoint's test events (send_test_event), newest first.
CREATE FUNCTION ae_events.console_test_events(endpoint text, max_rows integer DEFAULT 20)
RETURNS TABLE (webhook_id uuid, subscription_key text, requested_by name,
               requested_at timestamptz, status text, attempts integer,
               last_attempt_at timestamptz, last_status integer, last_error text,
               next_attempt_at timestamptz, delivered_at timestamptz, dead_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'ae_events: max_rows must be between 1 and 500, not %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT t.webhook_id, t.subscription_key, t.requested_by, t.requested_at, t.status,
               t.attempts, t.last_attempt_at, t.last_status, t.last_error, t.next_attempt_at,
               t.delivered_at, t.dead_at
          FROM ae_events.endpoints AS e
          JOIN ae_events.test_events AS t ON t.endpoint_id OPERATOR(pg_catalog.=) e.endpoint_id
         WHERE e.endpoint OPERATOR(pg_catalog.=) console_test_events.endpoint
         ORDER BY t.requested_at DESC, t.id DESC
         LIMIT max_rows;
END
$$;

-- Test events by their endpoint and time (console_test_events); prune deletes by time too.
CREATE INDEX test_events_endpoint_idx ON ae_events.test_events (endpoint_id, requested_at);

-- An event by its event_id (or a test event by its webhook_id): its payload as stored (after
-- payload rules; JSON null once expired).
CREATE FUNCTION ae_events.console_event(event uuid)
RETURNS TABLE (id bigint, event_id uuid, subscription_key text, event_type text,
               aggregate_type text, instance_id bigint, snapshot_version integer,
               occurred_at timestamptz, payload jsonb, payload_expired boolean, is_test boolean,
               test_endpoint text, requested_by name)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.id, o.event_id, o.subscription_key, o.event_type, o.aggregate_type, o.aggregate_id,
           o.snapshot_version, o.occurred_at, o.payload,
           pg_catalog.jsonb_typeof(o.payload) OPERATOR(pg_catalog.=) 'null', false, NULL::text,
           NULL::name
      FROM ae_events.outbox AS o
     WHERE o.event_id OPERATOR(pg_catalog.=) event
    UNION ALL
    SELECT NULL::bigint, t.webhook_id, t.subscription_key, t.event_type,
           CASE WHEN t.subscription_key LIKE 'ae.test\_instance.%' THEN 'test_instance' ELSE 'endpoint' END,
           t.aggregate_id, t.snapshot_version, t.requested_at, t.payload, false, true, e.endpoint,
           t.requested_by
      FROM ae_events.test_events AS t
      JOIN ae_events.endpoints AS e ON e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id
     WHERE t.webhook_id OPERATOR(pg_catalog.=) event
     LIMIT 1
$$;

-- Per endpoint an event of the outbox goes to, its delivery; 'waiting': the endpoint takes the
-- event (keys and filter) but has not reached it yet. Endpoints it does not go to: no row.
CREATE FUNCTION ae_events._console_deliveries_of(outbox_id bigint)
RETURNS TABLE (endpoint text, status text, attempts integer, first_attempt_at timestamptz,
               last_attempt_at timestamptz, last_status integer, last_error text,
               next_attempt_at timestamptz, delivered_at timestamptz, dead_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- Each endpoint's row through the primary key (endpoint, outbox_id): LIMIT keeps the
    -- planner from scanning the whole index for the outbox id instead.
    SELECT p.endpoint, coalesce(d.status, 'waiting'), coalesce(d.attempts, 0), d.first_attempt_at,
           d.last_attempt_at, d.last_status, d.last_error, d.next_attempt_at, d.delivered_at,
           d.dead_at
      FROM ae_events.outbox AS o
     CROSS JOIN ae_events.endpoints AS p
      LEFT JOIN LATERAL (
           SELECT d.* FROM ae_events.deliveries AS d
            WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
              AND d.outbox_id OPERATOR(pg_catalog.=) o.id
            LIMIT 1) AS d ON true
     WHERE o.id OPERATOR(pg_catalog.=) _console_deliveries_of.outbox_id
       AND (d.endpoint IS NOT NULL
            OR ((SELECT pg_catalog.max(n.first_id) FROM ae_events.epochs AS n
                  WHERE n.first_id OPERATOR(pg_catalog.<=) o.id), o.txid, o.id)
               OPERATOR(pg_catalog.>) (p.cursor_epoch, p.cursor_txid, p.cursor_id)
               AND NOT (o.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
                        AND o.aggregate_id OPERATOR(pg_catalog.=) p.endpoint_id)
               AND ae_events._endpoint_matches(p.subscription_keys, p.filter, o.subscription_key,
                                               o.payload))
$$;

-- The event page's deliveries: per endpoint (by name) its delivery of the event or test event.
CREATE FUNCTION ae_events.console_event_deliveries(event uuid)
RETURNS TABLE (endpoint text, status text, attempts integer, first_attempt_at timestamptz,
               last_attempt_at timestamptz, last_status integer, last_error text,
               next_attempt_at timestamptz, delivered_at timestamptz, dead_at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT x.*
      FROM ae_events.outbox AS o
     CROSS JOIN LATERAL ae_events._console_deliveries_of(o.id) AS x
     WHERE o.event_id OPERATOR(pg_catalog.=) event
    UNION ALL
    SELECT e.endpoint, t.status, t.attempts, t.first_attempt_at, t.last_attempt_at, t.last_status,
           t.last_error, t.next_attempt_at, t.delivered_at, t.dead_at
      FROM ae_events.test_events AS t
      JOIN ae_events.endpoints AS e ON e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id
     WHERE t.webhook_id OPERATOR(pg_catalog.=) event
     ORDER BY 1
$$;

-- An event's (or test event's) attempts one by one, per endpoint newest first: the failed ones
-- of the log (the newest 20 per delivery) and the delivered one (from its delivery row; its
-- duration is not kept).
CREATE FUNCTION ae_events.console_attempts(event uuid)
RETURNS TABLE (endpoint text, attempt integer, attempted_at timestamptz, duration_ms integer,
               outcome text, http_status integer, error text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- Per endpoint through its keys (LIMIT keeps each a probe of (endpoint, outbox_id)).
    SELECT x.* FROM (
        SELECT a.endpoint, a.attempt, a.attempted_at, a.duration_ms, a.outcome, a.http_status, a.error
          FROM ae_events.outbox AS o
         CROSS JOIN ae_events.endpoints AS p
         CROSS JOIN LATERAL (
               SELECT a.* FROM ae_events.delivery_attempts AS a
                WHERE a.endpoint OPERATOR(pg_catalog.=) p.endpoint
                  AND a.outbox_id OPERATOR(pg_catalog.=) o.id
                ORDER BY a.id DESC
                LIMIT 20) AS a
         WHERE o.event_id OPERATOR(pg_catalog.=) event
        UNION ALL
        SELECT d.endpoint, d.attempts, d.delivered_at, NULL::integer, 'delivered', d.last_status, NULL::text
          FROM ae_events.outbox AS o
         CROSS JOIN ae_events.endpoints AS p
         CROSS JOIN LATERAL (
               SELECT d.* FROM ae_events.deliveries AS d
                WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                  AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                LIMIT 1) AS d
         WHERE o.event_id OPERATOR(pg_catalog.=) event
           AND d.status OPERATOR(pg_catalog.=) 'delivered'
        UNION ALL
        SELECT a.endpoint, a.attempt, a.attempted_at, a.duration_ms, a.outcome, a.http_status, a.error
          FROM ae_events.test_events AS t
          JOIN ae_events.delivery_attempts AS a ON a.test_event_id OPERATOR(pg_catalog.=) t.id
         WHERE t.webhook_id OPERATOR(pg_catalog.=) event
        UNION ALL
        SELECT e.endpoint, t.attempts, t.delivered_at, NULL::integer, 'delivered', t.last_status, NULL::text
          FROM ae_events.test_events AS t
          JOIN ae_events.endpoints AS e ON e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id
         WHERE t.webhook_id OPERATOR(pg_catalog.=) event
           AND t.status OPERATOR(pg_catalog.=) 'delivered') AS x
     ORDER BY x.endpoint, x.attempted_at DESC, x.attempt DESC
     LIMIT 10000
$$;

-- An instance's events in version order (outbox ids grow with the version), each with its
-- deliveries (as console_event_deliveries; one row with endpoint NULL if it goes nowhere):
-- max_events events (1 to 200) after after_id (NULL: from the first).
CREATE FUNCTION ae_events.console_instance(instance bigint, after_id bigint DEFAULT NULL,
                                           max_events integer DEFAULT 50)
RETURNS TABLE (id bigint, event_id uuid, subscription_key text, snapshot_version integer,
               occurred_at timestamptz, payload_expired boolean, endpoint text, status text,
               attempts integer, last_attempt_at timestamptz, last_status integer,
               last_error text, next_attempt_at timestamptz, delivered_at timestamptz,
               dead_at timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF max_events IS NULL OR max_events NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'ae_events: max_events must be between 1 and 200, not %', coalesce(max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT o.id, o.event_id, o.subscription_key, o.snapshot_version, o.occurred_at,
               pg_catalog.jsonb_typeof(o.payload) OPERATOR(pg_catalog.=) 'null',
               x.endpoint, x.status, x.attempts, x.last_attempt_at, x.last_status, x.last_error,
               x.next_attempt_at, x.delivered_at, x.dead_at
          FROM (SELECT o.* FROM ae_events.outbox AS o
                 WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                   AND o.aggregate_id OPERATOR(pg_catalog.=) instance
                   AND o.id OPERATOR(pg_catalog.>) coalesce(after_id, -1)
                 ORDER BY o.id
                 LIMIT max_events) AS o
          LEFT JOIN LATERAL ae_events._console_deliveries_of(o.id) AS x ON true
         ORDER BY o.id, x.endpoint;
END
$$;

-- `/search?q=`: what a text names, best first, at most 20 rows; never an error: an event or test
-- event (a uuid), an instance with events (a number), endpoints (the exact name, then names
-- containing the text, case-insensitive).
CREATE FUNCTION ae_events.console_search(q text)
RETURNS TABLE (kind text, key text, label text)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted text := pg_catalog.btrim(pg_catalog.left(q, 1000));
    as_uuid uuid;
    as_id bigint;
    found_rows integer := 0;
    n integer;
BEGIN
    IF wanted IS NULL OR wanted OPERATOR(pg_catalog.=) '' THEN
        RETURN;
    END IF;
    IF wanted ~* '^\{?[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}\}?$' THEN
        BEGIN
            as_uuid := wanted::uuid;
        EXCEPTION WHEN invalid_text_representation THEN
            NULL;  -- not a uuid after all (one brace only, say): no event
        END;
    END IF;
    IF wanted ~ '^[0-9]{1,19}$' AND wanted::numeric OPERATOR(pg_catalog.<=) 9223372036854775807 THEN
        as_id := wanted::bigint;
    END IF;
    IF as_uuid IS NOT NULL THEN
        RETURN QUERY
            SELECT 'event'::text, o.event_id::text,
                   pg_catalog.format('%s v%s of %s %s, %s UTC', o.subscription_key, o.snapshot_version,
                                     o.aggregate_type, o.aggregate_id,
                                     pg_catalog.to_char(o.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
              FROM ae_events.outbox AS o WHERE o.event_id OPERATOR(pg_catalog.=) as_uuid
            UNION ALL
            SELECT 'event'::text, t.webhook_id::text,
                   pg_catalog.format('test event %s for endpoint %s, %s UTC', t.subscription_key, e.endpoint,
                                     pg_catalog.to_char(t.requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
              FROM ae_events.test_events AS t
              JOIN ae_events.endpoints AS e ON e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id
             WHERE t.webhook_id OPERATOR(pg_catalog.=) as_uuid;
        GET DIAGNOSTICS n = ROW_COUNT;
        found_rows := found_rows OPERATOR(pg_catalog.+) n;
    END IF;
    IF as_id IS NOT NULL THEN
        RETURN QUERY
            SELECT 'instance'::text, as_id::text, pg_catalog.format('instance %s', as_id)
             WHERE EXISTS (SELECT FROM ae_events.outbox AS o
                            WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                              AND o.aggregate_id OPERATOR(pg_catalog.=) as_id);
        GET DIAGNOSTICS n = ROW_COUNT;
        found_rows := found_rows OPERATOR(pg_catalog.+) n;
    END IF;
    RETURN QUERY
        SELECT 'endpoint'::text, e.endpoint, pg_catalog.regexp_replace(e.url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1')
          FROM ae_events.endpoints AS e
         WHERE pg_catalog.strpos(pg_catalog.lower(e.endpoint), pg_catalog.lower(wanted)) OPERATOR(pg_catalog.>) 0
         ORDER BY e.endpoint OPERATOR(pg_catalog.<>) wanted, e.endpoint
         LIMIT GREATEST(20 OPERATOR(pg_catalog.-) found_rows, 0);
END
$$;

------------------------------------------------------------------------------------------------
-- The console's actions are the API's functions; this one sends every dead letter of an
-- endpoint again (as redeliver does for each: same webhook-id, from the first attempt, in order
-- per instance). Dead letters whose payload expired, or that the endpoint no longer takes (its
-- keys or filter changed), are left as they are, with a notice. Returns how many were queued.
CREATE FUNCTION ae_events.redeliver_dead_letters(endpoint text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._endpoint_for_update(endpoint);
    dead bigint;
    scheduled bigint;
BEGIN
    SELECT pg_catalog.count(*) INTO dead FROM ae_events.deliveries AS d
     WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
       AND d.status OPERATOR(pg_catalog.=) 'dead';
    UPDATE ae_events.deliveries AS d
       SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), dead_at = NULL
      FROM ae_events.outbox AS o
     WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
       AND d.status OPERATOR(pg_catalog.=) 'dead'
       AND o.id OPERATOR(pg_catalog.=) d.outbox_id
       AND o.payload OPERATOR(pg_catalog.<>) 'null'::jsonb
       AND ae_events._endpoint_matches(target.subscription_keys, target.filter,
                                       o.subscription_key, o.payload);
    GET DIAGNOSTICS scheduled = ROW_COUNT;
    IF scheduled OPERATOR(pg_catalog.<) dead THEN
        RAISE NOTICE 'ae_events: % dead letters of endpoint % are not sent again: their payload expired, their event was pruned or the endpoint no longer takes them',
                dead OPERATOR(pg_catalog.-) scheduled, pg_catalog.quote_literal(target.endpoint);
    END IF;
    RETURN scheduled;
END
$$;

-- The operator reads what the reader reads (shared/contract/console.md §2), and may act through
-- these functions; not create, alter or drop endpoints, nor read secrets or header values.
GRANT ae_events_reader TO ae_events_operator;

REVOKE ALL ON ae_events.delivery_attempts, ae_events.endpoint_activity FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._console_record(text, bigint[], text[], integer[], timestamptz[], integer[], integer[], integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._console_record_tests(text, bigint[], text[], integer[], timestamptz[], integer[], text[], integer[], bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._console_deliveries_of(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._console_endpoint_dropped() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_activity(integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_deliveries(text, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_test_events(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_event(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_event_deliveries(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_attempts(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_instance(bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.console_search(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.redeliver_dead_letters(text) FROM PUBLIC;
GRANT SELECT ON ae_events.console_endpoints TO ae_events_reader;
GRANT EXECUTE ON FUNCTION ae_events.console_activity(integer, text),
    ae_events.console_deliveries(text, text, bigint, integer),
    ae_events.console_test_events(text, integer),
    ae_events.console_event(uuid),
    ae_events.console_event_deliveries(uuid),
    ae_events.console_attempts(uuid),
    ae_events.console_instance(bigint, bigint, integer),
    ae_events.console_search(text)
    TO ae_events_reader;
GRANT EXECUTE ON FUNCTION ae_events.redeliver(text, uuid[]),
    ae_events.redeliver_dead_letters(text),
    ae_events.replay_endpoint(text, timestamptz),
    ae_events.enable_endpoint(text),
    ae_events.disable_endpoint(text, text)
    TO ae_events_operator;

DROP FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint);
CREATE OR REPLACE FUNCTION ae_events.relay_record(endpoint text, relay text,
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
REVOKE ALL ON FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint, integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text, bigint, integer[]) TO ae_events_relay;

DROP FUNCTION ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[]);
CREATE FUNCTION ae_events.relay_record_tests(endpoint text, relay text, endpoint_id bigint,
                                             ids bigint[], statuses text[], attempts integer[],
                                             attempted_at timestamptz[], http_statuses integer[],
                                             errors text[], next_attempt_at timestamptz[],
                                             durations_ms integer[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
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
     WHERE e.endpoint OPERATOR(pg_catalog.=) relay_record_tests.endpoint
       AND e.endpoint_id OPERATOR(pg_catalog.=) relay_record_tests.endpoint_id
       AND e.relay OPERATOR(pg_catalog.=) relay_record_tests.relay
       AND e.relay_role OPERATOR(pg_catalog.=) ae_events._calling_role()
       AND e.enabled
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    errors := ae_events._masked_errors(errors, held.headers);
    UPDATE ae_events.test_events AS t
       SET status = r.status,
           attempts = r.attempts,
           first_attempt_at = coalesce(t.first_attempt_at, r.attempted_at),
           last_attempt_at = coalesce(r.attempted_at, t.last_attempt_at),
           last_status = r.http_status,
           last_error = pg_catalog.left(r.error, 2000),
           next_attempt_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'pending'
                                  THEN coalesce(r.next_attempt_at, pg_catalog.now()) END,
           delivered_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'delivered' THEN r.attempted_at END,
           dead_at = CASE WHEN r.status OPERATOR(pg_catalog.=) 'dead' THEN r.attempted_at END
      -- The parameters qualified: unqualified, attempts and the like are the table's columns.
      FROM ROWS FROM (pg_catalog.unnest(relay_record_tests.ids),
                      pg_catalog.unnest(relay_record_tests.statuses),
                      pg_catalog.unnest(relay_record_tests.attempts),
                      pg_catalog.unnest(relay_record_tests.attempted_at),
                      pg_catalog.unnest(relay_record_tests.http_statuses),
                      pg_catalog.unnest(relay_record_tests.errors),
                      pg_catalog.unnest(relay_record_tests.next_attempt_at))
           AS r (id, status, attempts, attempted_at, http_status, error, next_attempt_at)
     WHERE t.id OPERATOR(pg_catalog.=) r.id
       AND t.endpoint_id OPERATOR(pg_catalog.=) held.endpoint_id
       AND r.status IN ('pending', 'delivered', 'dead');
    -- The console's attempt log (console.sql).
    PERFORM ae_events._console_record_tests(held.endpoint, ids, statuses, attempts, attempted_at,
                                            http_statuses, errors, durations_ms, held.endpoint_id);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], integer[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], integer[]) TO ae_events_relay;

CREATE OR REPLACE FUNCTION ae_events.prune(older_than interval, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := pg_catalog.now() OPERATOR(pg_catalog.-) older_than;
    deleted bigint := 0;
    batch bigint;
    pruned_ids bigint[];
    retention interval;
    expire_cutoff timestamptz;
    expired_ids bigint[];
    last_expired_id bigint := -1;
BEGIN
    IF older_than IS NULL OR older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'ae_events: prune needs an age of zero or more, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    retention := ae_events._payload_retention();
    IF retention IS NOT NULL THEN
        expire_cutoff := pg_catalog.now() OPERATOR(pg_catalog.-) retention;
        LOOP
            -- In id order from where the last batch ended. A payload of more than 16 bytes is
            -- not JSON null: the test needs no decompression then.
            expired_ids := ARRAY(
                       SELECT o.id
                         FROM ae_events._epochs() AS e
                         JOIN ae_events.outbox AS o
                           ON o.id OPERATOR(pg_catalog.>=) e.first_id
                          AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                        WHERE o.occurred_at OPERATOR(pg_catalog.<) expire_cutoff
                          AND o.id OPERATOR(pg_catalog.>) last_expired_id
                          AND (pg_catalog.pg_column_size(o.payload) OPERATOR(pg_catalog.>) 16
                               OR o.payload OPERATOR(pg_catalog.<>) 'null'::jsonb)
                          AND NOT EXISTS (
                                  SELECT FROM ae_events.consumers AS c
                                   WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                         (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                          AND NOT EXISTS (
                                  SELECT FROM ae_events.endpoints AS p
                                   WHERE p.enabled
                                     AND ((e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                          (p.cursor_epoch, p.cursor_txid, p.cursor_id)
                                          OR EXISTS (
                                                 SELECT FROM ae_events.deliveries AS d
                                                  WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                                                    AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                                                    AND d.status OPERATOR(pg_catalog.=) 'pending')))
                        ORDER BY o.id
                        LIMIT batch_size);
            EXIT WHEN pg_catalog.cardinality(expired_ids) OPERATOR(pg_catalog.=) 0;
            last_expired_id := expired_ids[pg_catalog.cardinality(expired_ids)];
            -- A disabled endpoint that has not reached the event and would send it: it never
            -- can now; a dead delivery record says so (relay_fetch passes over an event that has
            -- one). Matched on the payload before it goes.
            INSERT INTO ae_events.deliveries AS d
                   (endpoint, outbox_id, aggregate_id, status, attempts, last_error, dead_at)
            SELECT p.endpoint, o.id, o.aggregate_id, 'dead', 0,
                   'ae_events: the payload expired (ae_events.payload_retention) before it was delivered',
                   pg_catalog.now()
              FROM ae_events._epochs() AS e
              JOIN ae_events.outbox AS o
                ON o.id OPERATOR(pg_catalog.>=) e.first_id
               AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
              JOIN ae_events.endpoints AS p
                ON NOT p.enabled
               AND (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                   (p.cursor_epoch, p.cursor_txid, p.cursor_id)
             WHERE o.id OPERATOR(pg_catalog.=) ANY (expired_ids)
               AND ae_events._endpoint_matches(p.subscription_keys, p.filter,
                                               o.subscription_key, o.payload)
            ON CONFLICT ON CONSTRAINT deliveries_pkey DO NOTHING;
            UPDATE ae_events.outbox AS o SET payload = 'null'::jsonb
             WHERE o.id OPERATOR(pg_catalog.=) ANY (expired_ids);
            -- Only a disabled endpoint can still have one pending: it cannot be sent any more.
            UPDATE ae_events.deliveries AS d
               SET status = 'dead', dead_at = pg_catalog.now(), next_attempt_at = NULL,
                   last_error = 'ae_events: the payload expired (ae_events.payload_retention) before it was delivered'
              FROM ae_events.endpoints AS p
             WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
               AND d.outbox_id OPERATOR(pg_catalog.=) ANY (expired_ids)
               AND d.status OPERATOR(pg_catalog.=) 'pending';
            EXIT WHEN pg_catalog.cardinality(expired_ids) OPERATOR(pg_catalog.<) batch_size;
        END LOOP;
    END IF;
    LOOP
        pruned_ids := ARRAY(
                   SELECT o.id
                     FROM ae_events._epochs() AS e
                     JOIN ae_events.outbox AS o
                       ON o.id OPERATOR(pg_catalog.>=) e.first_id
                      AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                    WHERE o.occurred_at OPERATOR(pg_catalog.<) cutoff
                      AND NOT EXISTS (
                              SELECT FROM ae_events.consumers AS c
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                      -- Nor one a webhook endpoint has not passed yet or still has to send.
                      AND NOT EXISTS (
                              SELECT FROM ae_events.endpoints AS p
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (p.cursor_epoch, p.cursor_txid, p.cursor_id)
                                  OR EXISTS (
                                         SELECT FROM ae_events.deliveries AS d
                                          WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
                                            AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                                            AND d.status OPERATOR(pg_catalog.=) 'pending'))
                    ORDER BY o.id
                    LIMIT batch_size);
        -- Their delivery records and attempt logs (console.sql) go with them.
        DELETE FROM ae_events.deliveries AS d
         USING ae_events.endpoints AS p
         WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
           AND d.outbox_id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        DELETE FROM ae_events.delivery_attempts AS a
         USING ae_events.endpoints AS p
         WHERE a.endpoint OPERATOR(pg_catalog.=) p.endpoint
           AND a.outbox_id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        DELETE FROM ae_events.outbox AS d WHERE d.id OPERATOR(pg_catalog.=) ANY (pruned_ids);
        GET DIAGNOSTICS batch = ROW_COUNT;
        deleted := deleted OPERATOR(pg_catalog.+) batch;
        EXIT WHEN batch OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    -- Test events of send_test_event (test_events.sql) go with the events of their time once
    -- finished, and those of dropped endpoints; they are not counted.
    WITH gone AS (
        DELETE FROM ae_events.test_events AS t
         WHERE (t.status OPERATOR(pg_catalog.<>) 'pending'
                AND t.requested_at OPERATOR(pg_catalog.<) cutoff)
            OR NOT EXISTS (SELECT FROM ae_events.endpoints AS e
                            WHERE e.endpoint_id OPERATOR(pg_catalog.=) t.endpoint_id)
        RETURNING t.id)
    DELETE FROM ae_events.delivery_attempts AS a
     USING gone
     WHERE a.test_event_id OPERATOR(pg_catalog.=) gone.id;
    -- The console's counts (console.sql) are kept 7 days.
    DELETE FROM ae_events.endpoint_activity AS a
     WHERE a.bucket_start OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days');
    RETURN deleted;
END
$$;

CREATE OR REPLACE FUNCTION ae_events._erase_events(ids bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rewritten bigint;
BEGIN
    UPDATE ae_events.outbox AS o
       SET payload = ae_events._erased_payload(o.payload)
     WHERE o.id OPERATOR(pg_catalog.=) ANY (ids)
       AND ae_events._erased_payload(o.payload) OPERATOR(pg_catalog.<>) o.payload;
    GET DIAGNOSTICS rewritten = ROW_COUNT;
    -- Through each endpoint's primary key (endpoint, outbox_id), as prune() does.
    UPDATE ae_events.deliveries AS d
       SET last_error = '[erased]'
      FROM ae_events.endpoints AS p
     WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
       AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
       AND d.last_error IS NOT NULL
       AND d.last_error OPERATOR(pg_catalog.<>) '[erased]';
    -- The attempt log (console.sql) keeps each failed attempt's error text: the same.
    UPDATE ae_events.delivery_attempts AS a
       SET error = '[erased]'
      FROM ae_events.endpoints AS p
     WHERE a.endpoint OPERATOR(pg_catalog.=) p.endpoint
       AND a.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
       AND a.error IS NOT NULL
       AND a.error OPERATOR(pg_catalog.<>) '[erased]';
    -- Operational events (alerts.sql) carry an attempt's error text too, and a failing or
    -- disabled one does not say which event's: the error texts of every operational event about
    -- an endpoint that attempted one of these events, since its first attempt, go as well.
    UPDATE ae_events.outbox AS a
       SET payload = pg_catalog.jsonb_set(a.payload, '{last_error}', '"[erased]"')
      FROM (SELECT p.endpoint_id, pg_catalog.min(d.first_attempt_at) AS since
              FROM ae_events.endpoints AS p
              JOIN ae_events.deliveries AS d
                ON d.endpoint OPERATOR(pg_catalog.=) p.endpoint
               AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
             WHERE d.first_attempt_at IS NOT NULL
             GROUP BY p.endpoint_id) AS t
     WHERE a.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
       AND a.aggregate_id OPERATOR(pg_catalog.=) t.endpoint_id
       AND a.occurred_at OPERATOR(pg_catalog.>=) t.since
       AND pg_catalog.jsonb_typeof(a.payload OPERATOR(pg_catalog.->) 'last_error') OPERATOR(pg_catalog.=) 'string'
       AND a.payload OPERATOR(pg_catalog.->>) 'last_error' OPERATOR(pg_catalog.<>) '[erased]';
    RETURN rewritten;
END
$$;
-- (End of the console SQL part.)

-- Issue 26, part 3 (bulk at 1.5x the floor): the commit-time constraint triggers queue one
-- deferred event per statement instead of one per row (WHEN ae_events._emit_needed(),
-- src/capture.rs). The triggers attach() put on the application's tables are re-created with the
-- condition, as attach() now creates them, each keeping its enabled state.
CREATE  FUNCTION ae_events."_emit_needed"() RETURNS bool
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_emit_needed_wrapper';

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tr.tgname, tr.tgrelid::pg_catalog.regclass AS source_table, tr.tgenabled,
               pg_catalog.pg_get_triggerdef(tr.oid) AS definition
          FROM pg_catalog.pg_trigger AS tr
         WHERE tr.tgfoid OPERATOR(pg_catalog.=) 'ae_events.emit_pending_events()'::pg_catalog.regprocedure
           AND tr.tgname OPERATOR(pg_catalog.=) ANY (ARRAY['ae_events_emit', 'ae_events_emit_changed']::pg_catalog.name[])
           AND NOT tr.tgisinternal
           AND tr.tgqual IS NULL
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.source_table);
        EXECUTE pg_catalog.replace(t.definition, ' FOR EACH ROW EXECUTE ',
                                   ' FOR EACH ROW WHEN (ae_events._emit_needed()) EXECUTE ');
        IF t.tgenabled OPERATOR(pg_catalog.<>) 'O' THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s %s TRIGGER %I', t.source_table,
                CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA'
                                 ELSE 'ENABLE ALWAYS' END,
                t.tgname);
        END IF;
    END LOOP;
END
$$;
-- (End of the bulk part.)

-- Performance round 3, part 4 continued: relay_record writes its rows through this helper.
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
REVOKE ALL ON FUNCTION ae_events._delivery_rows(text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[]) FROM PUBLIC;

-- The key of the payload digests in instance_state (src/digest.rs): a digest is a keyed function
-- of the payload (AES-256-GCM-SIV's tag), so that it tells nothing about a payload and nobody
-- without the key can make two payloads of one digest (an updated event left out). One random
-- key per database, made here, readable by the extension's owner only. Dumped with the database:
-- pg_restore adds the dumped key beside the one CREATE EXTENSION made, and the oldest one is in
-- use, so that the digests restored with instance_state still compare.
CREATE TABLE ae_events.digest_keys (
    key bytea NOT NULL CHECK (pg_catalog.octet_length(key) OPERATOR(pg_catalog.=) 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE ae_events.digest_keys IS
    'ae_events: the key of the payload digests in instance_state (the oldest row is in use); secret';

INSERT INTO ae_events.digest_keys (key) VALUES (ae_events._strong_random_bytes(32));
SELECT pg_catalog.pg_extension_config_dump('ae_events.digest_keys', '');
REVOKE ALL ON ae_events.digest_keys FROM PUBLIC;
-- Backends cache the key (src/config_cache.rs); ALWAYS, as payload_rules_changed.
CREATE TRIGGER digest_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.digest_keys
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.digest_keys ENABLE ALWAYS TRIGGER digest_keys_changed;
