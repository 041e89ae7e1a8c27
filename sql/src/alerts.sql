-- Operational events (shared/contract/alerts.md, docs/alerts.md): ae.endpoint.failing,
-- ae.endpoint.recovered, ae.endpoint.disabled and ae.delivery.dead_lettered, written into the
-- outbox by the functions that change an endpoint's state (relay_record, _disable, relay_lease's
-- check of overdue failing endpoints), in their transaction: a relay killed at any moment neither
-- loses nor doubles one. aggregate_type 'endpoint', aggregate_id the endpoint's endpoint_id,
-- snapshot_version the endpoint's alert_version (+1 per operational event about it, under its
-- row's lock). Their payloads' JSON Schemas are in the catalog (src/catalog.rs, alerts module).
--
-- Delivered by the relays like any event, to the endpoints that name their keys (never to an
-- endpoint with NULL keys, and never to the endpoint they are about: relay_fetch), read by
-- consumers like any event.

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
