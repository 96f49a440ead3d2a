//! Who calls the API and what they may do.
//!
//! Every request but `GET /health` and `GET /metrics` carries
//! `Authorization: Bearer <token>`. The token maps to a [`Principal`] through the
//! key table ([`ApiKeys`], from `SHOP_API_KEYS`): a customer, with its customer
//! id, or an admin. The table keeps only the SHA-256 digest of each token and
//! compares digests in constant time; tokens are never logged, and neither
//! [`ApiKeys`]'s `Debug` nor any error message shows one.
//!
//! The rules ([`Principal`]'s methods, the handlers of [`crate::api`] apply them):
//! - a customer places orders for itself only: the order's customer is the
//!   principal's; a body that names another customer is refused (403);
//! - an admin does not place orders (403): orders come from customers;
//! - a customer reads its own orders and notifications only: another customer's
//!   order is "not found" (404, so order ids do not leak), another customer's
//!   notifications and order list are 403; an admin reads everything;
//! - a customer cancels its own orders; an admin cancels any;
//! - restock, pay and ship are for admins (403 for a customer);
//! - reading the stock levels is for every principal.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// The environment variable of the key table: comma-separated
/// `<token>=customer:<customer id>` or `<token>=admin:<name>` entries.
pub const API_KEYS_VAR: &str = "SHOP_API_KEYS";

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Who sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A customer, by customer id: acts on its own orders only.
    Customer(String),
    /// An operator, by name (for the logs): restocks, pays, ships, reads all.
    Admin(String),
}

/// A request the principal may not make: answered 403 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl Principal {
    /// Whether this is an admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin(_))
    }

    /// The customer id of a customer, `None` for an admin.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Self::Customer(id) => Some(id),
            Self::Admin(_) => None,
        }
    }

    /// Whether the principal may see or act on what belongs to `customer`: the
    /// customer itself or an admin.
    pub fn may_access(&self, customer: &str) -> bool {
        match self {
            Self::Customer(id) => id == customer,
            Self::Admin(_) => true,
        }
    }

    /// `Ok` for an admin; for a customer, [`Denied`] naming `action`.
    pub fn require_admin(&self, action: &str) -> Result<(), Denied> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Denied(format!("{action} needs the admin role")))
        }
    }

    /// The customer of an order this principal places, given the customer the
    /// request body names, if any: the principal's own id. A body naming another
    /// customer, and any admin, are [`Denied`].
    pub fn ordering_customer(&self, named: Option<&str>) -> Result<String, Denied> {
        match (self, named) {
            (Self::Admin(_), _) => Err(Denied(
                "admins do not place orders: a customer places its own".into(),
            )),
            (Self::Customer(id), Some(named)) if named != id => Err(Denied(format!(
                "you are customer {id}: you cannot place an order for customer {named}"
            ))),
            (Self::Customer(id), _) => Ok(id.clone()),
        }
    }

    /// The customer filter of `GET /orders` given the `customer` of the query: a
    /// customer lists its own orders (asking for another's is [`Denied`]), an admin
    /// what it asks for.
    pub fn orders_filter(&self, requested: Option<String>) -> Result<Option<String>, Denied> {
        match (self, requested) {
            (Self::Admin(_), requested) => Ok(requested),
            (Self::Customer(id), Some(requested)) if requested != *id => Err(Denied(format!(
                "you are customer {id}: you cannot list the orders of customer {requested}"
            ))),
            (Self::Customer(id), _) => Ok(Some(id.clone())),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Customer(id) => write!(f, "customer:{id}"),
            Self::Admin(name) => write!(f, "admin:{name}"),
        }
    }
}

/// A key table that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeysError {
    /// `SHOP_API_KEYS` is not set.
    #[error(
        "{API_KEYS_VAR} is not set: the api role refuses to start without API keys. Set it to \
         comma-separated <token>=customer:<customer id> or <token>=admin:<name> entries \
         (tokens: long random strings, e.g. `openssl rand -hex 32`), e.g. \
         {API_KEYS_VAR}=\"$(openssl rand -hex 32)=admin:ops\""
    )]
    Missing,
    /// No entry at all.
    #[error(
        "{API_KEYS_VAR} lists no keys: give <token>=customer:<customer id> or <token>=admin:<name>, comma-separated"
    )]
    Empty,
    /// Entry `entry` (counted from 1) is malformed. The message never contains
    /// the token.
    #[error(
        "entry {entry} of {API_KEYS_VAR}: {reason} (expected <token>=customer:<customer id> or <token>=admin:<name>)"
    )]
    Entry {
        /// Which entry, from 1.
        entry: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The key table: SHA-256 digests of tokens and their principals. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<([u8; 32], Principal)>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ids of customers and admin names: 1–64 of `A-Z a-z 0-9 . _ -` (the API's ids).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why `token` cannot be a token, if it cannot: 1–[`MAX_TOKEN_BYTES`] visible
/// ASCII characters other than `,` and `=`.
fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("the token is empty")
    } else if token.len() > MAX_TOKEN_BYTES {
        Some("the token is longer than 256 bytes")
    } else if !token
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=')
    {
        Some("the token has a character other than visible ASCII (',' and '=' excluded)")
    } else {
        None
    }
}

