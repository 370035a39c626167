//! Tests of [`Verifier`]: signatures, pinned algorithms, time and claim checks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::test_keys::{ED25519_PRIVATE_PEM, ED25519_PUBLIC_PEM, OTHER_RSA_PRIVATE_PEM, RSA_PRIVATE_PEM, RSA_PUBLIC_PEM};
use super::{AuthError, AuthSettings, JwtAlgorithm, Verifier};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";
const NOW: u64 = 1_700_000_000;

fn hs_settings() -> AuthSettings {
    AuthSettings {
        secret: Some(SECRET.into()),
        leeway_s: 5,
        ..AuthSettings::default()
    }
}

fn hs_verifier() -> Verifier {
    Verifier::new(&hs_settings()).expect("hs256 verifier")
}

fn pk_verifier(algorithm: JwtAlgorithm, pem: &str) -> Verifier {
    Verifier::new(&AuthSettings {
        algorithm,
        public_key_pem: Some(pem.into()),
        ..AuthSettings::default()
    })
    .expect("verifier")
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode")
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn hs256_round_trip() {
    let token = hs(&json!({"sub": "alice", "exp": NOW + 60, "nbf": NOW - 1, "rooms": ["lobby"], "name": "Alice", "extra": 1}));
    let c = hs_verifier().verify(&token, NOW).expect("valid");
    assert_eq!(c.sub, "alice");
    assert_eq!(c.exp, NOW + 60);
    assert_eq!(c.nbf, Some(NOW - 1));
    assert_eq!(c.rooms.as_deref(), Some(&["lobby".to_owned()][..]));
    assert_eq!(c.name.as_deref(), Some("Alice"));
}

#[test]
fn expiry_with_leeway() {
    let v = hs_verifier(); // leeway 5 s
    let token = hs(&json!({"sub": "alice", "exp": NOW}));
    assert!(v.verify(&token, NOW - 1).is_ok());
    assert!(v.verify(&token, NOW + 4).is_ok(), "within leeway");
    assert_eq!(v.verify(&token, NOW + 5), Err(AuthError::Expired));
    assert_eq!(v.verify(&token, NOW + 3600), Err(AuthError::Expired));
    assert_eq!(AuthError::Expired.to_string(), "token expired");

    let strict = Verifier::new(&AuthSettings {
        leeway_s: 0,
        ..hs_settings()
    })
    .expect("verifier");
    assert_eq!(strict.verify(&token, NOW), Err(AuthError::Expired), "exp must be after now");
    // Fractional NumericDate, rounded down for exp.
    let frac = hs(&json!({"sub": "alice", "exp": (NOW as f64) + 0.9}));
    assert_eq!(strict.verify(&frac, NOW), Err(AuthError::Expired));
    assert!(strict.verify(&frac, NOW - 1).is_ok());
    // A huge leeway or exp does not overflow.
    let lax = Verifier::new(&AuthSettings {
        leeway_s: u64::MAX,
        ..hs_settings()
    })
    .expect("verifier");
    assert!(lax.verify(&hs(&json!({"sub": "a", "exp": u64::MAX})), u64::MAX - 1).is_ok());
    assert!(lax.verify(&token, 0).is_ok());
}

#[test]
fn exp_required_and_numeric() {
    let v = hs_verifier();
    assert_eq!(v.verify(&hs(&json!({"sub": "alice"})), NOW), Err(AuthError::MissingExp));
    assert_eq!(
        v.verify(&hs(&json!({"sub": "alice", "exp": null})), NOW),
        Err(AuthError::MissingExp)
    );
    assert_eq!(AuthError::MissingExp.to_string(), "missing exp");
    for bad in [json!("soon"), json!(-1), json!(1e300), json!({})] {
        assert_eq!(
            v.verify(&hs(&json!({"sub": "alice", "exp": bad})), NOW),
            Err(AuthError::InvalidClaim("exp")),
            "{bad}"
        );
    }
    // The library's own claim parsing gives up on an array exp.
    assert_eq!(v.verify(&hs(&json!({"sub": "alice", "exp": [1]})), NOW), Err(AuthError::Malformed));
}

#[test]
fn nbf_in_future_rejected() {
    let v = hs_verifier(); // leeway 5 s
    let token = hs(&json!({"sub": "alice", "exp": NOW + 600, "nbf": NOW + 60}));
    assert_eq!(v.verify(&token, NOW), Err(AuthError::NotYetValid));
    assert_eq!(v.verify(&token, NOW + 54), Err(AuthError::NotYetValid));
    assert!(v.verify(&token, NOW + 55).is_ok(), "within leeway");
    assert!(v.verify(&token, NOW + 60).is_ok());
    assert_eq!(AuthError::NotYetValid.to_string(), "token not yet valid");
    let bad = hs(&json!({"sub": "alice", "exp": NOW + 600, "nbf": "now"}));
    assert_eq!(v.verify(&bad, NOW), Err(AuthError::InvalidClaim("nbf")));
}

#[test]
fn wrong_secret_rejected() {
    let other = EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!");
    let token = sign(Algorithm::HS256, &other, &json!({"sub": "alice", "exp": NOW + 60}));
    assert_eq!(hs_verifier().verify(&token, NOW), Err(AuthError::BadSignature));
    assert_eq!(AuthError::BadSignature.to_string(), "bad signature");
    // Claims are not looked at before the signature: an expired forgery is a bad signature.
    let expired = sign(Algorithm::HS256, &other, &json!({"sub": "alice", "exp": 1}));
    assert_eq!(hs_verifier().verify(&expired, NOW), Err(AuthError::BadSignature));
}

#[test]
fn other_algorithms_rejected() {
    let claims = json!({"sub": "alice", "exp": NOW + 60});
    let rs = pk_verifier(JwtAlgorithm::Rs256, RSA_PUBLIC_PEM);
    assert_eq!(rs.verify(&hs(&claims), NOW), Err(AuthError::WrongAlgorithm));
    assert_eq!(AuthError::WrongAlgorithm.to_string(), "wrong algorithm");

    // Key confusion: HS256 "signed" with the RSA public key text as the secret.
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()), &claims);
    assert_eq!(rs.verify(&confused, NOW), Err(AuthError::WrongAlgorithm));

    // HS384 / HS512 with the right secret: still not the pinned algorithm.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, &EncodingKey::from_secret(SECRET.as_bytes()), &claims);
        assert_eq!(hs_verifier().verify(&t, NOW), Err(AuthError::WrongAlgorithm), "{alg:?}");
    }

    // An RS256 token presented to an HS256 or EdDSA verifier.
    let rs_token = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("key"),
        &claims,
    );
    assert_eq!(hs_verifier().verify(&rs_token, NOW), Err(AuthError::WrongAlgorithm));
    assert_eq!(
        pk_verifier(JwtAlgorithm::EdDsa, ED25519_PUBLIC_PEM).verify(&rs_token, NOW),
        Err(AuthError::WrongAlgorithm)
    );

    // The classic `alg: none`, with and without a signature part, and other spellings.
    let payload = b64(&claims);
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "hs256"}),
        json!({"typ": "JWT"}),
    ] {
        for sig in ["", "AAAA"] {
            let t = format!("{}.{payload}.{sig}", b64(&header));
            assert_eq!(hs_verifier().verify(&t, NOW), Err(AuthError::WrongAlgorithm), "{header} {sig:?}");
            assert_eq!(rs.verify(&t, NOW), Err(AuthError::WrongAlgorithm), "{header} {sig:?}");
        }
    }
}

