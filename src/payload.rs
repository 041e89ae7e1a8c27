//! The payload of `ae.test_instance.created`: serde structs that mirror the seed's type showcase
//! field for field and in its order. Rendering rules (events.md §2) live in the value types here.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use std::rc::Rc;

/// A `timestamptz` in PostgreSQL's representation; serialized as RFC 3339 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTimestamp(pub i64);

impl Serialize for UtcTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::timefmt::rfc3339_utc(self.0))
    }
}

/// A `numeric` value: a JSON number with the digits PostgreSQL prints (`70`, `85.50`); `NaN` and
/// the infinities as the strings `to_jsonb` gives.
pub type NumericValue = Box<RawValue>;

/// A `jsonb` value, embedded as stored.
pub type JsonbValue = Box<RawValue>;

/// Turn PostgreSQL's text of a numeric into its JSON form.
pub fn numeric_from_text(text: String) -> Result<NumericValue, serde_json::Error> {
    match text.as_str() {
        "NaN" | "Infinity" | "-Infinity" => serde_json::value::to_raw_value(&text),
        _ => RawValue::from_string(text),
    }
}

/// Turn PostgreSQL's text of a jsonb into an embeddable JSON value.
pub fn json_from_text(text: String) -> Result<JsonbValue, serde_json::Error> {
    RawValue::from_string(text)
}

#[derive(Serialize, Debug)]
pub struct TestInstance {
    pub id: i64,
    pub external_id: Option<String>,
    pub old_id: Option<i64>,
    pub score: Option<NumericValue>,
    pub instance_status: String,
    pub candidate_id: i64,
    pub catalog_assessment_id: i64,
    pub measurement_id: Option<i64>,
    pub session_instance_id: Option<i64>,
    pub workflow_candidate_step_id: Option<i64>,
    pub created_at: UtcTimestamp,
    pub created_by: i64,
    pub updated_at: UtcTimestamp,
    pub updated_by: i64,
    pub candidate: Option<Rc<Candidate>>,
    pub catalog_assessment: Option<Rc<CatalogAssessment>>,
    pub measurement: Option<Rc<Measurement>>,
}

#[derive(Serialize, Debug)]
pub struct Candidate {
    pub id: i64,
    pub external_id: Option<String>,
    pub user_id: i64,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub middle_name: Option<String>,
    pub phone_number: Option<String>,
    pub country: Option<String>,
    pub is_tnc_accepted: bool,
    pub is_recording_consent_accepted: Option<bool>,
    pub resume_file_id: Option<i64>,
    pub profile_pic_file_id: Option<i64>,
    pub cf: JsonbValue,
}

#[derive(Serialize, Debug)]
pub struct CatalogAssessment {
    pub id: i64,
    pub assessment: Option<Assessment>,
    pub catalog: Option<Catalog>,
}

#[derive(Serialize, Debug)]
pub struct Assessment {
    pub id: i64,
    pub name: String,
    pub level: String,
    pub status: String,
    pub created_at: UtcTimestamp,
    pub updated_at: UtcTimestamp,
}

#[derive(Serialize, Debug)]
pub struct Catalog {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Measurement {
    pub id: i64,
    pub status: String,
    pub time_taken: Option<String>,
    pub report_url: Option<String>,
    pub report_file_id: Option<i64>,
    pub measured_at: UtcTimestamp,
    pub measured_by: Option<i64>,
    pub form_instance_id: Option<i64>,
    pub measurement_attributes: Vec<MeasurementAttribute>,
}

#[derive(Serialize, Debug)]
pub struct MeasurementAttribute {
    pub id: i64,
    pub numerical_score: Option<NumericValue>,
    pub percentile_score: Option<NumericValue>,
    pub remarks: Option<String>,
    pub description: Option<String>,
    pub additional_attributes: Option<JsonbValue>,
    pub created_at: UtcTimestamp,
    pub created_by: i64,
    pub updated_at: UtcTimestamp,
    pub updated_by: i64,
    pub section_configuration_attribute: Option<SectionConfigurationAttribute>,
    pub ordinal: Option<Ordinal>,
}

#[derive(Serialize, Debug)]
pub struct SectionConfigurationAttribute {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub recommended_value: Option<NumericValue>,
    pub recommended_ordinal_id: Option<i64>,
    pub attribute: Option<Attribute>,
}

#[derive(Serialize, Debug)]
pub struct Attribute {
    pub id: i64,
    pub name: String,
    pub attribute_type: String,
    pub is_required: bool,
    pub min_value: NumericValue,
    pub max_value: NumericValue,
    pub skill: Option<Skill>,
}

#[derive(Serialize, Debug)]
pub struct Skill {
    pub id: i64,
    pub name: String,
}

#[derive(Serialize, Debug)]
pub struct Ordinal {
    pub id: i64,
    pub label: String,
    pub value: String,
    pub sort_key: i32,
    pub min_value: Option<NumericValue>,
    pub max_value: Option<NumericValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_keep_postgres_digits_and_specials_become_strings() {
        let cases = [
            ("70", "70"),
            ("85.50", "85.50"),
            ("-0.001", "-0.001"),
            ("NaN", "\"NaN\""),
            ("Infinity", "\"Infinity\""),
            ("-Infinity", "\"-Infinity\""),
        ];
        for (text, json) in cases {
            assert_eq!(numeric_from_text(text.to_owned()).unwrap().get(), json);
        }
    }
}