impl ApiKeys {
    /// An empty table: every request that needs a principal is refused (401).
    pub fn new() -> Self {
        Self::default()
    }

    /// The table with `token` added for `principal`. A malformed token or name,
    /// or a token already in the table, is an error (entry 0).
    pub fn with(self, token: &str, principal: Principal) -> Result<Self, ApiKeysError> {
        self.insert(0, token, principal)
    }

    fn insert(
        mut self,
        entry: usize,
        token: &str,
        principal: Principal,
    ) -> Result<Self, ApiKeysError> {
        let fail = |reason: &str| ApiKeysError::Entry {
            entry,
            reason: reason.to_owned(),
        };
        if let Some(problem) = token_problem(token) {
            return Err(fail(problem));
        }
        let (Principal::Customer(name) | Principal::Admin(name)) = &principal;
        if !valid_name(name) {
            return Err(fail(&format!(
                "{name:?} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
            )));
        }
        let hash = digest(token);
        if self.keys.iter().any(|(h, _)| same_digest(h, &hash)) {
            return Err(fail("the token is already in the table"));
        }
        Arc::make_mut(&mut self.keys).push((hash, principal));
        Ok(self)
    }

    /// Parses `spec`: comma-separated `<token>=customer:<customer id>` or
    /// `<token>=admin:<name>` entries (spaces around entries are ignored).
    pub fn parse(spec: &str) -> Result<Self, ApiKeysError> {
        let mut keys = Self::new();
        for (index, entry) in spec.split(',').map(str::trim).enumerate() {
            let entry_no = index + 1;
            if entry.is_empty() {
                if spec.trim().is_empty() {
                    return Err(ApiKeysError::Empty);
                }
                return Err(ApiKeysError::Entry {
                    entry: entry_no,
                    reason: "the entry is empty".into(),
                });
            }
            let Some((token, principal)) = entry.split_once('=') else {
                return Err(ApiKeysError::Entry {
                    entry: entry_no,
                    reason: "no '=' between token and principal".into(),
                });
            };
            let principal = match principal.split_once(':') {
                Some(("customer", id)) => Principal::Customer(id.to_owned()),
                Some(("admin", name)) => Principal::Admin(name.to_owned()),
                _ => {
                    return Err(ApiKeysError::Entry {
                        entry: entry_no,
                        reason: "the principal must be customer:<customer id> or admin:<name>"
                            .into(),
                    });
                }
            };
            keys = keys.insert(entry_no, token, principal)?;
        }
        Ok(keys)
    }

    /// The table of `SHOP_API_KEYS` ([`ApiKeysError::Missing`] when unset).
    pub fn from_env() -> Result<Self, ApiKeysError> {
        match std::env::var(API_KEYS_VAR) {
            Ok(spec) => Self::parse(&spec),
            Err(_) => Err(ApiKeysError::Missing),
        }
    }

