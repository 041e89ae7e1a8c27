-- ae_events 0.7.0 -> 0.7.1: no SQL object changes. The library changed (performance round 2):
-- outbox rows of large transactions written in batches, event ids of UUID version 7, payload
-- digests (the unchanged-snapshot check) in BLAKE3, with 0.7.0's SHA-256 digests still
-- recognized. This script only moves the extension's version.

\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.7.1'" to load this file. \quit
