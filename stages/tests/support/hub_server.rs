//! A real HTTP/1.1 server on 127.0.0.1 that answers the requests `hf-hub` 1.x makes for
//! dataset files, the way the Hugging Face hub does:
//!
//! - `GET /api/datasets/{owner}/{name}/revision/{rev}` -> JSON with the commit `sha`;
//! - `HEAD /datasets/{owner}/{name}/resolve/{rev}/{path}` -> `ETag` / `X-Linked-Etag`
//!   (the sha256, as for LFS files), `X-Repo-Commit`, `Content-Length` / `X-Linked-Size`;
//! - `GET` on the same URL -> the bytes, or `206` with `Content-Range` for a `Range`;
//! - `404` with `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`.
//!
//! Branches can be moved, every request is recorded, and a fault mode drops the connection
//! half-way through a body.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// When to cut file bodies short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropMode {
    Never,
    /// Drop the next `n` GET bodies half-way, then serve normally.
    Next(u32),
    /// Drop every GET body half-way.
    Always,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Repo {
    refs: HashMap<String, String>,
    commits: HashMap<String, HashMap<String, Arc<Vec<u8>>>>,
}

struct State {
    repos: HashMap<String, Repo>,
    requests: Vec<Request>,
    drop_mode: DropMode,
}

/// The running server; stops when dropped.
pub struct HubServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HubServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(Mutex::new(State {
            repos: HashMap::new(),
            requests: Vec::new(),
            drop_mode: DropMode::Never,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &state);
                    });
                }
            })
        };
        Self {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a commit of `files` (path -> bytes) to dataset `repo`; returns its sha.
    pub fn add_commit(&self, repo: &str, files: &[(&str, Arc<Vec<u8>>)]) -> String {
        let mut hasher = Sha256::new();
        let mut state = self.state.lock().unwrap();
        let entry = state.repos.entry(format!("datasets/{repo}")).or_default();
        hasher.update(entry.commits.len().to_le_bytes());
        for (path, bytes) in files {
            hasher.update(path.as_bytes());
            hasher.update(Sha256::digest(bytes.as_slice()));
        }
        let sha = hex(&hasher.finalize()[..20]);
        entry.commits.insert(
            sha.clone(),
            files
                .iter()
                .map(|(p, b)| ((*p).to_owned(), b.clone()))
                .collect(),
        );
        sha
    }

    /// Points branch `name` of `repo` at commit `sha`.
    pub fn set_ref(&self, repo: &str, name: &str, sha: &str) {
        let mut state = self.state.lock().unwrap();
        let entry = state.repos.entry(format!("datasets/{repo}")).or_default();
        entry.refs.insert(name.to_owned(), sha.to_owned());
    }

    pub fn set_drop_mode(&self, mode: DropMode) {
        self.state.lock().unwrap().drop_mode = mode;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// GET requests for file bytes (not HEADs, not API calls).
    pub fn file_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/resolve/"))
            .count()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: Option<(usize, usize)>,
    /// Cut the body half-way and drop the connection.
    drop_body: bool,
}

impl Response {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Arc::new(Vec::new()),
            range: None,
            drop_body: false,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    fn json(self, status: u16, value: serde_json::Value) -> Self {
        let mut r = self.header("Content-Type", "application/json");
        r.status = status;
        r.body = Arc::new(value.to_string().into_bytes());
        r
    }
}

fn not_found(code: &str, message: &str) -> Response {
    Response::new(404)
        .header("X-Error-Code", code)
        .header("X-Error-Message", message)
        .json(404, serde_json::json!({ "error": message }))
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let range = headers.get("range").cloned();
    let response = {
        let mut st = state.lock().unwrap();
        st.requests.push(Request {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            authorization: headers.get("authorization").cloned(),
        });
        let mut r = route(&st, &method, &path, range.as_deref());
        if method == "GET" && path.contains("/resolve/") && r.status / 100 == 2 {
            r.drop_body = match st.drop_mode {
                DropMode::Never => false,
                DropMode::Always => true,
                DropMode::Next(0) => false,
                DropMode::Next(n) => {
                    st.drop_mode = DropMode::Next(n - 1);
                    true
                }
            };
        }
        r
    };
    write_response(conn, &method, response)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(st: &State, method: &str, path: &str, range: Option<&str>) -> Response {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/datasets/{owner}/{name}/revision/{rev}
    if let ["api", "datasets", owner, name, "revision", rev] = segs.as_slice() {
        let id = format!("{owner}/{name}");
        let Some(repo) = st.repos.get(&format!("datasets/{id}")) else {
            return not_found("RepoNotFound", "Repository not found");
        };
        let rev = decode(rev);
        let Some(sha) = resolve(repo, &rev) else {
            return not_found("RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        return Response::new(200).json(
            200,
            serde_json::json!({ "id": id, "sha": sha, "private": false }),
        );
    }
    // /datasets/{owner}/{name}/resolve/{rev}/{path...}
    if segs.len() >= 6 && segs[0] == "datasets" && segs[3] == "resolve" {
        let Some(repo) = st.repos.get(&format!("datasets/{}/{}", segs[1], segs[2])) else {
            return not_found("RepoNotFound", "Repository not found");
        };
        let rev = decode(segs[4]);
        let Some(sha) = resolve(repo, &rev) else {
            return not_found("RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let file = decode(&segs[5..].join("/"));
        let Some(bytes) = repo.commits[&sha].get(&file) else {
            return not_found(
                "EntryNotFound",
                &format!("{file} does not exist on \"{rev}\""),
            )
            .header("X-Repo-Commit", sha);
        };
        let etag = hex(&Sha256::digest(bytes.as_slice()));
        let mut r = Response::new(200)
            .header("ETag", format!("\"{etag}\""))
            .header("X-Linked-Etag", format!("\"{etag}\""))
            .header("X-Repo-Commit", sha)
            .header("X-Linked-Size", bytes.len().to_string())
            .header("Accept-Ranges", "bytes");
        r.body = bytes.clone();
        if method == "GET" {
            if let Some((a, b)) = range.and_then(|r| parse_range(r, bytes.len())) {
                r.status = 206;
                r.range = Some((a, b));
                r = r.header(
                    "Content-Range",
                    format!("bytes {a}-{}/{}", b - 1, bytes.len()),
                );
            }
        }
        return r;
    }
    Response::new(404).json(404, serde_json::json!({ "error": "Not found" }))
}

fn resolve(repo: &Repo, rev: &str) -> Option<String> {
    if repo.commits.contains_key(rev) {
        return Some(rev.to_owned());
    }
    repo.refs.get(rev).cloned()
}

/// `bytes=a-b` (inclusive) -> `a..b+1`, clamped to the file.
fn parse_range(header: &str, len: usize) -> Option<(usize, usize)> {
    let spec = header.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        len - 1
    } else {
        b.parse().ok()?
    };
    (a < len).then_some((a, (b + 1).min(len)))
}

fn write_response(mut conn: TcpStream, method: &str, r: Response) -> std::io::Result<()> {
    let (start, end) = r.range.unwrap_or((0, r.body.len()));
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        end - start
    ));
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let body = &r.body[start..end];
        if r.drop_body {
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        conn.write_all(body)?;
    }
    conn.flush()?;
    // Let the client read everything before the socket closes.
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    let mut sink = [0u8; 64];
    let _ = conn.read(&mut sink);
    Ok(())
}
