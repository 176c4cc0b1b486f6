//! HTTP/1 hygiene pingora leaves to us:
//! - an upstream's hop-by-hop headers never reach the client, a WebSocket handshake's `Upgrade`
//!   excepted (a request's are stripped by pingora's standard request policy, see
//!   `upstream_peer`);
//! - answers' header names go down lowercase unless `server.preserve_header_case` keeps their
//!   case;
//! - the upstream learns the caller's address from `X-Forwarded-For`.
//!
//! (A request with both `Content-Length` and `Transfer-Encoding` is handled by pingora itself as
//! RFC 9112 §6.3 asks: `Content-Length` is dropped before forwarding and the connection is not
//! kept alive, so the upstream cannot frame the body differently from us.)

use std::io::Write;
use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::StatusCode;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::pipeline::client_ip::canonical;

/// Whether a header is hop-by-hop by itself (RFC 9110 §7.6.1), besides those `Connection`
/// names. `Transfer-Encoding` is left to pingora, which re-frames bodies itself.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "proxy-authenticate" | "proxy-authorization"
        )
}

/// The hop-by-hop headers of an upstream's answer: the fixed set and every header its
/// `Connection` names. One pass over the headers; most answers have none, and then nothing is
/// allocated. (A request's are pingora's to strip: see `upstream_peer`.)
///
/// Two are kept. `Connection` itself: pingora's HTTP/1 server always writes its own
/// (`keep-alive` or `close`, replacing the upstream's) and its HTTP/2 server drops it, so the
/// upstream's value never reaches the client either way, and removing it here as well cost
/// every answer a list of names and a removal from pingora's header maps, for nothing. And on a
/// `101 Switching Protocols` (a WebSocket handshake the upstream accepted), `Upgrade`: pingora
/// writes no `Connection` of its own on a 1xx, so the upstream's `Connection: Upgrade` and
/// `Upgrade: websocket` are what complete the client's handshake.
pub fn hop_by_hop_in_response(resp: &ResponseHeader) -> Vec<HeaderName> {
    let switching = resp.status == StatusCode::SWITCHING_PROTOCOLS;
    let kept = |name: &HeaderName| name == CONNECTION || (switching && name == UPGRADE);
    let headers = &resp.headers;
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|h| is_hop_by_hop(h) && !kept(h))
        .cloned()
        .collect();
    for value in headers.get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().to_ascii_lowercase().as_bytes()) {
                if name != TRANSFER_ENCODING
                    && !kept(&name)
                    && headers.contains_key(&name)
                    && !out.contains(&name)
                {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Appends the caller's address to the upstream request's `X-Forwarded-For`
/// (`server.x_forwarded_for: append`, the default): `203.0.113.7, 10.1.2.3` when the client
/// sent `203.0.113.7`, else `10.1.2.3` alone. Several `X-Forwarded-For` headers become one list.
///
/// Appended, not replaced: what the client sent is kept, as nginx's
/// `$proxy_add_x_forwarded_for` and Envoy keep it, so an upstream that already reads the
/// header behind a load balancer still finds the hops before the gateway. Only the hops the
/// upstream knows for proxies (the gateway's own address, and whatever it trusts in front) are
/// to be believed, reading right to left, since anything further left the client may have
/// written itself. The gateway reads the header the same way for anonymous callers
/// (`auth.anonymous.trusted_proxies`).
pub fn append_forwarded_for(up: &mut RequestHeader, peer: IpAddr) -> pingora::Result<()> {
    let mut value = Vec::with_capacity(48);
    for hops in up.headers.get_all(&X_FORWARDED_FOR) {
        let hops = hops.as_bytes().trim_ascii();
        if !hops.is_empty() {
            value.extend_from_slice(hops);
            value.extend_from_slice(b", ");
        }
    }
    match canonical(peer) {
        // By hand: `write!` took 1k of the 2.6k instructions this function cost per call.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    value.push(b'.');
                }
                if octet >= 100 {
                    value.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    value.push(b'0' + octet / 10 % 10);
                }
                value.push(b'0' + octet % 10);
            }
        }
        // Writing to a `Vec` cannot fail.
        v6 => {
            let _ = write!(value, "{v6}");
        }
    }
    up.insert_header("X-Forwarded-For", value)
}

/// The header [`append_forwarded_for`] extends.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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

/// The host a client called: its `Host` header, or over HTTP/2 the request's `:authority`.
pub fn client_host(req: &RequestHeader) -> Option<http::HeaderValue> {
    if let Some(host) = req.headers.get(http::header::HOST) {
        return Some(host.clone());
    }
    let authority = req.uri.authority()?;
    http::HeaderValue::from_str(authority.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let resp = answer(
            200,
            &[
                ("Connection", "keep-alive, X-Custom, X-Absent"),
                ("X-Custom", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Upgrade", "h2c"),
                ("X-End-To-End", "1"),
            ],
        );
        let names = hop_by_hop_in_response(&resp);
        assert_eq!(names.len(), 3, "{names:?}");
        for name in ["x-custom", "keep-alive", "upgrade"] {
            assert!(names.contains(&HeaderName::from_static(name)), "{names:?}");
        }
        assert!(hop_by_hop_in_response(&answer(200, &[])).is_empty());
    }

    #[test]
    fn a_switch_of_protocols_keeps_its_upgrade() {
        let resp = answer(
            101,
            &[
                ("Connection", "Upgrade, X-Custom"),
                ("Upgrade", "websocket"),
                ("X-Custom", "1"),
                ("Keep-Alive", "timeout=5"),
            ],
        );
        let names = hop_by_hop_in_response(&resp);
        assert_eq!(names.len(), 2, "{names:?}");
        for name in ["x-custom", "keep-alive"] {
            assert!(names.contains(&HeaderName::from_static(name)), "{names:?}");
        }
    }

    #[test]
    fn the_callers_address_is_appended_to_x_forwarded_for() {
        let forwarded = |sent: &[&str], peer: &str| {
            let mut up = RequestHeader::build("GET", b"/", None).unwrap();
            for v in sent {
                up.append_header("X-Forwarded-For", *v).unwrap();
            }
            append_forwarded_for(&mut up, peer.parse().unwrap()).unwrap();
            let all: Vec<_> = up.headers.get_all("x-forwarded-for").iter().collect();
            assert_eq!(all.len(), 1, "{all:?}");
            all[0].to_str().unwrap().to_string()
        };
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "127.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(forwarded(&[], ip), ip);
        }
        assert_eq!(forwarded(&[], "::ffff:192.0.2.9"), "192.0.2.9");
        assert_eq!(forwarded(&[], "2001:db8::1"), "2001:db8::1");
        assert_eq!(
            forwarded(&[" 203.0.113.7 ", "", "10.0.0.2, 10.0.0.3"], "192.0.2.1"),
            "203.0.113.7, 10.0.0.2, 10.0.0.3, 192.0.2.1"
        );
    }

    #[test]
    fn plugin_headers_that_are_hop_by_hop_are_known() {
        for name in [
            "connection",
            "upgrade",
            "te",
            "keep-alive",
            "proxy-authorization",
        ] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_hop_by_hop(&HeaderName::from_static(
            "x-tollgate-tenant"
        )));
    }
}
