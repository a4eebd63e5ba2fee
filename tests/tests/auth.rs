//! The auth matrix of API.md over HTTP, for every route: who gets 401 (no, bad, forged or expired
//! token), who gets 403 (a member, another org, the wrong plane), and that ids of another org are
//! never accepted. A refused caller changes nothing.

use cmk_tests as common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use cmk_core::model::Role;
use cmk_http::auth::issue_token;
use common::{token, TestApp, SECRET};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plane {
    /// Admin routes: `admin` of the org only.
    Admin,
    /// Data-plane routes: `service` of the org only.
    Data,
}

/// One route of API.md with a body that would be valid for the right caller.
#[derive(Clone, Debug)]
struct Route {
    method: &'static str,
    path: String,
    plane: Plane,
    body: Option<Value>,
}

impl Route {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An org with a default key, a second key, a data key and a ciphertext made with it.
struct Fixture {
    k1: String,
    k2: String,
    data_key: String,
    ciphertext: String,
}

async fn fixture(app: &TestApp, org: &str) -> Fixture {
    let k1 = app.add_local_key(org, "k1").await;
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
            Some(json!({"plaintext": B64.encode(b"top secret"), "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    Fixture {
        k1,
        k2,
        data_key,
        ciphertext: body["ciphertext"].as_str().expect("ct").to_owned(),
    }
}

/// Every route of API.md for `org`, with `key` as `{key_id}` and the fixture's data key.
fn routes(org: &str, f: &Fixture, key: &str) -> Vec<Route> {
    let admin = |method, path: String, body: Option<Value>| Route {
        method,
        path,
        plane: Plane::Admin,
        body,
    };
    let data = |path: String, body: Value| Route {
        method: "POST",
        path,
        plane: Plane::Data,
        body: Some(body),
    };
    let base = format!("/v1/orgs/{org}");
    vec![
        admin("GET", format!("{base}/keys"), None),
        admin("GET", format!("{base}/keys/setup"), None),
        admin(
            "POST",
            format!("{base}/keys"),
            Some(json!({"name": "newcomer", "type": "local"})),
        ),
        admin("POST", format!("{base}/keys/{key}/default"), None),
        admin(
            "POST",
            format!("{base}/keys/{key}/disable"),
            Some(json!({"reencrypt_to": "service"})),
        ),
        admin("POST", format!("{base}/keys/disable-all"), None),
        admin("POST", format!("{base}/keys/{key}/check"), None),
        admin("GET", format!("{base}/reencryption"), None),
        admin("POST", format!("{base}/reencryption/retry"), None),
        admin("POST", format!("{base}/reencryption/cancel"), None),
        admin("GET", format!("{base}/audit?limit=10"), None),
        data(format!("{base}/data-keys"), json!({})),
        data(
            format!("{base}/data-keys/{}/encrypt", f.data_key),
            json!({"plaintext": B64.encode(b"hello"), "context": {"env": "prod"}}),
        ),
        data(
            format!("{base}/decrypt"),
            json!({"ciphertext": f.ciphertext, "context": {"env": "prod"}}),
        ),
    ]
}

/// Sends `route` with this `Authorization` header value (none when `None`).
async fn send(app: &TestApp, route: &Route, authorization: Option<&str>) -> common::Raw {
    let mut req = app
        .http
        .request(route.method.parse().expect("method"), app.url(&route.path));
    if let Some(a) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    if let Some(b) = &route.body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    common::Raw {
        status,
        headers,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `token` with its payload replaced by `other`'s: a forged claim set under a real signature.
fn forged(token: &str, other: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = other.split('.').nth(1).expect("payload");
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

/// `token`'s claims under an `alg: none` header and no signature.
fn unsigned(token: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = token.split('.').nth(1).expect("payload");
    format!("{header}.{payload}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_401_without_a_valid_token() {
    // GIVEN an org with keys, a data key and a ciphertext, and an expired token
    let app = TestApp::start().await;
    let org = "acme";
    let f = fixture(&app, org).await;
    let expired = issue_token(SECRET, "tester", org, Role::Admin, Duration::ZERO);
    let expired_service = issue_token(SECRET, "tester", org, Role::Service, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = app.observe(org).await;

    for route in routes(org, &f, &f.k2) {
        let right = match route.plane {
            Plane::Admin => Role::Admin,
            Plane::Data => Role::Service,
        };
        let other_secret = issue_token(
            b"another-secret-another-secret-00",
            "tester",
            org,
            right,
            Duration::from_secs(600),
        );
        let forged_claims = forged(&token(org, Role::Member), &token(org, right));
        let expired = if right == Role::Admin {
            &expired
        } else {
            &expired_service
        };
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no Authorization header", None),
            ("a garbage token", Some(bearer("not-a-jwt"))),
            ("a token of three garbage parts", Some(bearer("a.b.c"))),
            ("an empty bearer token", Some("Bearer ".to_owned())),
            ("a bare scheme", Some("Bearer".to_owned())),
            (
                "another scheme",
                Some("Basic dGVzdGVyOnNlY3JldA==".to_owned()),
            ),
            ("a raw token without scheme", Some(token(org, right))),
            (
                "a token signed with another secret",
                Some(bearer(&other_secret)),
            ),
            (
                "a member token whose claims were edited",
                Some(bearer(&forged_claims)),
            ),
            ("an expired token", Some(bearer(expired))),
            (
                "an unsigned token (alg none)",
                Some(bearer(&unsigned(&token(org, right)))),
            ),
        ];
        for (what, authorization) in cases {
            let raw = send(&app, &route, authorization.as_deref()).await;
            let what = format!("{} with {what}", route.name());
            raw.assert_problem(401, "unauthenticated", &what);
            let challenge = raw
                .headers
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert!(
                challenge.starts_with("Bearer"),
                "{what}: a 401 carries WWW-Authenticate: Bearer, got {challenge:?}"
            );
        }
    }

    // THEN nothing changed in the org
    assert_eq!(
        app.observe(org).await,
        before,
        "unauthenticated calls change nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_403_to_the_wrong_role_or_org() {
    // GIVEN two orgs, each with keys and data
    let app = TestApp::start().await;
    let org = "acme";
    let f = fixture(&app, org).await;
    let other = "globex";
    fixture(&app, other).await;
    let before = app.observe(org).await;
    let before_other = app.observe(other).await;

    for route in routes(org, &f, &f.k2) {
        let mut callers = vec![
            ("a member of the org", token(org, Role::Member)),
            ("a member of another org", token(other, Role::Member)),
        ];
        match route.plane {
            Plane::Admin => {
                callers.push(("an admin of another org", token(other, Role::Admin)));
                callers.push(("a service of the org", token(org, Role::Service)));
                callers.push(("a service of another org", token(other, Role::Service)));
            }
            Plane::Data => {
                callers.push(("a service of another org", token(other, Role::Service)));
                callers.push(("an admin of the org", token(org, Role::Admin)));
                callers.push(("an admin of another org", token(other, Role::Admin)));
            }
        }
        for (who, t) in callers {
            let raw = send(&app, &route, Some(&bearer(&t))).await;
            raw.assert_problem(403, "forbidden", &format!("{} as {who}", route.name()));
        }
    }

    // THEN nothing changed in either org
    assert_eq!(
        app.observe(org).await,
        before,
        "forbidden calls change nothing"
    );
    assert_eq!(app.observe(other).await, before_other);

    // AND the same routes with the right caller pass authorization (the table is right)
    for route in routes(org, &f, &f.k2) {
        let right = match route.plane {
            Plane::Admin => Role::Admin,
            Plane::Data => Role::Service,
        };
        let raw = send(&app, &route, Some(&bearer(&token(org, right)))).await;
        assert!(
            !matches!(raw.status, 401 | 403) && raw.status < 500,
            "{} with the right caller is authorized: {} {}",
            route.name(),
            raw.status,
            raw.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_comes_before_any_look_at_the_request() {
    let app = TestApp::start().await;
    let org = "acme";
    fixture(&app, org).await;
    let before = app.observe(org).await;
    let strangers: [(&str, &str, Option<&str>, &str); 6] = [
        (
            "POST",
            "/v1/orgs/ACME!/keys",
            Some(r#"{"name":"x","type":"local"}"#),
            "a bad org",
        ),
        (
            "POST",
            "/v1/orgs/acme/keys",
            Some(r#"{"name":"#),
            "a malformed body",
        ),
        (
            "POST",
            "/v1/orgs/acme/keys/key%20one/default",
            None,
            "a bad key id",
        ),
        (
            "POST",
            "/v1/orgs/acme/keys/key_00000000000000000000000000000000/check",
            None,
            "an unknown key",
        ),
        ("GET", "/v1/orgs/acme/audit?limit=0", None, "a bad limit"),
        (
            "POST",
            "/v1/orgs/acme/decrypt",
            Some(r#"{"ciphertext":"x"}"#),
            "a bad ciphertext",
        ),
    ];
    for (method, path, body, what) in strangers {
        // No token: 401 whatever else is wrong.
        let raw = app
            .raw(
                method,
                path,
                None,
                body.map(|_| "application/json"),
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await;
        raw.assert_problem(
            401,
            "unauthenticated",
            &format!("{method} {path} ({what}) without a token"),
        );
        // A member: 403 whatever else is wrong: the role is checked before the input.
        let raw = app
            .raw(
                method,
                path,
                Some(&token(org, Role::Member)),
                body.map(|_| "application/json"),
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await;
        raw.assert_problem(
            403,
            "forbidden",
            &format!("{method} {path} ({what}) as a member"),
        );
    }
    assert_eq!(app.observe(org).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_another_org_are_never_accepted() {
    // GIVEN org A with keys, a data key and a ciphertext; org B with its own keys
    let app = TestApp::start().await;
    let (a, b) = ("alpha", "bravo");
    let fa = fixture(&app, a).await;
    let fb = fixture(&app, b).await;
    let before_a = app.observe(a).await;
    let before_b = app.observe(b).await;

    // WHEN B's admin names A's keys on B's paths
    // THEN 404 not_found, as for any unknown id
    let admin_cases = [
        (format!("/v1/orgs/{b}/keys/{}/default", fa.k2), None),
        (format!("/v1/orgs/{b}/keys/{}/default", fa.k1), None),
        (
            format!("/v1/orgs/{b}/keys/{}/disable", fa.k2),
            Some(json!({"reencrypt_to": fb.k1})),
        ),
        (
            format!("/v1/orgs/{b}/keys/{}/disable", fb.k2),
            Some(json!({"reencrypt_to": fa.k1})),
        ),
        (format!("/v1/orgs/{b}/keys/{}/check", fa.k1), None),
    ];
    for (path, body) in admin_cases {
        let (status, problem) = app.admin("POST", &path, b, body).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("not_found")),
            "POST {path} with an id of another org: {problem}"
        );
    }

    // WHEN B's service names A's data key, or sends A's ciphertext
    let (status, problem) = app
        .service(
            "POST",
            &format!("/v1/orgs/{b}/data-keys/{}/encrypt", fa.data_key),
            b,
            Some(json!({"plaintext": B64.encode(b"x"), "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("not_found")),
        "encrypt under a data key of another org: {problem}"
    );
    let (status, problem) = app
        .service(
            "POST",
            &format!("/v1/orgs/{b}/decrypt"),
            b,
            Some(json!({"ciphertext": fa.ciphertext, "context": {"env": "prod"}})),
        )
        .await;
    assert!(
        matches!(
            (status, problem["code"].as_str()),
            (404, Some("not_found")) | (400, Some("decrypt_failed" | "invalid_request"))
        ),
        "a ciphertext of another org does not decrypt: {status} {problem}"
    );
    assert!(
        problem.get("plaintext").is_none(),
        "no plaintext leaks: {problem}"
    );

    // THEN nothing changed in A (nor in B), and A's ciphertext still decrypts in A
    assert_eq!(app.observe(a).await, before_a, "org A is untouched");
    assert_eq!(app.observe(b).await, before_b, "org B is untouched");
    let (status, body) = app
        .service(
            "POST",
            &format!("/v1/orgs/{a}/decrypt"),
            a,
            Some(json!({"ciphertext": fa.ciphertext, "context": {"env": "prod"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        B64.decode(body["plaintext"].as_str().expect("pt"))
            .expect("b64"),
        b"top secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_the_openapi_document_need_no_token() {
    let app = TestApp::start().await;
    for authorization in [None, Some("Bearer not-a-jwt")] {
        let route = Route {
            method: "GET",
            path: "/healthz".into(),
            plane: Plane::Admin,
            body: None,
        };
        let raw = send(&app, &route, authorization).await;
        assert_eq!(raw.status, 200, "/healthz: {}", raw.body);
        assert_eq!(raw.body["status"], "ok");

        let route = Route {
            path: "/openapi.json".into(),
            ..route
        };
        let raw = send(&app, &route, authorization).await;
        assert_eq!(raw.status, 200, "/openapi.json: {}", raw.body);
        assert!(
            raw.content_type().starts_with("application/json"),
            "{:?}",
            raw.content_type()
        );
        assert!(
            raw.body["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with('3')),
            "an OpenAPI 3 document"
        );
        assert!(
            raw.body["paths"]["/v1/orgs/{org}/keys"].is_object(),
            "it documents the routes"
        );
    }
}
