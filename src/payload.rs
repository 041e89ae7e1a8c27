//! The payload of `ae.test_instance.created`: serde structs that mirror the seed's type showcase
//! field for field and in its order. Rendering rules (shared/contract/events.md §2) live in the value types here.

use crate::jsonb;
use crate::rows::{varlena_bytes, ColumnValue};
use pgrx::pg_sys;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::rc::Rc;

/// A `timestamptz` in PostgreSQL's representation; serialized as RFC 3339 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTimestamp(pub i64);

impl Serialize for UtcTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buffer = crate::timefmt::TimestampBuffer::default();
        serializer.serialize_str(crate::timefmt::rfc3339_utc_in(self.0, &mut buffer))
    }
}

impl ColumnValue for UtcTimestamp {
    const TYPE: pg_sys::Oid = pg_sys::TIMESTAMPTZOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        Ok(UtcTimestamp(datum.value() as i64))
    }
}

/// A `numeric` value: a JSON number holding PostgreSQL's own value (its digits and scale, so
/// `85.50` stays `85.50`); `NaN` and the infinities, which JSON numbers cannot hold, as the
/// strings `to_jsonb` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumericValue {
    /// The numeric as stored, with a 4-byte varlena header.
    Number(Vec<u8>),
    Special(&'static str),
}

impl NumericValue {
    /// Classify a numeric's bytes (4-byte header first) by its header word.
    pub fn from_stored(bytes: Vec<u8>) -> Result<NumericValue, String> {
        const NUMERIC_SIGN_MASK: u16 = 0xC000;
        const NUMERIC_SPECIAL: u16 = 0xC000;
        const NUMERIC_EXT_SIGN_MASK: u16 = 0xF000;
        const NUMERIC_NAN: u16 = 0xC000;
        const NUMERIC_PINF: u16 = 0xD000;
        const NUMERIC_NINF: u16 = 0xF000;
        let header = match bytes.get(4..6) {
            Some(word) => u16::from_ne_bytes([word[0], word[1]]),
            None => return Err("a truncated numeric".to_owned()),
        };
        if header & NUMERIC_SIGN_MASK != NUMERIC_SPECIAL {
            return Ok(NumericValue::Number(bytes));
        }
        match header & NUMERIC_EXT_SIGN_MASK {
            NUMERIC_NAN => Ok(NumericValue::Special("NaN")),
            NUMERIC_PINF => Ok(NumericValue::Special("Infinity")),
            NUMERIC_NINF => Ok(NumericValue::Special("-Infinity")),
            other => Err(format!("a numeric with an unknown header {other:#x}")),
        }
    }
}

impl Serialize for NumericValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            NumericValue::Number(bytes) => jsonb::Numeric(bytes).serialize(serializer),
            NumericValue::Special(text) => serializer.serialize_str(text),
        }
    }
}

impl ColumnValue for NumericValue {
    const TYPE: pg_sys::Oid = pg_sys::NUMERICOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: a numeric datum (caller's contract).
        NumericValue::from_stored(unsafe { varlena_bytes(datum, true) })
    }
}

/// A `jsonb` value, embedded as stored (its root container's bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonbValue(pub Vec<u8>);

impl Serialize for JsonbValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        jsonb::Container(&self.0).serialize(serializer)
    }
}

impl ColumnValue for JsonbValue {
    const TYPE: pg_sys::Oid = pg_sys::JSONBOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: a jsonb datum (caller's contract).
        Ok(JsonbValue(unsafe { varlena_bytes(datum, false) }))
    }
}

/// A part of the payload that many payloads of a chunk share (the same reference row): encoded
/// to jsonb once, then copied in as bytes.
#[derive(Debug)]
pub struct Shared<T> {
    value: T,
    encoded: OnceCell<Vec<u8>>,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared {
            value,
            encoded: OnceCell::new(),
        }
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return self.value.serialize(serializer);
        }
        let encoded = match self.encoded.get() {
            Some(encoded) => encoded,
            None => {
                let mut encoder = jsonb::Encoder::default();
                let bytes = encoder
                    .encode(&self.value)
                    .map_err(serde::ser::Error::custom)?
                    .to_vec();
                self.encoded.get_or_init(|| bytes)
            }
        };
        jsonb::Container(encoded).serialize(serializer)
    }
}

/// An `interval`, as PostgreSQL prints it with `IntervalStyle = postgres`.
pub struct IntervalText(pub String);

impl ColumnValue for IntervalText {
    const TYPE: pg_sys::Oid = pg_sys::INTERVALOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: an interval datum points to PostgreSQL's fixed-size Interval struct.
        let interval = unsafe { &*datum.cast_mut_ptr::<pg_sys::Interval>() };
        Ok(IntervalText(crate::timefmt::interval_postgres_style(
            interval,
        )))
    }
}

// The JSON Schema of each value type, as it is serialized (src/catalog.rs builds each
// subscription key's schema from the structs below, which derive theirs from these).

impl JsonSchema for UtcTimestamp {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "UtcTimestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // What rfc3339_utc_in writes: years outside 0000-9999 in ISO 8601's expanded form and
        // the infinities are no RFC 3339 date-times, so the pattern, not the format, is exact.
        json_schema!({
            "type": "string",
            "format": "date-time",
            "pattern": "^(-?infinity|([0-9]{4}|[+-][0-9]{4,})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?Z)$",
            "description": "RFC 3339 in UTC with Z; years outside 0000-9999 as ISO 8601 expanded years (+12345-06-07T08:09:10Z), and \"infinity\" / \"-infinity\""
        })
    }
}

