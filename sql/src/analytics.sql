-- For analysts: one row per event with the columns they filter on, an index for time ranges;
-- for DBAs: retention (prune) and stats.

-- occurred_at grows with the outbox (append-only), so a BRIN index finds a time range in a
-- million-row outbox with a few index pages and costs writers almost nothing; one instance's
-- history uses outbox_aggregate_idx.
CREATE INDEX outbox_occurred_at_idx ON ae_events.outbox USING brin (occurred_at)
    WITH (pages_per_range = 32, autosummarize = on);

-- Numbers are read only where the payload has a number (a payload rule may have hashed or
-- removed the field: the column is NULL then, not an error).
CREATE VIEW ae_events.events AS
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

COMMENT ON VIEW ae_events.events IS
    'ae_events: one row per event with the columns analysts filter on (payload fields as columns)';

-- Events after a consumer's cursor (not yet acknowledged), in delivery order.
CREATE FUNCTION ae_events._unacked(consumer ae_events.consumers)
RETURNS SETOF ae_events.outbox
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.*
      FROM ae_events._epochs() AS e
      JOIN ae_events.outbox AS o
        ON o.id OPERATOR(pg_catalog.>=) e.first_id
       AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
     WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
           (consumer.cursor_epoch, consumer.cursor_txid, consumer.cursor_id)
$$;

-- Delete events older than older_than, batch_size at a time, never one that a consumer has not
-- acknowledged or a webhook endpoint has not finished, with their delivery records. Returns how
-- many were deleted.
-- With ae_events.payload_retention set, the payloads of events older than it become JSON null
-- first (docs/privacy.md), once every consumer has acknowledged the event and every enabled
-- endpoint has delivered or dead-lettered it (not matching it counts as done); the row, its
-- metadata and its delivery records stay. A disabled endpoint does not hold payloads back: its
-- pending deliveries of an expired event are dead-lettered, and so are the events it had not
-- reached yet (it is not sent them once enabled again).
CREATE FUNCTION ae_events.prune(older_than interval, batch_size integer DEFAULT 10000)
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

CREATE VIEW ae_events.stats AS
SELECT 'subscription'::text AS kind,
       o.subscription_key AS name,
       pg_catalog.count(*) AS events,
       pg_catalog.max(o.occurred_at) AS newest_event_at,
       NULL::bigint AS lag_events,
       NULL::interval AS lag_age,
       NULL::timestamptz AS last_ack_at,
       pg_catalog.pg_notification_queue_usage() AS notification_queue_usage
  FROM ae_events.outbox AS o
 GROUP BY o.subscription_key
UNION ALL
SELECT 'consumer'::text,
       c.consumer,
       NULL::bigint,
       NULL::timestamptz,
       lag.events,
       pg_catalog.now() OPERATOR(pg_catalog.-) lag.oldest,
       c.acked_at,
       pg_catalog.pg_notification_queue_usage()
  FROM ae_events.consumers AS c
 CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS events, pg_catalog.min(u.occurred_at) AS oldest
                       FROM ae_events._unacked(c) AS u) AS lag;

COMMENT ON VIEW ae_events.stats IS
    'ae_events: per subscription key its events and the newest one''s time; per consumer its unacknowledged events (lag_events), the age of the oldest (lag_age) and its last ack; the notification queue''s usage';

-- The transactions of this database that hold delivery back: poll returns only events of
-- transactions older than every transaction still running here that has a transaction id
-- (_delivery_horizon), so one left open (idle in transaction) stalls every consumer. Oldest
-- first; holds_horizon marks the one at the horizon now. SECURITY DEFINER so that a relay or a
-- reader sees other roles' sessions; it shows no query text.
CREATE FUNCTION ae_events.delivery_blockers()
RETURNS TABLE (pid integer, role name, application_name text, backend_xid xid,
               transaction_started_at timestamptz, transaction_age interval, state text,
               holds_horizon boolean)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.pid, a.usename, a.application_name, a.backend_xid, a.xact_start,
           pg_catalog.now() OPERATOR(pg_catalog.-) a.xact_start, a.state,
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.age(a.backend_xid) DESC)
               OPERATOR(pg_catalog.=) 1
      FROM pg_catalog.pg_stat_activity AS a
     WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
       AND a.backend_xid IS NOT NULL
       AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
     ORDER BY pg_catalog.age(a.backend_xid) DESC
$$;

COMMENT ON FUNCTION ae_events.delivery_blockers() IS
    'ae_events: transactions of this database that hold consumers back (oldest first); set idle_in_transaction_session_timeout so that none stays open for long';

REVOKE ALL ON FUNCTION ae_events.delivery_blockers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.delivery_blockers() TO ae_events_reader, ae_events_relay;

REVOKE ALL ON FUNCTION ae_events._unacked(ae_events.consumers) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events._unacked(ae_events.consumers) TO ae_events_reader;
REVOKE ALL ON FUNCTION ae_events.prune(interval, integer) FROM PUBLIC;
GRANT SELECT ON ae_events.events, ae_events.stats TO ae_events_reader;
