//! The pingora edge. Each `ProxyHttp` phase is one call into our own pipeline, so pingora's
//! types stop here.

pub mod balance;
pub mod cors;
pub mod health;
pub mod hygiene;
pub mod resolve;
pub mod respond;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora::{ErrorSource, ErrorType};

use crate::config::RouteTarget;
use crate::pipeline::headers::{usage_headers, UsageView, TOLLGATE_MILESTONE};
use crate::pipeline::measure::{Measured, ResponseMeter};
use crate::pipeline::milestone;
use crate::pipeline::{Admission, Gateway, Refused};
use crate::plugins::{self, Calls, Stop};
use crate::telemetry::emit::{Call, Emitter};
use crate::telemetry::outcome::{Labels, Outcome};

/// Tells the upstream which tenant is calling.
static X_TOLLGATE_TENANT: HeaderName = HeaderName::from_static("x-tollgate-tenant");
/// Tells the upstream the tenant's plan.
static X_TOLLGATE_PLAN: HeaderName = HeaderName::from_static("x-tollgate-plan");

/// The host the client called, for an upstream given another one (`host_header`).
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The call's id, both ways (`server.request_id`).
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A call's id (`server.request_id`): a UUIDv7, so ids sort by time. The upstream gets it as
/// `X-Request-Id` (replacing one the client sent: ids the gateway did not make could repeat,
/// and the event's id must not), every answer carries it, its access log line names it, and
/// its usage event has it as `id`, so one id ties a caller's report, the upstream's logs and
/// the billed event together. It rides on the downstream request's extensions, where every
/// phase and the answers the gateway writes itself find it.
#[derive(Clone)]
pub struct RequestId {
    id: uuid::Uuid,
    header: http::HeaderValue,
}

impl RequestId {
    fn new(now: jiff::Timestamp) -> RequestId {
        let id = crate::telemetry::event::new_id(now);
        let mut text = uuid::Uuid::encode_buffer();
        let header = http::HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"));
        RequestId { id, header }
    }

    /// The id of the call `req` started, if it has one.
    fn of(req: &RequestHeader) -> Option<uuid::Uuid> {
        req.extensions.get::<RequestId>().map(|r| r.id)
    }

    /// Adds `X-Request-Id` to an answer to `req`, when it has an id.
    pub fn add_header(req: &RequestHeader, resp: &mut ResponseHeader) -> Result<()> {
        match req.extensions.get::<RequestId>() {
            Some(id) => resp.insert_header(X_REQUEST_ID.clone(), id.header.clone()),
            None => Ok(()),
        }
    }
}

/// `X-Forwarded-Proto` behind `server.tls`.
static X_FORWARDED_PROTO_HTTPS: http::HeaderValue = http::HeaderValue::from_static("https");

/// The proxy service: reads the current gateway (swapped atomically on reload) per call.
pub struct Proxy {
    gateway: Arc<ArcSwap<Gateway>>,
    read_timeout: Duration,
    /// `server.preserve_header_case`: answers keep the upstream's header name case (see
    /// [`hygiene::forget_header_case`]).
    preserve_header_case: bool,
    /// `server.x_forwarded_for: append`: the caller's address goes onto `X-Forwarded-For`.
    append_forwarded_for: bool,
    /// `server.tls`: the gateway ends the caller's TLS, so the upstream gets
    /// `X-Forwarded-Proto: https`.
    https: bool,
    /// `server.request_id`: every call gets an id (see [`RequestId`]).
    request_id: bool,
    /// Usage events, when `telemetry` is configured.
    events: Option<Arc<Emitter>>,
}

