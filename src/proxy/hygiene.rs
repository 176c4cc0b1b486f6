//! HTTP/1 hygiene pingora leaves to us: hop-by-hop headers never cross the gateway.
//!
//! (A request with both `Content-Length` and `Transfer-Encoding` is handled by pingora itself as
//! RFC 9112 §6.3 asks: `Content-Length` is dropped before forwarding and the connection is not
//! kept alive, so the upstream cannot frame the body differently from us.)

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;

/// Whether a header is hop-by-hop by itself (RFC 9110 §7.6.1), besides those `Connection`
/// names. `Transfer-Encoding` is left to pingora, which re-frames bodies itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "proxy-authenticate" | "proxy-authorization"
        )
}

/// The hop-by-hop headers present in `headers`: the fixed set, `Connection` itself and every
/// header it names. One pass over the headers; most messages have none, and then nothing is
/// allocated.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<HeaderName> {
    hop_by_hop_but(headers, None)
}

/// [`hop_by_hop`] of an upstream's answer, less `Connection` itself (the headers it names are
/// still in). pingora's HTTP/1 server always writes its own `Connection` (`keep-alive` or
/// `close`, replacing the upstream's) and its HTTP/2 server drops it, so the upstream's value
/// never reaches the client either way. Removing it here as well cost every answer a list
/// of names and a removal from both of pingora's header maps, for nothing.
pub fn hop_by_hop_in_response(headers: &HeaderMap) -> Vec<HeaderName> {
    hop_by_hop_but(headers, Some(&CONNECTION))
}

fn hop_by_hop_but(headers: &HeaderMap, kept: Option<&HeaderName>) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|h| is_hop_by_hop(h) && Some(*h) != kept)
        .cloned()
        .collect();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().to_ascii_lowercase().as_bytes()) {
                if name != TRANSFER_ENCODING && headers.contains_key(&name) && !out.contains(&name)
                {
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
        h.insert(
            CONNECTION,
            "keep-alive, X-Custom, X-Absent".parse().unwrap(),
        );
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-end-to-end", "1".parse().unwrap());
        let names = hop_by_hop(&h);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&HeaderName::from_static("x-custom")));
        assert!(names.contains(&HeaderName::from_static("keep-alive")));
        assert!(names.contains(&CONNECTION));
        assert!(hop_by_hop(&HeaderMap::new()).is_empty());
        let answer = hop_by_hop_in_response(&h);
        assert_eq!(answer.len(), 2, "{answer:?}");
        assert!(!answer.contains(&CONNECTION));
    }
}
