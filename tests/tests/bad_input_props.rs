//! Generated bad input never panics and always gets a 4xx `application/problem+json` answer whose
//! status and code are a pair of API.md's error table: at least 10,000 generated cases each for the
//! ciphertext envelope parser, for every request body type (add key, disable, data keys, encrypt,
//! decrypt) and for every path parameter parser (org, key id, data key id). Requests go through the
//! real router in-process, on the SQLite backends of [`TestApp`]; a generated case that could
//! succeed and change something is recognized and not sent, so the keys listing and the audit trail
//! are identical before and after each run. Each test prints its counts.
//!
//! The generation is seeded: each test prints its seed, and `PROPTEST_RNG_SEED=<seed>` draws the
//! same cases again (but for the ids the fixture makes anew). A failure lists its first inputs.
//!
//! Its length is its generators: each group of generated input sits beside what it must answer.

use cmk_tests as common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use cmk_core::crypto;
use cmk_core::model::Role;
use cmk_core::CoreError;
use cmk_http::auth::Hs256Authenticator;
use cmk_http::AppState;
use common::{token, TestApp, SECRET};
use futures::FutureExt;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

/// Generated cases per parser and per body type.
const CASES: usize = 10_000;

/// The error table of API.md: every (status, code) pair a refusal may carry.
const API_PROBLEMS: &[(u16, &str)] = &[
    (401, "unauthenticated"),
    (403, "forbidden"),
    (404, "not_found"),
    (400, "invalid_request"),
    (409, "name_taken"),
    (409, "key_is_default"),
    (409, "key_busy"),
    (409, "key_not_active"),
    (409, "reencryption_in_progress"),
    (422, "key_check_failed"),
    (424, "key_unavailable"),
    (429, "key_unavailable"),
    (409, "key_is_service_managed"),
    (409, "key_limit_reached"),
    (409, "no_reencryption"),
    (409, "conflict"),
    (400, "decrypt_failed"),
];

const ORG: &str = "acme";
const CIPHERTEXT_PREFIX: &str = "cmk1.";

// ---- generation ----

/// A seeded source of generated values: proptest strategies drawn one value at a time (no
/// shrinking, no failure persistence), so that every case runs and is counted.
struct Gen {
    runner: TestRunner,
    seed: u64,
}

impl Gen {
    fn new() -> Self {
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            });
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let config = Config {
            failure_persistence: None,
            ..Config::default()
        };
        Self {
            runner: TestRunner::new_with_rng(
                config,
                TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            ),
            seed,
        }
    }

    fn draw<T: Debug>(&mut self, strategy: &BoxedStrategy<T>) -> T {
        strategy
            .new_tree(&mut self.runner)
            .expect("these strategies never reject")
            .current()
    }
}

/// One of the arms, by weight.
fn one_of<T: Debug + 'static>(arms: Vec<(u32, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    Union::new_weighted(arms).boxed()
}

fn strings(values: &[&str]) -> BoxedStrategy<String> {
    let values: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
    select(values).boxed()
}

/// Any text: arbitrary characters (control characters, surrogate-free Unicode, NUL), printable
/// ASCII, words the service knows, and long runs.
fn any_text() -> BoxedStrategy<String> {
    one_of(vec![
        (
            4,
            prop::collection::vec(any::<char>(), 0..40)
                .prop_map(String::from_iter)
                .boxed(),
        ),
        (3, "[ -~]{0,40}".boxed()),
        (
            2,
            strings(&[
                "",
                " ",
                "local",
                "aws-kms",
                "service",
                "service-managed",
                "Service-managed key",
                "k1",
                "null",
                "true",
                "{}",
                "aGk=",
                "cmk1.",
                "\u{0}",
                "\u{feff}",
                "\u{202e}",
                "é",
                "🔑",
            ]),
        ),
        (
            1,
            (any::<char>(), 65usize..3000)
                .prop_map(|(c, n)| c.to_string().repeat(n))
                .boxed(),
        ),
    ])
}

/// Object member names: the fields of every body, near misses, and anything.
fn json_key() -> BoxedStrategy<String> {
    one_of(vec![
        (
            3,
            strings(&[
                "name",
                "type",
                "role_arn",
                "key_arn",
                "reencrypt_to",
                "plaintext",
                "context",
                "ciphertext",
                "Name",
                "TYPE",
                "name ",
                "",
                "__proto__",
                "id",
            ]),
        ),
        (2, any_text()),
    ])
}

fn json_leaf() -> BoxedStrategy<Value> {
    one_of(vec![
        (1, Just(Value::Null).boxed()),
        (1, any::<bool>().prop_map(Value::from).boxed()),
        (1, any::<i64>().prop_map(Value::from).boxed()),
        (1, any::<u64>().prop_map(Value::from).boxed()),
        (
            1,
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
                .boxed(),
        ),
        (4, any_text().prop_map(Value::from).boxed()),
    ])
}

/// A JSON value of any shape: scalars, arrays and objects nested a few levels.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            one_of(vec![
                (
                    1,
                    prop::collection::vec(inner.clone(), 0..6)
                        .prop_map(Value::Array)
                        .boxed(),
                ),
                (
                    2,
                    prop::collection::vec((json_key(), inner), 0..6)
                        .prop_map(|members| Value::Object(members.into_iter().collect()))
                        .boxed(),
                ),
            ])
        })
        .boxed()
}

/// An encryption context, good or bad: small maps of strings, too many entries, keys and values
/// at and over 256 characters, empty keys, values of other types, or any value.
fn context_value() -> BoxedStrategy<Value> {
    let entry = (any_text(), any_text());
    one_of(vec![
        (
            4,
            prop::collection::vec(entry.clone(), 0..5)
                .prop_map(|e| json!(e.into_iter().collect::<BTreeMap<_, _>>()))
                .boxed(),
        ),
        (
            1,
            (25usize..45)
                .prop_map(|n| {
                    json!((0..n)
                        .map(|i| (format!("k{i}"), "v"))
                        .collect::<BTreeMap<_, _>>())
                })
                .boxed(),
        ),
        (
            1,
            (250usize..262, 250usize..262)
                .prop_map(|(k, v)| json!({"k".repeat(k): "v".repeat(v)}))
                .boxed(),
        ),
        (1, any_text().prop_map(|v| json!({"": v})).boxed()),
        (
            1,
            prop::collection::vec((json_key(), json_value()), 1..4)
                .prop_map(|e| Value::Object(e.into_iter().collect()))
                .boxed(),
        ),
        (2, json_value()),
    ])
}

