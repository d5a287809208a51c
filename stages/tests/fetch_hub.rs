//! `hf-fetch` against a real HTTP server on loopback that speaks the hub protocol
//! (tests/support/hub_server.rs), and offline against real cache folders.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use itera_engine::stage::{FingerprintContext, Stage, StageLog};
use itera_stages::fetch::{import_into_cache, Provenance, RepoKind};
use sha2::{Digest, Sha256};
use support::hub_server::{DropMode, HubServer};
use support::{context, listing, train_sample, valid_sample};

const REPO: &str = "roneneldan/TinyStories";
const TRAIN: &str = "TinyStories-train.txt";
const VALID: &str = "TinyStories-valid.txt";

fn stage() -> std::sync::Arc<dyn Stage> {
    itera_stages::registry()
        .get("hf-fetch")
        .expect("hf-fetch is registered")
        .clone()
}

/// A server holding the shared samples as `roneneldan/TinyStories` with `main` at them.
fn server() -> (HubServer, String) {
    let server = HubServer::start();
    let sha = server.add_commit(REPO, &[(TRAIN, train_sample()), (VALID, valid_sample())]);
    server.set_ref(REPO, "main", &sha);
    (server, sha)
}

/// Canonical params from TOML text, through the stage's own parsing and validation.
fn params(toml_text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(toml_text).expect("test params are TOML");
    stage()
        .check_params(&table)
        .unwrap_or_else(|issues| panic!("params rejected: {issues:?}"))
}

fn online(endpoint: &str, cache: &Path, extra: &str) -> serde_json::Value {
    params(&format!(
        "repo = \"{REPO}\"\nendpoint = \"{endpoint}\"\ncache_dir = \"{}\"\n{extra}",
        cache.display()
    ))
}

fn run(params: &serde_json::Value, root: &Path) -> anyhow::Result<Provenance> {
    let mut ctx = context(root, BTreeMap::new(), 2);
    ctx.log = StageLog::open(&root.join("fetch.log"))?;
    stage().run(params, &ctx)?;
    let text = std::fs::read(ctx.out_dir.join("provenance.json"))?;
    Ok(serde_json::from_slice(&text)?)
}

/// The stage log of the runs in `root` (how each fetch went).
fn log(root: &Path) -> String {
    std::fs::read_to_string(root.join("fetch.log")).unwrap_or_default()
}

fn fingerprint(params: &serde_json::Value, root: &Path) -> anyhow::Result<Option<String>> {
    stage().fingerprint(
        params,
        &FingerprintContext {
            stage: "fetch".into(),
            base_dir: root.to_owned(),
        },
    )
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn full_fetch_gives_the_source_bytes_through_the_hub_cache() {
    let (server, sha) = server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{TRAIN}\" = \"{TRAIN}\", \"{VALID}\" = \"{VALID}\" }}"),
    );
    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(sha.clone()));

    let prov = run(&p, &tmp.path().join("a")).unwrap();
    let out = tmp.path().join("a/out");
    assert_eq!(listing(&out), vec![TRAIN, VALID, "provenance.json"]);
    assert_eq!(std::fs::read(out.join(TRAIN)).unwrap(), *train_sample());
    assert_eq!(std::fs::read(out.join(VALID)).unwrap(), *valid_sample());

    assert_eq!(prov.repo, REPO);
    assert_eq!(prov.requested_revision, "main");
    assert_eq!(prov.resolved_revision, sha);
    let train = &prov.files[TRAIN];
    assert_eq!(train.size, 2_097_152);
    assert_eq!(
        train.sha256,
        "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d"
    );
    assert_eq!(train.etag, train.sha256, "LFS etag is the content sha256");
    assert!(!train.prefix);
    let log = log(&tmp.path().join("a"));
    assert!(
        log.contains(&format!(
            "{TRAIN} <- {TRAIN}: 2097152 bytes, sha256 {}, from network, at ",
            train.sha256
        )),
        "{log}"
    );

    // Standard layout, shared with Python: refs/main, snapshots/<sha>/<file> -> blobs/<etag>.
    let repo_dir = cache.join("datasets--roneneldan--TinyStories");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );
    let link = repo_dir.join("snapshots").join(&sha).join(TRAIN);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../../blobs").join(&train.etag)
    );
    // The artifact file is a hard link to the blob, not a second copy.
    let blob = repo_dir.join("blobs").join(&train.etag);
    assert_eq!(
        std::fs::metadata(&blob).unwrap().ino(),
        std::fs::metadata(out.join(TRAIN)).unwrap().ino()
    );
}

