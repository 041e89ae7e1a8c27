-- The optional foreign keys from ti.instance into the other services' tables.
ALTER TABLE ti.instance
    ADD CONSTRAINT instance_candidate_fk FOREIGN KEY (candidate_id) REFERENCES can.candidate (id),
    ADD CONSTRAINT instance_catalog_assessment_fk FOREIGN KEY (catalog_assessment_id) REFERENCES ae.catalog_assessment (id),
    ADD CONSTRAINT instance_measurement_fk FOREIGN KEY (measurement_id) REFERENCES tcf.measurement (id);