/// Per-call state shared by the phases.
pub struct Ctx {
    started: Instant,
    gateway: Option<Arc<Gateway>>,
    admission: Option<Admission>,
    /// Why the call was refused, if it was (its usage event names the caller).
    refused: Option<Box<Refused>>,
    /// Route and plan of the call as far as they are known, for the metrics' labels.
    labels: Labels,
    outcome: Outcome,
    upstream_started: Option<Instant>,
    connect_tries: usize,
    /// The target (address) `upstream_peer` picked last.
    target: Option<Arc<balance::Endpoint>>,
    refunded: bool,
    /// Reads the response for measured meters, when the route has any.
    measure: Option<ResponseMeter>,
    /// What it read, once the body ended.
    measured: Vec<Measured>,
    /// The route's plugins for this call, when it lists any.
    plugins: Option<Calls>,
    /// Headers the plugins add to the upstream request.
    plugin_headers: Vec<(HeaderName, http::HeaderValue)>,
    /// A plugin stopped the call after the upstream answered; `fail_to_proxy` answers it.
    plugin_stop: Option<Stop>,
    /// The reservation stands once the answer starts, so plugin-measured meters settle.
    settle_plugins: bool,
    /// Request body bytes read so far, counted against the route's `max_request_body`.
    body_read: u64,
    /// The `max_request_body` a streamed body went past; `fail_to_proxy` answers 413.
    too_large: Option<u64>,
}

impl Proxy {
    /// A proxy over `gateway` with the `server` settings it uses; `events` takes one usage
    /// event per identified call.
    pub fn new(
        gateway: Arc<ArcSwap<Gateway>>,
        server: &crate::config::Server,
        events: Option<Arc<Emitter>>,
    ) -> Proxy {
        Proxy {
            gateway,
            read_timeout: server.read_timeout,
            preserve_header_case: server.preserve_header_case,
            append_forwarded_for: server.append_forwarded_for,
            https: server.tls.is_some(),
            request_id: server.request_id,
            events,
        }
    }
}

impl Ctx {
    fn admitted(&self) -> Option<&crate::pipeline::Admitted> {
        match &self.admission {
            Some(Admission::Admitted(a)) => Some(a),
            _ => None,
        }
    }

    fn route(&self) -> Option<&crate::config::Route> {
        match &self.admission {
            Some(Admission::Public(r)) => Some(r),
            Some(Admission::Admitted(a)) => Some(&a.route),
            None => None,
        }
    }

