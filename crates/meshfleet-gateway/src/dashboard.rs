//! The web dashboard: static assets embedded in the binary, served at `/` and `/assets/*`.
//!
//! Build-free: hand-written ES modules and CSS in `crates/meshfleet-gateway/dashboard/`,
//! compiled in with `include_bytes!`, so the gateway needs no files and no internet at run
//! time (`docs/dashboard.md`). The page reads the same REST API and event stream as any
//! other client; it holds no privileges of its own.
//!
//! Every asset is served with its content type, a weak `ETag` (SHA-256 of the bytes, computed
//! once; weak because the gzip and identity encodings of a file share it), `Cache-Control: no-cache` (revalidate, then `304` without a body: the
//! file names carry no hash, so a cached copy must never outlive an upgrade) and a strict
//! `Content-Security-Policy`: scripts, styles and connections only from this origin, no
//! inline script, no frames, no forms posting elsewhere.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The policy sent with every dashboard response. `style-src 'self'` still lets scripts set
/// `element.style` (CSSOM), which the topology and charts use; no inline `<style>`/`style=`.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path under `/assets/` (or `index.html`, served at `/`).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ty:expr) => {
        Asset {
            path: $path,
            content_type: $ty,
            bytes: include_bytes!(concat!("../dashboard/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the dashboard (a test checks this list against the directory).
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/store.js", JS),
    asset!("js/util.js", JS),
    asset!("js/charts.js", JS),
    asset!("js/layout.js", JS),
    asset!("js/topology.js", JS),
    asset!("js/overview.js", JS),
    asset!("js/nodes.js", JS),
    asset!("js/node.js", JS),
    asset!("js/alerts.js", JS),
    asset!("js/firmware.js", JS),
    asset!("js/rollouts.js", JS),
];

/// The (weak) ETag of each asset, in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = Sha256::digest(a.bytes);
                let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("W/\"{hex}\"")
            })
            .collect()
    })
}

/// The asset at `path`, with its ETag.
pub fn find(path: &str) -> Option<(&'static Asset, &'static str)> {
    let i = ASSETS.iter().position(|a| a.path == path)?;
    Some((&ASSETS[i], etags()[i].as_str()))
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some((asset, etag)) = find(path) else {
        let mut r = (StatusCode::NOT_FOUND, "no such asset").into_response();
        secure(r.headers_mut());
        return r;
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // Weak comparison (RFC 9110 §8.8.3.2): the opaque tags match, W/ or not.
            let tag = etag.trim_start_matches("W/");
            v.split(',')
                .map(|t| t.trim())
                .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
        });
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(asset.bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    r
}

fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /assets/{*path}`: scripts, styles, icons.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// Whether `path` is one of the dashboard's own routes (static, no fleet data: open even
/// with `read-auth`, so the page can load and then ask for the token).
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_the_directory_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&root) {
                    on_disk.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn etags_differ_and_are_weak_and_quoted() {
        let tags = etags();
        assert!(tags
            .iter()
            .all(|t| t.starts_with("W/\"") && t.ends_with('"')));
        let mut uniq = tags.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), tags.len());
    }
}
