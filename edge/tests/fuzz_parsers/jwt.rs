//! Fuzzes JWT parsing and verification, `edge::auth::Verifier::verify`, with an HS256
//! verifier built as the unit tests build one: arbitrary and token-shaped strings never
//! verify (and are refused before any claim is read); minted tokens verify to exactly their
//! claims until they expire; mutated valid tokens never verify with other claims, nor
//! panic; correctly signed tokens with arbitrary headers and claims get exactly the answer
//! the documented rules give (pinned `alg`, `exp` required, `nbf`, `sub` a user id).

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edge::auth::{is_valid_user_id, mint_claims_hs256, AuthError, AuthSettings, Claims, JwtAlgorithm, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";
const NOW: u64 = 1_700_000_000;
const LEEWAY: u64 = 5;
/// The longest token the verifier decodes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&AuthSettings {
            secret: Some(SECRET.into()),
            leeway_s: LEEWAY,
            ..AuthSettings::default()
        })
        .expect("hs256 verifier")
    })
}

/// The public halves of the unit tests' fixed key pairs (`edge/src/auth/test_keys.rs`).
const RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA4MIdX/aTrjZB9VaO0glz\n\
bdfng38CZhmvtPEo4bVNdcm1J+1jW92/rjpihKE7AmRy9G3qgZT4TKbd6U2tzoIF\n\
Q2rQkpibhNom6FxEDNdxZ/G61WTpmaACzBrHYkDfZR7tszMc08GBxl39rmWlSdg7\n\
i6heuA8CA6XNt/DC+Jqgr4AQd9H34AnTMBYf1eMpunlvFj6lBQ8fP7tV/7GtxXPO\n\
bJ2OkpKRaer2dS1ibKj+eOEcdXA8sIa7IfH+VqFiafGPxsRFxWZz0xEW836MeJ03\n\
5TleyDpBugkfkF9l+KfLvATCUIZVB3yHq/UHXkmyvAEEX0CwZsplTQqFP6LwsXQA\n\
AQIDAQAB\n\
-----END PUBLIC KEY-----\n";
const ED25519_PUBLIC_PEM: &str =
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA+8ocsjjKpHly6uvdCdLGdRkXpcTZBniAhc0UtmVS3W8=\n-----END PUBLIC KEY-----\n";

/// RS256 and EdDSA verifiers, built as the unit tests build them.
fn public_key_verifiers() -> &'static [Verifier; 2] {
    static V: OnceLock<[Verifier; 2]> = OnceLock::new();
    V.get_or_init(|| {
        [(JwtAlgorithm::Rs256, RSA_PUBLIC_PEM), (JwtAlgorithm::EdDsa, ED25519_PUBLIC_PEM)].map(|(algorithm, pem)| {
            Verifier::new(&AuthSettings {
                algorithm,
                public_key_pem: Some(pem.into()),
                ..AuthSettings::default()
            })
            .expect("verifier")
        })
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token over `header` and `payload` with a correct HS256 signature.
fn signed(header: &[u8], payload: &[u8]) -> String {
    verifier(); // installs the crypto provider
    let message = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256).expect("sign");
    format!("{message}.{sig}")
}

/// What an unsigned or badly signed token may be refused as: never a claim check.
fn is_pre_claim_refusal(e: &AuthError) -> bool {
    matches!(
        e,
        AuthError::Malformed | AuthError::TooLong | AuthError::WrongAlgorithm | AuthError::BadSignature
    )
}

fn token_shaped() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{0,60}",
        vec(any::<u8>(), 0..60).prop_map(|b| b64(&b)),
        "(?s).{0,40}".prop_map(|s: String| b64(s.as_bytes())),
        Just(b64(br#"{"alg":"HS256","typ":"JWT"}"#)),
        Just(b64(br#"{"sub":"alice","exp":1800000000}"#)),
    ];
    prop_oneof![
        "(?s).{0,200}",
        "[A-Za-z0-9_.=+/-]{0,300}",
        vec(segment, 1..5).prop_map(|s| s.join(".")),
        (MAX_TOKEN_BYTES - 2..MAX_TOKEN_BYTES + 64).prop_map(|n| "a".repeat(n)),
    ]
}

fn claims() -> impl Strategy<Value = Claims> {
    let names = || prop::option::of(vec("[a-z:*]{0,10}", 0..4));
    (
        "[A-Za-z0-9_.@-]{1,64}",
        NOW - 100..NOW + 100,
        prop::option::of(NOW - 100..NOW + 100),
        names(),
        prop::option::of("(?s).{0,20}"),
        names(),
    )
        .prop_map(|(sub, exp, nbf, rooms, name, moderator)| Claims {
            sub,
            exp,
            nbf,
            rooms: rooms.map(Vec::into_boxed_slice),
            name: name.map(String::into_boxed_str),
            moderator: moderator.map(Vec::into_boxed_slice),
        })
}

/// What the documented rules answer for `claims` at `now`, when they are well typed.
fn rule(c: &Claims, now: u64) -> Result<Claims, AuthError> {
    if c.exp.saturating_add(LEEWAY) <= now {
        Err(AuthError::Expired)
    } else if c.nbf.is_some_and(|nbf| nbf > now + LEEWAY) {
        Err(AuthError::NotYetValid)
    } else {
        Ok(c.clone())
    }
}

/// A NumericDate claim as [`rule_for_json`] reads it: `Ok(None)` when absent or null.
fn numeric_date(v: Option<&Value>, round_up: bool) -> Result<Option<u64>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                Ok(Some(if round_up { f.ceil() } else { f.floor() } as u64))
            }
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// The documented rules for a correctly signed payload `p` (an object whose `rooms`,
/// `name` and `moderator` are of their type or of a wrong scalar type).
fn rule_for_json(p: &Map<String, Value>, now: u64) -> Result<Claims, AuthError> {
    let strings = |k: &str| match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or(AuthError::Malformed),
        Some(_) => Err(AuthError::Malformed),
    };
    let (rooms, moderator) = (strings("rooms")?, strings("moderator")?);
    let name = match p.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let exp = numeric_date(p.get("exp"), false)
        .map_err(|()| AuthError::InvalidClaim("exp"))?
        .ok_or(AuthError::MissingExp)?;
    let nbf = numeric_date(p.get("nbf"), true).map_err(|()| AuthError::InvalidClaim("nbf"))?;
    let sub = match p.get("sub") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let claims = Claims {
        sub,
        exp,
        nbf,
        rooms: rooms.map(Vec::into_boxed_slice),
        name: name.map(String::into_boxed_str),
        moderator: moderator.map(Vec::into_boxed_slice),
    };
    let ok = rule(&claims, now)?;
    if is_valid_user_id(&ok.sub) {
        Ok(ok)
    } else {
        Err(AuthError::InvalidSub)
    }
}

/// A value for a claim: scalars of every JSON type, numbers near `NOW` included (no arrays
/// or objects, whose handling the JWT library decides on its own).
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (NOW - 100..NOW + 100).prop_map(Value::from),
        (-1000i64..0).prop_map(Value::from),
        ((NOW - 100) as f64..(NOW + 100) as f64).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[A-Za-z0-9_.@: -]{0,70}".prop_map(Value::from),
    ]
}

