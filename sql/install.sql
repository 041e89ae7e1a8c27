-- Internal functions are not for applications: the extension calls them as its owner.
REVOKE ALL ON FUNCTION ae_events._pending_outbox_rows() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.attach() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.detach() FROM PUBLIC;

-- Attach to ti.instance now if it exists; otherwise attach() reports a NOTICE and the DBA calls it
-- once the application's tables are there (events.md §6).
SELECT ae_events.attach();
