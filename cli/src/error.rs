//! What can go wrong, and the exit code of each.

use tributary::StoreError;
use tributary::command::TopicError;
use tributary::kafka::KafkaOpError;
use tributary::projection::ProjectionError;
use tributary::projection::catalog::CatalogError;

use crate::Exit;

/// Why a command could not do its work. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad arguments, or a command this binary cannot run.
    #[error("{0}")]
    Usage(String),
    /// What was asked for does not exist (or a check failed).
    #[error("{0}")]
    NotFound(String),
    /// DATABASE_URL is not set.
    #[error(
        "DATABASE_URL is not set; set it (or pass --database-url) to the application's Postgres"
    )]
    NoDatabase,
    /// Postgres could not be used.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The schema lacks Tributary migrations this command needs.
    #[error(
        "schema `{schema}` lacks Tributary migrations {missing}; start the application once with this Tributary version (it migrates at start) and try again"
    )]
    Unmigrated {
        /// The schema.
        schema: String,
        /// The missing migrations, as `version (name)`.
        missing: String,
    },
    /// A Kafka request failed.
    #[error(
        "{0}; check KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers) and that the broker is up"
    )]
    Kafka(#[from] KafkaOpError),
    /// Creating or validating topics failed.
    #[error("{0}")]
    Topics(#[from] TopicError),
    /// A catalog query failed.
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    /// A projection operation (replay, rebuild) failed.
    #[error("{0}")]
    Projection(#[from] ProjectionError),
    /// A blocking thread ended abnormally.
    #[error("a worker thread ended abnormally: {0}")]
    Thread(String),
}

impl CliError {
    /// The exit code this error ends the process with.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) | Self::NoDatabase => Exit::Usage,
            Self::Store(StoreError::InvalidUrl(_) | StoreError::InvalidSchema(_)) => Exit::Usage,
            Self::Store(StoreError::Database { operation, .. }) if *operation == "connect" => {
                Exit::Unreachable
            }
            Self::Kafka(_)
            | Self::Topics(TopicError::Kafka(_))
            | Self::Catalog(CatalogError::Kafka(_))
            | Self::Projection(ProjectionError::Kafka { .. } | ProjectionError::Database { .. }) => {
                Exit::Unreachable
            }
            _ => Exit::Failed,
        }
    }
}