fn payload() -> impl Strategy<Value = Map<String, Value>> {
    let strings = || prop::option::of(prop_oneof![4 => vec("[a-z:*]{0,6}", 0..3).prop_map(|v| json!(v)), 1 => scalar()]);
    let keys = ["sub", "exp", "nbf", "rooms", "name", "moderator", "iss", "aud", "zz"];
    // Mostly claims of their type, so that tokens get past typing into the checks.
    let values = (
        prop::option::weighted(0.9, prop_oneof![6 => "[A-Za-z0-9_.@-]{1,64}".prop_map(Value::from), 1 => scalar()]),
        prop::option::weighted(0.9, prop_oneof![6 => (NOW - 100..NOW + 100).prop_map(Value::from), 1 => scalar()]),
        prop::option::of(prop_oneof![2 => (NOW - 100..NOW + 100).prop_map(Value::from), 1 => scalar()]),
        strings(),
        prop::option::of(prop_oneof![4 => "(?s).{0,12}".prop_map(Value::from), 1 => scalar()]),
        strings(),
        prop::option::of(scalar()),
        prop::option::of(prop_oneof![scalar(), vec(scalar(), 0..3).prop_map(Value::Array)]),
        prop::option::of(scalar()),
    );
    values.prop_map(move |(sub, exp, nbf, rooms, name, moderator, iss, aud, zz)| {
        let values = [sub, exp, nbf, rooms, name, moderator, iss, aud, zz];
        keys.iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), v)))
            .collect()
    })
}

