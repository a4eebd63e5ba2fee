//! `template.yaml` and the code agree: the table's keys and indexes are `TABLE_KEYS`, the queue's
//! redrive and visibility timeout follow `MAX_RECEIVE_COUNT` and `WORKER_TIMEOUT`, every route of
//! each function's router is an event of that function (and nothing else is), each function's
//! `Binary` is a bin of the workspace, each function's IAM role allows what its routes need and
//! no more, and the environment the template gives the functions is what their configuration
//! reads. The template is plain YAML (long-form intrinsic functions), parsed with `serde_yaml`.
//!
//! It is long because it checks the whole template, resource by resource.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use axum::http::StatusCode;
use cmk_aws::resources::{MAX_RECEIVE_COUNT, TABLE_KEYS, WORKER_TIMEOUT};
use cmk_lambda::http::{RouteSpec, COMMON_ROUTES, PUBLIC_ROUTES};
use cmk_lambda::{app, ClaimNames, HttpFunction};
use serde_yaml::Value as Yaml;

fn template_text() -> String {
    std::fs::read_to_string(common::repo_root().join("template.yaml")).expect("template.yaml")
}

fn template() -> Yaml {
    serde_yaml::from_str(&template_text()).expect("template.yaml is plain YAML")
}

fn s(v: &Yaml) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Yaml) -> &Vec<Yaml> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {v:?}"))
}

fn get_att(resource: &str, attribute: &str) -> Yaml {
    serde_yaml::from_str(&format!("Fn::GetAtt: [{resource}, {attribute}]")).expect("yaml")
}

fn reference(name: &str) -> Yaml {
    serde_yaml::from_str(&format!("Ref: {name}")).expect("yaml")
}

/// `(logical id, resource)` of every resource of `kind`.
fn resources<'a>(t: &'a Yaml, kind: &str) -> Vec<(String, &'a Yaml)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(k, r)| (s(k).to_owned(), r))
        .collect()
}

/// A function property, from the function or else from `Globals`.
fn function_property<'a>(t: &'a Yaml, function: &'a Yaml, name: &str) -> &'a Yaml {
    let own = &function["Properties"][name];
    if own.is_null() {
        &t["Globals"]["Function"][name]
    } else {
        own
    }
}

/// The function resource whose `BuildProperties.Binary` is `binary`.
fn function_by_binary<'a>(t: &'a Yaml, binary: &str) -> (String, &'a Yaml) {
    let found: Vec<_> = resources(t, "AWS::Serverless::Function")
        .into_iter()
        .filter(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .collect();
    assert_eq!(found.len(), 1, "exactly one function builds {binary}");
    found.into_iter().next().expect("one")
}

fn owned(function: HttpFunction) -> BTreeSet<RouteSpec> {
    let mut routes: BTreeSet<RouteSpec> = function.routes().iter().copied().collect();
    if function == HttpFunction::KeysRead {
        routes.extend(COMMON_ROUTES.iter().copied());
    }
    routes
}

fn no_tags(v: &Yaml, at: &str) {
    match v {
        Yaml::Tagged(t) => panic!("a YAML tag {} at {at}", t.tag),
        Yaml::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                no_tags(item, &format!("{at}[{i}]"));
            }
        }
        Yaml::Mapping(m) => {
            for (k, item) in m {
                no_tags(item, &format!("{at}.{}", k.as_str().unwrap_or("?")));
            }
        }
        _ => {}
    }
}

#[test]
fn the_template_uses_no_short_form_tags() {
    no_tags(&template(), "template");
    for (n, line) in template_text().lines().enumerate() {
        let code = line.split(" #").next().unwrap_or("");
        assert!(
            !code.contains(": !") && !code.trim_start().starts_with("- !"),
            "line {}: short-form tag: {line}",
            n + 1
        );
    }
}

