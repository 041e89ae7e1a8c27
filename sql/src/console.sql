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
