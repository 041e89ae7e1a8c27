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
-- with its own key and event type (version 2); an operational key (alerts.sql) its catalog
-- example (src/alerts.rs), about the example's endpoint_id (version 1). At most 10 test events per endpoint wait at a
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
REVOKE ALL ON FUNCTION ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], integer[]) FROM PUBLIC;
GRANT USAGE ON SCHEMA ae_events TO ae_events_operator;
GRANT EXECUTE ON FUNCTION ae_events.send_test_event(text, text) TO ae_events_operator;
GRANT EXECUTE ON FUNCTION ae_events.relay_tests(text, text, integer, bigint),
    ae_events.relay_record_tests(text, text, bigint, bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], integer[])
    TO ae_events_relay;