/// Byte edits on a token: replace, insert, delete, truncate, or swap two of its parts.
fn mutate(token: &str, edits: &[(Index, u8, u8)]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00\xff";
    let mut b = token.as_bytes().to_vec();
    for (at, op, pick) in edits {
        let i = at.index(b.len() + 1);
        let byte = ALPHABET[usize::from(*pick) % ALPHABET.len()];
        match op % 5 {
            0 if i < b.len() => b[i] = byte,
            1 => b.insert(i, byte),
            2 if i < b.len() => {
                b.remove(i);
            }
            3 => b.truncate(i),
            4 => {
                let s = String::from_utf8_lossy(&b).into_owned();
                let mut parts: Vec<&str> = s.split('.').collect();
                let (i, j) = (i % parts.len(), usize::from(*pick) % parts.len());
                parts.swap(i, j);
                b = parts.join(".").into_bytes();
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(crate::config())]

    /// Strings that are not a signed token never verify, never panic, and are refused
    /// before any claim is looked at; over 16 KiB is "too long".
    #[test]
    fn unsigned_strings_never_verify(token in token_shaped(), now in any::<u64>()) {
        match verifier().verify(&token, now) {
            Ok(c) => prop_assert!(false, "{:?} verified as {:?}", token, c),
            Err(e) => {
                prop_assert!(is_pre_claim_refusal(&e), "{:?}: {:?}", token, e);
                prop_assert_eq!(e == AuthError::TooLong, token.len() > MAX_TOKEN_BYTES);
            }
        }
    }

    /// A minted token verifies to exactly its claims until `exp` (plus leeway), once `nbf`
    /// (minus leeway) has come.
    #[test]
    fn minted_tokens_verify_to_their_claims(c in claims(), now in NOW - 200..NOW + 200) {
        let token = mint_claims_hs256(SECRET, &c).expect("mint");
        prop_assert_eq!(verifier().verify(&token, now), rule(&c, now));
    }

    /// Edited valid tokens never verify with other claims, nor with a signature over other
    /// bytes, and never panic.
    #[test]
    fn mutated_tokens_never_verify_other_claims(c in claims(), edits in vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..5)) {
        let token = mint_claims_hs256(SECRET, &c).expect("mint");
        let bad = mutate(&token, &edits);
        if let Ok(got) = verifier().verify(&bad, NOW) {
            prop_assert_eq!(&got, &c, "{} verified as other claims", bad);
            let signed_part = |t: &str| t.rsplit_once('.').map(|(m, _)| m.to_owned());
            prop_assert_eq!(signed_part(&bad), signed_part(&token));
        }
    }

    /// Correctly signed tokens with any `alg` and any claims: a header naming another
    /// algorithm (or none) is refused first; otherwise the answer is exactly the rules'.
    #[test]
    fn signed_tokens_follow_the_rules(
        alg in prop::option::of(prop_oneof![
            4 => Just("HS256".to_owned()),
            1 => prop::sample::select(vec!["none", "None", "hs256", "HS384", "HS512", "RS256", "EdDSA", "", "HS256 "]).prop_map(str::to_owned),
            1 => "(?s).{0,8}",
        ]),
        typ in prop::option::of("[A-Za-z]{0,5}"),
        p in payload(),
        now in NOW - 200..NOW + 200,
    ) {
        let mut header = Map::new();
        if let Some(alg) = &alg {
            header.insert("alg".into(), alg.clone().into());
        }
        if let Some(typ) = typ {
            header.insert("typ".into(), typ.into());
        }
        let token = signed(Value::Object(header).to_string().as_bytes(), Value::Object(p.clone()).to_string().as_bytes());
        let want = if alg.as_deref() == Some("HS256") { rule_for_json(&p, now) } else { Err(AuthError::WrongAlgorithm) };
        prop_assert_eq!(verifier().verify(&token, now), want, "{}", Value::Object(p));
    }

    /// RS256 and EdDSA verifiers: tokens naming any algorithm, with any claims and a
    /// signature of any length (the key's own lengths included) never verify, never panic,
    /// and are refused before any claim is looked at.
    #[test]
    fn public_key_verifiers_refuse_forged_tokens(
        alg in prop::sample::select(vec!["RS256", "EdDSA", "HS256", "PS256", "none"]),
        p in payload(),
        sig in prop_oneof![vec(any::<u8>(), 0..300), vec(any::<u8>(), 64), vec(any::<u8>(), 256)],
    ) {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(Value::Object(p).to_string().as_bytes()), b64(&sig));
        for v in public_key_verifiers() {
            match v.verify(&token, NOW) {
                Ok(c) => prop_assert!(false, "{} verified {:?} as {:?}", v.algorithm(), token, c),
                Err(e) => {
                    prop_assert!(is_pre_claim_refusal(&e), "{}: {:?}", v.algorithm(), e);
                    prop_assert!(alg == v.algorithm().header_name() || e == AuthError::WrongAlgorithm, "{}: {:?}", alg, e);
                }
            }
        }
    }

    /// Signed payloads that are not a JSON object of claims: refused, never a panic.
    #[test]
    fn signed_garbage_payloads_are_refused(payload in prop_oneof![
        vec(any::<u8>(), 0..80),
        "(?s).{0,80}".prop_map(String::into_bytes),
        Just(b"[]".to_vec()),
        Just(b"null".to_vec()),
        Just(br#"{"exp":[1],"sub":"a"}"#.to_vec()),
        crate::client::nested().prop_map(String::into_bytes),
    ]) {
        let token = signed(br#"{"alg":"HS256"}"#, &payload);
        let got = verifier().verify(&token, NOW);
        prop_assert!(got.is_err(), "{:?} verified: {:?}", String::from_utf8_lossy(&payload), got);
    }
}
