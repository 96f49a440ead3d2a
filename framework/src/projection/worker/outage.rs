//! Telling an outage from a failing event: a handler error that says the database
//! is unavailable or the transaction lost a race is retried as long as it takes and
//! never parks the event.

use crate::projection::HandlerError;

/// Whether a handler's error says the database is unavailable or the transaction
/// lost a race, rather than that the event cannot be applied: such a batch is rolled
/// back and retried after `outage_backoff`, as long as it takes, and never parked.
/// The `sqlx::Error` may be the handler's error itself or any error in its
/// `source()` chain (a handler's own error type wrapping it).
pub(super) fn is_outage(error: &HandlerError) -> bool {
    let top: &(dyn std::error::Error + 'static) = error.as_ref();
    std::iter::successors(Some(top), |e| e.source())
        .filter_map(|e| e.downcast_ref::<sqlx::Error>())
        .any(is_transient)
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs that go away when the transaction is tried again later: connection
/// exceptions (class 08), serialization failure 40001, deadlock 40P01, lock not
/// available 55P03, statement timeout (query canceled) 57014, the server shutting
/// down or restarting (57P01, 57P02, 57P03), too many connections 53300.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300"
        )
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::fmt;

    use super::*;

    #[test]
    fn transient_sqlstates() {
        for code in [
            "08000", "08006", "40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03",
            "53300",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in [
            "", "23505", "23503", "42P01", "40002", "22P02", "53100", "57000",
        ] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    /// A database error with a SQLSTATE, as Postgres returns it.
    #[derive(Debug)]
    struct Sqlstate(Option<&'static str>);

    impl fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "sqlstate {:?}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "database error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            self.0.map(Cow::Borrowed)
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn database(code: Option<&'static str>) -> HandlerError {
        sqlx_error(sqlx::Error::Database(Box::new(Sqlstate(code))))
    }

    fn sqlx_error(error: sqlx::Error) -> HandlerError {
        Box::new(error)
    }

    #[test]
    fn outages_are_connection_and_transient_database_errors_only() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_outage(&sqlx_error(sqlx::Error::Io(io))));
        assert!(is_outage(&sqlx_error(sqlx::Error::PoolTimedOut)));
        assert!(is_outage(&sqlx_error(sqlx::Error::PoolClosed)));
        assert!(is_outage(&database(Some("40001"))));
        assert!(is_outage(&database(Some("08006"))));
        assert!(!is_outage(&database(Some("23505"))));
        assert!(!is_outage(&database(None)));
        assert!(!is_outage(&sqlx_error(sqlx::Error::RowNotFound)));
        assert!(!is_outage(&"the handler said no".into()));
    }

    /// A handler's own error type wrapping the sqlx error (as `thiserror`'s
    /// `#[from]` does) still says the database is unavailable.
    #[test]
    fn an_outage_wrapped_in_the_handlers_own_error_is_an_outage() {
        #[derive(Debug)]
        struct ReadModelError(sqlx::Error);
        impl fmt::Display for ReadModelError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "updating the read model failed")
            }
        }
        impl std::error::Error for ReadModelError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = |error| -> HandlerError { Box::new(ReadModelError(error)) };
        assert!(is_outage(&wrapped(sqlx::Error::PoolTimedOut)));
        assert!(is_outage(&wrapped(sqlx::Error::Database(Box::new(
            Sqlstate(Some("40P01"))
        )))));
        assert!(!is_outage(&wrapped(sqlx::Error::Database(Box::new(
            Sqlstate(Some("23505"))
        )))));
        assert!(!is_outage(&wrapped(sqlx::Error::RowNotFound)));
    }
}
