-- Deferred fan-outs (docs/updated-events.md#large-fan-outs): a transaction whose changes reach
-- more instances than ae_events.fanout_inline_limit records them here at commit instead of
-- writing their updated events itself; ae_events.run_fanouts() (called by the relays) writes
-- those events afterwards, a page of instances per call, each page its own transaction.
CREATE TABLE ae_events.fanouts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The changed table and the ids of its changed rows (tcf.measurement also stands for its
    -- attributes).
    source_table text NOT NULL,
    row_ids bigint[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    recorded_by xid8 NOT NULL,
    -- The instances found when the fan-out was first run (NULL until then), and those done.
    instances_found bigint,
    instances_done bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE ae_events.fanouts IS
    'ae_events: changes whose updated events are written after their commit, a page at a time, by ae_events.run_fanouts()';

-- The instances of a fan-out not yet given their events, in pages of up to 1,000 ascending ids.
CREATE TABLE ae_events.fanout_pages (
    fanout_id bigint NOT NULL REFERENCES ae_events.fanouts (id) ON DELETE CASCADE,
    page integer NOT NULL,
    instance_ids bigint[] NOT NULL,
    PRIMARY KEY (fanout_id, page)
);

COMMENT ON TABLE ae_events.fanout_pages IS
    'ae_events: the instances of a deferred fan-out still to be given their updated events';

-- Dumped with the database: a restore finishes the fan-outs that were pending.
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanouts', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanouts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.fanout_pages', '');

GRANT SELECT ON ae_events.fanouts TO ae_events_reader, ae_events_relay;
REVOKE ALL ON FUNCTION ae_events.run_fanouts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.run_fanouts() TO ae_events_relay;
