//! The data model of bubble-up: the source tables whose rows are part of an instance's snapshot
//! (`Source`), what a changed row's key identifies (`Key`), and the DBA's per-table choice of
//! which of them emit updated events (`EnabledSources`, from `ae_events.bubble_up`). The capture
//! trigger is in `capture.rs`, the lookup from changed rows to instances in `lookup.rs`.

use pgrx::prelude::*;

/// A table whose changes bubble up to instances (its name is the trigger's argument and the key
/// of `ae_events.bubble_up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Instance,
    Candidate,
    Measurement,
    MeasurementAttribute,
    CatalogAssessment,
    Assessment,
    Catalog,
    SectionConfigurationAttribute,
    Attribute,
    Skill,
    Ordinal,
}

pub const SOURCES: [Source; 11] = [
    Source::Instance,
    Source::Candidate,
    Source::Measurement,
    Source::MeasurementAttribute,
    Source::CatalogAssessment,
    Source::Assessment,
    Source::Catalog,
    Source::SectionConfigurationAttribute,
    Source::Attribute,
    Source::Skill,
    Source::Ordinal,
];

impl Source {
    pub fn table(self) -> &'static str {
        match self {
            Source::Instance => "ti.instance",
            Source::Candidate => "can.candidate",
            Source::Measurement => "tcf.measurement",
            Source::MeasurementAttribute => "tcf.measurement_attribute",
            Source::CatalogAssessment => "ae.catalog_assessment",
            Source::Assessment => "ae.assessment",
            Source::Catalog => "ae.catalog",
            Source::SectionConfigurationAttribute => "tcf.section_configuration_attribute",
            Source::Attribute => "tcf.attribute",
            Source::Skill => "tcf.skill",
            Source::Ordinal => "tcf.ordinal",
        }
    }

    pub fn from_table(table: &[u8]) -> Option<Source> {
        SOURCES
            .into_iter()
            .find(|source| source.table().as_bytes() == table)
    }

    /// The operations that change an instance's snapshot through this table. (Inserting or
    /// deleting a referenced row leaves the instances pointing at nothing or at a new id: only
    /// attributes are collected by their measurement, so only they count when added or removed.)
    pub fn operations(self) -> &'static str {
        match self {
            Source::MeasurementAttribute => "INSERT OR UPDATE OR DELETE",
            _ => "UPDATE",
        }
    }

    /// What a changed row's key identifies.
    pub fn key(self) -> Key {
        match self {
            Source::Instance => Key::Instance,
            Source::Candidate => Key::Candidate,
            Source::Measurement | Source::MeasurementAttribute => Key::Measurement,
            Source::CatalogAssessment => Key::CatalogAssessment,
            Source::Assessment => Key::Assessment,
            Source::Catalog => Key::Catalog,
            Source::SectionConfigurationAttribute => Key::SectionConfigurationAttribute,
            Source::Attribute => Key::Attribute,
            Source::Skill => Key::Skill,
            Source::Ordinal => Key::Ordinal,
        }
    }

    /// The column of a changed row that holds its key.
    pub fn key_column(self) -> &'static str {
        match self {
            Source::MeasurementAttribute => "measurement_id",
            _ => "id",
        }
    }

    /// Whether the table holds reference data, shared by many instances (catalogs, skills, ...),
    /// rather than rows of one instance or candidate.
    pub fn is_reference(self) -> bool {
        !matches!(
            self,
            Source::Instance
                | Source::Candidate
                | Source::Measurement
                | Source::MeasurementAttribute
        )
    }

    /// Whether bubble-up from this table is on when `ae_events.bubble_up` has no row for it:
    /// instance-specific tables on, reference data off (renaming a catalog would otherwise fan
    /// out to every instance ever taken).
    pub fn enabled_by_default(self) -> bool {
        !self.is_reference()
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// What the key of a changed row identifies; each kind has one lookup to instance ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Instance,
    Candidate,
    Measurement,
    CatalogAssessment,
    Assessment,
    Catalog,
    SectionConfigurationAttribute,
    Attribute,
    Skill,
    Ordinal,
}