#[test]
fn the_table_has_the_keys_and_indexes_of_table_keys() {
    let t = template();
    let tables = resources(&t, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1);
    let p = &tables[0].1["Properties"];
    let key_schema = |schema: &Yaml| -> (String, String) {
        let mut hash = None;
        let mut range = None;
        for k in seq(schema) {
            match s(&k["KeyType"]) {
                "HASH" => hash = Some(s(&k["AttributeName"]).to_owned()),
                "RANGE" => range = Some(s(&k["AttributeName"]).to_owned()),
                other => panic!("key type {other}"),
            }
        }
        (hash.expect("HASH"), range.expect("RANGE"))
    };

    let mut declared: BTreeMap<String, (String, String)> = BTreeMap::new();
    declared.insert(String::new(), key_schema(&p["KeySchema"]));
    for gsi in seq(&p["GlobalSecondaryIndexes"]) {
        assert_eq!(s(&gsi["Projection"]["ProjectionType"]), "ALL");
        declared.insert(
            s(&gsi["IndexName"]).to_owned(),
            key_schema(&gsi["KeySchema"]),
        );
    }
    let expected: BTreeMap<String, (String, String)> = TABLE_KEYS
        .iter()
        .map(|(i, pk, sk)| ((*i).to_owned(), ((*pk).to_owned(), (*sk).to_owned())))
        .collect();
    assert_eq!(declared, expected);

    let attributes: BTreeMap<&str, &str> = seq(&p["AttributeDefinitions"])
        .iter()
        .map(|a| (s(&a["AttributeName"]), s(&a["AttributeType"])))
        .collect();
    let expected: BTreeMap<&str, &str> = TABLE_KEYS
        .iter()
        .flat_map(|(_, pk, sk)| [(*pk, "S"), (*sk, "S")])
        .collect();
    assert_eq!(attributes, expected);

    assert_eq!(s(&p["BillingMode"]), "PAY_PER_REQUEST");
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        Yaml::Bool(true)
    );
    assert_eq!(p["SSESpecification"]["SSEEnabled"], Yaml::Bool(true));
}

#[test]
fn the_queue_follows_the_worker() {
    let t = template();
    let queue = &t["Resources"]["RewrapQueue"]["Properties"];
    assert_eq!(
        queue["RedrivePolicy"]["maxReceiveCount"].as_u64(),
        Some(u64::from(MAX_RECEIVE_COUNT))
    );
    assert_eq!(
        queue["RedrivePolicy"]["deadLetterTargetArn"],
        get_att("RewrapDeadLetterQueue", "Arn")
    );

    let (_, worker) = function_by_binary(&t, cmk_lambda::worker::BINARY);
    let timeout = function_property(&t, worker, "Timeout")
        .as_u64()
        .expect("worker timeout");
    assert_eq!(timeout, WORKER_TIMEOUT.as_secs());
    let visibility = queue["VisibilityTimeout"].as_u64().expect("visibility");
    assert!(
        visibility >= 6 * timeout,
        "visibility timeout {visibility} s < 6 x the worker's {timeout} s"
    );

    let sqs_events: Vec<&Yaml> = worker["Properties"]["Events"]
        .as_mapping()
        .expect("events")
        .values()
        .filter(|e| e["Type"].as_str() == Some("SQS"))
        .collect();
    assert_eq!(sqs_events.len(), 1);
    let source = &sqs_events[0]["Properties"];
    assert_eq!(source["Queue"], get_att("RewrapQueue", "Arn"));
    assert!(
        seq(&source["FunctionResponseTypes"]).contains(&"ReportBatchItemFailures".into()),
        "without ReportBatchItemFailures Lambda ignores the worker's partial failures"
    );
    let max = &source["ScalingConfig"]["MaximumConcurrency"];
    assert!(!max.is_null(), "ScalingConfig.MaximumConcurrency");
    if let Some(Yaml::String(param)) = max.get("Ref") {
        let min = t["Parameters"][param.as_str()]["MinValue"]
            .as_u64()
            .expect("MinValue");
        assert!(min >= 2, "SQS needs a maximum concurrency of at least 2");
    }

    // The dead-letter queue is watched.
    let watched = resources(&t, "AWS::CloudWatch::Alarm")
        .iter()
        .any(|(_, a)| {
            seq(&a["Properties"]["Dimensions"])
                .iter()
                .any(|d| d["Value"] == get_att("RewrapDeadLetterQueue", "QueueName"))
        });
    assert!(watched, "an alarm on the dead-letter queue");
}

