//! HS256 token minting (`edge token`, dev mode) and dev-mode secrets.
//!
//! What must stay true: a minted token is one [`Verifier`](super::Verifier)
//! configured with the same secret accepts until `exp`; minting refuses the
//! same short secrets and invalid user ids that verification refuses.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use rand::Rng as _;

use super::jwt::{ensure_crypto_provider, AuthError, Claims};
use super::rooms::is_valid_user_id;
use super::MIN_SECRET_BYTES;

/// Mints an HS256 token (used by `edge token` and dev mode). Validates user id and secret length.
///
/// `exp` is `now_s + ttl_s` (saturating); no `nbf` is set.
pub fn mint_hs256(
    secret: &str,
    user: &str,
    ttl_s: u64,
    rooms: Option<Vec<String>>,
    name: Option<String>,
    now_s: u64,
) -> Result<String, AuthError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::SecretTooShort);
    }
    if !is_valid_user_id(user) {
        return Err(AuthError::InvalidUserId);
    }
    let claims = Claims {
        sub: user.to_owned(),
        exp: now_s.saturating_add(ttl_s),
        nbf: None,
        rooms: rooms.map(Vec::into_boxed_slice),
        name: name.map(String::into_boxed_str),
        moderator: None,
    };
    mint_claims_hs256(secret, &claims)
}

/// Mints an HS256 token carrying exactly `claims` (the `moderator` claim included).
pub fn mint_claims_hs256(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::SecretTooShort);
    }
    if !is_valid_user_id(&claims.sub) {
        return Err(AuthError::InvalidUserId);
    }
    ensure_crypto_provider();
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthError::Signing(e.to_string()))
}

/// Mints an HS256 token carrying `claims`, plus the `iss` and `aud` the node's verifier
/// requires when it is configured with them (`POST /api/tokens`).
pub fn mint_for_node(secret: &str, claims: &Claims, issuer: Option<&str>, audience: Option<&str>) -> Result<String, AuthError> {
    #[derive(serde::Serialize)]
    struct WithIssuer<'a> {
        #[serde(flatten)]
        claims: &'a Claims,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::SecretTooShort);
    }
    if !is_valid_user_id(&claims.sub) {
        return Err(AuthError::InvalidUserId);
    }
    ensure_crypto_provider();
    let full = WithIssuer {
        claims,
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(&Header::default(), &full, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthError::Signing(e.to_string()))
}

/// A random 32-byte secret, base64url without padding (43 chars), for dev mode.
pub fn generate_dev_secret() -> String {
    let mut bytes = [0u8; 32];
    // ThreadRng: a CSPRNG seeded from the OS.
    rand::rng().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{AuthSettings, Verifier};
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn mint_then_verify() {
        let token = mint_hs256(SECRET, "alice", 60, Some(vec!["team:*".into()]), Some("Alice".into()), NOW).expect("mint");
        let v = Verifier::new(&AuthSettings {
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        })
        .expect("verifier");
        let c = v.verify(&token, NOW + 59).expect("verify");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.nbf, None);
        assert_eq!(c.rooms.as_deref(), Some(&["team:*".to_owned()][..]));
        assert_eq!(c.name.as_deref(), Some("Alice"));
        assert_eq!(v.verify(&token, NOW + 60), Err(AuthError::Expired));
    }

    #[test]
    fn mint_refuses_bad_input() {
        assert_eq!(mint_hs256("short", "alice", 60, None, None, NOW), Err(AuthError::SecretTooShort));
        assert_eq!(
            mint_hs256(&SECRET[..31], "alice", 60, None, None, NOW),
            Err(AuthError::SecretTooShort)
        );
        assert_eq!(mint_hs256(SECRET, "a:b", 60, None, None, NOW), Err(AuthError::InvalidUserId));
        assert_eq!(mint_hs256(SECRET, "", 60, None, None, NOW), Err(AuthError::InvalidUserId));
        assert!(mint_hs256(SECRET, "alice", u64::MAX, None, None, NOW).is_ok(), "exp saturates");
        assert_eq!(AuthError::SecretTooShort.to_string(), "jwt_secret must be at least 32 bytes");
    }

    #[test]
    fn dev_secret_shape() {
        let a = generate_dev_secret();
        let b = generate_dev_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).map(|v| v.len()), Ok(32));
        let v = Verifier::new(&AuthSettings {
            secret: Some(a.clone()),
            ..AuthSettings::default()
        });
        assert!(v.is_ok(), "a dev secret is long enough");
        let token = mint_hs256(&a, "dev", 10, None, None, NOW).expect("mint");
        assert!(v.expect("verifier").verify(&token, NOW).is_ok());
    }
}