#[test]
fn issuer_and_audience() {
    let s = AuthSettings {
        issuer: Some("auth.example".into()),
        audience: Some("chat".into()),
        ..hs_settings()
    };
    let v = Verifier::new(&s).expect("verifier");
    let ok = |extra: Value| {
        let mut c = json!({"sub": "alice", "exp": NOW + 60});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        v.verify(&hs(&c), NOW)
    };
    assert!(ok(json!({"iss": "auth.example", "aud": "chat"})).is_ok());
    assert!(ok(json!({"iss": "auth.example", "aud": ["other", "chat"]})).is_ok());
    assert_eq!(ok(json!({"iss": "evil", "aud": "chat"})), Err(AuthError::WrongIssuer));
    assert_eq!(
        ok(json!({"aud": "chat"})),
        Err(AuthError::WrongIssuer),
        "iss required when configured"
    );
    assert_eq!(ok(json!({"iss": ["auth.example"], "aud": "chat"})), Err(AuthError::WrongIssuer));
    assert_eq!(ok(json!({"iss": "auth.example", "aud": "other"})), Err(AuthError::WrongAudience));
    assert_eq!(ok(json!({"iss": "auth.example", "aud": ["other"]})), Err(AuthError::WrongAudience));
    assert_eq!(
        ok(json!({"iss": "auth.example"})),
        Err(AuthError::WrongAudience),
        "aud required when configured"
    );
    assert_eq!(AuthError::WrongIssuer.to_string(), "wrong issuer");
    assert_eq!(AuthError::WrongAudience.to_string(), "wrong audience");

    // Not configured: whatever the token carries is ignored.
    let t = hs(&json!({"sub": "alice", "exp": NOW + 60, "iss": "anyone", "aud": ["x", "y"]}));
    assert!(hs_verifier().verify(&t, NOW).is_ok());
    let t = hs(&json!({"sub": "alice", "exp": NOW + 60, "iss": 7, "aud": {"weird": true}}));
    assert!(hs_verifier().verify(&t, NOW).is_ok());
}