    /// Refunds once; later failures of the same call do nothing.
    async fn refund(&mut self) {
        if self.refunded {
            return;
        }
        self.refunded = true;
        if let (Some(gw), Some(Admission::Admitted(a))) = (&self.gateway, &mut self.admission) {
            gw.refund(a).await;
            for m in &mut a.usage.meters {
                m.used = m.used.saturating_sub(m.units);
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            gateway: None,
            admission: None,
            refused: None,
            labels: Labels::default(),
            outcome: Outcome::NoRoute,
            upstream_started: None,
            connect_tries: 0,
            target: None,
            refunded: false,
            measure: None,
            measured: Vec::new(),
            plugins: None,
            plugin_headers: Vec::new(),
            plugin_stop: None,
            settle_plugins: false,
            body_read: 0,
            too_large: None,
        }
    }

    /// Steps 1–6 of SPEC §3; answers refusals and `respond:` routes here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        session.set_read_timeout(Some(self.read_timeout));
        let gw = self.gateway.load_full();
        ctx.gateway = Some(gw.clone());
        if self.request_id {
            let id = RequestId::new(gw.now());
            session.req_header_mut().extensions_mut().insert(id);
        }
        if let Some(c) = &gw.cors {
            if cors::is_preflight(session.req_header()) {
                ctx.outcome = Outcome::Preflight;
                let answer = cors::preflight(c, session.req_header())?;
                respond::write_head(session, answer).await?;
                return Ok(true);
            }
            cors::admit(c, session.req_header_mut());
        }
        let path = session.req_header().uri.path().to_string();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let req = session.req_header();
        let host = gw
            .routes_by_host()
            .then(|| hygiene::client_host(req))
            .flatten();
        let host = host.as_ref().and_then(|h| h.to_str().ok());
        let admission = match gw.admit(&req.method, host, &path, &req.headers, peer).await {
            Ok(a) => a,
            Err(refused) => {
                ctx.outcome = Outcome::of_rejection(&refused);
                ctx.labels = Labels::of_refused(&refused);
                let method = req.method.to_string();
                let mut problem = respond::rejection(&refused, &path, &method, gw.now());
                self.emit_milestones(&gw, &refused.milestones, refused.identify.as_ref());
                if let Some(v) = milestone::header_value(&refused.milestones) {
                    problem.headers.push((TOLLGATE_MILESTONE, v));
                }
                ctx.refused = Some(refused);
                respond::write_problem(session, problem).await?;
                return Ok(true);
            }
        };
        if let Admission::Admitted(a) = &admission {
            self.emit_milestones(&gw, &a.milestones, a.identify.as_ref());
        }
        ctx.outcome = Outcome::of_admission(&admission);
        let route = match &admission {
            Admission::Public(r) => r.clone(),
            Admission::Admitted(a) => a.route.clone(),
        };
        ctx.labels = Labels {
            route: Some(route.clone()),
            plan: match &admission {
                Admission::Admitted(a) => Some(a.plan.clone()),
                Admission::Public(_) => None,
            },
            ..Labels::default()
        };
        ctx.admission = Some(admission);
        if let Err(stop) = self.request_plugins(session, ctx) {
            return self.stop_for_plugin(session, ctx, stop, &path).await;
        }
        if let RouteTarget::Respond(fixed) = &route.target {
            let headers = self.usage_headers(ctx);
            respond::write_fixed(session, fixed, headers).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A body without a `Content-Length` (chunked, or HTTP/2 without one) is counted as it
    /// arrives and cut off when it passes the route's `max_request_body`: the call then ends in
    /// `fail_to_proxy` with a 413, refunded. (An announced length is checked in `admit`.)
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(chunk), Some(route), Some(gw)) = (body.as_ref(), ctx.route(), &ctx.gateway)
        else {
            return Ok(());
        };
        let Some(limit) = gw.body_limit(route) else {
            return Ok(());
        };
        // After `101 Switching Protocols` the bytes are a WebSocket's, not a request body.
        if session.was_upgraded() {
            return Ok(());
        }
        ctx.body_read += chunk.len() as u64;
        if ctx.body_read > limit {
            ctx.too_large = Some(limit);
            return Err(Error::explain(
                ErrorType::Custom("request body too large"),
                "the request body passed max_request_body",
            ));
        }
        Ok(())
    }