/// A generated request body and its content type.
#[derive(Debug, Clone)]
struct GenBody {
    content_type: Option<String>,
    bytes: Vec<u8>,
}

fn content_type() -> BoxedStrategy<Option<String>> {
    let json = Some("application/json".to_owned());
    one_of(vec![
        (12, Just(json).boxed()),
        (
            3,
            strings(&[
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
                "application/problem+json",
                "application/vnd.cmk+json",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/jsonx",
                "json",
                "application/",
                "/json",
                "",
                ";",
            ])
            .prop_map(Some)
            .boxed(),
        ),
        (1, "[ -~]{0,40}".prop_map(Some).boxed()),
        (1, Just(None).boxed()),
    ])
}

/// Raw texts that no serializer writes: deep nesting, out-of-range numbers, bad escapes, lone
/// surrogates, comments, trailing commas, several documents, NUL bytes, a byte order mark.
fn tricky_json(fields: &[&'static str]) -> BoxedStrategy<Vec<u8>> {
    let field = select(if fields.is_empty() {
        vec!["x"]
    } else {
        fields.to_vec()
    });
    let fixed: Vec<&'static str> = vec![
        "{\"F\":1e999}",
        "{\"F\":-1e999}",
        "{\"F\":123456789012345678901234567890}",
        "{\"F\":-0}",
        "{\"F\":\"\\ud800\"}",
        "{\"F\":\"\\udfff\\ud800\"}",
        "{\"F\":\"\\u0000\"}",
        "{\"F\":\"\\x41\"}",
        "{\"F\":\"\\u12\"}",
        "{\"F\":\"tab\there\"}",
        "{\"F\":\"a\",}",
        "{\"F\" \"a\"}",
        "{'F':'a'}",
        "{F:\"a\"}",
        "{\"F\":NaN}",
        "{\"F\":Infinity}",
        "{\"F\":undefined}",
        "/* c */{\"F\":\"a\"}",
        "{\"F\":\"a\"}// c",
        "{\"F\":\"a\"}{\"F\":\"a\"}",
        "{\"F\":\"a\"} {}",
        "{\"F\":\"a\",\"F\":\"a\"}",
        "{\"context\":{\"a\":\"b\",\"a\":\"c\"},\"F\":\"a\"}",
        "{\"F\":{\"$ref\":\"#\"}}",
        "{,}",
        "{\"\":}",
        "{\"F\":\"a\"\u{0}}",
        "\u{0}",
        "\u{feff}{}",
        "{\"F\":\"\u{feff}\"}",
        "{\"F\":true,\"F\":false}",
        "{\"F\":[]}",
        "{\"F\":{}}",
        "{}",
        "  {  }  ",
        "{\"F\"}",
        "{\"F\":}",
        "{\"F\"",
        "{",
        "}",
        "[",
        "\"",
        "0",
        "-",
        "1.",
        "tru",
        "nul",
    ];
    one_of(vec![
        (
            3,
            (select(fixed), field)
                .prop_map(|(text, field)| text.replace('F', field).into_bytes())
                .boxed(),
        ),
        (
            1,
            (100usize..4000, 0u8..4)
                .prop_map(|(depth, kind)| {
                    let (open, close) = match kind {
                        0 => ("[", "]"),
                        1 => ("{\"a\":", "}"),
                        2 => ("{\"context\":{\"a\":", "}}"),
                        _ => ("{\"name\":[", "]}"),
                    };
                    let mut s = open.repeat(depth);
                    s.push('1');
                    s.push_str(&close.repeat(depth));
                    s.into_bytes()
                })
                .boxed(),
        ),
        (
            1,
            (100usize..4000)
                .prop_map(|depth| "[".repeat(depth).into_bytes())
                .boxed(),
        ),
    ])
}

/// Breaks a serialized body: truncation, a byte inserted, replaced or removed, invalid UTF-8,
/// a duplicated member list, trailing garbage, a byte order mark.
fn corrupt(mut bytes: Vec<u8>, op: u8, at: Index, byte: u8) -> Vec<u8> {
    let n = bytes.len();
    let i = if n == 0 { 0 } else { at.index(n) };
    match op % 8 {
        0 => bytes.truncate(i),
        1 => bytes.insert(i, byte),
        2 if n > 0 => bytes[i] = byte,
        3 => {
            let bad: &[u8] = match byte % 5 {
                0 => b"\xff",
                1 => b"\xc0\x80",
                2 => b"\x80",
                3 => b"\xed\xa0\x80",
                _ => b"\xf8\x88\x80\x80\x80",
            };
            bytes.splice(i..i, bad.iter().copied());
        }
        4 if n > 2 && bytes.first() == Some(&b'{') && bytes.last() == Some(&b'}') => {
            let inner = bytes[1..n - 1].to_vec();
            bytes.truncate(n - 1);
            bytes.push(b',');
            bytes.extend_from_slice(&inner);
            bytes.push(b'}');
        }
        5 => bytes.extend_from_slice(match byte % 4 {
            0 => b" x",
            1 => b"}",
            2 => b",",
            _ => b"\0",
        }),
        6 => {
            bytes.splice(0..0, [0xef, 0xbb, 0xbf]);
        }
        _ if n > 0 => {
            bytes.remove(i);
        }
        _ => {}
    }
    bytes
}

/// The members a body may leave out.
const OPTIONAL_FIELDS: &[&str] = &["role_arn", "key_arn", "context"];

