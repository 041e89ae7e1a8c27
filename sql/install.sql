-- Internal functions are not for applications: the extension calls them as its owner.
REVOKE ALL ON FUNCTION ae_events._pending_outbox_rows() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._bubble_up_insert_sets() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.attach() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.detach() FROM PUBLIC;
-- resend() writes events as the extension's owner: only roles the DBA grants it to.
REVOKE ALL ON FUNCTION ae_events.resend(bigint[]) FROM PUBLIC;

-- Attach to the application's tables that exist now; if ti.instance does not, attach() reports
-- a NOTICE and the DBA calls it once the application's tables are there (events.md §6).
SELECT ae_events.attach();