    /// Step 7: the next target of the route's upstream, round-robin over those taking calls
    /// (see [`balance`]).
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = match &ctx.admission {
            Some(Admission::Public(r)) => r,
            Some(Admission::Admitted(a)) => &a.route,
            None => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no admitted route",
                ))
            }
        };
        let RouteTarget::Upstream(up) = &route.target else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "route answers by itself",
            ));
        };
        let picked = match (&ctx.target, ctx.connect_tries) {
            (Some(last), tries) if tries > 0 => up.balance.next_after(last),
            _ => up.balance.pick(),
        };
        let Some((endpoint, target)) =
            picked.and_then(|e| up.targets.get(e.target).map(|t| (e, t)))
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream target",
            ));
        };
        let mut peer = target_peer(up, target, endpoint.addr);
        ctx.target = Some(endpoint);
        if let Some(t) = route.read_timeout {
            peer.options.read_timeout = Some(t);
        }
        // pingora's standard request policy, named here because the gateway relies on it: it
        // strips the client's hop-by-hop headers and those its `Connection` nominates (and
        // refuses a request nominating `Host` or `X-Forwarded-*`) before
        // `upstream_request_filter` runs, and passes a WebSocket handshake on as
        // `Connection: Upgrade` + `Upgrade: websocket`, every other upgrade removed.
        peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::standard();
        ctx.connect_tries += 1;
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// A connection that never opened counts against its target's health, and is safe to try
    /// on the next target, once per target.
    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _p: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(RouteTarget::Upstream(up)), Some(gw)) =
            (ctx.route().map(|r| &r.target), &ctx.gateway)
        {
            if let Some(endpoint) = &ctx.target {
                balance::connect_failed(&gw.metrics, up, endpoint, &e);
            }
        }
        let targets = ctx.route().map_or(1, target_count);
        if ctx.connect_tries < targets {
            e.set_retry(true);
        }
        e
    }

    /// A connection to the target stands (new or reused): a target out of rotation is back.
    async fn connected_to_upstream(
        &self,
        _s: &mut Session,
        _reused: bool,
        _p: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(RouteTarget::Upstream(up)), Some(gw)) =
            (ctx.route().map(|r| &r.target), &ctx.gateway)
        {
            if let Some(endpoint) = ctx.target.as_ref().filter(|e| up.balance.connected(e)) {
                balance::back(&gw.metrics, up, endpoint);
            }
        }
        Ok(())
    }

    /// Strips credentials; tells the upstream who is calling, and from where. (pingora has
    /// stripped the client's hop-by-hop headers already: see `upstream_peer`.)
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Plugins' headers first, so the gateway's own rules below still apply to them; a
        // hop-by-hop one would undo pingora's hygiene, so it is not added.
        for (name, value) in &ctx.plugin_headers {
            if !hygiene::is_hop_by_hop(name) {
                up.append_header(name.clone(), value.clone())?;
            }
        }
        if let Some(gw) = &ctx.gateway {
            for name in gw.credential_headers() {
                if up.headers.contains_key(name) {
                    up.remove_header(name);
                }
            }
        }
        // A measured meter or a plugin reads the body: ask for it uncompressed.
        if ctx
            .route()
            .is_some_and(|r| r.meter.iter().any(|m| m.measure.is_some()) || plugins::reads_body(r))
            && up.headers.contains_key(http::header::ACCEPT_ENCODING)
        {
            up.remove_header(&http::header::ACCEPT_ENCODING);
        }
        if self.append_forwarded_for {
            if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()) {
                hygiene::append_forwarded_for(up, peer.ip())?;
            }
        }
        if let Some(id) = session.req_header().extensions.get::<RequestId>() {
            up.insert_header(X_REQUEST_ID.clone(), id.header.clone())?;
        }
        // Behind its own TLS listener the gateway knows the caller's scheme, whatever the
        // client claimed; over plain HTTP a balancer in front may have set it, so it is kept.
        if self.https {
            up.insert_header("X-Forwarded-Proto", X_FORWARDED_PROTO_HTTPS.clone())?;
        }
        if let Some(RouteTarget::Upstream(u)) = ctx.route().map(|r| &r.target) {
            // After the caller's credentials are gone: an upstream's own (`Authorization` for
            // an API the gateway resells) replaces what the caller sent.
            let route_headers = ctx.route().map_or(&[][..], |r| &r.request_headers[..]);
            for (name, value) in u.request_headers.iter().chain(route_headers) {
                up.insert_header(name.clone(), value.clone())?;
            }
            if let Some(host) = &u.host_header {
                // The upstream no longer sees the name the client called; it learns it from
                // `X-Forwarded-Host` (replacing a copy the client sent), to build links with.
                let client_host = hygiene::client_host(session.req_header());
                up.insert_header(http::header::HOST, host.clone())?;
                match client_host {
                    Some(h) => up.insert_header("X-Forwarded-Host", h)?,
                    None => {
                        up.remove_header(&X_FORWARDED_HOST);
                    }
                }
            }
        }
        if let Some(path) = ctx
            .route()
            .and_then(|r| r.upstream_path(up.uri.path(), up.uri.query()))
        {
            let uri = http::Uri::try_from(path).map_err(|e| {
                Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("the rewritten path is not a valid URI: {e}"),
                )
            })?;
            up.set_uri(uri);
        }
        match ctx.admitted() {
            // `insert_header` replaces a copy the client sent.
            Some(a) => {
                up.insert_header(
                    "X-Tollgate-Tenant",
                    header_value(a.caller.tenant.header_value())?,
                )?;
                up.insert_header("X-Tollgate-Plan", header_value(a.plan.header.as_ref())?)?;
            }
            None => {
                for name in [&X_TOLLGATE_TENANT, &X_TOLLGATE_PLAN] {
                    if up.headers.contains_key(name) {
                        up.remove_header(name);
                    }
                }
            }
        }
        Ok(())
    }

    /// Step 8: an answer the route's `refund_on` names (default: any 5xx) refunds the
    /// reservation before the answer goes out.
    async fn upstream_response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.observe_upstream(ctx);
        if resp.status.is_server_error() {
            ctx.outcome = Outcome::UpstreamError;
        }
        if ctx
            .route()
            .is_some_and(|r| r.refund_on.status(resp.status.as_u16()))
        {
            ctx.refund().await;
        }
        if !self.preserve_header_case {
            hygiene::forget_header_case(resp)?;
        }
        for name in hygiene::hop_by_hop_in_response(resp) {
            resp.remove_header(&name);
        }
        Ok(())
    }

    /// Step 9: usage headers (and CORS ones, see [`cors`]); measuring starts when the call's
    /// reservation stands.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(calls) = ctx.plugins.as_mut() {
            if let Err(stop) = calls.on_response_headers(resp.status, &resp.headers) {
                ctx.plugin_stop = Some(stop);
                return Err(Error::explain(ErrorType::InternalError, "a plugin failed"));
            }
        }
        if let Some(a) = ctx
            .admitted()
            .filter(|a| a.usage.metered && !a.usage.replayed && !ctx.refunded)
        {
            ctx.measure = ResponseMeter::start(&a.route.meter, &resp.headers);
            ctx.settle_plugins = true;
        }
        for (name, value) in self.usage_headers(ctx) {
            resp.insert_header(name, value)?;
        }
        RequestId::add_header(session.req_header(), resp)?;
        cors::add_headers(session.req_header(), resp)
    }

    /// A client that hangs up mid-call is routine, not an error worth a log line each (under
    /// load that was dozens per second); it still shows in the access metrics.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// Looks at each body chunk for measured meters; never holds a chunk back.
    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(calls) = ctx.plugins.as_mut() {
            calls.on_response_body(body.as_deref().unwrap_or_default(), end_of_stream);
        }
        if let Some(m) = ctx.measure.as_mut() {
            if let Some(chunk) = body.as_ref() {
                m.feed(chunk);
            }
            if end_of_stream {
                ctx.measured = m.finish();
                ctx.measure = None;
            }
        }
        Ok(None)
    }

    /// Upstream failures: refund, then answer 502/504 with a problem body if nothing was sent yet.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // The connection is not reused after a failure (see the end): say so in the answer,
        // so the client does not send its next call on a connection about to close.
        session.set_keepalive(None);
        // After `101 Switching Protocols` (a WebSocket) the call was served: however the socket
        // ends, an idle timeout on either side included, nothing is refunded or answered.
        if session
            .response_written()
            .is_some_and(|r| r.status == http::StatusCode::SWITCHING_PROTOCOLS)
        {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if let Some(limit) = ctx.too_large {
            ctx.outcome = Outcome::TooLarge;
            ctx.refund().await;
            let path = session.req_header().uri.path().to_string();
            let code = http::StatusCode::PAYLOAD_TOO_LARGE.as_u16();
            if session.response_written().is_none() {
                let problem = respond::too_large(limit, None, &path);
                if let Err(err) = respond::write_problem(session, problem).await {
                    tracing::debug!(error = %err, "Could not send the 413 to the client.");
                }
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let code = match e.esource() {
            ErrorSource::Upstream => {
                ctx.outcome = Outcome::UpstreamError;
                let timed_out = matches!(
                    e.etype(),
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                );
                let refunds = ctx.route().is_some_and(|r| match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => r.refund_on.timeout,
                    ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
                    | ErrorType::BindError
                    | ErrorType::SocketError => r.refund_on.connect_error,
                    _ => r.refund_on.error,
                });
                if refunds {
                    ctx.refund().await;
                }
                let charged = !ctx.refunded
                    && ctx
                        .admitted()
                        .is_some_and(|a| a.usage.metered && !a.usage.replayed);
                let path = session.req_header().uri.path().to_string();
                let problem = respond::upstream_unavailable(timed_out, charged, &path);
                let code = problem.status.as_u16();
                if session.response_written().is_none() {
                    if let Err(err) = respond::write_problem(session, problem).await {
                        tracing::debug!(error = %err, "Could not send the upstream error to the client.");
                    }
                }
                code
            }
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => {
                    let _ = session.respond_error(400).await;
                    400
                }
            },
            ErrorSource::Internal | ErrorSource::Unset => match ctx.plugin_stop.take() {
                Some(stop) => {
                    let path = session.req_header().uri.path().to_string();
                    let _ = self.stop_for_plugin(session, ctx, stop, &path).await;
                    500
                }
                None => {
                    let _ = session.respond_error(500).await;
                    500
                }
            },
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Settles measured meters, then counts the call.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let Some(gw) = ctx.gateway.clone() else {
            return;
        };
        // pingora may end a body with a separate "done" task instead of a last chunk marked as
        // the end, so a measurement still open here is finished here.
        if let Some(mut m) = ctx.measure.take() {
            ctx.measured = m.finish();
        }
        if let Some(calls) = ctx.plugins.as_mut() {
            calls.finish();
            if let (true, Some(Admission::Admitted(a))) = (ctx.settle_plugins, &ctx.admission) {
                ctx.measured.extend(calls.measured(&a.route));
            }
        }
        if !ctx.measured.is_empty() && !ctx.refunded {
            if let Some(Admission::Admitted(a)) = ctx.admission.as_mut() {
                gw.settle(a, &ctx.measured);
            }
        }
        let call = crate::telemetry::outcome::Finished {
            started: ctx.started,
            outcome: ctx.outcome,
            route: ctx.labels.route.as_deref(),
            plan: ctx.labels.plan.as_deref(),
            admission: ctx.admission.as_ref(),
            refunded: ctx.refunded,
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            tenant: ctx
                .admitted()
                .map(|a| a.caller.tenant.name.as_str())
                .or(ctx.labels.tenant.as_deref()),
            exhausted: ctx.labels.exhausted.as_deref(),
            request_id: RequestId::of(session.req_header()),
        };
        call.record(&gw);
        if let Some(events) = &self.events {
            let extra = ctx.plugins.as_ref().map(|calls| {
                let mut data = serde_json::Map::new();
                calls.on_event(&mut data);
                data.retain(|k, _| !crate::telemetry::event::DATA_FIELDS.contains(&k.as_str()));
                data
            });
            let req = session.req_header();
            events.emit_call(&Call {
                id: call.request_id,
                admission: ctx.admission.as_ref(),
                refused: ctx.refused.as_deref(),
                refunded: ctx.refunded,
                outcome: ctx.outcome,
                method: req.method.as_str(),
                path: req.uri.path(),
                status: call.status,
                latency_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                now: gw.now(),
                extra: extra.as_ref(),
            });
        }
    }
}

