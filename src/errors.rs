//! Every failure the extension reports, with its SQLSTATE. Reported messages start with
//! `ae_events:` so that a DBA can tell them from the application's own errors.

use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use std::fmt;

pub const PREFIX: &str = "ae_events: ";

#[derive(Debug)]
pub enum EventError {
    /// SPI refused a query of the extension.
    Spi {
        context: String,
        source: pgrx::spi::SpiError,
    },
    /// A value read from the database cannot be rendered into the payload.
    BadValue { what: String },
    /// The extension's own use of PostgreSQL's interfaces failed.
    Internal { what: String },
    /// The installation is not in a state to emit events (a DBA must act).
    Prerequisite { what: String },
    /// A chunk of instances has more attributes than its budget: the pass builds it again in
    /// smaller groups (never reported).
    AttributeBudget,
}

impl EventError {
    pub fn spi(context: impl Into<String>) -> impl FnOnce(pgrx::spi::SpiError) -> EventError {
        let context = context.into();
        move |source| EventError::Spi { context, source }
    }

    pub fn internal(what: impl Into<String>) -> EventError {
        EventError::Internal { what: what.into() }
    }

    /// The same error, its message preceded by `context`.
    pub fn context(self, context: impl std::fmt::Display) -> EventError {
        match self {
            EventError::Spi {
                context: inner,
                source,
            } => EventError::Spi {
                context: format!("{context}: {inner}"),
                source,
            },
            EventError::BadValue { what } => EventError::BadValue {
                what: format!("{what} ({context})"),
            },
            EventError::Internal { what } => EventError::Internal {
                what: format!("{context}: {what}"),
            },
            EventError::Prerequisite { what } => EventError::Prerequisite {
                what: format!("{context}: {what}"),
            },
            EventError::AttributeBudget => EventError::AttributeBudget,
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            EventError::Spi { .. } | EventError::Internal { .. } | EventError::AttributeBudget => {
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR
            }
            EventError::BadValue { .. } => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            EventError::Prerequisite { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
        }
    }

    /// Raise this error in PostgreSQL, which aborts the current transaction.
    pub fn report(self) -> ! {
        raise(self.sqlstate(), self.to_string(), None)
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Spi { context, source } => write!(f, "{context}: {source}"),
            EventError::BadValue { what } => write!(f, "cannot render {what}"),
            EventError::Internal { what } | EventError::Prerequisite { what } => f.write_str(what),
            EventError::AttributeBudget => f.write_str("a chunk's attributes exceed its budget"),
        }
    }
}

impl std::error::Error for EventError {}

/// `message` with the `ae_events:` prefix, so that a DBA can tell the extension's messages from
/// the application's own. Every message the extension reports goes through here.
pub fn prefixed(message: impl fmt::Display) -> String {
    format!("{PREFIX}{message}")
}

/// Raise an ERROR with the given SQLSTATE, message (prefixed here) and detail.
pub fn raise(code: PgSqlErrorCode, message: String, detail: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, prefixed(message), "ae_events");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}

/// Raise an ERROR with the given SQLSTATE, message (prefixed here) and hint.
pub fn raise_with_hint(code: PgSqlErrorCode, message: String, hint: String) -> ! {
    ErrorReport::new(code, prefixed(message), "ae_events")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}

/// Report a WARNING (prefixed).
pub fn warn(message: impl fmt::Display) {
    ereport!(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_WARNING,
        prefixed(message)
    );
}

/// Raise a caught error again, its message saying what failed (`action`, e.g. "write the
/// created event of ti.instance 789"). The SQLSTATE, detail and hint are kept.
pub fn raise_naming(caught: CaughtError, action: &str) -> ! {
    let report = match &caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    let message = report.message();
    let message = message.strip_prefix(PREFIX).unwrap_or(message);
    let mut again = ErrorReport::new(
        report.sql_error_code(),
        prefixed(format!("cannot {action}: {message}")),
        "ae_events",
    );
    if let Some(detail) = report.detail() {
        again = again.set_detail(detail);
    }
    if let Some(hint) = report.hint() {
        again = again.set_hint(hint);
    }
    again.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}