impl JsonSchema for NumericValue {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Numeric".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A pattern constrains strings only: numbers pass, strings only if special.
        json_schema!({
            "type": ["number", "string"],
            "pattern": "^(NaN|-?Infinity)$",
            "description": "a PostgreSQL numeric with its own digits (85.50); NaN and the infinities as the strings \"NaN\", \"Infinity\", \"-Infinity\""
        })
    }
}

impl JsonSchema for JsonbValue {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Jsonb".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Free shape: the stored jsonb as it is (an object in the seed, but the column takes any).
        json_schema!({
            "description": "stored jsonb, as it is: its shape varies per tenant configuration"
        })
    }
}

impl<T: JsonSchema> JsonSchema for Shared<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[derive(Serialize, JsonSchema, Debug)]
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
    #[schemars(description = "null when the referenced row does not exist")]
    pub candidate: Option<Rc<Candidate>>,
    #[schemars(description = "null when the referenced row does not exist")]
    pub catalog_assessment: Option<Rc<Shared<CatalogAssessment>>>,
    #[schemars(
        description = "null when the instance has no measurement or the referenced row does not exist"
    )]
    pub measurement: Option<Rc<Measurement>>,
}

#[derive(Serialize, JsonSchema, Debug)]
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
    #[schemars(
        description = "stored jsonb (can.candidate.cf), as it is: its shape varies per tenant configuration"
    )]
    pub cf: JsonbValue,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct CatalogAssessment {
    pub id: i64,
    #[schemars(description = "null when the referenced row does not exist")]
    pub assessment: Option<Assessment>,
    #[schemars(description = "null when the referenced row does not exist")]
    pub catalog: Option<Catalog>,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Assessment {
    pub id: i64,
    pub name: String,
    pub level: String,
    pub status: String,
    pub created_at: UtcTimestamp,
    pub updated_at: UtcTimestamp,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Catalog {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Measurement {
    pub id: i64,
    pub status: String,
    #[schemars(
        description = "a PostgreSQL interval in its postgres style (00:00:00, 1 day 02:03:04.5)"
    )]
    pub time_taken: Option<String>,
    pub report_url: Option<String>,
    pub report_file_id: Option<i64>,
    pub measured_at: UtcTimestamp,
    pub measured_by: Option<i64>,
    pub form_instance_id: Option<i64>,
    pub measurement_attributes: Vec<MeasurementAttribute>,
}

#[derive(Serialize, JsonSchema, Debug)]
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
    /// Shared by every attribute of the chunk that refers to the same row (read and built once).
    #[schemars(description = "null when the referenced row does not exist")]
    pub section_configuration_attribute: Option<Rc<Shared<SectionConfigurationAttribute>>>,
    #[schemars(
        description = "null when the attribute has no ordinal or the referenced row does not exist"
    )]
    pub ordinal: Option<Rc<Shared<Ordinal>>>,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct SectionConfigurationAttribute {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub recommended_value: Option<NumericValue>,
    pub recommended_ordinal_id: Option<i64>,
    #[schemars(description = "null when the referenced row does not exist")]
    pub attribute: Option<Attribute>,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Attribute {
    pub id: i64,
    pub name: String,
    pub attribute_type: String,
    pub is_required: bool,
    pub min_value: NumericValue,
    pub max_value: NumericValue,
    #[schemars(
        description = "null when the attribute has no skill or the referenced row does not exist"
    )]
    pub skill: Option<Skill>,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Skill {
    pub id: i64,
    pub name: String,
}

#[derive(Serialize, JsonSchema, Debug)]
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

    fn numeric_with_header(header: u16) -> Vec<u8> {
        let mut bytes = vec![0; 6];
        jsonb::set_varsize_4b(&mut bytes, 6);
        bytes[4..6].copy_from_slice(&header.to_ne_bytes());
        bytes
    }

    #[test]
    fn shared_parts_encode_to_the_same_bytes_as_inline_ones() {
        #[derive(Serialize)]
        struct Part {
            name: &'static str,
            n: i64,
        }
        #[derive(Serialize)]
        struct WithShared {
            a: Rc<Shared<Part>>,
            b: Option<Rc<Shared<Part>>>,
            id: i64,
        }
        #[derive(Serialize)]
        struct Inline {
            a: Part,
            b: Option<Part>,
            id: i64,
        }
        let part = || Part {
            name: "x",
            n: 12345,
        };
        let shared_part = Rc::new(Shared::new(part()));
        let shared = WithShared {
            a: Rc::clone(&shared_part),
            b: Some(shared_part),
            id: 1,
        };
        let inline = Inline {
            a: part(),
            b: Some(part()),
            id: 1,
        };
        let mut encoder = jsonb::Encoder::default();
        let expected = encoder.encode(&inline).unwrap().to_vec();
        // Twice: the first encodes the part, the second copies the kept bytes.
        assert_eq!(encoder.encode(&shared).unwrap(), expected.as_slice());
        assert_eq!(encoder.encode(&shared).unwrap(), expected.as_slice());
    }

    #[test]
    fn special_numerics_become_strings_and_others_stay_numbers() {
        let cases = [
            (0xC000, Some("NaN")),
            (0xD000, Some("Infinity")),
            (0xF000, Some("-Infinity")),
            (0x8000, None),
            (0x0000, None),
            (0x4000, None),
        ];
        for (header, special) in cases {
            let bytes = numeric_with_header(header);
            let expected = match special {
                Some(text) => NumericValue::Special(text),
                None => NumericValue::Number(bytes.clone()),
            };
            assert_eq!(
                NumericValue::from_stored(bytes),
                Ok(expected),
                "{header:#x}"
            );
        }
    }
}
