-- The application's tables (shared/contract/source-schema.md), as the tests, the demo and the
-- benchmarks load them. The extension never creates these. Cross-service foreign keys
-- (ti -> can, ae, tcf) live in cross_service_foreign_keys.sql so that both variants can be tested.

CREATE SCHEMA ti;
CREATE SCHEMA can;
CREATE SCHEMA ae;
CREATE SCHEMA tcf;

CREATE TYPE ti.instance_status AS ENUM ('not_started', 'in_progress', 'completed', 'expired', 'cancelled');

CREATE TABLE can.candidate (
    id bigint PRIMARY KEY,
    external_id text NULL,
    user_id bigint NOT NULL,
    email text NOT NULL,
    first_name text NULL,
    last_name text NULL,
    middle_name text NULL,
    phone_number text NULL,
    country text NULL,
    is_tnc_accepted boolean NOT NULL,
    is_recording_consent_accepted boolean NULL,
    resume_file_id bigint NULL,
    profile_pic_file_id bigint NULL,
    cf jsonb NOT NULL
);

CREATE TABLE ae.assessment (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    level text NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE ae.catalog (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    description text NULL
);

CREATE TABLE ae.catalog_assessment (
    id bigint PRIMARY KEY,
    assessment_id bigint NOT NULL REFERENCES ae.assessment (id),
    catalog_id bigint NOT NULL REFERENCES ae.catalog (id)
);

CREATE TABLE tcf.skill (
    id bigint PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE tcf.attribute (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    attribute_type text NOT NULL,
    is_required boolean NOT NULL,
    min_value numeric NOT NULL,
    max_value numeric NOT NULL,
    skill_id bigint NULL REFERENCES tcf.skill (id)
);

CREATE TABLE tcf.ordinal (
    id bigint PRIMARY KEY,
    label text NOT NULL,
    value text NOT NULL,
    sort_key integer NOT NULL,
    min_value numeric NULL,
    max_value numeric NULL
);

CREATE TABLE tcf.section_configuration_attribute (
    id bigint PRIMARY KEY,
    type text NOT NULL,
    recommended_value numeric NULL,
    recommended_ordinal_id bigint NULL,
    attribute_id bigint NOT NULL REFERENCES tcf.attribute (id)
);

CREATE TABLE tcf.measurement (
    id bigint PRIMARY KEY,
    status text NOT NULL,
    time_taken interval NULL,
    report_url text NULL,
    report_file_id bigint NULL,
    measured_at timestamptz NOT NULL,
    measured_by bigint NULL,
    form_instance_id bigint NULL
);

CREATE TABLE tcf.measurement_attribute (
    id bigint PRIMARY KEY,
    measurement_id bigint NOT NULL REFERENCES tcf.measurement (id),
    section_configuration_attribute_id bigint NOT NULL REFERENCES tcf.section_configuration_attribute (id),
    ordinal_id bigint NULL REFERENCES tcf.ordinal (id),
    numerical_score numeric NULL,
    percentile_score numeric NULL,
    remarks text NULL,
    description text NULL,
    additional_attributes jsonb NULL,
    created_at timestamptz NOT NULL,
    created_by bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by bigint NOT NULL
);
CREATE INDEX measurement_attribute_measurement_id_idx ON tcf.measurement_attribute (measurement_id);

CREATE TABLE ti.instance (
    id bigint PRIMARY KEY,
    external_id text NULL,
    old_id bigint NULL,
    score numeric NULL,
    instance_status ti.instance_status NOT NULL,
    candidate_id bigint NOT NULL,
    catalog_assessment_id bigint NOT NULL,
    measurement_id bigint NULL,
    session_instance_id bigint NULL,
    workflow_candidate_step_id bigint NULL,
    created_at timestamptz NOT NULL,
    created_by bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by bigint NOT NULL
);
CREATE INDEX instance_candidate_id_idx ON ti.instance (candidate_id);
CREATE INDEX instance_measurement_id_idx ON ti.instance (measurement_id);
