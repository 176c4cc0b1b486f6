//! CORS (`cors:`): browser scripts on other origins calling the API.
//!
//! A browser asks before a cross-origin call with credentials or a JSON body: an `OPTIONS`
//! preflight that never carries credentials. Without this, the preflight met the route's
//! authentication and got a `401`, and the browser refused the real call. With a `cors`
//! section the gateway answers every preflight itself, `204` with what the origin may send;
//! it reaches no upstream, identifies no one and charges nothing. On the calls that follow it
//! adds `Access-Control-Allow-Origin` and exposes its own headers (`RateLimit`,
//! `Tollgate-Upgrade`, …) to every answer, its own `402`/`429`/`401` included, so a script
//! can read what is left and why it was refused. An origin that is not listed gets no CORS
//! headers, and the browser keeps its script from reading the answers.

use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::Cors;

/// Set on the downstream request when its `Origin` may call: what every answer to it adds.
#[derive(Clone)]
pub struct Allowed {
    origin: HeaderValue,
    cors: Arc<Cors>,
}

static TRUE: HeaderValue = HeaderValue::from_static("true");
static ANY: HeaderValue = HeaderValue::from_static("*");
static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// Whether `req` is a preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: `204`, with the permissions when its origin may call.
pub fn preflight(cors: &Cors, req: &RequestHeader) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(204, Some(7))?;
    resp.insert_header(VARY, VARY_PREFLIGHT.clone())?;
    let Some(origin) = req
        .headers
        .get(ORIGIN)
        .filter(|o| cors.allows(o.as_bytes()))
    else {
        return Ok(resp);
    };
    resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin(cors, origin))?;
    resp.insert_header(ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.clone())?;
    resp.insert_header(ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.clone())?;
    resp.insert_header(ACCESS_CONTROL_MAX_AGE, cors.max_age.clone())?;
    if cors.allow_credentials {
        resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone())?;
    }
    Ok(resp)
}

/// Marks `req` when its `Origin` may call, for [`add_headers`].
pub fn admit(cors: &Arc<Cors>, req: &mut RequestHeader) {
    let Some(origin) = req.headers.get(ORIGIN) else {
        return;
    };
    if cors.allows(origin.as_bytes()) {
        let allowed = Allowed {
            origin: allow_origin(cors, origin),
            cors: cors.clone(),
        };
        req.extensions_mut().insert(allowed);
    }
}

/// Adds the CORS headers to an answer to `req`, when [`admit`] marked it: the origin (which
/// replaces one the upstream set, so there is one), `Vary: Origin` beside the upstream's own,
/// the exposed headers, and the credentials flag.
pub fn add_headers(req: &RequestHeader, resp: &mut ResponseHeader) -> pingora::Result<()> {
    let Some(a) = req.extensions.get::<Allowed>() else {
        return Ok(());
    };
    resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, a.origin.clone())?;
    resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, a.cors.expose_headers.clone())?;
    if a.cors.allow_credentials {
        resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone())?;
    }
    if !a.cors.any_origin || a.cors.allow_credentials {
        resp.append_header(VARY, "Origin")?;
    }
    Ok(())
}

/// `*` for any origin without credentials; else the caller's own origin, echoed.
fn allow_origin(cors: &Cors, origin: &HeaderValue) -> HeaderValue {
    if cors.any_origin && !cors.allow_credentials {
        ANY.clone()
    } else {
        origin.clone()
    }
}