impl Proxy {
    /// Starts the route's plugins for this call and runs their request hooks; on success the
    /// headers they add wait in `ctx` for the upstream request.
    fn request_plugins(&self, session: &Session, ctx: &mut Ctx) -> std::result::Result<(), Stop> {
        let Some(admission) = &ctx.admission else {
            return Ok(());
        };
        let route = match admission {
            Admission::Public(r) => r,
            Admission::Admitted(a) => &a.route,
        };
        let Some(mut calls) = Calls::start(route) else {
            return Ok(());
        };
        let req = session.req_header();
        let result = calls.on_request(&plugins::request_view(
            &req.method,
            &req.uri,
            &req.headers,
            admission,
        ));
        ctx.plugins = Some(calls);
        ctx.plugin_headers = result?;
        Ok(())
    }

    /// A plugin denied or failed the call before its answer started: nothing is charged, and
    /// the client gets the denial's problem body, or a 500 one for a failure.
    async fn stop_for_plugin(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        stop: Stop,
        path: &str,
    ) -> Result<bool> {
        ctx.refund().await;
        ctx.outcome = match stop {
            Stop::Denied { .. } => Outcome::PluginDenied,
            Stop::Failed { .. } => Outcome::Internal,
        };
        respond::write_problem(session, respond::plugin_stop(&stop, path)).await?;
        Ok(true)
    }

