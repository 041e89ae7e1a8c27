-- The hand-written alternative a DBA would compare ae_events with: a deferred PL/pgSQL row
-- trigger that builds the same payload with jsonb_build_object, writes the same outbox row and
-- sends the same notification. The benchmark checks that its payloads equal ae_events' own.
CREATE SCHEMA bench;

-- RFC 3339 in UTC, fraction trimmed (shared/contract/events.md §2).
CREATE FUNCTION bench.rfc3339(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
    || rtrim(rtrim(to_char(t AT TIME ZONE 'UTC', '.US'), '0'), '.') || 'Z';

CREATE FUNCTION bench.payload(instance_id bigint) RETURNS jsonb
LANGUAGE sql STABLE
SET "IntervalStyle" = postgres
AS $$
SELECT jsonb_build_object(
    'id', i.id, 'external_id', i.external_id, 'old_id', i.old_id, 'score', i.score,
    'instance_status', i.instance_status, 'candidate_id', i.candidate_id,
    'catalog_assessment_id', i.catalog_assessment_id, 'measurement_id', i.measurement_id,
    'session_instance_id', i.session_instance_id,
    'workflow_candidate_step_id', i.workflow_candidate_step_id,
    'created_at', bench.rfc3339(i.created_at), 'created_by', i.created_by,
    'updated_at', bench.rfc3339(i.updated_at), 'updated_by', i.updated_by,
    'candidate', (
        SELECT jsonb_build_object(
            'id', c.id, 'external_id', c.external_id, 'user_id', c.user_id, 'email', c.email,
            'first_name', c.first_name, 'last_name', c.last_name, 'middle_name', c.middle_name,
            'phone_number', c.phone_number, 'country', c.country,
            'is_tnc_accepted', c.is_tnc_accepted,
            'is_recording_consent_accepted', c.is_recording_consent_accepted,
            'resume_file_id', c.resume_file_id, 'profile_pic_file_id', c.profile_pic_file_id,
            'cf', c.cf)
          FROM can.candidate AS c WHERE c.id = i.candidate_id),
    'catalog_assessment', (
        SELECT jsonb_build_object(
            'id', ca.id,
            'assessment', (
                SELECT jsonb_build_object(
                    'id', a.id, 'name', a.name, 'level', a.level, 'status', a.status,
                    'created_at', bench.rfc3339(a.created_at),
                    'updated_at', bench.rfc3339(a.updated_at))
                  FROM ae.assessment AS a WHERE a.id = ca.assessment_id),
            'catalog', (
                SELECT jsonb_build_object('id', cat.id, 'name', cat.name,
                                          'description', cat.description)
                  FROM ae.catalog AS cat WHERE cat.id = ca.catalog_id))
          FROM ae.catalog_assessment AS ca WHERE ca.id = i.catalog_assessment_id),
    'measurement', (
        SELECT jsonb_build_object(
            'id', m.id, 'status', m.status, 'time_taken', m.time_taken::text,
            'report_url', m.report_url, 'report_file_id', m.report_file_id,
            'measured_at', bench.rfc3339(m.measured_at), 'measured_by', m.measured_by,
            'form_instance_id', m.form_instance_id,
            'measurement_attributes', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                    'id', ma.id, 'numerical_score', ma.numerical_score,
                    'percentile_score', ma.percentile_score, 'remarks', ma.remarks,
                    'description', ma.description,
                    'additional_attributes', ma.additional_attributes,
                    'created_at', bench.rfc3339(ma.created_at), 'created_by', ma.created_by,
                    'updated_at', bench.rfc3339(ma.updated_at), 'updated_by', ma.updated_by,
                    'section_configuration_attribute', CASE WHEN sca.id IS NOT NULL THEN
                        jsonb_build_object(
                            'id', sca.id, 'type', sca.type,
                            'recommended_value', sca.recommended_value,
                            'recommended_ordinal_id', sca.recommended_ordinal_id,
                            'attribute', CASE WHEN at.id IS NOT NULL THEN jsonb_build_object(
                                'id', at.id, 'name', at.name,
                                'attribute_type', at.attribute_type,
                                'is_required', at.is_required, 'min_value', at.min_value,
                                'max_value', at.max_value,
                                'skill', CASE WHEN sk.id IS NOT NULL THEN
                                    jsonb_build_object('id', sk.id, 'name', sk.name) END) END)
                        END,
                    'ordinal', CASE WHEN o.id IS NOT NULL THEN jsonb_build_object(
                        'id', o.id, 'label', o.label, 'value', o.value, 'sort_key', o.sort_key,
                        'min_value', o.min_value, 'max_value', o.max_value) END)
                    ORDER BY ma.id)
                  FROM tcf.measurement_attribute AS ma
                  LEFT JOIN tcf.section_configuration_attribute AS sca
                         ON sca.id = ma.section_configuration_attribute_id
                  LEFT JOIN tcf.attribute AS at ON at.id = sca.attribute_id
                  LEFT JOIN tcf.skill AS sk ON sk.id = at.skill_id
                  LEFT JOIN tcf.ordinal AS o ON o.id = ma.ordinal_id
                 WHERE ma.measurement_id = m.id), '[]'::jsonb))
          FROM tcf.measurement AS m WHERE m.id = i.measurement_id))
  FROM ti.instance AS i
 WHERE i.id = instance_id
