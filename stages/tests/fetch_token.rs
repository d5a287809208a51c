//! `HF_TOKEN` reaches the hub as a bearer token and never the log. Its own test binary:
//! the environment is process-wide, so no other test may run beside this one.

mod support;

use std::collections::BTreeMap;

use itera_engine::stage::StageLog;
use support::hub_server::HubServer;

#[test]
fn hf_token_is_sent_and_never_logged() {
    let token = "hf_itera_test_token_5b7e";
    // This binary has this one test, so nothing reads the environment concurrently.
    std::env::set_var("HF_TOKEN", token);
    let server = HubServer::start();
    let sha = server.add_commit(
        "roneneldan/TinyStories",
        &[("TinyStories-valid.txt", support::valid_sample())],
    );
    server.set_ref("roneneldan/TinyStories", "main", &sha);

    let tmp = tempfile::tempdir().unwrap();
    let table: toml::Table = toml::from_str(&format!(
        "repo = \"roneneldan/TinyStories\"\nendpoint = \"{}\"\ncache_dir = \"hub\"\nfiles = {{ v = \"TinyStories-valid.txt\" }}",
        server.endpoint()
    ))
    .unwrap();
    let stage = itera_stages::registry().get("hf-fetch").unwrap().clone();
    let params = stage.check_params(&table).unwrap();
    let mut ctx = support::context(tmp.path(), BTreeMap::new(), 1);
    let log_path = tmp.path().join("fetch.log");
    ctx.log = StageLog::open(&log_path).unwrap();
    stage.run(&params, &ctx).unwrap();

    let requests = server.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("roneneldan/TinyStories"),
        "the log says what was fetched: {log}"
    );
    assert!(!log.contains(token), "the token leaked into the log");
    let provenance = std::fs::read_to_string(ctx.out_dir.join("provenance.json")).unwrap();
    assert!(!provenance.contains(token));
}