    fn usage_headers(&self, ctx: &Ctx) -> Vec<(&'static str, String)> {
        let (Some(a), Some(gw)) = (ctx.admitted(), &ctx.gateway) else {
            return Vec::new();
        };
        if !a.usage.metered {
            return Vec::new();
        }
        let mut headers = usage_headers(&UsageView {
            burst: a.burst.as_ref(),
            meters: &a.usage.meters,
            upgrade: a.plan.upgrade.as_ref(),
            exhausted: None,
            now: gw.now(),
        });
        if let Some(v) = milestone::header_value(&a.milestones) {
            headers.push((TOLLGATE_MILESTONE, v));
        }
        if a.usage.replayed {
            headers.push((
                crate::pipeline::headers::TOLLGATE_IDEMPOTENT_REPLAY,
                "?1".into(),
            ));
        }
        headers
    }

    /// Queues the events of the milestones (and the identity merge) a call fired, when
    /// telemetry is configured. Done when the call is admitted or refused, not when it is
    /// logged, so an event is not lost to a client that hangs up before the answer ends.
    fn emit_milestones(
        &self,
        gw: &Gateway,
        fired: &[milestone::Milestone],
        identify: Option<&milestone::Identify>,
    ) {
        let Some(events) = &self.events else {
            return;
        };
        if fired.is_empty() && identify.is_none() {
            return;
        }
        let now = gw.now();
        if let Some(i) = identify {
            events.emit_identify(now, i);
        }
        for m in fired {
            events.emit_milestone(now, m);
        }
    }