#[test]
fn max_bytes_fetches_a_prefix_cut_after_the_last_story() {
    let (server, _) = server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{TRAIN}\" = \"{TRAIN}\" }}\nmax_bytes = {{ \"{TRAIN}\" = 300000 }}"),
    );
    let prov = run(&p, tmp.path()).unwrap();
    let got = std::fs::read(tmp.path().join("out").join(TRAIN)).unwrap();
    let source = train_sample();
    assert!(
        got.len() <= 300_000 && got.len() > 250_000,
        "prefix of {} bytes",
        got.len()
    );
    assert_eq!(&source[..got.len()], &got[..], "a prefix of the source");
    assert!(
        got.ends_with(b"<|endoftext|>\n"),
        "ends right after a separator line"
    );
    // Nothing after the cut would complete another story within the limit.
    let rest = &source[got.len()..300_000];
    assert!(!rest.windows(13).any(|w| w == b"<|endoftext|>"));

    let record = &prov.files[TRAIN];
    assert!(record.prefix);
    assert_eq!(record.size, got.len() as u64);
    assert_eq!(record.sha256, sha256(&got));
    let log = log(tmp.path());
    assert!(
        log.contains(&format!(" (prefix) of {}, ", source.len())),
        "{log}"
    );
    assert_eq!(
        record.etag,
        sha256(&source),
        "the etag of the whole file is recorded"
    );
    // Downloaded with range requests, and the prefix is not in the hub cache.
    let ranges: Vec<_> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(ranges, vec!["bytes=0-299999"]);
    let blobs = cache.join("datasets--roneneldan--TinyStories/blobs");
    assert!(
        listing(&blobs).is_empty(),
        "no blob for a prefix: {:?}",
        listing(&blobs)
    );
}

#[test]
fn a_prefix_of_a_cached_file_needs_no_request() {
    let (server, _) = server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let whole = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{VALID}\" = \"{VALID}\" }}"),
    );
    run(&whole, &tmp.path().join("a")).unwrap();
    let before = server.requests().len();
    let part = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{VALID}\" = \"{VALID}\" }}\nmax_bytes = {{ \"{VALID}\" = 100000 }}"),
    );
    let prov = run(&part, &tmp.path().join("b")).unwrap();
    // Only the revision lookup; the bytes come from the cached blob.
    let after: Vec<_> = server.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(after.iter().all(|p| p.starts_with("/api/")), "{after:?}");
    assert!(prov.files[VALID].prefix);
    assert!(log(&tmp.path().join("b")).contains("from hub-cache"));
    let got = std::fs::read(tmp.path().join("b/out").join(VALID)).unwrap();
    assert!(got.ends_with(b"<|endoftext|>\n") && got.len() <= 100_000);
}

#[test]
fn a_pinned_commit_is_not_fetched_again() {
    let (server, sha) = server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("revision = \"{sha}\"\nfiles = {{ \"{VALID}\" = \"{VALID}\" }}"),
    );
    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(sha.clone()));
    assert_eq!(
        server.requests().len(),
        0,
        "a commit sha needs no request to resolve"
    );
    run(&p, &tmp.path().join("a")).unwrap();
    assert_eq!(server.file_gets(), 1);
    let seen = server.requests().len();

    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(sha.clone()));
    let prov = run(&p, &tmp.path().join("b")).unwrap();
    assert_eq!(
        server.requests().len(),
        seen,
        "second run made requests: {:?}",
        &server.requests()[seen..]
    );
    assert!(!prov.files[VALID].prefix);
    assert!(log(&tmp.path().join("b")).contains("from hub-cache"));
    assert_eq!(
        std::fs::read(tmp.path().join("b/out").join(VALID)).unwrap(),
        *valid_sample()
    );
}