/// Bodies of every shape for a route whose body has these fields, each with a strategy for
/// plausible values. `needs_extra`: the route takes `{}`, whose only valid body is empty, so the
/// object-shaped bodies always carry a member it does not know.
fn bodies(
    fields: Vec<(&'static str, BoxedStrategy<Value>)>,
    needs_extra: bool,
) -> BoxedStrategy<GenBody> {
    let names: Vec<&'static str> = fields.iter().map(|(n, _)| *n).collect();
    let members: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|(name, plausible)| {
            // Optional members are left out more often, so that valid shapes come up too.
            let present = if OPTIONAL_FIELDS.contains(&name) {
                0.4
            } else {
                0.9
            };
            prop::option::weighted(present, one_of(vec![(3, plausible), (1, json_value())]))
                .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
                .boxed()
        })
        .collect();
    // Members the route does not know; a route that takes `{}` knows none, so one is enough.
    let extras = if needs_extra {
        prop::collection::vec((json_key(), json_value()), 1..4).boxed()
    } else {
        one_of(vec![
            (3, Just(Vec::<(String, Value)>::new()).boxed()),
            (
                1,
                prop::collection::vec((json_key(), json_value()), 1..3).boxed(),
            ),
        ])
    };
    let shaped_bytes = (members, extras)
        .prop_map(|(members, extras)| {
            let mut object = Map::new();
            for (k, v) in extras {
                object.insert(k, v);
            }
            for (k, v) in members.into_iter().flatten() {
                object.insert(k, v);
            }
            serde_json::to_vec(&Value::Object(object)).expect("a JSON value serializes")
        })
        .boxed();
    let with_json = |s: BoxedStrategy<Vec<u8>>| {
        s.prop_map(|bytes| GenBody {
            content_type: Some("application/json".to_owned()),
            bytes,
        })
        .boxed()
    };
    one_of(vec![
        // an object with the route's fields, each missing, plausible or of any type, and maybe
        // unknown members, sent with a JSON content type or another
        (
            8,
            (shaped_bytes.clone(), content_type())
                .prop_map(|(bytes, content_type)| GenBody {
                    content_type,
                    bytes,
                })
                .boxed(),
        ),
        // any JSON value at the top
        (
            3,
            with_json(
                json_value()
                    .prop_map(|v| serde_json::to_vec(&v).expect("a JSON value serializes"))
                    .boxed(),
            ),
        ),
        // bytes
        (
            2,
            with_json(prop::collection::vec(any::<u8>(), 0..300).boxed()),
        ),
        // a serialized body broken one to three times
        (
            3,
            with_json(
                (
                    shaped_bytes.clone(),
                    prop::collection::vec((any::<u8>(), any::<Index>(), any::<u8>()), 1..4),
                )
                    .prop_map(|(bytes, ops)| {
                        ops.into_iter()
                            .fold(bytes, |b, (op, at, byte)| corrupt(b, op, at, byte))
                    })
                    .boxed(),
            ),
        ),
        // texts no serializer writes
        (2, with_json(tricky_json(&names))),
        // a body over the 64 KiB limit
        (
            1,
            with_json(
                (shaped_bytes.clone(), 64usize * 1024..70 * 1024)
                    .prop_map(|(mut bytes, n)| {
                        // `{…}` becomes `{…,"pad":"xxx…"}`
                        bytes.pop();
                        if bytes.len() > 1 {
                            bytes.push(b',');
                        }
                        bytes.extend_from_slice(b"\"pad\":\"");
                        bytes.resize(bytes.len() + n, b'x');
                        bytes.extend_from_slice(b"\"}");
                        bytes
                    })
                    .boxed(),
            ),
        ),
    ])
}

// ---- ciphertexts ----

/// The decoded bytes of a ciphertext: `[version][id len][id][nonce][sealed]`.
fn ct_bytes(ct: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(ct.strip_prefix(CIPHERTEXT_PREFIX).expect("prefix"))
        .expect("base64url")
}

