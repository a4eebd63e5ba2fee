//! Bad input on every route with a body, and in path and query parameters. Every refusal is an
//! `application/problem+json` body whose `status` is the HTTP status, never a 5xx, and writes
//! nothing: the keys listing (states, default, data key counts, job) and the audit trail are
//! identical before and after.
//!
//! It is long because every route's refusals are listed one by one, as API.md lists them.

use cmk_tests as common;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use cmk_core::model::Role;
use common::{token, TestApp};
use serde_json::{json, Value};

/// One request that must be refused.
struct Case {
    what: String,
    method: &'static str,
    path: String,
    role: Role,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

const JSON: Option<&str> = Some("application/json");

impl Case {
    /// A request with a raw body and content type.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        what: impl Into<String>,
        method: &'static str,
        path: &str,
        role: Role,
        content_type: Option<&'static str>,
        body: Option<&[u8]>,
        status: u16,
        code: &'static str,
    ) -> Self {
        Self {
            what: what.into(),
            method,
            path: path.to_owned(),
            role,
            content_type,
            body: body.map(<[u8]>::to_vec),
            status,
            code,
        }
    }

    /// A POST with a JSON body, expected 400 invalid_request.
    fn json(what: impl Into<String>, path: &str, role: Role, body: Value) -> Self {
        Self::raw(
            what,
            "POST",
            path,
            role,
            JSON,
            Some(body.to_string().as_bytes()),
            400,
            "invalid_request",
        )
    }