#[test]
fn moving_main_changes_the_fingerprint_and_the_data() {
    let (server, first) = server();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{VALID}\" = \"{VALID}\" }}"),
    );
    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(first.clone()));
    run(&p, &tmp.path().join("a")).unwrap();

    let mut edited = (*valid_sample()).clone();
    edited.extend_from_slice(b"\n<|endoftext|>\nOne more story.\n");
    let edited = std::sync::Arc::new(edited);
    let second = server.add_commit(REPO, &[(TRAIN, train_sample()), (VALID, edited.clone())]);
    server.set_ref(REPO, "main", &second);
    assert_ne!(first, second);

    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(second.clone()));
    let prov = run(&p, &tmp.path().join("b")).unwrap();
    assert_eq!(prov.resolved_revision, second);
    assert_eq!(
        std::fs::read(tmp.path().join("b/out").join(VALID)).unwrap(),
        *edited
    );
    let refs = cache.join("datasets--roneneldan--TinyStories/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), second);
}

#[test]
fn a_missing_repository_is_named() {
    let (server, _) = server();
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!(
        "repo = \"nobody/missing\"\nendpoint = \"{}\"\ncache_dir = \"hub\"\nfiles = {{ a = \"a.txt\" }}",
        server.endpoint()
    ));
    let err = fingerprint(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("`nobody/missing` was not found"), "{err}");
    assert!(err.contains("dataset repository"), "{err}");
    let err = run(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("`nobody/missing` was not found"), "{err}");
}

#[test]
fn a_missing_file_names_the_file_and_the_repository() {
    let (server, _) = server();
    let tmp = tempfile::tempdir().unwrap();
    let p = online(
        &server.endpoint(),
        &tmp.path().join("hub"),
        "files = { x = \"TinyStories-test.txt\" }",
    );
    let err = run(&p, tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("`TinyStories-test.txt` was not found"),
        "{err}"
    );
    assert!(err.contains(REPO), "{err}");
    assert!(listing(&tmp.path().join("out")).is_empty());

    let p = online(
        &server.endpoint(),
        &tmp.path().join("hub"),
        "revision = \"v9\"\nfiles = { x = \"a.txt\" }",
    );
    let err = fingerprint(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("revision `v9`") && err.contains(REPO), "{err}");
}

#[test]
fn a_dropped_connection_is_retried() {
    let (server, _) = server();
    server.set_drop_mode(DropMode::Next(1));
    let tmp = tempfile::tempdir().unwrap();
    let p = online(
        &server.endpoint(),
        &tmp.path().join("hub"),
        &format!("files = {{ \"{TRAIN}\" = \"{TRAIN}\" }}"),
    );
    run(&p, tmp.path()).unwrap();
    assert_eq!(server.file_gets(), 2, "one cut-short body, one retry");
    assert_eq!(
        std::fs::read(tmp.path().join("out").join(TRAIN)).unwrap(),
        *train_sample()
    );
}

#[test]
fn a_connection_that_keeps_dropping_fails_clearly_and_publishes_nothing() {
    let (server, sha) = server();
    server.set_drop_mode(DropMode::Always);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{TRAIN}\" = \"{TRAIN}\" }}"),
    );
    let err = run(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains(&format!("downloading `{TRAIN}`")), "{err}");
    assert!(
        err.contains("failed 3 time(s)") && err.contains("Nothing was published"),
        "{err}"
    );
    assert!(listing(&tmp.path().join("out")).is_empty());
    let repo_dir = cache.join("datasets--roneneldan--TinyStories");
    assert!(!repo_dir.join("snapshots").join(&sha).join(TRAIN).exists());
    let blobs: Vec<String> = listing(&repo_dir.join("blobs"));
    assert!(
        blobs
            .iter()
            .all(|b| b.ends_with(".incomplete") || b.ends_with(".lock")),
        "{blobs:?}"
    );

    // The same with a prefix: range requests cut short, nothing in the artifact.
    let p = online(
        &server.endpoint(),
        &cache,
        &format!("files = {{ \"{TRAIN}\" = \"{TRAIN}\" }}\nmax_bytes = {{ \"{TRAIN}\" = 100000 }}"),
    );
    let err = run(&p, &tmp.path().join("b")).unwrap_err().to_string();
    assert!(err.contains("Nothing was published"), "{err}");
    assert!(listing(&tmp.path().join("b/out")).is_empty());
}

