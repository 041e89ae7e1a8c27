-- Internal functions are not for applications: the extension calls them as its owner.
REVOKE ALL ON FUNCTION ae_events._pending_outbox_rows() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._bubble_up_insert_sets() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.attach() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.detach() FROM PUBLIC;
-- resend() writes events as the extension's owner: only roles the DBA grants it to.
REVOKE ALL ON FUNCTION ae_events.resend(bigint[]) FROM PUBLIC;
-- The source tables' owners and what the pass lets their code do: for the DBA.
REVOKE ALL ON FUNCTION ae_events.source_owners() FROM PUBLIC;

-- The trigger functions record changes that the pass turns into events as the extension's owner:
-- only attach() may put them on a table (it runs as the DBA). Each also refuses to run on a table
-- other than its own (src/sources.rs, require_trigger_on).
REVOKE ALL ON FUNCTION ae_events.capture_instance_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.capture_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.emit_pending_events() FROM PUBLIC;

-- The role the pass reads the application's tables as (src/privileges.rs): NOLOGIN, no members,
-- no attribute but BYPASSRLS; attach() grants it SELECT on the source tables and nothing else
-- holds it. BYPASSRLS: a table owner's row security policy would run inside the pass, which
-- reads every source table, and can pass rows on with built-in functions alone
-- (docs/security.md, section 1). Cluster-wide like the other roles: created once, kept when the
-- extension is dropped.
DO $$
BEGIN
    BEGIN
        CREATE ROLE ae_events_snapshot NOLOGIN NOINHERIT BYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
END
$$;
-- A role of that name made by someone else before: stripped of what it must not have. Installs
-- and updates in other databases may run at the same moment: under the lock on pg_authid taken
-- at the top of the script (sql/src/outbox.sql), the check and the change are one step, and a
-- role already right is left alone.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_authid AS a
                WHERE a.rolname OPERATOR(pg_catalog.=) 'ae_events_snapshot'
                  AND (a.rolcanlogin OR a.rolsuper OR a.rolcreatedb OR a.rolcreaterole
                       OR a.rolinherit OR a.rolreplication OR NOT a.rolbypassrls
                       OR a.rolpassword IS NOT NULL)) THEN
        ALTER ROLE ae_events_snapshot NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            NOREPLICATION BYPASSRLS PASSWORD NULL;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_auth_members AS m
                WHERE m.roleid OPERATOR(pg_catalog.=) 'ae_events_snapshot'::pg_catalog.regrole) THEN
        RAISE EXCEPTION 'ae_events: the role ae_events_snapshot has members'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The extension reads the application''s tables as this role; no other role may hold it. REVOKE ae_events_snapshot FROM each member, then try again.';
    END IF;
END
$$;

-- Attach to the application's tables that exist now; if ti.instance does not, attach() reports
-- a NOTICE and the DBA calls it once the application's tables are there (shared/contract/events.md §6).
SELECT ae_events.attach();