    /// The principal of `token`, if the table has it. Every entry is compared, in
    /// constant time per entry.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let hash = digest(token);
        let mut found = None;
        for (h, principal) in self.keys.iter() {
            if same_digest(h, &hash) && found.is_none() {
                found = Some(principal);
            }
        }
        found
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the table has no token.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Principals only: neither tokens nor their digests.
        f.debug_struct("ApiKeys")
            .field(
                "principals",
                &self
                    .keys
                    .iter()
                    .map(|(_, p)| p.to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A new random token (64 hex digits, 244 random bits), for development key tables
/// such as the demo's.
pub fn generate_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The bearer token of `headers`: exactly one `Authorization` header of the
/// `Bearer` scheme (case-insensitive) with a non-empty token.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err("send Authorization: Bearer <token>");
    };
    if values.next().is_some() {
        return Err("send one Authorization header, not several");
    }
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the Authorization header must be Bearer <token>")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the Authorization header must be Bearer <token>");
    }
    Ok(token)
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    ApiKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).map_err(ApiError::unauthorized)?;
        let keys = ApiKeys::from_ref(state);
        match keys.authenticate(token) {
            Some(principal) => Ok(principal.clone()),
            None => {
                tracing::warn!(path = %parts.uri.path(), "request with an unknown API token");
                Err(ApiError::unauthorized("unknown API token"))
            }
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, denied.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn alice() -> Principal {
        Principal::Customer("alice".into())
    }

    fn ops() -> Principal {
        Principal::Admin("ops".into())
    }

    #[test]
    fn the_table_parses_and_authenticates() {
        let keys =
            ApiKeys::parse(" t-alice=customer:alice, t-bob=customer:bob,t-ops=admin:ops ").unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.authenticate("t-alice"), Some(&alice()));
        assert_eq!(
            keys.authenticate("t-bob"),
            Some(&Principal::Customer("bob".into()))
        );
        assert_eq!(keys.authenticate("t-ops"), Some(&ops()));
        assert_eq!(keys.authenticate("t-alic"), None);
        assert_eq!(keys.authenticate("T-ALICE"), None);
        assert_eq!(keys.authenticate(""), None);
    }

    #[test]
    fn malformed_tables_say_which_entry_and_never_echo_the_token() {
        let entry = |spec: &str| match ApiKeys::parse(spec) {
            Err(ApiKeysError::Entry { entry, reason }) => (entry, reason),
            other => panic!("{spec}: {other:?}"),
        };
        assert_eq!(ApiKeys::parse("").unwrap_err(), ApiKeysError::Empty);
        assert_eq!(ApiKeys::parse("  ").unwrap_err(), ApiKeysError::Empty);
        assert_eq!(entry("secret1=customer:a,secret2").0, 2);
        assert_eq!(entry("secret1=customer:a,,x=admin:b").0, 2);
        assert_eq!(entry("secret1=root:a").0, 1);
        assert_eq!(entry("secret1=customer:").0, 1);
        assert_eq!(entry("secret1=customer:a b").0, 1);
        assert_eq!(entry("=customer:a").1, "the token is empty");
        assert_eq!(entry("sec ret=customer:a").0, 1);
        let (n, reason) = entry("secret1=customer:a,secret1=admin:b");
        assert_eq!(
            (n, reason.as_str()),
            (2, "the token is already in the table")
        );
        for spec in [
            "secret1=root:a",
            "secret1=customer:a,secret1=admin:b",
            "secret1=customer:a,secret2",
        ] {
            let message = ApiKeys::parse(spec).unwrap_err().to_string();
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains(API_KEYS_VAR), "{message}");
        }
        assert_eq!(entry(&format!("{}=admin:a", "k".repeat(257))).0, 1);
        assert!(ApiKeys::parse(&format!("{}=admin:a", "k".repeat(256))).is_ok());
    }

    #[test]
    fn debug_shows_principals_not_tokens() {
        let keys = ApiKeys::new()
            .with("hunter2-token", alice())
            .unwrap()
            .with("other-token", ops())
            .unwrap();
        let debug = format!("{keys:?}");
        assert_eq!(
            debug,
            r#"ApiKeys { principals: ["customer:alice", "admin:ops"] }"#
        );
        assert!(
            ApiKeysError::Missing
                .to_string()
                .contains("refuses to start")
        );
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Ok("abc"));
        assert!(bearer_token(&headers(&[])).is_err());
        assert!(bearer_token(&headers(&["Basic abc"])).is_err());
        assert!(bearer_token(&headers(&["Bearer "])).is_err());
        assert!(bearer_token(&headers(&["Bearerabc"])).is_err());
        assert!(bearer_token(&headers(&["Bearer a", "Bearer b"])).is_err());
    }

    #[test]
    fn customers_order_for_themselves_and_admins_not_at_all() {
        assert_eq!(alice().ordering_customer(None), Ok("alice".to_owned()));
        assert_eq!(
            alice().ordering_customer(Some("alice")),
            Ok("alice".to_owned())
        );
        assert!(alice().ordering_customer(Some("bob")).is_err());
        assert!(ops().ordering_customer(Some("alice")).is_err());
        assert!(ops().ordering_customer(None).is_err());
    }

    #[test]
    fn customers_see_their_own_things_and_admins_all() {
        assert!(alice().may_access("alice"));
        assert!(!alice().may_access("bob"));
        assert!(ops().may_access("bob"));
        assert_eq!(alice().orders_filter(None), Ok(Some("alice".to_owned())));
        assert_eq!(
            alice().orders_filter(Some("alice".into())),
            Ok(Some("alice".to_owned()))
        );
        assert!(alice().orders_filter(Some("bob".into())).is_err());
        assert_eq!(ops().orders_filter(None), Ok(None));
        assert_eq!(
            ops().orders_filter(Some("bob".into())),
            Ok(Some("bob".to_owned()))
        );
    }

    #[test]
    fn restock_pay_and_ship_need_an_admin() {
        assert_eq!(ops().require_admin("restocking"), Ok(()));
        assert_eq!(
            alice().require_admin("restocking"),
            Err(Denied("restocking needs the admin role".into()))
        );
        assert_eq!(alice().customer(), Some("alice"));
        assert_eq!(ops().customer(), None);
    }
}