#[test]
fn an_interrupted_prefix_resumes_from_the_work_folder() {
    let (server, _) = server();
    let tmp = tempfile::tempdir().unwrap();
    let p = online(
        &server.endpoint(),
        &tmp.path().join("hub"),
        &format!(
            "files = {{ \"{TRAIN}\" = \"{TRAIN}\" }}\nmax_bytes = {{ \"{TRAIN}\" = 1000000 }}"
        ),
    );
    // First 8 MiB chunk would be the whole prefix, so plant a partial part file by hand
    // the way a killed run leaves it, then check only the rest is requested.
    let etag = sha256(&train_sample());
    let part_dir = tmp.path().join("work/prefix");
    std::fs::create_dir_all(&part_dir).unwrap();
    std::fs::write(
        part_dir.join(format!("{TRAIN}.{etag}.part")),
        &train_sample()[..400_000],
    )
    .unwrap();
    let prov = run(&p, tmp.path()).unwrap();
    let ranges: Vec<_> = server
        .requests()
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(ranges, vec!["bytes=400000-999999"]);
    assert!(prov.files[TRAIN].prefix);
    assert!(log(tmp.path()).contains("from work-dir"));
    let got = std::fs::read(tmp.path().join("out").join(TRAIN)).unwrap();
    assert_eq!(&train_sample()[..got.len()], &got[..]);
}

#[test]
fn offline_uses_a_populated_cache_without_any_server() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let sha = {
        let (server, sha) = server();
        let p = online(
            &server.endpoint(),
            &cache,
            &format!("files = {{ \"{VALID}\" = \"{VALID}\" }}"),
        );
        run(&p, &tmp.path().join("a")).unwrap();
        sha
        // The server stops here.
    };
    // An endpoint nobody listens on: any request would fail.
    let p = params(&format!(
        "repo = \"{REPO}\"\nendpoint = \"http://127.0.0.1:9\"\ncache_dir = \"hub\"\noffline = true\nfiles = {{ \"{VALID}\" = \"{VALID}\" }}"
    ));
    assert_eq!(fingerprint(&p, tmp.path()).unwrap(), Some(sha.clone()));
    let prov = run(&p, tmp.path()).unwrap();
    assert!(log(tmp.path()).contains(", offline)"));
    assert_eq!(prov.resolved_revision, sha);
    assert_eq!(
        std::fs::read(tmp.path().join("out").join(VALID)).unwrap(),
        *valid_sample()
    );
}

#[test]
fn offline_with_an_empty_cache_says_how_to_work_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let p = params(&format!(
        "repo = \"{REPO}\"\ncache_dir = \"hub\"\noffline = true\nfiles = {{ \"{VALID}\" = \"{VALID}\" }}"
    ));
    let err = fingerprint(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("offline, and revision `main`"), "{err}");
    for hint in ["itera hub import", "HF_HUB_CACHE", "`files` stage"] {
        assert!(err.contains(hint), "missing {hint:?}: {err}");
    }
    // A pinned commit resolves offline, but its files are not there either.
    let p = params(&format!(
        "repo = \"{REPO}\"\ncache_dir = \"hub\"\noffline = true\nrevision = \"{}\"\nfiles = {{ \"{VALID}\" = \"{VALID}\" }}",
        "a".repeat(40)
    ));
    let err = run(&p, tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("file `{VALID}`")) && err.contains("itera hub import"),
        "{err}"
    );
}

#[test]
fn an_unreachable_hub_says_how_to_work_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = online(
        &format!("http://127.0.0.1:{port}"),
        &tmp.path().join("hub"),
        "files = { a = \"a.txt\" }",
    );
    let err = fingerprint(&p, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("cannot reach the hub"), "{err}");
    assert!(
        err.contains("offline = true") && err.contains("HF_ENDPOINT"),
        "{err}"
    );
}

