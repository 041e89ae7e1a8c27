-- The event catalog (shared/contract/catalog.md §1, src/catalog.rs): the JSON Schema of each
-- subscription key's webhook body and the OpenAPI document of the webhooks, derived from the
-- payloads' Rust types, with the payload rules in force applied. They describe what receivers
-- get (public schema information, no secret), but they show which fields rules hide, and the
-- rules are not the application's to read: SECURITY DEFINER to read them, EXECUTE for the
-- extension's roles (readers, relays, operators) and the DBA.
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
    TO ae_events_reader, ae_events_relay, ae_events_operator;