#[test]
fn sub_must_be_valid_user_id() {
    let v = hs_verifier();
    for sub in [json!(null), json!(""), json!("a:b"), json!("a b"), json!(42), json!("x".repeat(65))] {
        let t = hs(&json!({"sub": sub, "exp": NOW + 60}));
        assert_eq!(v.verify(&t, NOW), Err(AuthError::InvalidSub), "{sub}");
    }
    assert_eq!(v.verify(&hs(&json!({"exp": NOW + 60})), NOW), Err(AuthError::InvalidSub));
    assert_eq!(AuthError::InvalidSub.to_string(), "invalid sub");
}

#[test]
fn rs256_verification() {
    let claims = json!({"sub": "alice", "exp": NOW + 60, "rooms": ["team:*"]});
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("key");
    let token = sign(Algorithm::RS256, &key, &claims);
    let v = pk_verifier(JwtAlgorithm::Rs256, RSA_PUBLIC_PEM);
    let c = v.verify(&token, NOW).expect("valid");
    assert_eq!(c.sub, "alice");
    assert_eq!(c.rooms.as_deref(), Some(&["team:*".to_owned()][..]));
    assert_eq!(v.verify(&token, NOW + 60), Err(AuthError::Expired));

    let other = EncodingKey::from_rsa_pem(OTHER_RSA_PRIVATE_PEM.as_bytes()).expect("key");
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, &other, &claims), NOW),
        Err(AuthError::BadSignature)
    );
    // PS256 is RSA too, but not the pinned algorithm.
    assert_eq!(
        v.verify(&sign(Algorithm::PS256, &key, &claims), NOW),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn eddsa_verification() {
    let claims = json!({"sub": "bob", "exp": NOW + 60});
    let key = EncodingKey::from_ed_pem(ED25519_PRIVATE_PEM.as_bytes()).expect("key");
    let token = sign(Algorithm::EdDSA, &key, &claims);
    let v = pk_verifier(JwtAlgorithm::EdDsa, ED25519_PUBLIC_PEM);
    assert_eq!(v.verify(&token, NOW).expect("valid").sub, "bob");

    // Swap in another payload under the same signature.
    let mut parts = token.split('.');
    let (h, _, s) = (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
    let forged = format!("{h}.{}.{s}", b64(&json!({"sub": "mallory", "exp": NOW + 60})));
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
    // A truncated signature is a bad signature, not a panic.
    assert_eq!(
        v.verify(&format!("{h}.{}.{}", b64(&claims), &s[..12]), NOW),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn malformed_tokens() {
    let rs = pk_verifier(JwtAlgorithm::Rs256, RSA_PUBLIC_PEM);
    let ed = pk_verifier(JwtAlgorithm::EdDsa, ED25519_PUBLIC_PEM);
    let good_header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
    let cases = [
        String::new(),
        "a.b".into(),
        "a.b.c".into(),
        "...".into(),
        "%%%.%%%.%%%".into(),
        "not a token at all".into(),
        good_header.clone(),
        format!("{good_header}.!!!.sig"),
        format!("{good_header}.{}.", URL_SAFE_NO_PAD.encode("not json")),
        format!("{good_header}.{}.AAAA", b64(&json!(["array", "claims"]))),
        format!("{good_header}.{}.AAAA.extra", b64(&json!({"sub": "a", "exp": NOW + 60}))),
        format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode("{\"alg\":")),
        "\u{0}\u{ffff}.\u{1f600}.x".into(),
    ];
    for token in &cases {
        for v in [&hs_verifier(), &rs, &ed] {
            let got = v.verify(token, NOW);
            assert!(got.is_err(), "{token:?} accepted");
        }
    }
    assert_eq!(hs_verifier().verify("", NOW), Err(AuthError::Malformed));
    assert_eq!(hs_verifier().verify("a.b", NOW), Err(AuthError::Malformed));
    assert_eq!(AuthError::Malformed.to_string(), "malformed token");
    assert_eq!(hs_verifier().verify(&"a".repeat(20_000), NOW), Err(AuthError::TooLong));
    // Correctly signed, but the rooms claim has the wrong type.
    assert_eq!(
        hs_verifier().verify(&hs(&json!({"sub": "a", "exp": NOW + 60, "rooms": "lobby"})), NOW),
        Err(AuthError::Malformed)
    );
}