#[test]
fn imported_files_serve_an_offline_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let local = support::data_dir().join("valid-part-00.txt");
    let resolved = import_into_cache(
        REPO,
        RepoKind::Dataset,
        "main",
        &[(VALID.to_owned(), local.clone())],
        &cache,
    )
    .unwrap();
    assert_eq!(resolved.sha.len(), 40);
    // Importing the same content again gives the same commit.
    let again = import_into_cache(
        REPO,
        RepoKind::Dataset,
        "main",
        &[(VALID.to_owned(), local)],
        &cache,
    )
    .unwrap();
    assert_eq!(again, resolved);

    let p = params(&format!(
        "repo = \"{REPO}\"\ncache_dir = \"hub\"\noffline = true\nfiles = {{ \"{VALID}\" = \"{VALID}\" }}"
    ));
    assert_eq!(
        fingerprint(&p, tmp.path()).unwrap(),
        Some(resolved.sha.clone())
    );
    let prov = run(&p, tmp.path()).unwrap();
    assert_eq!(prov.resolved_revision, resolved.sha);
    assert_eq!(
        prov.files[VALID].sha256,
        "9e755c4eb98340138cb8047e6f9b0af645f66ee7cc43d50c8d7854e25d24fd01"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("out").join(VALID)).unwrap(),
        *valid_sample()
    );
}

#[test]
fn params_are_checked_before_anything_runs() {
    let table: toml::Table = toml::from_str(
        "repo = \"TinyStories\"\nfiles = { \"a/b\" = \"../x\" }\nmax_bytes = { c = 0 }\nendpoint = \"ftp://x\"",
    )
    .unwrap();
    let issues = stage().check_params(&table).unwrap_err();
    let paths: Vec<String> = issues.iter().map(|i| i.path.join(".")).collect();
    assert_eq!(
        paths,
        vec![
            "repo",
            "files.a/b",
            "files.a/b",
            "max_bytes.c",
            "max_bytes.c",
            "endpoint"
        ]
    );
    let table: toml::Table = toml::from_str("repo = \"a/b\"\nfiles = {}\nrevison = \"x\"").unwrap();
    let issues = stage().check_params(&table).unwrap_err();
    assert!(issues[0].message.contains("revison"), "{issues:?}");
}

/// The same key fetched from the network, again into a fresh cache, and offline from the
/// cache gives byte-identical artifacts (same digest), with every file readable by the
/// group and others under umask 022 (a store shared on a cluster).
#[test]
fn the_same_key_gives_the_same_digest_online_again_and_from_the_cache() {
    use itera_engine::store::digest::digest_tree;
    use std::os::unix::fs::PermissionsExt;
    // The usual umask, whatever the test runner's is; harmless to the other tests.
    unsafe { libc::umask(0o022) };
    let (server, sha) = server();
    let tmp = tempfile::tempdir().unwrap();
    let files = format!("revision = \"{sha}\"\nfiles = {{ \"{TRAIN}\" = \"{TRAIN}\", \"{VALID}\" = \"{VALID}\" }}\nmax_bytes = {{ \"{TRAIN}\" = 300000 }}");
    let first = online(&server.endpoint(), &tmp.path().join("hub1"), &files);
    run(&first, &tmp.path().join("a")).unwrap();
    let second = online(&server.endpoint(), &tmp.path().join("hub2"), &files);
    run(&second, &tmp.path().join("b")).unwrap();
    // The whole train file into hub1 (prefixes never enter the cache), then no server.
    let whole = online(
        &server.endpoint(),
        &tmp.path().join("hub1"),
        &format!("revision = \"{sha}\"\nfiles = {{ \"{TRAIN}\" = \"{TRAIN}\" }}"),
    );
    run(&whole, &tmp.path().join("w")).unwrap();
    drop(server);
    let cached = params(&format!(
        "repo = \"{REPO}\"\nendpoint = \"http://127.0.0.1:9\"\ncache_dir = \"{}\"\noffline = true\n{files}",
        tmp.path().join("hub1").display()
    ));
    run(&cached, &tmp.path().join("c")).unwrap();
    assert!(log(&tmp.path().join("a")).contains("from network"));
    assert!(log(&tmp.path().join("c")).contains("from hub-cache"));
    let digests: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|d| {
            digest_tree(&tmp.path().join(d).join("out"))
                .unwrap()
                .0
                .as_str()
                .to_owned()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "fetched twice");
    assert_eq!(digests[0], digests[2], "fetched from the cache, offline");
    for dir in ["a", "c"] {
        for name in [TRAIN, VALID, "provenance.json"] {
            let path = tmp.path().join(dir).join("out").join(name);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{} is {mode:o}", path.display());
        }
    }
}
