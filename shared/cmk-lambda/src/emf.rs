//! The service's metrics on Lambda as CloudWatch Embedded Metric Format: JSON lines on stdout
//! that CloudWatch Logs turns into metrics, with no API call and no agent. A recorder for the
//! `metrics` facade (see [`cmk_core::metrics`]) keeps the counts of one invocation; after each
//! request or SQS batch [`flush`] prints one document per label set and starts over.
//!
//! Dimensions are the function name and the metric's own low-cardinality labels (route,
//! status, transition, result). An org is never a dimension: the orgs an invocation served go
//! in as a property (`org`, or `orgs` for an SQS batch of several), which CloudWatch Logs
//! Insights can filter and group on without a metric per org.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use serde_json::{json, Map, Value};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "cmk";
/// EMF allows at most 100 values per metric in one document.
const MAX_VALUES: usize = 100;

/// Counts and samples since the last flush.
pub struct EmfRecorder {
    function: String,
    registry: Registry<Key, AtomicStorage>,
}

impl std::fmt::Debug for EmfRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmfRecorder")
            .field("function", &self.function)
            .finish()
    }
}

impl EmfRecorder {
    pub fn new(function: &str) -> Self {
        Self {
            function: function.to_owned(),
            registry: Registry::atomic(),
        }
    }

    /// The EMF documents of everything recorded since the last call, which resets them: one per
    /// label set, at `timestamp_ms`, with the `orgs` served as a property. Counters that did
    /// not move are left out.
    pub fn drain(&self, timestamp_ms: i64, orgs: &[String]) -> Vec<String> {
        // Label set -> metric name -> value (a count, or samples with a unit).
        let mut groups: BTreeMap<Vec<(String, String)>, Map<String, Value>> = BTreeMap::new();
        let mut units: BTreeMap<String, &'static str> = BTreeMap::new();
        let labels_of = |key: &Key| {
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            labels
        };
        self.registry.visit_counters(|key, counter| {
            let n = counter.swap(0, Ordering::Relaxed);
            if n > 0 {
                units.insert(key.name().to_owned(), "Count");
                groups
                    .entry(labels_of(key))
                    .or_default()
                    .insert(key.name().to_owned(), json!(n));
            }
        });
        self.registry.visit_histograms(|key, histogram| {
            let mut values = Vec::new();
            histogram.clear_with(|v| values.extend_from_slice(v));
            if !values.is_empty() {
                values.truncate(MAX_VALUES);
                let unit = if key.name().ends_with("_seconds") {
                    "Seconds"
                } else {
                    "None"
                };
                units.insert(key.name().to_owned(), unit);
                groups
                    .entry(labels_of(key))
                    .or_default()
                    .insert(key.name().to_owned(), json!(values));
            }
        });
        groups
            .into_iter()
            .map(|(labels, metrics)| {
                let mut dimensions = vec![json!("function")];
                let mut doc = Map::new();
                doc.insert("function".into(), json!(self.function));
                match orgs {
                    [] => {}
                    [org] => {
                        doc.insert("org".into(), json!(org));
                    }
                    several => {
                        doc.insert("orgs".into(), json!(several));
                    }
                }
                for (k, v) in labels {
                    dimensions.push(json!(k));
                    doc.insert(k, json!(v));
                }
                let definitions: Vec<Value> = metrics
                    .keys()
                    .map(|name| json!({"Name": name, "Unit": units.get(name).copied().unwrap_or("None")}))
                    .collect();
                doc.extend(metrics);
                doc.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": NAMESPACE,
                            "Dimensions": [dimensions],
                            "Metrics": definitions,
                        }],
                    }),
                );
                Value::Object(doc).to_string()
            })
            .collect()
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

static RECORDER: OnceLock<&'static EmfRecorder> = OnceLock::new();

/// Installs the EMF recorder for `function` as the process's recorder (once; later calls keep
/// the first).
pub fn install(function: &str) {
    RECORDER.get_or_init(|| {
        let recorder: &'static EmfRecorder = Box::leak(Box::new(EmfRecorder::new(function)));
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; EMF metrics are off");
        }
        recorder
    });
}