/// The bins of the workspace: `[[bin]]` names, or the package name of a `src/main.rs`.
fn workspace_bins() -> BTreeMap<String, String> {
    let root = common::repo_root();
    let read = |p: &Path| -> toml::Value {
        toml::from_str(&std::fs::read_to_string(p).expect("Cargo.toml")).expect("toml")
    };
    let mut bins = BTreeMap::new();
    let workspace = read(&root.join("Cargo.toml"));
    for member in workspace["workspace"]["members"]
        .as_array()
        .expect("members")
    {
        let dir = member.as_str().expect("member");
        let manifest = read(&root.join(dir).join("Cargo.toml"));
        match manifest.get("bin").and_then(toml::Value::as_array) {
            Some(list) => {
                for bin in list {
                    let name = bin["name"].as_str().expect("bin name").to_owned();
                    bins.insert(name, dir.to_owned());
                }
            }
            None if root.join(dir).join("src/main.rs").exists() => {
                let name = manifest["package"]["name"]
                    .as_str()
                    .expect("name")
                    .to_owned();
                bins.insert(name, dir.to_owned());
            }
            None => {}
        }
    }
    bins
}

#[test]
fn every_function_builds_a_workspace_binary() {
    let t = template();
    let bins = workspace_bins();
    let mut expected: BTreeMap<&str, String> = HttpFunction::ALL
        .iter()
        .map(|f| (f.binary(), format!("functions/{}", f.name())))
        .collect();
    expected.insert(cmk_lambda::worker::BINARY, "functions/rewrap-worker".into());

    let functions = resources(&t, "AWS::Serverless::Function");
    assert_eq!(functions.len(), expected.len());
    for (id, f) in functions {
        assert_eq!(s(&f["Metadata"]["BuildMethod"]), "rust-cargolambda", "{id}");
        let binary = s(&f["Metadata"]["BuildProperties"]["Binary"]);
        let dir = expected
            .get(binary)
            .unwrap_or_else(|| panic!("{id}: {binary} is none of the service's functions"));
        assert_eq!(
            bins.get(binary),
            Some(dir),
            "{id}: {binary} must be a bin of {dir}"
        );
        assert_eq!(
            s(function_property(&t, f, "Runtime")),
            "provided.al2023",
            "{id}"
        );
        assert_eq!(s(function_property(&t, f, "Handler")), "bootstrap", "{id}");
    }
    // Bin names are unique across the workspace (cargo-lambda builds by bin name).
    let all: Vec<String> = workspace_bins().into_keys().collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), unique.len());
}

