//! Tests of [`Verifier::new`] settings checks and of [`JwtAlgorithm`] / [`Verifier`] traits.

use serde_json::json;

use super::test_keys::{ED25519_PRIVATE_PEM, ED25519_PUBLIC_PEM, RSA_PRIVATE_PEM, RSA_PUBLIC_PEM};
use super::{mint_hs256, AuthError, AuthSettings, JwtAlgorithm, Verifier};

const NOW: u64 = 1_700_000_000;

#[test]
fn settings_rejected() {
    let err = |s: AuthSettings| Verifier::new(&s).err();
    assert_eq!(
        err(AuthSettings {
            secret: Some("x".repeat(31)),
            ..AuthSettings::default()
        }),
        Some(AuthError::SecretTooShort)
    );
    assert!(err(AuthSettings {
        secret: Some("x".repeat(32)),
        ..AuthSettings::default()
    })
    .is_none());
    assert_eq!(err(AuthSettings::default()), Some(AuthError::MissingSecret));
    assert_eq!(
        err(AuthSettings {
            secret: Some(String::new()),
            ..AuthSettings::default()
        }),
        Some(AuthError::MissingSecret)
    );
    assert!(AuthError::SecretTooShort.to_string().contains("jwt_secret"));

    let pk = |algorithm, pem: &str| {
        err(AuthSettings {
            algorithm,
            public_key_pem: Some(pem.into()),
            ..AuthSettings::default()
        })
    };
    let rs = JwtAlgorithm::Rs256;
    let ed = JwtAlgorithm::EdDsa;
    assert_eq!(
        err(AuthSettings {
            algorithm: rs,
            ..AuthSettings::default()
        }),
        Some(AuthError::MissingPublicKey(rs))
    );
    assert_eq!(pk(ed, "  \n"), Some(AuthError::MissingPublicKey(ed)));
    for (alg, pem) in [
        (rs, RSA_PRIVATE_PEM),
        (ed, ED25519_PRIVATE_PEM),
        (rs, ED25519_PUBLIC_PEM),
        (ed, RSA_PUBLIC_PEM),
        (rs, "garbage"),
        (ed, "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n"),
        (
            ed,
            "-----BEGIN PUBLIC KEY-----\nMCIwBQYDK2VwAxkAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY\n-----END PUBLIC KEY-----\n",
        ),
        (rs, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        (ed, "-----BEGIN "),
    ] {
        assert!(
            matches!(pk(alg, pem), Some(AuthError::InvalidKey(..))),
            "{alg} {pem:?}: {:?}",
            pk(alg, pem)
        );
    }
}

#[test]
fn algorithm_serde() {
    for (text, alg) in [
        ("hs256", JwtAlgorithm::Hs256),
        ("HS256", JwtAlgorithm::Hs256),
        ("rs256", JwtAlgorithm::Rs256),
        ("RS256", JwtAlgorithm::Rs256),
        ("eddsa", JwtAlgorithm::EdDsa),
        ("EdDSA", JwtAlgorithm::EdDsa),
    ] {
        assert_eq!(serde_json::from_value::<JwtAlgorithm>(json!(text)).ok(), Some(alg), "{text}");
    }
    assert!(serde_json::from_value::<JwtAlgorithm>(json!("none")).is_err());
    assert_eq!(serde_json::to_value(JwtAlgorithm::EdDsa).ok(), Some(json!("eddsa")));
    assert_eq!(JwtAlgorithm::default(), JwtAlgorithm::Hs256);
}

#[test]
fn verifier_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Verifier>();
    let secret = "x".repeat(32);
    let v = Verifier::new(&AuthSettings {
        secret: Some(secret.clone()),
        ..AuthSettings::default()
    })
    .expect("verifier");
    let token = mint_hs256(&secret, "alice", 60, None, None, NOW).expect("mint");
    let handle = std::thread::spawn({
        let v = v.clone();
        move || v.verify(&token, NOW).is_ok()
    });
    assert!(handle.join().unwrap_or(false));
}