    fn observe_upstream(&self, ctx: &Ctx) {
        let (Some(started), Some(gw)) = (ctx.upstream_started, &ctx.gateway) else {
            return;
        };
        let Some(name) = ctx.route().map(upstream_name) else {
            return;
        };
        gw.metrics
            .upstream_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A copy of a header value built ahead (it shares the buffer), or for a name that cannot be
/// one the error `insert_header` gives such a value.
fn header_value(value: Option<&http::HeaderValue>) -> Result<http::HeaderValue> {
    value
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "invalid value while insert"))
}

/// How the gateway reaches `target` of `up` at `addr` (one of its addresses): TLS with the
/// certificate checked against its name (or `sni`), and the upstream's timeouts. Calls and
/// health probes (see [`health`]) connect alike.
pub fn target_peer(
    up: &crate::config::Upstream,
    target: &crate::config::Target,
    addr: std::net::SocketAddr,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, up.tls.is_some(), target.sni.clone());
    if let Some(tls) = &up.tls {
        peer.options.ca = tls.ca.clone();
    }
    peer.options.connection_timeout = Some(up.connect_timeout);
    peer.options.read_timeout = Some(up.read_timeout);
    peer
}

fn target_count(route: &crate::config::Route) -> usize {
    match &route.target {
        RouteTarget::Upstream(u) => u.balance.endpoint_count(),
        RouteTarget::Respond(_) => 1,
    }
}

fn upstream_name(route: &crate::config::Route) -> &str {
    match &route.target {
        RouteTarget::Upstream(u) => &u.name,
        RouteTarget::Respond(_) => "",
    }
}