fn ct_string(bytes: &[u8]) -> String {
    format!("{CIPHERTEXT_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// An independent reading of the envelope format of crypto.rs: the data key id when `s` is a
/// well-formed ciphertext (it may still fail to authenticate), else `None`.
fn well_formed(s: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD
        .decode(s.strip_prefix(CIPHERTEXT_PREFIX)?)
        .ok()?;
    if raw.len() < 2 || raw[0] != 1 {
        return None;
    }
    let len = usize::from(raw[1]);
    if raw.len() < 2 + len + 12 + 16 {
        return None;
    }
    let id = std::str::from_utf8(&raw[2..2 + len]).ok()?;
    let id_ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    id_ok.then(|| id.to_owned())
}

/// Ciphertexts: any text, anything after the prefix, base64url of any bytes, envelopes built
/// field by field, and a real ciphertext of the service with its bytes or its text mutated.
fn ciphertexts(real: &str) -> BoxedStrategy<String> {
    let bytes = ct_bytes(real);
    let real_id = bytes[2..2 + usize::from(bytes[1])].to_vec();
    let real_text = real.to_owned();
    let envelope = (
        one_of(vec![(9, Just(1u8).boxed()), (1, any::<u8>().boxed())]),
        one_of(vec![
            (3, "[a-z0-9_-]{0,70}".prop_map(String::into_bytes).boxed()),
            (1, "[ -~]{0,20}".prop_map(String::into_bytes).boxed()),
            (1, prop::collection::vec(any::<u8>(), 0..70).boxed()),
            (2, Just(real_id).boxed()),
        ]),
        prop::option::weighted(0.2, any::<u8>()),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(version, id, len, rest)| {
            let mut raw = vec![version, len.unwrap_or(id.len() as u8)];
            raw.extend_from_slice(&id);
            raw.extend_from_slice(&rest);
            ct_string(&raw)
        })
        .boxed();
    let byte_ops = (
        Just(bytes),
        prop::collection::vec(
            (
                0u8..8,
                any::<Index>(),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 1..40),
            ),
            1..4,
        ),
    )
        .prop_map(|(mut b, ops)| {
            for (op, at, byte, extra) in ops {
                let n = b.len();
                let i = if n == 0 { 0 } else { at.index(n) };
                match op {
                    0 if n > 0 => b[i] ^= 1 << (byte % 8),
                    1 if n > 0 => b[i] = byte,
                    2 => b.truncate(i),
                    3 => b.extend_from_slice(&extra),
                    4 => b.insert(i, byte),
                    5 if n > 0 => {
                        b.remove(i);
                    }
                    6 if n > 0 => b[0] = byte,
                    7 if n > 1 => b[1] = byte,
                    _ => {}
                }
            }
            ct_string(&b)
        })
        .boxed();
    let prefixes = [
        "",
        "cmk1",
        "cmk2.",
        "CMK1.",
        "cmk1..",
        "cmk0.",
        "cmk1:",
        " cmk1.",
        "cmk10.",
        "cmk1.cmk1.",
    ];
    let text_ops = (
        Just(real_text.clone()),
        prop::collection::vec(
            (
                0u8..9,
                any::<Index>(),
                any::<char>(),
                select(prefixes.to_vec()),
            ),
            1..3,
        ),
    )
        .prop_map(|(text, ops)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (op, at, c, prefix) in ops {
                let n = chars.len();
                let i = if n == 0 { 0 } else { at.index(n) };
                match op {
                    0 if n > 0 => chars[i] = c,
                    1 => chars.insert(i, c),
                    2 if n > 0 => {
                        chars.remove(i);
                    }
                    3 => chars.truncate(i),
                    4 => chars.extend(if u32::from(c) % 2 == 0 { "=" } else { "==" }.chars()),
                    5 => {
                        let s: String = chars.iter().collect();
                        let rest = s.strip_prefix(CIPHERTEXT_PREFIX).unwrap_or(&s);
                        chars = format!("{prefix}{rest}").chars().collect();
                    }
                    6 => {
                        let s: String = chars.iter().collect();
                        if let Some(raw) = s
                            .strip_prefix(CIPHERTEXT_PREFIX)
                            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
                        {
                            chars = format!("{CIPHERTEXT_PREFIX}{}", B64.encode(raw))
                                .chars()
                                .collect();
                        }
                    }
                    7 => {
                        chars.insert(0, ' ');
                        chars.push('\n');
                    }
                    8 => chars = chars.iter().flat_map(|c| c.to_uppercase()).collect(),
                    _ => {}
                }
            }
            chars.into_iter().collect::<String>()
        })
        .boxed();
    one_of(vec![
        (
            2,
            prop::collection::vec(any::<char>(), 0..60)
                .prop_map(String::from_iter)
                .boxed(),
        ),
        (1, any::<String>().boxed()),
        (
            2,
            prop::collection::vec(any::<char>(), 0..60)
                .prop_map(|c| format!("{CIPHERTEXT_PREFIX}{}", String::from_iter(c)))
                .boxed(),
        ),
        (2, "cmk1\\.[A-Za-z0-9_=+/.-]{0,120}".boxed()),
        (
            3,
            prop::collection::vec(any::<u8>(), 0..120)
                .prop_map(|b| ct_string(&b))
                .boxed(),
        ),
        (4, envelope),
        (6, byte_ops),
        (3, text_ops),
        (1, Just(real_text).boxed()),
    ])
}

// ---- path segments ----

/// Bytes that may stand unescaped in a path segment (RFC 3986 `pchar`, and what the `http`
/// crate also lets through), except `%`, which the generators place themselves.
const LITERAL: &str =
    "!$&'()*+,-.0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_abcdefghijklmnopqrstuvwxyz|~\"{}";

fn escape(b: u8, upper: bool) -> String {
    if upper {
        format!("%{b:02X}")
    } else {
        format!("%{b:02x}")
    }
}

/// Escapes what cannot stand in a segment, as UTF-8 bytes.
fn encode_minimal(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if LITERAL.as_bytes().contains(&b) {
                char::from(b).to_string()
            } else {
                escape(b, true)
            }
        })
        .collect()
}

/// What the router hands a path parameter's parser: `%XX` decoded (any other `%` stays), and
/// `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Path segments: id-like text, any literal characters, any Unicode or bytes percent-encoded,
/// malformed escapes, very long ids, dot segments, and known ids mutated (a character escaped,
/// upper-cased, added or removed).
fn segments(known: Vec<String>) -> BoxedStrategy<String> {
    let literal: Vec<char> = LITERAL.chars().collect();
    let mutated = (
        select(known),
        prop::collection::vec((0u8..6, any::<Index>(), any::<char>(), any::<bool>()), 1..3),
    )
        .prop_map(move |(seed, ops)| {
            let mut pieces: Vec<String> = seed.chars().map(String::from).collect();
            for (op, at, c, upper) in ops {
                let n = pieces.len();
                let i = if n == 0 { 0 } else { at.index(n) };
                match op {
                    0 if n > 0 => {
                        pieces[i] = pieces[i].bytes().map(|b| escape(b, upper)).collect();
                    }
                    1 if n > 0 => pieces[i] = pieces[i].to_uppercase(),
                    2 => pieces.insert(i, encode_minimal(&c.to_string())),
                    3 if n > 0 => {
                        pieces.remove(i);
                    }
                    4 => pieces.insert(i, "%".to_owned()),
                    _ => pieces.push(encode_minimal(&c.to_string())),
                }
            }
            pieces.concat()
        })
        .boxed();
    one_of(vec![
        (3, "[a-z0-9_-]{0,70}".boxed()),
        (3, "[a-zA-Z0-9_.~-]{0,70}".boxed()),
        (
            2,
            prop::collection::vec(select(literal), 0..40)
                .prop_map(String::from_iter)
                .boxed(),
        ),
        (
            3,
            prop::collection::vec(any::<char>(), 0..30)
                .prop_map(|c| encode_minimal(&String::from_iter(c)))
                .boxed(),
        ),
        (
            2,
            (prop::collection::vec(any::<u8>(), 0..40), any::<bool>())
                .prop_map(|(b, upper)| b.into_iter().map(|b| escape(b, upper)).collect())
                .boxed(),
        ),
        (1, "([a-z0-9]|%|%[0-9A-Fa-f]|%[G-Zg-z%]{1,2}){0,20}".boxed()),
        (4, mutated),
        (1, "[a-z0-9]{65,400}".boxed()),
        (
            1,
            strings(&[
                "",
                ".",
                "..",
                "%2e",
                "%2E%2E",
                "%2F",
                "a%2Fb",
                "%00",
                "%20",
                "+",
                "%",
                "%%",
                "%FF",
                "%C3%28",
                "%ED%A0%80",
                "%F4%90%80%80",
                "%EF%BB%BF",
                "%u0061",
            ]),
        ),
    ])
}

