//! HTTP/1 hygiene pingora leaves to us: hop-by-hop headers never cross the gateway.
//!
//! (A request with both `Content-Length` and `Transfer-Encoding` is handled by pingora itself as
//! RFC 9112 §6.3 asks: `Content-Length` is dropped before forwarding and the connection is not
//! kept alive, so the upstream cannot frame the body differently from us.)

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;

/// Hop-by-hop headers (RFC 9110 §7.6.1) besides those `Connection` names. `Transfer-Encoding`
/// is left to pingora, which re-frames bodies itself.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Names of the headers to strip from `headers`: the fixed hop-by-hop set, `Connection` itself
/// and every header it names.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = vec![CONNECTION, TE, TRAILER, UPGRADE];
    out.extend(HOP_BY_HOP.iter().map(|h| HeaderName::from_static(h)));
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().to_ascii_lowercase().as_bytes()) {
                if name != TRANSFER_ENCODING {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, X-Custom".parse().unwrap());
        let names = hop_by_hop(&h);
        assert!(names.contains(&HeaderName::from_static("x-custom")));
        assert!(names.contains(&HeaderName::from_static("keep-alive")));
        assert!(names.contains(&CONNECTION));
    }
}