$$;

CREATE FUNCTION bench.emit_created() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    snapshot jsonb := bench.payload(NEW.id);
    new_event_id uuid := gen_random_uuid();
    taken_at timestamptz := clock_timestamp();
    outbox_id bigint;
    message text;
BEGIN
    IF snapshot IS NULL THEN
        RETURN NULL;  -- deleted again before commit
    END IF;
    INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                  aggregate_id, snapshot_version, payload, occurred_at, txid)
    VALUES (new_event_id, 'ae.test_instance.created', 'ae_test_instance_created', 'test_instance',
            NEW.id, 1, snapshot, taken_at, pg_current_xact_id())
    RETURNING id INTO outbox_id;
    message := json_build_object(
        'id', outbox_id, 'event_id', new_event_id, 'subscription_key', 'ae.test_instance.created',
        'event_type', 'ae_test_instance_created', 'aggregate_type', 'test_instance',
        'aggregate_id', NEW.id, 'snapshot_version', 1, 'occurred_at', bench.rfc3339(taken_at),
        'payload', snapshot)::text;
    IF octet_length(message) >= 8000 THEN
        message := json_build_object(
            'id', outbox_id, 'event_id', new_event_id,
            'subscription_key', 'ae.test_instance.created',
            'event_type', 'ae_test_instance_created', 'aggregate_type', 'test_instance',
            'aggregate_id', NEW.id, 'snapshot_version', 1, 'occurred_at', bench.rfc3339(taken_at),
            'payload_omitted', true)::text;
    END IF;
    PERFORM pg_notify('ae_events', message);
    RETURN NULL;
END
$$;

-- The hand-written comparator of the updated event (benchmark workload 4): a statement-level
-- trigger on tcf.measurement_attribute that writes one event per instance the statement touched,
-- version = the instance's last version + 1. Simpler than ae_events (no commit-time snapshot, no
-- coalescing across statements, no unchanged-snapshot check), as a DBA would first write it.
CREATE FUNCTION bench.emit_updated(instance_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    snapshot jsonb := bench.payload(instance_id);
    new_event_id uuid := gen_random_uuid();
    taken_at timestamptz := clock_timestamp();
    version integer;
    outbox_id bigint;
    message text;
BEGIN
    SELECT coalesce(max(o.snapshot_version), 0) + 1 INTO version
      FROM ae_events.outbox AS o
     WHERE o.aggregate_type = 'test_instance' AND o.aggregate_id = instance_id;
    INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                  aggregate_id, snapshot_version, payload, occurred_at, txid)
    VALUES (new_event_id, 'ae.test_instance.updated', 'ae_test_instance_updated', 'test_instance',
            instance_id, version, snapshot, taken_at, pg_current_xact_id())
    RETURNING id INTO outbox_id;
    message := json_build_object(
        'id', outbox_id, 'event_id', new_event_id, 'subscription_key', 'ae.test_instance.updated',
        'event_type', 'ae_test_instance_updated', 'aggregate_type', 'test_instance',
        'aggregate_id', instance_id, 'snapshot_version', version,
        'occurred_at', bench.rfc3339(taken_at), 'payload', snapshot)::text;
    IF octet_length(message) >= 8000 THEN
        message := json_build_object(
            'id', outbox_id, 'event_id', new_event_id,
            'subscription_key', 'ae.test_instance.updated',
            'event_type', 'ae_test_instance_updated', 'aggregate_type', 'test_instance',
            'aggregate_id', instance_id, 'snapshot_version', version,
            'occurred_at', bench.rfc3339(taken_at), 'payload_omitted', true)::text;
    END IF;
    PERFORM pg_notify('ae_events', message);
END
$$;

CREATE FUNCTION bench.emit_updated_attributes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bench.emit_updated(i.id)
       FROM ti.instance AS i
      WHERE i.measurement_id IN (SELECT DISTINCT c.measurement_id FROM changed AS c)
      ORDER BY i.id;
    RETURN NULL;
END
$$;
