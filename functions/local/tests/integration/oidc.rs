//! The local OIDC issuer, verified the way STS verifies a web-identity token: the discovery
//! document and the JWKS fetched over HTTP from a running `cmk serve`, then the signature,
//! `kid`, `iss`, `aud`, `sub` and `exp` of a token the service minted for org `acme` checked
//! against them. A verifier expecting another org's audience refuses it, and after
//! `cmk oidc rotate` the old token still verifies while new ones carry the new key's `kid`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use cmk_core::model::OrgId;
use cmk_core::oidc::OidcIssuer;
use cmk_embedded::LocalOidcKeys;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::cli::{local, ok, Server};

/// `GET path`: the header block and the JSON body.
fn fetch(base: &str, path: &str) -> (String, Value) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    (
        head.to_ascii_lowercase(),
        serde_json::from_str(body).expect("json"),
    )
}

/// Verifies `token` as STS would, for `audience`, with the issuer's published keys.
fn verify(base: &str, token: &str, audience: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let (_, discovery) = fetch(base, "/oidc/.well-known/openid-configuration");
    let issuer = discovery["issuer"].as_str().expect("issuer");
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    let (_, jwks) = fetch(base, jwks_uri.trim_start_matches(base));
    let kid = decode_header(token)?.kid.expect("a kid");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("no key {kid} in {jwks}"));
    let key = DecodingKey::from_ec_components(
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y"),
    )?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Value>(token, &key, &validation).map(|d| d.claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_against_the_published_keys_for_their_own_org_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let issuer_url = format!("{}/oidc", server.base);

    let (head, discovery) = fetch(&server.base, "/oidc/.well-known/openid-configuration");
    assert_eq!(discovery["issuer"], issuer_url.as_str());
    assert!(
        head.contains("cache-control: public, max-age=300"),
        "{head}"
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"][0],
        "ES256"
    );
    let (head, jwks) = fetch(&server.base, "/oidc/.well-known/jwks.json");
    assert!(head.contains("cache-control: public"), "{head}");
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert!(keys[0].get("d").is_none(), "public keys only: {jwks}");

    // What the service mints for its AssumeRoleWithWebIdentity, with the data directory's key.
    let minter = OidcIssuer::new(
        &issuer_url,
        Arc::new(LocalOidcKeys::open(&data).expect("the keys")),
    );
    let acme = OrgId::from_trusted("acme");
    let token = minter.mint(&acme).await.expect("a token");
    let claims = verify(&server.base, &token, "aws:acme").expect("verifies for acme");
    assert_eq!(claims["sub"], "cmk:org:acme");
    assert_eq!(claims["iss"], issuer_url.as_str());
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        300,
        "five minutes"
    );
    assert!(claims["jti"].is_string());
    let refused = verify(&server.base, &token, "aws:globex").expect_err("another org's audience");
    assert_eq!(
        refused.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidAudience
    );
    // A token whose signature was tampered with does not verify.
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(verify(&server.base, &forged, "aws:acme").is_err());

    // Rotation: both keys published, the old token still good, new ones on the new key.
    ok(local(&data, &["oidc", "rotate"]));
    let (_, jwks) = fetch(&server.base, "/oidc/.well-known/jwks.json");
    assert_eq!(jwks["keys"].as_array().expect("keys").len(), 2);
    verify(&server.base, &token, "aws:acme").expect("the old token still verifies");
    let newer = minter.mint(&acme).await.expect("a token");
    let (old_kid, new_kid) = (
        decode_header(&token).expect("header").kid,
        decode_header(&newer).expect("header").kid,
    );
    assert_ne!(old_kid, new_kid);
    assert_eq!(
        new_kid.as_deref(),
        jwks["keys"][0]["kid"].as_str(),
        "the current key first"
    );
    verify(&server.base, &newer, "aws:acme").expect("the new token verifies");
}

/// `cmk keys setup`: the setup values with the OIDC mode first, and with `--cloudformation` the
/// setup kit for the customer's account.
#[test]
fn the_cli_prints_the_setup_and_the_cloudformation_kit() {
    use super::cli::{admin, token};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let t = token(&data, "acme", "admin");
    let setup: Value =
        serde_json::from_str(&ok(admin(&server, Some(&t), &["keys", "setup"])).stdout)
            .expect("json");
    assert_eq!(setup["default_trust"], "oidc");
    assert_eq!(
        setup["oidc"]["provider_url"],
        format!("{}/oidc", server.base).as_str()
    );
    assert_eq!(setup["oidc"]["subject"], "cmk:org:acme");

    let kit = ok(admin(
        &server,
        Some(&t),
        &["keys", "setup", "--cloudformation", "--create-key"],
    ))
    .stdout;
    for expected in [
        "AWS::IAM::OIDCProvider",
        "sts:AssumeRoleWithWebIdentity",
        "cmk:org:acme",
        "AWS::KMS::Key",
        "RoleArn",
        "KeyArn",
    ] {
        assert!(kit.contains(expected), "{expected} in {kit}");
    }
    let external = ok(admin(
        &server,
        Some(&t),
        &[
            "keys",
            "setup",
            "--cloudformation",
            "--trust",
            "external_id",
        ],
    ))
    .stdout;
    assert!(external.contains("sts:ExternalId"), "{external}");
    assert!(
        external.contains("KeyArn"),
        "an existing key's ARN is a parameter"
    );
    assert!(!external.contains("OIDCProvider"));
}
