//! The simulator speaks the documented API: every answer the exporter relies
//! on, successes and refusals alike, validates against Cloudflare's own
//! OpenAPI definition of the paths (a copy is kept beside this file).

mod common;

use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::simulator::{SimZone, Simulator};
use serde_json::{json, Value};

const ON: &str = "00000000000000000000000000000f01";
const LOCKED: &str = "00000000000000000000000000000f02";

/// The OpenAPI document with OpenAPI 3.0's `nullable` turned into JSON
/// Schema's `"type": [T, "null"]`, which the validator understands.
fn definition() -> Value {
    fn nullable_to_types(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.get("nullable") == Some(&Value::Bool(true)) {
                    if let Some(Value::String(kind)) = map.get("type").cloned() {
                        map.insert("type".to_owned(), json!([kind, "null"]));
                    }
                }
                map.values_mut().for_each(nullable_to_types);
            }
            Value::Array(items) => items.iter_mut().for_each(nullable_to_types),
            _ => {}
        }
    }
    let text = include_str!("cloudflare-openapi-extract.json");
    let mut document: Value = serde_json::from_str(text).expect("the definition is JSON");
    nullable_to_types(&mut document);
    document
}

/// Checks `body` against the schema of `path`'s `method` answer `status`
/// ("200" or "4XX"), returning the validation errors.
fn violations(
    document: &Value,
    path: &str,
    method: &str,
    status: &str,
    body: &Value,
) -> Vec<String> {
    let pointer = format!(
        "#/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        // JSON Pointer escapes, then URI escapes for the braces.
        path.replace('~', "~0")
            .replace('/', "~1")
            .replace('{', "%7B")
            .replace('}', "%7D")
    );
    let mut schema = document.clone();
    schema["$ref"] = json!(pointer);
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(common::TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the simulator answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[tokio::test]
async fn every_answer_matches_the_definition() {
    let mut locked = SimZone::new(LOCKED, "locked.example.com", ArgoValue::Off);
    locked.editable = false;
    let simulator = Simulator::new([SimZone::new(ON, "on.example.com", ArgoValue::On), locked]);
    let api = common::serve_simulator(&simulator).await;
    let document = definition();
    let argo = "/zones/{zone_id}/argo/smart_routing";
    let get = reqwest::Method::GET;
    let patch = reqwest::Method::PATCH;

    let cases = [
        (
            argo,
            "get",
            "200",
            call(
                get.clone(),
                format!("{api}/zones/{ON}/argo/smart_routing"),
                None,
            )
            .await,
        ),
        (
            argo,
            "patch",
            "200",
            call(
                patch.clone(),
                format!("{api}/zones/{ON}/argo/smart_routing"),
                Some(json!({"value": "off"})),
            )
            .await,
        ),
        (
            argo,
            "patch",
            "4XX",
            call(
                patch.clone(),
                format!("{api}/zones/{LOCKED}/argo/smart_routing"),
                Some(json!({"value": "on"})),
            )
            .await,
        ),
        (
            argo,
            "get",
            "4XX",
            call(
                get.clone(),
                format!("{api}/zones/{:032x}/argo/smart_routing", 0xdead),
                None,
            )
            .await,
        ),
        (
            "/zones/{zone_id}",
            "get",
            "200",
            call(get.clone(), format!("{api}/zones/{ON}"), None).await,
        ),
        (
            "/zones",
            "get",
            "200",
            call(get.clone(), format!("{api}/zones?page=1&per_page=50"), None).await,
        ),
        (
            "/zones",
            "get",
            "4XX",
            call(get.clone(), format!("{api}/zones?per_page=500"), None).await,
        ),
        (
            "/user/tokens/verify",
            "get",
            "200",
            call(get.clone(), format!("{api}/user/tokens/verify"), None).await,
        ),
    ];
    for (path, method, status, (code, body)) in &cases {
        let expected_ok = *status == "200";
        assert_eq!(
            (200..300).contains(code),
            expected_ok,
            "{method} {path}: HTTP {code}"
        );
        let errors = violations(&document, path, method, status, body);
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:#?}\n{body:#}"
        );
    }
}

#[test]
fn the_check_catches_a_wrong_answer() {
    let document = definition();
    let argo = "/zones/{zone_id}/argo/smart_routing";
    let wrong = json!({
        "result": {"id": "smart_routing", "value": "maybe", "editable": true},
        "success": true, "errors": [], "messages": [],
    });
    assert!(!violations(&document, argo, "get", "200", &wrong).is_empty());
    let no_errors = json!({"result": null, "success": false, "messages": []});
    assert!(!violations(&document, argo, "get", "4XX", &no_errors).is_empty());
}