    /// A body-less request, expected 400 invalid_request.
    fn bare(what: impl Into<String>, method: &'static str, path: &str, role: Role) -> Self {
        Self::raw(what, method, path, role, None, None, 400, "invalid_request")
    }

    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

/// Sends each case as `role` of `org`; asserts the problem and that nothing observable changed.
/// Returns the problem bodies.
async fn expect_refused(app: &TestApp, org: &str, cases: Vec<Case>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for c in cases {
        let before = app.observe(org).await;
        let raw = app
            .raw(
                c.method,
                &c.path,
                Some(&token(org, c.role)),
                c.content_type,
                c.body,
            )
            .await;
        let what = format!("{} ({} {})", c.what, c.method, short(&c.path));
        raw.assert_problem(c.status, c.code, &what);
        assert_eq!(
            app.observe(org).await,
            before,
            "{what}: refused with {} and wrote nothing",
            c.code
        );
        bodies.push(raw.body);
    }
    bodies
}

fn short(path: &str) -> String {
    if path.len() > 120 {
        format!("{}…", &path[..120])
    } else {
        path.to_owned()
    }
}

/// An org with a default key k1, a second key k2, a data key (under k1) and a ciphertext made
/// with the context `{"env":"prod"}`.
struct Fixture {
    org: &'static str,
    k2: String,
    data_key: String,
    ciphertext: String,
}

impl Fixture {
    fn keys(&self) -> String {
        format!("/v1/orgs/{}/keys", self.org)
    }
    fn key(&self, key: &str, action: &str) -> String {
        format!("/v1/orgs/{}/keys/{key}/{action}", self.org)
    }
    fn encrypt(&self, data_key: &str) -> String {
        format!("/v1/orgs/{}/data-keys/{data_key}/encrypt", self.org)
    }
    fn decrypt(&self) -> String {
        format!("/v1/orgs/{}/decrypt", self.org)
    }
    fn data_keys(&self) -> String {
        format!("/v1/orgs/{}/data-keys", self.org)
    }
    fn org_path(&self, rest: &str) -> String {
        format!("/v1/orgs/{}/{rest}", self.org)
    }
}

async fn fixture(app: &TestApp) -> Fixture {
    let org = "acme";
    app.add_local_key(org, "k1").await;
    let k2 = app.add_local_key(org, "k2").await;
    assert_eq!(app.wait_job(org).await["state"], "completed");
    let (status, body) = app
        .service(
            "POST",
            &format!("/v1/orgs/{org}/data-keys"),
            org,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let data_key = body["data_key"]["id"].as_str().expect("id").to_owned();
    let (status, body) = app
        .service(
            "POST",
            &format!("/v1/orgs/{org}/data-keys/{data_key}/encrypt"),
            org,
            Some(json!({"plaintext": B64.encode(b"hello"), "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Fixture {
        org,
        k2,
        data_key,
        ciphertext: body["ciphertext"].as_str().expect("ct").to_owned(),
    }
}

/// A JSON object body larger than the 64 KiB limit.
fn oversized() -> Vec<u8> {
    json!({"pad": "x".repeat(70 * 1024)})
        .to_string()
        .into_bytes()
}

/// The decoded bytes of a ciphertext: `[version][id len][id][nonce][sealed]`.
fn ct_bytes(ct: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(ct.strip_prefix("cmk1.").expect("prefix"))
        .expect("base64url")
}

fn ct_string(bytes: &[u8]) -> String {
    format!("cmk1.{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_on_every_route_with_a_body() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    let k2 = f.k2.clone();

    // Routes that need a JSON object body, each with a body that would be valid.
    let required: Vec<(String, Role, Value)> = vec![
        (
            f.keys(),
            Role::Admin,
            json!({"name": "valid", "type": "local"}),
        ),
        (
            f.key(&k2, "disable"),
            Role::Admin,
            json!({"reencrypt_to": "service"}),
        ),
        (
            f.encrypt(&f.data_key),
            Role::Service,
            json!({"plaintext": B64.encode(b"hi")}),
        ),
        (
            f.decrypt(),
            Role::Service,
            json!({"ciphertext": f.ciphertext, "context": {"env": "prod"}}),
        ),
    ];
    let mut cases = Vec::new();
    for (path, role, valid) in &required {
        let valid = valid.to_string();
        let trailing = format!("{valid} x");
        let duplicated = format!("{}, {}", &valid[..valid.len() - 1], &valid[1..]);
        let bodies: Vec<(&str, Option<&'static str>, Vec<u8>)> = vec![
            ("truncated JSON", JSON, valid[..valid.len() / 2].into()),
            ("not JSON", JSON, b"hello".to_vec()),
            ("a JSON array", JSON, b"[]".to_vec()),
            ("a JSON string", JSON, b"\"x\"".to_vec()),
            ("JSON null", JSON, b"null".to_vec()),
            ("an empty body", JSON, Vec::new()),
            ("an empty object", JSON, b"{}".to_vec()),
            ("trailing garbage", JSON, trailing.into_bytes()),
            ("a duplicated field", JSON, duplicated.into_bytes()),
            ("invalid UTF-8", JSON, b"{\"name\":\"\xff\xfe\"}".to_vec()),
            (
                "valid JSON sent as text/plain",
                Some("text/plain"),
                valid.clone().into_bytes(),
            ),
            (
                "valid JSON sent as a form",
                Some("application/x-www-form-urlencoded"),
                valid.clone().into_bytes(),
            ),
            (
                "valid JSON without content-type",
                None,
                valid.clone().into_bytes(),
            ),
            ("a body over 64 KiB", JSON, oversized()),
        ];
        for (what, ct, body) in bodies {
            cases.push(Case::raw(
                what,
                "POST",
                path,
                *role,
                ct,
                Some(&body),
                400,
                "invalid_request",
            ));
        }
    }

    // Routes whose body is optional (`{}` or nothing): a present body must be `{}`.
    let optional: Vec<(String, Role)> = vec![
        (f.data_keys(), Role::Service),
        (f.key(&k2, "default"), Role::Admin),
        (f.org_path("keys/disable-all"), Role::Admin),
        (f.key(&k2, "check"), Role::Admin),
        (f.org_path("reencryption/retry"), Role::Admin),
        (f.org_path("reencryption/cancel"), Role::Admin),
    ];
    for (path, role) in &optional {
        let bodies: Vec<(&str, Option<&'static str>, Vec<u8>)> = vec![
            ("truncated JSON", JSON, b"{".to_vec()),
            ("a JSON array", JSON, b"[]".to_vec()),
            ("JSON null", JSON, b"null".to_vec()),
            ("a JSON number", JSON, b"42".to_vec()),
            ("an unknown field", JSON, b"{\"force\":true}".to_vec()),
            ("{} sent as text/plain", Some("text/plain"), b"{}".to_vec()),
            ("{} without content-type", None, b"{}".to_vec()),
            ("a body over 64 KiB", JSON, oversized()),
        ];
        for (what, ct, body) in bodies {
            cases.push(Case::raw(
                what,
                "POST",
                path,
                *role,
                ct,
                Some(&body),
                400,
                "invalid_request",
            ));
        }
    }
    let problems = expect_refused(&app, f.org, cases).await;
    let too_large = problems
        .iter()
        .filter(|p| p["detail"].as_str().unwrap_or("").contains("64 KiB"))
        .count();
    assert_eq!(
        too_large,
        required.len() + optional.len(),
        "every oversized body is refused for its size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_missing_and_unknown_fields_are_refused() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    let (keys, disable) = (f.keys(), f.key(&f.k2, "disable"));
    let (encrypt, decrypt) = (f.encrypt(&f.data_key), f.decrypt());
    let ct = f.ciphertext.clone();
    let a = Role::Admin;
    let s = Role::Service;
    let cases = vec![
        // add key
        Case::json(
            "name is a number",
            &keys,
            a,
            json!({"name": 123, "type": "local"}),
        ),
        Case::json(
            "name is null",
            &keys,
            a,
            json!({"name": null, "type": "local"}),
        ),
        Case::json(
            "name is a list",
            &keys,
            a,
            json!({"name": ["a"], "type": "local"}),
        ),
        Case::json(
            "name is an object",
            &keys,
            a,
            json!({"name": {}, "type": "local"}),
        ),
        Case::json("name is missing", &keys, a, json!({"type": "local"})),
        Case::json("type is missing", &keys, a, json!({"name": "x"})),
        Case::json(
            "type is a number",
            &keys,
            a,
            json!({"name": "x", "type": 1}),
        ),
        Case::json("type is null", &keys, a, json!({"name": "x", "type": null})),
        Case::json(
            "an unknown field on add",
            &keys,
            a,
            json!({"name": "x", "type": "local", "color": "red"}),
        ),
        Case::json(
            "role_arn is a number",
            &keys,
            a,
            json!({"name": "x", "type": "aws-kms", "role_arn": 1, "key_arn": 2}),
        ),
        // disable
        Case::json(
            "reencrypt_to is a number",
            &disable,
            a,
            json!({"reencrypt_to": 5}),
        ),
        Case::json(
            "reencrypt_to is null",
            &disable,
            a,
            json!({"reencrypt_to": null}),
        ),
        Case::json(
            "reencrypt_to is a list",
            &disable,
            a,
            json!({"reencrypt_to": ["service"]}),
        ),
        Case::json("reencrypt_to is missing", &disable, a, json!({})),
        Case::json(
            "reencrypt_to is empty",
            &disable,
            a,
            json!({"reencrypt_to": ""}),
        ),
        Case::json(
            "reencrypt_to is not an id",
            &disable,
            a,
            json!({"reencrypt_to": "Key One!"}),
        ),
        Case::json(
            "reencrypt_to is 200 characters",
            &disable,
            a,
            json!({"reencrypt_to": "k".repeat(200)}),
        ),
        Case::json(
            "an unknown field on disable",
            &disable,
            a,
            json!({"reencrypt_to": "service", "force": true}),
        ),
        // encrypt
        Case::json(
            "plaintext is a number",
            &encrypt,
            s,
            json!({"plaintext": 5}),
        ),
        Case::json("plaintext is null", &encrypt, s, json!({"plaintext": null})),
        Case::json(
            "plaintext is missing",
            &encrypt,
            s,
            json!({"context": {"a": "b"}}),
        ),
        Case::json(
            "an unknown field on encrypt",
            &encrypt,
            s,
            json!({"plaintext": "aGk=", "data_key_id": f.data_key}),
        ),
        // decrypt
        Case::json(
            "ciphertext is a number",
            &decrypt,
            s,
            json!({"ciphertext": 5}),
        ),
        Case::json(
            "ciphertext is missing",
            &decrypt,
            s,
            json!({"context": {"env": "prod"}}),
        ),
        Case::json(
            "an unknown field on decrypt",
            &decrypt,
            s,
            json!({"ciphertext": ct, "context": {"env": "prod"}, "org": "acme"}),
        ),
    ];
    expect_refused(&app, f.org, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_key_types_are_refused() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    let keys = f.keys();
    let a = Role::Admin;
    let role = "arn:aws:iam::111122223333:role/cmk";
    let key = "arn:aws:kms:us-east-1:111122223333:alias/cmk";
    let mut cases = Vec::new();
    for name in [
        String::new(),
        "   ".to_owned(),
        "\t\n".to_owned(),
        "a".repeat(65),
        "é".repeat(65),
        "<script>alert(1)</script>".to_owned(),
        "tab\there".to_owned(),
        "line\nbreak".to_owned(),
        "nul\u{0}byte".to_owned(),
        "semi;colon".to_owned(),
        "quote\"d".to_owned(),
        "🔑 key".to_owned(),
    ] {
        cases.push(Case::json(
            format!("name {name:?}"),
            &keys,
            a,
            json!({"name": name, "type": "local"}),
        ));
    }
    for t in ["gcp", "service-managed", "LOCAL", "aws_kms", "", "aws-kms "] {
        cases.push(Case::json(
            format!("type {t:?}"),
            &keys,
            a,
            json!({"name": "x", "type": t}),
        ));
    }
    // Only local keys run on the embedded backends: any aws-kms key is refused, valid or not.
    cases.push(Case::json(
        "an aws-kms key on embedded backends",
        &keys,
        a,
        json!({"name": "x", "type": "aws-kms", "role_arn": role, "key_arn": key}),
    ));
    for (role_arn, key_arn) in [
        ("not-an-arn", key),
        ("arn:aws:iam::12345:role/cmk", key),
        ("arn:aws:iam::111122223333:user/cmk", key),
        ("arn:aws:iam::111122223333:role/", key),
        ("arn:aws:sts::111122223333:role/cmk", key),
        (role, "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs"),
        (role, "arn:aws:kms:us-east-1:111122223333:key/"),
        (role, "arn:aws:s3:::bucket"),
        (role, "arn:aws:kms::111122223333:key/abc"),
        (role, ""),
    ] {
        cases.push(Case::json(
            format!("aws-kms with role_arn {role_arn:?} and key_arn {key_arn:?}"),
            &keys,
            a,
            json!({"name": "x", "type": "aws-kms", "role_arn": role_arn, "key_arn": key_arn}),
        ));
    }
    cases.push(Case::json(
        "aws-kms without key_arn",
        &keys,
        a,
        json!({"name": "x", "type": "aws-kms", "role_arn": role}),
    ));
    cases.push(Case::json(
        "aws-kms without role_arn",
        &keys,
        a,
        json!({"name": "x", "type": "aws-kms", "key_arn": key}),
    ));
    cases.push(Case::json(
        "aws-kms without ARNs",
        &keys,
        a,
        json!({"name": "x", "type": "aws-kms"}),
    ));
    cases.push(Case::json(
        "local with a role_arn",
        &keys,
        a,
        json!({"name": "x", "type": "local", "role_arn": role}),
    ));
    cases.push(Case::json(
        "local with a key_arn",
        &keys,
        a,
        json!({"name": "x", "type": "local", "key_arn": key}),
    ));
    let problems = expect_refused(&app, f.org, cases).await;
    assert!(
        problems
            .iter()
            .all(|p| p.get("reason").is_none() && p["code"] != "key_check_failed"),
        "bad input is refused before any key round trip"
    );
    // A bad name is pinned on its field, so a form can point at it without reading `detail`.
    let names = 12;
    assert!(
        problems[..names].iter().all(|p| p["field"] == "name"),
        "{:?}",
        &problems[..names]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_path_ids_and_query_params_are_refused() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    let a = Role::Admin;
    let s = Role::Service;
    let mut cases = Vec::new();

    // The org of the path (the token is acme's).
    for org in ["ACME!", "ACME", "ac%20me", "%FF", "a.b", &"a".repeat(65)] {
        cases.push(Case::bare(
            format!("org {org:?}"),
            "GET",
            &format!("/v1/orgs/{org}/keys"),
            a,
        ));
    }
    // Key ids on every key route.
    let long = "k".repeat(200);
    for key in [
        "key%20one",
        "KEY_1",
        "key.1",
        "a%2Fb",
        "%FF",
        "%00",
        long.as_str(),
    ] {
        for action in ["default", "check"] {
            cases.push(Case::bare(
                format!("key id {} on {action}", short(key)),
                "POST",
                &f.key(key, action),
                a,
            ));
        }
        cases.push(Case::json(
            format!("key id {} on disable", short(key)),
            &f.key(key, "disable"),
            a,
            json!({"reencrypt_to": "service"}),
        ));
    }
    // Data key ids.
    for id in ["not%20an%20id", "ABC", "a.b", long.as_str()] {
        cases.push(Case::json(
            format!("data key id {} on encrypt", short(id)),
            &f.encrypt(id),
            s,
            json!({"plaintext": "aGk="}),
        ));
    }
    // The audit page size and cursor.
    for q in [
        "limit=0",
        "limit=abc",
        "limit=501",
        "limit=-1",
        "limit=1.5",
        "limit=99999999999999999999999",
        "limit=%205",
        "limit=5&limit=6",
        "cursor=zzzz",
        "cursor=01234567-89ab-7def-8123-456789ABCDEF",
        "cursor=0123456789ab7def8123456789abcdef",
        "cursor=%00",
    ] {
        cases.push(Case::bare(
            format!("audit {q}"),
            "GET",
            &f.org_path(&format!("audit?{q}")),
            a,
        ));
    }
    // Wrong methods and unknown paths are problems too.
    for (method, path) in [
        ("DELETE", f.keys()),
        ("PUT", f.key(&f.k2, "default")),
        ("GET", f.decrypt()),
        ("GET", f.data_keys()),
    ] {
        cases
            .push(Case::bare("a wrong method", method, &path, a).expect(405, "method_not_allowed"));
    }
    for path in [f.org_path("nothing-here"), f.key(&f.k2, "delete")] {
        cases.push(Case::bare("an unknown path", "POST", &path, a).expect(404, "not_found"));
    }
    // A key's own path takes PATCH only.
    let key_path = format!("{}/{}", f.keys(), f.k2);
    cases.push(
        Case::bare("a key's path with another method", "POST", &key_path, a)
            .expect(405, "method_not_allowed"),
    );
    expect_refused(&app, f.org, cases).await;

    // The bounds themselves are accepted.
    for q in [
        "limit=1",
        "limit=500",
        "limit=",
        "cursor=",
        "cursor=01234567-89ab-7def-8123-456789abcdef",
    ] {
        let (status, body) = app
            .admin("GET", &f.org_path(&format!("audit?{q}")), f.org, None)
            .await;
        assert_eq!(status, 200, "audit {q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_plane_input_is_refused_and_writes_nothing() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    let s = Role::Service;
    let encrypt = f.encrypt(&f.data_key);
    let decrypt = f.decrypt();
    let ct = f.ciphertext.clone();
    let mut cases = Vec::new();

    // encrypt: plaintext must be standard base64
    for pt in ["not base64!", "aGk", "-_8=", "aGk=\n", "====", "aGk=aGk="] {
        cases.push(Case::json(
            format!("plaintext {pt:?}"),
            &encrypt,
            s,
            json!({"plaintext": pt}),
        ));
    }
    // encrypt and decrypt: the context is a map of strings, bounded
    let many: serde_json::Map<String, Value> = (0..33)
        .map(|i| (format!("k{i}"), Value::from("v")))
        .collect();
    for (what, context) in [
        ("a number value", json!({"env": 1})),
        ("a boolean value", json!({"env": true})),
        ("a null value", json!({"env": null})),
        ("an object value", json!({"env": {"a": "b"}})),
        ("a list value", json!({"env": ["prod"]})),
        ("a list", json!(["env", "prod"])),
        ("a string", json!("env=prod")),
        ("33 entries", Value::Object(many)),
        ("an empty key", json!({"": "v"})),
        ("a 257-character value", json!({"env": "v".repeat(257)})),
        ("a 257-character key", json!({"k".repeat(257): "v"})),
    ] {
        cases.push(Case::json(
            format!("encrypt with a context of {what}"),
            &encrypt,
            s,
            json!({"plaintext": "aGk=", "context": context}),
        ));
        cases.push(Case::json(
            format!("decrypt with a context of {what}"),
            &decrypt,
            s,
            json!({"ciphertext": ct, "context": context}),
        ));
    }
    // encrypt under a data key that does not exist
    cases.push(
        Case::json(
            "an unknown data key",
            &f.encrypt("0190aaaa-0000-7000-8000-000000000000"),
            s,
            json!({"plaintext": "aGk="}),
        )
        .expect(404, "not_found"),
    );

    // decrypt: a malformed ciphertext is invalid_request
    let bytes = ct_bytes(&ct);
    let id_len = bytes[1] as usize;
    let mut wrong_version = bytes.clone();
    wrong_version[0] = 9;
    let mut bad_id = bytes.clone();
    bad_id[2] = b'!';
    let mut long_len = bytes.clone();
    long_len[1] = 255;
    for (what, bad) in [
        ("an empty ciphertext", String::new()),
        ("garbage", "garbage".to_owned()),
        ("a bare prefix", "cmk1.".to_owned()),
        ("another prefix", ct.replacen("cmk1.", "cmk2.", 1)),
        ("not base64url", "cmk1.!!!!".to_owned()),
        ("padded base64url", format!("{ct}==")),
        ("standard base64", format!("cmk1.{}", B64.encode(&bytes))),
        ("a truncated ciphertext", ct[..20].to_owned()),
        ("only a header", ct_string(&bytes[..2 + id_len])),
        ("an unknown version", ct_string(&wrong_version)),
        ("a bad data key id", ct_string(&bad_id)),
        ("an id length past the end", ct_string(&long_len)),
        ("a 60 KB ciphertext", format!("cmk1.{}", "A".repeat(60_000))),
    ] {
        cases.push(Case::json(
            format!("decrypt {what}"),
            &decrypt,
            s,
            json!({"ciphertext": bad, "context": {"env": "prod"}}),
        ));
    }
    // decrypt: a well-formed ciphertext that does not authenticate is decrypt_failed
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mut tampered_body = bytes.clone();
    tampered_body[2 + id_len + 12] ^= 0x80;
    for (what, ciphertext, context) in [
        ("the wrong context", ct.clone(), json!({"env": "stage"})),
        ("no context", ct.clone(), Value::Null),
        ("an empty context", ct.clone(), json!({})),
        (
            "an extra context entry",
            ct.clone(),
            json!({"env": "prod", "x": "y"}),
        ),
        ("a context key renamed", ct.clone(), json!({"Env": "prod"})),
        (
            "a flipped tag bit",
            ct_string(&tampered),
            json!({"env": "prod"}),
        ),
        (
            "a flipped data bit",
            ct_string(&tampered_body),
            json!({"env": "prod"}),
        ),
    ] {
        let mut body = json!({ "ciphertext": ciphertext });
        if !context.is_null() {
            body["context"] = context;
        }
        cases.push(
            Case::json(format!("decrypt with {what}"), &decrypt, s, body)
                .expect(400, "decrypt_failed"),
        );
    }
    // decrypt: a well-formed ciphertext naming a data key that does not exist is not_found
    let ghost_id = "0190aaaa-0000-7000-8000-000000000000";
    assert_eq!(ghost_id.len(), id_len, "a data key id is a UUID");
    let mut ghost = bytes.clone();
    ghost[2..2 + id_len].copy_from_slice(ghost_id.as_bytes());
    cases.push(
        Case::json(
            "decrypt a ciphertext of an unknown data key",
            &decrypt,
            s,
            json!({"ciphertext": ct_string(&ghost), "context": {"env": "prod"}}),
        )
        .expect(404, "not_found"),
    );
    let problems = expect_refused(&app, f.org, cases).await;
    assert!(
        problems.iter().all(|p| p.get("plaintext").is_none()),
        "no refusal carries a plaintext"
    );

    // The data key counts did not move, and the real ciphertext still decrypts.
    let listing = app.keys(f.org).await;
    let total: u64 = listing["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["data_keys"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 1, "still the fixture's one data key: {listing}");
    let (status, body) = app
        .service(
            "POST",
            &decrypt,
            f.org,
            Some(json!({"ciphertext": ct, "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plaintext"], B64.encode(b"hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_at_the_limits_is_accepted() {
    // The refusals above are not over-strict: the bounds themselves pass.
    let app = TestApp::start().await;
    let f = fixture(&app).await;

    // A body just under 64 KiB.
    let plaintext = vec![7u8; 45 * 1024];
    let (status, body) = app
        .service(
            "POST",
            &f.encrypt(&f.data_key),
            f.org,
            Some(json!({"plaintext": B64.encode(&plaintext)})),
        )
        .await;
    assert_eq!(status, 200, "a 60 KiB body is accepted: {body}");
    let (status, body) = app
        .service(
            "POST",
            &f.decrypt(),
            f.org,
            Some(json!({"ciphertext": body["ciphertext"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plaintext"], B64.encode(&plaintext));

    // A context of 32 entries of 256 characters, and an empty plaintext.
    let context: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("{i:0>256}"), Value::from("v".repeat(256))))
        .collect();
    let (status, body) = app
        .service(
            "POST",
            &f.encrypt(&f.data_key),
            f.org,
            Some(json!({"plaintext": "", "context": context})),
        )
        .await;
    assert_eq!(status, 200, "the largest context is accepted: {body}");

    // Optional bodies may be empty whatever the content type.
    let raw = app
        .raw(
            "POST",
            &f.key(&f.k2, "check"),
            Some(&token(f.org, Role::Admin)),
            Some("text/plain"),
            None,
        )
        .await;
    assert_eq!(raw.status, 200, "{}", raw.body);

    // Names: 64 characters, trimmed, and the allowed punctuation.
    for (name, stored) in [
        ("a".repeat(64), "a".repeat(64)),
        ("é".repeat(64), "é".repeat(64)),
        ("  padded  ".to_owned(), "padded".to_owned()),
        (
            "prod (eu-west-1): a/b_c.d".to_owned(),
            "prod (eu-west-1): a/b_c.d".to_owned(),
        ),
    ] {
        let (status, body) = app
            .admin(
                "POST",
                &f.keys(),
                f.org,
                Some(json!({"name": name, "type": "local"})),
            )
            .await;
        assert_eq!(status, 201, "name {name:?}: {body}");
        assert_eq!(body["key"]["name"], stored.as_str());
    }
    app.assert_invariants(f.org).await;
}
