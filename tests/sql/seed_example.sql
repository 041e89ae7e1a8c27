-- The rows behind the payload example of ae.test_instance.created.txt, in one transaction,
-- the measurement attribute inserted after the instance (the created event must still show it).
BEGIN;
INSERT INTO can.candidate (id, external_id, user_id, email, first_name, last_name, middle_name,
    phone_number, country, is_tnc_accepted, is_recording_consent_accepted, resume_file_id,
    profile_pic_file_id, cf)
VALUES (101, 'ext_can_101', 123, 'candidate@example.com', 'Jane', 'Doe', 'Marie',
    '+19876543210', 'USA', true, true, 2001, 3001, '{}');
INSERT INTO ae.assessment (id, name, level, status, created_at, updated_at)
VALUES (303, 'Python Proficiency Test', 'intermediate', 'published',
    '2023-11-01T10:00:00Z', '2023-11-01T10:00:00Z');
INSERT INTO ae.catalog (id, name, description)
VALUES (404, 'Standard Assessments', 'Standard assessment catalog for technical roles.');
INSERT INTO ae.catalog_assessment (id, assessment_id, catalog_id) VALUES (202, 303, 404);
INSERT INTO tcf.skill (id, name) VALUES (5, 'Logic');
INSERT INTO tcf.attribute (id, name, attribute_type, is_required, min_value, max_value, skill_id)
VALUES (10, 'Logical Reasoning', 'skill', true, 0, 100, 5);
INSERT INTO tcf.section_configuration_attribute (id, type, recommended_value, recommended_ordinal_id, attribute_id)
VALUES (10, 'numerical', 70, NULL, 10);
INSERT INTO tcf.measurement (id, status, time_taken, report_url, report_file_id, measured_at,
    measured_by, form_instance_id)
VALUES (505, 'pending', '00:00:00', NULL, NULL, '2023-11-05T10:00:00Z', NULL, NULL);
INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
    catalog_assessment_id, measurement_id, session_instance_id, workflow_candidate_step_id,
    created_at, created_by, updated_at, updated_by)
VALUES (789, 'ext_ti_789', 1234, NULL, 'in_progress', 101, 202, 505, 3001, 4001,
    '2023-11-05T10:00:00Z', 1, '2023-11-05T10:00:00Z', 1);
INSERT INTO tcf.measurement_attribute (id, measurement_id, section_configuration_attribute_id,
    ordinal_id, numerical_score, percentile_score, remarks, description, additional_attributes,
    created_at, created_by, updated_at, updated_by)
VALUES (1, 505, 10, NULL, NULL, NULL, NULL, 'Initial state', '{}',
    '2023-11-05T10:00:00Z', 1, '2023-11-05T10:00:00Z', 1);
COMMIT;
