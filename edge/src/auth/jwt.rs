//! JWT verification with an algorithm pinned by configuration.
//!
//! What must stay true: the header's `alg` is compared with the configured
//! algorithm and never used to pick one; the signature is verified before any
//! claim is trusted; time checks use only the caller's `now_s`.

use std::fmt;
use std::sync::Once;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rooms::is_valid_user_id;
use super::MIN_SECRET_BYTES;

/// Longest token [`Verifier::verify`] looks at; longer ones are refused
/// before any decoding (bounds the work an unauthenticated client can cause).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Which JWT algorithm the node accepts; pinned by config, never taken from the token header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[default]
    #[serde(rename = "hs256", alias = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key.
    #[serde(rename = "rs256", alias = "RS256")]
    Rs256,
    /// EdDSA with an Ed25519 public key.
    #[serde(rename = "eddsa", alias = "EdDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    /// The `alg` header value (RFC 7518) of this algorithm.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn to_jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header_name())
    }
}

/// What [`Verifier::new`] needs: the pinned algorithm, its key, and the claim checks.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// The one algorithm accepted.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret; at least [`MIN_SECRET_BYTES`] bytes (RFC 7518 §3.2).
    pub secret: Option<String>,
    /// RS256 / EdDSA public key, PEM (`PUBLIC KEY`, or `RSA PUBLIC KEY` for RS256).
    pub public_key_pem: Option<String>,
    /// When set, tokens must carry exactly this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (or an array containing it).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

/// The claims of a verified token that the node uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; always a valid one ([`is_valid_user_id`]) after verification.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not-before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Room patterns the holder may join (see [`may_join`](super::may_join)); absent = all public rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Box<[String]>>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Box<str>>,
    /// Room patterns (as `rooms`) where the holder moderates: may edit and delete anyone's
    /// messages. Never applies to DM rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderator: Option<Box<[String]>>,
}

/// Why a token was refused, or why settings or minting failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWT: wrong number of parts, bad base64, bad JSON.
    #[error("malformed token")]
    Malformed,
    /// Longer than the node is willing to decode.
    #[error("token too long")]
    TooLong,
    /// The header names an algorithm other than the configured one.
    #[error("wrong algorithm")]
    WrongAlgorithm,
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// No `exp` claim.
    #[error("missing exp")]
    MissingExp,
    /// `exp` (plus leeway) is not after now.
    #[error("token expired")]
    Expired,
    /// `nbf` is after now (plus leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` missing or not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` missing or not containing the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `sub` missing or not a valid user id.
    #[error("invalid sub")]
    InvalidSub,
    /// A time claim that is not a non-negative number.
    #[error("invalid {0} claim")]
    InvalidClaim(&'static str),
    /// HS256 configured without a secret.
    #[error("jwt_secret is required for hs256")]
    MissingSecret,
    /// HS256 secret shorter than [`MIN_SECRET_BYTES`].
    #[error("jwt_secret must be at least 32 bytes")]
    SecretTooShort,
    /// RS256 / EdDSA configured without a public key.
    #[error("jwt_public_key_file is required for {0}")]
    MissingPublicKey(JwtAlgorithm),
    /// The public key PEM is unusable for the configured algorithm.
    #[error("invalid public key for {0}: {1}")]
    InvalidKey(JwtAlgorithm, String),
    /// Minting was asked for an invalid user id.
    #[error("invalid user id: must be 1-64 bytes of [A-Za-z0-9_.@-]")]
    InvalidUserId,
    /// The JWT library failed to sign.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Installs jsonwebtoken's RustCrypto provider as the process default unless
/// one is already installed (see the module docs of `auth`).
pub(super) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means another provider was installed first; that one is used.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(&jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER);
    });
}

/// Verifies tokens for one configuration. Cheap to clone (one per shard); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Verifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

impl Verifier {
    /// Whether a token that expires at `exp` (seconds) is expired at `now_s`, leeway included:
    /// the rule `verify` applies, and the one a session's expiry is checked by.
    pub fn expired(&self, exp: u64, now_s: u64) -> bool {
        exp.saturating_add(self.leeway_s) <= now_s
    }

