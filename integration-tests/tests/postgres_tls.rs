//! Postgres over TLS (sqlx with rustls): `sslmode=require` encrypts the store's
//! connections, `verify-ca` accepts the server's certificate when `sslrootcert`
//! signed it and refuses the connection otherwise.
//!
//! Needs Postgres with `ssl = on` (Debian's package has it, with the self-signed
//! "snakeoil" certificate). Runs in the local services mode only: the Postgres
//! container of the container mode has no TLS.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use tributary::{PgStore, StoreError};
use tributary_integration_tests::{HOW_TO_START, database_url, unique_prefix};

/// Debian's self-signed server certificate, which Postgres serves with `ssl = on`.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
/// Overrides [`SNAKEOIL`]: the CA certificate (or self-signed server certificate)
/// of the test Postgres.
const ROOT_CERT_VAR: &str = "TRIBUTARY_TEST_PG_ROOT_CERT";

/// `DATABASE_URL` with `params` added to its query string.
fn url_with(params: &str) -> String {
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

fn schema(test: &str) -> String {
    unique_prefix(test).replace('-', "_")
}

/// The certificate that signed the test server's, or a failure saying what is
/// needed.
fn server_root_cert() -> PathBuf {
    let path = std::env::var(ROOT_CERT_VAR).unwrap_or_else(|_| SNAKEOIL.to_owned());
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "verify-ca needs the certificate that signed the Postgres server's certificate: \
         {} does not exist. Debian's postgresql package serves the self-signed \
         {SNAKEOIL} with `ssl = on`; for another Postgres, enable ssl and set \
         {ROOT_CERT_VAR} to its CA certificate (PEM)",
        path.display()
    );
    path
}

async fn connect(url: &str, test: &str) -> Result<PgStore, StoreError> {
    PgStore::connect(url, &schema(test)).await
}

/// Whether the connection the pool hands out is encrypted, per the server.
async fn encrypted(store: &PgStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_ssl query")
}

#[tokio::test]
async fn sslmode_require_encrypts_the_store_connections() {
    let url = url_with("sslmode=require");
    let store = connect(&url, "tls-require").await.unwrap_or_else(|e| {
        panic!("sslmode=require must connect to a Postgres with ssl = on ({e}): {HOW_TO_START}")
    });
    assert!(encrypted(&store).await, "the connection is not encrypted");
    // Every connection of the pool, not only the first one.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(store.pool().acquire().await.expect("acquire"));
    }
    for conn in &mut held {
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut **conn)
                .await
                .expect("pg_stat_ssl query");
        assert!(ssl, "a pooled connection is not encrypted");
    }
}

#[tokio::test]
async fn sslmode_disable_is_not_encrypted() {
    // The check above could pass if pg_stat_ssl said true for everything.
    let store = connect(&url_with("sslmode=disable"), "tls-disable")
        .await
        .unwrap_or_else(|e| panic!("no usable Postgres ({e}): {HOW_TO_START}"));
    assert!(!encrypted(&store).await);
}

/// [`url_with`], connecting to `host` instead of the URL's host.
fn url_with_host(host: &str, params: &str) -> String {
    let url = url_with(params);
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL has a scheme");
    let (user, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let end = rest.find([':', '/', '?']).unwrap_or(rest.len());
    let at = if user.is_empty() { "" } else { "@" };
    format!("{scheme}://{user}{at}{host}{}", &rest[end..])
}

#[tokio::test]
async fn sslmode_verify_ca_accepts_the_server_certificate() {
    let root = server_root_cert();
    // The host the certificate names: see the next test for why.
    let url = url_with_host(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", root.display()),
    );
    let store = connect(&url, "tls-verify-ca")
        .await
        .unwrap_or_else(|e| panic!("verify-ca with {} must connect: {e}", root.display()));
    assert!(encrypted(&store).await);
    let url = url_with_host(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let store = connect(&url, "tls-verify-full")
        .await
        .unwrap_or_else(|e| panic!("verify-full with {} must connect: {e}", root.display()));
    assert!(encrypted(&store).await);
}

/// Known limitation, documented in docs/operations.md: with sqlx 0.8.6 and rustls
/// 0.23.24 or later, `verify-ca` checks the host name as `verify-full` does (sqlx
/// ignores rustls's older `NotValidForName` error only, not `NotValidForNameContext`:
/// launchbadge/sqlx#3793, fixed by #3861 after 0.8.6). When this test fails after a
/// sqlx upgrade, `verify-ca` works as libpq's again: update the docs and this test.
#[tokio::test]
async fn sslmode_verify_ca_still_checks_the_host_name_with_sqlx_0_8() {
    let root = server_root_cert();
    let url = url_with_host(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", root.display()),
    );
    let error = match connect(&url, "tls-verify-ca-ip").await {
        Ok(_) => panic!(
            "verify-ca to 127.0.0.1 with a certificate for localhost now connects: \
             sqlx's verify-ca no longer checks the host name; update docs/operations.md"
        ),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(r#"certificate not valid for name "127.0.0.1""#),
        "{error}"
    );
}

#[tokio::test]
async fn sslmode_verify_ca_refuses_a_certificate_another_ca_signed() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/untrusted-test-ca.pem");
    assert!(fixture.is_file(), "{} is missing", fixture.display());
    let url = url_with_host(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", fixture.display()),
    );
    let error = match connect(&url, "tls-wrong-ca").await {
        Ok(_) => panic!("verify-ca accepted a server certificate the root did not sign"),
        Err(error) => error,
    };
    assert!(
        matches!(
            error,
            StoreError::Database {
                operation: "connect",
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("Postgres connect failed: ")
            && message.contains("invalid peer certificate: UnknownIssuer"),
        "the error should say the certificate was refused: {message}"
    );
}