impl Key {
    /// Every key, in the order of `describe`'s table.
    pub const ALL: [Key; 10] = [
        Key::Instance,
        Key::Candidate,
        Key::Measurement,
        Key::CatalogAssessment,
        Key::Assessment,
        Key::Catalog,
        Key::SectionConfigurationAttribute,
        Key::Attribute,
        Key::Skill,
        Key::Ordinal,
    ];

    /// The key whose table `describe` names.
    pub fn from_table(table: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.describe() == table)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Key::Instance => "ti.instance",
            Key::Candidate => "can.candidate",
            Key::Measurement => "tcf.measurement",
            Key::CatalogAssessment => "ae.catalog_assessment",
            Key::Assessment => "ae.assessment",
            Key::Catalog => "ae.catalog",
            Key::SectionConfigurationAttribute => "tcf.section_configuration_attribute",
            Key::Attribute => "tcf.attribute",
            Key::Skill => "tcf.skill",
            Key::Ordinal => "tcf.ordinal",
        }
    }
}

/// The sources whose changes bubble up in this transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnabledSources(u16);

impl EnabledSources {
    pub fn defaults() -> EnabledSources {
        EnabledSources(
            SOURCES
                .into_iter()
                .filter(|source| source.enabled_by_default())
                .fold(0, |bits, source| bits | source.bit()),
        )
    }

    pub fn set(&mut self, source: Source, enabled: bool) {
        if enabled {
            self.0 |= source.bit();
        } else {
            self.0 &= !source.bit();
        }
    }

    pub fn contains(self, source: Source) -> bool {
        self.0 & source.bit() != 0
    }
}

/// The oid of a source table (InvalidOid when it does not exist), from the system caches.
pub fn table_oid(source: Source) -> pg_sys::Oid {
    let Some((schema, name)) = source.table().split_once('.') else {
        return pg_sys::InvalidOid;
    };
    let (Ok(schema), Ok(name)) = (std::ffi::CString::new(schema), std::ffi::CString::new(name))
    else {
        return pg_sys::InvalidOid;
    };
    // SAFETY: syscache lookups by name; missing_ok returns InvalidOid instead of raising.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_found_by_its_table_name_and_nothing_else_is() {
        for source in SOURCES {
            assert_eq!(Source::from_table(source.table().as_bytes()), Some(source));
        }
        for other in [
            "",
            "ti.instances",
            "public.instance",
            "TI.INSTANCE",
            "instance",
        ] {
            assert_eq!(Source::from_table(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn instance_specific_tables_are_on_by_default_and_reference_data_off() {
        let defaults = EnabledSources::defaults();
        let expected = [
            (Source::Instance, true, "UPDATE", Key::Instance),
            (Source::Candidate, true, "UPDATE", Key::Candidate),
            (Source::Measurement, true, "UPDATE", Key::Measurement),
            (
                Source::MeasurementAttribute,
                true,
                "INSERT OR UPDATE OR DELETE",
                Key::Measurement,
            ),
            (
                Source::CatalogAssessment,
                false,
                "UPDATE",
                Key::CatalogAssessment,
            ),
            (Source::Assessment, false, "UPDATE", Key::Assessment),
            (Source::Catalog, false, "UPDATE", Key::Catalog),
            (
                Source::SectionConfigurationAttribute,
                false,
                "UPDATE",
                Key::SectionConfigurationAttribute,
            ),
            (Source::Attribute, false, "UPDATE", Key::Attribute),
            (Source::Skill, false, "UPDATE", Key::Skill),
            (Source::Ordinal, false, "UPDATE", Key::Ordinal),
        ];
        assert_eq!(expected.len(), SOURCES.len());
        for (source, on, operations, key) in expected {
            assert_eq!(defaults.contains(source), on, "{source:?}");
            assert_eq!(source.operations(), operations, "{source:?}");
            assert_eq!(source.key(), key, "{source:?}");
        }
    }

    #[test]
    fn a_setting_switches_only_its_own_table() {
        let mut enabled = EnabledSources::defaults();
        enabled.set(Source::Catalog, true);
        enabled.set(Source::Candidate, false);
        for source in SOURCES {
            let expected = match source {
                Source::Catalog => true,
                Source::Candidate => false,
                other => other.enabled_by_default(),
            };
            assert_eq!(enabled.contains(source), expected, "{source:?}");
        }
    }
}