/// Prints what was recorded since the last flush as EMF lines on stdout, naming the `orgs`
/// the invocation served.
pub fn flush(orgs: &[String]) {
    if let Some(recorder) = RECORDER.get() {
        for line in recorder.drain(chrono::Utc::now().timestamp_millis(), orgs) {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks one line against the EMF specification's structure: `_aws` with a millisecond
    /// `Timestamp` and `CloudWatchMetrics` directives, each with a namespace, dimension sets
    /// whose keys are top-level strings, and metric definitions whose names are top-level
    /// numbers or arrays of at most 100 numbers, with a CloudWatch unit.
    fn assert_emf(line: &str) -> Value {
        let doc: Value = serde_json::from_str(line).expect("a JSON object");
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_i64().is_some_and(|t| t > 0), "{line}");
        let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
        assert!(!directives.is_empty(), "{line}");
        for d in directives {
            let ns = d["Namespace"].as_str().expect("a namespace");
            assert!(!ns.is_empty() && ns.len() <= 255, "{line}");
            for set in d["Dimensions"].as_array().expect("dimension sets") {
                let set = set.as_array().expect("a dimension set");
                assert!(!set.is_empty() && set.len() <= 30, "{line}");
                for dim in set {
                    let dim = dim.as_str().expect("a dimension name");
                    assert!(
                        doc[dim].is_string(),
                        "dimension {dim} is not a top-level string: {line}"
                    );
                }
            }
            for m in d["Metrics"].as_array().expect("metric definitions") {
                let name = m["Name"].as_str().expect("a name");
                let unit = m["Unit"].as_str().expect("a unit");
                assert!(
                    ["Count", "Seconds", "Milliseconds", "None"].contains(&unit),
                    "{line}"
                );
                match &doc[name] {
                    Value::Number(_) => {}
                    Value::Array(values) => {
                        assert!(!values.is_empty() && values.len() <= MAX_VALUES, "{line}");
                        assert!(values.iter().all(Value::is_number), "{line}");
                    }
                    other => panic!("metric {name} is {other}: {line}"),
                }
            }
        }
        doc
    }

    #[test]
    fn what_the_service_records_comes_out_as_valid_emf_one_document_per_label_set() {
        let recorder = EmfRecorder::new("keys-read");
        metrics::with_local_recorder(&recorder, || {
            cmk_core::metrics::http_request("/v1/orgs/{org}/keys", 200);
            cmk_core::metrics::http_request("/v1/orgs/{org}/keys", 200);
            cmk_core::metrics::http_request("/v1/orgs/{org}/decrypt", 424);
            cmk_core::metrics::data_keys_moved(500);
            cmk_core::metrics::batch_seconds(0.25);
            cmk_core::metrics::job_transition("completed");
        });
        let lines = recorder.drain(1_700_000_000_000, &["acme".to_owned()]);
        let docs: Vec<Value> = lines.iter().map(|l| assert_emf(l)).collect();
        assert_eq!(docs.len(), 4, "{lines:#?}");
        let keys = docs
            .iter()
            .find(|d| d["route"] == "/v1/orgs/{org}/keys")
            .expect("the keys route");
        assert_eq!(keys["cmk_http_requests_total"], 2);
        assert_eq!(keys["status"], "200");
        assert_eq!(keys["function"], "keys-read");
        let plain = docs
            .iter()
            .find(|d| d.get("cmk_rewrap_data_keys_moved_total").is_some())
            .expect("the moves");
        assert_eq!(plain["cmk_rewrap_data_keys_moved_total"], 500);
        assert_eq!(plain["cmk_rewrap_batch_seconds"], json!([0.25]));
        assert_eq!(
            plain["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function"]])
        );
        // The org is a property of every document, never a dimension.
        for doc in &docs {
            assert_eq!(doc["org"], "acme");
            let dims = &doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0];
            assert!(!dims.as_array().expect("dims").contains(&json!("org")));
        }
        // A drain resets: nothing moved since, nothing printed.
        assert!(recorder.drain(1_700_000_000_001, &[]).is_empty());

        metrics::with_local_recorder(&recorder, || cmk_core::metrics::data_keys_moved(1));
        let several = ["acme".to_owned(), "globex".to_owned()];
        let doc: Value = serde_json::from_str(&recorder.drain(1, &several)[0]).expect("a document");
        assert_eq!(
            doc["orgs"],
            json!(several),
            "a batch of several orgs names them all"
        );
    }
}