    /// Builds a verifier; fails on a missing or unusable key, or an HS256 secret under 32 bytes.
    pub fn new(s: &AuthSettings) -> Result<Self, AuthError> {
        ensure_crypto_provider();
        let alg = s.algorithm;
        let key = match alg {
            JwtAlgorithm::Hs256 => {
                let secret = s.secret.as_deref().filter(|v| !v.is_empty()).ok_or(AuthError::MissingSecret)?;
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(AuthError::SecretTooShort);
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::EdDsa => public_key(alg, s.public_key_pem.as_deref())?,
        };
        // exp / nbf / iss / aud are checked in `verify` against the caller's
        // clock; the library's own checks would read the system clock.
        let mut validation = Validation::new(alg.to_jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Self {
            algorithm: alg,
            key,
            validation,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway_s: s.leeway_s,
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Verifies signature (algorithm pinned), `exp` required and > now - leeway, `nbf` (if present) <= now + leeway,
    /// iss/aud when configured, `sub` a valid user id. now_s = unix seconds given by the caller.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        self.check_header(token)?;
        let raw = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(map_jwt_error)?
            .claims;

        let exp = match raw.exp {
            None | Some(Value::Null) => return Err(AuthError::MissingExp),
            Some(v) => numeric_date(&v, false).ok_or(AuthError::InvalidClaim("exp"))?,
        };
        let nbf = match raw.nbf {
            None | Some(Value::Null) => None,
            Some(v) => Some(numeric_date(&v, true).ok_or(AuthError::InvalidClaim("nbf"))?),
        };
        if self.expired(exp, now_s) {
            return Err(AuthError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now_s.saturating_add(self.leeway_s)) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            if !matches!(&raw.iss, Some(Value::String(iss)) if iss == want) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let Some(want) = &self.audience {
            if !audience_matches(raw.aud.as_ref(), want) {
                return Err(AuthError::WrongAudience);
            }
        }
        let sub = match raw.sub {
            Some(Value::String(sub)) if is_valid_user_id(&sub) => sub,
            _ => return Err(AuthError::InvalidSub),
        };
        Ok(Claims {
            sub,
            exp,
            nbf,
            rooms: raw.rooms.map(Vec::into_boxed_slice),
            name: raw.name.map(String::into_boxed_str),
            moderator: raw.moderator.map(Vec::into_boxed_slice),
        })
    }

    /// Refuses a header whose `alg` is not the pinned one (this also catches
    /// `none`, which the library cannot even parse).
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        #[derive(Deserialize)]
        struct HeaderAlg {
            alg: Option<String>,
        }
        let (header_b64, _) = token.split_once('.').ok_or(AuthError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| AuthError::Malformed)?;
        let header: HeaderAlg = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        match header.alg {
            Some(alg) if alg == self.algorithm.header_name() => Ok(()),
            _ => Err(AuthError::WrongAlgorithm),
        }
    }
}

/// The claims as the token carries them; loosely typed where the check
/// itself decides what is acceptable.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    moderator: Option<Vec<String>>,
}

/// A NumericDate (RFC 7519 §2) as whole seconds: integers as they are,
/// fractions rounded towards the stricter side (`exp` down, `nbf` up).
fn numeric_date(v: &Value, round_up: bool) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    // [0, 2^64): fits a u64 (NaN and infinities are outside too).
    if !(0.0..18_446_744_073_709_551_616.0).contains(&f) {
        return None;
    }
    let f = if round_up { f.ceil() } else { f.floor() };
    // In range, checked above; `as` saturates anyway.
    Some(f as u64)
}

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3).
fn audience_matches(aud: Option<&Value>, want: &str) -> bool {
    match aud {
        Some(Value::String(a)) => a == want,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
        _ => false,
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::InvalidSub,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
        // Keys are checked in `Verifier::new`; a signature that cannot even be
        // parsed for the key (wrong length, bad encoding) is a bad signature.
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
            AuthError::BadSignature
        }
        _ => AuthError::Malformed,
    }
}

/// Parses and checks an RS256 / EdDSA public key PEM.
fn public_key(alg: JwtAlgorithm, pem: Option<&str>) -> Result<DecodingKey, AuthError> {
    let pem = pem
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or(AuthError::MissingPublicKey(alg))?;
    let bad = |msg: &str| AuthError::InvalidKey(alg, msg.to_owned());
    match (alg, pem_label(pem)) {
        (_, None) => return Err(bad("not a PEM block")),
        (_, Some(l)) if l.contains("PRIVATE") => return Err(bad("this is a private key; configure the public key")),
        (JwtAlgorithm::Rs256, Some("PUBLIC KEY" | "RSA PUBLIC KEY")) | (JwtAlgorithm::EdDsa, Some("PUBLIC KEY")) => {}
        (_, Some(l)) => return Err(bad(&format!("unsupported PEM block {l:?}; expected PUBLIC KEY"))),
    }
    let key = match alg {
        JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
        _ => DecodingKey::from_ed_pem(pem.as_bytes()),
    }
    .map_err(|e| bad(&format!("{e} (is it a key of this type?)")))?;
    if alg == JwtAlgorithm::EdDsa {
        // The library slices the first 32 bytes without a length check.
        if !matches!(key.kind(), DecodingKeyKind::SecretOrDer(b) if b.len() == 32) {
            return Err(bad("an Ed25519 public key is 32 bytes"));
        }
    }
    // A trial verification makes the provider parse the key now rather than
    // on the first token (for Ed25519: rejects points not on the curve).
    match jsonwebtoken::crypto::verify("", b"", &key, alg.to_jwt()) {
        Ok(_) => Ok(key),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// The label of the first `-----BEGIN <label>-----` line.
fn pem_label(pem: &str) -> Option<&str> {
    let rest = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    let end = rest.find("-----")?;
    Some(rest[..end].trim())
}
