//! Step 1: which route takes the call. First match wins.

use std::sync::Arc;

use http::Method;

use crate::config::{PathMatch, Route};

/// Routes in match order.
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Whether any route matches by host (else the host is never looked at).
    by_host: bool,
}

impl RouteTable {
    /// A table over the config's routes.
    pub fn new(routes: Vec<Arc<Route>>) -> RouteTable {
        let by_host = routes.iter().any(|r| !r.matcher.hosts.is_empty());
        RouteTable { routes, by_host }
    }

    /// Whether any route matches by host, so [`RouteTable::pick`] needs the call's host.
    pub fn by_host(&self) -> bool {
        self.by_host
    }

    /// The first route matching `method`, `host` (the `Host` or `:authority` the client
    /// called, when known) and `path` (the path without its query). A route with `match.host`
    /// never matches a call without a host.
    pub fn pick(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            let path_ok = match &r.matcher.path {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => prefix_matches(p, path),
            };
            let host_ok = r.matcher.hosts.is_empty()
                || host.is_some_and(|h| r.matcher.hosts.iter().any(|p| p.matches(h)));
            path_ok
                && host_ok
                && (r.matcher.methods.is_empty() || r.matcher.methods.contains(method))
        })
    }
}

/// Prefixes match whole segments: `/v1/chat` takes `/v1/chat` and `/v1/chat/x`, not `/v1/chatty`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a path is in the one spelling routes are matched against.
///
/// Routes gate features and prices by path, so a path the upstream would read differently from
/// the gateway (`/v1/./export`, `/v1//export`, `/v1/%65xport`) could slip past a gate. Such
/// paths are refused rather than rewritten: a client has no reason to send them.
pub fn path_is_normal(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                // Encoded unreserved characters and encoded slashes change what the path says.
                Some(c) if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) => return false,
                Some(_) => {}
                None => return false,
            }
        }
    }
    path[1..].split('/').enumerate().all(|(i, seg)| {
        let last = i == path[1..].split('/').count() - 1;
        seg != "." && seg != ".." && (!seg.is_empty() || last)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/v1/chat", "/v1/chat"));
        assert!(prefix_matches("/v1/chat", "/v1/chat/completions"));
        assert!(!prefix_matches("/v1/chat", "/v1/chatty"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/v1/", "/v1/x"));
    }

    #[test]
    fn odd_spellings_are_not_normal() {
        for p in [
            "/v1/./export",
            "/v1/../x",
            "/v1//export",
            "/v1/%65xport",
            "/a%2Fb",
            "/a%zz",
            "x",
        ] {
            assert!(!path_is_normal(p), "{p}");
        }
        for p in ["/", "/v1/export", "/v1/export/", "/search%20x", "/a%3Fb"] {
            assert!(path_is_normal(p), "{p}");
        }
    }
}
