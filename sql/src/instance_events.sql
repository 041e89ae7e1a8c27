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
       o.payload,
       -- prune() replaced the payload by JSON null (ae_events.payload_retention): every payload
       -- column is NULL.
       pg_catalog.jsonb_typeof(o.payload) OPERATOR(pg_catalog.=) 'null' AS payload_expired
  FROM ae_events.outbox AS o
 WHERE o.subscription_key LIKE 'ae.test\_instance.%';

COMMENT ON VIEW ae_events.instance_events IS
    'ae_events: one row per ae.test_instance.* event with the payload''s scalar fields as typed columns (<object>_<field>), payload rules applied as stored';

REVOKE ALL ON FUNCTION ae_events._payload_timestamptz(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._payload_interval(text) FROM PUBLIC;
GRANT SELECT ON ae_events.instance_events TO ae_events_reader;
