//! Zones found through the API: discovery with its filters, zones that come
//! and go, zones configured by name, the token check at start, and shards
//! that split the discovered zones between replicas.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cloudflare_argo_exporter::cloudflare::ArgoValue;
use cloudflare_argo_exporter::cloudflare::ZoneQuery;
use cloudflare_argo_exporter::simulator::{SimZone, Simulator};
use cloudflare_argo_exporter::zones::{ConfiguredZone, Discovery, Shard, ZoneRef};
use common::*;
use regex::Regex;

fn numbered_id(n: u32) -> String {
    format!("{n:032x}")
}

fn discover_config(
    api_url: &str,
    include: Option<&str>,
    exclude: Option<&str>,
) -> cloudflare_argo_exporter::config::Config {
    let mut config = config(api_url, &[], Duration::from_millis(200));
    let refresh = Duration::from_millis(300);
    config.zones.discovery = Some(Discovery {
        query: ZoneQuery {
            status: Some("active".to_owned()),
            ..ZoneQuery::default()
        },
        include: include.map(|re| Regex::new(re).unwrap()),
        exclude: exclude.map(|re| Regex::new(re).unwrap()),
        refresh,
    });
    config.zones.refresh = refresh;
    config
}

#[tokio::test]
async fn discovers_every_page_and_applies_the_filters() {
    // 120 zones are three pages of 50.
    let simulator = Simulator::numbered(120);
    simulator.update(&numbered_id(8), |zone| zone.status = "pending".to_owned());
    let url = serve_simulator(&simulator).await;

    let config = discover_config(&url, Some(r"^zone-\d+\.example\.com$"), Some(r"^zone-7\."));
    let exporter = Exporter::start(config).await;
    let m = exporter
        .scrape_until("118 discovered zones", |m| {
            m.value("argo_zones", &[("source", "discovered")]) == Some(118.0)
        })
        .await;
    let m = if m
        .zone_value("argo_zone_poll_success", &numbered_id(120))
        .is_some()
    {
        m
    } else {
        exporter
            .scrape_until("the last zone polled", |m| {
                m.zone_value("argo_zone_poll_success", &numbered_id(120)) == Some(1.0)
            })
            .await
    };
    // Zone 7 is excluded by name and zone 8 is not active.
    assert_eq!(m.zone_value("argo_enabled", &numbered_id(7)), None);
    assert_eq!(m.zone_value("argo_enabled", &numbered_id(8)), None);
    assert_eq!(
        m.value(
            "argo_enabled",
            &[
                ("zone_id", &numbered_id(10)),
                ("zone_name", "zone-10.example.com")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.value("argo_zones", &[("source", "configured")]),
        Some(0.0)
    );
    exporter.stop().await;
}

#[tokio::test]
async fn zones_that_come_and_go_need_no_restart() {
    let simulator = Simulator::numbered(5);
    let url = serve_simulator(&simulator).await;
    let exporter = Exporter::start(discover_config(&url, None, None)).await;
    exporter
        .scrape_until("zone 3", |m| {
            m.zone_value("argo_enabled", &numbered_id(3)) == Some(1.0)
        })
        .await;

    simulator.remove(&numbered_id(3));
    simulator.insert(SimZone::new(
        numbered_id(900),
        "new.example.com",
        ArgoValue::Off,
    ));
    let m = exporter
        .scrape_until("zone 3 gone and zone 900 there", |m| {
            m.zone_value("argo_enabled", &numbered_id(900)) == Some(0.0)
                && !m.text.contains(&numbered_id(3))
        })
        .await;
    assert_eq!(
        m.value("argo_zones", &[("source", "discovered")]),
        Some(5.0)
    );
    exporter.stop().await;
}

#[tokio::test]
async fn a_failed_listing_keeps_the_zones_found_before() {
    let simulator = Simulator::numbered(3).require_token(TOKEN);
    let url = serve_simulator(&simulator).await;
    let exporter = Exporter::start(discover_config(&url, None, None)).await;
    exporter
        .scrape_until("three zones", |m| {
            m.value("argo_zones", &[("source", "discovered")]) == Some(3.0)
        })
        .await;

    // Every request is now refused; the zones stay (with failing polls).
    let simulator = simulator.require_token("another-token");
    let m = exporter
        .scrape_until("a refused listing and failing polls", |m| {
            m.errors("zones", "auth") >= 1.0
                && m.zone_value("argo_zone_poll_success", &numbered_id(1)) == Some(0.0)
        })
        .await;
    assert_eq!(
        m.value("argo_zones", &[("source", "discovered")]),
        Some(3.0)
    );
    assert_eq!(m.zone_value("argo_enabled", &numbered_id(1)), Some(1.0));
    drop(simulator);
    exporter.stop().await;
}

#[tokio::test]
async fn zones_can_be_configured_by_name() {
    let simulator = Simulator::numbered(10);
    let url = serve_simulator(&simulator).await;
    let mut config = config(&url, &[], Duration::from_millis(200));
    config.zones.configured = vec![
        ZoneRef::Name("zone-5.example.com".to_owned()).into(),
        ZoneRef::Id(zone(&numbered_id(6))).into(),
    ];
    let exporter = Exporter::start(config).await;
    let m = exporter
        .scrape_until("both zones", |m| {
            m.value(
                "argo_enabled",
                &[
                    ("zone_id", &numbered_id(5)),
                    ("zone_name", "zone-5.example.com"),
                ],
            ) == Some(1.0)
                && m.value(
                    "argo_enabled",
                    &[
                        ("zone_id", &numbered_id(6)),
                        ("zone_name", "zone-6.example.com"),
                    ],
                ) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.value("argo_zones", &[("source", "configured")]),
        Some(2.0)
    );
    exporter.stop().await;
}

/// A simulator with one zone (Argo on), and an exporter watching it by its
/// name with a short refresh, once it has polled the zone.
async fn watching_by_name(id: &str, name: &str) -> (Simulator, Exporter) {
    let simulator = Simulator::new([SimZone::new(id, name, ArgoValue::On)]);
    let url = serve_simulator(&simulator).await;
    let mut config = config(&url, &[], Duration::from_millis(200));
    config.zones.refresh = Duration::from_millis(300);
    config.zones.configured = vec![ZoneRef::Name(name.to_owned()).into()];
    let exporter = Exporter::start(config).await;
    exporter
        .scrape_until("the zone under its first ID", |m| {
            m.zone_value("argo_enabled", id) == Some(1.0)
        })
        .await;
    (simulator, exporter)
}

#[tokio::test]
async fn a_zone_recreated_under_its_configured_name_is_followed_to_its_new_id() {
    // Regression: a name was resolved once, so a zone deleted and created
    // again (new ID, same name) stayed polled under its dead ID.
    let old_id = numbered_id(0xa1);
    let new_id = numbered_id(0xa2);
    let (simulator, exporter) = watching_by_name(&old_id, "shop.example.com").await;

    simulator.remove(&old_id);
    simulator.insert(SimZone::new(&new_id, "shop.example.com", ArgoValue::Off));
    let m = exporter
        .scrape_until("the zone under its new ID", |m| {
            m.value(
                "argo_enabled",
                &[("zone_id", &new_id), ("zone_name", "shop.example.com")],
            ) == Some(0.0)
        })
        .await;
    assert_eq!(m.zone_value("argo_enabled", &old_id), None, "{}", m.text);
    assert_eq!(
        m.value("argo_zones", &[("source", "configured")]),
        Some(1.0)
    );
    exporter.stop().await;
}

#[tokio::test]
async fn a_zone_deleted_under_its_configured_name_loses_its_series() {
    let id = numbered_id(0xa3);
    let (simulator, exporter) = watching_by_name(&id, "gone.example.com").await;

    simulator.remove(&id);
    let m = exporter
        .scrape_until("the zone to be dropped", |m| {
            m.value("argo_zones", &[("source", "configured")]) == Some(0.0)
        })
        .await;
    for series in [
        "argo_enabled",
        "argo_zone_poll_success",
        "argo_expected_enabled",
    ] {
        assert_eq!(m.zone_value(series, &id), None, "{series}:\n{}", m.text);
    }
    let said = log_lines_with("no longer watching it");
    assert!(
        said.iter().any(|l| l.contains("gone.example.com")),
        "{said:#?}"
    );
    exporter.stop().await;
}

#[tokio::test]
async fn token_expiry_is_exported() {
    let simulator = Simulator::numbered(1);
    let expires = chrono::DateTime::parse_from_rfc3339("2027-06-30T00:00:00Z").unwrap();
    simulator.set_token_expiry(expires.with_timezone(&chrono::Utc));
    let url = serve_simulator(&simulator).await;
    let exporter = Exporter::start(config(&url, &[&numbered_id(1)], Duration::from_secs(60))).await;
    exporter
        .scrape_until("the token expiry", |m| {
            m.value("argo_api_token_expiry_timestamp_seconds", &[])
                == Some(expires.timestamp() as f64)
        })
        .await;
    exporter.stop().await;
}

#[tokio::test]
async fn a_zone_without_argo_in_its_plan_reads_as_off_and_is_asked_rarely() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let zone = numbered_id(0x1015);
    let argo = format!("/zones/{zone}/argo/smart_routing");
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(argo.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(argo.as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(failure_body(
            1015,
            "Not entitled to access this setting: smart_routing",
        )))
        .mount(&api)
        .await;

    let exporter = Exporter::start(config(&api.uri(), &[&zone], Duration::from_millis(50))).await;
    // A lapsed plan must look like Argo turning off, not like an outage.
    let m = exporter
        .scrape_until("the zone to lose Argo", |m| {
            m.zone_value("argo_zone_entitled", &zone) == Some(0.0)
        })
        .await;
    assert_eq!(m.zone_value("argo_enabled", &zone), Some(0.0));
    assert_eq!(m.zone_value("argo_editable", &zone), Some(0.0));
    assert_eq!(m.zone_value("argo_zone_poll_success", &zone), Some(1.0));
    assert_eq!(m.errors("smart_routing", "not_entitled"), 1.0);

    // Cycles 1 and 2 asked; cycles 3 to 11 skip the zone; cycle 12 asks again.
    let asked = || async {
        let requests = api.received_requests().await.unwrap_or_default();
        requests.iter().filter(|r| r.url.path() == argo).count()
    };
    let after_cycles = |n: f64| {
        exporter.scrape_until("more cycles", move |m| {
            m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0) >= n
        })
    };
    after_cycles(5.0).await;
    assert_eq!(asked().await, 2);
    after_cycles(13.0).await;
    assert_eq!(asked().await, 3);
    exporter.stop().await;
}

#[tokio::test]
async fn an_unresolvable_name_does_not_stop_the_other_zones() {
    let simulator = Simulator::numbered(10);
    let url = serve_simulator(&simulator).await;
    let mut config = config(&url, &[], Duration::from_millis(200));
    config.zones.configured = vec![
        ZoneRef::Id(zone(&numbered_id(6))).into(),
        ZoneRef::Name("typo.example.com".to_owned()).into(),
    ];
    let exporter = Exporter::start(config).await;
    exporter
        .scrape_until("the zone given by ID", |m| {
            m.zone_value("argo_enabled", &numbered_id(6)) == Some(1.0)
        })
        .await;
    assert_eq!(exporter.get("/readyz").await.status(), 200);
    let warned = log_lines_with("typo.example.com");
    assert!(
        warned.iter().any(|l| l.contains("level=warn")),
        "{warned:#?}"
    );
    exporter.stop().await;
}

#[tokio::test]
async fn three_shards_export_every_discovered_zone_exactly_once() {
    let simulator = Simulator::numbered(30);
    let url = serve_simulator(&simulator).await;
    let mut exporters = Vec::new();
    for index in 0..3 {
        let mut config = discover_config(&url, None, None);
        config.zones.shard = Shard { index, count: 3 };
        exporters.push(Exporter::start(config).await);
    }

    let mut owners: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (shard, exporter) in exporters.iter().enumerate() {
        // After a first cycle, every zone of the shard has been polled.
        let m = exporter
            .scrape_until("a first poll cycle", |m| {
                m.value("argo_poll_cycles_total", &[]) >= Some(1.0)
            })
            .await;
        let exported: Vec<String> = m
            .samples
            .iter()
            .filter(|s| s.metric == "argo_enabled")
            .map(|s| s.labels.get("zone_id").unwrap().to_owned())
            .collect();
        assert_eq!(
            m.value("argo_zones", &[("source", "discovered")]),
            Some(exported.len() as f64),
            "shard {shard}: {exported:?}"
        );
        for zone_id in exported {
            owners.entry(zone_id).or_default().push(shard);
        }
    }

    let every_zone: Vec<String> = (1..=30).map(numbered_id).collect();
    assert_eq!(
        owners.keys().cloned().collect::<Vec<_>>(),
        every_zone,
        "{owners:?}"
    );
    let shared: Vec<_> = owners.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "exported by more than one shard: {shared:?}"
    );
    for exporter in exporters {
        exporter.stop().await;
    }
}

#[tokio::test]
async fn a_configured_name_keeps_its_expectation_while_its_lookup_fails_and_discovery_lists_it() {
    // Regression: until `GET /zones?name=` answered, the zone was watched as
    // discovered with the default expectation (on), so a zone declared
    // `expect: off` paged as unexpectedly disabled and `--enforce` turned it on.
    use cloudflare_argo_exporter::zones::Expectation;
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let id = numbered_id(0xcafe);
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/zones"))
        .and(query_param("name", "calm.example.com"))
        .respond_with(ResponseTemplate::new(503).set_body_json(failure_body(1000, "busy")))
        .mount(&api)
        .await;
    let listing = zone_listing(&[(&id, "calm.example.com")]);
    Mock::given(method("GET"))
        .and(path("/zones"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listing))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{id}/argo/smart_routing")))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("off", true, None)))
        .mount(&api)
        .await;

    let mut config = discover_config(&api.uri(), None, None);
    config.zones.discovery.as_mut().unwrap().query.status = None;
    config.zones.configured = vec![ConfiguredZone {
        zone: ZoneRef::Name("calm.example.com".to_owned()),
        expect: Some(Expectation::Off),
    }];
    config.alerting.enforce_grace = Some(Duration::from_millis(200));
    let exporter = Exporter::start(config).await;
    let m = exporter
        .scrape_until("a few cycles", |m| {
            m.value("argo_poll_cycles_total", &[]).unwrap_or(0.0) >= 5.0
        })
        .await;
    exporter.stop().await;

    assert_eq!(m.zone_value("argo_enabled", &id), Some(0.0), "{}", m.text);
    assert_eq!(m.zone_value("argo_expected_enabled", &id), Some(0.0));
    assert_eq!(
        m.value("argo_zones", &[("source", "configured")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("argo_zones", &[("source", "discovered")]),
        Some(0.0)
    );
    let requests = api.received_requests().await.unwrap_or_default();
    assert!(
        !requests.iter().any(|r| r.method.as_str() == "PATCH"),
        "--enforce changed a zone expected off"
    );
}

#[tokio::test]
async fn odd_values_in_the_token_check_and_zone_list_are_reported_not_ignored() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let good = numbered_id(0x600d);
    let api = MockServer::start().await;
    let verify = serde_json::json!({
        "result": {"id": "t1", "status": "active", "expires_on": "garbage"},
        "success": true, "errors": [], "messages": []
    });
    Mock::given(method("GET"))
        .and(path("/user/tokens/verify"))
        .respond_with(ResponseTemplate::new(200).set_body_json(verify))
        .mount(&api)
        .await;
    let listing = zone_listing(&[
        (&good, "good.example.com"),
        ("../../../evil", "evil.example.com"),
        ("ABCDEF", "upper.example.com"),
    ]);
    Mock::given(method("GET"))
        .and(path("/zones"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listing))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/zones/{good}/argo/smart_routing")))
        .respond_with(ResponseTemplate::new(200).set_body_json(argo_body("on", true, None)))
        .mount(&api)
        .await;

    let mut config = discover_config(&api.uri(), None, None);
    config.zones.discovery.as_mut().unwrap().query.status = None;
    let exporter = Exporter::start(config).await;
    let m = exporter
        .scrape_until("the good zone and the token check", |m| {
            m.zone_value("argo_enabled", &good) == Some(1.0)
                && m.errors("token_verify", "decode") == 1.0
        })
        .await;
    eventually("three zone listings", || async {
        let requests = api.received_requests().await.unwrap_or_default();
        requests.iter().filter(|r| r.url.path() == "/zones").count() >= 3
    })
    .await;
    exporter.stop().await;

    assert!(
        !m.has("argo_api_token_expiry_timestamp_seconds"),
        "{}",
        m.text
    );
    assert_eq!(
        m.value("argo_zones", &[("source", "discovered")]),
        Some(1.0)
    );
    let expiry = log_lines_with("expires_on is not an RFC 3339 time");
    assert!(
        expiry.iter().any(|l| l.contains("level=warn")),
        "{expiry:#?}"
    );
    let malformed = log_lines_with("IDs that are not 32 hexadecimal characters");
    assert_eq!(
        malformed.len(),
        1,
        "warned once over several refreshes: {malformed:#?}"
    );
    assert!(malformed[0].contains("malformed=2"), "{}", malformed[0]);
}
