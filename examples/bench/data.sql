-- Benchmark data (loaded once into a template database; every variant gets a copy).
-- @N@ candidates and measurements, each measurement with 5 attributes (the fifth with an
-- ordinal), shared reference data with skills set. Instance i uses candidate i and measurement
-- i, so every payload is about 4 kB. Every value is derived from the row number: the same
-- instance gives the same payload in every database.
INSERT INTO ae.assessment
SELECT g, 'Assessment ' || g, (ARRAY['basic', 'intermediate', 'advanced'])[1 + g % 3], 'published',
       timestamptz '2024-01-01 00:00:00Z' + g * interval '1 hour',
       timestamptz '2024-02-01 00:00:00.25Z' + g * interval '1 hour'
  FROM generate_series(1, 10) AS g;
INSERT INTO ae.catalog
SELECT g, 'Catalog ' || g, 'Assessments of catalog ' || g || ' for technical roles.'
  FROM generate_series(1, 3) AS g;
INSERT INTO ae.catalog_assessment SELECT g, 1 + g % 10, 1 + g % 3 FROM generate_series(1, 20) AS g;
INSERT INTO tcf.skill SELECT g, 'Skill ' || g FROM generate_series(1, 10) AS g;
INSERT INTO tcf.attribute
SELECT g, 'Attribute ' || g, 'skill', g % 2 = 0, 0, 100, 1 + g % 10 FROM generate_series(1, 5) AS g;
INSERT INTO tcf.ordinal
SELECT g, 'Level ' || g, 'L' || g, g, (g - 1) * 20, g * 20 FROM generate_series(1, 5) AS g;
INSERT INTO tcf.section_configuration_attribute
SELECT g, CASE WHEN g = 5 THEN 'ordinal' ELSE 'numerical' END,
       CASE WHEN g = 5 THEN NULL ELSE 70 END, CASE WHEN g = 5 THEN 3 END, g
  FROM generate_series(1, 5) AS g;

INSERT INTO can.candidate
SELECT g, 'ext_can_' || g, 100000 + g, 'candidate' || g || '@example.com', 'Jane', 'Doe', 'Marie',
       '+1987654' || lpad(g::text, 6, '0'), 'USA', true, g % 3 <> 0, 2000000 + g, NULL,
       jsonb_build_object('source', 'referral', 'team', 'platform-' || g % 7,
                          'tags', jsonb_build_array('backend', 'remote', 'senior'),
                          'notes', 'Prefers morning sessions; needs a quiet room and a second screen.')
  FROM generate_series(1, @N@) AS g;
INSERT INTO tcf.measurement
SELECT g, 'in_progress', make_interval(mins => g % 90, secs => (g % 60) / 4.0),
       'https://reports.example.com/m/' || g, 3000000 + g,
       timestamptz '2024-03-01 00:00:00Z' + g * interval '1 second', 77, 4000000 + g
  FROM generate_series(1, @N@) AS g;
INSERT INTO tcf.measurement_attribute
SELECT (m - 1) * 5 + k, m, k, CASE WHEN k = 5 THEN 1 + m % 5 END,
       CASE WHEN k = 5 THEN NULL ELSE round((m * 7 + k * 13) % 10000 / 100.0, 2) END,
       CASE WHEN k = 5 THEN NULL ELSE (m + k) % 100 END,
       'Solid answer on part ' || k, 'Scored by the rubric of section ' || k,
       jsonb_build_object('rubric', 'v2', 'reviewed', k % 2 = 0),
       timestamptz '2024-03-01 00:00:00Z' + m * interval '1 second', 77,
       timestamptz '2024-03-01 00:10:00.5Z' + m * interval '1 second', 78
  FROM generate_series(1, @N@) AS m, generate_series(1, 5) AS k;
ANALYZE;
