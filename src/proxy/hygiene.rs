//! HTTP/1 hygiene pingora leaves to us: hop-by-hop headers never cross the gateway; answers'
//! header names go down lowercase unless `server.preserve_header_case` keeps their case.
//!
//! (A request with both `Content-Length` and `Transfer-Encoding` is handled by pingora itself as
//! RFC 9112 §6.3 asks: `Content-Length` is dropped before forwarding and the connection is not
//! kept alive, so the upstream cannot frame the body differently from us.)

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;
use pingora::http::ResponseHeader;

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

/// Headers the gateway may add to an answer once the upstream's are in: `RateLimit-Policy` and
/// `RateLimit`, pingora's own `Connection`, and seldom more (`Tollgate-Warning` and
/// `Tollgate-Upgrade` near a limit, `Tollgate-Milestone`).
const ADDED: usize = 4;

/// Lets an upstream's answer go down with its header names as HTTP/2 and HTTP/3 carry them,
/// lowercase (pingora writes a dozen common ones, `Content-Type`, `Date`, …, title-cased),
/// instead of in the case the upstream wrote them: `server.preserve_header_case: false`, the
/// default.
///
/// Why: header names are case-insensitive (RFC 9110 §5.1), HTTP/2 and HTTP/3 clients only
/// ever see them lowercase, and Envoy and HAProxy normalise them too, while keeping the case
/// costs every answer a second header map in pingora. Each header the gateway then adds (the
/// `RateLimit` pair, and pingora's `Connection`) goes into both maps, and both outgrow the room
/// sized for the upstream's headers. Without the second map, and with room for [`ADDED`] more
/// reserved once, a metered call took 2.5k fewer instructions (108,424 and 108,513 → 105,822
/// and 106,047 per call, `benches/callgrind.sh`, two alternating runs of each build) for 0.3k
/// more on an unmetered one (85,763 and 85,758 → 86,083 and 86,124), which pays for the switch
/// and gains little from it. `server.preserve_header_case: true` keeps the case for
/// clients that compare header names case-sensitively. Requests keep their case either way:
/// switching theirs would also drop pingora's copy of the raw request target.
pub fn forget_header_case(resp: &mut ResponseHeader) -> pingora::Result<()> {
    if !resp.has_case() {
        return Ok(());
    }
    // A reason phrase other than the status's own would be lost with the map: keep it.
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let taken = std::mem::replace(resp, ResponseHeader::build_no_case(200u16, Some(0))?);
    let mut parts = http::response::Parts::from(taken);
    parts.headers.reserve(ADDED);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
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