/// The HTTP API events of a function: route → the event's `Auth.Authorizer`, if any.
fn http_events(f: &Yaml) -> BTreeMap<(String, String), Option<String>> {
    f["Properties"]["Events"]
        .as_mapping()
        .expect("events")
        .values()
        .filter(|e| e["Type"].as_str() == Some("HttpApi"))
        .map(|e| {
            let p = &e["Properties"];
            assert_eq!(p["ApiId"], reference("HttpApi"), "{p:?}");
            (
                (s(&p["Method"]).to_owned(), s(&p["Path"]).to_owned()),
                p["Auth"]["Authorizer"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_route_of_each_router_is_an_event_of_its_function() {
    let t = template();
    let api = &t["Resources"]["HttpApi"];
    assert_eq!(s(&api["Type"]), "AWS::Serverless::HttpApi");
    let auth = &api["Properties"]["Auth"];
    let jwt = s(&auth["DefaultAuthorizer"]);
    let jwt_config = &auth["Authorizers"][jwt]["JwtConfiguration"];
    assert_eq!(jwt_config["issuer"], reference("JwtIssuer"));
    assert_eq!(jwt_config["audience"], reference("JwtAudience"));
    assert_eq!(auth["EnableIamAuthorizer"], Yaml::Bool(true));

    // The template: each function declares exactly its routes, with the right authorizer.
    for function in HttpFunction::ALL {
        let (id, f) = function_by_binary(&t, function.binary());
        let events = http_events(f);
        let declared: BTreeSet<(String, String)> = events.keys().cloned().collect();
        let expected: BTreeSet<(String, String)> = owned(function)
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(declared, expected, "{id}'s events are its router's routes");
        for ((method, path), authorizer) in events {
            let route = (method.as_str(), path.as_str());
            let expected = if PUBLIC_ROUTES.contains(&route) {
                Some("NONE")
            } else if function == HttpFunction::DataKeys {
                Some("AWS_IAM")
            } else {
                None // the default: the JWT authorizer
            };
            assert_eq!(
                authorizer.as_deref(),
                expected,
                "{id}: {method} {path} authorizer"
            );
        }
    }

    // The routers: each answers exactly its own routes (and the common ones, which the HTTP
    // API sends to keys-read only); any other route is 404 or 405.
    let backend = common::offline_backend().await;
    let all: BTreeSet<RouteSpec> = HttpFunction::ALL.iter().flat_map(|f| owned(*f)).collect();
    for function in HttpFunction::ALL {
        let router = app(
            function,
            backend.cmk.clone(),
            &ClaimNames::default(),
            backend.oidc.clone(),
        );
        let mut answers = owned(function);
        answers.extend(COMMON_ROUTES.iter().copied());
        for (method, path) in &all {
            let concrete = path
                .replace("{org}", "acme")
                .replace("{key_id}", "key_1")
                .replace("{id}", "0195f0c2-7c1e-7a51-9d0e-3b1f4e8a2c10")
                .replace("{file}", "app.js");
            let a = common::call(&router, &common::event_for(method, &concrete)).await;
            let routed = !matches!(
                a.status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            );
            assert_eq!(
                routed,
                answers.contains(&(method, path)),
                "{method} {path} through {}: {}",
                function.name(),
                a.status
            );
        }
    }

    // Every operation of the API description belongs to exactly one function.
    let doc = serde_json::to_value(cmk_http::openapi()).expect("openapi");
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            let owners: Vec<&str> = HttpFunction::ALL
                .iter()
                .filter(|f| owned(**f).contains(&(method.as_str(), path.as_str())))
                .map(|f| f.name())
                .collect();
            assert_eq!(owners.len(), 1, "{method} {path} is served by {owners:?}");
        }
    }
}

/// The actions a role's inline policies allow, with their resources.
fn allowed(t: &Yaml, role: &str) -> BTreeMap<String, Vec<Yaml>> {
    let mut out: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for policy in seq(&t["Resources"][role]["Properties"]["Policies"]) {
        for st in seq(&policy["PolicyDocument"]["Statement"]) {
            assert_eq!(s(&st["Effect"]), "Allow", "{role}");
            let actions = match &st["Action"] {
                Yaml::String(a) => vec![a.clone()],
                list => seq(list).iter().map(|a| s(a).to_owned()).collect(),
            };
            let resources = match &st["Resource"] {
                Yaml::Sequence(list) => list.clone(),
                one => vec![one.clone()],
            };
            for a in actions {
                assert!(!a.contains('*'), "{role}: wildcard action {a}");
                out.entry(a).or_default().extend(resources.iter().cloned());
            }
        }
    }
    out
}

fn role_of(t: &Yaml, binary: &str) -> String {
    let (id, f) = function_by_binary(t, binary);
    let role = &f["Properties"]["Role"]["Fn::GetAtt"];
    assert_eq!(seq(role)[1], Yaml::from("Arn"), "{id} has its own role");
    s(&seq(role)[0]).to_owned()
}

#[test]
fn each_function_gets_only_the_permissions_its_routes_need() {
    let t = template();
    let read = allowed(&t, &role_of(&t, HttpFunction::KeysRead.binary()));
    let write = allowed(&t, &role_of(&t, HttpFunction::KeysWrite.binary()));
    let data = allowed(&t, &role_of(&t, HttpFunction::DataKeys.binary()));
    let worker = allowed(&t, &role_of(&t, cmk_lambda::worker::BINARY));
    let names =
        |m: &BTreeMap<String, Vec<Yaml>>| -> BTreeSet<String> { m.keys().cloned().collect() };
    let set = |xs: &[&str]| -> BTreeSet<String> { xs.iter().map(|x| (*x).to_owned()).collect() };

    let reads = set(&[
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:BatchGetItem",
    ]);
    let writes = set(&[
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
    ]);
    let service_key = set(&["kms:Encrypt", "kms:Decrypt"]);
    let assume = set(&["sts:AssumeRole"]);
    // Every function that changes keys' health or jobs tells EventBridge.
    let events = set(&["events:PutEvents"]);
    // keys-read publishes the OIDC issuer's key; the functions that reach customer keys sign
    // tokens with it (the private key never leaves KMS).
    let sign = set(&["kms:Sign", "kms:GetPublicKey"]);

    // keys-read reads the table and the issuer's public key: nothing else, in particular no
    // customer keys.
    let union = |parts: &[&BTreeSet<String>]| -> BTreeSet<String> {
        parts.iter().flat_map(|p| p.iter().cloned()).collect()
    };
    assert_eq!(names(&read), union(&[&reads, &set(&["kms:GetPublicKey"])]));

    assert_eq!(
        names(&write),
        union(&[
            &reads,
            &writes,
            &service_key,
            &assume,
            &events,
            &sign,
            &set(&["sqs:SendMessage"])
        ])
    );
    assert_eq!(
        names(&data),
        union(&[&reads, &writes, &service_key, &assume, &events, &sign])
    );
    assert_eq!(
        names(&worker),
        union(&[
            &reads,
            &writes,
            &set(&["dynamodb:DeleteItem"]),
            &service_key,
            &assume,
            &events,
            &sign,
            &set(&[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:SendMessage",
            ]),
        ])
    );

    // Scoped to the service's own resources (customer roles are in customers' accounts).
    let table = get_att("Table", "Arn");
    for role in [&read, &write, &data, &worker] {
        for (action, resources) in role {
            let (service, _) = action.split_once(':').expect("service:action");
            for r in resources {
                let ok = match service {
                    "dynamodb" => {
                        *r == table || r["Fn::Sub"].as_str() == Some("${Table.Arn}/index/*")
                    }
                    "sqs" => *r == get_att("RewrapQueue", "Arn"),
                    "kms" if action == "kms:Sign" || action == "kms:GetPublicKey" => {
                        // The template's key, or the keys of a rotation (parameters).
                        *r == get_att("OidcSigningKey", "Arn")
                            || [
                                ("HasOwnOidcSigningKey", "OidcSigningKeyArn"),
                                ("HasPreviousOidcSigningKey", "PreviousOidcSigningKeyArn"),
                            ]
                            .iter()
                            .any(|(condition, parameter)| {
                                r["Fn::If"].as_sequence().is_some_and(|b| {
                                    s(&b[0]) == *condition
                                        && b[1] == reference(parameter)
                                        && b[2] == reference("AWS::NoValue")
                                })
                            })
                    }
                    "kms" => *r == get_att("ServiceKey", "Arn"),
                    "sts" => r["Fn::Sub"].as_str() == Some("arn:${AWS::Partition}:iam::*:role/*"),
                    "events" => {
                        r["Fn::Sub"].as_str()
                            == Some(
                                "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default",
                            )
                    }
                    _ => false,
                };
                assert!(ok, "{action} on {r:?}");
            }
        }
    }

    // The service key: rotated, with a key policy.
    let key = &t["Resources"]["ServiceKey"]["Properties"];
    assert_eq!(key["EnableKeyRotation"], Yaml::Bool(true));
    assert!(!seq(&key["KeyPolicy"]["Statement"]).is_empty());
}

#[test]
fn no_function_may_assume_a_role_of_the_operators_own_account() {
    let t = template();
    let mut statements = 0;
    for (role, _) in resources(&t, "AWS::IAM::Role") {
        for policy in seq(&t["Resources"][role.as_str()]["Properties"]["Policies"]) {
            for st in seq(&policy["PolicyDocument"]["Statement"]) {
                let assumes = match &st["Action"] {
                    Yaml::String(a) => a == "sts:AssumeRole",
                    list => seq(list).iter().any(|a| s(a) == "sts:AssumeRole"),
                };
                if !assumes {
                    continue;
                }
                statements += 1;
                assert_eq!(
                    st["Condition"]["StringNotEquals"]["aws:ResourceAccount"],
                    reference("AWS::AccountId"),
                    "{role}: sts:AssumeRole must exclude the service's own account"
                );
            }
        }
    }
    assert_eq!(
        statements, 3,
        "keys-write, data-keys and the worker reach customer keys"
    );
}

/// The value a function would see for a template environment value (intrinsics resolved to
/// plausible deployed values).
fn resolve(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        _ if v.get("Ref").is_some() => match s(&v["Ref"]) {
            "JwtOrgClaim" => "org".into(),
            "JwtRoleClaim" => "role".into(),
            "WorkerMaxConcurrency" => "10".into(),
            "HealthCheckInterval" => "900".into(),
            "RewrapQueue" => "https://sqs.us-east-1.amazonaws.com/123456789012/cmk-rewrap".into(),
            other => format!("{other}-value"),
        },
        _ if v.get("Fn::GetAtt").is_some() => {
            let resource = s(&seq(&v["Fn::GetAtt"])[0]);
            if resource.ends_with("Role") {
                format!("arn:aws:iam::123456789012:role/{resource}")
            } else {
                "arn:aws:kms:us-east-1:123456789012:key/k".into()
            }
        }
        _ if v.get("Fn::Join").is_some() => {
            let join = seq(&v["Fn::Join"]);
            let parts: Vec<String> = seq(&join[1]).iter().map(resolve).collect();
            parts.join(s(&join[0]))
        }
        _ if v.get("Fn::If").is_some() => resolve(&seq(&v["Fn::If"])[2]),
        _ if v.get("Fn::Sub").is_some() => s(&v["Fn::Sub"])
            .replace("${AWS::Partition}", "aws")
            .replace("${AWS::AccountId}", "123456789012"),
        other => panic!("unexpected environment value {other:?}"),
    }
}

#[test]
fn the_template_gives_each_function_the_configuration_it_reads() {
    common::init();
    let t = template();
    let global = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .expect("global variables")
        .clone();
    for (name, value) in [
        ("CMK_TABLE", reference("Table")),
        ("CMK_QUEUE_URL", reference("RewrapQueue")),
        ("CMK_SERVICE_KEY_ID", get_att("ServiceKey", "Arn")),
        ("CMK_ORG_CLAIM", reference("JwtOrgClaim")),
        ("CMK_ROLE_CLAIM", reference("JwtRoleClaim")),
        ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", Yaml::from("true")),
    ] {
        assert_eq!(global.get(name), Some(&value), "{name}");
    }
    // By default customers trust exactly the three function roles that reach their keys.
    let principal = resolve(
        global
            .get("CMK_SERVICE_PRINCIPAL")
            .expect("CMK_SERVICE_PRINCIPAL"),
    );
    assert_eq!(
        principal,
        "arn:aws:iam::123456789012:role/KeysWriteRole,arn:aws:iam::123456789012:role/DataKeysRole,arn:aws:iam::123456789012:role/RewrapWorkerRole"
    );

    // What the worker sees (its own variables over the global ones) parses. The process
    // environment is shared by this binary's tests; no other test here reads these variables.
    let mut worker_env = global.clone();
    let (_, worker) = function_by_binary(&t, cmk_lambda::worker::BINARY);
    if let Some(own) = worker["Properties"]["Environment"]["Variables"].as_mapping() {
        worker_env.extend(own.clone());
    }
    for (k, v) in &worker_env {
        // A variable set only under a condition (the OIDC issuer) is absent by default.
        let absent_by_default = v["Fn::If"]
            .as_sequence()
            .is_some_and(|branches| branches[2] == reference("AWS::NoValue"));
        if absent_by_default {
            std::env::remove_var(s(k));
        } else {
            std::env::set_var(s(k), resolve(v));
        }
    }
    let http = cmk_lambda::HttpSettings::from_env().expect("HTTP functions' configuration");
    assert_eq!(http.aws.table, "Table-value");
    assert_eq!(http.claims, ClaimNames::default());
    assert!(http
        .aws
        .service_principal
        .starts_with("arn:aws:iam::123456789012:"));
    let w = cmk_lambda::WorkerSettings::from_env().expect("worker's configuration");
    assert!(
        w.stalled_after.as_secs()
            > t["Resources"]["RewrapQueue"]["Properties"]["VisibilityTimeout"]
                .as_u64()
                .expect("visibility"),
        "the sweep must not re-plan a batch still in flight"
    );
    assert_eq!(
        w.max_instances, 10,
        "the worker takes its share of each key's rate limit by the template's concurrency"
    );
    assert_eq!(
        w.health_checks.map(|h| h.interval.as_secs()),
        Some(900),
        "the scheduled sweep checks keys' health at the template's interval"
    );

    // The outputs an operator and customers need.
    for output in [
        "ApiUrl",
        "TableName",
        "QueueUrl",
        "ServiceKeyArn",
        "ServicePrincipal",
        "KeysWriteRoleArn",
        "DataKeysRoleArn",
        "RewrapWorkerRoleArn",
    ] {
        assert!(!t["Outputs"][output]["Value"].is_null(), "output {output}");
    }
}

/// The metrics the code records (cmk-core's `metrics` module), with their label names.
fn emitted_metrics() -> BTreeMap<&'static str, &'static [&'static str]> {
    use cmk_core::metrics as m;
    BTreeMap::from([
        (m::DATA_KEYS_MOVED, &[][..]),
        (m::DATA_KEYS_FAILED, &[][..]),
        (m::JOB_TRANSITIONS, &["transition"][..]),
        (m::BATCH_SECONDS, &[][..]),
        (m::HTTP_REQUESTS, &["route", "status"][..]),
        (m::KEY_CHECKS, &["result"][..]),
        (m::KEY_HEALTH_CHANGES, &["status"][..]),
        (m::KMS_CALLS, &["outcome"][..]),
        (m::STS_SESSIONS, &["outcome"][..]),
    ])
}

/// Every metric an alarm watches in namespace `cmk` is one the code records, with exactly the
/// dimensions its EMF documents carry (`function`, a function's name, and the metric's labels):
/// an alarm on a misspelt name or a partial dimension set would never fire.
#[test]
fn every_alarm_watches_a_metric_the_functions_emit() {
    let t = template();
    let emitted = emitted_metrics();
    let functions: BTreeSet<&str> = [
        HttpFunction::KeysRead.name(),
        HttpFunction::KeysWrite.name(),
        HttpFunction::DataKeys.name(),
        "rewrap-worker",
    ]
    .into();
    let mut watched = 0;
    for (id, alarm) in resources(&t, "AWS::CloudWatch::Alarm") {
        let p = &alarm["Properties"];
        let mut metrics: Vec<&Yaml> = Vec::new();
        if !p["MetricName"].is_null() {
            metrics.push(p);
        }
        for m in p["Metrics"].as_sequence().into_iter().flatten() {
            if !m["MetricStat"].is_null() {
                metrics.push(&m["MetricStat"]["Metric"]);
            }
        }
        for m in metrics {
            if m["Namespace"].as_str() != Some("cmk") {
                continue;
            }
            watched += 1;
            let name = s(&m["MetricName"]);
            let labels = emitted
                .get(name)
                .unwrap_or_else(|| panic!("{id} watches {name}, which no code records"));
            let dims: BTreeMap<&str, &str> = seq(&m["Dimensions"])
                .iter()
                .map(|d| (s(&d["Name"]), s(&d["Value"])))
                .collect();
            let expected: BTreeSet<&str> = std::iter::once("function")
                .chain(labels.iter().copied())
                .collect();
            assert_eq!(
                dims.keys().copied().collect::<BTreeSet<_>>(),
                expected,
                "{id}: the dimensions of {name}"
            );
            assert!(
                functions.contains(dims["function"]),
                "{id}: no function is named {}",
                dims["function"]
            );
        }
    }
    assert!(watched >= 5, "the alarms on the service's own metrics");
}

#[test]
fn every_function_runs_on_the_architecture_parameter() {
    let t = template();
    let allowed: Vec<&str> = seq(&t["Parameters"]["Architecture"]["AllowedValues"])
        .iter()
        .map(s)
        .collect();
    assert_eq!(allowed, ["arm64", "x86_64"]);
    for (id, f) in resources(&t, "AWS::Serverless::Function") {
        assert_eq!(
            function_property(&t, f, "Architectures"),
            &Yaml::Sequence(vec![reference("Architecture")]),
            "{id}"
        );
    }
}

/// A function publishes events exactly when its role may put them: `CMK_EVENT_BUS` names the
/// bus its `events:PutEvents` statement allows (the default bus), with the service's source
/// only; keys-read, which changes nothing, has neither.
#[test]
fn the_functions_that_put_events_name_the_bus_their_role_allows() {
    let t = template();
    for binary in [
        HttpFunction::KeysRead.binary(),
        HttpFunction::KeysWrite.binary(),
        HttpFunction::DataKeys.binary(),
        cmk_lambda::worker::BINARY,
    ] {
        let (id, f) = function_by_binary(&t, binary);
        let bus = f["Properties"]["Environment"]["Variables"]["CMK_EVENT_BUS"].as_str();
        let role = role_of(&t, binary);
        let may_put = allowed(&t, &role).contains_key("events:PutEvents");
        assert_eq!(
            bus.is_some(),
            may_put,
            "{id}: CMK_EVENT_BUS and events:PutEvents"
        );
        if binary == HttpFunction::KeysRead.binary() {
            assert!(!may_put, "keys-read publishes nothing");
            continue;
        }
        assert_eq!(bus, Some("default"), "{id}");
        for policy in seq(&t["Resources"][role.as_str()]["Properties"]["Policies"]) {
            for st in seq(&policy["PolicyDocument"]["Statement"]) {
                if st["Action"][0].as_str() == Some("events:PutEvents") {
                    assert_eq!(
                        s(&st["Condition"]["StringEquals"]["events:source"]),
                        cmk_core::events::SOURCE,
                        "{id}: only the service's own events"
                    );
                }
            }
        }
    }
}

/// The OIDC issuer is on when the `OidcIssuer` parameter is set (https only, by its pattern):
/// then every function gets the issuer and the ARN of the template's P-256 signing key, which
/// signs and verifies only.
#[test]
fn the_oidc_issuer_comes_with_its_signing_key_when_the_parameter_is_set() {
    let t = template();
    let pattern = s(&t["Parameters"]["OidcIssuer"]["AllowedPattern"]);
    assert!(pattern.contains("https://"), "{pattern}");
    let vars = &t["Globals"]["Function"]["Environment"]["Variables"];
    let on_issuer = |name: &str| -> Yaml {
        let branches = seq(&vars[name]["Fn::If"]);
        assert_eq!(s(&branches[0]), "HasOidcIssuer", "{name}");
        assert_eq!(branches[2], reference("AWS::NoValue"), "{name}");
        branches[1].clone()
    };
    assert_eq!(on_issuer("CMK_OIDC_ISSUER"), reference("OidcIssuer"));
    // The signing keys, current first: the template's key unless a rotation names another,
    // then the previous one while a rotation keeps it published.
    let keys = on_issuer("CMK_OIDC_SIGNING_KEYS");
    let join = seq(&keys["Fn::Join"]);
    assert_eq!(s(&join[0]), ",");
    let parts = seq(&join[1]);
    assert_eq!(parts.len(), 2);
    let current = seq(&parts[0]["Fn::If"]);
    assert_eq!(
        (s(&current[0]), &current[1], &current[2]),
        (
            "HasOwnOidcSigningKey",
            &reference("OidcSigningKeyArn"),
            &get_att("OidcSigningKey", "Arn")
        )
    );
    let previous = seq(&parts[1]["Fn::If"]);
    assert_eq!(
        (s(&previous[0]), &previous[1], &previous[2]),
        (
            "HasPreviousOidcSigningKey",
            &reference("PreviousOidcSigningKeyArn"),
            &reference("AWS::NoValue")
        )
    );
    let key = &t["Resources"]["OidcSigningKey"]["Properties"];
    assert_eq!(s(&key["KeySpec"]), "ECC_NIST_P256");
    assert_eq!(s(&key["KeyUsage"]), "SIGN_VERIFY");
    assert!(!t["Outputs"]["OidcIssuerSuggestion"]["Value"].is_null());
}