// ---- sending and checking ----

/// An answer of the router.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

enum Outcome {
    Answer(Answer),
    Panic(String),
    /// The test could not build the request (a bug of the generators) or read the answer.
    Broken(String),
}

/// The real router on the fixture's service, called in-process.
struct Api {
    router: Router,
}

impl Api {
    fn new(app: &TestApp) -> Self {
        Self {
            router: cmk_http::router(AppState {
                cmk: app.cmk.clone(),
                auth: Arc::new(Hs256Authenticator::new(SECRET).expect("a 32-byte secret")),
            }),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Outcome {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let request = match builder.body(Body::from(body)) {
            Ok(r) => r,
            Err(e) => return Outcome::Broken(format!("the test built a bad request: {e}")),
        };
        let response = match AssertUnwindSafe(self.router.clone().oneshot(request))
            .catch_unwind()
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(panic) => return Outcome::Panic(panic_text(panic.as_ref())),
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        match axum::body::to_bytes(response.into_body(), usize::MAX).await {
            Ok(body) => Outcome::Answer(Answer {
                status,
                content_type,
                body: body.to_vec(),
            }),
            Err(e) => Outcome::Broken(format!("the answer's body could not be read: {e}")),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// What a case may get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A 4xx problem only.
    Refused,
    /// A 2xx (the generated input is valid and changes nothing), or a 4xx problem.
    Either,
    /// Could succeed and change state: not sent.
    Skip,
}

/// Checks an answer: never a 5xx; a 4xx is problem+json whose `status` is the HTTP status and
/// whose (status, code) is in API.md's table; a 2xx only where `expect` allows it. Returns the
/// problem code, or "" for a success.
fn check(answer: &Answer, expect: Expect) -> Result<String, String> {
    let status = answer.status;
    let text = String::from_utf8_lossy(&answer.body);
    let shown: String = text.chars().take(300).collect();
    if (200..300).contains(&status) {
        return if expect == Expect::Either && answer.content_type.starts_with("application/json") {
            Ok(String::new())
        } else {
            Err(format!(
                "a {status} success where a refusal was due: {shown}"
            ))
        };
    }
    if !(400..500).contains(&status) {
        return Err(format!("status {status}, not a 4xx: {shown}"));
    }
    if !answer.content_type.starts_with("application/problem+json") {
        return Err(format!(
            "{status} with content-type {:?}, not application/problem+json: {shown}",
            answer.content_type
        ));
    }
    let problem: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{status}: the problem is not JSON ({e}): {shown}"))?;
    if problem["status"] != u64::from(status) {
        return Err(format!("{status}: the problem's status differs: {shown}"));
    }
    let code = problem["code"].as_str().unwrap_or("<none>").to_owned();
    if !API_PROBLEMS.contains(&(status, code.as_str())) {
        return Err(format!(
            "{status} {code}: not a status and code of API.md's error table: {shown}"
        ));
    }
    Ok(code)
}

/// The counts of one generated run.
#[derive(Default)]
struct Tally {
    cases: usize,
    panics: usize,
    skipped: usize,
    statuses: BTreeMap<u16, usize>,
    codes: BTreeMap<String, usize>,
    failures: usize,
    examples: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: impl FnOnce() -> String) {
        self.failures += 1;
        if self.examples.len() < 10 {
            self.examples.push(what());
        }
    }

    fn record(&mut self, outcome: Outcome, expect: Expect, what: impl FnOnce() -> String) {
        self.cases += 1;
        match outcome {
            Outcome::Answer(answer) => {
                *self.statuses.entry(answer.status).or_default() += 1;
                match check(&answer, expect) {
                    Ok(code) if code.is_empty() => {}
                    Ok(code) => *self.codes.entry(code).or_default() += 1,
                    Err(e) => self.fail(|| format!("{}: {e}", what())),
                }
            }
            Outcome::Panic(p) => {
                self.panics += 1;
                self.fail(|| format!("{}: PANIC {p}", what()));
            }
            Outcome::Broken(e) => self.fail(|| format!("{}: {e}", what())),
        }
    }

    /// Prints the counts, then asserts there was no panic and no wrong answer.
    fn finish(&self, what: &str, seed: u64) {
        println!(
            "{what}: {} cases, {} panics, statuses {:?}, codes {:?}, {} not sent (could succeed), seed {seed}",
            self.cases, self.panics, self.statuses, self.codes, self.skipped
        );
        assert!(self.cases >= CASES, "{what}: only {} cases ran", self.cases);
        assert!(
            self.failures == 0 && self.panics == 0,
            "{what}: {} of {} cases failed ({} panics; replay with PROPTEST_RNG_SEED={seed}):\n{}",
            self.failures,
            self.cases,
            self.panics,
            self.examples.join("\n")
        );
    }
}

fn short(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 200 {
        format!(
            "{}… ({} bytes)",
            text.chars().take(200).collect::<String>(),
            bytes.len()
        )
    } else {
        format!("{text:?}")
    }
}

// ---- fixture ----

/// The org `acme`, full: ten active local keys (the first is the default), so that no add can
/// succeed, a data key, and a ciphertext made with the context `{"env":"prod"}`.
struct Fixture {
    app: TestApp,
    api: Api,
    keys: Vec<String>,
    data_key: String,
    ciphertext: String,
    admin: String,
    service: String,
}

impl Fixture {
    async fn start() -> Self {
        let app = TestApp::start().await;
        let mut keys = Vec::new();
        for i in 1..=10 {
            keys.push(app.add_local_key(ORG, &format!("k{i}")).await);
        }
        assert_eq!(app.wait_job(ORG).await["state"], "completed");
        let (status, body) = app
            .admin(
                "POST",
                &format!("/v1/orgs/{ORG}/keys"),
                ORG,
                Some(json!({"name": "eleven", "type": "local"})),
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("key_limit_reached")),
            "the org is full: {body}"
        );
        let samples = app.data_with_samples(ORG, 1).await;
        let ciphertext = samples[0].0.clone();
        let data_key = well_formed(&ciphertext).expect("the service's ciphertext is well formed");
        let api = Api::new(&app);
        Self {
            app,
            api,
            keys,
            data_key,
            ciphertext,
            admin: token(ORG, Role::Admin),
            service: token(ORG, Role::Service),
        }
    }

    fn token(&self, role: Role) -> &str {
        match role {
            Role::Service => &self.service,
            _ => &self.admin,
        }
    }

    /// Every key id of the org, the service key's too.
    fn key_ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self.keys.iter().cloned().collect();
        ids.insert("service".to_owned());
        ids
    }
}

/// Sends `CASES` generated bodies as `role` to the paths `paths` draws; `expect` judges each
/// (path, body) and says which could succeed. Nothing observable may change.
async fn run_bodies(
    what: &str,
    method: &str,
    f: &Fixture,
    role: Role,
    paths: BoxedStrategy<String>,
    bodies: BoxedStrategy<GenBody>,
    expect: impl Fn(&str, &GenBody) -> Expect,
) {
    let before = f.app.observe(ORG).await;
    let mut gen = Gen::new();
    let strategy = (paths, bodies).boxed();
    let mut tally = Tally::default();
    while tally.cases < CASES {
        let (path, body) = gen.draw(&strategy);
        let expect = expect(&path, &body);
        if expect == Expect::Skip {
            tally.skipped += 1;
            continue;
        }
        let outcome = f
            .api
            .send(
                method,
                &path,
                f.token(role),
                body.content_type.as_deref(),
                body.bytes.clone(),
            )
            .await;
        tally.record(outcome, expect, || {
            format!(
                "{method} {path} ({:?}) {}",
                body.content_type,
                short(&body.bytes)
            )
        });
    }
    tally.finish(what, gen.seed);
    assert_eq!(
        f.app.observe(ORG).await,
        before,
        "{what}: the keys listing and the audit trail did not change"
    );
}

/// The members of a body that parses as a JSON object, else `None`.
fn parsed_object(body: &GenBody) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(&body.bytes) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

// ---- the ciphertext envelope parser ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_ciphertexts_never_panic_the_envelope_parser_and_decrypt_answers_4xx_problem_json(
) {
    let f = Fixture::start().await;
    let before = f.app.observe(ORG).await;
    let mut gen = Gen::new();
    let strategy = ciphertexts(&f.ciphertext);
    let decrypt = format!("/v1/orgs/{ORG}/decrypt");

    // Every case goes to the parser, then through the decrypt route.
    let (mut parsed, mut refused, mut panics) = (0usize, 0usize, 0usize);
    let mut wrong = Vec::new();
    let mut http = Tally::default();
    for _ in 0..CASES {
        let ct = gen.draw(&strategy);
        match std::panic::catch_unwind(|| crypto::parse(&ct)) {
            Err(p) => {
                panics += 1;
                wrong.push(format!("{ct:?}: PANIC {}", panic_text(p.as_ref())));
            }
            Ok(result) => match (result, well_formed(&ct)) {
                (Ok(p), Some(id)) if p.data_key_id.as_str() == id => parsed += 1,
                (Err(CoreError::InvalidRequest(_)), None) => refused += 1,
                (result, expected) => wrong.push(format!(
                    "{ct:?}: parsed as {result:?}, expected the data key id {expected:?}"
                )),
            },
        }
        // Only the service's own ciphertext, unchanged, decrypts.
        let expect = if ct == f.ciphertext {
            Expect::Either
        } else {
            Expect::Refused
        };
        let body = json!({"ciphertext": ct, "context": {"env": "prod"}}).to_string();
        let outcome = f
            .api
            .send(
                "POST",
                &decrypt,
                &f.service,
                Some("application/json"),
                body.into_bytes(),
            )
            .await;
        http.record(outcome, expect, || format!("decrypt {ct:?}"));
    }
    println!(
        "ciphertext parser: {CASES} cases, {panics} panics, {parsed} well formed, {refused} refused as invalid_request, seed {}",
        gen.seed
    );
    assert!(
        wrong.is_empty(),
        "ciphertext parser: {} of {CASES} cases went wrong (replay with PROPTEST_RNG_SEED={}):\n{}",
        wrong.len(),
        gen.seed,
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    http.finish("ciphertexts through POST decrypt", gen.seed);
    assert_eq!(
        f.app.observe(ORG).await,
        before,
        "decrypting changed nothing"
    );
}

// ---- every request body type ----

fn arn_values() -> BoxedStrategy<Value> {
    one_of(vec![
        (
            2,
            strings(&[
                "arn:aws:iam::111122223333:role/cmk",
                "arn:aws:kms:us-east-1:111122223333:alias/cmk",
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "arn:aws:iam::111122223333:user/cmk",
                "arn:aws:kms:us-east-1:111122223333:alias/aws/ebs",
                "arn:aws:s3:::bucket",
                "not-an-arn",
                "",
            ]),
        ),
        (
            2,
            "arn:aws:(iam|kms|sts):[a-z0-9-]{0,12}:[0-9]{0,13}:(role|key|alias|user)/[ -~]{0,20}"
                .boxed(),
        ),
        (1, any_text()),
    ])
    .prop_map(Value::from)
    .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_add_key_bodies_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    // Names of the allowed characters (valid up to 64), near misses, and taken names.
    let name = one_of(vec![
        (2, any_text()),
        (3, "[a-zA-Z0-9 ()/:_.-]{0,70}".boxed()),
        (1, "[a-zA-Z0-9 ()/:_.,;!-]{0,70}".boxed()),
        (
            1,
            strings(&["k1", "K1", " k10 ", "Service-managed key", "eleven"]),
        ),
    ]);
    let key_type = one_of(vec![
        (4, Just("local".to_owned()).boxed()),
        (2, Just("aws-kms".to_owned()).boxed()),
        (
            2,
            strings(&[
                "LOCAL",
                "aws_kms",
                "service-managed",
                "gcp",
                "vault-transit",
                "",
                "local ",
            ]),
        ),
        (1, any_text()),
    ]);
    let fields = vec![
        ("name", name.prop_map(Value::from).boxed()),
        ("type", key_type.prop_map(Value::from).boxed()),
        ("role_arn", arn_values()),
        ("key_arn", arn_values()),
    ];
    // The org is full: a valid body is refused too (key_limit_reached), so every case is.
    run_bodies(
        "add key bodies (POST keys)",
        "POST",
        &f,
        Role::Admin,
        Just(format!("/v1/orgs/{ORG}/keys")).boxed(),
        bodies(fields, false),
        |_, _| Expect::Refused,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_disable_bodies_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    let ids = f.key_ids();
    let reencrypt_to = one_of(vec![
        (2, select(ids.iter().cloned().collect::<Vec<_>>()).boxed()),
        (2, "(key_)?[a-z0-9_-]{0,40}".boxed()),
        (1, "k{60,70}".boxed()),
        (2, any_text()),
    ]);
    let fields = vec![("reencrypt_to", reencrypt_to.prop_map(Value::from).boxed())];
    // The default key, the service key and an unknown key are never disabled; k2 could be, to
    // another active key: such bodies are not sent.
    let paths: Vec<String> = [
        f.keys[0].as_str(),
        f.keys[1].as_str(),
        "service",
        "key_00000000000000000000000000000000",
    ]
    .iter()
    .map(|k| format!("/v1/orgs/{ORG}/keys/{k}/disable"))
    .collect();
    let k2_path = paths[1].clone();
    run_bodies(
        "disable bodies (POST keys/{key_id}/disable)",
        "POST",
        &f,
        Role::Admin,
        select(paths).boxed(),
        bodies(fields, false),
        |path, body| {
            let target = parsed_object(body).and_then(|o| {
                o.get("reencrypt_to")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if path == k2_path && target.is_some_and(|t| ids.contains(&t)) {
                Expect::Skip
            } else {
                Expect::Refused
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_key_settings_bodies_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    let limits = one_of(vec![
        (3, (-5i64..20_000).prop_map(Value::from).boxed()),
        (1, any::<i64>().prop_map(Value::from).boxed()),
        (1, any::<f64>().prop_map(Value::from).boxed()),
        (2, json_value()),
    ]);
    let fields = vec![("rewrap_rate_limit", limits)];
    // The fixture's keys are local (no rate limit), the service key has none and an unknown
    // key is not found: every generated body is refused, whatever it holds.
    let paths: Vec<String> = f
        .keys
        .iter()
        .map(String::as_str)
        .chain(["service", "key_00000000000000000000000000000000"])
        .map(|k| format!("/v1/orgs/{ORG}/keys/{k}"))
        .collect();
    run_bodies(
        "key settings bodies (PATCH keys/{key_id})",
        "PATCH",
        &f,
        Role::Admin,
        select(paths).boxed(),
        bodies(fields, false),
        |_, _| Expect::Refused,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_data_key_bodies_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    // The route takes `{}` or nothing; whatever else is refused.
    run_bodies(
        "data key bodies (POST data-keys)",
        "POST",
        &f,
        Role::Service,
        Just(format!("/v1/orgs/{ORG}/data-keys")).boxed(),
        bodies(Vec::new(), true),
        |_, body| {
            let empty = body.bytes.iter().all(u8::is_ascii_whitespace)
                || parsed_object(body).is_some_and(|o| o.is_empty());
            if empty {
                Expect::Skip
            } else {
                Expect::Refused
            }
        },
    )
    .await;
}

fn plaintext_values() -> BoxedStrategy<Value> {
    one_of(vec![
        (
            3,
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| B64.encode(b))
                .boxed(),
        ),
        (
            1,
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| URL_SAFE_NO_PAD.encode(b))
                .boxed(),
        ),
        (2, "[A-Za-z0-9+/=_-]{0,24}".boxed()),
        (1, any_text()),
    ])
    .prop_map(Value::from)
    .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_encrypt_bodies_never_panic_and_answer_4xx_problem_json_unless_valid() {
    let f = Fixture::start().await;
    let fields = vec![
        ("plaintext", plaintext_values()),
        ("context", context_value()),
    ];
    // Encrypting changes nothing: a body with a base64 plaintext may succeed, or be refused for
    // its context or its form; any other is refused.
    run_bodies(
        "encrypt bodies (POST data-keys/{id}/encrypt)",
        "POST",
        &f,
        Role::Service,
        Just(format!("/v1/orgs/{ORG}/data-keys/{}/encrypt", f.data_key)).boxed(),
        bodies(fields, false),
        |_, body| {
            let base64 = parsed_object(body).is_some_and(|o| {
                o.get("plaintext")
                    .and_then(Value::as_str)
                    .is_some_and(|p| B64.decode(p).is_ok())
            });
            if base64 {
                Expect::Either
            } else {
                Expect::Refused
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_decrypt_bodies_never_panic_and_answer_4xx_problem_json_unless_valid() {
    let f = Fixture::start().await;
    let ciphertext = one_of(vec![(3, ciphertexts(&f.ciphertext)), (1, any_text())]);
    let context = one_of(vec![
        (1, Just(json!({"env": "prod"})).boxed()),
        (3, context_value()),
    ]);
    let fields = vec![
        ("ciphertext", ciphertext.prop_map(Value::from).boxed()),
        ("context", context),
    ];
    // Decrypting changes nothing: only the service's own ciphertext may decrypt.
    let real = f.ciphertext.clone();
    run_bodies(
        "decrypt bodies (POST decrypt)",
        "POST",
        &f,
        Role::Service,
        Just(format!("/v1/orgs/{ORG}/decrypt")).boxed(),
        bodies(fields, false),
        |_, body| {
            let own = parsed_object(body)
                .is_some_and(|o| o.get("ciphertext").and_then(Value::as_str) == Some(&real));
            if own {
                Expect::Either
            } else {
                Expect::Refused
            }
        },
    )
    .await;
}

// ---- every path parameter parser ----

/// One route of a path fuzz: method, path with `{}` where the generated segment goes, role,
/// and a body that would be valid.
struct Route {
    method: &'static str,
    path: String,
    role: Role,
    body: Option<Value>,
}

impl Route {
    fn new(method: &'static str, path: String, role: Role, body: Option<Value>) -> Self {
        Self {
            method,
            path,
            role,
            body,
        }
    }
}

/// Sends `CASES` requests whose one parameter is a generated segment (some of them mutations of
/// `seeds`), on every route that has that parameter. `accepted` are the decoded values that
/// would be accepted: those are not sent. Nothing observable may change.
async fn run_segments(
    what: &str,
    f: &Fixture,
    routes: Vec<Route>,
    seeds: Vec<String>,
    accepted: BTreeSet<String>,
) {
    let before = f.app.observe(ORG).await;
    let mut gen = Gen::new();
    let strategy = (segments(seeds), 0..routes.len()).boxed();
    let mut tally = Tally::default();
    while tally.cases < CASES {
        let (segment, r) = gen.draw(&strategy);
        if percent_decode(&segment).is_some_and(|d| accepted.contains(&d)) {
            tally.skipped += 1;
            continue;
        }
        let route = &routes[r];
        let path = route.path.replace("{}", &segment);
        let (content_type, body) = match &route.body {
            Some(b) => (Some("application/json"), b.to_string().into_bytes()),
            None => (None, Vec::new()),
        };
        let outcome = f
            .api
            .send(route.method, &path, f.token(route.role), content_type, body)
            .await;
        tally.record(outcome, Expect::Refused, || {
            format!("{} {path} (segment {segment:?})", route.method)
        });
    }
    tally.finish(what, gen.seed);
    assert_eq!(
        f.app.observe(ORG).await,
        before,
        "{what}: the keys listing and the audit trail did not change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_org_path_segments_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    let (a, s) = (Role::Admin, Role::Service);
    let k2 = &f.keys[1];
    let org = |rest: &str| format!("/v1/orgs/{{}}/{rest}");
    // Every route under an org, each with a body it would accept: only the org is wrong.
    let routes = vec![
        Route::new("GET", org("keys"), a, None),
        Route::new("GET", org("keys/setup"), a, None),
        Route::new(
            "POST",
            org("keys"),
            a,
            Some(json!({"name": "new", "type": "local"})),
        ),
        Route::new("POST", org(&format!("keys/{k2}/default")), a, None),
        Route::new(
            "POST",
            org(&format!("keys/{k2}/disable")),
            a,
            Some(json!({"reencrypt_to": "service"})),
        ),
        Route::new("POST", org("keys/disable-all"), a, None),
        Route::new("POST", org(&format!("keys/{k2}/check")), a, None),
        Route::new("GET", org("reencryption"), a, None),
        Route::new("POST", org("reencryption/retry"), a, None),
        Route::new("POST", org("reencryption/cancel"), a, None),
        Route::new("GET", org("audit"), a, None),
        Route::new("POST", org("data-keys"), s, Some(json!({}))),
        Route::new(
            "POST",
            org(&format!("data-keys/{}/encrypt", f.data_key)),
            s,
            Some(json!({"plaintext": "aGk="})),
        ),
        Route::new(
            "POST",
            org("decrypt"),
            s,
            Some(json!({"ciphertext": f.ciphertext, "context": {"env": "prod"}})),
        ),
    ];
    // The tokens are acme's: another well-formed org is forbidden, a malformed one invalid.
    run_segments(
        "org path segments ({org})",
        &f,
        routes,
        vec![ORG.to_owned(), "globex".to_owned()],
        BTreeSet::from([ORG.to_owned()]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_key_id_path_segments_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    let a = Role::Admin;
    let key = |action: &str| format!("/v1/orgs/{ORG}/keys/{{}}/{action}");
    let routes = vec![
        Route::new("POST", key("default"), a, None),
        Route::new(
            "POST",
            key("disable"),
            a,
            Some(json!({"reencrypt_to": "service"})),
        ),
        Route::new("POST", key("check"), a, None),
    ];
    // An existing key would be set default, disabled or checked: those ids are not sent; any
    // other well-formed id is not found.
    let ids = f.key_ids();
    run_segments(
        "key id path segments ({key_id})",
        &f,
        routes,
        ids.iter().cloned().collect(),
        ids,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_data_key_id_path_segments_never_panic_and_always_answer_4xx_problem_json() {
    let f = Fixture::start().await;
    let routes = vec![Route::new(
        "POST",
        format!("/v1/orgs/{ORG}/data-keys/{{}}/encrypt"),
        Role::Service,
        Some(json!({"plaintext": "aGk="})),
    )];
    run_segments(
        "data key id path segments ({id})",
        &f,
        routes,
        vec![f.data_key.clone()],
        BTreeSet::from([f.data_key.clone()]),
    )
    .await;
}
