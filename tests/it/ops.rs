//! The operator surface: `/healthz`, `/readyz` and `/metrics` (parsed by Prometheus' own Python
//! parser) on the real binary.

use crate::harness::{Server, Sink, python};

const CLIENT: &str = include_str!("client.py");

#[test]
fn metrics_health_and_readiness() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let extra = format!("[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n", sink.addr);
    let cfg =
        crate::harness::base_config(&dir, &extra).replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &cfg);
    let port = s.port("smtp").to_string();
    let (code, out, err) = python(
        CLIENT,
        &["--port".into(), port.clone(), "--count".into(), "3".into()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK ")).count(),
        3,
        "{out}"
    );
    let (_, out, _) = python(
        CLIENT,
        &[
            "--port".into(),
            port,
            "--to".into(),
            "perm-z@example.net".into(),
        ],
    );
    assert!(out.starts_with("OK "), "{out}");
    // 3 delivered messages plus the bounce's DSN to alice@example.com.
    sink.wait_for("deliveries and the DSN", 30, |m| m.len() >= 4);
    std::thread::sleep(std::time::Duration::from_millis(1200)); // gauges refresh every second
    let script = r#"
import sys, urllib.request, urllib.error
base = "http://" + sys.argv[1]
def get(path, method="GET"):
    try:
        r = urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=10)
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
print("healthz", get("/healthz")[0])
print("readyz", get("/readyz")[0])
print("missing", get("/nope")[0])
print("post", get("/metrics", "POST")[0])
status, text = get("/metrics")
print("metrics", status)
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("SKIP-PARSER"); sys.exit(0)
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"sample {s.name}{{{labels}}} {s.value}")
"#;
    let (code, out, err) = python(script, &[s.addr("http").to_string()]);
    assert_eq!(code, 0, "{err}");
    let has = |line: &str| out.lines().any(|l| l == line);
    assert!(
        has("healthz 200") && has("readyz 200") && has("missing 404") && has("post 405"),
        "{out}"
    );
    assert!(has("metrics 200"), "{out}");
    if has("SKIP-PARSER") {
        eprintln!("SKIP: prometheus_client is not installed (pip install prometheus_client)");
        return;
    }
    let value = |name: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("sample {name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .parse()
            .unwrap()
    };
    // 4 client messages + 1 DSN generated locally (counted as a DSN, not as accepted).
    assert_eq!(value("ringmta_messages_accepted_total{}"), 4.0);
    assert_eq!(value("ringmta_accept_latency_seconds_count{}"), 4.0);
    assert_eq!(value("ringmta_deliveries_total{outcome=bounced}"), 1.0);
    assert!(value("ringmta_deliveries_total{outcome=delivered}") >= 4.0);
    assert_eq!(
        value("ringmta_delivery_failures_total{category=user_unknown}"),
        1.0
    );
    assert_eq!(value("ringmta_dsns_total{}"), 1.0);
    assert!(value("ringmta_spool_bytes{}") > 0.0);
    assert_eq!(value("ringmta_queue_pending_recipients{}"), 0.0);
    assert!(value("ringmta_connections_total{}") >= 2.0);
}
